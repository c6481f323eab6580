//! The native wire protocol: prost frames behind a big-endian u32 length prefix.
//!
//! Owns: the frame types generated from `proto/meshmq.proto`, the length-prefixed framing, and
//! allocation-free encoders for the two hot frames (`Send` from clients, `Deliver` from
//! brokers) that write straight from borrowed data. Must not touch: sockets, broker state.
//! Invariants: a frame's length is checked against the limit before its body is buffered
//! (`decode` answers `TooLarge` from the 4-byte header alone); `decode` never panics on any
//! input; `encode_send`/`encode_deliver` produce bytes that prost decodes into exactly the
//! frame they describe (tested below).
//!
//! The broker's inbound hot path reads a client's `Send` in place instead (`in_place.rs`,
//! [`read_send`]): it finds a frame only where `decode` would take the same `Send` off the
//! same bytes, and leaves everything else to `decode`.

use std::mem::MaybeUninit;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{encoded_len_varint, key_len, WireType};
use prost::Message as _;

mod in_place;
pub use in_place::{read_send, SendRef};

pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/meshmq.wire.rs"));
}

pub use proto::frame::Body;
pub use proto::Frame;

/// The protocol version this build speaks (sent in `Connect`/`Connected`).
pub const PROTOCOL_VERSION: u32 = 1;
/// Bytes of the length prefix in front of every frame.
pub const LENGTH_PREFIX: usize = 4;
/// The default `max_frame_size`: 100 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 100 * 1024 * 1024;

/// What `decode` found at the front of the buffer.
// Not boxed: a frame is moved once, and boxing would cost an allocation per frame.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// One whole frame, removed from the buffer.
    Frame(Frame),
    /// The buffer holds only part of a frame; at least this many more bytes are needed.
    NeedMore(usize),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(#[from] prost::DecodeError),
}

/// Takes one frame off the front of `buf` (zero-copy: `bytes` fields of the frame share
/// `buf`'s allocation).
pub fn decode(buf: &mut BytesMut, max_frame_size: usize) -> Result<Decoded, DecodeError> {
    if buf.len() < LENGTH_PREFIX {
        return Ok(Decoded::NeedMore(LENGTH_PREFIX - buf.len()));
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max_frame_size {
        return Err(DecodeError::TooLarge {
            len,
            max: max_frame_size,
        });
    }
    let total = LENGTH_PREFIX + len;
    if buf.len() < total {
        return Ok(Decoded::NeedMore(total - buf.len()));
    }
    let mut frame_bytes: Bytes = buf.split_to(total).freeze();
    frame_bytes.advance(LENGTH_PREFIX);
    Ok(Decoded::Frame(Frame::decode(frame_bytes)?))
}

/// Appends one length-prefixed frame to `dst`.
pub fn encode(frame: &Frame, dst: &mut BytesMut) {
    let len = frame.encoded_len();
    dst.reserve(LENGTH_PREFIX + len);
    dst.put_u32(len as u32);
    frame
        .encode(dst)
        .expect("BytesMut grows, so encoding cannot run out of room");
}

/// Wraps a body into a `Frame`.
pub fn frame(body: Body) -> Frame {
    Frame { body: Some(body) }
}

/// The frame's kind, for messages ("Send", "an empty frame", ...).
pub fn frame_name(f: &Frame) -> &'static str {
    match &f.body {
        None => "an empty frame",
        Some(Body::Connect(_)) => "Connect",
        Some(Body::Connected(_)) => "Connected",
        Some(Body::Send(_)) => "Send",
        Some(Body::Subscribe(_)) => "Subscribe",
        Some(Body::Deliver(_)) => "Deliver",
        Some(Body::Ack(_)) => "Ack",
        Some(Body::Nack(_)) => "Nack",
        Some(Body::Unsubscribe(_)) => "Unsubscribe",
        Some(Body::Receipt(_)) => "Receipt",
        Some(Body::Error(_)) => "Error",
        Some(Body::Control(_)) => "ConnectionControl",
        Some(Body::Heartbeat(_)) => "Heartbeat",
        Some(Body::Disconnect(_)) => "Disconnect",
        Some(Body::Transaction(_)) => "Transaction",
        Some(Body::BrokerInfo(_)) => "BrokerInfo",
        Some(Body::DemandAdd(_)) => "DemandAdd",
        Some(Body::DemandRemove(_)) => "DemandRemove",
        Some(Body::Forward(_)) => "Forward",
        Some(Body::ForwardAck(_)) => "ForwardAck",
    }
}

