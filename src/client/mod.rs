//! The Rust client: a cheap-to-clone [`Client`] handle and one connection task per client.
//!
//! Owns: the client side of the native protocol — connecting, sends (fire-and-forget or with a
//! receipt), subscriptions as streams, acks, request/reply over a temporary queue, heartbeats.
//! Must not touch: broker internals; it uses only `wire` and `transport`, so applications can
//! embed it. Invariants: sends are encoded straight into a shared outgoing buffer that the
//! connection task swaps with its write buffer (double buffering, no per-message allocation);
//! that buffer is bounded — a sender waits while it holds more than `send_buffer` bytes; every
//! pending receipt is answered, with an error if the connection ends first; when the connection
//! ends, every subscription stream ends. The connection task sits behind this API so that the
//! failover transport can replace it without changing the API.

mod url;

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::transport::{self, IoEvent, Pump};
use crate::wire::{self, proto, Body, Decoded, Frame, MessageRef};

pub use self::url::{BrokerUrl, UrlError};
pub use crate::wire::proto::ErrorCode;

/// How the client acknowledges deliveries of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckMode {
    /// The client acknowledges for the application once it has taken the message from the
    /// stream (batched; at-least-once).
    #[default]
    Auto,
    /// The application acks; an ack covers every earlier delivery of the subscription.
    Client,
    /// The application acks each delivery on its own.
    ClientIndividual,
}

impl AckMode {
    fn to_wire(self) -> proto::AckMode {
        match self {
            AckMode::Auto => proto::AckMode::Auto,
            AckMode::Client => proto::AckMode::Client,
            AckMode::ClientIndividual => proto::AckMode::ClientIndividual,
        }
    }
}

/// What kind of failure a [`ClientError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The broker could not be reached.
    Connect,
    /// The broker refused a request (see the error code).
    Refused,
    /// The connection is closed.
    Closed,
    /// A deadline passed.
    Timeout,
    /// A bad URL or argument.
    InvalidArgument,
    /// The broker sent something this client does not understand.
    Protocol,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the broker refused: {message} ({code:?})")]
    Refused { code: ErrorCode, message: String },
    #[error("connection closed: {0}")]
    Closed(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::Connect { .. } => ErrorKind::Connect,
            ClientError::Refused { .. } => ErrorKind::Refused,
            ClientError::Closed(_) => ErrorKind::Closed,
            ClientError::Timeout(_) => ErrorKind::Timeout,
            ClientError::Url(_) | ClientError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            ClientError::Protocol(_) => ErrorKind::Protocol,
        }
    }

    /// The broker's error code, for `Refused` errors.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }

    fn from_frame(e: &proto::Error) -> ClientError {
        ClientError::Refused {
            code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unknown),
            message: e.message.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Needed for durable subscriptions; one connection per client id at a time.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub name: String,
    /// How often this client sends a heartbeat when otherwise idle (0 = never).
    pub heartbeat: Duration,
    pub connect_timeout: Duration,
    /// Local address to connect from.
    pub local_addr: Option<IpAddr>,
    pub max_frame_size: usize,
    /// Bytes of encoded, unsent frames a sender may queue before it waits.
    pub send_buffer: usize,
    /// The CA certificate(s) trusted for `ssl://` and `quic://` brokers (PEM file).
    pub tls_ca: Option<std::path::PathBuf>,
    /// The name the broker's certificate must carry (default: the URL's host).
    pub tls_server_name: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            client_id: None,
            username: None,
            password: None,
            name: format!("meshmq-client/{}", env!("CARGO_PKG_VERSION")),
            heartbeat: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            local_addr: None,
            max_frame_size: wire::DEFAULT_MAX_FRAME_SIZE,
            send_buffer: 1 << 20,
            tls_ca: None,
            tls_server_name: None,
        }
    }
}

