//! A blocking raw MQTT client for the MQTT integration tests: it sends exactly the packets a
//! test asks for (rmqtt-codec writes them, as a client would) and reads the broker's answers
//! as [`Reply`]s, so tests can check return and reason codes byte for byte.

// Each test binary includes this module and uses a different part of it.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::num::NonZeroU16;
use std::time::Duration;

use serde_json::Value;

// Every test binary that uses this module also has the STOMP one (for its HTTP helper).
use crate::common::mesh::{Mesh, MeshBuilder};
use crate::common_stomp::http_get;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::{v3, v5};
use tokio_util::codec::{Decoder, Encoder};

/// How long any single read may take before the test fails as hung.
pub const GUARD: Duration = Duration::from_secs(30);

pub fn id(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).expect("non-zero")
}

/// What a raw client reads from the broker, whatever the version.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// CONNACK with its return (MQTT 3) or reason (MQTT 5) code.
    ConnAck(u8),
    PubAck(u16, u8),
    SubAck(u16, Vec<u8>),
    Publish {
        topic: String,
        payload: String,
        qos: u8,
        packet_id: Option<u16>,
        retain: bool,
        /// MQTT 5 user properties.
        user: Vec<(String, String)>,
    },
    PingResp,
    Disconnect(u8),
    Other(String),
}

/// A blocking MQTT client that sends exactly what the test tells it to.
pub struct RawMqtt {
    stream: TcpStream,
    rbuf: BytesMut,
    v5: bool,
}

impl RawMqtt {
    pub fn open(addr: SocketAddr, v5: bool) -> RawMqtt {
        let stream = TcpStream::connect_timeout(&addr, GUARD).expect("connect");
        stream.set_read_timeout(Some(GUARD)).expect("timeout");
        RawMqtt {
            stream,
            rbuf: BytesMut::new(),
            v5,
        }
    }

