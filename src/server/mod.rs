//! One running member: its listeners, the connection tasks they spawn, the admin HTTP port,
//! periodic broker chores, and graceful shutdown.
//!
//! Owns: the member's tasks and their lifetime. Must not touch: message semantics (the broker
//! decides those) or socket details (transport owns those). Invariants: every listener is
//! bound before any is served, so a member that cannot bind starts nothing; one cancellation
//! token reaches every task; `wait` returns only when every task has ended or the shutdown
//! timeout has passed, so the process exits promptly on SIGTERM.

pub mod admin;
pub mod admin_topology;
pub mod admin_ui;
mod conn;
pub mod drain;
mod election;
pub mod live;
mod mqtt;
mod mqtt_session;
mod mqtt_share;
pub(crate) use mqtt::read_client_bytes as read_mqtt_client_bytes;
pub(crate) mod native;
mod replicated;
mod request;
mod stomp;
mod term;
mod websocket;

use term::Term;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge, Counter, Gauge};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Broker, BrokerError, BrokerSettings};
use crate::cluster::{Cluster, ClusterOptions, ClusterPolicy};
use crate::config::{Election, Scheme, SyncMode, Topology};
use crate::metrics as m;
use crate::security::{LiveSecurity, LoginError, Principal};
use crate::store::{Durability, StoreConfig, StoreError};
use crate::transport::quic::{self, QuicIncoming, QuicListener};
use crate::transport::{ConnectionCount, Incoming, Listener, TransportError};

/// Who this member is.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub mesh: String,
    pub group: String,
    pub member: String,
}

/// Per-connection protocol settings.
#[derive(Debug, Clone)]
pub struct ConnSettings {
    /// How often the broker sends a heartbeat to an otherwise idle connection (0 = never).
    pub heartbeat: Duration,
    /// A connection that sends no Connect within this is closed.
    pub connect_timeout: Duration,
    pub max_frame_size: usize,
}

