//! Fuzz target `journal`: journal recovery over a directory built from the bytes, and its seeds
//! (a journal laid down by the framing and checkpoint writers).
//!
//! Owns: the scratch directory of one input (removed with it).

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use prost::Message as _;

use crate::store::frame;
use crate::store::proto::{record, Record};
use crate::store::recovery::{self, Recovered};
use crate::store::StoreError;

use super::measure::{proportional, within};

/// Largest record payload the journal target's recovery accepts.
pub(super) const JOURNAL_MAX_RECORD: usize = 1 << 16;

/// The file layout a journal input describes (see [`journal`]).
struct JournalInput {
    repair: bool,
    segments: Vec<(u64, Vec<u8>)>,
    checkpoint: Option<Vec<u8>>,
    mark: Option<Vec<u8>>,
}

fn parse_journal_input(data: &[u8]) -> JournalInput {
    let flags = data.first().copied().unwrap_or(0);
    let (fix_checksums, renumber) = (flags & 0x02 != 0, flags & 0x04 != 0);
    let mut input = JournalInput {
        repair: flags & 0x01 != 0,
        segments: Vec::new(),
        checkpoint: None,
        mark: None,
    };
    let mut rest = data.get(1..).unwrap_or_default();
    while rest.len() >= 3 {
        let tag = rest[0];
        let len = (u16::from_be_bytes([rest[1], rest[2]]) as usize).min(rest.len() - 3);
        let mut bytes = rest[3..3 + len].to_vec();
        rest = &rest[3 + len..];
        match tag % 4 {
            0 if bytes.len() >= 4 && input.segments.len() < 4 => {
                let first = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as u64;
                let mut file = bytes.split_off(4);
                if fix_checksums || renumber {
                    reframe(&mut file, first, fix_checksums, renumber);
                }
                input.segments.push((first, file));
            }
            1 => {
                if fix_checksums && bytes.len() >= 4 {
                    let body = bytes.len() - 4;
                    let crc = crc32c::crc32c(&bytes[..body]);
                    bytes[body..].copy_from_slice(&crc.to_be_bytes());
                }
                input.checkpoint = Some(bytes);
            }
            2 => {
                if fix_checksums && bytes.len() >= 12 {
                    let crc = crc32c::crc32c(&bytes[..8]);
                    bytes[8..12].copy_from_slice(&crc.to_be_bytes());
                }
                input.mark = Some(bytes);
            }
            _ => {}
        }
    }
    input
}

