//! A member that comes back with an old journal is brought up to date, and one that comes back
//! with records nobody acknowledged has them truncated — proven by making each of them the only
//! member that can hold the newest receipted messages, then the master, and draining it:
//!
//! - **stale**: slave A is `kill -9`ed while receipts go on, then restarted; the master's
//!   `/status` comes to list it with lag 0. The other slave is killed, so every later receipt
//!   needs A's acknowledgement, and the master is killed: A, now ahead of the restarted third
//!   member, must win the election and hold everything, including what was receipted while
//!   it was away.
//! - **divergent**: both slaves of master A are killed and A is sent messages it can only
//!   journal locally — they fail (no quorum, or its stepping down) — and A is `kill -9`ed.
//!   The other two elect a new master and receipt more in the newer epoch, over the positions
//!   where A holds the unacknowledged records. A rejoins as a slave; again it becomes the only
//!   follower, then the master. The history check finds every receipted message and none of
//!   the unacknowledged ones: A's divergent tail was truncated, not replayed.

use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::ha::{assert_history, runtime, send_receipted, GroupSpec, HaGroup, Load};
use meshmq::client::{Client, ClientOptions};

/// Sequence numbers of the sends only the divergent master journals.
const DIVERGENT: u64 = 1_000_000_000;
const SEND_LIMIT: Duration = Duration::from_secs(10);

#[test]
fn stale_and_divergent_members_are_truncated_and_catch_up() {
    let rt = runtime();
    let zk = common::zk::ZooKeeper::standalone();
    let spec = GroupSpec::default();
    let limit = spec.quorum_timeout + Duration::from_secs(2);
    let mut group = HaGroup::start(&zk.connect_string(), spec);
    let load = Load::start(group.endpoints(), 0, SEND_LIMIT);
    load.wait_more(&group, 50, "with every member");

    // Stale: `a` misses a stretch of receipts, then is the only one holding the newest.
    let m0 = group.wait_master("a master serves");
    let (a, b) = match m0 {
        0 => (1, 2),
        1 => (2, 0),
        _ => (0, 1),
    };
    group.kill9(a);
    load.wait_more(&group, 300, "while slave a is down");
    group.start_member(a);
    group.wait_role(a, "slave");
    group.wait_for(
        "the master reports the stale member caught up (lag 0)",
        || group.slave_lag(m0, a) == Some(0),
    );
    group.kill9(b);
    load.wait_more(&group, 50, "acknowledged by a alone");
    group.kill9(m0);
    group.start_member(b);
    let master = group.wait_master("a master serves after the stale member took over");
    if master != a {
        group.fail(&format!(
            "{} became master, but {} alone held the newest receipted messages",
            group.members[master].name, group.members[a].name
        ));
    }
    group.start_member(m0);
    group.wait_role(b, "slave");
    group.wait_role(m0, "slave");
    load.wait_more(&group, 50, "from the caught-up member");
    let mut history = load.finish();

    // Divergent: `a` journals records no one acknowledges, then dies.
    let a_epoch = group.members[a].status().expect("/status").epoch;
    let direct = rt
        .block_on(Client::connect(
            &group.members[a].url(),
            ClientOptions::default(),
        ))
        .unwrap_or_else(|e| group.fail(&format!("connect to the master: {e}")));
    group.kill9(b);
    group.kill9(m0);
    let started = Instant::now();
    let outcomes = rt.block_on(async {
        let sends: Vec<_> = (0..10)
            .map(|k| {
                let direct = direct.clone();
                tokio::spawn(
                    async move { send_receipted(&direct, DIVERGENT + k, common::GUARD).await },
                )
            })
            .collect();
        let mut outcomes = Vec::new();
        for s in sends {
            outcomes.push(s.await.expect("send task"));
        }
        outcomes
    });
    let took = started.elapsed();
    if let Some(k) = outcomes.iter().position(Result::is_ok) {
        group.fail(&format!(
            "send {} was receipted with both slaves dead",
            DIVERGENT + k as u64
        ));
    }
    if took > limit {
        group.fail(&format!("the sends without slaves took {took:?} to fail"));
    }
    eprintln!(
        "without slaves, the sends failed after {took:?}: {:?}",
        outcomes[0]
    );
    let forbidden: BTreeSet<u64> = (DIVERGENT..DIVERGENT + 10).collect();
    drop(direct);
    group.kill9(a);

    // The other two elect a newer epoch and receipt over the divergent positions.
    group.start_member(b);
    group.start_member(m0);
    let new = group.wait_master("the two others elect a master");
    let new_epoch = group.members[new].status().map_or(0, |s| s.epoch);
    if new_epoch <= a_epoch {
        group.fail(&format!(
            "{} serves epoch {new_epoch}, not after the divergent master's {a_epoch}",
            group.members[new].name
        ));
    }
    let load = Load::start(group.endpoints(), history.next_seq(), SEND_LIMIT);
    load.wait_more(
        &group,
        100,
        "in the new epoch, before the divergent member returns",
    );
    group.start_member(a);
    group.wait_role(a, "slave");
    group.wait_for(
        "the master reports the once-divergent member caught up (lag 0)",
        || group.slave_lag(new, a) == Some(0),
    );

    let member = format!("member={}", group.members[a].name);
    eprintln!(
        "how {} rejoined the new master: {:?}",
        group.members[a].name,
        group.log_lines(new, &["follower joined", &member])
    );

    // `a` becomes the only follower, then the master.
    let other = 3 - new - a;
    group.kill9(other);
    load.wait_more(
        &group,
        50,
        "acknowledged by the once-divergent member alone",
    );
    group.kill9(new);
    group.start_member(other);
    let master = group.wait_master("a master serves after the once-divergent member took over");
    if master != a {
        group.fail(&format!(
            "{} became master, but {} alone held the newest receipted messages",
            group.members[master].name, group.members[a].name
        ));
    }
    group.start_member(new);
    group.wait_role(other, "slave");
    group.wait_role(new, "slave");
    load.wait_more(&group, 50, "from the once-divergent member");
    history.merge(load.finish());
    assert_history(&rt, &group, &history, &forbidden);
}
