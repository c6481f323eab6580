//! MQTT 3.1, 3.1.1 and 5 on a client connection: the CONNECT handshake (version, login, client
//! id, keep-alive), then a codec — packets → [`Request`]s, deliveries and replies → packets —
//! over rmqtt-codec's packet parser, with ActiveMQ's topic names.
//!
//! MQTT topics are meshmq topics: `/` ↔ `.`, `+` ↔ `*`, `#` ↔ `>` (and a `.` inside an MQTT
//! level becomes `/`, so the mapping is one to one). A QoS 0 publish is a non-persistent send;
//! a QoS 1 or 2 publish is a persistent send whose PUBACK (PUBREC) is its receipt, so it goes
//! out only once the message is durable. A delivery goes out at the subscription's QoS, capped
//! at 0 for a non-persistent message; QoS 0 deliveries are acknowledged as they are written,
//! QoS 1 ones by PUBACK, QoS 2 ones by PUBREC. A retained publish carries the
//! `ActiveMQ.Retain` header, so its topic keeps it (in memory, per group; forwarded copies are
//! retained where they arrive) and a new subscription gets it, flagged retained, right after
//! its SUBACK. A will is published through the same pipeline when the connection ends without
//! a DISCONNECT (or with MQTT 5's "disconnect with will"). A persistent session (MQTT 3
//! `clean_session=0`, MQTT 5 `clean_start=0` with a session expiry) keeps each filter in a
//! durable subscription named `mqtt:<qos>:<filter>` under the client id: messages that arrive
//! while the client is away, and its unacknowledged QoS 1/2 deliveries, wait there — journaled,
//! so across restarts and failovers of the group — and a reconnect resumes them (CONNACK
//! `session present`); a clean start deletes them, and so does the end of an MQTT 5 session's
//! expiry interval. The codec owns the packet ids of both
//! directions and the mapping from a client's filters to subscriptions; a persistent session's
//! ids in flight outlive the connection (`mqtt_session.rs`), so a reconnect resumes its QoS 1/2
//! deliveries with them. It never touches the socket or the broker. Invariants: every SUBSCRIBE/UNSUBSCRIBE gets exactly one
//! SUBACK/UNSUBACK with one code per filter, written once every filter's request is answered;
//! a refusal MQTT 3 cannot express (a refused publish, a lost subscription) closes the
//! connection; in MQTT 5 it is a reason code, and a fatal one a DISCONNECT with its reason.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use rmqtt_codec::error::DecodeError;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v5::ToReasonCode;
use rmqtt_codec::version::{ProtocolVersion, VersionCodec};
use rmqtt_codec::{v3, v5};
use tokio::time::{sleep_until, Instant as TokioInstant};
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

use crate::broker::{
    Broker, BrokerError, Delivery, Destination, DestinationPattern, Draft, Kind, Message, Session,
    SubscribeSpec, RETAIN_HEADER,
};
use crate::security::Principal;
use crate::transport::{IoEvent, Permit, Pump, Stream};
use crate::wire::proto::ErrorCode;

use super::conn::{Codec, Connection, Inbound};
use super::mqtt_session::{DeliveryKey, KeptInflight, MqttSessions};
use super::mqtt_share::{share_queue, SHARE_TOPIC_HEADER};
use super::request::{Refusal, Request, SendRequest};
use super::ConnCtx;

/// A client is dropped after one and a half of its keep-alive intervals of silence (MQTT
/// 3.1.2.10).
const KEEP_ALIVE_GRACE: f64 = 1.5;

/// The durable subscriptions of a persistent session are named `mqtt:<qos>:<filter>` under
/// the client's id.
const SESSION_PREFIX: &str = "mqtt:";

/// A session expiry interval that never ends (MQTT 5 3.1.2.11.2; MQTT 3's persistent session).
const NEVER_EXPIRES: u32 = u32::MAX;

/// The name of the durable subscription that keeps `filter` at `qos` for a persistent session.
fn session_sub_name(qos: QoS, filter: &str) -> String {
    format!("{SESSION_PREFIX}{}:{filter}", u8::from(qos))
}

/// The QoS and filter a persistent session's durable subscription was named after.
fn parse_session_sub_name(name: &str) -> Option<(QoS, String)> {
    let rest = name.strip_prefix(SESSION_PREFIX)?;
    let (qos, filter) = rest.split_once(':')?;
    let qos = QoS::try_from(qos.parse::<u8>().ok()?).ok()?;
    Some((qos, filter.to_string()))
}

/// What outlives one connection of a client with a client id: how long its session is kept
/// once the connection ends (seconds; `NEVER_EXPIRES`, or 0 for at once). An MQTT 5
/// DISCONNECT may change it.
#[derive(Debug, Clone)]
pub(crate) struct SessionEnd {
    client_id: String,
    expiry: Arc<AtomicU32>,
}

