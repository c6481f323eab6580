//! A member's client listeners: accepting connections (TCP, TLS, WebSocket, QUIC), turning away
//! those over `max_connections` in their own protocol, and handing each admitted one to its
//! protocol's connection task; and the metric handles a listener's connections share.
//!
//! Owns: [`ListenerMetrics`] and the accept loops. Must not touch: what a protocol's bytes mean
//! (`native.rs`, `stomp.rs`, `mqtt.rs`). Invariant: an accept loop ends at shutdown or when the
//! member stops accepting (a drain); the connections it admitted go on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge, Counter, Gauge};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::BrokerError;
use crate::metrics as m;
use crate::transport::quic::{self, QuicIncoming, QuicListener};
use crate::transport::{ConnectionCount, Incoming, Listener};

use super::{mqtt, native, stomp, websocket, ConnCtx, ListenerSpec, Protocol};

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

/// Metric handles of one listener, created once and shared by its connections.
pub(crate) struct ListenerMetrics {
    listener: String,
    protocol: &'static str,
    /// Count each message (see `metrics::message_metrics_enabled`).
    pub(crate) per_message: bool,
    open: Gauge,
    producers: Gauge,
    consumers: Gauge,
    accepted: Counter,
    bad_frames: Counter,
    received: Counter,
    delivered: Counter,
    blocked: Counter,
    write_batch: metrics::Histogram,
}

impl ListenerMetrics {
    pub(super) fn new(listener: &str, protocol: Protocol) -> ListenerMetrics {
        let l = listener.to_string();
        let p = protocol.as_str();
        ListenerMetrics {
            listener: l.clone(),
            protocol: p,
            per_message: m::message_metrics_enabled(),
            open: gauge!(m::CONNECTIONS, "listener" => l.clone(), "protocol" => p),
            producers: gauge!(m::PRODUCERS, "listener" => l.clone(), "protocol" => p),
            consumers: gauge!(m::CONSUMERS, "listener" => l.clone(), "protocol" => p),
            accepted: counter!(m::CONNECTIONS_ACCEPTED, "listener" => l.clone(), "protocol" => p),
            bad_frames: counter!(m::BAD_FRAMES, "listener" => l.clone(), "protocol" => p),
            received: counter!(m::MESSAGES_RECEIVED, "listener" => l.clone(), "protocol" => p),
            delivered: counter!(m::MESSAGES_DELIVERED, "listener" => l.clone(), "protocol" => p),
            blocked: counter!(m::PRODUCER_BLOCKS, "listener" => l.clone(), "protocol" => p),
            write_batch: metrics::histogram!(m::DISPATCH_BATCH, "listener" => l, "protocol" => p),
        }
    }

    pub(super) fn connection_opened(&self) {
        self.open.increment(1.0);
        self.accepted.increment(1);
    }

    pub(super) fn connection_closed(&self) {
        self.open.decrement(1.0);
    }

    pub(super) fn producer_started(&self) {
        self.producers.increment(1.0);
    }

    pub(super) fn producer_gone(&self) {
        self.producers.decrement(1.0);
    }

    /// Subscriptions opened (positive) or closed (negative) on one connection.
    pub(super) fn consumers(&self, change: f64) {
        self.consumers.increment(change);
    }

    pub(super) fn bad_frame(&self) {
        self.bad_frames.increment(1);
    }

    pub(super) fn received(&self, n: u64) {
        if self.per_message && n > 0 {
            self.received.increment(n);
        }
    }

    pub(super) fn delivered(&self, n: u64) {
        if self.per_message {
            self.delivered.increment(n);
        }
    }

    pub(super) fn write_batch(&self, n: u64) {
        if self.per_message {
            self.write_batch.record(n as f64);
        }
    }

    pub(super) fn producer_blocked(&self) {
        self.blocked.increment(1);
    }

    pub(super) fn bad_selector(&self) {
        counter!(m::BAD_SELECTORS, "listener" => self.listener.clone(), "protocol" => self.protocol)
            .increment(1);
    }

    pub(super) fn creation_refused(&self) {
        counter!(m::CREATIONS_REFUSED, "listener" => self.listener.clone(), "protocol" => self.protocol)
            .increment(1);
    }

    pub(super) fn denied(&self) {
        counter!(m::ACCESS_DENIED, "listener" => self.listener.clone(), "protocol" => self.protocol)
            .increment(1);
    }

    pub(super) fn auth_failed(&self) {
        counter!(m::AUTH_FAILURES, "listener" => self.listener.clone(), "protocol" => self.protocol)
            .increment(1);
    }

    pub(super) fn refused(&self, reason: &'static str) {
        counter!(m::CONNECTIONS_REFUSED, "listener" => self.listener.clone(), "reason" => reason)
            .increment(1);
    }

    pub(super) fn send_refused(&self, e: &BrokerError) {
        let reason = match e {
            BrokerError::Full { .. } | BrokerError::JournalFull { .. } => "full",
            BrokerError::NotFound(_) => "not_found",
            BrokerError::NotOwner(_) => "forbidden",
            _ => "invalid",
        };
        counter!(m::SENDS_REFUSED, "protocol" => self.protocol, "reason" => reason).increment(1);
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
    let Some(stream) = secure(stream, tls, &ctx).await else {
        return;
    };
    if websocket {
        websocket::serve(stream, peer, ctx, shutdown, permit).await;
    } else {
        serve_stream(stream, peer, protocol, ctx, shutdown, permit).await;
    }
}

pub(super) async fn serve_stream(
    stream: crate::transport::Stream,
    peer: SocketAddr,
    protocol: Protocol,
    ctx: Arc<ConnCtx>,
    shutdown: CancellationToken,
    permit: crate::transport::Permit,
) {
    match protocol {
        Protocol::Native => native::serve(stream, peer, ctx, shutdown, permit).await,
        Protocol::Stomp => stomp::serve(stream, peer, ctx, shutdown, permit).await,
        Protocol::Mqtt => mqtt::serve(stream, peer, ctx, shutdown, permit).await,
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
