//! A slow disk — every `fsync` of every member's journal taking 3 s, on power-loss filesystems
//! (FUSE) — breaks no ZooKeeper session (2 s timeout) and no replication link of a
//! `quorum_disk` group under a receipted load: the master and its epoch stay the same
//! throughout, no member ever says it lost its session, receipts keep coming (slowly), and the
//! history check at the end finds every receipted message.

use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::ha::{assert_history, runtime, GroupSpec, HaGroup, Load};
use common::zk::ZooKeeper;

const SLOW: Duration = Duration::from_secs(3);
const SLOW_FOR: Duration = Duration::from_secs(15);
const SEND_LIMIT: Duration = Duration::from_secs(20);

#[test]
fn three_second_fsyncs_change_no_master_and_lose_nothing() {
    let rt = runtime();
    let zk = ZooKeeper::standalone();
    let (group, disks) = HaGroup::start_on_power_loss_disks(
        &zk.connect_string(),
        GroupSpec {
            sync: "quorum_disk",
            quorum_timeout: Duration::from_secs(15),
            ..GroupSpec::default()
        },
    );
    let master = group.wait_master("a first master serves");
    let epoch = group.members[master].status().expect("status").epoch;
    let load = Load::start(group.endpoints(), 0, SEND_LIMIT);
    load.wait_more(&group, 50, "before the disks slow down");

    for disk in &disks {
        disk.delay_syncs(SLOW);
    }
    let slowed = Instant::now();
    let before = load.receipted();
    while slowed.elapsed() < SLOW_FOR {
        std::thread::sleep(Duration::from_millis(500));
        let now = group.master();
        if now != Some(master) {
            group.fail(&format!(
                "the master changed while the disks were slow: {now:?} instead of {}",
                group.members[master].name
            ));
        }
    }
    let slow_receipts = load.receipted() - before;
    for disk in &disks {
        disk.delay_syncs(Duration::ZERO);
    }
    load.wait_more(&group, 50, "after the disks are fast again");
    let history = load.finish();

    assert!(
        slow_receipts > 0,
        "no receipt in {SLOW_FOR:?} of {SLOW:?} fsyncs"
    );
    let after = group.members[master].status().expect("status");
    assert_eq!(
        (group.master(), after.epoch),
        (Some(master), epoch),
        "the same master in the same epoch"
    );
    for i in 0..3 {
        let mut lost = group.log_lines(i, &["ZooKeeper session ended"]);
        lost.extend(group.log_lines(i, &["ZooKeeper connection lost"]));
        assert!(
            lost.is_empty(),
            "{} lost its ZooKeeper session: {lost:?}",
            group.members[i].name
        );
    }
    eprintln!(
        "{SLOW:?} fsyncs for {SLOW_FOR:?}: {slow_receipts} receipts meanwhile, {} syncs on the master's disk",
        disks[master]
            .counters
            .syncs
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    assert_history(&rt, &group, &history, &BTreeSet::new());
    drop(group);
    drop(disks);
}
