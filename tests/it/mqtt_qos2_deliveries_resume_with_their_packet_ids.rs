//! A persistent MQTT session resumes its QoS 2 deliveries in flight as the spec asks (MQTT
//! 3.1.1 and 5 §4.4): a paho-mqtt subscriber whose connection is cut in the middle of a QoS 2
//! delivery and which reconnects with its session gets the message handed to its application
//! exactly once — when the cut came after the broker took its PUBREC, the PUBREL comes again on
//! the new connection (the message is not lost); when the cut came before, the PUBLISH comes
//! again with the packet id it had. Both hold also when the broker is `kill -9`ed and restarted
//! while the client is away: the released packet ids are journaled with the session, and a
//! persistent session's packet ids derive from the journal.

use crate::common;
use crate::common_mqtt;
use crate::common_stomp;

use common::pair::{file_lock_pair, wait_for};
use common_mqtt::{judge_qos2_resume, paho_qos2_resume_across};
use common_stomp::{python_in, Topology};

#[test]
fn a_qos2_delivery_cut_mid_handshake_reaches_the_application_once_after_a_reconnect() {
    let broker = Topology::new().listener("mqtt", "mqtt", "").start();
    let port = broker.port("mqtt").to_string();
    for version in ["3.1.1", "5"] {
        for cut in ["pubrec", "publish"] {
            let r = python_in(
                "mqtt_py",
                "paho_qos2_resume.py",
                &[port.clone(), version.to_string(), cut.to_string()],
            );
            judge_qos2_resume(&r, version, cut, "a reconnect");
        }
    }
}

#[test]
fn a_qos2_delivery_cut_mid_handshake_reaches_the_application_once_across_a_kill_9_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (topology, mut members) = file_lock_pair(dir.path(), "qos2", "mqtt", "500ms");
    members[0].start(&topology);
    wait_for("g-1 serves", &members, || members[0].ready());
    let port = members[0].listen.port();
    for version in ["3.1.1", "5"] {
        for cut in ["pubrec", "publish"] {
            let r = paho_qos2_resume_across(port, version, cut, || {
                members[0].kill9();
                members[0].start(&topology);
                wait_for("g-1 serves again", &members, || members[0].ready());
                port
            });
            judge_qos2_resume(&r, version, cut, "kill -9 and restart");
        }
    }
}
