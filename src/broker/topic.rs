//! Topics and their subscriptions.
//!
//! A topic holds no messages itself: publishing offers the (shared) message to each attached
//! subscription, which is a private queue of one consumer. A subscription with credit gets the
//! message straight into its connection's outbox; otherwise it waits in the subscription's
//! pending list. A non-durable subscription's pending list is capped in bytes at
//! `topic_pending_size` (64 MiB by default, at most an eighth of the memory limit) and, when
//! set, in messages at `topic_pending_limit`; past either it loses its oldest message (counted
//! as dropped). So a burst that a healthy subscriber will absorb is never dropped, while a
//! subscriber that stays behind is bounded and never slows the producer or the others. A durable subscription keeps everything while
//! its consumer is away; memory limits bound it. A wildcard subscription is attached to every
//! topic its pattern matches, each message reaching it once (it is published on one topic).
//! Lock order: a topic's subscription list, then a subscription's state, then an outbox.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;

use super::inflight::Inflight;
use super::message::{Delivery, Entry, Message};
use super::outbox::Outbox;
use super::queue::{AckOutcome, DeadReason, NetworkFilter};
use super::stats::DestinationCounters;
use super::{now_ms, DestinationLimits, Effects};
use crate::destination::{Destination, DestinationPattern};
use crate::selector::Selector;

#[derive(Debug)]
pub struct Topic {
    pub(crate) dest: Destination,
    /// Its policy: read where it applies, replaced in place by `meshmq apply`.
    limits: RwLock<DestinationLimits>,
    pub(crate) counters: Arc<DestinationCounters>,
    pub(crate) owner: u64,
    deleted: AtomicBool,
    subs: RwLock<Subscribers>,
    /// The topic's retained message (MQTT retain, ActiveMQ's `ActiveMQ.Retain` property):
    /// replaced by the next one, cleared by an empty one. With a journal each change is
    /// journaled (`Broker::journals_retained`, or the message's own record): the slot keeps the
    /// index of the record that set it, so that it ends as the journal's latest whatever order
    /// the changes reach it in.
    retained: parking_lot::Mutex<RetainedSlot>,
}

/// A topic's retained message and the journal record that set it (0: none, or no journal).
#[derive(Debug, Default)]
struct RetainedSlot {
    index: u64,
    msg: Option<Arc<Message>>,
}

/// A topic's subscriptions: a dense list to fan out over, and each one's place in it, so that
/// attaching and detaching cost the same with ten subscribers or ten thousand (a mass
/// disconnect must not be quadratic).
#[derive(Debug, Default)]
struct Subscribers {
    list: Vec<Arc<TopicSub>>,
    place: FxHashMap<u64, usize>,
}

impl Subscribers {
    /// False when `sub` was already attached.
    fn insert(&mut self, sub: &Arc<TopicSub>) -> bool {
        if self.place.contains_key(&sub.id) {
            return false;
        }
        self.place.insert(sub.id, self.list.len());
        self.list.push(sub.clone());
        true
    }

    /// False when no subscription `id` was attached.
    fn remove(&mut self, id: u64) -> bool {
        let Some(i) = self.place.remove(&id) else {
            return false;
        };
        self.list.swap_remove(i);
        if let Some(moved) = self.list.get(i) {
            self.place.insert(moved.id, i);
        }
        true
    }
}

impl Topic {
    pub(crate) fn new(dest: Destination, limits: DestinationLimits, owner: u64) -> Topic {
        let counters = Arc::new(DestinationCounters::new(dest.clone(), limits.memory_limit));
        Topic {
            dest,
            limits: RwLock::new(limits),
            counters,
            owner,
            deleted: AtomicBool::new(false),
            subs: RwLock::new(Subscribers::default()),
            retained: parking_lot::Mutex::new(RetainedSlot::default()),
        }
    }

    /// The retained message, unless it has expired.
    pub(crate) fn retained(&self, now: u64) -> Option<Arc<Message>> {
        let mut slot = self.retained.lock();
        if slot.msg.as_ref().is_some_and(|m| m.is_expired(now)) {
            slot.msg = None;
        }
        slot.msg.clone()
    }

    /// The retained message and the journal record that set it, expired or not (a checkpoint).
    pub(crate) fn retained_state(&self) -> (u64, Option<Arc<Message>>) {
        let slot = self.retained.lock();
        (slot.index, slot.msg.clone())
    }

