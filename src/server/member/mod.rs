//! One member's life: starting it (the admin port, then its term directly or its election
//! driver), and shutting it down; a task it cannot live without ending makes it exit with a
//! failure.
//!
//! Owns: [`RunningServer`], [`Fatal`]. Must not touch: a master term's insides (`term.rs`).
//! Invariant: `wait` returns only when every task has ended or the shutdown timeout has passed.
//!
//! The member's parts, from the top down: this file; `admin/` (the admin HTTP port: status,
//! topology, mesh view, drain); `election.rs` (file-lock groups) and `replicated.rs`
//! (ZooKeeper groups), which start and stop terms; `term.rs` (one master term: the journal,
//! the listeners, the chores); `state.rs` ([`MemberState`] and [`Role`]: what all of them
//! share), which sits on three leaves — `term_view.rs` (a serving term as the others see it),
//! `live.rs` (the topology it runs now, and taking a new one) and `operations.rs` (a drain's
//! progress and the restart request). No file names one above it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::gauge;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics as m;

pub mod admin;
mod election;
pub mod live;
mod operations;
mod replicated;
mod state;
mod term;
mod term_view;

pub use operations::{DrainStatus, RestartRequest};
pub use state::Role;

use crate::server::options::{ElectionOptions, ServerError, ServerOptions};

use operations::Operations;
use state::MemberState;
use term::Term;

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
    restart: Arc<RestartRequest>,
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
    pub fn restart_request(&self) -> Arc<RestartRequest> {
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
        prometheus,
        live: live::LiveTopology::new(
            opts.topology.clone(),
            &opts.identity.member,
            opts.network.clone(),
            // Password verifications running at once may use a sixteenth of the memory limit.
            (opts.broker.memory_limit / 16).max(crate::security::DEFAULT_LOGIN_MEMORY),
            opts.broker.memory_limit,
        ),
        operations: Operations::new(&opts, shutdown.clone()),
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
