//! Destination rights, as ActiveMQ's authorization map grants them.

use std::fmt;

use crate::config::{Acl, Security};
use crate::destination::{Destination, DestinationPattern};

use super::Principal;

/// What a principal wants to do with a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Consume (subscribe, browse).
    Read,
    /// Send.
    Write,
    /// Create a destination that does not exist yet.
    Admin,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Admin => "create (admin)",
        }
    }

    fn groups(self, acl: &Acl) -> &[String] {
        match self {
            Action::Read => &acl.read,
            Action::Write => &acl.write,
            Action::Admin => &acl.admin,
        }
    }
}

/// A refused action; its text is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Denied {
    pub user: Option<String>,
    pub action: Action,
    /// The destination, or the wildcard pattern of a subscription.
    pub destination: String,
    /// The groups the matching ACL entries allow for the action (none matched: `None`).
    pub allowed: Option<Vec<String>>,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            Some(user) => write!(f, "user {user:?}")?,
            None => f.write_str("an anonymous connection")?,
        }
        write!(f, " may not {} {}", self.action.verb(), self.destination)?;
        match &self.allowed {
            None => f.write_str(" (no ACL entry covers it)"),
            Some(groups) if groups.is_empty() => f.write_str(" (allowed groups: none)"),
            Some(groups) => write!(f, " (allowed groups: {})", groups.join(", ")),
        }
    }
}

/// Decides what a principal may do with a destination.
///
/// - Without ACL entries, everyone who got in may do everything.
/// - Otherwise the action is allowed when some entry whose pattern matches the destination
///   grants it to one of the principal's groups. Every matching entry counts (their grants
///   add up); no matching entry means no right.
/// - Temporary destinations need no right: each connection makes its own (that only their
///   creator consumes them is enforced where they are created).
#[derive(Clone, Debug)]
pub struct Authorizer {
    acls: Vec<Acl>,
}

impl Authorizer {
    pub fn new(security: &Security) -> Authorizer {
        Authorizer {
            acls: security.acls.clone(),
        }
    }

    pub fn check(
        &self,
        principal: &Principal,
        action: Action,
        destination: &Destination,
    ) -> Result<(), Denied> {
        if self.acls.is_empty() || destination.kind().is_temp() {
            return Ok(());
        }
        let mut allowed: Option<Vec<String>> = None;
        for acl in self
            .acls
            .iter()
            .filter(|a| a.destination.matches(destination))
        {
            let granted = action.groups(acl);
            if granted.iter().any(|g| principal.groups.contains(g)) {
                return Ok(());
            }
            let groups = allowed.get_or_insert_with(Vec::new);
            for g in granted {
                if !groups.contains(g) {
                    groups.push(g.clone());
                }
            }
        }
        Err(Denied {
            user: principal.user.clone(),
            action,
            destination: destination.to_string(),
            allowed,
        })
    }

