//! Network connectors: bridges between broker groups that forward queue and topic demand, so a
//! message sent anywhere reaches a consumer anywhere — without loss, loops or stuck messages.
//!
//! Owns: one dialler task per connector this group starts, the bridges (dialled and accepted),
//! the routing table of remote demand. Must not touch: client listeners, or message semantics
//! beyond what a network consumer does (the broker dispatches, the journal stores). Invariants:
//! at most one live bridge per connector (a newer connection replaces an older one); a bridge
//! is accepted only from a known group of the same mesh over a connector the topology names, and
//! never from this group itself; a forwarded message leaves its source only when the target
//! accepted it (except, opted into with `always_sync_send = false`, a non-persistent one, which
//! leaves once written to the link); demand never returns to a group on its path and never
//! travels further than `consumer_ttl`; messages never go back to a group on their path (except
//! replays) nor past `message_ttl`; with `suppress_duplicate_queue_subscriptions`, a remote
//! queue consumer heard over several bridges is held only by the bridge of its best route in
//! the shared `Routes`, and another takes it up as soon as that route goes.

pub mod bridge;
mod metrics;
pub mod routes;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Broker;
use crate::client::{Backoff, BrokerUrl, FailoverOptions, FailoverUrl};
use crate::cluster::Cluster;
use crate::config::{ConnectorTransport, Scheme, Topology};
use crate::security::LiveSecurity;
use crate::transport::{self, IoEvent, Pump};
use crate::wire::{self, proto, Body, Frame};

pub use bridge::BridgeConfig;
use metrics::BridgeMetrics;
pub use metrics::ConnectorStatus;
use routes::Routes;

/// A member's listener as another machine dials it, as one URI of a connector's failover
/// list: its address — unless it binds every address (0.0.0.0, ::), which names no machine:
/// then the address it advertises, or, with none, this machine's loopback (where
/// `meshmq certs` also vouches for it).
pub fn member_url(listener: &crate::config::Listener, scheme: Scheme) -> BrokerUrl {
    let addr = listener.url.addr;
    let (host, port) = if !addr.ip().is_unspecified() {
        (addr.ip().to_string(), addr.port())
    } else if let Some(adv) = &listener.advertise {
        (adv.target.host.clone(), adv.target.port)
    } else {
        let loopback = match addr.ip() {
            IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.to_string(),
            IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.to_string(),
        };
        (loopback, addr.port())
    };
    BrokerUrl {
        scheme: scheme.to_string(),
        host,
        port,
        connect_timeout: None,
        local_addr: None,
    }
}

/// How to reach the group a connector dials.
#[derive(Debug, Clone)]
pub struct DialPlan {
    /// The target group's members, or the connector's `uri`: failover over them, in order
    /// (shuffled per round with `randomize`), backing off by the URL's options.
    pub target: FailoverUrl,
    pub local: Option<IpAddr>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub handshake_timeout: Duration,
    /// `Some` for ssl and quic connectors: how to trust the target's certificates.
    pub tls: Option<(ConnectorTransport, Arc<rustls::ClientConfig>)>,
}

