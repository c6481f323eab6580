//! A queue: pending messages in priority lanes, competing consumers in priority bands, and
//! credit-based dispatch.
//!
//! Dispatch rule: the next message goes to the first consumer, in the highest priority band,
//! that has prefetch credit, starting after the consumer served last in that band
//! (round-robin inside a priority, as ActiveMQ's `useConsumerPriority`). A consumer with a
//! weight above 1 — a conduit network consumer standing for several remote consumers — is
//! served that many times in a row before its turn passes, so a group's share of a queue
//! follows its number of consumers, not its number of network consumers. A message leaves the
//! queue only when acknowledged; until then it sits in its consumer's in-flight list and goes
//! back to the queue (flagged redelivered) if the consumer leaves or nacks it.
//! Everything is under one lock per queue; the only lock taken inside it is an outbox's.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

mod lanes;

use lanes::Lanes;
pub(crate) use lanes::{QEntry, Slot};

use super::inflight::Inflight;
use super::memory::ReleaseBatch;
use super::message::{Delivery, Entry, Message};
use super::outbox::Outbox;
use super::stats::DestinationCounters;
use super::{now_ms, DestinationLimits, Effects};
use crate::destination::Destination;
use crate::selector::Selector;

/// Pending entries a picky consumer (a network consumer, or one with a selector) looks through
/// for one it takes.
const FILTER_SCAN: usize = 512;

/// What a network consumer forwards: not back to a group the message came through, not past
/// `message_ttl` — unless it is a replay.
#[derive(Debug, Clone)]
pub struct NetworkFilter {
    /// The group the consumer forwards to.
    pub target: Arc<str>,
    pub message_ttl: u32,
    /// `Some(delay)`: a queue message parked here — this broker has no local consumer of the
    /// queue and the message has been here at least `delay` milliseconds — goes to the target
    /// even though the target is on its path or its path is `message_ttl` long (a replay).
    pub replay_after_ms: Option<u64>,
}

impl NetworkFilter {
    /// Whether a message with `path`, here since `arrived_ms`, may go to the target. A
    /// replay is what keeps a message from being stuck where its consumers left: the target
    /// has demand for it (this consumer stands for consumers there or beyond), so a replay
    /// moves it toward one, and the delay keeps it from bouncing. With the default
    /// `message_ttl` of 1 a forwarded message could otherwise never move again — neither back
    /// to its origin nor on to a third group — once the consumer it came for left.
    pub fn accepts(
        &self,
        path: &[Arc<str>],
        arrived_ms: u64,
        now_ms: u64,
        local_consumers: usize,
    ) -> bool {
        if path.len() < self.message_ttl as usize && !path.contains(&self.target) {
            return true;
        }
        match self.replay_after_ms {
            Some(delay) => local_consumers == 0 && now_ms.saturating_sub(arrived_ms) >= delay,
            None => false,
        }
    }
}

#[derive(Debug)]
struct Consumer {
    outbox: Arc<Outbox>,
    subscription: u64,
    prefetch: usize,
    priority: i32,
    /// Deliveries in a row before the band's turn passes on (at least 1).
    weight: u32,
    inflight: Inflight,
    takes: Takes,
}

/// Which messages a consumer takes: all, or only those its network filter and its selector
/// accept (the others stay for other consumers).
#[derive(Debug, Clone, Default)]
pub(crate) struct Takes {
    /// Network consumers only take what their filter accepts.
    pub filter: Option<NetworkFilter>,
    /// A message any of them matches; every message when empty. A local consumer has at most
    /// one; a network consumer has its remote consumers' (none if one of them has none).
    pub selectors: Vec<Arc<Selector>>,
}

impl Takes {
    /// Takes only some messages (and so looks for them instead of taking the head).
    fn is_picky(&self) -> bool {
        self.filter.is_some() || !self.selectors.is_empty()
    }
}

