//! What a member runs with, resolved from the topology before anything starts: who it is, its
//! listeners, its election, its broker settings, its journal and its connectors.
//!
//! Owns: [`ServerOptions`] and the types it is made of, and [`ServerError`]. Must not touch:
//! sockets or tasks (`listener.rs` and `member/` run them). Invariant: a member that is not in
//! the topology, or whose files cannot be read, is an error here, before anything binds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::broker::BrokerSettings;
use crate::cluster::{ClusterOptions, ClusterPolicy};
use crate::config::{Election, Scheme, SyncMode, Topology};
use crate::metrics as m;
use crate::store::{Durability, StoreConfig, StoreError};
use crate::transport::TransportError;

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

/// A member of the mesh as the topology names it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MeshMemberRef {
    pub group: String,
    pub member: String,
    pub admin: SocketAddr,
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
    pub mesh_members: Vec<MeshMemberRef>,
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
                .map(|(g, m)| MeshMemberRef {
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