    /// Opens a connection, sends CONNECT and returns the CONNACK's code.
    pub fn connect(
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
    pub fn connect_as(
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

    pub fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// The next packet from the broker; `None` once it closed the connection.
    pub fn next(&mut self) -> Option<Reply> {
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

    /// The next packet if one arrives within `wait`; `None` when none did (or the broker
    /// closed the connection).
    pub fn next_within(&mut self, wait: Duration) -> Option<Reply> {
        if let Some(reply) = self.decode() {
            return Some(reply);
        }
        self.stream.set_read_timeout(Some(wait)).expect("timeout");
        let mut chunk = [0u8; 4096];
        let read = self.stream.read(&mut chunk);
        self.stream.set_read_timeout(Some(GUARD)).expect("timeout");
        match read {
            Ok(0) => None,
            Ok(n) => {
                self.rbuf.extend_from_slice(&chunk[..n]);
                self.decode()
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::ConnectionReset
                ) =>
            {
                None
            }
            Err(e) => panic!("read from the broker failed: {e}"),
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

    pub fn publish(&mut self, topic: &str, payload: &str, qos: QoS, packet_id: Option<u16>) {
        self.publish_with(topic, payload, qos, packet_id, &[]);
    }

    /// A PUBLISH with MQTT 5 user properties.
    pub fn publish_with(
        &mut self,
        topic: &str,
        payload: &str,
        qos: QoS,
        packet_id: Option<u16>,
        user: &[(&str, &str)],
    ) {
        let p = Publish {
            dup: false,
            retain: false,
            qos,
            topic: ByteString::from(topic),
            packet_id: packet_id.map(id),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            properties: self.v5.then(|| v5::PublishProperties {
                user_properties: user
                    .iter()
                    .map(|(k, v)| (ByteString::from(*k), ByteString::from(*v)))
                    .collect(),
                ..v5::PublishProperties::default()
            }),
        };
        let bytes = if self.v5 {
            packet5(v5::Packet::Publish(Box::new(p)))
        } else {
            packet3(v3::Packet::Publish(Box::new(p)))
        };
        self.write(&bytes);
    }

    pub fn subscribe(&mut self, filter: &str, qos: QoS, packet_id: u16) {
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

    pub fn ping(&mut self) {
        self.write(&[0xC0, 0x00]);
    }
}

fn publish_reply(p: &Publish) -> Reply {
    Reply::Publish {
        topic: p.topic.to_string(),
        payload: String::from_utf8_lossy(&p.payload).into_owned(),
        qos: u8::from(p.qos),
        packet_id: p.packet_id.map(NonZeroU16::get),
        retain: p.retain,
        user: p
            .properties
            .as_ref()
            .map(|props| {
                props
                    .user_properties
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// One step of `tests/mqtt_py/paho_session.py` (a paho-mqtt client of a persistent session)
/// against `port`: its JSON answer.
pub fn paho_session(
    port: SocketAddr,
    version: &str,
    action: &str,
    cid: &str,
    rest: &[&str],
) -> Value {
    let mut args = vec![
        port.port().to_string(),
        version.to_string(),
        action.to_string(),
        cid.to_string(),
    ];
    args.extend(rest.iter().map(|a| a.to_string()));
    crate::common_stomp::python_in("mqtt_py", "paho_session.py", &args)
}

/// An MQTT 5 connection of `client_id` that resumes (or starts) its kept session with
/// `expiry` seconds of session expiry, and holds it until dropped (no DISCONNECT: the socket
/// just closes).
pub fn hold_session(addr: SocketAddr, client_id: &str, expiry: u32) -> RawMqtt {
    let mut c = RawMqtt::open(addr, true);
    c.write(&packet5(v5::Packet::Connect(Box::new(v5::Connect {
        clean_start: false,
        keep_alive: 0,
        session_expiry_interval_secs: expiry,
        auth_method: None,
        auth_data: None,
        request_problem_info: true,
        request_response_info: false,
        receive_max: None,
        topic_alias_max: 0,
        user_properties: Vec::new(),
        max_packet_size: None,
        last_will: None,
        client_id: ByteString::from(client_id),
        username: None,
        password: None,
        cert: None,
    }))));
    match c.next() {
        Some(Reply::ConnAck(0)) => c,
        other => panic!("{client_id}: expected a CONNACK accepting the session, got {other:?}"),
    }
}

pub fn packet3(p: v3::Packet) -> Vec<u8> {
    let mut b = BytesMut::new();
    v3::Codec::new(0).encode(p, &mut b).expect("encode");
    b.to_vec()
}

pub fn packet5(p: v5::Packet) -> Vec<u8> {
    let mut b = BytesMut::new();
    v5::Codec::new(0, 0).encode(p, &mut b).expect("encode");
    b.to_vec()
}

/// Two single-member groups, `hub` (its STOMP listener used) and `edge` (its MQTT listener
/// used), joined by a duplex connector: the harness's mesh, started with its connector up.
pub struct TwoGroups {
    _mesh: Mesh,
    pub hub_admin: SocketAddr,
    pub hub_stomp: SocketAddr,
    pub hub_mqtt: SocketAddr,
    pub edge_admin: SocketAddr,
    pub edge_mqtt: SocketAddr,
}

/// The payloads a `paho_session.py` `receive` step got, sorted (a persistent session's backlog
/// comes in order per topic, but redeliveries of unacknowledged messages come first).
pub fn received_payloads(r: &Value) -> Vec<String> {
    let mut got: Vec<String> = serde_json::from_value(r["messages"].clone()).expect("messages");
    got.sort();
    got
}

pub fn status(admin: SocketAddr) -> Value {
    match http_get(admin, "/status") {
        Some((200, body)) => serde_json::from_str(&body).expect("status JSON"),
        other => panic!("GET /status failed: {other:?}"),
    }
}

pub fn remote_demand(admin: SocketAddr) -> u64 {
    status(admin)["connectors"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| c["remote_demand"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

pub fn wait_for(what: &str, done: impl FnMut() -> bool) {
    crate::common::wait::poll()
        .every(Duration::from_millis(25))
        .within(GUARD)
        .until(what, done);
}

impl TwoGroups {
    pub fn start() -> TwoGroups {
        let mut mesh = MeshBuilder::new()
            .group("hub", 1, "")
            .group("edge", 1, "")
            .connector("hub", "edge", "")
            .stomp()
            .mqtt()
            .build();
        mesh.start_all();
        mesh.wait_connected();
        let (hub, edge) = (mesh.member("hub"), mesh.member("edge"));
        TwoGroups {
            hub_admin: hub.admin,
            hub_stomp: hub.stomp.expect("a STOMP listener"),
            hub_mqtt: hub.mqtt.expect("an MQTT listener"),
            edge_admin: edge.admin,
            edge_mqtt: edge.mqtt.expect("an MQTT listener"),
            _mesh: mesh,
        }
    }
}

/// `mosquitto_pub -r` of `payload` (`None`: an empty retained message, which clears the
/// topic's retained one) to `topic` at `qos`, MQTT `version` ("311" or "5"); it waits for the
/// PUBACK/PUBCOMP of a QoS 1/2 publish.
pub fn mosquitto_retain(
    addr: SocketAddr,
    version: &str,
    topic: &str,
    payload: Option<&str>,
    qos: u8,
) {
    let mut cmd = std::process::Command::new("mosquitto_pub");
    cmd.args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-V", version, "-q", &qos.to_string(), "-t", topic, "-r"]);
    match payload {
        Some(p) => cmd.args(["-m", p]),
        None => cmd.arg("-n"),
    };
    let out = cmd
        .output()
        .expect("mosquitto_pub (Debian's mosquitto-clients; make test-deps installs it)");
    assert!(
        out.status.success(),
        "mosquitto_pub -r to {topic} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The retained messages a new `mosquitto_sub` (QoS 1, MQTT `version`) on `filter` is sent, as
/// `"RETAIN-FLAG QOS TOPIC PAYLOAD"` lines in the order they came: it takes every message with
/// the retain flag for 3 s (ending early at a message without it).
pub fn mosquitto_retained(addr: SocketAddr, version: &str, filter: &str) -> Vec<String> {
    let out = std::process::Command::new("mosquitto_sub")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-V", version, "-q", "1", "-t", filter])
        .args(["--retained-only", "-W", "3", "-F", "%r %q %t %p"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("mosquitto_sub (Debian's mosquitto-clients; make test-deps installs it)");
    // 27: the -W timeout ended it, which is how it ends when every message was retained.
    assert!(
        out.status.success() || out.status.code() == Some(27),
        "mosquitto_sub on {filter} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Runs `paho_qos2_resume.py` with a pause after the cut: while it waits, `between` gets the
/// pause directory's readiness and returns the MQTT port the client goes on with.
pub fn paho_qos2_resume_across(
    port: u16,
    version: &str,
    cut: &str,
    between: impl FnOnce() -> u16,
) -> Value {
    let pause = tempfile::tempdir().expect("tempdir");
    let dir = pause.path().to_path_buf();
    let args = [
        port.to_string(),
        version.to_string(),
        cut.to_string(),
        dir.display().to_string(),
    ];
    let run = std::thread::spawn(move || {
        crate::common_stomp::python_in("mqtt_py", "paho_qos2_resume.py", &args)
    });
    crate::common::wait::poll()
        .within(Duration::from_secs(60))
        .until("the client is cut", || dir.join("cut").exists());
    // The broker has the PUBREC (or the cut PUBLISH) in hand and journaled before it dies.
    std::thread::sleep(Duration::from_millis(1000));
    let go_on = between();
    std::fs::write(dir.join("go"), go_on.to_string()).expect("write go");
    run.join().expect("the paho run")
}

/// The assertions of one run: each message once, in order, and the packet ids as the spec
/// asks (a released delivery's PUBREL again; an unacknowledged one with the id it had).
pub fn judge_qos2_resume(r: &Value, version: &str, cut: &str, when: &str) {
    let what = format!("MQTT {version}, cut after the {cut}, {when}: {r}");
    assert_eq!(r["cuts"], 1, "{what}");
    assert_eq!(
        r["connects"].as_array().map(|c| c.last().cloned()),
        Some(Some(Value::Bool(true))),
        "the reconnect resumed the session: {what}"
    );
    assert_eq!(
        qos2_strings(&r["got"]),
        ["warm-up-0", "warm-up-1", "warm-up-2", "first", "marker"],
        "each message handed to the application once, in order: {what}"
    );
    let first = qos2_ids(&r["first_ids"]);
    match cut {
        "pubrec" => {
            assert_eq!(first.len(), 1, "the message is not sent again: {what}");
            assert!(
                qos2_ids(&r["pubrel_ids"]).contains(&first[0]),
                "its PUBREL came on the new connection: {what}"
            );
        }
        // Across a restart or a failover the client may connect more than once while the
        // broker is away (each attempt the proxy held gets the PUBLISH again): every one
        // carries the packet id it had.
        _ if when != "a reconnect" => assert!(
            first.len() >= 2 && first.iter().all(|id| *id == first[0]),
            "sent again with the packet id it had: {what}"
        ),
        _ => assert!(
            first.len() == 2 && first[0] == first[1],
            "sent again with the packet id it had: {what}"
        ),
    }
}

fn qos2_strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("a list: {v}"))
        .iter()
        .map(|s| s.to_string().trim_matches('"').to_string())
        .collect()
}

fn qos2_ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("a list: {v}"))
        .iter()
        .map(|i| i.as_u64().expect("a packet id"))
        .collect()
}
