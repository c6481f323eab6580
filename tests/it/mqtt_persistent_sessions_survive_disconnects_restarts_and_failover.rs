//! An MQTT persistent session (3.1.1 `clean_session=0`, 5 `clean_start=0` with a session
//! expiry) keeps its subscriptions and its messages for its client: paho-mqtt QoS 1 subscribers
//! that went away get every message published meanwhile when they reconnect — without
//! subscribing again, `session present` set — also their unacknowledged deliveries (flagged
//! dup), also across a `kill -9` restart of the group, and also on the other member of a
//! file-lock group after its master was `kill -9`ed. A clean start discards the session, and an
//! MQTT 5 session ends after its expiry interval.

use crate::common;
use crate::common_mqtt;
use crate::common_stomp;

use std::net::SocketAddr;
use std::time::Duration;

use common::pair::{file_lock_pair, wait_for};
use common_mqtt::received_payloads;
use common_stomp::python_in;
use serde_json::{json, Value};

/// One step of `tests/mqtt_py/paho_session.py` against `port`.
fn paho(port: SocketAddr, version: &str, action: &str, cid: &str, rest: &[&str]) -> Value {
    let mut args = vec![
        port.port().to_string(),
        version.to_string(),
        action.to_string(),
        cid.to_string(),
    ];
    args.extend(rest.iter().map(|a| a.to_string()));
    python_in("mqtt_py", "paho_session.py", &args)
}

fn payloads(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Publishes `n` QoS 1 messages `prefix-i` to `topic`, then a reconnect of `cid` must get
/// exactly them, with its session present.
fn away_then_back(port: SocketAddr, version: &str, cid: &str, topic: &str, prefix: &str) {
    let n = 10;
    let r = paho(
        port,
        version,
        "publish",
        "pub",
        &[topic, prefix, &n.to_string()],
    );
    assert_eq!(r["pubacked"], json!(n));
    let r = paho(port, version, "receive", cid, &[&n.to_string()]);
    assert_eq!(
        r["session_present"],
        json!(true),
        "MQTT {version} {prefix}: {r}"
    );
    assert_eq!(
        received_payloads(&r),
        sorted(payloads(prefix, n)),
        "MQTT {version} {prefix}: every message published while away, each once"
    );
    assert_eq!(r["qos"], json!([1]), "MQTT {version} {prefix}: at QoS 1");
}

#[test]
fn persistent_sessions_keep_subscriptions_and_messages_across_disconnects_restarts_and_failover() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (topology, mut members) = file_lock_pair(dir.path(), "sessions", "mqtt", "500ms");
    members[0].start(&topology);
    wait_for("g-1 serves", &members, || members[0].ready());
    members[1].start(&topology);
    wait_for("g-2 stands by", &members, || {
        members[1].role().as_deref() == Some("slave")
    });
    let versions = ["3.1.1", "5"];
    let cid = |v: &str| format!("plant-{}", v.replace('.', ""));
    let topic = |v: &str| format!("plant-{}/boiler/temp", v.replace('.', ""));
    let g1 = members[0].listen;

    // A subscription made in a persistent session; the client goes away.
    for v in versions {
        let filter = format!("plant-{}/+/temp", v.replace('.', ""));
        let r = paho(g1, v, "subscribe", &cid(v), &[&filter]);
        assert_eq!(
            r["session_present"],
            json!(false),
            "MQTT {v}: a new session"
        );
        assert_eq!(r["granted"], json!([1]), "MQTT {v}");
    }
    // Messages published while it is away wait for it.
    for v in versions {
        away_then_back(g1, v, &cid(v), &topic(v), "away");
    }
    // Deliveries it never acknowledged are delivered again when it returns.
    for v in versions {
        let r = paho(g1, v, "publish", "pub", &[&topic(v), "held", "10"]);
        assert_eq!(r["pubacked"], json!(10));
        let r = paho(g1, v, "take", &cid(v), &["4"]);
        assert_eq!(r["messages"], json!(payloads("held", 4)), "MQTT {v}");
        let r = paho(g1, v, "receive", &cid(v), &["10"]);
        assert_eq!(
            received_payloads(&r),
            sorted(payloads("held", 10)),
            "MQTT {v}: the unacknowledged ones again, and the rest, each once"
        );
        let dups = r["dups"].as_array().expect("dups");
        for unacked in payloads("held", 4) {
            assert!(
                dups.contains(&json!(unacked)),
                "MQTT {v}: {unacked} was delivered before, so it is flagged dup: {r}"
            );
        }
    }

    // A restart (kill -9 of the whole group) keeps the sessions and what they kept.
    for v in versions {
        let r = paho(g1, v, "publish", "pub", &[&topic(v), "restart", "10"]);
        assert_eq!(r["pubacked"], json!(10));
    }
    members[1].kill9();
    members[0].kill9();
    members[0].start(&topology);
    wait_for("g-1 serves again", &members, || members[0].ready());
    for v in versions {
        let r = paho(g1, v, "receive", &cid(v), &["10"]);
        assert_eq!(r["session_present"], json!(true), "MQTT {v} after restart");
        assert_eq!(
            received_payloads(&r),
            sorted(payloads("restart", 10)),
            "MQTT {v}: every message kept across the restart, each once"
        );
    }
    members[1].start(&topology);
    wait_for("g-2 stands by again", &members, || {
        members[1].role().as_deref() == Some("slave")
    });

    // A failover: the session follows the client to the member that took over.
    for v in versions {
        let r = paho(g1, v, "publish", "pub", &[&topic(v), "failover", "10"]);
        assert_eq!(r["pubacked"], json!(10));
    }
    members[0].kill9();
    wait_for("g-2 takes over", &members, || members[1].ready());
    let g2 = members[1].listen;
    for v in versions {
        let r = paho(g2, v, "receive", &cid(v), &["10"]);
        assert_eq!(r["session_present"], json!(true), "MQTT {v} after failover");
        assert_eq!(
            received_payloads(&r),
            sorted(payloads("failover", 10)),
            "MQTT {v}: every message published to the old master, each once, from the new one"
        );
        // And the session goes on there.
        away_then_back(g2, v, &cid(v), &topic(v), "on-g-2");
    }

    // A clean start discards the session: nothing it kept, no subscription any more.
    for v in versions {
        let r = paho(g2, v, "clean", &cid(v), &[]);
        assert_eq!(r["session_present"], json!(false), "MQTT {v}: clean start");
        let r = paho(g2, v, "publish", "pub", &[&topic(v), "after-clean", "3"]);
        assert_eq!(r["pubacked"], json!(3));
        let r = paho(g2, v, "receive", &cid(v), &["0"]);
        assert_eq!(
            r["session_present"],
            json!(false),
            "MQTT {v}: no session after a clean start"
        );
        assert_eq!(
            r["messages"],
            json!([]),
            "MQTT {v}: a clean start deleted the subscription"
        );
    }

    // MQTT 5: a session with a 1 s expiry interval is gone 1 s after its client left.
    let r = paho(g2, "5", "subscribe", "brief", &["brief/#", "--expiry", "1"]);
    assert_eq!(r["session_present"], json!(false));
    std::thread::sleep(Duration::from_millis(2500));
    let r = paho(g2, "5", "publish", "pub", &["brief/x", "late", "2"]);
    assert_eq!(r["pubacked"], json!(2));
    let r = paho(g2, "5", "receive", "brief", &["0", "--expiry", "1"]);
    assert_eq!(r["session_present"], json!(false), "the session expired");
    assert_eq!(r["messages"], json!([]), "its subscription went with it");
}
