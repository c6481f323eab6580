//! STOMP 1.0–1.2 on a client connection: CONNECT/STOMP with version, heart-beat and login
//! negotiation, then its codec — frames → [`Request`]s, deliveries and replies → frames — with
//! ActiveMQ's destination names.
//!
//! Every error is an ERROR frame with a `message` header followed by a close (STOMP has no
//! non-fatal errors); an open transaction dies with its connection. Temporary destinations a
//! client names `/temp-queue/x` are its own (`temp-queue://<connection>.x`); another
//! connection's appear to it as `/remote-temp-queue/<connection>.x`, as in ActiveMQ.
//!
//! Here the parts are only named: `handshake.rs` (CONNECT/STOMP: version, heart-beats, login,
//! session), `codec.rs` (the [`Stomp`] codec a connection runs with), `request.rs` (frames →
//! requests: destination names, drafts, acknowledgements), `encode.rs` (deliveries → MESSAGE
//! frames, and how a connection names destinations to its client).

mod codec;
mod encode;
mod handshake;
mod request;

#[cfg(test)]
pub(crate) use codec::Stomp;
pub(crate) use handshake::{refuse_over_limit, serve};
