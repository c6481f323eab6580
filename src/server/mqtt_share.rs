//! MQTT shared subscriptions (`$share/NAME/filter`) as competing consumers across the mesh, the
//! way ActiveMQ's virtual topics work. A share group is a queue, `queue://$share.NAME.F` (F: the
//! filter's levels as segments, `+` and `#` kept), and its subscribers are that queue's
//! consumers. On every member where the queue has demand — a subscriber there, or a network
//! consumer standing for subscribers further on — a feeder copies each message published *on
//! that member* (one that did not arrive over a connector) to a topic the filter matches into
//! the queue. So a message enters a group's queue once, where it was published, and the queue's
//! demand crosses connectors as any queue's does: each message goes to one subscriber of the
//! group, wherever it is in the mesh. The copy keeps the topic it was published to (in the
//! [`SHARE_TOPIC_HEADER`] header), which is what the subscriber is told.
//!
//! What a feeder copies is not journaled before it is in the queue: a member that crashes may
//! lose the messages it was copying at that moment (as a non-durable topic subscriber would).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::broker::{
    Broker, Demand, DemandEvent, Destination, DestinationPattern, Kind, Message, NetworkFilter,
    NetworkSpec, SubscribeSpec, RETAIN_HEADER,
};

use super::mqtt::{filter_to_pattern, TopicError};

/// Names the queues of share groups (`queue://$share.…`).
const SHARE_QUEUE_PREFIX: &str = "$share.";

/// The header that carries the topic a share group's copy was published to.
pub(crate) const SHARE_TOPIC_HEADER: &str = "meshmq.share-topic";

/// How many copies a feeder has in hand at once.
const FEED_PREFETCH: u32 = 1000;

/// A feeder's network filter names this pseudo-group: no message's path holds it, and a
/// message-ttl of 1 passes only messages with an empty path (published here).
const FEEDER_TARGET: &str = "$share";

/// Why a `$share/…` filter cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ShareError {
    #[error("the shared subscription {0:?} needs $share/NAME/FILTER, NAME non-empty and free of /, + and #")]
    Malformed(String),
    #[error(transparent)]
    Filter(#[from] TopicError),
}

/// The queue of share group `$share/NAME/FILTER` (`None` when `filter` is not a shared one).
pub(crate) fn share_queue(filter: &str) -> Option<Result<Destination, ShareError>> {
    let rest = filter.strip_prefix("$share/")?;
    Some((|| {
        let (name, topic_filter) = rest
            .split_once('/')
            .ok_or_else(|| ShareError::Malformed(filter.to_string()))?;
        if name.is_empty() || name.contains(['+', '#']) || topic_filter.is_empty() {
            return Err(ShareError::Malformed(filter.to_string()));
        }
        // Checked as a filter (and its levels validated) first.
        filter_to_pattern(topic_filter)?;
        let segments: Vec<String> = std::iter::once(name)
            .chain(topic_filter.split('/'))
            .map(|level| level.replace('.', "/"))
            .collect();
        Destination::new(
            Kind::Queue,
            &format!("{SHARE_QUEUE_PREFIX}{}", segments.join(".")),
        )
        .map_err(|e| ShareError::Filter(TopicError::Destination(filter.into(), e.to_string())))
    })())
}

/// The topics share-group queue `queue` is fed from (`None` when it is not one).
fn fed_from(queue: &str) -> Option<DestinationPattern> {
    let name = queue
        .strip_prefix("queue://")?
        .strip_prefix(SHARE_QUEUE_PREFIX)?;
    let (_, filter) = name.split_once('.')?;
    let segments: Vec<&str> = filter
        .split('.')
        .map(|s| match s {
            "+" => "*",
            "#" => ">",
            s => s,
        })
        .collect();
    DestinationPattern::parse(&format!("topic://{}", segments.join("."))).ok()
}

/// Keeps one feeder running for every share-group queue with demand on this member, until
/// `stop`.
pub(crate) async fn feed_share_groups(broker: Broker, stop: CancellationToken) {
    let (mut events, snapshot) = broker.demand();
    let mut groups = Groups {
        broker,
        stop,
        demand: HashMap::new(),
        feeders: HashMap::new(),
    };
    groups.resync(snapshot);
    loop {
        let event = tokio::select! {
            _ = groups.stop.cancelled() => break,
            e = events.recv() => e,
        };
        match event {
            Ok(DemandEvent::Added(d)) => groups.added(d),
            Ok(DemandEvent::Removed(id)) => groups.removed(id),
            Err(RecvError::Lagged(_)) => {
                let (rx, snapshot) = groups.broker.demand();
                events = rx;
                groups.resync(snapshot);
            }
            Err(RecvError::Closed) => break,
        }
    }
    for (_, stop) in groups.feeders.drain() {
        stop.cancel();
    }
}

struct Groups {
    broker: Broker,
    stop: CancellationToken,
    /// Demand ids on share-group queues, and their queue.
    demand: HashMap<u64, String>,
    /// A running feeder per queue.
    feeders: HashMap<String, CancellationToken>,
}

