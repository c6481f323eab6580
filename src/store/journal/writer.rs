//! The writer thread and the writing of batches: it waits for appends (syncing the synced mark
//! when idle), holds a synced journal's next sync back for the commit waits it expects
//! (`group.rs`), gathers them for the group-commit window, writes each batch into the segments —
//! rolling to a new preallocated segment when the active one is full, keeping the batch when
//! the disk is full — syncs once per batch, and tells the committer (the broker dispatches
//! there, on this thread) and then the watchers what it synced.

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::group::Start;
use super::{create_segment, Batch, Durability, Shared, Writing};
use crate::metrics::commit_profile::{self as profile, Stage};
use crate::store::StoreError;

/// How long the writer waits for more work before it syncs the synced mark.
const MARK_IDLE: Duration = Duration::from_millis(20);

/// The longest the synced mark goes unsynced under a load that never lets the writer idle.
const MARK_MAX_LAG: Duration = Duration::from_secs(1);

/// A batch buffer larger than this is given back once written.
const MAX_IDLE_BATCH: usize = 4 << 20;

/// The longest a record appended unwaited (an acknowledgement without a receipt) waits for a
/// sync someone needs before it gets one of its own. Ten times a sync on this class of disk
/// (0.2–0.4 ms), so under any load with a waiter the records ride along; short against the
/// 20 ms the synced mark may lag, and what a power cut within it loses is acknowledgements —
/// their messages come back as redeliveries, never lost. Consumers acknowledging a backlog
/// with no producer get one sync per this interval instead of one per few acknowledgements.
pub(crate) const MAX_UNWAITED: Duration = Duration::from_millis(5);

/// Unwaited records stop waiting once the batch holds this many bytes (or the room limit's
/// quarter, if smaller): senders must not find the journal without room because of them.
const MAX_UNWAITED_BYTES: u64 = 256 << 10;

/// When a batch that holds records (taken under the batch lock) must be written even though
/// nobody needs it: `None` when someone does (or it is too large to hold).
fn unwaited_until(shared: &Shared, batch: &Batch) -> Option<Instant> {
    let first = batch.frames.first()?.0;
    let room = (shared.options.segment_size / 2).min(super::MAX_BEHIND) / 4;
    if shared.needed.load(Ordering::Acquire) >= first
        || batch.buf.len() as u64 >= MAX_UNWAITED_BYTES.min(room)
    {
        return None;
    }
    Some(batch.first_at.unwrap_or_else(Instant::now) + MAX_UNWAITED)
}

pub(super) fn writer(shared: Arc<Shared>) {
    // When the last batch was done (for the commit profile's idle time).
    let mut finished: Option<Instant> = None;
    loop {
        if shared.abandoned.load(Ordering::Acquire) {
            return;
        }
        // A batch kept from a full disk is retried before anything new is waited for.
        let carried = !shared.writing.lock().carry.frames.is_empty();
        if !carried {
            let synced_mode = shared.options.durability == Durability::Synced;
            let mut batch = shared.batch.lock();
            while !shared.stop.load(Ordering::Acquire) && shared.failed.lock().is_none() {
                if !batch.frames.is_empty() {
                    match unwaited_until(&shared, &batch) {
                        Some(due) if synced_mode => {
                            // Only records nobody needs yet: they ride on the next sync someone
                            // needs (an append or a commit wait wakes this) or go at `due`.
                            if shared.wake.wait_until(&mut batch, due).timed_out() {
                                break;
                            }
                            continue;
                        }
                        _ => break,
                    }
                }
                if synced_mode && shared.mark.is_dirty() {
                    // Idle for a moment: make the synced mark durable, so after a power cut it
                    // lags the true synced point only by what was written since. Not at once:
                    // a producer waiting for each receipt would pay a second sync per message.
                    if shared.wake.wait_for(&mut batch, MARK_IDLE).timed_out()
                        && batch.frames.is_empty()
                    {
                        let synced =
                            parking_lot::MutexGuard::unlocked(&mut batch, || shared.mark.sync());
                        if let Err(e) = synced {
                            drop(batch);
                            fail(&shared, &e);
                            return;
                        }
                    }
                    continue;
                }
                shared.wake.wait(&mut batch);
            }
            if batch.frames.is_empty()
                || shared.failed.lock().is_some()
                || shared.abandoned.load(Ordering::Acquire)
            {
                return;
            }
            if synced_mode && shared.gate.lock().is_none() {
                wait_for_returning(&shared, &mut batch);
            }
            if !shared.options.group_commit_window.is_zero() {
                parking_lot::MutexGuard::unlocked(&mut batch, || {
                    std::thread::sleep(shared.options.group_commit_window)
                });
            }
        }
        if let Some(at) = finished.take() {
            profile::record_since(Stage::WriterIdle, at);
        }
        let written = write_queued(&shared, &mut shared.writing.lock(), true);
        match written {
            Ok(()) => {
                if profile::enabled() {
                    finished = Some(Instant::now());
                }
            }
            Err(StoreError::NoSpace { .. }) => {
                if shared.stop.load(Ordering::Acquire) {
                    return;
                }
                let mut batch = shared.batch.lock();
                shared.wake.wait_for(&mut batch, Duration::from_millis(200));
            }
            Err(e) => {
                fail(&shared, &e);
                return;
            }
        }
    }
}