/// A message to send.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    pub body: Bytes,
    pub headers: Vec<(String, String)>,
    pub persistent: bool,
    /// 0..=9 (default 4).
    pub priority: u8,
    /// Milliseconds since the Unix epoch; 0 = never expires.
    pub expires_at_ms: u64,
    pub reply_to: String,
    pub correlation_id: String,
    pub content_type: String,
}

impl Outgoing {
    pub fn new(body: impl Into<Bytes>) -> Outgoing {
        Outgoing {
            body: body.into(),
            priority: 4,
            ..Outgoing::default()
        }
    }

    pub fn persistent(mut self, yes: bool) -> Self {
        self.persistent = yes;
        self
    }

    pub fn priority(mut self, p: u8) -> Self {
        self.priority = p;
        self
    }

    /// Expires `ttl` from now.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.expires_at_ms = now_ms() + ttl.as_millis() as u64;
        self
    }

    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }

    pub fn reply_to(mut self, dest: impl Into<String>) -> Self {
        self.reply_to = dest.into();
        self
    }

    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = id.into();
        self
    }

    pub fn content_type(mut self, ct: impl Into<String>) -> Self {
        self.content_type = ct.into();
        self
    }
}

/// A message received on a subscription.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub subscription: u64,
    pub tag: u64,
    pub destination: String,
    pub body: Bytes,
    pub headers: Vec<(String, String)>,
    pub persistent: bool,
    pub priority: u8,
    pub expires_at_ms: u64,
    pub producer_id: Bytes,
    pub sequence: u64,
    /// Earlier deliveries of this message (0 = first delivery).
    pub redelivery_count: u32,
    pub reply_to: String,
    pub correlation_id: String,
    pub content_type: String,
    pub timestamp_ms: u64,
}