impl SessionEnd {
    /// Ends the session of connection `session_id` after its expiry interval: its durable
    /// subscriptions (and the messages they kept) are deleted unless a later connection of the
    /// client took them over. The timer lives in memory: a broker that stops first keeps the
    /// session until its client returns.
    fn schedule(self, broker: &Broker, session_id: u64, shutdown: &CancellationToken) {
        let secs = self.expiry.load(Ordering::Relaxed);
        if secs == NEVER_EXPIRES {
            return;
        }
        let expire = move |broker: &Broker| {
            broker.remove_idle_durables(&self.client_id, SESSION_PREFIX, Some(session_id));
        };
        if secs == 0 {
            expire(broker);
            return;
        }
        let (broker, shutdown) = (broker.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(u64::from(secs))) => expire(&broker),
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

/// MQTT 5 reason codes used here (MQTT 5 §2.4).
mod reason {
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    pub const UNSPECIFIED: u8 = 0x80;
    pub const MALFORMED: u8 = 0x81;
    pub const PROTOCOL_ERROR: u8 = 0x82;
    pub const IMPLEMENTATION_SPECIFIC: u8 = 0x83;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    pub const QUOTA_EXCEEDED: u8 = 0x97;
}

/// The MQTT 5 reason for a broker-side error code.
fn reason_for(code: ErrorCode) -> u8 {
    match code {
        ErrorCode::Forbidden | ErrorCode::Unauthenticated => reason::NOT_AUTHORIZED,
        ErrorCode::ResourceExhausted => reason::QUOTA_EXCEEDED,
        ErrorCode::Timeout => reason::KEEP_ALIVE_TIMEOUT,
        ErrorCode::ClientIdInUse => reason::SESSION_TAKEN_OVER,
        ErrorCode::ShuttingDown => reason::SERVER_SHUTTING_DOWN,
        ErrorCode::BadFrame => reason::MALFORMED,
        ErrorCode::FrameTooLarge => reason::PACKET_TOO_LARGE,
        ErrorCode::NotConnected | ErrorCode::ProtocolVersion => reason::PROTOCOL_ERROR,
        ErrorCode::Invalid | ErrorCode::NotFound | ErrorCode::Unsupported => {
            reason::IMPLEMENTATION_SPECIFIC
        }
        ErrorCode::Unknown | ErrorCode::QuorumUnavailable => reason::UNSPECIFIED,
    }
}

/// Why a topic name or filter cannot be used here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TopicError {
    #[error("the topic name {0:?} contains a wildcard (+ or #): a PUBLISH names one topic")]
    Wildcard(String),
    #[error("the topic filter {0:?} uses + or # inside a level: each stands alone between slashes, and # only last")]
    BadFilter(String),
    #[error("the topic {0:?} contains * or >, which are meshmq wildcards: use another character")]
    MeshmqWildcard(String),
    #[error("the topic {0:?} cannot be a meshmq topic: {1}")]
    Destination(String, String),
}

/// Turns one MQTT level into a meshmq segment (`.` inside a level becomes `/`).
fn level_to_segment(level: &str) -> String {
    level.replace('.', "/")
}

/// An MQTT topic name (no wildcards) → the meshmq topic it stands for.
pub(crate) fn topic_to_destination(topic: &str) -> Result<Destination, TopicError> {
    if topic.contains(['+', '#']) {
        return Err(TopicError::Wildcard(topic.to_string()));
    }
    if topic.contains(['*', '>']) {
        return Err(TopicError::MeshmqWildcard(topic.to_string()));
    }
    let name: Vec<String> = topic.split('/').map(level_to_segment).collect();
    Destination::new(Kind::Topic, &name.join("."))
        .map_err(|e| TopicError::Destination(topic.to_string(), e.to_string()))
}

/// An MQTT topic filter → the meshmq topic pattern that matches the same topics (`#` matches
/// one or more levels, as ActiveMQ's `>` does: `a/#` does not match `a` itself).
pub(crate) fn filter_to_pattern(filter: &str) -> Result<DestinationPattern, TopicError> {
    if filter.contains(['*', '>']) {
        return Err(TopicError::MeshmqWildcard(filter.to_string()));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let mut segments = Vec::with_capacity(levels.len());
    for (i, level) in levels.iter().enumerate() {
        segments.push(match *level {
            "+" => "*".to_string(),
            "#" if i + 1 == levels.len() => ">".to_string(),
            l if l.contains(['+', '#']) => return Err(TopicError::BadFilter(filter.to_string())),
            l => level_to_segment(l),
        });
    }
    DestinationPattern::parse(&format!("topic://{}", segments.join(".")))
        .map_err(|e| TopicError::Destination(filter.to_string(), e.to_string()))
}

/// A meshmq destination → the MQTT topic name its messages arrive on.
pub(crate) fn destination_to_topic(dest: &Destination) -> String {
    dest.name()
        .split('.')
        .map(|segment| segment.replace('/', "."))
        .collect::<Vec<_>>()
        .join("/")
}

/// The MQTT topic a message is delivered on: its topic's — or, for a share group's copy, the
/// topic it was published to.
fn message_topic(m: &Message) -> String {
    let shared = m
        .headers
        .iter()
        .find(|(k, _)| k == SHARE_TOPIC_HEADER)
        .and_then(|(_, v)| Destination::parse(v).ok());
    shared
        .as_ref()
        .or(m.destination.as_ref())
        .map(destination_to_topic)
        .unwrap_or_default()
}

/// What the broker owes the client once a request is answered: the packet that answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Receipt {
    /// A QoS 1 publish is durable.
    PubAck(NonZeroU16),
    /// A QoS 2 publish is durable (first half of its exactly-once handshake).
    PubRec(NonZeroU16),
    /// The client released a QoS 2 publish.
    PubComp(NonZeroU16),
    /// A QoS 2 delivery reached the client (its PUBREC acknowledged it).
    PubRel(NonZeroU16),
    /// Filter `index` of SUBSCRIBE `packet_id` is answered.
    SubAck {
        packet_id: NonZeroU16,
        index: usize,
    },
    /// Filter `index` of UNSUBSCRIBE `packet_id` is answered.
    UnsubAck {
        packet_id: NonZeroU16,
        index: usize,
    },
    PingResp,
    /// Subscription `n` of a resumed persistent session is attached again (nothing to write).
    Resumed(u64),
}

/// One subscription as the client made it.
#[derive(Debug)]
struct Sub {
    filter: String,
    qos: QoS,
    /// The durable subscription that keeps it, in a persistent session.
    durable: Option<String>,
    /// Restored from the session when the client reconnected (no retained replay).
    resumed: bool,
}

/// A delivery at QoS 1 or 2 the client has not finished acknowledging.
#[derive(Debug, Clone, Copy)]
struct Outgoing {
    /// 0 for a retained message replayed to a new subscription (nothing to acknowledge).
    subscription: u64,
    tag: u64,
    qos: QoS,
}

/// The answers to one SUBSCRIBE or UNSUBSCRIBE, gathered filter by filter.
#[derive(Debug)]
struct Gathering {
    subscribe: bool,
    /// The MQTT 5 reason code of each filter, once known.
    codes: Vec<Option<u8>>,
    /// The subscription each filter of a SUBSCRIBE opened (to forget it if refused).
    subs: Vec<Option<u64>>,
    /// Retained messages for those subscriptions, written after the SUBACK.
    retained: Vec<(u64, Arc<Message>)>,
}

/// The version-specific packet parser and writer.
enum Wire {
    V3(v3::Codec),
    V5(v5::Codec),
}

/// One inbound packet, whatever the version.
#[derive(Debug)]
enum Packet {
    Publish(Box<Publish>),
    PubAck(NonZeroU16),
    PubRec(NonZeroU16),
    PubRel(NonZeroU16),
    PubComp(NonZeroU16),
    Subscribe {
        packet_id: NonZeroU16,
        filters: Vec<(ByteString, QoS, bool)>,
    },
    Unsubscribe {
        packet_id: NonZeroU16,
        filters: Vec<ByteString>,
    },
    Ping,
    /// `keep_will`: MQTT 5's "disconnect with will message"; `expiry`: its new session
    /// expiry interval.
    Disconnect {
        keep_will: bool,
        expiry: Option<u32>,
    },
    /// A packet a client may not send now (a second CONNECT, a server's packet, AUTH).
    Unexpected(&'static str),
}

impl Wire {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        Ok(Some(match self {
            Wire::V3(c) => match c.decode(buf)? {
                None => return Ok(None),
                Some((p, _)) => match p {
                    v3::Packet::Publish(p) => Packet::Publish(p),
                    v3::Packet::PublishAck { packet_id } => Packet::PubAck(packet_id),
                    v3::Packet::PublishReceived { packet_id } => Packet::PubRec(packet_id),
                    v3::Packet::PublishRelease { packet_id } => Packet::PubRel(packet_id),
                    v3::Packet::PublishComplete { packet_id } => Packet::PubComp(packet_id),
                    v3::Packet::Subscribe {
                        packet_id,
                        topic_filters,
                    } => Packet::Subscribe {
                        packet_id,
                        filters: topic_filters
                            .into_iter()
                            .map(|(f, q)| (f, q, false))
                            .collect(),
                    },
                    v3::Packet::Unsubscribe {
                        packet_id,
                        topic_filters,
                    } => Packet::Unsubscribe {
                        packet_id,
                        filters: topic_filters,
                    },
                    v3::Packet::PingRequest => Packet::Ping,
                    v3::Packet::Disconnect => Packet::Disconnect {
                        keep_will: false,
                        expiry: None,
                    },
                    v3::Packet::Connect(_) => Packet::Unexpected("a second CONNECT"),
                    _ => Packet::Unexpected("a packet only a server sends"),
                },
            },
            Wire::V5(c) => match c.decode(buf)? {
                None => return Ok(None),
                Some((p, _)) => match p {
                    v5::Packet::Publish(p) => Packet::Publish(p),
                    v5::Packet::PublishAck(a) => Packet::PubAck(a.packet_id),
                    v5::Packet::PublishReceived(a) => Packet::PubRec(a.packet_id),
                    v5::Packet::PublishRelease(a) => Packet::PubRel(a.packet_id),
                    v5::Packet::PublishComplete(a) => Packet::PubComp(a.packet_id),
                    v5::Packet::Subscribe(s) => Packet::Subscribe {
                        packet_id: s.packet_id,
                        filters: s
                            .topic_filters
                            .into_iter()
                            .map(|(f, o)| (f, o.qos, o.no_local))
                            .collect(),
                    },
                    v5::Packet::Unsubscribe(u) => Packet::Unsubscribe {
                        packet_id: u.packet_id,
                        filters: u.topic_filters,
                    },
                    v5::Packet::PingRequest => Packet::Ping,
                    v5::Packet::Disconnect(d) => Packet::Disconnect {
                        keep_will: d.reason_code
                            == v5::DisconnectReasonCode::DisconnectWithWillMessage,
                        expiry: d.session_expiry_interval_secs,
                    },
                    v5::Packet::Connect(_) => Packet::Unexpected("a second CONNECT"),
                    v5::Packet::Auth(_) => {
                        Packet::Unexpected("AUTH (this broker offers no extended authentication)")
                    }
                    _ => Packet::Unexpected("a packet only a server sends"),
                },
            },
        }))
    }
}

/// Reason code of a decode error (MQTT 5), and the broker's error code for it.
fn decode_error(e: &DecodeError) -> (u8, ErrorCode) {
    let code = match e {
        DecodeError::MaxSizeExceeded { .. } => ErrorCode::FrameTooLarge,
        _ => ErrorCode::BadFrame,
    };
    let reason = match e {
        // A string that is not UTF-8 makes the packet malformed (MQTT 5 1.5.4), whatever
        // rmqtt-codec's own mapping says.
        DecodeError::Utf8Error => reason::MALFORMED,
        // A reserved or server-only packet type breaks the protocol (MQTT 5 2.1.2).
        DecodeError::UnsupportedPacketType => reason::PROTOCOL_ERROR,
        e => u8::from(e.to_reason_code()),
    };
    (reason, code)
}

/// The MQTT side of one connection.
pub(crate) struct Mqtt {
    wire: Wire,
    connection_id: String,
    producer_id: Bytes,
    next_sequence: u64,
    subs: HashMap<u64, Sub>,
    by_filter: HashMap<String, u64>,
    next_sub: u64,
    /// Prefetch of each subscription (0: the destination's default).
    prefetch: u32,
    /// Requests decoded from one packet, waiting their turn.
    pending: VecDeque<Request<Receipt>>,
    gathering: HashMap<NonZeroU16, Gathering>,
    /// Our QoS 1/2 deliveries in flight, by the packet id we gave them.
    inflight: HashMap<u16, Outgoing>,
    next_packet_id: u16,
    /// QoS 2 publishes received and not yet released (their packet ids).
    awaiting_release: HashSet<u16>,
    /// The MQTT 5 reason of the refusal being written (set where the codec refuses).
    refusal_reason: Option<u8>,
    /// Published if the connection ends without a DISCONNECT.
    will: Option<SendRequest<Receipt>>,
    /// Subscriptions are durable (a persistent session of a client with an id).
    persistent: bool,
    /// The session's expiry interval, shared with whoever ends the session.
    expiry: Option<Arc<AtomicU32>>,
    /// The delivery each packet id in flight carries, for a persistent session's
    /// subscriptions (`mqtt_session.rs`).
    keys: HashMap<u16, DeliveryKey>,
    /// The packet ids the session's last connection gave deliveries it never saw acknowledged:
    /// they go out again with them.
    resumed_ids: HashMap<DeliveryKey, u16>,
    /// Where a persistent session keeps what is in flight when the connection ends, and its
    /// client id.
    keeper: Option<(Arc<MqttSessions>, String)>,
}

impl Mqtt {
    fn new(wire: Wire, connection_id: &str, prefetch: u32) -> Mqtt {
        Mqtt {
            wire,
            connection_id: connection_id.to_string(),
            producer_id: Bytes::from(connection_id.to_string()),
            next_sequence: 1,
            subs: HashMap::new(),
            by_filter: HashMap::new(),
            next_sub: 1,
            prefetch,
            pending: VecDeque::new(),
            gathering: HashMap::new(),
            inflight: HashMap::new(),
            next_packet_id: 0,
            awaiting_release: HashSet::new(),
            refusal_reason: None,
            will: None,
            persistent: false,
            expiry: None,
            keys: HashMap::new(),
            resumed_ids: HashMap::new(),
            keeper: None,
        }
    }

