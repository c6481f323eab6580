//! The mesh view a broker pushes to its failover clients, the registry of its client
//! connections, and load-aware rebalancing (ActiveMQ's `updateClusterClients` /
//! `rebalanceClusterClients`, done without reconnect storms).
//!
//! Owns: which groups this member's clients are told about (this group, and every group of
//! the mesh reachable over the bridges, however many hops away, each by the client URIs its
//! members advertise — the distance-vector table in `view`), the client counts groups relay
//! to each other over their bridges, the registry of this member's client connections (to push
//! to them, to move some, and to end one a failover reconnect replaces), and the rebalancer
//! (`rebalance`). Must not touch: sockets — connections and bridges feed it and write the
//! frames it gives them — or message semantics.
//!
//! Invariants: a peer group is in the view while at least one bridge with it is up, and a
//! group further away while a live bridge's latest (unexpired) report carries it; a
//! connection only hears of groups its listener's `update_cluster_filter` admits, by URIs of
//! its listener's scheme, and of a removal only with `update_cluster_clients_on_remove`; the
//! same filter bounds where the rebalancer sends the listener's clients (a group outside it is
//! never a target); a client is asked to move only when it is eligible (fault tolerant, on a
//! rebalancing listener, not just failed over, not pinned to its priority broker), each time
//! to a named group, and never twice in one round.

mod drain;
mod rebalance;
pub mod view;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::metrics as m;
use crate::wire::proto;

pub use rebalance::{plan, Load, Plan};
use view::MeshTable;

/// A relayed group whose reports stopped for this long leaves the view (a bridge reports every
/// second; a bridge whose peer stays silent longer than its heartbeat allows goes down anyway).
pub const RELAY_EXPIRY: Duration = Duration::from_secs(5);

/// What one member knows about its own group, from the topology.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    pub group: String,
    /// Every native client URI the group's members advertise (all members: only the master
    /// answers), e.g. `tcp://10.0.0.5:61616`.
    pub uris: Vec<String>,
    /// How many client connections this member's listeners admit (the sum of their
    /// `max_connections`): rebalancing evens out clients relative to it.
    pub capacity: u64,
    /// Whether any listener of this member rebalances its clients.
    pub rebalance: bool,
    /// The topology's `[rebalance]` section.
    pub settings: crate::config::RebalanceOptions,
    /// The `update_cluster_filter` of each rebalancing listener (an empty one admits every
    /// group): the rebalancer evens out the load over this group and the groups one admits.
    pub rebalance_filters: Vec<Vec<regex::Regex>>,
}

impl ClusterOptions {
    /// Whether this member's rebalancer counts `group` (a possible target).
    fn rebalances_over(&self, group: &str) -> bool {
        group == self.group
            || self
                .rebalance_filters
                .iter()
                .any(|f| f.is_empty() || f.iter().any(|re| re.is_match(group)))
    }
}

/// A client listener's cluster options.
#[derive(Debug, Clone, Default)]
pub struct ClusterPolicy {
    pub update: bool,
    pub rebalance: bool,
    pub on_remove: bool,
    /// Regexes over group names (whole-name matches); empty: every group.
    pub filter: Vec<regex::Regex>,
    /// The listener's scheme (`tcp`, `ssl`, `quic`): clients are told URIs of it only.
    pub scheme: String,
}

impl ClusterPolicy {
    /// Whether this listener's clients hear about the mesh at all.
    pub fn pushes(&self) -> bool {
        self.update || self.rebalance
    }

    pub(crate) fn shows(&self, group: &str) -> bool {
        self.filter.is_empty() || self.filter.iter().any(|re| re.is_match(group))
    }

    fn keeps(&self, uri: &str) -> bool {
        uri.split_once("://")
            .is_some_and(|(scheme, _)| scheme == self.scheme)
    }
}

/// One group of the mesh view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    pub name: String,
    pub uris: Vec<String>,
    pub clients: u64,
    pub capacity: u64,
}

