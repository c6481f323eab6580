//! The `meshmq` command's subcommands (part of the binary, not the library).
pub mod bench;
pub mod clients;
pub mod http;
pub mod mesh;
pub mod stomp_load;
