//! The validated topology: what every process of the mesh reads. Only `validate` builds these
//! types, so holding one means every rule of the file format already holds (names unique,
//! addresses parsed and distinct, options consistent with the group's election).

use std::fmt;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::destination::{Destination, DestinationPattern};
use crate::transport::tls::TlsFiles;

use super::names::{ConnectorName, GroupName, MemberName, MeshName};
use super::units::{ClientUrl, HostPort, ListenerUrl, Scheme};

/// A string that must not reach logs: `Debug` prints `"<secret>"`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub(crate) fn new(text: String) -> Secret {
        Secret(text)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<secret>\"")
    }
}

macro_rules! keyword_enum {
    ($(#[$doc:meta])* $ty:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $ty {
            $($variant),+
        }

        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The keyword as written in a topology file.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $text),+
                }
            }

            pub(crate) fn parse(text: &str) -> Option<$ty> {
                $ty::ALL.iter().copied().find(|v| v.as_str() == text)
            }

            /// The accepted keywords, for error messages: `a, b or c`.
            pub(crate) fn choices() -> String {
                let words: Vec<&str> = $ty::ALL.iter().map(|v| v.as_str()).collect();
                match words.split_last() {
                    Some((last, rest)) if !rest.is_empty() => {
                        format!("{} or {last}", rest.join(", "))
                    }
                    _ => words.join(""),
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

keyword_enum!(
    /// How a group picks its master.
    Election {
        None = "none",
        FileLock = "file-lock",
        ZooKeeper = "zookeeper",
    }
);

keyword_enum!(
    /// When a persistent write is acknowledged (ActiveMQ's replicated store sync modes).
    SyncMode {
        LocalMem = "local_mem",
        LocalDisk = "local_disk",
        RemoteMem = "remote_mem",
        RemoteDisk = "remote_disk",
        QuorumMem = "quorum_mem",
        QuorumDisk = "quorum_disk",
    }
);

impl SyncMode {
    /// Modes that wait for followers, which only replicated (zookeeper) groups have.
    pub fn needs_replicas(self) -> bool {
        !matches!(self, SyncMode::LocalMem | SyncMode::LocalDisk)
    }
}

keyword_enum!(
    /// What a producer meets when a memory or store limit is reached.
    OnFull {
        Block = "block",
        Fail = "fail",
    }
);

keyword_enum!(
    /// How a connector dials the target group.
    ConnectorTransport {
        Tcp = "tcp",
        Ssl = "ssl",
        Quic = "quic",
    }
);

impl ConnectorTransport {
    /// The listener scheme a target member must offer for this transport.
    pub fn scheme(self) -> Scheme {
        match self {
            ConnectorTransport::Tcp => Scheme::Tcp,
            ConnectorTransport::Ssl => Scheme::Ssl,
            ConnectorTransport::Quic => Scheme::Quic,
        }
    }
}

/// Broker limits and timers; fully resolved (group override ← `[broker]` ← built-in default).
#[derive(Clone, Debug, PartialEq)]
pub struct BrokerPolicy {
    /// Broker-wide cap on message memory, bytes.
    pub memory_limit: u64,
    pub on_full: OnFull,
    pub max_redeliveries: u32,
    /// Messages a slow topic subscriber may have pending before its oldest are dropped;
    /// 0 (the default): no count limit, only `topic_pending_size`.
    pub topic_pending_limit: usize,
    /// Bytes a topic subscriber may have pending before its oldest are dropped; `None` (the
    /// default): [`BrokerPolicy::default_topic_pending_size`].
    pub topic_pending_size: Option<u64>,
    /// Default consumer prefetch; at least 1.
    pub prefetch: u32,
    /// Largest frame accepted, bytes; a u32 because the wire length prefix is one.
    pub max_frame_size: u32,
    /// Heartbeat interval offered to clients; zero turns heartbeats off.
    pub heartbeat: Duration,
    /// A socket that sends no Connect/CONNECT within it is closed.
    pub connect_timeout: Duration,
    pub max_subscriptions_per_connection: u32,
    /// STOMP: header lines allowed in one frame.
    pub stomp_max_headers: u32,
    /// STOMP: bytes of one header line.
    pub stomp_max_header_length: u64,
    pub expiry_check_interval: Duration,
    pub shutdown_timeout: Duration,
}

impl Default for BrokerPolicy {
    fn default() -> BrokerPolicy {
        BrokerPolicy {
            memory_limit: 1 << 30,
            on_full: OnFull::Block,
            max_redeliveries: 6,
            topic_pending_limit: 0,
            topic_pending_size: None,
            prefetch: 1000,
            max_frame_size: 100 << 20,
            heartbeat: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_subscriptions_per_connection: 10_000,
            stomp_max_headers: 1000,
            stomp_max_header_length: 10 << 10,
            expiry_check_interval: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

/// A `[[policy]]` entry: overrides for the destinations its pattern matches.
#[derive(Clone, Debug, PartialEq)]
pub struct DestinationPolicy {
    pub destination: DestinationPattern,
    pub memory_limit: Option<u64>,
    pub max_redeliveries: Option<u32>,
    pub topic_pending_limit: Option<usize>,
    pub topic_pending_size: Option<u64>,
    pub prefetch: Option<u32>,
    pub on_full: Option<OnFull>,
}

impl DestinationPolicy {
    /// This entry's limits, with what it leaves unset taken from `base`.
    pub fn resolve(&self, base: &BrokerPolicy) -> DestinationLimits {
        DestinationLimits {
            memory_limit: self.memory_limit,
            max_redeliveries: self.max_redeliveries.unwrap_or(base.max_redeliveries),
            topic_pending_limit: self.topic_pending_limit.unwrap_or(base.topic_pending_limit),
            topic_pending_size: self
                .topic_pending_size
                .unwrap_or_else(|| base.topic_pending_size()),
            prefetch: self.prefetch.unwrap_or(base.prefetch),
            on_full: self.on_full.unwrap_or(base.on_full),
        }
    }
}

/// The limits that apply to one destination on one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DestinationLimits {
    /// Per-destination cap, bytes; `None`: only the broker-wide `memory_limit` applies.
    pub memory_limit: Option<u64>,
    pub max_redeliveries: u32,
    /// Messages a non-durable topic subscriber may have pending; 0: no count limit.
    pub topic_pending_limit: usize,
    /// Bytes a non-durable topic subscriber may have pending (always set).
    pub topic_pending_size: u64,
    pub prefetch: u32,
    pub on_full: OnFull,
}

impl BrokerPolicy {
    /// What a topic subscriber may hold pending when `topic_pending_size` is not written:
    /// 64 MiB (what NATS lets a connection fall behind before it calls it slow), but at most an
    /// eighth of `memory_limit`, so a few stalled subscribers never fill the broker and block
    /// its producers.
    pub fn default_topic_pending_size(memory_limit: u64) -> u64 {
        (64 << 20).min(memory_limit / 8).max(1)
    }

    /// The effective per-subscriber byte limit of this policy.
    pub fn topic_pending_size(&self) -> u64 {
        self.topic_pending_size
            .unwrap_or_else(|| Self::default_topic_pending_size(self.memory_limit))
    }

    /// The limits of a destination no `[[policy]]` entry matches.
    pub fn destination_limits(&self) -> DestinationLimits {
        DestinationLimits {
            memory_limit: None,
            max_redeliveries: self.max_redeliveries,
            topic_pending_limit: self.topic_pending_limit,
            topic_pending_size: self.topic_pending_size(),
            prefetch: self.prefetch,
            on_full: self.on_full,
        }
    }
}

impl Default for DestinationLimits {
    fn default() -> DestinationLimits {
        BrokerPolicy::default().destination_limits()
    }
}

/// The journal's options.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreOptions {
    pub segment_size: u64,
    /// `None`: no limit.
    pub store_limit: Option<u64>,
    pub checkpoint_interval: Duration,
    /// Zero: every write is synced on its own.
    pub group_commit_window: Duration,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            segment_size: 64 << 20,
            store_limit: None,
            checkpoint_interval: Duration::from_secs(30),
            group_commit_window: Duration::ZERO,
        }
    }
}

/// `[rebalance]`: how clients are spread over the groups (every group plans from the same
/// numbers, so these are mesh-wide). Used by listeners with `rebalance_cluster_clients`.
#[derive(Clone, Debug, PartialEq)]
pub struct RebalanceOptions {
    /// A group is overloaded when it holds more than its fair share by this fraction of it
    /// (and by more than two clients).
    pub threshold: f64,
    /// The moves of one round are spread over at least this long, each at a random point.
    pub window: Duration,
    /// New connections per second the whole mesh sends one target group.
    pub max_moves_per_second: f64,
    /// A client that failed over or was moved this recently is not asked to move.
    pub failover_grace: Duration,
    /// A change in the set of groups must hold this long before a round.
    pub join_settle: Duration,
}

impl Default for RebalanceOptions {
    fn default() -> RebalanceOptions {
        RebalanceOptions {
            threshold: 0.10,
            window: Duration::from_secs(10),
            max_moves_per_second: 100.0,
            failover_grace: Duration::from_secs(30),
            join_settle: Duration::from_secs(3),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsOptions {
    /// Cap on distinct values of the `destination` label.
    pub max_destinations: usize,
}

impl Default for MetricsOptions {
    fn default() -> MetricsOptions {
        MetricsOptions {
            max_destinations: 100,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct User {
    pub name: String,
    /// An argon2 PHC string (checked to parse); verify logins against it.
    pub password_hash: String,
    /// Security groups the user belongs to (what ACLs name).
    pub groups: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Acl {
    pub destination: DestinationPattern,
    /// Security groups allowed to consume.
    pub read: Vec<String>,
    /// ... to send.
    pub write: Vec<String>,
    /// ... to create destinations.
    pub admin: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Security {
    /// Resolved: defaults to true when no users are defined, false otherwise.
    pub allow_anonymous: bool,
    pub users: Vec<User>,
    /// Every security group an ACL names has at least one user.
    pub acls: Vec<Acl>,
}

/// A mesh secret shorter than this is refused: it is what keeps strangers' bridges out.
pub const MIN_MESH_SECRET: usize = 16;

/// How a bridge proves it belongs to the mesh (`[mesh]` `secret_file`,
/// `allow_anonymous_bridges`).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct BridgeAuth {
    /// The file holding the mesh secret (absolute; read when a member starts).
    pub secret_file: Option<PathBuf>,
    /// Let a bridge in that proves nothing (no secret, no connector credentials).
    pub allow_anonymous: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ZooKeeperOptions {
    /// At least one server.
    pub connect: Vec<HostPort>,
    pub session_timeout: Duration,
    /// Starts with '/', has no trailing '/' and no empty segment.
    pub root: String,
    /// `user:password` for ZooKeeper digest auth.
    pub digest: Option<Secret>,
}

#[derive(Clone, Debug)]
pub struct Listener {
    pub url: ListenerUrl,
    /// What clients are told to dial in cluster updates; set whenever `url` binds an unspecified
    /// IP and cluster updates are on anywhere in the mesh.
    pub advertise: Option<ClientUrl>,
    /// `None`: what the member's open-file limit leaves (see `transport::files`).
    pub max_connections: Option<u32>,
    pub update_cluster_clients: bool,
    pub rebalance_cluster_clients: bool,
    /// Only when `update_cluster_clients` is on.
    pub update_cluster_clients_on_remove: bool,
    /// Regexes, each compiled to match a whole group name; empty: every group.
    pub update_cluster_filter: Vec<regex::Regex>,
    /// Present exactly when the scheme is ssl, stomp+ssl, mqtt+ssl or quic.
    pub tls: Option<TlsFiles>,
}

#[derive(Clone, Debug)]
pub struct Member {
    pub name: MemberName,
    /// Admin HTTP server (`/metrics`, `/status`, `/healthz`, `/readyz`).
    pub admin: SocketAddr,
    /// Absolute; distinct for every member.
    pub data_dir: PathBuf,
    /// Local IP for outbound links.
    pub bind: Option<IpAddr>,
    pub weight: u32,
    /// Journal replication address: present exactly in zookeeper groups.
    pub replication: Option<SocketAddr>,
    /// At least one.
    pub listeners: Vec<Listener>,
}

#[derive(Clone, Debug)]
pub struct Group {
    pub name: GroupName,
    pub election: Election,
    /// 1 ..= members.len(); 1 for `none`.
    pub replicas: u32,
    /// Never a replica-waiting mode unless the election is zookeeper.
    pub sync: SyncMode,
    pub quorum_timeout: Duration,
    pub lock_poll: Duration,
    /// Present exactly when the election is file-lock (absolute).
    pub shared_dir: Option<PathBuf>,
    /// Only for zookeeper groups.
    pub replication_token: Option<Secret>,
    pub broker: BrokerPolicy,
    /// At least one; exactly one for election `none`.
    pub members: Vec<Member>,
}

impl Group {
    /// Limits for `dest` on this group: the first `[[policy]]` (file order) whose pattern
    /// matches overrides this group's broker policy, key by key.
    pub fn policy_for(&self, topo: &Topology, dest: &Destination) -> DestinationLimits {
        topo.policies
            .iter()
            .find(|p| p.destination.matches(dest))
            .map(|p| p.resolve(&self.broker))
            .unwrap_or_else(|| self.broker.destination_limits())
    }
}

#[derive(Clone, Debug)]
pub struct Connector {
    /// Explicit, or `<from>-<to>`; unique.
    pub name: ConnectorName,
    /// The group that dials.
    pub from: GroupName,
    /// The group dialled (its master, through failover over its members); never `from`.
    pub to: GroupName,
    pub duplex: bool,
    pub message_ttl: u32,
    pub consumer_ttl: u32,
    pub conduit_subscriptions: bool,
    pub decrease_network_consumer_priority: bool,
    pub consumer_priority_base: i32,
    /// At least 1: network consumers never pull.
    pub prefetch: u32,
    pub dynamically_included: Vec<DestinationPattern>,
    pub statically_included: Vec<DestinationPattern>,
    pub excluded: Vec<DestinationPattern>,
    /// Only with a non-empty `statically_included`.
    pub static_bridge: bool,
    pub bridge_temp_destinations: bool,
    /// `false`: non-persistent forwards are acknowledged at the source once written to the
    /// link, and lost if it dies; persistent ones always wait for the target.
    pub always_sync_send: bool,
    /// Hold network queue demand for a remote consumer only over its best route.
    /// (`suppress_duplicate_topic_subscriptions` has no field: topic messages always take
    /// one route per subscribing group, so only its `true` is accepted.)
    pub suppress_duplicate_queue_subscriptions: bool,
    pub replay_when_no_consumers: bool,
    pub replay_delay: Duration,
    /// Every member of `to` has a listener of this transport's scheme.
    pub transport: ConnectorTransport,
    /// `uri`: where and how to dial instead of the target's members and the reconnect_* keys
    /// (ActiveMQ's failover URL; every URI of the transport's scheme, no client-only option).
    pub uri: Option<crate::url::FailoverUrl>,
    pub reconnect_initial_delay: Duration,
    /// At least `reconnect_initial_delay`.
    pub reconnect_max_delay: Duration,
    /// At least 1.0, finite.
    pub reconnect_multiplier: f64,
    pub heartbeat: Duration,
    pub handshake_timeout: Duration,
    pub username: Option<String>,
    /// Absolute; only with `username`.
    pub password_file: Option<PathBuf>,
    /// The CA that signs the target members' certificates (ssl and quic transports).
    pub tls_ca: Option<PathBuf>,
}

/// `[admin]`: who may change the running mesh through the members' admin ports.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct AdminOptions {
    /// What a topology write (`meshmq apply`) must present as `Authorization: Bearer`; with
    /// none, members refuse every write.
    pub token: Option<Secret>,
}

/// The text a topology was read from (what a member reports as its running topology, so a
/// reader can parse it again exactly). `Debug` shows its length only.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Source(std::sync::Arc<str>);

impl Source {
    pub(crate) fn new(text: &str) -> Source {
        Source(std::sync::Arc::from(text))
    }

    pub fn text(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes of TOML>", self.0.len())
    }
}

/// A whole validated topology file.
#[derive(Clone, Debug)]
pub struct Topology {
    /// The file, as the caller named it.
    pub file: PathBuf,
    pub mesh: MeshName,
    /// Top-level `[broker]` over the built-in defaults; each group resolves its own from it.
    pub broker: BrokerPolicy,
    /// In file order: the first match wins.
    pub policies: Vec<DestinationPolicy>,
    pub store: StoreOptions,
    pub metrics: MetricsOptions,
    pub rebalance: RebalanceOptions,
    pub security: Security,
    /// How bridges between groups prove they belong to this mesh.
    pub bridges: BridgeAuth,
    /// Present exactly when some group's election is zookeeper.
    pub zookeeper: Option<ZooKeeperOptions>,
    /// At least one; names unique.
    pub groups: Vec<Group>,
    pub connectors: Vec<Connector>,
    pub admin: AdminOptions,
    /// The text this topology was parsed from.
    pub source: Source,
}

impl Topology {
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name.as_str() == name)
    }

    pub fn member(&self, name: &str) -> Option<(&Group, &Member)> {
        self.members().find(|(_, m)| m.name.as_str() == name)
    }

    /// Every member of the mesh with its group, in file order.
    pub fn members(&self) -> impl Iterator<Item = (&Group, &Member)> {
        self.groups
            .iter()
            .flat_map(|g| g.members.iter().map(move |m| (g, m)))
    }

    /// Human summary printed by `meshmq check`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; the results are ignored on purpose.
        let _ = writeln!(out, "mesh {} ({})", self.mesh, self.file.display());
        for g in &self.groups {
            let _ = writeln!(
                out,
                "group {}: election {}, sync {}, replicas {}, {} member{}",
                g.name,
                g.election,
                g.sync,
                g.replicas,
                g.members.len(),
                if g.members.len() == 1 { "" } else { "s" }
            );
            for m in &g.members {
                let listeners: Vec<String> =
                    m.listeners.iter().map(|l| l.url.to_string()).collect();
                let _ = writeln!(
                    out,
                    "  member {}: {}; admin http://{}",
                    m.name,
                    listeners.join(", "),
                    m.admin
                );
            }
        }
        if self.connectors.is_empty() {
            let _ = writeln!(out, "connectors: none");
        } else {
            let _ = writeln!(out, "connectors:");
            for c in &self.connectors {
                let arrow = if c.duplex { "<->" } else { "->" };
                let _ = writeln!(
                    out,
                    "  {}: {} {arrow} {} over {}",
                    c.name, c.from, c.to, c.transport
                );
            }
        }
        let _ = writeln!(
            out,
            "users: {}, acls: {}, anonymous {}",
            self.security.users.len(),
            self.security.acls.len(),
            if self.security.allow_anonymous {
                "allowed"
            } else {
                "refused"
            }
        );
        if self.policies.is_empty() {
            let _ = writeln!(out, "policies: none");
        } else {
            let patterns: Vec<&str> = self
                .policies
                .iter()
                .map(|p| p.destination.as_str())
                .collect();
            let _ = writeln!(out, "policies (first match wins): {}", patterns.join(", "));
        }
        out
    }
}
