//! MQTT clients work against meshmq unchanged and meet STOMP clients across the mesh:
//! paho-mqtt (MQTT 3.1.1 and 5) and mosquitto_pub/mosquitto_sub publish and subscribe at QoS 0
//! and 1 with ActiveMQ's topic mapping; a STOMP producer on a hub reaches an MQTT subscriber on
//! an edge, and an MQTT publisher on the edge reaches a STOMP consumer on the hub, over a
//! connector. Logins and ACLs hold (a bad password is a CONNACK refusal, counted; a refused
//! publish or subscription is a reason code in MQTT 5), a silent client is dropped after one
//! and a half keep-alives, and malformed, oversize and wildcard-topic packets get the
//! protocol's error and a close, counted as bad frames.

mod common_stomp;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::num::NonZeroU16;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use common_stomp::{hash, http_get, python_in, send, subscribe, Broker, RawStomp, Topology, GUARD};
use meshmq::stomp::Command as StompCommand;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::{v3, v5};
use serde_json::{json, Value};
use tokio_util::codec::{Decoder, Encoder};

fn mqtt_broker() -> Broker {
    Topology::new().listener("mqtt", "mqtt", "").start()
}

fn id(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).expect("non-zero")
}

/// What a raw client reads from the broker, whatever the version.
#[derive(Debug, Clone, PartialEq)]
enum Reply {
    /// CONNACK with its return (MQTT 3) or reason (MQTT 5) code.
    ConnAck(u8),
    PubAck(u16, u8),
    SubAck(u16, Vec<u8>),
    Publish {
        topic: String,
        payload: String,
        qos: u8,
        packet_id: Option<u16>,
    },
    PingResp,
    Disconnect(u8),
    Other(String),
}

/// A blocking MQTT client that sends exactly what the test tells it to.
struct RawMqtt {
    stream: TcpStream,
    rbuf: BytesMut,
    v5: bool,
}

impl RawMqtt {
    fn open(addr: SocketAddr, v5: bool) -> RawMqtt {
        let stream = TcpStream::connect_timeout(&addr, GUARD).expect("connect");
        stream.set_read_timeout(Some(GUARD)).expect("timeout");
        RawMqtt {
            stream,
            rbuf: BytesMut::new(),
            v5,
        }
    }

    /// Opens a connection, sends CONNECT and returns the CONNACK's code.
    fn connect(
        addr: SocketAddr,
        v5: bool,
        keep_alive: u16,
        login: Option<(&str, &str)>,
    ) -> (RawMqtt, u8) {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let client_id = format!("raw-{}-{n}", std::process::id());
        RawMqtt::connect_as(addr, v5, keep_alive, login, &client_id)
    }