/// Walks the frames of a segment from its start, giving each a consecutive index from
/// `first` and/or its right checksum: mutations then reach the records' contents, where a
/// fuzzer could otherwise never get past the checksum.
fn reframe(file: &mut [u8], first: u64, fix_checksums: bool, renumber: bool) {
    let mut at = 0;
    let mut index = first;
    while at + frame::FRAME_HEADER <= file.len() {
        let len = u32::from_be_bytes(file[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len < 8 || at + 8 + len > file.len() {
            break;
        }
        if renumber {
            file[at + 8..at + 16].copy_from_slice(&index.to_be_bytes());
        }
        if fix_checksums {
            let crc = crc32c::crc32c(&file[at + 8..at + 8 + len]);
            file[at + 4..at + 8].copy_from_slice(&crc.to_be_bytes());
        }
        at += 8 + len;
        index += 1;
    }
}

/// The records a reader may trust in a segment: its frames from the start, each whole, of
/// consecutive indexes from `first` and passing its checksum, up to the first that is not.
/// (Written apart from `frame::scan`, to check it.) The second value: the frames end cleanly
/// (a zero length or the end of the file).
pub(super) fn trusted_records(file: &[u8], first: u64) -> (Vec<(u64, &[u8])>, bool) {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        if file.len() - at < 4 {
            return (out, file[at..].iter().all(|b| *b == 0));
        }
        let len = u32::from_be_bytes(file[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len == 0 {
            return (out, true);
        }
        if !(8..=JOURNAL_MAX_RECORD + 8).contains(&len) || file.len() - at < len + 8 {
            return (out, false);
        }
        let crc = u32::from_be_bytes(file[at + 4..at + 8].try_into().expect("4 bytes"));
        let body = &file[at + 8..at + 8 + len];
        let index = u64::from_be_bytes(body[..8].try_into().expect("8 bytes"));
        if crc32c::crc32c(body) != crc || Some(index) != first.checked_add(out.len() as u64) {
            return (out, false);
        }
        out.push((index, &body[8..]));
        at += 8 + len;
    }
}

/// Journal recovery over a directory the input describes: byte 0 holds flags (bit 0: start
/// with `--repair`; bit 1: give every frame, the checkpoint and the mark their right
/// checksums; bit 2: number the frames of each segment consecutively), then entries of
/// `tag u8 | len u16 | bytes`: tag 0 a segment (its first index as a u32, then the file),
/// tag 1 the checkpoint file, tag 2 the synced mark. Properties: recovery never panics; it
/// either refuses (a corruption named with a file of the directory and an offset inside it)
/// or recovers only messages whose records are in the files, whole and passing their
/// checksums, never past them; a directory of one whole segment from record 1 whose records
/// all decode recovers every record; and a second start over what the first left recovers
/// the same state.
pub fn journal(data: &[u8]) {
    let input = parse_journal_input(data);
    let scratch = scratch_dir();
    let dir = scratch.path();
    for (first, file) in &input.segments {
        std::fs::write(dir.join(format!("{first:020}.log")), file).expect("write a segment");
    }
    if let Some(c) = &input.checkpoint {
        std::fs::write(dir.join("checkpoint"), c).expect("write the checkpoint");
    }
    if let Some(m) = &input.mark {
        std::fs::write(dir.join("synced"), m).expect("write the mark");
    }
    let mut trusted: HashMap<u64, Vec<&[u8]>> = HashMap::new();
    let mut every_record_whole = input.segments.len() == 1
        && input.segments[0].0 == 1
        && input.checkpoint.is_none()
        && input.mark.is_none();
    let mut last_trusted = 0;
    for (first, file) in &input.segments {
        let (records, clean) = trusted_records(file, *first);
        every_record_whole &= clean;
        for (index, payload) in records {
            every_record_whole &= Record::decode(payload).is_ok();
            last_trusted = last_trusted.max(index);
            trusted.entry(index).or_default().push(payload);
        }
    }
    let first_start = within(
        "journal recovery",
        JOURNAL_MAX_RECORD * 2 + proportional(data.len()),
        || recovery::recover(dir, JOURNAL_MAX_RECORD, u64::MAX, input.repair),
    );
    let recovered = match first_start {
        Ok((_, r)) => r,
        Err(e) => {
            assert!(!every_record_whole, "a whole journal was refused: {e}");
            if let StoreError::Corrupt { path, offset, .. } = &e {
                let path = Path::new(path);
                assert!(
                    path.starts_with(dir),
                    "the refusal names {path:?}, outside the journal"
                );
                if let Some(meta) = std::fs::metadata(path).ok().filter(|m| m.is_file()) {
                    assert!(
                        offset <= &meta.len(),
                        "the refusal names offset {offset} past the end of {path:?}"
                    );
                }
            }
            return;
        }
    };
    let checked = check_recovered(&recovered, &trusted, last_trusted);
    if every_record_whole {
        assert_eq!(
            recovered.next_index,
            last_trusted + 1,
            "a whole journal did not recover every record"
        );
    }
    let again = match recovery::recover(dir, JOURNAL_MAX_RECORD, u64::MAX, input.repair) {
        Ok((_, r)) => r,
        Err(e) => panic!("the journal recovered once, then was refused: {e}"),
    };
    assert_eq!(
        check_recovered(&again, &trusted, last_trusted),
        checked,
        "a second start recovered another state"
    );
    assert_eq!(
        again.next_index, recovered.next_index,
        "a second start moved the end"
    );
}

/// Checks that every message recovered with its record has a trusted record of that index
/// holding it; answers the recovered messages' indexes by destination.
fn check_recovered(
    r: &Recovered,
    trusted: &HashMap<u64, Vec<&[u8]>>,
    last_trusted: u64,
) -> Vec<(String, Vec<u64>)> {
    let holds = |index: u64, added: &crate::store::proto::MessageAdded| {
        trusted.get(&index).is_some_and(|payloads| {
            payloads.iter().any(|p| {
                matches!(Record::decode(*p), Ok(Record { kind: Some(record::Kind::Added(m)), .. }) if &m == added)
            })
        })
    };
    let mut state = Vec::new();
    for (dest, messages) in &r.queues {
        for m in messages {
            if let Some(added) = &m.record {
                assert!(
                    holds(m.index, added),
                    "message {} of {dest} was recovered, but no whole record with a right checksum holds it",
                    m.index
                );
            }
        }
        state.push((dest.clone(), messages.iter().map(|m| m.index).collect()));
    }
    for (index, added) in &r.topic_messages {
        assert!(
            holds(*index, added),
            "topic message {index} was recovered, but no whole record with a right checksum holds it"
        );
    }
    if r.checkpoint_next.is_none() {
        assert!(
            r.next_index <= last_trusted + 1,
            "recovery goes on at record {} but the files hold trusted records only up to {last_trusted}",
            r.next_index
        );
    }
    state.sort();
    state
}

/// A fresh directory for one input: in memory (`/dev/shm`) where there is one, as a fuzzer
/// makes thousands a second.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let made = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("meshmq-fuzz-")
            .tempdir_in(shm)
    } else {
        Err(std::io::Error::other("no /dev/shm"))
    };
    made.or_else(|_| tempfile::Builder::new().prefix("meshmq-fuzz-").tempdir())
        .expect("a scratch directory")
}

pub(super) fn journal_seeds() -> Vec<Vec<u8>> {
    use crate::store::proto::*;
    let added = |dest: &str, body: &str, seq: u64| Record {
        kind: Some(record::Kind::Added(MessageAdded {
            destination: dest.into(),
            body: Bytes::copy_from_slice(body.as_bytes()),
            producer_id: Bytes::from_static(b"p"),
            sequence: seq,
            priority: 4,
            ..MessageAdded::default()
        })),
        tx: 0,
    };
    let records = [
        Record {
            kind: Some(record::Kind::Epoch(Epoch { epoch: 1 })),
            tx: 0,
        },
        added("queue://a", "one", 1),
        added("queue://a", "two", 2),
        Record {
            kind: Some(record::Kind::DurableAdded(DurableAdded {
                client_id: "c".into(),
                name: "d".into(),
                pattern: "topic://t.>".into(),
                no_local: false,
                selector: String::new(),
            })),
            tx: 0,
        },
        added("topic://t.x", "three", 3),
        Record {
            kind: Some(record::Kind::Removed(MessageRemoved {
                message: 2,
                ..MessageRemoved::default()
            })),
            tx: 0,
        },
        Record {
            kind: Some(record::Kind::Added(MessageAdded {
                destination: "queue://tx".into(),
                body: Bytes::from_static(b"in a transaction"),
                ..MessageAdded::default()
            })),
            tx: 9,
        },
        Record {
            kind: Some(record::Kind::TxEnd(TxEnd { commit: true })),
            tx: 9,
        },
        Record {
            kind: Some(record::Kind::Retained(MessageAdded {
                destination: "topic://status.boiler".into(),
                body: Bytes::from_static(b"hot"),
                retain: true,
                transient: true,
                ..MessageAdded::default()
            })),
            tx: 0,
        },
        Record {
            kind: Some(record::Kind::SessionExpiry(SessionExpiry {
                client_id: "c".into(),
                interval_secs: 60,
                released: vec![7],
                ..SessionExpiry::default()
            })),
            tx: 0,
        },
    ];
    let segment = |from: usize, to: usize, zeros: usize| {
        let mut b = Vec::new();
        for (i, r) in records.iter().enumerate().take(to).skip(from) {
            frame::put_frame(i as u64 + 1, &r.encode_to_vec(), &mut b);
        }
        b.resize(b.len() + zeros, 0);
        b
    };
    let entry = |tag: u8, bytes: &[u8], out: &mut Vec<u8>| {
        out.push(tag);
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    let seg_entry = |first: u32, file: &[u8], out: &mut Vec<u8>| {
        let mut b = first.to_be_bytes().to_vec();
        b.extend_from_slice(file);
        entry(0, &b, out);
    };
    let mark = |index: u64| {
        let mut b = index.to_be_bytes().to_vec();
        b.extend_from_slice(&crc32c::crc32c(&index.to_be_bytes()).to_be_bytes());
        b
    };
    let checkpoint = {
        let dir = scratch_dir();
        let c = Checkpoint {
            next_index: 4,
            epoch: 1,
            queues: vec![QueueState {
                destination: "queue://a".into(),
                messages: vec![LiveMessage {
                    index: 2,
                    redelivery_count: 0,
                }],
            }],
            retained: vec![MessageAdded {
                destination: "topic://status.pump".into(),
                body: Bytes::from_static(b"running"),
                retain: true,
                ..MessageAdded::default()
            }],
            ..Checkpoint::default()
        };
        recovery::write_checkpoint(dir.path(), &c).expect("write a checkpoint");
        std::fs::read(dir.path().join(recovery::CHECKPOINT_FILE)).expect("read it back")
    };
    let mut one = vec![0x00];
    seg_entry(1, &segment(0, records.len(), 64), &mut one);
    entry(2, &mark(8), &mut one);
    let mut two = vec![0x06];
    seg_entry(1, &segment(0, 4, 0), &mut two);
    seg_entry(5, &segment(4, records.len(), 32), &mut two);
    entry(1, &checkpoint, &mut two);
    entry(2, &mark(6), &mut two);
    let mut torn = vec![0x01];
    let mut cut = segment(0, records.len(), 0);
    cut.truncate(cut.len() - 5);
    seg_entry(1, &cut, &mut torn);
    vec![one, two, torn]
}
