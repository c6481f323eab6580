//! Replaying records onto a state: the live messages, durable subscriptions and producer marks
//! a checkpoint summed up, brought forward record by record in index order (a transaction's
//! records only once its commit marker is read), and what the checkpoint listed as live but no
//! record supplied (`lost`). A topic's retained message is the latest retained one journaled
//! for it — a `retained` record, or an `added` one (held by a durable subscription) flagged
//! `retain` — or the checkpoint's copy; an empty one clears it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;

use super::{ForwardedId, Recovered, RecoveredDurable, RecoveredMessage, REPLAYED_FORWARDS};
use crate::destination::{Destination, DestinationPattern, Kind};
use crate::store::proto::{record, Checkpoint, ForwardChunk, MessageAdded, Record, SessionExpiry};
use crate::store::EpochHistory;

#[derive(Debug)]
struct QMsg {
    redeliveries: u32,
    priority: u8,
    expires_at_ms: u64,
    broker_path: Vec<String>,
    record: Option<MessageAdded>,
    known: bool,
}

#[derive(Debug)]
struct Dur {
    pattern: String,
    matcher: Option<DestinationPattern>,
    no_local: bool,
    /// Carried to the broker, which selects among `pending` when it restores them.
    selector: String,
    pending: BTreeMap<u64, u32>,
}

/// Applies records in index order.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    queues: HashMap<String, BTreeMap<u64, QMsg>>,
    queue_of: HashMap<u64, String>,
    durables: HashMap<(String, String), Dur>,
    sessions: HashMap<String, SessionExpiry>,
    /// Each topic's retained message, whole.
    retained: BTreeMap<String, MessageAdded>,
    topic_msgs: HashMap<u64, (MessageAdded, u32)>,
    producers: HashMap<Bytes, u64>,
    forward_chunks: Vec<ForwardChunk>,
    forwarded: std::collections::VecDeque<ForwardedId>,
    txs: HashMap<u64, Vec<(u64, Record)>>,
    epoch: u64,
    epochs: EpochHistory,
    budget: u64,
    loaded: u64,
}

fn message_bytes(m: &MessageAdded) -> u64 {
    (m.body.len() + 256) as u64
}

impl Replay {
    pub(crate) fn new(memory_budget: u64) -> Replay {
        Replay {
            budget: memory_budget,
            ..Replay::default()
        }
    }

    pub(super) fn from_checkpoint(c: &Checkpoint, memory_budget: u64) -> Replay {
        let mut r = Replay::new(memory_budget);
        r.epoch = c.epoch;
        r.epochs = EpochHistory::from_proto(&c.epochs);
        for q in &c.queues {
            let map = r.queues.entry(q.destination.clone()).or_default();
            for m in &q.messages {
                map.insert(
                    m.index,
                    QMsg {
                        redeliveries: m.redelivery_count,
                        priority: 4,
                        expires_at_ms: 0,
                        broker_path: Vec::new(),
                        record: None,
                        known: false,
                    },
                );
                r.queue_of.insert(m.index, q.destination.clone());
            }
        }
        for d in &c.durables {
            let mut pending = BTreeMap::new();
            for m in &d.messages {
                pending.insert(m.index, m.redelivery_count);
                r.topic_msgs
                    .entry(m.index)
                    .or_insert_with(|| (MessageAdded::default(), 0))
                    .1 += 1;
            }
            r.durables.insert(
                (d.client_id.clone(), d.name.clone()),
                Dur {
                    matcher: DestinationPattern::parse(&d.pattern).ok(),
                    pattern: d.pattern.clone(),
                    no_local: d.no_local,
                    selector: d.selector.clone(),
                    pending,
                },
            );
        }
        for p in &c.producers {
            r.producers.insert(p.producer_id.clone(), p.sequence);
        }
        for s in &c.sessions {
            r.apply_session(s.clone());
        }
        for m in &c.retained {
            r.apply_retained(m.clone());
        }
        r.forward_chunks = c.forwards.clone();
        r
    }

    /// Indexes before the checkpoint whose records must be read (their bodies are needed).
    pub(super) fn wanted(&self) -> BTreeSet<u64> {
        self.queue_of
            .keys()
            .chain(self.topic_msgs.keys())
            .copied()
            .collect()
    }

