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
//! travels further than `consumer_ttl`; messages never go back to a group on their path nor past
//! `message_ttl`, except replays of queue messages parked where no consumer is left; with
//! `suppress_duplicate_queue_subscriptions`, a remote queue consumer heard over several bridges
//! is held only by the bridge of its best route in the shared `Routes`, and another takes it up
//! as soon as that route goes.

pub mod bridge;
mod metrics;
mod options;
pub mod routes;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Broker;
use crate::client::{Backoff, BrokerUrl};
use crate::cluster::Cluster;
use crate::config::ConnectorTransport;
use crate::security::LiveSecurity;
use crate::transport::{self, IoEvent, Pump};
use crate::wire::{self, proto, Body, Frame};

pub use bridge::BridgeConfig;
use metrics::BridgeMetrics;
pub use metrics::ConnectorStatus;
use routes::Routes;

use options::{fingerprint, warn_unproven};
pub use options::{member_url, ConnectorPlan, DialPlan, NetworkError, NetworkOptions};

/// Whether `presented` is the mesh secret, in time that does not depend on where they differ.
fn secret_matches(secret: &crate::config::Secret, presented: &str) -> bool {
    use subtle::ConstantTimeEq;
    let (a, b) = (secret.expose().as_bytes(), presented.as_bytes());
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// How long a removed connector's bridge may drain its in-flight forwards before it is
/// stopped (what is left returns to its queues, as when a link dies).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a new bridge waits for the one it replaces to end (it ends at once unless its
/// task is starved).
const REPLACED_ENDS_WITHIN: Duration = Duration::from_secs(5);

/// A bridge running as its connector's live one.
struct LiveBridge {
    number: u64,
    stop: CancellationToken,
    /// Fired when the connector is removed: the bridge drains, then ends.
    drain: CancellationToken,
    /// Fired when a newer connection of the connector replaces this one: it ends at once.
    replaced: CancellationToken,
    /// Fired once the bridge has ended and let go of the connector's shared state (its
    /// status, its routes), so that a bridge replacing it starts only after.
    ended: CancellationToken,
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
            ..bridge::load_info(&self.cluster)
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
        let replaced = CancellationToken::new();
        let ended = CancellationToken::new();
        let _ended_on_return = ended.clone().drop_guard();
        let number = self
            .next_bridge
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let older = {
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
            self.live.lock().insert(
                plan.bridge.connector.clone(),
                LiveBridge {
                    number,
                    stop: stop.clone(),
                    drain: drain.clone(),
                    replaced: replaced.clone(),
                    ended: ended.clone(),
                },
            )
        };
        if let Some(old) = older {
            // The peer dialled again, so it holds the old link dead (a half-open connection
            // it lost, or a fast reconnect): end the old bridge now, and let it clear the
            // connector's status and routes before this one sets them, or its late clean-up
            // would mark a live connector down and forget the peer's demand.
            tracing::info!(connector = %plan.bridge.connector, "a newer bridge replaces the live one");
            old.replaced.cancel();
            old.stop.cancel();
            if tokio::time::timeout(REPLACED_ENDS_WITHIN, old.ended.cancelled())
                .await
                .is_err()
            {
                tracing::warn!(connector = %plan.bridge.connector, "the replaced bridge has not ended; starting the new one anyway");
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
        .with_replacement(replaced)
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