/// Holds the next sync back until the waits the last one released are back (or the policy's
/// bound passed; see `group.rs`). Called with the batch lock held, and something queued.
fn wait_for_returning(shared: &Shared, batch: &mut parking_lot::MutexGuard<'_, Batch>) {
    loop {
        if shared.stop.load(Ordering::Acquire) || shared.failed.lock().is_some() {
            return;
        }
        let waiting = shared.waits.lock().after();
        match shared.group.lock().start(waiting, Instant::now()) {
            Start::Now => return,
            Start::At(at) => {
                shared.wake.wait_until(batch, at);
            }
        }
    }
}

/// Writes what is queued (first a batch kept from a full disk). The caller holds `writing`.
/// Nothing is written once the journal has failed. Without `roll`, a batch that does not fit
/// in the active segment is left for the writer thread (a new segment is preallocated and
/// the directory synced: not for a caller on an async task).
pub(super) fn write_queued(shared: &Shared, w: &mut Writing, roll: bool) -> Result<(), StoreError> {
    if let Some(f) = shared.failed.lock().clone() {
        return Err(StoreError::Failed(f));
    }
    if w.carry.frames.is_empty() {
        let mut batch = shared.batch.lock();
        if batch.frames.is_empty() {
            return Ok(());
        }
        if !roll {
            let room = shared
                .segments
                .read()
                .last()
                .map_or(0, |s| s.capacity - s.end);
            if batch.buf.len() as u64 > room {
                return Ok(());
            }
        }
        std::mem::swap(&mut *batch, &mut w.spare);
        drop(batch);
        std::mem::swap(&mut w.carry, &mut w.spare);
    }
    match write_batch(shared, &mut w.carry) {
        Ok(()) => {
            if shared.stuck.swap(false, Ordering::Relaxed) {
                shared.room.notify_waiters();
            }
            Ok(())
        }
        Err(StoreError::NoSpace { path }) => {
            if !shared.stuck.swap(true, Ordering::Relaxed) {
                tracing::warn!(%path, "journal full (the disk) and its reserve spent: writes wait until there is space");
            }
            Err(StoreError::NoSpace { path })
        }
        Err(e) => Err(e),
    }
}

/// The journal cannot write any more: persistent sends are refused from now on.
pub(super) fn fail(shared: &Shared, e: &StoreError) {
    let mut failed = shared.failed.lock();
    if failed.is_none() {
        tracing::error!(error = %e, "journal write failed: persistent sends are refused from now on");
        *failed = Some(e.to_string());
    }
    drop(failed);
    shared.prefill.wake();
    let synced = *shared.synced.borrow();
    shared.committed(synced);
    shared.synced.send_modify(|_| {});
    shared.local.send_modify(|_| {});
    shared.ended.notify_waiters();
}

/// Makes the first `frames` records of `batch` (`bytes` long) durable and visible, and drops
/// them from the batch.
fn complete(
    shared: &Shared,
    batch: &mut Batch,
    frames: usize,
    bytes: usize,
) -> Result<(), StoreError> {
    if frames == 0 {
        return Ok(());
    }
    let last = batch.frames[frames - 1].0;
    if shared.options.durability == Durability::Synced {
        let file = shared
            .segments
            .read()
            .last()
            .map(|s| (s.file.clone(), s.path.clone()));
        if let Some((file, path)) = file {
            let started = Instant::now();
            file.sync_data()
                .map_err(|e| StoreError::io(&path, "sync", e))?;
            let now = Instant::now();
            let took = now - started;
            metrics::histogram!(crate::metrics::JOURNAL_FSYNC_SECONDS).record(took.as_secs_f64());
            profile::record(Stage::Fdatasync, took.as_micros() as u64);
            shared.fsyncs.fetch_add(1, Ordering::Relaxed);
            // Before the commit is published, so a wait it releases is counted as released.
            let mut waits = shared.waits.lock();
            let mut group = shared.group.lock();
            group.synced(waits.synced(last), took, now);
            waits.expect(group.target());
            shared.wait_target.store(group.target(), Ordering::Release);
        }
    }
    metrics::histogram!(crate::metrics::JOURNAL_BATCH_RECORDS).record(frames as f64);
    profile::record(Stage::BatchRecords, frames as u64);
    if shared.options.durability == Durability::Synced {
        // Before the publish: after a process crash the mark covers every receipted record,
        // so damage to one is refused as corruption, never cut as a torn tail. A `Written`
        // batch is not durable: its mark moves only when a checkpoint syncs it.
        shared.mark.record(last)?;
        if shared.mark.since_sync() >= MARK_MAX_LAG {
            // Under a load that never lets the writer idle, the mark is still synced now and
            // then.
            shared.mark.sync()?;
        }
    }
    shared
        .unsynced_bytes
        .fetch_sub(bytes as u64, Ordering::Relaxed);
    shared.room.notify_waiters();
    shared
        .appended_bytes
        .fetch_add(bytes as u64, Ordering::Relaxed);
    let _ = batch.buf.split_to(bytes);
    batch.frames.drain(..frames);
    if batch.frames.is_empty() && batch.buf.capacity() > MAX_IDLE_BATCH {
        // A burst grew it; do not keep the peak for ever.
        batch.buf = BytesMut::new();
        batch.frames = Vec::new();
    }
    if batch.frames.is_empty() {
        batch.first_at = None;
    }
    shared.local.send_replace(last);
    if shared.gate.lock().is_none() {
        // The broker makes the messages visible and frees their receipts right here: a hop to
        // another thread costs a scheduling delay, as long as the sync itself on a busy
        // machine, on the way to every receipt.
        profile::writer_published();
        shared.committed(last);
        shared.synced.send_replace(last);
    }
    Ok(())
}

