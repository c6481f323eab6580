//! A persistent MQTT session keeps its `$share/NAME/filter` subscriptions: a paho-mqtt QoS 1
//! subscriber of `$share/g/sensors-…/#` (3.1.1 `clean_session=0`, 5 `clean_start=0` with a
//! session expiry) that went away gets every message published meanwhile (QoS 1, by another
//! client) when it reconnects — without subscribing again, `session present` set, on the topic
//! each was published to — after a plain disconnect, across a SIGTERM restart and a `kill -9`
//! restart of its group, and on the other member of a file-lock group after its master was
//! `kill -9`ed. An UNSUBSCRIBE, a clean start and an MQTT 5 session's expiry end the kept
//! subscription: what is published afterwards does not wait in the group's queue for it.

use crate::common;
use crate::common_mqtt;

use std::net::SocketAddr;
use std::time::Duration;

use common::pair::{file_lock_pair, wait_for};
use common_mqtt::paho_session as paho;
use common_mqtt::received_payloads;
use serde_json::json;

const VERSIONS: [&str; 2] = ["3.1.1", "5"];

fn tag(v: &str) -> String {
    v.replace('.', "")
}

fn cid(v: &str) -> String {
    format!("share-keeper-{}", tag(v))
}

fn filter(v: &str) -> String {
    format!("$share/g/sensors-{}/#", tag(v))
}

fn topic(v: &str) -> String {
    format!("sensors-{}/boiler/temp", tag(v))
}

fn payloads(prefix: &str, n: usize) -> Vec<String> {
    let mut all: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    all.sort();
    all
}

/// Publishes `n` QoS 1 messages `prefix-i` to each version's topic.
fn publish(port: SocketAddr, prefix: &str, n: usize) {
    for v in VERSIONS {
        let r = paho(
            port,
            v,
            "publish",
            "pub",
            &[&topic(v), prefix, &n.to_string()],
        );
        assert_eq!(r["pubacked"], json!(n), "MQTT {v} {prefix}: {r}");
    }
}

/// Each version's client reconnects to its session (subscribing to nothing) and must get
/// exactly the `n` messages `prefix-i`, at QoS 1, on the topic they were published to.
fn back(port: SocketAddr, prefix: &str, n: usize) {
    for v in VERSIONS {
        let r = paho(port, v, "receive", &cid(v), &[&n.to_string()]);
        assert_eq!(
            r["session_present"],
            json!(true),
            "MQTT {v} {prefix}: the session kept its shared subscription: {r}"
        );
        assert_eq!(
            received_payloads(&r),
            payloads(prefix, n),
            "MQTT {v} {prefix}: every message published while away, each once"
        );
        assert_eq!(r["qos"], json!([1]), "MQTT {v} {prefix}: at QoS 1");
        assert_eq!(r["topics"], json!([topic(v)]), "MQTT {v} {prefix}");
    }
}

/// After the subscription was ended: what is published then does not wait in the group's
/// queue for the client, which subscribes anew (in the same connection as it looks).
fn nothing_waits(port: SocketAddr, v: &str, what: &str, extra: &[&str]) {
    let r = paho(port, v, "publish", "pub", &[&topic(v), what, "3"]);
    assert_eq!(r["pubacked"], json!(3));
    let f = filter(v);
    let mut args = vec!["0", "--subscribe", &f];
    args.extend(extra);
    let r = paho(port, v, "receive", &cid(v), &args);
    assert_eq!(
        r["messages"],
        json!([]),
        "MQTT {v}: {what} ended the kept subscription, so nothing was kept for it: {r}"
    );
}

#[test]
fn shared_subscriptions_of_persistent_sessions_survive_disconnects_restarts_and_failover() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (topology, mut members) = file_lock_pair(dir.path(), "share-keep", "mqtt", "500ms");
    members[0].start(&topology);
    wait_for("g-1 serves", &members, || members[0].ready());
    let g1 = members[0].listen;

    for v in VERSIONS {
        let r = paho(g1, v, "subscribe", &cid(v), &[&filter(v)]);
        assert_eq!(
            r["session_present"],
            json!(false),
            "MQTT {v}: a new session"
        );
        assert_eq!(r["granted"], json!([1]), "MQTT {v}");
    }
    // A disconnect: what is published meanwhile waits in the group's queue.
    publish(g1, "away", 10);
    back(g1, "away", 10);

    // A graceful restart.
    publish(g1, "sigterm", 10);
    members[0].stop();
    members[0].start(&topology);
    wait_for("g-1 serves after SIGTERM", &members, || members[0].ready());
    back(g1, "sigterm", 10);

    // A crash, and what is published after the restart before the client returns.
    publish(g1, "kill9", 10);
    members[0].kill9();
    members[0].start(&topology);
    wait_for("g-1 serves after kill -9", &members, || members[0].ready());
    publish(g1, "restarted", 5);
    for v in VERSIONS {
        let r = paho(g1, v, "receive", &cid(v), &["15"]);
        assert_eq!(r["session_present"], json!(true), "MQTT {v}: {r}");
        let mut want = payloads("kill9", 10);
        want.extend(payloads("restarted", 5));
        want.sort();
        assert_eq!(
            received_payloads(&r),
            want,
            "MQTT {v}: across a kill -9, each once"
        );
    }

    // A failover: the session follows the client to the member that took over.
    members[1].start(&topology);
    wait_for("g-2 stands by", &members, || {
        members[1].role().as_deref() == Some("slave")
    });
    publish(g1, "failover", 10);
    members[0].kill9();
    wait_for("g-2 takes over", &members, || members[1].ready());
    let g2 = members[1].listen;
    back(g2, "failover", 10);
    publish(g2, "on-g-2", 10);
    back(g2, "on-g-2", 10);

    // An UNSUBSCRIBE ends it (MQTT 3.1.1), and so does a clean start (MQTT 5).
    let r = paho(
        g2,
        "3.1.1",
        "unsubscribe",
        &cid("3.1.1"),
        &[&filter("3.1.1")],
    );
    assert_eq!(r["session_present"], json!(true));
    nothing_waits(g2, "3.1.1", "an UNSUBSCRIBE", &[]);
    let r = paho(g2, "5", "clean", &cid("5"), &[]);
    assert_eq!(r["session_present"], json!(false), "a clean start");
    nothing_waits(g2, "5", "a clean start", &[]);

    // MQTT 5: a session with a 1 s expiry interval loses its shared subscription 1 s after its
    // client left.
    let r = paho(
        g2,
        "5",
        "subscribe",
        "brief",
        &["$share/g/brief/#", "--expiry", "1"],
    );
    assert_eq!(r["granted"], json!([1]));
    std::thread::sleep(Duration::from_millis(2500));
    let r = paho(g2, "5", "publish", "pub", &["brief/x", "late", "2"]);
    assert_eq!(r["pubacked"], json!(2));
    let r = paho(
        g2,
        "5",
        "receive",
        "brief",
        &["0", "--subscribe", "$share/g/brief/#", "--expiry", "1"],
    );
    assert_eq!(r["session_present"], json!(false), "the session expired");
    assert_eq!(
        r["messages"],
        json!([]),
        "its shared subscription went with it, so nothing was kept for it: {r}"
    );
}
