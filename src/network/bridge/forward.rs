//! The forwarding role of a bridge: for each piece of the peer's demand, a network consumer on
//! the local broker, and the sending of what it receives to the peer.
//!
//! Owns: the network consumers, the forwards in flight and their retries. Must not touch: what
//! the peer forwards here (`import.rs`). Invariant: a forwarded message is acknowledged on the
//! local broker only when the peer accepted it (unless `always_sync_send = false` lets a
//! non-persistent one go on write); a refused one is sent again after a capped backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustc_hash::FxHashMap;
// The runtime's clock, so the heartbeat and retry rules can be tested on paused time.
use tokio::time::Instant;

use crate::broker::{DestinationPattern, Message, NetworkFilter, NetworkSpec, SubscribeSpec};
use crate::selector::Selector;
use crate::wire::{self, proto, MessageRef};

use super::{Bridge, Heard, InFlight, NetSub, REFILL_BELOW};

/// A forward refused for being full is sent again after this long (doubling, capped).
const RETRY_FIRST: Duration = Duration::from_millis(100);

const RETRY_MAX: Duration = Duration::from_secs(2);

const FILL_TO: usize = 256 * 1024;

impl Bridge {
    /// A network consumer for `destination`, standing for the demand `consumer` with `path`.
    pub(super) fn open_sub(
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

    pub(super) fn on_demand_add(&mut self, d: proto::DemandAdd) {
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
    pub(super) fn hold_best_routes(&mut self) {
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

    pub(super) fn on_demand_remove(&mut self, d: proto::DemandRemove) {
        self.routes.remove(&self.cfg.peer, &d.consumer_id);
        self.heard.remove(&d.consumer_id);
        self.release(&d.consumer_id);
        self.metrics.remote_demand(self.routes_from_peer());
    }

    /// Withdraws the demand held for a remote consumer; a network consumer left without
    /// demand drains and closes.
    pub(super) fn release(&mut self, consumer: &str) {
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
    pub(super) fn close_if_drained(&mut self, sub: u64) {
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
    pub(super) fn fill(&mut self) {
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
            if self.draining.is_some() || self.stopping.is_some() {
                // The connector (or the broker) is going: nothing new leaves. Left unacknowledged, the
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
            let path = &d.message.broker_path;
            if path.contains(&self.cfg.peer) || path.len() >= self.cfg.message_ttl as usize {
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

    pub(super) fn on_forward_ack(&mut self, a: proto::ForwardAck) {
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

    pub(super) fn resend_due(&mut self) {
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
