//! Segment files: where a segment of the journal lives, creating one preallocated (so a write
//! never grows a file and a full disk shows up here).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::store::{sync_dir, StoreError};

pub(crate) fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.log"))
}

/// The reserve file: one segment of disk space the journal gives up when the disk is full.
pub(crate) const RESERVE_FILE: &str = "reserve";

/// One segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    pub first: u64,
    pub path: PathBuf,
    pub file: Arc<File>,
    pub capacity: u64,
    /// Offset of each record (record `first + i` at `offsets[i]`).
    pub offsets: Vec<u32>,
    /// Offset just past the last record.
    pub end: u64,
    /// Messages added in this segment that are still live.
    pub live: AtomicU64,
}

impl Segment {
    pub(super) fn contains(&self, index: u64) -> bool {
        index >= self.first && index < self.first + self.offsets.len() as u64
    }
}

/// Creates a file of `size` bytes, allocated on disk (a full disk is `NoSpace`).
pub(super) fn allocate(path: &Path, size: u64) -> Result<File, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| StoreError::io(path, "create", e))?;
    // SAFETY: fallocate on a descriptor we own, with in-range arguments.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size as libc::off_t) };
    if rc != 0 {
        let err = io::Error::from_raw_os_error(rc);
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(if rc == libc::ENOSPC {
            StoreError::NoSpace {
                path: path.display().to_string(),
            }
        } else {
            StoreError::io(path, "preallocate", err)
        });
    }
    Ok(file)
}

/// Creates and preallocates a segment file.
pub(crate) fn create_segment(dir: &Path, first: u64, capacity: u64) -> Result<Segment, StoreError> {
    let path = segment_path(dir, first);
    let file = allocate(&path, capacity)?;
    sync_dir(dir)?;
    Ok(Segment {
        first,
        path,
        file: Arc::new(file),
        capacity,
        offsets: Vec::new(),
        end: 0,
        live: AtomicU64::new(0),
    })
}
