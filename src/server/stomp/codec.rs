//! The [`Stomp`] codec a connection runs with: its state (version, subscriptions, the ids
//! 1.0/1.1 clients acknowledge by) and its [`Codec`] — frames in (`request.rs` gives their
//! meaning), deliveries, receipts, errors and heart-beats out (`encode.rs` writes the headers).
//! Every error is fatal in STOMP.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use rustc_hash::FxHashMap;

use crate::broker::{Delivery, Destination, Kind};
use crate::server::conn::{Codec, Inbound};
use crate::stomp::{self, Command, Decoder, Frame, Version};
use crate::wire::proto::ErrorCode;

use super::encode::{
    has_producer_id, message_id, names_no_temporary, put_id_pair, shared_key, HeaderWriter,
};

/// An ERROR frame saying `message` (in its header and its body).
pub(super) fn error(message: &str) -> Frame {
    Frame::new(Command::Error)
        .with_header("message", message)
        .with_header("content-type", "text/plain")
        .with_body(Bytes::copy_from_slice(message.as_bytes()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AckMode {
    Auto,
    Client,
    Individual,
}

#[derive(Debug)]
pub(super) struct Sub {
    pub ack: AckMode,
    pub durable: Option<String>,
    /// Its `subscription:<id>` header line, escaped once for every MESSAGE it gets.
    pub line: Box<[u8]>,
}

impl Sub {
    pub(super) fn new(id: &str, ack: AckMode, durable: Option<String>, version: Version) -> Sub {
        let mut line = BytesMut::new();
        stomp::put_message_header(version, "subscription", id.as_bytes(), &mut line);
        Sub {
            ack,
            durable,
            line: Vec::from(line).into_boxed_slice(),
        }
    }
}

/// The STOMP codec of one connection: the version it speaks, its subscriptions by number
/// and by the client's id, and what 1.0/1.1 acknowledgements by `message-id` need.
pub(crate) struct Stomp {
    pub(super) decoder: Decoder,
    pub(super) version: Version,
    pub(super) connection_id: String,
    /// By the numbers this codec gives its subscriptions (in sequence, so FxHash spreads them
    /// well): looked up for every delivery, where SipHash cost more than the lookup.
    pub(super) subs: FxHashMap<u64, Sub>,
    pub(super) sub_ids: HashMap<String, u64>,
    pub(super) next_sub: u64,
    /// STOMP 1.0/1.1 acknowledge by `message-id` (1.1 with `subscription`): which delivery
    /// that is, for deliveries of client-acknowledged subscriptions.
    pub(super) by_message_id: HashMap<(String, u64), u64>,
    pub(super) next_sequence: u64,
    pub(super) producer_id: Bytes,
    pub(super) writer: HeaderWriter,
    /// The last SEND's destination as the client wrote it, and parsed.
    pub(super) last_send: Option<(Box<str>, Destination)>,
}

impl Stomp {
    /// The codec of a connection whose handshake settled `decoder`'s version. The bodies the
    /// broker keeps are copied out of the read buffer as they are decoded (see
    /// [`crate::broker::COPY_BODY_BELOW`]), once.
    pub(crate) fn new(mut decoder: Decoder, connection_id: &str) -> Stomp {
        decoder.copy_bodies_below(crate::broker::COPY_BODY_BELOW);
        Stomp {
            version: decoder.version(),
            decoder,
            connection_id: connection_id.to_string(),
            subs: FxHashMap::default(),
            sub_ids: HashMap::new(),
            next_sub: 1,
            by_message_id: HashMap::new(),
            next_sequence: 1,
            producer_id: Bytes::from(connection_id.to_string()),
            writer: HeaderWriter::default(),
            last_send: None,
        }
    }
}

impl Codec for Stomp {
    type Receipt = String;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Inbound<String>, (ErrorCode, String)> {
        // Most frames a producer sends are plain SENDs: read in place, their headers are never
        // copied (`decode` would copy them into a `Headers` first).
        if let Some(send) = self.decoder.in_place_send(buf) {
            let request = send.take(buf, |headers, body| self.on_send(headers.iter(), body));
            return Ok(Inbound::Request(request));
        }
        match self.decoder.decode(buf) {
            Ok(stomp::Decoded::Frame(mut f)) => {
                let request = self.request(&mut f);
                // Another frame is already arriving: it reuses these headers' room. An idle
                // connection keeps none.
                if !buf.is_empty() {
                    self.decoder.recycle(f.headers);
                }
                Ok(Inbound::Request(request))
            }
            Ok(stomp::Decoded::Heartbeat) => Ok(Inbound::Alive),
            Ok(stomp::Decoded::NeedMore) => Ok(Inbound::NeedMore),
            Err(e) => Err((ErrorCode::BadFrame, e.to_string())),
        }
    }

    /// Writes a MESSAGE: first the lines of this delivery (subscription, ack id, redelivery),
    /// then the message's own headers. Those are the same for every subscriber of a topic
    /// message that names no temporary destination (which each connection sees under its own
    /// name), so they are encoded once per message and copied for each delivery; otherwise
    /// they are written here. Nothing is allocated on the way unless a 1.0/1.1 client
    /// acknowledges by `message-id`.
    fn encode_delivery(&mut self, d: &Delivery, out: &mut BytesMut) -> bool {
        let Stomp {
            version,
            connection_id,
            subs,
            by_message_id,
            writer,
            ..
        } = self;
        let Some(sub) = subs.get(&d.subscription) else {
            return false;
        };
        let (m, version) = (&d.message, *version);
        let auto = sub.ack == AckMode::Auto;
        out.reserve(sub.line.len() + 256 + m.body.len());
        out.put_slice(b"MESSAGE\n");
        out.put_slice(&sub.line);
        if version == Version::V1_2 && !auto {
            put_id_pair(version, b"ack", b"", d.subscription, d.tag, out);
        }
        if d.redelivery_count > 0 {
            out.put_slice(b"redelivered:true\nmeshmq.redelivery_count:");
            stomp::put_decimal(d.redelivery_count, out);
            out.put_u8(b'\n');
        }
        if !has_producer_id(m) {
            put_id_pair(version, b"message-id", b"ID:", d.subscription, d.tag, out);
        }
        let shared = m
            .destination
            .as_ref()
            .is_some_and(|dest| dest.kind() == Kind::Topic)
            && names_no_temporary(m);
        let cached = if shared {
            m.encoded_once(shared_key(version), |buf| {
                writer.message_headers(version, connection_id, m, buf)
            })
        } else {
            None
        };
        match cached {
            Some(block) => out.put_slice(block),
            None => writer.message_headers(version, connection_id, m, out),
        }
        out.put_slice(&m.body);
        out.put_u8(0);
        if !auto && version != Version::V1_2 {
            let mid = message_id(m, d.subscription, d.tag);
            by_message_id.insert((mid, d.subscription), d.tag);
        }
        auto
    }

    fn encode_receipt(&mut self, receipt: &String, out: &mut BytesMut) {
        stomp::encode(
            &Frame::new(Command::Receipt).with_header("receipt-id", receipt.as_str()),
            self.version,
            out,
        );
    }

    fn encode_error(
        &mut self,
        _code: ErrorCode,
        message: &str,
        receipt: Option<&String>,
        _fatal: bool,
        out: &mut BytesMut,
    ) -> bool {
        let mut frame = error(message);
        if let Some(r) = receipt {
            frame = frame.with_header("receipt-id", r.as_str());
        }
        stomp::encode(&frame, self.version, out);
        // STOMP has no non-fatal errors: every ERROR ends the connection.
        true
    }

    fn encode_heartbeat(&mut self, out: &mut BytesMut) {
        out.extend_from_slice(b"\n");
    }

    fn resend_advice(&self) -> &'static str {
        // A STOMP producer's sends are numbered per connection: a resend is a new message.
        "resend it to be safe (it may then arrive twice)"
    }

    fn committed_acks(&mut self, acks: &[(u64, u64)]) {
        for (sub, tag) in acks {
            let cumulative = self.subs.get(sub).is_some_and(|s| s.ack == AckMode::Client);
            self.forget_acked(*sub, *tag, cumulative);
        }
    }
}
