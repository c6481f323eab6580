//! Three members started together always elect a first master, however their registrations
//! and candidacies interleave with each other's view of the group: ten fresh groups, each on a
//! fresh three-server ZooKeeper ensemble (whose servers apply writes at slightly different
//! moments, so a member's first view is often already out of date), each serve a master with
//! the other two as its slaves. A claim that fails because the view was stale must be retried
//! from a fresh view, not repeated for ever.

mod common;

use std::time::{Duration, Instant};

use common::ha::{GroupSpec, HaGroup};
use common::zk::ZooKeeper;

const STARTS: usize = 10;

#[test]
fn ten_fresh_groups_each_elect_a_master() {
    for start in 0..STARTS {
        let zk = ZooKeeper::ensemble();
        let started = Instant::now();
        let group = HaGroup::start(
            &zk.connect_string(),
            GroupSpec {
                session_timeout: Duration::from_secs(4),
                ..GroupSpec::default()
            },
        );
        let master = group.wait_master("the master still serves");
        eprintln!(
            "start {start}: {} master with two slaves after {:?}",
            group.members[master].name,
            started.elapsed()
        );
    }
}
