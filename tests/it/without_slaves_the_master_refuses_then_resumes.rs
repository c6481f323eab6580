//! A master that has lost both slaves (one `kill -9`ed, one `kill -STOP`ped) receipts nothing:
//! every persistent send fails with an error — the first with "no quorum" — within
//! `quorum_timeout` (+ 2 s), never hangs, whether the master keeps its role or steps down when
//! the slaves' ZooKeeper sessions expire. The error is truthful on both protocols (native and
//! STOMP): the send is "not confirmed" and "may or may not be delivered" (the record is in the
//! master's journal and may survive a failover), never "not stored". When the stopped slave
//! continues, receipts resume (from whichever member is master then); the killed one rejoins;
//! and the history check finds every receipted message, the failed sends allowed either way.

use crate::common;
use crate::common_stomp;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::ha::{
    assert_history, runtime, send_receipted, try_connect_master, GroupSpec, HaGroup, Load,
};
use common::GUARD;
use common_stomp::RawStomp;
use meshmq::client::{Client, ClientOptions};
use meshmq::stomp::Command as Cmd;

/// What every refusal for lack of quorum must say, on either protocol, with the protocol's
/// own advice for a resend (`advice`).
fn assert_truthful(protocol: &str, e: &str, advice: &str) {
    for words in ["not confirmed", "may or may not be delivered", advice] {
        assert!(
            e.contains(words),
            "{protocol}: a send refused without quorum does not say {words:?}: {e}"
        );
    }
    assert!(
        !e.contains("not stored"),
        "{protocol}: a send refused without quorum claims it was not stored: {e}"
    );
}

#[test]
fn without_slaves_sends_fail_fast_and_resume_when_one_returns() {
    let rt = runtime();
    let zk = common::zk::ZooKeeper::standalone();
    // A quorum wait (1 s) that ends before the lost slaves' sessions (2 s) do: the first
    // failure is the master's own "no quorum", not a demotion.
    let spec = GroupSpec {
        quorum_timeout: Duration::from_secs(1),
        ..GroupSpec::default()
    };
    let (session, quorum_timeout) = (spec.session_timeout, spec.quorum_timeout);
    let limit = quorum_timeout + Duration::from_secs(2);
    let mut group = HaGroup::start(&zk.connect_string(), spec);

    let load = Load::start(group.endpoints(), 0, Duration::from_secs(10));
    load.wait_more(&group, 100, "with both slaves");
    let mut history = load.finish();

    let master = group.wait_master("a master serves");
    let slaves: Vec<usize> = (0..3).filter(|&i| i != master).collect();
    let endpoints = group.endpoints();
    let mut client: Option<Client> = Some(
        rt.block_on(Client::connect(
            &group.members[master].url(),
            ClientOptions::default(),
        ))
        .unwrap_or_else(|e| group.fail(&format!("connect to the master: {e}"))),
    );

    // A STOMP producer on the master, connected while it still has its slaves.
    let mut stomp = RawStomp::connect(group.members[master].stomp, &[]);

    group.kill9(slaves[0]);
    group.sigstop(slaves[1]);
    let lost = Instant::now();
    // Its persistent send (to a queue of its own: it is in doubt, so the history ignores it)
    // runs beside the native ones and must be refused as truthfully.
    let stomp_probe = std::thread::spawn(move || {
        stomp.send(
            &common_stomp::send("/queue/ha.stomp-probe", "in doubt")
                .with_header("persistent", "true")
                .with_header("receipt", "probe"),
        );
        let answer = stomp.expect(Cmd::Error);
        answer.header("message").unwrap_or_default().to_string()
    });
    // Past the quorum wait and past the sessions' expiry, plus a margin: nothing is receipted.
    let mut failures = Vec::new();
    let mut seq = history.next_seq();
    while lost.elapsed() < session + quorum_timeout + Duration::from_secs(2) {
        let c = match client.take() {
            Some(c) => c,
            None => match rt.block_on(try_connect_master(&endpoints)) {
                Some(c) => c,
                None => {
                    // No member serves: nothing can be receipted.
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            },
        };
        let started = Instant::now();
        let outcome = rt.block_on(send_receipted(&c, seq, GUARD));
        let took = started.elapsed();
        history.record(seq, &outcome);
        match outcome {
            Ok(()) => group.fail(&format!(
                "send {seq} was receipted {:?} after both slaves were lost",
                lost.elapsed()
            )),
            Err(e) if took > limit => group.fail(&format!(
                "send {seq} took {took:?} to fail (quorum_timeout {quorum_timeout:?}): {e}"
            )),
            Err(e) => {
                if failures.is_empty() {
                    if !e.contains("no quorum") {
                        group.fail(&format!(
                            "the first send without slaves failed without saying \"no quorum\": {e}"
                        ));
                    }
                    assert_truthful("native", &e, "same producer id and sequence");
                }
                failures.push((took, e));
            }
        }
        seq += 1;
    }
    eprintln!(
        "without slaves, {} sends failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    if failures.is_empty() {
        group.fail("no send was even tried without slaves");
    }
    let stomp_error = stomp_probe
        .join()
        .unwrap_or_else(|_| group.fail("the STOMP send got no ERROR frame"));
    eprintln!("the STOMP send without slaves: {stomp_error}");
    assert_truthful("STOMP", &stomp_error, "it may then arrive twice");

    group.sigcont(slaves[1]);
    let load = Load::start(
        group.endpoints(),
        history.next_seq(),
        Duration::from_secs(10),
    );
    load.wait_more(&group, 50, "after one slave returned");
    group.start_member(slaves[0]);
    group.wait_for("every member is back and one is master", || {
        let roles: Vec<Option<String>> = group.members.iter().map(|m| m.role()).collect();
        roles
            .iter()
            .filter(|r| r.as_deref() == Some("master"))
            .count()
            == 1
            && roles
                .iter()
                .filter(|r| r.as_deref() == Some("slave"))
                .count()
                == 2
    });
    load.wait_more(&group, 50, "with every member back");
    history.merge(load.finish());
    assert_history(&rt, &group, &history, &BTreeSet::new());
}
