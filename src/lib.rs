pub mod broker;
pub mod config;
pub mod wire;
