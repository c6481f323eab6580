//! WebSocket listeners (`ws://`, and `wss://` through the listener's TLS) for STOMP and MQTT:
//! the HTTP/1.1 upgrade is axum's (tokio-tungstenite underneath); after it, the connection is
//! the very one a TCP client gets (`serve_stream`: the same codec, session and limits), over
//! [`WsStream`], which turns WebSocket messages into a byte stream and back.
//!
//! Owns: the upgrade and the adapter. Must not touch: what the bytes mean — a frame may come
//! whole in one message, split across several, or several to a message, as clients send them.
//! Invariants: the subprotocol (`Sec-WebSocket-Protocol`) picks the protocol (STOMP or MQTT)
//! from [`SUBPROTOCOLS`]; a request that names only protocols not served there is refused
//! (400), one that names none gets STOMP; a message is capped at `max_frame_size`; the
//! connection is served inside the listener's tracked task, so shutdown waits for it as for
//! any other.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use futures_core::Stream as _;
use futures_sink::Sink;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::conn::ConnCtx;
use super::options::Protocol;
use super::serve::serve_stream;
use crate::transport::{Permit, Stream};

/// The WebSocket subprotocols served, in order of preference, and the protocol each carries.
/// (STOMP's version is then negotiated in its CONNECT frame, as over TCP.)
const SUBPROTOCOLS: &[(&str, Protocol)] = &[
    ("v12.stomp", Protocol::Stomp),
    ("v11.stomp", Protocol::Stomp),
    ("v10.stomp", Protocol::Stomp),
    ("mqtt", Protocol::Mqtt),
    // What MQTT 3.1 clients (before the OASIS standard) ask for.
    ("mqttv3.1", Protocol::Mqtt),
];

/// What a request that names none of the served subprotocols gets.
const NO_SUBPROTOCOL: Protocol = Protocol::Stomp;

type Upgraded = oneshot::Sender<(WebSocket, Protocol)>;

/// Serves one accepted (and, for `wss://`, TLS-secured) connection: the upgrade, then the
/// protocol the subprotocol chose, until either side closes.
pub(super) async fn serve(
    stream: Stream,
    peer: SocketAddr,
    ctx: Arc<ConnCtx>,
    shutdown: CancellationToken,
    permit: Permit,
) {
    let (tx, rx) = oneshot::channel();
    let slot: Arc<Mutex<Option<Upgraded>>> = Arc::new(Mutex::new(Some(tx)));
    let max = ctx.settings.max_frame_size;
    let router = Router::new().fallback(
        move |ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>| {
            upgrade(ws, slot.clone(), max)
        },
    );
    let http = hyper::server::conn::http1::Builder::new()
        .serve_connection(
            hyper_util::rt::TokioIo::new(stream),
            hyper_util::service::TowerToHyperService::new(router),
        )
        .with_upgrades();
    // The HTTP part must end (in an upgrade, or not) within the connect timeout.
    tokio::select! {
        r = tokio::time::timeout(ctx.settings.connect_timeout, http) => match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "WebSocket upgrade failed");
                return;
            }
            Err(_) => {
                ctx.metrics.refused("connect_timeout");
                return;
            }
        },
        _ = shutdown.cancelled() => return,
    }
    let upgraded = tokio::select! {
        r = tokio::time::timeout(ctx.settings.connect_timeout, rx) => r,
        _ = shutdown.cancelled() => return,
    };
    // No upgrade (a plain HTTP request, refused): nothing to serve.
    let Ok(Ok((socket, protocol))) = upgraded else {
        return;
    };
    // MQTT goes in binary messages (MQTT 3.1.1 §6); STOMP frames as text, as browsers expect.
    let text = protocol == Protocol::Stomp;
    serve_stream(
        Box::new(WsStream::new(socket, text)),
        peer,
        protocol,
        ctx,
        shutdown,
        permit,
    )
    .await;
}

/// One request per connection: the upgrade, or a refusal and the close.
fn refuse(status: StatusCode, why: String) -> Response {
    (status, [(header::CONNECTION, "close")], why).into_response()
}

async fn upgrade(
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    slot: Arc<Mutex<Option<Upgraded>>>,
    max: usize,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(not_websocket) => {
            return refuse(
                not_websocket.status(),
                format!(
                    "this listener serves STOMP over WebSocket only: {}",
                    not_websocket.body_text()
                ),
            )
        }
    };
    let asked = ws.requested_protocols().next().is_some();
    let ws = ws.protocols(SUBPROTOCOLS.iter().map(|(name, _)| *name));
    let chosen = ws.selected_protocol().and_then(|h| h.to_str().ok());
    let protocol = match chosen {
        Some(name) => SUBPROTOCOLS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| *p),
        None if !asked => Some(NO_SUBPROTOCOL),
        None => None,
    };
    let Some(protocol) = protocol else {
        let served: Vec<&str> = SUBPROTOCOLS.iter().map(|(n, _)| *n).collect();
        return refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "none of the requested WebSocket subprotocols is served here; ask for one of {}",
                served.join(", ")
            ),
        );
    };
    let Some(tx) = slot.lock().take() else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "one WebSocket per connection".into(),
        );
    };
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            let _ = tx.send((socket, protocol));
        })
}

/// Refuses a connection past the listener's `max_connections` with an HTTP 503.
pub(super) async fn refuse_over_limit(mut stream: Stream, max: usize) {
    let body =
        format!("this listener already serves its max_connections ({max}); try another broker\n");
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A WebSocket as a byte stream: reads return the payloads of text and binary messages in
/// turn (pings and pongs are answered by tungstenite and skipped; a close is the end of the
/// stream); each write goes out as one message — binary, or with `text` (STOMP) text when it
/// is UTF-8, as STOMP frames are.
///
/// A write is reported done only once its message is flushed to the socket, because the
/// connection's pump flushes nothing itself. Until then the write is pending with its message
/// already queued; the pump calls again with the same bytes first (it never changes what it
/// offered), and the write then completes with the queued length.
struct WsStream {
    ws: WebSocket,
    text: bool,
    read: Bytes,
    eof: bool,
    /// Bytes of a message queued but not yet flushed.
    queued: Option<usize>,
}

impl WsStream {
    fn new(ws: WebSocket, text: bool) -> WsStream {
        WsStream {
            ws,
            text,
            read: Bytes::new(),
            eof: false,
            queued: None,
        }
    }
}

impl AsyncRead for WsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.read.is_empty() {
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Text(t))) => this.read = Bytes::from(t),
                Some(Ok(Message::Binary(b))) => this.read = b,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => this.eof = true,
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for WsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.queued.is_none() {
            ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(io::Error::other)?;
            let message = match std::str::from_utf8(data) {
                Ok(text) if this.text => Message::Text(text.into()),
                _ => Message::Binary(Bytes::copy_from_slice(data)),
            };
            Pin::new(&mut this.ws)
                .start_send(message)
                .map_err(io::Error::other)?;
            this.queued = Some(data.len());
        }
        ready!(Pin::new(&mut this.ws).poll_flush(cx)).map_err(io::Error::other)?;
        Poll::Ready(Ok(this.queued.take().unwrap_or(0)))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws)
            .poll_flush(cx)
            .map_err(io::Error::other)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws)
            .poll_close(cx)
            .map_err(io::Error::other)
    }
}
