//! The journal: an append-only, segmented, checksummed log of persistent messages, their
//! removals, durable subscriptions and producer high-water marks, with checkpoints, garbage
//! collection and crash recovery.
//!
//! Owns: the files under a member's `data_dir/journal`. Must not touch: broker state — the
//! broker decides what to write and rebuilds itself from `Recovered`; this module only stores,
//! syncs, reads back and recovers records. Invariants: record indexes are consecutive across
//! segments and every record carries a CRC32C; an append is reported synced only after it was
//! written (`local_mem`) or written and `fdatasync`ed (`local_disk`); a synced mark beside the
//! segments names the last record known durable, and a torn tail can only lie past it:
//! recovery keeps every record before a torn tail, cuts the tail, and refuses to start —
//! naming the file and the offset — when damage is followed by valid data, touches a record at
//! or before the mark, or the journal ends short of the mark (a deleted or truncated segment),
//! unless told to `--repair`; a segment is
//! deleted only when a checkpoint covers all its records and none of its messages is live; a
//! full journal (store limit or disk) refuses new persistent sends but keeps writing what it
//! already accepted and the acknowledgements after it — past `store_limit`, or into its
//! one-segment reserve on a full disk — so checkpoints still get through and free space.

mod epochs;
pub(crate) mod frame;
mod journal;
mod mark;
pub(crate) mod recovery;

use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message as _;

pub use epochs::{EpochHistory, Position};
pub use journal::{CommitWait, Durability, Journal, RawFrames};
pub use mark::{read_mark, write_mark};
pub use recovery::{ForwardedId, Recovered, RecoveredDurable, RecoveredMessage, REPLAYED_FORWARDS};

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
    #[error("{path}: the journal is corrupt at offset {offset}: {reason}; to start anyway, cut the journal there with `meshmq broker --topology FILE --member NAME --repair` (records from that offset on are lost)")]
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
    #[error(
        "no quorum within quorum_timeout ({waited:?}); the message may or may not be delivered"
    )]
    NoQuorum { waited: Duration },
    #[error("this member stopped serving ({0}); the message may or may not be delivered")]
    Fenced(String),
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

/// Syncs a directory, so the files created, renamed or deleted in it survive a power cut (the
/// journal's segments, its checkpoints and its synced mark all need it).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, "sync the directory", e))
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
    epochs: std::sync::Arc<parking_lot::Mutex<EpochHistory>>,
    on_checkpoint: std::sync::Arc<parking_lot::RwLock<Option<CheckpointHook>>>,
}

