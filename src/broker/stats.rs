//! Per-destination counters, updated with relaxed atomics on the hot path and read by the
//! admin endpoints (`/status`, `/metrics`) without taking any destination lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use super::pool::MemoryPool;

use crate::destination::{Destination, Kind};
use crate::metrics::DestinationStats;

/// A destination memory cap of "none".
const NO_LIMIT: u64 = u64::MAX;

#[derive(Debug)]
pub struct DestinationCounters {
    pub destination: Destination,
    /// The destination's own memory cap, bytes; [`NO_LIMIT`]: none (changed in place by
    /// `meshmq apply`).
    memory_limit: AtomicU64,
    /// A queue (plain or temporary): without a cap of its own it takes the default queue
    /// share of the broker's limit (see `MemoryPool::limit_of`).
    is_queue: bool,
    pub(crate) memory: AtomicU64,
    /// The broker's memory pool, set by the first charge: a message's charge releases its
    /// bytes to it through this, so it holds no reference of its own to the pool.
    pub(crate) pool: OnceLock<Arc<MemoryPool>>,
    pub(crate) enqueued: AtomicU64,
    pub(crate) dequeued: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) pending: AtomicU64,
    pub(crate) inflight: AtomicU64,
    pub(crate) consumers: AtomicU64,
    pub(crate) redelivered: AtomicU64,
}

impl DestinationCounters {
    pub fn new(destination: Destination, memory_limit: Option<u64>) -> DestinationCounters {
        DestinationCounters {
            is_queue: matches!(destination.kind(), Kind::Queue | Kind::TempQueue),
            destination,
            memory_limit: AtomicU64::new(memory_limit.unwrap_or(NO_LIMIT)),
            memory: AtomicU64::new(0),
            pool: OnceLock::new(),
            enqueued: AtomicU64::new(0),
            dequeued: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
            consumers: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
        }
    }

    /// The destination's own memory cap, if it has one.
    pub fn memory_limit(&self) -> Option<u64> {
        Some(self.memory_limit.load(Ordering::Relaxed)).filter(|&l| l != NO_LIMIT)
    }

    /// Whether this is a queue's (plain or temporary).
    pub fn is_queue(&self) -> bool {
        self.is_queue
    }

    pub(crate) fn set_memory_limit(&self, limit: Option<u64>) {
        self.memory_limit
            .store(limit.unwrap_or(NO_LIMIT), Ordering::Relaxed);
    }

    pub fn memory(&self) -> u64 {
        self.memory.load(Ordering::Relaxed)
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> DestinationStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DestinationStats {
            destination: self.destination.to_string(),
            depth: get(&self.pending) + get(&self.inflight),
            pending: get(&self.pending),
            inflight: get(&self.inflight),
            consumers: get(&self.consumers),
            enqueued: get(&self.enqueued),
            dequeued: get(&self.dequeued),
            expired: get(&self.expired),
            dead_lettered: get(&self.dead_lettered),
            dropped: get(&self.dropped),
            redelivered: get(&self.redelivered),
            memory_bytes: get(&self.memory),
        }
    }
}
