//! An MQTT persistent session follows its client across a failover of a ZooKeeper-elected
//! group: paho-mqtt clients (3.1.1 `clean_session=0` and 5 `clean_start=0`, QoS 1) subscribed
//! on the master, with messages waiting for them and deliveries they never acknowledged, find
//! after a `kill -9` of the master — on the member elected in its place — their session
//! present, their subscription still there without subscribing again, every message once (the
//! unacknowledged ones flagged dup), and the session going on there. MQTT 5 session expiry
//! runs on across such a failover: the new master ends a short-expiry session whose client had
//! left, and one whose client was connected when the master died, once their intervals run
//! out, while a long-expiry session is still there with every message it kept. Retained
//! messages are journaled, so they follow the group too: the new master replays each topic's
//! latest retained message (QoS 0 and 1 alike), and not one an empty retained publish cleared.
//! A paho-mqtt QoS 2 subscriber cut mid-handshake, whose master dies while it is away, gets
//! the message handed to its application once by the new master: its PUBREL again when the
//! old master had taken its PUBREC, else the PUBLISH again with the packet id it had.

use crate::common;
use crate::common_mqtt;

use std::net::SocketAddr;
use std::time::Duration;

use common::ha::{GroupSpec, HaGroup};
use common::zk::ZooKeeper;
use common_mqtt::received_payloads;
use common_mqtt::{hold_session, mosquitto_retain, mosquitto_retained, paho_session as paho};
use common_mqtt::{judge_qos2_resume, paho_qos2_resume_across};
use serde_json::json;

