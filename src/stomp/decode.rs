//! Bytes → frames.
//!
//! ```text
//! COMMAND EOL
//! (name:value EOL)*        escaped per version, except in CONNECT, STOMP and CONNECTED
//! EOL
//! body                     content-length octets if that header is present (NULs allowed),
//!                          else everything up to the first NUL
//! NUL
//! ```
//! EOL is `\n` or `\r\n` (accepted in every version: telnet users of 1.0 send `\r\n` too).
//! A bare EOL where a frame would start is a heart-beat (it also covers the EOLs the spec
//! allows after a frame's NUL).
//!
//! The [`Decoder`] remembers how far it has read into a frame that is still arriving, so each
//! byte is examined once however the frame is split across reads: a body without
//! `content-length` arriving in small pieces costs no rescans.
//!
//! A whole SEND already in the buffer whose header lines are plain (ASCII, no escape, nothing
//! the decoder would refuse) can instead be read in place ([`Decoder::in_place_send`]): its
//! headers are read straight from the buffer, never copied into [`Headers`]. Invariant: it
//! finds a frame only where [`Decoder::decode`] would find the same frame (same headers, same
//! body, same bytes consumed); anything else it leaves to `decode`.

use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};
use memchr::memchr;

use super::{quote, Command, Frame, Headers, Limits, StompError, Version};

/// What the decoder found at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// One whole frame, removed from the buffer.
    Frame(Frame),
    /// A bare EOL, removed from the buffer: the peer is alive.
    Heartbeat,
    /// The buffer holds part of a frame, left in place; call again when more bytes arrived.
    NeedMore,
}

/// Decodes frames from one peer's byte stream.
///
/// The buffer passed to [`Decoder::decode`] must be the same stream's buffer every time, only
/// appended to between calls (the decoder itself removes what it decoded). A shorter buffer
/// than at the last call is taken as a new stream and read from its start.
#[derive(Debug)]
pub struct Decoder {
    version: Version,
    limits: Limits,
    partial: Option<Partial>,
    /// Room for the next frame's headers, handed back by [`Decoder::recycle`]: a connection
    /// reading a run of frames allocates their headers once, not twice per frame.
    spare: Option<Headers>,
    /// Bodies shorter than this are copied out of the buffer (see
    /// [`Decoder::copy_bodies_below`]); 0: every body shares it.
    copy_below: usize,
}

/// A frame whose command line has been read but which is not complete yet.
#[derive(Debug)]
struct Partial {
    command: Command,
    headers: Headers,
    /// Offset of the first header line not read yet.
    next_line: usize,
    /// The first `content-length` header, once read.
    content_length: Option<usize>,
    /// Offset of the body, once the blank line ending the headers has been read.
    body_start: Option<usize>,
    /// Without `content-length`: how many body bytes are known to hold no NUL.
    searched: usize,
    /// The buffer's length when this was saved.
    seen: usize,
}

impl Decoder {
    /// `version` decides header escaping: `V1_0` before a CONNECT has been negotiated (the
    /// handshake frames are never escaped, so it does not matter for them).
    pub fn new(version: Version, limits: Limits) -> Decoder {
        Decoder {
            version,
            limits,
            partial: None,
            spare: None,
            copy_below: 0,
        }
    }

    /// Makes bodies shorter than `len` copies of their own instead of slices of the buffer
    /// they arrived in, for a reader that keeps them (a broker: a message that lives long
    /// must not pin a whole read chunk). Copied here, straight from the buffer, a body costs
    /// one allocation and no reference counting on the buffer's; sliced, then copied by its
    /// keeper, it cost both.
    pub fn copy_bodies_below(&mut self, len: usize) {
        self.copy_below = len;
    }

