//! Frames → bytes.
//!
//! Every line ends with `\n`. Headers are escaped as the version and command require (see
//! [`Escaping`]). A character the rules in force cannot carry — a NUL anywhere; `\r` in 1.1; in
//! 1.0 and in CONNECT / STOMP / CONNECTED frames `\n`, `\r`, and `:` in a header name — is
//! written as U+FFFD (�): the frame stays well formed and the loss is visible, where writing it
//! raw would corrupt the stream or silently change the header.

use bytes::{BufMut, BytesMut};

use super::decode::Escaping;
use super::{Command, Frame, Version};

/// The header the encoder computes itself; a caller's own is dropped so it can never lie.
const CONTENT_LENGTH: &str = "content-length";
const REPLACEMENT: &str = "\u{fffd}";

/// Appends one frame to `dst`. Any `content-length` header in `frame` is replaced by the body's
/// real length, which is written whenever the body is not empty and always for MESSAGE and
/// ERROR, so bodies containing NULs survive.
pub fn encode(frame: &Frame, version: Version, dst: &mut BytesMut) {
    encode_parts(
        frame.command,
        version,
        frame.headers.iter(),
        &frame.body,
        dst,
    );
}

/// Appends a MESSAGE frame from borrowed parts (the hot delivery path: nothing is allocated
/// when no header needs escaping and `dst` has room). `headers` are written in order, without
/// any `content-length` among them; `content-length` is always added.
pub fn encode_message<'a>(
    version: Version,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    body: &[u8],
    dst: &mut BytesMut,
) {
    encode_parts(Command::Message, version, headers, body, dst);
}

/// Appends a frame of any command from borrowed parts, as [`encode`] would write it, without
/// building a [`Frame`] (for clients sending at a high rate: SEND, ACK). A `content-length`
/// among `headers` is replaced by the body's real length.
pub fn encode_parts<'a>(
    command: Command,
    version: Version,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    body: &[u8],
    dst: &mut BytesMut,
) {
    let escaping = Escaping::of(version, command);
    // Headers of a typical frame fit in this; BytesMut grows if they do not.
    dst.reserve(command.as_str().len() + 256 + body.len());
    dst.put_slice(command.as_str().as_bytes());
    dst.put_u8(b'\n');
    for (key, value) in headers {
        if key == CONTENT_LENGTH {
            continue;
        }
        put_escaped(key.as_bytes(), escaping, true, dst);
        dst.put_u8(b':');
        put_escaped(value.as_bytes(), escaping, false, dst);
        dst.put_u8(b'\n');
    }
    if !body.is_empty() || matches!(command, Command::Message | Command::Error) {
        dst.put_slice(CONTENT_LENGTH.as_bytes());
        dst.put_u8(b':');
        put_decimal(body.len() as u64, dst);
        dst.put_u8(b'\n');
    }
    dst.put_u8(b'\n');
    dst.put_slice(body);
    dst.put_u8(0);
}

/// Appends one `key:value` header line of a MESSAGE frame, escaped as `version` requires: for
/// servers that write a delivery's lines themselves (see [`encode_message`] for a whole frame).
pub fn put_message_header(version: Version, key: &str, value: &[u8], dst: &mut BytesMut) {
    let escaping = Escaping::of(version, Command::Message);
    put_escaped(key.as_bytes(), escaping, true, dst);
    dst.put_u8(b':');
    put_escaped(value, escaping, false, dst);
    dst.put_u8(b'\n');
}

/// How a MESSAGE frame of `version` writes a ':' inside a header value: raw in 1.0 (which
/// escapes nothing), `\c` from 1.1 on. For ids the server generates from numbers and a fixed
/// prefix, which hold nothing else that needs escaping: they are written directly, never
/// scanned byte by byte.
pub fn value_colon(version: Version) -> &'static [u8] {
    match Escaping::of(version, Command::Message) {
        Escaping::None => b":",
        Escaping::V1_1 | Escaping::V1_2 => b"\\c",
    }
}

/// Appends a header value of a MESSAGE frame, escaped as `version` requires (the value part of
/// [`put_message_header`], for a line written in pieces).
pub fn put_message_value(version: Version, value: &[u8], dst: &mut BytesMut) {
    put_escaped(value, Escaping::of(version, Command::Message), false, dst);
}

/// Writes a number in decimal without going through `fmt` on the hot path.
/// The digits go straight into `dst`'s spare room, last first: no scratch copy (its
/// variable-length `memmove` cost more than the digits, a MESSAGE writes several numbers).
pub fn put_decimal(n: impl Into<u64>, dst: &mut BytesMut) {
    let mut n: u64 = n.into();
    let len = n.checked_ilog10().map_or(1, |l| l as usize + 1);
    dst.reserve(len);
    for digit in dst.spare_capacity_mut()[..len].iter_mut().rev() {
        digit.write(b'0' + (n % 10) as u8);
        n /= 10;
    }
    // SAFETY: `reserve` made room for `len` more bytes and the loop initialised each of them.
    unsafe { dst.set_len(dst.len() + len) };
}

/// True when `text` holds a byte some version escapes or replaces. Long texts are searched
/// with SIMD (`memchr`); short ones byte by byte, which is faster for them.
fn needs_care(text: &[u8]) -> bool {
    if text.len() < 16 {
        return text
            .iter()
            .any(|&b| matches!(b, b'\\' | b'\n' | b'\r' | b':' | 0));
    }
    memchr::memchr3(b'\\', b'\n', b':', text).is_some() || memchr::memchr2(b'\r', 0, text).is_some()
}

fn put_escaped(text: &[u8], escaping: Escaping, is_name: bool, dst: &mut BytesMut) {
    if !needs_care(text) {
        dst.put_slice(text);
        return;
    }
    // The bytes between two that need care go out in one piece (an ack id or a message id
    // holds a ':' or two among plain text).
    let mut plain = 0;
    for (i, &b) in text.iter().enumerate() {
        let written: &[u8] = match (escaping, b) {
            (_, 0) => REPLACEMENT.as_bytes(),
            (Escaping::None, b'\n' | b'\r') => REPLACEMENT.as_bytes(),
            (Escaping::None, b':') if is_name => REPLACEMENT.as_bytes(),
            (Escaping::None, _) => continue,
            (_, b'\\') => b"\\\\",
            (_, b'\n') => b"\\n",
            (_, b':') => b"\\c",
            (Escaping::V1_2, b'\r') => b"\\r",
            (Escaping::V1_1, b'\r') => REPLACEMENT.as_bytes(),
            (_, _) => continue,
        };
        dst.put_slice(&text[plain..i]);
        dst.put_slice(written);
        plain = i + 1;
    }
    dst.put_slice(&text[plain..]);
}