    /// Checks a subscription pattern. A wildcard is allowed only when one ACL entry whose
    /// pattern covers all of it grants the action: a grant on part of what a wildcard matches
    /// does not open the rest.
    pub fn check_pattern(
        &self,
        principal: &Principal,
        action: Action,
        pattern: &DestinationPattern,
    ) -> Result<(), Denied> {
        if let Some(dest) = pattern.as_destination() {
            return self.check(principal, action, &dest);
        }
        if self.acls.is_empty() || pattern.kind().is_temp() {
            return Ok(());
        }
        let mut allowed: Option<Vec<String>> = None;
        for acl in self.acls.iter().filter(|a| a.destination.covers(pattern)) {
            let granted = action.groups(acl);
            if granted.iter().any(|g| principal.groups.contains(g)) {
                return Ok(());
            }
            let groups = allowed.get_or_insert_with(Vec::new);
            groups.extend(
                granted
                    .iter()
                    .filter(|g| !groups.contains(g))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
        }
        Err(Denied {
            user: principal.user.clone(),
            action,
            destination: pattern.to_string(),
            allowed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(pattern: &str, read: &[&str], write: &[&str], admin: &[&str]) -> Acl {
        let names = |g: &[&str]| g.iter().map(|s| s.to_string()).collect();
        Acl {
            destination: DestinationPattern::parse(pattern).unwrap(),
            read: names(read),
            write: names(write),
            admin: names(admin),
        }
    }

    fn who(user: &str, groups: &[&str]) -> Principal {
        Principal {
            user: Some(user.into()),
            groups: groups.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn dest(s: &str) -> Destination {
        Destination::parse(s).unwrap()
    }

    fn authorizer(acls: Vec<Acl>) -> Authorizer {
        Authorizer::new(&Security {
            allow_anonymous: false,
            users: Vec::new(),
            acls,
        })
    }

    #[test]
    fn without_acls_everyone_may_do_everything() {
        let open = authorizer(Vec::new());
        for action in [Action::Read, Action::Write, Action::Admin] {
            assert_eq!(
                open.check(&Principal::anonymous(), action, &dest("queue://x")),
                Ok(())
            );
            assert_eq!(
                open.check(&who("bob", &[]), action, &dest("topic://y.z")),
                Ok(())
            );
        }
    }

    #[test]
    fn acl_matrix() {
        use Action::*;
        let map = authorizer(vec![
            acl(
                "queue://orders.>",
                &["consumers"],
                &["producers"],
                &["admins"],
            ),
            acl("queue://orders.eu", &["auditors"], &[], &[]),
            acl(
                "topic://prices.*",
                &["consumers", "traders"],
                &["feed"],
                &["admins"],
            ),
            acl("queue://exact", &["consumers"], &["consumers"], &[]),
        ]);
        let alice = who("alice", &["producers", "consumers"]);
        let bob = who("bob", &["consumers"]);
        let carol = who("carol", &["auditors"]);
        let dave = who("dave", &["admins"]);
        let feed = who("feed-1", &["feed"]);
        let anon = Principal::anonymous();

        type Case<'a> = (&'a Principal, Action, &'a str, bool);
        let cases: &[Case] = &[
            // Wildcard entry: rights by group and action.
            (&alice, Write, "queue://orders.us", true),
            (&alice, Read, "queue://orders.us", true),
            (&alice, Admin, "queue://orders.us", false),
            (&bob, Read, "queue://orders.us", true),
            (&bob, Write, "queue://orders.us", false),
            (&dave, Admin, "queue://orders.us", true),
            (&dave, Read, "queue://orders.us", false),
            // '>' needs at least one more segment.
            (&alice, Write, "queue://orders", false),
            // Two entries match orders.eu: their grants add up.
            (&carol, Read, "queue://orders.eu", true),
            (&bob, Read, "queue://orders.eu", true),
            (&carol, Read, "queue://orders.us", false),
            (&carol, Write, "queue://orders.eu", false),
            // '*' is exactly one segment; kinds never cross.
            (&bob, Read, "topic://prices.gold", true),
            (&bob, Read, "topic://prices.gold.spot", false),
            (&feed, Write, "topic://prices.gold", true),
            (&feed, Write, "queue://prices.gold", false),
            // Exact entry.
            (&bob, Write, "queue://exact", true),
            (&bob, Write, "queue://exact.more", false),
            // Nothing matches: nobody may.
            (&dave, Admin, "queue://elsewhere", false),
            // Anonymous has no groups.
            (&anon, Read, "queue://orders.us", false),
            // Temp destinations need no right.
            (&anon, Write, "temp-queue://c1.reply", true),
            (&bob, Read, "temp-topic://t", true),
            (&bob, Admin, "temp-queue://c1.reply", true),
        ];
        for (principal, action, destination, allowed) in cases {
            let got = map.check(principal, *action, &dest(destination));
            assert_eq!(
                got.is_ok(),
                *allowed,
                "{:?} {action:?} {destination}: {got:?}",
                principal.user
            );
        }
    }

    #[test]
    fn denials_name_the_user_the_action_and_who_may() {
        let map = authorizer(vec![
            acl("queue://orders", &["consumers"], &["producers"], &[]),
            acl("queue://>", &[], &["bridges", "producers"], &[]),
        ]);
        let bob = who("bob", &["consumers"]);
        let text = |p: &Principal, a, d: &str| map.check(p, a, &dest(d)).unwrap_err().to_string();
        assert_eq!(
            text(&bob, Action::Write, "queue://orders"),
            "user \"bob\" may not write queue://orders (allowed groups: producers, bridges)"
        );
        assert_eq!(
            text(&bob, Action::Admin, "queue://orders"),
            "user \"bob\" may not create (admin) queue://orders (allowed groups: none)"
        );
        assert_eq!(
            text(&Principal::anonymous(), Action::Read, "topic://news"),
            "an anonymous connection may not read topic://news (no ACL entry covers it)"
        );
    }
}
