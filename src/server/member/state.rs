//! What the parts of a running member share: who it is, its role in its group, the master term
//! it serves (if any), its replication while it is master, the topology it runs now and what
//! the admin port may change. The member's life (`mod.rs`), its term, its election drivers and
//! its admin endpoints all sit on this; it names none of them (the term's view, the live
//! topology and the operations' state are leaves of their own below it).

use std::sync::Arc;
use std::time::Instant;

use metrics::gauge;

use crate::metrics as m;
use crate::server::options::Identity;

use super::live::LiveTopology;
use super::operations::Operations;
use super::term_view::TermView;

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
    pub(super) identity: Arc<Identity>,
    pub(super) started: Instant,
    pub(super) role: parking_lot::Mutex<Role>,
    /// The group's epoch this member last served in (0: never).
    pub(super) epoch: std::sync::atomic::AtomicU64,
    pub(super) term: parking_lot::RwLock<Option<TermView>>,
    /// The master's replication (followers and their lag), while it is one.
    pub(super) replication: parking_lot::RwLock<Option<crate::ha::replication::Master>>,
    pub(super) max_destinations: usize,
    pub(super) prometheus: metrics_exporter_prometheus::PrometheusHandle,
    /// The topology it runs now, its live security and connectors, and its memory limit.
    pub(super) live: LiveTopology,
    /// Admin writes (the drain) and the mesh view.
    pub(super) operations: Operations,
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
