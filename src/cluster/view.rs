//! The mesh-wide view: every group a member can reach over the bridges, however many hops
//! away, with its client URIs, its load and its distance. A distance-vector table with no I/O
//! and time passed in: the bridges feed it what their peers report (each report is the peer's
//! whole view, so a group missing from it is withdrawn at once), and it answers the best route
//! to each group and what to report over each bridge.
//!
//! Invariants: a group heard directly (a live bridge with it) stays exactly while that bridge
//! is up; a relayed group stays only while some live bridge's latest report carries it and that
//! report is younger than `expiry`; a report never carries a group back over the bridge its
//! best route goes through (split horizon), nor the receiving peer itself; routes longer than
//! `MAX_HOPS` and routes to this group are dropped, so a withdrawn group can never bounce
//! between members for long. Group names are not pinned to the topology a term started with:
//! `meshmq apply` may add groups to a running mesh (and bridges are only accepted from the
//! mesh's own groups).

/// No route is longer than this many hops (a mesh of more groups in one chain than this is
/// not one this view serves).
pub const MAX_HOPS: u32 = 16;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::wire::proto;

/// One way to reach a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub uris: Vec<String>,
    pub clients: u64,
    pub capacity: u64,
    /// 1 for a peer with a live bridge, one more per bridge beyond.
    pub hops: u32,
}

/// What one live bridge tells about the mesh.
#[derive(Debug, Clone)]
struct Heard {
    peer: String,
    /// The peer itself (hops 1); refreshed by every report, kept while the bridge is up.
    direct: Route,
    /// The groups beyond the peer, hops counted from here, and when they were last reported.
    relayed: BTreeMap<String, Route>,
    reported_at: Instant,
}

/// The distance-vector table of one member.
#[derive(Debug, Clone)]
pub struct MeshTable {
    own: String,
    expiry: Duration,
    bridges: BTreeMap<u64, Heard>,
}

impl MeshTable {
    /// Relayed routes not reported again within `expiry` are dropped.
    pub fn new(own: &str, expiry: Duration) -> MeshTable {
        MeshTable {
            own: own.to_string(),
            expiry,
            bridges: BTreeMap::new(),
        }
    }

    fn admits(&self, group: &str) -> bool {
        !group.is_empty() && group != self.own
    }

    /// A report (or the handshake) from the peer of `bridge`: its own load and its view.
    /// Replaces everything this bridge said before. True when the set of reachable groups or
    /// their URIs changed.
    pub fn heard(&mut self, bridge: u64, info: &proto::BrokerInfo, now: Instant) -> bool {
        if !self.admits(&info.group) {
            return false;
        }
        let before = self.groups(now);
        let relayed = info
            .mesh_groups
            .iter()
            .filter(|g| g.group != info.group && self.admits(&g.group))
            .filter_map(|g| {
                let hops = g.hops.max(1).saturating_add(1);
                (hops <= MAX_HOPS).then(|| {
                    (
                        g.group.clone(),
                        Route {
                            uris: g.client_uris.clone(),
                            clients: g.clients,
                            capacity: g.capacity,
                            hops,
                        },
                    )
                })
            })
            .collect();
        self.bridges.insert(
            bridge,
            Heard {
                peer: info.group.clone(),
                direct: Route {
                    uris: info.client_uris.clone(),
                    clients: info.clients,
                    capacity: info.capacity,
                    hops: 1,
                },
                relayed,
                reported_at: now,
            },
        );
        self.groups(now) != before
    }

    /// True while `bridge` is up and its peer is `peer`.
    pub fn has_bridge(&self, bridge: u64, peer: &str) -> bool {
        self.bridges.get(&bridge).is_some_and(|h| h.peer == peer)
    }

    /// The bridge went down: everything it said goes with it. True when the view changed.
    pub fn bridge_down(&mut self, bridge: u64, now: Instant) -> bool {
        let before = self.groups(now);
        if self.bridges.remove(&bridge).is_none() {
            return false;
        }
        self.groups(now) != before
    }

    /// Drops the relayed routes of reports older than `expiry` (`best` already skips them).
    /// True when some were dropped: what was last published from this table may hold them.
    pub fn expire(&mut self, now: Instant) -> bool {
        let mut dropped = false;
        for h in self.bridges.values_mut() {
            if !h.relayed.is_empty() && now.duration_since(h.reported_at) > self.expiry {
                h.relayed.clear();
                dropped = true;
            }
        }
        dropped
    }