#[derive(Debug)]
struct Band {
    priority: i32,
    slots: Vec<usize>,
    /// Position in `slots` to try first (the one served last, while its weight lasts).
    cursor: usize,
    /// Deliveries made in a row to the consumer at `cursor`.
    streak: u32,
}

#[derive(Debug, Default)]
struct State {
    pending: Lanes,
    consumers: Vec<Option<Consumer>>,
    free_slots: Vec<usize>,
    bands: Vec<Band>,
    inflight: usize,
    next_seq: u64,
    /// Pending messages with an expiry, so sweeps skip queues that have none.
    expiring: usize,
    /// Consumers without a network filter (the replay rule asks whether there are any).
    local_consumers: usize,
    network_consumers: usize,
    /// Deliveries made by one dispatch round to the consumer in `batch_slot`, handed to its
    /// outbox together (one lock and one wake-up per consumer per round, not per message).
    batch: Vec<Delivery>,
    batch_slot: usize,
}

impl State {
    /// Puts a message (in memory or paged out) at the back of the pending ones. A message just
    /// published was stamped when received: no second clock read.
    fn push_pending(&mut self, slot: Slot, redeliveries: u32) {
        let arrived_ms = match &slot {
            Slot::Loaded(m) if m.received_ms != 0 => m.received_ms,
            _ => now_ms(),
        };
        self.next_seq += 1;
        let entry = QEntry {
            slot,
            seq: self.next_seq,
            redeliveries,
            arrived_ms,
        };
        if entry.expires_at_ms() != 0 {
            self.expiring += 1;
        }
        self.pending.push_back(entry);
    }

    /// Hands the batched deliveries to their consumer's outbox.
    fn flush_batch(&mut self) {
        if let Some(Some(c)) = self.consumers.get(self.batch_slot) {
            c.outbox.push_all(&mut self.batch);
        }
        self.batch.clear();
    }
}

impl State {
    /// (band, position) of the next consumer with credit, not among `skip`.
    fn pick(&self, skip: &[usize]) -> Option<(usize, usize)> {
        for (b, band) in self.bands.iter().enumerate() {
            let n = band.slots.len();
            for k in 0..n {
                let pos = (band.cursor + k) % n;
                let slot = band.slots[pos];
                if let Some(c) = &self.consumers[slot] {
                    if c.inflight.len() < c.prefetch && !skip.contains(&slot) {
                        return Some((b, pos));
                    }
                }
            }
        }
        None
    }
}

/// What a consumer-facing operation needs to tell its caller.
#[derive(Debug, PartialEq, Eq)]
pub struct AckOutcome {
    pub acked: usize,
    pub unknown: usize,
}

#[derive(Debug)]
pub struct Queue {
    pub(crate) dest: Destination,
    /// Its policy: read where it applies, replaced in place by `meshmq apply`.
    limits: RwLock<DestinationLimits>,
    pub(crate) counters: Arc<DestinationCounters>,
    /// The connection owning a temporary queue (0 for ordinary queues).
    pub(crate) owner: u64,
    /// Reads paged-out messages back (queues of a broker with a journal).
    pager: Option<Arc<dyn Pager>>,
    deleted: AtomicBool,
    state: Mutex<State>,
}

/// Reads a paged-out message back from the journal.
pub(crate) trait Pager: Send + Sync + std::fmt::Debug {
    fn load(&self, index: u64, counters: &Arc<DestinationCounters>) -> Option<Arc<Message>>;
}

impl Queue {
    pub(crate) fn new(
        dest: Destination,
        limits: DestinationLimits,
        owner: u64,
        pager: Option<Arc<dyn Pager>>,
    ) -> Queue {
        let counters = Arc::new(DestinationCounters::new(dest.clone(), limits.memory_limit));
        Queue {
            dest,
            limits: RwLock::new(limits),
            counters,
            owner,
            pager,
            deleted: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        }
    }

    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub(crate) fn limits(&self) -> DestinationLimits {
        *self.limits.read()
    }

