//! What differs between two validated topologies, key by key, and which differences a running
//! member takes in place and which only a restart applies (`meshmq plan`, and a member taking a
//! new file with `meshmq apply`).
//!
//! Items are matched by what names them — groups, members and connectors by name, listeners
//! by URL, users by name, ACLs and policies by destination pattern — so a reordered file shows
//! no change. Secrets are compared but never printed. Live changes are the mesh's shape around
//! a member (groups and members it does not belong to, connectors, security, the admin token),
//! destination policies, the broker's flow-control and destination limits, and listeners'
//! `max_connections`; a member's own listeners, addresses and data directory, its group's
//! election, the broker keys each connection agrees on when it opens (frame size, heartbeat,
//! connect timeout, STOMP header limits) and the start-up timers, and the store, ZooKeeper,
//! metrics and rebalance settings need a restart.

use std::collections::BTreeMap;
use std::fmt::Debug;

use super::topology::{
    Acl, BrokerPolicy, Connector, DestinationPolicy, Group, Listener, Member, Topology, User,
};

/// Who must restart for a change to take effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restart {
    /// Running members take it in place.
    No,
    /// These members (by name) apply it only when restarted.
    Members(Vec<String>),
}

/// One difference, under the heading it is printed in (`group hub`, `connectors`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub heading: String,
    /// What changed, e.g. `member hub-2: added` or `max_connections: 100 -> 200`.
    pub what: String,
    pub restart: Restart,
}

impl Change {
    pub fn needs_restart(&self) -> bool {
        matches!(self.restart, Restart::Members(_))
    }

    /// Whether `member` must restart for this change.
    pub fn restarts(&self, member: &str) -> bool {
        matches!(&self.restart, Restart::Members(m) if m.iter().any(|x| x == member))
    }
}

/// Every difference from `old` to `new`, headings in a stable order: mesh-wide settings,
/// then each group (file order of `new`, removed groups last), connectors, security, policies.
pub fn diff(old: &Topology, new: &Topology) -> Vec<Change> {
    let mut out = Vec::new();
    let everyone: Vec<String> = new
        .members()
        .chain(old.members())
        .map(|(_, m)| m.name.to_string())
        .fold(Vec::new(), |mut acc, m| {
            if !acc.contains(&m) {
                acc.push(m);
            }
            acc
        });
    let mesh_wide = |what: String| Change {
        heading: "mesh".into(),
        what,
        restart: Restart::Members(everyone.clone()),
    };
    if old.mesh != new.mesh {
        out.push(mesh_wide(format!("name: {} -> {}", old.mesh, new.mesh)));
    }
    let (live, restart) = broker_changes(&old.broker, &new.broker);
    if !live.is_empty() {
        out.push(Change {
            heading: "mesh".into(),
            what: format!("[broker] {}", describe(&live)),
            restart: Restart::No,
        });
    }
    if !restart.is_empty() {
        out.push(mesh_wide(format!("[broker] {}", describe(&restart))));
    }
    let sections: [(&str, String, String); 4] = [
        (
            "[store]",
            format!("{:?}", old.store),
            format!("{:?}", new.store),
        ),
        (
            "[metrics]",
            format!("{:?}", old.metrics),
            format!("{:?}", new.metrics),
        ),
        (
            "[rebalance]",
            format!("{:?}", old.rebalance),
            format!("{:?}", new.rebalance),
        ),
        ("[zookeeper]", zookeeper(old), zookeeper(new)),
    ];
    for (name, before, after) in sections {
        if before != after {
            out.push(mesh_wide(format!("{name}: {before} -> {after}")));
        }
    }
    let (old_token, new_token) = (
        old.admin.token.as_ref().map(|t| t.expose()),
        new.admin.token.as_ref().map(|t| t.expose()),
    );
    if old_token != new_token {
        let what = match (old_token, new_token) {
            (None, _) => "[admin] token: added",
            (_, None) => "[admin] token: removed (members will refuse every write)",
            _ => "[admin] token: changed",
        };
        out.push(Change {
            heading: "mesh".into(),
            what: what.into(),
            restart: Restart::No,
        });
    }
    if old.bridges.secret_file != new.bridges.secret_file {
        let show = |p: &Option<std::path::PathBuf>| {
            p.as_ref()
                .map_or_else(|| "none".to_string(), |p| p.display().to_string())
        };
        out.push(Change {
            heading: "mesh".into(),
            what: format!(
                "secret_file: {} -> {} (bridges dialled from now on present the new secret)",
                show(&old.bridges.secret_file),
                show(&new.bridges.secret_file)
            ),
            restart: Restart::No,
        });
    }
    if old.bridges.allow_anonymous != new.bridges.allow_anonymous {
        out.push(Change {
            heading: "mesh".into(),
            what: format!(
                "allow_anonymous_bridges: {} -> {}",
                old.bridges.allow_anonymous, new.bridges.allow_anonymous
            ),
            restart: Restart::No,
        });
    }
    groups(old, new, &mut out);
    connectors(old, new, &mut out);
    security(old, new, &mut out);
    policies(old, new, &mut out);
    out
}

