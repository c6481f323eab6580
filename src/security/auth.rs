//! Password hashes and logins.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use argon2::password_hash::{CustomizedPasswordHasher, PasswordHasher, PasswordVerifier};
use argon2::{Argon2, Params, PasswordHash};

use super::gate::{GateRefusal, LoginGate};
use crate::config::Security;

/// What verifications may use at once by default, in bytes: [`LoginGate`] slots are sized
/// from it (two of the 19 MiB hashes `meshmq passwd` makes).
pub const DEFAULT_LOGIN_MEMORY: u64 = 40 << 20;

/// Who a connection is, once logged in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// `None` for an anonymous connection.
    pub user: Option<String>,
    /// The user's security groups (what ACL entries name); empty when anonymous.
    pub groups: Vec<String>,
}

impl Principal {
    pub fn anonymous() -> Principal {
        Principal {
            user: None,
            groups: Vec::new(),
        }
    }
}

/// Why a login was refused; the text is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("anonymous access is not allowed: log in with a user name and password")]
    AnonymousRefused,
    /// Deliberately one error for an unknown user and a wrong password.
    #[error("wrong user name or password")]
    InvalidCredentials,
    /// The topology changed under a logged-in connection: its user was removed or its password
    /// changed.
    #[error("this login was revoked by a topology change (user removed or password changed): log in again")]
    Revoked,
}

/// Why a login failed: refused by its credentials, or turned away before they were checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error(transparent)]
    Refused(#[from] AuthError),
    #[error(transparent)]
    Gate(#[from] GateRefusal),
}

/// Hashes a password for the topology's `password_hash` (argon2id, default cost, random salt).
pub fn hash_password(plain: &str) -> String {
    Argon2::default()
        .hash_password(plain.as_bytes())
        .expect("argon2 with default parameters and a fresh salt cannot fail")
        .to_string()
}

struct Account {
    hash: PasswordHash,
    /// The hash as written, to tell whether a user's password changed between two versions
    /// of the rules.
    hash_text: String,
    groups: Vec<String>,
}

/// Checks logins against the topology's users.
///
/// Verifying is an argon2 computation (tens of milliseconds by design): call
/// [`Authenticator::authenticate`] off the async executor (`spawn_blocking`).
pub struct Authenticator {
    allow_anonymous: bool,
    accounts: HashMap<String, Account>,
    /// What an unknown user's password is verified against, so that refusing an unknown user
    /// costs what refusing a wrong password does. Built once, with the first user's argon2
    /// parameters (the cost of a verification depends on them alone). `None` without users.
    dummy: Option<PasswordHash>,
    /// Bounds the verifications running at once and slows addresses that keep failing.
    gate: LoginGate,
}

impl Authenticator {
    /// `security` comes from a validated topology, whose hashes all parse; a user whose hash
    /// does not (a hand-built `Security`) is logged as an error and can never log in.
    pub fn new(security: &Security) -> Authenticator {
        Authenticator::with_login_memory(security, DEFAULT_LOGIN_MEMORY)
    }

    /// As [`Authenticator::new`], with `budget` bytes for the verifications running at once.
    pub fn with_login_memory(security: &Security, budget: u64) -> Authenticator {
        let mut accounts = HashMap::with_capacity(security.users.len());
        for user in &security.users {
            match usable_hash(&user.password_hash) {
                Ok(hash) => {
                    accounts.insert(
                        user.name.clone(),
                        Account {
                            hash,
                            hash_text: user.password_hash.clone(),
                            groups: user.groups.clone(),
                        },
                    );
                }
                Err(e) => tracing::error!(
                    user = %user.name,
                    "password_hash is not a usable argon2 PHC string ({e}); this user cannot log in"
                ),
            }
        }
        let dummy = (!security.users.is_empty()).then(|| {
            let like = security
                .users
                .iter()
                .find_map(|u| accounts.get(&u.name).map(|a| &a.hash));
            dummy_like(like)
        });
        // What one verification allocates: the argon2 memory cost (KiB) of the hashes.
        let per_verification = dummy
            .as_ref()
            .and_then(|d| Params::try_from(d).ok())
            .map_or(1, |p| u64::from(p.m_cost()) * 1024);
        Authenticator {
            allow_anonymous: security.allow_anonymous,
            accounts,
            dummy,
            gate: LoginGate::new(budget, per_verification),
        }
    }

    /// Verifications that may run at once.
    pub fn login_slots(&self) -> usize {
        self.gate.size()
    }

    /// Logs a connection from `from` in, as [`Authenticator::authenticate`], with the cost
    /// bounded: a login that needs a password verified waits (briefly) for one of the slots
    /// and runs it off the async threads; an address that keeps failing is refused without
    /// verifying until its backoff has passed.
    pub async fn login(
        self: &Arc<Self>,
        from: IpAddr,
        username: Option<String>,
        password: Option<String>,
    ) -> Result<Principal, LoginError> {
        let verifies = self.dummy.is_some() && username.as_deref().is_some_and(|u| !u.is_empty());
        if !verifies {
            return Ok(self.authenticate(username.as_deref(), password.as_deref())?);
        }
        self.gate.admit(from)?;
        let slot = self.gate.slot().await?;
        let me = self.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            me.authenticate(username.as_deref(), password.as_deref())
        })
        .await
        .unwrap_or(Err(AuthError::InvalidCredentials));
        drop(slot);
        self.gate.record(from, outcome.is_ok());
        Ok(outcome?)
    }

    /// Whether a connection let in by `earlier` may stay under these rules, and with which
    /// security groups: a user must still exist with the same password, an anonymous
    /// connection needs anonymous access still allowed. No password is verified (the
    /// connection proved it knew it when it logged in).
    pub fn readmit(
        &self,
        principal: &Principal,
        earlier: &Authenticator,
    ) -> Result<Principal, AuthError> {
        let Some(name) = &principal.user else {
            return if self.allow_anonymous || self.dummy.is_none() {
                Ok(Principal::anonymous())
            } else {
                Err(AuthError::AnonymousRefused)
            };
        };
        let now = self.accounts.get(name);
        let then = earlier.accounts.get(name);
        match (now, then) {
            (Some(now), Some(then)) if now.hash_text == then.hash_text => Ok(Principal {
                user: Some(name.clone()),
                groups: now.groups.clone(),
            }),
            // No users left at all: credentials are ignored, anonymous access decides.
            (None, _) if self.dummy.is_none() && self.allow_anonymous => Ok(Principal::anonymous()),
            _ => Err(AuthError::Revoked),
        }
    }

    /// Logs a connection in. No user name (or an empty one) asks for anonymous access. With no
    /// users configured at all there is nothing to check credentials against, so — as ActiveMQ
    /// without an authentication plugin — they are ignored and anonymous access decides.
    pub fn authenticate(
        &self,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Result<Principal, AuthError> {
        let username = username.filter(|u| !u.is_empty());
        let (Some(name), Some(dummy)) = (username, &self.dummy) else {
            return if self.allow_anonymous {
                Ok(Principal::anonymous())
            } else {
                Err(AuthError::AnonymousRefused)
            };
        };
        let account = self.accounts.get(name);
        // One verification on every path: the dummy stands in for an unknown user.
        let hash = account.map_or(dummy, |a| &a.hash);
        let matches = verify(hash, password.unwrap_or(""));
        match account {
            Some(account) if matches => Ok(Principal {
                user: Some(name.to_string()),
                groups: account.groups.clone(),
            }),
            _ => Err(AuthError::InvalidCredentials),
        }
    }
}