    /// Takes a new policy: the memory cap and `on_full` apply to the next send, the redelivery
    /// limit to the next redelivery, the prefetch to the next subscription that names none.
    pub(crate) fn set_limits(&self, limits: DestinationLimits) {
        *self.limits.write() = limits;
        self.counters.set_memory_limit(limits.memory_limit);
    }

    fn is_dead_letter_queue(&self) -> bool {
        self.dest.name().starts_with("DLQ.")
    }

    pub(crate) fn enqueue(&self, msg: Arc<Message>, dead: &mut Effects) {
        let redeliveries = msg.redeliveries;
        self.enqueue_slot(Slot::Loaded(msg), redeliveries, dead);
    }

    /// Adds a run of messages just published, in order, under one lock and with one dispatch
    /// round: as if enqueued one by one (the round hands them out in the same order and turns),
    /// with one lock, one counter update and one dispatch for the run instead of one each.
    pub(crate) fn enqueue_all(&self, msgs: &mut Vec<Arc<Message>>, dead: &mut Effects) {
        if msgs.is_empty() {
            return;
        }
        let n = msgs.len() as u64;
        let mut st = self.state.lock();
        for msg in msgs.drain(..) {
            let redeliveries = msg.redeliveries;
            st.push_pending(Slot::Loaded(msg), redeliveries);
        }
        DestinationCounters::add(&self.counters.enqueued, n);
        self.dispatch(&mut st, dead);
    }

    /// Adds a message (in memory or paged out) with a redelivery count (recovered messages).
    pub(crate) fn enqueue_slot(&self, slot: Slot, redeliveries: u32, dead: &mut Effects) {
        let mut st = self.state.lock();
        st.push_pending(slot, redeliveries);
        DestinationCounters::add(&self.counters.enqueued, 1);
        self.dispatch(&mut st, dead);
    }

    pub(crate) fn add_consumer(
        &self,
        outbox: Arc<Outbox>,
        subscription: u64,
        prefetch: u32,
        priority: i32,
        takes: Takes,
        dead: &mut Effects,
    ) -> usize {
        let mut st = self.state.lock();
        if takes.filter.is_some() {
            st.network_consumers += 1;
        } else {
            st.local_consumers += 1;
        }
        let consumer = Consumer {
            outbox,
            subscription,
            prefetch: prefetch.max(1) as usize,
            priority,
            weight: 1,
            inflight: Inflight::default(),
            takes,
        };
        let slot = match st.free_slots.pop() {
            Some(s) => {
                st.consumers[s] = Some(consumer);
                s
            }
            None => {
                st.consumers.push(Some(consumer));
                st.consumers.len() - 1
            }
        };
        match st.bands.binary_search_by(|b| priority.cmp(&b.priority)) {
            Ok(b) => st.bands[b].slots.push(slot),
            Err(b) => st.bands.insert(
                b,
                Band {
                    priority,
                    slots: vec![slot],
                    cursor: 0,
                    streak: 0,
                },
            ),
        }
        DestinationCounters::add(&self.counters.consumers, 1);
        self.dispatch(&mut st, dead);
        slot
    }

    /// How many deliveries in a row the consumer in `slot` gets when its turn comes.
    pub(crate) fn set_weight(&self, slot: usize, weight: u32) {
        let mut st = self.state.lock();
        if let Some(c) = st.consumers.get_mut(slot).and_then(Option::as_mut) {
            c.weight = weight.max(1);
        }
    }

