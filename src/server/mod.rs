//! One running member: its listeners, the connection tasks they spawn, the admin HTTP port,
//! periodic broker chores, and graceful shutdown.
//!
//! Owns: the member's tasks and their lifetime. Must not touch: message semantics (the broker
//! decides those) or socket details (transport owns those). Invariants: every listener is
//! bound before any is served, so a member that cannot bind starts nothing; one cancellation
//! token reaches every task; `wait` returns only when every task has ended or the shutdown
//! timeout has passed, so the process exits promptly on SIGTERM.
//!
//! Here: what every connection of a listener shares ([`ConnCtx`]) and a master term's chores.
//! Beside it: `options.rs` (what a member runs with, from the topology), `member.rs` (starting
//! and stopping a member, its role), `listener.rs` (accept loops and listener metrics),
//! `term.rs` (one master term), and one file per protocol and per admin area.

pub mod admin;
pub mod admin_topology;
pub mod admin_ui;
mod conn;
pub mod drain;
mod election;
mod listener;
pub mod live;
mod member;
mod mqtt;
mod mqtt_session;
mod mqtt_share;
mod options;
pub(crate) use mqtt::read_client_bytes as read_mqtt_client_bytes;
pub(crate) mod native;
mod replicated;
mod request;
mod stomp;
mod term;
mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::cluster::{Cluster, ClusterPolicy};
use crate::metrics as m;
use crate::security::{LiveSecurity, LoginError, Principal};

pub(crate) use listener::ListenerMetrics;
use listener::{accept_loop, quic_accept_loop, serve_stream, Bound};
pub(crate) use member::MemberState;
pub use member::{start, Fatal, Role, RunningServer};
pub(crate) use options::broker_settings;
pub use options::{
    group_client_uris, ConnSettings, ElectionOptions, Identity, ListenerSpec, Protocol,
    ServerError, ServerOptions, StompLimits, ZooKeeperElection,
};

/// What every connection of a listener shares.
pub(crate) struct ConnCtx {
    pub broker: Broker,
    pub settings: ConnSettings,
    pub identity: Arc<Identity>,
    pub metrics: ListenerMetrics,
    /// The member's current login and ACL rules (replaced in place by `meshmq apply`).
    pub security: Arc<LiveSecurity>,
    pub stomp: StompLimits,
    /// Bridges from other groups arrive on client listeners.
    pub network: Option<Arc<crate::network::Network>>,
    /// The mesh view and client registry of this term.
    pub cluster: Arc<Cluster>,
    /// This listener's cluster options.
    pub cluster_policy: Arc<ClusterPolicy>,
    /// Cancelled when the member stops taking new connections (a drain): the accept loop
    /// ends and its socket closes, while the connections it admitted go on.
    pub accepting: CancellationToken,
    /// What MQTT persistent sessions keep in flight between connections (one per term,
    /// shared by the term's listeners).
    pub mqtt_sessions: Arc<mqtt_session::MqttSessions>,
}

impl ConnCtx {
    /// Logs a client from `peer` in. Password verification is slow and memory-hungry by
    /// design, so it runs on the authenticator's bounded slots, off the async threads; a
    /// refusal is counted (a failed login as an auth failure, a login turned away unverified
    /// as a refused connection) and takes as long whether or not the user exists.
    pub(crate) async fn login(
        &self,
        peer: SocketAddr,
        user: Option<String>,
        password: Option<String>,
    ) -> Result<Principal, String> {
        let authn = self.security.current().authenticator.clone();
        authn.login(peer.ip(), user, password).await.map_err(|e| {
            match &e {
                LoginError::Refused(_) => self.metrics.auth_failed(),
                LoginError::Gate(g) => {
                    self.metrics.refused(g.reason());
                    tracing::debug!(%peer, error = %g, "login turned away");
                }
            }
            e.to_string()
        })
    }
}

/// The largest frame a connection may send before it has logged in (a `Connect`, a STOMP
/// `CONNECT` or a bridge's `BrokerInfo`): a stranger who never logs in holds no more.
pub(crate) const HANDSHAKE_MAX_FRAME: usize = 64 * 1024;

pub(crate) fn handshake_frame_limit(ctx: &ConnCtx) -> usize {
    HANDSHAKE_MAX_FRAME.min(ctx.settings.max_frame_size)
}

/// Ends the master term at once when the journal fails (a write or an `fsync` returned an
/// error): the failed records were not receipted and never will be — a receipt after a failed
/// sync would be a lie, and Linux may already have dropped the unsynced pages — so the member
/// stops serving, says why in the log and in `meshmq_journal_failures_total`, and its election
/// driver decides what is next (a standby takes over; a lone member exits for a restart that
/// recovers what is on disk).
async fn stop_on_journal_failure(broker: Broker, stop: CancellationToken) {
    tokio::select! {
        reason = broker.journal_failed() => {
            counter!(m::JOURNAL_FAILURES).increment(1);
            tracing::error!(%reason, "the journal failed: nothing more is receipted; this member stops serving");
            stop.cancel();
        }
        _ = stop.cancelled() => {}
    }
}

/// Periodic broker work: expiry sweeps, checkpoints (on schedule, whenever the journal starts a
/// new segment — so disk use follows traffic, not the clock — and every second while the
/// journal is full, so acknowledged segments are freed promptly), journal gauges.
async fn chores(
    broker: Broker,
    expiry: Duration,
    checkpoint_every: Duration,
    shutdown: CancellationToken,
) {
    let period = expiry.min(checkpoint_every).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_checkpoint = Instant::now();
    let mut last_sweep = Instant::now();
    loop {
        let rolled = tokio::select! {
            _ = tick.tick() => false,
            _ = broker.segment_started() => true,
            _ = shutdown.cancelled() => return,
        };
        if last_sweep.elapsed() >= expiry {
            last_sweep = Instant::now();
            broker.sweep_expired();
            broker.redispatch();
        }
        let Some(j) = broker.journal_stats() else {
            continue;
        };
        gauge!(m::JOURNAL_SEGMENTS).set(j.segments as f64);
        gauge!(m::JOURNAL_DISK_BYTES).set(j.disk_bytes as f64);
        gauge!(m::JOURNAL_FULL).set(if j.full { 1.0 } else { 0.0 });
        metrics::counter!(m::JOURNAL_SYNCS).absolute(j.syncs);
        metrics::counter!(m::JOURNAL_BYTES).absolute(j.bytes);
        let due = rolled
            || last_checkpoint.elapsed() >= checkpoint_every
            || (j.full && last_checkpoint.elapsed() >= Duration::from_secs(1));
        if due {
            last_checkpoint = Instant::now();
            match broker.checkpoint(false).await {
                Ok(deleted) if deleted > 0 => tracing::debug!(deleted, "journal segments deleted"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "checkpoint failed"),
            }
        }
    }
}