// ---- allocation-free encoders for the hot frames -------------------------------------------

/// The message fields shared by `Send` and `Deliver`, borrowed from wherever they live.
#[derive(Clone, Copy, Debug, Default)]
pub struct MessageRef<'a> {
    pub destination: &'a str,
    pub body: &'a [u8],
    pub headers: &'a [(String, String)],
    pub persistent: bool,
    pub priority: u32,
    pub expires_at_ms: u64,
    pub producer_id: &'a [u8],
    pub sequence: u64,
    pub reply_to: &'a str,
    pub correlation_id: &'a str,
    pub content_type: &'a str,
    pub timestamp_ms: u64,
}

fn len_delimited_len(tag: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(len as u64) + len
    }
}

fn varint_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(v)
    }
}

/// The room reserved in a buffer for one frame whose length was summed first: each write is a
/// store and a step forward, with none of `BufMut`'s per-write capacity checks (prost's
/// `encode_varint` makes one per byte). Indexing stays checked: a wrong sum panics here (an
/// encoder bug, whatever the message), never writes past the room.
struct Room<'a> {
    spare: &'a mut [MaybeUninit<u8>],
    at: usize,
}

impl Room<'_> {
    /// Writes `len` bytes at the end of `dst` with `write`, which must fill them exactly.
    fn write(dst: &mut BytesMut, len: usize, write: impl FnOnce(&mut Room<'_>)) {
        dst.reserve(len);
        let mut room = Room {
            spare: &mut dst.spare_capacity_mut()[..len],
            at: 0,
        };
        write(&mut room);
        assert_eq!(
            room.at, len,
            "an encoder wrote other than the length it summed"
        );
        // SAFETY: the `len` bytes past `dst.len()` are initialized: `room` wrote them all,
        // front to back from 0 to `len` (checked just above), and they lie within the capacity
        // reserved above.
        unsafe { dst.set_len(dst.len() + len) };
    }

    fn byte(&mut self, b: u8) {
        self.spare[self.at].write(b);
        self.at += 1;
    }

    fn bytes(&mut self, b: &[u8]) {
        let to = &mut self.spare[self.at..self.at + b.len()];
        // SAFETY: `to` is exactly `b.len()` bytes of our own room (the indexing above checked
        // it), and a slice of the room cannot overlap the borrowed `b`. (`write_copy_of_slice`
        // says the same safely, but needs Rust 1.93; the crate supports 1.85.)
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), to.as_mut_ptr().cast::<u8>(), b.len()) };
        self.at += b.len();
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.byte(v as u8 | 0x80);
            v >>= 7;
        }
        self.byte(v as u8);
    }

    fn key(&mut self, tag: u32, wire_type: WireType) {
        self.varint(u64::from(tag << 3 | wire_type as u32));
    }

    fn len_delimited(&mut self, tag: u32, value: &[u8]) {
        if !value.is_empty() {
            self.key(tag, WireType::LengthDelimited);
            self.varint(value.len() as u64);
            self.bytes(value);
        }
    }

    /// A repeated string's element: written even when empty (proto3 keeps list elements).
    fn element(&mut self, tag: u32, value: &str) {
        self.key(tag, WireType::LengthDelimited);
        self.varint(value.len() as u64);
        self.bytes(value.as_bytes());
    }

    fn varint_field(&mut self, tag: u32, v: u64) {
        if v != 0 {
            self.key(tag, WireType::Varint);
            self.varint(v);
        }
    }

    fn headers(&mut self, tag: u32, headers: &[(String, String)]) {
        for (k, v) in headers {
            self.key(tag, WireType::LengthDelimited);
            self.varint(header_len(k, v) as u64);
            self.len_delimited(1, k.as_bytes());
            self.len_delimited(2, v.as_bytes());
        }
    }

    /// The outer frame header: length prefix, the `Frame` oneof's key, the inner length.
    fn frame_header(&mut self, oneof_tag: u32, inner_len: usize) {
        self.bytes(&(frame_len(oneof_tag, inner_len) as u32).to_be_bytes());
        self.key(oneof_tag, WireType::LengthDelimited);
        self.varint(inner_len as u64);
    }
}

