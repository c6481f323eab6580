//! MQTT clients work against meshmq unchanged and meet STOMP clients across the mesh: paho-mqtt
//! (MQTT 3.1, 3.1.1 and 5) and mosquitto_pub/mosquitto_sub publish and subscribe at QoS 0 and 1
//! with ActiveMQ's topic mapping; a STOMP producer on a hub reaches an MQTT subscriber on an edge,
//! and an MQTT publisher on the edge reaches a STOMP consumer on the hub, over a connector. Logins
//! and ACLs hold (a bad password is a CONNACK refusal, counted; a refused publish or subscription
//! is a reason code in MQTT 5), a silent client is dropped after one and a half keep-alives, and
//! malformed, oversize and wildcard-topic packets get the protocol's error and a close, counted as
//! bad frames.

use crate::common_mqtt;
use crate::common_stomp;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use common_mqtt::{id, packet3, packet5, remote_demand, wait_for, RawMqtt, Reply, TwoGroups};
use common_stomp::{hash, python_in, send, subscribe, Broker, RawStomp, Topology, GUARD};
use meshmq::stomp::Command as StompCommand;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::{v3, v5};
use serde_json::json;

fn mqtt_broker() -> Broker {
    Topology::new().listener("mqtt", "mqtt", "").start()
}

fn bad_frames(b: &Broker) -> f64 {
    b.metric("meshmq_bad_frames_total", &[("protocol", "mqtt")])
}

#[test]
fn paho_clients_publish_and_subscribe_at_qos_0_and_1_in_mqtt_3_1_3_1_1_and_5() {
    let b = mqtt_broker();
    for version in ["3.1", "3.1.1", "5"] {
        let r = python_in(
            "mqtt_py",
            "paho_pubsub.py",
            &[b.port("mqtt").to_string(), version.to_string()],
        );
        assert_eq!(r["granted"], json!([1]), "MQTT {version}: {r}");
        assert_eq!(
            r["pubacked"],
            json!([true, true, true, true]),
            "MQTT {version}: every publish is acknowledged"
        );
        let got: Vec<(String, String, u64)> = r["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| {
                (
                    m["topic"].as_str().unwrap_or("").to_string(),
                    m["payload"].as_str().unwrap_or("").to_string(),
                    m["qos"].as_u64().unwrap_or(9),
                )
            })
            .collect();
        let expected: Vec<(String, String, u64)> = [
            ("sensors/a/temp", "a0", 0),
            ("sensors/b/temp", "b1", 1),
            ("sensors/c/temp", "c1", 1),
            ("marker", "end", 1),
        ]
        .iter()
        .map(|(t, p, q)| (t.to_string(), p.to_string(), *q))
        .collect();
        assert_eq!(
            got, expected,
            "MQTT {version}: the matching messages in order, at the lower of the publish and \
             subscription QoS, nothing after the unsubscribe"
        );
        if version == "5" {
            for m in r["messages"].as_array().expect("messages").iter().take(3) {
                assert_eq!(m["props"]["user"], json!([["site", "north"]]), "{m}");
                let expiry = m["props"]["expiry"].as_u64().unwrap_or(0);
                assert!(
                    (1..=600).contains(&expiry),
                    "the message expiry travels with the message: {m}"
                );
            }
        }
    }
}

/// Runs `mosquitto_sub` until it has its SUBACK; its stdout gets one line per message.
fn mosquitto_sub(
    port: u16,
    version: &str,
    filter: &str,
    count: usize,
) -> (Child, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let err = dir.path().join("err");
    // Line-buffered, so its debug lines (the SUBACK) show while it runs.
    let child = Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub"])
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version])
        .args([
            "-q",
            "1",
            "-t",
            filter,
            "-C",
            &count.to_string(),
            "-v",
            "-d",
        ])
        .args(["-i", &format!("sub-{version}-{}", std::process::id())])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("out"))
        .stderr(std::fs::File::create(&err).expect("err"))
        .spawn()
        .expect("mosquitto_sub (Debian's mosquitto-clients; make test-deps installs it)");
    crate::common::wait::poll()
        .within(GUARD)
        .until("mosquitto_sub gets its SUBACK", || {
            std::fs::read_to_string(&out)
                .unwrap_or_default()
                .contains("SUBACK")
        });
    (child, out, dir)
}