impl Delivery {
    pub fn redelivered(&self) -> bool {
        self.redelivery_count > 0
    }

    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn from_wire(d: proto::Deliver) -> Delivery {
        Delivery {
            subscription: d.subscription,
            tag: d.tag,
            destination: d.destination,
            body: d.body,
            headers: wire::headers_from_wire(d.headers),
            persistent: d.persistent,
            priority: d.priority.min(u8::MAX as u32) as u8,
            expires_at_ms: d.expires_at_ms,
            producer_id: d.producer_id,
            sequence: d.sequence,
            redelivery_count: d.redelivery_count,
            reply_to: d.reply_to,
            correlation_id: d.correlation_id,
            content_type: d.content_type,
            timestamp_ms: d.timestamp_ms,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    pub ack: AckMode,
    /// 0 = the broker's default.
    pub prefetch: u32,
    pub priority: i32,
    pub durable_name: Option<String>,
    pub selector: String,
    pub no_local: bool,
}

/// What the broker said when the client connected.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub connection_id: String,
    pub server: String,
    pub group: String,
    pub member: String,
    pub protocol_version: u32,
    pub heartbeat: Duration,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

type ReceiptSender = oneshot::Sender<Result<(), ClientError>>;

struct Outbound {
    buf: BytesMut,
    closed: Option<ClientError>,
}

struct Shared {
    out: Mutex<Outbound>,
    out_ready: AtomicWaker,
    room: Notify,
    send_buffer: usize,
    receipts: Mutex<HashMap<u64, ReceiptSender>>,
    subs: Mutex<HashMap<u64, mpsc::UnboundedSender<Delivery>>>,
    next_receipt: AtomicU64,
    next_subscription: AtomicU64,
    next_sequence: AtomicU64,
    next_temp: AtomicU64,
    producer_id: Bytes,
    info: ServerInfo,
    /// Errors the broker reported for requests without a receipt (fire-and-forget sends).
    async_errors: Mutex<Vec<ClientError>>,
    async_error_count: AtomicU64,
    stop: CancellationToken,
    ended: CancellationToken,
    replies: tokio::sync::Mutex<Option<ReplyRouter>>,
}

impl Shared {
    fn closed_error(&self) -> Option<ClientError> {
        self.out.lock().closed.clone()
    }

    /// Encodes a frame into the outgoing buffer, waiting while the buffer is full.
    async fn enqueue(&self, encode: impl Fn(&mut BytesMut)) -> Result<(), ClientError> {
        loop {
            let notified = self.room.notified();
            {
                let mut out = self.out.lock();
                if let Some(e) = &out.closed {
                    return Err(e.clone());
                }
                if out.buf.len() < self.send_buffer {
                    encode(&mut out.buf);
                    drop(out);
                    self.out_ready.wake();
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    fn register_receipt(&self) -> (u64, oneshot::Receiver<Result<(), ClientError>>) {
        let id = self.next_receipt.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.receipts.lock().insert(id, tx);
        (id, rx)
    }

    async fn await_receipt(
        &self,
        id: u64,
        rx: oneshot::Receiver<Result<(), ClientError>>,
    ) -> Result<(), ClientError> {
        match rx.await {
            Ok(r) => r,
            Err(_) => {
                self.receipts.lock().remove(&id);
                Err(self
                    .closed_error()
                    .unwrap_or_else(|| ClientError::Closed("connection ended".into())))
            }
        }
    }

    fn poll_out(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.out_ready.register(cx.waker());
        if !self.out.lock().buf.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Ends the connection when the last handle goes.
struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.stop.cancel();
        // The connection task waits on this waker, not on the token: without the wake it
        // would notice only at its next heartbeat tick, seconds later.
        self.0.out_ready.wake();
    }
}

/// A connection to one broker. Clone it freely: clones share the connection.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    /// `None` for the client's own background work (the reply router), which must not keep
    /// the connection open once the application's handles are gone.
    _guard: Option<Arc<CloseOnDrop>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("connection_id", &self.shared.info.connection_id)
            .finish()
    }
}

impl Client {
    /// Connects to `url` (`tcp://host:port`).
    pub async fn connect(url: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let parsed = BrokerUrl::parse(url)?;
        let deadline = options.connect_timeout;
        tokio::time::timeout(deadline, Self::connect_to(&parsed, &options))
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::Connect {
                    url: url.to_string(),
                    reason: format!("no answer within {deadline:?}"),
                })
            })
    }

    async fn connect_to(url: &BrokerUrl, options: &ClientOptions) -> Result<Client, ClientError> {
        let connect_err = |reason: String| ClientError::Connect {
            url: url.to_string(),
            reason,
        };
        let addr = url
            .resolve()
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let tls = || -> Result<rustls::ClientConfig, ClientError> {
            let ca = options.tls_ca.as_ref().ok_or_else(|| {
                ClientError::InvalidArgument(format!(
                    "{url} uses TLS: set ClientOptions::tls_ca to the CA file that signed the broker's certificate"
                ))
            })?;
            transport::tls::client_config(ca)
                .map_err(|e| ClientError::InvalidArgument(e.to_string()))
        };
        let server_name = options
            .tls_server_name
            .clone()
            .unwrap_or_else(|| url.host.clone());
        let stream: transport::Stream = match url.scheme.as_str() {
            "ssl" => transport::tls::dial(
                addr,
                &server_name,
                std::sync::Arc::new(tls()?),
                options.local_addr,
            )
            .await
            .map_err(|e| connect_err(e.to_string()))?,
            "quic" => transport::quic::dial(addr, &server_name, tls()?, options.local_addr)
                .await
                .map_err(|e| connect_err(e.to_string()))?,
            _ => Box::new(
                transport::dial(addr, options.local_addr)
                    .await
                    .map_err(|e| connect_err(e.to_string()))?,
            ),
        };
        let mut pump = Pump::new(stream);
        wire::encode(
            &wire::frame(Body::Connect(proto::Connect {
                protocol_version: wire::PROTOCOL_VERSION,
                client_id: options.client_id.clone().unwrap_or_default(),
                username: options.username.clone().unwrap_or_default(),
                password: options.password.clone().unwrap_or_default(),
                heartbeat_ms: options.heartbeat.as_millis() as u32,
                client_name: options.name.clone(),
                fault_tolerant: false,
                failover_reconnect: false,
            })),
            &mut pump.wbuf,
        );
        let connected = loop {
            match wire::decode(&mut pump.rbuf, options.max_frame_size) {
                Ok(Decoded::Frame(Frame {
                    body: Some(Body::Connected(c)),
                })) => break c,
                Ok(Decoded::Frame(Frame {
                    body: Some(Body::Error(e)),
                })) => return Err(ClientError::from_frame(&e)),
                Ok(Decoded::Frame(f)) => {
                    return Err(ClientError::Protocol(format!(
                        "expected Connected, got {:?}",
                        f.body.map(|_| "another frame")
                    )))
                }
                Ok(Decoded::NeedMore(_)) => {}
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
            match pump.next_event(true, 0, |_| Poll::Pending).await {
                Ok(IoEvent::Closed) => {
                    return Err(connect_err("the broker closed the connection".into()))
                }
                Ok(_) => {}
                Err(e) => return Err(connect_err(e.to_string())),
            }
        };
        let info = ServerInfo {
            connection_id: connected.connection_id,
            server: connected.server,
            group: connected.group,
            member: connected.member,
            protocol_version: connected.protocol_version,
            heartbeat: Duration::from_millis(connected.heartbeat_ms as u64),
        };
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            out: Mutex::new(Outbound {
                buf: BytesMut::new(),
                closed: None,
            }),
            out_ready: AtomicWaker::new(),
            room: Notify::new(),
            send_buffer: options.send_buffer.max(1),
            receipts: Mutex::new(HashMap::new()),
            subs: Mutex::new(HashMap::new()),
            next_receipt: AtomicU64::new(1),
            next_subscription: AtomicU64::new(1),
            next_sequence: AtomicU64::new(1),
            next_temp: AtomicU64::new(1),
            producer_id: Bytes::from(format!(
                "{}-{:016x}",
                info.connection_id,
                rand::random::<u64>()
            )),
            info,
            async_errors: Mutex::new(Vec::new()),
            async_error_count: AtomicU64::new(0),
            stop,
            ended: CancellationToken::new(),
            replies: tokio::sync::Mutex::new(None),
        });
        tokio::spawn(run_connection(
            pump,
            shared.clone(),
            options.heartbeat,
            options.max_frame_size,
        ));
        Ok(Client {
            _guard: Some(Arc::new(CloseOnDrop(shared.clone()))),
            shared,
        })
    }

