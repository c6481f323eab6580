//! The synced mark: a small file beside the segments recording the index of the last record
//! known durable, so recovery can tell a torn tail (damage past the mark: the record was never
//! synced, so never receipted) from corruption (damage at or before it: a record that was
//! synced and may have been receipted).
//!
//! Layout: `u64 index | u32 crc32c(index)`, big-endian, rewritten in place at offset 0. The
//! writer rewrites it after each batch is durable and syncs it when it has nothing else to do
//! (and on close), so after a process crash it is exact and after a power cut it may lag the
//! true synced point — never lead it: it only ever names records already synced. A lagging mark
//! only weakens the check for records written in the lag (a power cut *and* a bit flip there).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::StoreError;

pub(crate) const MARK_FILE: &str = "synced";

const LEN: usize = 12;

fn encode(index: u64) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[..8].copy_from_slice(&index.to_be_bytes());
    b[8..].copy_from_slice(&crc32c::crc32c(&index.to_be_bytes()).to_be_bytes());
    b
}

/// The mark in `dir`: `None` when there is none (a journal from before marks, or an empty one).
pub fn read_mark(dir: &Path) -> Result<Option<u64>, StoreError> {
    let path = dir.join(MARK_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(&path, "read", e)),
    };
    if bytes.is_empty() {
        // Created, never written: nothing was synced yet.
        return Ok(None);
    }
    let corrupt = |reason: &str| StoreError::Corrupt {
        path: path.display().to_string(),
        offset: 0,
        reason: reason.to_string(),
    };
    if bytes.len() < LEN {
        return Err(corrupt("the synced mark is truncated"));
    }
    let index = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
    let crc = u32::from_be_bytes(bytes[8..LEN].try_into().expect("4 bytes"));
    if crc32c::crc32c(&bytes[..8]) != crc {
        return Err(corrupt("the synced mark fails its checksum"));
    }
    Ok(Some(index))
}

/// Sets the mark in `dir` to `index` and syncs it (recovery after a cut, a follower's
/// truncation; tests that model a crash between a write and its sync).
pub fn write_mark(dir: &Path, index: u64) -> Result<(), StoreError> {
    let mark = SyncedMark::open(dir)?;
    mark.record(index)?;
    mark.sync()
}

/// Lowers the mark in `dir` to `index` if it is above it.
pub(crate) fn lower_mark(dir: &Path, index: u64) -> Result<(), StoreError> {
    match read_mark(dir) {
        Ok(Some(m)) if m <= index => Ok(()),
        Ok(None) => Ok(()),
        _ => write_mark(dir, index),
    }
}

/// The open mark file of a running journal.
#[derive(Debug)]
pub(crate) struct SyncedMark {
    file: File,
    path: std::path::PathBuf,
    dirty: AtomicBool,
    last_sync: parking_lot::Mutex<Instant>,
}

impl SyncedMark {
    /// Opens the mark in `dir`, creating it (and syncing the directory) when missing.
    pub(crate) fn open(dir: &Path) -> Result<SyncedMark, StoreError> {
        let path = dir.join(MARK_FILE);
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io(&path, "open", e))?;
        if !existed {
            super::sync_dir(dir)?;
        }
        Ok(SyncedMark {
            file,
            path,
            dirty: AtomicBool::new(false),
            last_sync: parking_lot::Mutex::new(Instant::now()),
        })
    }

    /// Records that every record up to `index` is durable (written to the OS; synced later).
    pub(crate) fn record(&self, index: u64) -> Result<(), StoreError> {
        self.file
            .write_all_at(&encode(index), 0)
            .map_err(|e| StoreError::io(&self.path, "write", e))?;
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// A recorded mark is not durable yet.
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// Time since the mark was last made durable.
    pub(crate) fn since_sync(&self) -> Duration {
        self.last_sync.lock().elapsed()
    }

    /// Makes the last recorded mark durable, if it is not yet.
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        if self.dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.file.sync_data() {
                self.dirty.store(true, Ordering::Release);
                return Err(StoreError::io(&self.path, "sync", e));
            }
        }
        *self.last_sync.lock() = Instant::now();
        Ok(())
    }
}
