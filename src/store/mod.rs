//! The journal: an append-only, segmented, checksummed log of persistent messages, their
//! removals, durable subscriptions and producer high-water marks, with checkpoints, garbage
//! collection and crash recovery.
//!
//! Owns: the files under a member's `data_dir/journal`. Must not touch: broker state — the
//! broker decides what to write and rebuilds itself from `Recovered`; this module only stores,
//! syncs, reads back and recovers records. Invariants: record indexes are consecutive across
//! segments and every record carries a CRC32C; an append is reported synced only after it was
//! written (`local_mem`) or written and `fdatasync`ed (`local_disk`); recovery keeps every
//! record before a torn tail, cuts the tail, and refuses to start — naming the file and the
//! offset — when damage is followed by valid data, unless told to `--repair`; a segment is
//! deleted only when a checkpoint covers all its records and none of its messages is live; a
//! full journal (store limit or disk) keeps writing what it already accepted into its one-segment
//! reserve, so acknowledgements and checkpoints still get through and free space.

mod frame;
mod journal;
mod recovery;

use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message as _;

pub use journal::{Durability, Journal};
pub use recovery::{Recovered, RecoveredDurable, RecoveredMessage};

pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/meshmq.journal.rs"));
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: cannot {op}: {source}")]
    Io {
        path: String,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: the journal is corrupt at offset {offset}: {reason}. Valid records follow the damage, so it is not a torn write; to start anyway, cut the journal there with `meshmq broker --topology FILE --member NAME --repair` (records from that offset on are lost)")]
    Corrupt {
        path: String,
        offset: u64,
        reason: String,
    },
    #[error("{path}: no space for the journal")]
    NoSpace { path: String },
    #[error("journal record {0} is not on disk")]
    Missing(u64),
    #[error("journal record {index} is not a message: {reason}")]
    NotAMessage { index: u64, reason: String },
    #[error("the journal failed: {0}")]
    Failed(String),
}

impl StoreError {
    pub(crate) fn io(path: &Path, op: &'static str, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: path.display().to_string(),
            op,
            source,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The journal directory (created if missing).
    pub dir: PathBuf,
    pub segment_size: u64,
    pub store_limit: Option<u64>,
    pub durability: Durability,
    pub group_commit_window: Duration,
    /// Largest record accepted (the frame limit plus room for the message envelope).
    pub max_record: usize,
    /// Bytes of recovered message bodies to load at start; the rest are read on dispatch.
    pub memory_budget: u64,
}

/// An open journal.
#[derive(Clone)]
pub struct Store {
    journal: Journal,
    dir: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

impl Store {
    /// Opens (or creates) the journal, recovers its state, and starts the writer.
    pub fn open(config: StoreConfig, repair: bool) -> Result<(Store, Recovered), StoreError> {
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| StoreError::io(&config.dir, "create", e))?;
        let (segments, recovered) =
            recovery::recover(&config.dir, config.max_record, config.memory_budget, repair)?;
        for note in &recovered.notes {
            tracing::warn!("journal recovery: {note}");
        }
        let journal = Journal::start(
            config.dir.clone(),
            journal::JournalOptions {
                segment_size: config.segment_size,
                store_limit: config.store_limit,
                durability: config.durability,
                group_commit_window: config.group_commit_window,
                max_record: config.max_record,
            },
            segments,
            recovered.next_index,
            recovered.checkpointed,
        );
        Ok((
            Store {
                journal,
                dir: config.dir,
            },
            recovered,
        ))
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Queues a record; returns its index.
    pub fn append(&self, record: &proto::Record) -> u64 {
        self.journal.append(&record.encode_to_vec())
    }

    /// Reads back a message record (for a message paged out of memory).
    pub fn read_message(&self, index: u64) -> Result<proto::MessageAdded, StoreError> {
        let payload = self.journal.read(index)?;
        match proto::Record::decode(payload.as_slice()) {
            Ok(proto::Record {
                kind: Some(proto::record::Kind::Added(m)),
                ..
            }) => Ok(m),
            Ok(_) => Err(StoreError::NotAMessage {
                index,
                reason: "another kind of record".into(),
            }),
            Err(e) => Err(StoreError::NotAMessage {
                index,
                reason: e.to_string(),
            }),
        }
    }

    /// Writes a checkpoint, then deletes the segments it makes unnecessary. When the disk has
    /// no room even for the checkpoint, the newest checkpoint on disk still covers the older
    /// segments: those whose messages are gone are deleted to make room for the next one.
    pub fn checkpoint(&self, c: &proto::Checkpoint) -> Result<usize, StoreError> {
        match recovery::write_checkpoint(&self.dir, c) {
            Ok(()) => {
                self.journal.checkpointed(c.next_index);
                Ok(self.journal.collect_garbage(c.next_index))
            }
            Err(e @ StoreError::NoSpace { .. }) => {
                match self.journal.collect_garbage(self.journal.last_checkpoint()) {
                    0 => Err(e),
                    deleted => Ok(deleted),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Flushes everything queued and stops the writer.
    pub fn close(&self) {
        self.journal.close();
    }
}

#[cfg(test)]
mod tests;
