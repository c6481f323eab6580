//! A member of a `quorum_mem` ZooKeeper group whose journal is damaged while it is down (a
//! flipped byte in a record with valid records after it: real corruption, not a torn tail)
//! does not stay out for good: its journal was never more than a copy of what the group holds
//! in memory, so it discards it, follows, and copies the master's again — completely: elected
//! master later (the highest weight among equal positions), it delivers every receipted message.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::ha::{assert_history, runtime, GroupSpec, HaGroup, Load};
use common::zk::ZooKeeper;

const SEND_LIMIT: Duration = Duration::from_secs(10);

/// The oldest segment in `dir` (segments are named by their first index, zero-padded).
fn oldest_segment(dir: &std::path::Path) -> std::path::PathBuf {
    let mut segments: Vec<_> = std::fs::read_dir(dir)
        .expect("the journal directory")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    segments.into_iter().next().expect("a segment")
}

#[test]
fn a_damaged_quorum_mem_journal_is_copied_again_from_the_master() {
    let rt = runtime();
    let zk = ZooKeeper::standalone();
    // g-1 is the first master; g-2 (the one damaged) beats g-3 when their positions are equal.
    let mut group = HaGroup::start(
        &zk.connect_string(),
        GroupSpec {
            sync: "quorum_mem",
            weights: [3, 2, 1],
            ..GroupSpec::default()
        },
    );
    let master = group.wait_master("the first master serves");
    assert_eq!(master, 0, "the heaviest member is the first master");
    let load = Load::start(group.endpoints(), 0, SEND_LIMIT);
    load.wait_more(&group, 200, "before the damage");

    group.kill9(1);
    let segment = oldest_segment(&group.journal_dir(1));
    let mut bytes = std::fs::read(&segment).expect("read the segment");
    assert!(
        bytes[..4096].iter().filter(|b| **b != 0).count() > 1024,
        "the segment holds records"
    );
    bytes[100] ^= 0x10;
    std::fs::write(&segment, &bytes).expect("damage the segment");

    group.start_member(1);
    group.wait_role(1, "slave");
    assert!(
        !group
            .log_lines(1, &["journal is damaged", "copied again"])
            .is_empty(),
        "g-2 says why it dropped its journal\n{}",
        group.logs()
    );
    load.wait_more(&group, 100, "after g-2 came back");
    let history = load.finish();
    group.wait_for("g-2 has caught up with the master", || {
        group.slave_lag(0, 1) == Some(0) && group.slave_lag(0, 2) == Some(0)
    });

    group.kill9(0);
    let new = group.wait_new_master(0, "a slave takes over");
    assert_eq!(new, 1, "g-2 (weight 2, as far as g-3) is elected");
    assert_history(&rt, &group, &history, &BTreeSet::new());
}