    /// Takes up what the session's last connection had in flight: its released QoS 2
    /// deliveries get their PUBREL again (first of all), its unacknowledged deliveries keep
    /// their packet ids when they go out again.
    fn resume_inflight(&mut self, kept: KeptInflight) {
        for id in kept.released {
            let Some(id) = NonZeroU16::new(id) else {
                continue;
            };
            self.inflight.insert(
                id.get(),
                Outgoing {
                    subscription: 0,
                    tag: 0,
                    qos: QoS::AtMostOnce,
                },
            );
            self.pending.push_back(Request::Ping {
                receipt: Receipt::PubRel(id),
            });
        }
        self.resumed_ids = kept.ids;
    }

    /// What is in flight now, for the session's next connection.
    fn inflight_to_keep(&mut self) -> KeptInflight {
        let mut kept = KeptInflight::default();
        for (id, o) in &self.inflight {
            if o.qos == QoS::AtMostOnce {
                kept.released.push(*id);
            } else if let Some(key) = self.keys.get(id) {
                kept.ids.insert(key.clone(), *id);
            }
        }
        // Deliveries not sent again on this connection keep the ids they had.
        for (key, id) in self.resumed_ids.drain() {
            if !self.inflight.contains_key(&id) {
                kept.ids.entry(key).or_insert(id);
            }
        }
        kept
    }

    /// Attaches the client again to the subscriptions its persistent session kept (the
    /// durable subscriptions named after its filters), as if it had just subscribed, but
    /// without a SUBACK or a retained replay (MQTT 3.1.2.4): what they kept is delivered.
    fn resume(&mut self, kept: Vec<(String, DestinationPattern)>) {
        for (name, pattern) in kept {
            let Some((qos, filter)) = parse_session_sub_name(&name) else {
                continue;
            };
            let num = self.next_sub;
            self.next_sub += 1;
            self.subs.insert(
                num,
                Sub {
                    filter: filter.clone(),
                    qos,
                    durable: Some(name.clone()),
                    resumed: true,
                },
            );
            self.by_filter.insert(filter, num);
            self.pending.push_back(Request::Subscribe {
                spec: SubscribeSpec {
                    subscription: num,
                    destination: pattern,
                    selector: String::new(),
                    prefetch: self.prefetch,
                    priority: 0,
                    durable_name: Some(name),
                    no_local: false,
                },
                receipt: Some(Receipt::Resumed(num)),
            });
        }
    }

    /// Keeps the will of the CONNECT (its topic was checked before the CONNACK).
    fn set_will(&mut self, will: Publish) {
        match self.draft_of(&will) {
            Ok((destination, draft)) => {
                self.will = Some(SendRequest {
                    destination,
                    draft,
                    transaction: None,
                    receipt: None,
                })
            }
            Err((_, e)) => {
                tracing::debug!(connection = %self.connection_id, error = %e, "will refused")
            }
        }
    }

    fn v5(&self) -> bool {
        matches!(self.wire, Wire::V5(_))
    }

    fn write_v3(&mut self, packet: v3::Packet, out: &mut BytesMut) {
        if let Wire::V3(c) = &mut self.wire {
            if let Err(e) = c.encode(packet, out) {
                tracing::warn!(connection = %self.connection_id, error = %e, "an MQTT packet could not be encoded");
            }
        }
    }

    fn write_v5(&mut self, packet: v5::Packet, out: &mut BytesMut) -> bool {
        if let Wire::V5(c) = &mut self.wire {
            if let Err(e) = c.encode(packet, out) {
                tracing::debug!(connection = %self.connection_id, error = %e, "an MQTT packet could not be encoded");
                return false;
            }
        }
        true
    }

    /// Writes an acknowledgement of the QoS 1/2 flows with an MQTT 5 reason code.
    fn write_ack(&mut self, receipt: &Receipt, code: u8, why: Option<&str>, out: &mut BytesMut) {
        let reason_string = why.map(ByteString::from);
        match (self.v5(), receipt) {
            (false, Receipt::PubAck(id)) => {
                self.write_v3(v3::Packet::PublishAck { packet_id: *id }, out)
            }
            (false, Receipt::PubRec(id)) => {
                self.write_v3(v3::Packet::PublishReceived { packet_id: *id }, out)
            }
            (false, Receipt::PubRel(id)) => {
                self.write_v3(v3::Packet::PublishRelease { packet_id: *id }, out)
            }
            (false, Receipt::PubComp(id)) => {
                self.write_v3(v3::Packet::PublishComplete { packet_id: *id }, out)
            }
            (true, Receipt::PubAck(id) | Receipt::PubRec(id)) => {
                let ack = v5::PublishAck {
                    packet_id: *id,
                    reason_code: v5::PublishAckReason::try_from(code)
                        .unwrap_or(v5::PublishAckReason::UnspecifiedError),
                    properties: Vec::new(),
                    reason_string,
                };
                let packet = if matches!(receipt, Receipt::PubAck(_)) {
                    v5::Packet::PublishAck(ack)
                } else {
                    v5::Packet::PublishReceived(ack)
                };
                self.write_v5(packet, out);
            }
            (true, Receipt::PubRel(id) | Receipt::PubComp(id)) => {
                let ack = v5::PublishAck2 {
                    packet_id: *id,
                    reason_code: v5::PublishAck2Reason::Success,
                    properties: Vec::new(),
                    reason_string: None,
                };
                let packet = if matches!(receipt, Receipt::PubRel(_)) {
                    v5::Packet::PublishRelease(ack)
                } else {
                    v5::Packet::PublishComplete(ack)
                };
                self.write_v5(packet, out);
            }
            (false, Receipt::PingResp) => self.write_v3(v3::Packet::PingResponse, out),
            (true, Receipt::PingResp) => {
                self.write_v5(v5::Packet::PingResponse, out);
            }
            (_, Receipt::SubAck { .. } | Receipt::UnsubAck { .. }) => {
                unreachable!("SUBACK and UNSUBACK are gathered, not written one filter at a time")
            }
            // A resumed subscription answers nothing.
            (_, Receipt::Resumed(_)) => {}
        }
    }

