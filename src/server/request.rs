//! What a client asks of the broker, whatever protocol carried it.
//!
//! A protocol's codec turns each of its frames into one [`Request`] — destinations already
//! parsed into typed values, a message into a [`Draft`], its receipt kept as the protocol's own
//! opaque value `R` — and the connection applies it ([`super::conn::Connection`]); the meaning
//! lives there, once, and the codec only knows bytes and names. Adding a protocol is writing a
//! codec: frames in, requests out; deliveries and replies in, frames out.

use std::fmt;

use crate::broker::{BrokerError, Destination, Draft, SubscribeSpec};
use crate::wire::proto::ErrorCode;

/// A transaction as the client names it: numbered (native) or named (STOMP).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum TxName {
    Numbered(u64),
    Named(String),
}

impl fmt::Display for TxName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxName::Numbered(n) => write!(f, "{n}"),
            TxName::Named(name) => write!(f, "{name:?}"),
        }
    }
}

/// A message to publish (or to stage in a transaction).
#[derive(Debug)]
pub(crate) struct SendRequest<R> {
    pub destination: Destination,
    pub draft: Draft,
    pub transaction: Option<TxName>,
    pub receipt: Option<R>,
}

/// One client request, in broker terms.
#[derive(Debug)]
pub(crate) enum Request<R> {
    Send(SendRequest<R>),
    Subscribe {
        spec: SubscribeSpec,
        receipt: Option<R>,
    },
    Unsubscribe {
        subscription: u64,
        /// Delete the durable subscription too (not only detach from it).
        remove_durable: bool,
        receipt: Option<R>,
    },
    /// Acknowledges every delivery up to `up_to` (cumulative; 0: none) and each of `tags`.
    /// Inside a transaction only `tags` are allowed, and they count at commit.
    Ack {
        subscription: u64,
        up_to: u64,
        tags: Vec<u64>,
        transaction: Option<TxName>,
        receipt: Option<R>,
    },
    /// Hands deliveries back for redelivery (at commit, inside a transaction).
    Nack {
        subscription: u64,
        tags: Vec<u64>,
        transaction: Option<TxName>,
        receipt: Option<R>,
    },
    Begin {
        transaction: TxName,
        receipt: Option<R>,
    },
    Commit {
        transaction: TxName,
        receipt: Option<R>,
    },
    Abort {
        transaction: TxName,
        receipt: Option<R>,
    },
    /// Answer once every earlier request is answered.
    Ping {
        receipt: R,
    },
    /// Goodbye: the receipt (if any) is the last thing written.
    Disconnect {
        receipt: Option<R>,
    },
    /// The frame cannot become a request; tell the client why.
    Refuse {
        refusal: Refusal,
        receipt: Option<R>,
    },
}

/// Why a frame was refused before reaching the broker.
#[derive(Debug, PartialEq)]
pub(crate) enum Refusal {
    /// Not a frame a client may send here (counted as a bad frame); `fatal` closes.
    BadFrame {
        code: ErrorCode,
        message: String,
        fatal: bool,
    },
    /// A request that cannot be done as asked.
    Invalid { code: ErrorCode, message: String },
    /// A send the broker could never take, e.g. to a malformed destination (counted as a
    /// refused send).
    Send(BrokerError),
}

impl Refusal {
    pub(crate) fn invalid(message: impl Into<String>) -> Refusal {
        Refusal::Invalid {
            code: ErrorCode::Invalid,
            message: message.into(),
        }
    }
}

impl<R> Request<R> {
    pub(crate) fn refuse(refusal: Refusal, receipt: Option<R>) -> Request<R> {
        Request::Refuse { refusal, receipt }
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod codec_tests;