/// One connector as this member sees it.
#[derive(Debug, Clone)]
pub struct ConnectorPlan {
    pub bridge: BridgeConfig,
    pub duplex: bool,
    /// `Some` on the dialling side.
    pub dial: Option<DialPlan>,
    /// Accepting side: the user the dialling side must log in as (`None`: no login needed).
    pub username: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NetworkOptions {
    pub mesh: String,
    pub group: Arc<str>,
    pub member: String,
    pub connectors: Vec<ConnectorPlan>,
    /// The mesh secret every bridge must present (`[mesh]` `secret` or `secret_file`).
    pub secret: Option<crate::config::Secret>,
    /// Let in a bridge that proves nothing: no mesh secret is configured and its connector
    /// has no credentials (`[mesh] allow_anonymous_bridges = true`).
    pub allow_anonymous_bridges: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{file}: connector[{connector}].tls_ca: {source}")]
    Tls {
        file: String,
        connector: String,
        source: crate::transport::tls::TlsError,
    },
    #[error("{file}: mesh.secret_file {path}: {source}; make one with `meshmq secret {path}`")]
    SecretFile {
        file: String,
        path: String,
        source: std::io::Error,
    },
    #[error("{file}: mesh.secret_file {path} holds fewer than {min} characters; make a new one with `meshmq secret {path}`")]
    ShortSecret {
        file: String,
        path: String,
        min: usize,
    },
    #[error("{file}: connector[{connector}].password_file {path}: {source}")]
    PasswordFile {
        file: String,
        connector: String,
        path: String,
        source: std::io::Error,
    },
}

impl NetworkOptions {
    /// The connectors of `member`'s group in `topo`.
    pub fn from_topology(topo: &Topology, member: &str) -> Result<NetworkOptions, NetworkError> {
        let (group, m) = topo
            .member(member)
            .expect("the member was checked by the caller");
        let mut connectors = Vec::new();
        for c in &topo.connectors {
            let dialling = c.from == group.name;
            if !dialling && c.to != group.name {
                continue;
            }
            let peer = if dialling { &c.to } else { &c.from };
            let bridge = BridgeConfig {
                connector: c.name.to_string(),
                local: Arc::from(group.name.as_str()),
                peer: Arc::from(peer.as_str()),
                forward: dialling || c.duplex,
                export: !dialling || c.duplex,
                message_ttl: c.message_ttl,
                consumer_ttl: c.consumer_ttl,
                conduit: c.conduit_subscriptions,
                decrease_priority: c.decrease_network_consumer_priority,
                priority_base: c.consumer_priority_base,
                prefetch: c.prefetch,
                dynamically_included: c.dynamically_included.clone(),
                statically_included: c.statically_included.clone(),
                excluded: c.excluded.clone(),
                static_bridge: c.static_bridge,
                bridge_temp: c.bridge_temp_destinations,
                replay: c.replay_when_no_consumers.then_some(c.replay_delay),
                heartbeat: c.heartbeat,
                max_frame_size: group.broker.max_frame_size as usize,
                always_sync_send: c.always_sync_send,
                suppress_duplicate_queues: c.suppress_duplicate_queue_subscriptions,
            };
            let dial = if dialling {
                let scheme = match c.transport {
                    ConnectorTransport::Tcp => Scheme::Tcp,
                    ConnectorTransport::Ssl => Scheme::Ssl,
                    ConnectorTransport::Quic => Scheme::Quic,
                };
                let target = topo
                    .group(c.to.as_str())
                    .expect("validated connector target");
                let target = match &c.uri {
                    Some(uri) => uri.clone(),
                    None => FailoverUrl {
                        uris: target
                            .members
                            .iter()
                            .flat_map(|tm| tm.listeners.iter().filter(|l| l.url.scheme == scheme))
                            .map(|l| member_url(l, scheme))
                            .collect(),
                        options: FailoverOptions {
                            initial_reconnect_delay: c.reconnect_initial_delay,
                            max_reconnect_delay: c.reconnect_max_delay,
                            reconnect_delay_exponent: c.reconnect_multiplier,
                            randomize: false,
                            ..FailoverOptions::default()
                        },
                        nested: Vec::new(),
                    },
                };
                let password = match &c.password_file {
                    Some(path) => Some(
                        std::fs::read_to_string(path)
                            .map_err(|source| NetworkError::PasswordFile {
                                file: topo.file.display().to_string(),
                                connector: c.name.to_string(),
                                path: path.display().to_string(),
                                source,
                            })?
                            .trim_end()
                            .to_string(),
                    ),
                    None => None,
                };
                let tls = match (&c.transport, &c.tls_ca) {
                    (ConnectorTransport::Tcp, _) | (_, None) => None,
                    (t, Some(ca)) => Some((
                        *t,
                        Arc::new(crate::transport::tls::client_config(ca).map_err(|source| {
                            NetworkError::Tls {
                                file: topo.file.display().to_string(),
                                connector: c.name.to_string(),
                                source,
                            }
                        })?),
                    )),
                };
                Some(DialPlan {
                    tls,
                    target,
                    local: m.bind,
                    username: c.username.clone(),
                    password,
                    handshake_timeout: c.handshake_timeout,
                })
            } else {
                None
            };
            connectors.push(ConnectorPlan {
                bridge,
                duplex: c.duplex,
                dial,
                username: if dialling { None } else { c.username.clone() },
            });
        }
        Ok(NetworkOptions {
            mesh: topo.mesh.to_string(),
            group: Arc::from(group.name.as_str()),
            member: m.name.to_string(),
            connectors,
            secret: mesh_secret(topo)?,
            allow_anonymous_bridges: topo.bridges.allow_anonymous,
        })
    }
}

/// The mesh secret of `topo`, read from its `secret_file`.
fn mesh_secret(topo: &Topology) -> Result<Option<crate::config::Secret>, NetworkError> {
    let Some(path) = &topo.bridges.secret_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|source| NetworkError::SecretFile {
        file: topo.file.display().to_string(),
        path: path.display().to_string(),
        source,
    })?;
    let text = text.trim();
    if text.len() < crate::config::MIN_MESH_SECRET {
        return Err(NetworkError::ShortSecret {
            file: topo.file.display().to_string(),
            path: path.display().to_string(),
            min: crate::config::MIN_MESH_SECRET,
        });
    }
    Ok(Some(crate::config::Secret::new(text.to_string())))
}