fn header_len(key: &str, value: &str) -> usize {
    len_delimited_len(1, key.len()) + len_delimited_len(2, value.len())
}

fn headers_len(tag: u32, headers: &[(String, String)]) -> usize {
    headers
        .iter()
        .map(|(k, v)| {
            let inner = header_len(k, v);
            key_len(tag) + encoded_len_varint(inner as u64) + inner
        })
        .sum()
}

/// Length of a frame (after its prefix) whose oneof field `oneof_tag` holds `inner_len` bytes.
fn frame_len(oneof_tag: u32, inner_len: usize) -> usize {
    key_len(oneof_tag) + encoded_len_varint(inner_len as u64) + inner_len
}

/// The fields of a message as `Send` and `Deliver` both carry them (see the .proto): in the
/// same order, numbered on from `first` (1 in a `Send`; 3 in a `Deliver`, after its
/// subscription and tag). The one field that differs, between the sequence and the reply-to,
/// is `between`: a `Send`'s receipt, a `Deliver`'s redelivery count. Encoded in field order, as
/// prost does (the tests compare bytes with prost's).
#[derive(Clone, Copy)]
struct MessageFields {
    first: u32,
}

impl MessageFields {
    const SEND: MessageFields = MessageFields { first: 1 };
    const DELIVER: MessageFields = MessageFields { first: 3 };

    /// The field number of the `n`th field (0 = destination, ..., 12 = timestamp).
    fn tag(self, n: u32) -> u32 {
        self.first + n
    }

    /// Length of the fields for `m`.
    #[inline]
    fn len(self, m: &MessageRef<'_>, between: u64) -> usize {
        let t = |n| self.tag(n);
        len_delimited_len(t(0), m.destination.len())
            + len_delimited_len(t(1), m.body.len())
            + headers_len(t(2), m.headers)
            + varint_len(t(3), m.persistent as u64)
            + varint_len(t(4), m.priority as u64)
            + varint_len(t(5), m.expires_at_ms)
            + len_delimited_len(t(6), m.producer_id.len())
            + varint_len(t(7), m.sequence)
            + varint_len(t(8), between)
            + len_delimited_len(t(9), m.reply_to.len())
            + len_delimited_len(t(10), m.correlation_id.len())
            + len_delimited_len(t(11), m.content_type.len())
            + varint_len(t(12), m.timestamp_ms)
    }

    /// Writes the fields for `m` (exactly [`MessageFields::len`] bytes).
    #[inline]
    fn put(self, m: &MessageRef<'_>, between: u64, r: &mut Room<'_>) {
        let t = |n| self.tag(n);
        r.len_delimited(t(0), m.destination.as_bytes());
        r.len_delimited(t(1), m.body);
        r.headers(t(2), m.headers);
        r.varint_field(t(3), m.persistent as u64);
        r.varint_field(t(4), m.priority as u64);
        r.varint_field(t(5), m.expires_at_ms);
        r.len_delimited(t(6), m.producer_id);
        r.varint_field(t(7), m.sequence);
        r.varint_field(t(8), between);
        r.len_delimited(t(9), m.reply_to.as_bytes());
        r.len_delimited(t(10), m.correlation_id.as_bytes());
        r.len_delimited(t(11), m.content_type.as_bytes());
        r.varint_field(t(12), m.timestamp_ms);
    }
}

/// The `Frame` oneof's field number of a `Send`.
const SEND_FRAME: u32 = 3;

/// Appends a `Send` frame built from borrowed data.
pub fn encode_send(m: &MessageRef<'_>, receipt: u64, dst: &mut BytesMut) {
    let inner = MessageFields::SEND.len(m, receipt);
    let len = LENGTH_PREFIX + frame_len(SEND_FRAME, inner);
    Room::write(dst, len, |r| {
        r.frame_header(SEND_FRAME, inner);
        MessageFields::SEND.put(m, receipt, r);
    });
}

