//! The driver of a ZooKeeper-elected member: a thin task that carries out what the role
//! machine (`ha::machine`) decides — publish, follow, claim, serve, resign — and feeds back
//! what ZooKeeper, the replication link and the term report.
//!
//! Owns: this member's journal between terms (as a follower's copy), its ZooKeeper session,
//! and the master term with its replication listener while it serves. Must not touch: the
//! election rules (they are the machine's). Invariants: the journal is held by exactly one of
//! {the candidate, the follower task, the term}; a term's commits stop (`fence`) before the
//! term is torn down; the lease the replication commits under is the machine's, refreshed
//! after every event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zookeeper_client::SessionState;

use crate::ha::machine::{Action, Config, ElectionRole, Machine, View, ZkSession};
use crate::ha::replication::{self, FollowOptions, LinkOptions, ReplError};
use crate::ha::zk::GroupSession;
use crate::metrics as m;
use crate::store::{self as store, Durability, EpochHistory, Store, StoreConfig, StoreError};

use super::state::{MemberState, Role};
use super::term::{close_store, open_broker, Term};
use crate::server::options::{ServerError, ServerOptions, ZooKeeperElection};

/// A master term with its replication.
struct Serving {
    term: Term,
    store: Store,
    replication: Replication,
}

impl Serving {
    /// Stops the term (fencing its pending writes first when `fence` says why), then its
    /// replication.
    async fn stop(self, state: &MemberState, timeout: Duration, fence: Option<&str>) {
        if let Some(reason) = fence {
            self.store.journal().fence(reason);
        }
        self.term.stop(state, timeout).await;
        self.replication.end(state).await;
    }
}

