//! What the admin port may change on a member and what it shows of the mesh: a drain's
//! progress (what `/status` shows while it runs), the request to run again once stopped, and
//! the mesh's members for the mesh view. Only the state: the drain itself is
//! `admin/drain.rs`, which sits above the member's state and carries out what is recorded here.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::server::options::{MeshMemberRef, ServerOptions};

/// `/status` while a drain runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DrainStatus {
    /// `moving clients`, `emptying queues`, `handing over`, `stopping` or `restarting`.
    pub phase: String,
    /// Client connections still here.
    pub clients: u64,
    /// Messages still held on this member's queues.
    pub queued: u64,
    /// Requests to move sent so far.
    pub moves_asked: u64,
    /// Seconds until the drain stops waiting and exits anyway.
    pub seconds_left: f64,
}

/// What the admin port may change on a member, and what it shows of the mesh.
pub(crate) struct Operations {
    pub(super) group_members: usize,
    pub(crate) mesh: Vec<MeshMemberRef>,
    pub(super) shutdown: CancellationToken,
    pub(super) drain: Mutex<Option<(Instant, DrainStatus)>>,
    /// Set when the drain under way ends in a restart (read once the member has stopped).
    pub(crate) restart: Arc<RestartRequest>,
}

/// Whether a stopped member runs itself again, set by a drain for a restart.
#[derive(Debug, Default)]
pub struct RestartRequest {
    pub(super) requested: AtomicBool,
    /// The epoch a master handed its group over in (0: it handed nothing over).
    pub(super) handed_over_at: AtomicU64,
}

impl RestartRequest {
    /// `Some(epoch)` once a restart was asked for: the epoch this member handed its group over
    /// in, 0 when it handed nothing over.
    pub fn requested(&self) -> Option<u64> {
        self.requested
            .load(Ordering::SeqCst)
            .then(|| self.handed_over_at.load(Ordering::SeqCst))
    }
}

impl Operations {
    pub(crate) fn new(opts: &ServerOptions, shutdown: CancellationToken) -> Operations {
        Operations {
            group_members: opts.group_members,
            mesh: opts.mesh_members.clone(),
            shutdown,
            drain: Mutex::new(None),
            restart: Arc::new(RestartRequest::default()),
        }
    }

    /// The drain's progress, once one started.
    pub(crate) fn drain_status(&self) -> Option<DrainStatus> {
        self.drain.lock().as_ref().map(|(deadline, s)| {
            let mut s = s.clone();
            s.seconds_left = deadline
                .saturating_duration_since(Instant::now())
                .as_secs_f64();
            s
        })
    }

    pub(super) fn set(&self, update: impl FnOnce(&mut DrainStatus)) {
        if let Some((_, s)) = self.drain.lock().as_mut() {
            update(s);
        }
    }
}