    /// Records the answer for one filter; writes the SUBACK/UNSUBACK once all are in.
    fn gather(&mut self, packet_id: NonZeroU16, index: usize, code: u8, out: &mut BytesMut) {
        let Some(g) = self.gathering.get_mut(&packet_id) else {
            return;
        };
        if let Some(slot) = g.codes.get_mut(index) {
            slot.get_or_insert(code);
        }
        if g.codes.iter().any(Option::is_none) {
            return;
        }
        let Some(g) = self.gathering.remove(&packet_id) else {
            return;
        };
        let retained = g.retained;
        let codes: Vec<u8> = g.codes.into_iter().flatten().collect();
        match (self.v5(), g.subscribe) {
            (false, true) => {
                let status = codes
                    .iter()
                    .map(|c| match QoS::try_from(*c) {
                        Ok(q) => v3::SubscribeReturnCode::Success(q),
                        Err(_) => v3::SubscribeReturnCode::Failure,
                    })
                    .collect();
                self.write_v3(v3::Packet::SubscribeAck { packet_id, status }, out);
            }
            (false, false) => self.write_v3(v3::Packet::UnsubscribeAck { packet_id }, out),
            (true, true) => {
                let status = codes
                    .iter()
                    .map(|c| {
                        v5::SubscribeAckReason::try_from(*c)
                            .unwrap_or(v5::SubscribeAckReason::UnspecifiedError)
                    })
                    .collect();
                self.write_v5(
                    v5::Packet::SubscribeAck(v5::SubscribeAck {
                        packet_id,
                        properties: Vec::new(),
                        reason_string: None,
                        status,
                    }),
                    out,
                );
            }
            (true, false) => {
                let status = codes
                    .iter()
                    .map(|c| {
                        v5::UnsubscribeAckReason::try_from(*c)
                            .unwrap_or(v5::UnsubscribeAckReason::UnspecifiedError)
                    })
                    .collect();
                self.write_v5(
                    v5::Packet::UnsubscribeAck(v5::UnsubscribeAck {
                        packet_id,
                        properties: Vec::new(),
                        reason_string: None,
                        status,
                    }),
                    out,
                );
            }
        }
        for (sub, m) in retained {
            if self.subs.contains_key(&sub) {
                self.write_publish(sub, None, 0, &m, out);
            }
        }
    }

    /// A packet that ends the connection as malformed (counted as a bad frame).
    fn fatal(&mut self, reason: u8, message: String) -> Inbound<Receipt> {
        self.refusal_reason = Some(reason);
        Inbound::Request(Request::refuse(
            Refusal::BadFrame {
                code: ErrorCode::BadFrame,
                message,
                fatal: true,
            },
            None,
        ))
    }

    fn on_publish(&mut self, p: Box<Publish>) -> Inbound<Receipt> {
        let receipt = match (p.qos, p.packet_id) {
            (QoS::AtMostOnce, _) => None,
            (QoS::AtLeastOnce, Some(id)) => Some(Receipt::PubAck(id)),
            (QoS::ExactlyOnce, Some(id)) => {
                if self.awaiting_release.contains(&id.get()) {
                    // A resend of a QoS 2 publish we hold: answer it again, take it once.
                    return Inbound::Request(Request::Ping {
                        receipt: Receipt::PubRec(id),
                    });
                }
                Some(Receipt::PubRec(id))
            }
            (_, None) => {
                return self.fatal(
                    reason::PROTOCOL_ERROR,
                    "a QoS 1 or 2 PUBLISH needs a packet id".into(),
                )
            }
        };
        let (destination, draft) = match self.draft_of(&p) {
            Ok(d) => d,
            Err((reason, message)) => return self.fatal(reason, message),
        };
        if let Some(Receipt::PubRec(id)) = &receipt {
            self.awaiting_release.insert(id.get());
        }
        Inbound::Request(Request::Send(SendRequest {
            destination,
            draft,
            transaction: None,
            receipt,
        }))
    }

    /// The destination and message a PUBLISH (or a will) stands for; an MQTT 5 reason and
    /// why when it cannot be one.
    fn draft_of(&mut self, p: &Publish) -> Result<(Destination, Draft), (u8, String)> {
        let props = p.properties.clone().unwrap_or_default();
        if props.topic_alias.is_some() {
            return Err((
                reason::TOPIC_ALIAS_INVALID,
                "topic aliases are not accepted here (the CONNACK allowed none)".into(),
            ));
        }
        let destination = topic_to_destination(&p.topic)
            .map_err(|e| (reason::TOPIC_NAME_INVALID, e.to_string()))?;
        let reply_to = match props.response_topic.as_deref().map(topic_to_destination) {
            Some(Ok(d)) => d.to_string(),
            Some(Err(e)) => return Err((reason::TOPIC_NAME_INVALID, e.to_string())),
            None => String::new(),
        };
        // The retain flag alone decides what the topic keeps: a client's property of the same
        // name does not.
        let mut headers: Vec<(String, String)> = props
            .user_properties
            .iter()
            .filter(|(k, _)| &**k != RETAIN_HEADER)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if p.retain {
            headers.push((RETAIN_HEADER.to_string(), "true".to_string()));
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let expires_at_ms = props.message_expiry_interval.map_or(0, |secs| {
            crate::broker::now_ms() + u64::from(secs.get()) * 1000
        });
        let draft = Draft {
            body: p.payload.clone(),
            headers,
            persistent: p.qos != QoS::AtMostOnce,
            priority: u32::from(crate::broker::DEFAULT_PRIORITY),
            expires_at_ms,
            producer_id: self.producer_id.clone(),
            sequence,
            reply_to,
            correlation_id: props
                .correlation_data
                .as_ref()
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .unwrap_or_default(),
            content_type: props
                .content_type
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            timestamp_ms: 0,
            ..Draft::default()
        };
        Ok((destination, draft))
    }

    fn on_subscribe(
        &mut self,
        packet_id: NonZeroU16,
        filters: Vec<(ByteString, QoS, bool)>,
    ) -> Inbound<Receipt> {
        if self.gathering.contains_key(&packet_id) {
            return self.fatal(
                reason::PROTOCOL_ERROR,
                format!("packet id {packet_id} is already in use by an unanswered SUBSCRIBE or UNSUBSCRIBE"),
            );
        }
        let mut g = Gathering {
            subscribe: true,
            codes: vec![None; filters.len()],
            subs: vec![None; filters.len()],
            retained: Vec::new(),
        };
        for (index, (filter, qos, no_local)) in filters.into_iter().enumerate() {
            let filter = filter.to_string();
            let receipt = Some(Receipt::SubAck { packet_id, index });
            let durable_name = self.persistent.then(|| session_sub_name(qos, &filter));
            // Subscribing again to a filter replaces its subscription (MQTT 3.8.4); a durable
            // one of the same name is only detached, so what it kept is not lost.
            if let Some(old) = self.by_filter.remove(&filter) {
                let same = self
                    .subs
                    .get(&old)
                    .is_some_and(|s| s.durable.is_some() && s.durable == durable_name);
                self.forget_subscription(old);
                self.pending.push_back(Request::Unsubscribe {
                    subscription: old,
                    remove_durable: !same,
                    receipt: None,
                });
            }
            // A shared subscription reads its group's queue, and is not kept in the session.
            let shared = share_queue(&filter);
            let durable_name = durable_name.filter(|_| shared.is_none());
            let pattern = match shared.map_or_else(
                || filter_to_pattern(&filter).map_err(|e| e.to_string()),
                |q| {
                    q.map_err(|e| e.to_string()).and_then(|d| {
                        DestinationPattern::parse(d.as_str()).map_err(|e| e.to_string())
                    })
                },
            ) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(connection = %self.connection_id, error = %e, "MQTT subscription refused");
                    g.codes[index] = Some(reason::TOPIC_FILTER_INVALID);
                    self.pending.push_back(Request::Ping {
                        receipt: Receipt::SubAck { packet_id, index },
                    });
                    continue;
                }
            };
            let num = self.next_sub;
            self.next_sub += 1;
            self.subs.insert(
                num,
                Sub {
                    filter: filter.clone(),
                    qos,
                    durable: durable_name.clone(),
                    resumed: false,
                },
            );
            self.by_filter.insert(filter, num);
            g.subs[index] = Some(num);
            self.pending.push_back(Request::Subscribe {
                spec: SubscribeSpec {
                    subscription: num,
                    destination: pattern,
                    selector: String::new(),
                    prefetch: self.prefetch,
                    priority: 0,
                    durable_name,
                    no_local,
                },
                receipt,
            });
        }
        self.gathering.insert(packet_id, g);
        self.next_pending()
    }

