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

/// Writes a MESSAGE's headers without allocating once warm: a scratch buffer for ids, and the
/// last destination's header line (a consumer mostly reads one destination).
#[derive(Debug, Default)]
pub(super) struct HeaderWriter {
    pub scratch: BytesMut,
    last_destination: Option<(Destination, Box<[u8]>)>,
}

impl HeaderWriter {
    /// `prefix` `a` `:` `b` into the scratch buffer.
    pub(super) fn id_pair(&mut self, prefix: &str, a: u64, b: u64) {
        self.scratch.clear();
        self.scratch.put_slice(prefix.as_bytes());
        stomp::put_decimal(a, &mut self.scratch);
        self.scratch.put_u8(b':');
        stomp::put_decimal(b, &mut self.scratch);
    }

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
            self.scratch.clear();
            self.scratch.put_slice(b"ID:");
            match std::str::from_utf8(&m.producer_id) {
                Ok(id) => self.scratch.put_slice(id.as_bytes()),
                Err(_) => self
                    .scratch
                    .put_slice(String::from_utf8_lossy(&m.producer_id).as_bytes()),
            }
            self.scratch.put_u8(b':');
            stomp::put_decimal(m.sequence, &mut self.scratch);
            stomp::put_message_header(version, "message-id", &self.scratch, out);
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