/// `/status`: what this member's clients are told, and the rebalancer's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// This group first, then every other group of the mesh view.
    pub groups: Vec<GroupView>,
    /// Client connections on this member (native and STOMP).
    pub clients: u64,
    pub rebalance_rounds: u64,
    pub rebalance_moves: u64,
    /// Moves scheduled by the current round and not yet asked.
    #[serde(default)]
    pub rebalance_pending: u64,
}

/// The groups and their URIs (no counts: those change all the time and are read when a
/// frame is written).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupUris {
    /// Group name → its URIs; this group included.
    pub groups: BTreeMap<String, Vec<String>>,
}

/// One registered client connection.
struct ClientEntry {
    /// Fault tolerant, on a rebalancing listener: may be asked to move.
    movable: bool,
    /// A `priorityBackup` client on one of its priority brokers.
    pinned: bool,
    /// Set when the connection replaced one a failover client lost (or moved from).
    failed_over_at: Option<Instant>,
    /// The listener's policy: moves name groups its filter admits, by URIs of its scheme.
    policy: Arc<ClusterPolicy>,
    control: Option<mpsc::UnboundedSender<proto::ConnectionControl>>,
    kick: CancellationToken,
}

/// This member's cluster state for one master term.
pub struct Cluster {
    opts: ClusterOptions,
    table: Mutex<MeshTable>,
    view: watch::Sender<Arc<GroupUris>>,
    clients: Mutex<std::collections::HashMap<u64, ClientEntry>>,
    client_count: AtomicU64,
    rounds: AtomicU64,
    moves: AtomicU64,
    pending: AtomicU64,
}

/// What a client connection says about itself when it registers.
#[derive(Debug, Clone, Default)]
pub struct ClientHello {
    pub fault_tolerant: bool,
    pub failover_reconnect: bool,
    pub priority_pinned: bool,
}

impl Cluster {
    pub fn new(opts: ClusterOptions) -> Arc<Cluster> {
        let mut groups = BTreeMap::new();
        groups.insert(opts.group.clone(), opts.uris.clone());
        let view = watch::channel(Arc::new(GroupUris { groups })).0;
        gauge!(m::CLUSTER_GROUPS).set(1.0);
        let table = MeshTable::new(&opts.group, RELAY_EXPIRY);
        Arc::new(Cluster {
            opts,
            table: Mutex::new(table),
            view,
            clients: Mutex::new(Default::default()),
            client_count: AtomicU64::new(0),
            rounds: AtomicU64::new(0),
            moves: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        })
    }

    pub fn group(&self) -> &str {
        &self.opts.group
    }

    /// This group's advertised client URIs.
    pub fn own_uris(&self) -> &[String] {
        &self.opts.uris
    }

    /// This member's client connections and how many it admits.
    pub fn load(&self) -> (u64, u64) {
        (
            self.client_count.load(Ordering::Relaxed),
            self.opts.capacity,
        )
    }

    /// The groups and URIs as they are now.
    pub fn view(&self) -> Arc<GroupUris> {
        self.view.borrow().clone()
    }

    fn publish_view(&self, table: &MeshTable, now: Instant) {
        let mut groups = table.groups(now);
        groups.insert(self.opts.group.clone(), self.opts.uris.clone());
        gauge!(m::CLUSTER_GROUPS).set(groups.len() as f64);
        let view = GroupUris { groups };
        self.view.send_if_modified(|v| {
            if **v == view {
                false
            } else {
                *v = Arc::new(view);
                true
            }
        });
    }

    /// A bridge with `info.group` came up (`bridge` numbers it among this member's bridges).
    pub fn peer_up(&self, bridge: u64, info: &proto::BrokerInfo) {
        let now = Instant::now();
        let mut table = self.table.lock();
        if table.heard(bridge, info, now) {
            self.publish_view(&table, now);
        }
    }

    /// A bridge reported its group's load, URIs and view again.
    pub fn peer_load(&self, bridge: u64, info: &proto::BrokerInfo) {
        let now = Instant::now();
        let mut table = self.table.lock();
        if table.has_bridge(bridge, &info.group) && table.heard(bridge, info, now) {
            self.publish_view(&table, now);
        }
    }