    fn on_unsubscribe(
        &mut self,
        packet_id: NonZeroU16,
        filters: Vec<ByteString>,
    ) -> Inbound<Receipt> {
        if self.gathering.contains_key(&packet_id) {
            return self.fatal(
                reason::PROTOCOL_ERROR,
                format!("packet id {packet_id} is already in use by an unanswered SUBSCRIBE or UNSUBSCRIBE"),
            );
        }
        let mut g = Gathering {
            subscribe: false,
            codes: vec![None; filters.len()],
            subs: vec![None; filters.len()],
            retained: Vec::new(),
        };
        for (index, filter) in filters.iter().enumerate() {
            let receipt = Receipt::UnsubAck { packet_id, index };
            match self.by_filter.remove(&filter.to_string()) {
                Some(num) => {
                    self.forget_subscription(num);
                    // An UNSUBSCRIBE ends a persistent session's subscription too.
                    self.pending.push_back(Request::Unsubscribe {
                        subscription: num,
                        remove_durable: true,
                        receipt: Some(receipt),
                    });
                }
                None => {
                    g.codes[index] = Some(reason::NO_SUBSCRIPTION_EXISTED);
                    self.pending.push_back(Request::Ping { receipt });
                }
            }
        }
        self.gathering.insert(packet_id, g);
        self.next_pending()
    }

    /// Forgets a subscription the client ended: its deliveries in flight need no more acks.
    fn forget_subscription(&mut self, num: u64) {
        self.subs.remove(&num);
        self.inflight.retain(|_, o| o.subscription != num);
        let inflight = &self.inflight;
        self.keys.retain(|id, _| inflight.contains_key(id));
    }

    fn next_pending(&mut self) -> Inbound<Receipt> {
        match self.pending.pop_front() {
            Some(r) => Inbound::Request(r),
            None => Inbound::Alive,
        }
    }

    fn on_packet(&mut self, packet: Packet) -> Inbound<Receipt> {
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(id) => match self.inflight.remove(&id.get()).inspect(|_| {
                self.keys.remove(&id.get());
            }) {
                Some(o) if o.subscription != 0 => Inbound::Request(Request::Ack {
                    subscription: o.subscription,
                    up_to: 0,
                    tags: vec![o.tag],
                    transaction: None,
                    receipt: None,
                }),
                // A retained replay, or a delivery of a subscription since ended: nothing to
                // acknowledge.
                _ => Inbound::Alive,
            },
            Packet::PubRec(id) => match self.inflight.get(&id.get()).copied() {
                Some(o) if o.qos == QoS::ExactlyOnce && o.subscription != 0 => {
                    // The packet id stays taken until PUBCOMP; the message is acknowledged
                    // now, so it is delivered once.
                    self.keys.remove(&id.get());
                    self.inflight.insert(
                        id.get(),
                        Outgoing {
                            qos: QoS::AtMostOnce,
                            ..o
                        },
                    );
                    Inbound::Request(Request::Ack {
                        subscription: o.subscription,
                        up_to: 0,
                        tags: vec![o.tag],
                        transaction: None,
                        receipt: Some(Receipt::PubRel(id)),
                    })
                }
                other => {
                    if let Some(o) = other {
                        // A retained replay at QoS 2: released, nothing to acknowledge.
                        self.inflight.insert(
                            id.get(),
                            Outgoing {
                                qos: QoS::AtMostOnce,
                                ..o
                            },
                        );
                    }
                    Inbound::Request(Request::Ping {
                        receipt: Receipt::PubRel(id),
                    })
                }
            },
            Packet::PubRel(id) => {
                self.awaiting_release.remove(&id.get());
                Inbound::Request(Request::Ping {
                    receipt: Receipt::PubComp(id),
                })
            }
            Packet::PubComp(id) => {
                self.inflight.remove(&id.get());
                Inbound::Alive
            }
            Packet::Subscribe { packet_id, filters } => self.on_subscribe(packet_id, filters),
            Packet::Unsubscribe { packet_id, filters } => self.on_unsubscribe(packet_id, filters),
            Packet::Ping => Inbound::Request(Request::Ping {
                receipt: Receipt::PingResp,
            }),
            Packet::Disconnect { keep_will, expiry } => {
                if !keep_will {
                    self.will = None;
                }
                // A session that was to end with its connection may not be kept after all
                // (MQTT 5 3.14.2.2.2): only a kept one's interval changes.
                if let (Some(shared), Some(secs)) = (&self.expiry, expiry) {
                    if self.persistent {
                        shared.store(secs, Ordering::Relaxed);
                    }
                }
                Inbound::Request(Request::Disconnect { receipt: None })
            }
            Packet::Unexpected(what) => self.fatal(
                reason::PROTOCOL_ERROR,
                format!("{what} is not allowed from a connected client"),
            ),
        }
    }

    /// A free packet id for a delivery (`None` when 65,535 deliveries are in flight).
    fn take_packet_id(&mut self) -> Option<NonZeroU16> {
        for _ in 0..u16::MAX {
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            let id = self.next_packet_id;
            if !self.inflight.contains_key(&id) && !self.resumed_ids.values().any(|r| *r == id) {
                return NonZeroU16::new(self.next_packet_id);
            }
        }
        None
    }

    /// Writes one PUBLISH of `m` to subscription `sub`: a delivery (`tag`) or a retained
    /// replay (`None`, flagged retained). True when it needs no acknowledgement (QoS 0, or not
    /// written).
    fn write_publish(
        &mut self,
        sub: u64,
        tag: Option<u64>,
        redelivery_count: u32,
        m: &Message,
        out: &mut BytesMut,
    ) -> bool {
        let retain = tag.is_none();
        let Some((sub_qos, durable)) = self.subs.get(&sub).map(|s| (s.qos, s.durable.as_ref()))
        else {
            return true;
        };
        // A persistent session's delivery: known by its subscription and identity, so that a
        // later connection sends it again with the same packet id.
        let key = durable
            .filter(|_| tag.is_some() && m.persistent && sub_qos != QoS::AtMostOnce)
            .map(|name| (name.clone(), m.producer_id.clone(), m.sequence));
        // A non-persistent message was published at QoS 0: it is never delivered above it.
        let qos = if m.persistent {
            sub_qos
        } else {
            QoS::AtMostOnce
        };
        let topic = message_topic(m);
        let (qos, packet_id) = match qos {
            QoS::AtMostOnce => (qos, None),
            _ => match key
                .as_ref()
                .and_then(|k| self.resumed_ids.remove(k))
                .filter(|id| !self.inflight.contains_key(id))
                .and_then(NonZeroU16::new)
                .or_else(|| self.take_packet_id())
            {
                Some(id) => (qos, Some(id)),
                None => {
                    tracing::warn!(connection = %self.connection_id, subscription = sub, "65,535 MQTT deliveries are unacknowledged: this one goes out at QoS 0");
                    (QoS::AtMostOnce, None)
                }
            },
        };
        let properties = self.v5().then(|| {
            let now = crate::broker::now_ms();
            v5::PublishProperties {
                message_expiry_interval: (m.expires_at_ms != 0).then(|| {
                    let left = m.expires_at_ms.saturating_sub(now).div_ceil(1000).max(1);
                    std::num::NonZeroU32::new(left.min(u64::from(u32::MAX)) as u32)
                        .unwrap_or(std::num::NonZeroU32::MIN)
                }),
                content_type: (!m.content_type.is_empty())
                    .then(|| ByteString::from(m.content_type.as_str())),
                correlation_data: (!m.correlation_id.is_empty())
                    .then(|| Bytes::copy_from_slice(m.correlation_id.as_bytes())),
                response_topic: Destination::parse(&m.reply_to)
                    .ok()
                    .filter(|d| d.kind() == Kind::Topic)
                    .map(|d| ByteString::from(destination_to_topic(&d))),
                user_properties: m
                    .headers
                    .iter()
                    .filter(|(k, _)| k != RETAIN_HEADER && k != SHARE_TOPIC_HEADER)
                    .map(|(k, v)| (ByteString::from(k.as_str()), ByteString::from(v.as_str())))
                    .collect(),
                ..v5::PublishProperties::default()
            }
        });
        let publish = Publish {
            dup: redelivery_count > 0 && qos != QoS::AtMostOnce,
            retain,
            qos,
            topic: ByteString::from(topic),
            packet_id,
            payload: m.body.clone(),
            properties,
        };
        // MQTT 5: one larger than the client's maximum packet size is dropped (3.1.2.25).
        let written = if self.v5() {
            self.write_v5(v5::Packet::Publish(Box::new(publish)), out)
        } else {
            self.write_v3(v3::Packet::Publish(Box::new(publish)), out);
            true
        };
        match packet_id {
            Some(id) if written => {
                self.inflight.insert(
                    id.get(),
                    Outgoing {
                        subscription: if tag.is_some() { sub } else { 0 },
                        tag: tag.unwrap_or(0),
                        qos,
                    },
                );
                if let Some(key) = key {
                    self.keys.insert(id.get(), key);
                }
                false
            }
            _ => true,
        }
    }
}

