//! The prefiller: a thread that writes zeros into the active segment a little ahead of the
//! writer and syncs them, so the writer's appends land in blocks that are already written.
//!
//! Segments are preallocated with `fallocate`, which on ext4 (and XFS) leaves *unwritten*
//! extents: the first write into each block must convert its extent, so an `fdatasync` after it
//! also commits filesystem metadata — on the disk this was measured on, 4 KiB appends synced in
//! 110–210 µs into a fallocated file and 70–120 µs into one whose blocks were written before.
//! Databases zero-fill their logs for the same reason; doing it here, on its own thread and a
//! few hundred KiB ahead, keeps the zeroing (and its sync) off the path of every receipt and
//! needs no big zero-fill when a segment is created, so a roll still never waits.
//!
//! Invariants:
//! - Zeros are never written where a record is or may be being written: the writer *claims*
//!   each range before it writes it ([`Prefill::claim`]), and the prefiller only zeroes from
//!   the block after the highest claim on; a claim that meets a range being zeroed waits for
//!   that `write` (not its sync) to finish, so the record's bytes come after the zeros.
//! - Zeros change nothing recovery sees: a fallocated block reads as zeros already, and
//!   recovery takes an all-zero tail as the end of the journal.
//! - The prefiller syncs through its own open file description, never the writer's: on Linux a
//!   failed write-back is reported once per file description, so syncing on the writer's would
//!   take the error its next `fdatasync` must see (and a receipt would go out for a record that
//!   never reached the disk). Its errors never fail the journal; it stops prefilling that
//!   segment and the writer's own syncs report what is wrong.
//! - It runs only for `Synced` journals (nothing else syncs), and stops with the writer.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::Shared;

/// How far ahead of the writer the prefiller keeps written blocks.
pub(super) const LEAD: u64 = 1 << 20;

/// Zeros written (and synced) at a time.
const CHUNK: u64 = 256 << 10;

/// Filesystem block size assumed when rounding a claim up (a larger real block only means the
/// first zeros of a chunk fall in a block the writer already converted).
const BLOCK: u64 = 4096;

/// The active segment as the prefiller sees it.
#[derive(Default)]
struct Active {
    /// `first` of the active segment (`None` before the first one exists).
    first: Option<u64>,
    path: PathBuf,
    capacity: u64,
    /// The end of the highest range the writer claimed.
    claimed: u64,
    /// Everything from `claimed` up to here is written with zeros.
    zeroed: u64,
    /// The range being zeroed right now.
    zeroing: Option<(u64, u64)>,
    /// Segments whose prefill failed are left to the writer as they are.
    gave_up: bool,
}

#[derive(Default)]
pub(crate) struct Prefill {
    active: Mutex<Active>,
    /// Told when the writer claims or rolls (the prefiller may have work) and when a zeroing
    /// write ends (a claim may be waiting for it).
    changed: Condvar,
}

impl Prefill {
    /// The writer is about to write `[from, to)` of the segment starting at record `first`
    /// (a new one: the active segment rolled). Returns once no zeros can land in that range.
    pub(super) fn claim(
        &self,
        first: u64,
        path: &std::path::Path,
        capacity: u64,
        from: u64,
        to: u64,
    ) {
        let mut a = self.active.lock();
        if a.first != Some(first) {
            *a = Active {
                first: Some(first),
                path: path.to_path_buf(),
                capacity,
                claimed: from,
                zeroed: from,
                zeroing: None,
                gave_up: false,
            };
        }
        while a
            .zeroing
            .is_some_and(|(start, end)| start < to && from < end)
        {
            self.changed.wait(&mut a);
        }
        a.claimed = a.claimed.max(to);
        a.zeroed = a.zeroed.max(a.claimed);
        // The prefiller is woken once it has fallen to half its lead, not for every claim.
        let behind = a.zeroing.is_none()
            && !a.gave_up
            && a.zeroed < a.capacity
            && a.zeroed < a.claimed + LEAD / 2;
        drop(a);
        if behind {
            self.changed.notify_all();
        }
    }

    /// The zeroing write of the segment starting at record `first` that `next` handed out
    /// ended (up to `end`, or failed): claims waiting for it go on.
    fn zeroed(&self, first: u64, end: u64, ok: bool) {
        let mut a = self.active.lock();
        if a.first == Some(first) {
            a.zeroing = None;
            if ok {
                a.zeroed = a.zeroed.max(end);
            } else {
                a.gave_up = true;
            }
        }
        drop(a);
        self.changed.notify_all();
    }

    /// Wakes the prefiller to look at the stop flag.
    pub(super) fn wake(&self) {
        let _a = self.active.lock();
        self.changed.notify_all();
    }

    /// What to zero next: (segment, path, range), or `None` while the prefill is far enough
    /// ahead. Called with the lock held; marks the range as being zeroed.
    fn next(a: &mut Active) -> Option<(u64, PathBuf, u64, u64)> {
        let first = a.first?;
        if a.gave_up {
            return None;
        }
        let start = a.zeroed.max(a.claimed.div_ceil(BLOCK) * BLOCK);
        if start >= a.capacity || start >= a.claimed + LEAD {
            return None;
        }
        let end = (start + CHUNK).min(a.capacity);
        a.zeroing = Some((start, end));
        Some((first, a.path.clone(), start, end))
    }
}

