//! Names a logged-in user has claimed: client ids, and the connection-id prefixes of
//! temporary destination names. A name claimed by one user cannot be taken by another — not
//! while the claiming connection lives, and not after it closed, so a failover client can come
//! back to its client id and re-create its temporary destinations without someone else having
//! taken them in between.
//!
//! Owns: the claims and their bound. Must not touch: sessions or destinations (the broker asks
//! before it opens or adopts). Invariants: an anonymous connection claims nothing lasting (it
//! is nobody, so there is no one to keep a name for); a name in use by a live connection is
//! never forgotten; of the names no live connection uses, at most [`MAX_IDLE_CLAIMS`] are kept,
//! the oldest forgotten first. Claims live in memory: after a restart the first user to use a
//! name claims it again.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;

/// Claims kept for names no live connection uses (about 100 bytes each).
pub const MAX_IDLE_CLAIMS: usize = 65_536;

#[derive(Debug)]
struct Claim {
    owner: String,
    /// Live connections using the name.
    live: u32,
}

#[derive(Debug, Default)]
struct State {
    claims: HashMap<String, Claim>,
    /// Names whose last live use ended, oldest first (may hold names used again since).
    idle: VecDeque<String>,
}

/// One kind of claimed name.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    state: Mutex<State>,
}

/// The user a claim belongs to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("claimed by another user")]
pub(crate) struct ClaimedByAnother;

impl Claims {
    /// Takes `name` for a live connection of `user` (`None`: anonymous, claims nothing).
    /// Refused when another user claimed it.
    pub(crate) fn take(&self, name: &str, user: Option<&str>) -> Result<(), ClaimedByAnother> {
        let mut state = self.state.lock();
        match state.claims.get_mut(name) {
            Some(claim) if Some(claim.owner.as_str()) != user => Err(ClaimedByAnother),
            Some(claim) => {
                claim.live += 1;
                Ok(())
            }
            None => {
                if let Some(owner) = user {
                    state.claims.insert(
                        name.to_string(),
                        Claim {
                            owner: owner.to_string(),
                            live: 1,
                        },
                    );
                }
                Ok(())
            }
        }
    }

    /// Whether `user` may take `name` (nobody else claimed it).
    pub(crate) fn check(&self, name: &str, user: Option<&str>) -> Result<(), ClaimedByAnother> {
        match self.state.lock().claims.get(name) {
            Some(claim) if Some(claim.owner.as_str()) != user => Err(ClaimedByAnother),
            _ => Ok(()),
        }
    }

    /// A live connection of `user` stopped using `name` (it took it with [`Claims::take`]).
    pub(crate) fn release(&self, name: &str, user: Option<&str>) {
        let mut state = self.state.lock();
        let State { claims, idle } = &mut *state;
        let Some(claim) = claims.get_mut(name) else {
            return;
        };
        if Some(claim.owner.as_str()) != user || claim.live == 0 {
            return;
        }
        claim.live -= 1;
        if claim.live > 0 {
            return;
        }
        idle.push_back(name.to_string());
        while idle.len() > MAX_IDLE_CLAIMS {
            let Some(oldest) = idle.pop_front() else {
                break;
            };
            if claims.get(&oldest).is_some_and(|c| c.live == 0) {
                claims.remove(&oldest);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.state.lock().claims.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_stays_with_its_user_after_the_connection_closes() {
        let claims = Claims::default();
        claims.take("app", Some("alice")).unwrap();
        assert_eq!(claims.take("app", Some("bob")), Err(ClaimedByAnother));
        assert_eq!(claims.take("app", None), Err(ClaimedByAnother));
        claims.release("app", Some("alice"));
        assert_eq!(claims.check("app", Some("bob")), Err(ClaimedByAnother));
        assert_eq!(claims.check("app", Some("alice")), Ok(()));
        claims.take("app", Some("alice")).unwrap();
    }

    #[test]
    fn anonymous_connections_claim_nothing() {
        let claims = Claims::default();
        claims.take("anon", None).unwrap();
        claims.take("anon", None).unwrap();
        assert_eq!(claims.len(), 0);
        claims.take("anon", Some("alice")).unwrap();
    }

    #[test]
    fn idle_claims_are_bounded_and_live_ones_kept() {
        let claims = Claims::default();
        claims.take("live", Some("alice")).unwrap();
        for n in 0..MAX_IDLE_CLAIMS + 10 {
            let name = format!("n{n}");
            claims.take(&name, Some("u")).unwrap();
            claims.release(&name, Some("u"));
        }
        assert_eq!(claims.len(), MAX_IDLE_CLAIMS + 1);
        assert_eq!(claims.check("live", Some("bob")), Err(ClaimedByAnother));
        assert_eq!(claims.check("n0", Some("bob")), Ok(()), "the oldest went");
    }
}
