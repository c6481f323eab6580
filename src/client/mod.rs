//! The Rust client: a cheap-to-clone [`Client`] handle and one connection task per client.
//!
//! Owns: the client side of the native protocol — connecting, sends (fire-and-forget or with a
//! receipt), subscriptions as streams, acks, transactions, request/reply over a temporary
//! queue, heartbeats, and the failover transport.
//! Must not touch: broker internals; it uses only `wire`, `url` and `transport`, so applications
//! can embed it. Invariants: sends are encoded straight into a shared outgoing buffer that the
//! connection task swaps with its write buffer (double buffering, no per-message allocation);
//! that buffer is bounded — a sender waits while it holds more than `send_buffer` bytes; every
//! pending receipt is answered, with an error if the connection ends first; when the connection
//! ends, every subscription stream ends. The connection task sits behind this API so that the
//! failover transport can replace it without changing the API.
//!
//! With a `failover:(…)` URL a supervisor (see `failover`) runs the connection task again and
//! again: when a connection ends it reconnects by the failover options, then restores the
//! subscriptions (same ids), re-sends every send not yet receipted (same producer id and
//! sequence, so the broker drops what it already has) and, with `trackMessages`, the tracked
//! fire-and-forget sends. Deliveries of an earlier connection are dropped from the streams and
//! their acks ignored: the broker redelivers them. A transaction never outlives the connection
//! it began on: after a failover its operations fail with `RolledBack`, and a commit whose
//! answer the failover cut off is reported rolled back (in doubt).
//!
//! Files: this one holds the handle ([`Client`]) and its options; `shared` the state handles and
//! the connection task share; `connection` the task's loop; `subscription` and `transaction`
//! the two handles a client gives out; `error` the error type; `failover` the supervisor.

mod failover;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{broadcast, mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::transport::{self, Due, IoEvent, Liveness, Pump};
use crate::wire::{self, proto, Body, Decoded, Frame, MessageRef};

pub(crate) use self::failover::Backoff;
pub use self::failover::ClientEvent;
pub use crate::url::{BrokerUrl, ConnectUrl, FailoverOptions, FailoverUrl, UrlError};
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

mod connection;
mod error;
mod shared;
mod subscription;
mod transaction;

pub use self::error::{ClientError, ErrorKind};
pub use self::subscription::{Delivery, Subscription};
pub use self::transaction::Transaction;

pub(crate) use self::connection::{run_connection, End};
use self::connection::{run_single, EVENT_BACKLOG};
use self::shared::{CloseOnDrop, FrameKind, SubEntry, WaitKind};
pub(crate) use self::shared::{SendTracker, Shared};
use self::subscription::ReplyRouter;

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
#[derive(Debug, Clone, Default)]
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

/// A connection to one broker — or, with a failover URL, to whichever broker of the list it
/// can reach. Clone it freely: clones share the connection.
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
            .field("connection_id", &self.shared.info.read().connection_id)
            .finish()
    }
}

/// What the client tells the broker in its `Connect` besides its options.
#[derive(Debug, Clone, Default)]
pub(crate) struct Hello {
    pub fault_tolerant: bool,
    pub failover_reconnect: bool,
    pub temp_prefixes: Vec<String>,
    /// Sent as is: the caller decides whether the broker dialled is a priority one.
    pub priority_pinned: bool,
    /// A reconnect's re-sends: the group connected before, and the first sequence not used
    /// yet (see `Connect::resends_below`).
    pub resent_from_group: String,
    pub resends_below: u64,
    /// Not sent: the priority brokers, for callers that try several URIs.
    pub priority: Vec<BrokerUrl>,
}

fn server_info(c: &proto::Connected) -> ServerInfo {
    ServerInfo {
        connection_id: c.connection_id.clone(),
        server: c.server.clone(),
        group: c.group.clone(),
        member: c.member.clone(),
        protocol_version: c.protocol_version,
        heartbeat: Duration::from_millis(c.heartbeat_ms as u64),
    }
}

/// Dials `url` and completes the handshake; the broker's `Connected` comes back with the
/// connection. Bounded by the URL's `connectionTimeout` or the options' `connect_timeout`.
pub(crate) async fn open(
    url: &BrokerUrl,
    options: &ClientOptions,
    hello: &Hello,
) -> Result<(Pump, proto::Connected), ClientError> {
    let deadline = url.connect_timeout.unwrap_or(options.connect_timeout);
    tokio::time::timeout(deadline, open_unbounded(url, options, hello))
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::Connect {
                url: url.to_string(),
                reason: format!("no answer within {deadline:?}"),
            })
        })
}