/// Appends a `Forward` frame (broker to broker) built from borrowed data.
/// `unacknowledged`: the sender keeps no copy in flight and wants no `ForwardAck`.
pub fn encode_forward(
    forward_id: u64,
    m: &MessageRef<'_>,
    broker_path: &[&str],
    redelivery_count: u32,
    targets: &[&str],
    unacknowledged: bool,
    dst: &mut BytesMut,
) {
    const FORWARD_ID: u32 = 1;
    const MESSAGE: u32 = 2;
    const PATH: u32 = 3;
    const REDELIVERY: u32 = 4;
    const TARGETS: u32 = 5;
    const UNACKNOWLEDGED: u32 = 6;
    const FRAME: u32 = 23;
    let send = MessageFields::SEND.len(m, 0);
    let inner = varint_len(FORWARD_ID, forward_id)
        + key_len(MESSAGE)
        + encoded_len_varint(send as u64)
        + send
        + broker_path
            .iter()
            .map(|g| key_len(PATH) + encoded_len_varint(g.len() as u64) + g.len())
            .sum::<usize>()
        + varint_len(REDELIVERY, redelivery_count as u64)
        + targets
            .iter()
            .map(|g| key_len(TARGETS) + encoded_len_varint(g.len() as u64) + g.len())
            .sum::<usize>()
        + varint_len(UNACKNOWLEDGED, unacknowledged as u64);
    Room::write(dst, LENGTH_PREFIX + frame_len(FRAME, inner), |r| {
        r.frame_header(FRAME, inner);
        r.varint_field(FORWARD_ID, forward_id);
        r.key(MESSAGE, WireType::LengthDelimited);
        r.varint(send as u64);
        MessageFields::SEND.put(m, 0, r);
        for g in broker_path {
            r.element(PATH, g);
        }
        r.varint_field(REDELIVERY, redelivery_count as u64);
        for g in targets {
            r.element(TARGETS, g);
        }
        r.varint_field(UNACKNOWLEDGED, unacknowledged as u64);
    });
}

/// Appends a `Deliver` frame built from borrowed data.
pub fn encode_deliver(
    subscription: u64,
    tag: u64,
    redelivery_count: u32,
    m: &MessageRef<'_>,
    dst: &mut BytesMut,
) {
    const SUBSCRIPTION: u32 = 1;
    const TAG: u32 = 2;
    const FRAME: u32 = 5;
    let redelivery = u64::from(redelivery_count);
    let inner = varint_len(SUBSCRIPTION, subscription)
        + varint_len(TAG, tag)
        + MessageFields::DELIVER.len(m, redelivery);
    Room::write(dst, LENGTH_PREFIX + frame_len(FRAME, inner), |r| {
        r.frame_header(FRAME, inner);
        r.varint_field(SUBSCRIPTION, subscription);
        r.varint_field(TAG, tag);
        MessageFields::DELIVER.put(m, redelivery, r);
    });
}

/// Converts header pairs into their wire form.
pub fn headers_to_wire(headers: &[(String, String)]) -> Vec<proto::Header> {
    headers
        .iter()
        .map(|(key, value)| proto::Header {
            key: key.clone(),
            value: value.clone(),
        })
        .collect()
}

