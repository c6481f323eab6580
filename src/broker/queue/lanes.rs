//! A queue's pending messages: each entry in memory or paged out to the journal ([`Slot`]),
//! and the priority lanes that hold them, highest priority first and FIFO inside a priority.
//! Owns: the order of pending entries and their count. Must not touch: consumers, dispatch,
//! the journal (a paged entry is read back by the queue). Invariant: `len` is the number of
//! entries in all lanes.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::broker::message::{prefetch, Entry, Message, MAX_PRIORITY, PREFETCH_AHEAD};

/// A pending message: in memory, or paged out to the journal (read back on dispatch).
#[derive(Debug)]
pub(crate) enum Slot {
    Loaded(Arc<Message>),
    Paged {
        index: u64,
        priority: u8,
        expires_at_ms: u64,
        /// The broker path, for network consumers' filters (`None` when empty).
        path: Option<Box<[Arc<str>]>>,
    },
}

#[derive(Debug)]
pub(crate) struct QEntry {
    pub slot: Slot,
    pub seq: u64,
    pub redeliveries: u32,
    pub arrived_ms: u64,
}

impl QEntry {
    pub(super) fn priority(&self) -> u8 {
        match &self.slot {
            Slot::Loaded(m) => m.priority,
            Slot::Paged { priority, .. } => *priority,
        }
    }

    pub(super) fn expires_at_ms(&self) -> u64 {
        match &self.slot {
            Slot::Loaded(m) => m.expires_at_ms,
            Slot::Paged { expires_at_ms, .. } => *expires_at_ms,
        }
    }

    pub(super) fn is_expired(&self, now: u64) -> bool {
        let e = self.expires_at_ms();
        e != 0 && now >= e
    }

    pub(super) fn path(&self) -> &[Arc<str>] {
        match &self.slot {
            Slot::Loaded(m) => &m.broker_path,
            Slot::Paged { path, .. } => path.as_deref().unwrap_or(&[]),
        }
    }

    pub(super) fn store_index(&self) -> u64 {
        match &self.slot {
            Slot::Loaded(m) => m.store_index,
            Slot::Paged { index, .. } => *index,
        }
    }

    pub(super) fn from_entry(e: Entry) -> QEntry {
        QEntry {
            slot: Slot::Loaded(e.msg),
            seq: e.seq,
            redeliveries: e.redeliveries,
            arrived_ms: e.arrived_ms,
        }
    }
}

/// Pending messages, highest priority first, FIFO inside a priority.
#[derive(Debug, Default)]
pub(super) struct Lanes {
    pub(super) lanes: [VecDeque<QEntry>; MAX_PRIORITY as usize + 1],
    pub(super) len: usize,
}

impl Lanes {
    pub(super) fn push_back(&mut self, e: QEntry) {
        self.lanes[e.priority().min(MAX_PRIORITY) as usize].push_back(e);
        self.len += 1;
    }

    pub(super) fn push_front(&mut self, e: QEntry) {
        self.lanes[e.priority().min(MAX_PRIORITY) as usize].push_front(e);
        self.len += 1;
    }

    /// Takes the next entry in dispatch order, and starts loading the message that many pops
    /// later (dispatch takes them in runs: by its turn it is in cache).
    pub(super) fn pop_front(&mut self) -> Option<QEntry> {
        if self.len == 0 {
            return None;
        }
        for lane in self.lanes.iter_mut().rev() {
            if let Some(e) = lane.pop_front() {
                self.len -= 1;
                if let Some(QEntry {
                    slot: Slot::Loaded(m),
                    ..
                }) = lane.get(PREFETCH_AHEAD - 1)
                {
                    prefetch(m);
                }
                return Some(e);
            }
        }
        None
    }

    pub(super) fn retain(&mut self, mut keep: impl FnMut(&QEntry) -> bool) -> Vec<QEntry> {
        let mut removed = Vec::new();
        for lane in &mut self.lanes {
            let mut kept = VecDeque::with_capacity(lane.len());
            for e in lane.drain(..) {
                if keep(&e) {
                    kept.push_back(e);
                } else {
                    removed.push(e);
                }
            }
            *lane = kept;
        }
        self.len -= removed.len();
        removed
    }

    pub(super) fn clear(&mut self) -> usize {
        let n = self.len;
        for lane in &mut self.lanes {
            lane.clear();
        }
        self.len = 0;
        n
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &QEntry> {
        self.lanes.iter().rev().flat_map(|l| l.iter())
    }

    /// The first of at most `limit` entries, in dispatch order, that `accept` takes.
    pub(super) fn find(
        &self,
        limit: usize,
        mut accept: impl FnMut(&QEntry) -> bool,
    ) -> Option<(usize, usize)> {
        let mut seen = 0;
        for (lane, entries) in self.lanes.iter().enumerate().rev() {
            for (i, e) in entries.iter().enumerate() {
                if seen == limit {
                    return None;
                }
                seen += 1;
                if accept(e) {
                    return Some((lane, i));
                }
            }
        }
        None
    }

    pub(super) fn remove(&mut self, lane: usize, i: usize) -> Option<QEntry> {
        let e = self.lanes[lane].remove(i)?;
        self.len -= 1;
        Some(e)
    }
}