    /// [`RawMqtt::connect`] with the client id given.
    fn connect_as(
        addr: SocketAddr,
        v5: bool,
        keep_alive: u16,
        login: Option<(&str, &str)>,
        client_id: &str,
    ) -> (RawMqtt, u8) {
        let mut c = RawMqtt::open(addr, v5);
        let client_id = ByteString::from(client_id);
        let username = login.map(|(u, _)| ByteString::from(u));
        let password = login.map(|(_, p)| Bytes::copy_from_slice(p.as_bytes()));
        let bytes = if v5 {
            packet5(v5::Packet::Connect(Box::new(v5::Connect {
                clean_start: true,
                keep_alive,
                session_expiry_interval_secs: 0,
                auth_method: None,
                auth_data: None,
                request_problem_info: true,
                request_response_info: false,
                receive_max: None,
                topic_alias_max: 0,
                user_properties: Vec::new(),
                max_packet_size: None,
                last_will: None,
                client_id,
                username,
                password,
                cert: None,
            })))
        } else {
            packet3(v3::Packet::Connect(Box::new(v3::Connect {
                protocol: Default::default(),
                clean_session: true,
                keep_alive,
                last_will: None,
                client_id,
                username,
                password,
                cert: None,
            })))
        };
        c.write(&bytes);
        match c.next() {
            Some(Reply::ConnAck(code)) => (c, code),
            other => panic!("expected a CONNACK, got {other:?}"),
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// The next packet from the broker; `None` once it closed the connection.
    fn next(&mut self) -> Option<Reply> {
        loop {
            if let Some(reply) = self.decode() {
                return Some(reply);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.rbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read from the broker failed (hung?): {e}"),
            }
        }
    }

    fn decode(&mut self) -> Option<Reply> {
        if self.v5 {
            let (p, _) = v5::Codec::new(0, 0)
                .decode(&mut self.rbuf)
                .expect("the broker's packets decode")?;
            Some(match p {
                v5::Packet::ConnectAck(a) => Reply::ConnAck(u8::from(a.reason_code)),
                v5::Packet::PublishAck(a) => {
                    Reply::PubAck(a.packet_id.get(), u8::from(a.reason_code))
                }
                v5::Packet::SubscribeAck(a) => Reply::SubAck(
                    a.packet_id.get(),
                    a.status.into_iter().map(u8::from).collect(),
                ),
                v5::Packet::Publish(p) => publish_reply(&p),
                v5::Packet::PingResponse => Reply::PingResp,
                v5::Packet::Disconnect(d) => Reply::Disconnect(u8::from(d.reason_code)),
                other => Reply::Other(format!("{other:?}")),
            })
        } else {
            if self.rbuf.len() >= 4 && self.rbuf[0] == 0x20 {
                // CONNACK: rmqtt-codec's MQTT 3 decoder keeps only the named return codes.
                let code = self.rbuf[3];
                let _ = self.rbuf.split_to(4);
                return Some(Reply::ConnAck(code));
            }
            let (p, _) = v3::Codec::new(0)
                .decode(&mut self.rbuf)
                .expect("the broker's packets decode")?;
            Some(match p {
                v3::Packet::PublishAck { packet_id } => Reply::PubAck(packet_id.get(), 0),
                v3::Packet::SubscribeAck { packet_id, status } => Reply::SubAck(
                    packet_id.get(),
                    status
                        .into_iter()
                        .map(|s| match s {
                            v3::SubscribeReturnCode::Success(q) => u8::from(q),
                            v3::SubscribeReturnCode::Failure => 0x80,
                        })
                        .collect(),
                ),
                v3::Packet::Publish(p) => publish_reply(&p),
                v3::Packet::PingResponse => Reply::PingResp,
                other => Reply::Other(format!("{other:?}")),
            })
        }
    }

    fn publish(&mut self, topic: &str, payload: &str, qos: QoS, packet_id: Option<u16>) {
        let p = Publish {
            dup: false,
            retain: false,
            qos,
            topic: ByteString::from(topic),
            packet_id: packet_id.map(id),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            properties: self.v5.then(v5::PublishProperties::default),
        };
        let bytes = if self.v5 {
            packet5(v5::Packet::Publish(Box::new(p)))
        } else {
            packet3(v3::Packet::Publish(Box::new(p)))
        };
        self.write(&bytes);
    }

    fn subscribe(&mut self, filter: &str, qos: QoS, packet_id: u16) {
        let bytes = if self.v5 {
            packet5(v5::Packet::Subscribe(v5::Subscribe {
                packet_id: id(packet_id),
                id: None,
                user_properties: Vec::new(),
                topic_filters: vec![(
                    ByteString::from(filter),
                    v5::SubscriptionOptions {
                        qos,
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: v5::RetainHandling::AtSubscribe,
                    },
                )],
            }))
        } else {
            packet3(v3::Packet::Subscribe {
                packet_id: id(packet_id),
                topic_filters: vec![(ByteString::from(filter), qos)],
            })
        };
        self.write(&bytes);
    }

    fn ping(&mut self) {
        self.write(&[0xC0, 0x00]);
    }
}

fn publish_reply(p: &Publish) -> Reply {
    Reply::Publish {
        topic: p.topic.to_string(),
        payload: String::from_utf8_lossy(&p.payload).into_owned(),
        qos: u8::from(p.qos),
        packet_id: p.packet_id.map(NonZeroU16::get),
    }
}

fn packet3(p: v3::Packet) -> Vec<u8> {
    let mut b = BytesMut::new();
    v3::Codec::new(0).encode(p, &mut b).expect("encode");
    b.to_vec()
}

fn packet5(p: v5::Packet) -> Vec<u8> {
    let mut b = BytesMut::new();
    v5::Codec::new(0, 0).encode(p, &mut b).expect("encode");
    b.to_vec()
}

fn bad_frames(b: &Broker) -> f64 {
    b.metric("meshmq_bad_frames_total", &[("protocol", "mqtt")])
}

#[test]
fn paho_clients_publish_and_subscribe_at_qos_0_and_1_in_mqtt_3_1_1_and_5() {
    let b = mqtt_broker();
    for version in ["3.1.1", "5"] {
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
    let deadline = Instant::now() + GUARD;
    while !std::fs::read_to_string(&out)
        .unwrap_or_default()
        .contains("SUBACK")
    {
        assert!(Instant::now() < deadline, "mosquitto_sub got no SUBACK");
        std::thread::sleep(Duration::from_millis(20));
    }
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
fn wait_exit(mut child: Child, what: &str) {
    let deadline = Instant::now() + GUARD;
    loop {
        if let Some(status) = child.try_wait().expect("poll") {
            assert!(status.success(), "{what} failed: {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
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

/// Two single-member groups, `hub` (STOMP) and `edge` (MQTT), joined by a duplex connector.
struct TwoGroups {
    _dir: tempfile::TempDir,
    hub: (Child, SocketAddr, SocketAddr),
    edge: (Child, SocketAddr, SocketAddr),
}

impl Drop for TwoGroups {
    fn drop(&mut self) {
        for child in [&mut self.hub.0, &mut self.edge.0] {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for name in ["hub-1", "edge-1"] {
                let log = std::fs::read_to_string(self._dir.path().join(format!("{name}.log")))
                    .unwrap_or_default();
                eprintln!("----- {name} -----\n{log}");
            }
        }
    }
}

/// A free loopback port, held (so no other call gets it) until the listener is dropped.
fn free_port() -> (u16, TcpListener) {
    let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
    (l.local_addr().expect("bound").port(), l)
}

fn status(admin: SocketAddr) -> Value {
    match http_get(admin, "/status") {
        Some((200, body)) => serde_json::from_str(&body).expect("status JSON"),
        other => panic!("GET /status failed: {other:?}"),
    }
}

fn remote_demand(admin: SocketAddr) -> u64 {
    status(admin)["connectors"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| c["remote_demand"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + GUARD;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

impl TwoGroups {
    fn start() -> TwoGroups {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let held = [(); 6].map(|_| free_port());
        let [hub_admin, hub_tcp, hub_stomp, edge_admin, edge_tcp, edge_mqtt] =
            held.each_ref().map(|(p, _)| *p);
        let topology = format!(
            r#"[mesh]
name = "test"

[broker]

[[group]]
name = "hub"
[[group.member]]
name = "hub-1"
admin = "127.0.0.1:{hub_admin}"
data_dir = "hub"
[[group.member.listener]]
url = "tcp://127.0.0.1:{hub_tcp}"
[[group.member.listener]]
url = "stomp://127.0.0.1:{hub_stomp}"

[[group]]
name = "edge"
[[group.member]]
name = "edge-1"
admin = "127.0.0.1:{edge_admin}"
data_dir = "edge"
[[group.member.listener]]
url = "tcp://127.0.0.1:{edge_tcp}"
[[group.member.listener]]
url = "mqtt://127.0.0.1:{edge_mqtt}"

[[connector]]
from = "hub"
to = "edge"
duplex = true
reconnect_initial_delay = "100ms"
reconnect_max_delay = "1s"
"#
        );
        let file = dir.path().join("mesh.toml");
        std::fs::write(&file, topology).expect("write the topology");
        drop(held);
        let start = |member: &str| {
            let log = std::fs::File::create(dir.path().join(format!("{member}.log"))).expect("log");
            Command::new(env!("CARGO_BIN_EXE_meshmq"))
                .args(["broker", "--topology"])
                .arg(&file)
                .args(["--member", member])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start meshmq")
        };
        let mesh = TwoGroups {
            hub: (start("hub-1"), addr(hub_admin), addr(hub_stomp)),
            edge: (start("edge-1"), addr(edge_admin), addr(edge_mqtt)),
            _dir: dir,
        };
        for admin in [mesh.hub.1, mesh.edge.1] {
            wait_for("both members are ready and the bridge is up", || {
                http_get(admin, "/readyz").is_some_and(|(code, _)| code == 200)
                    && http_get(admin, "/status").is_some_and(|(code, body)| {
                        code == 200
                            && serde_json::from_str::<Value>(&body).is_ok_and(|s| {
                                s["connectors"].as_array().is_some_and(|c| {
                                    !c.is_empty() && c.iter().all(|c| c["up"] == true)
                                })
                            })
                    })
            });
        }
        mesh
    }
}

#[test]
fn stomp_and_mqtt_clients_meet_across_a_connector_both_ways() {
    let mesh = TwoGroups::start();
    let (hub_admin, hub_stomp) = (mesh.hub.1, mesh.hub.2);
    let (edge_admin, edge_mqtt) = (mesh.edge.1, mesh.edge.2);

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
