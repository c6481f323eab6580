//! A member's client listeners: accepting connections (TCP, TLS, WebSocket, QUIC), turning away
//! those over `max_connections` in their own protocol, and handing each admitted one to its
//! protocol's connection task (`serve.rs`).
//!
//! Owns: the accept loops. Must not touch: what a protocol's bytes mean (`native.rs`, `stomp/`,
//! `mqtt.rs`) or the metric handles the connections share (`conn/ctx.rs`). Invariant: an accept
//! loop ends at shutdown or when the member stops accepting (a drain); the connections it
//! admitted go on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::transport::quic::{self, QuicIncoming, QuicListener};
use crate::transport::{ConnectionCount, Incoming, Listener};

use super::conn::ConnCtx;
use super::options::{ListenerSpec, Protocol};
use super::serve::serve_stream;
use super::{mqtt, native, stomp, websocket};

/// A bound listener of either transport.
pub(super) enum Bound {
    /// With its TLS acceptor when the listener is `ssl://` or `stomp+ssl://`.
    Tcp(Listener, Option<tokio_rustls::TlsAcceptor>),
    Quic(QuicListener),
}

impl Bound {
    pub(super) fn count(&self) -> Arc<ConnectionCount> {
        match self {
            Bound::Tcp(l, _) => l.count(),
            Bound::Quic(l) => l.count(),
        }
    }
}

pub(super) async fn accept_loop(
    listener: Listener,
    spec: ListenerSpec,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: Arc<ConnCtx>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let incoming = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.cancelled() => return,
            _ = ctx.accepting.cancelled() => return,
        };
        match incoming {
            Ok(Incoming::Admitted {
                stream,
                peer,
                permit,
            }) => {
                tracker.spawn(serve_connection(
                    stream,
                    peer,
                    (spec.protocol, spec.websocket),
                    tls.clone(),
                    ctx.clone(),
                    shutdown.clone(),
                    permit,
                ));
            }
            Ok(Incoming::OverLimit { stream, peer }) => {
                ctx.metrics.refused("max_connections");
                tracing::debug!(%peer, listener = %spec.url, "refused: max_connections");
                let (protocol, websocket, tls, max, ctx) = (
                    spec.protocol,
                    spec.websocket,
                    tls.clone(),
                    listener.count().max(),
                    ctx.clone(),
                );
                tracker.spawn(async move {
                    let Some(stream) = secure(stream, tls, &ctx).await else {
                        return;
                    };
                    match protocol {
                        _ if websocket => websocket::refuse_over_limit(stream, max).await,
                        Protocol::Native => native::refuse_over_limit(stream, max).await,
                        Protocol::Stomp => stomp::refuse_over_limit(stream, max).await,
                        Protocol::Mqtt => mqtt::refuse_over_limit(stream, ctx).await,
                    }
                });
            }
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(listener = %spec.url, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Completes the TLS handshake when the listener has TLS (within the connect timeout).
async fn secure(
    stream: tokio::net::TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: &ConnCtx,
) -> Option<crate::transport::Stream> {
    let Some(acceptor) = tls else {
        return Some(Box::new(stream));
    };
    match tokio::time::timeout(ctx.settings.connect_timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Some(Box::new(s)),
        Ok(Err(e)) => {
            ctx.metrics.refused("tls_handshake");
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            ctx.metrics.refused("connect_timeout");
            None
        }
    }
}

/// Serves one accepted connection: `(protocol, over a WebSocket)`.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    (protocol, websocket): (Protocol, bool),
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: Arc<ConnCtx>,
    shutdown: CancellationToken,
    permit: crate::transport::Permit,
) {
    // Boxed, as the protocols' futures are (`serve_stream`): the TLS handshake's and the
    // WebSocket upgrade's state would otherwise stay in every connection's task.
    let Some(stream) = Box::pin(secure(stream, tls, &ctx)).await else {
        return;
    };
    if websocket {
        Box::pin(websocket::serve(stream, peer, ctx, shutdown, permit)).await;
    } else {
        serve_stream(stream, peer, protocol, ctx, shutdown, permit).await;
    }
}

pub(super) async fn quic_accept_loop(
    listener: QuicListener,
    spec: ListenerSpec,
    ctx: Arc<ConnCtx>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let incoming = tokio::select! {
            i = listener.accept() => i,
            _ = shutdown.cancelled() => {
                listener.close();
                return;
            }
            _ = ctx.accepting.cancelled() => {
                listener.close();
                return;
            }
        };
        let Some(incoming) = incoming else { return };
        let (ctx, shutdown, timeout) =
            (ctx.clone(), shutdown.clone(), ctx.settings.connect_timeout);
        let (protocol, max) = (spec.protocol, listener.count().max());
        match incoming {
            QuicIncoming::Admitted { incoming, permit } => {
                tracker.spawn(async move {
                    match quic::accept_stream(incoming, timeout).await {
                        Ok((stream, peer)) => {
                            serve_stream(stream, peer, protocol, ctx, shutdown, permit).await
                        }
                        Err(e) => {
                            ctx.metrics.refused("quic_handshake");
                            tracing::debug!(error = %e, "QUIC connection failed");
                        }
                    }
                });
            }
            QuicIncoming::OverLimit(incoming) => {
                ctx.metrics.refused("max_connections");
                tracker.spawn(async move {
                    if let Ok((stream, _)) = quic::accept_stream(incoming, timeout).await {
                        native::refuse_over_limit(stream, max).await;
                    }
                });
            }
        }
    }
}
