//! The broker's durability facade: the only way code outside `broker` learns about the journal.
//!
//! - **Room**: [`Broker::has_room`] says whether a send may be taken now (journal room for a
//!   message the journal would hold, memory room otherwise); [`Broker::wait_room`] waits for it
//!   by notification — the journal tells its waiters each time it frees room — never by polling.
//! - **Commits**: [`Broker::synced`] is the newest index whose records are committed (durable
//!   per the sync mode, and in a replicated group acknowledged by a quorum) *and* whose
//!   messages are already visible to consumers; [`Broker::wait_synced_since`] waits for one.
//! - **Holding replies**: a [`SyncedQueue`] holds what confirms journaled work (a receipt, a
//!   forward's acceptance) until the index it needs is synced, and lets it go in order.
//!
//! Invariants: nothing outside `broker` names the journal; a held item is released only once
//! everything pushed before it is; when a wait fails (the journal failed, the member was
//! fenced, or a quorum did not answer within `quorum_timeout`, counted from when the item was
//! pushed) every held item fails with it.

use std::collections::VecDeque;
use std::future::Future;

use tokio::time::Instant;

use super::{Broker, Target};
use crate::store::StoreError;

impl Broker {
    /// True when a message for `target` may be taken now: the journal has room for one it
    /// would hold (persistent, not on a temporary destination), memory has room otherwise —
    /// for a topic, also in every queue it feeds (`feed.rs`).
    pub fn has_room(&self, target: &Target, persistent: bool) -> bool {
        match self.store() {
            Some(store) if self.needs_journal_room(target, persistent) => {
                store.journal().has_room()
            }
            _ => self.memory().has_room(target.counters()) && self.feeds_have_room(target),
        }
    }

    /// Resolves once [`Broker::has_room`] would say yes (at once if it does now).
    pub async fn wait_room(&self, target: &Target, persistent: bool) {
        match self.store() {
            Some(store) if self.needs_journal_room(target, persistent) => {
                store.journal().wait_room().await
            }
            _ => {
                self.memory().wait_for_room(target.counters()).await;
                self.wait_feeds_room(target).await;
            }
        }
    }

    /// Whether a send's room is the journal's (it would be journaled) rather than memory's.
    pub(crate) fn needs_journal_room(&self, target: &Target, persistent: bool) -> bool {
        persistent && self.store().is_some() && !target.destination().kind().is_temp()
    }

    /// Every journal record up to this index is committed and what it holds is visible
    /// (`u64::MAX` without a journal: nothing ever waits).
    pub fn synced(&self) -> u64 {
        self.inner
            .persistence
            .as_ref()
            .map_or(u64::MAX, |p| *p.synced.borrow())
    }

    /// Waits until `index` is synced. In a replicated group that takes a quorum, and the wait
    /// fails once `quorum_timeout` has passed since `since` (when the work was taken, however
    /// often the caller stopped waiting and came back). It fails at once when the journal
    /// failed or this member was fenced: nothing more will be committed.
    pub async fn wait_synced_since(&self, index: u64, since: Instant) -> Result<(), StoreError> {
        let Some(p) = &self.inner.persistence else {
            return Ok(());
        };
        let journal = p.store.journal();
        let mut synced = p.synced.subscribe();
        let _announced = journal.commit_wait(index);
        let wait = async {
            loop {
                if *synced.borrow_and_update() >= index {
                    return Ok(());
                }
                journal.still_committing()?;
                if synced.changed().await.is_err() {
                    return Err(StoreError::Failed("the broker stopped".into()));
                }
            }
        };
        match journal.commit_timeout() {
            None => wait.await,
            Some(waited) => tokio::time::timeout_at(since + waited, wait)
                .await
                .unwrap_or(Err(StoreError::NoQuorum { waited })),
        }
    }

    /// [`Broker::wait_synced_since`] for a wait that begins now.
    pub async fn wait_synced(&self, index: u64) -> Result<(), StoreError> {
        self.wait_synced_since(index, Instant::now()).await
    }

    /// Why the journal stopped writing (a write or sync failed), once it did; `None` while it
    /// works or without a journal.
    pub fn journal_failure(&self) -> Option<String> {
        self.store()?.journal().failure()
    }