    pub fn server_info(&self) -> &ServerInfo {
        &self.shared.info
    }

    /// Sends without waiting for the broker (errors arrive later through `take_errors`).
    /// Waits only while the outgoing buffer is full.
    pub async fn send(&self, destination: &str, msg: &Outgoing) -> Result<(), ClientError> {
        self.send_inner(destination, msg, 0).await
    }

    /// Sends and waits until the broker has accepted the message.
    pub async fn send_with_receipt(
        &self,
        destination: &str,
        msg: &Outgoing,
    ) -> Result<(), ClientError> {
        let (id, rx) = self.shared.register_receipt();
        if let Err(e) = self.send_inner(destination, msg, id).await {
            self.shared.receipts.lock().remove(&id);
            return Err(e);
        }
        self.shared.await_receipt(id, rx).await
    }

    async fn send_inner(
        &self,
        destination: &str,
        msg: &Outgoing,
        receipt: u64,
    ) -> Result<(), ClientError> {
        let sequence = self.shared.next_sequence.fetch_add(1, Ordering::Relaxed);
        let timestamp_ms = now_ms();
        let producer_id = &self.shared.producer_id;
        self.shared
            .enqueue(|buf| {
                wire::encode_send(
                    &MessageRef {
                        destination,
                        body: &msg.body,
                        headers: &msg.headers,
                        persistent: msg.persistent,
                        priority: msg.priority as u32,
                        expires_at_ms: msg.expires_at_ms,
                        producer_id,
                        sequence,
                        reply_to: &msg.reply_to,
                        correlation_id: &msg.correlation_id,
                        content_type: &msg.content_type,
                        timestamp_ms,
                    },
                    receipt,
                    buf,
                )
            })
            .await
    }