    /// Whether a body of `len` bytes comes out of [`Decoder::decode`] as a copy of its own
    /// (see [`Decoder::copy_bodies_below`]).
    pub fn copies_body(&self, len: usize) -> bool {
        len < self.copy_below
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Gives back a decoded frame's headers, so the next frame's are read into their room
    /// (emptied here). Only worth it when another frame is expected soon: the decoder keeps
    /// them until then.
    pub fn recycle(&mut self, mut headers: Headers) {
        headers.clear();
        self.spare = Some(headers);
    }

    /// Switches the escaping rules once CONNECT has negotiated a version.
    pub fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    /// Takes one frame or heart-beat off the front of `buf` (zero-copy: the frame's body
    /// shares `buf`'s allocation, unless [`Decoder::copy_bodies_below`] says otherwise).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, StompError> {
        let partial = match self.partial.take() {
            Some(p) if p.seen <= buf.len() => p,
            _ => match self.start(buf)? {
                Start::Decoded(d) => return Ok(d),
                Start::Frame(p) => p,
            },
        };
        let mut partial = partial;
        match self.resume(&mut partial, buf)? {
            Some(frame) => Ok(Decoded::Frame(frame)),
            None => {
                partial.seen = buf.len();
                self.partial = Some(partial);
                Ok(Decoded::NeedMore)
            }
        }
    }

    /// Reads a heart-beat or a frame's command line.
    fn start(&mut self, buf: &mut BytesMut) -> Result<Start, StompError> {
        match buf.first() {
            None => return Ok(Start::Decoded(Decoded::NeedMore)),
            Some(b'\n') => {
                buf.advance(1);
                return Ok(Start::Decoded(Decoded::Heartbeat));
            }
            Some(b'\r') if buf.len() < 2 => return Ok(Start::Decoded(Decoded::NeedMore)),
            Some(b'\r') if buf[1] == b'\n' => {
                buf.advance(2);
                return Ok(Start::Decoded(Decoded::Heartbeat));
            }
            Some(_) => {}
        }
        let Some(eol) = memchr(b'\n', buf) else {
            // No command is this long: refuse garbage (an HTTP request, a TLS hello) at once.
            if buf.len() > Command::MAX_LEN + 1 {
                return Err(StompError::UnknownCommand(quote(buf)));
            }
            self.check_size(buf.len())?;
            return Ok(Start::Decoded(Decoded::NeedMore));
        };
        let line = strip_cr(&buf[..eol]);
        let command =
            Command::parse(line).ok_or_else(|| StompError::UnknownCommand(quote(line)))?;
        self.check_size(eol + 1)?;
        Ok(Start::Frame(Partial {
            command,
            // Room for a typical frame's headers (a MESSAGE's seven lines fit): they are copied
            // into it as they are read.
            headers: self
                .spare
                .take()
                .unwrap_or_else(|| Headers::with_capacity(8, 256)),
            next_line: eol + 1,
            content_length: None,
            body_start: None,
            searched: 0,
            seen: 0,
        }))
    }

    /// Reads as far as `buf` allows; `None` when the frame is not complete yet.
    fn resume(&self, p: &mut Partial, buf: &mut BytesMut) -> Result<Option<Frame>, StompError> {
        let limits = &self.limits;
        let escaping = Escaping::of(self.version, p.command);
        let body_start = loop {
            if let Some(start) = p.body_start {
                break start;
            }
            let rest = &buf[p.next_line..];
            let Some(eol) = memchr(b'\n', rest) else {
                // One byte of slack: the line may still end with "\r\n".
                if rest.len() > limits.max_header_length + 1 {
                    return Err(StompError::HeaderTooLong {
                        command: p.command,
                        max: limits.max_header_length,
                    });
                }
                self.check_size(buf.len())?;
                return Ok(None);
            };
            let line = strip_cr(&rest[..eol]);
            let line_end = p.next_line + eol + 1;
            self.check_size(line_end)?;
            p.next_line = line_end;
            if line.is_empty() {
                p.body_start = Some(line_end);
                continue;
            }
            if p.headers.len() == limits.max_headers {
                return Err(StompError::TooManyHeaders {
                    command: p.command,
                    max: limits.max_headers,
                });
            }
            if line.len() > limits.max_header_length {
                return Err(StompError::HeaderTooLong {
                    command: p.command,
                    max: limits.max_header_length,
                });
            }
            let is_content_length = parse_header(line, p.command, escaping, &mut p.headers)?;
            if is_content_length && p.content_length.is_none() {
                if let Some((_, value)) = p.headers.last() {
                    let len = parse_content_length(value, p.command)?;
                    // Refuse an oversize body from its header, before any of it is buffered.
                    self.check_size(line_end.saturating_add(len).saturating_add(1))?;
                    p.content_length = Some(len);
                }
            }
        };

        let (body_len, total) = match p.content_length {
            Some(len) => {
                let total = body_start + len + 1;
                self.check_size(total)?;
                if buf.len() < total {
                    return Ok(None);
                }
                let found = buf[body_start + len];
                if found != 0 {
                    return Err(StompError::MissingNul {
                        command: p.command,
                        content_length: len,
                        found,
                    });
                }
                (len, total)
            }
            None => {
                // A NUL at offset i makes a frame of i + 1 bytes: look no further than the limit.
                let search_end = buf.len().min(limits.max_frame_size);
                let from = (body_start + p.searched).min(search_end);
                match memchr(0, &buf[from..search_end]) {
                    Some(i) => {
                        let nul = from + i;
                        (nul - body_start, nul + 1)
                    }
                    None => {
                        p.searched = search_end.saturating_sub(body_start);
                        self.check_size(buf.len() + 1)?;
                        return Ok(None);
                    }
                }
            }
        };

        let body = if self.copies_body(body_len) {
            let body = Bytes::copy_from_slice(&buf[body_start..body_start + body_len]);
            buf.advance(total);
            body
        } else {
            buf.split_to(total)
                .freeze()
                .slice(body_start..body_start + body_len)
        };
        Ok(Some(Frame {
            command: p.command,
            headers: std::mem::take(&mut p.headers),
            body,
        }))
    }

