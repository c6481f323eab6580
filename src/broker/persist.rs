//! The broker's side of the journal: what is written when, what a checkpoint holds, and how a
//! broker is rebuilt from a recovered journal.
//!
//! A persistent message is journaled and becomes visible to consumers only once its record is
//! durable (per the sync mode), so nothing is delivered that a crash could take back; its
//! producer gets its receipt at the same moment. A message leaving a queue (ack, expiry,
//! dead-letter) is recorded after it left memory, and a checkpoint snapshot is taken with the
//! gate closed, so for every record before a checkpoint the checkpoint holds its effect.
//!
//! Dispatch after a sync runs in the journal's committer, where the commit happens: on the
//! journal's writer thread right after its sync, or on the replication task that publishes what
//! a quorum has — no hop to another thread on the way to the receipts (a sleeping thread's
//! wake-up costs a scheduling delay as long as the sync itself on a busy machine). One commit
//! is dispatched at a time, in order. The committer makes the messages up to that index
//! visible and counts them live in their segments, *then* publishes the index as the broker's
//! [`Broker::synced`]: whoever sees an index synced through the broker — a producer's receipt,
//! a checkpoint about to let segments go — finds its messages already visible and counted, and
//! no consumer ever sees a message whose receipt could still fail.
//!
//! A topic's retained message is journaled too, whatever its QoS (as mosquitto does): with the
//! message's own record when a durable subscription holds it, else as a `retained` record
//! written as it is published (live subscribers get it at once, as any topic message; a
//! persistent one's receipt waits for the record). A checkpoint holds every topic's retained
//! message whole, so the records that set them pin no segment.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use super::message::{Message, NewMessage};
use super::queue::{Pager, Slot};
use super::stats::DestinationCounters;
use super::{Broker, Destination, DestinationPattern, Effects, Kind, MemoryPool, Selector, Target};
use crate::store::proto::{self, record::Kind as RecordKind, Record};
use crate::store::{Recovered, Store, StoreError};

/// A journal removal to write (and a live count to release) after a lock is released.
#[derive(Debug)]
pub(crate) struct Removal {
    pub index: u64,
    pub durable: Option<(String, String)>,
    /// The last holder: the journal may let the record's segment go.
    pub release: bool,
    /// False when another record (DurableRemoved) already says it.
    pub record: bool,
}

/// A message waiting for a journal record to be durable before it becomes visible: its own
/// record, or the end marker of its transaction.
#[derive(Debug)]
struct Pending {
    index: u64,
    target: Target,
    msg: Arc<Message>,
    /// Its publisher's connection ended before confirming it (`Broker::flag_in_doubt`): it
    /// becomes visible flagged redelivered.
    in_doubt: bool,
}

impl Pending {
    fn redeliveries(&self) -> u32 {
        self.msg.redeliveries.max(self.in_doubt as u32)
    }
}

/// Producer high-water marks, for duplicate detection. Marks not touched for two pruning
/// rounds are forgotten once there are more than `cap` of them, unless a session holds one.
///
/// A session keeps the mark of the producer it last published for ([`ProducerMarks::cached`]),
/// so a producer's message costs one atomic on a line its own connection uses, not a hash of
/// its id and a shard lock. The mark a session holds stays in the map (pruning skips it), so
/// every holder of a producer's mark advances the same one.
#[derive(Debug)]
pub(crate) struct ProducerMarks {
    marks: DashMap<Bytes, Arc<ProducerMark>>,
    generation: AtomicU64,
    cap: usize,
}

/// One producer's high-water mark, and the pruning round that last saw it advance.
#[derive(Debug, Default)]
pub(crate) struct ProducerMark {
    sequence: AtomicU64,
    generation: AtomicU32,
}

impl ProducerMark {
    /// Records `seq`; false when it is not above the mark (a duplicate).
    fn advance(&self, seq: u64, generation: u32) -> bool {
        self.generation.store(generation, Ordering::Relaxed);
        self.sequence.fetch_max(seq, Ordering::Relaxed) < seq
    }
}

