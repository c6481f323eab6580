//! The broker core: destinations, subscriptions, dispatch, acknowledgements, redelivery,
//! dead-lettering, expiry, temporary destinations, durable subscriptions and producer flow
//! control.
//!
//! Owns: every queue and topic of one broker and the messages in them, and the only view of the
//! journal the rest of meshmq gets (the durability facade: room, commits, a [`SyncedQueue`] to
//! hold replies until their work is synced). Must not touch: sockets, protocol state,
//! configuration files — a connection drives it through a [`Session`], hands it messages built
//! by the one [`MessageBuilder`] (`wire.rs` converts the native wire's `Send`; `wire` is a leaf,
//! so that edge makes no cycle), and receives deliveries from the session's [`Outbox`].
//! Everything here is synchronous except waiting for room and for commits; it has no thread of
//! its own: journaled messages are made visible once synced by the journal's committer
//! (`persist.rs`), on the thread where the commit happens. Invariants: a queue message leaves the broker only when a consumer acknowledges
//! it (or it expires or is dead-lettered); an unacknowledged delivery whose consumer goes away
//! returns to its queue with a higher redelivery count; an outbox never holds more deliveries
//! than its subscriptions' prefetch; message memory is charged while any reference to the
//! message lives and released when the last one drops.
//!
//! Here: the [`Broker`] handle, its destinations and [`Target`]s, and the work done after a
//! destination's lock is released. Beside it: `session.rs` (a connection's operations),
//! `subscription.rs` (subscribing, durable subscriptions), `kept_sessions.rs` (when a client's
//! kept session expires), `demand.rs` (who consumes what, for
//! the network), `forwards.rs` (forwarded ids already taken), `settings.rs`, `error.rs`; the
//! destinations themselves in `queue.rs` and `topic.rs`; the journal in `persist.rs` and
//! `durability.rs`; memory accounting in `pool.rs` (the broker-wide budget) and `memory.rs`
//! (what one destination may hold, and the charge a message carries).

mod claims;
mod demand;
mod durability;
mod error;
mod feed;
mod forwards;
mod inflight;
mod kept_sessions;
mod memory;
mod message;
mod outbox;
mod persist;
mod pool;
mod queue;
mod session;
mod settings;
mod stats;
mod subscription;
mod topic;
mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};

pub use crate::config::{DestinationLimits, OnFull};
pub use crate::destination::{Destination, DestinationError, DestinationPattern, Kind};
pub use crate::metrics::DestinationStats;
pub use demand::{Demand, DemandEvent, NetworkSpec};
pub use durability::{CommitLog, JournalStats, SyncedQueue};
pub use error::BrokerError;
pub use kept_sessions::NEVER_EXPIRES;
pub use message::{
    Delivery, Draft, Message, MessageBuilder, NewMessage, COPY_BODY_BELOW, DEFAULT_PRIORITY,
    MAX_PRIORITY, RETAIN_HEADER,
};
pub(crate) use outbox::defer_wakes;
pub use outbox::Outbox;
pub use pool::{MemoryPool, PendingCharge};
pub use queue::{AckOutcome, DeadReason, NetworkFilter};
pub use session::Session;
pub use settings::BrokerSettings;
pub use stats::DestinationCounters;
pub use subscription::SubscribeSpec;

use crate::selector::{Selector, SelectorError};
use crate::store::proto::{record::Kind as RecordKind, Record};
use demand::DEMAND_EVENTS;
use forwards::{RecentIds, RECENT_FORWARD_CHUNKS};
use message::Entry;
use queue::Queue;
use subscription::SubHandle;
use topic::{Topic, TopicSub};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Work that follows from a change made under a destination lock, done after the lock is
/// released: dead-lettering, and journal records of messages that left.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    dead: Vec<(Entry, DeadReason)>,
    removed: Vec<persist::Removal>,
}

impl Effects {
    pub(crate) fn push(&mut self, entry: Entry, reason: DeadReason) {
        self.dead.push((entry, reason));
    }

    /// A journaled queue message left its queue for good.
    pub(crate) fn removed_from_queue(&mut self, msg: &Message) {
        if msg.store_index != 0 {
            self.removed.push(persist::Removal {
                index: msg.store_index,
                durable: None,
                release: true,
                record: true,
            });
        }
    }