    /// Finds a whole SEND at the front of `buf` that can be read in place: no frame is half
    /// read, and every header line is ASCII with a ':' and no backslash, within the limits.
    /// `None` leaves the bytes to [`Decoder::decode`] (a frame still arriving, another command,
    /// an escape, anything it would refuse).
    pub fn in_place_send(&self, buf: &[u8]) -> Option<InPlaceSend> {
        if self.partial.is_some() {
            return None;
        }
        let headers_start = if buf.starts_with(b"SEND\n") {
            5
        } else if buf.starts_with(b"SEND\r\n") {
            6
        } else {
            return None;
        };
        let limits = &self.limits;
        let mut lines = [(0u32, 0u32, 0u32); IN_PLACE_HEADERS];
        let (mut at, mut count, mut content_length) = (headers_start, 0, None);
        let body_start = loop {
            let eol = memchr(b'\n', &buf[at..])?;
            let line = strip_cr(&buf[at..at + eol]);
            let line_end = at + eol + 1;
            if line.is_empty() {
                break line_end;
            }
            if count == limits.max_headers.min(IN_PLACE_HEADERS)
                || line.len() > limits.max_header_length
                || line_end > u32::MAX as usize
            {
                return None;
            }
            let scan = LineScan::of(line);
            if scan.nul || scan.backslash || !scan.ascii {
                return None;
            }
            let colon = memchr(b':', line)?;
            if content_length.is_none() && &line[..colon] == b"content-length" {
                let value = ascii_str(&line[colon + 1..]);
                content_length = Some(parse_content_length(value, Command::Send).ok()?);
            }
            lines[count] = (at as u32, (at + colon) as u32, (at + line.len()) as u32);
            count += 1;
            at = line_end;
        };
        let (body_end, total) = match content_length {
            Some(len) => {
                let body_end = body_start.checked_add(len)?;
                if buf.len() <= body_end || buf[body_end] != 0 {
                    return None;
                }
                (body_end, body_end + 1)
            }
            None => {
                let search_end = buf.len().min(limits.max_frame_size);
                let nul = body_start + memchr(0, buf.get(body_start..search_end)?)?;
                (nul, nul + 1)
            }
        };
        // Every size `decode` checks on the way is at most the whole frame's.
        if total > limits.max_frame_size {
            return None;
        }
        Some(InPlaceSend {
            lines,
            count,
            body: body_start..body_end,
            total,
            copy_body: self.copies_body(body_end - body_start),
        })
    }

    /// Refuses a frame known to be at least `size` bytes long when that passes the limit.
    fn check_size(&self, size: usize) -> Result<(), StompError> {
        if size > self.limits.max_frame_size {
            return Err(StompError::FrameTooLarge {
                size,
                max: self.limits.max_frame_size,
            });
        }
        Ok(())
    }
}