    /// Makes a retained `msg` the retained message (an empty one clears it), unless a later
    /// journal record already set it.
    pub(super) fn retain(&self, msg: &Arc<Message>) {
        let index = msg.retain_index.max(msg.store_index);
        let mut slot = self.retained.lock();
        if index >= slot.index {
            slot.index = index;
            slot.msg = (!msg.body.is_empty()).then(|| msg.clone());
        }
    }

    pub(crate) fn limits(&self) -> DestinationLimits {
        *self.limits.read()
    }

    /// Takes a new policy (its subscriptions take theirs through [`TopicSub::set_limits`]).
    pub(crate) fn set_limits(&self, limits: DestinationLimits) {
        *self.limits.write() = limits;
        self.counters.set_memory_limit(limits.memory_limit);
    }

    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub(crate) fn publish(&self, msg: Arc<Message>, dead: &mut Effects) {
        DestinationCounters::add(&self.counters.enqueued, 1);
        if msg.is_retained() {
            self.retain(&msg);
        }
        let subs = self.subs.read();
        for sub in subs.list.iter() {
            sub.offer(&msg, &self.counters, dead);
        }
    }

    /// Publishes a run of plain messages (none retained) in order: each subscription takes the
    /// whole run under one lock, as if they had been published one by one.
    pub(crate) fn publish_all(&self, msgs: &[Arc<Message>], dead: &mut Effects) {
        match msgs {
            [] => return,
            [one] => return self.publish(one.clone(), dead),
            _ => {}
        }
        DestinationCounters::add(&self.counters.enqueued, msgs.len() as u64);
        let subs = self.subs.read();
        for sub in subs.list.iter() {
            sub.offer_all(msgs, &self.counters, dead);
        }
    }

    pub(crate) fn attach(&self, sub: &Arc<TopicSub>) {
        let _ = sub.home.set(self.counters.clone());
        if self.subs.write().insert(sub) {
            DestinationCounters::add(&self.counters.consumers, 1);
        }
    }