impl Codec for Mqtt {
    type Receipt = Receipt;

    fn encode_delivery(&mut self, d: &Delivery, out: &mut BytesMut) -> bool {
        self.write_publish(
            d.subscription,
            Some(d.tag),
            d.redelivery_count,
            &d.message,
            out,
        )
    }

    fn replays_retained(&self) -> bool {
        true
    }

    fn encode_retained(
        &mut self,
        subscription: u64,
        retained: &[Arc<Message>],
        out: &mut BytesMut,
    ) {
        // A resumed session's subscriptions get no retained replay: that follows a SUBSCRIBE.
        if self.subs.get(&subscription).is_some_and(|s| s.resumed) {
            return;
        }
        // Behind the SUBACK when it is still being gathered.
        let gathering = self
            .gathering
            .values_mut()
            .find(|g| g.subs.contains(&Some(subscription)));
        match gathering {
            Some(g) => g
                .retained
                .extend(retained.iter().map(|m| (subscription, m.clone()))),
            None => {
                for m in retained {
                    self.write_publish(subscription, None, 0, m, out);
                }
            }
        }
    }

    fn farewell(&mut self) -> Option<Request<Receipt>> {
        if let Some((sessions, client_id)) = self.keeper.take() {
            let kept = self.inflight_to_keep();
            sessions.keep(&client_id, kept);
        }
        let mut will = self.will.take()?;
        will.draft.sequence = self.next_sequence;
        self.next_sequence += 1;
        Some(Request::Send(will))
    }

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Inbound<Receipt>, (ErrorCode, String)> {
        if let Some(r) = self.pending.pop_front() {
            return Ok(Inbound::Request(r));
        }
        match self.wire.decode(buf) {
            Ok(Some(packet)) => Ok(self.on_packet(packet)),
            Ok(None) => Ok(Inbound::NeedMore),
            Err(e) => {
                let (reason, code) = decode_error(&e);
                self.refusal_reason = Some(reason);
                Err((code, format!("malformed MQTT packet: {e}")))
            }
        }
    }

    fn encode_receipt(&mut self, receipt: &Receipt, out: &mut BytesMut) {
        match receipt {
            Receipt::SubAck { packet_id, index } => {
                let granted = self
                    .gathering
                    .get(packet_id)
                    .and_then(|g| g.subs.get(*index).copied().flatten())
                    .and_then(|num| self.subs.get(&num))
                    .map_or(reason::UNSPECIFIED, |s| u8::from(s.qos));
                self.gather(*packet_id, *index, granted, out);
            }
            Receipt::UnsubAck { packet_id, index } => self.gather(*packet_id, *index, 0, out),
            Receipt::Resumed(_) => {}
            other => self.write_ack(other, 0, None, out),
        }
    }

    fn encode_error(
        &mut self,
        code: ErrorCode,
        message: &str,
        receipt: Option<&Receipt>,
        fatal: bool,
        out: &mut BytesMut,
    ) -> bool {
        let reason = self
            .refusal_reason
            .take()
            .unwrap_or_else(|| reason_for(code));
        tracing::debug!(connection = %self.connection_id, ?code, message, fatal, "MQTT request refused");
        // Whether the refusal could be told in the answer the request expects.
        let told = match receipt {
            Some(Receipt::SubAck { packet_id, index }) => {
                if let Some(num) = self
                    .gathering
                    .get(packet_id)
                    .and_then(|g| g.subs.get(*index).copied().flatten())
                {
                    if let Some(sub) = self.subs.remove(&num) {
                        self.by_filter.remove(&sub.filter);
                    }
                }
                let code = match (self.v5(), reason) {
                    (true, reason::NOT_AUTHORIZED | reason::QUOTA_EXCEEDED) => reason,
                    (true, _) => reason::IMPLEMENTATION_SPECIFIC,
                    (false, _) => reason::UNSPECIFIED,
                };
                self.gather(*packet_id, *index, code, out);
                true
            }
            Some(Receipt::UnsubAck { packet_id, index }) => {
                self.gather(*packet_id, *index, reason::UNSPECIFIED, out);
                true
            }
            // A kept subscription that cannot be resumed (its read right was revoked, say) is
            // dropped from the session; the client may subscribe again.
            Some(Receipt::Resumed(num)) => {
                if let Some(sub) = self.subs.remove(num) {
                    tracing::info!(connection = %self.connection_id, filter = %sub.filter, message, "a persistent session's subscription could not be resumed");
                    self.by_filter.remove(&sub.filter);
                }
                true
            }
            Some(r @ (Receipt::PubAck(id) | Receipt::PubRec(id))) => {
                self.awaiting_release.remove(&id.get());
                if self.v5() {
                    let code = match reason {
                        reason::NOT_AUTHORIZED
                        | reason::QUOTA_EXCEEDED
                        | reason::TOPIC_NAME_INVALID
                        | reason::UNSPECIFIED => reason,
                        _ => reason::IMPLEMENTATION_SPECIFIC,
                    };
                    self.write_ack(r, code, Some(message), out);
                }
                // MQTT 3 has no way to refuse a publish but closing (MQTT 3.3.5).
                self.v5()
            }
            // The client's side of these flows is done whatever happened here.
            Some(r @ (Receipt::PubRel(_) | Receipt::PubComp(_) | Receipt::PingResp)) => {
                self.write_ack(r, 0, None, out);
                true
            }
            // An acknowledgement of a delivery that is gone already: no harm, nothing to say.
            None => matches!(code, ErrorCode::Invalid | ErrorCode::NotFound) && !fatal,
        };
        let closes = fatal || !told;
        if closes && self.v5() {
            self.write_v5(
                v5::Packet::Disconnect(v5::Disconnect {
                    reason_code: v5::DisconnectReasonCode::try_from(reason)
                        .unwrap_or(v5::DisconnectReasonCode::UnspecifiedError),
                    session_expiry_interval_secs: None,
                    server_reference: None,
                    reason_string: Some(ByteString::from(message)),
                    user_properties: Vec::new(),
                }),
                out,
            );
        }
        closes
    }

    fn encode_heartbeat(&mut self, _out: &mut BytesMut) {
        // An MQTT server never pings: the client keeps the connection alive (PINGREQ), and
        // the connection is built without an outgoing heartbeat interval.
    }

    fn resend_advice(&self) -> &'static str {
        "publish it again (it may then arrive twice)"
    }
}

/// How the handshake ended when it did not connect.
async fn close(pump: &mut Pump) -> std::io::Result<Option<Handshake>> {
    let _ = tokio::time::timeout(Duration::from_secs(2), pump.flush_and_close()).await;
    Ok(None)
}

/// A refused CONNECT: the CONNACK return code (MQTT 3) or reason code (MQTT 5).
#[derive(Debug, Clone, Copy)]
enum ConnRefusal {
    Version,
    Identifier,
    Credentials,
    /// Logged in, but not allowed this (another user's client id).
    NotAuthorized,
    Unavailable,
    Malformed(u8),
}

fn write_connack_refusal(wire: &mut Wire, refusal: ConnRefusal, out: &mut BytesMut) {
    match wire {
        Wire::V3(c) => {
            let return_code = match refusal {
                ConnRefusal::Version => v3::ConnectAckReason::UnacceptableProtocolVersion,
                ConnRefusal::Identifier => v3::ConnectAckReason::IdentifierRejected,
                ConnRefusal::Credentials => v3::ConnectAckReason::BadUserNameOrPassword,
                ConnRefusal::NotAuthorized => v3::ConnectAckReason::NotAuthorized,
                ConnRefusal::Unavailable => v3::ConnectAckReason::ServiceUnavailable,
                // MQTT 3 answers a malformed CONNECT by closing.
                ConnRefusal::Malformed(_) => return,
            };
            let _ = c.encode(
                v3::Packet::ConnectAck(v3::ConnectAck {
                    return_code,
                    session_present: false,
                }),
                out,
            );
        }
        Wire::V5(c) => {
            let reason_code = match refusal {
                ConnRefusal::Version => v5::ConnectAckReason::UnsupportedProtocolVersion,
                ConnRefusal::Identifier => v5::ConnectAckReason::ClientIdentifierNotValid,
                ConnRefusal::Credentials => v5::ConnectAckReason::BadUserNameOrPassword,
                ConnRefusal::NotAuthorized => v5::ConnectAckReason::NotAuthorized,
                ConnRefusal::Unavailable => v5::ConnectAckReason::ServerBusy,
                ConnRefusal::Malformed(r) => v5::ConnectAckReason::try_from(r)
                    .unwrap_or(v5::ConnectAckReason::MalformedPacket),
            };
            let _ = c.encode(
                v5::Packet::ConnectAck(Box::new(v5::ConnectAck {
                    reason_code,
                    ..v5::ConnectAck::default()
                })),
                out,
            );
        }
    }
}