    /// Subscribes; returns once the broker has accepted the subscription.
    pub async fn subscribe(
        &self,
        destination: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, ClientError> {
        let id = self
            .shared
            .next_subscription
            .fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.shared.subs.lock().insert(id, tx);
        let (receipt, wait) = self.shared.register_receipt();
        let frame = wire::frame(Body::Subscribe(proto::Subscribe {
            subscription: id,
            destination: destination.to_string(),
            selector: options.selector.clone(),
            prefetch: options.prefetch,
            priority: options.priority,
            ack_mode: options.ack.to_wire() as i32,
            durable_name: options.durable_name.clone().unwrap_or_default(),
            receipt,
            no_local: options.no_local,
        }));
        let result = match self.shared.enqueue(|b| wire::encode(&frame, b)).await {
            Ok(()) => self.shared.await_receipt(receipt, wait).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            self.shared.subs.lock().remove(&id);
            return Err(e);
        }
        let auto_batch = if options.prefetch == 0 {
            500
        } else {
            (options.prefetch / 2).max(1)
        };
        Ok(Subscription {
            client: self.clone(),
            id,
            destination: destination.to_string(),
            ack: options.ack,
            rx,
            auto_batch,
            auto_pending: 0,
            auto_last: 0,
            open: true,
        })
    }

    /// A name for a new temporary queue owned by this connection (created on subscribe).
    pub fn temp_queue_name(&self) -> String {
        let n = self.shared.next_temp.fetch_add(1, Ordering::Relaxed);
        format!("temp-queue://{}.{}", self.shared.info.connection_id, n)
    }

    /// Sends `msg` to `destination` with a reply-to of this client's reply queue and waits for
    /// the reply carrying the same correlation id.
    pub async fn request(
        &self,
        destination: &str,
        msg: Outgoing,
        timeout: Duration,
    ) -> Result<Delivery, ClientError> {
        let correlation = format!("req-{}", rand::random::<u64>());
        let (tx, rx) = oneshot::channel();
        let reply_queue = {
            let mut replies = self.shared.replies.lock().await;
            if replies.is_none() {
                *replies = Some(ReplyRouter::start(self).await?);
            }
            let router = replies.as_ref().expect("set above");
            router.pending.lock().insert(correlation.clone(), tx);
            router.queue.clone()
        };
        let msg = msg
            .reply_to(reply_queue)
            .correlation_id(correlation.clone());
        let sent = self.send_with_receipt(destination, &msg).await;
        let cleanup = || async {
            if let Some(r) = self.shared.replies.lock().await.as_ref() {
                r.pending.lock().remove(&correlation);
            }
        };
        if let Err(e) = sent {
            cleanup().await;
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(d)) => Ok(d),
            Ok(Err(_)) => Err(self
                .shared
                .closed_error()
                .unwrap_or_else(|| ClientError::Closed("reply queue ended".into()))),
            Err(_) => {
                cleanup().await;
                Err(ClientError::Timeout(format!(
                    "no reply from {destination} within {timeout:?}"
                )))
            }
        }
    }

    /// Errors the broker reported for fire-and-forget sends since the last call.
    pub fn take_errors(&self) -> Vec<ClientError> {
        std::mem::take(&mut *self.shared.async_errors.lock())
    }

    /// How many errors arrived for requests without a receipt.
    pub fn async_error_count(&self) -> u64 {
        self.shared.async_error_count.load(Ordering::Relaxed)
    }

    /// Waits until every send so far has reached the broker and been processed (a round trip).
    pub async fn flush(&self) -> Result<(), ClientError> {
        let (id, rx) = self.shared.register_receipt();
        let ping = wire::frame(Body::Heartbeat(proto::Heartbeat { receipt: id }));
        self.shared.enqueue(|b| wire::encode(&ping, b)).await?;
        self.shared.await_receipt(id, rx).await
    }

