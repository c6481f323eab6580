//! STOMP 1.0, 1.1 and 1.2 as bytes: frames, their decoder and encoder, version and heart-beat
//! negotiation, and the ActiveMQ destination names STOMP clients use (`/queue/x`, `/topic/x`,
//! `/temp-queue/x`, `/temp-topic/x`).
//!
//! Owns: the STOMP frame format — line endings, header escaping per version, `content-length`
//! bodies, the NUL terminator, the frame limits and the wording of every protocol error (each
//! fit for an ERROR frame's `message` header). Must not touch: sockets, the broker, sessions,
//! authentication; what a frame *means* belongs to the server. Invariants: decoding never
//! panics on any input; a partial frame is answered with `NeedMore` and left in the buffer
//! untouched; every limit is checked while bytes arrive, so a header flood, an overlong header
//! line or an oversize `content-length` is refused before the rest is buffered; `decode` of
//! `encode`'s output gives back the frame (plus the `content-length` header the encoder adds),
//! for every command and version, whenever the headers are representable in that version
//! (see [`encode`] for the replacement of characters a version cannot carry).

mod decode;
mod destination;
mod encode;
mod headers;
mod negotiate;

#[cfg(test)]
mod tests;

use std::fmt;

use bytes::Bytes;

pub use decode::{decode, Decoded, Decoder, InPlaceSend, PlainHeaders};
pub use destination::{
    from_stomp_destination, from_stomp_pattern, to_stomp_destination, STOMP_PREFIXES,
};
pub use encode::{
    encode, encode_message, encode_parts, put_decimal, put_message_header, put_message_value,
    value_colon,
};
pub use headers::Headers;
pub use negotiate::{negotiate, negotiate_heartbeat, parse_heartbeat};

/// The STOMP versions this codec speaks, oldest first (so `Ord` picks the newest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    V1_0,
    V1_1,
    V1_2,
}

impl Version {
    pub const ALL: [Version; 3] = [Version::V1_0, Version::V1_1, Version::V1_2];

    /// The text used in `accept-version` and `version` headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every STOMP command, client and server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    // Client → server.
    Connect,
    Stomp,
    Send,
    Subscribe,
    Unsubscribe,
    Ack,
    Nack,
    Begin,
    Commit,
    Abort,
    Disconnect,
    // Server → client.
    Connected,
    Message,
    Receipt,
    Error,
}

impl Command {
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Connected,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    /// Length of the longest command name (`UNSUBSCRIBE`): a longer first line is refused
    /// without waiting for its end.
    pub const MAX_LEN: usize = 11;

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Connected => "CONNECTED",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    /// The command named by a frame's first line (case-sensitive, as the spec says).
    pub fn parse(name: &[u8]) -> Option<Command> {
        Command::ALL
            .into_iter()
            .find(|c| c.as_str().as_bytes() == name)
    }

    /// Whether a client sends it (a server sends the others).
    pub fn is_client(self) -> bool {
        !matches!(
            self,
            Command::Connected | Command::Message | Command::Receipt | Command::Error
        )
    }

    /// The spec exempts the connection handshake from header escaping in every version.
    pub(crate) fn escapes_headers(self) -> bool {
        !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One STOMP frame. Headers keep their order and their repeats, as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub command: Command,
    pub headers: Headers,
    pub body: Bytes,
}

impl Frame {
    pub fn new(command: Command) -> Frame {
        Frame {
            command,
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }

    /// Appends a header (builder style).
    pub fn with_header(mut self, key: impl AsRef<str>, value: impl AsRef<str>) -> Frame {
        self.headers.push(key.as_ref(), value.as_ref());
        self
    }

    pub fn with_body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = body.into();
        self
    }

    /// The value of header `key`; when it is repeated the first occurrence wins (spec 1.1+).
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers.get(key)
    }
}

/// What the decoder accepts from one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of a whole frame: command line, headers, body and NUL.
    pub max_frame_size: usize,
    /// Header lines in one frame.
    pub max_headers: usize,
    /// Bytes of one header line (`key:value`, escaped, without its EOL).
    pub max_header_length: usize,
}

impl Default for Limits {
    /// ActiveMQ's STOMP defaults (1000 headers of at most 10 KiB) and meshmq's frame size.
    fn default() -> Limits {
        Limits {
            max_frame_size: crate::wire::DEFAULT_MAX_FRAME_SIZE,
            max_headers: 1000,
            max_header_length: 10 * 1024,
        }
    }
}

/// A protocol error. Its `Display` is one line, meant for the `message` header of the ERROR
/// frame sent before the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StompError {
    #[error("unknown command \"{0}\": expected one of CONNECT, STOMP, SEND, SUBSCRIBE, UNSUBSCRIBE, ACK, NACK, BEGIN, COMMIT, ABORT, DISCONNECT")]
    UnknownCommand(String),
    #[error("{command} frame: expected the NUL octet that ends the frame after its {content_length}-byte body (content-length), found byte 0x{found:02x}")]
    MissingNul {
        command: Command,
        content_length: usize,
        found: u8,
    },
    #[error("{command} frame: a NUL octet ended the frame inside its headers; headers end with a blank line")]
    NulInHeaders { command: Command },
    #[error("{command} frame: header \"{line}\" has the undefined escape \"{escape}\" (STOMP {version} defines {defined})")]
    BadEscape {
        command: Command,
        version: Version,
        line: String,
        escape: String,
        defined: &'static str,
    },
    #[error("{command} frame: header line \"{line}\" has no ':' between name and value")]
    HeaderWithoutColon { command: Command, line: String },
    #[error("{command} frame: header line \"{line}\" is not UTF-8")]
    HeaderNotUtf8 { command: Command, line: String },
    #[error("{command} frame: content-length \"{value}\" is not a number of bytes")]
    BadContentLength { command: Command, value: String },
    #[error("frame of {size} bytes or more exceeds the limit of {max} bytes")]
    FrameTooLarge { size: usize, max: usize },
    #[error("{command} frame has more than {max} headers")]
    TooManyHeaders { command: Command, max: usize },
    #[error("{command} frame: a header line is longer than {max} bytes")]
    HeaderTooLong { command: Command, max: usize },
    #[error(
        "heart-beat \"{0}\" is not two comma-separated numbers of milliseconds, e.g. 10000,10000"
    )]
    BadHeartbeat(String),
    #[error("destination \"{given}\": {reason}")]
    BadDestination { given: String, reason: String },
}

/// At most this much of a peer's bad input is quoted back in an error.
const QUOTE_LIMIT: usize = 64;

/// A bounded, one-line quote of peer bytes for an error message: invalid UTF-8 shows as
/// U+FFFD and control characters as Rust escapes (`\n`), so the message stays one line.
fn quote(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(QUOTE_LIMIT)];
    let mut text = String::with_capacity(cut.len());
    for c in String::from_utf8_lossy(cut).chars() {
        if c.is_control() {
            text.extend(c.escape_debug());
        } else {
            text.push(c);
        }
    }
    if bytes.len() > QUOTE_LIMIT {
        text.push('…');
    }
    text
}