fn mosquitto_pub(port: u16, version: &str, topic: &str, message: &str, qos: &str) {
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version])
        .args(["-q", qos, "-t", topic, "-m", message])
        .output()
        .expect("mosquitto_pub (Debian's mosquitto-clients; make test-deps installs it)");
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits for `child` to exit by itself; kills it and fails when it hangs.
fn wait_exit(child: Child, what: &str) {
    // Killed and reaped when dropped unfinished.
    let mut child = crate::common::ChildGuard::new(child);
    match child.wait_timeout(GUARD) {
        Some(status) => assert!(status.success(), "{what} failed: {status}"),
        None => panic!("{what} did not finish"),
    }
}

fn received_lines(out: &PathBuf) -> Vec<String> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with("Client ") && !l.starts_with("Subscribed"))
        .map(String::from)
        .collect()
}

#[test]
fn mosquitto_clients_publish_and_subscribe_with_wildcards() {
    let b = mqtt_broker();
    let port = b.port("mqtt");
    for version in ["mqttv311", "mqttv5"] {
        let (sub, out, _dir) = mosquitto_sub(port, version, "plant/+/level/#", 3);
        mosquitto_pub(port, version, "plant/a/level/high", "1", "1");
        mosquitto_pub(port, version, "plant/b/other", "skipped", "1");
        mosquitto_pub(port, version, "plant/b/level/low/x", "2", "0");
        mosquitto_pub(port, version, "plant/c/level/mid", "3", "1");
        wait_exit(sub, "mosquitto_sub");
        assert_eq!(
            received_lines(&out),
            vec![
                "plant/a/level/high 1",
                "plant/b/level/low/x 2",
                "plant/c/level/mid 3"
            ],
            "{version}"
        );
    }
}