async fn open_unbounded(
    url: &BrokerUrl,
    options: &ClientOptions,
    hello: &Hello,
) -> Result<(Pump, proto::Connected), ClientError> {
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
        transport::tls::client_config(ca).map_err(|e| ClientError::InvalidArgument(e.to_string()))
    };
    let server_name = options
        .tls_server_name
        .clone()
        .unwrap_or_else(|| url.host.clone());
    let local = url.local_addr.or(options.local_addr);
    // The URL is already in the error: say the transport's cause without its address again,
    // unless the URL named a host the address was resolved from.
    let dial_err = |e: transport::TransportError| match e {
        transport::TransportError::Connect { addr, source } => {
            if url.host == addr.ip().to_string() {
                connect_err(source.to_string())
            } else {
                connect_err(format!("{addr}: {source}"))
            }
        }
        other => connect_err(other.to_string()),
    };
    let stream: transport::Stream = match url.scheme.as_str() {
        "ssl" => transport::tls::dial(addr, &server_name, std::sync::Arc::new(tls()?), local)
            .await
            .map_err(dial_err)?,
        "quic" => transport::quic::dial(addr, &server_name, tls()?, local)
            .await
            .map_err(dial_err)?,
        _ => Box::new(transport::dial(addr, local).await.map_err(dial_err)?),
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
            fault_tolerant: hello.fault_tolerant,
            failover_reconnect: hello.failover_reconnect,
            temp_prefixes: hello.temp_prefixes.clone(),
            priority_pinned: hello.priority_pinned,
            resent_from_group: hello.resent_from_group.clone(),
            resends_below: hello.resends_below,
        })),
        &mut pump.wbuf,
    );
    loop {
        match wire::decode(&mut pump.rbuf, options.max_frame_size) {
            Ok(Decoded::Frame(Frame {
                body: Some(Body::Connected(c)),
            })) => return Ok((pump, c)),
            Ok(Decoded::Frame(Frame {
                body: Some(Body::Error(e)),
            })) => return Err(ClientError::from_frame(&e)),
            Ok(Decoded::Frame(f)) => {
                return Err(ClientError::Protocol(format!(
                    "expected Connected, got {}",
                    wire::frame_name(&f)
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
    }
}

impl Client {
    /// Connects to `url`: `tcp://host:port` (or `ssl://`, `quic://`), or
    /// `failover:(url1,url2,…)?options` for a client that moves between brokers by itself.
    pub async fn connect(url: &str, options: ClientOptions) -> Result<Client, ClientError> {
        match ConnectUrl::parse(url)? {
            ConnectUrl::Single(u) => {
                let (pump, connected) = open(&u, &options, &Hello::default()).await?;
                let shared = Arc::new(Shared::new(
                    server_info(&connected),
                    u.to_string(),
                    &options,
                    None,
                    None,
                ));
                tokio::spawn(run_single(
                    pump,
                    shared.clone(),
                    options.heartbeat,
                    options.max_frame_size,
                ));
                Ok(Client::with_guard(shared))
            }
            ConnectUrl::Failover(f) => failover::connect(f, options).await,
        }
    }

    fn with_guard(shared: Arc<Shared>) -> Client {
        Client {
            _guard: Some(Arc::new(CloseOnDrop(shared.clone()))),
            shared,
        }
    }

    /// What the broker this client is on said when it connected.
    pub fn server_info(&self) -> ServerInfo {
        self.shared.info.read().clone()
    }

    /// The URL of the broker this client is on now.
    pub fn current_url(&self) -> String {
        self.shared.current_url.read().clone()
    }

    /// How many times a failover client connected again after its first connection, and how
    /// many of those were moves on purpose (rebalance, priority broker).
    pub fn reconnects(&self) -> (u64, u64) {
        (
            self.shared.reconnects.load(Ordering::Relaxed),
            self.shared.moves.load(Ordering::Relaxed),
        )
    }

    /// The broker URIs a failover client learned from cluster pushes (besides the ones it was
    /// given, which it always keeps).
    pub fn cluster_uris(&self) -> Vec<String> {
        self.shared.cluster_uris.read().clone()
    }

    /// The failover client's lifecycle: interrupted, resumed (with the new URL), cluster
    /// changes. Events sent before this call are not seen.
    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.shared
            .events
            .get_or_init(|| broadcast::channel(EVENT_BACKLOG).0)
            .subscribe()
    }

    /// Sends without waiting for the broker (errors arrive later through `take_errors`).
    /// Waits only while the outgoing buffer is full (or, with failover, for a connection).
    pub async fn send(&self, destination: &str, msg: &Outgoing) -> Result<(), ClientError> {
        self.send_inner(destination, msg, 0).await
    }

    /// Sends and waits until the broker has accepted the message. A failover client re-sends
    /// it on its next connection when the receipt has not come.
    pub async fn send_with_receipt(
        &self,
        destination: &str,
        msg: &Outgoing,
    ) -> Result<(), ClientError> {
        let (id, rx) = self.shared.register_receipt(WaitKind::Send);
        if let Err(e) = self.send_inner(destination, msg, id).await {
            self.shared.forget_receipt(id);
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
        let timestamp_ms = now_ms();
        let producer_id = &self.shared.producer_id;
        self.shared
            .enqueue(FrameKind::Send, |out| {
                // The sequence is taken under the same lock that orders the frames: the broker
                // drops a sequence at or below the producer's mark as a re-send.
                let sequence = out.next_sequence;
                out.next_sequence += 1;
                let start = out.buf.len();
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
                    &mut out.buf,
                );
                if let Some(t) = out.tracker.as_mut() {
                    if receipt == 0 {
                        t.fire_and_forget_written(sequence);
                    }
                    if t.wants(receipt) {
                        t.record(sequence, Bytes::copy_from_slice(&out.buf[start..]), receipt);
                    }
                }
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
        let (receipt, wait) = self.shared.register_receipt(WaitKind::Subscribe);
        let frame = proto::Subscribe {
            subscription: id,
            destination: destination.to_string(),
            selector: options.selector.clone(),
            prefetch: options.prefetch,
            priority: options.priority,
            ack_mode: options.ack.to_wire() as i32,
            durable_name: options.durable_name.clone().unwrap_or_default(),
            receipt,
            no_local: options.no_local,
        };
        let shared = &self.shared;
        let queued = shared
            .enqueue(FrameKind::Other, |out| {
                wire::encode(&wire::frame(Body::Subscribe(frame.clone())), &mut out.buf);
                shared.subs.lock().insert(id, SubEntry { tx, frame });
            })
            .await;
        let result = match queued {
            Ok(()) => shared.await_receipt(receipt, wait).await,
            Err(e) => {
                shared.forget_receipt(receipt);
                Err(e)
            }
        };
        if let Err(e) = result {
            shared.subs.lock().remove(&id);
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
            auto_epoch: 0,
            open: true,
        })
    }

    /// Begins a transaction: what it sends becomes visible, and what it acknowledges counts,
    /// only when it commits. A failover while it is open rolls it back (its operations then
    /// fail with `RolledBack`); a commit whose answer a failover cut off is reported rolled
    /// back too, because the client cannot know whether it happened. Dropping it rolls it back.
    pub async fn begin(&self) -> Result<Transaction, ClientError> {
        let id = self.shared.next_transaction.fetch_add(1, Ordering::Relaxed);
        let epoch = self.shared.epoch();
        let tx = Transaction {
            client: self.clone(),
            id,
            epoch,
            done: false,
        };
        tx.control(proto::TransactionAction::Begin, WaitKind::Other)
            .await?;
        Ok(tx)
    }

    /// A name for a new temporary queue owned by this client (created on subscribe). A
    /// failover client keeps its names across brokers.
    pub fn temp_queue_name(&self) -> String {
        self.temp_name("temp-queue")
    }

    /// A name for a new temporary topic owned by this client (created on subscribe), with the
    /// same rules as `temp_queue_name`.
    pub fn temp_topic_name(&self) -> String {
        self.temp_name("temp-topic")
    }

    fn temp_name(&self, scheme: &str) -> String {
        let n = self.shared.next_temp.fetch_add(1, Ordering::Relaxed);
        format!("{scheme}://{}.{}", self.shared.temp_prefix, n)
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

    /// Errors about fire-and-forget sends since the last call: the broker's refusals, and a
    /// failover client's report that it left a broker that never confirmed some of them.
    pub fn take_errors(&self) -> Vec<ClientError> {
        std::mem::take(&mut *self.shared.async_errors.lock())
    }

    /// How many errors arrived for requests without a receipt.
    pub fn async_error_count(&self) -> u64 {
        self.shared.async_error_count.load(Ordering::Relaxed)
    }

    /// Waits until every send so far has reached the broker and been processed (a round trip).
    pub async fn flush(&self) -> Result<(), ClientError> {
        let (id, rx) = self.shared.register_receipt(WaitKind::Ping);
        let ping = wire::frame(Body::Heartbeat(proto::Heartbeat { receipt: id }));
        if let Err(e) = self
            .shared
            .enqueue(FrameKind::Other, |out| {
                wire::encode(&ping, &mut out.buf);
                let next = out.next_sequence;
                if let Some(t) = &mut out.tracker {
                    t.ping(id, next);
                }
            })
            .await
        {
            self.shared.forget_receipt(id);
            return Err(e);
        }
        self.shared.await_receipt(id, rx).await
    }

    /// Disconnects politely: everything queued is sent, then the connection closes.
    pub async fn close(&self) -> Result<(), ClientError> {
        let (id, rx) = self.shared.register_receipt(WaitKind::Other);
        let frame = wire::frame(Body::Disconnect(proto::Disconnect {
            receipt: id,
            reason: "client closed".into(),
        }));
        let queued = tokio::time::timeout(
            Duration::from_secs(5),
            self.shared
                .enqueue(FrameKind::Other, |out| wire::encode(&frame, &mut out.buf)),
        )
        .await;
        if matches!(queued, Ok(Ok(()))) {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        } else {
            self.shared.forget_receipt(id);
        }
        self.shared.stop.cancel();
        self.shared.out_ready.wake();
        self.shared.ended.cancelled().await;
        Ok(())
    }

    /// Resolves when the client has ended, with the reason.
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
        self.shared
            .enqueue(FrameKind::Other, |out| wire::encode(&frame, &mut out.buf))
            .await
    }

    /// Sends an acknowledgement of a delivery that came on connection `epoch`, unless that
    /// connection has ended by the time the frame would be written (it may have waited while a
    /// failover client moved): its tags mean nothing to the next broker, which redelivers.
    /// False when it was dropped.
    async fn send_frame_of(&self, frame: &Frame, epoch: u64) -> Result<bool, ClientError> {
        let shared = &self.shared;
        shared
            .enqueue(FrameKind::Other, |out| {
                let current = shared.epoch() == epoch;
                if current {
                    wire::encode(frame, &mut out.buf);
                }
                current
            })
            .await
    }

    /// `send_frame_of`, then waits for the broker to confirm.
    async fn send_frame_of_with_receipt(
        &self,
        mut frame: Frame,
        epoch: u64,
    ) -> Result<(), ClientError> {
        let (id, rx) = self.shared.register_receipt(WaitKind::Other);
        match &mut frame.body {
            Some(Body::Ack(a)) => a.receipt = id,
            Some(Body::Nack(n)) => n.receipt = id,
            _ => {
                self.shared.forget_receipt(id);
                return Err(ClientError::InvalidArgument(
                    "this frame carries no receipt".into(),
                ));
            }
        }
        match self.send_frame_of(&frame, epoch).await {
            Ok(true) => self.shared.await_receipt(id, rx).await,
            Ok(false) => {
                self.shared.forget_receipt(id);
                Err(ClientError::Interrupted(
                    "the delivery came on a connection that has since ended; the broker redelivers it"
                        .into(),
                ))
            }
            Err(e) => {
                self.shared.forget_receipt(id);
                Err(e)
            }
        }
    }

    async fn send_frame_with_receipt(&self, mut frame: Frame) -> Result<(), ClientError> {
        let (id, rx) = self.shared.register_receipt(WaitKind::Other);
        match &mut frame.body {
            Some(Body::Ack(a)) => a.receipt = id,
            Some(Body::Nack(n)) => n.receipt = id,
            Some(Body::Unsubscribe(u)) => u.receipt = id,
            _ => {
                self.shared.forget_receipt(id);
                return Err(ClientError::InvalidArgument(
                    "this frame carries no receipt".into(),
                ));
            }
        }
        if let Err(e) = self.send_frame(frame).await {
            self.shared.forget_receipt(id);
            return Err(e);
        }
        self.shared.await_receipt(id, rx).await
    }
}
