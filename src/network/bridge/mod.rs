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
//! A stopping broker's bridge forwards and takes nothing new, and closes once its forwards in
//! flight are answered and what it took is acknowledged (at most `STOP_GRACE`); forwards it
//! took but never acknowledged stay here flagged redelivered, as the source's copies come back.
//!
//! With `suppress_duplicate_queue_subscriptions`, the forwarding side holds network queue
//! demand for a remote consumer only while this bridge is that consumer's best route among
//! all the broker's bridges (the shared [`Routes`]); it re-evaluates whenever any bridge's
//! routes change, taking up a consumer whose better route went and draining one that a better
//! route took over. Owns: its network consumers, its in-flight forwards, the peer's demand it
//! heard. Must not touch: other bridges' state except through `Routes`.
//!
//! Here: the bridge's state and its one loop (`run_loop`: reading frames, timers, heartbeats,
//! draining). Each role is a file of its own: `export.rs`, `forward.rs`, `import.rs`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxHashMap;
use tokio::sync::broadcast;
// The runtime's clock, so the heartbeat and retry rules can be tested on paused time.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics::BridgeMetrics;
use super::routes::Routes;
use crate::broker::{
    Delivery, DemandEvent, DestinationPattern, Message, MessageBuilder, Session, SyncedQueue,
};
use crate::cluster::Cluster;
use crate::selector::Selector;
use crate::transport::{Due, IoEvent, Liveness, Pump};
use crate::wire::{self, proto, Body, Frame};

mod export;
mod forward;
mod import;
#[cfg(test)]
mod tests;

const REFILL_BELOW: usize = 64 * 1024;

/// How long a bridge of a stopping broker waits for the answers to its forwards in flight and
/// for the journal to take what it imported (see `Bridge::stopping`) before it closes anyway.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Heartbeat intervals of silence after which the link is given up: a dead link goes 2.5
/// intervals after the peer's last byte — inside the 3 promised — while a live peer, which
/// writes at least every 1.25 intervals, has twice that slack.
const SILENT_INTERVALS: f64 = 2.5;

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
    /// Fires when a newer connection of the same connector replaced this one: the peer
    /// dialled again, so it holds this link dead; the bridge ends at once, as on a broken
    /// link (no stop grace: nothing more will come over it).
    replaced: CancellationToken,
    /// Since when and until when it drains, once `drain` fired.
    draining: Option<(Instant, Instant)>,
    /// The broker is stopping (until this deadline): nothing new is forwarded or imported,
    /// and the bridge closes once its forwards in flight are answered and what it imported
    /// is acknowledged — so neither side is left holding a message the other has too, with
    /// one copy flagged redelivered and the other not.
    stopping: Option<Instant>,
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
            replaced: CancellationToken::new(),
            draining: None,
            stopping: None,
        }
    }

    /// Drains instead of running on once `drain.signal` fires.
    pub(crate) fn with_drain(mut self, drain: Drain) -> Bridge {
        self.drain = Some(drain);
        self
    }

    /// Ends at once when `replaced` fires (see the field).
    pub(crate) fn with_replacement(mut self, replaced: CancellationToken) -> Bridge {
        self.replaced = replaced;
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
        if !self.acceptances.is_empty() {
            // Forwards taken but never acknowledged: the source sends them again, flagged.
            self.session.flag_unconfirmed(self.acceptances.confirmed());
        }
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
            if let Some(deadline) = self.stopping {
                let settled = self.inflight.is_empty()
                    && self.acceptances.is_empty()
                    && self.accepted.is_empty();
                if settled || Instant::now() >= deadline {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), self.pump.flush_and_close())
                            .await;
                    return "stopped".into();
                }
            }
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
            let replaced = self.replaced.clone();
            let stop_deadline = self.stopping;
            let grace_over = async {
                match stop_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
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
                            ..load_info(cluster)
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
                _ = stop.cancelled(), if self.stopping.is_none() => {
                    self.stopping = Some(Instant::now() + STOP_GRACE);
                }
                _ = grace_over => {}
                _ = replaced.cancelled() => {
                    return format!("replaced by a newer connection from {}", self.cfg.peer);
                }
            }
        }
    }

    fn send_frame(&mut self, body: Body) {
        wire::encode(&wire::frame(body), &mut self.pump.wbuf);
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
