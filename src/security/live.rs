//! The login and ACL rules a running member applies now, replaceable while it runs (`meshmq
//! apply`): every new login and every action checks the current rules, and connections are
//! told of each replacement so that one whose user went, or whose subscription lost its right,
//! loses it at once.

use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::watch;

use crate::config::Security;

use super::{AuthError, Authenticator, Authorizer, Principal};

/// One version of the rules.
pub struct Rules {
    pub authenticator: Arc<Authenticator>,
    pub authorizer: Authorizer,
    /// 1 for the rules a member started with, then one more per replacement.
    pub version: u64,
}

impl Rules {
    /// Re-admits a connection that logged in under `earlier`: the same principal with the
    /// security groups it has now, or why it may stay no longer (its user went, its password
    /// changed, or anonymous access was turned off).
    pub fn readmit(&self, principal: &Principal, earlier: &Rules) -> Result<Principal, AuthError> {
        self.authenticator
            .readmit(principal, &earlier.authenticator)
    }
}

/// The current rules of a member, and a signal for each replacement.
pub struct LiveSecurity {
    current: RwLock<Arc<Rules>>,
    changed: watch::Sender<u64>,
    /// Bytes the password verifications running at once may use (each version's own gate).
    login_memory: u64,
}

impl LiveSecurity {
    /// `login_memory`: bytes the password verifications running at once may use.
    pub fn new(security: &Security, login_memory: u64) -> Arc<LiveSecurity> {
        Arc::new(LiveSecurity {
            login_memory,
            current: RwLock::new(Arc::new(Rules {
                authenticator: Arc::new(Authenticator::with_login_memory(security, login_memory)),
                authorizer: Authorizer::new(security),
                version: 1,
            })),
            changed: watch::channel(1).0,
        })
    }

    pub fn current(&self) -> Arc<Rules> {
        self.current.read().clone()
    }

    /// Replaces the rules; every watcher wakes.
    pub fn replace(&self, security: &Security) {
        let version = {
            let mut current = self.current.write();
            let version = current.version + 1;
            *current = Arc::new(Rules {
                authenticator: Arc::new(Authenticator::with_login_memory(
                    security,
                    self.login_memory,
                )),
                authorizer: Authorizer::new(security),
                version,
            });
            version
        };
        self.changed.send_replace(version);
    }

    /// Fires after each replacement (the value is the new version).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}
