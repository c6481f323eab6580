//! A ZooKeeper group whose three journals live on power-loss filesystems (FUSE: unsynced writes
//! kept in memory only) loses no receipted message to power cuts under a receipted load:
//! with `sync = "quorum_disk"` when all three members lose power at once (every journal drops
//! what it had not `fsync`ed, every member dies, all come back), and with `sync = "quorum_mem"`
//! when a minority does (the master's disk drops its unsynced writes and the master dies; the
//! slaves, which only hold the records in memory, take over, and the master comes back on
//! what its disk kept — up to its last checkpoint, which syncs the records it covers first).
//! The history check at the end finds every receipted message, nothing invented, duplicates only
//! of sends in doubt.

use crate::common;
use crate::powerloss;

use std::collections::BTreeSet;
use std::time::Duration;

use common::ha::{assert_history, runtime, GroupSpec, HaGroup, Load};
use common::zk::ZooKeeper;
use powerloss::PowerLoss;

const ROUNDS: usize = 3;
const SEND_LIMIT: Duration = Duration::from_secs(10);

/// The group with `sync`, each journal on a power-loss filesystem, serving.
fn start(zk: &ZooKeeper, sync: &'static str) -> (HaGroup, Vec<PowerLoss>) {
    HaGroup::start_on_power_loss_disks(
        &zk.connect_string(),
        GroupSpec {
            sync,
            ..GroupSpec::default()
        },
    )
}

#[test]
fn quorum_disk_loses_nothing_when_every_member_loses_power() {
    let rt = runtime();
    let zk = ZooKeeper::standalone();
    let (mut group, disks) = start(&zk, "quorum_disk");
    let load = Load::start(group.endpoints(), 0, SEND_LIMIT);
    let mut dropped = 0;
    for round in 0..ROUNDS {
        load.wait_more(&group, 100, &format!("round {round}, before the power cut"));
        for disk in &disks {
            dropped += disk.cut();
        }
        for i in 0..3 {
            group.kill9(i);
        }
        for disk in &disks {
            disk.power_on();
        }
        for i in 0..3 {
            group.start_member(i);
        }
        group.wait_master(&format!(
            "round {round}: a master serves after the power cut"
        ));
    }
    load.wait_more(&group, 100, "after the last power cut");
    let history = load.finish();
    eprintln!("quorum_disk: {ROUNDS} cuts of all three members, {dropped} unsynced bytes dropped");
    assert_history(&rt, &group, &history, &BTreeSet::new());
    // The members first, then their disks.
    drop(group);
    drop(disks);
}

// A `quorum_mem` journal syncs nothing per write, so the cut master's disk keeps only what its
// checkpoints synced: whole segments up to its last checkpoint, then zeros. It must open on
// that (a gap the checkpoint covers, or an unwritten tail, is no damage), follow, and catch up.
#[test]
fn quorum_mem_loses_nothing_when_a_minority_loses_power() {
    let rt = runtime();
    let zk = ZooKeeper::standalone();
    let (mut group, disks) = start(&zk, "quorum_mem");
    let load = Load::start(group.endpoints(), 0, SEND_LIMIT);
    let mut master = group.wait_master("the first master serves");
    let mut dropped = 0;
    for round in 0..ROUNDS {
        load.wait_more(&group, 100, &format!("round {round}, before the power cut"));
        dropped += disks[master].cut();
        group.kill9(master);
        let new = group.wait_new_master(master, &format!("round {round}: a slave takes over"));
        disks[master].power_on();
        group.start_member(master);
        group.wait_role(master, "slave");
        master = new;
    }
    load.wait_more(&group, 100, "after the last power cut");
    let history = load.finish();
    eprintln!("quorum_mem: {ROUNDS} power cuts of the master, {dropped} unsynced bytes dropped");
    assert_history(&rt, &group, &history, &BTreeSet::new());
    // The members first, then their disks.
    drop(group);
    drop(disks);
}