/// Waits for the first bytes to show the protocol version; `None` when the client closed,
/// said nothing in time or sent something that is not an MQTT CONNECT (closed then).
async fn detect_version(
    pump: &mut Pump,
    ctx: &ConnCtx,
    shutdown: &CancellationToken,
) -> std::io::Result<Option<Wire>> {
    let deadline = TokioInstant::now() + ctx.settings.connect_timeout;
    // Before the login, a packet (the CONNECT) may be at most what any protocol may send
    // before logging in; the listener's own limit applies once logged in.
    let max = u32::try_from(super::handshake_frame_limit(ctx)).unwrap_or(u32::MAX);
    loop {
        match VersionCodec.decode(&mut pump.rbuf) {
            Ok(Some(ProtocolVersion::MQTT3)) => return Ok(Some(Wire::V3(v3::Codec::new(max)))),
            Ok(Some(ProtocolVersion::MQTT5)) => return Ok(Some(Wire::V5(v5::Codec::new(max, 0)))),
            Ok(None) => {}
            Err(DecodeError::InvalidProtocol) if unsupported_level(&pump.rbuf) => {
                // A known protocol name at a level we do not speak: MQTT 3.1.2.2 says to
                // answer with return code 1 and close.
                ctx.metrics.bad_frame();
                let mut wire = Wire::V3(v3::Codec::new(max));
                write_connack_refusal(&mut wire, ConnRefusal::Version, &mut pump.wbuf);
                return close(pump).await.map(|_| None);
            }
            Err(e) => {
                ctx.metrics.bad_frame();
                tracing::debug!(error = %e, "not an MQTT CONNECT");
                return close(pump).await.map(|_| None);
            }
        }
        tokio::select! {
            ev = pump.next_event(true, 0, |_| std::task::Poll::Pending) => match ev? {
                IoEvent::Closed => return Ok(None),
                _ => continue,
            },
            _ = sleep_until(deadline) => {
                ctx.metrics.refused("connect_timeout");
                return close(pump).await.map(|_| None);
            }
            _ = shutdown.cancelled() => return close(pump).await.map(|_| None),
        }
    }
}

/// True when the buffer starts with a CONNECT naming MQTT or MQIsdp at another level.
fn unsupported_level(buf: &[u8]) -> bool {
    let Some(start) = (1..5).find(|i| buf.get(*i).is_some_and(|b| b & 0x80 == 0)) else {
        return false;
    };
    let rest = &buf[start + 1..];
    buf.first() == Some(&0x10)
        && (rest.starts_with(b"\x00\x04MQTT") || rest.starts_with(b"\x00\x06MQIsdp"))
}

/// Writes a refusal to a connection over the listener's limit and closes it: the CONNECT is
/// read first, so the refusal is a CONNACK of the client's own version.
pub(crate) async fn refuse_over_limit(stream: Stream, ctx: Arc<ConnCtx>) {
    let mut pump = Pump::new(stream);
    let never = CancellationToken::new();
    if let Ok(Some(mut wire)) = detect_version(&mut pump, &ctx, &never).await {
        write_connack_refusal(&mut wire, ConnRefusal::Unavailable, &mut pump.wbuf);
        let _ = close(&mut pump).await;
    }
}

