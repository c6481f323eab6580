//! One live bridge between this group and a peer group, over one connection.
//!
//! A bridge side may have three roles. It *exports* this broker's demand (its consumers, and
//! the remote consumers it relays within `consumer_ttl`) to the peer. It *forwards*: for each
//! piece of the peer's demand it holds a network consumer on the local broker, and sends what
//! that consumer receives to the peer. It *imports* what the peer forwards. The dialling side
//! forwards; the accepting side exports and imports; a duplex connector gives both sides every
//! role. A forwarded message is acknowledged on the local broker only when the peer has
//! accepted it (after its journal synced, for a persistent one); if the bridge dies first, the
//! network consumer goes with it and its messages return to their queue as redelivered. The
//! one exception is opt-in: with `always_sync_send = false` a non-persistent message is
//! acknowledged here as soon as it is written to the link, flagged so the peer sends no
//! acknowledgement (the peer still drops a copy it already has), and is lost if the link dies.
//!
//! With `suppress_duplicate_queue_subscriptions`, the forwarding side holds network queue
//! demand for a remote consumer only while this bridge is that consumer's best route among
//! all the broker's bridges (the shared [`Routes`]); it re-evaluates whenever any bridge's
//! routes change, taking up a consumer whose better route went and draining one that a better
//! route took over. Owns: its network consumers, its in-flight forwards, the peer's demand it
//! heard. Must not touch: other bridges' state except through `Routes`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustc_hash::FxHashMap;
use tokio::sync::broadcast;
// The runtime's clock, so the heartbeat and retry rules can be tested on paused time.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::{
    Admission, Delivery, Demand, DemandEvent, Destination, DestinationPattern, Draft, Message,
    MessageBuilder, NetworkFilter, NetworkSpec, Published, Session, SubscribeSpec, SyncedQueue,
};
use crate::cluster::Cluster;
use crate::selector::Selector;
use crate::transport::{Due, IoEvent, Liveness, Pump};
use crate::wire::{self, proto, Body, Frame, MessageRef};

use super::metrics::BridgeMetrics;
use super::routes::Routes;

/// A forward refused for being full is sent again after this long (doubling, capped).
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
const REFILL_BELOW: usize = 64 * 1024;
/// Heartbeat intervals of silence after which the link is given up: a dead link goes 2.5
/// intervals after the peer's last byte — inside the 3 promised — while a live peer, which
/// writes at least every 1.25 intervals, has twice that slack.
const SILENT_INTERVALS: f64 = 2.5;
const FILL_TO: usize = 256 * 1024;

/// What one side of a connector does, resolved from the topology.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    pub connector: String,
    pub local: Arc<str>,
    pub peer: Arc<str>,
    /// Send the peer what its consumers want.
    pub forward: bool,
    /// Tell the peer what our consumers want.
    pub export: bool,
    pub message_ttl: u32,
    pub consumer_ttl: u32,
    pub conduit: bool,
    pub decrease_priority: bool,
    pub priority_base: i32,
    pub prefetch: u32,
    pub dynamically_included: Vec<DestinationPattern>,
    pub statically_included: Vec<DestinationPattern>,
    pub excluded: Vec<DestinationPattern>,
    pub static_bridge: bool,
    pub bridge_temp: bool,
    pub replay: Option<Duration>,
    pub heartbeat: Duration,
    pub max_frame_size: usize,
    /// Wait for the peer's acknowledgement of non-persistent forwards too.
    pub always_sync_send: bool,
    /// Hold network queue demand only where this bridge is the consumer's best route.
    pub suppress_duplicate_queues: bool,
}

impl BridgeConfig {
    /// Whether demand for (or messages on) this destination or pattern crosses the bridge.
    pub fn permits(&self, pattern: &DestinationPattern) -> bool {
        if pattern.kind().is_temp() && !self.bridge_temp {
            return false;
        }
        if self.excluded.iter().any(|e| e.covers(pattern)) {
            return false;
        }
        if self.statically_included.iter().any(|s| s.covers(pattern)) {
            return true;
        }
        self.dynamically_included.is_empty()
            || self.dynamically_included.iter().any(|d| d.covers(pattern))
    }

    /// Network consumers rank below local ones, and lower the further their consumer is.
    fn network_priority(&self, remote: i32, hops: usize) -> i32 {
        if !self.decrease_priority {
            return remote;
        }
        if hops > 1 {
            self.priority_base - (hops as i32 + 1)
        } else {
            self.priority_base
        }
    }
}

/// A remote consumer the peer advertised and this bridge accepted, held or not.
#[derive(Debug, Clone)]
struct Heard {
    destination: String,
    path: Vec<Arc<str>>,
    priority: i32,
    origin: Arc<str>,
    queue: bool,
    /// The remote consumer's selector; `None` when it takes everything.
    selector: Option<Arc<Selector>>,
}

/// A network consumer on the local broker, standing for some of the peer's demand.
#[derive(Debug)]
struct NetSub {
    topic: bool,
    /// Remote consumer id → its path and the local demand registered for it (conduit folds
    /// several into one network consumer).
    demand: HashMap<String, (Vec<Arc<str>>, u64)>,
    /// Remote consumer id → its selector, for those that have one. The network consumer
    /// takes what one of them matches — everything when some consumer in `demand` has none.
    selectors: HashMap<String, Arc<Selector>>,
    /// Static ones live as long as the bridge.
    permanent: bool,
    inflight: usize,
    /// No demand left: unsubscribe once nothing is in flight.
    draining: bool,
}

#[derive(Debug)]
struct InFlight {
    sub: u64,
    tag: u64,
    msg: Arc<Message>,
    redeliveries: u32,
    retry_after: Duration,
}