/// Converts wire headers into pairs.
pub fn headers_from_wire(headers: Vec<proto::Header>) -> Vec<(String, String)> {
    headers.into_iter().map(|h| (h.key, h.value)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::*;

    /// A message with every field set, for the encoder tests here and in `in_place`.
    pub(super) fn sample_ref<'a>(headers: &'a [(String, String)]) -> MessageRef<'a> {
        MessageRef {
            destination: "queue://orders.eu",
            body: b"\x00binary\xffbody",
            headers,
            persistent: true,
            priority: 7,
            expires_at_ms: 1_900_000_000_000,
            producer_id: b"p-1",
            sequence: 42,
            reply_to: "temp-queue://c1.1",
            correlation_id: "corr-9",
            content_type: "application/octet-stream",
            timestamp_ms: 1_800_000_000_000,
        }
    }

    fn all_frames() -> Vec<Frame> {
        let headers = vec![Header {
            key: "k".into(),
            value: "v".into(),
        }];
        vec![
            frame(Body::Connect(Connect {
                protocol_version: PROTOCOL_VERSION,
                client_id: "c".into(),
                username: "u".into(),
                password: "p".into(),
                heartbeat_ms: 1000,
                client_name: "n".into(),
                fault_tolerant: true,
                failover_reconnect: true,
                temp_prefixes: vec!["ID-1-2".into()],
                priority_pinned: true,
                resent_from_group: "g0".into(),
                resends_below: 7,
            })),
            frame(Body::Connected(Connected {
                protocol_version: 1,
                connection_id: "c1".into(),
                server: "meshmq/0.1.0".into(),
                group: "g".into(),
                member: "m".into(),
                heartbeat_ms: 500,
                max_frame_size: 1 << 20,
                cluster: Some(ClusterView {
                    groups: vec![ClusterGroup {
                        name: "g".into(),
                        uris: vec!["tcp://127.0.0.1:1".into()],
                        clients: 3,
                        capacity: 10,
                    }],
                }),
            })),
            frame(Body::Send(Send {
                destination: "queue://a".into(),
                body: Bytes::from_static(b"hello"),
                headers: headers.clone(),
                persistent: true,
                priority: 9,
                expires_at_ms: 5,
                producer_id: Bytes::from_static(b"p"),
                sequence: 1,
                receipt: 2,
                reply_to: "queue://r".into(),
                correlation_id: "x".into(),
                content_type: "text/plain".into(),
                timestamp_ms: 3,
                transaction: 7,
            })),
            frame(Body::Subscribe(Subscribe {
                subscription: 1,
                destination: "topic://a.>".into(),
                selector: String::new(),
                prefetch: 10,
                priority: -2,
                ack_mode: AckMode::ClientIndividual as i32,
                durable_name: "d".into(),
                receipt: 4,
                no_local: true,
            })),
            frame(Body::Ack(Ack {
                subscription: 1,
                up_to: 0,
                tags: vec![1, 2, 5],
                receipt: 0,
                transaction: 7,
            })),
            frame(Body::Nack(Nack {
                subscription: 1,
                tags: vec![3],
                receipt: 9,
            })),
            frame(Body::Unsubscribe(Unsubscribe {
                subscription: 1,
                receipt: 1,
                remove_durable: true,
            })),
            frame(Body::Receipt(Receipt { receipt: 77 })),
            frame(Body::Error(Error {
                code: ErrorCode::Forbidden as i32,
                message: "no".into(),
                receipt: 3,
                fatal: true,
            })),
            frame(Body::Heartbeat(Heartbeat { receipt: 5 })),
            frame(Body::Disconnect(Disconnect {
                receipt: 1,
                reason: "bye".into(),
            })),
            frame(Body::Transaction(Transaction {
                transaction: 3,
                action: TransactionAction::Commit as i32,
                receipt: 4,
            })),
            frame(Body::Control(ConnectionControl {
                cluster: None,
                rebalance: true,
                reconnect_to: "tcp://127.0.0.1:2".into(),
                leave: true,
            })),
            frame(Body::Forward(Forward {
                forward_id: 5,
                message: None,
                broker_path: vec!["hub".into()],
                redelivery_count: 1,
                targets: vec!["edge".into()],
                unacknowledged: true,
            })),
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for f in all_frames() {
            let mut buf = BytesMut::new();
            encode(&f, &mut buf);
            encode(&f, &mut buf);
            for _ in 0..2 {
                match decode(&mut buf, DEFAULT_MAX_FRAME_SIZE).unwrap() {
                    Decoded::Frame(got) => assert_eq!(got, f),
                    other => panic!("expected a frame, got {other:?}"),
                }
            }
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn truncation_at_every_byte_asks_for_more() {
        for f in all_frames() {
            let mut whole = BytesMut::new();
            encode(&f, &mut whole);
            for cut in 0..whole.len() {
                let mut part = BytesMut::from(&whole[..cut]);
                match decode(&mut part, DEFAULT_MAX_FRAME_SIZE).unwrap() {
                    Decoded::NeedMore(n) => {
                        assert!(n >= 1 && cut + n <= whole.len(), "cut {cut}: need {n}");
                    }
                    Decoded::Frame(_) => panic!("a frame from {cut} of {} bytes", whole.len()),
                }
                assert_eq!(part.len(), cut, "a partial frame must stay buffered");
            }
        }
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        let mut buf = BytesMut::new();
        buf.put_u32(1_000_001);
        assert_eq!(
            decode(&mut buf, 1_000_000),
            Err(DecodeError::TooLarge {
                len: 1_000_001,
                max: 1_000_000
            })
        );
        let mut exact = BytesMut::new();
        exact.put_u32(10);
        assert_eq!(decode(&mut exact, 10), Ok(Decoded::NeedMore(10)));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let mut buf = BytesMut::new();
        buf.put_u32(3);
        buf.put_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(
            decode(&mut buf, 1024),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn pseudo_random_bytes_never_panic() {
        // A deterministic xorshift stream: any input must yield a frame, need-more or an error.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..20_000 {
            let len = (round % 64) + 4;
            let mut buf = BytesMut::with_capacity(len);
            buf.put_u32((round % 60) as u32);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.put_u8(x as u8);
            }
            while let Ok(Decoded::Frame(_)) = decode(&mut buf, 1 << 16) {}
        }
    }

    #[test]
    fn borrowed_send_encoder_matches_prost() {
        let headers = vec![
            ("x-trace".to_string(), "abc".to_string()),
            ("empty".to_string(), String::new()),
        ];
        let m = sample_ref(&headers);
        let mut buf = BytesMut::new();
        encode_send(&m, 99, &mut buf);
        let Decoded::Frame(f) = decode(&mut buf, DEFAULT_MAX_FRAME_SIZE).unwrap() else {
            panic!("incomplete")
        };
        let expected = frame(Body::Send(Send {
            destination: m.destination.into(),
            body: Bytes::copy_from_slice(m.body),
            headers: headers_to_wire(&headers),
            persistent: true,
            priority: 7,
            expires_at_ms: m.expires_at_ms,
            producer_id: Bytes::copy_from_slice(m.producer_id),
            sequence: 42,
            receipt: 99,
            reply_to: m.reply_to.into(),
            correlation_id: m.correlation_id.into(),
            content_type: m.content_type.into(),
            timestamp_ms: m.timestamp_ms,
            transaction: 0,
        }));
        assert_eq!(f, expected);
        let mut via_prost = BytesMut::new();
        encode(&expected, &mut via_prost);
        let mut again = BytesMut::new();
        encode_send(&m, 99, &mut again);
        assert_eq!(again, via_prost, "byte-identical to prost's encoding");
    }

    #[test]
    fn borrowed_forward_encoder_matches_prost() {
        for unacknowledged in [false, true] {
            borrowed_forward_matches_prost(unacknowledged);
        }
    }

    fn borrowed_forward_matches_prost(unacknowledged: bool) {
        let headers = vec![("h".to_string(), "v".to_string())];
        let m = sample_ref(&headers);
        let mut buf = BytesMut::new();
        encode_forward(
            77,
            &m,
            &["hub", "edge-1"],
            2,
            &["edge-2"],
            unacknowledged,
            &mut buf,
        );
        let expected = frame(Body::Forward(Forward {
            forward_id: 77,
            message: Some(Send {
                destination: m.destination.into(),
                body: Bytes::copy_from_slice(m.body),
                headers: headers_to_wire(&headers),
                persistent: true,
                priority: 7,
                expires_at_ms: m.expires_at_ms,
                producer_id: Bytes::copy_from_slice(m.producer_id),
                sequence: 42,
                receipt: 0,
                transaction: 0,
                reply_to: m.reply_to.into(),
                correlation_id: m.correlation_id.into(),
                content_type: m.content_type.into(),
                timestamp_ms: m.timestamp_ms,
            }),
            broker_path: vec!["hub".into(), "edge-1".into()],
            redelivery_count: 2,
            targets: vec!["edge-2".into()],
            unacknowledged,
        }));
        let mut via_prost = BytesMut::new();
        encode(&expected, &mut via_prost);
        assert_eq!(buf, via_prost);
    }

    #[test]
    fn borrowed_deliver_encoder_matches_prost() {
        let headers = vec![("a".to_string(), "b".to_string())];
        for m in [sample_ref(&headers), MessageRef::default()] {
            let mut buf = BytesMut::new();
            encode_deliver(3, 1 << 40, 2, &m, &mut buf);
            let expected = frame(Body::Deliver(Deliver {
                subscription: 3,
                tag: 1 << 40,
                destination: m.destination.into(),
                body: Bytes::copy_from_slice(m.body),
                headers: headers_to_wire(m.headers),
                persistent: m.persistent,
                priority: m.priority,
                expires_at_ms: m.expires_at_ms,
                producer_id: Bytes::copy_from_slice(m.producer_id),
                sequence: m.sequence,
                redelivery_count: 2,
                reply_to: m.reply_to.into(),
                correlation_id: m.correlation_id.into(),
                content_type: m.content_type.into(),
                timestamp_ms: m.timestamp_ms,
            }));
            let mut via_prost = BytesMut::new();
            encode(&expected, &mut via_prost);
            assert_eq!(buf, via_prost);
        }
    }
}
