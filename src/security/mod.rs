//! Who may connect and what they may do: password hashes, logins, destination ACLs, and the
//! development certificates and rustls configurations of TLS listeners, and the mesh secret
//! file bridges present.
//!
//! Owns: the argon2id hash format `meshmq passwd` prints ([`hash_password`]), the shared
//! secrets `meshmq token` prints ([`generate_token`]), the login rules ([`Authenticator`]) and
//! what they may cost ([`LoginGate`]), the ActiveMQ-style authorization map ([`Authorizer`]), the development
//! PKI and loading certificate files into rustls (`certs`). Must not touch: sockets, frames,
//! sessions, metrics — callers count refusals and close connections. Invariants: a wrong
//! password and an unknown user give the same error after the same work (one argon2
//! verification with the same parameters); no plaintext password is stored or logged; rustls
//! is only ever built with the ring provider, passed explicitly.

mod acl;
mod auth;
pub mod certs;
mod gate;
mod live;
mod secret;

pub use acl::{Action, Authorizer, Denied};
pub use auth::{
    hash_password, AuthError, Authenticator, LoginError, Principal, DEFAULT_LOGIN_MEMORY,
};
pub use certs::{
    client_config, client_config_with_identity, generate_dev_pki, load_server_config, CertError,
};
pub use gate::{GateRefusal, LoginGate};
pub use live::{LiveSecurity, Rules};
pub use secret::ensure_mesh_secret;

/// A fresh random secret for a topology's `replication_token`: 32 bytes from the operating
/// system's generator, as 64 hex digits.
pub fn generate_token() -> String {
    use rand::TryRngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random generator works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_64_hex_digits_and_differ() {
        let (a, b) = (super::generate_token(), super::generate_token());
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
    }
}
