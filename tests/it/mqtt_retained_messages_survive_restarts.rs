//! A topic's retained message is journaled with the publish, whatever its QoS (as mosquitto
//! keeps every retained message): after a graceful restart (SIGTERM, which checkpoints) and
//! after a `kill -9` (which replays the journal) a new `mosquitto_sub` is sent each topic's
//! latest retained message, flagged retained, at the QoS it was published with; one replaced
//! before the restart comes back as its replacement, and one cleared by an empty retained
//! publish stays cleared — also on a topic a persistent session's subscription keeps messages
//! for (where the retained message is journaled as the message that subscription holds).

use crate::common;
use crate::common_mqtt;

use common::pair::{file_lock_pair, wait_for};
use common_mqtt::{mosquitto_retain, mosquitto_retained, paho_session};
use serde_json::json;

#[test]
fn retained_messages_and_their_clears_survive_sigterm_and_kill_9_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (topology, mut members) = file_lock_pair(dir.path(), "retained", "mqtt", "500ms");
    let g1 = &mut members[0];
    g1.start(&topology);
    wait_for("g-1 serves", std::slice::from_ref(g1), || g1.ready());
    let at = g1.listen;
    // A persistent session keeps what is published on plant/held/#.
    let r = paho_session(at, "3.1.1", "subscribe", "keeper", &["plant/held/#"]);
    assert_eq!(r["granted"], json!([1]), "{r}");

    // A QoS 0 publish has no acknowledgement: once the broker shows it, the journal has its
    // record before those of the acknowledged publishes after it (it waits for those).
    mosquitto_retain(at, "5", "plant/fan", Some("spinning"), 0);
    wait_for(
        "the QoS 0 retained message is in place",
        std::slice::from_ref(g1),
        || mosquitto_retained(at, "311", "plant/fan").len() == 1,
    );
    mosquitto_retain(at, "311", "plant/boiler", Some("hot"), 1);
    mosquitto_retain(at, "311", "plant/pump", Some("old"), 2);
    mosquitto_retain(at, "5", "plant/pump", Some("new"), 1);
    mosquitto_retain(at, "311", "plant/valve", Some("open"), 1);
    mosquitto_retain(at, "5", "plant/valve", None, 1);
    mosquitto_retain(at, "311", "plant/held/x", Some("kept"), 1);
    mosquitto_retain(at, "5", "plant/held/y", Some("dropped"), 1);
    mosquitto_retain(at, "311", "plant/held/y", None, 1);
    let before = [
        "1 1 plant/boiler hot",
        "1 0 plant/fan spinning",
        "1 1 plant/held/x kept",
        "1 1 plant/pump new",
    ];
    assert_eq!(
        mosquitto_retained(at, "5", "plant/#"),
        before,
        "before any restart"
    );

    g1.stop();
    g1.start(&topology);
    wait_for("g-1 serves after SIGTERM", std::slice::from_ref(g1), || {
        g1.ready()
    });
    assert_eq!(
        mosquitto_retained(at, "311", "plant/#"),
        before,
        "after a SIGTERM restart: each topic's latest, flagged retained, at its QoS; the \
         cleared one stays cleared"
    );

    mosquitto_retain(at, "311", "plant/fan", None, 0);
    wait_for(
        "the QoS 0 clear is in place",
        std::slice::from_ref(g1),
        || mosquitto_retained(at, "311", "plant/fan").is_empty(),
    );
    mosquitto_retain(at, "5", "plant/boiler", Some("cold"), 1);
    mosquitto_retain(at, "5", "plant/valve", Some("shut"), 2);
    mosquitto_retain(at, "5", "plant/held/x", Some("renewed"), 1);
    mosquitto_retain(at, "311", "plant/held/y", Some("back"), 2);
    mosquitto_retain(at, "311", "plant/marker", Some("last"), 1);
    g1.kill9();
    g1.start(&topology);
    wait_for("g-1 serves after kill -9", std::slice::from_ref(g1), || {
        g1.ready()
    });
    assert_eq!(
        mosquitto_retained(at, "5", "plant/#"),
        [
            "1 1 plant/boiler cold",
            "1 1 plant/held/x renewed",
            "1 1 plant/held/y back",
            "1 1 plant/marker last",
            "1 1 plant/pump new",
            "1 1 plant/valve shut",
        ],
        "after a kill -9: what the checkpoint held with the changes journaled after it"
    );
}