    /// A bridge went down; what only it said leaves the view.
    pub fn peer_down(&self, bridge: u64) {
        let now = Instant::now();
        let mut table = self.table.lock();
        if table.bridge_down(bridge, now) {
            self.publish_view(&table, now);
        }
    }

    /// The groups to report over `bridge` (expiring stale relayed routes first).
    pub fn report_for(&self, bridge: u64) -> Vec<proto::MeshGroup> {
        let now = Instant::now();
        let mut table = self.table.lock();
        if table.expire(now) {
            self.publish_view(&table, now);
        }
        table.report_for(bridge, now)
    }

    /// Every group's load as this member knows it (this group first).
    pub fn loads(&self) -> Vec<Load> {
        let (clients, capacity) = self.load();
        let mut out = vec![Load {
            group: self.opts.group.clone(),
            clients,
            capacity,
        }];
        let best = self.table.lock().best(Instant::now());
        out.extend(best.into_iter().map(|(g, (_, r))| Load {
            group: g,
            clients: r.clients,
            capacity: r.capacity,
        }));
        out
    }

    /// The loads the rebalancer evens out: this group first, then the groups a rebalancing
    /// listener's filter admits.
    pub fn rebalance_loads(&self) -> Vec<Load> {
        let mut loads = self.loads();
        loads.retain(|l| self.opts.rebalances_over(&l.group));
        loads
    }

    pub fn status(&self) -> ClusterStatus {
        let view = self.view();
        let loads = self.loads();
        let mut groups: Vec<GroupView> = Vec::new();
        for l in &loads {
            groups.push(GroupView {
                name: l.group.clone(),
                uris: view.groups.get(&l.group).cloned().unwrap_or_default(),
                clients: l.clients,
                capacity: l.capacity,
            });
        }
        ClusterStatus {
            groups,
            clients: self.client_count.load(Ordering::Relaxed),
            rebalance_rounds: self.rounds.load(Ordering::Relaxed),
            rebalance_moves: self.moves.load(Ordering::Relaxed),
            rebalance_pending: self.pending.load(Ordering::Relaxed),
        }
    }

    /// Registers a client connection (session `id`); it stays registered while the returned
    /// value lives. `policy` is `None` for connections that cannot take pushes (STOMP).
    pub fn register(
        self: &Arc<Self>,
        id: u64,
        hello: &ClientHello,
        policy: Option<Arc<ClusterPolicy>>,
    ) -> Registration {
        let kick = CancellationToken::new();
        let (control, rx) = match &policy {
            Some(p) if hello.fault_tolerant && p.pushes() => {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            }
            _ => (None, None),
        };
        let entry = ClientEntry {
            movable: control.is_some() && policy.as_ref().is_some_and(|p| p.rebalance),
            pinned: hello.priority_pinned,
            failed_over_at: hello.failover_reconnect.then(Instant::now),
            policy: policy.clone().unwrap_or_default(),
            control,
            kick: kick.clone(),
        };
        if hello.failover_reconnect {
            counter!(m::FAILOVER_RECONNECTS).increment(1);
        }
        self.clients.lock().insert(id, entry);
        let n = self.client_count.fetch_add(1, Ordering::Relaxed) + 1;
        gauge!(m::CLUSTER_CLIENTS).set(n as f64);
        let feed = rx.map(|direct| Feed {
            cluster: self.clone(),
            view: self.view.subscribe(),
            policy: policy.clone().unwrap_or_default(),
            sent: None,
            direct,
        });
        Registration {
            cluster: self.clone(),
            id,
            kick,
            feed,
        }
    }

    /// Ends the connection of session `id` (a failover reconnect of the same client took its
    /// client id). False when it is not registered here.
    pub fn kick(&self, id: u64) -> bool {
        match self.clients.lock().get(&id) {
            Some(e) => {
                e.kick.cancel();
                true
            }
            None => false,
        }
    }

