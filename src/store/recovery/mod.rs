//! Start-up: verify every segment, cut a torn tail, refuse corruption before it, then rebuild
//! the live state from the last checkpoint plus the records after it (applied by `replay.rs`);
//! and the checkpoint file itself, read and written whole with its checksum.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;

use super::frame::{self, End};
use super::journal::Segment;
use super::proto::{record, Checkpoint, ForwardChunk, MessageAdded, Record, SessionExpiry};
use super::{EpochHistory, StoreError};

mod replay;

pub(crate) use replay::Replay;

/// A live persistent queue message found at start-up.
#[derive(Debug, Clone)]
pub struct RecoveredMessage {
    pub index: u64,
    pub redelivery_count: u32,
    pub priority: u8,
    pub expires_at_ms: u64,
    pub broker_path: Vec<String>,
    /// The whole record when it fits the memory budget; `None`: read it back on dispatch.
    pub record: Option<MessageAdded>,
}

#[derive(Debug, Clone)]
pub struct RecoveredDurable {
    pub client_id: String,
    pub name: String,
    pub pattern: String,
    pub no_local: bool,
    /// Its JMS selector (empty: none). The messages below are every journaled one its pattern
    /// matches: the broker applies the selector when it restores them.
    pub selector: String,
    /// (message index, redelivery count), oldest first.
    pub messages: Vec<(u64, u32)>,
}

/// The live state of a journal.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Per queue, its live messages in index order.
    pub queues: Vec<(String, Vec<RecoveredMessage>)>,
    pub durables: Vec<RecoveredDurable>,
    /// The expiry state of kept client sessions (the latest of each client id, none ended).
    pub sessions: Vec<SessionExpiry>,
    /// Each topic's retained message (none empty), in topic order.
    pub retained: Vec<MessageAdded>,
    /// Persistent topic messages held by durable subscriptions.
    pub topic_messages: HashMap<u64, MessageAdded>,
    /// Producer high-water marks: (producer id, highest sequence stored).
    pub producers: Vec<(Bytes, u64)>,
    /// Forwarded-message ids the checkpoint remembered (the broker's recent forwards).
    pub forward_chunks: Vec<ForwardChunk>,
    /// Messages that arrived over a bridge since the checkpoint, oldest first (at most
    /// [`REPLAYED_FORWARDS`], the newest): with the chunks, what the group already took.
    pub forwarded: Vec<ForwardedId>,
    /// False after a crash: deliveries in flight then are unknown, so every recovered message
    /// counts as possibly delivered (redelivery count at least 1).
    pub clean: bool,
    pub epoch: u64,
    /// Where each HA epoch began (checkpointed history plus the `Epoch` records replayed).
    pub epochs: EpochHistory,
    /// The checkpoint replay started from (`None`: replayed from the first record).
    pub checkpoint_next: Option<u64>,
    pub next_index: u64,
    /// What was cut or found, for the log.
    pub notes: Vec<String>,
}

/// The identity of a message that arrived over a bridge, as journaled.
#[derive(Debug, Clone)]
pub struct ForwardedId {
    pub producer_id: Bytes,
    pub sequence: u64,
    pub topic: bool,
    /// The groups it had left, as it arrived.
    pub broker_path: Vec<String>,
}

/// How many of the forwarded messages replayed after the checkpoint are kept for the broker:
/// the newest, far more than any bridge has in flight unacknowledged.
pub const REPLAYED_FORWARDS: usize = 65_536;

pub(crate) const CHECKPOINT_FILE: &str = "checkpoint";
/// Where `--repair` keeps a checkpoint it ignored as corrupt (never read again).
const CORRUPT_CHECKPOINT_FILE: &str = "checkpoint.corrupt";

pub(crate) fn read_checkpoint(dir: &Path) -> Result<Option<Checkpoint>, StoreError> {
    let path = dir.join(CHECKPOINT_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            if bytes.len() < 4 {
                return Err(StoreError::Corrupt {
                    path: path.display().to_string(),
                    offset: 0,
                    reason: "the checkpoint is truncated".into(),
                });
            }
            let (body, crc) = bytes.split_at(bytes.len() - 4);
            let crc = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
            if crc32c::crc32c(body) != crc {
                return Err(StoreError::Corrupt {
                    path: path.display().to_string(),
                    offset: 0,
                    reason: "the checkpoint fails its checksum".into(),
                });
            }
            Checkpoint::decode(body)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    path: path.display().to_string(),
                    offset: 0,
                    reason: format!("the checkpoint does not decode: {e}"),
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(&path, "read", e)),
    }
}

