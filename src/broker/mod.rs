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
//! Everything here is synchronous except waiting for room and for commits; the one thread of
//! its own is the dispatcher (`persist.rs`), which makes journaled messages visible once they
//! are synced. Invariants: a queue message leaves the broker only when a consumer acknowledges
//! it (or it expires or is dead-lettered); an unacknowledged delivery whose consumer goes away
//! returns to its queue with a higher redelivery count; an outbox never holds more deliveries
//! than its subscriptions' prefetch; message memory is charged while any reference to the
//! message lives and released when the last one drops.

mod claims;
mod durability;
mod inflight;
mod memory;
mod message;
mod outbox;
mod persist;
mod queue;
mod stats;
mod topic;
mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;

pub use crate::config::{DestinationLimits, OnFull};
pub use crate::destination::{Destination, DestinationError, DestinationPattern, Kind};
pub use crate::metrics::DestinationStats;
pub use durability::{CommitLog, JournalStats, SyncedQueue};
pub use memory::{MemoryPool, PendingCharge};
pub use message::{
    Delivery, Draft, Message, MessageBuilder, COPY_BODY_BELOW, DEFAULT_PRIORITY, MAX_PRIORITY,
    RETAIN_HEADER,
};
pub use outbox::Outbox;
pub use queue::{AckOutcome, DeadReason, NetworkFilter};
pub use stats::DestinationCounters;

use crate::selector::{Selector, SelectorError};
use crate::store::proto::{record::Kind as RecordKind, Record};
use message::Entry;
use queue::Queue;
use topic::{Topic, TopicSub};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How a broker is configured (built by the server from the topology).
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Broker-wide cap on message memory, in bytes.
    pub memory_limit: u64,
    pub defaults: DestinationLimits,
    /// Per-destination limits; the first matching pattern wins.
    pub policies: Vec<(DestinationPattern, DestinationLimits)>,
    pub max_subscriptions_per_connection: usize,
    /// The group this broker serves: messages that arrived over bridges are known again at
    /// start-up by how often they had left it.
    pub group: String,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            memory_limit: 1 << 30,
            defaults: DestinationLimits::default(),
            policies: Vec::new(),
            max_subscriptions_per_connection: 10_000,
            group: String::new(),
        }
    }
}

impl BrokerSettings {
    pub fn limits_for(&self, dest: &Destination) -> DestinationLimits {
        self.policies
            .iter()
            .find(|(p, _)| p.matches(dest))
            .map(|(_, l)| *l)
            .unwrap_or(self.defaults)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BrokerError {
    #[error(transparent)]
    Destination(#[from] DestinationError),
    #[error("{0} does not exist (a temporary destination is deleted with the connection that created it)")]
    NotFound(String),
    #[error("{0} belongs to another connection: only the connection that created a temporary destination may consume from it")]
    NotOwner(String),
    #[error("subscription {0} already exists on this connection; choose another id")]
    SubscriptionExists(u64),
    #[error("no subscription {0} on this connection")]
    NoSuchSubscription(u64),
    #[error("this connection already has {0} subscriptions, the broker's max_subscriptions_per_connection")]
    TooManySubscriptions(usize),
    #[error(
        "client id {0:?} is already connected; a client id may be used by one connection at a time"
    )]
    ClientIdInUse(String),
    #[error("client id {0:?} belongs to another user: only the user who first connected with it may use it or take it over")]
    ClientIdOwned(String),
    #[error("temporary destination names under {0:?} belong to another user's connection")]
    TempPrefixOwned(String),
    #[error("a durable subscription needs a client id: set one when connecting")]
    DurableNeedsClientId,
    #[error("durable subscription {name:?} of client {client_id:?} is already active on another connection")]
    DurableInUse { client_id: String, name: String },
    #[error("durable subscriptions are for topics; {0} is a queue")]
    DurableOnQueue(String),
    #[error("{0}: wildcard subscriptions are supported on topics only; subscribe to each queue")]
    WildcardQueue(String),
    #[error(
        "the selector {selector:?} of the subscription to {destination} does not parse: {error}"
    )]
    BadSelector {
        destination: String,
        selector: String,
        error: SelectorError,
    },
    #[error("{0}: selectors on durable subscriptions are not supported yet; subscribe without a selector, or non-durably")]
    DurableSelectorUnsupported(String),
    #[error("{destination} is full (memory limit reached) and its policy is on_full = \"fail\"; retry later or raise memory_limit")]
    Full { destination: String },
    #[error("{destination}: the journal is full (store_limit or disk space reached) and its policy is on_full = \"fail\"; retry once consumers have freed space, or raise store_limit or free disk space")]
    JournalFull { destination: String },
    #[error("priority {0} is out of range: use 0..=9")]
    BadPriority(u32),
    #[error("{unknown} of the acknowledged deliveries of subscription {subscription} are not in flight (already acknowledged, or returned to the queue)")]
    UnknownDelivery { subscription: u64, unknown: usize },
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
/// Demand changes buffered for a slow watcher before it must resynchronise.
const DEMAND_EVENTS: usize = 8192;
/// Chunks of forwarded message ids remembered to drop re-sent forwards: at most 8 MiB, the
/// last 16,384 producers' ids at least, 67 million ids of a busy one.
const RECENT_FORWARD_CHUNKS: usize = 16_384;

/// "Someone here consumes this": a consumer, local or standing for a remote one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    pub id: u64,
    /// The destination or pattern consumed.
    pub destination: String,
    /// Groups the demand came through, nearest first... empty for a local consumer.
    pub path: Vec<Arc<str>>,
    pub priority: i32,
    /// The real consumer a network consumer's demand stands for, as its bridge learnt it
    /// (`"<group>/<id there>"`, the same over every route); `None` for a local consumer.
    pub origin: Option<Arc<str>>,
    /// The consumer's selector (as written), `None` when it takes every message: a network
    /// consumer standing for it forwards only what it (or another of its consumers) matches.
    pub selector: Option<Arc<str>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DemandEvent {
    Added(Demand),
    Removed(u64),
}