    fn unregister(&self, id: u64) {
        if self.clients.lock().remove(&id).is_some() {
            let n = self.client_count.fetch_sub(1, Ordering::Relaxed) - 1;
            gauge!(m::CLUSTER_CLIENTS).set(n as f64);
        }
    }
}

/// A client connection's place in the registry; unregisters when dropped.
pub struct Registration {
    cluster: Arc<Cluster>,
    id: u64,
    kick: CancellationToken,
    /// Present for connections that take cluster pushes.
    pub feed: Option<Feed>,
}

impl Registration {
    /// Fires when a newer connection of the same client took over.
    pub fn kicked(&self) -> CancellationToken {
        self.kick.clone()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.cluster.unregister(self.id);
    }
}

/// The pushes one client connection gets: view changes (filtered for its listener) and the
/// moves the rebalancer asks of it.
pub struct Feed {
    cluster: Arc<Cluster>,
    view: watch::Receiver<Arc<GroupUris>>,
    policy: Arc<ClusterPolicy>,
    /// What the client was last told: group → URIs (filtered for its listener).
    sent: Option<BTreeMap<String, Vec<String>>>,
    direct: mpsc::UnboundedReceiver<proto::ConnectionControl>,
}

impl Feed {
    fn shown(&self, view: &GroupUris) -> BTreeMap<String, Vec<String>> {
        view.groups
            .iter()
            .filter(|(g, _)| **g == self.cluster.opts.group || self.policy.shows(g))
            .map(|(g, uris)| {
                let uris = uris.iter().filter(|u| self.policy.keeps(u)).cloned();
                (g.clone(), uris.collect())
            })
            .collect()
    }

    fn control(&self, shown: &BTreeMap<String, Vec<String>>) -> proto::ConnectionControl {
        let loads = self.cluster.loads();
        let groups = shown
            .iter()
            .map(|(g, uris)| {
                let load = loads.iter().find(|l| l.group == *g);
                proto::ClusterGroup {
                    name: g.clone(),
                    uris: uris.clone(),
                    clients: load.map_or(0, |l| l.clients),
                    capacity: load.map_or(0, |l| l.capacity),
                }
            })
            .collect();
        counter!(m::CLUSTER_PUSHES).increment(1);
        proto::ConnectionControl {
            cluster: Some(proto::ClusterView { groups }),
            rebalance: false,
            reconnect_to: String::new(),
            leave: false,
        }
    }

    /// The view for the `Connected` frame (marks it as told).
    pub fn initial(&mut self) -> proto::ClusterView {
        let view = self.view.borrow_and_update().clone();
        let shown = self.shown(&view);
        let control = self.control(&shown);
        self.sent = Some(shown);
        control.cluster.unwrap_or_default()
    }

