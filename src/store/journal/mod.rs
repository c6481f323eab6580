//! The append-only segmented journal: one writer thread, group commit, positional reads.
//!
//! Appends are framed by the caller's thread into a shared batch (the index is assigned under
//! the same lock, so indexes are consecutive in file order); the writer thread swaps the batch
//! out, writes it with as few syscalls as the segment boundaries allow, syncs once per batch
//! (`local_disk`), hands the synced index to its committer (the broker, which makes the
//! messages visible there, on the writer thread) and then publishes it. Every append that
//! arrived while a sync was running shares the next one: that is the group commit. A synced
//! journal also sizes it by what waits: a sync that released N commit waits holds the next one
//! back until N new waits joined those queued, within about one sync's time (`group.rs`), so
//! producers that each wait for a receipt share one sync per round. With a
//! replication gate the committer is called where a quorum's commit is published instead; it
//! is also called when the journal fails, is fenced or closes, so the broker's waiters look at
//! why. Calls can come from more than one thread (a failure, a fence or a close beside a
//! commit): the committer serializes them. It must not take the `writing` lock.
//!
//! Segments are preallocated with `fallocate`, so a write never grows a file and running out
//! of space shows up when a segment is created — where it is handled like `store_limit`. In a
//! synced journal a second thread, the prefiller (`prefill.rs`), writes zeros a little ahead of
//! the writer, so each `fdatasync` flushes data into blocks already written instead of also
//! committing the conversion of fallocated ones.
//! Whoever writes holds the `writing` lock from taking a batch until it is complete, so
//! batches reach the files in index order; a follower appending its master's records without
//! syncing (`_mem` modes) writes them itself when the lock is free, sparing the hand-over to
//! the writer thread and back on the path to its acknowledgement.
//!
//! Full is never a dead end: checkpoints (which let old segments go) wait until everything
//! appended is written, and consumers' acknowledgements are appended behind what producers sent,
//! so the writer must always be able to go on. `store_limit` is therefore enforced where sends
//! are admitted, not by the writer: once the segments would pass the limit the journal is `full`
//! — new persistent sends wait or fail — while what was already accepted, and the
//! acknowledgements after it, are still written (beyond the limit if they must be: flow control
//! keeps what may be accepted but unwritten to half a segment, so without acknowledgements that
//! is at most one segment) and checkpoints go on. A full disk cannot be written past, so the
//! journal keeps a reserve file of one segment that it deletes when the disk is full: the
//! segment that takes its place holds what was accepted and the acknowledgements after it, and a
//! checkpoint that finds no room may use the reserve too. The journal is not full again once its
//! segments are back under the limit and the reserve file could be made again.
//!
//! Segment files are made in `segment.rs`; the writer thread and the writing of batches are in
//! `writer.rs`; the prefiller is in `prefill.rs`; the group commit policy is in `group.rs`.
//! The last handle dropped without [`Journal::close`] stops and joins the writer and the
//! prefiller where they are (as a crash would stop them), so nothing of theirs is written after.
//!
//! Tried and dropped (durable10, against this design, alternating runs in one sitting on a
//! 2-core VM): a connection's task writing, syncing and committing its own run's records when
//! the writer sleeps, instead of waking it (no writer wake; the receipt written without the hop
//! back). It cut the commit profile's dispatch→receipt hop (p50 10–12 µs → 3–8 µs) and, with
//! the disk lightly loaded, raised 1P/1C by ~24 % at 28 % less broker CPU per message; but its
//! `fdatasync`s on an async worker took 3–6× as long as the writer thread's whenever the disk
//! was busy (1P/1C fell to a quarter, broker CPU per message nearly doubled), and with four
//! producers it halved the rate — still ~10 % down, with fewer sends per sync, when limited to
//! moments no other commit wait was announced. Syncs stay on the writer thread.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::{Condvar, Mutex, RwLock};

use super::frame::{self, FRAME_HEADER};
use super::mark::SyncedMark;
use super::{sync_dir, StoreError};

mod group;
mod prefill;
mod segment;
mod writer;

pub(crate) use segment::Segment;
use segment::{allocate, create_segment, RESERVE_FILE};
use writer::{fail, write_queued, writer};
#[cfg(test)]
pub(crate) use {group::MAX_RETURN_WAIT, writer::MAX_UNWAITED};

/// How a batch is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Written to the OS (survives a process crash, not a power loss).
    Written,
    /// Written and `fdatasync`ed.
    Synced,
}

#[derive(Debug, Clone)]
pub struct JournalOptions {
    pub segment_size: u64,
    pub store_limit: Option<u64>,
    pub durability: Durability,
    /// Extra time the writer waits to gather more appends into one sync (0 = none: group
    /// commit comes from appends arriving while the previous sync runs).
    pub group_commit_window: Duration,
    pub max_record: usize,
}