/// Logs what a member's bridge settings leave open: anonymous bridges allowed, or connectors
/// whose bridges will be refused because neither side can prove anything.
fn warn_unproven(opts: &NetworkOptions) {
    if opts.allow_anonymous_bridges {
        tracing::warn!(
            "allow_anonymous_bridges = true: anyone who reaches a client listener can open a bridge without the mesh secret"
        );
    } else if opts.secret.is_none() {
        for c in opts
            .connectors
            .iter()
            .filter(|c| c.dial.is_none() && c.username.is_none())
        {
            tracing::warn!(connector = %c.bridge.connector, "no [mesh] secret and no credentials for this connector: its bridges will be refused");
        }
    }
}

/// Whether `presented` is the mesh secret, in time that does not depend on where they differ.
fn secret_matches(secret: &crate::config::Secret, presented: &str) -> bool {
    use subtle::ConstantTimeEq;
    let (a, b) = (secret.expose().as_bytes(), presented.as_bytes());
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// How long a removed connector's bridge may drain its in-flight forwards before it is
/// stopped (what is left returns to its queues, as when a link dies).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// This group's client URIs and load, as a bridge tells its peer (in its handshake and again
/// every second, then with the rest of the mesh view it relays).
pub(crate) fn load_info(cluster: &Cluster) -> proto::BrokerInfo {
    let (clients, capacity) = cluster.load();
    proto::BrokerInfo {
        group: cluster.group().to_string(),
        client_uris: cluster.own_uris().to_vec(),
        clients,
        capacity,
        ..proto::BrokerInfo::default()
    }
}

/// A bridge running as its connector's live one.
struct LiveBridge {
    number: u64,
    stop: CancellationToken,
    /// Fired when the connector is removed: the bridge drains, then ends.
    drain: CancellationToken,
}

/// What a connector of a running member is, as `reconfigure` compares it: two plans with the
/// same fingerprint dial the same way and forward the same things.
fn fingerprint(plan: &ConnectorPlan) -> String {
    let dial = plan.dial.as_ref().map(|d| {
        format!(
            "{:?} local={:?} user={:?} password={:08x} handshake={:?} tls={:?}",
            d.target,
            d.local,
            d.username,
            crc32c::crc32c(d.password.as_deref().unwrap_or("").as_bytes()),
            d.handshake_timeout,
            d.tls.as_ref().map(|(t, _)| *t),
        )
    });
    format!(
        "{:?} duplex={} dial={dial:?} user={:?}",
        plan.bridge, plan.duplex, plan.username
    )
}

/// The connectors of one running member. The set can change while it runs
/// ([`Network::reconfigure`]): a new connector dials at once, a removed one drains.
pub struct Network {
    /// This member's identity and its connectors now (only `connectors` and
    /// `allow_anonymous` change).
    opts: parking_lot::RwLock<NetworkOptions>,
    broker: Broker,
    /// Bridge logins are checked against the member's current users.
    security: Arc<LiveSecurity>,
    routes: Arc<Routes>,
    metrics: parking_lot::RwLock<HashMap<String, Arc<BridgeMetrics>>>,
    /// The live bridge of each connector, by connector name.
    live: Mutex<HashMap<String, LiveBridge>>,
    /// The dial loop of each connector this member dials, by name: cancelled on removal.
    dialers: Mutex<HashMap<String, CancellationToken>>,
    next_bridge: std::sync::atomic::AtomicU64,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// How long a removed connector's bridge may drain before it is stopped.
    drain_timeout: Duration,
    /// Destinations last published with remote demand (to zero them when it goes).
    published_demand: Mutex<HashSet<String>>,
    /// Learns which groups are bridged (and their loads) for the clients' mesh view.
    cluster: Arc<Cluster>,
}

impl Network {
    /// Starts a dialler for every connector this group dials.
    pub fn start(
        opts: NetworkOptions,
        broker: Broker,
        security: Arc<LiveSecurity>,
        cluster: Arc<Cluster>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Arc<Network> {
        let net = Arc::new(Network {
            opts: parking_lot::RwLock::new(NetworkOptions {
                connectors: Vec::new(),
                ..opts.clone()
            }),
            broker,
            security,
            routes: Arc::new(Routes::default()),
            metrics: parking_lot::RwLock::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            dialers: Mutex::new(HashMap::new()),
            next_bridge: std::sync::atomic::AtomicU64::new(1),
            shutdown,
            tracker: tracker.clone(),
            drain_timeout: DRAIN_TIMEOUT,
            published_demand: Mutex::new(HashSet::new()),
            cluster,
        });
        warn_unproven(&opts);
        net.reconfigure(opts);
        net
    }

    /// Takes a new set of connectors while running: a connector that is new (or whose plan
    /// changed) gets its metrics and, on the dialling side, a dial loop that starts at once; a
    /// removed (or changed) one stops dialling and its live bridge drains — it stops taking
    /// demand, waits for its in-flight forwards to be acknowledged, and closes — so nothing in
    /// flight is lost. Idempotent: the same options change nothing. Returns the names of the
    /// connectors added and removed.
    pub fn reconfigure(self: &Arc<Self>, new: NetworkOptions) -> (Vec<String>, Vec<String>) {
        let mut opts = self.opts.write();
        let old: HashMap<String, String> = opts
            .connectors
            .iter()
            .map(|c| (c.bridge.connector.clone(), fingerprint(c)))
            .collect();
        let next: HashMap<String, String> = new
            .connectors
            .iter()
            .map(|c| (c.bridge.connector.clone(), fingerprint(c)))
            .collect();
        let mut removed: Vec<String> = old
            .iter()
            .filter(|(name, f)| next.get(*name) != Some(f))
            .map(|(name, _)| name.clone())
            .collect();
        removed.sort();
        let added: Vec<String> = new
            .connectors
            .iter()
            .map(|c| c.bridge.connector.clone())
            .filter(|name| old.get(name) != next.get(name))
            .collect();
        for name in &removed {
            if let Some(dialer) = self.dialers.lock().remove(name) {
                dialer.cancel();
            }
            if let Some(bridge) = self.live.lock().get(name) {
                bridge.drain.cancel();
            }
            self.metrics.write().remove(name);
            tracing::info!(connector = %name, "connector removed from the topology");
        }
        opts.secret = new.secret;
        opts.allow_anonymous_bridges = new.allow_anonymous_bridges;
        opts.connectors = new.connectors;
        for plan in opts
            .connectors
            .iter()
            .filter(|c| added.contains(&c.bridge.connector))
        {
            let name = plan.bridge.connector.clone();
            self.metrics.write().insert(
                name.clone(),
                Arc::new(BridgeMetrics::new(&name, &plan.bridge.peer)),
            );
            if plan.dial.is_some() {
                let stop = self.shutdown.child_token();
                self.dialers.lock().insert(name.clone(), stop.clone());
                self.tracker
                    .spawn(self.clone().dial_loop(plan.clone(), stop));
            }
            if !old.is_empty() || !removed.is_empty() {
                tracing::info!(connector = %name, "connector added to the topology");
            }
        }
        (added, removed)
    }

    pub fn status(&self) -> Vec<ConnectorStatus> {
        let mut out: Vec<ConnectorStatus> =
            self.metrics.read().values().map(|m| m.status()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Publishes remote demand per destination (zero for destinations whose demand went).
    pub fn publish_demand_metrics(&self) {
        let now = self.routes.demand_by_destination();
        let mut published = self.published_demand.lock();
        for gone in published.iter().filter(|d| !now.contains_key(*d)) {
            ::metrics::gauge!(crate::metrics::REMOTE_DEMAND, "destination" => gone.clone())
                .set(0.0);
        }
        for (dest, n) in &now {
            ::metrics::gauge!(crate::metrics::REMOTE_DEMAND, "destination" => dest.clone())
                .set(*n as f64);
        }
        *published = now.into_keys().collect();
    }

    fn broker_info(&self, connector: &str, duplex: bool) -> proto::BrokerInfo {
        let opts = self.opts.read();
        proto::BrokerInfo {
            mesh: opts.mesh.clone(),
            group: opts.group.to_string(),
            member: opts.member.clone(),
            connector: connector.to_string(),
            duplex,
            ..load_info(&self.cluster)
        }
    }

    /// Runs a bridge as the connector's only live one; returns why it ended. `peer` is the
    /// peer's handshake.
    async fn run_bridge(
        &self,
        plan: &ConnectorPlan,
        pump: Pump,
        peer: &proto::BrokerInfo,
    ) -> String {
        let stop = self.shutdown.child_token();
        let drain = CancellationToken::new();
        let number = self
            .next_bridge
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        {
            // Under the plans' lock, so a removal either sees this bridge (and drains it) or
            // happened before (and this bridge is not started).
            let opts = self.opts.read();
            if !opts
                .connectors
                .iter()
                .any(|c| fingerprint(c) == fingerprint(plan))
            {
                return "the connector was removed from the topology".into();
            }
            if let Some(old) = self.live.lock().insert(
                plan.bridge.connector.clone(),
                LiveBridge {
                    number,
                    stop: stop.clone(),
                    drain: drain.clone(),
                },
            ) {
                tracing::info!(connector = %plan.bridge.connector, "a newer bridge replaces the live one");
                old.stop.cancel();
            }
        }
        let session = match self.broker.open_session(None) {
            Ok(s) => s,
            Err(e) => return e.to_string(),
        };
        let metrics = match self.metrics.read().get(&plan.bridge.connector) {
            Some(m) => m.clone(),
            None => Arc::new(BridgeMetrics::new(
                &plan.bridge.connector,
                &plan.bridge.peer,
            )),
        };
        tracing::info!(connector = %plan.bridge.connector, peer = %plan.bridge.peer, "bridge up");
        self.cluster.peer_up(number, peer);
        let b = bridge::Bridge::new(
            Arc::new(plan.bridge.clone()),
            pump,
            session,
            self.routes.clone(),
            metrics,
            (self.cluster.clone(), number),
        )
        .with_drain(bridge::Drain {
            signal: drain,
            closes: plan.dial.is_some(),
            timeout: self.drain_timeout,
        });
        let reason = b.run(&stop).await;
        self.cluster.peer_down(number);
        let mut live = self.live.lock();
        if live
            .get(&plan.bridge.connector)
            .is_some_and(|b| b.number == number)
        {
            live.remove(&plan.bridge.connector);
        }
        reason
    }

    /// Dials the connector's target until `stop` (shutdown, or the connector's removal).
    async fn dial_loop(self: Arc<Self>, plan: ConnectorPlan, stop: CancellationToken) {
        let dial = plan.dial.clone().expect("dialling plan");
        let Some(metrics) = self.metrics.read().get(&plan.bridge.connector).cloned() else {
            return;
        };
        let mut backoff = Backoff::new(&dial.target.options);
        let mut order: Vec<BrokerUrl> = Vec::new();
        let mut attempt = 0usize;
        // A changed connector: its old bridge drains first (its in-flight forwards are
        // acknowledged), then this one dials, so nothing is sent twice.
        let draining_until = Instant::now() + self.drain_timeout;
        while Instant::now() < draining_until
            && self
                .live
                .lock()
                .get(&plan.bridge.connector)
                .is_some_and(|b| b.drain.is_cancelled())
        {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = stop.cancelled() => return,
            }
        }
        loop {
            if stop.is_cancelled() {
                return;
            }
            if order.is_empty() {
                order = dial.target.uris.clone();
                if dial.target.options.randomize {
                    use rand::seq::SliceRandom;
                    order.shuffle(&mut rand::rng());
                }
                order.reverse();
            }
            let Some(url) = order.pop() else {
                return;
            };
            attempt += 1;
            let connected = tokio::select! {
                r = self.connect(&plan, &dial, &url) => r,
                _ = stop.cancelled() => return,
            };
            match connected {
                Ok((pump, peer)) => {
                    let started = Instant::now();
                    let reason = self.run_bridge(&plan, pump, &peer).await;
                    if stop.is_cancelled() {
                        tracing::info!(connector = %plan.bridge.connector, %reason, "bridge ended");
                        return;
                    }
                    tracing::warn!(connector = %plan.bridge.connector, %reason, "bridge down; dialling again");
                    metrics.reconnect();
                    if started.elapsed() > Duration::from_secs(5) {
                        backoff.reset();
                    }
                }
                Err(e) => {
                    if attempt == 1 || attempt % 10 == 0 {
                        tracing::warn!(connector = %plan.bridge.connector, %url, error = %e, attempt, "cannot reach the peer");
                    }
                    metrics.reconnect();
                }
            }
            let jitter = 0.8 + rand::random::<f64>() * 0.4;
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay().mul_f64(jitter)) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Dials one member of the target group (one URI of the connector's URL) and completes
    /// the bridge handshake, within the URI's `connectionTimeout` or `handshake_timeout`.
    async fn connect(
        &self,
        plan: &ConnectorPlan,
        dial: &DialPlan,
        url: &BrokerUrl,
    ) -> Result<(Pump, proto::BrokerInfo), String> {
        let timeout = url.connect_timeout.unwrap_or(dial.handshake_timeout);
        let attempt = async {
            let addr = url.resolve().await.map_err(|e| e.to_string())?;
            let (name, local) = (url.host.as_str(), url.local_addr.or(dial.local));
            let stream: transport::Stream = match &dial.tls {
                Some((ConnectorTransport::Quic, config)) => {
                    transport::quic::dial(addr, name, (**config).clone(), local).await
                }
                Some((_, config)) => transport::tls::dial(addr, name, config.clone(), local).await,
                None => transport::dial(addr, local)
                    .await
                    .map(|s| Box::new(s) as transport::Stream),
            }
            .map_err(|e| e.to_string())?;
            let mut pump = Pump::new(stream);
            let mut hello = self.broker_info(&plan.bridge.connector, plan.duplex);
            hello.username = dial.username.clone().unwrap_or_default();
            hello.password = dial.password.clone().unwrap_or_default();
            hello.token = self
                .opts
                .read()
                .secret
                .as_ref()
                .map(|s| s.expose().to_string())
                .unwrap_or_default();
            let mesh = hello.mesh.clone();
            wire::encode(&wire::frame(Body::BrokerInfo(hello)), &mut pump.wbuf);
            loop {
                match wire::decode(&mut pump.rbuf, plan.bridge.max_frame_size) {
                    Ok(wire::Decoded::Frame(Frame {
                        body: Some(Body::BrokerInfo(info)),
                    })) => {
                        if info.group != plan.bridge.peer.as_ref() || info.mesh != mesh {
                            return Err(format!(
                                "{url} is group {} of mesh {}, not group {} of mesh {mesh}",
                                info.group, info.mesh, plan.bridge.peer
                            ));
                        }
                        return Ok((pump, info));
                    }
                    Ok(wire::Decoded::Frame(Frame {
                        body: Some(Body::Error(e)),
                    })) => return Err(format!("refused: {}", e.message)),
                    Ok(wire::Decoded::Frame(f)) => {
                        return Err(format!(
                            "unexpected {} in the bridge handshake",
                            wire::frame_name(&f)
                        ))
                    }
                    Ok(wire::Decoded::NeedMore(_)) => {}
                    Err(e) => return Err(e.to_string()),
                }
                match pump.next_event(true, 0, |_| std::task::Poll::Pending).await {
                    Ok(IoEvent::Closed) => return Err("closed during the handshake".into()),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(format!("{url}: no handshake within {timeout:?}")))
    }

    /// Takes over a client connection whose first frame was a `BrokerInfo`: checks the peer,
    /// answers, and runs the bridge until it ends. A refusal is logged with the peer's address,
    /// counted by reason (`meshmq_bridges_refused_total`), answered with a `Forbidden` error,
    /// and the connection closed.
    pub async fn accept(&self, mut pump: Pump, info: proto::BrokerInfo, peer: SocketAddr) {
        match self.admit(&info, peer).await {
            Ok(plan) => {
                wire::encode(
                    &wire::frame(Body::BrokerInfo(
                        self.broker_info(&plan.bridge.connector, plan.duplex),
                    )),
                    &mut pump.wbuf,
                );
                let reason = self.run_bridge(&plan, pump, &info).await;
                tracing::info!(connector = %plan.bridge.connector, %reason, "accepted bridge ended");
            }
            Err((reason, message)) => {
                ::metrics::counter!(crate::metrics::BRIDGES_REFUSED, "reason" => reason)
                    .increment(1);
                tracing::warn!(%peer, peer_group = %info.group, connector = %info.connector, reason, %message, "bridge refused");
                wire::encode(
                    &wire::frame(Body::Error(proto::Error {
                        code: proto::ErrorCode::Forbidden as i32,
                        message,
                        receipt: 0,
                        fatal: true,
                    })),
                    &mut pump.wbuf,
                );
                let _ = tokio::time::timeout(Duration::from_secs(1), pump.flush_and_close()).await;
            }
        }
    }

    /// The connector a bridge handshake may run over, or why not: (metric reason, message).
    async fn admit(
        &self,
        info: &proto::BrokerInfo,
        peer: SocketAddr,
    ) -> Result<ConnectorPlan, (&'static str, String)> {
        let opts = self.opts.read().clone();
        if info.mesh != opts.mesh {
            return Err((
                "other_mesh",
                format!("mesh {:?} is not this mesh {:?}", info.mesh, opts.mesh),
            ));
        }
        // The secret before anything else: a stranger learns nothing about the connectors.
        let secret_ok = match &opts.secret {
            Some(secret) if !secret_matches(secret, &info.token) => {
                let problem = if info.token.is_empty() {
                    "presented no mesh secret"
                } else {
                    "presented the wrong mesh secret"
                };
                return Err((
                    "bad_secret",
                    format!(
                        "connector {:?} {problem}: every group of mesh {:?} needs the same [mesh] secret",
                        info.connector, opts.mesh
                    ),
                ));
            }
            Some(_) => true,
            None => false,
        };
        if info.group == opts.group.as_ref() {
            return Err((
                "own_group",
                format!(
                    "group {} dialled itself (connector {:?})",
                    info.group, info.connector
                ),
            ));
        }
        let plan = opts
            .connectors
            .iter()
            .find(|c| {
                c.dial.is_none()
                    && c.bridge.connector == info.connector
                    && *c.bridge.peer == *info.group
            })
            .cloned()
            .ok_or_else(|| {
                (
                    "unknown_connector",
                    format!(
                        "no connector {:?} from group {:?} to {} in the topology",
                        info.connector, info.group, opts.group
                    ),
                )
            })?;
        let bad_credentials = || {
            (
                "bad_credentials",
                format!(
                    "connector {:?}: wrong or missing credentials",
                    info.connector
                ),
            )
        };
        match &plan.username {
            Some(expected) => {
                if *expected != info.username {
                    return Err(bad_credentials());
                }
                let authn = self.security.current().authenticator.clone();
                let login = authn.login(
                    peer.ip(),
                    Some(info.username.clone()),
                    Some(info.password.clone()),
                );
                match login.await {
                    Ok(_) => {}
                    Err(crate::security::LoginError::Gate(g)) => {
                        return Err((g.reason(), format!("connector {:?}: {g}", info.connector)))
                    }
                    Err(_) => return Err(bad_credentials()),
                }
            }
            // Neither a secret nor credentials: an anonymous bridge.
            None if !secret_ok && !opts.allow_anonymous_bridges => {
                return Err((
                    "anonymous",
                    format!(
                        "connector {:?} proved nothing: set the same [mesh] secret_file on every \
                         group (or give the connector credentials); allow_anonymous_bridges = true \
                         lets such bridges in",
                        info.connector
                    ),
                ));
            }
            None => {}
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPOLOGY: &str = r#"
[mesh]
name = "t"

[[group]]
name = "hub"
[[group.member]]
name = "hub-1"
admin = "127.0.0.1:9001"
[[group.member.listener]]
url = "tcp://127.0.0.1:9101"

[[group]]
name = "edge"
election = "file-lock"
shared_dir = "edge"
[[group.member]]
name = "edge-1"
admin = "127.0.0.1:9002"
[[group.member.listener]]
url = "tcp://127.0.0.2:9102"
[[group.member]]
name = "edge-2"
admin = "127.0.0.1:9003"
[[group.member.listener]]
url = "tcp://0.0.0.0:9103"
advertise = "tcp://edge-2.example.com:9203"
[[group.member]]
name = "edge-3"
admin = "127.0.0.1:9004"
[[group.member.listener]]
url = "tcp://0.0.0.0:9104"

[[connector]]
from = "hub"
to = "edge"
"#;

    #[test]
    fn a_connector_dials_each_member_where_another_machine_reaches_it() {
        let topo = crate::config::parse_str(TOPOLOGY, std::path::Path::new("t.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let opts = NetworkOptions::from_topology(&topo, "hub-1").expect("options");
        let dial = opts.connectors[0].dial.as_ref().expect("the hub dials");
        let shown: Vec<String> = dial.target.uris.iter().map(|t| t.to_string()).collect();
        assert_eq!(
            shown,
            [
                "tcp://127.0.0.2:9102",          // a specific address: as it is
                "tcp://edge-2.example.com:9203", // every address: what it advertises
                "tcp://127.0.0.1:9104",          // every address, nothing advertised: loopback
            ]
        );
    }
}