    /// Disconnects politely: everything queued is sent, then the connection closes.
    pub async fn close(&self) -> Result<(), ClientError> {
        let (id, rx) = self.shared.register_receipt();
        let frame = wire::frame(Body::Disconnect(proto::Disconnect {
            receipt: id,
            reason: "client closed".into(),
        }));
        if self
            .shared
            .enqueue(|b| wire::encode(&frame, b))
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
        self.shared.stop.cancel();
        self.shared.ended.cancelled().await;
        Ok(())
    }

    /// Resolves when the connection has ended, with the reason.
    pub async fn closed(&self) -> ClientError {
        self.shared.ended.cancelled().await;
        self.shared
            .closed_error()
            .unwrap_or_else(|| ClientError::Closed("closed".into()))
    }

    pub fn is_closed(&self) -> bool {
        self.shared.ended.is_cancelled()
    }

    async fn send_frame(&self, frame: Frame) -> Result<(), ClientError> {
        self.shared.enqueue(|b| wire::encode(&frame, b)).await
    }

    async fn send_frame_with_receipt(&self, mut frame: Frame) -> Result<(), ClientError> {
        let (id, rx) = self.shared.register_receipt();
        match &mut frame.body {
            Some(Body::Ack(a)) => a.receipt = id,
            Some(Body::Nack(n)) => n.receipt = id,
            Some(Body::Unsubscribe(u)) => u.receipt = id,
            _ => {
                return Err(ClientError::InvalidArgument(
                    "this frame carries no receipt".into(),
                ))
            }
        }
        self.send_frame(frame).await?;
        self.shared.await_receipt(id, rx).await
    }
}

/// A subscription: a stream of deliveries. Dropping it does not unsubscribe (call
/// `unsubscribe`); the broker ends it when the connection closes.
pub struct Subscription {
    client: Client,
    id: u64,
    destination: String,
    ack: AckMode,
    rx: mpsc::UnboundedReceiver<Delivery>,
    auto_batch: u32,
    auto_pending: u32,
    auto_last: u64,
    open: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("destination", &self.destination)
            .finish()
    }
}

impl Subscription {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// The next delivery; `None` once the connection has ended.
    pub async fn next(&mut self) -> Option<Delivery> {
        if let Ok(d) = self.rx.try_recv() {
            self.note(&d).await;
            return Some(d);
        }
        // About to wait: acknowledge what the application already took.
        self.flush_auto_ack().await;
        let d = self.rx.recv().await?;
        self.note(&d).await;
        Some(d)
    }

    /// Like `next`, giving up after `timeout`.
    pub async fn next_timeout(&mut self, timeout: Duration) -> Option<Delivery> {
        tokio::time::timeout(timeout, self.next())
            .await
            .ok()
            .flatten()
    }

    async fn note(&mut self, d: &Delivery) {
        if self.ack == AckMode::Auto {
            self.auto_pending += 1;
            self.auto_last = d.tag;
            if self.auto_pending >= self.auto_batch {
                self.flush_auto_ack().await;
            }
        }
    }

    async fn flush_auto_ack(&mut self) {
        if self.auto_pending > 0 && self.open {
            self.auto_pending = 0;
            let frame = wire::frame(Body::Ack(proto::Ack {
                subscription: self.id,
                up_to: self.auto_last,
                tags: Vec::new(),
                receipt: 0,
            }));
            let _ = self.client.send_frame(frame).await;
        }
    }

    fn ack_frame(&self, d: &Delivery) -> Frame {
        let cumulative = self.ack == AckMode::Client;
        wire::frame(Body::Ack(proto::Ack {
            subscription: self.id,
            up_to: if cumulative { d.tag } else { 0 },
            tags: if cumulative { Vec::new() } else { vec![d.tag] },
            receipt: 0,
        }))
    }