#[test]
fn a_bad_password_is_a_connack_refusal_counted_and_acls_hold() {
    let users = [("alice", "producers"), ("bob", "consumers")];
    let mut security = String::from("[security]\nallow_anonymous = false\n");
    for (user, group) in users {
        security.push_str(&format!(
            "\n[[security.user]]\nname = \"{user}\"\npassword_hash = \"{}\"\ngroups = [\"{group}\"]\n",
            hash(&format!("{user}-secret"))
        ));
    }
    security.push_str(
        "\n[[security.acl]]\ndestination = \"topic://sensors.>\"\nread = [\"consumers\"]\nwrite = [\"producers\"]\nadmin = [\"producers\"]\n",
    );
    let b = Topology::new()
        .security(&security)
        .listener("mqtt", "mqtt", "")
        .start();
    let addr = b.addr("mqtt");
    let failures = || b.metric("meshmq_auth_failures_total", &[("protocol", "mqtt")]);
    let (_, code) = RawMqtt::connect(addr, false, 30, Some(("alice", "wrong")));
    assert_eq!(code, 4, "MQTT 3.1.1: bad user name or password");
    let (_, code) = RawMqtt::connect(addr, true, 30, Some(("alice", "wrong")));
    assert_eq!(code, 0x86, "MQTT 5: bad user name or password");
    let (_, code) = RawMqtt::connect(addr, true, 30, None);
    assert_eq!(code, 0x86, "no anonymous logins here");
    assert_eq!(failures(), 3.0, "each refused login is counted");

    // MQTT 5: a refused publish is a PUBACK reason and a refused filter a SUBACK reason; the
    // connection goes on.
    let (mut bob5, code) = RawMqtt::connect(addr, true, 30, Some(("bob", "bob-secret")));
    assert_eq!(code, 0);
    bob5.publish("sensors/a", "no", QoS::AtLeastOnce, Some(3));
    assert_eq!(bob5.next(), Some(Reply::PubAck(3, 0x87)));
    let (mut alice5, _) = RawMqtt::connect(addr, true, 30, Some(("alice", "alice-secret")));
    alice5.subscribe("sensors/#", QoS::AtLeastOnce, 4);
    assert_eq!(alice5.next(), Some(Reply::SubAck(4, vec![0x87])));
    bob5.ping();
    assert_eq!(bob5.next(), Some(Reply::PingResp));

    // Within their rights, MQTT 3.1.1 clients get through.
    let (mut bob, _) = RawMqtt::connect(addr, false, 30, Some(("bob", "bob-secret")));
    bob.subscribe("sensors/#", QoS::AtLeastOnce, 1);
    assert_eq!(bob.next(), Some(Reply::SubAck(1, vec![1])));
    let (mut alice, _) = RawMqtt::connect(addr, false, 30, Some(("alice", "alice-secret")));
    alice.publish("sensors/a/b", "reading", QoS::AtLeastOnce, Some(2));
    assert_eq!(alice.next(), Some(Reply::PubAck(2, 0)));
    match bob.next() {
        Some(Reply::Publish { topic, payload, .. }) => {
            assert_eq!(
                (topic.as_str(), payload.as_str()),
                ("sensors/a/b", "reading")
            )
        }
        other => panic!("bob got {other:?}"),
    }
    // MQTT 3.1.1 cannot refuse a publish: the connection closes.
    bob.publish("sensors/a/b", "no", QoS::AtLeastOnce, Some(5));
    assert_eq!(bob.next(), None, "a refused MQTT 3.1.1 publish closes");
}

#[test]
fn a_silent_client_is_dropped_after_one_and_a_half_keep_alives_and_a_pinging_one_stays() {
    let b = mqtt_broker();
    let (mut silent, code) = RawMqtt::connect(b.addr("mqtt"), true, 1, None);
    assert_eq!(code, 0);
    let (mut pinging, _) = RawMqtt::connect(b.addr("mqtt"), false, 1, None);
    let started = Instant::now();
    // The pinging client outlives several of the silent one's limits.
    while started.elapsed() < Duration::from_secs(4) {
        pinging.ping();
        assert_eq!(pinging.next(), Some(Reply::PingResp));
        std::thread::sleep(Duration::from_millis(400));
    }
    assert_eq!(
        silent.next(),
        Some(Reply::Disconnect(0x8D)),
        "MQTT 5: keep-alive timeout"
    );
    assert_eq!(silent.next(), None, "then the connection closes");
}

#[test]
fn a_new_connection_with_a_client_id_in_use_takes_the_session_over() {
    let b = mqtt_broker();
    let (mut old, code) = RawMqtt::connect_as(b.addr("mqtt"), true, 30, None, "device-7");
    assert_eq!(code, 0);
    let (mut new, code) = RawMqtt::connect_as(b.addr("mqtt"), false, 30, None, "device-7");
    assert_eq!(code, 0, "the newer connection is accepted");
    assert_eq!(
        old.next(),
        Some(Reply::Disconnect(0x8E)),
        "MQTT 5: session taken over"
    );
    assert_eq!(old.next(), None);
    new.ping();
    assert_eq!(new.next(), Some(Reply::PingResp));
}