enum Start {
    Decoded(Decoded),
    Frame(Partial),
}

/// Header lines a SEND read in place may have (more: it is decoded). A producer's SEND has a
/// few.
const IN_PLACE_HEADERS: usize = 8;

/// Where a whole SEND lies at the front of a buffer (see [`Decoder::in_place_send`]).
#[derive(Debug)]
pub struct InPlaceSend {
    /// Each header line's start, ':' and end (without its EOL), from the frame's start.
    lines: [(u32, u32, u32); IN_PLACE_HEADERS],
    count: usize,
    body: Range<usize>,
    /// The frame's length, its NUL included.
    total: usize,
    /// The body comes out as a copy of its own (see [`Decoder::copy_bodies_below`]).
    copy_body: bool,
}

impl InPlaceSend {
    /// Takes the frame off `buf` and hands `read` its headers, read in place, and its body
    /// (a copy or a slice of the buffer, as [`Decoder::decode`] would give it).
    pub fn take<T>(self, buf: &mut BytesMut, read: impl FnOnce(PlainHeaders<'_>, Bytes) -> T) -> T {
        let lines = &self.lines[..self.count];
        if self.copy_body {
            let body = Bytes::copy_from_slice(&buf[self.body]);
            let out = read(PlainHeaders::of(&buf[..self.total], lines), body);
            buf.advance(self.total);
            out
        } else {
            let frame = buf.split_to(self.total).freeze();
            let body = frame.slice(self.body);
            read(PlainHeaders::of(&frame, lines), body)
        }
    }
}

/// A frame's header lines read in place: each one ASCII, with a ':' and no escape, so its name
/// and value are its own bytes on either side of the first ':'.
#[derive(Clone, Copy, Debug)]
pub struct PlainHeaders<'f> {
    /// The frame up to its last header line (all ASCII).
    text: &'f str,
    lines: &'f [(u32, u32, u32)],
}

impl<'f> PlainHeaders<'f> {
    /// `frame`: the bytes [`Decoder::in_place_send`] found ASCII from the frame's start up to
    /// its last header line, and maybe more; `lines`: where it found those lines.
    fn of(frame: &'f [u8], lines: &'f [(u32, u32, u32)]) -> PlainHeaders<'f> {
        let end = lines.last().map_or(0, |&(_, _, end)| end as usize);
        PlainHeaders {
            text: ascii_str(&frame[..end]),
            lines,
        }
    }

    /// The headers, in order, as (name, value), as [`Headers::iter`] gives a decoded frame's.
    pub fn iter(self) -> impl Iterator<Item = (&'f str, &'f str)> + Clone {
        let text = self.text;
        self.lines.iter().map(move |&(start, colon, end)| {
            (
                &text[start as usize..colon as usize],
                &text[colon as usize + 1..end as usize],
            )
        })
    }
}

/// Takes one frame or heart-beat off the front of `buf` without keeping state between calls
/// (a frame that arrives in pieces is re-read from its start each time; a connection should
/// keep a [`Decoder`]).
pub fn decode(
    buf: &mut BytesMut,
    version: Version,
    limits: &Limits,
) -> Result<Decoded, StompError> {
    Decoder::new(version, *limits).decode(buf)
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The header escaping rules in force for one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Escaping {
    /// STOMP 1.0, and CONNECT / STOMP / CONNECTED in every version.
    None,
    /// `\\` `\n` `\c`.
    V1_1,
    /// `\\` `\n` `\c` `\r`.
    V1_2,
}

impl Escaping {
    pub(super) fn of(version: Version, command: Command) -> Escaping {
        match version {
            _ if !command.escapes_headers() => Escaping::None,
            Version::V1_0 => Escaping::None,
            Version::V1_1 => Escaping::V1_1,
            Version::V1_2 => Escaping::V1_2,
        }
    }

    fn defined(self) -> &'static str {
        match self {
            Escaping::None => "no escapes",
            Escaping::V1_1 => r"only \\ \n \c",
            Escaping::V1_2 => r"only \\ \n \r \c",
        }
    }
}