fn payloads(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// A ZooKeeper-elected group of three whose members also serve MQTT (while master), and each
/// member's MQTT address.
fn group_with_mqtt(zk: &ZooKeeper) -> (HaGroup, Vec<SocketAddr>) {
    let mut group = HaGroup::configure(&zk.connect_string(), GroupSpec::default());
    let ports = common::free_ports(3);
    let mqtt: Vec<SocketAddr> = ports
        .iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
        .collect();
    let mut text = std::fs::read_to_string(group.topology()).expect("read the topology");
    for (m, addr) in group.members.iter().zip(&mqtt) {
        let stomp = format!("url = \"stomp://{}\"\n", m.stomp);
        assert!(text.contains(&stomp), "{} has a STOMP listener", m.name);
        text = text.replace(
            &stomp,
            &format!("{stomp}[[group.member.listener]]\nurl = \"mqtt://{addr}\"\n"),
        );
    }
    std::fs::write(group.topology(), text).expect("write the topology");
    for i in 0..3 {
        group.start_member(i);
    }
    let master = group.wait_master("a first master serves");
    for i in (0..3).filter(|&i| i != master) {
        group.wait_role(i, "slave");
    }
    (group, mqtt)
}

#[test]
fn persistent_sessions_follow_their_clients_to_the_new_master_after_kill_9() {
    let zk = ZooKeeper::standalone();
    let (mut group, mqtt) = group_with_mqtt(&zk);
    let master = group.wait_master("the master serves");
    let on_master = mqtt[master];
    let versions = ["3.1.1", "5"];
    let tag = |v: &str| v.replace('.', "");
    let cid = |v: &str| format!("zk-plant-{}", tag(v));
    let topic = |v: &str| format!("zk-plant-{}/boiler/temp", tag(v));

    for v in versions {
        let filter = format!("zk-plant-{}/+/temp", tag(v));
        let r = paho(on_master, v, "subscribe", &cid(v), &[&filter]);
        assert_eq!(
            r["session_present"],
            json!(false),
            "MQTT {v}: a new session"
        );
        assert_eq!(r["granted"], json!([1]), "MQTT {v}");
        // Ten messages wait for it; it takes four and acknowledges none of them.
        let r = paho(on_master, v, "publish", "pub", &[&topic(v), "held", "10"]);
        assert_eq!(r["pubacked"], json!(10), "MQTT {v}");
        let r = paho(on_master, v, "take", &cid(v), &["4"]);
        assert_eq!(r["messages"], json!(payloads("held", 4)), "MQTT {v}");
    }

    group.kill9(master);
    let new = group.wait_new_master(master, "a new master takes over");
    let on_new = mqtt[new];
    for v in versions {
        let r = paho(on_new, v, "receive", &cid(v), &["10"]);
        assert_eq!(
            r["session_present"],
            json!(true),
            "MQTT {v}: the session is on the new master: {r}"
        );
        assert_eq!(
            received_payloads(&r),
            payloads("held", 10),
            "MQTT {v}: every message, each once, from the new master"
        );
        let dups = r["dups"].as_array().expect("dups");
        for unacked in payloads("held", 4) {
            assert!(
                dups.contains(&json!(unacked)),
                "MQTT {v}: {unacked} was delivered before the failover, so it is flagged dup: {r}"
            );
        }
        // The subscription is still there: what is published now reaches the session too.
        let r = paho(on_new, v, "publish", "pub", &[&topic(v), "after", "5"]);
        assert_eq!(r["pubacked"], json!(5), "MQTT {v}");
        let r = paho(on_new, v, "receive", &cid(v), &["5"]);
        assert_eq!(r["session_present"], json!(true), "MQTT {v}");
        assert_eq!(
            received_payloads(&r),
            payloads("after", 5),
            "MQTT {v}: the session goes on on the new master"
        );
    }
}

#[test]
fn mqtt5_session_expiry_runs_on_on_the_new_master_after_kill_9() {
    let zk = ZooKeeper::standalone();
    let (mut group, mqtt) = group_with_mqtt(&zk);
    let master = group.wait_master("the master serves");
    let on_master = mqtt[master];
    // Each session has a QoS 1 subscription to its own topics and three messages waiting:
    // "zk-left" (2 s; its client leaves just before the master dies) and "zk-kept" (an hour)
    // are idle when the master dies, "zk-held" (3 s) is held by a connection then.
    let sessions = [("zk-left", 2), ("zk-held", 3), ("zk-kept", 3600)];
    for (cid, expiry) in sessions {
        let args = [&format!("{cid}/#"), "--expiry", &expiry.to_string()];
        let r = paho(on_master, "5", "subscribe", cid, &args);
        assert_eq!(r["session_present"], json!(false), "{cid}: a new session");
        assert_eq!(r["granted"], json!([1]), "{cid}");
    }
    let left = hold_session(on_master, "zk-left", 2);
    let held = hold_session(on_master, "zk-held", 3);
    for (cid, _) in sessions {
        let r = paho(
            on_master,
            "5",
            "publish",
            "pub",
            &[&format!("{cid}/x"), cid, "3"],
        );
        assert_eq!(r["pubacked"], json!(3), "{cid}");
    }
    // "zk-left"'s client goes (its socket closes): its 2 s start now, and the idle state
    // reaches the slaves before the master dies.
    drop(left);
    std::thread::sleep(Duration::from_millis(500));
    group.kill9(master);
    drop(held);
    let new = group.wait_new_master(master, "a new master takes over");
    let on_new = mqtt[new];
    // Both short intervals have run out on the new master by now ("zk-held"'s counts from its
    // term's start, before it served).
    std::thread::sleep(Duration::from_millis(4500));
    for (cid, expiry) in [("zk-left", "2"), ("zk-held", "3")] {
        let r = paho(on_new, "5", "receive", cid, &["0", "--expiry", expiry]);
        assert_eq!(
            r["session_present"],
            json!(false),
            "{cid}: the new master ended it when its interval ran out: {r}"
        );
        assert_eq!(r["messages"], json!([]), "{cid}: its messages went with it");
    }
    let r = paho(
        on_new,
        "5",
        "receive",
        "zk-kept",
        &["3", "--expiry", "3600"],
    );
    assert_eq!(
        r["session_present"],
        json!(true),
        "zk-kept: still kept: {r}"
    );
    assert_eq!(
        received_payloads(&r),
        payloads("zk-kept", 3),
        "zk-kept: every message it kept, once, from the new master"
    );
}

#[test]
fn retained_messages_are_on_the_new_master_after_kill_9() {
    let zk = ZooKeeper::standalone();
    let (mut group, mqtt) = group_with_mqtt(&zk);
    let master = group.wait_master("the master serves");
    let on_master = mqtt[master];
    // The QoS 0 one first: the acknowledged publishes after it are journaled after it, so
    // once they are acknowledged (by a quorum) it is replicated too.
    mosquitto_retain(on_master, "5", "zk-plant/fan", Some("spinning"), 0);
    common_mqtt::wait_for("the QoS 0 retained message is in place", || {
        mosquitto_retained(on_master, "311", "zk-plant/fan").len() == 1
    });
    mosquitto_retain(on_master, "311", "zk-plant/boiler", Some("cold"), 2);
    mosquitto_retain(on_master, "5", "zk-plant/boiler", Some("hot"), 1);
    mosquitto_retain(on_master, "311", "zk-plant/valve", Some("open"), 1);
    mosquitto_retain(on_master, "5", "zk-plant/valve", None, 1);
    let kept = ["1 1 zk-plant/boiler hot", "1 0 zk-plant/fan spinning"];
    assert_eq!(mosquitto_retained(on_master, "5", "zk-plant/#"), kept);

    group.kill9(master);
    let new = group.wait_new_master(master, "a new master takes over");
    assert_eq!(
        mosquitto_retained(mqtt[new], "311", "zk-plant/#"),
        kept,
        "the new master replays each topic's latest retained message, flagged retained, at \
         its QoS, and not the cleared one"
    );
}

#[test]
fn a_qos2_delivery_cut_mid_handshake_reaches_the_application_once_from_the_new_master() {
    let zk = ZooKeeper::standalone();
    let (mut group, mqtt) = group_with_mqtt(&zk);
    for (version, cut) in [("3.1.1", "pubrec"), ("5", "publish")] {
        let master = group.wait_master("the master serves");
        let mut new = master;
        let r = paho_qos2_resume_across(mqtt[master].port(), version, cut, || {
            group.kill9(master);
            new = group.wait_new_master(master, "a new master takes over");
            mqtt[new].port()
        });
        judge_qos2_resume(&r, version, cut, "a failover after kill -9");
        // The old master comes back as a slave, for the next failover.
        group.start_member(master);
        group.wait_role(master, "slave");
        assert_eq!(group.wait_master("still the new master"), new);
    }
}