    /// A journaled topic message left a durable subscription.
    pub(crate) fn removed_from_durable(&mut self, msg: &Message, durable: &(String, String)) {
        if msg.store_index != 0 {
            let last = msg
                .durable_refs
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1))
                == Ok(1);
            self.removed.push(persist::Removal {
                index: msg.store_index,
                durable: Some(durable.clone()),
                release: last,
                record: true,
            });
        }
    }

    /// A durable subscription was deleted with this message in it: its DurableRemoved record
    /// covers the removal; only the last holder releases the record.
    pub(crate) fn dropped_with_durable(&mut self, msg: &Message) {
        if msg.store_index != 0
            && msg
                .durable_refs
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1))
                == Ok(1)
        {
            self.removed.push(persist::Removal {
                index: msg.store_index,
                durable: None,
                release: true,
                record: false,
            });
        }
    }

    fn is_empty(&self) -> bool {
        self.dead.is_empty() && self.removed.is_empty()
    }
}

impl Message {
    /// The counters of the destination this message is charged to.
    pub(crate) fn counters(&self) -> &Arc<DestinationCounters> {
        self.charge
            .counters()
            .expect("accepted messages are charged to their destination")
    }
}

/// A destination a session can publish to, resolved once and reusable.
#[derive(Debug, Clone)]
pub enum Target {
    Queue(Arc<Queue>),
    Topic(Arc<Topic>),
}

impl Target {
    pub fn counters(&self) -> &Arc<DestinationCounters> {
        match self {
            Target::Queue(q) => &q.counters,
            Target::Topic(t) => &t.counters,
        }
    }

    pub fn destination(&self) -> &Destination {
        match self {
            Target::Queue(q) => &q.dest,
            Target::Topic(t) => &t.dest,
        }
    }

    pub fn on_full(&self) -> OnFull {
        match self {
            Target::Queue(q) => q.limits().on_full,
            Target::Topic(t) => t.limits().on_full,
        }
    }

    fn is_deleted(&self) -> bool {
        match self {
            Target::Queue(q) => q.is_deleted(),
            Target::Topic(t) => t.is_deleted(),
        }
    }
}

/// A cheap-to-clone handle on one broker.
#[derive(Clone, Debug)]
pub struct Broker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Replaced in place by [`Broker::update_settings`] (`meshmq apply`).
    settings: RwLock<BrokerSettings>,
    memory: Arc<MemoryPool>,
    queues: DashMap<Arc<str>, Arc<Queue>>,
    topics: DashMap<Arc<str>, Arc<Topic>>,
    /// Serialises topic creation with wildcard registration so neither misses the other.
    topic_registry: Mutex<()>,
    wildcard_subs: RwLock<Vec<Arc<TopicSub>>>,
    durables: DashMap<(String, String), Arc<TopicSub>>,
    /// The expiry state of kept client sessions, by client id (`kept_sessions.rs`).
    kept_sessions: DashMap<String, kept_sessions::KeptSession>,
    /// Bumped whenever the kept sessions' shared subscriptions change (`kept_sessions.rs`).
    kept_shares_changed: tokio::sync::watch::Sender<u64>,
    /// Each client id in use: its session and that session's user.
    client_ids: DashMap<String, (u64, Option<String>)>,
    /// Client ids, and connection ids (temporary destination name prefixes), by user.
    client_id_claims: claims::Claims,
    temp_claims: claims::Claims,
    next_connection: AtomicU64,
    next_topic_sub: AtomicU64,
    run_id: String,
    producers: persist::ProducerMarks,
    next_tx: AtomicU64,
    demand: DashMap<u64, Demand>,
    demand_events: tokio::sync::broadcast::Sender<DemandEvent>,
    next_demand: AtomicU64,
    recent_forwards: Mutex<RecentIds>,
    /// Queues fed from topics (`feed.rs`).
    feeds: feed::Feeds,
    persistence: Option<persist::Persistence>,
    pager: Option<Arc<dyn queue::Pager>>,
}

/// What to do with a send, per its destination's room and `on_full` policy.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// There is room: take it.
    Now,
    /// Full, and the destination blocks its producers: wait for room (`Broker::wait_room`).
    Wait,
    /// Full, and the destination fails sends: refuse with this error.
    Refuse(BrokerError),
}

/// What became of a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Accepted and visible to consumers.
    Accepted,
    /// Journaled: accepted once the journal has synced this index (receipt then).
    Pending(u64),
    /// Already received from this producer (a re-send): dropped, and safe to receipt.
    Duplicate,
}

/// Producer high-water marks kept before the oldest are pruned.
const PRODUCER_MARKS: usize = 100_000;

impl Broker {
    /// A broker that keeps everything in memory.
    pub fn new(settings: BrokerSettings) -> Broker {
        Broker::build(settings, None)
    }

    /// A broker over an opened journal, restored to its recovered state.
    pub fn with_store(
        settings: BrokerSettings,
        store: crate::store::Store,
        recovered: crate::store::Recovered,
    ) -> Broker {
        let broker = Broker::build(settings, Some(store));
        broker.restore(recovered);
        broker
    }

