//! One running member: its listeners, the connection tasks they spawn, the admin HTTP port,
//! periodic broker chores, and graceful shutdown.
//!
//! Owns: the member's tasks and their lifetime. Must not touch: message semantics (the broker
//! decides those) or socket details (transport owns those). Invariants: every listener is
//! bound before any is served, so a member that cannot bind starts nothing; one cancellation
//! token reaches every task; `wait` returns only when every task has ended or the shutdown
//! timeout has passed, so the process exits promptly on SIGTERM.

pub mod admin;
mod conn;
pub(crate) mod native;
mod stomp;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge, Counter, Gauge};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Broker, BrokerError, BrokerSettings};
use crate::config::{Scheme, SyncMode, Topology};
use crate::metrics as m;
use crate::security::{Authenticator, Authorizer, Principal};
use crate::store::{Durability, Store, StoreConfig, StoreError};
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
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Native => "native",
            Protocol::Stomp => "stomp",
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
    /// TLS files (`ssl://`, `stomp+ssl://`, `quic://`).
    pub tls: Option<crate::config::TlsFiles>,
    /// Over QUIC rather than TCP.
    pub quic: bool,
}

/// A bound listener of either transport.
enum Bound {
    Tcp(Listener),
    Quic(QuicListener),
}

impl Bound {
    fn count(&self) -> Arc<ConnectionCount> {
        match self {
            Bound::Tcp(l) => l.count(),
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

/// Everything needed to run one member.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub identity: Identity,
    pub listeners: Vec<ListenerSpec>,
    pub admin: SocketAddr,
    pub broker: BrokerSettings,
    pub conn: ConnSettings,
    pub shutdown_timeout: Duration,
    pub expiry_check_interval: Duration,
    pub max_destinations: usize,
    pub security: crate::config::Security,
    pub stomp: StompLimits,
    /// Connectors of this member's group (`None`: no network).
    pub network: Option<crate::network::NetworkOptions>,
    /// The journal (`None`: everything stays in memory).
    pub store: Option<StoreConfig>,
    pub checkpoint_interval: Duration,
    /// Cut a corrupt journal at the damage instead of refusing to start.
    pub repair: bool,
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
        let policy = &group.broker;
        Ok(ServerOptions {
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
                        Scheme::Stomp | Scheme::StompSsl => Protocol::Stomp,
                        _ => Protocol::Native,
                    },
                    max_connections: l.max_connections as usize,
                    tls: l.tls.clone(),
                    quic: l.url.scheme == Scheme::Quic,
                })
                .collect(),
            admin: m.admin,
            broker: BrokerSettings {
                memory_limit: policy.memory_limit,
                defaults: policy.destination_limits(),
                policies: topo
                    .policies
                    .iter()
                    .map(|p| (p.destination.clone(), p.resolve(policy)))
                    .collect(),
                max_subscriptions_per_connection: policy.max_subscriptions_per_connection as usize,
            },
            conn: ConnSettings {
                heartbeat: policy.heartbeat,
                connect_timeout: policy.connect_timeout,
                max_frame_size: policy.max_frame_size as usize,
            },
            shutdown_timeout: policy.shutdown_timeout,
            expiry_check_interval: policy.expiry_check_interval,
            max_destinations: topo.metrics.max_destinations,
            security: topo.security.clone(),
            network: Some(crate::network::NetworkOptions::from_topology(topo, member)?),
            stomp: StompLimits {
                max_headers: policy.stomp_max_headers as usize,
                max_header_length: policy.stomp_max_header_length as usize,
            },
            store: Some(StoreConfig {
                dir: m.data_dir.join("journal"),
                segment_size: topo.store.segment_size,
                store_limit: topo.store.store_limit,
                durability: match group.sync {
                    SyncMode::LocalMem => Durability::Written,
                    _ => Durability::Synced,
                },
                group_commit_window: topo.store.group_commit_window,
                max_record: policy.max_frame_size as usize + (64 << 10),
                memory_budget: policy.memory_limit / 2,
            }),
            checkpoint_interval: topo.store.checkpoint_interval,
            repair: false,
        })
    }
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
    open: Gauge,
    accepted: Counter,
    bad_frames: Counter,
    received: Counter,
    delivered: Counter,
    blocked: Counter,
}

