//! The broker-wide budget for message memory: bytes used against one limit (changed in place
//! by `meshmq apply`), and producers waiting for room woken when bytes are released or the
//! limit changes. It names no destination: what each destination may hold, and the charge a
//! message carries, are `memory.rs`'s (which adds the per-destination methods to
//! [`MemoryPool`]). The bytes of frames a connection is still receiving are charged here too
//! ([`PendingCharge`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// The broker-wide budget for message memory.
#[derive(Debug)]
pub struct MemoryPool {
    used: AtomicU64,
    /// Changed in place by `meshmq apply` ([`MemoryPool::set_limit`]).
    limit: AtomicU64,
    waiting: AtomicUsize,
    room: Notify,
}

impl MemoryPool {
    pub fn new(limit: u64) -> MemoryPool {
        MemoryPool {
            used: AtomicU64::new(0),
            limit: AtomicU64::new(limit),
            waiting: AtomicUsize::new(0),
            room: Notify::new(),
        }
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Takes a new broker-wide limit. Producers waiting for room re-check at once: a raised
    /// limit lets them go on; a lowered one holds the next sends until consumers free enough.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
        self.wake();
    }

    /// Wakes every producer waiting for room, to check again (a limit changed).
    pub fn wake(&self) {
        self.room.notify_waiters();
    }

    /// Counts `bytes` more as used (a message's charge, or a connection's partial frames).
    pub(super) fn take(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts `bytes` fewer as used, and wakes the producers waiting for room.
    pub(super) fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.room.notify_waiters();
        }
    }

    /// True when the broker as a whole is under its limit.
    pub fn has_broker_room(&self) -> bool {
        self.used() < self.limit()
    }

    /// A charge for the bytes a connection holds of frames it has not handed over yet (a
    /// frame still being received, frames waiting behind a blocked one); it starts at 0.
    pub fn pending(self: &Arc<Self>) -> PendingCharge {
        PendingCharge {
            bytes: 0,
            pool: self.clone(),
        }
    }

    /// Waits until the broker as a whole is under its limit.
    pub async fn wait_for_broker_room(&self) {
        self.wait_until(|| self.has_broker_room()).await
    }

    /// Waits until `has_room` holds, re-checking whenever bytes are released or a limit changes.
    pub(super) async fn wait_until(&self, has_room: impl Fn() -> bool) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.waiting.fetch_add(1, Ordering::AcqRel);
            let ready = has_room();
            if !ready {
                notified.await;
            }
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            if ready || has_room() {
                return;
            }
        }
    }
}

/// Bytes a connection has received but not handed over as frames, charged to the pool so
/// that partial frames count against the memory limit; released when dropped.
#[derive(Debug)]
pub struct PendingCharge {
    bytes: u64,
    pool: Arc<MemoryPool>,
}

impl PendingCharge {
    /// Charges `bytes` now (more or fewer than before).
    pub fn set(&mut self, bytes: u64) {
        if bytes > self.bytes {
            self.pool.take(bytes - self.bytes);
        } else if bytes < self.bytes {
            self.pool.release(self.bytes - bytes);
        }
        self.bytes = bytes;
    }
}

impl Drop for PendingCharge {
    fn drop(&mut self) {
        self.set(0);
    }
}
