//! Who may connect and what they may do: password hashes, logins, destination ACLs, and the
//! development certificates and rustls configurations of TLS listeners, and the mesh secret
//! file bridges present.
//!
//! Owns: the argon2id hash format `meshmq passwd` prints ([`hash_password`]), the login rules
//! ([`Authenticator`]) and what they may cost ([`LoginGate`]), the ActiveMQ-style authorization map ([`Authorizer`]), the development
//! PKI and loading certificate files into rustls (`certs`). Must not touch: sockets, frames,
//! sessions, metrics — callers count refusals and close connections. Invariants: a wrong
//! password and an unknown user give the same error after the same work (one argon2
//! verification with the same parameters); no plaintext password is stored or logged; rustls
//! is only ever built with the ring provider, passed explicitly.

mod acl;
mod auth;
pub mod certs;
mod gate;
mod secret;

pub use acl::{Action, Authorizer, Denied};
pub use auth::{
    hash_password, AuthError, Authenticator, LoginError, Principal, DEFAULT_LOGIN_MEMORY,
};
pub use certs::{
    client_config, client_config_with_identity, generate_dev_pki, load_server_config, CertError,
};
pub use gate::{GateRefusal, LoginGate};
pub use secret::ensure_mesh_secret;