pub(crate) fn write_checkpoint(dir: &Path, c: &Checkpoint) -> Result<(), StoreError> {
    let mut bytes = c.encode_to_vec();
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_be_bytes());
    let tmp = dir.join("checkpoint.tmp");
    let fin = dir.join(CHECKPOINT_FILE);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, &bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &fin)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        if e.raw_os_error() == Some(libc::ENOSPC) {
            StoreError::NoSpace {
                path: tmp.display().to_string(),
            }
        } else {
            StoreError::io(&tmp, "write", e)
        }
    })?;
    super::sync_dir(dir)
}

/// Drops every record after `last` from the closed journal in `dir` (a follower whose tail
/// diverged from its master's): later segments are deleted, the segment holding `last + 1` is
/// zeroed from that record on. `Ok(false)`, touching nothing, when the checkpoint covers
/// records after `last` — then only starting over from the master's copy is sound.
pub(crate) fn truncate_after(dir: &Path, last: u64, max_record: usize) -> Result<bool, StoreError> {
    if read_checkpoint(dir)?.is_some_and(|c| c.next_index > last + 1) {
        return Ok(false);
    }
    for (first, path) in list_segments(dir)? {
        if first > last {
            std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, "delete", e))?;
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| StoreError::io(&path, "read", e))?;
        let scan = frame::scan(&bytes, first, max_record + 8);
        if let Some(cut) = scan.records.iter().find(|f| f.index == last + 1) {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| StoreError::io(&path, "open", e))?;
            zero_from(&file, &path, cut.offset as u64, bytes.len() as u64)?;
        }
    }
    super::sync_dir(dir)?;
    super::mark::lower_mark(dir, last)?;
    Ok(true)
}