fn usable_hash(text: &str) -> argon2::password_hash::Result<PasswordHash> {
    let hash = PasswordHash::new(text)?;
    Params::try_from(&hash)?;
    Ok(hash)
}

/// A hash of a random password with the same algorithm, version and parameters as `like`
/// (argon2id with default parameters without one).
fn dummy_like(like: Option<&PasswordHash>) -> PasswordHash {
    let secret: [u8; 16] = rand::random();
    let salt: [u8; 16] = rand::random();
    let argon2 = Argon2::default();
    let hashed = match like {
        Some(like) => argon2.hash_password_customized(
            &secret,
            &salt,
            Some(like.algorithm.as_str()),
            like.version,
            Params::try_from(like).expect("checked by usable_hash"),
        ),
        None => argon2.hash_password_with_salt(&secret, &salt),
    };
    hashed.expect("parameters that verify a real hash also hash a random password")
}

fn verify(hash: &PasswordHash, password: &str) -> bool {
    #[cfg(test)]
    tests::VERIFICATIONS.with(|n| n.set(n.get() + 1));
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

#[cfg(test)]
pub(super) mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::config::User;

    thread_local! {
        /// Argon2 verifications run on this thread (each test runs on its own thread).
        pub(crate) static VERIFICATIONS: Cell<usize> = const { Cell::new(0) };
    }

    fn verifications() -> usize {
        VERIFICATIONS.with(Cell::get)
    }

    /// A cheap hash for tests (the real cost would make the suite slow, not more correct).
    pub(crate) fn cheap_hash(plain: &str) -> String {
        let params = Params::new(256, 1, 1, None).unwrap();
        Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(plain.as_bytes())
            .unwrap()
            .to_string()
    }

    pub(crate) fn user(name: &str, password: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            password_hash: cheap_hash(password),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn security(allow_anonymous: bool, users: Vec<User>) -> Security {
        Security {
            allow_anonymous,
            users,
            acls: Vec::new(),
        }
    }

    #[test]
    fn hash_password_makes_salted_argon2id_that_verifies() {
        let a = hash_password("correct horse");
        let b = hash_password("correct horse");
        assert!(a.starts_with("$argon2id$v=19$"), "{a}");
        assert_ne!(a, b, "a fresh salt every time");
        let parsed = PasswordHash::new(&a).unwrap();
        assert!(verify(&parsed, "correct horse"));
        assert!(!verify(&parsed, "correct horse "));
        // What the topology loader accepts.
        crate::config::parse_str(
            &format!(
                "[mesh]\nname = \"m\"\n[[security.user]]\nname = \"u\"\npassword_hash = \"{a}\"\n\
                 [[group]]\nname = \"g\"\n[[group.member]]\nname = \"m1\"\nadmin = \"127.0.0.1:1\"\n\
                 [[group.member.listener]]\nurl = \"tcp://127.0.0.1:2\"\n"
            ),
            std::path::Path::new("/t.toml"),
        )
        .unwrap();
    }

    #[test]
    fn the_right_password_logs_in_with_the_users_groups() {
        let auth = Authenticator::new(&security(
            false,
            vec![
                user("alice", "pw-a", &["producers", "consumers"]),
                user("bob", "pw-b", &[]),
            ],
        ));
        assert_eq!(
            auth.authenticate(Some("alice"), Some("pw-a")),
            Ok(Principal {
                user: Some("alice".into()),
                groups: vec!["producers".into(), "consumers".into()],
            })
        );
        assert_eq!(
            auth.authenticate(Some("bob"), Some("pw-b"))
                .unwrap()
                .user
                .as_deref(),
            Some("bob")
        );
    }

    #[test]
    fn wrong_password_and_unknown_user_are_the_same_error() {
        let auth = Authenticator::new(&security(true, vec![user("alice", "pw", &["p"])]));
        let wrong = auth.authenticate(Some("alice"), Some("nope"));
        let missing = auth.authenticate(Some("alice"), None);
        let unknown = auth.authenticate(Some("mallory"), Some("pw"));
        assert_eq!(wrong, Err(AuthError::InvalidCredentials));
        assert_eq!(missing, Err(AuthError::InvalidCredentials));
        assert_eq!(unknown, Err(AuthError::InvalidCredentials));
        assert_eq!(
            unknown.unwrap_err().to_string(),
            "wrong user name or password"
        );
    }

    #[test]
    fn an_unknown_user_costs_one_verification_like_a_wrong_password() {
        let auth = Authenticator::new(&security(false, vec![user("alice", "pw", &[])]));
        let before = verifications();
        let _ = auth.authenticate(Some("alice"), Some("wrong"));
        assert_eq!(verifications(), before + 1);
        let _ = auth.authenticate(Some("nobody"), Some("pw"));
        assert_eq!(
            verifications(),
            before + 2,
            "the unknown user was verified too"
        );
        let _ = auth.authenticate(Some("nobody"), None);
        assert_eq!(verifications(), before + 3);

        // And it is verified against a hash of the same cost as a real one.
        let dummy = auth.dummy.as_ref().unwrap();
        let real = &auth.accounts["alice"].hash;
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(
            Params::try_from(dummy).unwrap(),
            Params::try_from(real).unwrap()
        );
        assert_ne!(dummy.salt, real.salt);
    }

    #[test]
    fn anonymous_only_when_allowed() {
        let open = Authenticator::new(&security(true, vec![user("alice", "pw", &[])]));
        assert_eq!(open.authenticate(None, None), Ok(Principal::anonymous()));
        assert_eq!(
            open.authenticate(Some(""), Some("")),
            Ok(Principal::anonymous())
        );

        let closed = Authenticator::new(&security(false, vec![user("alice", "pw", &[])]));
        assert_eq!(
            closed.authenticate(None, None),
            Err(AuthError::AnonymousRefused)
        );
        assert_eq!(
            closed.authenticate(None, Some("pw")),
            Err(AuthError::AnonymousRefused)
        );
        assert!(closed
            .authenticate(None, None)
            .unwrap_err()
            .to_string()
            .contains("log in with a user name and password"));
    }

    #[test]
    fn without_users_credentials_are_ignored() {
        let open = Authenticator::new(&security(true, Vec::new()));
        assert_eq!(
            open.authenticate(Some("admin"), Some("admin")),
            Ok(Principal::anonymous())
        );
        let closed = Authenticator::new(&security(false, Vec::new()));
        assert_eq!(
            closed.authenticate(Some("admin"), Some("admin")),
            Err(AuthError::AnonymousRefused)
        );
    }

    #[test]
    fn a_user_with_an_unusable_hash_cannot_log_in() {
        let mut bad = user("carol", "pw", &[]);
        bad.password_hash = "plaintext".into();
        let auth = Authenticator::new(&security(false, vec![bad, user("dan", "pw", &[])]));
        let before = verifications();
        assert_eq!(
            auth.authenticate(Some("carol"), Some("plaintext")),
            Err(AuthError::InvalidCredentials)
        );
        assert_eq!(verifications(), before + 1, "refused after the same work");
        assert!(auth.authenticate(Some("dan"), Some("pw")).is_ok());
    }
}