/// Writes a batch, rolling to new segments as needed, then completes it. When the store is
/// full midway, the written prefix is completed and the rest stays in `batch` for a retry.
fn write_batch(shared: &Shared, batch: &mut Batch) -> Result<(), StoreError> {
    let mut pos = 0usize;
    let mut i = 0usize;
    let started = Instant::now();
    if let Some(first) = batch.first_at.take() {
        let waited = started.saturating_duration_since(first);
        metrics::histogram!(crate::metrics::JOURNAL_COMMIT_WAIT_SECONDS)
            .record(waited.as_secs_f64());
        profile::record(Stage::WaitToWrite, waited.as_micros() as u64);
    }
    let result = write_frames(shared, batch, &mut pos, &mut i);
    profile::record_since(Stage::Write, started);
    complete(shared, batch, i, pos)?;
    metrics::histogram!(crate::metrics::JOURNAL_WRITE_SECONDS)
        .record(started.elapsed().as_secs_f64());
    result
}

fn write_frames(
    shared: &Shared,
    batch: &Batch,
    pos: &mut usize,
    i: &mut usize,
) -> Result<(), StoreError> {
    while *i < batch.frames.len() {
        let mut segs = shared.segments.write();
        let room = segs.last().map(|s| s.capacity - s.end).unwrap_or(0);
        // Take as many whole frames as fit in the active segment.
        let mut take = 0usize;
        let mut bytes = 0u64;
        while *i + take < batch.frames.len() && bytes + batch.frames[*i + take].1 as u64 <= room {
            bytes += batch.frames[*i + take].1 as u64;
            take += 1;
        }
        if take == 0 {
            let first = batch.frames[*i].0;
            let need = (batch.frames[*i].1 as u64).max(shared.options.segment_size);
            if let Some(limit) = shared.options.store_limit {
                let beyond = shared.disk_bytes.load(Ordering::Relaxed) + need > limit;
                if beyond && !shared.over_limit.swap(true, Ordering::Relaxed) {
                    tracing::warn!(limit, "journal full (store_limit): persistent sends wait or fail until consumers free space; what was already accepted, and the acknowledgements after it, are still written");
                }
            }
            if let Some(active) = segs.last() {
                // The old active segment is complete: make it durable before moving on.
                if shared.options.durability == Durability::Synced {
                    active
                        .file
                        .sync_data()
                        .map_err(|e| StoreError::io(&active.path, "sync", e))?;
                }
            }
            let seg = match create_segment(&shared.dir, first, need) {
                Err(StoreError::NoSpace { path }) if shared.give_up_reserve() => {
                    tracing::warn!(%path, "journal full (the disk): persistent sends wait or fail until consumers free space; the journal's reserve takes what was already accepted");
                    create_segment(&shared.dir, first, need)?
                }
                created => created?,
            };
            shared.disk_bytes.fetch_add(seg.capacity, Ordering::Relaxed);
            segs.push(seg);
            shared.started_segment.notify_one();
            continue;
        }
        let seg = segs
            .last_mut()
            .expect("a segment exists once one was created");
        let chunk = &batch.buf[*pos..*pos + bytes as usize];
        if shared.options.durability == Durability::Synced {
            shared
                .prefill
                .claim(seg.first, &seg.path, seg.capacity, seg.end, seg.end + bytes);
        }
        seg.file
            .write_all_at(chunk, seg.end)
            .map_err(|e| StoreError::io(&seg.path, "write", e))?;
        let mut off = seg.end;
        for f in &batch.frames[*i..*i + take] {
            seg.offsets.push(off as u32);
            off += f.1 as u64;
        }
        seg.end = off;
        *pos += bytes as usize;
        *i += take;
    }
    Ok(())
}
