//! The queue of deliveries from the broker to one connection.
//!
//! Any thread may push (dispatch runs on whichever connection task sent or acked); only the
//! connection's own task drains it. It is bounded by credits, not by a capacity check: the
//! broker pushes a delivery only while the subscription has prefetch credit, so an outbox never
//! holds more than the sum of its subscriptions' prefetch. Pushing never blocks and never
//! allocates once the deque has grown to that size. Deliveries are pushed in runs (one lock and
//! one wake-up per run, not per message): a queue's dispatch round batches each consumer's,
//! a topic subscription's pump holds the lock for what its credit lets through.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use parking_lot::{Mutex, MutexGuard};

use super::message::Delivery;

#[derive(Debug, Default)]
pub struct Outbox {
    items: Mutex<VecDeque<Delivery>>,
    waker: AtomicWaker,
    closed: AtomicBool,
}

impl Outbox {
    pub fn new() -> Outbox {
        Outbox::default()
    }

    /// Pushes every delivery of `batch`, in order, under one lock and with one wake-up
    /// (`batch` is left empty, its room kept for the next batch).
    pub(crate) fn push_all(&self, batch: &mut Vec<Delivery>) {
        if batch.is_empty() {
            return;
        }
        self.items.lock().extend(batch.drain(..));
        self.waker.wake();
    }

    /// Moves every queued delivery into `into` (which should be empty); cheap: swaps buffers.
    pub fn drain_into(&self, into: &mut VecDeque<Delivery>) {
        let mut items = self.items.lock();
        if into.is_empty() {
            std::mem::swap(&mut *items, into);
        } else {
            into.extend(items.drain(..));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.lock().is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.lock().len()
    }

    /// Ready when deliveries are waiting (or the outbox was closed).
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        if self.closed.load(Ordering::Acquire) || !self.items.lock().is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Takes back everything not yet drained (used when the connection closes).
    pub(crate) fn take_all(&self) -> VecDeque<Delivery> {
        std::mem::take(&mut *self.items.lock())
    }

    /// Starts a run of pushes under one lock, woken once when the run ends (dropped).
    pub(crate) fn batch(&self) -> OutboxBatch<'_> {
        OutboxBatch {
            outbox: self,
            items: None,
        }
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// A run of pushes into one outbox: its lock is taken at the first push and held to the end of
/// the run; the consumer is woken once, when the run ends.
pub(crate) struct OutboxBatch<'a> {
    outbox: &'a Outbox,
    items: Option<MutexGuard<'a, VecDeque<Delivery>>>,
}

impl OutboxBatch<'_> {
    pub(crate) fn push(&mut self, delivery: Delivery) {
        self.items
            .get_or_insert_with(|| self.outbox.items.lock())
            .push_back(delivery);
    }
}

impl Drop for OutboxBatch<'_> {
    fn drop(&mut self) {
        if self.items.take().is_some() {
            self.outbox.waker.wake();
        }
    }
}
