//! The `meshmq` command's subcommands (part of the binary, not the library).
pub mod apply;
pub mod bench;
pub mod bench_ha;
pub mod bench_mesh;
pub mod clients;
pub mod drain;
pub mod http;
pub mod mesh;
pub mod mqtt_load;
pub mod nats_load;
pub mod prometheus;
pub mod spawn;
pub mod status;
pub mod stomp_load;