impl ListenerMetrics {
    fn new(listener: &str, protocol: Protocol) -> ListenerMetrics {
        let l = listener.to_string();
        let p = protocol.as_str();
        ListenerMetrics {
            listener: l.clone(),
            protocol: p,
            open: gauge!(m::CONNECTIONS, "listener" => l.clone(), "protocol" => p),
            accepted: counter!(m::CONNECTIONS_ACCEPTED, "listener" => l.clone(), "protocol" => p),
            bad_frames: counter!(m::BAD_FRAMES, "listener" => l.clone(), "protocol" => p),
            received: counter!(m::MESSAGES_RECEIVED, "listener" => l.clone(), "protocol" => p),
            delivered: counter!(m::MESSAGES_DELIVERED, "listener" => l.clone(), "protocol" => p),
            blocked: counter!(m::PRODUCER_BLOCKS, "listener" => l, "protocol" => p),
        }
    }

    fn connection_opened(&self) {
        self.open.increment(1.0);
        self.accepted.increment(1);
    }

    fn connection_closed(&self) {
        self.open.decrement(1.0);
    }

    fn bad_frame(&self) {
        self.bad_frames.increment(1);
    }

    fn received(&self) {
        self.received.increment(1);
    }

    fn delivered(&self, n: u64) {
        self.delivered.increment(n);
    }