/// A network consumer's settings: what it may take. The remote demand it stands for is
/// registered apart, one [`Session::add_network_demand`] per remote consumer, so a conduit
/// that folds consumers reached by different paths still advertises each by its own path.
#[derive(Debug, Clone)]
pub struct NetworkSpec {
    pub filter: NetworkFilter,
}

/// The demand one subscription registered: a local consumer's one, or the remote consumers a
/// network consumer stands for.
#[derive(Debug)]
struct SubDemand {
    destination: String,
    priority: i32,
    ids: Vec<u64>,
}

/// Sequences per chunk of remembered forward ids (a chunk is 512 bytes of bits).
const CHUNK_IDS: u64 = 4096;

/// Chunks of remembered forward ids a checkpoint keeps (the newest; at most 128 KiB). Only a
/// forward in flight unacknowledged when its target restarts needs remembering, and records
/// journaled after the checkpoint are remembered from the journal itself.
const CHECKPOINT_FORWARD_CHUNKS: usize = 256;

/// How a forwarded message is told apart from a later legitimate return: for a queue message,
/// how many times it had left `local` (on its path); topic messages reach a group once.
fn forward_reach<'a>(topic: bool, path: impl Iterator<Item = &'a str>, local: &str) -> u32 {
    if topic {
        u32::MAX
    } else {
        path.filter(|g| *g == local).count() as u32
    }
}

/// A chunk of remembered forward ids: (interned producer, how far the message travelled — or
/// `u32::MAX` for topic messages, which reach a group once whatever their route — and the
/// sequence divided by [`CHUNK_IDS`]).
type ChunkKey = (u32, u32, u64);

/// The forwarded message ids seen lately, to drop a forward sent again after its
/// acknowledgement was lost. It is checked once per forwarded message, so it is built for
/// that: ids are bits in 4096-sequence chunks per (producer, reach), so a check is one lookup
/// in a small map and a bit test, with no per-message allocation and no rehashing churn. The
/// `cap` most recent chunks are kept, oldest forgotten first; an id whose chunk is forgotten
/// counts as new (a duplicate is then possible, a loss never). Producer ids are interned (and
/// copied, so no received frame stays alive for them) and forgotten with their last chunk.
#[derive(Debug)]
struct RecentIds {
    chunks: FxHashMap<ChunkKey, Box<[u64; CHUNK_IDS as usize / 64]>>,
    /// Every chunk held, oldest first.
    order: std::collections::VecDeque<ChunkKey>,
    cap: usize,
    /// Interned producer ids by number, with how many chunks use each.
    producers: Vec<Option<(Bytes, usize)>>,
    free: Vec<u32>,
    number_of: FxHashMap<Bytes, u32>,
}

impl RecentIds {
    fn new(cap: usize) -> RecentIds {
        RecentIds {
            chunks: Default::default(),
            order: Default::default(),
            cap,
            producers: Vec::new(),
            free: Vec::new(),
            number_of: Default::default(),
        }
    }