    pub(crate) fn detach(&self, sub_id: u64) {
        if self.subs.write().remove(sub_id) {
            self.counters.consumers.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// True when a durable subscription is attached (persistent messages are then journaled).
    pub(crate) fn has_durable(&self) -> bool {
        self.subs.read().list.iter().any(|s| s.durable.is_some())
    }

    pub(crate) fn subscriptions(&self) -> Vec<Arc<TopicSub>> {
        self.subs.read().list.clone()
    }

    pub(crate) fn delete(&self) -> Vec<Arc<TopicSub>> {
        self.deleted.store(true, Ordering::Release);
        std::mem::take(&mut *self.subs.write()).list
    }
}

/// The consumer currently attached to a subscription.
#[derive(Debug)]
struct Attached {
    outbox: Arc<Outbox>,
    subscription: u64,
    prefetch: usize,
    connection: u64,
}

/// Bytes counted for one pending entry beyond its message's charge (the entry itself and its
/// slot), so that a subscriber's limit also bounds what its list costs when the message is
/// shared with thousands of other subscribers.
const ENTRY_OVERHEAD: u64 = 64;

/// A subscription's messages not yet handed to its consumer, what they weigh, and how many of
/// them can expire (so the periodic sweep passes over the many backlogs that hold none).
#[derive(Debug, Default)]
struct Backlog {
    entries: VecDeque<Entry>,
    bytes: u64,
    expiring: usize,
}

impl Backlog {
    fn weight(e: &Entry) -> u64 {
        e.msg.charge.bytes() + ENTRY_OVERHEAD
    }

    fn count_in(&mut self, e: &Entry) {
        self.bytes += Self::weight(e);
        if e.msg.expires_at_ms != 0 {
            self.expiring += 1;
        }
    }

    fn push_back(&mut self, e: Entry) {
        self.count_in(&e);
        self.entries.push_back(e);
    }

    fn push_front(&mut self, e: Entry) {
        self.count_in(&e);
        self.entries.push_front(e);
    }

    fn pop_front(&mut self) -> Option<Entry> {
        let e = self.entries.pop_front()?;
        self.bytes -= Self::weight(&e);
        if e.msg.expires_at_ms != 0 {
            self.expiring -= 1;
        }
        Some(e)
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    fn take(&mut self) -> VecDeque<Entry> {
        self.bytes = 0;
        self.expiring = 0;
        std::mem::take(&mut self.entries)
    }
}

/// How much a non-durable subscription may hold pending before it loses its oldest.
#[derive(Debug, Clone, Copy)]
struct PendingLimit {
    /// 0: no count limit.
    messages: usize,
    /// 0: unbounded (durable subscriptions).
    bytes: u64,
}

impl PendingLimit {
    /// A durable subscription keeps everything (memory limits bound it); a non-durable one
    /// what its policy allows.
    fn of(durable: bool, limits: &DestinationLimits) -> PendingLimit {
        if durable {
            PendingLimit {
                messages: 0,
                bytes: 0,
            }
        } else {
            PendingLimit {
                messages: limits.topic_pending_limit,
                bytes: limits.topic_pending_size,
            }
        }
    }

    fn exceeded_by(&self, backlog: &Backlog) -> bool {
        (self.messages > 0 && backlog.len() > self.messages)
            || (self.bytes > 0 && backlog.bytes > self.bytes)
    }

    fn reached_by(&self, backlog: &Backlog) -> bool {
        (self.messages > 0 && backlog.len() >= self.messages)
            || (self.bytes > 0 && backlog.bytes >= self.bytes)
    }
}

#[derive(Debug, Default)]
struct SubState {
    /// Only messages one of these matches reach the subscription (all, when empty).
    selectors: Vec<Arc<Selector>>,
    attached: Option<Attached>,
    pending: Backlog,
    inflight: Inflight,
    next_seq: u64,
    /// The connection (session id) that attached last (0: none since start-up).
    last_connection: u64,
}

#[derive(Debug)]
pub struct TopicSub {
    pub(crate) id: u64,
    pub(crate) pattern: DestinationPattern,
    /// (client id, subscription name) of a durable subscription.
    pub(crate) durable: Option<(String, String)>,
    no_local: bool,
    /// A network consumer's filter (what it may forward).
    filter: Option<NetworkFilter>,
    /// `PendingLimit::messages` and `::bytes`, replaced in place by `meshmq apply`.
    pending_messages: AtomicUsize,
    pending_bytes: AtomicU64,
    max_redeliveries: AtomicU32,
    /// The counters of the first topic it was attached to (a plain subscription's only one).
    /// Its messages' gauge and counter changes are summed over a run of deliveries or acks and
    /// applied once: each is an atomic read-modify-write on a line every subscriber's thread
    /// writes. A message of another topic (a wildcard's) is counted on its own. Increments are
    /// applied before the subscription's lock is released, so a gauge never dips below zero.
    home: OnceLock<Arc<DestinationCounters>>,
    state: Mutex<SubState>,
}

impl TopicSub {
    pub(crate) fn new(
        id: u64,
        pattern: DestinationPattern,
        durable: Option<(String, String)>,
        no_local: bool,
        limits: &DestinationLimits,
        filter: Option<NetworkFilter>,
        selector: Option<Arc<Selector>>,
    ) -> TopicSub {
        TopicSub {
            id,
            filter,
            pending_messages: AtomicUsize::new(
                PendingLimit::of(durable.is_some(), limits).messages,
            ),
            pending_bytes: AtomicU64::new(PendingLimit::of(durable.is_some(), limits).bytes),
            max_redeliveries: AtomicU32::new(limits.max_redeliveries),
            pattern,
            durable,
            no_local,
            home: OnceLock::new(),
            state: Mutex::new(SubState {
                selectors: selector.into_iter().collect(),
                ..SubState::default()
            }),
        }
    }

    /// Takes a new policy: the pending limit applies from the next message published to it
    /// (a backlog over a lowered limit loses its oldest then), the redelivery limit from the
    /// next redelivery.
    pub(crate) fn set_limits(&self, limits: &DestinationLimits) {
        let limit = PendingLimit::of(self.durable.is_some(), limits);
        self.pending_messages
            .store(limit.messages, Ordering::Relaxed);
        self.pending_bytes.store(limit.bytes, Ordering::Relaxed);
        self.max_redeliveries
            .store(limits.max_redeliveries, Ordering::Relaxed);
    }

    /// Replaces what the subscription selects (a network consumer's remote consumers changed).
    pub(crate) fn set_selectors(&self, selectors: Vec<Arc<Selector>>) {
        self.state.lock().selectors = selectors;
    }

    /// A local subscription's selector (a durable one's is journaled with it); `None` when it
    /// takes every message.
    pub(crate) fn selector(&self) -> Option<Arc<Selector>> {
        self.state.lock().selectors.first().cloned()
    }

    fn pending_limit(&self) -> PendingLimit {
        PendingLimit {
            messages: self.pending_messages.load(Ordering::Relaxed),
            bytes: self.pending_bytes.load(Ordering::Relaxed),
        }
    }

    /// At its pending limit: the next message published drops its oldest.
    pub(crate) fn is_slow(&self) -> bool {
        let limit = self.pending_limit();
        limit.reached_by(&self.state.lock().pending)
    }

    fn offer(&self, msg: &Arc<Message>, counters: &DestinationCounters, dead: &mut Effects) {
        self.offer_all(std::slice::from_ref(msg), counters, dead);
    }

    /// Offers a run of messages of its topic, in order, under one lock: those it selects join
    /// its pending list, its consumer gets what its credit allows with one pump (one wake-up),
    /// and what is left over the pending limit loses its oldest — the same deliveries, order
    /// and drops as offering them one by one (credit does not change within the run, and
    /// trimming to the limit once keeps the same newest messages as trimming after each).
    fn offer_all(&self, msgs: &[Arc<Message>], counters: &DestinationCounters, dead: &mut Effects) {
        let mut st = self.state.lock();
        let mut fresh = 0;
        for msg in msgs {
            if !self.selects(&st, msg) {
                continue;
            }
            st.next_seq += 1;
            if self.durable.is_some() && msg.store_index != 0 {
                msg.durable_refs.fetch_add(1, Ordering::AcqRel);
            }
            let entry = Entry {
                msg: msg.clone(),
                seq: st.next_seq,
                redeliveries: msg.redeliveries,
                arrived_ms: 0,
            };
            st.pending.push_back(entry);
            fresh += 1;
        }
        if fresh == 0 {
            return;
        }
        // Counted as pending only if they stay so: most go straight to the consumer.
        let left = self.pump(&mut st, dead, fresh);
        if left > 0 {
            DestinationCounters::add(&counters.pending, left as u64);
        }
        // What the consumer has no credit for waits; past the limit the oldest goes, but never
        // the newest (a message larger than the limit still reaches a subscriber keeping up).
        let limit = self.pending_limit();
        while st.pending.len() > 1 && limit.exceeded_by(&st.pending) {
            let Some(old) = st.pending.pop_front() else {
                break;
            };
            old.msg.counters().pending.fetch_sub(1, Ordering::Relaxed);
            DestinationCounters::add(&old.msg.counters().dropped, 1);
        }
    }

    /// Whether `msg` reaches this subscription: its network filter, selectors and no-local.
    fn selects(&self, st: &SubState, msg: &Arc<Message>) -> bool {
        if let Some(f) = &self.filter {
            if !f.accepts(&msg.broker_path, 0, 0, 1) {
                return false;
            }
        }
        if !st.selectors.is_empty() && !st.selectors.iter().any(|s| s.matches(&**msg)) {
            return false;
        }
        if self.no_local {
            if let Some(a) = &st.attached {
                if msg.origin != 0 && a.connection == msg.origin {
                    return false;
                }
            }
        }
        true
    }

    /// Moves pending messages to the attached consumer while it has credit. The newest `fresh`
    /// pending entries were just offered and are not counted as pending yet; returns how many
    /// of them it left pending.
    fn pump(&self, st: &mut SubState, dead: &mut Effects, fresh: usize) -> usize {
        let Some(attached) = &st.attached else {
            return fresh;
        };
        let home = self.home.get();
        let mut outbox = attached.outbox.batch();
        let mut now: Option<u64> = None;
        let (mut fresh_left, mut left_home, mut home_inflight) = (fresh, 0u64, 0u64);
        while st.inflight.len() < attached.prefetch {
            let Some(entry) = st.pending.pop_front() else {
                break;
            };
            // It was one of the fresh ones if no more than they were pending before it left.
            let counted = st.pending.len() >= fresh_left;
            if !counted {
                fresh_left -= 1;
            }
            // Borrowed, not cloned: a clone and drop of the shared counters' `Arc` per delivery
            // would be two atomic read-modify-writes on a line every subscriber's thread uses.
            let counters = entry.msg.counters();
            let at_home = home.is_some_and(|h| Arc::ptr_eq(h, counters));
            match (counted, at_home) {
                (false, _) => {}
                (true, true) => left_home += 1,
                (true, false) => {
                    counters.pending.fetch_sub(1, Ordering::Relaxed);
                }
            }
            if entry.msg.expires_at_ms != 0 && entry.msg.is_expired(*now.get_or_insert_with(now_ms))
            {
                DestinationCounters::add(&counters.expired, 1);
                if entry.msg.persistent {
                    DestinationCounters::add(&counters.dead_lettered, 1);
                    dead.push(entry, DeadReason::Expired);
                }
                continue;
            }
            if at_home {
                home_inflight += 1;
            } else {
                DestinationCounters::add(&counters.inflight, 1);
            }
            let message = entry.msg.clone();
            let redelivery_count = entry.redeliveries;
            let tag = st.inflight.push(entry);
            outbox.push(Delivery {
                subscription: attached.subscription,
                tag,
                redelivery_count,
                message,
            });
        }
        if let Some(h) = home {
            if home_inflight > 0 {
                DestinationCounters::add(&h.inflight, home_inflight);
            }
            if left_home > 0 {
                h.pending.fetch_sub(left_home, Ordering::Relaxed);
            }
        }
        fresh_left
    }

    /// Attaches a consumer (a new subscription, or a durable one coming back).
    pub(crate) fn attach_consumer(
        &self,
        outbox: Arc<Outbox>,
        subscription: u64,
        prefetch: u32,
        connection: u64,
        dead: &mut Effects,
    ) -> bool {
        let mut st = self.state.lock();
        if st.attached.is_some() {
            return false;
        }
        st.attached = Some(Attached {
            outbox,
            subscription,
            prefetch: prefetch.max(1) as usize,
            connection,
        });
        st.last_connection = connection;
        self.pump(&mut st, dead, 0);
        true
    }

    /// Detaches the consumer; its unacknowledged deliveries return to pending (redelivered).
    pub(crate) fn detach_consumer(&self, dead: &mut Effects) {
        let mut st = self.state.lock();
        st.attached = None;
        let returned: Vec<Entry> = st.inflight.drain().collect();
        self.requeue(&mut st, returned, dead);
    }

    pub(crate) fn no_local(&self) -> bool {
        self.no_local
    }

    pub(crate) fn is_active(&self) -> bool {
        self.state.lock().attached.is_some()
    }

    /// The session that attached to it last (0: none since start-up).
    pub(crate) fn last_connection(&self) -> u64 {
        self.state.lock().last_connection
    }

    fn requeue(&self, st: &mut SubState, mut entries: Vec<Entry>, dead: &mut Effects) {
        entries.sort_by_key(|e| std::cmp::Reverse(e.seq));
        for mut e in entries {
            let counters = e.msg.counters().clone();
            counters.inflight.fetch_sub(1, Ordering::Relaxed);
            e.redeliveries += 1;
            DestinationCounters::add(&counters.redelivered, 1);
            if e.redeliveries > self.max_redeliveries.load(Ordering::Relaxed) {
                DestinationCounters::add(&counters.dead_lettered, 1);
                if let Some(key) = &self.durable {
                    dead.removed_from_durable(&e.msg, key);
                }
                dead.push(e, DeadReason::RedeliveryLimit);
            } else {
                DestinationCounters::add(&counters.pending, 1);
                st.pending.push_front(e);
            }
        }
    }

    /// An expired message leaves: persistent ones go to the DLQ, a journaled one's durable
    /// hold is recorded as removed.
    fn expire(&self, entry: Entry, counters: &DestinationCounters, dead: &mut Effects) {
        DestinationCounters::add(&counters.expired, 1);
        if let Some(key) = &self.durable {
            dead.removed_from_durable(&entry.msg, key);
        }
        if entry.msg.persistent {
            DestinationCounters::add(&counters.dead_lettered, 1);
            dead.push(entry, DeadReason::Expired);
        }
    }

    pub(crate) fn ack(&self, up_to: u64, tags: &[u64], dead: &mut Effects) -> AckOutcome {
        let mut st = self.state.lock();
        let (mut acked, mut at_home) = (0, 0u64);
        let durable = self.durable.as_ref();
        let home = self.home.get();
        let unknown = st.inflight.remove(up_to, tags, |e| {
            let c = e.msg.counters();
            if home.is_some_and(|h| Arc::ptr_eq(h, c)) {
                at_home += 1;
            } else {
                c.inflight.fetch_sub(1, Ordering::Relaxed);
                DestinationCounters::add(&c.dequeued, 1);
            }
            if let Some(key) = durable {
                dead.removed_from_durable(&e.msg, key);
            }
            acked += 1;
        });
        if let (Some(h), true) = (home, at_home > 0) {
            h.inflight.fetch_sub(at_home, Ordering::Relaxed);
            DestinationCounters::add(&h.dequeued, at_home);
        }
        self.pump(&mut st, dead, 0);
        AckOutcome { acked, unknown }
    }

    pub(crate) fn nack(&self, tags: &[u64], dead: &mut Effects) -> AckOutcome {
        let mut st = self.state.lock();
        let mut returned = Vec::new();
        let unknown = st.inflight.remove(0, tags, |e| returned.push(e));
        let acked = returned.len();
        self.requeue(&mut st, returned, dead);
        self.pump(&mut st, dead, 0);
        AckOutcome { acked, unknown }
    }

    /// Forgets every message held (the subscription is being removed).
    pub(crate) fn clear(&self, dead: &mut Effects) {
        let mut st = self.state.lock();
        st.attached = None;
        for e in st.pending.take() {
            e.msg.counters().pending.fetch_sub(1, Ordering::Relaxed);
            dead.dropped_with_durable(&e.msg);
        }
        for e in st.inflight.drain() {
            e.msg.counters().inflight.fetch_sub(1, Ordering::Relaxed);
            dead.dropped_with_durable(&e.msg);
        }
    }

    /// Journal indexes and redelivery counts of the journaled messages held (checkpoints).
    pub(crate) fn journaled(&self) -> Vec<(u64, u32)> {
        let st = self.state.lock();
        let mut out: Vec<(u64, u32)> = st
            .pending
            .iter()
            .chain(st.inflight.iter())
            .filter(|e| e.msg.store_index != 0)
            .map(|e| (e.msg.store_index, e.redeliveries))
            .collect();
        out.sort_unstable();
        out
    }

    /// Puts a recovered message back (durable subscriptions after a restart).
    pub(crate) fn restore(&self, msg: Arc<Message>, redeliveries: u32) {
        let mut st = self.state.lock();
        st.next_seq += 1;
        let seq = st.next_seq;
        DestinationCounters::add(&msg.counters().pending, 1);
        st.pending.push_back(Entry {
            msg,
            seq,
            redeliveries,
            arrived_ms: 0,
        });
    }

    pub(crate) fn sweep_expired(&self, now: u64, dead: &mut Effects) {
        let mut st = self.state.lock();
        if st.pending.expiring == 0 || !st.pending.iter().any(|e| e.msg.is_expired(now)) {
            return;
        }
        for e in st.pending.take() {
            if e.msg.is_expired(now) {
                let c = e.msg.counters().clone();
                c.pending.fetch_sub(1, Ordering::Relaxed);
                self.expire(e, &c, dead);
            } else {
                st.pending.push_back(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `s`'s outbox holds, drained: each delivery's body as text, with its tag.
    fn drained(s: &crate::broker::Session) -> Vec<(String, u64)> {
        let mut out = VecDeque::new();
        s.outbox().drain_into(&mut out);
        out.into_iter()
            .map(|d| (String::from_utf8_lossy(&d.message.body).into_owned(), d.tag))
            .collect()
    }

    fn sub(id: u64) -> Arc<TopicSub> {
        Arc::new(TopicSub::new(
            id,
            DestinationPattern::parse("topic://t").expect("valid pattern"),
            None,
            false,
            &DestinationLimits::default(),
            None,
            None,
        ))
    }

    /// Every attached subscription is in the list exactly once and its recorded place is
    /// where it is.
    fn assert_consistent(subs: &Subscribers, expected: &[u64]) {
        let mut ids: Vec<u64> = subs.list.iter().map(|s| s.id).collect();
        ids.sort_unstable();
        assert_eq!(ids, expected);
        assert_eq!(subs.place.len(), subs.list.len());
        for (i, s) in subs.list.iter().enumerate() {
            assert_eq!(subs.place.get(&s.id), Some(&i), "place of {}", s.id);
        }
    }

    #[test]
    fn subscribers_stay_consistent_through_attach_and_detach() {
        let mut subs = Subscribers::default();
        for id in 1..=6 {
            assert!(subs.insert(&sub(id)));
        }
        assert!(!subs.insert(&sub(3)), "attached twice");
        assert_consistent(&subs, &[1, 2, 3, 4, 5, 6]);
        assert!(subs.remove(2), "from the middle");
        assert_consistent(&subs, &[1, 3, 4, 5, 6]);
        let last = subs.list.last().map(|s| s.id).expect("not empty");
        assert!(subs.remove(last), "the last one");
        assert!(!subs.remove(last), "detached twice");
        assert!(!subs.remove(99), "never attached");
        assert!(subs.remove(1), "the first one");
        let mut left: Vec<u64> = [3, 4, 5, 6].into_iter().filter(|i| *i != last).collect();
        left.sort_unstable();
        assert_consistent(&subs, &left);
        for id in left {
            assert!(subs.remove(id));
        }
        assert_consistent(&subs, &[]);
        assert!(subs.insert(&sub(2)), "a detached id may come back");
        assert_consistent(&subs, &[2]);
    }

    /// Each subscriber of a topic gets each message once, in order, and the topic's gauges and
    /// counters (summed per run of deliveries and acks for a subscription's home topic, one by
    /// one for a wildcard's other topics) say what is pending, in flight and acknowledged at
    /// every step and come back to zero.
    #[test]
    fn each_topic_subscriber_gets_each_message_once_and_the_counts_balance() {
        use crate::broker::{Broker, BrokerSettings, Session, SubscribeSpec, DEFAULT_PRIORITY};
        use crate::metrics::DestinationStats;

        let b = Broker::new(BrokerSettings::default());
        let subscribe = |s: &mut Session, pattern: &str, prefetch: u32| {
            s.subscribe(SubscribeSpec {
                subscription: 1,
                destination: DestinationPattern::parse(pattern).expect("valid pattern"),
                selector: String::new(),
                prefetch,
                priority: 0,
                durable_name: None,
                no_local: false,
            })
            .expect("subscribed");
        };
        let stats = |name: &str| -> DestinationStats {
            b.destination_stats()
                .into_iter()
                .find(|s| s.destination == name)
                .expect("the topic has stats")
        };
        let mut fast = b.open_session(None).unwrap();
        let mut slow = b.open_session(None).unwrap();
        let mut wild = b.open_session(None).unwrap();
        subscribe(&mut fast, "topic://t.a", 1000);
        subscribe(&mut slow, "topic://t.a", 3);
        // Attached to t.a first (its home), then to t.b, whose messages count one by one.
        subscribe(&mut wild, "topic://t.>", 1000);
        let mut p = b.open_session(None).unwrap();
        let (a, t_b) = (
            p.target(&Destination::parse("topic://t.a").unwrap())
                .unwrap(),
            p.target(&Destination::parse("topic://t.b").unwrap())
                .unwrap(),
        );
        for i in 0..10u32 {
            for target in [&a, &t_b] {
                let m = Message {
                    body: bytes::Bytes::from(i.to_string()),
                    priority: DEFAULT_PRIORITY,
                    ..Message::default()
                };
                p.publish(target, m).unwrap();
            }
        }
        let numbers = |d: &[(String, u64)]| d.iter().map(|(b, _)| b.clone()).collect::<Vec<_>>();
        let ten: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        let got_fast = drained(&fast);
        assert_eq!(
            numbers(&got_fast),
            ten,
            "the fast subscriber: each once, in order"
        );
        let got_wild = drained(&wild);
        assert_eq!(
            got_wild.len(),
            20,
            "the wildcard: each message of both topics once"
        );
        let got_slow = drained(&slow);
        assert_eq!(numbers(&got_slow), ten[..3], "the slow one: its prefetch");
        let ta = stats("topic://t.a");
        assert_eq!(
            (ta.pending, ta.inflight),
            (7, 10 + 10 + 3),
            "t.a before any ack"
        );
        let tb = stats("topic://t.b");
        assert_eq!((tb.pending, tb.inflight), (0, 10), "t.b before any ack");

        fast.ack(1, got_fast[9].1, &[]).unwrap();
        wild.ack(1, got_wild[19].1, &[]).unwrap();
        slow.ack(1, 0, &[got_slow[0].1, got_slow[1].1, got_slow[2].1])
            .unwrap();
        let mut rest = drained(&slow);
        assert_eq!(numbers(&rest), ten[3..6], "credit back: the next three");
        while let Some((_, last)) = rest.last().cloned() {
            slow.ack(1, last, &[]).unwrap();
            rest = drained(&slow);
        }
        let (ta, tb) = (stats("topic://t.a"), stats("topic://t.b"));
        assert_eq!(
            (ta.pending, ta.inflight, ta.dequeued),
            (0, 0, 30),
            "t.a acknowledged"
        );
        assert_eq!(
            (tb.pending, tb.inflight, tb.dequeued),
            (0, 0, 10),
            "t.b acknowledged"
        );
    }

    /// A run of messages offered to each subscription at once (`Session::publish_run`, one
    /// lock per subscription) reaches every subscriber exactly as the same messages published
    /// one by one: each subscriber with credit gets each message once, in order; a slow one
    /// gets its prefetch and then the newest its pending limit keeps, the rest counted
    /// dropped; a no-local subscriber of the producer's own connection gets none; the gauges
    /// and counters agree.
    #[test]
    fn a_run_published_at_once_reaches_each_subscriber_as_one_by_one() {
        use crate::broker::{Broker, BrokerSettings, Session, SubscribeSpec, DEFAULT_PRIORITY};

        let run = |at_once: bool| {
            let mut settings = BrokerSettings::default();
            settings.defaults.topic_pending_limit = 4;
            let b = Broker::new(settings);
            let subscribe = |s: &mut Session, prefetch: u32, no_local: bool| {
                s.subscribe(SubscribeSpec {
                    subscription: 1,
                    destination: DestinationPattern::parse("topic://t").expect("valid pattern"),
                    selector: String::new(),
                    prefetch,
                    priority: 0,
                    durable_name: None,
                    no_local,
                })
                .expect("subscribed");
            };
            let mut fast = b.open_session(None).unwrap();
            let mut slow = b.open_session(None).unwrap();
            let mut p = b.open_session(None).unwrap();
            subscribe(&mut fast, 1000, false);
            subscribe(&mut slow, 3, false);
            subscribe(&mut p, 1000, true);
            let target = p.target(&Destination::parse("topic://t").unwrap()).unwrap();
            let mut held = Vec::new();
            for i in 0..20u32 {
                let m = Message {
                    body: bytes::Bytes::from(i.to_string()),
                    priority: DEFAULT_PRIORITY,
                    ..Message::default()
                };
                if at_once {
                    let (_, staged) = p.stage(&target, m).unwrap().expect("not a re-send");
                    held.push(staged);
                } else {
                    p.publish(&target, m).unwrap();
                }
            }
            if at_once {
                p.publish_run(&target, &mut held);
                assert!(held.is_empty());
            }
            let stats = || {
                let s = b
                    .destination_stats()
                    .into_iter()
                    .find(|s| s.destination == "topic://t")
                    .expect("the topic has stats");
                (s.enqueued, s.pending, s.inflight, s.dropped, s.dequeued)
            };
            let got_fast = drained(&fast);
            let mut got_slow = drained(&slow);
            let own = drained(&p);
            let before_acks = stats();
            fast.ack(1, got_fast.last().expect("delivered").1, &[])
                .unwrap();
            let mut slow_all: Vec<String> = Vec::new();
            while let Some((_, last)) = got_slow.last().cloned() {
                slow_all.extend(got_slow.iter().map(|(b, _)| b.clone()));
                slow.ack(1, last, &[]).unwrap();
                got_slow = drained(&slow);
            }
            let bodies = |d: &[(String, u64)]| d.iter().map(|(b, _)| b.clone()).collect::<Vec<_>>();
            (bodies(&got_fast), slow_all, own.len(), before_acks, stats())
        };
        let one_by_one = run(false);
        let at_once = run(true);
        assert_eq!(at_once, one_by_one, "the same deliveries, drops and counts");
        let (fast, slow, own, before, after) = at_once;
        let all: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        assert_eq!(fast, all, "the fast subscriber: each once, in order");
        let kept: Vec<String> = ["0", "1", "2", "16", "17", "18", "19"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            slow, kept,
            "the slow one: its prefetch, then the newest four"
        );
        assert_eq!(own, 0, "no-local: none of its own connection's messages");
        assert_eq!(
            before,
            (20, 4, 23, 13, 0),
            "enqueued, pending, inflight, dropped, dequeued"
        );
        assert_eq!(after, (20, 0, 0, 13, 27), "all acknowledged");
    }
}