/// Told every index that becomes committed, before [`Journal::synced`] shows it (see the module
/// doc): the broker makes what it covers visible there.
pub type Committer = Box<dyn Fn(u64) + Send + Sync>;

/// Most bytes of records the writer may be behind before new persistent sends wait.
const MAX_BEHIND: u64 = 8 << 20;

/// Records copied out of (or into) a journal as their on-disk frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrames {
    pub first: u64,
    pub count: u64,
    pub bytes: Vec<u8>,
}

impl RawFrames {
    /// Scans frames copied from another journal: they must be whole, pass their checksums,
    /// number `count` and run from `first` on (each at most `max_record` bytes of payload).
    pub(crate) fn check(&self, max_record: usize) -> Result<frame::Scan, StoreError> {
        let scan = frame::scan(&self.bytes, self.first, max_record + 8);
        if scan.ended != frame::End::Clean
            || scan.end != self.bytes.len()
            || scan.records.len() as u64 != self.count
        {
            return Err(StoreError::Failed(format!(
                "replicated records {}..{} are damaged",
                self.first,
                self.first + self.count
            )));
        }
        Ok(scan)
    }
}

/// The batches of whoever writes: the one being written (kept while the disk is full) and an
/// empty one to swap in for the next appends.
#[derive(Default)]
struct Writing {
    carry: Batch,
    spare: Batch,
}

/// Appends waiting for the writer.
#[derive(Default)]
struct Batch {
    buf: BytesMut,
    /// (index, frame length) of each record in `buf`, in order.
    frames: Vec<(u64, u32)>,
    /// When the first record of this batch was appended (for `meshmq_journal_commit_wait_seconds`).
    first_at: Option<std::time::Instant>,
}

pub(crate) struct Shared {
    pub dir: PathBuf,
    pub options: JournalOptions,
    batch: Mutex<Batch>,
    /// Held by whoever writes, from taking a batch until it is complete (then the batch lock
    /// is taken inside it, never the other way round).
    writing: Mutex<Writing>,
    /// Assigned under the batch lock, so indexes follow file order.
    next_index: AtomicU64,
    wake: Condvar,
    pub segments: RwLock<Vec<Segment>>,
    /// What waiters see: every record up to it is committed (locally durable, and in a
    /// replicated group also acknowledged by a quorum).
    synced: tokio::sync::watch::Sender<u64>,
    /// Every record up to it is durable here (equal to `synced` unless gated).
    local: tokio::sync::watch::Sender<u64>,
    /// Set by replication: `synced` then moves only through `publish_committed`.
    gate: Mutex<Option<Duration>>,
    /// Told each commit before `synced` moves (set once, by the broker).
    committer: OnceLock<Committer>,
    /// Told when the journal fails or closes.
    ended: tokio::sync::Notify,
    /// Why commits stopped for good in this term (this member no longer serves).
    fenced: Mutex<Option<String>>,
    /// Indexes that garbage collection must keep (a follower still streaming them).
    pins: Mutex<std::collections::HashMap<u64, u64>>,
    failed: Mutex<Option<String>>,
    /// The writer waits for space (even the reserve is spent).
    stuck: AtomicBool,
    /// The segments are beyond `store_limit`.
    over_limit: AtomicBool,
    /// The reserve file is not there (given up to a full disk, or it could not be made).
    reserve_missing: AtomicBool,
    /// Held while the reserve file is given up or made again (by the writer, a checkpoint).
    reserve_lock: Mutex<()>,
    /// `next_index` of the newest checkpoint on disk (0: none).
    checkpointed: AtomicU64,
    /// Every record before it is on stable storage (`Written` journals: made so before each
    /// checkpoint; 0 until the first).
    durable_before: AtomicU64,
    /// Told each time a new segment is started (a checkpoint may let old ones go).
    started_segment: tokio::sync::Notify,
    unsynced_bytes: AtomicU64,
    /// Told whenever `has_room` may have turned true (a batch written, segments deleted, the
    /// reserve made again), for producers waiting for room.
    room: tokio::sync::Notify,
    disk_bytes: AtomicU64,
    stop: AtomicBool,
    /// Set when the last handle is dropped without `close` (a crash, as tests model one): the
    /// writer finishes at most the batch it holds and writes nothing queued after it, as a
    /// crash would lose it.
    abandoned: AtomicBool,
    /// The writer has written its last and stopped (`close`).
    closed: AtomicBool,
    pub fsyncs: AtomicU64,
    pub appended_bytes: AtomicU64,
    /// The last record known durable, for recovery to tell a torn tail from corruption.
    mark: SyncedMark,
    /// Where the prefiller writes zeros ahead of the writer (`Synced` journals only).
    prefill: prefill::Prefill,
    /// The commit waits in progress, which size the next group commit (`group.rs`).
    waits: Mutex<group::Waits>,
    /// The writer's group commit policy.
    group: Mutex<group::GroupCommit>,
    /// `group`'s target, for a new wait to tell whether it completes it.
    wait_target: std::sync::atomic::AtomicUsize,
    /// The newest index whose sync someone needs (a synced journal): a record appended with
    /// [`Journal::append`], or one a commit wait names. Records after it were appended with
    /// [`Journal::append_unwaited`]: the writer holds them for the next sync someone needs, or
    /// syncs them once they are `writer::MAX_UNWAITED` old.
    needed: AtomicU64,
}

