//! A client's `Send` frame read where it lies in the read buffer, for the broker's inbound hot
//! path: its strings and producer id are borrowed from the buffer and its scalars read as the
//! scan passes them, so no `Frame` is built or moved, no `String` is allocated for the
//! destination, and the body is copied once, by the caller, into the message.
//!
//! Owns: [`read_send`] and the view it gives ([`SendRef`]). Must not touch: sockets, and the
//! meaning of the fields (the server's codec gives them that). Invariant: it finds a frame only
//! where [`super::decode`] would take the same bytes off the buffer as a `Send` with exactly
//! these fields (prost's rules: the last of a repeated scalar wins, headers accumulate in
//! order, a `uint32` is the varint's low 32 bits, a `bool` is a non-zero varint); anything
//! else — a frame still arriving, one over the limit, another kind of frame, an unknown
//! field, a wrong wire type, a bad varint or string, a body the broker would share rather
//! than copy — it leaves to `decode`, which answers it as it always did (tested against it on
//! random frames, and in the `wire` fuzz target).

use bytes::Bytes;

use super::{proto, LENGTH_PREFIX};

/// A whole `Send` frame at the front of a buffer, borrowed from it (see [`read_send`]).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SendRef<'a> {
    pub destination: &'a str,
    pub body: &'a [u8],
    /// The `Header` entries in order, each as (key, value). Empty (unallocated) without any.
    pub headers: Vec<(&'a str, &'a str)>,
    pub persistent: bool,
    pub priority: u32,
    pub expires_at_ms: u64,
    pub producer_id: &'a [u8],
    pub sequence: u64,
    pub receipt: u64,
    pub reply_to: &'a str,
    pub correlation_id: &'a str,
    pub content_type: &'a str,
    pub timestamp_ms: u64,
    pub transaction: u64,
    /// Bytes the frame takes at the front of the buffer, its length prefix included.
    pub frame_len: usize,
}

impl SendRef<'_> {
    /// The `Send` that decoding the same frame gives (copied out: for checks, not the hot path).
    pub fn to_proto(&self) -> proto::Send {
        proto::Send {
            destination: self.destination.into(),
            body: Bytes::copy_from_slice(self.body),
            headers: self
                .headers
                .iter()
                .map(|(key, value)| proto::Header {
                    key: (*key).into(),
                    value: (*value).into(),
                })
                .collect(),
            persistent: self.persistent,
            priority: self.priority,
            expires_at_ms: self.expires_at_ms,
            producer_id: Bytes::copy_from_slice(self.producer_id),
            sequence: self.sequence,
            receipt: self.receipt,
            reply_to: self.reply_to.into(),
            correlation_id: self.correlation_id.into(),
            content_type: self.content_type.into(),
            timestamp_ms: self.timestamp_ms,
            transaction: self.transaction,
        }
    }
}

/// Keys (field number << 3 | wire type) of the fields read here.
mod key {
    const VARINT: u64 = 0;
    const LEN: u64 = 2;
    const fn k(field: u64, wire_type: u64) -> u64 {
        (field << 3) | wire_type
    }
    /// `Frame.send`.
    pub const FRAME_SEND: u64 = k(3, LEN);
    pub const DESTINATION: u64 = k(1, LEN);
    pub const BODY: u64 = k(2, LEN);
    pub const HEADERS: u64 = k(3, LEN);
    pub const PERSISTENT: u64 = k(4, VARINT);
    pub const PRIORITY: u64 = k(5, VARINT);
    pub const EXPIRES: u64 = k(6, VARINT);
    pub const PRODUCER: u64 = k(7, LEN);
    pub const SEQUENCE: u64 = k(8, VARINT);
    pub const RECEIPT: u64 = k(9, VARINT);
    pub const REPLY_TO: u64 = k(10, LEN);
    pub const CORRELATION: u64 = k(11, LEN);
    pub const CONTENT_TYPE: u64 = k(12, LEN);
    pub const TIMESTAMP: u64 = k(13, VARINT);
    pub const TRANSACTION: u64 = k(14, VARINT);
    /// `Header.key`, `Header.value`.
    pub const HEADER_KEY: u64 = k(1, LEN);
    pub const HEADER_VALUE: u64 = k(2, LEN);
}

/// Reads bytes of one message's encoding (a slice ending where the message ends).
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.at == self.bytes.len()
    }

    /// A varint as prost reads one: at most ten bytes, the tenth at most 1.
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = *self.bytes.get(self.at)?;
            self.at += 1;
            if i == 9 && b > 1 {
                return None;
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Some(value);
            }
        }
        None
    }

    /// A length-delimited field's bytes (its length read first).
    fn delimited(&mut self) -> Option<&'a [u8]> {
        let len = self.varint()?;
        let rest = self.bytes.len() - self.at;
        if len > rest as u64 {
            return None;
        }
        let bytes = &self.bytes[self.at..self.at + len as usize];
        self.at += len as usize;
        Some(bytes)
    }

    fn text(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.delimited()?).ok()
    }
}

/// Reads the `Send` frame at the front of `buf` in place, if there is a whole one that can be
/// (see the module's invariant): at most `max_frame_size` long, and its body shorter than
/// `body_below` (a larger body is better shared with the buffer, as `decode` does). `None`
/// leaves the buffer to [`super::decode`].
pub fn read_send(buf: &[u8], max_frame_size: usize, body_below: usize) -> Option<SendRef<'_>> {
    let prefix: [u8; LENGTH_PREFIX] = buf.get(..LENGTH_PREFIX)?.try_into().ok()?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max_frame_size {
        return None;
    }
    let frame_len = LENGTH_PREFIX + len;
    let mut frame = Reader {
        bytes: buf.get(LENGTH_PREFIX..frame_len)?,
        at: 0,
    };
    // The frame is its `send` field and nothing else.
    if frame.varint()? != key::FRAME_SEND {
        return None;
    }
    let fields = frame.delimited()?;
    if !frame.done() {
        return None;
    }
    let mut send = SendRef {
        frame_len,
        ..SendRef::default()
    };
    let mut r = Reader {
        bytes: fields,
        at: 0,
    };
    while !r.done() {
        match r.varint()? {
            key::DESTINATION => send.destination = r.text()?,
            key::BODY => send.body = r.delimited()?,
            key::HEADERS => send.headers.push(header(r.delimited()?)?),
            key::PERSISTENT => send.persistent = r.varint()? != 0,
            key::PRIORITY => send.priority = r.varint()? as u32,
            key::EXPIRES => send.expires_at_ms = r.varint()?,
            key::PRODUCER => send.producer_id = r.delimited()?,
            key::SEQUENCE => send.sequence = r.varint()?,
            key::RECEIPT => send.receipt = r.varint()?,
            key::REPLY_TO => send.reply_to = r.text()?,
            key::CORRELATION => send.correlation_id = r.text()?,
            key::CONTENT_TYPE => send.content_type = r.text()?,
            key::TIMESTAMP => send.timestamp_ms = r.varint()?,
            key::TRANSACTION => send.transaction = r.varint()?,
            _ => return None,
        }
    }
    (send.body.len() < body_below).then_some(send)
}

/// One `Header` entry's (key, value).
fn header(bytes: &[u8]) -> Option<(&str, &str)> {
    let mut r = Reader { bytes, at: 0 };
    let (mut k, mut v) = ("", "");
    while !r.done() {
        match r.varint()? {
            key::HEADER_KEY => k = r.text()?,
            key::HEADER_VALUE => v = r.text()?,
            _ => return None,
        }
    }
    Some((k, v))
}

#[cfg(test)]
#[path = "in_place_tests.rs"]
mod tests;