    /// Removes a consumer; its unacknowledged messages go back to the queue as redelivered.
    pub(crate) fn remove_consumer(&self, slot: usize, dead: &mut Effects) {
        let mut st = self.state.lock();
        let Some(mut consumer) = st.consumers.get_mut(slot).and_then(Option::take) else {
            return;
        };
        st.free_slots.push(slot);
        if consumer.takes.filter.is_some() {
            st.network_consumers -= 1;
        } else {
            st.local_consumers -= 1;
        }
        if let Ok(b) = st
            .bands
            .binary_search_by(|b| consumer.priority.cmp(&b.priority))
        {
            let band = &mut st.bands[b];
            if let Some(pos) = band.slots.iter().position(|&s| s == slot) {
                band.slots.remove(pos);
                if band.cursor > pos {
                    band.cursor -= 1;
                } else if band.cursor == pos {
                    band.streak = 0;
                }
                if band.slots.is_empty() {
                    st.bands.remove(b);
                } else {
                    band.cursor %= band.slots.len();
                }
            }
        }
        self.counters
            .consumers
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let returned: Vec<Entry> = consumer.inflight.drain().collect();
        st.inflight -= returned.len();
        self.requeue(&mut st, returned, dead);
        self.dispatch(&mut st, dead);
    }

    pub(crate) fn ack(
        &self,
        slot: usize,
        up_to: u64,
        tags: &[u64],
        dead: &mut Effects,
    ) -> AckOutcome {
        // Declared before the lock, so it releases the acknowledged messages' memory (and
        // wakes waiting producers) once, after the lock is let go.
        let mut released = ReleaseBatch::default();
        let mut st = self.state.lock();
        let Some(consumer) = st.consumers.get_mut(slot).and_then(Option::as_mut) else {
            return AckOutcome {
                acked: 0,
                unknown: tags.len(),
            };
        };
        let mut acked = 0;
        let unknown = consumer.inflight.remove(up_to, tags, |mut e| {
            dead.removed_from_queue(&e.msg);
            released.take_from(&mut e.msg);
            acked += 1;
        });
        st.inflight -= acked;
        DestinationCounters::add(&self.counters.dequeued, acked as u64);
        self.dispatch(&mut st, dead);
        AckOutcome { acked, unknown }
    }

    /// Returns the named deliveries to the queue for redelivery (or the DLQ).
    pub(crate) fn nack(&self, slot: usize, tags: &[u64], dead: &mut Effects) -> AckOutcome {
        let mut st = self.state.lock();
        let Some(consumer) = st.consumers.get_mut(slot).and_then(Option::as_mut) else {
            return AckOutcome {
                acked: 0,
                unknown: tags.len(),
            };
        };
        let mut returned = Vec::new();
        let unknown = consumer.inflight.remove(0, tags, |e| returned.push(e));
        let n = returned.len();
        st.inflight -= n;
        self.requeue(&mut st, returned, dead);
        self.dispatch(&mut st, dead);
        AckOutcome { acked: n, unknown }
    }

    /// Puts returned entries back at the front, in their original order, counting one more
    /// delivery attempt; entries past `max_redeliveries` go to the dead-letter queue.
    fn requeue(&self, st: &mut State, mut entries: Vec<Entry>, dead: &mut Effects) {
        if entries.is_empty() {
            return;
        }
        entries.sort_by_key(|e| std::cmp::Reverse(e.seq));
        for mut e in entries {
            e.redeliveries += 1;
            DestinationCounters::add(&self.counters.redelivered, 1);
            if e.redeliveries > self.limits().max_redeliveries && !self.is_dead_letter_queue() {
                DestinationCounters::add(&self.counters.dead_lettered, 1);
                dead.push(e, DeadReason::RedeliveryLimit);
            } else {
                if e.msg.expires_at_ms != 0 {
                    st.expiring += 1;
                }
                st.pending.push_front(QEntry::from_entry(e));
            }
        }
        self.update_gauges(st);
    }