/// The mark of the producer a session last published for (see [`ProducerMarks::advance_cached`]).
pub(crate) type CachedMark = Option<(Bytes, Arc<ProducerMark>)>;

impl ProducerMarks {
    pub(crate) fn new(cap: usize) -> ProducerMarks {
        ProducerMarks {
            marks: DashMap::new(),
            generation: AtomicU64::new(0),
            cap,
        }
    }

    fn generation(&self) -> u32 {
        self.generation.load(Ordering::Relaxed) as u32
    }

    fn mark(&self, producer: &Bytes) -> Arc<ProducerMark> {
        if let Some(m) = self.marks.get(producer) {
            return m.clone();
        }
        self.marks.entry(producer.clone()).or_default().clone()
    }

    /// Records `seq` for `producer`; false when it is not above the mark (a duplicate).
    pub(crate) fn advance(&self, producer: &Bytes, seq: u64) -> bool {
        self.mark(producer).advance(seq, self.generation())
    }

    /// As [`ProducerMarks::advance`], through `cache`: the mark of the producer last seen
    /// there, replaced when `producer` is another.
    pub(crate) fn advance_cached(
        &self,
        cache: &mut CachedMark,
        producer: &Bytes,
        seq: u64,
    ) -> bool {
        let same = |id: &Bytes| {
            (id.as_ptr() == producer.as_ptr() && id.len() == producer.len()) || id == producer
        };
        let mark = match cache {
            Some((id, mark)) if same(id) => mark,
            _ => &cache.insert((producer.clone(), self.mark(producer))).1,
        };
        mark.advance(seq, self.generation())
    }

    pub(crate) fn prune(&self) {
        if self.marks.len() <= self.cap {
            return;
        }
        let now = self.generation.fetch_add(1, Ordering::Relaxed) as u32;
        // A mark a session holds is in use: removing it would let that session advance a
        // mark nobody else sees.
        self.marks.retain(|_, m| {
            Arc::strong_count(m) > 1 || now.wrapping_sub(m.generation.load(Ordering::Relaxed)) < 2
        });
    }