impl Default for ConnSettings {
    fn default() -> Self {
        ConnSettings {
            heartbeat: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_frame_size: crate::wire::DEFAULT_MAX_FRAME_SIZE,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Native,
    Stomp,
    Mqtt,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Native => "native",
            Protocol::Stomp => "stomp",
            Protocol::Mqtt => "mqtt",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ListenerSpec {
    /// As written in the topology, e.g. `tcp://127.0.0.1:61616` (metric label and status).
    pub url: String,
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub max_connections: usize,
    /// TLS files (`ssl://`, `stomp+ssl://`, `mqtt+ssl://`, `quic://`, `wss://`).
    pub tls: Option<crate::config::TlsFiles>,
    /// Over QUIC rather than TCP.
    pub quic: bool,
    /// Over a WebSocket (`ws://`, `wss://`): the protocol then runs inside its messages.
    pub websocket: bool,
    /// Cluster updates and rebalancing for this listener's failover clients.
    pub cluster: Arc<ClusterPolicy>,
}

/// A bound listener of either transport.
enum Bound {
    /// With its TLS acceptor when the listener is `ssl://` or `stomp+ssl://`.
    Tcp(Listener, Option<tokio_rustls::TlsAcceptor>),
    Quic(QuicListener),
}

impl Bound {
    fn count(&self) -> Arc<ConnectionCount> {
        match self {
            Bound::Tcp(l, _) => l.count(),
            Bound::Quic(l) => l.count(),
        }
    }
}

/// Limits of the STOMP decoder.
#[derive(Debug, Clone, Copy)]
pub struct StompLimits {
    pub max_headers: usize,
    pub max_header_length: usize,
}

/// How a member's group picks the one that serves.
#[derive(Debug, Clone)]
pub enum ElectionOptions {
    /// A single member, always master.
    None,
    /// Members share `dir`; the holder of the OS lock on `dir/lock` is master. A standby tries
    /// the lock every `poll`.
    FileLock {
        dir: std::path::PathBuf,
        poll: Duration,
    },
    /// Each member keeps its own journal; ZooKeeper elects the master, which replicates its
    /// journal to the others.
    ZooKeeper(Box<ZooKeeperElection>),
}

/// A ZooKeeper-elected member's settings.
#[derive(Debug, Clone)]
pub struct ZooKeeperElection {
    pub zookeeper: crate::config::ZooKeeperOptions,
    pub replicas: usize,
    pub sync: SyncMode,
    pub quorum_timeout: Duration,
    pub weight: u32,
    /// Where this member serves followers while it is master.
    pub replication: SocketAddr,
    /// The group's replication token (required by validation when the group has others).
    pub token: Option<String>,
    /// The group's other members: the only followers this member admits while it is master.
    pub peers: Vec<String>,
}

/// Everything needed to run one member.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub election: ElectionOptions,
    pub identity: Identity,
    pub listeners: Vec<ListenerSpec>,
    pub admin: SocketAddr,
    pub broker: BrokerSettings,
    pub conn: ConnSettings,
    pub shutdown_timeout: Duration,
    pub expiry_check_interval: Duration,
    pub max_destinations: usize,
    pub stomp: StompLimits,
    /// Connectors of this member's group (`None`: no network).
    pub network: Option<crate::network::NetworkOptions>,
    /// The journal (`None`: everything stays in memory).
    pub store: Option<StoreConfig>,
    pub checkpoint_interval: Duration,
    /// Cut a corrupt journal at the damage instead of refusing to start.
    pub repair: bool,
    /// This group as its clients are told about it.
    pub cluster: ClusterOptions,
    /// The whole topology the member starts with (what it reports on `/topology`, and what
    /// `meshmq apply` changes).
    pub topology: Arc<Topology>,
    /// How many members this member's group has (1: a drain moves its clients to other groups).
    pub group_members: usize,
    /// Every member of the mesh and its admin address (the mesh view reads their `/status`).
    pub mesh_members: Vec<admin_ui::MeshMemberRef>,
    /// Set when this process is a restart of a master that handed its file-lock group over
    /// (`POST /restart`): the epoch it served in. It lets its standby take the lock — waits
    /// until the group's epoch has moved past it (or `HAND_OVER_WAIT`) before trying the lock.
    pub handed_over_at: Option<u64>,
}

impl ServerOptions {
    /// The options of `member` in `topo`.
    pub fn from_topology(topo: &Topology, member: &str) -> Result<ServerOptions, ServerError> {
        let (group, m) = topo
            .member(member)
            .ok_or_else(|| ServerError::UnknownMember {
                file: topo.file.display().to_string(),
                member: member.to_string(),
                known: topo
                    .members()
                    .map(|(_, m)| m.name.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        // A member serves with its hard open-file limit; a listener without max_connections
        // admits what that leaves after the reserve for journal, bridges and peers.
        let open_files = crate::transport::files::raise_open_file_limit();
        let default_max = crate::transport::files::default_max_connections(open_files);
        let max_connections =
            |l: &crate::config::Listener| l.max_connections.unwrap_or(default_max);
        let admitted: u64 = m
            .listeners
            .iter()
            .map(|l| u64::from(max_connections(l)))
            .sum();
        if m.listeners.iter().any(|l| l.max_connections.is_some())
            && admitted > open_files.saturating_sub(crate::transport::files::RESERVED_FILES)
        {
            tracing::warn!(
                member,
                admitted,
                open_files,
                "the listeners' max_connections add up to more than this process's open-file limit leaves (ulimit -n): past it, connections fail as the limit is hit instead of being refused with a message"
            );
        }
        let policy = &group.broker;
        let election = match (group.election, &group.shared_dir) {
            (Election::FileLock, Some(dir)) => ElectionOptions::FileLock {
                dir: dir.clone(),
                poll: group.lock_poll,
            },
            (Election::ZooKeeper, _) => {
                let (Some(zookeeper), Some(replication)) = (&topo.zookeeper, m.replication) else {
                    unreachable!("validation requires [zookeeper] and a replication address");
                };
                ElectionOptions::ZooKeeper(Box::new(ZooKeeperElection {
                    zookeeper: zookeeper.clone(),
                    replicas: group.replicas as usize,
                    sync: group.sync,
                    quorum_timeout: group.quorum_timeout,
                    weight: m.weight,
                    replication,
                    token: group
                        .replication_token
                        .as_ref()
                        .map(|t| t.expose().to_string()),
                    peers: group
                        .members
                        .iter()
                        .filter(|other| other.name != m.name)
                        .map(|other| other.name.to_string())
                        .collect(),
                }))
            }
            _ => ElectionOptions::None,
        };
        // A file-lock group keeps one journal in its shared directory: whoever holds the lock
        // serves from it.
        let journal_dir = match &election {
            ElectionOptions::FileLock { dir, .. } => dir.join("journal"),
            ElectionOptions::None | ElectionOptions::ZooKeeper(_) => m.data_dir.join("journal"),
        };
        Ok(ServerOptions {
            election,
            identity: Identity {
                mesh: topo.mesh.to_string(),
                group: group.name.to_string(),
                member: m.name.to_string(),
            },
            listeners: m
                .listeners
                .iter()
                .map(|l| ListenerSpec {
                    url: l.url.to_string(),
                    addr: l.url.addr,
                    protocol: match l.url.scheme {
                        Scheme::Stomp | Scheme::StompSsl | Scheme::Ws | Scheme::Wss => {
                            Protocol::Stomp
                        }
                        Scheme::Mqtt | Scheme::MqttSsl => Protocol::Mqtt,
                        Scheme::Tcp | Scheme::Ssl | Scheme::Quic => Protocol::Native,
                    },
                    websocket: matches!(l.url.scheme, Scheme::Ws | Scheme::Wss),
                    max_connections: max_connections(l) as usize,
                    tls: l.tls.clone(),
                    quic: l.url.scheme == Scheme::Quic,
                    cluster: Arc::new(ClusterPolicy {
                        update: l.update_cluster_clients,
                        rebalance: l.rebalance_cluster_clients,
                        on_remove: l.update_cluster_clients_on_remove,
                        filter: l.update_cluster_filter.clone(),
                        scheme: l.url.scheme.to_string(),
                    }),
                })
                .collect(),
            admin: m.admin,
            broker: broker_settings(topo, group),
            conn: ConnSettings {
                heartbeat: policy.heartbeat,
                connect_timeout: policy.connect_timeout,
                // A frame larger than the memory limit could never be held: refused from its
                // header like one over max_frame_size.
                max_frame_size: u64::from(policy.max_frame_size).min(policy.memory_limit) as usize,
            },
            shutdown_timeout: policy.shutdown_timeout,
            expiry_check_interval: policy.expiry_check_interval,
            max_destinations: topo.metrics.max_destinations,
            network: Some(crate::network::NetworkOptions::from_topology(topo, member)?),
            stomp: StompLimits {
                max_headers: policy.stomp_max_headers as usize,
                max_header_length: policy.stomp_max_header_length as usize,
            },
            store: Some(StoreConfig {
                dir: journal_dir,
                segment_size: topo.store.segment_size,
                store_limit: topo.store.store_limit,
                // What "held" means here, for a master and for a follower acknowledging.
                durability: match group.sync {
                    SyncMode::LocalDisk | SyncMode::RemoteDisk | SyncMode::QuorumDisk => {
                        Durability::Synced
                    }
                    SyncMode::LocalMem | SyncMode::RemoteMem | SyncMode::QuorumMem => {
                        Durability::Written
                    }
                },
                group_commit_window: topo.store.group_commit_window,
                max_record: policy.max_frame_size as usize + (64 << 10),
                memory_budget: policy.memory_limit / 2,
            }),
            checkpoint_interval: topo.store.checkpoint_interval,
            repair: false,
            cluster: ClusterOptions {
                group: group.name.to_string(),
                uris: group_client_uris(group),
                capacity: admitted,
                rebalance: m.listeners.iter().any(|l| l.rebalance_cluster_clients),
                settings: topo.rebalance.clone(),
                rebalance_filters: m
                    .listeners
                    .iter()
                    .filter(|l| l.rebalance_cluster_clients)
                    .map(|l| l.update_cluster_filter.clone())
                    .collect(),
            },
            topology: Arc::new(topo.clone()),
            group_members: group.members.len(),
            mesh_members: topo
                .members()
                .map(|(g, m)| admin_ui::MeshMemberRef {
                    group: g.name.to_string(),
                    member: m.name.to_string(),
                    admin: m.admin,
                })
                .collect(),
            handed_over_at: None,
        })
    }
}

/// The broker settings of `group` in `topo`: its resolved `[broker]` limits and every
/// `[[policy]]` entry over them, in file order (the first matching entry wins).
pub(crate) fn broker_settings(topo: &Topology, group: &crate::config::Group) -> BrokerSettings {
    let policy = &group.broker;
    BrokerSettings {
        memory_limit: policy.memory_limit,
        defaults: policy.destination_limits(),
        policies: topo
            .policies
            .iter()
            .map(|p| (p.destination.clone(), p.resolve(policy)))
            .collect(),
        max_subscriptions_per_connection: policy.max_subscriptions_per_connection as usize,
        group: group.name.to_string(),
    }
}

/// The native client URIs `group`'s members advertise (`advertise`, else the listener URL),
/// every member in file order: clients try them in turn and only the master answers.
pub fn group_client_uris(group: &crate::config::Group) -> Vec<String> {
    group
        .members
        .iter()
        .flat_map(|m| m.listeners.iter())
        .filter(|l| l.url.scheme.is_native())
        .map(|l| match &l.advertise {
            Some(a) => a.to_string(),
            None => l.url.to_string(),
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{file}: no member named {member:?}; the members are: {known}")]
    UnknownMember {
        file: String,
        member: String,
        known: String,
    },
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("stopped: {0}")]
    Stopped(String),
    #[error("cannot serve the admin port {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Metrics(#[from] m::MetricsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    #[error("listener {listener}: {source}")]
    Tls {
        listener: String,
        source: crate::transport::tls::TlsError,
    },
}

/// Metric handles of one listener, created once and shared by its connections.
pub(crate) struct ListenerMetrics {
    listener: String,
    protocol: &'static str,
    /// Count each message (see `metrics::message_metrics_enabled`).
    pub(crate) per_message: bool,
    open: Gauge,
    producers: Gauge,
    consumers: Gauge,
    accepted: Counter,
    bad_frames: Counter,
    received: Counter,
    delivered: Counter,
    blocked: Counter,
    write_batch: metrics::Histogram,
}

impl ListenerMetrics {
    fn new(listener: &str, protocol: Protocol) -> ListenerMetrics {
        let l = listener.to_string();
        let p = protocol.as_str();
        ListenerMetrics {
            listener: l.clone(),
            protocol: p,
            per_message: m::message_metrics_enabled(),
            open: gauge!(m::CONNECTIONS, "listener" => l.clone(), "protocol" => p),
            producers: gauge!(m::PRODUCERS, "listener" => l.clone(), "protocol" => p),
            consumers: gauge!(m::CONSUMERS, "listener" => l.clone(), "protocol" => p),
            accepted: counter!(m::CONNECTIONS_ACCEPTED, "listener" => l.clone(), "protocol" => p),
            bad_frames: counter!(m::BAD_FRAMES, "listener" => l.clone(), "protocol" => p),
            received: counter!(m::MESSAGES_RECEIVED, "listener" => l.clone(), "protocol" => p),
            delivered: counter!(m::MESSAGES_DELIVERED, "listener" => l.clone(), "protocol" => p),
            blocked: counter!(m::PRODUCER_BLOCKS, "listener" => l.clone(), "protocol" => p),
            write_batch: metrics::histogram!(m::DISPATCH_BATCH, "listener" => l, "protocol" => p),
        }
    }

    fn connection_opened(&self) {
        self.open.increment(1.0);
        self.accepted.increment(1);
    }

    fn connection_closed(&self) {
        self.open.decrement(1.0);
    }

    fn producer_started(&self) {
        self.producers.increment(1.0);
    }

    fn producer_gone(&self) {
        self.producers.decrement(1.0);
    }

    /// Subscriptions opened (positive) or closed (negative) on one connection.
    fn consumers(&self, change: f64) {
        self.consumers.increment(change);
    }

    fn bad_frame(&self) {
        self.bad_frames.increment(1);
    }

    fn received(&self, n: u64) {
        if self.per_message && n > 0 {
            self.received.increment(n);
        }
    }

    fn delivered(&self, n: u64) {
        if self.per_message {
            self.delivered.increment(n);
        }
    }

    fn write_batch(&self, n: u64) {
        if self.per_message {
            self.write_batch.record(n as f64);
        }
    }

    fn producer_blocked(&self) {
        self.blocked.increment(1);
    }

    fn bad_selector(&self) {
        counter!(m::BAD_SELECTORS, "listener" => self.listener.clone(), "protocol" => self.protocol)
            .increment(1);
    }

    fn creation_refused(&self) {
        counter!(m::CREATIONS_REFUSED, "listener" => self.listener.clone(), "protocol" => self.protocol)
            .increment(1);
    }

    fn denied(&self) {
        counter!(m::ACCESS_DENIED, "listener" => self.listener.clone(), "protocol" => self.protocol)
            .increment(1);
    }

    fn auth_failed(&self) {
        counter!(m::AUTH_FAILURES, "listener" => self.listener.clone(), "protocol" => self.protocol)
            .increment(1);
    }

    fn refused(&self, reason: &'static str) {
        counter!(m::CONNECTIONS_REFUSED, "listener" => self.listener.clone(), "reason" => reason)
            .increment(1);
    }

    fn send_refused(&self, e: &BrokerError) {
        let reason = match e {
            BrokerError::Full { .. } | BrokerError::JournalFull { .. } => "full",
            BrokerError::NotFound(_) => "not_found",
            BrokerError::NotOwner(_) => "forbidden",
            _ => "invalid",
        };
        counter!(m::SENDS_REFUSED, "protocol" => self.protocol, "reason" => reason).increment(1);
    }
}

/// What every connection of a listener shares.
pub(crate) struct ConnCtx {
    pub broker: Broker,
    pub settings: ConnSettings,
    pub identity: Arc<Identity>,
    pub metrics: ListenerMetrics,
    /// The member's current login and ACL rules (replaced in place by `meshmq apply`).
    pub security: Arc<LiveSecurity>,
    pub stomp: StompLimits,
    /// Bridges from other groups arrive on client listeners.
    pub network: Option<Arc<crate::network::Network>>,
    /// The mesh view and client registry of this term.
    pub cluster: Arc<Cluster>,
    /// This listener's cluster options.
    pub cluster_policy: Arc<ClusterPolicy>,
    /// Cancelled when the member stops taking new connections (a drain): the accept loop
    /// ends and its socket closes, while the connections it admitted go on.
    pub accepting: CancellationToken,
    /// What MQTT persistent sessions keep in flight between connections (one per term,
    /// shared by the term's listeners).
    pub mqtt_sessions: Arc<mqtt_session::MqttSessions>,
}

impl ConnCtx {
    /// Logs a client from `peer` in. Password verification is slow and memory-hungry by
    /// design, so it runs on the authenticator's bounded slots, off the async threads; a
    /// refusal is counted (a failed login as an auth failure, a login turned away unverified
    /// as a refused connection) and takes as long whether or not the user exists.
    pub(crate) async fn login(
        &self,
        peer: SocketAddr,
        user: Option<String>,
        password: Option<String>,
    ) -> Result<Principal, String> {
        let authn = self.security.current().authenticator.clone();
        authn.login(peer.ip(), user, password).await.map_err(|e| {
            match &e {
                LoginError::Refused(_) => self.metrics.auth_failed(),
                LoginError::Gate(g) => {
                    self.metrics.refused(g.reason());
                    tracing::debug!(%peer, error = %g, "login turned away");
                }
            }
            e.to_string()
        })
    }
}

/// The largest frame a connection may send before it has logged in (a `Connect`, a STOMP
/// `CONNECT` or a bridge's `BrokerInfo`): a stranger who never logs in holds no more.
pub(crate) const HANDSHAKE_MAX_FRAME: usize = 64 * 1024;

pub(crate) fn handshake_frame_limit(ctx: &ConnCtx) -> usize {
    HANDSHAKE_MAX_FRAME.min(ctx.settings.max_frame_size)
}

/// A member's role in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Starting,
    /// Standing by: following the master (ZooKeeper groups) or waiting for the lock
    /// (file-lock groups); no client listener open here.
    Slave,
    /// Between masters (ZooKeeper groups): waiting for an election, claiming, or catching its
    /// followers up before it serves; no client listener open here.
    Candidate,
    Master,
    Stopping,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Slave => "slave",
            Role::Candidate => "candidate",
            Role::Master => "master",
            Role::Stopping => "stopping",
        }
    }

    /// The role as `meshmq_ha_role` counts it: master, slave, or candidate for every state in
    /// between (starting, electing, stepping down).
    pub fn ha_role(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Slave => "slave",
            Role::Candidate | Role::Starting | Role::Stopping => "candidate",
        }
    }
}

/// Shared with the admin endpoints: who this member is, and its current master term if any.
pub(crate) struct MemberState {
    identity: Arc<Identity>,
    started: Instant,
    role: parking_lot::Mutex<Role>,
    /// The group's epoch this member last served in (0: never).
    epoch: std::sync::atomic::AtomicU64,
    term: parking_lot::RwLock<Option<term::TermView>>,
    /// The master's replication (followers and their lag), while it is one.
    replication: parking_lot::RwLock<Option<crate::ha::replication::Master>>,
    max_destinations: usize,
    /// The broker-wide memory limit it runs with now (`meshmq apply` changes it).
    memory_limit: std::sync::atomic::AtomicU64,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
    /// The topology it runs now, its live security and connectors.
    live: live::LiveTopology,
    /// Admin writes (the drain) and the mesh view.
    operations: drain::Operations,
}

impl MemberState {
    pub(crate) fn set_role(&self, role: Role) {
        *self.role.lock() = role;
        m::publish_ha_role(role.ha_role());
    }

    /// Records the newest epoch of the group this member knows.
    pub(crate) fn set_epoch(&self, epoch: u64) {
        self.epoch
            .store(epoch, std::sync::atomic::Ordering::Release);
        gauge!(m::HA_EPOCH).set(epoch as f64);
    }
}

/// A started member.
pub struct RunningServer {
    /// Bound addresses, in the order of `ServerOptions::listeners` (a member that starts as a
    /// standby binds them only when it becomes master: empty then).
    pub listen_addrs: Vec<SocketAddr>,
    pub admin_addr: SocketAddr,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    shutdown_timeout: Duration,
    fatal: Fatal,
    /// `Operations::restart` of the member.
    restart: Arc<drain::RestartRequest>,
}

impl RunningServer {
    /// Set once the member must exit with a failure (see [`supervise`]); it shuts down then.
    pub fn fatal(&self) -> Fatal {
        self.fatal.clone()
    }

    /// Starts a graceful shutdown (idempotent).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Whether the member, once stopped, runs itself again (`POST /restart`): read it after
    /// `wait`.
    pub fn restart_request(&self) -> Arc<drain::RestartRequest> {
        self.restart.clone()
    }

    /// Waits, after `shutdown`, for the master term to stop (connections told, a clean
    /// checkpoint written, the journal closed) and every task to end. Returns false when
    /// something was still running at the deadline.
    pub async fn wait(self) -> bool {
        self.shutdown.cancelled().await;
        self.tracker.close();
        // The term's own stop is bounded by the shutdown timeout; allow for the checkpoint.
        tokio::time::timeout(
            self.shutdown_timeout * 2 + Duration::from_secs(5),
            self.tracker.wait(),
        )
        .await
        .is_ok()
    }
}

/// Binds every listener and the admin port, then serves in the background.
pub async fn start(opts: ServerOptions) -> Result<RunningServer, ServerError> {
    let prometheus = m::install(&opts.identity.group, &opts.identity.member)?;
    gauge!(m::MEMORY_LIMIT).set(opts.broker.memory_limit as f64);
    let admin_listener = tokio::net::TcpListener::bind(opts.admin)
        .await
        .map_err(|source| ServerError::Admin {
            addr: opts.admin,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| ServerError::Admin {
            addr: opts.admin,
            source,
        })?;
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let fatal = Fatal::default();
    let state = Arc::new(MemberState {
        identity: Arc::new(opts.identity.clone()),
        started: Instant::now(),
        role: parking_lot::Mutex::new(Role::Starting),
        epoch: std::sync::atomic::AtomicU64::new(0),
        term: parking_lot::RwLock::new(None),
        replication: parking_lot::RwLock::new(None),
        max_destinations: opts.max_destinations,
        memory_limit: std::sync::atomic::AtomicU64::new(opts.broker.memory_limit),
        prometheus,
        live: live::LiveTopology::new(
            opts.topology.clone(),
            &opts.identity.member,
            opts.network.clone(),
            // Password verifications running at once may use a sixteenth of the memory limit.
            (opts.broker.memory_limit / 16).max(crate::security::DEFAULT_LOGIN_MEMORY),
        ),
        operations: drain::Operations::new(&opts, shutdown.clone()),
    });
    state.set_role(Role::Starting);
    state.set_epoch(0);
    let restart = state.operations.restart.clone();
    tracker.spawn(admin::serve(
        admin_listener,
        state.clone(),
        shutdown.clone(),
    ));
    let opts = Arc::new(opts);
    let listen_addrs = match &opts.election {
        ElectionOptions::None => {
            // The only member of its group: serve at once, and fail at once if we cannot.
            let term = Term::start(&opts, &state, &shutdown).await?;
            let listen_addrs = term.listen_addrs.clone();
            let (state, shutdown_token, timeout, fatal) = (
                state.clone(),
                shutdown.clone(),
                opts.shutdown_timeout,
                fatal.clone(),
            );
            let stopped = term.stopped();
            tracker.spawn(async move {
                tokio::select! {
                    // A shutdown also ends the term: that is not the term ending by itself.
                    biased;
                    _ = shutdown_token.cancelled() => {}
                    _ = stopped.cancelled(), if !shutdown_token.is_cancelled() => {
                        // The term ended itself (its journal failed): with no other member to
                        // take over, exit with a failure; a restart recovers what is on disk.
                        let cause = "the master term ended by itself (see the error above)";
                        tracing::error!(cause, "this member cannot go on; exiting with a failure so that a supervisor restarts it");
                        fatal.0.lock().get_or_insert(cause.to_string());
                        shutdown_token.cancel();
                    }
                }
                term.stop(&state, timeout).await;
            });
            listen_addrs
        }
        ElectionOptions::FileLock { dir, poll } => {
            state.set_role(Role::Slave);
            tracker.spawn(election::file_lock_member(
                opts.clone(),
                state.clone(),
                dir.clone(),
                *poll,
                shutdown.clone(),
            ));
            Vec::new()
        }
        ElectionOptions::ZooKeeper(ha) => {
            state.set_role(Role::Candidate);
            tracker.spawn(supervise(
                "the ZooKeeper HA driver",
                replicated::zookeeper_member(
                    opts.clone(),
                    state.clone(),
                    (**ha).clone(),
                    shutdown.clone(),
                ),
                shutdown.clone(),
                fatal.clone(),
            ));
            Vec::new()
        }
    };
    tracing::info!(admin = %admin_addr, member = %opts.identity.member, "member started");
    Ok(RunningServer {
        listen_addrs,
        admin_addr,
        shutdown,
        tracker,
        shutdown_timeout: opts.shutdown_timeout,
        fatal,
        restart,
    })
}

/// Why the member cannot go on (a task it cannot live without died), once one did.
#[derive(Clone, Default)]
pub struct Fatal(Arc<parking_lot::Mutex<Option<String>>>);

impl Fatal {
    pub fn cause(&self) -> Option<String> {
        self.0.lock().clone()
    }
}

/// Runs `task`, which must last until `shutdown`. If it panics, or ends while the member is
/// not shutting down, the member would live on as a zombie — registered, maybe holding its
/// listeners, but never following, serving or stepping down — so the cause is logged and
/// recorded in `fatal`, and the member shuts down to exit with a failure (a supervisor
/// restarts it).
pub(crate) async fn supervise(
    what: &'static str,
    task: impl std::future::Future<Output = ()> + Send + 'static,
    shutdown: CancellationToken,
    fatal: Fatal,
) {
    let outcome = tokio::spawn(task).await;
    let cause = match outcome {
        Ok(()) if shutdown.is_cancelled() => return,
        Ok(()) => format!("{what} ended by itself"),
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            format!("{what} panicked: {message}")
        }
        Err(e) => format!("{what} was cancelled: {e}"),
    };
    tracing::error!(%cause, "this member cannot go on; exiting with a failure so that a supervisor restarts it");
    fatal.0.lock().get_or_insert(cause);
    shutdown.cancel();
}

async fn accept_loop(
    listener: Listener,
    spec: ListenerSpec,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: Arc<ConnCtx>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let incoming = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.cancelled() => return,
            _ = ctx.accepting.cancelled() => return,
        };
        match incoming {
            Ok(Incoming::Admitted {
                stream,
                peer,
                permit,
            }) => {
                tracker.spawn(serve_connection(
                    stream,
                    peer,
                    (spec.protocol, spec.websocket),
                    tls.clone(),
                    ctx.clone(),
                    shutdown.clone(),
                    permit,
                ));
            }
            Ok(Incoming::OverLimit { stream, peer }) => {
                ctx.metrics.refused("max_connections");
                tracing::debug!(%peer, listener = %spec.url, "refused: max_connections");
                let (protocol, websocket, tls, max, ctx) = (
                    spec.protocol,
                    spec.websocket,
                    tls.clone(),
                    listener.count().max(),
                    ctx.clone(),
                );
                tracker.spawn(async move {
                    let Some(stream) = secure(stream, tls, &ctx).await else {
                        return;
                    };
                    match protocol {
                        _ if websocket => websocket::refuse_over_limit(stream, max).await,
                        Protocol::Native => native::refuse_over_limit(stream, max).await,
                        Protocol::Stomp => stomp::refuse_over_limit(stream, max).await,
                        Protocol::Mqtt => mqtt::refuse_over_limit(stream, ctx).await,
                    }
                });
            }
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(listener = %spec.url, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Completes the TLS handshake when the listener has TLS (within the connect timeout).
async fn secure(
    stream: tokio::net::TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: &ConnCtx,
) -> Option<crate::transport::Stream> {
    let Some(acceptor) = tls else {
        return Some(Box::new(stream));
    };
    match tokio::time::timeout(ctx.settings.connect_timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Some(Box::new(s)),
        Ok(Err(e)) => {
            ctx.metrics.refused("tls_handshake");
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            ctx.metrics.refused("connect_timeout");
            None
        }
    }
}

/// Serves one accepted connection: `(protocol, over a WebSocket)`.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    (protocol, websocket): (Protocol, bool),
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: Arc<ConnCtx>,
    shutdown: CancellationToken,
    permit: crate::transport::Permit,
) {
    let Some(stream) = secure(stream, tls, &ctx).await else {
        return;
    };
    if websocket {
        websocket::serve(stream, peer, ctx, shutdown, permit).await;
    } else {
        serve_stream(stream, peer, protocol, ctx, shutdown, permit).await;
    }
}

async fn serve_stream(
    stream: crate::transport::Stream,
    peer: SocketAddr,
    protocol: Protocol,
    ctx: Arc<ConnCtx>,
    shutdown: CancellationToken,
    permit: crate::transport::Permit,
) {
    match protocol {
        Protocol::Native => native::serve(stream, peer, ctx, shutdown, permit).await,
        Protocol::Stomp => stomp::serve(stream, peer, ctx, shutdown, permit).await,
        Protocol::Mqtt => mqtt::serve(stream, peer, ctx, shutdown, permit).await,
    }
}

async fn quic_accept_loop(
    listener: QuicListener,
    spec: ListenerSpec,
    ctx: Arc<ConnCtx>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let incoming = tokio::select! {
            i = listener.accept() => i,
            _ = shutdown.cancelled() => {
                listener.close();
                return;
            }
            _ = ctx.accepting.cancelled() => {
                listener.close();
                return;
            }
        };
        let Some(incoming) = incoming else { return };
        let (ctx, shutdown, timeout) =
            (ctx.clone(), shutdown.clone(), ctx.settings.connect_timeout);
        let (protocol, max) = (spec.protocol, listener.count().max());
        match incoming {
            QuicIncoming::Admitted { incoming, permit } => {
                tracker.spawn(async move {
                    match quic::accept_stream(incoming, timeout).await {
                        Ok((stream, peer)) => {
                            serve_stream(stream, peer, protocol, ctx, shutdown, permit).await
                        }
                        Err(e) => {
                            ctx.metrics.refused("quic_handshake");
                            tracing::debug!(error = %e, "QUIC connection failed");
                        }
                    }
                });
            }
            QuicIncoming::OverLimit(incoming) => {
                ctx.metrics.refused("max_connections");
                tracker.spawn(async move {
                    if let Ok((stream, _)) = quic::accept_stream(incoming, timeout).await {
                        native::refuse_over_limit(stream, max).await;
                    }
                });
            }
        }
    }
}

/// Ends the master term at once when the journal fails (a write or an `fsync` returned an
/// error): the failed records were not receipted and never will be — a receipt after a failed
/// sync would be a lie, and Linux may already have dropped the unsynced pages — so the member
/// stops serving, says why in the log and in `meshmq_journal_failures_total`, and its election
/// driver decides what is next (a standby takes over; a lone member exits for a restart that
/// recovers what is on disk).
async fn stop_on_journal_failure(broker: Broker, stop: CancellationToken) {
    tokio::select! {
        reason = broker.journal_failed() => {
            counter!(m::JOURNAL_FAILURES).increment(1);
            tracing::error!(%reason, "the journal failed: nothing more is receipted; this member stops serving");
            stop.cancel();
        }
        _ = stop.cancelled() => {}
    }
}

/// Periodic broker work: expiry sweeps, checkpoints (on schedule, whenever the journal starts a
/// new segment — so disk use follows traffic, not the clock — and every second while the
/// journal is full, so acknowledged segments are freed promptly), journal gauges.
async fn chores(
    broker: Broker,
    expiry: Duration,
    checkpoint_every: Duration,
    shutdown: CancellationToken,
) {
    let period = expiry.min(checkpoint_every).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_checkpoint = Instant::now();
    let mut last_sweep = Instant::now();
    loop {
        let rolled = tokio::select! {
            _ = tick.tick() => false,
            _ = broker.segment_started() => true,
            _ = shutdown.cancelled() => return,
        };
        if last_sweep.elapsed() >= expiry {
            last_sweep = Instant::now();
            broker.sweep_expired();
            broker.redispatch();
        }
        let Some(j) = broker.journal_stats() else {
            continue;
        };
        gauge!(m::JOURNAL_SEGMENTS).set(j.segments as f64);
        gauge!(m::JOURNAL_DISK_BYTES).set(j.disk_bytes as f64);
        gauge!(m::JOURNAL_FULL).set(if j.full { 1.0 } else { 0.0 });
        metrics::counter!(m::JOURNAL_SYNCS).absolute(j.syncs);
        metrics::counter!(m::JOURNAL_BYTES).absolute(j.bytes);
        let due = rolled
            || last_checkpoint.elapsed() >= checkpoint_every
            || (j.full && last_checkpoint.elapsed() >= Duration::from_secs(1));
        if due {
            last_checkpoint = Instant::now();
            match broker.checkpoint(false).await {
                Ok(deleted) if deleted > 0 => tracing::debug!(deleted, "journal segments deleted"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "checkpoint failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{supervise, Fatal};
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn a_panicking_driver_shuts_the_member_down_with_its_cause() {
        let (shutdown, fatal) = (CancellationToken::new(), Fatal::default());
        supervise(
            "the driver",
            async { panic!("the journal is gone") },
            shutdown.clone(),
            fatal.clone(),
        )
        .await;
        assert!(
            shutdown.is_cancelled(),
            "the member goes on without its driver"
        );
        let cause = fatal.cause().expect("no cause recorded for the exit");
        assert!(
            cause.contains("the driver panicked: the journal is gone"),
            "{cause}"
        );
    }

    #[tokio::test]
    async fn a_driver_that_ends_by_itself_shuts_the_member_down() {
        let (shutdown, fatal) = (CancellationToken::new(), Fatal::default());
        supervise("the driver", async {}, shutdown.clone(), fatal.clone()).await;
        assert!(
            shutdown.is_cancelled(),
            "the member goes on without its driver"
        );
        let cause = fatal.cause().expect("no cause recorded for the exit");
        assert!(cause.contains("the driver ended by itself"), "{cause}");
    }

    #[tokio::test]
    async fn a_driver_that_ends_at_shutdown_is_no_failure() {
        let (shutdown, fatal) = (CancellationToken::new(), Fatal::default());
        let token = shutdown.clone();
        let stopping = tokio::spawn(supervise(
            "the driver",
            async move { token.cancelled().await },
            shutdown.clone(),
            fatal.clone(),
        ));
        shutdown.cancel();
        stopping.await.expect("the supervisor ends");
        assert_eq!(fatal.cause(), None);
    }
}