    /// Acknowledges `d` (and, in `Client` mode, every earlier delivery).
    pub async fn ack(&self, d: &Delivery) -> Result<(), ClientError> {
        self.client.send_frame(self.ack_frame(d)).await
    }

    /// Acknowledges and waits for the broker to confirm.
    pub async fn ack_with_receipt(&self, d: &Delivery) -> Result<(), ClientError> {
        self.client.send_frame_with_receipt(self.ack_frame(d)).await
    }

    /// Returns `d` to the broker for redelivery.
    pub async fn nack(&self, d: &Delivery) -> Result<(), ClientError> {
        self.client
            .send_frame_with_receipt(wire::frame(Body::Nack(proto::Nack {
                subscription: self.id,
                tags: vec![d.tag],
                receipt: 0,
            })))
            .await
    }

    /// Ends the subscription; with `remove_durable`, a durable subscription is deleted too.
    pub async fn unsubscribe(mut self, remove_durable: bool) -> Result<(), ClientError> {
        self.flush_auto_ack().await;
        self.open = false;
        self.client.shared.subs.lock().remove(&self.id);
        self.client
            .send_frame_with_receipt(wire::frame(Body::Unsubscribe(proto::Unsubscribe {
                subscription: self.id,
                receipt: 0,
                remove_durable,
            })))
            .await
    }
}

impl futures_core::Stream for Subscription {
    type Item = Delivery;

    /// Raw stream access: no automatic acknowledgement (use `next` for `AckMode::Auto`).
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.rx.poll_recv(cx)
    }
}

/// Routes replies arriving on this client's reply queue to the waiting requests.
struct ReplyRouter {
    queue: String,
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<Delivery>>>>,
}

impl ReplyRouter {
    async fn start(client: &Client) -> Result<ReplyRouter, ClientError> {
        let background = Client {
            shared: client.shared.clone(),
            _guard: None,
        };
        let queue = background.temp_queue_name();
        let mut sub = background
            .subscribe(&queue, SubscribeOptions::default())
            .await?;
        let pending: Arc<Mutex<HashMap<String, oneshot::Sender<Delivery>>>> = Arc::default();
        let routes = pending.clone();
        tokio::spawn(async move {
            while let Some(d) = sub.next().await {
                if let Some(tx) = routes.lock().remove(&d.correlation_id) {
                    let _ = tx.send(d);
                }
            }
        });
        Ok(ReplyRouter { queue, pending })
    }
}

/// Moves the outgoing buffer into the pump while it has room; wakes waiting senders.
fn take_outgoing(shared: &Shared, pump: &mut Pump) {
    const REFILL_BELOW: usize = 256 * 1024;
    if pump.wbuf.len() >= REFILL_BELOW {
        return;
    }
    let mut out = shared.out.lock();
    if out.buf.is_empty() {
        return;
    }
    if pump.wbuf.is_empty() {
        std::mem::swap(&mut pump.wbuf, &mut out.buf);
    } else {
        pump.wbuf.extend_from_slice(&out.buf);
        out.buf.clear();
    }
    drop(out);
    shared.room.notify_waiters();
}