    /// Resolves once the journal has failed (never without a journal, nor after it closed
    /// without failing).
    pub async fn journal_failed(&self) -> String {
        let Some(store) = self.store() else {
            return std::future::pending().await;
        };
        let journal = store.journal().clone();
        journal.ended().await;
        match journal.failure() {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }

    /// Resolves each time the journal starts a new segment (a checkpoint may then let old
    /// ones go); never without a journal.
    pub async fn segment_started(&self) {
        match self.store() {
            Some(store) => store.journal().segment_started().await,
            None => std::future::pending().await,
        }
    }

    /// The journal's state for the member's gauges (`None` without a journal).
    pub fn journal_stats(&self) -> Option<JournalStats> {
        let j = self.store()?.journal();
        let (syncs, bytes) = j.counters();
        Some(JournalStats {
            segments: j.segment_count(),
            disk_bytes: j.disk_bytes(),
            full: j.is_full(),
            syncs,
            bytes,
        })
    }
}

/// A reading of the journal, for gauges and for when to checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalStats {
    pub segments: usize,
    /// Bytes of segment files on disk.
    pub disk_bytes: u64,
    /// At its store limit, or the disk is full: persistent sends wait or fail.
    pub full: bool,
    /// Syncs and bytes written so far.
    pub syncs: u64,
    pub bytes: u64,
}

