//! Damage to what the journal had synced — a flipped byte in the last record, the journal cut
//! at a record boundary, the newest segment deleted, a corrupt checkpoint — is corruption, not a
//! torn tail: a real broker refuses to start (non-zero exit) naming the file and the offset,
//! leaves the journal as it found it, and started with `--repair` cuts there and delivers every
//! record before the damage. A repair is final: after `--repair` ignored a corrupt checkpoint,
//! a plain start — even after a crash before the repaired broker wrote a checkpoint of its own —
//! starts and delivers every record the repair kept.

use crate::common;

use std::path::{Path, PathBuf};

use common::repair::{
    assert_delivers_the_first, assert_refused_naming, entry, filled_then_killed, COUNT,
};

fn snapshot(journal: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(journal)
        .expect("list the journal")
        .map(|e| {
            let path = e.expect("entry").path();
            let bytes = std::fs::read(&path).expect("read a journal file");
            (path, bytes)
        })
        .collect();
    files.sort();
    files
}

fn restore(journal: &Path, files: &[(PathBuf, Vec<u8>)]) {
    std::fs::remove_dir_all(journal).expect("clear the journal");
    std::fs::create_dir_all(journal).expect("recreate the journal");
    for (path, bytes) in files {
        std::fs::write(path, bytes).expect("restore a journal file");
    }
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    FlippedLastRecord,
    CutAtRecordBoundary,
    DeletedLastSegment,
    CorruptCheckpoint,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damage_to_synced_records_is_refused_naming_file_and_offset_then_repaired() {
    // Small segments: several of them, and a checkpoint written when one fills.
    let mut broker = filled_then_killed().await;
    let journal = broker.journal_dir();
    let files = snapshot(&journal);
    let segments = common::segment_files(&journal);
    assert!(segments.len() >= 3, "{segments:?}");
    let last_segment = segments.last().expect("a segment").clone();
    let last_bytes = std::fs::read(&last_segment).expect("read");
    let last_frames = common::journal_frames(&last_bytes);
    let last = *last_frames.last().expect("records in the last segment");
    assert_eq!(
        entry(&last_bytes, &last),
        COUNT - 1,
        "the last record is the last message"
    );
    let checkpoint = journal.join("checkpoint");
    assert!(checkpoint.exists(), "a filled segment made a checkpoint");

    for damage in [
        Damage::FlippedLastRecord,
        Damage::CutAtRecordBoundary,
        Damage::DeletedLastSegment,
        Damage::CorruptCheckpoint,
    ] {
        restore(&journal, &files);
        // (file named, offset named, messages kept by --repair)
        let (named, offset, kept) = match damage {
            Damage::FlippedLastRecord => {
                let mut bytes = last_bytes.clone();
                bytes[last.offset + 16 + (last.len - 16) / 2] ^= 0x02;
                std::fs::write(&last_segment, &bytes).expect("flip");
                (last_segment.clone(), last.offset, COUNT - 1)
            }
            Damage::CutAtRecordBoundary => {
                std::fs::write(&last_segment, &last_bytes[..last.offset]).expect("cut");
                (last_segment.clone(), last.offset, COUNT - 1)
            }
            Damage::DeletedLastSegment => {
                std::fs::remove_file(&last_segment).expect("delete");
                let before = segments[segments.len() - 2].clone();
                let bytes = std::fs::read(&before).expect("read");
                let frames = common::journal_frames(&bytes);
                let end = frames.last().expect("records").end();
                let first_lost = entry(&last_bytes, &last_frames[0]);
                (before, end, first_lost)
            }
            Damage::CorruptCheckpoint => {
                let mut bytes = std::fs::read(&checkpoint).expect("read");
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x10;
                std::fs::write(&checkpoint, &bytes).expect("damage the checkpoint");
                (checkpoint.clone(), 0, COUNT)
            }
        };
        let damaged = snapshot(&journal);

        let what = format!("{damage:?}: ");
        assert_refused_naming(&mut broker, &named, offset, &what);
        assert!(
            snapshot(&journal) == damaged,
            "{damage:?}: a refused start changed the journal"
        );

        broker.restart_with(&["--repair"]);
        assert_delivers_the_first(&broker, kept, &what).await;
        broker.kill9();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_repair_ignored_a_corrupt_checkpoint_a_plain_start_delivers_everything() {
    let mut broker = filled_then_killed().await;
    let checkpoint = broker.journal_dir().join("checkpoint");
    let mut bytes = std::fs::read(&checkpoint).expect("a filled segment made a checkpoint");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&checkpoint, &bytes).expect("damage the checkpoint");

    assert_refused_naming(&mut broker, &checkpoint, 0, "");
    broker.restart_with(&["--repair"]);
    // A crash before the repaired broker writes a checkpoint of its own (the first is due
    // after `checkpoint_interval`, 30 s by default; no segment fills meanwhile).
    broker.kill9();
    // A plain start: the harness fails the test if the broker refuses.
    broker.restart();
    assert_delivers_the_first(&broker, COUNT, "every record the repair kept: ").await;
    broker.kill9();
}
