//! A one-second stall of the members' ZooKeeper link — a proxy that holds every byte without
//! closing anything, well inside the 4 s session timeout — changes nothing: the same member is
//! master in the same epoch before, during and for two session timeouts after the stall (the
//! sampler never sees another master), no send fails, and the history check finds every
//! receipted message.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::ha::{assert_history, runtime, GroupSpec, HaGroup, Load, Sampler};
use common::proxy::Proxy;
use common::zk::ZooKeeper;

#[test]
fn a_one_second_zookeeper_stall_keeps_the_master_and_its_epoch() {
    let rt = runtime();
    let zk = ZooKeeper::standalone();
    let proxy = Proxy::start(zk.client_addr(0));
    let spec = GroupSpec {
        session_timeout: Duration::from_secs(4),
        ..GroupSpec::default()
    };
    let session = spec.session_timeout;
    let group = HaGroup::start(&proxy.addr().to_string(), spec);
    assert!(
        proxy.accepted() >= 3,
        "every member reaches ZooKeeper through the proxy ({} connections)",
        proxy.accepted()
    );

    let master = group.wait_master("a master serves");
    let epoch = group.members[master].status().expect("/status").epoch;
    let sampler = Sampler::start(group.members.iter().map(|m| m.admin).collect());
    let load = Load::start(group.endpoints(), 0, Duration::from_secs(10));
    load.wait_more(&group, 100, "before the stall");

    proxy.stall_for(Duration::from_secs(1));
    // Long enough for any consequence of the stall (a lost session, a re-election) to show.
    std::thread::sleep(2 * session);
    load.wait_more(&group, 100, "after the stall");

    let failed = load.failed();
    let history = load.finish();
    let samples = sampler.finish();
    let changes = samples.master_changes();
    if changes != [(master, epoch)] {
        group.fail(&format!(
            "the master changed across a 1 s ZooKeeper stall: expected only {} in epoch {epoch}, saw (member, epoch) {changes:?}",
            group.members[master].name
        ));
    }
    let now = group.members[master].status().expect("/status");
    if now.role != "master" || now.epoch != epoch {
        group.fail(&format!(
            "after the stall {} is {} in epoch {}, not master in epoch {epoch}",
            group.members[master].name, now.role, now.epoch
        ));
    }
    if failed > 0 {
        group.fail(&format!(
            "{failed} sends failed across a stall that changed no master: {:?}",
            history.errors
        ));
    }
    assert_history(&rt, &group, &history, &BTreeSet::new());
}
