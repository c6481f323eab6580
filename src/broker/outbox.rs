//! The queue of deliveries from the broker to one connection.
//!
//! Any thread may push (dispatch runs on whichever connection task sent or acked); only the
//! connection's own task drains it. It is bounded by credits, not by a capacity check: the
//! broker pushes a delivery only while the subscription has prefetch credit, so an outbox never
//! holds more than the sum of its subscriptions' prefetch. Pushing never blocks and never
//! allocates once the deque has grown to that size. Deliveries are pushed in runs (one lock and
//! one wake-up per run, not per message): a queue's dispatch round batches each consumer's,
//! a topic subscription's pump holds the lock for what its credit lets through.
//!
//! A connection applying a run of frames (a producer's burst) defers the wake-ups of the
//! outboxes it fills until the run ends ([`defer_wakes`]): a consumer is then woken once per
//! run, not once per message, and writes the run's deliveries with one write. Invariant: a
//! wake-up is delayed, never lost — a deferred outbox's waker is taken out at the first push
//! of the run and woken when the run ends (a task woken by an older waker of its own is woken
//! all the same).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use atomic_waker::AtomicWaker;
use parking_lot::{Mutex, MutexGuard};

use super::message::Delivery;

#[derive(Debug, Default)]
pub struct Outbox {
    items: Mutex<VecDeque<Delivery>>,
    waker: AtomicWaker,
    closed: AtomicBool,
    /// The deferring run that holds this outbox's waker (0: none): its later pushes skip the
    /// wake-up, which the run's end makes.
    deferred_by: AtomicU64,
}

/// Numbers deferring runs; 0 is none.
static NEXT_RUN: AtomicU64 = AtomicU64::new(1);

/// This thread's deferring run: its number, and the wakers it took.
#[derive(Default)]
struct Deferred {
    run: u64,
    wakers: Vec<Waker>,
}

thread_local! {
    static DEFERRED: RefCell<Deferred> = RefCell::default();
}

/// Defers the wake-ups of outboxes pushed to on this thread until the returned guard drops
/// (see the module's doc). Inside a run already deferring, the guard does nothing.
pub(crate) fn defer_wakes() -> DeferredWakes {
    let started = DEFERRED.with(|d| {
        let mut d = d.borrow_mut();
        if d.run != 0 {
            return false;
        }
        d.run = NEXT_RUN.fetch_add(1, Ordering::Relaxed);
        true
    });
    DeferredWakes { started }
}

/// Ends a deferring run when dropped: wakes every outbox it deferred.
pub(crate) struct DeferredWakes {
    started: bool,
}

impl Drop for DeferredWakes {
    fn drop(&mut self) {
        if !self.started {
            return;
        }
        let mut wakers = DEFERRED.with(|d| {
            let mut d = d.borrow_mut();
            d.run = 0;
            std::mem::take(&mut d.wakers)
        });
        for w in wakers.drain(..) {
            w.wake();
        }
        // The list's room is kept for the thread's next run.
        DEFERRED.with(|d| d.borrow_mut().wakers = wakers);
    }
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
        self.wake();
    }

    /// Wakes the consumer now, or at the end of this thread's deferring run. Called after the
    /// push it announces.
    fn wake(&self) {
        let run = DEFERRED.with(|d| d.borrow().run);
        if run == 0 {
            self.waker.wake();
            return;
        }
        if self.deferred_by.load(Ordering::Relaxed) == run {
            // This run holds the waker already, and wakes it when it ends.
            return;
        }
        // No waker registered: the consumer is running, and looks at its items before it
        // waits again. Not marked, so a later push of this run takes the waker it registers.
        let Some(waker) = self.waker.take() else {
            return;
        };
        self.deferred_by.store(run, Ordering::Relaxed);
        DEFERRED.with(|d| d.borrow_mut().wakers.push(waker));
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
            self.outbox.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::task::Wake;

    use super::*;
    use crate::broker::Message;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Counting {
        fn woken(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn delivery(tag: u64) -> Delivery {
        Delivery {
            subscription: 1,
            tag,
            redelivery_count: 0,
            message: Arc::new(Message::default()),
        }
    }

    /// Registers `waker` as a waiting consumer does: ready at once when items wait.
    fn wait(outbox: &Outbox, waker: &Waker) -> Poll<()> {
        outbox.poll_ready(&mut Context::from_waker(waker))
    }

    #[test]
    fn a_deferring_run_wakes_each_consumer_once_when_it_ends() {
        let (a, b) = (Outbox::new(), Outbox::new());
        let (ca, cb) = (Arc::new(Counting::default()), Arc::new(Counting::default()));
        let (wa, wb) = (Waker::from(ca.clone()), Waker::from(cb.clone()));
        assert!(wait(&a, &wa).is_pending() && wait(&b, &wb).is_pending());
        {
            let _run = defer_wakes();
            for tag in 1..=3 {
                a.push_all(&mut vec![delivery(tag)]);
                a.batch().push(delivery(tag + 10));
                b.batch().push(delivery(tag));
            }
            assert_eq!(
                (ca.woken(), cb.woken()),
                (0, 0),
                "nobody is woken inside the run"
            );
        }
        assert_eq!(
            (ca.woken(), cb.woken()),
            (1, 1),
            "each consumer once, at the run's end"
        );
        assert_eq!((a.len(), b.len()), (6, 3));
        // Outside a run, every push wakes at once.
        assert!(wait(&a, &wa).is_ready());
        let mut drained = VecDeque::new();
        a.drain_into(&mut drained);
        assert!(wait(&a, &wa).is_pending());
        a.push_all(&mut vec![delivery(7)]);
        assert_eq!(ca.woken(), 2);
    }

    #[test]
    fn a_consumer_that_waits_again_during_a_run_is_still_woken() {
        let outbox = Outbox::new();
        let counting = Arc::new(Counting::default());
        let waker = Waker::from(counting.clone());
        let run = defer_wakes();
        // The consumer is running (no waker registered) when the run first pushes ...
        outbox.batch().push(delivery(1));
        // ... then drains, registers and waits; the run's next push must reach it.
        let mut drained = VecDeque::new();
        outbox.drain_into(&mut drained);
        assert!(wait(&outbox, &waker).is_pending());
        outbox.batch().push(delivery(2));
        // A nested run changes nothing: the outer one still holds the wake-up.
        drop(defer_wakes());
        assert_eq!(counting.woken(), 0);
        drop(run);
        assert_eq!(counting.woken(), 1, "woken when the run ended");
        assert_eq!(outbox.len(), 1);
    }
}