fn zookeeper(t: &Topology) -> String {
    match &t.zookeeper {
        None => "none".into(),
        Some(z) => {
            let connect: Vec<String> = z.connect.iter().map(|h| h.to_string()).collect();
            format!(
                "connect {}, session_timeout {:?}, root {}, digest {}",
                connect.join(","),
                z.session_timeout,
                z.root,
                if z.digest.is_some() { "set" } else { "none" }
            )
        }
    }
}

type Fields = Vec<(&'static str, String)>;

macro_rules! fields {
    ($v:expr; $($f:ident),+ $(,)?) => {
        vec![$((stringify!($f), format!("{:?}", $v.$f))),+]
    };
}

/// The broker keys a running member takes in place: flow control and destination limits,
/// which the broker reads where they apply (each send, redelivery, subscription).
fn broker_live_fields(b: &BrokerPolicy) -> Fields {
    fields!(b; memory_limit, on_full, max_redeliveries, topic_pending_limit, topic_pending_size,
        prefetch, max_subscriptions_per_connection)
}

/// The broker keys only a restart applies: each connection agrees on its frame size,
/// heartbeat and header limits when it opens, and the expiry and shutdown timers are set when
/// the member starts.
fn broker_restart_fields(b: &BrokerPolicy) -> Fields {
    fields!(b; max_frame_size, heartbeat, connect_timeout, stomp_max_headers,
        stomp_max_header_length, expiry_check_interval, shutdown_timeout)
}

type FieldChanges = Vec<(&'static str, Option<String>, String)>;

/// The keys of `[broker]` (or a group's) that changed: (taken in place, needing a restart).
fn broker_changes(old: &BrokerPolicy, new: &BrokerPolicy) -> (FieldChanges, FieldChanges) {
    (
        fields_changed(&broker_live_fields(old), &broker_live_fields(new)),
        fields_changed(&broker_restart_fields(old), &broker_restart_fields(new)),
    )
}

fn group_fields(g: &Group) -> Fields {
    let mut f = fields!(g; election, replicas, sync, quorum_timeout, lock_poll, shared_dir);
    f.push((
        SECRET_REPLICATION_TOKEN,
        g.replication_token
            .as_ref()
            .map(|t| short_digest(t.expose()))
            .unwrap_or_else(|| "none".into()),
    ));
    f
}

fn member_fields(m: &Member) -> Fields {
    fields!(m; admin, data_dir, bind, weight, replication)
}

fn listener_fields(l: &Listener) -> Fields {
    let filters: Vec<&str> = l.update_cluster_filter.iter().map(|r| r.as_str()).collect();
    let mut f = fields!(l; advertise, update_cluster_clients,
        rebalance_cluster_clients, update_cluster_clients_on_remove, tls);
    f.push(("update_cluster_filter", format!("{filters:?}")));
    f
}

fn connector_fields(c: &Connector) -> Fields {
    let mut f = fields!(c; from, to, duplex, message_ttl, consumer_ttl, conduit_subscriptions,
        decrease_network_consumer_priority, consumer_priority_base, prefetch,
        dynamically_included, statically_included, excluded, static_bridge,
        bridge_temp_destinations, always_sync_send, suppress_duplicate_queue_subscriptions,
        replay_when_no_consumers, replay_delay, transport, reconnect_initial_delay,
        reconnect_max_delay, reconnect_multiplier, heartbeat, handshake_timeout, username,
        password_file, tls_ca);
    f.push((
        "uri",
        c.uri.as_ref().map(|u| format!("{u:?}")).unwrap_or_default(),
    ));
    f
}

fn user_fields(u: &User) -> Fields {
    let mut f = fields!(u; groups);
    f.push((SECRET_PASSWORD, short_digest(&u.password_hash)));
    f
}

fn acl_fields(a: &Acl) -> Fields {
    fields!(a; read, write, admin)
}

fn policy_fields(p: &DestinationPolicy) -> Fields {
    fields!(p; memory_limit, max_redeliveries, topic_pending_limit, topic_pending_size, prefetch, on_full)
}

/// A digest that tells two secrets apart without showing them (never printed: a changed
/// secret is reported as "changed").
fn short_digest(text: &str) -> String {
    format!("{:08x}", crc32c::crc32c(text.as_bytes()))
}

const SECRET_PASSWORD: &str = "password";
const SECRET_REPLICATION_TOKEN: &str = "replication_token";

/// `(key, before, after)` for each field that differs; a secret's before is `None` (it is
/// reported as changed, never shown).
fn fields_changed(old: &Fields, new: &Fields) -> Vec<(&'static str, Option<String>, String)> {
    old.iter()
        .zip(new)
        .filter(|((_, a), (_, b))| a != b)
        .map(|((k, a), (_, b))| {
            if [SECRET_PASSWORD, SECRET_REPLICATION_TOKEN].contains(k) {
                (*k, None, "changed".to_string())
            } else {
                (*k, Some(a.clone()), b.clone())
            }
        })
        .collect()
}

fn describe(changed: &[(&'static str, Option<String>, String)]) -> String {
    changed
        .iter()
        .map(|(k, a, b)| match a {
            None => format!("{k}: {b}"),
            Some(a) => format!("{k}: {a} -> {b}"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Items keyed by name, in first-seen order, as (name, old, new).
fn pair_up<'a, T>(
    old: impl Iterator<Item = (String, &'a T)>,
    new: impl Iterator<Item = (String, &'a T)>,
) -> Vec<(String, Option<&'a T>, Option<&'a T>)> {
    let mut order: Vec<String> = Vec::new();
    let mut map: BTreeMap<String, (Option<&'a T>, Option<&'a T>)> = BTreeMap::new();
    for (k, v) in new {
        if !map.contains_key(&k) {
            order.push(k.clone());
        }
        map.entry(k).or_default().1 = Some(v);
    }
    for (k, v) in old {
        if !map.contains_key(&k) {
            order.push(k.clone());
        }
        map.entry(k).or_default().0 = Some(v);
    }
    order
        .into_iter()
        .map(|k| {
            let (a, b) = map[&k];
            (k, a, b)
        })
        .collect()
}

fn groups(old: &Topology, new: &Topology, out: &mut Vec<Change>) {
    let pairs = pair_up(
        old.groups.iter().map(|g| (g.name.to_string(), g)),
        new.groups.iter().map(|g| (g.name.to_string(), g)),
    );
    for (name, before, after) in pairs {
        let heading = format!("group {name}");
        let change = |what: String, restart: Restart| Change {
            heading: heading.clone(),
            what,
            restart,
        };
        match (before, after) {
            (None, Some(g)) => {
                let members: Vec<&str> = g.members.iter().map(|m| m.name.as_str()).collect();
                out.push(change(
                    format!(
                        "added (members {}: start them with this file)",
                        members.join(", ")
                    ),
                    Restart::No,
                ));
            }
            (Some(g), None) => {
                let members: Vec<&str> = g.members.iter().map(|m| m.name.as_str()).collect();
                out.push(change(
                    format!(
                        "removed (members {}: stop them once nothing routes through them)",
                        members.join(", ")
                    ),
                    Restart::No,
                ));
            }
            (Some(a), Some(b)) => {
                let all: Vec<String> = a
                    .members
                    .iter()
                    .chain(&b.members)
                    .map(|m| m.name.to_string())
                    .fold(Vec::new(), |mut acc, m| {
                        if !acc.contains(&m) {
                            acc.push(m);
                        }
                        acc
                    });
                let changed = fields_changed(&group_fields(a), &group_fields(b));
                if !changed.is_empty() {
                    out.push(change(describe(&changed), Restart::Members(all.clone())));
                }
                // A group's limits are resolved over `[broker]`: a change that only follows the
                // mesh-wide one is reported there, once.
                let (mesh_live, mesh_restart) = broker_changes(&old.broker, &new.broker);
                let (live, restart) = broker_changes(&a.broker, &b.broker);
                let own = |changed: FieldChanges, mesh: &FieldChanges| -> FieldChanges {
                    changed.into_iter().filter(|c| !mesh.contains(c)).collect()
                };
                let (live, restart) = (own(live, &mesh_live), own(restart, &mesh_restart));
                if !live.is_empty() {
                    out.push(change(
                        format!("[group.broker] {}", describe(&live)),
                        Restart::No,
                    ));
                }
                if !restart.is_empty() {
                    out.push(change(
                        format!("[group.broker] {}", describe(&restart)),
                        Restart::Members(all.clone()),
                    ));
                }
                members(a, b, &all, out, &heading);
            }
            (None, None) => {}
        }
    }
}

fn members(a: &Group, b: &Group, all: &[String], out: &mut Vec<Change>, heading: &str) {
    let pairs = pair_up(
        a.members.iter().map(|m| (m.name.to_string(), m)),
        b.members.iter().map(|m| (m.name.to_string(), m)),
    );
    for (name, before, after) in pairs {
        let change = |what: String, restart: Restart| Change {
            heading: heading.to_string(),
            what: format!("member {name}: {what}"),
            restart,
        };
        match (before, after) {
            // A group's members elect among themselves: a new one takes part once its
            // peers know it, which they learn when they restart.
            (None, Some(_)) => out.push(change(
                "added (start it with this file)".into(),
                Restart::Members(all.to_vec()),
            )),
            (Some(_), None) => out.push(change(
                "removed (stop it)".into(),
                Restart::Members(all.to_vec()),
            )),
            (Some(x), Some(y)) => {
                let changed = fields_changed(&member_fields(x), &member_fields(y));
                if !changed.is_empty() {
                    out.push(change(
                        describe(&changed),
                        Restart::Members(vec![name.clone()]),
                    ));
                }
                let listeners = pair_up(
                    x.listeners.iter().map(|l| (l.url.to_string(), l)),
                    y.listeners.iter().map(|l| (l.url.to_string(), l)),
                );
                for (url, lb, la) in listeners {
                    let what = match (lb, la) {
                        (None, Some(_)) => "added".to_string(),
                        (Some(_), None) => "removed".to_string(),
                        (Some(p), Some(q)) => {
                            // Its connection limit is taken in place: the next connection
                            // meets it, those admitted stay.
                            if p.max_connections != q.max_connections {
                                let show = |m: Option<u32>| {
                                    m.map_or_else(|| "default".to_string(), |m| m.to_string())
                                };
                                out.push(change(
                                    format!(
                                        "listener {url}: max_connections: {} -> {}",
                                        show(p.max_connections),
                                        show(q.max_connections)
                                    ),
                                    Restart::No,
                                ));
                            }
                            let c = fields_changed(&listener_fields(p), &listener_fields(q));
                            if c.is_empty() {
                                continue;
                            }
                            describe(&c)
                        }
                        (None, None) => continue,
                    };
                    out.push(change(
                        format!("listener {url}: {what}"),
                        Restart::Members(vec![name.clone()]),
                    ));
                }
            }
            (None, None) => {}
        }
    }
}

fn connectors(old: &Topology, new: &Topology, out: &mut Vec<Change>) {
    let pairs = pair_up(
        old.connectors.iter().map(|c| (c.name.to_string(), c)),
        new.connectors.iter().map(|c| (c.name.to_string(), c)),
    );
    for (name, before, after) in pairs {
        let arrow = |c: &Connector| {
            format!(
                "{} {} {}",
                c.from,
                if c.duplex { "<->" } else { "->" },
                c.to
            )
        };
        let what = match (before, after) {
            (None, Some(c)) => format!("added ({}): dials at once", arrow(c)),
            (Some(c), None) => format!(
                "removed ({}): drains its in-flight forwards and closes",
                arrow(c)
            ),
            (Some(a), Some(b)) => {
                let c = fields_changed(&connector_fields(a), &connector_fields(b));
                if c.is_empty() {
                    continue;
                }
                format!("{} (its bridge drains, then it dials again)", describe(&c))
            }
            (None, None) => continue,
        };
        out.push(Change {
            heading: "connectors".into(),
            what: format!("{name}: {what}"),
            restart: Restart::No,
        });
    }
}

fn security(old: &Topology, new: &Topology, out: &mut Vec<Change>) {
    let live = |what: String| Change {
        heading: "security".into(),
        what,
        restart: Restart::No,
    };
    if old.security.allow_anonymous != new.security.allow_anonymous {
        out.push(live(format!(
            "allow_anonymous: {} -> {}",
            old.security.allow_anonymous, new.security.allow_anonymous
        )));
    }
    let users = pair_up(
        old.security.users.iter().map(|u| (u.name.clone(), u)),
        new.security.users.iter().map(|u| (u.name.clone(), u)),
    );
    for (name, before, after) in users {
        let what = match (before, after) {
            (None, Some(_)) => "added".to_string(),
            (Some(_), None) => "removed (its connections are closed)".to_string(),
            (Some(a), Some(b)) => {
                let c = fields_changed(&user_fields(a), &user_fields(b));
                if c.is_empty() {
                    continue;
                }
                describe(&c)
            }
            (None, None) => continue,
        };
        out.push(live(format!("user {name}: {what}")));
    }
    let acls = pair_up(
        old.security
            .acls
            .iter()
            .map(|a| (a.destination.as_str().to_string(), a)),
        new.security
            .acls
            .iter()
            .map(|a| (a.destination.as_str().to_string(), a)),
    );
    for (dest, before, after) in acls {
        let what = match (before, after) {
            (None, Some(_)) => "added".to_string(),
            (Some(_), None) => "removed".to_string(),
            (Some(a), Some(b)) => {
                let c = fields_changed(&acl_fields(a), &acl_fields(b));
                if c.is_empty() {
                    continue;
                }
                describe(&c)
            }
            (None, None) => continue,
        };
        out.push(live(format!("acl {dest}: {what}")));
    }
}

/// Destination policies are taken in place: each running member re-resolves every destination
/// it holds (the first matching entry wins, as at start).
fn policies(old: &Topology, new: &Topology, out: &mut Vec<Change>) {
    let pairs = pair_up(
        old.policies
            .iter()
            .map(|p| (p.destination.as_str().to_string(), p)),
        new.policies
            .iter()
            .map(|p| (p.destination.as_str().to_string(), p)),
    );
    let mut changed = false;
    for (dest, before, after) in pairs {
        let what = match (before, after) {
            (None, Some(_)) => "added".to_string(),
            (Some(_), None) => "removed".to_string(),
            (Some(a), Some(b)) => {
                let c = fields_changed(&policy_fields(a), &policy_fields(b));
                if c.is_empty() {
                    continue;
                }
                describe(&c)
            }
            (None, None) => continue,
        };
        changed = true;
        out.push(Change {
            heading: "policies".into(),
            what: format!("policy {dest}: {what}"),
            restart: Restart::No,
        });
    }
    // The first matching entry wins: the same entries in another order are a change too.
    let order = |t: &Topology| -> Vec<String> {
        t.policies
            .iter()
            .map(|p| p.destination.as_str().to_string())
            .collect()
    };
    if !changed && order(old) != order(new) {
        out.push(Change {
            heading: "policies".into(),
            what: format!("order: {:?} -> {:?}", order(old), order(new)),
            restart: Restart::No,
        });
    }
}

/// Prints `changes` grouped by heading, restart-only ones marked.
pub fn render(changes: &[Change]) -> String {
    let mut out = String::new();
    let mut headings: Vec<&str> = Vec::new();
    for c in changes {
        if !headings.contains(&c.heading.as_str()) {
            headings.push(&c.heading);
        }
    }
    for h in headings {
        out.push_str(h);
        out.push_str(":\n");
        for c in changes.iter().filter(|c| c.heading == h) {
            out.push_str("  ");
            out.push_str(&c.what);
            if let Restart::Members(m) = &c.restart {
                out.push_str(&format!("  [needs a restart of {}]", m.join(", ")));
            }
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = r#"
[mesh]
name = "t"

[[group]]
name = "hub"
[[group.member]]
name = "hub-1"
admin = "127.0.0.1:9001"
[[group.member.listener]]
url = "tcp://127.0.0.1:9101"

[[group]]
name = "edge"
[[group.member]]
name = "edge-1"
admin = "127.0.0.1:9002"
[[group.member.listener]]
url = "tcp://127.0.0.1:9102"

[[connector]]
from = "hub"
to = "edge"
"#;

    fn topo(text: &str) -> Topology {
        crate::config::parse_str(text, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_same_file_shows_no_change() {
        assert_eq!(diff(&topo(BASE), &topo(BASE)), Vec::new());
    }

    #[test]
    fn a_new_group_and_connector_are_live_and_a_listener_needs_its_member_restarted() {
        let grown = format!(
            "{}\n[[group]]\nname = \"edge-2\"\n[[group.member]]\nname = \"edge-2-1\"\nadmin = \"127.0.0.1:9003\"\n[[group.member.listener]]\nurl = \"tcp://127.0.0.1:9103\"\n\n[[connector]]\nfrom = \"hub\"\nto = \"edge-2\"\n",
            BASE.replace(
                "url = \"tcp://127.0.0.1:9101\"",
                "url = \"tcp://127.0.0.1:9101\"\n[[group.member.listener]]\nurl = \"stomp://127.0.0.1:9201\""
            )
        );
        let changes = diff(&topo(BASE), &topo(&grown));
        let shown = render(&changes);
        assert!(
            changes.iter().any(|c| c.heading == "group edge-2"
                && c.what.starts_with("added")
                && !c.needs_restart()),
            "{shown}"
        );
        assert!(
            changes.iter().any(|c| c.heading == "connectors"
                && c.what.starts_with("hub-edge-2: added")
                && !c.needs_restart()),
            "{shown}"
        );
        assert!(
            changes.iter().any(|c| c.heading == "group hub"
                && c.what == "member hub-1: listener stomp://127.0.0.1:9201: added"
                && c.restarts("hub-1")
                && !c.restarts("edge-1")),
            "{shown}"
        );
        assert_eq!(changes.len(), 3, "{shown}");
    }

    #[test]
    fn a_removed_user_is_live_and_its_password_never_shows() {
        let hash = crate::security::hash_password("pw");
        let with = |users: &str| format!("{BASE}\n[security]\nallow_anonymous = true\n{users}");
        let alice = format!(
            "[[security.user]]\nname = \"alice\"\npassword_hash = \"{hash}\"\ngroups = [\"g\"]\n"
        );
        let changes = diff(&topo(&with(&alice)), &topo(&with("")));
        assert_eq!(
            changes,
            vec![Change {
                heading: "security".into(),
                what: "user alice: removed (its connections are closed)".into(),
                restart: Restart::No,
            }]
        );
        let other = crate::security::hash_password("pw2");
        let rotated = alice.replace(&hash, &other);
        let changes = diff(&topo(&with(&alice)), &topo(&with(&rotated)));
        let shown = render(&changes);
        assert!(shown.contains("user alice: password: changed"), "{shown}");
        assert!(!shown.contains("argon2"), "{shown}");
    }

    #[test]
    fn a_mesh_wide_broker_key_needs_every_member_restarted() {
        let changed = format!("[broker]\nheartbeat = \"3s\"\n{BASE}");
        let changes = diff(&topo(BASE), &topo(&changed));
        assert_eq!(changes.len(), 1, "{}", render(&changes));
        assert!(changes[0].restarts("hub-1") && changes[0].restarts("edge-1"));
        assert!(
            changes[0].what.contains("heartbeat: 10s -> 3s"),
            "{}",
            changes[0].what
        );
    }

    #[test]
    fn policies_flow_control_and_connection_limits_are_live_but_frame_size_is_not() {
        let changed = format!(
            "[broker]\nmemory_limit = \"64MiB\"\nmax_frame_size = \"1MiB\"\n{}\n[[policy]]\ndestination = \"queue://orders.>\"\nmemory_limit = \"1MiB\"\non_full = \"fail\"\n",
            BASE.replace(
                "url = \"tcp://127.0.0.1:9101\"",
                "url = \"tcp://127.0.0.1:9101\"\nmax_connections = 10"
            )
        );
        let changes = diff(&topo(BASE), &topo(&changed));
        let shown = render(&changes);
        let find = |what: &str| {
            changes
                .iter()
                .find(|c| c.what.contains(what))
                .unwrap_or_else(|| panic!("no change {what:?} in\n{shown}"))
        };
        assert!(
            !find("memory_limit: 1073741824 -> 67108864").needs_restart(),
            "{shown}"
        );
        assert!(
            !find("policy queue://orders.>: added").needs_restart(),
            "{shown}"
        );
        assert!(
            !find("listener tcp://127.0.0.1:9101: max_connections: default -> 10").needs_restart(),
            "{shown}"
        );
        let frame = find("max_frame_size");
        assert!(
            frame.restarts("hub-1") && frame.restarts("edge-1"),
            "{shown}"
        );
        assert!(!frame.what.contains("memory_limit"), "{shown}");
        assert_eq!(changes.len(), 4, "{shown}");
    }
}
