//! One admitted stream (plain, TLS, QUIC or a WebSocket's inner stream) handed to the
//! connection task of its listener's protocol: the one place the protocols are told apart.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::conn::ConnCtx;
use super::options::Protocol;
use super::{mqtt, native, stomp};

/// Serves `stream` as a connection of `protocol` until it ends.
///
/// Each protocol's connection future is boxed: inline, the caller's task would be as large as
/// the largest protocol's state (and the TLS and WebSocket set-up before it) for every
/// connection, whatever it speaks; boxed, an idle connection holds only its own protocol's.
pub(super) async fn serve_stream(
    stream: crate::transport::Stream,
    peer: SocketAddr,
    protocol: Protocol,
    ctx: Arc<ConnCtx>,
    shutdown: CancellationToken,
    permit: crate::transport::Permit,
) {
    match protocol {
        Protocol::Native => Box::pin(native::serve(stream, peer, ctx, shutdown, permit)).await,
        Protocol::Stomp => Box::pin(stomp::serve(stream, peer, ctx, shutdown, permit)).await,
        Protocol::Mqtt => Box::pin(mqtt::serve(stream, peer, ctx, shutdown, permit)).await,
    }
}