#[test]
fn malformed_oversize_and_wildcard_packets_get_the_protocols_error_and_a_close() {
    let b = Topology::new()
        .broker("max_frame_size = \"64KiB\"")
        .listener("mqtt", "mqtt", "")
        .start();
    let addr = b.addr("mqtt");
    let before = bad_frames(&b);
    // (what, version 5?, bytes after CONNECT, the DISCONNECT reason MQTT 5 gives)
    let cases: [(&str, bool, Vec<u8>, Option<u8>); 6] = [
        ("a reserved packet type", true, vec![0x00, 0x00], Some(0x82)),
        (
            "a remaining length of five bytes",
            true,
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            Some(0x81),
        ),
        (
            "a PUBLISH announcing more than max_frame_size",
            true,
            vec![0x30, 0xA0, 0x8D, 0x06],
            Some(0x95),
        ),
        (
            "a topic that is not UTF-8",
            true,
            vec![0x30, 0x06, 0x00, 0x02, 0xC3, 0x28, 0x00, b'x'],
            Some(0x81),
        ),
        (
            "a wildcard in a PUBLISH topic",
            true,
            packet5(v5::Packet::Publish(Box::new(Publish {
                dup: false,
                retain: false,
                qos: QoS::AtMostOnce,
                topic: ByteString::from("sensors/+/temp"),
                packet_id: None,
                payload: Bytes::from_static(b"x"),
                properties: Some(v5::PublishProperties::default()),
            }))),
            Some(0x90),
        ),
        (
            "a wildcard in a PUBLISH topic (MQTT 3.1.1)",
            false,
            packet3(v3::Packet::Publish(Box::new(Publish {
                dup: false,
                retain: false,
                qos: QoS::AtLeastOnce,
                topic: ByteString::from("sensors/#"),
                packet_id: Some(id(1)),
                payload: Bytes::from_static(b"x"),
                properties: None,
            }))),
            None,
        ),
    ];
    for (i, (what, v5, bytes, reason)) in cases.iter().enumerate() {
        let (mut c, code) = RawMqtt::connect(addr, *v5, 30, None);
        assert_eq!(code, 0, "{what}");
        c.write(bytes);
        if let Some(reason) = reason {
            assert_eq!(c.next(), Some(Reply::Disconnect(*reason)), "{what}");
        }
        assert_eq!(c.next(), None, "{what}: the connection closes");
        assert_eq!(
            bad_frames(&b),
            before + i as f64 + 1.0,
            "{what} is counted as a bad frame"
        );
    }
    // A CONNECT that is not MQTT at all, and one at a protocol level nobody speaks.
    let mut c = RawMqtt::open(addr, false);
    c.write(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(c.next(), None, "not MQTT: closed");
    let mut c = RawMqtt::open(addr, false);
    c.write(&[
        0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x09, 0x02, 0x00, 0x1E, 0x00, 0x00,
    ]);
    assert_eq!(
        c.next(),
        Some(Reply::ConnAck(1)),
        "an unknown protocol level is refused with return code 1"
    );
    assert_eq!(bad_frames(&b), before + cases.len() as f64 + 2.0);
    // The broker serves well-behaved clients all along.
    let (mut ok, code) = RawMqtt::connect(addr, false, 30, None);
    assert_eq!(code, 0);
    ok.ping();
    assert_eq!(ok.next(), Some(Reply::PingResp));
}

#[test]
fn stomp_and_mqtt_clients_meet_across_a_connector_both_ways() {
    let mesh = TwoGroups::start();
    let (hub_admin, hub_stomp) = (mesh.hub_admin, mesh.hub_stomp);
    let (edge_admin, edge_mqtt) = (mesh.edge_admin, mesh.edge_mqtt);

    // STOMP producer on the hub → MQTT subscriber on the edge.
    let (mut device, _) = RawMqtt::connect(edge_mqtt, false, 30, None);
    device.subscribe("sensors/+/temp", QoS::AtLeastOnce, 1);
    assert_eq!(device.next(), Some(Reply::SubAck(1, vec![1])));
    wait_for("the hub knows the edge's MQTT subscriber", || {
        remote_demand(hub_admin) >= 1
    });
    let mut producer = RawStomp::connect(hub_stomp, &[]);
    producer.call(
        send("/topic/sensors.a.temp", "21.5").with_header("persistent", "true"),
        "r1",
    );
    producer.call(send("/topic/sensors.a.humidity", "ignored"), "r2");
    producer.call(send("/topic/sensors.b.temp", "19.0"), "r3");
    let mut got = Vec::new();
    while got.len() < 2 {
        match device.next() {
            Some(Reply::Publish {
                topic,
                payload,
                qos,
                packet_id,
                ..
            }) => {
                if let Some(pid) = packet_id {
                    device.write(&packet3(v3::Packet::PublishAck { packet_id: id(pid) }));
                }
                got.push((topic, payload, qos));
            }
            other => panic!("the device got {other:?}"),
        }
    }
    assert_eq!(
        got,
        vec![
            ("sensors/a/temp".to_string(), "21.5".to_string(), 1),
            // A non-persistent STOMP send goes out at QoS 0.
            ("sensors/b/temp".to_string(), "19.0".to_string(), 0),
        ]
    );

    // MQTT publisher on the edge → STOMP consumer on the hub.
    let before = remote_demand(edge_admin);
    let mut consumer = RawStomp::connect(hub_stomp, &[]);
    consumer.call(subscribe("/topic/alerts.>", "s1", "auto"), "r4");
    wait_for("the edge knows the hub's STOMP consumer", || {
        remote_demand(edge_admin) > before
    });
    let (mut panel, _) = RawMqtt::connect(edge_mqtt, true, 30, None);
    panel.publish("alerts/boiler/fire", "evacuate", QoS::AtLeastOnce, Some(9));
    assert_eq!(
        panel.next(),
        Some(Reply::PubAck(9, 0)),
        "the QoS 1 publish is acknowledged once durable"
    );
    let message = consumer.expect(StompCommand::Message);
    assert_eq!(
        message.header("destination"),
        Some("/topic/alerts.boiler.fire")
    );
    assert_eq!(&message.body[..], b"evacuate");
    assert_eq!(message.header("persistent"), Some("true"));
}

/// Before it has logged in an MQTT client may send what a client of any protocol may (64 KiB):
/// a larger CONNECT is refused from its header — closed and counted at once, not held open
/// until the connect timeout while its body trickles in — and once logged in the listener's
/// own `max_frame_size` (100 MiB by default) applies to a PUBLISH.
#[test]
fn a_connect_over_64_kib_is_refused_from_its_header_but_a_logged_in_client_sends_more() {
    let b = Topology::new().listener("mqtt", "mqtt", "").start();
    let addr = b.addr("mqtt");
    let before = bad_frames(&b);
    for (i, level) in [4u8, 5].into_iter().enumerate() {
        let mut c = RawMqtt::open(addr, level == 5);
        // CONNECT announcing 200,000 bytes (remaining length 0xC0 0x9A 0x0C), the protocol
        // name and level, and nothing more.
        c.write(&[
            0x10, 0xC0, 0x9A, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', level,
        ]);
        let started = Instant::now();
        loop {
            match c.next() {
                None => break,
                Some(Reply::ConnAck(code)) => assert_ne!(code, 0, "MQTT level {level}"),
                Some(other) => panic!("MQTT level {level}: {other:?}"),
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "MQTT level {level}: the oversize CONNECT was held until the connect timeout ({:?})",
            started.elapsed()
        );
        assert_eq!(
            bad_frames(&b),
            before + i as f64 + 1.0,
            "MQTT level {level}: the oversize CONNECT is counted as a bad frame"
        );
    }
    for v5 in [false, true] {
        let (mut c, code) = RawMqtt::connect(addr, v5, 30, None);
        assert_eq!(code, 0);
        let big = "x".repeat(200_000);
        c.publish("big/one", &big, QoS::AtLeastOnce, Some(7));
        assert_eq!(
            c.next(),
            Some(Reply::PubAck(7, 0)),
            "a logged-in client's 200 KB PUBLISH (v5: {v5})"
        );
    }
}