    fn build(settings: BrokerSettings, store: Option<crate::store::Store>) -> Broker {
        let memory = Arc::new(MemoryPool::new(settings.memory_limit));
        let pager: Option<Arc<dyn queue::Pager>> = store.as_ref().map(|s| {
            Arc::new(persist::JournalPager {
                store: s.clone(),
                memory: memory.clone(),
            }) as Arc<dyn queue::Pager>
        });
        Broker {
            inner: Arc::new(Inner {
                producers: persist::ProducerMarks::new(PRODUCER_MARKS),
                next_tx: AtomicU64::new(rand::random::<u32>() as u64 + 1),
                demand: DashMap::new(),
                demand_events: tokio::sync::broadcast::channel(DEMAND_EVENTS).0,
                next_demand: AtomicU64::new(1),
                recent_forwards: Mutex::new(RecentIds::new(RECENT_FORWARD_CHUNKS)),
                feeds: feed::Feeds::default(),
                persistence: store.map(persist::Persistence::new),
                pager,
                settings: RwLock::new(settings),
                memory,
                queues: DashMap::new(),
                topics: DashMap::new(),
                topic_registry: Mutex::new(()),
                wildcard_subs: RwLock::new(Vec::new()),
                durables: DashMap::new(),
                kept_sessions: DashMap::new(),
                kept_shares_changed: tokio::sync::watch::channel(0).0,
                client_ids: DashMap::new(),
                client_id_claims: claims::Claims::default(),
                temp_claims: claims::Claims::default(),
                next_connection: AtomicU64::new(1),
                next_topic_sub: AtomicU64::new(1),
                run_id: format!("{:08x}", rand::random::<u32>()),
            }),
        }
    }

    pub fn memory(&self) -> &MemoryPool {
        &self.inner.memory
    }

    /// A charge, starting at 0, for bytes a connection holds of frames not yet handed over.
    pub fn memory_pending(&self) -> PendingCharge {
        self.inner.memory.pending()
    }

    /// The session holding client id `cid`, if any, with its user (`None`: anonymous).
    pub fn client_id_holder(&self, cid: &str) -> Option<(u64, Option<String>)> {
        self.inner.client_ids.get(cid).map(|e| e.value().clone())
    }

    /// Opens an anonymous session for a new connection. A client id, when given, must be
    /// unused and unclaimed by any user.
    pub fn open_session(&self, client_id: Option<String>) -> Result<Session, BrokerError> {
        self.open_session_as(client_id, None)
    }

    /// Opens a session for a connection logged in as `user` (`None`: anonymous). A client id,
    /// when given, must be unused, and not claimed by another user: a user's client id and
    /// connection id (its temporary destinations' prefix) stay that user's after it closes.
    pub fn open_session_as(
        &self,
        client_id: Option<String>,
        user: Option<String>,
    ) -> Result<Session, BrokerError> {
        let id = self.inner.next_connection.fetch_add(1, Ordering::Relaxed);
        if let Some(cid) = &client_id {
            if self
                .inner
                .client_id_claims
                .check(cid, user.as_deref())
                .is_err()
            {
                return Err(BrokerError::ClientIdOwned(cid.clone()));
            }
            match self.inner.client_ids.entry(cid.clone()) {
                dashmap::Entry::Occupied(_) => return Err(BrokerError::ClientIdInUse(cid.clone())),
                dashmap::Entry::Vacant(v) => {
                    v.insert((id, user.clone()));
                }
            }
            // Checked above; the entry held since keeps any other user from claiming it.
            let _ = self.inner.client_id_claims.take(cid, user.as_deref());
        }
        let connection_id = format!("ID-{}-{}", self.inner.run_id, id);
        // A fresh id nobody can have claimed: adopting one not yet issued is refused.
        let _ = self.inner.temp_claims.take(&connection_id, user.as_deref());
        Ok(Session {
            broker: self.clone(),
            id,
            connection_id,
            user,
            client_id,
            outbox: Arc::new(Outbox::new()),
            subs: HashMap::new(),
            demand_ids: HashMap::new(),
            temps: Vec::new(),
            stand_ins: HashMap::new(),
            temp_prefixes: Vec::new(),
            last_target: None,
            producer_mark: None,
            last_record: 0,
            resends_below: 0,
            closed: false,
        })
    }

    fn queue(&self, dest: &Destination, owner: u64) -> Arc<Queue> {
        if let Some(q) = self.inner.queues.get(dest.as_str()) {
            return q.clone();
        }
        self.inner
            .queues
            .entry(Arc::from(dest.as_str()))
            .or_insert_with(|| {
                let pager = if dest.kind().is_temp() {
                    None
                } else {
                    self.inner.pager.clone()
                };
                Arc::new(Queue::new(
                    dest.clone(),
                    self.limits_for(dest),
                    owner,
                    pager,
                ))
            })
            .clone()
    }