impl Shared {
    /// Tells the committer (if any) that everything up to `index` is committed — or, when
    /// nothing moved, that the journal failed, was fenced or closed.
    fn committed(&self, index: u64) {
        if let Some(commit) = self.committer.get() {
            commit(index);
        }
    }

    fn is_full(&self) -> bool {
        self.stuck.load(Ordering::Relaxed)
            || self.over_limit.load(Ordering::Relaxed)
            || self.reserve_missing.load(Ordering::Relaxed)
    }

    fn reserve_path(&self) -> PathBuf {
        self.dir.join(RESERVE_FILE)
    }

    /// Deletes the reserve file to make room on a full disk; false when there is none.
    fn give_up_reserve(&self) -> bool {
        let _reserve = self.reserve_lock.lock();
        if self.reserve_missing.swap(true, Ordering::Relaxed) {
            return false;
        }
        std::fs::remove_file(self.reserve_path()).is_ok()
    }

    /// Makes the reserve file when it is missing (at start, and once a full disk has room
    /// again).
    fn restore_reserve(&self) {
        let _reserve = self.reserve_lock.lock();
        let path = self.reserve_path();
        let size = self.options.segment_size;
        if std::fs::metadata(&path).is_ok_and(|m| m.len() >= size) {
            if self.reserve_missing.swap(false, Ordering::Relaxed) {
                self.room.notify_waiters();
            }
            return;
        }
        let _ = std::fs::remove_file(&path);
        match allocate(&path, size).and_then(|_| sync_dir(&self.dir)) {
            Ok(()) => {
                self.reserve_missing.store(false, Ordering::Relaxed);
                self.room.notify_waiters();
            }
            Err(e) => {
                if !self.reserve_missing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "no room for the journal's reserve: persistent sends wait until there is");
                }
            }
        }
    }
}

/// The journal handle.
#[derive(Clone)]
pub struct Journal {
    pub(crate) shared: Arc<Shared>,
    threads: Arc<Threads>,
}

/// A wait for a commit, announced to the journal while it lasts ([`Journal::commit_wait`]).
pub struct CommitWait<'a> {
    shared: &'a Shared,
    index: Option<u64>,
}

impl Drop for CommitWait<'_> {
    fn drop(&mut self) {
        if let Some(index) = self.index {
            self.shared.waits.lock().remove(index);
        }
    }
}

