//! meshmq: a network-of-brokers message mesh. See `README.md` and `DESIGN.md`.
pub mod broker;
pub mod client;
pub mod metrics;
pub mod server;
pub mod transport;
pub mod wire;