    fn producer_blocked(&self) {
        self.blocked.increment(1);
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
    pub authenticator: Arc<Authenticator>,
    /// `None` when the topology has no ACL entries (everyone logged in may do everything).
    pub authorizer: Option<Arc<Authorizer>>,
    pub stomp: StompLimits,
    /// Bridges from other groups arrive on client listeners.
    pub network: Option<Arc<crate::network::Network>>,
}

impl ConnCtx {
    /// Logs a client in. Password hashing is slow by design, so it runs off the async threads;
    /// a refusal is counted and takes as long whether or not the user exists.
    pub(crate) async fn login(
        &self,
        user: Option<String>,
        password: Option<String>,
    ) -> Result<Principal, String> {
        let authn = self.authenticator.clone();
        let result = tokio::task::spawn_blocking(move || {
            authn.authenticate(user.as_deref(), password.as_deref())
        })
        .await
        .map_err(|e| format!("login failed: {e}"))?;
        result.map_err(|e| {
            self.metrics.auth_failed();
            e.to_string()
        })
    }
}

/// Shared with the admin endpoints.
pub(crate) struct MemberState {
    identity: Arc<Identity>,
    broker: Broker,
    started: Instant,
    listeners: Vec<(ListenerSpec, SocketAddr, Arc<ConnectionCount>)>,
    ready: AtomicBool,
    max_destinations: usize,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
    network: std::sync::OnceLock<Arc<crate::network::Network>>,
}

/// A started member.
pub struct RunningServer {
    /// Bound addresses, in the order of `ServerOptions::listeners`.
    pub listen_addrs: Vec<SocketAddr>,
    pub admin_addr: SocketAddr,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    shutdown_timeout: Duration,
    broker: Broker,
}

impl RunningServer {
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Starts a graceful shutdown (idempotent).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits for every task to end after `shutdown`; gives up after the shutdown timeout.
    /// Then writes a clean checkpoint and closes the journal. Returns false when tasks were
    /// still running at the deadline.
    pub async fn wait(self) -> bool {
        self.shutdown.cancelled().await;
        self.tracker.close();
        let ended = tokio::time::timeout(self.shutdown_timeout, self.tracker.wait())
            .await
            .is_ok();
        if let Some(store) = self.broker.store() {
            if let Err(e) = self.broker.checkpoint(ended).await {
                tracing::warn!(error = %e, "final checkpoint failed; the next start replays the journal");
            }
            let store = store.clone();
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
        }
        ended
    }
}

/// Binds every listener and the admin port, then serves in the background.
pub async fn start(opts: ServerOptions) -> Result<RunningServer, ServerError> {
    let prometheus = m::install(&opts.identity.group, &opts.identity.member)?;
    gauge!(m::MEMORY_LIMIT).set(opts.broker.memory_limit as f64);
    let broker = match &opts.store {
        Some(cfg) => {
            let cfg = cfg.clone();
            let repair = opts.repair;
            let started = Instant::now();
            let (store, recovered) = tokio::task::spawn_blocking(move || Store::open(cfg, repair))
                .await
                .map_err(|e| StoreError::Failed(format!("journal recovery panicked: {e}")))??;
            let messages: usize = recovered.queues.iter().map(|(_, m)| m.len()).sum();
            tracing::info!(
                messages,
                durables = recovered.durables.len(),
                clean = recovered.clean,
                seconds = started.elapsed().as_secs_f64(),
                "journal recovered"
            );
            Broker::with_store(opts.broker.clone(), store, recovered)
        }
        None => Broker::new(opts.broker.clone()),
    };
    let identity = Arc::new(opts.identity.clone());

    let mut bound = Vec::new();
    for spec in &opts.listeners {
        let tls_err = |source| ServerError::Tls {
            listener: spec.url.clone(),
            source,
        };
        let bind_err = |source| TransportError::Bind {
            addr: spec.addr,
            source,
        };
        let (l, addr) = if spec.quic {
            let files = spec.tls.as_ref().ok_or_else(|| {
                tls_err(crate::transport::tls::TlsError::Rejected {
                    path: std::path::PathBuf::from(&spec.url),
                    detail: "a QUIC listener needs tls_cert and tls_key".into(),
                })
            })?;
            let config = crate::security::load_server_config(files).map_err(tls_err)?;
            let l = QuicListener::bind(spec.addr, config, spec.max_connections)?;
            let addr = l.local_addr().map_err(bind_err)?;
            (Bound::Quic(l), addr)
        } else {
            let l = Listener::bind(spec.addr, spec.max_connections).await?;
            let addr = l.local_addr().map_err(bind_err)?;
            (Bound::Tcp(l), addr)
        };
        bound.push((spec.clone(), addr, l));
    }
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
    let state = Arc::new(MemberState {
        identity: identity.clone(),
        broker: broker.clone(),
        started: Instant::now(),
        listeners: bound
            .iter()
            .map(|(spec, addr, l)| (spec.clone(), *addr, l.count()))
            .collect(),
        ready: AtomicBool::new(false),
        max_destinations: opts.max_destinations,
        prometheus,
        network: std::sync::OnceLock::new(),
    });

    let listen_addrs = bound.iter().map(|(_, a, _)| *a).collect();
    let authenticator = Arc::new(Authenticator::new(&opts.security));
    let authorizer =
        (!opts.security.acls.is_empty()).then(|| Arc::new(Authorizer::new(&opts.security)));
    let network = opts.network.clone().map(|n| {
        crate::network::Network::start(
            n,
            broker.clone(),
            authenticator.clone(),
            shutdown.clone(),
            &tracker,
        )
    });
    if let Some(n) = &network {
        let _ = state.network.set(n.clone());
    }
    for (spec, addr, listener) in bound {
        let tls = match spec.tls.as_ref().filter(|_| !spec.quic) {
            Some(files) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
                crate::security::load_server_config(files).map_err(|source| ServerError::Tls {
                    listener: spec.url.clone(),
                    source,
                })?,
            ))),
            None => None,
        };
        let ctx = Arc::new(ConnCtx {
            broker: broker.clone(),
            settings: opts.conn.clone(),
            identity: identity.clone(),
            metrics: ListenerMetrics::new(&spec.url, spec.protocol),
            authenticator: authenticator.clone(),
            authorizer: authorizer.clone(),
            stomp: opts.stomp,
            network: network.clone(),
        });
        tracing::info!(listener = %spec.url, %addr, "listening");
        match listener {
            Bound::Tcp(listener) => tracker.spawn(accept_loop(
                listener,
                spec,
                tls,
                ctx,
                shutdown.clone(),
                tracker.clone(),
            )),
            Bound::Quic(listener) => tracker.spawn(quic_accept_loop(
                listener,
                spec,
                ctx,
                shutdown.clone(),
                tracker.clone(),
            )),
        };
    }
    tracker.spawn(admin::serve(
        admin_listener,
        state.clone(),
        shutdown.clone(),
    ));
    tracker.spawn(chores(
        broker.clone(),
        opts.expiry_check_interval,
        opts.checkpoint_interval,
        shutdown.clone(),
    ));
    state.ready.store(true, Ordering::Release);
    tracing::info!(admin = %admin_addr, member = %opts.identity.member, "member serving");

    Ok(RunningServer {
        listen_addrs,
        admin_addr,
        shutdown,
        tracker,
        shutdown_timeout: opts.shutdown_timeout,
        broker,
    })
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
                    spec.protocol,
                    tls.clone(),
                    ctx.clone(),
                    shutdown.clone(),
                    permit,
                ));
            }
            Ok(Incoming::OverLimit { stream, peer }) => {
                ctx.metrics.refused("max_connections");
                tracing::debug!(%peer, listener = %spec.url, "refused: max_connections");
                let (protocol, tls, max, ctx) = (
                    spec.protocol,
                    tls.clone(),
                    spec.max_connections,
                    ctx.clone(),
                );
                tracker.spawn(async move {
                    let Some(stream) = secure(stream, tls, &ctx).await else {
                        return;
                    };
                    match protocol {
                        Protocol::Native => native::refuse_over_limit(stream, max).await,
                        Protocol::Stomp => stomp::refuse_over_limit(stream, max).await,
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

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    protocol: Protocol,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: Arc<ConnCtx>,
    shutdown: CancellationToken,
    permit: crate::transport::Permit,
) {
    let Some(stream) = secure(stream, tls, &ctx).await else {
        return;
    };
    serve_stream(stream, peer, protocol, ctx, shutdown, permit).await;
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
        };
        let Some(incoming) = incoming else { return };
        let (ctx, shutdown, timeout) =
            (ctx.clone(), shutdown.clone(), ctx.settings.connect_timeout);
        let (protocol, max) = (spec.protocol, spec.max_connections);
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
        let rolled = async {
            match broker.store() {
                Some(store) => store.journal().segment_started().await,
                None => std::future::pending().await,
            }
        };
        let rolled = tokio::select! {
            _ = tick.tick() => false,
            _ = rolled => true,
            _ = shutdown.cancelled() => return,
        };
        if last_sweep.elapsed() >= expiry {
            last_sweep = Instant::now();
            broker.sweep_expired();
            broker.redispatch();
        }
        let Some(store) = broker.store() else {
            continue;
        };
        let j = store.journal();
        gauge!(m::JOURNAL_SEGMENTS).set(j.segment_count() as f64);
        gauge!(m::JOURNAL_DISK_BYTES).set(j.disk_bytes() as f64);
        gauge!(m::JOURNAL_FULL).set(if j.is_full() { 1.0 } else { 0.0 });
        let (syncs, bytes) = j.counters();
        metrics::counter!(m::JOURNAL_SYNCS).absolute(syncs);
        metrics::counter!(m::JOURNAL_BYTES).absolute(bytes);
        let due = rolled
            || last_checkpoint.elapsed() >= checkpoint_every
            || (j.is_full() && last_checkpoint.elapsed() >= Duration::from_secs(1));
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
