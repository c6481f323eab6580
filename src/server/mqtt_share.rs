//! MQTT shared subscriptions (`$share/NAME/filter`) as competing consumers across the mesh, the
//! way ActiveMQ's virtual topics work. A share group is a queue, `queue://$share.NAME.F` (F: the
//! filter's levels as segments, `+` and `#` kept), and its subscribers are that queue's
//! consumers (`mqtt/topic.rs` owns the names both ways). On every member where the queue has
//! demand — a subscriber there, or a network consumer standing for subscribers further on —
//! the queue is registered as a broker feed (`broker::feed`): each message published *on that
//! member* (one that did not arrive over a connector) to a topic the filter matches is copied
//! into the queue. So a message enters a group's queue once, where it was published, and the
//! queue's demand crosses connectors as any queue's does: each message goes to one subscriber
//! of the group, wherever it is in the mesh.
//! The copy keeps the topic it was published to (in the [`SHARE_TOPIC_HEADER`] header), which is
//! what the subscriber is told.
//!
//! The copy is made and journaled with the publish itself, in one transaction: a QoS 1/2
//! publish's PUBACK (PUBREC), or a STOMP receipt, goes out only once its copies are durable too.
//!
//! A persistent MQTT session keeps its `$share` subscriptions (the broker's kept sessions hold
//! their names, journaled): while a kept session holds one, its queue is fed on this member
//! whether or not anyone consumes it now — like ActiveMQ's durable virtual-topic consumer
//! queue, what is published while the client is away enters the queue and waits there (where
//! any connected subscriber of the group, here or across a connector, still competes for it),
//! and the client is attached to it again when it returns.

use std::collections::{HashMap, HashSet};

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Demand, DemandEvent, Destination, DestinationPattern};

use super::mqtt::{fed_from, kept_share_filter, share_queue, SHARE_TOPIC_HEADER};

/// The share-group queues the kept sessions' shared subscriptions read.
fn kept_queues(names: impl IntoIterator<Item = String>) -> HashSet<String> {
    names
        .into_iter()
        .filter_map(|name| kept_share_filter(&name))
        .filter_map(|filter| share_queue(&filter)?.ok())
        .map(|q| q.to_string())
        .collect()
}

/// Keeps one feed registered for every share-group queue with demand on this member, or held
/// by a kept session, until `stop`. The feeds of what is there now are registered before this
/// returns (so a term starts them before it accepts a connection); the future keeps them up.
pub(crate) fn feed_share_groups(
    broker: Broker,
    stop: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send {
    let (kept_changes, kept) = broker.kept_shares();
    let (events, snapshot) = broker.demand();
    let mut groups = Groups {
        broker,
        demand: HashMap::new(),
        kept: HashSet::new(),
        feeds: HashMap::new(),
    };
    groups.set_kept(kept_queues(kept));
    groups.resync(snapshot);
    groups.run(kept_changes, events, stop)
}

struct Groups {
    broker: Broker,
    /// Demand ids on share-group queues, and their queue.
    demand: HashMap<u64, String>,
    /// The share-group queues kept sessions hold.
    kept: HashSet<String>,
    /// The broker feed of each share-group queue with demand.
    feeds: HashMap<String, u64>,
}

impl Groups {
    async fn run(
        mut self,
        mut kept_changes: tokio::sync::watch::Receiver<u64>,
        mut events: tokio::sync::broadcast::Receiver<DemandEvent>,
        stop: CancellationToken,
    ) {
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => break,
                changed = kept_changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let (_, kept) = self.broker.kept_shares();
                    self.set_kept(kept_queues(kept));
                    continue;
                }
                e = events.recv() => e,
            };
            match event {
                Ok(DemandEvent::Added(d)) => self.added(d),
                Ok(DemandEvent::Removed(id)) => self.removed(id),
                Err(RecvError::Lagged(_)) => {
                    let (rx, snapshot) = self.broker.demand();
                    events = rx;
                    self.resync(snapshot);
                }
                Err(RecvError::Closed) => break,
            }
        }
        for (queue, id) in self.feeds.drain() {
            self.broker.remove_feed(id);
            tracing::debug!(%queue, "share group feed stopped");
        }
    }

    fn added(&mut self, d: Demand) {
        let Some(pattern) = fed_from(&d.destination) else {
            return;
        };
        let Ok(queue) = Destination::parse(&d.destination) else {
            return;
        };
        self.demand.insert(d.id, d.destination.clone());
        self.start_feed(d.destination, pattern, queue);
    }

    fn start_feed(&mut self, name: String, pattern: DestinationPattern, queue: Destination) {
        if !self.feeds.contains_key(&name) {
            let id = self.broker.add_feed(pattern, queue, SHARE_TOPIC_HEADER);
            tracing::debug!(queue = %name, "share group feed started");
            self.feeds.insert(name, id);
        }
    }

    fn wanted(&self, queue: &str) -> bool {
        self.kept.contains(queue) || self.demand.values().any(|q| q == queue)
    }

    fn removed(&mut self, id: u64) {
        let Some(queue) = self.demand.remove(&id) else {
            return;
        };
        if !self.wanted(&queue) {
            self.stop_feed(&queue);
        }
    }

    /// The kept sessions now hold `kept`: their queues are fed, and a queue no longer held
    /// is fed only while it has demand.
    fn set_kept(&mut self, kept: HashSet<String>) {
        let dropped: Vec<String> = self.kept.difference(&kept).cloned().collect();
        self.kept = kept;
        for name in self.kept.clone() {
            let (Some(pattern), Ok(queue)) = (fed_from(&name), Destination::parse(&name)) else {
                continue;
            };
            self.start_feed(name, pattern, queue);
        }
        for queue in dropped {
            if !self.wanted(&queue) {
                self.stop_feed(&queue);
            }
        }
    }

    fn stop_feed(&mut self, queue: &str) {
        if let Some(id) = self.feeds.remove(queue) {
            self.broker.remove_feed(id);
            tracing::debug!(%queue, "share group feed stopped");
        }
    }

    fn resync(&mut self, snapshot: Vec<Demand>) {
        self.demand.clear();
        let mut wanted = HashSet::new();
        for d in snapshot {
            wanted.insert(d.destination.clone());
            self.added(d);
        }
        let gone: Vec<String> = self
            .feeds
            .keys()
            .filter(|q| !wanted.contains(*q) && !self.kept.contains(*q))
            .cloned()
            .collect();
        for queue in gone {
            self.stop_feed(&queue);
        }
    }
}