/// The journal's threads, shared by its handles. Dropped with the last handle: if the journal
/// was not closed, its threads are stopped where they are (the writer finishes at most the
/// batch it holds, nothing queued after it, as in a crash) and joined, so no write of theirs
/// (a batch, or the prefiller's zeros) can land in a journal opened again in the same
/// directory after the drop.
struct Threads {
    shared: Arc<Shared>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    prefiller: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Threads {
    fn drop(&mut self) {
        let handles = [
            self.writer.get_mut().take(),
            self.prefiller.get_mut().take(),
        ];
        if handles.iter().all(Option::is_none) {
            return;
        }
        self.shared.abandoned.store(true, Ordering::Release);
        self.shared.stop.store(true, Ordering::Release);
        drop(self.shared.batch.lock());
        self.shared.wake.notify_all();
        self.shared.prefill.wake();
        let me = std::thread::current().id();
        for handle in handles.into_iter().flatten() {
            // The last handle may go on one of these threads (the committer's broker dropped
            // there): it returns by itself once it sees the flag.
            if handle.thread().id() != me {
                let _ = handle.join();
            }
        }
    }
}

impl Journal {
    /// Starts the writer over `segments` (recovered, oldest first; the last one is appended to).
    pub(crate) fn start(
        dir: PathBuf,
        options: JournalOptions,
        segments: Vec<Segment>,
        next_index: u64,
        checkpointed: u64,
        mark: SyncedMark,
    ) -> Journal {
        let disk: u64 = segments.iter().map(|s| s.capacity).sum();
        let shared = Arc::new(Shared {
            dir,
            options,
            batch: Mutex::new(Batch::default()),
            writing: Mutex::new(Writing::default()),
            next_index: AtomicU64::new(next_index),
            wake: Condvar::new(),
            segments: RwLock::new(segments),
            synced: tokio::sync::watch::Sender::new(next_index.saturating_sub(1)),
            local: tokio::sync::watch::Sender::new(next_index.saturating_sub(1)),
            gate: Mutex::new(None),
            committer: OnceLock::new(),
            ended: tokio::sync::Notify::new(),
            fenced: Mutex::new(None),
            pins: Mutex::new(std::collections::HashMap::new()),
            failed: Mutex::new(None),
            stuck: AtomicBool::new(false),
            over_limit: AtomicBool::new(false),
            reserve_missing: AtomicBool::new(false),
            reserve_lock: Mutex::new(()),
            checkpointed: AtomicU64::new(checkpointed),
            durable_before: AtomicU64::new(0),
            started_segment: tokio::sync::Notify::new(),
            unsynced_bytes: AtomicU64::new(0),
            room: tokio::sync::Notify::new(),
            disk_bytes: AtomicU64::new(disk),
            stop: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            fsyncs: AtomicU64::new(0),
            appended_bytes: AtomicU64::new(0),
            mark,
            prefill: prefill::Prefill::default(),
            waits: Mutex::new(group::Waits::default()),
            group: Mutex::new(group::GroupCommit::default()),
            wait_target: std::sync::atomic::AtomicUsize::new(0),
            needed: AtomicU64::new(0),
        });
        if let Some(limit) = shared.options.store_limit {
            shared.over_limit.store(disk > limit, Ordering::Relaxed);
        }
        shared.restore_reserve();
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("meshmq-journal".into())
            .spawn(move || writer(thread_shared))
            .expect("spawning the journal writer thread");
        let prefiller = (shared.options.durability == Durability::Synced).then(|| {
            if let Some(active) = shared.segments.read().last() {
                shared.prefill.claim(
                    active.first,
                    &active.path,
                    active.capacity,
                    active.end,
                    active.end,
                );
            }
            let thread_shared = shared.clone();
            std::thread::Builder::new()
                .name("meshmq-prefill".into())
                .spawn(move || prefill::prefiller(thread_shared))
                .expect("spawning the journal prefill thread")
        });
        Journal {
            threads: Arc::new(Threads {
                shared: shared.clone(),
                writer: Mutex::new(Some(handle)),
                prefiller: Mutex::new(prefiller),
            }),
            shared,
        }
    }

    /// Frames `payload` as the next record and queues it; returns its index. Its commit is
    /// needed soon (it makes something visible): a synced journal syncs it as soon as it can.
    pub fn append(&self, payload: &[u8]) -> u64 {
        self.append_as(payload, true)
    }

    /// [`Journal::append`] for a record nobody waits for unless a commit wait says so (an
    /// acknowledgement without a receipt): a synced journal does not give it a sync of its own
    /// but writes it with the next sync someone needs — or after `writer::MAX_UNWAITED`, so it
    /// never stays unsynced for long. Until then [`Journal::synced`] does not cover it; lost to
    /// a power cut, an acknowledgement means the message is delivered again.
    pub fn append_unwaited(&self, payload: &[u8]) -> u64 {
        self.append_as(payload, false)
    }

    fn append_as(&self, payload: &[u8], needed: bool) -> u64 {
        let len = frame::frame_len(payload.len());
        let mut batch = self.shared.batch.lock();
        let first = batch.frames.is_empty();
        if first {
            batch.first_at = Some(std::time::Instant::now());
        }
        let index = self.shared.next_index.fetch_add(1, Ordering::Relaxed);
        frame::put_frame(index, payload, &mut batch.buf);
        batch.frames.push((index, len as u32));
        // Counted while the batch is held, so the writer (which subtracts what it took from
        // the batch) never sees the record before its bytes are counted.
        self.shared
            .unsynced_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
        // Under the batch lock, so the writer sees the batch and what it needs together.
        let now_needed = needed && {
            let before = self.shared.needed.fetch_max(index, Ordering::AcqRel);
            before < batch.frames[0].0
        };
        drop(batch);
        // Only an empty batch can have the writer waiting for appends, or one that held only
        // records nobody needed yet; otherwise it is writing, or holding the sync back for the
        // waits it expects (`group.rs`), which a record more does not change.
        if first || (now_needed && self.shared.options.durability == Durability::Synced) {
            self.shared.wake.notify_one();
        }
        index
    }

    /// The index the next append will get.
    pub fn next_index(&self) -> u64 {
        self.shared.next_index.load(Ordering::Relaxed)
    }

