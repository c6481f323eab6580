//! A flipped byte in a record that valid records follow is corruption, not a torn write: the
//! broker refuses to start (non-zero exit) with an error naming the segment file, the offset
//! and `--repair`, and leaves the journal untouched; started with `--repair` it cuts the journal
//! there and delivers every record before the damage.

use crate::common;

use common::repair::{assert_delivers_the_first, assert_refused_naming, entry, filled_then_killed};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flipped_byte_in_an_earlier_record_is_refused_then_repaired() {
    // Small segments: the damage is in a segment that later segments follow.
    let mut broker = filled_then_killed().await;

    let segments = common::segment_files(&broker.journal_dir());
    assert!(segments.len() >= 3, "{segments:?}");
    let segment = segments[1].clone();
    let mut bytes = std::fs::read(&segment).expect("read the segment");
    let frames = common::journal_frames(&bytes);
    let damaged = frames[frames.len() / 2];
    let kept = entry(&bytes, &damaged);
    bytes[damaged.offset + 16 + (damaged.len - 16) / 2] ^= 0x20;
    std::fs::write(&segment, &bytes).expect("write the damaged segment");
    let before = common::segment_files(&broker.journal_dir())
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect::<Vec<_>>();

    assert_refused_naming(&mut broker, &segment, damaged.offset, "");
    let after = common::segment_files(&broker.journal_dir())
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect::<Vec<_>>();
    assert!(before == after, "a refused start changed the journal");

    broker.restart_with(&["--repair"]);
    let log = broker.log();
    assert!(
        log.contains(&format!(
            "repair: cut corrupt data in {} at offset {}",
            segment.display(),
            damaged.offset
        )),
        "{log}"
    );
    assert_delivers_the_first(&broker, kept, "").await;
}
