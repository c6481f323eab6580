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
use crate::security::Authenticator;
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

/// Whether `presented` is the mesh secret, in time that does not depend on where they differ.
fn secret_matches(secret: &crate::config::Secret, presented: &str) -> bool {
    use subtle::ConstantTimeEq;
    let (a, b) = (secret.expose().as_bytes(), presented.as_bytes());
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// This group's client URIs and load, as a bridge tells its peer (in its handshake and again
/// every second).
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

/// The connectors of one running member.
pub struct Network {
    opts: NetworkOptions,
    broker: Broker,
    authenticator: Arc<Authenticator>,
    routes: Arc<Routes>,
    metrics: HashMap<String, Arc<BridgeMetrics>>,
    /// The live bridge of each connector, by connector name: (bridge number, its stop).
    live: Mutex<HashMap<String, (u64, CancellationToken)>>,
    next_bridge: std::sync::atomic::AtomicU64,
    shutdown: CancellationToken,
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
        authenticator: Arc<Authenticator>,
        cluster: Arc<Cluster>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Arc<Network> {
        let metrics = opts
            .connectors
            .iter()
            .map(|c| {
                (
                    c.bridge.connector.clone(),
                    Arc::new(BridgeMetrics::new(&c.bridge.connector, &c.bridge.peer)),
                )
            })
            .collect();
        let net = Arc::new(Network {
            opts,
            broker,
            authenticator,
            routes: Arc::new(Routes::default()),
            metrics,
            live: Mutex::new(HashMap::new()),
            next_bridge: std::sync::atomic::AtomicU64::new(1),
            shutdown,
            published_demand: Mutex::new(HashSet::new()),
            cluster,
        });
        if net.opts.allow_anonymous_bridges {
            tracing::warn!(
                "allow_anonymous_bridges = true: anyone who reaches a client listener can open a bridge without the mesh secret"
            );
        }
        if net.opts.secret.is_none() && !net.opts.allow_anonymous_bridges {
            for c in net
                .opts
                .connectors
                .iter()
                .filter(|c| c.dial.is_none() && c.username.is_none())
            {
                tracing::warn!(connector = %c.bridge.connector, "no [mesh] secret and no credentials for this connector: its bridges will be refused");
            }
        }
        for plan in net.opts.connectors.iter().filter(|c| c.dial.is_some()) {
            tracker.spawn(net.clone().dial_loop(plan.clone()));
        }
        net
    }

    pub fn status(&self) -> Vec<ConnectorStatus> {
        let mut out: Vec<ConnectorStatus> = self.metrics.values().map(|m| m.status()).collect();
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
        proto::BrokerInfo {
            mesh: self.opts.mesh.clone(),
            group: self.opts.group.to_string(),
            member: self.opts.member.clone(),
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
        let number = self
            .next_bridge
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some((_, old)) = self
            .live
            .lock()
            .insert(plan.bridge.connector.clone(), (number, stop.clone()))
        {
            tracing::info!(connector = %plan.bridge.connector, "a newer bridge replaces the live one");
            old.cancel();
        }
        let session = match self.broker.open_session(None) {
            Ok(s) => s,
            Err(e) => return e.to_string(),
        };
        let metrics = self.metrics[&plan.bridge.connector].clone();
        tracing::info!(connector = %plan.bridge.connector, peer = %plan.bridge.peer, "bridge up");
        self.cluster.peer_up(number, peer);
        let b = bridge::Bridge::new(
            Arc::new(plan.bridge.clone()),
            pump,
            session,
            self.routes.clone(),
            metrics,
            (self.cluster.clone(), number),
        );
        let reason = b.run(&stop).await;
        self.cluster.peer_down(number);
        let mut live = self.live.lock();
        if live
            .get(&plan.bridge.connector)
            .is_some_and(|(n, _)| *n == number)
        {
            live.remove(&plan.bridge.connector);
        }
        reason
    }

    async fn dial_loop(self: Arc<Self>, plan: ConnectorPlan) {
        let dial = plan.dial.clone().expect("dialling plan");
        let metrics = self.metrics[&plan.bridge.connector].clone();
        let mut backoff = Backoff::new(&dial.target.options);
        let mut order: Vec<BrokerUrl> = Vec::new();
        let mut attempt = 0usize;
        loop {
            if self.shutdown.is_cancelled() {
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
                _ = self.shutdown.cancelled() => return,
            };
            match connected {
                Ok((pump, peer)) => {
                    let started = Instant::now();
                    let reason = self.run_bridge(&plan, pump, &peer).await;
                    if self.shutdown.is_cancelled() {
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
                _ = self.shutdown.cancelled() => return,
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
                .secret
                .as_ref()
                .map(|s| s.expose().to_string())
                .unwrap_or_default();
            wire::encode(&wire::frame(Body::BrokerInfo(hello)), &mut pump.wbuf);
            loop {
                match wire::decode(&mut pump.rbuf, plan.bridge.max_frame_size) {
                    Ok(wire::Decoded::Frame(Frame {
                        body: Some(Body::BrokerInfo(info)),
                    })) => {
                        if info.group != plan.bridge.peer.as_ref() || info.mesh != self.opts.mesh {
                            return Err(format!(
                                "{url} is group {} of mesh {}, not group {} of mesh {}",
                                info.group, info.mesh, plan.bridge.peer, self.opts.mesh
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
        if info.mesh != self.opts.mesh {
            return Err((
                "other_mesh",
                format!("mesh {:?} is not this mesh {:?}", info.mesh, self.opts.mesh),
            ));
        }
        // The secret before anything else: a stranger learns nothing about the connectors.
        let secret_ok = match &self.opts.secret {
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
                        info.connector, self.opts.mesh
                    ),
                ));
            }
            Some(_) => true,
            None => false,
        };
        if info.group == self.opts.group.as_ref() {
            return Err((
                "own_group",
                format!(
                    "group {} dialled itself (connector {:?})",
                    info.group, info.connector
                ),
            ));
        }
        let plan = self
            .opts
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
                        info.connector, info.group, self.opts.group
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
                let login = self.authenticator.login(
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
            None if !secret_ok && !self.opts.allow_anonymous_bridges => {
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