    /// Every record up to this index is durable.
    pub fn synced(&self) -> u64 {
        *self.shared.synced.borrow()
    }

    pub fn failure(&self) -> Option<String> {
        self.shared.failed.lock().clone()
    }

    /// Waits until `index` is committed. In a replicated group that takes a quorum's
    /// acknowledgement, and the wait fails after the quorum timeout rather than hang.
    pub async fn wait_synced(&self, index: u64) -> Result<(), StoreError> {
        self.wait_synced_since(index, tokio::time::Instant::now())
            .await
    }

    /// [`Journal::wait_synced`] for a wait that began at `since`: the quorum timeout counts
    /// from then, however often the caller stops waiting and comes back.
    pub async fn wait_synced_since(
        &self,
        index: u64,
        since: tokio::time::Instant,
    ) -> Result<(), StoreError> {
        let timeout = *self.shared.gate.lock();
        match timeout {
            None => self.wait_committed(index).await,
            Some(t) => match tokio::time::timeout_at(since + t, self.wait_committed(index)).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::NoQuorum { waited: t }),
            },
        }
    }

    async fn wait_committed(&self, index: u64) -> Result<(), StoreError> {
        let mut rx = self.shared.synced.subscribe();
        let _wait = self.commit_wait(index);
        loop {
            if *rx.borrow_and_update() >= index {
                return Ok(());
            }
            self.still_committing()?;
            if rx.changed().await.is_err() {
                return Err(StoreError::Failed("the journal writer stopped".into()));
            }
        }
    }

    /// Announces a wait for the commit of `index` until the returned guard is dropped: a synced
    /// journal sizes its group commits by the waits (see `group.rs`). Nothing is announced for
    /// an index already committed, nor by a journal that does not sync.
    pub fn commit_wait(&self, index: u64) -> CommitWait<'_> {
        let shared = &*self.shared;
        if shared.options.durability != Durability::Synced || index <= self.synced() {
            return CommitWait {
                shared,
                index: None,
            };
        }
        let after = shared.waits.lock().add(index, std::time::Instant::now());
        let target = shared.wait_target.load(Ordering::Acquire);
        // A record appended unwaited is needed now: the writer may be holding it back.
        let unwaited = shared.needed.fetch_max(index, Ordering::AcqRel) < index;
        if unwaited || (target != 0 && after >= target) {
            // The writer may be waiting for this one. Taking the batch lock first means it
            // either has not checked the waits (or what is needed) yet and will see this one,
            // or is asleep.
            drop(shared.batch.lock());
            shared.wake.notify_one();
        }
        CommitWait {
            shared,
            index: Some(index),
        }
    }

    /// Why nothing more will be committed, if so: the journal failed, or this member was
    /// fenced.
    pub fn still_committing(&self) -> Result<(), StoreError> {
        if let Some(f) = self.failure() {
            return Err(StoreError::Failed(f));
        }
        if let Some(reason) = self.shared.fenced.lock().clone() {
            return Err(StoreError::Fenced(reason));
        }
        Ok(())
    }

    /// How long a wait for a commit may take before it fails (`None`: no limit; set while
    /// replication decides commits).
    pub fn commit_timeout(&self) -> Option<Duration> {
        *self.shared.gate.lock()
    }

    /// Sets the journal's committer (once; later calls are ignored). Commits made before it
    /// was set are not told to it: the caller catches up from [`Journal::synced`].
    pub fn set_committer(&self, committer: Committer) {
        let _ = self.shared.committer.set(committer);
    }

    /// Resolves once the journal has failed or closed (at once if it has).
    pub async fn ended(&self) {
        loop {
            let ended = self.shared.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.failure().is_some() || self.is_closed() {
                return;
            }
            ended.await;
        }
    }

    /// Watches [`Journal::synced`]; it is also marked changed (without moving) when the journal
    /// fails, is fenced or is closed, so a watcher can look at why.
    pub fn watch_synced(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.synced.subscribe()
    }

    /// True once [`Journal::close`] has run: nothing more will be written or synced.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Hands commits to replication: from now on `synced` advances only through
    /// [`Journal::publish_committed`], and a wait for a commit fails after `timeout`.
    pub fn gate(&self, timeout: Duration) {
        *self.shared.gate.lock() = Some(timeout);
    }

    /// Records that everything up to `index` is committed (replication calls this once a
    /// quorum acknowledged it); never moves backwards, never past what is durable here.
    pub fn publish_committed(&self, index: u64) {
        let index = index.min(*self.shared.local.borrow());
        if index <= *self.shared.synced.borrow() {
            return;
        }
        self.shared.committed(index);
        self.shared.synced.send_if_modified(|c| {
            if index > *c {
                *c = index;
                true
            } else {
                false
            }
        });
    }

    /// Stops every commit for good (this member stopped serving): waiters fail with `reason`.
    pub fn fence(&self, reason: &str) {
        *self.shared.fenced.lock() = Some(reason.to_string());
        self.shared.synced.send_modify(|_| {});
        self.shared.committed(self.synced());
    }

    /// Every record up to the returned index is durable on this member.
    pub fn local_synced(&self) -> u64 {
        *self.shared.local.borrow()
    }

    /// Watches [`Journal::local_synced`].
    pub fn watch_local(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.local.subscribe()
    }

    /// The oldest record held: on disk, or appended and about to be written into the last
    /// segment (`next_index` when there is none).
    pub fn first_index(&self) -> u64 {
        let segments = self.shared.segments.read();
        // With no record in any segment, whatever was written is gone (it was durable), and
        // the oldest held is the first record after it, appended but not yet written (segments
        // are made by the writer, when it writes).
        segments.iter().find(|s| !s.offsets.is_empty()).map_or_else(
            || (self.local_synced() + 1).min(self.next_index()),
            |s| s.first,
        )
    }

    /// Keeps garbage collection from deleting record `index` and later (`id` names the pin).
    pub fn pin(&self, id: u64, index: u64) {
        self.shared.pins.lock().insert(id, index);
    }

    pub fn unpin(&self, id: u64) {
        self.shared.pins.lock().remove(&id);
    }

    /// Raw frames from record `from` on, as they are on disk (at least one record, at most
    /// about `max_bytes`), for replication. `Ok(None)` when `from` is not written yet.
    pub fn read_frames(
        &self,
        from: u64,
        max_bytes: usize,
    ) -> Result<Option<RawFrames>, StoreError> {
        let (file, path, start, end, count) = {
            let segs = self.shared.segments.read();
            if segs.first().is_some_and(|s| from < s.first) {
                return Err(StoreError::Missing(from));
            }
            let Some(seg) = segs.iter().rev().find(|s| s.contains(from)) else {
                if segs
                    .iter()
                    .all(|s| from >= s.first + s.offsets.len() as u64)
                {
                    return Ok(None);
                }
                return Err(StoreError::Missing(from));
            };
            let i = (from - seg.first) as usize;
            let start = seg.offsets[i] as u64;
            let mut j = i + 1;
            while j < seg.offsets.len() && (seg.offsets[j] as u64 - start) < max_bytes as u64 {
                j += 1;
            }
            let end = seg.offsets.get(j).map_or(seg.end, |&o| o as u64);
            (
                seg.file.clone(),
                seg.path.clone(),
                start,
                end,
                (j - i) as u64,
            )
        };
        let mut bytes = vec![0u8; (end - start) as usize];
        file.read_exact_at(&mut bytes, start)
            .map_err(|e| StoreError::io(&path, "read", e))?;
        Ok(Some(RawFrames {
            first: from,
            count,
            bytes,
        }))
    }

    /// Appends frames copied from another journal (a follower's copy of its master's). They
    /// must continue this journal exactly and pass their checksums.
    pub fn append_frames(&self, frames: &RawFrames) -> Result<(), StoreError> {
        let scan = frames.check(self.shared.options.max_record)?;
        let mut batch = self.shared.batch.lock();
        let next = self.shared.next_index.load(Ordering::Relaxed);
        if next != frames.first {
            return Err(StoreError::Failed(format!(
                "replicated records start at {} but this journal continues at {next}",
                frames.first
            )));
        }
        if batch.frames.is_empty() {
            batch.first_at = Some(std::time::Instant::now());
        }
        batch.buf.extend_from_slice(&frames.bytes);
        let mut lens = Vec::with_capacity(scan.records.len());
        for (k, f) in scan.records.iter().enumerate() {
            let end = scan.records.get(k + 1).map_or(scan.end, |n| n.offset);
            lens.push((f.index, (end - f.offset) as u32));
        }
        batch.frames.extend(lens);
        self.shared
            .next_index
            .store(frames.first + frames.count, Ordering::Relaxed);
        // A follower's copy is needed at once: its master waits for the acknowledgement.
        self.shared.needed.fetch_max(
            (frames.first + frames.count).saturating_sub(1),
            Ordering::AcqRel,
        );
        self.shared
            .unsynced_bytes
            .fetch_add(frames.bytes.len() as u64, Ordering::Relaxed);
        drop(batch);
        if self.shared.options.durability == Durability::Written {
            // Nothing to sync: a write to the OS costs less than waking the writer thread
            // and being woken back. When the writer is busy (or waits for disk space) it
            // takes these records with the rest.
            if let Some(mut w) = self.shared.writing.try_lock() {
                if w.carry.frames.is_empty() {
                    match write_queued(&self.shared, &mut w, false) {
                        Ok(()) => {}
                        // Kept for the writer, which retries it once there is space.
                        Err(StoreError::NoSpace { .. }) => {
                            self.shared.wake.notify_one();
                        }
                        Err(e) => {
                            drop(w);
                            fail(&self.shared, &e);
                            self.shared.wake.notify_one();
                            return Err(e);
                        }
                    }
                }
            }
        }
        // Whatever is still queued is the writer's.
        if !self.shared.batch.lock().frames.is_empty() {
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// False while the journal is full (at its limit, or the disk is), or the writer is behind
    /// by half a segment (what the reserve must be able to hold) or 8 MiB. The records waiting
    /// for the writer, and the bodies of their messages until they are durable and can be paged
    /// out, are in memory beyond `memory_limit`: this keeps them small, and a writer 8 MiB
    /// behind still syncs batches large enough to keep up.
    pub fn has_room(&self) -> bool {
        let behind = (self.shared.options.segment_size / 2).min(MAX_BEHIND);
        !self.is_full()
            && self.shared.unsynced_bytes.load(Ordering::Relaxed) < behind
            && self.failure().is_none()
    }

    pub fn is_full(&self) -> bool {
        self.shared.is_full()
    }

    /// Resolves once [`Journal::has_room`] says yes (at once if it does now). Woken by the
    /// journal each time it frees room, never by polling.
    pub async fn wait_room(&self) {
        loop {
            let freed = self.shared.room.notified();
            tokio::pin!(freed);
            // Registered before the check: room freed after it wakes this waiter.
            freed.as_mut().enable();
            if self.has_room() {
                return;
            }
            freed.await;
        }
    }

    /// Bytes of segment files on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.shared.disk_bytes.load(Ordering::Relaxed)
    }

    /// (syncs, bytes appended) so far.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.shared.fsyncs.load(Ordering::Relaxed),
            self.shared.appended_bytes.load(Ordering::Relaxed),
        )
    }

    pub fn segment_count(&self) -> usize {
        self.shared.segments.read().len()
    }

    /// Reads the payload of record `index`.
    pub fn read(&self, index: u64) -> Result<Vec<u8>, StoreError> {
        let (file, offset, path) = {
            let segs = self.shared.segments.read();
            let seg = segs
                .iter()
                .rev()
                .find(|s| s.contains(index))
                .ok_or(StoreError::Missing(index))?;
            let off = seg.offsets[(index - seg.first) as usize] as u64;
            (seg.file.clone(), off, seg.path.clone())
        };
        let mut header = [0u8; FRAME_HEADER];
        file.read_exact_at(&mut header, offset)
            .map_err(|e| StoreError::io(&path, "read", e))?;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len < 8 || len > self.shared.options.max_record + 8 {
            return Err(StoreError::Corrupt {
                path: path.display().to_string(),
                offset,
                reason: format!("impossible frame length {len} when reading record {index}"),
            });
        }
        let mut body = vec![0u8; len];
        file.read_exact_at(&mut body, offset + 8)
            .map_err(|e| StoreError::io(&path, "read", e))?;
        let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if crc32c::crc32c(&body) != crc || body[..8] != index.to_be_bytes() {
            return Err(StoreError::Corrupt {
                path: path.display().to_string(),
                offset,
                reason: format!("record {index} fails its checksum"),
            });
        }
        body.drain(..8);
        Ok(body)
    }

    /// Counts a message added at `index` as live in its segment.
    pub fn retain(&self, index: u64) {
        let segs = self.shared.segments.read();
        if let Some(s) = segs.iter().rev().find(|s| index >= s.first) {
            s.live.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The message added at `index` is gone; its segment may become deletable.
    pub fn release(&self, index: u64) {
        let segs = self.shared.segments.read();
        if let Some(s) = segs.iter().rev().find(|s| index >= s.first) {
            let _ = s
                .live
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        }
    }

    /// Gives up the reserve file so a checkpoint can be written on a full disk (the checkpoint
    /// is what lets segments go); false when there is none. The journal is full until the
    /// reserve can be made again.
    pub(crate) fn give_up_reserve(&self) -> bool {
        self.shared.give_up_reserve()
    }

    /// Resolves once the writer has started a new segment since the last call.
    pub async fn segment_started(&self) {
        self.shared.started_segment.notified().await
    }

    /// Notes that a checkpoint covering every record before `next_index` is on disk.
    pub(crate) fn checkpointed(&self, next_index: u64) {
        self.shared
            .checkpointed
            .fetch_max(next_index, Ordering::Relaxed);
    }

    /// Makes every record before `next_index` that is written durable, for a checkpoint about
    /// to cover them: a checkpoint must never outlive the records of the live messages it
    /// lists. A `Synced` journal already is; a `Written` one (a `_mem` sync mode) syncs nothing
    /// by itself, so without this a power cut would leave its checkpoint listing messages whose
    /// records are gone. Callers wait for the records first ([`Journal::wait_local`]), except a
    /// follower installing its master's snapshot before the records it covers arrive. Costs one
    /// `fdatasync` per segment written since the last checkpoint. Blocking.
    pub(crate) fn make_durable_before(&self, next_index: u64) -> Result<(), StoreError> {
        let shared = &self.shared;
        let next_index = next_index.min(self.local_synced() + 1);
        if shared.options.durability == Durability::Synced || next_index <= 1 {
            return Ok(());
        }
        let last = next_index - 1;
        let from = shared.durable_before.load(Ordering::Acquire);
        if from >= next_index {
            return Ok(());
        }
        let files: Vec<(Arc<File>, PathBuf)> = shared
            .segments
            .read()
            .iter()
            .filter(|s| {
                let end = s.first + s.offsets.len() as u64;
                s.first < next_index && end > from && !s.offsets.is_empty()
            })
            .map(|s| (s.file.clone(), s.path.clone()))
            .collect();
        for (file, path) in files {
            file.sync_data()
                .map_err(|e| StoreError::io(&path, "sync", e))?;
            shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        shared
            .durable_before
            .fetch_max(next_index, Ordering::AcqRel);
        shared.mark.record(last)?;
        shared.mark.sync()
    }

    /// Waits until every record up to `index` is written here (durable by this journal's
    /// own standard, whatever a quorum says).
    pub async fn wait_local(&self, index: u64) -> Result<(), StoreError> {
        let mut rx = self.shared.local.subscribe();
        loop {
            if *rx.borrow_and_update() >= index {
                return Ok(());
            }
            if let Some(why) = self.failure() {
                return Err(StoreError::Failed(why));
            }
            if self.is_closed() || rx.changed().await.is_err() {
                return Err(StoreError::Failed("the journal writer stopped".into()));
            }
        }
    }

    /// `next_index` of the newest checkpoint on disk (0: none).
    pub(crate) fn last_checkpoint(&self) -> u64 {
        self.shared.checkpointed.load(Ordering::Relaxed)
    }

    /// Deletes segments that hold only records before `before` and no live message, then
    /// takes back what a full journal spent of its reserve if there is room again.
    /// Returns how many segments were deleted.
    pub fn collect_garbage(&self, before: u64) -> usize {
        let before = self
            .shared
            .pins
            .lock()
            .values()
            .fold(before, |b, &pin| b.min(pin));
        let mut deleted = 0;
        let mut segs = self.shared.segments.write();
        while segs.len() > 1 {
            let s = &segs[0];
            let next_first = segs[1].first;
            if next_first > before || s.live.load(Ordering::Relaxed) > 0 {
                break;
            }
            if let Err(e) = std::fs::remove_file(&s.path) {
                tracing::warn!(path = %s.path.display(), error = %e, "cannot delete a journal segment");
                break;
            }
            self.shared
                .disk_bytes
                .fetch_sub(s.capacity, Ordering::Relaxed);
            segs.remove(0);
            deleted += 1;
        }
        drop(segs);
        if deleted > 0 {
            let _ = sync_dir(&self.shared.dir);
        }
        if let Some(limit) = self.shared.options.store_limit {
            if self.disk_bytes() <= limit && self.shared.over_limit.swap(false, Ordering::Relaxed) {
                self.shared.room.notify_waiters();
            }
        }
        self.shared.restore_reserve();
        if self.shared.stuck.load(Ordering::Relaxed) {
            // The writer retries its waiting batch now there may be room.
            self.shared.wake.notify_one();
        }
        deleted
    }

    /// Writes everything queued, then stops the writer.
    pub fn close(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        if let Some(h) = self.threads.writer.lock().take() {
            let _ = h.join();
        }
        self.shared.prefill.wake();
        if let Some(h) = self.threads.prefiller.lock().take() {
            let _ = h.join();
        }
        if let Err(e) = self.shared.mark.sync() {
            tracing::warn!(error = %e, "cannot sync the journal's synced mark at close");
        }
        self.shared.closed.store(true, Ordering::Release);
        if crate::metrics::commit_profile::enabled() {
            eprint!("{}", crate::metrics::commit_profile::report());
        }
        // The committer and the watchers of `synced` see the last index, then the close.
        self.shared.committed(self.synced());
        self.shared.synced.send_modify(|_| {});
        self.shared.local.send_modify(|_| {});
        self.shared.ended.notify_waiters();
    }
}