/// What one pass over a header line found: the bytes the rest of its reading depends on.
struct LineScan {
    nul: bool,
    backslash: bool,
    /// Every byte is ASCII: the line is UTF-8 without checking.
    ascii: bool,
}

impl LineScan {
    /// One branch-free pass (the compiler vectorises it): header lines are short, and one pass
    /// costs less than a search per question.
    fn of(line: &[u8]) -> LineScan {
        let (mut nul, mut backslash, mut high) = (0u8, 0u8, 0u8);
        for &b in line {
            nul |= (b == 0) as u8;
            backslash |= (b == b'\\') as u8;
            high |= b;
        }
        LineScan {
            nul: nul != 0,
            backslash: backslash != 0,
            ascii: high < 0x80,
        }
    }
}

/// Splits `name:value` at the first ':' (an escaped name holds no raw ':'; a raw ':' in a
/// value is tolerated, as every broker does) and appends both halves, unescaped, to `headers`.
/// Returns whether the header is `content-length` (no escape can spell that name, so the raw
/// name says it).
fn parse_header(
    line: &[u8],
    command: Command,
    escaping: Escaping,
    headers: &mut Headers,
) -> Result<bool, StompError> {
    let scan = LineScan::of(line);
    if scan.nul {
        return Err(StompError::NulInHeaders { command });
    }
    let colon = memchr(b':', line).ok_or_else(|| StompError::HeaderWithoutColon {
        command,
        line: quote(line),
    })?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if scan.ascii && (escaping == Escaping::None || !scan.backslash) {
        // The common line: nothing to unescape and nothing to check.
        headers.push_parts::<StompError>(
            |text| {
                text.push_str(ascii_str(name));
                Ok(())
            },
            |text| {
                text.push_str(ascii_str(value));
                Ok(())
            },
        )?;
    } else {
        headers.push_parts(
            |text| unescape_into(name, line, command, escaping, text),
            |text| unescape_into(value, line, command, escaping, text),
        )?;
    }
    Ok(name == b"content-length")
}

/// `bytes` as text; the caller has seen that every byte is ASCII.
fn ascii_str(bytes: &[u8]) -> &str {
    debug_assert!(bytes.is_ascii());
    // SAFETY: every byte is below 0x80 (`LineScan::ascii`), and ASCII is valid UTF-8.
    unsafe { std::str::from_utf8_unchecked(bytes) }
}

/// Appends `raw` unescaped to `text`: checked as UTF-8 in place, copied once, and allocating
/// nothing unless it holds an escape.
fn unescape_into(
    raw: &[u8],
    line: &[u8],
    command: Command,
    escaping: Escaping,
    text: &mut String,
) -> Result<(), StompError> {
    let not_utf8 = || StompError::HeaderNotUtf8 {
        command,
        line: quote(line),
    };
    if escaping == Escaping::None || memchr(b'\\', raw).is_none() {
        text.push_str(std::str::from_utf8(raw).map_err(|_| not_utf8())?);
        return Ok(());
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter().copied();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let next = bytes.next();
        let unescaped = match next {
            Some(b'\\') => b'\\',
            Some(b'n') => b'\n',
            Some(b'c') => b':',
            Some(b'r') if escaping == Escaping::V1_2 => b'\r',
            _ => {
                let escape = match next {
                    Some(c) => quote(&[b'\\', c]),
                    None => "\\".to_string(),
                };
                return Err(StompError::BadEscape {
                    command,
                    version: if escaping == Escaping::V1_1 {
                        Version::V1_1
                    } else {
                        Version::V1_2
                    },
                    line: quote(line),
                    escape,
                    defined: escaping.defined(),
                });
            }
        };
        out.push(unescaped);
    }
    text.push_str(std::str::from_utf8(&out).map_err(|_| not_utf8())?);
    Ok(())
}

fn parse_content_length(value: &str, command: Command) -> Result<usize, StompError> {
    let digits = value.trim_matches([' ', '\t']);
    let bad = || StompError::BadContentLength {
        command,
        value: quote(value.as_bytes()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    // All digits but too big for usize: larger than any limit, so refuse it as too large.
    Ok(digits.parse::<usize>().unwrap_or(usize::MAX))
}