    /// The next frame to push; pending forever when there is none.
    pub async fn next(&mut self) -> proto::ConnectionControl {
        loop {
            tokio::select! {
                changed = self.view.changed() => {
                    if changed.is_err() {
                        return std::future::pending().await;
                    }
                    let view = self.view.borrow_and_update().clone();
                    let shown = self.shown(&view);
                    let told = self.sent.clone().unwrap_or_default();
                    let added_or_changed = shown.iter().any(|(g, uris)| told.get(g) != Some(uris));
                    let removed = told.keys().any(|g| !shown.contains_key(g));
                    // ActiveMQ tells clients of a removal only with updateClusterClientsOnRemove;
                    // otherwise the next addition carries it.
                    if added_or_changed || (removed && self.policy.on_remove) {
                        let control = self.control(&shown);
                        self.sent = Some(shown);
                        return control;
                    }
                }
                Some(c) = self.direct.recv() => return c,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Arc<Cluster> {
        Cluster::new(ClusterOptions {
            group: "edge-1".into(),
            uris: vec!["tcp://127.0.0.1:1".into(), "ssl://127.0.0.1:2".into()],
            capacity: 100,
            rebalance: true,
            ..ClusterOptions::default()
        })
    }

    fn info(group: &str, uri: &str, clients: u64) -> proto::BrokerInfo {
        proto::BrokerInfo {
            group: group.into(),
            client_uris: vec![uri.into()],
            clients,
            capacity: 100,
            ..Default::default()
        }
    }

    fn policy(on_remove: bool, filter: &[&str]) -> Arc<ClusterPolicy> {
        Arc::new(ClusterPolicy {
            update: true,
            rebalance: false,
            on_remove,
            filter: filter
                .iter()
                .map(|f| regex::Regex::new(&format!("^(?:{f})$")).unwrap())
                .collect(),
            scheme: "tcp".into(),
        })
    }

    fn hello() -> ClientHello {
        ClientHello {
            fault_tolerant: true,
            ..Default::default()
        }
    }

    fn names(c: &proto::ConnectionControl) -> Vec<(String, Vec<String>)> {
        c.cluster
            .as_ref()
            .unwrap()
            .groups
            .iter()
            .map(|g| (g.name.clone(), g.uris.clone()))
            .collect()
    }

    #[tokio::test]
    async fn peers_join_the_view_with_their_first_bridge_and_leave_with_their_last() {
        let c = cluster();
        let mut reg = c.register(1, &hello(), Some(policy(true, &[])));
        let feed = reg.feed.as_mut().unwrap();
        let first = feed.initial();
        assert_eq!(first.groups.len(), 1);
        assert_eq!(
            first.groups[0].uris,
            vec!["tcp://127.0.0.1:1".to_string()],
            "only the listener's scheme"
        );
        c.peer_up(7, &info("edge-2", "tcp://127.0.0.1:3", 5));
        let pushed = feed.next().await;
        assert_eq!(
            names(&pushed),
            vec![
                ("edge-1".to_string(), vec!["tcp://127.0.0.1:1".to_string()]),
                ("edge-2".to_string(), vec!["tcp://127.0.0.1:3".to_string()])
            ]
        );
        c.peer_up(8, &info("edge-2", "tcp://127.0.0.1:3", 5));
        c.peer_down(7);
        assert_eq!(c.view().groups.len(), 2, "a second bridge keeps the group");
        c.peer_down(8);
        let pushed = feed.next().await;
        assert_eq!(names(&pushed).len(), 1, "removal pushed with on_remove");
        assert_eq!(c.load(), (1, 100));
        drop(reg);
        assert_eq!(c.load(), (0, 100));
    }

    #[tokio::test]
    async fn removals_wait_for_the_next_addition_without_on_remove_and_the_filter_hides_groups() {
        let c = cluster();
        let mut reg = c.register(1, &hello(), Some(policy(false, &["edge-.*"])));
        let feed = reg.feed.as_mut().unwrap();
        feed.initial();
        c.peer_up(1, &info("hub", "tcp://127.0.0.1:9", 0));
        c.peer_up(2, &info("edge-2", "tcp://127.0.0.1:3", 0));
        let pushed = feed.next().await;
        assert!(
            names(&pushed).iter().all(|(g, _)| g != "hub"),
            "filtered out"
        );
        c.peer_down(2);
        let nothing = tokio::time::timeout(std::time::Duration::from_millis(50), feed.next()).await;
        assert!(nothing.is_err(), "no push for a removal without on_remove");
        c.peer_up(3, &info("edge-3", "tcp://127.0.0.1:4", 0));
        let pushed = feed.next().await;
        let groups: Vec<String> = names(&pushed).into_iter().map(|(g, _)| g).collect();
        assert_eq!(groups, vec!["edge-1", "edge-3"]);
    }

    #[test]
    fn a_kick_reaches_the_registered_connection() {
        let c = cluster();
        let reg = c.register(4, &ClientHello::default(), None);
        assert!(reg.feed.is_none(), "not fault tolerant: no pushes");
        let kicked = reg.kicked();
        assert!(c.kick(4));
        assert!(kicked.is_cancelled());
        assert!(!c.kick(5));
    }
}