/// Lists segment files by first index.
fn list_segments(dir: &Path) -> Result<Vec<(u64, std::path::PathBuf)>, StoreError> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, "list", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(dir, "list", e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".log") {
            if let Ok(first) = stem.parse::<u64>() {
                out.push((first, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// True when none of `files` holds a record or anything but zeros at its start.
fn no_records(files: &[(u64, std::path::PathBuf)], max_record: usize) -> Result<bool, StoreError> {
    for (first, path) in files {
        let bytes = std::fs::read(path).map_err(|e| StoreError::io(path, "read", e))?;
        let scan = frame::scan(&bytes, *first, max_record + 8);
        if !scan.records.is_empty() || scan.ended != End::Clean {
            return Ok(false);
        }
    }
    Ok(true)
}

fn zero_from(file: &std::fs::File, path: &Path, from: u64, to: u64) -> Result<(), StoreError> {
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; 1 << 16];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(zeros.len());
        file.write_all_at(&zeros[..n], at)
            .map_err(|e| StoreError::io(path, "truncate", e))?;
        at += n as u64;
    }
    file.sync_data()
        .map_err(|e| StoreError::io(path, "sync", e))
}

/// Opens a journal directory: verifies, repairs a torn tail, and replays.
pub(crate) fn recover(
    dir: &Path,
    max_record: usize,
    memory_budget: u64,
    repair: bool,
) -> Result<(Vec<Segment>, Recovered), StoreError> {
    let mut notes = Vec::new();
    let mut ignored_checkpoint = None;
    let checkpoint = match read_checkpoint(dir) {
        Err(StoreError::Corrupt { path, reason, .. }) if repair => {
            // Replay from the first record instead; refused below if segments are gone.
            notes.push(format!("repair: ignored {path} ({reason})"));
            ignored_checkpoint = Some(path);
            None
        }
        read => read?,
    };
    let synced_mark = super::mark::read_mark(dir)?;
    let mut start = checkpoint.as_ref().map(|c| c.next_index).unwrap_or(1);
    // With the checkpoint ignored and the records it summed up gone: where the state is
    // rebuilt from instead.
    let mut rebuilt_from = None;
    let mut replay = match &checkpoint {
        Some(c) => Replay::from_checkpoint(c, memory_budget),
        None => Replay::new(memory_budget),
    };
    let wanted = replay.wanted();
    let files = list_segments(dir)?;
    let mut segments = Vec::new();
    let mut expected: Option<u64> = None;
    let mut replayed_after_checkpoint = false;
    let mut stop_after: Option<usize> = None;
    let mut resynced = false;
    for (n, (first, path)) in files.iter().enumerate() {
        if let Some(cut) = stop_after {
            if n > cut {
                std::fs::remove_file(path).map_err(|e| StoreError::io(path, "remove", e))?;
                notes.push(format!(
                    "repair: removed {} (after the damage)",
                    path.display()
                ));
                continue;
            }
        }
        if let Some(e) = expected.filter(|e| e != first) {
            // Records e..first are gone. Before the checkpoint's replay start that costs
            // nothing (a `_mem` journal's unsynced records a power cut dropped, which the
            // checkpoint had already summed up) — unless the checkpoint lists one of them as a
            // live message: then its body is lost.
            let covered = *first > e && *first <= start;
            let lost = if *first > e {
                wanted.range(e..*first).next().copied()
            } else {
                None
            };
            if *first > e && !covered && no_records(&files[n..], max_record)? {
                // Nothing after the gap either: the journal simply ends at e, and segments
                // created after it were never written (a `_mem` journal's unsynced tail a
                // power cut dropped — the synced mark below refuses it if it was synced).
                for (_, p) in &files[n..] {
                    std::fs::remove_file(p).map_err(|e| StoreError::io(p, "remove", e))?;
                    notes.push(format!(
                        "removed {} (empty, after the journal's end at record {})",
                        p.display(),
                        e.saturating_sub(1)
                    ));
                }
                break;
            }
            if !covered || lost.is_some() {
                let why = match lost {
                    Some(i) if covered => format!(
                        "; the checkpoint lists message {i} among them as live, so its body is lost"
                    ),
                    _ => String::new(),
                };
                let (p, offset) = segments
                    .last()
                    .map_or((path, 0), |s: &Segment| (&s.path, s.end));
                return Err(StoreError::Corrupt {
                    path: p.display().to_string(),
                    offset,
                    reason: format!(
                        "records {e}..{first} are missing between segments (before {}){why}",
                        path.display()
                    ),
                });
            }
            notes.push(format!(
                "records {e}..{first} are missing before {}, but the checkpoint covers them and lists none of them as live",
                path.display()
            ));
        } else if expected.is_none() && *first > start && ignored_checkpoint.is_some() {
            // Nothing can bring back what the ignored checkpoint summed up: the repair goes on
            // from the oldest record left, and loses what only the checkpoint held.
            notes.push(format!(
                "repair: records {start}..{first} are gone and only the ignored checkpoint \
                 summed them up: what it held (live messages, durable subscriptions, producer \
                 marks) is lost; the state is rebuilt from record {first}"
            ));
            start = *first;
            rebuilt_from = Some(*first);
        } else if expected.is_none() && *first > start {
            return Err(StoreError::Corrupt {
                path: path.display().to_string(),
                offset: 0,
                reason: format!("records {start}..{first} after the checkpoint are missing"),
            });
        }
        let bytes = std::fs::read(path).map_err(|e| StoreError::io(path, "read", e))?;
        let scan = frame::scan(&bytes, *first, max_record + 8);
        let last_file = n + 1 == files.len();
        let mut end = scan.end;
        if let End::Damaged { offset, reason } = &scan.ended {
            let next = first + scan.records.len() as u64;
            // Damage is a torn write only at the end of the data and past the synced mark.
            let corrupt = if !last_file
                || frame::valid_frame_after(&bytes, *offset, next, max_record + 8).is_some()
            {
                Some("valid records follow the damage, so it is not a torn write".to_string())
            } else {
                synced_mark.filter(|m| next <= *m).map(|m| {
                    format!("record {next} was synced (the synced mark is at record {m}), so it is not a torn write")
                })
            };
            let later_valid = corrupt.is_some();
            if let (Some(why), false) = (&corrupt, repair) {
                return Err(StoreError::Corrupt {
                    path: path.display().to_string(),
                    offset: *offset as u64,
                    reason: format!("{reason}; {why}"),
                });
            }
            end = *offset;
            let what = if later_valid {
                "repair: cut corrupt data"
            } else {
                "cut a torn tail"
            };
            notes.push(format!(
                "{what} in {} at offset {offset} ({reason}); {} records before it kept",
                path.display(),
                scan.records.len()
            ));
            if later_valid {
                stop_after = Some(n);
            }
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| StoreError::io(path, "open", e))?;
        let capacity = bytes.len() as u64;
        if end < scan.end || matches!(scan.ended, End::Damaged { .. }) {
            zero_from(&file, path, end as u64, capacity)?;
        }
        if let Some(mark) = synced_mark {
            // Records past the mark were written but maybe never synced — and after a failed
            // sync Linux may hold them only in the page cache, marked clean, where a later
            // sync never writes them: write them again and sync them before anything follows.
            if let Some(f) = scan
                .records
                .iter()
                .find(|f| f.index > mark && f.offset < end)
            {
                use std::os::unix::fs::FileExt;
                file.write_all_at(&bytes[f.offset..end], f.offset as u64)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| StoreError::io(path, "sync", e))?;
                resynced = true;
            }
        }
        let mut offsets = Vec::with_capacity(scan.records.len());
        for f in scan.records.iter().take_while(|f| f.offset < end) {
            offsets.push(f.offset as u32);
            let payload = Bytes::copy_from_slice(&bytes[f.payload..f.payload + f.payload_len]);
            if f.index >= start {
                let rec = Record::decode(payload).map_err(|e| StoreError::Corrupt {
                    path: path.display().to_string(),
                    offset: f.offset as u64,
                    reason: format!("record {} does not decode: {e}", f.index),
                })?;
                replay.apply(f.index, rec);
                replayed_after_checkpoint = true;
            } else if wanted.contains(&f.index) {
                if let Ok(Record {
                    kind: Some(record::Kind::Added(m)),
                    ..
                }) = Record::decode(payload)
                {
                    replay.fill(f.index, m);
                }
            }
        }
        expected = Some(first + offsets.len() as u64);
        segments.push(Segment {
            first: *first,
            path: path.clone(),
            file: Arc::new(file),
            capacity,
            end: end as u64,
            offsets,
            live: AtomicU64::new(0),
        });
    }
    let next_index = expected.unwrap_or(start).max(start);
    if let Some(last) = segments.last_mut() {
        if last.first + last.offsets.len() as u64 != next_index {
            // The checkpoint covers records past the journal's end (a `_mem` journal's unsynced
            // records a power cut dropped): the next record must not follow the last one in
            // its segment, where its index would be misread. Counted full, the segment makes
            // the writer start a new one at `next_index`.
            last.capacity = last.end;
        }
    }
    if let Some(mark) = synced_mark.filter(|m| *m >= next_index) {
        // Records the journal synced are not there: a segment deleted or cut short.
        let (path, offset) = segments
            .last()
            .map_or((dir.to_path_buf(), 0), |s| (s.path.clone(), s.end));
        if !repair {
            return Err(StoreError::Corrupt {
                path: path.display().to_string(),
                offset,
                reason: format!(
                    "the journal ends at record {} but records up to {mark} were synced (a segment deleted or cut short)",
                    next_index.saturating_sub(1)
                ),
            });
        }
        notes.push(format!(
            "repair: records {next_index}..={mark} were synced but are gone; the journal goes on from record {next_index}"
        ));
    }
    if repair {
        // Whatever was cut is no longer synced: the mark must not claim it.
        super::mark::lower_mark(dir, next_index.saturating_sub(1))?;
    }
    if let Some(path) = ignored_checkpoint.take() {
        // The records replayed here are the state now: a plain start must replay them too,
        // not find the damaged checkpoint again and refuse. Kept aside for a post-mortem.
        let aside = dir.join(CORRUPT_CHECKPOINT_FILE);
        std::fs::rename(&path, &aside)
            .map_err(|e| StoreError::io(Path::new(&path), "rename", e))?;
        super::sync_dir(dir)?;
        notes.push(format!(
            "repair: moved the ignored checkpoint aside to {}",
            aside.display()
        ));
        if let Some(from) = rebuilt_from {
            // What the repair rebuilt from, for the next plain start to do the same.
            write_checkpoint(
                dir,
                &Checkpoint {
                    next_index: from,
                    ..Checkpoint::default()
                },
            )?;
            notes.push(format!(
                "repair: wrote an empty checkpoint at record {from}"
            ));
        }
    }
    if resynced {
        super::mark::write_mark(dir, next_index.saturating_sub(1))?;
    }
    let lost = replay.lost();
    if let Some(&i) = lost.first() {
        // Listed live by the checkpoint, never acknowledged since, and its record is nowhere:
        // starting would silently drop it.
        let (path, offset) = segments
            .iter()
            .rev()
            .find(|s| i >= s.first)
            .map_or((dir.to_path_buf(), 0), |s| (s.path.clone(), s.end));
        let what = format!(
            "the checkpoint lists message {i} as live but its record is not in the journal ({} such messages{})",
            lost.len(),
            segments.first().map_or_else(
                || ": there are no segments".to_string(),
                |s| format!("; the journal holds records from {}", s.first)
            )
        );
        if !repair {
            return Err(StoreError::Corrupt {
                path: path.display().to_string(),
                offset,
                reason: what,
            });
        }
        notes.push(format!("repair: dropped {what}"));
    }
    // Count live messages per segment so garbage collection knows what it may delete.
    for index in replay.live_indexes() {
        if let Some(s) = segments.iter().rev().find(|s| index >= s.first) {
            s.live.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let clean = checkpoint.as_ref().is_some_and(|c| c.clean) && !replayed_after_checkpoint;
    let mut recovered = replay.finish(clean || files.is_empty(), next_index, notes);
    recovered.checkpoint_next = checkpoint.as_ref().map(|c| c.next_index).or(rebuilt_from);
    Ok((segments, recovered))
}