pub(crate) struct Bridge {
    cfg: Arc<BridgeConfig>,
    pump: Pump,
    session: Session,
    routes: Arc<Routes>,
    metrics: Arc<BridgeMetrics>,
    subs: FxHashMap<u64, NetSub>,
    /// Conduit key (destination) or remote consumer id → network consumer.
    sub_for: HashMap<String, u64>,
    /// Remote consumer id → the network consumer holding its demand.
    demand_sub: HashMap<String, u64>,
    /// Every remote consumer the peer advertised (by its id), held in `demand_sub` or not.
    heard: HashMap<String, Heard>,
    next_sub: u64,
    /// By forward id (sequential numbers: FxHash is enough, and it is on every message).
    inflight: FxHashMap<u64, InFlight>,
    retries: VecDeque<(Instant, u64)>,
    next_forward: u64,
    deliveries: VecDeque<Delivery>,
    /// Local demand advertised to the peer: demand id → the remote consumer id used.
    exported: HashMap<u64, String>,
    /// Builds imported messages (the same rules as a client's sends).
    builder: MessageBuilder,
    /// Acceptances of forwards waiting for the journal (by forward id), in arrival order.
    acceptances: SyncedQueue<u64>,
    /// Forwards accepted during the current read batch, acknowledged together.
    accepted: Vec<u64>,
    liveness: Liveness,
    /// Where the peer's load reports go, and this bridge's number there.
    cluster: (Arc<Cluster>, u64),
    last_load: Instant,
    /// Fires when the connector is removed from the topology: the bridge drains (see
    /// [`Bridge::draining`]).
    drain: Option<Drain>,
    /// Since when and until when it drains, once `drain` fired.
    draining: Option<(Instant, Instant)>,
}

/// How a bridge ends when its connector is removed while it runs.
#[derive(Clone)]
pub(crate) struct Drain {
    pub signal: CancellationToken,
    /// The side that closes the link once nothing is in flight (the dialling side); the other
    /// waits for that close.
    pub closes: bool,
    /// After this long draining, the bridge stops anyway: what is still in flight returns to
    /// its queue as redelivered, as when a link dies.
    pub timeout: Duration,
}

/// How often a bridge tells its peer this group's client load.
const LOAD_EVERY: Duration = Duration::from_secs(1);

impl Bridge {
    pub(crate) fn new(
        cfg: Arc<BridgeConfig>,
        pump: Pump,
        session: Session,
        routes: Arc<Routes>,
        metrics: Arc<BridgeMetrics>,
        cluster: (Arc<Cluster>, u64),
    ) -> Bridge {
        let now = Instant::now();
        Bridge {
            pump,
            session,
            routes,
            metrics,
            subs: FxHashMap::default(),
            sub_for: HashMap::new(),
            demand_sub: HashMap::new(),
            heard: HashMap::new(),
            next_sub: 1,
            inflight: FxHashMap::default(),
            retries: VecDeque::new(),
            next_forward: 1,
            deliveries: VecDeque::new(),
            exported: HashMap::new(),
            builder: MessageBuilder::default(),
            acceptances: SyncedQueue::default(),
            accepted: Vec::new(),
            liveness: Liveness::new(
                now,
                Some(cfg.heartbeat),
                Some(cfg.heartbeat.mul_f64(SILENT_INTERVALS)),
            ),
            cluster,
            last_load: now,
            cfg,
            drain: None,
            draining: None,
        }
    }

    /// Drains instead of running on once `drain.signal` fires.
    pub(crate) fn with_drain(mut self, drain: Drain) -> Bridge {
        self.drain = Some(drain);
        self
    }

    /// The connector was removed: tell the peer our consumers want nothing more over this
    /// link, let go of every network consumer (their undelivered messages stay in their
    /// queues), and from now on take no new demand. Forwards already in flight are still
    /// acknowledged or refused by the peer, and what the peer forwards is still taken.
    fn begin_drain(&mut self, timeout: Duration) {
        let now = Instant::now();
        self.draining = Some((now, now + timeout));
        tracing::info!(connector = %self.cfg.connector, inflight = self.inflight.len(), "connector removed: draining its bridge");
        let mut exported: Vec<u64> = self.exported.keys().copied().collect();
        exported.sort_unstable();
        for id in exported {
            self.export_removed(id);
        }
        let mut heard: Vec<String> = self.heard.keys().cloned().collect();
        heard.sort();
        for consumer in heard {
            self.routes.remove(&self.cfg.peer, &consumer);
            self.heard.remove(&consumer);
            self.release(&consumer);
        }
        let subs: Vec<u64> = self.subs.keys().copied().collect();
        for sub in subs {
            if let Some(ns) = self.subs.get_mut(&sub) {
                ns.permanent = false;
                ns.draining = true;
            }
            self.close_if_drained(sub);
        }
        self.metrics.remote_demand(0);
    }

    /// While draining: `Some(reason)` once the bridge should end — nothing in flight either
    /// way (on the closing side), or the drain timed out.
    fn drained(&self, now: Instant) -> Option<String> {
        let (since, deadline) = self.draining?;
        let idle = self.subs.is_empty()
            && self.inflight.is_empty()
            && self.acceptances.is_empty()
            && self.accepted.is_empty();
        let closes = self.drain.as_ref().is_some_and(|d| d.closes);
        if idle && closes {
            return Some(format!(
                "connector removed: drained in {:?}",
                now.duration_since(since)
            ));
        }
        (now >= deadline).then(|| {
            format!(
                "connector removed: drain timed out with {} forwards in flight (they return to their queues)",
                self.inflight.len()
            )
        })
    }

    /// When the loop must next look at the clock: heartbeats, silence, the load report.
    fn next_timer(&self) -> Instant {
        let load = self.last_load + LOAD_EVERY;
        let now = Instant::now();
        self.liveness
            .next_check(now)
            .map_or(load, |at| at.min(load))
    }