    fn topic(&self, dest: &Destination, owner: u64) -> Arc<Topic> {
        if let Some(t) = self.inner.topics.get(dest.as_str()) {
            return t.clone();
        }
        let _registry = self.inner.topic_registry.lock();
        if let Some(t) = self.inner.topics.get(dest.as_str()) {
            return t.clone();
        }
        let topic = Arc::new(Topic::new(dest.clone(), self.limits_for(dest), owner));
        for sub in self.inner.wildcard_subs.read().iter() {
            if sub.pattern.matches(dest) {
                topic.attach(sub);
            }
        }
        self.inner
            .topics
            .insert(Arc::from(dest.as_str()), topic.clone());
        // Settings replaced since they were read are either seen now or see this topic.
        topic.set_limits(self.limits_for(dest));
        topic
    }

    /// Drops expired messages everywhere (persistent ones go to their DLQ).
    pub fn sweep_expired(&self) {
        self.inner.producers.prune();
        let _gate = self.gate();
        let now = now_ms();
        let mut dead = Effects::default();
        let queues: Vec<Arc<Queue>> = self
            .inner
            .queues
            .iter()
            .map(|q| q.value().clone())
            .collect();
        for q in queues {
            q.sweep_expired(now, &mut dead);
        }
        let topics: Vec<Arc<Topic>> = self
            .inner
            .topics
            .iter()
            .map(|t| t.value().clone())
            .collect();
        let mut seen = std::collections::HashSet::new();
        for t in topics {
            for sub in t.subscriptions() {
                if seen.insert(sub.id) {
                    sub.sweep_expired(now, &mut dead);
                }
            }
        }
        for d in self.inner.durables.iter() {
            if seen.insert(d.id) {
                d.sweep_expired(now, &mut dead);
            }
        }
        self.apply(dead);
    }

    /// Non-durable topic subscriptions whose pending list is at its `topic_pending_limit`:
    /// consumers too slow for their topic, losing their oldest messages.
    pub fn slow_consumers(&self) -> u64 {
        let topics: Vec<Arc<Topic>> = self
            .inner
            .topics
            .iter()
            .map(|t| t.value().clone())
            .collect();
        let mut seen = std::collections::HashSet::new();
        let mut slow = 0;
        for t in topics {
            for sub in t.subscriptions() {
                if seen.insert(sub.id) && sub.is_slow() {
                    slow += 1;
                }
            }
        }
        slow
    }

    /// Counters of every destination, sorted by name.
    pub fn destination_stats(&self) -> Vec<DestinationStats> {
        let mut out: Vec<DestinationStats> = self
            .inner
            .queues
            .iter()
            .map(|q| q.counters.snapshot())
            .chain(self.inner.topics.iter().map(|t| t.counters.snapshot()))
            .collect();
        out.sort_by(|a, b| a.destination.cmp(&b.destination));
        out
    }

    /// Dispatches again where network consumers wait on time (replay delays).
    pub fn redispatch(&self) {
        let _gate = self.gate();
        let mut effects = Effects::default();
        let queues: Vec<Arc<Queue>> = self
            .inner
            .queues
            .iter()
            .map(|q| q.value().clone())
            .collect();
        for q in queues {
            q.redispatch(&mut effects);
        }
        self.apply(effects);
    }

    /// Whether the destination exists already (creating one may need the admin right).
    pub fn destination_exists(&self, dest: &Destination) -> bool {
        if dest.kind().is_queue() {
            self.inner.queues.contains_key(dest.as_str())
        } else {
            self.inner.topics.contains_key(dest.as_str())
        }
    }

    /// The retained messages (see [`RETAIN_HEADER`]) of the topics `pattern` matches, oldest
    /// in topic name order; expired ones are dropped.
    pub fn retained_matching(&self, pattern: &DestinationPattern) -> Vec<Arc<Message>> {
        let now = now_ms();
        let mut found: Vec<Arc<Message>> = match pattern.as_destination() {
            Some(dest) => self
                .inner
                .topics
                .get(dest.as_str())
                .and_then(|t| t.retained(now))
                .into_iter()
                .collect(),
            None => self
                .inner
                .topics
                .iter()
                .filter(|t| pattern.matches(&t.dest))
                .filter_map(|t| t.retained(now))
                .collect(),
        };
        found.sort_by(|a, b| a.dest().cmp(b.dest()));
        found
    }

    /// Messages held in a queue (pending + in flight), if it exists.
    pub fn queue_depth(&self, dest: &str) -> Option<usize> {
        self.inner.queues.get(dest).map(|q| q.depth())
    }
}

#[cfg(test)]
mod persist_tests;
#[cfg(test)]
mod tests;
