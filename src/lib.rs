//! meshmq: a network-of-brokers message mesh. See `README.md` and `DESIGN.md`.
pub mod broker;
pub mod client;
pub mod cluster;
pub mod config;
pub mod destination;
pub mod fuzzing;
pub mod ha;
pub mod metrics;
pub mod network;
pub mod security;
pub mod selector;
pub mod server;
pub mod stomp;
pub mod store;
pub mod transport;
pub mod url;
pub mod wire;