    /// Supplies the record of a message the checkpoint listed as live.
    pub(super) fn fill(&mut self, index: u64, added: MessageAdded) {
        if let Some(q) = self
            .queue_of
            .get(&index)
            .and_then(|d| self.queues.get_mut(d))
        {
            if let Some(m) = q.get_mut(&index) {
                m.priority = added.priority.min(9) as u8;
                m.expires_at_ms = added.expires_at_ms;
                m.broker_path = added.broker_path.clone();
                m.known = true;
                let size = message_bytes(&added);
                if self.loaded + size <= self.budget {
                    self.loaded += size;
                    m.record = Some(added);
                }
                return;
            }
        }
        if let Some(t) = self.topic_msgs.get_mut(&index) {
            t.0 = added;
        }
    }

    pub(crate) fn apply(&mut self, index: u64, rec: Record) {
        if rec.tx != 0 {
            if let Some(record::Kind::TxEnd(end)) = &rec.kind {
                let ops = self.txs.remove(&rec.tx).unwrap_or_default();
                if end.commit {
                    for (i, op) in ops {
                        self.apply_now(i, op);
                    }
                }
            } else {
                self.txs.entry(rec.tx).or_default().push((index, rec));
            }
            return;
        }
        self.apply_now(index, rec);
    }

    /// The latest state of a client's kept session replaces the last; an ended one is gone.
    fn apply_session(&mut self, s: SessionExpiry) {
        if s.ended {
            self.sessions.remove(&s.client_id);
        } else {
            self.sessions.insert(s.client_id.clone(), s);
        }
    }

    /// A topic's retained message is replaced by the next one; an empty one clears it.
    fn apply_retained(&mut self, m: MessageAdded) {
        if m.body.is_empty() {
            self.retained.remove(&m.destination);
        } else {
            self.retained.insert(m.destination.clone(), m);
        }
    }

    fn apply_now(&mut self, index: u64, rec: Record) {
        match rec.kind {
            Some(record::Kind::Added(m)) => {
                let hw = self.producers.entry(m.producer_id.clone()).or_insert(0);
                *hw = (*hw).max(m.sequence);
                let Ok(dest) = Destination::parse(&m.destination) else {
                    return;
                };
                if !m.broker_path.is_empty() && !m.producer_id.is_empty() && m.sequence != 0 {
                    if self.forwarded.len() == REPLAYED_FORWARDS {
                        self.forwarded.pop_front();
                    }
                    self.forwarded.push_back(ForwardedId {
                        producer_id: m.producer_id.clone(),
                        sequence: m.sequence,
                        topic: !dest.kind().is_queue(),
                        broker_path: m.broker_path.clone(),
                    });
                }
                if dest.kind() == Kind::Queue {
                    let size = message_bytes(&m);
                    let keep = self.loaded + size <= self.budget;
                    if keep {
                        self.loaded += size;
                    }
                    self.queue_of.insert(index, m.destination.clone());
                    self.queues
                        .entry(m.destination.clone())
                        .or_default()
                        .insert(
                            index,
                            QMsg {
                                redeliveries: m.redelivery_count,
                                priority: m.priority.min(9) as u8,
                                expires_at_ms: m.expires_at_ms,
                                broker_path: m.broker_path.clone(),
                                known: true,
                                record: keep.then_some(m),
                            },
                        );
                } else if dest.kind() == Kind::Topic {
                    if m.retain {
                        self.apply_retained(m.clone());
                    }
                    let mut refs = 0;
                    for d in self.durables.values_mut() {
                        if d.matcher.as_ref().is_some_and(|p| p.matches(&dest)) {
                            d.pending.insert(index, m.redelivery_count);
                            refs += 1;
                        }
                    }
                    if refs > 0 {
                        self.topic_msgs.insert(index, (m, refs));
                    }
                }
            }
            Some(record::Kind::Removed(r)) => {
                if r.durable_client_id.is_empty() {
                    if let Some(dest) = self.queue_of.remove(&r.message) {
                        if let Some(q) = self.queues.get_mut(&dest) {
                            if let Some(m) = q.remove(&r.message) {
                                if let Some(rec) = &m.record {
                                    self.loaded = self.loaded.saturating_sub(message_bytes(rec));
                                }
                            }
                        }
                    }
                } else if let Some(d) = self
                    .durables
                    .get_mut(&(r.durable_client_id, r.durable_name))
                {
                    if d.pending.remove(&r.message).is_some() {
                        self.release_topic(r.message);
                    }
                }
            }
            Some(record::Kind::DurableAdded(a)) => {
                let key = (a.client_id, a.name);
                if let Some(old) = self.durables.remove(&key) {
                    for i in old.pending.keys() {
                        self.release_topic(*i);
                    }
                }
                self.durables.insert(
                    key,
                    Dur {
                        matcher: DestinationPattern::parse(&a.pattern).ok(),
                        pattern: a.pattern,
                        no_local: a.no_local,
                        selector: a.selector,
                        pending: BTreeMap::new(),
                    },
                );
            }
            Some(record::Kind::DurableRemoved(r)) => {
                if let Some(old) = self.durables.remove(&(r.client_id, r.name)) {
                    for i in old.pending.keys() {
                        self.release_topic(*i);
                    }
                }
            }
            Some(record::Kind::SessionExpiry(s)) => self.apply_session(s),
            Some(record::Kind::Retained(m)) => self.apply_retained(m),
            Some(record::Kind::Epoch(e)) => {
                self.epoch = self.epoch.max(e.epoch);
                self.epochs.begin(e.epoch, index);
            }
            Some(record::Kind::TxEnd(_)) | None => {}
        }
    }

