//! The queue of deliveries from the broker to one connection.
//!
//! Any thread may push (dispatch runs on whichever connection task sent or acked); only the
//! connection's own task drains it. It is bounded by credits, not by a capacity check: the
//! broker pushes a delivery only while the subscription has prefetch credit, so an outbox never
//! holds more than the sum of its subscriptions' prefetch. Pushing never blocks and never
//! allocates once the deque has grown to that size.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use parking_lot::Mutex;

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

    pub(crate) fn push(&self, delivery: Delivery) {
        self.items.lock().push_back(delivery);
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

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.waker.wake();
    }
}
