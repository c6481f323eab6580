//! One running member: its listeners, the connection tasks they spawn, the admin HTTP port,
//! periodic broker chores, and graceful shutdown.
//!
//! Owns: the member's tasks and their lifetime. Must not touch: message semantics (the broker
//! decides those) or socket details (transport owns those). Invariants: every listener is
//! bound before any is served, so a member that cannot bind starts nothing; one cancellation
//! token reaches every task; `wait` returns only when every task has ended or the shutdown
//! timeout has passed, so the process exits promptly on SIGTERM.
//!
//! This file only names the parts: `options.rs` (what a member runs with, from the topology),
//! `member/` (starting and stopping a member, its role, its master terms, its elections and its
//! admin port), `listener.rs` (accept loops), `conn/` (the protocol-neutral connection and what
//! a listener's connections share), `request.rs` (the neutral requests), and one file or
//! folder per protocol. `member/` sits on the rest; nothing below it names it.

mod conn;
mod listener;
mod member;
mod mqtt;
mod mqtt_session;
mod mqtt_share;
mod options;
pub(crate) use mqtt::read_client_bytes as read_mqtt_client_bytes;
pub(crate) mod native;
mod request;
mod serve;
mod stomp;
mod websocket;

pub use member::{admin, live, start, DrainStatus, Fatal, RestartRequest, Role, RunningServer};
pub use options::{
    group_client_uris, ConnSettings, ElectionOptions, Identity, ListenerSpec, MeshMemberRef,
    Protocol, ServerError, ServerOptions, StompLimits, ZooKeeperElection,
};