    /// Runs until the link fails, the peer goes silent, or `stop` fires; returns why.
    pub(crate) async fn run(mut self, stop: &CancellationToken) -> String {
        self.metrics.up(true);
        let reason = self.run_loop(stop).await;
        self.metrics.up(false);
        self.metrics.inflight(0);
        // A bridge that is down stands for no remote consumer.
        self.metrics.remote_demand(0);
        self.routes.remove_peer(&self.cfg.peer);
        self.session.close();
        reason
    }

    async fn run_loop(&mut self, stop: &CancellationToken) -> String {
        let mut demand_rx = if self.cfg.export {
            let (rx, snapshot) = self.session.broker().demand();
            for d in snapshot {
                self.export_added(&d);
            }
            Some(rx)
        } else {
            None
        };
        if self.cfg.forward {
            for pattern in self.cfg.statically_included.clone() {
                self.open_sub(pattern.as_str(), vec![self.cfg.peer.clone()], 0, None, true);
            }
        }
        let mut routes_rx =
            (self.cfg.forward && self.cfg.suppress_duplicate_queues).then(|| self.routes.watch());
        let timer = tokio::time::sleep_until(self.next_timer());
        tokio::pin!(timer);
        loop {
            self.fill();
            if let Some(reason) = self.drained(Instant::now()) {
                if self.drain.as_ref().is_some_and(|d| d.closes) {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), self.pump.flush_and_close())
                            .await;
                }
                return reason;
            }
            let drain_signal = match (&self.drain, self.draining) {
                (Some(d), None) => Some((d.signal.clone(), d.timeout)),
                _ => None,
            };
            let drain_fired = async {
                match &drain_signal {
                    Some((signal, _)) => signal.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            let outbox = self.session.outbox().clone();
            let broker = self.session.broker().clone();
            let synced = self.acceptances.synced(&broker);
            let demand = async {
                match demand_rx.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let routes_changed = async {
                match routes_rx.as_mut() {
                    // The sender lives in `Routes`, which this bridge holds: never closed.
                    Some(rx) => {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            let next_retry = self.retries.front().map(|(at, _)| *at);
            let retry = async {
                match next_retry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = self.pump.next_event(true, REFILL_BELOW, |cx| outbox.poll_ready(cx)) => match ev {
                    Ok(IoEvent::Read) => {
                        self.liveness.read(Instant::now());
                        if let Err(e) = self.process_frames() {
                            return e;
                        }
                    }
                    Ok(IoEvent::Drained) => self.liveness.wrote(Instant::now()),
                    Ok(IoEvent::Wake) => {}
                    Ok(IoEvent::Closed) => return "the peer closed the connection".into(),
                    Err(e) => return format!("socket error: {e}"),
                },
                event = demand => match event {
                    Ok(DemandEvent::Added(d)) => self.export_added(&d),
                    Ok(DemandEvent::Removed(id)) => self.export_removed(id),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.resync_exports(),
                    Err(broadcast::error::RecvError::Closed) => return "the broker stopped".into(),
                },
                result = synced => {
                    if let Err(e) = result {
                        return format!("journal failure: {e}");
                    }
                    self.release_acks();
                }
                _ = drain_fired => {
                    if let Some((_, timeout)) = drain_signal {
                        self.begin_drain(timeout);
                    }
                }
                _ = routes_changed => self.hold_best_routes(),
                _ = retry => self.resend_due(),
                _ = &mut timer => {
                    self.pump.shrink_idle();
                    let now = Instant::now();
                    if now >= self.last_load + LOAD_EVERY {
                        self.last_load = now;
                        let (cluster, number) = &self.cluster;
                        let report = proto::BrokerInfo {
                            mesh_groups: cluster.report_for(*number),
                            ..super::load_info(cluster)
                        };
                        self.send_frame(Body::BrokerInfo(report));
                        self.liveness.wrote(now);
                    }
                    match self.liveness.poll(now, self.pump.wbuf.is_empty()) {
                        Some(Due::Dead(silence)) => {
                            return format!("no heartbeat from {} for {silence:?}", self.cfg.peer);
                        }
                        Some(Due::Beat) => self.send_frame(Body::Heartbeat(proto::Heartbeat { receipt: 0 })),
                        None => {}
                    }
                    timer.as_mut().reset(self.next_timer());
                }
                _ = stop.cancelled() => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), self.pump.flush_and_close()).await;
                    return "stopped".into();
                }
            }
        }
    }

    fn send_frame(&mut self, body: Body) {
        wire::encode(&wire::frame(body), &mut self.pump.wbuf);
    }

    // ---- export -----------------------------------------------------------------------------

    /// Advertises a local consumer (or relayed demand) to the peer when the rules allow.
    fn export_added(&mut self, d: &Demand) {
        if self.draining.is_some()
            || self.exported.contains_key(&d.id)
            || d.path.contains(&self.cfg.peer)
        {
            return;
        }
        let mut path: Vec<String> = d.path.iter().map(|g| g.to_string()).collect();
        path.push(self.cfg.local.to_string());
        if path.len() > self.cfg.consumer_ttl as usize {
            return;
        }
        let Ok(pattern) = DestinationPattern::parse(&d.destination) else {
            return;
        };
        if !self.cfg.permits(&pattern) {
            return;
        }
        let consumer_id = d.id.to_string();
        let origin = match &d.origin {
            Some(o) => o.to_string(),
            None => format!("{}/{}", self.cfg.local, d.id),
        };
        self.exported.insert(d.id, consumer_id.clone());
        self.send_frame(Body::DemandAdd(proto::DemandAdd {
            destination: d.destination.clone(),
            broker_path: path,
            consumer_id,
            priority: d.priority,
            origin,
            selector: d.selector.as_deref().unwrap_or("").to_string(),
        }));
    }

    fn export_removed(&mut self, id: u64) {
        if let Some(consumer_id) = self.exported.remove(&id) {
            self.send_frame(Body::DemandRemove(proto::DemandRemove {
                destination: String::new(),
                consumer_id,
            }));
        }
    }

    /// Demand events were lost (too many too fast): compare with the current demand.
    fn resync_exports(&mut self) {
        let (_, snapshot) = self.session.broker().demand();
        let live: std::collections::HashSet<u64> = snapshot.iter().map(|d| d.id).collect();
        let gone: Vec<u64> = self
            .exported
            .keys()
            .filter(|id| !live.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.export_removed(id);
        }
        for d in &snapshot {
            self.export_added(d);
        }
    }

    // ---- forward ----------------------------------------------------------------------------

    /// A network consumer for `destination`, standing for the demand `consumer` with `path`.
    fn open_sub(
        &mut self,
        destination: &str,
        path: Vec<Arc<str>>,
        priority: i32,
        consumer: Option<(&str, Option<Arc<Selector>>)>,
        permanent: bool,
    ) {
        let Ok(pattern) = DestinationPattern::parse(destination) else {
            return;
        };
        let key = match (self.cfg.conduit, &consumer) {
            (false, Some((c, _))) => format!("consumer:{c}"),
            _ => format!("dest:{destination}"),
        };
        if let Some(&sub) = self.sub_for.get(&key) {
            if let Some(ns) = self.subs.get_mut(&sub) {
                ns.draining = false;
                ns.permanent |= permanent;
            }
            if let Some((c, selector)) = consumer {
                self.add_demand(sub, c, path, selector);
            }
            return;
        }
        let topic = !pattern.kind().is_queue();
        let sub = self.next_sub;
        self.next_sub += 1;
        // Created selecting already (as the consumer it first stands for), so that it takes
        // nothing that consumer would not.
        let first_selector = match &consumer {
            Some((_, Some(s))) => s.text().to_string(),
            _ => String::new(),
        };
        let spec = SubscribeSpec {
            subscription: sub,
            destination: pattern,
            selector: first_selector,
            prefetch: self.cfg.prefetch,
            priority: self.cfg.network_priority(priority, path.len()),
            durable_name: None,
            no_local: false,
        };
        let net = NetworkSpec {
            filter: NetworkFilter {
                target: self.cfg.peer.clone(),
                message_ttl: self.cfg.message_ttl,
                replay_after_ms: if topic {
                    None
                } else {
                    self.cfg.replay.map(|d| d.as_millis() as u64)
                },
            },
        };
        if let Err(e) = self.session.subscribe_network(spec, net) {
            tracing::warn!(connector = %self.cfg.connector, destination, error = %e, "cannot create a network consumer");
            return;
        }
        self.subs.insert(
            sub,
            NetSub {
                topic,
                demand: HashMap::new(),
                selectors: HashMap::new(),
                permanent,
                inflight: 0,
                draining: false,
            },
        );
        self.sub_for.insert(key, sub);
        match consumer {
            Some((c, selector)) => self.add_demand(sub, c, path, selector),
            // A static destination stands for the peer as a whole, for as long as the bridge.
            None => {
                let _ = self.session.add_network_demand(sub, path, None, None);
            }
        }
    }

    /// Records that network consumer `sub` stands for remote `consumer` (reached by `path`,
    /// selecting with `selector`): registered as local demand by that path and with that
    /// selector, so it is relayed by that path's rules and still selects further on.
    fn add_demand(
        &mut self,
        sub: u64,
        consumer: &str,
        path: Vec<Arc<str>>,
        selector: Option<Arc<Selector>>,
    ) {
        let origin = self.heard.get(consumer).map(|h| h.origin.clone());
        let text = selector.as_ref().map(|s| Arc::from(s.text()));
        let Ok(id) = self
            .session
            .add_network_demand(sub, path.clone(), origin, text)
        else {
            return;
        };
        let Some(ns) = self.subs.get_mut(&sub) else {
            return;
        };
        if let Some((_, old)) = ns.demand.insert(consumer.to_string(), (path, id)) {
            self.session.remove_network_demand(sub, old);
        }
        match selector {
            Some(s) => ns.selectors.insert(consumer.to_string(), s),
            None => ns.selectors.remove(consumer),
        };
        self.demand_sub.insert(consumer.to_string(), sub);
        self.reweigh(sub);
        self.reselect(sub);
    }

    /// Tells network consumer `sub` what to take: what one of its remote consumers' selectors
    /// matches, or everything when one of them (or the static destination it serves) has none.
    fn reselect(&mut self, sub: u64) {
        let Some(ns) = self.subs.get(&sub) else {
            return;
        };
        let takes_all = ns.permanent || ns.demand.keys().any(|c| !ns.selectors.contains_key(c));
        let selectors = if takes_all {
            Vec::new()
        } else {
            let mut distinct: Vec<Arc<Selector>> = Vec::new();
            for s in ns.selectors.values() {
                if !distinct.iter().any(|d| d.text() == s.text()) {
                    distinct.push(s.clone());
                }
            }
            distinct
        };
        self.session.set_network_selectors(sub, selectors);
    }

    /// A queue's conduit gets as many deliveries in a row as it has nearest consumers, so the
    /// peer's share of the queue follows its consumers (further ones are mostly the same
    /// consumers reached again through another group).
    fn reweigh(&mut self, sub: u64) {
        let Some(ns) = self.subs.get(&sub) else {
            return;
        };
        if ns.topic {
            return;
        }
        let nearest = ns.demand.values().map(|(p, _)| p.len()).min();
        let weight = ns
            .demand
            .values()
            .filter(|(p, _)| Some(p.len()) == nearest)
            .count();
        self.session
            .set_network_weight(sub, weight.clamp(1, u32::MAX as usize) as u32);
    }

    fn on_demand_add(&mut self, d: proto::DemandAdd) {
        if !self.cfg.forward || self.cfg.static_bridge || self.draining.is_some() {
            return;
        }
        let path: Vec<Arc<str>> = d
            .broker_path
            .iter()
            .map(|g| Arc::from(g.as_str()))
            .collect();
        if path.is_empty()
            || path.contains(&self.cfg.local)
            || path.len() > self.cfg.consumer_ttl as usize
        {
            return;
        }
        let Ok(pattern) = DestinationPattern::parse(&d.destination) else {
            return;
        };
        if !self.cfg.permits(&pattern) {
            return;
        }
        // A peer that names no origin: the consumer is told apart from every other.
        let origin: Arc<str> = if d.origin.is_empty() {
            Arc::from(format!("{}:{}", self.cfg.peer, d.consumer_id))
        } else {
            Arc::from(d.origin)
        };
        let queue = pattern.kind().is_queue();
        // A selector this broker cannot read (a newer peer's?) selects nothing away: the
        // network consumer then forwards everything, and the peer selects.
        let selector = if d.selector.trim().is_empty() {
            None
        } else {
            match Selector::parse(&d.selector) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    tracing::warn!(connector = %self.cfg.connector, selector = %d.selector, error = %e, "a remote consumer's selector does not parse here; forwarding it everything");
                    None
                }
            }
        };
        self.routes
            .add(&self.cfg.peer, &d.consumer_id, &origin, pattern, &path);
        let heard = Heard {
            destination: d.destination,
            path,
            priority: d.priority,
            origin,
            queue,
            selector,
        };
        self.heard.insert(d.consumer_id.clone(), heard.clone());
        if self.suppresses(&heard) {
            // Whether this bridge is its best route is decided with every other bridge's
            // routes, when the change just made to them wakes the loop.
            return;
        }
        self.hold(&d.consumer_id, heard);
    }

    /// Whether this bridge holds `heard`'s demand only while it is its best route.
    fn suppresses(&self, heard: &Heard) -> bool {
        heard.queue && self.cfg.suppress_duplicate_queues
    }

    /// Opens (or joins) the network consumer standing for a heard remote consumer.
    fn hold(&mut self, consumer: &str, h: Heard) {
        self.open_sub(
            &h.destination,
            h.path,
            h.priority,
            Some((consumer, h.selector)),
            false,
        );
        self.metrics.remote_demand(self.routes_from_peer());
    }

    /// Holds the demand of each suppressed queue consumer this bridge is the best route to,
    /// and lets go of the others (their network consumer drains as on a removal).
    fn hold_best_routes(&mut self) {
        let best = self.routes.best_queue_routes();
        if self.draining.is_some() {
            return;
        }
        let mut take = Vec::new();
        let mut give_up = Vec::new();
        for (consumer, h) in self.heard.iter().filter(|(_, h)| self.suppresses(h)) {
            let ours = best.get(&h.origin).is_none_or(|via| *via == self.cfg.peer);
            match (ours, self.demand_sub.contains_key(consumer)) {
                (true, false) => take.push((consumer.clone(), h.clone())),
                (false, true) => give_up.push(consumer.clone()),
                _ => {}
            }
        }
        // Sorted so the order of the network consumers' demand does not depend on hashing.
        take.sort_by(|a, b| a.0.cmp(&b.0));
        for consumer in give_up {
            self.release(&consumer);
        }
        for (consumer, h) in take {
            self.hold(&consumer, h);
        }
        self.metrics.remote_demand(self.routes_from_peer());
    }

    fn routes_from_peer(&self) -> usize {
        self.demand_sub.len()
    }

    fn on_demand_remove(&mut self, d: proto::DemandRemove) {
        self.routes.remove(&self.cfg.peer, &d.consumer_id);
        self.heard.remove(&d.consumer_id);
        self.release(&d.consumer_id);
        self.metrics.remote_demand(self.routes_from_peer());
    }

    /// Withdraws the demand held for a remote consumer; a network consumer left without
    /// demand drains and closes.
    fn release(&mut self, consumer: &str) {
        let Some(sub) = self.demand_sub.remove(consumer) else {
            return;
        };
        if let Some(ns) = self.subs.get_mut(&sub) {
            if let Some((_, id)) = ns.demand.remove(consumer) {
                self.session.remove_network_demand(sub, id);
            }
            ns.selectors.remove(consumer);
            if ns.demand.is_empty() && !ns.permanent {
                ns.draining = true;
            }
        }
        self.reweigh(sub);
        if self.subs.get(&sub).is_some_and(|ns| !ns.demand.is_empty()) {
            self.reselect(sub);
        }
        self.close_if_drained(sub);
    }

    /// Ends a network consumer without demand once none of its forwards is in flight, so a
    /// late acknowledgement never meets a message already returned to its queue.
    fn close_if_drained(&mut self, sub: u64) {
        let done = self
            .subs
            .get(&sub)
            .is_some_and(|ns| ns.draining && ns.inflight == 0);
        if done {
            self.subs.remove(&sub);
            self.sub_for.retain(|_, s| *s != sub);
            let _ = self.session.unsubscribe(sub, false);
        }
    }

    /// Moves deliveries of network consumers onto the link.
    fn fill(&mut self) {
        if self.pump.wbuf.len() >= REFILL_BELOW {
            return;
        }
        if self.deliveries.is_empty() {
            self.session.outbox().drain_into(&mut self.deliveries);
        }
        let mut forwarded = 0;
        // Forwards nobody acknowledges, acknowledged here per network consumer.
        let mut written: FxHashMap<u64, Vec<u64>> = FxHashMap::default();
        while self.pump.wbuf.len() < FILL_TO {
            let Some(d) = self.deliveries.pop_front() else {
                break;
            };
            let Some(ns) = self.subs.get(&d.subscription) else {
                continue;
            };
            if self.draining.is_some() {
                // The connector is going: nothing new leaves. Left unacknowledged, the
                // delivery returns to its queue when its network consumer closes (once the
                // forwards already sent are answered), and the consumer's credit runs out
                // meanwhile, so the broker stops dispatching to it.
                continue;
            }
            let topic = ns.topic;
            let targets: Vec<Arc<str>> = if topic {
                let dest = d.message.dest();
                let t = self
                    .routes
                    .targets(dest, &self.cfg.peer, d.message.targets.as_deref());
                if t.is_empty() {
                    // Every group that wants it is reached another way.
                    let _ = self.session.ack(d.subscription, 0, &[d.tag]);
                    continue;
                }
                t
            } else {
                Vec::new()
            };
            let forward_id = self.next_forward;
            self.next_forward += 1;
            if d.message.broker_path.contains(&self.cfg.peer) {
                self.metrics.replayed();
            }
            let unacknowledged = !self.cfg.always_sync_send && !d.message.persistent;
            encode_forward(
                &self.cfg.local,
                forward_id,
                &d.message,
                d.redelivery_count,
                &targets,
                unacknowledged,
                &mut self.pump.wbuf,
            );
            forwarded += 1;
            if unacknowledged {
                written.entry(d.subscription).or_default().push(d.tag);
                continue;
            }
            if let Some(ns) = self.subs.get_mut(&d.subscription) {
                ns.inflight += 1;
            }
            self.inflight.insert(
                forward_id,
                InFlight {
                    sub: d.subscription,
                    tag: d.tag,
                    msg: d.message,
                    redeliveries: d.redelivery_count,
                    retry_after: RETRY_FIRST,
                },
            );
        }
        for (sub, tags) in written {
            let _ = self.session.ack(sub, 0, &tags);
            self.close_if_drained(sub);
        }
        self.metrics.forwarded(forwarded);
        self.metrics.inflight(self.inflight.len());
    }

    fn on_forward_ack(&mut self, a: proto::ForwardAck) {
        if a.accepted {
            // Acknowledge on the local broker in one call per network consumer.
            let mut by_sub: FxHashMap<u64, Vec<u64>> = FxHashMap::default();
            let mut acked = 0;
            for id in std::iter::once(a.forward_id).chain(a.more.iter().copied()) {
                if let Some(f) = self.inflight.remove(&id) {
                    acked += 1;
                    by_sub.entry(f.sub).or_default().push(f.tag);
                }
            }
            self.metrics.acked(acked);
            for (sub, tags) in by_sub {
                let _ = self.session.ack(sub, 0, &tags);
                if let Some(ns) = self.subs.get_mut(&sub) {
                    ns.inflight -= tags.len();
                }
                self.close_if_drained(sub);
            }
            self.metrics.inflight(self.inflight.len());
            return;
        }
        let Some(f) = self.inflight.remove(&a.forward_id) else {
            return;
        };
        if a.retry {
            // The peer is full for that destination: keep it in flight and try again later,
            // without holding up the bridge's other destinations.
            let at = Instant::now() + f.retry_after;
            self.retries.push_back((at, a.forward_id));
            self.inflight.insert(a.forward_id, f);
            return;
        }
        tracing::warn!(connector = %self.cfg.connector, error = %a.error, "the peer refused a forwarded message; it is redelivered here");
        let _ = self.session.nack(f.sub, &[f.tag]);
        if let Some(ns) = self.subs.get_mut(&f.sub) {
            ns.inflight -= 1;
        }
        self.close_if_drained(f.sub);
        self.metrics.inflight(self.inflight.len());
    }

    fn resend_due(&mut self) {
        let now = Instant::now();
        while self.retries.front().is_some_and(|(at, _)| *at <= now) {
            let Some((_, id)) = self.retries.pop_front() else {
                break;
            };
            let Some(f) = self.inflight.get_mut(&id) else {
                continue;
            };
            f.retry_after = (f.retry_after * 2).min(RETRY_MAX);
            let targets = if f.msg.dest().kind().is_queue() {
                Vec::new()
            } else {
                self.routes
                    .targets(f.msg.dest(), &self.cfg.peer, f.msg.targets.as_deref())
            };
            let (msg, redeliveries) = (f.msg.clone(), f.redeliveries);
            encode_forward(
                &self.cfg.local,
                id,
                &msg,
                redeliveries,
                &targets,
                false,
                &mut self.pump.wbuf,
            );
        }
    }

    // ---- import -----------------------------------------------------------------------------

    fn on_forward(&mut self, f: proto::Forward) {
        let id = f.forward_id;
        let unacknowledged = f.unacknowledged;
        let refuse = |this: &mut Bridge, error: String, retry: bool| {
            if unacknowledged {
                // The sender let it go when it wrote it: it is lost, as its connector allows.
                tracing::debug!(connector = %this.cfg.connector, %error, "an unacknowledged forward is dropped");
                return;
            }
            this.send_frame(Body::ForwardAck(proto::ForwardAck {
                forward_id: id,
                accepted: false,
                error,
                retry,
                more: Vec::new(),
            }));
        };
        let Some(send) = f.message else {
            return refuse(self, "a forward without a message".into(), false);
        };
        let destination = match Destination::parse(&send.destination) {
            Ok(d) => d,
            Err(e) => return refuse(self, e.to_string(), false),
        };
        let target = match self.session.target(&destination) {
            Ok(t) => t,
            Err(e) => return refuse(self, e.to_string(), false),
        };
        let mut draft = Draft::from(send);
        draft.broker_path = f.broker_path.into_iter().map(Arc::from).collect();
        draft.targets =
            (!f.targets.is_empty()).then(|| f.targets.into_iter().map(Arc::from).collect());
        draft.redeliveries = f.redelivery_count;
        let msg = match self.builder.build(draft) {
            Ok(m) => m,
            Err(e) => return refuse(self, e.to_string(), false),
        };
        // Full, whatever the destination's policy: a bridge never waits (its link carries
        // other destinations too) and never drops; the sender tries again later.
        if !matches!(self.session.admit(&target, msg.persistent), Admission::Now) {
            self.metrics.refused_full();
            return refuse(self, format!("{} is full here", target.destination()), true);
        }
        let topic = !target.destination().kind().is_queue();
        if !self
            .session
            .broker()
            .first_forward(&msg, topic, &self.cfg.local)
        {
            self.metrics.duplicate();
            if !unacknowledged {
                self.accept(id, 0);
            }
            return;
        }
        match self.session.publish_forwarded(&target, msg) {
            Ok(_) if unacknowledged => {}
            Ok(Published::Pending(index)) => self.accept(id, index),
            Ok(_) => self.accept(id, 0),
            Err(e) => refuse(self, e.to_string(), false),
        }
    }

    /// Acknowledges a forward now, or once the journal has synced `index`.
    fn accept(&mut self, forward_id: u64, index: u64) {
        let broker = self.session.broker();
        if let Some(now) = self.acceptances.push(broker, index, forward_id) {
            self.accepted.push(now);
        }
    }

    fn release_acks(&mut self) {
        let broker = self.session.broker().clone();
        self.accepted.extend(self.acceptances.release(&broker));
        self.flush_accepted();
    }

    /// Sends the acceptances gathered since the last flush as one frame.
    fn flush_accepted(&mut self) {
        let Some((&first, rest)) = self.accepted.split_first() else {
            return;
        };
        let frame = Body::ForwardAck(proto::ForwardAck {
            forward_id: first,
            accepted: true,
            error: String::new(),
            retry: false,
            more: rest.to_vec(),
        });
        self.accepted.clear();
        self.send_frame(frame);
    }

    fn process_frames(&mut self) -> Result<(), String> {
        loop {
            match wire::decode(&mut self.pump.rbuf, self.cfg.max_frame_size) {
                Ok(wire::Decoded::Frame(f)) => match f.body {
                    Some(Body::DemandAdd(d)) => self.on_demand_add(d),
                    Some(Body::DemandRemove(d)) => self.on_demand_remove(d),
                    Some(Body::Forward(fw)) => self.on_forward(fw),
                    Some(Body::ForwardAck(a)) => self.on_forward_ack(a),
                    Some(Body::Heartbeat(_)) => {}
                    Some(Body::BrokerInfo(info)) => {
                        if info.group == *self.cfg.peer {
                            self.cluster.0.peer_load(self.cluster.1, &info);
                        }
                    }
                    Some(Body::Error(e)) => {
                        return Err(format!("the peer reported: {}", e.message))
                    }
                    other => {
                        return Err(format!(
                            "unexpected {} on a bridge",
                            wire::frame_name(&Frame { body: other })
                        ))
                    }
                },
                Ok(wire::Decoded::NeedMore(_)) => {
                    self.flush_accepted();
                    return Ok(());
                }
                // A frame that does not decode tears this bridge down; what it carried is
                // redelivered from the source when the peer's network consumer closes.
                Err(e) => return Err(format!("bad frame from the peer: {e}")),
            }
        }
    }
}