/// Called with each checkpoint written (replication sends it on to followers).
pub type CheckpointHook = Box<dyn Fn(&proto::Checkpoint) + Send + Sync>;

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
        let store = Store::start(
            config,
            segments,
            recovered.next_index,
            recovered.checkpoint_next.unwrap_or(0),
            recovered.epochs.clone(),
        )?;
        Ok((store, recovered))
    }

    /// Opens an empty journal that continues at `next_index` (a follower installing its
    /// master's snapshot: records from `next_index` on follow). The directory must be empty
    /// of segments (and of a synced mark: see [`wipe_journal`]).
    pub fn open_empty_at(
        config: StoreConfig,
        next_index: u64,
        epochs: EpochHistory,
    ) -> Result<Store, StoreError> {
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| StoreError::io(&config.dir, "create", e))?;
        Store::start(config, Vec::new(), next_index, 0, epochs)
    }

    /// Starts the writer over `segments` (what recovery found, or none).
    fn start(
        config: StoreConfig,
        segments: Vec<journal::Segment>,
        next_index: u64,
        checkpoint_next: u64,
        epochs: EpochHistory,
    ) -> Result<Store, StoreError> {
        let mark = mark::SyncedMark::open(&config.dir)?;
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
            next_index,
            checkpoint_next,
            mark,
        );
        Ok(Store {
            journal,
            dir: config.dir,
            epochs: std::sync::Arc::new(parking_lot::Mutex::new(epochs)),
            on_checkpoint: Default::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The epoch history of this journal.
    pub fn epochs(&self) -> EpochHistory {
        self.epochs.lock().clone()
    }

    /// Replaces the epoch history (a follower adopting its master's).
    pub fn set_epochs(&self, epochs: EpochHistory) {
        *self.epochs.lock() = epochs;
    }

    /// The epoch and index of the last record appended.
    pub fn position(&self) -> Position {
        self.epochs
            .lock()
            .position(self.journal.next_index().saturating_sub(1))
    }

    /// Starts an HA epoch: appends its `Epoch` record (before anything else of the epoch) and
    /// returns that record's index.
    pub fn begin_epoch(&self, epoch: u64) -> u64 {
        let mut epochs = self.epochs.lock();
        let index = self.append(&proto::Record {
            kind: Some(proto::record::Kind::Epoch(proto::Epoch { epoch })),
            tx: 0,
        });
        epochs.begin(epoch, index);
        index
    }

    /// Called with every checkpoint this store writes from now on.
    pub fn set_on_checkpoint(&self, hook: CheckpointHook) {
        *self.on_checkpoint.write() = Some(hook);
    }

    /// The last checkpoint written, if any.
    pub fn read_checkpoint(&self) -> Result<Option<proto::Checkpoint>, StoreError> {
        recovery::read_checkpoint(&self.dir)
    }

    /// Writes a checkpoint received from the master (a follower), then deletes the segments
    /// it makes unnecessary: those before both its replay start and its oldest live message.
    /// Every record it covers must be written here first (see [`Journal::wait_local`]).
    pub fn install_checkpoint(&self, c: &proto::Checkpoint) -> Result<usize, StoreError> {
        self.journal.make_durable_before(c.next_index)?;
        recovery::write_checkpoint(&self.dir, c)?;
        let oldest_live = c
            .queues
            .iter()
            .flat_map(|q| q.messages.iter())
            .chain(c.durables.iter().flat_map(|d| d.messages.iter()))
            .map(|m| m.index)
            .min()
            .unwrap_or(u64::MAX);
        Ok(self.journal.collect_garbage(c.next_index.min(oldest_live)))
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Queues a record; returns its index.
    pub fn append(&self, record: &proto::Record) -> u64 {
        self.journal.append(&record.encode_to_vec())
    }

    /// Queues a record whose sync nobody needs unless a commit wait says so (see
    /// [`Journal::append_unwaited`]); returns its index.
    pub fn append_unwaited(&self, record: &proto::Record) -> u64 {
        self.journal.append_unwaited(&record.encode_to_vec())
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

    /// Writes a checkpoint, then deletes the segments it makes unnecessary. On a full disk the
    /// checkpoint may take the journal's reserve; when even that is spent, the newest checkpoint
    /// on disk still covers the older segments: those whose messages are gone are deleted to
    /// make room for the next one.
    /// Every record it covers must be written first (see [`Journal::wait_local`]).
    pub fn checkpoint(&self, c: &proto::Checkpoint) -> Result<usize, StoreError> {
        self.journal.make_durable_before(c.next_index)?;
        let mut c = c.clone();
        {
            let epochs = self.epochs.lock();
            let mut covered = epochs.clone();
            covered.truncate_after(c.next_index.saturating_sub(1));
            c.epoch = covered.last_epoch();
            c.epochs = covered.to_proto();
        }
        let written = match recovery::write_checkpoint(&self.dir, &c) {
            Err(StoreError::NoSpace { path }) if self.journal.give_up_reserve() => {
                tracing::warn!(%path, "no disk space for a checkpoint: the journal's reserve makes room for it");
                recovery::write_checkpoint(&self.dir, &c)
            }
            written => written,
        };
        match written {
            Ok(()) => {
                self.journal.checkpointed(c.next_index);
                if let Some(hook) = self.on_checkpoint.read().as_ref() {
                    hook(&c);
                }
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

/// Drops every record after `last` from the closed journal in `dir`; `Ok(false)` (nothing
/// changed) when its checkpoint already covers later records.
pub fn truncate_journal_after(
    dir: &Path,
    last: u64,
    max_record: usize,
) -> Result<bool, StoreError> {
    recovery::truncate_after(dir, last, max_record)
}

/// Deletes every journal file in `dir` (segments and checkpoint): a follower starting over
/// from its master's copy. The directory itself stays.
pub fn wipe_journal(dir: &Path) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io(dir, "list", e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(dir, "list", e))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".log")
            || name.starts_with(recovery::CHECKPOINT_FILE)
            || name == mark::MARK_FILE
        {
            std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, "delete", e))?;
        }
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests;
