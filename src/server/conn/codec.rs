//! What a wire protocol gives a connection: its [`Codec`] (frames to [`Request`]s, and
//! deliveries, receipts, errors and heartbeats to bytes) and the wire code of each broker
//! refusal. Pure: a codec never touches the socket or the broker.

use std::sync::Arc;

use bytes::BytesMut;

use crate::broker::{BrokerError, Delivery, Message};
use crate::server::request::Request;
use crate::wire::proto::{self, ErrorCode};

/// What a codec found at the front of the read buffer.
// Not boxed: a request lives for microseconds between decode and apply, and boxing a send
// would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Inbound<R> {
    Request(Request<R>),
    /// Something that only shows the peer is alive (a heartbeat).
    Alive,
    NeedMore,
}

/// One wire protocol's side of a connection: bytes to requests, and replies to bytes.
pub(crate) trait Codec: Send + 'static {
    type Receipt: Send + std::fmt::Debug;

    /// Takes one frame off the buffer; an error closes the connection (after `encode_error`).
    fn decode(&mut self, buf: &mut BytesMut)
        -> Result<Inbound<Self::Receipt>, (ErrorCode, String)>;
    /// Writes a delivery; returns true when the protocol acknowledges it as it is written
    /// (STOMP `ack:auto`).
    fn encode_delivery(&mut self, d: &Delivery, out: &mut BytesMut) -> bool;
    fn encode_receipt(&mut self, receipt: &Self::Receipt, out: &mut BytesMut);
    /// Writes an error (`fatal`: the connection closes after it). Returns whether the
    /// connection must close: a protocol may have no way to tell a client of an error but
    /// closing (every STOMP error; an MQTT 3 refused publish).
    fn encode_error(
        &mut self,
        code: ErrorCode,
        message: &str,
        receipt: Option<&Self::Receipt>,
        fatal: bool,
        out: &mut BytesMut,
    ) -> bool;
    fn encode_heartbeat(&mut self, out: &mut BytesMut);
    /// Writes a cluster push (protocols that have none never get one).
    fn encode_control(&mut self, _control: proto::ConnectionControl, _out: &mut BytesMut) {}
    /// What a producer should do with a persistent send that was not confirmed (it may or
    /// may not be delivered): resend it the way this protocol keeps from duplicating it.
    fn resend_advice(&self) -> &'static str {
        "resend it with the same producer id and sequence to be safe"
    }
    /// A transaction's acknowledgements `(subscription, tag)` took effect at its commit.
    fn committed_acks(&mut self, _acks: &[(u64, u64)]) {}
    /// True when a new subscription gets the retained messages of the topics it matches
    /// (MQTT); they are then handed to [`Codec::encode_retained`].
    fn replays_retained(&self) -> bool {
        false
    }
    /// Writes the retained messages a new subscription matches (not acknowledged to the
    /// broker: they stay retained).
    fn encode_retained(
        &mut self,
        _subscription: u64,
        _retained: &[Arc<Message>],
        _out: &mut BytesMut,
    ) {
    }
    /// What the connection asks of the broker as it ends, unless the client said goodbye
    /// (MQTT's will message). Asked once.
    fn farewell(&mut self) -> Option<Request<Self::Receipt>> {
        None
    }
}

/// Maps a broker refusal onto a wire error code.
pub(crate) fn error_code(e: &BrokerError) -> ErrorCode {
    use ErrorCode as C;
    match e {
        BrokerError::Destination(_)
        | BrokerError::SubscriptionExists(_)
        | BrokerError::DurableNeedsClientId
        | BrokerError::DurableOnQueue(_)
        | BrokerError::DurableInUse { .. }
        | BrokerError::BadPriority(_)
        | BrokerError::BadSelector { .. }
        | BrokerError::UnknownDelivery { .. } => C::Invalid,
        BrokerError::NotFound(_) | BrokerError::NoSuchSubscription(_) => C::NotFound,
        BrokerError::NotOwner(_)
        | BrokerError::ClientIdOwned(_)
        | BrokerError::TempPrefixOwned(_) => C::Forbidden,
        BrokerError::TooManySubscriptions(_)
        | BrokerError::Full { .. }
        | BrokerError::JournalFull { .. } => C::ResourceExhausted,
        BrokerError::ClientIdInUse(_) => C::ClientIdInUse,
        BrokerError::WildcardQueue(_) => C::Unsupported,
    }
}