    /// The best route to every reachable group: fewest hops, then the lowest bridge number
    /// (stable), with the bridge it goes through.
    pub fn best(&self, now: Instant) -> BTreeMap<String, (u64, Route)> {
        let mut out: BTreeMap<String, (u64, Route)> = BTreeMap::new();
        for (bridge, h) in &self.bridges {
            let fresh = now.duration_since(h.reported_at) <= self.expiry;
            let relayed = h.relayed.iter().filter(|_| fresh);
            for (group, route) in std::iter::once((&h.peer, &h.direct)).chain(relayed) {
                let better = out.get(group).is_none_or(|(_, r)| route.hops < r.hops);
                if better {
                    out.insert(group.clone(), (*bridge, route.clone()));
                }
            }
        }
        out
    }

    /// Every reachable group and its URIs.
    pub fn groups(&self, now: Instant) -> BTreeMap<String, Vec<String>> {
        self.best(now)
            .into_iter()
            .map(|(g, (_, r))| (g, r.uris))
            .collect()
    }

    /// What to report over `bridge`: every reachable group except its peer and the groups
    /// whose best route goes through it.
    pub fn report_for(&self, bridge: u64, now: Instant) -> Vec<proto::MeshGroup> {
        let peer = self.bridges.get(&bridge).map(|h| h.peer.as_str());
        self.best(now)
            .into_iter()
            .filter(|(g, (via, _))| *via != bridge && Some(g.as_str()) != peer)
            .map(|(group, (_, r))| proto::MeshGroup {
                group,
                client_uris: r.uris,
                clients: r.clients,
                capacity: r.capacity,
                hops: r.hops,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPIRY: Duration = Duration::from_secs(5);

    fn report(group: &str, clients: u64, view: &[(&str, u32)]) -> proto::BrokerInfo {
        proto::BrokerInfo {
            group: group.into(),
            client_uris: vec![format!("tcp://{group}:1")],
            clients,
            capacity: 100,
            mesh_groups: view
                .iter()
                .map(|(g, hops)| proto::MeshGroup {
                    group: g.to_string(),
                    client_uris: vec![format!("tcp://{g}:1")],
                    clients: 7,
                    capacity: 100,
                    hops: *hops,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn an_edge_learns_the_other_edges_through_the_hub_with_their_distance() {
        let t0 = Instant::now();
        let mut edge1 = MeshTable::new("edge-1", EXPIRY);
        assert!(edge1.heard(1, &report("hub", 0, &[]), t0));
        assert!(edge1.heard(
            1,
            &report("hub", 0, &[("edge-2", 1), ("edge-3", 1), ("edge-1", 1)]),
            t0
        ));
        let best = edge1.best(t0);
        let hops: Vec<(&str, u32)> = best
            .iter()
            .map(|(g, (_, r))| (g.as_str(), r.hops))
            .collect();
        assert_eq!(
            hops,
            vec![("edge-2", 2), ("edge-3", 2), ("hub", 1)],
            "itself dropped"
        );
        assert_eq!(best["edge-2"].1.clients, 7, "the relayed load");
        // A direct bridge with edge-2 is the better route.
        edge1.heard(2, &report("edge-2", 3, &[]), t0);
        assert_eq!(
            edge1.best(t0)["edge-2"],
            (2, edge1.best(t0)["edge-2"].1.clone())
        );
        assert_eq!(edge1.best(t0)["edge-2"].1.hops, 1);
        assert_eq!(edge1.best(t0)["edge-2"].1.clients, 3);
    }

    #[test]
    fn a_withdrawn_group_leaves_with_the_next_report_and_a_dead_bridge_takes_its_routes() {
        let t0 = Instant::now();
        let mut edge1 = MeshTable::new("edge-1", EXPIRY);
        edge1.heard(1, &report("hub", 0, &[("edge-2", 1), ("edge-3", 1)]), t0);
        // edge-2's bridge with the hub died: the hub's next report lacks it.
        assert!(edge1.heard(1, &report("hub", 0, &[("edge-3", 1)]), t0));
        assert_eq!(
            edge1.groups(t0).into_keys().collect::<Vec<_>>(),
            vec!["edge-3", "hub"]
        );
        // The hub dies: every group heard through it goes.
        assert!(edge1.bridge_down(1, t0));
        assert!(edge1.groups(t0).is_empty());
        assert!(!edge1.bridge_down(1, t0), "already gone");
    }

    #[test]
    fn relayed_routes_expire_when_their_reports_stop_but_the_peer_stays_while_its_bridge_is_up() {
        let t0 = Instant::now();
        let mut edge1 = MeshTable::new("edge-1", EXPIRY);
        edge1.heard(1, &report("hub", 0, &[("edge-2", 1)]), t0);
        let within = t0 + EXPIRY;
        assert!(!edge1.expire(within), "not yet stale");
        assert_eq!(edge1.groups(within).len(), 2);
        let past = t0 + EXPIRY + Duration::from_millis(1);
        assert_eq!(
            edge1.groups(past).into_keys().collect::<Vec<_>>(),
            vec!["hub"],
            "a stale relayed route is not used even before expire runs"
        );
        assert!(edge1.expire(past));
        assert!(!edge1.expire(past), "once");
        // A fresh report brings it back.
        assert!(edge1.heard(1, &report("hub", 0, &[("edge-2", 1)]), past));
        assert_eq!(edge1.groups(past).len(), 2);
    }

    #[test]
    fn reports_split_the_horizon_and_overlong_routes_are_dropped() {
        let t0 = Instant::now();
        let mut hub = MeshTable::new("hub", EXPIRY);
        hub.heard(1, &report("edge-1", 0, &[]), t0);
        hub.heard(2, &report("edge-2", 0, &[("edge-3", 1)]), t0);
        let to_edge1: Vec<(String, u32)> = hub
            .report_for(1, t0)
            .into_iter()
            .map(|g| (g.group, g.hops))
            .collect();
        assert_eq!(
            to_edge1,
            vec![("edge-2".to_string(), 1), ("edge-3".to_string(), 2)]
        );
        let to_edge2: Vec<String> = hub.report_for(2, t0).into_iter().map(|g| g.group).collect();
        assert_eq!(to_edge2, vec!["edge-1"], "edge-3 is reached through edge-2");
        // A route one hop past MAX_HOPS is dropped; a report naming this group is ignored.
        let mut edge1 = MeshTable::new("edge-1", EXPIRY);
        let far = [
            ("edge-2", MAX_HOPS - 1),
            ("edge-3", MAX_HOPS),
            ("edge-1", 1),
        ];
        edge1.heard(1, &report("hub", 0, &far), t0);
        assert_eq!(
            edge1.groups(t0).into_keys().collect::<Vec<_>>(),
            vec!["edge-2", "hub"]
        );
        assert!(!edge1.heard(9, &report("edge-1", 0, &[]), t0), "itself");
    }

    #[test]
    fn a_chain_carries_a_group_two_hops_and_withdraws_it_when_the_far_link_dies() {
        let t0 = Instant::now();
        // hub -- edge-a -- edge-b
        let mut hub = MeshTable::new("hub", EXPIRY);
        let mut a = MeshTable::new("edge-a", EXPIRY);
        let mut b = MeshTable::new("edge-b", EXPIRY);
        let info = |t: &MeshTable, group: &str, bridge: u64| proto::BrokerInfo {
            group: group.into(),
            client_uris: vec![format!("tcp://{group}:1")],
            mesh_groups: t.report_for(bridge, t0),
            ..Default::default()
        };
        for _ in 0..2 {
            hub.heard(1, &info(&a, "edge-a", 1), t0);
            a.heard(1, &info(&hub, "hub", 1), t0);
            a.heard(2, &info(&b, "edge-b", 2), t0);
            b.heard(2, &info(&a, "edge-a", 2), t0);
        }
        assert_eq!(hub.best(t0)["edge-b"].1.hops, 2);
        assert_eq!(b.best(t0)["hub"].1.hops, 2);
        // edge-a loses edge-b: its next report to the hub withdraws it.
        a.bridge_down(2, t0);
        hub.heard(1, &info(&a, "edge-a", 1), t0);
        assert!(!hub.groups(t0).contains_key("edge-b"));
    }
}