impl Groups {
    fn added(&mut self, d: Demand) {
        if fed_from(&d.destination).is_none() {
            return;
        }
        self.demand.insert(d.id, d.destination.clone());
        if !self.feeders.contains_key(&d.destination) {
            let stop = self.stop.child_token();
            self.feeders.insert(d.destination.clone(), stop.clone());
            tokio::spawn(feed(self.broker.clone(), d.destination, stop));
        }
    }

    fn removed(&mut self, id: u64) {
        let Some(queue) = self.demand.remove(&id) else {
            return;
        };
        if !self.demand.values().any(|q| *q == queue) {
            if let Some(stop) = self.feeders.remove(&queue) {
                stop.cancel();
            }
        }
    }

    fn resync(&mut self, snapshot: Vec<Demand>) {
        self.demand.clear();
        let mut wanted = HashSet::new();
        for d in snapshot {
            wanted.insert(d.destination.clone());
            self.added(d);
        }
        self.feeders.retain(|queue, stop| {
            let keep = wanted.contains(queue);
            if !keep {
                stop.cancel();
            }
            keep
        });
    }
}

/// Copies every message published here to the topics `queue` is fed from into `queue`, until
/// `stop`.
async fn feed(broker: Broker, queue: String, stop: CancellationToken) {
    let (Some(pattern), Ok(dest)) = (fed_from(&queue), Destination::parse(&queue)) else {
        return;
    };
    let mut session = match broker.open_session(None) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%queue, error = %e, "a share group's feeder could not start");
            return;
        }
    };
    let spec = SubscribeSpec {
        subscription: 1,
        destination: pattern,
        selector: String::new(),
        prefetch: FEED_PREFETCH,
        priority: 0,
        durable_name: None,
        no_local: false,
    };
    let net = NetworkSpec {
        filter: NetworkFilter {
            target: Arc::from(FEEDER_TARGET),
            message_ttl: 1,
            replay_after_ms: None,
        },
    };
    if let Err(e) = session.subscribe_network(spec, net) {
        tracing::warn!(%queue, error = %e, "a share group's feeder could not subscribe");
        session.close();
        return;
    }
    tracing::debug!(%queue, "share group feeder started");
    let producer_id = Bytes::from(format!("{}-share", session.connection_id()));
    let mut sequence = 0u64;
    let mut batch = VecDeque::new();
    'run: loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = std::future::poll_fn(|cx| session.outbox().poll_ready(cx)) => {}
        }
        session.outbox().drain_into(&mut batch);
        if batch.is_empty() {
            // Woken by a closed outbox: the broker is going away.
            break;
        }
        while let Some(d) = batch.pop_front() {
            let m = &d.message;
            let target = match session.target(&dest) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(%queue, error = %e, "a share group's queue is gone");
                    break 'run;
                }
            };
            if !session.has_room(&target, m.persistent) {
                tokio::select! {
                    _ = stop.cancelled() => break 'run,
                    _ = broker.wait_room(&target, m.persistent) => {}
                }
            }
            sequence += 1;
            let mut headers: Vec<(String, String)> = m
                .headers
                .iter()
                .filter(|(k, _)| k != RETAIN_HEADER && k != SHARE_TOPIC_HEADER)
                .cloned()
                .collect();
            if let Some(topic) = &m.destination {
                headers.push((SHARE_TOPIC_HEADER.to_string(), topic.to_string()));
            }
            let copy = Message {
                body: m.body.clone(),
                headers,
                persistent: m.persistent,
                priority: m.priority,
                expires_at_ms: m.expires_at_ms,
                producer_id: producer_id.clone(),
                sequence,
                reply_to: m.reply_to.clone(),
                correlation_id: m.correlation_id.clone(),
                content_type: m.content_type.clone(),
                timestamp_ms: m.timestamp_ms,
                ..Message::default()
            };
            if let Err(e) = session.publish(&target, copy) {
                tracing::warn!(%queue, error = %e, "a share group's copy was refused");
            }
            let _ = session.ack(1, 0, &[d.tag]);
        }
    }
    tracing::debug!(%queue, "share group feeder stopped");
    session.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_filter_names_its_groups_queue_and_the_queue_its_topics() {
        let q = share_queue("$share/g/sensors/+/temp")
            .expect("shared")
            .expect("valid");
        assert_eq!(q.to_string(), "queue://$share.g.sensors.+.temp");
        assert_eq!(
            fed_from(q.as_str()).expect("a share queue").to_string(),
            "topic://sensors.*.temp"
        );
        let q = share_queue("$share/a.b/x.y/#")
            .expect("shared")
            .expect("valid");
        assert_eq!(q.to_string(), "queue://$share.a/b.x/y.#");
        assert_eq!(
            fed_from(q.as_str()).expect("a share queue").to_string(),
            "topic://x/y.>"
        );
        assert!(share_queue("sensors/#").is_none());
        for bad in [
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "$share/g/a#",
            "$share/g/",
        ] {
            assert!(
                matches!(share_queue(bad), Some(Err(_))),
                "{bad} must be refused"
            );
        }
        assert!(fed_from("queue://orders").is_none());
    }
}