fn encode_forward(
    local: &str,
    forward_id: u64,
    m: &Message,
    redeliveries: u32,
    targets: &[Arc<str>],
    unacknowledged: bool,
    out: &mut BytesMut,
) {
    let mut path: Vec<&str> = m.broker_path.iter().map(|g| &**g).collect();
    path.push(local);
    let targets: Vec<&str> = targets.iter().map(|g| &**g).collect();
    wire::encode_forward(
        forward_id,
        &MessageRef::from(m),
        &path,
        redeliveries,
        &targets,
        unacknowledged,
        out,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{Broker, BrokerSettings};
    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const HEARTBEAT: Duration = Duration::from_secs(1);

    fn config() -> BridgeConfig {
        BridgeConfig {
            connector: "hub-edge".into(),
            local: Arc::from("hub"),
            peer: Arc::from("edge"),
            forward: true,
            export: true,
            message_ttl: 1,
            consumer_ttl: 1,
            conduit: true,
            decrease_priority: true,
            priority_base: -5,
            prefetch: 1000,
            dynamically_included: Vec::new(),
            statically_included: Vec::new(),
            excluded: Vec::new(),
            static_bridge: false,
            bridge_temp: true,
            replay: None,
            heartbeat: HEARTBEAT,
            max_frame_size: 1 << 20,
            always_sync_send: true,
            suppress_duplicate_queues: false,
        }
    }

    /// A bridge over one end of an in-memory link; the test plays the peer on the other.
    fn bridge(stream: DuplexStream) -> Bridge {
        let broker = Broker::new(BrokerSettings::default());
        Bridge::new(
            Arc::new(config()),
            Pump::new(Box::new(stream)),
            broker.open_session(None).expect("session"),
            Arc::new(Routes::default()),
            Arc::new(BridgeMetrics::new("hub-edge", "edge")),
            (
                crate::cluster::Cluster::new(crate::cluster::ClusterOptions::default()),
                0,
            ),
        )
    }

    fn heartbeat() -> BytesMut {
        let mut b = BytesMut::new();
        wire::encode(
            &wire::frame(Body::Heartbeat(proto::Heartbeat { receipt: 0 })),
            &mut b,
        );
        b
    }

    /// Reads (and drops) what the bridge writes, so it is never blocked on a full link.
    fn drain(mut r: tokio::io::ReadHalf<DuplexStream>) {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while matches!(r.read(&mut buf).await, Ok(n) if n > 0) {}
        });
    }

    // Time is the runtime's paused clock: it moves only when every task waits, so these
    // check the bridge's rules, not this machine's speed.

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_given_up_within_three_heartbeat_intervals() {
        // The peer's last byte falls at every phase of the bridge's checks.
        for k in 0..8u32 {
            let (ours, theirs) = tokio::io::duplex(1 << 16);
            let (r, mut w) = tokio::io::split(theirs);
            drain(r);
            let started = tokio::time::Instant::now();
            let run = tokio::spawn(async move {
                let stop = CancellationToken::new();
                let reason = bridge(ours).run(&stop).await;
                (reason, tokio::time::Instant::now())
            });
            for _ in 0..5 {
                tokio::time::sleep(HEARTBEAT).await;
                w.write_all(&heartbeat()).await.expect("write");
            }
            tokio::time::sleep(HEARTBEAT * k / 8).await;
            w.write_all(&heartbeat()).await.expect("write");
            let last_byte = tokio::time::Instant::now();
            // The socket stays open: only silence can end the bridge.
            let (reason, ended) = run.await.expect("bridge task");
            assert!(reason.contains("no heartbeat from edge"), "{reason}");
            assert!(
                ended - last_byte <= HEARTBEAT * 3,
                "phase {k}: given up {:?} after the last byte",
                ended - last_byte
            );
            assert!(ended - started > HEARTBEAT * 5, "not before the silence");
            drop(w);
        }
    }

    fn forward_frame(forward_id: u64, sequence: u64, unacknowledged: bool) -> BytesMut {
        let mut b = BytesMut::new();
        wire::encode(
            &wire::frame(Body::Forward(proto::Forward {
                forward_id,
                message: Some(proto::Send {
                    destination: "queue://q".into(),
                    body: Bytes::from_static(b"tick"),
                    producer_id: Bytes::from_static(b"edge-producer"),
                    sequence,
                    ..proto::Send::default()
                }),
                broker_path: vec!["edge".into()],
                redelivery_count: 0,
                targets: Vec::new(),
                unacknowledged,
            })),
            &mut b,
        );
        b
    }

    #[tokio::test]
    async fn an_unacknowledged_forward_is_taken_once_and_never_answered() {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let (mut r, mut w) = tokio::io::split(theirs);
        let b = bridge(ours);
        let broker = b.session.broker().clone();
        let stop = CancellationToken::new();
        let run = {
            let stop = stop.clone();
            tokio::spawn(async move { b.run(&stop).await })
        };
        w.write_all(&forward_frame(1, 7, true))
            .await
            .expect("write");
        // The same message again (same producer and sequence): a copy to drop, unanswered too.
        w.write_all(&forward_frame(2, 7, true))
            .await
            .expect("write");
        // A synchronous one after them: its answer shows the two before were handled.
        w.write_all(&forward_frame(3, 8, false))
            .await
            .expect("write");
        let mut acked = Vec::new();
        let mut buf = BytesMut::new();
        while !acked.contains(&3) {
            match wire::decode(&mut buf, 1 << 20).expect("the bridge writes good frames") {
                wire::Decoded::Frame(Frame {
                    body: Some(Body::ForwardAck(a)),
                }) => {
                    assert!(a.accepted, "{a:?}");
                    acked.push(a.forward_id);
                    acked.extend(a.more);
                }
                wire::Decoded::Frame(_) => {}
                wire::Decoded::NeedMore(_) => {
                    let mut chunk = vec![0u8; 4096];
                    let n = r.read(&mut chunk).await.expect("read");
                    assert!(n > 0, "the bridge closed the link");
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
        assert_eq!(acked, [3], "only the synchronous forward is answered");
        let q = broker
            .destination_stats()
            .into_iter()
            .find(|d| d.destination == "queue://q")
            .expect("the queue exists");
        assert_eq!(q.enqueued, 2, "sequence 7 once, sequence 8 once: {q:?}");
        stop.cancel();
        assert_eq!(run.await.expect("bridge task"), "stopped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_heartbeating_at_its_slowest_keeps_the_link_and_hears_one_in_time() {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let (mut r, mut w) = tokio::io::split(theirs);
        let stop = CancellationToken::new();
        let run = {
            let stop = stop.clone();
            tokio::spawn(async move { bridge(ours).run(&stop).await })
        };
        // What the bridge writes, and when: with no traffic, only heartbeats.
        let heard = tokio::spawn(async move {
            let mut at = Vec::new();
            let mut buf = vec![0u8; 4096];
            while matches!(r.read(&mut buf).await, Ok(n) if n > 0) {
                at.push(tokio::time::Instant::now());
            }
            at
        });
        let started = tokio::time::Instant::now();
        // The slowest a live bridge heartbeats: 1.25 intervals apart.
        for _ in 0..16 {
            tokio::time::sleep(HEARTBEAT * 5 / 4).await;
            w.write_all(&heartbeat()).await.expect("write");
        }
        assert!(!run.is_finished(), "the link was kept");
        stop.cancel();
        assert_eq!(run.await.expect("bridge task"), "stopped");
        drop(w);
        let mut at = heard.await.expect("reader");
        at.insert(0, started);
        let longest = at.windows(2).map(|p| p[1] - p[0]).max().expect("heard");
        assert!(at.len() > 10, "{} writes", at.len());
        assert!(
            longest <= HEARTBEAT * 5 / 4,
            "the bridge was silent for {longest:?}"
        );
    }
}