async fn run_connection(
    mut pump: Pump,
    shared: Arc<Shared>,
    heartbeat: Duration,
    max_frame_size: usize,
) {
    let broker_heartbeat = shared.info.heartbeat;
    let mut last_read = Instant::now();
    let mut last_write = Instant::now();
    let mut tick = tokio::time::interval(
        [heartbeat, broker_heartbeat]
            .into_iter()
            .filter(|d| !d.is_zero())
            .min()
            .unwrap_or(Duration::from_secs(20))
            .min(Duration::from_secs(20))
            / 2,
    );
    // Set once the application closed the client: what is queued may still go out, for a
    // bounded time (a broker that stopped reading must not keep us spinning).
    let mut stopping: Option<Instant> = None;
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reason: ClientError = 'conn: loop {
        take_outgoing(&shared, &mut pump);
        if let Some(since) = stopping {
            let flushed = pump.wbuf.is_empty() && shared.out.lock().buf.is_empty();
            if flushed || since.elapsed() > Duration::from_secs(2) {
                let _ = tokio::time::timeout(Duration::from_secs(2), pump.flush_and_close()).await;
                break ClientError::Closed("closed by the client".into());
            }
        }
        tokio::select! {
            _ = shared.stop.cancelled(), if stopping.is_none() => {
                stopping = Some(Instant::now());
            }
            _ = tokio::time::sleep(Duration::from_millis(100)), if stopping.is_some() => {}
            ev = pump.next_event(true, 256 * 1024, |cx| shared.poll_out(cx)) => match ev {
                Ok(IoEvent::Read) => {
                    last_read = Instant::now();
                    loop {
                        match wire::decode(&mut pump.rbuf, max_frame_size) {
                            Ok(Decoded::Frame(f)) => {
                                if let Some(fatal) = on_frame(&shared, f) {
                                    break 'conn fatal;
                                }
                            }
                            Ok(Decoded::NeedMore(_)) => break,
                            Err(e) => break 'conn ClientError::Protocol(e.to_string()),
                        }
                    }
                }
                Ok(IoEvent::Drained) => {
                    last_write = Instant::now();
                }
                Ok(IoEvent::Wake) => {}
                Ok(IoEvent::Closed) => break ClientError::Closed("the broker closed the connection".into()),
                Err(e) => break ClientError::Closed(format!("socket error: {e}")),
            },
            _ = tick.tick() => {
                pump.shrink_idle();
                let now = Instant::now();
                if !broker_heartbeat.is_zero() && now.duration_since(last_read) > broker_heartbeat * 3 {
                    break ClientError::Timeout(format!("no heartbeat from the broker for {:?}", broker_heartbeat * 3));
                }
                if !heartbeat.is_zero() && now.duration_since(last_write) >= heartbeat && pump.wbuf.is_empty() {
                    wire::encode(&wire::frame(Body::Heartbeat(proto::Heartbeat { receipt: 0 })), &mut pump.wbuf);
                    last_write = now;
                }
            }
        }
    };
    {
        let mut out = shared.out.lock();
        out.closed = Some(reason.clone());
        out.buf.clear();
    }
    shared.room.notify_waiters();
    for (_, tx) in shared.receipts.lock().drain() {
        let _ = tx.send(Err(reason.clone()));
    }
    shared.subs.lock().clear();
    shared.ended.cancel();
}

/// Handles one frame from the broker; returns an error when the connection must end.
fn on_frame(shared: &Shared, f: Frame) -> Option<ClientError> {
    match f.body {
        Some(Body::Deliver(d)) => {
            let subs = shared.subs.lock();
            if let Some(tx) = subs.get(&d.subscription) {
                let _ = tx.send(Delivery::from_wire(d));
            }
            None
        }
        Some(Body::Receipt(r)) => {
            if let Some(tx) = shared.receipts.lock().remove(&r.receipt) {
                let _ = tx.send(Ok(()));
            }
            None
        }
        Some(Body::Error(e)) => {
            let err = ClientError::from_frame(&e);
            if e.receipt != 0 {
                if let Some(tx) = shared.receipts.lock().remove(&e.receipt) {
                    let _ = tx.send(Err(err.clone()));
                }
            } else if !e.fatal {
                shared.async_error_count.fetch_add(1, Ordering::Relaxed);
                let mut errors = shared.async_errors.lock();
                if errors.len() < 1000 {
                    errors.push(err.clone());
                }
            }
            e.fatal.then_some(err)
        }
        Some(Body::Heartbeat(_)) | Some(Body::Control(_)) => None,
        other => Some(ClientError::Protocol(format!(
            "unexpected frame from the broker: {}",
            wire::frame_name(&Frame { body: other })
        ))),
    }
}