    /// True when the id was not seen (and remembers it).
    fn insert(&mut self, producer: &Bytes, sequence: u64, reach: u32) -> bool {
        let p = match self.number_of.get(producer) {
            Some(&p) => p,
            None => self.intern(producer),
        };
        let key = (p, reach, sequence / CHUNK_IDS);
        let bit = sequence % CHUNK_IDS;
        let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
        if let Some(chunk) = self.chunks.get_mut(&key) {
            let seen = chunk[word] & mask != 0;
            chunk[word] |= mask;
            return !seen;
        }
        let mut chunk = Box::new([0u64; CHUNK_IDS as usize / 64]);
        chunk[word] = mask;
        self.chunks.insert(key, chunk);
        self.order.push_back(key);
        if let Some((_, uses)) = &mut self.producers[p as usize] {
            *uses += 1;
        }
        if self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.chunks.remove(&old);
                self.release(old.0);
            }
        }
        true
    }

    /// The newest `max` chunks, oldest first, for a checkpoint.
    fn export(&self, max: usize) -> Vec<crate::store::proto::ForwardChunk> {
        let skip = self.order.len().saturating_sub(max);
        self.order
            .iter()
            .skip(skip)
            .filter_map(|key| {
                let (producer, _) = self.producers[key.0 as usize].as_ref()?;
                Some(crate::store::proto::ForwardChunk {
                    producer_id: producer.clone(),
                    reach: key.1,
                    chunk: key.2,
                    bits: self.chunks.get(key)?.to_vec(),
                })
            })
            .collect()
    }

    /// Remembers every id of a checkpointed chunk (a malformed one is skipped: it can only
    /// cost a duplicate).
    fn import(&mut self, c: &crate::store::proto::ForwardChunk) {
        for (w, word) in c.bits.iter().enumerate().take(CHUNK_IDS as usize / 64) {
            let mut bits = *word;
            while bits != 0 {
                let bit = bits.trailing_zeros() as u64;
                bits &= bits - 1;
                let sequence = c.chunk * CHUNK_IDS + w as u64 * 64 + bit;
                self.insert(&c.producer_id, sequence, c.reach);
            }
        }
    }

    fn intern(&mut self, producer: &Bytes) -> u32 {
        let owned = Bytes::copy_from_slice(producer);
        let p = match self.free.pop() {
            Some(p) => p,
            None => {
                self.producers.push(None);
                (self.producers.len() - 1) as u32
            }
        };
        self.producers[p as usize] = Some((owned.clone(), 0));
        self.number_of.insert(owned, p);
        p
    }

    /// A chunk of producer `p` was forgotten; the producer goes with its last.
    fn release(&mut self, p: u32) {
        let slot = &mut self.producers[p as usize];
        if let Some((id, uses)) = slot {
            *uses -= 1;
            if *uses == 0 {
                self.number_of.remove(id);
                *slot = None;
                self.free.push(p);
            }
        }
    }
}

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
                persistence: store.map(persist::Persistence::new),
                pager,
                settings: RwLock::new(settings),
                memory,
                queues: DashMap::new(),
                topics: DashMap::new(),
                topic_registry: Mutex::new(()),
                wildcard_subs: RwLock::new(Vec::new()),
                durables: DashMap::new(),
                client_ids: DashMap::new(),
                client_id_claims: claims::Claims::default(),
                temp_claims: claims::Claims::default(),
                next_connection: AtomicU64::new(1),
                next_topic_sub: AtomicU64::new(1),
                run_id: format!("{:08x}", rand::random::<u32>()),
            }),
        }
    }

    pub fn settings(&self) -> BrokerSettings {
        self.inner.settings.read().clone()
    }

    /// The limits of `dest` now (the first matching policy, else the defaults).
    fn limits_for(&self, dest: &Destination) -> DestinationLimits {
        self.inner.settings.read().limits_for(dest)
    }

    /// The limits a topic subscription on `pattern` takes: its topic's when it names one, the
    /// defaults for a wildcard.
    fn limits_for_pattern(&self, pattern: &DestinationPattern) -> DestinationLimits {
        match pattern.as_destination() {
            Some(d) => self.limits_for(&d),
            None => self.inner.settings.read().defaults,
        }
    }

    /// Takes new settings while running (`meshmq apply`): the broker-wide memory limit, and
    /// each existing destination's and topic subscription's policy, re-resolved the way they
    /// were at creation (the first matching entry wins); destinations created from now on use
    /// the new ones. Producers waiting for room check again at once. The group name is kept:
    /// a broker never changes group.
    pub fn update_settings(&self, mut settings: BrokerSettings) {
        settings.group = self.inner.settings.read().group.clone();
        let memory_limit = settings.memory_limit;
        *self.inner.settings.write() = settings;
        // Queues are created under their map shard's lock after reading the settings, and
        // topics re-read them once published: either sees the new settings or is seen here.
        for q in self.inner.queues.iter() {
            q.set_limits(self.limits_for(&q.dest));
        }
        let mut subs: Vec<Arc<TopicSub>> = self.inner.wildcard_subs.read().clone();
        for t in self.inner.topics.iter() {
            t.set_limits(self.limits_for(&t.dest));
            subs.extend(t.subscriptions());
        }
        subs.extend(self.inner.durables.iter().map(|d| d.value().clone()));
        for sub in subs {
            sub.set_limits(&self.limits_for_pattern(&sub.pattern));
        }
        self.inner.memory.set_limit(memory_limit);
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
            temp_prefixes: Vec::new(),
            last_target: None,
            last_record: 0,
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

    /// Current demand (every consumer), and a stream of later changes. Subscribe before
    /// reading the snapshot; an event may then repeat what the snapshot shows.
    pub fn demand(&self) -> (tokio::sync::broadcast::Receiver<DemandEvent>, Vec<Demand>) {
        let rx = self.inner.demand_events.subscribe();
        let snapshot = self
            .inner
            .demand
            .iter()
            .map(|d| d.value().clone())
            .collect();
        (rx, snapshot)
    }

    fn add_demand(
        &self,
        destination: String,
        path: Vec<Arc<str>>,
        priority: i32,
        origin: Option<Arc<str>>,
        selector: Option<Arc<str>>,
    ) -> u64 {
        let id = self.inner.next_demand.fetch_add(1, Ordering::Relaxed);
        let d = Demand {
            id,
            destination,
            path,
            priority,
            origin,
            selector,
        };
        self.inner.demand.insert(id, d.clone());
        let _ = self.inner.demand_events.send(DemandEvent::Added(d));
        id
    }

    fn remove_demand(&self, id: u64) {
        if self.inner.demand.remove(&id).is_some() {
            let _ = self.inner.demand_events.send(DemandEvent::Removed(id));
        }
    }

    /// For a message arriving over a bridge at group `local`: true the first time it is seen.
    /// A queue message is known by how many times it has already left `local` (the times
    /// `local` is on its path): a copy re-sent after a lost acknowledgement — over the same
    /// bridge or rerouted through another group when that bridge died — has left `local` as
    /// often as the copy already here and is dropped; one that legitimately comes back (a
    /// replay after it was forwarded away from here) has left once more. A topic message is
    /// taken once whatever its route.
    /// What was seen is journaled with the message and checkpointed, so it holds across a
    /// restart (see [`Broker::restore_forwards`]).
    pub fn first_forward(&self, msg: &Message, topic: bool, local: &str) -> bool {
        if msg.producer_id.is_empty() || msg.sequence == 0 {
            return true;
        }
        let reach = forward_reach(topic, msg.broker_path.iter().map(|g| &**g), local);
        self.inner
            .recent_forwards
            .lock()
            .insert(&msg.producer_id, msg.sequence, reach)
    }

    /// Remembers the forwards a restarted broker had taken: the checkpoint's chunks, then the
    /// messages journaled after it.
    fn restore_forwards(
        &self,
        chunks: &[crate::store::proto::ForwardChunk],
        forwarded: &[crate::store::ForwardedId],
    ) {
        let settings = self.inner.settings.read();
        let local = settings.group.as_str();
        let mut recent = self.inner.recent_forwards.lock();
        for c in chunks {
            recent.import(c);
        }
        for f in forwarded {
            let reach = forward_reach(f.topic, f.broker_path.iter().map(|g| g.as_str()), local);
            recent.insert(&f.producer_id, f.sequence, reach);
        }
    }

    /// The newest remembered forward ids, for a checkpoint.
    fn export_forwards(&self) -> Vec<crate::store::proto::ForwardChunk> {
        self.inner
            .recent_forwards
            .lock()
            .export(CHECKPOINT_FORWARD_CHUNKS)
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

    pub fn durable_subscriptions(&self) -> usize {
        self.inner.durables.len()
    }

    /// The durable subscriptions of `client_id` whose names start with `prefix`: (name,
    /// pattern), by name.
    pub fn durables_of(&self, client_id: &str, prefix: &str) -> Vec<(String, DestinationPattern)> {
        let mut found: Vec<(String, DestinationPattern)> = self
            .inner
            .durables
            .iter()
            .filter(|d| d.key().0 == client_id && d.key().1.starts_with(prefix))
            .map(|d| (d.key().1.clone(), d.value().pattern.clone()))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }

    /// Deletes the durable subscriptions of `client_id` named with `prefix` that no connection
    /// is attached to — when `last` is given, only those session `last` attached to last (a
    /// session that ended ends its own, not a later one's) — with the messages they kept, each
    /// removal journaled. Returns the journal record of the last removal (0: none).
    pub fn remove_idle_durables(&self, client_id: &str, prefix: &str, last: Option<u64>) -> u64 {
        if self.inner.durables.is_empty() {
            return 0;
        }
        let _gate = self.gate();
        let mut dead = Effects::default();
        let mut record = 0;
        let keys: Vec<(String, String)> = self
            .inner
            .durables
            .iter()
            .filter(|d| d.key().0 == client_id && d.key().1.starts_with(prefix))
            .filter(|d| !d.value().is_active())
            .filter(|d| last.is_none_or(|s| d.value().last_connection() == s))
            .map(|d| d.key().clone())
            .collect();
        for key in keys {
            // Checked again under the map's lock: a client may have attached meanwhile.
            let Some((_, sub)) = self.inner.durables.remove_if(&key, |_, s| !s.is_active()) else {
                continue;
            };
            self.remove_topic_sub(&sub, &mut dead);
            record = self.journal_record(durable_removed(&key));
        }
        self.apply(dead);
        record
    }
}

/// What a subscription is attached to.
#[derive(Debug)]
enum SubHandle {
    Queue { queue: Arc<Queue>, slot: usize },
    Topic { sub: Arc<TopicSub> },
}

/// A subscription request, in broker terms.
#[derive(Debug, Clone)]
pub struct SubscribeSpec {
    pub subscription: u64,
    pub destination: DestinationPattern,
    pub selector: String,
    /// 0 = the destination's default.
    pub prefetch: u32,
    pub priority: i32,
    pub durable_name: Option<String>,
    pub no_local: bool,
}

impl SubscribeSpec {
    /// The subscription's selector, parsed; `None` when it has none (an empty or blank
    /// selector is none, as in JMS).
    fn parse_selector(&self) -> Result<Option<Arc<Selector>>, BrokerError> {
        if self.selector.trim().is_empty() {
            return Ok(None);
        }
        Selector::parse(&self.selector)
            .map(|s| Some(Arc::new(s)))
            .map_err(|error| BrokerError::BadSelector {
                destination: self.destination.to_string(),
                selector: self.selector.clone(),
                error,
            })
    }
}

/// One connection's view of the broker. Dropping it closes it.
#[derive(Debug)]
pub struct Session {
    broker: Broker,
    id: u64,
    connection_id: String,
    /// Who logged in (`None`: anonymous): whose claims this session's names are.
    user: Option<String>,
    client_id: Option<String>,
    outbox: Arc<Outbox>,
    subs: HashMap<u64, SubHandle>,
    /// The demand each subscription registered.
    demand_ids: HashMap<u64, SubDemand>,
    temps: Vec<Target>,
    /// Connection ids of a failover client's earlier connections: it keeps naming its
    /// temporary destinations after the first, and may re-create them here.
    temp_prefixes: Vec<String>,
    last_target: Option<Target>,
    /// Index of the last journal record this session's operations appended (0 = none).
    last_record: u64,
    closed: bool,
}

impl Session {
    /// The last journal record this session appended: a receipt for the operation that
    /// appended it waits until the journal has synced it.
    pub fn last_record(&self) -> u64 {
        self.last_record
    }

    /// The journal record appended since `before` (a [`Session::last_record`] taken before an
    /// operation), which the operation's receipt must wait for; 0 when it appended none.
    pub fn record_since(&self, before: u64) -> u64 {
        if self.last_record != before {
            self.last_record
        } else {
            0
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Broker-assigned id; prefixes this connection's temporary destination names.
    pub fn connection_id(&self) -> &str {
        &self.connection_id
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    pub fn subscription_count(&self) -> usize {
        self.subs.len()
    }

    fn owns_temp_name(&self, dest: &Destination) -> bool {
        std::iter::once(&self.connection_id)
            .chain(&self.temp_prefixes)
            .any(|prefix| {
                dest.name()
                    .strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
            })
    }

    /// Lets this session create (and own) temporary destinations named after a failover
    /// client's earlier connection ids. An empty prefix is ignored. Refused, adopting none,
    /// when another user claimed one of them, or one is a connection id this broker has not
    /// issued yet (claiming it would take a future connection's names).
    pub fn adopt_temp_prefixes(&mut self, prefixes: Vec<String>) -> Result<(), BrokerError> {
        let claims = &self.broker.inner.temp_claims;
        let issued = self.broker.inner.next_connection.load(Ordering::Relaxed);
        let mine = format!("ID-{}-", self.broker.inner.run_id);
        let mut adopted: Vec<String> = Vec::new();
        for prefix in prefixes.into_iter().filter(|p| !p.is_empty()) {
            let future = prefix
                .strip_prefix(&mine)
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n >= issued);
            let taken = !future
                && (adopted.contains(&prefix)
                    || claims.take(&prefix, self.user.as_deref()).is_ok());
            if !taken {
                for p in &adopted {
                    claims.release(p, self.user.as_deref());
                }
                return Err(BrokerError::TempPrefixOwned(prefix));
            }
            if !adopted.contains(&prefix) {
                adopted.push(prefix);
            }
        }
        for p in std::mem::replace(&mut self.temp_prefixes, adopted) {
            claims.release(&p, self.user.as_deref());
        }
        Ok(())
    }

    /// Resolves a destination to publish to. Ordinary destinations are created on first use;
    /// a temporary one must exist.
    pub fn target(&mut self, dest: &Destination) -> Result<Target, BrokerError> {
        if let Some(t) = &self.last_target {
            if t.destination() == dest && !t.is_deleted() {
                return Ok(t.clone());
            }
        }
        let target = match dest.kind() {
            Kind::Queue => Target::Queue(self.broker.queue(dest, 0)),
            Kind::Topic => Target::Topic(self.broker.topic(dest, 0)),
            Kind::TempQueue => Target::Queue(
                self.broker
                    .inner
                    .queues
                    .get(dest.as_str())
                    .map(|q| q.clone())
                    .ok_or_else(|| BrokerError::NotFound(dest.to_string()))?,
            ),
            Kind::TempTopic => Target::Topic(
                self.broker
                    .inner
                    .topics
                    .get(dest.as_str())
                    .map(|t| t.clone())
                    .ok_or_else(|| BrokerError::NotFound(dest.to_string()))?,
            ),
        };
        if target.is_deleted() {
            return Err(BrokerError::NotFound(dest.to_string()));
        }
        self.last_target = Some(target.clone());
        Ok(target)
    }

    /// True when there is room for a message: in memory for a message kept in memory; in the
    /// journal for one that is journaled (memory then pages it out as needed).
    pub fn has_room(&self, target: &Target, persistent: bool) -> bool {
        self.broker.has_room(target, persistent)
    }

    /// The one full-destination decision, for every producer and every bridge: take the
    /// message now, wait for room, or refuse it (the destination's `on_full`). A bridge never
    /// waits (its link carries other destinations too): it treats `Wait` as "try again later".
    pub fn admit(&self, target: &Target, persistent: bool) -> Admission {
        if self.has_room(target, persistent) {
            return Admission::Now;
        }
        match target.on_full() {
            OnFull::Block => Admission::Wait,
            OnFull::Fail => Admission::Refuse(self.full_error(target, persistent)),
        }
    }

    /// What refuses a send when `has_room` said no: the journal for a message it would hold,
    /// the memory limit otherwise.
    pub fn full_error(&self, target: &Target, persistent: bool) -> BrokerError {
        let destination = target.destination().to_string();
        if self.broker.needs_journal_room(target, persistent) {
            BrokerError::JournalFull { destination }
        } else {
            BrokerError::Full { destination }
        }
    }

    /// Checks a message and stamps it for `target` as the broker keeps it: its destination,
    /// the connection it came from, when it arrived, and its memory charge. False when it is a
    /// producer re-send (drop it).
    fn stamp(&self, target: &Target, msg: &mut Message) -> Result<bool, BrokerError> {
        if msg.priority > MAX_PRIORITY {
            return Err(BrokerError::BadPriority(msg.priority as u32));
        }
        if self.is_resend(msg) {
            return Ok(false);
        }
        msg.origin = self.id;
        msg.received_ms = now_ms();
        msg.destination = Some(target.destination().clone());
        msg.charge = self
            .broker
            .inner
            .memory
            .charge(msg.memory_size(), target.counters());
        Ok(true)
    }

    /// Accepts a message onto a target: charges its memory, then queues or fans it out — or
    /// journals it, to become visible once durable. A re-send (its producer sequence is not
    /// above the producer's mark) is dropped as a duplicate. Flow control is the caller's:
    /// check `has_room` (and wait or refuse) first.
    pub fn publish(&mut self, target: &Target, mut msg: Message) -> Result<Published, BrokerError> {
        if !self.stamp(target, &mut msg)? {
            return Ok(Published::Duplicate);
        }
        let _gate = self.broker.gate();
        if self.broker.journals(target, &msg) {
            let index = self.broker.journal_publish(target, msg);
            self.last_record = index;
            return Ok(Published::Pending(index));
        }
        let mut effects = Effects::default();
        match target {
            Target::Queue(q) => q.enqueue(Arc::new(msg), &mut effects),
            Target::Topic(t) => t.publish(Arc::new(msg), &mut effects),
        }
        self.broker.apply(effects);
        Ok(Published::Accepted)
    }

    pub fn subscribe(&mut self, spec: SubscribeSpec) -> Result<(), BrokerError> {
        self.subscribe_with(spec, None)
    }

    /// A network consumer: a subscription that forwards to another group.
    pub fn subscribe_network(
        &mut self,
        spec: SubscribeSpec,
        net: NetworkSpec,
    ) -> Result<(), BrokerError> {
        self.subscribe_with(spec, Some(net))
    }

    fn subscribe_with(
        &mut self,
        spec: SubscribeSpec,
        net: Option<NetworkSpec>,
    ) -> Result<(), BrokerError> {
        if self.subs.contains_key(&spec.subscription) {
            return Err(BrokerError::SubscriptionExists(spec.subscription));
        }
        let max = self
            .broker
            .inner
            .settings
            .read()
            .max_subscriptions_per_connection;
        if self.subs.len() >= max {
            return Err(BrokerError::TooManySubscriptions(max));
        }
        let selector = spec.parse_selector()?;
        let selector_text = selector.as_ref().map(|s| Arc::<str>::from(s.text()));
        let pattern = spec.destination.clone();
        let kind = pattern.kind();
        if kind.is_queue() && spec.durable_name.is_some() {
            return Err(BrokerError::DurableOnQueue(spec.destination.to_string()));
        }
        if selector.is_some() && spec.durable_name.is_some() {
            return Err(BrokerError::DurableSelectorUnsupported(
                spec.destination.to_string(),
            ));
        }
        let broker = self.broker.clone();
        let _gate = broker.gate();
        let mut dead = Effects::default();
        let handle = if kind.is_queue() {
            let Some(dest) = pattern.as_destination() else {
                return Err(BrokerError::WildcardQueue(spec.destination.to_string()));
            };
            let queue = self.queue_for_consumer(&dest)?;
            let prefetch = if spec.prefetch == 0 {
                queue.limits().prefetch
            } else {
                spec.prefetch
            };
            let slot = queue.add_consumer(
                self.outbox.clone(),
                spec.subscription,
                prefetch,
                spec.priority,
                queue::Takes {
                    filter: net.as_ref().map(|n| n.filter.clone()),
                    selectors: selector.into_iter().collect(),
                },
                &mut dead,
            );
            SubHandle::Queue { queue, slot }
        } else {
            self.subscribe_topic(
                &spec,
                pattern,
                net.as_ref().map(|n| n.filter.clone()),
                selector,
                &mut dead,
            )?
        };
        self.subs.insert(spec.subscription, handle);
        let ids = if net.is_none() {
            vec![self.broker.add_demand(
                spec.destination.to_string(),
                Vec::new(),
                spec.priority,
                None,
                selector_text,
            )]
        } else {
            Vec::new()
        };
        self.demand_ids.insert(
            spec.subscription,
            SubDemand {
                destination: spec.destination.to_string(),
                priority: spec.priority,
                ids,
            },
        );
        self.broker.apply(dead);
        Ok(())
    }

    /// Registers one remote consumer a network consumer stands for, by the path its demand
    /// came (first element: the consumer's group) and its selector (relayed with it); returns
    /// the demand's id.
    pub fn add_network_demand(
        &mut self,
        subscription: u64,
        path: Vec<Arc<str>>,
        origin: Option<Arc<str>>,
        selector: Option<Arc<str>>,
    ) -> Result<u64, BrokerError> {
        let sd = self
            .demand_ids
            .get_mut(&subscription)
            .ok_or(BrokerError::NoSuchSubscription(subscription))?;
        let id =
            self.broker
                .add_demand(sd.destination.clone(), path, sd.priority, origin, selector);
        sd.ids.push(id);
        Ok(id)
    }

    /// What a network consumer takes: the messages any of `selectors` matches, or every
    /// message when the list is empty (some consumer it stands for has no selector). Called
    /// as its remote consumers come and go; a queue then dispatches again.
    pub fn set_network_selectors(&mut self, subscription: u64, selectors: Vec<Arc<Selector>>) {
        let _gate = self.broker.gate();
        let mut effects = Effects::default();
        match self.subs.get(&subscription) {
            Some(SubHandle::Queue { queue, slot }) => {
                queue.set_selectors(*slot, selectors, &mut effects)
            }
            Some(SubHandle::Topic { sub }) => sub.set_selectors(selectors),
            None => {}
        }
        self.broker.apply(effects);
    }

    /// Withdraws one remote consumer's demand (the network consumer itself stays).
    pub fn remove_network_demand(&mut self, subscription: u64, demand: u64) {
        if let Some(sd) = self.demand_ids.get_mut(&subscription) {
            if let Some(i) = sd.ids.iter().position(|d| *d == demand) {
                sd.ids.swap_remove(i);
                self.broker.remove_demand(demand);
            }
        }
    }

    /// How many deliveries in a row a queue network consumer gets when its turn comes: the
    /// number of consumers it stands for, so a queue's split follows the consumers.
    pub fn set_network_weight(&mut self, subscription: u64, weight: u32) {
        if let Some(SubHandle::Queue { queue, slot }) = self.subs.get(&subscription) {
            queue.set_weight(*slot, weight);
        }
    }

    fn queue_for_consumer(&mut self, dest: &Destination) -> Result<Arc<Queue>, BrokerError> {
        if dest.kind() != Kind::TempQueue {
            return Ok(self.broker.queue(dest, 0));
        }
        if let Some(q) = self.broker.inner.queues.get(dest.as_str()) {
            if q.owner != self.id {
                return Err(BrokerError::NotOwner(dest.to_string()));
            }
            return Ok(q.clone());
        }
        if !self.owns_temp_name(dest) {
            return Err(BrokerError::NotOwner(dest.to_string()));
        }
        let q = self.broker.queue(dest, self.id);
        self.temps.push(Target::Queue(q.clone()));
        Ok(q)
    }

    fn subscribe_topic(
        &mut self,
        spec: &SubscribeSpec,
        pattern: DestinationPattern,
        filter: Option<NetworkFilter>,
        selector: Option<Arc<Selector>>,
        dead: &mut Effects,
    ) -> Result<SubHandle, BrokerError> {
        let broker = self.broker.clone();
        let limits = broker.limits_for_pattern(&pattern);
        let prefetch = if spec.prefetch == 0 {
            limits.prefetch
        } else {
            spec.prefetch
        };
        if let Some(name) = &spec.durable_name {
            let client_id = self
                .client_id
                .clone()
                .ok_or(BrokerError::DurableNeedsClientId)?;
            let key = (client_id.clone(), name.clone());
            if let Some(existing) = broker.inner.durables.get(&key).map(|d| d.clone()) {
                if existing.pattern == pattern {
                    if !existing.attach_consumer(
                        self.outbox.clone(),
                        spec.subscription,
                        prefetch,
                        self.id,
                        dead,
                    ) {
                        return Err(BrokerError::DurableInUse {
                            client_id,
                            name: name.clone(),
                        });
                    }
                    return Ok(SubHandle::Topic { sub: existing });
                }
                // Subscribing under the same name to another topic replaces the subscription.
                if existing.is_active() {
                    return Err(BrokerError::DurableInUse {
                        client_id,
                        name: name.clone(),
                    });
                }
                broker.remove_topic_sub(&existing, dead);
                broker.inner.durables.remove(&key);
                self.last_record = broker.journal_record(durable_removed(&key));
            }
            let sub = self.new_topic_sub(
                pattern.clone(),
                Some(key.clone()),
                spec,
                &limits,
                None,
                None,
            )?;
            broker.inner.durables.insert(key.clone(), sub.clone());
            self.last_record = broker.journal_record(Record {
                kind: Some(RecordKind::DurableAdded(
                    crate::store::proto::DurableAdded {
                        client_id: key.0,
                        name: key.1,
                        pattern: pattern.as_str().to_string(),
                        no_local: spec.no_local,
                    },
                )),
                tx: 0,
            });
            sub.attach_consumer(
                self.outbox.clone(),
                spec.subscription,
                prefetch,
                self.id,
                dead,
            );
            return Ok(SubHandle::Topic { sub });
        }
        let sub = self.new_topic_sub(pattern, None, spec, &limits, filter, selector)?;
        sub.attach_consumer(
            self.outbox.clone(),
            spec.subscription,
            prefetch,
            self.id,
            dead,
        );
        Ok(SubHandle::Topic { sub })
    }

    fn new_topic_sub(
        &mut self,
        pattern: DestinationPattern,
        durable: Option<(String, String)>,
        spec: &SubscribeSpec,
        limits: &DestinationLimits,
        filter: Option<NetworkFilter>,
        selector: Option<Arc<Selector>>,
    ) -> Result<Arc<TopicSub>, BrokerError> {
        if let Some(dest) = pattern
            .as_destination()
            .filter(|d| d.kind() == Kind::TempTopic)
        {
            let topic = self.temp_topic_for_consumer(&dest)?;
            let id = self
                .broker
                .inner
                .next_topic_sub
                .fetch_add(1, Ordering::Relaxed);
            let sub = Arc::new(TopicSub::new(
                id,
                pattern,
                durable,
                spec.no_local,
                limits,
                filter,
                selector,
            ));
            topic.attach(&sub);
            return Ok(sub);
        }
        Ok(self
            .broker
            .create_topic_sub(pattern, durable, spec.no_local, limits, filter, selector))
    }

    fn temp_topic_for_consumer(&mut self, dest: &Destination) -> Result<Arc<Topic>, BrokerError> {
        if let Some(t) = self.broker.inner.topics.get(dest.as_str()) {
            if t.owner != self.id {
                return Err(BrokerError::NotOwner(dest.to_string()));
            }
            return Ok(t.clone());
        }
        if !self.owns_temp_name(dest) {
            return Err(BrokerError::NotOwner(dest.to_string()));
        }
        let t = self.broker.topic(dest, self.id);
        self.temps.push(Target::Topic(t.clone()));
        Ok(t)
    }

    /// Ends a subscription. Unacknowledged queue deliveries go back to the queue; a durable
    /// subscription keeps collecting messages unless `remove_durable`.
    pub fn unsubscribe(
        &mut self,
        subscription: u64,
        remove_durable: bool,
    ) -> Result<(), BrokerError> {
        let handle = self
            .subs
            .remove(&subscription)
            .ok_or(BrokerError::NoSuchSubscription(subscription))?;
        if let Some(sd) = self.demand_ids.remove(&subscription) {
            for d in sd.ids {
                self.broker.remove_demand(d);
            }
        }
        self.release(handle, remove_durable);
        Ok(())
    }

    fn release(&mut self, handle: SubHandle, remove_durable: bool) {
        let broker = self.broker.clone();
        let _gate = broker.gate();
        let mut dead = Effects::default();
        match handle {
            SubHandle::Queue { queue, slot } => queue.remove_consumer(slot, &mut dead),
            SubHandle::Topic { sub } => match (&sub.durable, remove_durable) {
                (Some(_), false) => sub.detach_consumer(&mut dead),
                (Some(key), true) => {
                    broker.inner.durables.remove(key);
                    broker.remove_topic_sub(&sub, &mut dead);
                    self.last_record = broker.journal_record(durable_removed(key));
                }
                (None, _) => broker.remove_topic_sub(&sub, &mut dead),
            },
        }
        broker.apply(dead);
    }

    fn handle(&self, subscription: u64) -> Result<&SubHandle, BrokerError> {
        self.subs
            .get(&subscription)
            .ok_or(BrokerError::NoSuchSubscription(subscription))
    }

    /// Acknowledges every delivery with tag <= `up_to` (cumulative) and each of `tags`.
    pub fn ack(
        &mut self,
        subscription: u64,
        up_to: u64,
        tags: &[u64],
    ) -> Result<AckOutcome, BrokerError> {
        let mut dead = Effects::default();
        let outcome = match self.handle(subscription)? {
            SubHandle::Queue { queue, slot } => queue.ack(*slot, up_to, tags, &mut dead),
            SubHandle::Topic { sub } => sub.ack(up_to, tags, &mut dead),
        };
        self.broker.apply(dead);
        Self::check_known(subscription, outcome)
    }

    /// Returns deliveries for redelivery (to the DLQ past `max_redeliveries`).
    pub fn nack(&mut self, subscription: u64, tags: &[u64]) -> Result<AckOutcome, BrokerError> {
        let _gate = self.broker.gate();
        let mut dead = Effects::default();
        let outcome = match self.handle(subscription)? {
            SubHandle::Queue { queue, slot } => queue.nack(*slot, tags, &mut dead),
            SubHandle::Topic { sub } => sub.nack(tags, &mut dead),
        };
        self.broker.apply(dead);
        Self::check_known(subscription, outcome)
    }

    fn check_known(subscription: u64, outcome: AckOutcome) -> Result<AckOutcome, BrokerError> {
        if outcome.unknown > 0 {
            return Err(BrokerError::UnknownDelivery {
                subscription,
                unknown: outcome.unknown,
            });
        }
        Ok(outcome)
    }

    /// True when `msg` repeats what its producer already sent here (its sequence is not above
    /// the producer's mark). Forwarded messages are checked by `Broker::first_forward` instead.
    fn is_resend(&self, msg: &Message) -> bool {
        msg.sequence != 0
            && !msg.sequence_checked
            && !msg.producer_id.is_empty()
            && !self
                .broker
                .inner
                .producers
                .advance(&msg.producer_id, msg.sequence)
    }

    /// Accepts a message that arrived over a bridge: like `publish`, without the producer's
    /// high-water mark (forwards of one producer may arrive out of order; duplicates are
    /// caught by `Broker::first_forward`).
    pub fn publish_forwarded(
        &mut self,
        target: &Target,
        mut msg: Message,
    ) -> Result<Published, BrokerError> {
        msg.sequence_checked = true;
        self.publish(target, msg)
    }

    /// Prepares a message for a transaction: checks and stamps it as `publish` would, without
    /// making it visible. `None` when it is a producer re-send (drop it).
    pub fn stage(
        &mut self,
        target: &Target,
        mut msg: Message,
    ) -> Result<Option<(Target, Message)>, BrokerError> {
        if !self.stamp(target, &mut msg)? {
            return Ok(None);
        }
        Ok(Some((target.clone(), msg)))
    }

    /// Commits staged sends and acknowledgements `(subscription, tag)` together. Returns the
    /// journal index the commit's receipt must wait for (0: none).
    pub fn commit(&mut self, sends: Vec<(Target, Message)>, acks: &[(u64, u64)]) -> u64 {
        let broker = self.broker.clone();
        let _gate = broker.gate();
        let subs = &self.subs;
        let index = broker.commit_transaction(sends, |effects| {
            for (sub, tag) in acks {
                match subs.get(sub) {
                    Some(SubHandle::Queue { queue, slot }) => {
                        queue.ack(*slot, 0, &[*tag], effects);
                    }
                    Some(SubHandle::Topic { sub }) => {
                        sub.ack(0, &[*tag], effects);
                    }
                    None => {}
                }
            }
        });
        if index != 0 {
            self.last_record = index;
        }
        index
    }

    /// Closes the session: subscriptions end (unacknowledged messages return to their queues
    /// as redelivered), temporary destinations are deleted, the client id is freed.
    /// Idempotent; also done on drop.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.outbox.close();
        for d in std::mem::take(&mut self.demand_ids)
            .into_values()
            .flat_map(|sd| sd.ids)
        {
            self.broker.remove_demand(d);
        }
        for (_, handle) in std::mem::take(&mut self.subs) {
            self.release(handle, false);
        }
        drop(self.outbox.take_all());
        for temp in std::mem::take(&mut self.temps) {
            match temp {
                Target::Queue(q) => {
                    self.broker.inner.queues.remove(q.dest.as_str());
                    q.delete();
                }
                Target::Topic(t) => {
                    self.broker.inner.topics.remove(t.dest.as_str());
                    let mut effects = Effects::default();
                    for sub in t.delete() {
                        sub.clear(&mut effects);
                    }
                    self.broker.apply(effects);
                }
            }
        }
        if let Some(cid) = &self.client_id {
            let inner = &self.broker.inner;
            if inner
                .client_ids
                .remove_if(cid, |_, (id, _)| *id == self.id)
                .is_some()
            {
                inner.client_id_claims.release(cid, self.user.as_deref());
            }
        }
        let user = self.user.as_deref();
        for prefix in std::iter::once(&self.connection_id).chain(&self.temp_prefixes) {
            self.broker.inner.temp_claims.release(prefix, user);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

fn durable_removed(key: &(String, String)) -> Record {
    Record {
        kind: Some(RecordKind::DurableRemoved(
            crate::store::proto::DurableRemoved {
                client_id: key.0.clone(),
                name: key.1.clone(),
            },
        )),
        tx: 0,
    }
}

impl Broker {
    /// A new (non-temporary) topic subscription, attached to every topic its pattern matches
    /// now or later.
    pub(crate) fn create_topic_sub(
        &self,
        pattern: DestinationPattern,
        durable: Option<(String, String)>,
        no_local: bool,
        limits: &DestinationLimits,
        filter: Option<NetworkFilter>,
        selector: Option<Arc<Selector>>,
    ) -> Arc<TopicSub> {
        let id = self.inner.next_topic_sub.fetch_add(1, Ordering::Relaxed);
        let sub = Arc::new(TopicSub::new(
            id,
            pattern.clone(),
            durable,
            no_local,
            limits,
            filter,
            selector,
        ));
        match pattern.as_destination() {
            Some(dest) => self.topic(&dest, 0).attach(&sub),
            None => {
                let _registry = self.inner.topic_registry.lock();
                self.inner.wildcard_subs.write().push(sub.clone());
                for t in self.inner.topics.iter() {
                    if pattern.matches(&t.dest) {
                        t.attach(&sub);
                    }
                }
            }
        }
        // Settings replaced since `limits` was resolved are either seen now or see this
        // subscription attached.
        sub.set_limits(&self.limits_for_pattern(&sub.pattern));
        sub
    }

    /// Detaches a topic subscription from every topic and forgets its messages.
    fn remove_topic_sub(&self, sub: &Arc<TopicSub>, effects: &mut Effects) {
        match sub.pattern.as_destination() {
            Some(dest) => {
                if let Some(t) = self.inner.topics.get(dest.as_str()) {
                    t.detach(sub.id);
                }
            }
            None => {
                let _registry = self.inner.topic_registry.lock();
                self.inner.wildcard_subs.write().retain(|s| s.id != sub.id);
                for t in self.inner.topics.iter() {
                    if sub.pattern.matches(&t.dest) {
                        t.detach(sub.id);
                    }
                }
            }
        }
        sub.clear(effects);
    }
}

#[cfg(test)]
mod persist_tests;
#[cfg(test)]
mod tests;
