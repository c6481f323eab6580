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

#[cfg(test)]
mod tests {
    //! An idle connection's task holds its protocol's state once: the handshake's result is
    //! moved into the connection, not kept beside it for the connection's life.

    use super::*;
    use crate::broker::{Broker, BrokerSettings};
    use crate::server::conn::tests::ctx;
    use crate::transport::ConnectionCount;

    /// The largest an idle connection's task state may be, for any protocol: 4 KiB (one of
    /// jemalloc's size classes; a protocol whose task kept the handshake's result — a second
    /// codec, session and login — beside its connection needed the 5 or 6 KiB classes).
    const IDLE_TASK_BUDGET: usize = 4096;

    #[test]
    fn an_idle_connection_task_holds_its_protocol_state_once() {
        let ctx = ctx(&Broker::new(BrokerSettings::default()), Vec::new());
        let count = Arc::new(ConnectionCount::new(10));
        let peer: SocketAddr = "127.0.0.1:1".parse().expect("an address");
        let sizes = [Protocol::Native, Protocol::Stomp, Protocol::Mqtt].map(|protocol| {
            let (ours, _theirs) = tokio::io::duplex(64);
            let stream: crate::transport::Stream = Box::new(ours);
            let shutdown = CancellationToken::new();
            let permit = count.try_admit().expect("room for a connection");
            let ctx = ctx.clone();
            let size = match protocol {
                Protocol::Native => {
                    std::mem::size_of_val(&native::serve(stream, peer, ctx, shutdown, permit))
                }
                Protocol::Stomp => {
                    std::mem::size_of_val(&stomp::serve(stream, peer, ctx, shutdown, permit))
                }
                Protocol::Mqtt => {
                    std::mem::size_of_val(&mqtt::serve(stream, peer, ctx, shutdown, permit))
                }
            };
            (protocol, size)
        });
        eprintln!("idle connection task sizes: {sizes:?}");
        for (protocol, size) in sizes {
            assert!(
                size <= IDLE_TASK_BUDGET,
                "a {protocol:?} connection's task is {size} bytes, over {IDLE_TASK_BUDGET}: is a copy of its state (the handshake's result?) kept beside the connection while it runs?"
            );
        }
    }
}
