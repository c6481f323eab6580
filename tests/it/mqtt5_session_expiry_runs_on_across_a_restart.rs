//! MQTT 5 session expiry is journaled with the persistent session, so it runs on across a
//! `kill -9` restart of the member: a session whose interval ran out while the broker was down
//! is gone when it is back (its subscription, and the messages it kept, with it); a session a
//! client held when the broker died expires on its interval counted from the restart; and a
//! session whose interval has not run out is kept with every message it kept.

use crate::common;
use crate::common_mqtt;

use std::time::Duration;

use common::pair::{file_lock_pair, wait_for};
use common_mqtt::{hold_session, paho_session as paho};
use serde_json::json;

fn payloads(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[test]
fn mqtt5_session_expiry_is_journaled_and_runs_on_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (topology, mut members) = file_lock_pair(dir.path(), "expiry", "mqtt", "500ms");
    members[0].start(&topology);
    wait_for("g-1 serves", &members, || members[0].ready());
    let g1 = members[0].listen;

    // Four sessions, each with a QoS 1 subscription to its own topics: "down" (4 s, its client
    // leaves just before the broker dies) and "kept" (an hour) are idle when the broker dies;
    // "held" (3 s) and "held-long" (an hour) are held by a connection then.
    let sessions = [
        ("down", 4),
        ("kept", 3600),
        ("held", 3),
        ("held-long", 3600),
    ];
    for (cid, expiry) in sessions {
        let r = paho(
            g1,
            "5",
            "subscribe",
            cid,
            &[&format!("{cid}/#"), "--expiry", &expiry.to_string()],
        );
        assert_eq!(r["session_present"], json!(false), "{cid}: a new session");
        assert_eq!(r["granted"], json!([1]), "{cid}");
    }
    let down = hold_session(g1, "down", 4);
    let held = hold_session(g1, "held", 3);
    let held_long = hold_session(g1, "held-long", 3600);
    for (cid, _) in sessions {
        let r = paho(g1, "5", "publish", "pub", &[&format!("{cid}/x"), cid, "3"]);
        assert_eq!(r["pubacked"], json!(3), "{cid}");
    }

    // "down"'s client goes (its socket closes): its 4 s start now, and run out while no
    // broker serves it.
    drop(down);
    std::thread::sleep(Duration::from_millis(500));
    members[0].kill9();
    drop((held, held_long));
    std::thread::sleep(Duration::from_secs(5));
    members[0].start(&topology);
    wait_for("g-1 serves again", &members, || members[0].ready());

    for cid in ["kept", "held-long"] {
        let expiry = "3600";
        let r = paho(g1, "5", "receive", cid, &["3", "--expiry", expiry]);
        assert_eq!(r["session_present"], json!(true), "{cid}: kept: {r}");
        let mut got: Vec<String> = serde_json::from_value(r["messages"].clone()).expect("list");
        got.sort();
        assert_eq!(got, payloads(cid, 3), "{cid}: every message it kept, once");
    }
    let r = paho(g1, "5", "receive", "down", &["0", "--expiry", "4"]);
    assert_eq!(
        r["session_present"],
        json!(false),
        "down: its interval ran out while the broker was down: {r}"
    );
    assert_eq!(
        r["messages"],
        json!([]),
        "down: its subscription and messages went with it"
    );

    // "held" was held at the crash: its 3 s count from the restart, and then it ends.
    std::thread::sleep(Duration::from_millis(4500));
    let r = paho(g1, "5", "receive", "held", &["0", "--expiry", "3"]);
    assert_eq!(
        r["session_present"],
        json!(false),
        "held: expired 3 s after the restart: {r}"
    );
    assert_eq!(r["messages"], json!([]), "held: its messages went with it");
}