    fn dispatch(&self, st: &mut State, dead: &mut Effects) {
        let mut now: Option<u64> = None;
        // Network consumers that found nothing they may take in this round.
        let mut skip: Vec<usize> = Vec::new();
        while st.pending.len > 0 {
            let Some((b, pos)) = st.pick(&skip) else {
                break;
            };
            let slot = st.bands[b].slots[pos];
            let qe = match st.consumers[slot]
                .as_ref()
                .map(|c| &c.takes)
                .filter(|t| t.is_picky())
            {
                None => st.pending.pop_front(),
                Some(c) => {
                    let t = *now.get_or_insert_with(now_ms);
                    let locals = st.local_consumers;
                    match st.pending.find(FILTER_SCAN, |e| {
                        c.filter
                            .as_ref()
                            .is_none_or(|f| f.accepts(e.path(), e.arrived_ms, t, locals))
                            && (c.selectors.is_empty() || self.selects(&c.selectors, e))
                    }) {
                        Some((lane, i)) => st.pending.remove(lane, i),
                        None => {
                            skip.push(slot);
                            continue;
                        }
                    }
                }
            };
            let Some(qe) = qe else {
                break;
            };
            // With nothing pending that can expire (the sweep trusts the same count), the
            // message is not read here: under a backlog it is cold, and this read was the
            // dispatch round's costliest load.
            if st.expiring > 0 && qe.expires_at_ms() != 0 {
                st.expiring = st.expiring.saturating_sub(1);
                if qe.is_expired(*now.get_or_insert_with(now_ms)) {
                    self.expire(qe, dead);
                    continue;
                }
            }
            let Some(entry) = self.load(qe) else { continue };
            let band = &mut st.bands[b];
            let slot = band.slots[pos];
            let Some(c) = st.consumers[slot].as_mut() else {
                break;
            };
            if band.cursor != pos {
                band.cursor = pos;
                band.streak = 0;
            }
            band.streak += 1;
            if band.streak >= c.weight {
                band.cursor = (pos + 1) % band.slots.len();
                band.streak = 0;
            }
            let message = entry.msg.clone();
            let redelivery_count = entry.redeliveries;
            let tag = c.inflight.push(entry);
            let delivery = Delivery {
                subscription: c.subscription,
                tag,
                redelivery_count,
                message,
            };
            if st.batch_slot != slot {
                st.flush_batch();
                st.batch_slot = slot;
            }
            st.batch.push(delivery);
            st.inflight += 1;
        }
        st.flush_batch();
        self.update_gauges(st);
    }

    /// Whether one of `selectors` matches a pending entry; a paged-out message is read back
    /// from the journal to be tested (and not kept: it stays paged out).
    fn selects(&self, selectors: &[Arc<Selector>], e: &QEntry) -> bool {
        let any = |m: &Message| selectors.iter().any(|s| s.matches(m));
        match &e.slot {
            Slot::Loaded(m) => any(m),
            Slot::Paged { index, .. } => self
                .pager
                .as_ref()
                .and_then(|p| p.load(*index, &self.counters))
                .is_some_and(|m| any(&m)),
        }
    }

    /// Replaces what the consumer in `slot` selects, and dispatches what it may now take.
    pub(crate) fn set_selectors(
        &self,
        slot: usize,
        selectors: Vec<Arc<Selector>>,
        dead: &mut Effects,
    ) {
        let mut st = self.state.lock();
        if let Some(c) = st.consumers.get_mut(slot).and_then(Option::as_mut) {
            c.takes.selectors = selectors;
            self.dispatch(&mut st, dead);
        }
    }

    /// Makes a pending entry deliverable, reading a paged-out message back.
    fn load(&self, qe: QEntry) -> Option<Entry> {
        let msg = match qe.slot {
            Slot::Loaded(m) => m,
            Slot::Paged { index, .. } => {
                let loaded = self
                    .pager
                    .as_ref()
                    .and_then(|p| p.load(index, &self.counters));
                match loaded {
                    Some(m) => m,
                    None => {
                        tracing::error!(destination = %self.dest, index, "a paged-out message could not be read back from the journal; it is skipped");
                        return None;
                    }
                }
            }
        };
        Some(Entry {
            msg,
            seq: qe.seq,
            redeliveries: qe.redeliveries,
            arrived_ms: qe.arrived_ms,
        })
    }

