//! The `/status` document: one member's view of itself — its role and epoch, its listeners
//! and their connections, memory, process, destinations, connectors, cluster, followers and a
//! drain's progress — read from the member's state. The mesh view (`ui.rs`) shows every
//! member's; `meshmq status`, `drain` and `apply` read it.

use serde::{Deserialize, Serialize};

use crate::broker::DestinationStats;
use crate::metrics as m;

use super::super::operations::DrainStatus;
use super::super::state::{MemberState, Role};

/// `/status`: one member's view of itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberStatus {
    pub mesh: String,
    pub group: String,
    pub member: String,
    /// `master` when serving clients; `slave` when following the master (ZooKeeper) or
    /// waiting for the lock (file-lock); `candidate` between masters (ZooKeeper); `starting` or
    /// `stopping` briefly.
    pub role: String,
    /// The newest epoch of the group this member knows (0: none yet, and always 0 in a group
    /// without election).
    pub epoch: u64,
    pub ready: bool,
    pub uptime_seconds: f64,
    pub version: String,
    pub connections: u64,
    pub listeners: Vec<ListenerStatus>,
    pub memory_used_bytes: u64,
    pub memory_limit_bytes: u64,
    pub process: ProcessStatus,
    pub destinations: Vec<DestinationStats>,
    #[serde(default)]
    pub connectors: Vec<crate::network::ConnectorStatus>,
    /// What this member's failover clients are told, and its rebalancing counters (absent on
    /// a standby).
    #[serde(default)]
    pub cluster: Option<crate::cluster::ClusterStatus>,
    /// On the master of a replicated group: each connected slave and its lag.
    #[serde(default)]
    pub slaves: Vec<crate::ha::replication::FollowerStatus>,
    /// While the member drains (`POST /drain`): its progress.
    #[serde(default)]
    pub drain: Option<DrainStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ListenerStatus {
    pub url: String,
    pub protocol: String,
    /// The address actually bound (differs from the URL when it asked for port 0).
    pub bound: String,
    pub connections: u64,
    pub max_connections: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ProcessStatus {
    pub rss_bytes: u64,
    pub open_fds: u64,
    pub cpu_seconds: f64,
}

pub(crate) fn member_status(state: &MemberState) -> MemberStatus {
    let term = state.term.read().clone();
    let role = *state.role.lock();
    let listeners: Vec<ListenerStatus> = term
        .iter()
        .flat_map(|t| t.listeners.iter())
        .map(|(spec, bound, count)| ListenerStatus {
            url: spec.url.clone(),
            protocol: spec.protocol.as_str().to_string(),
            bound: bound.to_string(),
            connections: count.open() as u64,
            max_connections: count.max() as u64,
        })
        .collect();
    let p = m::process_usage();
    let ready = role == Role::Master && term.is_some();
    MemberStatus {
        mesh: state.identity.mesh.clone(),
        group: state.identity.group.clone(),
        member: state.identity.member.clone(),
        role: role.as_str().to_string(),
        epoch: state.epoch.load(std::sync::atomic::Ordering::Acquire),
        ready,
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        connections: listeners.iter().map(|l| l.connections).sum(),
        listeners,
        memory_used_bytes: term.as_ref().map_or(0, |t| t.broker.memory().used()),
        memory_limit_bytes: state.live.memory_limit(),
        slaves: state
            .replication
            .read()
            .as_ref()
            .map(|r| r.followers())
            .unwrap_or_default(),
        process: ProcessStatus {
            rss_bytes: p.rss_bytes,
            open_fds: p.open_fds,
            cpu_seconds: p.cpu_seconds,
        },
        destinations: term
            .as_ref()
            .map(|t| t.broker.destination_stats())
            .unwrap_or_default(),
        connectors: term
            .as_ref()
            .and_then(|t| t.network.as_ref())
            .map(|n| n.status())
            .unwrap_or_default(),
        cluster: term.as_ref().map(|t| t.cluster.status()),
        drain: state.operations.drain_status(),
    }
}
