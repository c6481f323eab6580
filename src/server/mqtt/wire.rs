//! The version-specific packet parser under one connection: rmqtt-codec's MQTT 3.1/3.1.1 or
//! MQTT 5 codec, whose client packets become one version-free [`Packet`], and the MQTT 5
//! reason codes the connection answers with (for a broker error, for a decode error). Owns:
//! the packet translation and the reason-code tables. Must not touch: the socket, the broker,
//! the connection's state. Invariant: a packet a client may not send is `Unexpected`, never
//! dropped silently.

use std::num::NonZeroU16;

use bytes::BytesMut;
use bytestring::ByteString;
use rmqtt_codec::error::DecodeError;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v5::ToReasonCode;
use rmqtt_codec::{v3, v5};
use tokio_util::codec::Decoder;

use crate::wire::proto::ErrorCode;

/// MQTT 5 reason codes used here (MQTT 5 §2.4).
pub(super) mod reason {
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
pub(super) fn reason_for(code: ErrorCode) -> u8 {
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

/// The MQTT 5 SUBSCRIBE user property whose value is a JMS selector for every filter of the
/// packet (MQTT 5 has no selector of its own; user properties are per packet, not per filter).
pub(super) const SELECTOR_PROPERTY: &str = "selector";

/// The version-specific packet parser and writer.
pub(super) enum Wire {
    V3(v3::Codec),
    V5(v5::Codec),
}

/// One inbound packet, whatever the version.
#[derive(Debug)]
pub(super) enum Packet {
    Publish(Box<Publish>),
    PubAck(NonZeroU16),
    PubRec(NonZeroU16),
    PubRel(NonZeroU16),
    PubComp(NonZeroU16),
    /// `selectors`: the values of the MQTT 5 SUBSCRIBE's user properties named `selector`
    /// (none in MQTT 3, which has no properties).
    Subscribe {
        packet_id: NonZeroU16,
        filters: Vec<(ByteString, QoS, bool)>,
        selectors: Vec<ByteString>,
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
    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
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
                        selectors: Vec::new(),
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
                        selectors: s
                            .user_properties
                            .into_iter()
                            .filter(|(k, _)| k == SELECTOR_PROPERTY)
                            .map(|(_, v)| v)
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
pub(super) fn decode_error(e: &DecodeError) -> (u8, ErrorCode) {
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