/// Serves one MQTT session over any byte stream (TCP, TLS — or a WebSocket adapted to a
/// stream): the handshake, then the connection until it ends.
pub(crate) async fn serve(
    stream: Stream,
    peer: SocketAddr,
    ctx: Arc<ConnCtx>,
    shutdown: CancellationToken,
    _permit: Permit,
) {
    ctx.metrics.connection_opened();
    let mut pump = Pump::new(stream);
    match handshake(&mut pump, peer, &ctx, &shutdown).await {
        Ok(Some((codec, session, principal, keep_alive, session_end))) => {
            let session_id = session.id();
            // Counted in the group's load; MQTT takes no cluster pushes.
            let registration =
                ctx.cluster
                    .register(session.id(), &crate::cluster::ClientHello::default(), None);
            let silence = keep_alive.map(|k| k.mul_f64(KEEP_ALIVE_GRACE));
            let mut connection =
                Connection::new(codec, pump, session, ctx.clone(), principal, None, silence)
                    .with_registration(registration);
            let reason = connection.run(&shutdown).await;
            tracing::debug!(%peer, reason, "mqtt connection closed");
            if let Some(end) = session_end {
                end.schedule(&ctx.broker, session_id, &shutdown);
            }
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(%peer, error = %e, "mqtt connection failed before connecting"),
    }
    ctx.metrics.connection_closed();
}

type Handshake = (
    Mqtt,
    Session,
    Principal,
    Option<Duration>,
    Option<SessionEnd>,
);

/// What a CONNECT says, whatever the version.
struct Connect {
    clean: bool,
    /// How long the session outlives the connection (MQTT 3: forever unless clean).
    session_expiry: u32,
    keep_alive: u16,
    client_id: String,
    username: Option<String>,
    password: Option<Bytes>,
    /// MQTT 5: how many QoS 1/2 deliveries the client takes at once.
    receive_max: Option<u16>,
    /// MQTT 5: the largest packet the client takes.
    max_packet_size: Option<u32>,
    /// The will, as the PUBLISH it becomes.
    will: Option<Publish>,
}

/// The CONNECT of an MQTT 3 client; `None` for any other packet.
fn v3_connect(p: v3::Packet) -> Option<Connect> {
    let v3::Packet::Connect(c) = p else {
        return None;
    };
    Some(Connect {
        clean: c.clean_session,
        session_expiry: if c.clean_session { 0 } else { NEVER_EXPIRES },
        keep_alive: c.keep_alive,
        client_id: c.client_id.to_string(),
        username: c.username.map(|u| u.to_string()),
        password: c.password,
        receive_max: None,
        max_packet_size: None,
        will: c.last_will.map(|w| Publish {
            dup: false,
            retain: w.retain,
            qos: w.qos,
            topic: w.topic,
            packet_id: None,
            payload: w.message,
            properties: None,
        }),
    })
}

/// The CONNECT of an MQTT 5 client; `None` for any other packet.
fn v5_connect(p: v5::Packet) -> Option<Connect> {
    let v5::Packet::Connect(c) = p else {
        return None;
    };
    Some(Connect {
        clean: c.clean_start,
        session_expiry: c.session_expiry_interval_secs,
        keep_alive: c.keep_alive,
        client_id: c.client_id.to_string(),
        username: c.username.map(|u| u.to_string()),
        password: c.password,
        receive_max: c.receive_max.map(NonZeroU16::get),
        max_packet_size: c.max_packet_size.map(|m| m.get()),
        will: c.last_will.map(|w| Publish {
            dup: false,
            retain: w.retain,
            qos: w.qos,
            topic: w.topic,
            packet_id: None,
            payload: w.message,
            properties: Some(v5::PublishProperties {
                correlation_data: w.correlation_data,
                message_expiry_interval: w.message_expiry_interval,
                content_type: w.content_type,
                user_properties: w.user_properties,
                is_utf8_payload: w.is_utf8_payload.unwrap_or(false),
                response_topic: w.response_topic,
                ..v5::PublishProperties::default()
            }),
        }),
    })
}

/// What a connection makes of a client's bytes, with no socket (the entry of the MQTT fuzz
/// target, `fuzzing::mqtt`): the version the first bytes name, the CONNECT at
/// `handshake_max`, then packets at `max`, each through the parsers the connection uses.
/// `Ok(packets read)` when the bytes run out; `Err` with the MQTT 5 reason code and the
/// broker's error code when the connection would be closed for what it read.
pub(crate) fn read_client_bytes(
    buf: &mut BytesMut,
    handshake_max: u32,
    max: u32,
) -> Result<usize, (u8, ErrorCode)> {
    let refused = |e: &DecodeError| decode_error(e);
    let mut wire = match VersionCodec.decode(buf) {
        Ok(Some(ProtocolVersion::MQTT3)) => Wire::V3(v3::Codec::new(handshake_max)),
        Ok(Some(ProtocolVersion::MQTT5)) => Wire::V5(v5::Codec::new(handshake_max, 0)),
        Ok(None) => return Ok(0),
        Err(DecodeError::InvalidProtocol) if unsupported_level(buf) => {
            return Err((reason::PROTOCOL_ERROR, ErrorCode::BadFrame))
        }
        Err(e) => return Err(refused(&e)),
    };
    let connect = match &mut wire {
        Wire::V3(c) => c.decode(buf).map(|p| p.map(|(p, _)| v3_connect(p))),
        Wire::V5(c) => c.decode(buf).map(|p| p.map(|(p, _)| v5_connect(p))),
    };
    match connect {
        Ok(Some(Some(_))) => {}
        Ok(Some(None)) => return Err((reason::PROTOCOL_ERROR, ErrorCode::BadFrame)),
        Ok(None) => return Ok(0),
        Err(e) => return Err(refused(&e)),
    }
    match &mut wire {
        Wire::V3(c) => c.set_max_size(max),
        Wire::V5(c) => c.set_max_inbound_size(max),
    }
    let mut read = 1;
    loop {
        match wire.decode(buf) {
            Ok(Some(Packet::Unexpected(_))) => {
                return Err((reason::PROTOCOL_ERROR, ErrorCode::BadFrame))
            }
            Ok(Some(_)) => read += 1,
            Ok(None) => return Ok(read),
            Err(e) => return Err(refused(&e)),
        }
    }
}

async fn handshake(
    pump: &mut Pump,
    peer: SocketAddr,
    ctx: &ConnCtx,
    shutdown: &CancellationToken,
) -> std::io::Result<Option<Handshake>> {
    let Some(mut wire) = detect_version(pump, ctx, shutdown).await? else {
        return Ok(None);
    };
    let deadline = TokioInstant::now() + ctx.settings.connect_timeout;
    let connect = loop {
        let decoded = match &mut wire {
            Wire::V3(c) => c
                .decode(&mut pump.rbuf)
                .map(|p| p.map(|(p, _)| v3_connect(p))),
            Wire::V5(c) => c
                .decode(&mut pump.rbuf)
                .map(|p| p.map(|(p, _)| v5_connect(p))),
        };
        match decoded {
            Ok(Some(Some(connect))) => break connect,
            Ok(Some(None)) => {
                // Cannot happen: the version codec saw a CONNECT header.
                ctx.metrics.bad_frame();
                return close(pump).await;
            }
            Ok(None) => {}
            Err(e) => {
                ctx.metrics.bad_frame();
                tracing::debug!(error = %e, "malformed MQTT CONNECT");
                let (reason, _) = decode_error(&e);
                let refusal = match e {
                    DecodeError::UnsupportedProtocolLevel => ConnRefusal::Version,
                    DecodeError::InvalidClientId => ConnRefusal::Identifier,
                    _ => ConnRefusal::Malformed(reason),
                };
                write_connack_refusal(&mut wire, refusal, &mut pump.wbuf);
                return close(pump).await;
            }
        }
        tokio::select! {
            ev = pump.next_event(true, 0, |_| std::task::Poll::Pending) => match ev? {
                IoEvent::Closed => return Ok(None),
                _ => continue,
            },
            _ = sleep_until(deadline) => {
                ctx.metrics.refused("connect_timeout");
                return close(pump).await;
            }
            _ = shutdown.cancelled() => {
                write_connack_refusal(&mut wire, ConnRefusal::Unavailable, &mut pump.wbuf);
                return close(pump).await;
            }
        }
    };
    let v5 = matches!(wire, Wire::V5(_));
    // A password that is not UTF-8 cannot match any user's.
    let password = connect
        .password
        .as_ref()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let principal = match ctx.login(peer, connect.username.clone(), password).await {
        Ok(p) => p,
        Err(message) => {
            tracing::debug!(user = ?connect.username, message, "MQTT login refused");
            write_connack_refusal(&mut wire, ConnRefusal::Credentials, &mut pump.wbuf);
            return close(pump).await;
        }
    };
    if let Some(Err(e)) = connect
        .will
        .as_ref()
        .map(|w| topic_to_destination(&w.topic))
    {
        ctx.metrics.bad_frame();
        tracing::debug!(error = %e, "MQTT will refused");
        let refusal = ConnRefusal::Malformed(reason::TOPIC_NAME_INVALID);
        write_connack_refusal(&mut wire, refusal, &mut pump.wbuf);
        return close(pump).await;
    }
    // MQTT 3.1.1 assigns an id to a clean client that gave none, and refuses an unclean one.
    let assigned = connect.client_id.is_empty();
    if assigned && !connect.clean && !v5 {
        write_connack_refusal(&mut wire, ConnRefusal::Identifier, &mut pump.wbuf);
        return close(pump).await;
    }
    let client_id = (!assigned).then(|| connect.client_id.clone());
    // A new connection with a client id in use takes it over (MQTT 3.1.4-3), if it is the
    // same user's: another user's client id is refused as not authorized.
    let session = match super::native::open_session(ctx, client_id.clone(), true, &principal).await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "MQTT session refused");
            let refusal = match e {
                BrokerError::ClientIdInUse(_) => ConnRefusal::Identifier,
                BrokerError::ClientIdOwned(_) => ConnRefusal::NotAuthorized,
                _ => ConnRefusal::Unavailable,
            };
            write_connack_refusal(&mut wire, refusal, &mut pump.wbuf);
            return close(pump).await;
        }
    };
    // A session is kept for a client with an id of its own: a clean start discards what an
    // earlier one kept, otherwise the client resumes it. The session lives in durable
    // subscriptions, journaled and replicated as any, so it survives restarts and follows the
    // client to whichever member of the group is master.
    let kept = match &client_id {
        Some(cid) if connect.clean => {
            ctx.broker.remove_idle_durables(cid, SESSION_PREFIX, None);
            Vec::new()
        }
        Some(cid) => ctx.broker.durables_of(cid, SESSION_PREFIX),
        None => Vec::new(),
    };
    let session_present = !kept.is_empty();
    let inflight = match &client_id {
        Some(cid) if session_present => ctx.mqtt_sessions.take(cid),
        Some(cid) => {
            ctx.mqtt_sessions.forget(cid);
            KeptInflight::default()
        }
        None => KeptInflight::default(),
    };
    let max = u32::try_from(ctx.settings.max_frame_size).unwrap_or(u32::MAX);
    match &mut wire {
        Wire::V3(c) => {
            c.set_max_size(max);
            let _ = c.encode(
                v3::Packet::ConnectAck(v3::ConnectAck {
                    return_code: v3::ConnectAckReason::ConnectionAccepted,
                    session_present,
                }),
                &mut pump.wbuf,
            );
        }
        Wire::V5(c) => {
            c.set_max_inbound_size(max);
            if let Some(max) = connect.max_packet_size {
                c.set_max_outbound_size(max);
            }
            let _ = c.encode(
                v5::Packet::ConnectAck(Box::new(v5::ConnectAck {
                    session_present,
                    max_packet_size: u32::try_from(ctx.settings.max_frame_size).ok(),
                    assigned_client_id: assigned
                        .then(|| ByteString::from(session.connection_id().to_string())),
                    topic_alias_max: 0,
                    retain_available: true,
                    wildcard_subscription_available: true,
                    subscription_identifiers_available: false,
                    shared_subscription_available: true,
                    ..v5::ConnectAck::default()
                })),
                &mut pump.wbuf,
            );
        }
    }
    let keep_alive =
        (connect.keep_alive > 0).then(|| Duration::from_secs(u64::from(connect.keep_alive)));
    let prefetch = connect.receive_max.map_or(0, u32::from);
    let mut codec = Mqtt::new(wire, session.connection_id(), prefetch);
    if let Some(will) = connect.will {
        codec.set_will(will);
    }
    let session_end = client_id.map(|client_id| {
        let expiry = Arc::new(AtomicU32::new(connect.session_expiry));
        codec.persistent = connect.session_expiry > 0;
        codec.expiry = Some(expiry.clone());
        if codec.persistent {
            codec.keeper = Some((ctx.mqtt_sessions.clone(), client_id.clone()));
        }
        SessionEnd { client_id, expiry }
    });
    codec.resume_inflight(inflight);
    codec.resume(kept);
    Ok(Some((codec, session, principal, keep_alive, session_end)))
}

#[cfg(test)]
#[path = "mqtt_tests.rs"]
mod tests;
