pub mod broker;
pub mod wire;
