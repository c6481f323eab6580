//! MQTT's promises beyond plain publish/subscribe hold with stock clients: a retained message
//! is kept per topic, replaced, cleared by an empty one and replayed (flagged retained) to a
//! new subscriber — also one on another group, once a copy crossed the connector; a will is
//! published when its client vanishes (or, in MQTT 5, disconnects "with will") and not after a
//! plain DISCONNECT; QoS 2 delivers each message exactly once; MQTT 5 user properties travel as
//! message headers to and from STOMP clients.

use crate::common_mqtt;
use crate::common_stomp;

use common_mqtt::{RawMqtt, Reply};
use common_stomp::{python_in, send, subscribe, RawStomp, Topology};
use meshmq::stomp::Command as StompCommand;
use rmqtt_codec::types::QoS;
use serde_json::json;

#[test]
fn paho_retained_messages_wills_and_qos2_in_mqtt_3_1_1_and_5() {
    let b = Topology::new().listener("mqtt", "mqtt", "").start();
    for version in ["3.1.1", "5"] {
        let t = if version == "5" { "5" } else { "311" };
        let r = python_in(
            "mqtt_py",
            "paho_retain_will_qos2.py",
            &[b.port("mqtt").to_string(), version.to_string()],
        );
        assert_eq!(
            r["retained"],
            json!([
                [format!("status-{t}/boiler"), "hot", 1, true],
                [format!("status-{t}/boiler"), "live", 1, false]
            ]),
            "MQTT {version}: the latest retained message only, flagged retained on replay and \
             not when live; the cleared one is gone"
        );
        let mut wills = vec![json!([format!("wills-{t}/vanishing"), "gone", 1, false])];
        if version == "5" {
            wills.push(json!([format!("wills-{t}/leaving"), "gone", 1, false]));
        }
        wills.push(json!([format!("wills-{t}/marker"), "end", 1, false]));
        assert_eq!(
            r["wills"],
            json!(wills),
            "MQTT {version}: a will for the vanished client (and the one leaving with it), \
             none for the polite one"
        );
        let mut exact: Vec<serde_json::Value> = (0..5)
            .map(|i| json!([format!("exact-{t}/n"), format!("m{i}"), 2, false]))
            .collect();
        exact.push(json!([format!("exact-{t}/marker"), "end", 2, false]));
        assert_eq!(r["exact"], json!(exact), "MQTT {version}: QoS 2, each once");
    }
}

#[test]
fn mqtt5_user_properties_travel_as_headers_to_and_from_stomp() {
    let b = Topology::new()
        .listener("mqtt", "mqtt", "")
        .listener("stomp", "stomp", "")
        .start();
    // MQTT 5 → STOMP.
    let mut consumer = RawStomp::connect(b.addr("stomp"), &[]);
    consumer.call(subscribe("/topic/meters.>", "s1", "auto"), "r1");
    let (mut meter, code) = RawMqtt::connect(b.addr("mqtt"), true, 30, None);
    assert_eq!(code, 0);
    meter.publish_with(
        "meters/7",
        "42 kWh",
        QoS::AtLeastOnce,
        Some(1),
        &[("site", "north"), ("unit", "kWh")],
    );
    assert_eq!(meter.next(), Some(Reply::PubAck(1, 0)));
    let m = consumer.expect(StompCommand::Message);
    assert_eq!(m.header("destination"), Some("/topic/meters.7"));
    assert_eq!(m.header("site"), Some("north"));
    assert_eq!(m.header("unit"), Some("kWh"));

    // STOMP → MQTT 5.
    let (mut display, _) = RawMqtt::connect(b.addr("mqtt"), true, 30, None);
    display.subscribe("screens/#", QoS::AtMostOnce, 2);
    assert_eq!(display.next(), Some(Reply::SubAck(2, vec![0])));
    let mut producer = RawStomp::connect(b.addr("stomp"), &[]);
    producer.call(
        send("/topic/screens.lobby", "hello").with_header("lang", "en"),
        "r2",
    );
    match display.next() {
        Some(Reply::Publish {
            topic,
            payload,
            user,
            retain,
            ..
        }) => {
            assert_eq!(
                (topic.as_str(), payload.as_str()),
                ("screens/lobby", "hello")
            );
            assert!(!retain);
            assert!(
                user.contains(&("lang".to_string(), "en".to_string())),
                "{user:?}"
            );
        }
        other => panic!("the display got {other:?}"),
    }
}

#[test]
fn a_retained_message_that_crossed_a_connector_is_retained_on_the_other_group() {
    let mesh = common_mqtt::TwoGroups::start();
    // An MQTT subscriber on the edge makes the hub forward; a STOMP producer on the hub sends
    // a message flagged to be retained (ActiveMQ's header, as MQTT publishers set it).
    let (mut first, _) = RawMqtt::connect(mesh.edge_mqtt, false, 30, None);
    first.subscribe("config/#", QoS::AtMostOnce, 1);
    assert_eq!(first.next(), Some(Reply::SubAck(1, vec![0])));
    common_mqtt::wait_for("the hub knows the edge's subscriber", || {
        common_mqtt::remote_demand(mesh.hub_admin) >= 1
    });
    let mut producer = RawStomp::connect(mesh.hub_stomp, &[]);
    producer.call(
        send("/topic/config.rate", "5s").with_header("ActiveMQ.Retain", "true"),
        "r1",
    );
    match first.next() {
        Some(Reply::Publish {
            topic,
            retain: false,
            ..
        }) => assert_eq!(topic, "config/rate"),
        other => panic!("the live copy: {other:?}"),
    }
    // A subscriber arriving later on the edge gets it from the edge's own retained copy.
    let (mut later, _) = RawMqtt::connect(mesh.edge_mqtt, true, 30, None);
    later.subscribe("config/+", QoS::AtMostOnce, 2);
    assert_eq!(later.next(), Some(Reply::SubAck(2, vec![0])));
    match later.next() {
        Some(Reply::Publish {
            topic,
            payload,
            retain: true,
            ..
        }) => assert_eq!((topic.as_str(), payload.as_str()), ("config/rate", "5s")),
        other => panic!("the retained replay: {other:?}"),
    }
}