    /// Messages the checkpoint listed as live, still live after the replay, whose records
    /// were never found: the journal lost them (oldest first).
    pub(super) fn lost(&self) -> Vec<u64> {
        let mut lost: Vec<u64> = self
            .queues
            .values()
            .flat_map(|q| q.iter().filter(|(_, m)| !m.known).map(|(i, _)| *i))
            .chain(
                self.topic_msgs
                    .iter()
                    .filter(|(_, (m, _))| m.destination.is_empty())
                    .map(|(i, _)| *i),
            )
            .collect();
        lost.sort_unstable();
        lost
    }

    fn release_topic(&mut self, index: u64) {
        if let Some(t) = self.topic_msgs.get_mut(&index) {
            t.1 = t.1.saturating_sub(1);
            if t.1 == 0 {
                self.topic_msgs.remove(&index);
            }
        }
    }

    /// Live message indexes (queue messages and topic messages held by durables).
    pub(crate) fn live_indexes(&self) -> impl Iterator<Item = u64> + '_ {
        self.queue_of.keys().chain(self.topic_msgs.keys()).copied()
    }

    pub(crate) fn finish(self, clean: bool, next_index: u64, notes: Vec<String>) -> Recovered {
        let mut queues: Vec<(String, Vec<RecoveredMessage>)> = self
            .queues
            .into_iter()
            .map(|(dest, msgs)| {
                let list = msgs
                    .into_iter()
                    .filter(|(_, m)| m.known)
                    .map(|(index, m)| RecoveredMessage {
                        index,
                        redelivery_count: if clean {
                            m.redeliveries
                        } else {
                            m.redeliveries.max(1)
                        },
                        priority: m.priority,
                        expires_at_ms: m.expires_at_ms,
                        broker_path: m.broker_path,
                        record: m.record,
                    })
                    .collect();
                (dest, list)
            })
            .collect();
        queues.sort_by(|a, b| a.0.cmp(&b.0));
        let durables = self
            .durables
            .into_iter()
            .map(|((client_id, name), d)| RecoveredDurable {
                client_id,
                name,
                pattern: d.pattern,
                no_local: d.no_local,
                selector: d.selector,
                messages: d
                    .pending
                    .into_iter()
                    .map(|(i, r)| (i, if clean { r } else { r.max(1) }))
                    .collect(),
            })
            .collect();
        Recovered {
            queues,
            durables,
            sessions: {
                let mut sessions: Vec<SessionExpiry> = self.sessions.into_values().collect();
                sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
                sessions
            },
            topic_messages: self
                .topic_msgs
                .into_iter()
                .filter(|(_, (m, _))| !m.destination.is_empty())
                .map(|(i, (m, _))| (i, m))
                .collect(),
            retained: self.retained.into_values().collect(),
            producers: self.producers.into_iter().collect(),
            forward_chunks: self.forward_chunks,
            forwarded: self.forwarded.into(),
            clean,
            epoch: self.epoch,
            epochs: self.epochs,
            checkpoint_next: None,
            next_index,
            notes,
        }
    }
}