/// The prefiller thread (see the module doc).
pub(super) fn prefiller(shared: Arc<Shared>) {
    let prefill = &shared.prefill;
    let zeros = vec![0u8; CHUNK as usize];
    // The prefiller's own descriptor of the active segment.
    let mut open: Option<(u64, File)> = None;
    loop {
        let mut a = prefill.active.lock();
        let job = loop {
            if shared.stop.load(Ordering::Acquire) || shared.failed.lock().is_some() {
                return;
            }
            if let Some(job) = Prefill::next(&mut a) {
                break job;
            }
            prefill.changed.wait(&mut a);
        };
        drop(a);
        let (first, path, start, end) = job;
        if open.as_ref().is_none_or(|(f, _)| *f != first) {
            open = OpenOptions::new()
                .write(true)
                .open(&path)
                .ok()
                .map(|file| (first, file));
        }
        let written = match &open {
            Some((_, file)) => file.write_all_at(&zeros[..(end - start) as usize], start),
            None => Err(std::io::Error::other("cannot open the segment")),
        };
        prefill.zeroed(first, end, written.is_ok());
        let synced = written.and_then(|()| match &open {
            Some((_, file)) => file.sync_data(),
            None => Ok(()),
        });
        if let Err(e) = synced {
            tracing::debug!(path = %path.display(), error = %e, "cannot prefill a journal segment; its appends convert its blocks as they go");
            let mut a = prefill.active.lock();
            if a.first == Some(first) {
                a.gave_up = true;
            }
            drop(a);
            open = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    const SEGMENT: u64 = 64 << 20;

    fn next(p: &Prefill) -> Option<(u64, u64, u64)> {
        Prefill::next(&mut p.active.lock()).map(|(first, _, start, end)| (first, start, end))
    }

    #[test]
    fn zeros_start_at_the_block_after_the_last_claim() {
        let p = Prefill::default();
        p.claim(7, Path::new("s"), SEGMENT, 0, 5000);
        assert_eq!(next(&p), Some((7, 8192, 8192 + CHUNK)));
        p.zeroed(7, 8192 + CHUNK, true);
        // The writer passed the zeros: they go on from its claim, never behind it.
        p.claim(7, Path::new("s"), SEGMENT, 5000, 8192 + CHUNK + 10);
        assert_eq!(
            next(&p),
            Some((7, 8192 + CHUNK + BLOCK, 8192 + 2 * CHUNK + BLOCK))
        );
    }

    #[test]
    fn zeros_stop_one_lead_ahead_and_at_the_segment_end() {
        let p = Prefill::default();
        p.claim(1, Path::new("s"), SEGMENT, 0, 0);
        let mut upto = 0;
        while let Some((_, start, end)) = next(&p) {
            assert_eq!(start, upto, "zeros follow on from the last");
            p.zeroed(1, end, true);
            upto = end;
        }
        assert_eq!(upto, LEAD, "one lead ahead of the writer");
        let small = Prefill::default();
        small.claim(2, Path::new("t"), 10_000, 0, 100);
        assert_eq!(next(&small), Some((2, BLOCK, 10_000)));
        small.zeroed(2, 10_000, true);
        assert_eq!(next(&small), None, "nothing past the segment's end");
    }

    #[test]
    fn a_new_segment_starts_the_zeros_again_and_a_failure_stops_them() {
        let p = Prefill::default();
        p.claim(1, Path::new("a"), SEGMENT, 0, 100);
        let (_, _, end) = next(&p).unwrap();
        p.zeroed(1, end, false);
        assert_eq!(next(&p), None, "a segment that failed once is left alone");
        p.claim(50, Path::new("b"), SEGMENT, 0, 100);
        assert_eq!(next(&p), Some((50, BLOCK, BLOCK + CHUNK)));
        // The old segment's late result changes nothing in the new one.
        p.zeroed(1, SEGMENT, false);
        assert_eq!(p.active.lock().zeroing, Some((BLOCK, BLOCK + CHUNK)));
    }

    /// The writer's claim over a range being zeroed returns only once that write is done, so
    /// the record's bytes always come after the zeros.
    #[test]
    fn a_claim_over_a_range_being_zeroed_waits_for_its_write() {
        let p = Arc::new(Prefill::default());
        p.claim(1, Path::new("s"), SEGMENT, 0, 100);
        let (_, start, end) = next(&p).unwrap();
        let returned = Arc::new(AtomicBool::new(false));
        let claimer = {
            let (p, returned) = (p.clone(), returned.clone());
            std::thread::spawn(move || {
                p.claim(1, Path::new("s"), SEGMENT, 100, start + 10);
                returned.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !returned.load(Ordering::SeqCst),
            "the claim went on while zeros were being written into its range"
        );
        p.zeroed(1, end, true);
        claimer.join().unwrap();
        assert!(returned.load(Ordering::SeqCst));
        // A claim short of the zeroing range never waits.
        let (_, start, _) = next(&p).unwrap();
        p.claim(1, Path::new("s"), SEGMENT, start - 10, start);
    }
}
