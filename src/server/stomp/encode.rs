//! Deliveries as STOMP MESSAGE frames: the headers of a message (escaped per version, shared
//! between the subscribers of a topic where every connection names them alike), its ids, and
//! how a connection names a destination to its client (its own temporary destinations under
//! `/temp-queue/`, another connection's under `/remote-temp-queue/`, as in ActiveMQ).

use bytes::{BufMut, BytesMut};

use crate::broker::{Destination, Kind, Message};
use crate::stomp::{self, Version};

/// The key under which a STOMP codec of `version` shares a message's encoded headers
/// ([`Message::encoded_once`]): the headers are escaped differently per version.
pub(super) fn shared_key(version: Version) -> u32 {
    const STOMP: u32 = 0x5354_0000;
    STOMP | version as u32
}

/// True when the message carries its producer's identity (its `message-id` is then the same
/// for every delivery).
pub(super) fn has_producer_id(m: &Message) -> bool {
    !m.producer_id.is_empty() && m.sequence != 0
}

/// True when neither the message's destination nor its reply-to is a temporary destination:
/// every connection then names them alike.
pub(super) fn names_no_temporary(m: &Message) -> bool {
    let temp = m.destination.as_ref().is_some_and(|d| d.kind().is_temp())
        || (!m.reply_to.is_empty()
            && Destination::parse(&m.reply_to).is_ok_and(|d| d.kind().is_temp()));
    !temp
}

/// Writes the header line `key:` `prefix` `a` `:` `b` of a MESSAGE frame — an `ack` id
/// (`sub:tag`) or a generated `message-id` (`ID:sub:tag`) — directly: `prefix` holds no byte
/// that needs escaping besides a ':', the rest are digits, so only the ':'s are written as
/// `version` requires ([`stomp::value_colon`]).
pub(super) fn put_id_pair(
    version: Version,
    key: &[u8],
    prefix: &[u8],
    a: u64,
    b: u64,
    out: &mut BytesMut,
) {
    let colon = stomp::value_colon(version);
    out.put_slice(key);
    out.put_u8(b':');
    for part in prefix.split_inclusive(|&c| c == b':') {
        match part.strip_suffix(b":") {
            Some(text) => {
                out.put_slice(text);
                out.put_slice(colon);
            }
            None => out.put_slice(part),
        }
    }
    stomp::put_decimal(a, out);
    out.put_slice(colon);
    stomp::put_decimal(b, out);
    out.put_u8(b'\n');
}

/// Writes a MESSAGE's headers without allocating once warm: the ids are written in place, and
/// the last destination's header line is kept (a consumer mostly reads one destination).
#[derive(Debug, Default)]
pub(super) struct HeaderWriter {
    last_destination: Option<(Destination, Box<[u8]>)>,
}

impl HeaderWriter {
    /// The headers of the message itself (what is the same for every subscription), the
    /// `content-length` and the blank line before the body.
    pub(super) fn message_headers(
        &mut self,
        version: Version,
        connection_id: &str,
        m: &Message,
        out: &mut BytesMut,
    ) {
        if has_producer_id(m) {
            // `ID:` producer `:` sequence: only the producer's id can need escaping.
            let colon = stomp::value_colon(version);
            out.put_slice(b"message-id:ID");
            out.put_slice(colon);
            match std::str::from_utf8(&m.producer_id) {
                Ok(id) => stomp::put_message_value(version, id.as_bytes(), out),
                Err(_) => {
                    let id = String::from_utf8_lossy(&m.producer_id);
                    stomp::put_message_value(version, id.as_bytes(), out)
                }
            }
            out.put_slice(colon);
            stomp::put_decimal(m.sequence, out);
            out.put_u8(b'\n');
        }
        match &m.destination {
            Some(dest) => {
                let fresh = self
                    .last_destination
                    .as_ref()
                    .is_none_or(|(d, _)| d != dest);
                if fresh {
                    let mut line = BytesMut::new();
                    let name = stomp_name(connection_id, dest);
                    stomp::put_message_header(version, "destination", name.as_bytes(), &mut line);
                    self.last_destination =
                        Some((dest.clone(), Vec::from(line).into_boxed_slice()));
                }
                if let Some((_, line)) = &self.last_destination {
                    out.put_slice(line);
                }
            }
            None => out.put_slice(b"destination:\n"),
        }
        if !m.content_type.is_empty() {
            stomp::put_message_header(version, "content-type", m.content_type.as_bytes(), out);
        }
        out.put_slice(if m.persistent {
            b"persistent:true\n"
        } else {
            b"persistent:false\n"
        });
        out.put_slice(b"priority:");
        stomp::put_decimal(m.priority, out);
        out.put_slice(b"\ntimestamp:");
        stomp::put_decimal(m.timestamp_ms, out);
        out.put_u8(b'\n');
        if m.expires_at_ms != 0 {
            out.put_slice(b"expires:");
            stomp::put_decimal(m.expires_at_ms, out);
            out.put_u8(b'\n');
        }
        if !m.reply_to.is_empty() {
            let reply_to = reply_to_stomp(connection_id, &m.reply_to);
            stomp::put_message_header(version, "reply-to", reply_to.as_bytes(), out);
        }
        if !m.correlation_id.is_empty() {
            let id = m.correlation_id.as_bytes();
            stomp::put_message_header(version, "correlation-id", id, out);
        }
        for (k, v) in &m.headers {
            stomp::put_message_header(version, k, v.as_bytes(), out);
        }
        out.put_slice(b"content-length:");
        stomp::put_decimal(m.body.len() as u64, out);
        out.put_slice(b"\n\n");
    }
}

/// A meshmq destination → how connection `connection_id` sees it.
pub(super) fn stomp_name(connection_id: &str, d: &Destination) -> String {
    if d.kind().is_temp() {
        let prefix = format!("{connection_id}.");
        let (own, remote) = match d.kind() {
            Kind::TempQueue => ("/temp-queue/", "/remote-temp-queue/"),
            _ => ("/temp-topic/", "/remote-temp-topic/"),
        };
        return match d.name().strip_prefix(&prefix) {
            Some(local) => format!("{own}{local}"),
            None => format!("{remote}{}", d.name()),
        };
    }
    stomp::to_stomp_destination(d)
}

fn reply_to_stomp(connection_id: &str, reply_to: &str) -> String {
    match Destination::parse(reply_to) {
        Ok(d) => stomp_name(connection_id, &d),
        Err(_) => reply_to.to_string(),
    }
}

/// The `message-id` of a delivery: its producer's identity when it has one, else its own.
pub(super) fn message_id(m: &Message, sub: u64, tag: u64) -> String {
    if m.producer_id.is_empty() || m.sequence == 0 {
        format!("ID:{sub}:{tag}")
    } else {
        format!(
            "ID:{}:{}",
            String::from_utf8_lossy(&m.producer_id),
            m.sequence
        )
    }
}
