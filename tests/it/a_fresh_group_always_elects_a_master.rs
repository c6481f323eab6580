//! Three members started together always elect a first master, however their registrations
//! and candidacies interleave with each other's view of the group: ten fresh groups, each on a
//! fresh three-server ZooKeeper ensemble (whose servers apply writes at slightly different
//! moments, so a member's first view is often already out of date), each serve a master with
//! the other two as its slaves. A claim that fails because the view was stale must be retried
//! from a fresh view, not repeated for ever.

use crate::common;

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
        let elected = started.elapsed();
        eprintln!(
            "start {start}: {} master with two slaves after {elected:?}",
            group.members[master].name,
        );
        // From the members' start: 250-810 ms seen on a 2-core machine under a load average
        // of 9-10; 5 s is 6 times the slowest.
        if elected > Duration::from_secs(5) {
            group.fail(&format!(
                "start {start}: a master took {elected:?} to serve, over 5 s"
            ));
        }
    }
}