/// The replication tasks of a master term.
#[derive(Clone)]
struct Replication {
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Replication {
    async fn end(&self, state: &MemberState) {
        *state.replication.write() = None;
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

enum Done {
    Followed(Store),
    Started(Result<Serving, ServerError>),
}

struct Driver {
    opts: Arc<ServerOptions>,
    state: Arc<MemberState>,
    ha: ZooKeeperElection,
    store_cfg: StoreConfig,
    follow: FollowOptions,
    machine: Machine,
    local: Option<Store>,
    following: Option<CancellationToken>,
    starting: Option<CancellationToken>,
    serving: Option<Serving>,
    lease: Arc<parking_lot::Mutex<Option<Instant>>>,
    /// The newest epoch the machine has seen: a follow in progress refuses a master older
    /// than it at any point of its stream.
    newest_epoch: tokio::sync::watch::Sender<u64>,
    done: mpsc::UnboundedSender<Done>,
    shutdown: CancellationToken,
    /// `meshmq_zookeeper_session_connected`.
    zk_connected: metrics::Gauge,
    /// `meshmq_ha_elections_total` by result.
    elections_won: metrics::Counter,
    elections_lost: metrics::Counter,
}

async fn open_local(cfg: &StoreConfig, repair: bool) -> Result<Store, StoreError> {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || match Store::open(cfg.clone(), repair) {
        Ok((s, _)) => Ok(s),
        Err(e @ StoreError::Corrupt { .. }) if cfg.durability == Durability::Written => {
            // A `_mem` sync mode never promised this journal durable on its own: what was
            // receipted lives in the memory of a quorum, and a power cut may leave this copy
            // with holes. Refusing it would keep the member out for good; copying the
            // master's again is what it is for. (A `_disk` journal's damage stays refused.)
            tracing::error!(error = %e, "the journal is damaged; with a _mem sync mode it is only a copy of the group's: discarded, to be copied again from the master");
            store::wipe_journal(&cfg.dir)?;
            Store::open_empty_at(cfg, 1, EpochHistory::default())
        }
        Err(e) => Err(e),
    })
    .await
    .map_err(|e| StoreError::Failed(format!("opening the journal panicked: {e}")))?
}

/// Runs a ZooKeeper-elected member until shutdown.
pub(crate) async fn zookeeper_member(
    opts: Arc<ServerOptions>,
    state: Arc<MemberState>,
    ha: ZooKeeperElection,
    shutdown: CancellationToken,
) {
    let Some(store_cfg) = opts.store.clone() else {
        tracing::error!("a replicated member needs a journal");
        return;
    };
    let local = loop {
        match open_local(&store_cfg, opts.repair).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::error!(error = %e, "cannot open the journal; retrying in 5 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    };
    let position = local.position();
    tracing::info!(%position, "journal opened; joining the group's election");
    let machine = Machine::new(
        Config {
            name: opts.identity.member.clone(),
            weight: ha.weight,
            replication: ha.replication.to_string(),
            replicas: ha.replicas,
            session_timeout: ha.zookeeper.session_timeout,
            // Check quorum only where commits wait for followers: a `local_*` master serves
            // without them.
            quorum_timeout: (ha.sync.needs_replicas() && ha.replicas / 2 > 0)
                .then_some(ha.quorum_timeout),
        },
        position,
    );
    state.set_epoch(machine.epoch());
    let zk_connected = metrics::gauge!(m::ZOOKEEPER_SESSION);
    zk_connected.set(0.0);
    let elections = |result: &'static str| metrics::counter!(m::HA_ELECTIONS, "result" => result);
    let (won, lost) = (elections("won"), elections("lost"));
    won.increment(0);
    lost.increment(0);
    let (done, mut done_rx) = mpsc::unbounded_channel();
    let mut d = Driver {
        follow: FollowOptions {
            member: opts.identity.member.clone(),
            link: LinkOptions {
                token: ha.token.clone(),
                heartbeat: (ha.zookeeper.session_timeout / 4).max(Duration::from_millis(100)),
            },
            store: store_cfg.clone(),
        },
        opts,
        state,
        ha,
        store_cfg,
        machine,
        local: Some(local),
        following: None,
        starting: None,
        serving: None,
        lease: Default::default(),
        newest_epoch: tokio::sync::watch::Sender::new(0),
        done,
        shutdown: shutdown.clone(),
        zk_connected,
        elections_won: won,
        elections_lost: lost,
    };
    d.run(&mut done_rx).await;
    d.stop_everything(&mut done_rx).await;
}

impl Driver {
    async fn run(&mut self, done_rx: &mut mpsc::UnboundedReceiver<Done>) {
        let mesh = self.opts.identity.mesh.clone();
        let group = self.opts.identity.group.clone();
        'session: loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let announce = self.machine.announce();
            let session = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                s = GroupSession::open(&self.ha.zookeeper, &mesh, &group, &announce) => s,
            };
            let session = match session {
                Ok(s) => {
                    self.zk_connected.set(1.0);
                    Arc::new(s)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no ZooKeeper session; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue 'session,
                        _ = self.shutdown.cancelled() => return,
                    }
                }
            };
            let watcher = match session.watch().await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the group; opening a new session");
                    self.zk_connected.set(0.0);
                    continue 'session;
                }
            };
            // The crate's persistent watcher panics when polled after its session ended, so it
            // lives on a task of its own and changes arrive over a channel.
            let (changed_tx, mut changed) = mpsc::unbounded_channel::<()>();
            let _forwarder = AbortOnDrop(tokio::spawn(async move {
                let mut watcher = watcher;
                loop {
                    let event = watcher.changed().await;
                    if event.session_state.is_terminated() || changed_tx.send(()).is_err() {
                        return;
                    }
                }
            }));
            let mut states = session.state_watcher();
            tracing::info!("registered with ZooKeeper");
            self.machine
                .handle_session(ZkSession::Connected, Instant::now());
            self.refresh(&session).await;
            let (lease_tx, mut lease_rx) = mpsc::unbounded_channel();
            let renewer = {
                let session = session.clone();
                let every = self.ha.zookeeper.session_timeout / 6;
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(every).await;
                        match session.touch().await {
                            Ok(sent) => {
                                if lease_tx.send(sent).is_err() {
                                    return;
                                }
                            }
                            Err(e) if e.is_expired() => return,
                            Err(_) => {}
                        }
                    }
                })
            };
            let _renewer = AbortOnDrop(renewer);
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                if !self.act(&session).await {
                    self.zk_connected.set(0.0);
                    continue 'session;
                }
                self.sync_lease();
                self.note_epoch(self.machine.epoch());
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    Some(()) = changed.recv() => self.refresh(&session).await,
                    s = states.changed() => match s {
                        SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                            self.zk_connected.set(1.0);
                            self.machine.handle_session(ZkSession::Connected, Instant::now());
                            self.refresh(&session).await;
                        }
                        SessionState::Disconnected => {
                            tracing::warn!("ZooKeeper connection lost; commits pause until it is back");
                            self.zk_connected.set(0.0);
                            self.machine.handle_session(ZkSession::Disconnected, Instant::now());
                        }
                        other => {
                            tracing::warn!(state = ?other, "ZooKeeper session ended; opening a new one");
                            self.zk_connected.set(0.0);
                            self.machine.handle_session(ZkSession::Expired, Instant::now());
                            self.sync_lease();
                            let _ = self.act(&session).await;
                            continue 'session;
                        }
                    },
                    Some(sent) = lease_rx.recv() => self.machine.handle_lease(sent, Instant::now()),
                    _ = tick.tick() => {
                        let contact = self.state.replication.read().as_ref().and_then(|r| r.quorum_contact());
                        if let Some(at) = contact {
                            self.machine.handle_quorum_contact(at, Instant::now());
                        }
                        self.machine.handle_tick(Instant::now());
                        let ended = self.serving.as_ref().is_some_and(|s| s.term.stopped().is_cancelled());
                        if ended {
                            tracing::error!("the term ended by itself; rejoining as a candidate");
                            self.end_term("the term failed").await;
                        }
                    }
                    Some(done) = done_rx.recv() => self.finished(done).await,
                }
            }
        }
    }

    /// Reads the group and hands it to the machine.
    async fn refresh(&mut self, session: &GroupSession) {
        match session.view().await {
            Ok(view) => self.see(view),
            Err(e) => tracing::debug!(error = %e, "cannot read the group now"),
        }
    }

    fn see(&mut self, view: View) {
        self.machine.handle_view(view, Instant::now());
        self.state.set_epoch(self.machine.epoch());
        self.note_epoch(self.machine.epoch());
    }

    /// Tells a follow in progress the newest epoch seen (never moving it back).
    fn note_epoch(&self, epoch: u64) {
        self.newest_epoch.send_if_modified(|e| {
            let newer = epoch > *e;
            *e = (*e).max(epoch);
            newer
        });
    }

    fn sync_lease(&self) {
        let now = Instant::now();
        *self.lease.lock() = if self.machine.may_commit(now) {
            self.machine.lease_until()
        } else {
            None
        };
    }

    /// Carries out every pending action; false when the session is gone.
    async fn act(&mut self, session: &GroupSession) -> bool {
        let mut publish_failed = false;
        while let Some(action) = self.machine.poll_action() {
            tracing::debug!(?action, "ha action");
            match action {
                Action::Publish(a) => {
                    if let Err(e) = session.publish(&a).await {
                        tracing::warn!(error = %e, "cannot publish our state");
                        if e.is_expired() {
                            self.machine
                                .handle_session(ZkSession::Expired, Instant::now());
                            return false;
                        }
                        self.machine.handle_publish_failed();
                        publish_failed = true;
                    }
                }
                Action::Follow { .. } if publish_failed => {
                    // ZooKeeper does not show that we follow, so appending now would let an
                    // election count our old position as final. The follow ends before it
                    // starts; the machine tries again on the next event.
                    let position = self
                        .local
                        .as_ref()
                        .map(|s| s.position())
                        .unwrap_or_default();
                    self.machine.handle_stopped(position, Instant::now());
                    return true;
                }
                Action::Follow { master, epoch } => self.start_following(master, epoch),
                Action::StopFollowing => {
                    if let Some(stop) = &self.following {
                        stop.cancel();
                    }
                }
                Action::Claim {
                    epoch,
                    checks,
                    epoch_version,
                    announce,
                } => {
                    let sent = Instant::now();
                    let ok = match session
                        .claim(epoch, &checks, epoch_version, &announce)
                        .await
                    {
                        Ok(ok) => ok,
                        Err(e) => {
                            tracing::warn!(error = %e, "claim failed");
                            false
                        }
                    };
                    if ok {
                        tracing::info!(epoch, "won the election");
                        self.elections_won.increment(1);
                    } else {
                        self.elections_lost.increment(1);
                    }
                    self.machine.handle_claimed(ok, sent, Instant::now());
                    self.state.set_epoch(self.machine.epoch());
                    if !ok {
                        // The machine waits for a fresh view before it claims again.
                        self.refresh(session).await;
                    }
                }
                Action::Serve { epoch } => self.start_serving(epoch),
                Action::Resign { reason } => {
                    tracing::warn!(%reason, "stepping down");
                    if let Some(stop) = &self.starting {
                        stop.cancel();
                    }
                    if self.serving.is_some() {
                        self.end_term(&reason).await;
                    }
                }
            }
        }
        true
    }

    fn start_following(&mut self, master: crate::ha::machine::Announce, epoch: u64) {
        let Some(store) = self.local.take() else {
            tracing::error!("asked to follow without the journal in hand");
            return;
        };
        self.state.set_role(Role::Slave);
        let stop = self.shutdown.child_token();
        self.following = Some(stop.clone());
        let opts = self.follow.clone();
        let done = self.done.clone();
        self.note_epoch(self.machine.epoch().max(epoch));
        let newest = self.newest_epoch.subscribe();
        tracing::info!(master = %master.name, epoch, "following");
        tokio::spawn(async move {
            let (store, result) = match master.replication.parse() {
                Ok(addr) => replication::follow(&opts, store, addr, newest, stop.clone()).await,
                Err(_) => (
                    store,
                    Err(ReplError::Refused(format!(
                        "unusable replication address {:?}",
                        master.replication
                    ))),
                ),
            };
            if let Err(e) = &result {
                tracing::warn!(master = %master.name, error = %e, "replication stopped");
                if !matches!(e, ReplError::Resync) {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                        _ = stop.cancelled() => {}
                    }
                }
            }
            let _ = done.send(Done::Followed(store));
        });
    }

    fn start_serving(&mut self, epoch: u64) {
        let Some(store) = self.local.take() else {
            tracing::error!("asked to serve without the journal in hand");
            return;
        };
        let stop = self.shutdown.child_token();
        self.starting = Some(stop.clone());
        let (opts, state, ha, lease, done) = (
            self.opts.clone(),
            self.state.clone(),
            self.ha.clone(),
            self.lease.clone(),
            self.done.clone(),
        );
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
            let r = serve(&opts, &state, &ha, epoch, lease, stop, &shutdown).await;
            let _ = done.send(Done::Started(r));
        });
    }

    async fn finished(&mut self, done: Done) {
        let now = Instant::now();
        match done {
            Done::Followed(store) => {
                self.following = None;
                self.state.set_role(Role::Candidate);
                let position = store.position();
                self.local = Some(store);
                self.machine.handle_stopped(position, now);
            }
            Done::Started(Ok(serving)) => {
                self.starting = None;
                if matches!(self.machine.role(), ElectionRole::Master { .. }) {
                    self.serving = Some(serving);
                } else {
                    // Resigned while starting.
                    self.serving = Some(serving);
                    self.end_term("resigned while starting").await;
                }
            }
            Done::Started(Err(e)) => {
                self.starting = None;
                tracing::error!(error = %e, "could not start serving");
                self.reopen_local().await;
            }
        }
    }

    /// Fences and stops the term, then takes the journal back as a candidate.
    async fn end_term(&mut self, reason: &str) {
        if let Some(s) = self.serving.take() {
            s.stop(&self.state, self.opts.shutdown_timeout, Some(reason))
                .await;
        }
        self.reopen_local().await;
    }

    async fn reopen_local(&mut self) {
        self.state.set_role(Role::Candidate);
        loop {
            match open_local(&self.store_cfg, false).await {
                Ok(s) => {
                    let position = s.position();
                    self.local = Some(s);
                    self.machine.handle_stopped(position, Instant::now());
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot reopen the journal; retrying in 1 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    async fn stop_everything(&mut self, done_rx: &mut mpsc::UnboundedReceiver<Done>) {
        if let Some(stop) = &self.following {
            stop.cancel();
        }
        if let Some(stop) = &self.starting {
            stop.cancel();
        }
        if let Some(s) = self.serving.take() {
            s.stop(&self.state, self.opts.shutdown_timeout, None).await;
        }
        while self.following.is_some() || self.starting.is_some() {
            match done_rx.recv().await {
                Some(Done::Followed(store)) => {
                    self.following = None;
                    self.local = Some(store);
                }
                Some(Done::Started(r)) => {
                    self.starting = None;
                    if let Ok(s) = r {
                        s.stop(&self.state, self.opts.shutdown_timeout, None).await;
                    }
                }
                None => break,
            }
        }
        if let Some(store) = self.local.take() {
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
        }
    }
}

/// Becomes master of `epoch`: recovers the journal, begins the epoch, serves followers, waits
/// until `replicas/2` of them hold the epoch's first record, then opens the client listeners.
async fn serve(
    opts: &ServerOptions,
    state: &Arc<MemberState>,
    ha: &ZooKeeperElection,
    epoch: u64,
    lease: Arc<parking_lot::Mutex<Option<Instant>>>,
    stop: CancellationToken,
    shutdown: &CancellationToken,
) -> Result<Serving, ServerError> {
    let broker = open_broker(opts).await?;
    let store = broker
        .store()
        .expect("a replicated member has a journal")
        .clone();
    let needed = ha.replicas / 2;
    let gated = ha.sync.needs_replicas();
    if gated {
        store.journal().gate(ha.quorum_timeout);
    }
    let epoch_start = store.begin_epoch(epoch);
    tracing::info!(
        epoch,
        epoch_start,
        needed,
        "epoch begun; waiting for followers"
    );
    let listener = {
        let mut tries = 0;
        loop {
            match tokio::net::TcpListener::bind(ha.replication).await {
                Ok(l) => break l,
                Err(e) if tries < 20 => {
                    tries += 1;
                    tracing::debug!(error = %e, "replication address busy; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(source) => {
                    store
                        .journal()
                        .fence("the replication address cannot be bound");
                    close_store(&broker).await;
                    return Err(ServerError::Admin {
                        addr: ha.replication,
                        source,
                    });
                }
            }
        }
    };
    let replication = Replication {
        stop: CancellationToken::new(),
        tracker: TaskTracker::new(),
    };
    let master = replication::Master::start(
        listener,
        store.clone(),
        epoch,
        epoch_start,
        needed,
        gated,
        Arc::new(move || lease.lock().is_some_and(|t| Instant::now() < t)),
        LinkOptions {
            token: ha.token.clone(),
            heartbeat: (ha.zookeeper.session_timeout / 4).max(Duration::from_millis(100)),
        },
        ha.peers.clone(),
        replication.stop.clone(),
        &replication.tracker,
    );
    *state.replication.write() = Some(master.clone());
    tokio::select! {
        _ = master.caught_up() => {}
        _ = stop.cancelled() => {
            let why = "stepped down before serving";
            store.journal().fence(why);
            replication.end(state).await;
            close_store(&broker).await;
            return Err(ServerError::Stopped(why.into()));
        }
    }
    tracing::info!(epoch, "followers caught up; opening the client listeners");
    match Term::serve(opts, state, shutdown, broker.clone()).await {
        Ok(term) => Ok(Serving {
            term,
            store,
            replication,
        }),
        Err(e) => {
            replication.end(state).await;
            Err(e)
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