/// Where a [`SyncedQueue`] learns what is synced: the broker, or a stand-in in tests.
pub trait CommitLog {
    /// Every record up to this index is synced.
    fn synced(&self) -> u64;
    /// Waits until `index` is synced (see [`Broker::wait_synced_since`]).
    fn wait_synced_since(
        &self,
        index: u64,
        since: Instant,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl CommitLog for Broker {
    fn synced(&self) -> u64 {
        Broker::synced(self)
    }

    fn wait_synced_since(
        &self,
        index: u64,
        since: Instant,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        Broker::wait_synced_since(self, index, since)
    }
}

/// Items (receipts, forward acceptances) held until the journal has synced the work they
/// confirm, released in the order they were pushed.
#[derive(Debug)]
pub struct SyncedQueue<T> {
    held: VecDeque<Held<T>>,
    /// The highest index of work whose item has gone out (see [`SyncedQueue::confirmed`]).
    confirmed: u64,
}

#[derive(Debug)]
struct Held<T> {
    /// Released once this is synced (never below an earlier item's, so order holds).
    index: u64,
    /// When it was pushed: a quorum wait's timeout counts from here.
    since: Instant,
    item: T,
}

impl<T> Default for SyncedQueue<T> {
    fn default() -> Self {
        SyncedQueue {
            held: VecDeque::new(),
            confirmed: 0,
        }
    }
}

impl<T> SyncedQueue<T> {
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Takes `item`, which confirms work journaled at `index` (0: nothing journaled). Gives it
    /// straight back when it may go now: nothing is held before it and `index` is synced.
    pub fn push(&mut self, log: &impl CommitLog, index: u64, item: T) -> Option<T> {
        let waits = self.held.back().map_or(0, |h| h.index).max(index);
        if waits == 0 || (self.held.is_empty() && log.synced() >= waits) {
            self.confirmed = self.confirmed.max(waits);
            return Some(item);
        }
        self.held.push_back(Held {
            index: waits,
            since: Instant::now(),
            item,
        });
        None
    }

    /// Resolves once the oldest held item may go, or its wait failed; never while nothing is
    /// held.
    pub async fn synced(&self, log: &impl CommitLog) -> Result<(), StoreError> {
        match self.held.front() {
            Some(h) => log.wait_synced_since(h.index, h.since).await,
            None => std::future::pending().await,
        }
    }

    /// The held items whose work is synced, oldest first.
    pub fn release(&mut self, log: &impl CommitLog) -> impl Iterator<Item = T> + '_ {
        let synced = log.synced();
        let n = self.held.iter().take_while(|h| h.index <= synced).count();
        if let Some(last) = n.checked_sub(1).map(|i| self.held[i].index) {
            self.confirmed = self.confirmed.max(last);
        }
        self.held.drain(..n).map(|h| h.item)
    }

    /// The journal index up to which the work of the items that went out reaches (0: none
    /// went out yet). When the items still held never go out (the connection ends first),
    /// the work journaled after this is in doubt for the peer, which may send it again
    /// elsewhere (see `Session::flag_unconfirmed`).
    pub fn confirmed(&self) -> u64 {
        self.confirmed
    }

    /// Every held item, for failing them all (a wait failed: none of them is confirmed).
    pub fn fail_all(&mut self) -> impl Iterator<Item = T> + '_ {
        self.held.drain(..).map(|h| h.item)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// A commit log the test moves by hand, with a replicated group's quorum timeout.
    #[derive(Clone)]
    struct Log {
        synced: Arc<tokio::sync::watch::Sender<u64>>,
        timeout: Duration,
    }

    impl Log {
        fn new(timeout: Duration) -> Log {
            Log {
                synced: Arc::new(tokio::sync::watch::Sender::new(0)),
                timeout,
            }
        }

        fn sync(&self, index: u64) {
            self.synced.send_replace(index);
        }
    }

    impl CommitLog for Log {
        fn synced(&self) -> u64 {
            *self.synced.borrow()
        }

        fn wait_synced_since(
            &self,
            index: u64,
            since: Instant,
        ) -> impl Future<Output = Result<(), StoreError>> + Send {
            let mut rx = self.synced.subscribe();
            let timeout = self.timeout;
            async move {
                let waited = rx.wait_for(|s| *s >= index);
                match tokio::time::timeout_at(since + timeout, waited).await {
                    Ok(_) => Ok(()),
                    Err(_) => Err(StoreError::NoQuorum { waited: timeout }),
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn items_go_at_once_only_when_nothing_is_held_before_them() {
        let log = Log::new(Duration::from_secs(5));
        let mut q = SyncedQueue::default();
        assert_eq!(
            q.push(&log, 0, "nothing journaled"),
            Some("nothing journaled")
        );
        log.sync(3);
        assert_eq!(q.push(&log, 3, "synced already"), Some("synced already"));
        assert_eq!(q.push(&log, 5, "waits for 5"), None);
        // Needs nothing itself, but must not overtake the one before it.
        assert_eq!(q.push(&log, 0, "behind 5"), None);
        assert_eq!(q.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn held_items_are_released_in_order_as_their_indexes_sync() {
        let log = Log::new(Duration::from_secs(5));
        let mut q = SyncedQueue::default();
        for (index, item) in [(4, "a"), (0, "b"), (2, "c"), (9, "d")] {
            assert_eq!(q.push(&log, index, item), None);
        }
        let mover = log.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            mover.sync(4);
        });
        q.synced(&log).await.expect("index 4 syncs");
        // "c" needed only 2, but it came after "b", which came after "a": all three go.
        assert_eq!(q.release(&log).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(q.len(), 1);
        log.sync(9);
        q.synced(&log).await.expect("index 9 syncs");
        assert_eq!(q.release(&log).collect::<Vec<_>>(), ["d"]);
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_wait_fails_every_held_item_counted_from_when_it_was_pushed() {
        let timeout = Duration::from_secs(5);
        let log = Log::new(timeout);
        let mut q = SyncedQueue::default();
        let pushed = Instant::now();
        q.push(&log, 7, "first");
        tokio::time::sleep(Duration::from_secs(3)).await;
        q.push(&log, 8, "second");
        // A busy connection comes back to the wait after each other thing it does: the
        // timeout still counts from the push, not from each return.
        let outcome = loop {
            tokio::select! {
                r = q.synced(&log) => break r,
                _ = tokio::time::sleep(Duration::from_millis(400)) => {}
            }
        };
        assert!(
            matches!(outcome, Err(StoreError::NoQuorum { waited }) if waited == timeout),
            "{outcome:?}"
        );
        assert_eq!(pushed.elapsed(), timeout, "timed out from the first push");
        assert_eq!(q.fail_all().collect::<Vec<_>>(), ["first", "second"]);
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_queue_never_wakes_its_waiter() {
        let log = Log::new(Duration::from_secs(5));
        let q: SyncedQueue<()> = SyncedQueue::default();
        log.sync(100);
        let waited = tokio::time::timeout(Duration::from_secs(60), q.synced(&log)).await;
        assert!(waited.is_err(), "an empty queue woke its waiter");
    }
}