    fn snapshot(&self) -> Vec<proto::ProducerMark> {
        self.marks
            .iter()
            .map(|e| proto::ProducerMark {
                producer_id: e.key().clone(),
                sequence: e.value().sequence.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// The journal and what the broker keeps beside it.
pub(crate) struct Persistence {
    pub store: Store,
    /// Held (shared) by every operation that changes journaled state; a checkpoint holds it
    /// exclusively while it takes its snapshot.
    gate: RwLock<()>,
    visible: Mutex<VecDeque<Pending>>,
    /// Held while a commit is dispatched and published, so commits go one at a time, in order.
    dispatching: Mutex<()>,
    /// Every record up to this index is committed and its messages are visible: the
    /// committer moves it, after dispatching. It is also marked changed (without moving) when
    /// the journal fails or is fenced, so waiters look at why.
    pub(crate) synced: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Persistence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persistence")
            .field("store", &self.store)
            .finish()
    }
}

impl Persistence {
    pub(crate) fn new(store: Store) -> Persistence {
        let synced = tokio::sync::watch::Sender::new(store.journal().synced());
        Persistence {
            store,
            gate: RwLock::new(()),
            visible: Mutex::new(VecDeque::new()),
            dispatching: Mutex::new(()),
            synced,
        }
    }
}

pub(crate) fn added_record(msg: &Message) -> Record {
    Record {
        kind: Some(RecordKind::Added(added(msg))),
        tx: 0,
    }
}

/// The record that makes `msg` its topic's retained message (or, empty, clears it).
fn retained_record(msg: &Message, tx: u64) -> Record {
    Record {
        kind: Some(RecordKind::Retained(added(msg))),
        tx,
    }
}

fn added(msg: &Message) -> proto::MessageAdded {
    proto::MessageAdded {
        destination: msg.dest().as_str().to_string(),
        body: msg.body.clone(),
        headers: msg
            .headers
            .iter()
            .map(|(k, v)| proto::Header {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        priority: msg.priority as u32,
        expires_at_ms: msg.expires_at_ms,
        producer_id: msg.producer_id.clone(),
        sequence: msg.sequence,
        reply_to: msg.reply_to.clone(),
        correlation_id: msg.correlation_id.clone(),
        content_type: msg.content_type.clone(),
        timestamp_ms: msg.timestamp_ms,
        broker_path: msg.broker_path.iter().map(|g| g.to_string()).collect(),
        redelivery_count: 0,
        retain: msg.is_retained(),
        transient: !msg.persistent,
    }
}

/// A message rebuilt from its journal record (not yet charged to memory).
pub(crate) fn message_from_record(m: proto::MessageAdded, index: u64) -> Option<Message> {
    let destination = Destination::parse(&m.destination).ok()?;
    Some(Message {
        destination: Some(destination),
        body: m.body,
        headers: m.headers.into_iter().map(|h| (h.key, h.value)).collect(),
        persistent: !m.transient,
        priority: m.priority.min(9) as u8,
        expires_at_ms: m.expires_at_ms,
        producer_id: m.producer_id,
        sequence: m.sequence,
        reply_to: m.reply_to,
        correlation_id: m.correlation_id,
        content_type: m.content_type,
        timestamp_ms: m.timestamp_ms,
        broker_path: m.broker_path.into_iter().map(Arc::from).collect(),
        origin: 0,
        store_index: index,
        ..Message::default()
    })
}

/// Reads paged-out queue messages back from the journal.
#[derive(Debug)]
pub(crate) struct JournalPager {
    pub store: Store,
    pub memory: Arc<MemoryPool>,
}

impl Pager for JournalPager {
    fn load(&self, index: u64, counters: &Arc<DestinationCounters>) -> Option<Arc<Message>> {
        let record = match self.store.read_message(index) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(index, error = %e, "reading a paged-out message failed");
                return None;
            }
        };
        let mut msg = message_from_record(record, index)?;
        msg.charge = self.memory.charge(msg.memory_size(), counters);
        Some(Arc::new(msg))
    }
}

impl Broker {
    /// The shared side of the checkpoint gate (a no-op without a journal). Taken recursively so
    /// nested operations never wait behind a queued checkpoint.
    pub(crate) fn gate(&self) -> Option<RwLockReadGuard<'_, ()>> {
        self.inner
            .persistence
            .as_ref()
            .map(|p| p.gate.read_recursive())
    }

    pub fn store(&self) -> Option<&Store> {
        self.inner.persistence.as_ref().map(|p| &p.store)
    }

    /// Whether `msg` on `target` is journaled: persistent messages on queues, and on topics
    /// when a durable subscription will hold them. Temporary destinations never are.
    pub(crate) fn journals(&self, target: &Target, msg: &Message) -> bool {
        if !msg.persistent || self.inner.persistence.is_none() {
            return false;
        }
        match target {
            Target::Queue(q) => !q.dest.kind().is_temp(),
            Target::Topic(t) => !t.dest.kind().is_temp() && t.has_durable(),
        }
    }

    /// Whether `msg` on `target` is a retained topic message journaled with a `retained`
    /// record: one [`Broker::journals`] does not journal as a message, on a topic that is not
    /// temporary, whatever its QoS.
    pub(crate) fn journals_retained(&self, target: &Target, msg: &Message) -> bool {
        match target {
            Target::Topic(t) => {
                self.inner.persistence.is_some()
                    && msg.is_retained()
                    && !t.dest.kind().is_temp()
                    && !self.journals(target, msg)
            }
            Target::Queue(_) => false,
        }
    }

    /// Journals what makes `msg` its topic's retained message (the caller holds the gate, and
    /// checked [`Broker::journals_retained`]); returns the record's index, also kept in `msg`.
    pub(crate) fn journal_retained(&self, msg: &mut Message, tx: u64) -> u64 {
        let index = self.journal_record(retained_record(msg, tx));
        msg.retain_index = index;
        index
    }

    /// Journals `msg` (the caller holds the gate); it becomes visible once durable.
    pub(crate) fn journal_publish(&self, target: &Target, mut msg: NewMessage) -> u64 {
        let p = self
            .inner
            .persistence
            .as_ref()
            .expect("journal_publish needs a journal");
        let payload = prost::Message::encode_to_vec(&added_record(&msg));
        let mut visible = p.visible.lock();
        let index = p.store.journal().append(&payload);
        msg.store_index = index;
        visible.push_back(Pending {
            index,
            target: target.clone(),
            msg: msg.into_shared(),
            in_doubt: false,
        });
        index
    }

    /// Flags redelivered the queue messages that connection `origin` published in journal
    /// records `(after, upto]` and no consumer has taken yet, waiting to be durable or
    /// queued (see `Session::flag_unconfirmed`). Under the closed gate, so a message moving
    /// from pending to its queue is found in one or the other; a flag lives in the queue and
    /// in the checkpoint, so it holds across a graceful restart (after a crash every
    /// recovered message is flagged anyway). A paged-out message keeps no publisher: one
    /// journaled in the range is flagged whoever sent it (a flag too many, never too few).
    pub(crate) fn flag_in_doubt(&self, origin: u64, after: u64, upto: u64) {
        let Some(p) = &self.inner.persistence else {
            return;
        };
        let range = after + 1..=upto;
        let _closed = p.gate.write();
        let mut flagged = 0;
        for pending in p.visible.lock().iter_mut() {
            if pending.msg.origin == origin && range.contains(&pending.msg.store_index) {
                pending.in_doubt = true;
                flagged += 1;
            }
        }
        for q in self.inner.queues.iter() {
            flagged += q.flag_in_doubt(origin, &range);
        }
        if flagged > 0 {
            tracing::debug!(
                flagged,
                after,
                upto,
                "a connection ended before confirming its sends; they are flagged redelivered"
            );
        }
    }

    /// Appends a non-message record (durable subscription changes); returns its index.
    pub(crate) fn journal_record(&self, record: Record) -> u64 {
        match &self.inner.persistence {
            Some(p) => p.store.append(&record),
            None => 0,
        }
    }

    /// The committer's work for a commit: makes the messages up to `upto` visible, then
    /// publishes `upto` as synced (also when nothing moved: the journal may have failed).
    pub(crate) fn on_synced(&self, upto: u64) {
        let Some(p) = &self.inner.persistence else {
            return;
        };
        let _one = p.dispatching.lock();
        crate::metrics::commit_profile::dispatch_began();
        let began = std::time::Instant::now();
        self.dispatch_synced(p, upto);
        p.synced.send_modify(|synced| *synced = (*synced).max(upto));
        crate::metrics::commit_profile::record_since(
            crate::metrics::commit_profile::Stage::Dispatch,
            began,
        );
        crate::metrics::commit_profile::dispatched();
    }

    /// Makes the broker the journal's committer (see the module doc), then publishes what was
    /// committed before.
    fn start_committing(&self) {
        let Some(p) = &self.inner.persistence else {
            return;
        };
        let journal = p.store.journal();
        let broker = Arc::downgrade(&self.inner);
        journal.set_committer(Box::new(move |upto| {
            if let Some(inner) = broker.upgrade() {
                Broker { inner }.on_synced(upto);
            }
        }));
        // Commits the committer was not told about: the restore's own records.
        self.on_synced(journal.synced());
    }

    fn dispatch_synced(&self, p: &Persistence, upto: u64) {
        // The gate first: a checkpoint snapshot must find each message either still pending
        // or already on its destination. Taken out of `visible` before the gate, a message
        // could be in neither for a checkpoint that then covers its record — lost on recovery.
        let _gate = self.gate();
        let ready: Vec<Pending> = {
            let mut visible = p.visible.lock();
            let n = visible.iter().take_while(|e| e.index <= upto).count();
            visible.drain(..n).collect()
        };
        if ready.is_empty() {
            return;
        }
        let mut effects = Effects::default();
        for pending in ready {
            let redeliveries = pending.redeliveries();
            if pending.msg.store_index != 0 {
                p.store.journal().retain(pending.msg.store_index);
            }
            match &pending.target {
                Target::Queue(q) => {
                    let memory = &self.inner.memory;
                    let over = !memory.has_room(&q.counters);
                    if over && pending.msg.store_index != 0 {
                        let slot = Slot::Paged {
                            index: pending.msg.store_index,
                            priority: pending.msg.priority,
                            expires_at_ms: pending.msg.expires_at_ms,
                            path: (!pending.msg.broker_path.is_empty())
                                .then(|| pending.msg.broker_path.clone().into_boxed_slice()),
                        };
                        drop(pending.msg);
                        q.enqueue_slot(slot, redeliveries, &mut effects);
                    } else {
                        q.enqueue_slot(Slot::Loaded(pending.msg), redeliveries, &mut effects);
                    }
                }
                Target::Topic(t) => {
                    t.publish(pending.msg.clone(), &mut effects);
                    if pending.msg.store_index != 0
                        && pending.msg.durable_refs.load(Ordering::Acquire) == 0
                    {
                        // Every durable subscription left before it became visible.
                        effects.removed.push(Removal {
                            index: pending.msg.store_index,
                            durable: None,
                            release: true,
                            record: false,
                        });
                    }
                }
            }
        }
        self.apply(effects);
    }

    /// Dead-letters and journals what `effects` collected (the caller holds the gate). Returns
    /// the newest journal index it appended, which a receipt for the operation waits for (0:
    /// none).
    pub(crate) fn apply(&self, effects: Effects) -> u64 {
        let mut last = 0;
        if effects.is_empty() {
            return last;
        }
        for (entry, reason) in effects.dead {
            let source = entry.msg.dest().clone();
            let dlq_dest = source.dead_letter_queue();
            let dlq = self.queue(&dlq_dest, 0);
            let mut copy = entry.msg.copy_to(
                dlq.dest.clone(),
                &[
                    ("meshmq.original_destination", source.to_string()),
                    ("meshmq.dlq_reason", reason.as_str().to_string()),
                ],
            );
            copy.charge = self.inner.memory.charge(copy.memory_size(), &dlq.counters);
            let target = Target::Queue(dlq.clone());
            // Journal the copy before the original's removal: a crash between the two leaves
            // the message in both places, never in neither.
            if self.journals(&target, &copy) {
                last = self.journal_publish(&target, copy.into());
            } else {
                let mut more = Effects::default();
                dlq.enqueue(Arc::new(copy), &mut more);
                debug_assert!(more.dead.is_empty(), "a DLQ never dead-letters");
            }
            if source.kind() == Kind::Queue && entry.msg.store_index != 0 {
                let removal = Removal {
                    index: entry.msg.store_index,
                    durable: None,
                    release: true,
                    record: true,
                };
                last = last.max(self.journal_removal(&removal, 0));
            }
        }
        for r in &effects.removed {
            last = last.max(self.journal_removal(r, 0));
        }
        last
    }

    /// Commits a transaction: its sends become visible and its acknowledgements take effect
    /// together. Journaled parts carry the transaction id and are followed by a commit marker,
    /// so after a crash either all of them count or none. Returns the journal index the
    /// commit's receipt waits for (0: nothing to wait for). The caller holds the gate.
    pub(crate) fn commit_transaction(
        &self,
        sends: Vec<(Target, NewMessage)>,
        apply_acks: impl FnOnce(&mut Effects),
    ) -> u64 {
        let mut effects = Effects::default();
        apply_acks(&mut effects);
        let journaled = self.inner.persistence.is_some()
            && (sends
                .iter()
                .any(|(t, m)| self.journals(t, m) || self.journals_retained(t, m))
                || !effects.removed.is_empty());
        if !journaled {
            for (target, msg) in sends {
                let msg = msg.into_shared();
                match &target {
                    Target::Queue(q) => q.enqueue(msg, &mut effects),
                    Target::Topic(t) => t.publish(msg, &mut effects),
                }
            }
            self.apply(effects);
            return 0;
        }
        let p = self.inner.persistence.as_ref().expect("checked above");
        let tx = self.inner.next_tx.fetch_add(1, Ordering::Relaxed);
        let mut visible = p.visible.lock();
        let mut held = Vec::with_capacity(sends.len());
        for (target, mut msg) in sends {
            if self.journals(&target, &msg) {
                let mut record = added_record(&msg);
                record.tx = tx;
                msg.store_index = p.store.append(&record);
            } else if self.journals_retained(&target, &msg) {
                self.journal_retained(&mut msg, tx);
            }
            held.push((target, msg));
        }
        for r in &effects.removed {
            self.journal_removal(r, tx);
        }
        let end = p.store.append(&Record {
            kind: Some(RecordKind::TxEnd(proto::TxEnd { commit: true })),
            tx,
        });
        for (target, msg) in held {
            visible.push_back(Pending {
                index: end,
                target,
                msg: msg.into_shared(),
                in_doubt: false,
            });
        }
        drop(visible);
        effects.removed.clear();
        self.apply(effects);
        end
    }

    /// Journals a removal (when it has a record) and lets its message go; returns the index
    /// of the record (0: none).
    fn journal_removal(&self, r: &Removal, tx: u64) -> u64 {
        let Some(p) = &self.inner.persistence else {
            return 0;
        };
        let mut index = 0;
        if r.record {
            let (client, name) = r.durable.clone().unwrap_or_default();
            // Nothing becomes visible with a removal: it is synced with the next record
            // someone needs, or when an acknowledgement's receipt waits for it. Lost to a
            // power cut before that, its message is delivered again (flagged), never lost.
            index = p.store.append_unwaited(&Record {
                kind: Some(RecordKind::Removed(proto::MessageRemoved {
                    message: r.index,
                    durable_client_id: client,
                    durable_name: name,
                })),
                tx,
            });
        }
        if r.release {
            p.store.journal().release(r.index);
        }
        index
    }

    /// Writes a checkpoint of everything journaled and lets covered segments go. `clean`:
    /// written at shutdown, after every connection ended.
    pub async fn checkpoint(&self, clean: bool) -> Result<usize, StoreError> {
        let Some(p) = &self.inner.persistence else {
            return Ok(0);
        };
        let checkpoint = {
            let _closed = p.gate.write();
            let next_index = p.store.journal().next_index();
            let mut queues: HashMap<String, Vec<proto::LiveMessage>> = HashMap::new();
            for q in self.inner.queues.iter() {
                if q.dest.kind() != Kind::Queue {
                    continue;
                }
                let list = queues.entry(q.dest.as_str().to_string()).or_default();
                list.extend(
                    q.journaled()
                        .into_iter()
                        .map(|(index, r)| proto::LiveMessage {
                            index,
                            redelivery_count: r,
                        }),
                );
            }
            let mut durables: Vec<proto::DurableState> = self
                .inner
                .durables
                .iter()
                .map(|d| proto::DurableState {
                    client_id: d.key().0.clone(),
                    name: d.key().1.clone(),
                    pattern: d.pattern.as_str().to_string(),
                    no_local: d.no_local(),
                    selector: d
                        .selector()
                        .map_or_else(String::new, |s| s.text().to_string()),
                    messages: d
                        .journaled()
                        .into_iter()
                        .map(|(index, r)| proto::LiveMessage {
                            index,
                            redelivery_count: r,
                        })
                        .collect(),
                })
                .collect();
            // Every topic's retained message, as the records before `next_index` leave it: the
            // one in place, unless a retained message still waiting to be durable (in index
            // order) replaces it.
            let mut retained: HashMap<String, (u64, Option<Arc<Message>>)> = self
                .inner
                .topics
                .iter()
                .filter(|t| !t.dest.kind().is_temp())
                .map(|t| (t.dest.as_str().to_string(), t.retained_state()))
                .collect();
            for pending in p.visible.lock().iter() {
                if let Target::Topic(t) = &pending.target {
                    let index = pending.msg.retain_index.max(pending.msg.store_index);
                    if pending.msg.is_retained() && index != 0 {
                        let slot = retained.entry(t.dest.as_str().to_string()).or_default();
                        if index >= slot.0 {
                            *slot = (index, Some(pending.msg.clone()));
                        }
                    }
                }
                // Listed under its own record, which replay finds: a transaction's send waits
                // for the end marker (`pending.index`) but is not that record, and a send the
                // journal does not hold (index 0) is not listed at all.
                let index = pending.msg.store_index;
                if index == 0 {
                    continue;
                }
                let live = proto::LiveMessage {
                    index,
                    redelivery_count: pending.redeliveries(),
                };
                match &pending.target {
                    Target::Queue(q) => queues
                        .entry(q.dest.as_str().to_string())
                        .or_default()
                        .push(live),
                    Target::Topic(t) => {
                        for d in durables.iter_mut() {
                            // Listed by pattern: a restore applies the selector.
                            if DestinationPattern::parse(&d.pattern)
                                .is_ok_and(|pat| pat.matches(&t.dest))
                            {
                                d.messages.push(live);
                            }
                        }
                    }
                }
            }
            proto::Checkpoint {
                next_index,
                clean,
                queues: queues
                    .into_iter()
                    .map(|(destination, messages)| proto::QueueState {
                        destination,
                        messages,
                    })
                    .collect(),
                durables,
                producers: self.inner.producers.snapshot(),
                sessions: self.export_kept_sessions(),
                retained: {
                    let mut all: Vec<proto::MessageAdded> = retained
                        .into_values()
                        .filter_map(|(_, m)| m)
                        .filter(|m| !m.body.is_empty())
                        .map(|m| added(&m))
                        .collect();
                    all.sort_by(|a, b| a.destination.cmp(&b.destination));
                    all
                },
                forwards: self.export_forwards(),
                // The store fills in its epoch history.
                epoch: 0,
                epochs: Vec::new(),
            }
        };
        if checkpoint.next_index > 1 {
            // Through the broker: once it says synced, every message before the checkpoint
            // is dispatched and counted live, so no segment holding one can be let go.
            self.wait_synced(checkpoint.next_index - 1).await?;
            // Committed by a quorum is not yet written here: the checkpoint makes the records
            // it covers durable here first.
            p.store
                .journal()
                .wait_local(checkpoint.next_index - 1)
                .await?;
        }
        let store = p.store.clone();
        tokio::task::spawn_blocking(move || store.checkpoint(&checkpoint))
            .await
            .map_err(|e| StoreError::Failed(format!("the checkpoint task failed: {e}")))?
    }

    /// Rebuilds a broker's journaled state (called once, before it serves).
    pub(crate) fn restore(&self, recovered: Recovered) {
        for (producer, seq) in &recovered.producers {
            self.inner.producers.advance(producer, *seq);
        }
        self.restore_forwards(&recovered.forward_chunks, &recovered.forwarded);
        self.restore_kept_sessions(recovered.sessions);
        let now = super::now_ms();
        for m in recovered.retained {
            // Index 0: it is no live record, and any change journaled from now on replaces it.
            if let Some(mut msg) = message_from_record(m, 0).filter(|m| !m.is_expired(now)) {
                let topic = self.topic(msg.dest(), 0);
                msg.charge = self.inner.memory.charge(msg.memory_size(), &topic.counters);
                topic.retain(&Arc::new(msg));
            }
        }
        let mut effects = Effects::default();
        for (dest, messages) in recovered.queues {
            let Ok(dest) = Destination::parse(&dest) else {
                continue;
            };
            let queue = self.queue(&dest, 0);
            for m in messages {
                let slot = match m.record.and_then(|r| message_from_record(r, m.index)) {
                    Some(mut msg) => {
                        msg.charge = self.inner.memory.charge(msg.memory_size(), &queue.counters);
                        Slot::Loaded(Arc::new(msg))
                    }
                    None => Slot::Paged {
                        index: m.index,
                        priority: m.priority,
                        expires_at_ms: m.expires_at_ms,
                        path: (!m.broker_path.is_empty()).then(|| {
                            m.broker_path
                                .iter()
                                .map(|g| Arc::from(g.as_str()))
                                .collect()
                        }),
                    },
                };
                queue.enqueue_slot(slot, m.redelivery_count, &mut effects);
            }
        }
        let mut topic_messages: HashMap<u64, Arc<Message>> = HashMap::new();
        for (index, record) in recovered.topic_messages {
            if let Some(mut msg) = message_from_record(record, index) {
                let topic = self.topic(msg.dest(), 0);
                msg.charge = self.inner.memory.charge(msg.memory_size(), &topic.counters);
                topic_messages.insert(index, Arc::new(msg));
            }
        }
        for d in recovered.durables {
            let Ok(pattern) = DestinationPattern::parse(&d.pattern) else {
                continue;
            };
            // A journaled selector parsed when it was subscribed; one this build cannot read
            // selects nothing away (the messages are kept, not lost).
            let selector = match d.selector.trim() {
                "" => None,
                text => match Selector::parse(text) {
                    Ok(s) => Some(Arc::new(s)),
                    Err(e) => {
                        tracing::warn!(client_id = %d.client_id, name = %d.name, selector = text, error = %e, "a durable subscription's journaled selector does not parse; it keeps every message");
                        None
                    }
                },
            };
            let limits = self.limits_for_pattern(&pattern);
            let key = (d.client_id, d.name);
            let sub = self.create_topic_sub(
                pattern,
                Some(key.clone()),
                d.no_local,
                &limits,
                None,
                selector.clone(),
            );
            for (index, redeliveries) in d.messages {
                if let Some(m) = topic_messages
                    .get(&index)
                    .filter(|m| selector.as_ref().is_none_or(|s| s.matches(&***m)))
                {
                    m.durable_refs.fetch_add(1, Ordering::AcqRel);
                    sub.restore(m.clone(), redeliveries);
                }
            }
            self.inner.durables.insert(key, sub);
        }
        self.apply(effects);
        // Only now: what was restored is in place before anything new is dispatched.
        self.start_committing();
    }
}

#[cfg(test)]
mod marks_tests {
    use super::*;

    /// Through a session's cached mark or the map, a producer has one mark: a re-send is a
    /// duplicate whichever way it comes, and switching producers in the cache loses nothing.
    #[test]
    fn a_cached_mark_is_the_producers_one_mark() {
        let marks = ProducerMarks::new(16);
        let (a, b) = (Bytes::from_static(b"a"), Bytes::from_static(b"b"));
        let mut cache: CachedMark = None;
        assert!(marks.advance_cached(&mut cache, &a, 1));
        assert!(marks.advance_cached(&mut cache, &a, 2));
        assert!(!marks.advance_cached(&mut cache, &a, 2), "a re-send");
        assert!(!marks.advance(&a, 1), "the map sees the cached mark");
        assert!(marks.advance_cached(&mut cache, &b, 1));
        let a_again = Bytes::copy_from_slice(b"a");
        assert!(
            !marks.advance_cached(&mut cache, &a_again, 2),
            "same id, other bytes"
        );
        assert!(marks.advance_cached(&mut cache, &a_again, 3));
        let mut other: CachedMark = None;
        assert!(
            !marks.advance_cached(&mut other, &a, 3),
            "another session's re-send"
        );
        assert!(marks.advance(&a, 4));
        assert!(!marks.advance_cached(&mut cache, &a, 4));
    }

    /// Pruning forgets stale marks past the cap, never one a session holds: that session
    /// would go on advancing a mark the broker no longer checks against.
    #[test]
    fn pruning_keeps_the_marks_sessions_hold() {
        let marks = ProducerMarks::new(2);
        let held = Bytes::from_static(b"held");
        let mut cache: CachedMark = None;
        assert!(marks.advance_cached(&mut cache, &held, 5));
        for id in [&b"x"[..], b"y", b"z"] {
            assert!(marks.advance(&Bytes::copy_from_slice(id), 1));
        }
        for _ in 0..3 {
            marks.prune();
        }
        assert!(
            marks.advance(&Bytes::from_static(b"x"), 1),
            "x was forgotten"
        );
        assert!(!marks.advance(&held, 5), "the held mark is still checked");
        assert!(!marks.advance_cached(&mut cache, &held, 5));
        let snapshot = marks.snapshot();
        assert!(snapshot
            .iter()
            .any(|m| m.producer_id == held && m.sequence == 5));
    }
}
