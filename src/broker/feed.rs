//! Queues fed from topics: a queue registered with [`Broker::add_feed`] gets a copy of every
//! message published *on this broker* (not one that arrived over a connector) to a topic its
//! pattern matches — what an MQTT share group's queue needs (`server::mqtt_share`).
//!
//! The copy is made inside the publish, not after it: the topic message and its copies are
//! committed as one transaction, so a journaled copy is in the same journal batch as its
//! publish and the publish's receipt (a PUBACK, a STOMP receipt) waits for the copy to be
//! durable; a crash before the receipt keeps both or neither. A topic with feeds has room only
//! when every queue it feeds has room too, so a full share group holds its producers back (or
//! refuses them, per its `on_full`) rather than losing copies.
//!
//! Owns: the feed registry and the making of copies. Must not touch: the journal (the caller
//! commits the copies), protocols. Invariants: a copy keeps the message's body, properties and
//! expiry, carries the topic it was published to in the feed's header, never the retain flag;
//! each feed numbers its copies under a producer id of its own, so forwarded copies are told
//! apart from their original and from other feeds' copies.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;

use super::{
    now_ms, Broker, Destination, DestinationPattern, Message, NewMessage, Target, RETAIN_HEADER,
};

/// The registry of feeds of one broker.
#[derive(Debug, Default)]
pub(crate) struct Feeds {
    list: RwLock<Vec<Arc<Feed>>>,
    /// `list.len()`, read without the lock on every publish.
    count: AtomicUsize,
    next: AtomicU64,
}

#[derive(Debug)]
struct Feed {
    id: u64,
    /// The topics it copies from.
    pattern: DestinationPattern,
    queue: Destination,
    /// The header that carries the topic a copy was published to.
    topic_header: &'static str,
    producer_id: Bytes,
    sequence: AtomicU64,
}

impl Broker {
    /// Feeds `queue` a copy of every message published here to a topic `pattern` matches, the
    /// topic named in header `topic_header`, until [`Broker::remove_feed`] with the id returned.
    pub fn add_feed(
        &self,
        pattern: DestinationPattern,
        queue: Destination,
        topic_header: &'static str,
    ) -> u64 {
        let feeds = &self.inner.feeds;
        let id = feeds.next.fetch_add(1, Ordering::Relaxed) + 1;
        let feed = Feed {
            id,
            pattern,
            producer_id: Bytes::from(format!("ID-{}-feed-{id}", self.inner.run_id)),
            queue,
            topic_header,
            sequence: AtomicU64::new(0),
        };
        let mut list = feeds.list.write();
        list.push(Arc::new(feed));
        feeds.count.store(list.len(), Ordering::Release);
        id
    }

    /// Stops feed `id` (no-op when it is gone already).
    pub fn remove_feed(&self, id: u64) {
        let feeds = &self.inner.feeds;
        let mut list = feeds.list.write();
        list.retain(|f| f.id != id);
        feeds.count.store(list.len(), Ordering::Release);
    }

    /// The feeds of topic `target` (none for a queue).
    fn feeds_of(&self, target: &Target) -> Vec<Arc<Feed>> {
        let feeds = &self.inner.feeds;
        let Target::Topic(topic) = target else {
            return Vec::new();
        };
        if feeds.count.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        feeds
            .list
            .read()
            .iter()
            .filter(|f| f.pattern.matches(&topic.dest))
            .cloned()
            .collect()
    }

    /// Whether `msg`, stamped for `target`, owes copies to queues ([`Broker::fed_copies`] is
    /// not empty).
    pub(crate) fn feeds(&self, target: &Target, msg: &Message) -> bool {
        msg.broker_path.is_empty() && msg.destination.is_some() && !self.feeds_of(target).is_empty()
    }

    /// The copies `msg`, stamped for `target` and about to be published there, owes the queues
    /// fed from it: none unless it is a topic message published here.
    pub(crate) fn fed_copies(&self, target: &Target, msg: &Message) -> Vec<(Target, NewMessage)> {
        if !msg.broker_path.is_empty() {
            return Vec::new();
        }
        let Some(topic) = msg.destination.as_ref() else {
            return Vec::new();
        };
        self.feeds_of(target)
            .into_iter()
            .map(|feed| {
                let queue = self.queue(&feed.queue, 0);
                let mut headers: Vec<(String, String)> = msg
                    .headers
                    .iter()
                    .filter(|(k, _)| k != RETAIN_HEADER && k != feed.topic_header)
                    .cloned()
                    .collect();
                headers.push((feed.topic_header.to_string(), topic.to_string()));
                let mut copy = Message {
                    destination: Some(queue.dest.clone()),
                    body: msg.body.clone(),
                    headers,
                    persistent: msg.persistent,
                    priority: msg.priority,
                    expires_at_ms: msg.expires_at_ms,
                    producer_id: feed.producer_id.clone(),
                    sequence: feed.sequence.fetch_add(1, Ordering::Relaxed) + 1,
                    reply_to: msg.reply_to.clone(),
                    correlation_id: msg.correlation_id.clone(),
                    content_type: msg.content_type.clone(),
                    timestamp_ms: msg.timestamp_ms,
                    received_ms: if msg.received_ms == 0 {
                        now_ms()
                    } else {
                        msg.received_ms
                    },
                    origin: msg.origin,
                    sequence_checked: true,
                    ..Message::default()
                };
                copy.charge = self
                    .inner
                    .memory
                    .charge(copy.memory_size(), &queue.counters);
                (Target::Queue(queue), NewMessage::from(copy))
            })
            .collect()
    }

    /// Whether every queue fed from topic `target` has memory room (true for a queue, and
    /// for a topic without feeds).
    pub(crate) fn feeds_have_room(&self, target: &Target) -> bool {
        self.feeds_of(target)
            .iter()
            .all(|f| self.memory().has_room(&self.queue(&f.queue, 0).counters))
    }

    /// Resolves once every queue fed from topic `target` has had memory room (at once without
    /// feeds); the caller checks [`Broker::has_room`] again.
    pub(crate) async fn wait_feeds_room(&self, target: &Target) {
        for feed in self.feeds_of(target) {
            let queue = self.queue(&feed.queue, 0);
            self.memory().wait_for_room(&queue.counters).await;
        }
    }
}