    fn expire(&self, qe: QEntry, dead: &mut Effects) {
        DestinationCounters::add(&self.counters.expired, 1);
        let persistent = match &qe.slot {
            Slot::Loaded(m) => m.persistent,
            Slot::Paged { .. } => true,
        };
        if persistent && !self.is_dead_letter_queue() {
            if let Some(entry) = self.load(qe) {
                DestinationCounters::add(&self.counters.dead_lettered, 1);
                dead.push(entry, DeadReason::Expired);
            }
        } else if let Slot::Loaded(m) = &qe.slot {
            dead.removed_from_queue(m);
        }
    }

    fn update_gauges(&self, st: &State) {
        self.counters
            .pending
            .store(st.pending.len as u64, Ordering::Relaxed);
        self.counters
            .inflight
            .store(st.inflight as u64, Ordering::Relaxed);
    }

    /// Drops expired pending messages (persistent ones go to the DLQ).
    pub(crate) fn sweep_expired(&self, now: u64, dead: &mut Effects) {
        let mut st = self.state.lock();
        if st.expiring == 0 {
            return;
        }
        let removed = st.pending.retain(|e| !e.is_expired(now));
        st.expiring -= removed.len().min(st.expiring);
        for e in removed {
            self.expire(e, dead);
        }
        self.update_gauges(&st);
    }

    /// Deletes a temporary queue: nothing can be sent to it afterwards; its messages go.
    pub(crate) fn delete(&self) {
        self.deleted.store(true, Ordering::Release);
        let mut st = self.state.lock();
        st.pending.clear();
        st.expiring = 0;
        self.update_gauges(&st);
    }

    /// Dispatches again (replay delays expire with time, not with events).
    pub(crate) fn redispatch(&self, dead: &mut Effects) {
        let mut st = self.state.lock();
        if st.network_consumers > 0 && st.pending.len > 0 {
            self.dispatch(&mut st, dead);
        }
    }

    pub(crate) fn depth(&self) -> usize {
        let st = self.state.lock();
        st.pending.len + st.inflight
    }

    /// Flags redelivered the pending messages that connection `origin` published in the
    /// journal records `range` (a paged-out one by its record alone); returns how many were
    /// not flagged yet. In-flight ones were delivered already: theirs was the first copy.
    pub(crate) fn flag_in_doubt(&self, origin: u64, range: &RangeInclusive<u64>) -> usize {
        let mut st = self.state.lock();
        let mut flagged = 0;
        for e in st.pending.lanes.iter_mut().flatten() {
            let hit = match &e.slot {
                Slot::Loaded(m) => m.origin == origin && range.contains(&m.store_index),
                Slot::Paged { index, .. } => range.contains(index),
            };
            if hit && e.redeliveries == 0 {
                e.redeliveries = 1;
                flagged += 1;
            }
        }
        flagged
    }

    /// Journal indexes and redelivery counts of every journaled message held (checkpoints).
    pub(crate) fn journaled(&self) -> Vec<(u64, u32)> {
        let st = self.state.lock();
        let mut out: Vec<(u64, u32)> = st
            .pending
            .iter()
            .filter(|e| e.store_index() != 0)
            .map(|e| (e.store_index(), e.redeliveries))
            .collect();
        for c in st.consumers.iter().flatten() {
            out.extend(
                c.inflight
                    .iter()
                    .filter(|e| e.msg.store_index != 0)
                    .map(|e| (e.msg.store_index, e.redeliveries)),
            );
        }
        out.sort_unstable();
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    RedeliveryLimit,
    Expired,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::RedeliveryLimit => "redelivery limit exceeded",
            DeadReason::Expired => "expired",
        }
    }
}
