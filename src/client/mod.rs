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

mod failover;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// A failover client lost its connection before the broker confirmed the request; the
    /// error says what became of it.
    Interrupted,
    /// A transaction was rolled back (the connection failed over while it was open, or its
    /// commit was in doubt): nothing it sent was delivered, nothing it acknowledged counts.
    RolledBack,
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
    #[error("interrupted by a failover: {0}")]
    Interrupted(String),
    #[error("transaction rolled back: {0}")]
    RolledBack(String),
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
            ClientError::Interrupted(_) => ErrorKind::Interrupted,
            ClientError::RolledBack(_) => ErrorKind::RolledBack,
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
    /// The connection (counted from 0 by a failover client) it arrived on.
    epoch: u64,
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

    fn from_wire(d: proto::Deliver, epoch: u64) -> Delivery {
        Delivery {
            epoch,
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

type ReceiptSender = oneshot::Sender<Result<(), ClientError>>;

/// What a pending receipt confirms, which decides its fate when a failover client's
/// connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaitKind {
    /// A send: re-sent on the next connection, so it stays pending.
    Send,
    /// A subscription: restored on the next connection with the same receipt.
    Subscribe,
    /// A flush: asked again after the re-sends.
    Ping,
    /// A transaction's commit: in doubt when the connection ends first, so reported rolled
    /// back (as ActiveMQ does).
    Commit,
    /// Anything else (acks, unsubscribes, …): answered with `Interrupted`.
    Other,
}

enum Waiter {
    Reply(ReceiptSender, WaitKind),
    /// A subscription restored after a failover (its id); an error ends it.
    Restore(u64),
}

/// Sends kept for re-sending after a failover: every send waiting for its receipt, and with
/// `trackMessages` the latest fire-and-forget ones (up to `max_cache` bytes) until a later
/// receipt shows the broker has them (it processes a connection's frames in order).
struct SendTracker {
    /// By producer sequence: re-sent in this order.
    sends: BTreeMap<u64, (Bytes, u64)>,
    /// Receipt id → the sequence of its send (sends), or the next sequence when it was asked
    /// (flushes): its answer confirms every fire-and-forget send below that.
    by_receipt: HashMap<u64, u64>,
    pings: HashMap<u64, u64>,
    fire_and_forget: VecDeque<u64>,
    cached_bytes: usize,
    max_cache: usize,
    track_fire_and_forget: bool,
}

impl SendTracker {
    fn new(track_fire_and_forget: bool, max_cache: usize) -> SendTracker {
        SendTracker {
            sends: BTreeMap::new(),
            by_receipt: HashMap::new(),
            pings: HashMap::new(),
            fire_and_forget: VecDeque::new(),
            cached_bytes: 0,
            max_cache,
            track_fire_and_forget,
        }
    }

    fn wants(&self, receipt: u64) -> bool {
        receipt != 0 || self.track_fire_and_forget
    }

    fn record(&mut self, sequence: u64, frame: Bytes, receipt: u64) {
        if receipt != 0 {
            self.by_receipt.insert(receipt, sequence);
        } else {
            self.cached_bytes += frame.len();
            self.fire_and_forget.push_back(sequence);
            while self.cached_bytes > self.max_cache {
                let Some(old) = self.fire_and_forget.pop_front() else {
                    break;
                };
                if let Some((f, _)) = self.sends.remove(&old) {
                    self.cached_bytes -= f.len();
                }
            }
            if self.cached_bytes > self.max_cache {
                return;
            }
        }
        self.sends.insert(sequence, (frame, receipt));
    }

    fn answered(&mut self, receipt: u64) {
        let below = match self.by_receipt.remove(&receipt) {
            Some(seq) => {
                self.sends.remove(&seq);
                seq
            }
            None => match self.pings.remove(&receipt) {
                Some(next) => next,
                None => return,
            },
        };
        while self.fire_and_forget.front().is_some_and(|s| *s < below) {
            if let Some(seq) = self.fire_and_forget.pop_front() {
                if let Some((f, _)) = self.sends.remove(&seq) {
                    self.cached_bytes -= f.len();
                }
            }
        }
    }

    /// A flush was asked when `next` was the next sequence.
    fn ping(&mut self, receipt: u64, next: u64) {
        if self.track_fire_and_forget {
            self.pings.insert(receipt, next);
        }
    }

    fn replay(&self, out: &mut BytesMut) -> usize {
        for (frame, _) in self.sends.values() {
            out.extend_from_slice(frame);
        }
        self.sends.len()
    }
}

struct Outbound {
    buf: BytesMut,
    closed: Option<ClientError>,
    /// False while a failover client is between connections: senders wait.
    connected: bool,
    next_sequence: u64,
    /// `Some` for failover clients.
    tracker: Option<SendTracker>,
}

/// A live subscription: where its deliveries go, and how to restore it after a failover.
struct SubEntry {
    tx: mpsc::UnboundedSender<Delivery>,
    frame: proto::Subscribe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameKind {
    /// A message: with a failover `timeout`, waits at most that long for a connection.
    Send,
    Other,
}

pub(crate) struct Shared {
    out: Mutex<Outbound>,
    out_ready: AtomicWaker,
    /// Woken when the outgoing buffer drains, and when a failover client (re)connects.
    room: Notify,
    send_buffer: usize,
    receipts: Mutex<HashMap<u64, Waiter>>,
    subs: Mutex<HashMap<u64, SubEntry>>,
    next_receipt: AtomicU64,
    next_subscription: AtomicU64,
    next_temp: AtomicU64,
    next_transaction: AtomicU64,
    producer_id: Bytes,
    /// Temporary destination names start with this: the first connection's id, kept across
    /// failovers.
    temp_prefix: String,
    info: RwLock<ServerInfo>,
    /// Which connection this is (a failover client counts up).
    epoch: AtomicU64,
    /// Errors the broker reported for requests without a receipt (fire-and-forget sends).
    async_errors: Mutex<Vec<ClientError>>,
    async_error_count: AtomicU64,
    stop: CancellationToken,
    ended: CancellationToken,
    replies: tokio::sync::Mutex<Option<ReplyRouter>>,
    /// Created by the first `events()` call: a broadcast channel allocates all its slots up
    /// front, which ten thousand clients in one process would pay for (memory, and time at
    /// drop) without ever reading an event.
    events: OnceLock<broadcast::Sender<ClientEvent>>,
    /// The failover `timeout`: how long a send waits for a connection.
    send_timeout: Option<Duration>,
    /// The URL of the broker this client is on now.
    current_url: RwLock<String>,
    /// Connections a failover client opened after its first, and how many were moves.
    reconnects: AtomicU64,
    moves: AtomicU64,
    /// The URIs the brokers pushed (a failover client's learned list).
    cluster_uris: RwLock<Vec<String>>,
}

impl Shared {
    fn new(
        info: ServerInfo,
        url: String,
        options: &ClientOptions,
        tracker: Option<SendTracker>,
        send_timeout: Option<Duration>,
    ) -> Shared {
        Shared {
            out: Mutex::new(Outbound {
                buf: BytesMut::new(),
                closed: None,
                connected: true,
                next_sequence: 1,
                tracker,
            }),
            out_ready: AtomicWaker::new(),
            room: Notify::new(),
            send_buffer: options.send_buffer.max(1),
            receipts: Mutex::new(HashMap::new()),
            subs: Mutex::new(HashMap::new()),
            next_receipt: AtomicU64::new(1),
            next_subscription: AtomicU64::new(1),
            next_temp: AtomicU64::new(1),
            next_transaction: AtomicU64::new(1),
            producer_id: Bytes::from(format!(
                "{}-{:016x}",
                info.connection_id,
                rand::random::<u64>()
            )),
            temp_prefix: info.connection_id.clone(),
            info: RwLock::new(info),
            epoch: AtomicU64::new(0),
            async_errors: Mutex::new(Vec::new()),
            async_error_count: AtomicU64::new(0),
            stop: CancellationToken::new(),
            ended: CancellationToken::new(),
            replies: tokio::sync::Mutex::new(None),
            events: OnceLock::new(),
            send_timeout,
            current_url: RwLock::new(url),
            reconnects: AtomicU64::new(0),
            moves: AtomicU64::new(0),
            cluster_uris: RwLock::new(Vec::new()),
        }
    }

    fn closed_error(&self) -> Option<ClientError> {
        self.out.lock().closed.clone()
    }

    /// Runs `write` on the outgoing buffer once there is a connection and room, waiting until
    /// then (a send waits for a connection at most the failover `timeout`).
    async fn enqueue<R>(
        &self,
        kind: FrameKind,
        write: impl FnOnce(&mut Outbound) -> R,
    ) -> Result<R, ClientError> {
        let mut write = Some(write);
        let mut deadline = match kind {
            FrameKind::Send => self.send_timeout.map(|t| tokio::time::Instant::now() + t),
            FrameKind::Other => None,
        };
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let connected = {
                let mut out = self.out.lock();
                if let Some(e) = &out.closed {
                    return Err(e.clone());
                }
                if out.connected && out.buf.len() < self.send_buffer {
                    let write = write.take().expect("written once");
                    let r = write(&mut out);
                    drop(out);
                    self.out_ready.wake();
                    return Ok(r);
                }
                out.connected
            };
            match deadline {
                Some(at) if !connected => {
                    if tokio::time::timeout_at(at, notified).await.is_err()
                        && !self.out.lock().connected
                    {
                        return Err(ClientError::Timeout(format!(
                            "no broker connection within the failover timeout ({:?}); the client keeps reconnecting",
                            self.send_timeout.unwrap_or_default()
                        )));
                    }
                }
                Some(_) => {
                    deadline = None;
                    notified.await;
                }
                None => notified.await,
            }
        }
    }

    fn register_receipt(
        &self,
        kind: WaitKind,
    ) -> (u64, oneshot::Receiver<Result<(), ClientError>>) {
        let id = self.next_receipt.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.receipts.lock().insert(id, Waiter::Reply(tx, kind));
        (id, rx)
    }

    fn forget_receipt(&self, id: u64) {
        self.receipts.lock().remove(&id);
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

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn emit(&self, event: ClientEvent) {
        // Nobody has asked for events yet: nobody could see this one.
        if let Some(events) = self.events.get() {
            let _ = events.send(event);
        }
    }

    /// A receipt arrived (or an error carrying one): answer whoever waits for it.
    fn answer(&self, id: u64, result: Result<(), ClientError>) {
        let waiter = self.receipts.lock().remove(&id);
        match waiter {
            Some(Waiter::Reply(tx, kind)) => {
                if matches!(kind, WaitKind::Send | WaitKind::Ping) {
                    if let Some(t) = &mut self.out.lock().tracker {
                        t.answered(id);
                    }
                }
                let _ = tx.send(result);
            }
            Some(Waiter::Restore(sub)) => {
                if let Err(e) = result {
                    // The subscription could not be restored: end its stream, say why.
                    self.subs.lock().remove(&sub);
                    self.note_async_error(e.clone());
                    self.emit(ClientEvent::SubscriptionLost {
                        subscription: sub,
                        reason: e.to_string(),
                    });
                }
            }
            None => {}
        }
    }

    fn note_async_error(&self, err: ClientError) {
        self.async_error_count.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.async_errors.lock();
        if errors.len() < 1000 {
            errors.push(err);
        }
    }

    /// A failover client's connection ended: new frames wait for the next one; deliveries and
    /// acks of this one become stale; requests that will not be repeated are answered.
    fn interrupt(&self, reason: &ClientError) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        {
            let mut out = self.out.lock();
            out.connected = false;
            out.buf.clear();
        }
        let mut failed = Vec::new();
        {
            let mut receipts = self.receipts.lock();
            let ids: Vec<u64> = receipts
                .iter()
                .filter(|(_, w)| {
                    matches!(w, Waiter::Restore(_) | Waiter::Reply(_, WaitKind::Other))
                })
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                if let Some(Waiter::Reply(tx, _)) = receipts.remove(&id) {
                    failed.push(tx);
                }
            }
        }
        for tx in failed {
            let _ = tx.send(Err(ClientError::Interrupted(format!(
                "the connection ended before the broker confirmed ({reason}); an unconfirmed ack \
                 or nack leaves the message to be redelivered, an unsubscribe may not have happened"
            ))));
        }
        let commits: Vec<ReceiptSender> = {
            let mut receipts = self.receipts.lock();
            let ids: Vec<u64> = receipts
                .iter()
                .filter(|(_, w)| matches!(w, Waiter::Reply(_, WaitKind::Commit)))
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| match receipts.remove(&id) {
                    Some(Waiter::Reply(tx, _)) => Some(tx),
                    _ => None,
                })
                .collect()
        };
        for tx in commits {
            let _ = tx.send(Err(ClientError::RolledBack(format!(
                "completion in doubt due to failover ({reason}); resend what the transaction sent \
                 if it must arrive"
            ))));
        }
        self.room.notify_waiters();
    }

    /// Writes what a new connection must carry first: the subscriptions (same ids), every
    /// tracked send (same producer id and sequence) and the pending flushes. Then lets senders
    /// in.
    fn restore(&self, wbuf: &mut BytesMut) -> (usize, usize) {
        let mut subs: Vec<proto::Subscribe> =
            self.subs.lock().values().map(|e| e.frame.clone()).collect();
        subs.sort_by_key(|s| s.subscription);
        let pings: Vec<u64> = {
            let mut receipts = self.receipts.lock();
            for s in &mut subs {
                let pending = matches!(
                    receipts.get(&s.receipt),
                    Some(Waiter::Reply(_, WaitKind::Subscribe))
                );
                if !pending {
                    s.receipt = self.next_receipt.fetch_add(1, Ordering::Relaxed);
                    receipts.insert(s.receipt, Waiter::Restore(s.subscription));
                }
            }
            let mut pings: Vec<u64> = receipts
                .iter()
                .filter(|(_, w)| matches!(w, Waiter::Reply(_, WaitKind::Ping)))
                .map(|(id, _)| *id)
                .collect();
            pings.sort_unstable();
            pings
        };
        for s in &subs {
            wire::encode(&wire::frame(Body::Subscribe(s.clone())), wbuf);
        }
        let mut out = self.out.lock();
        let resent = out.tracker.as_ref().map(|t| t.replay(wbuf)).unwrap_or(0);
        for id in pings {
            wire::encode(
                &wire::frame(Body::Heartbeat(proto::Heartbeat { receipt: id })),
                wbuf,
            );
        }
        out.buf.clear();
        out.connected = true;
        drop(out);
        self.room.notify_waiters();
        (subs.len(), resent)
    }

    /// The client is over: everyone waiting is answered, every stream ends.
    fn finish(&self, reason: ClientError) {
        {
            let mut out = self.out.lock();
            out.closed = Some(reason.clone());
            out.connected = false;
            out.buf.clear();
        }
        self.room.notify_waiters();
        let waiters: Vec<Waiter> = self.receipts.lock().drain().map(|(_, w)| w).collect();
        for w in waiters {
            if let Waiter::Reply(tx, _) = w {
                let _ = tx.send(Err(reason.clone()));
            }
        }
        self.subs.lock().clear();
        self.ended.cancel();
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
                if let Some(t) = out.tracker.as_mut().filter(|t| t.wants(receipt)) {
                    t.record(sequence, Bytes::copy_from_slice(&out.buf[start..]), receipt);
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
        let n = self.shared.next_temp.fetch_add(1, Ordering::Relaxed);
        format!("temp-queue://{}.{}", self.shared.temp_prefix, n)
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

/// An open transaction (see [`Client::begin`]).
pub struct Transaction {
    client: Client,
    id: u64,
    /// The connection it was begun on: it cannot outlive it.
    epoch: u64,
    done: bool,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction").field("id", &self.id).finish()
    }
}

impl Transaction {
    fn rolled_back() -> ClientError {
        ClientError::RolledBack(
            "the connection failed over while the transaction was open; the broker rolled it back"
                .into(),
        )
    }

    /// Writes a frame of this transaction, unless the connection it began on is gone.
    async fn enqueue(&self, kind: FrameKind, frame: &Frame) -> Result<(), ClientError> {
        let (shared, epoch) = (&self.client.shared, self.epoch);
        self.client
            .shared
            .enqueue(kind, |out| {
                if shared.epoch() != epoch {
                    return Err(Transaction::rolled_back());
                }
                wire::encode(frame, &mut out.buf);
                Ok(())
            })
            .await?
    }

    async fn control(
        &self,
        action: proto::TransactionAction,
        wait: WaitKind,
    ) -> Result<(), ClientError> {
        let shared = &self.client.shared;
        let (receipt, rx) = shared.register_receipt(wait);
        let frame = wire::frame(Body::Transaction(proto::Transaction {
            transaction: self.id,
            action: action as i32,
            receipt,
        }));
        if let Err(e) = self.enqueue(FrameKind::Other, &frame).await {
            shared.forget_receipt(receipt);
            return Err(e);
        }
        shared.await_receipt(receipt, rx).await
    }

    /// Sends `msg` as part of the transaction (the broker holds it until the commit).
    pub async fn send(&self, destination: &str, msg: &Outgoing) -> Result<(), ClientError> {
        let shared = &self.client.shared;
        let (producer_id, epoch) = (&shared.producer_id, self.epoch);
        let id = self.id;
        self.client
            .shared
            .enqueue(FrameKind::Send, |out| {
                if shared.epoch() != epoch {
                    return Err(Transaction::rolled_back());
                }
                let sequence = out.next_sequence;
                out.next_sequence += 1;
                let send = proto::Send {
                    destination: destination.to_string(),
                    body: msg.body.clone(),
                    headers: wire::headers_to_wire(&msg.headers),
                    persistent: msg.persistent,
                    priority: msg.priority as u32,
                    expires_at_ms: msg.expires_at_ms,
                    producer_id: producer_id.clone(),
                    sequence,
                    receipt: 0,
                    reply_to: msg.reply_to.clone(),
                    correlation_id: msg.correlation_id.clone(),
                    content_type: msg.content_type.clone(),
                    timestamp_ms: now_ms(),
                    transaction: id,
                };
                wire::encode(&wire::frame(Body::Send(send)), &mut out.buf);
                Ok(())
            })
            .await?
    }

    /// Acknowledges `d` as part of the transaction (it counts when the transaction commits).
    /// Use a `Client` or `ClientIndividual` subscription: `Auto` acknowledges by itself.
    pub async fn ack(&self, d: &Delivery) -> Result<(), ClientError> {
        if d.epoch != self.epoch {
            return Err(Transaction::rolled_back());
        }
        let frame = wire::frame(Body::Ack(proto::Ack {
            subscription: d.subscription,
            up_to: 0,
            tags: vec![d.tag],
            receipt: 0,
            transaction: self.id,
        }));
        self.enqueue(FrameKind::Other, &frame).await
    }

    /// Commits: `Ok` once the broker applied (and stored) everything. `RolledBack` when the
    /// transaction did not survive a failover, or the commit's answer was lost in one.
    pub async fn commit(mut self) -> Result<(), ClientError> {
        self.done = true;
        self.control(proto::TransactionAction::Commit, WaitKind::Commit)
            .await
    }

    /// Rolls back: its sends vanish, what it acknowledged is redelivered.
    pub async fn rollback(mut self) -> Result<(), ClientError> {
        self.done = true;
        match self
            .control(proto::TransactionAction::Rollback, WaitKind::Other)
            .await
        {
            // Whatever ended the connection rolled the transaction back already.
            Err(ClientError::RolledBack(_) | ClientError::Interrupted(_)) => Ok(()),
            other => other,
        }
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let shared = &self.client.shared;
        let mut out = shared.out.lock();
        if out.connected && out.closed.is_none() && shared.epoch() == self.epoch {
            let frame = wire::frame(Body::Transaction(proto::Transaction {
                transaction: self.id,
                action: proto::TransactionAction::Rollback as i32,
                receipt: 0,
            }));
            wire::encode(&frame, &mut out.buf);
            drop(out);
            shared.out_ready.wake();
        }
    }
}

/// A subscription: a stream of deliveries. Dropping it does not unsubscribe (call
/// `unsubscribe`); the broker ends it when the connection closes. A failover client restores
/// it on every new connection, with the same id.
pub struct Subscription {
    client: Client,
    id: u64,
    destination: String,
    ack: AckMode,
    rx: mpsc::UnboundedReceiver<Delivery>,
    auto_batch: u32,
    auto_pending: u32,
    auto_last: u64,
    auto_epoch: u64,
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

    fn current(&self, d: &Delivery) -> bool {
        d.epoch == self.client.shared.epoch()
    }

    /// The next delivery; `None` once the client has ended. Deliveries that arrived on a
    /// connection a failover client has since lost are skipped: the broker redelivers them.
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            let d = match self.rx.try_recv() {
                Ok(d) => d,
                Err(_) => {
                    // About to wait: acknowledge what the application already took.
                    self.flush_auto_ack().await;
                    self.rx.recv().await?
                }
            };
            if !self.current(&d) {
                continue;
            }
            self.note(&d).await;
            return Some(d);
        }
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
            if d.epoch != self.auto_epoch {
                self.auto_pending = 0;
                self.auto_epoch = d.epoch;
            }
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
            if self.auto_epoch != self.client.shared.epoch() {
                return;
            }
            let frame = wire::frame(Body::Ack(proto::Ack {
                subscription: self.id,
                up_to: self.auto_last,
                tags: Vec::new(),
                receipt: 0,
                transaction: 0,
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
            transaction: 0,
        }))
    }

    fn stale(&self) -> ClientError {
        ClientError::Interrupted(
            "the delivery came on a connection that has since failed over; the broker redelivers it"
                .into(),
        )
    }

    /// Acknowledges `d` (and, in `Client` mode, every earlier delivery). A delivery from a
    /// connection lost since is not acknowledged (its tag means nothing to the new one).
    pub async fn ack(&self, d: &Delivery) -> Result<(), ClientError> {
        if !self.current(d) {
            return Ok(());
        }
        self.client.send_frame(self.ack_frame(d)).await
    }

    /// Acknowledges and waits for the broker to confirm.
    pub async fn ack_with_receipt(&self, d: &Delivery) -> Result<(), ClientError> {
        if !self.current(d) {
            return Err(self.stale());
        }
        self.client.send_frame_with_receipt(self.ack_frame(d)).await
    }

    /// Returns `d` to the broker for redelivery.
    pub async fn nack(&self, d: &Delivery) -> Result<(), ClientError> {
        if !self.current(d) {
            // The lost connection already returned it.
            return Ok(());
        }
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

    /// Raw stream access: no automatic acknowledgement (use `next` for `AckMode::Auto`), and
    /// deliveries of a lost connection are not filtered out.
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

/// How a connection ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The application closed the client.
    Stopped(ClientError),
    /// The connection broke (or the broker ended it).
    Lost(ClientError),
    /// The client left on purpose (a failover client moving): every receipt it waited for
    /// came first.
    Left,
}

/// The receipt of the `Disconnect` a moving client sends; no request uses it.
const LEAVE_RECEIPT: u64 = u64::MAX;

/// Lifecycle events kept for a reader of `Client::events` that falls behind.
const EVENT_BACKLOG: usize = 1024;

/// A plain (non-failover) client: one connection, then the end.
async fn run_single(pump: Pump, shared: Arc<Shared>, heartbeat: Duration, max_frame_size: usize) {
    let (controls, _) = mpsc::unbounded_channel();
    let end = run_connection(
        pump,
        shared.clone(),
        heartbeat,
        max_frame_size,
        controls,
        CancellationToken::new(),
    )
    .await;
    shared.finish(match end {
        End::Stopped(e) | End::Lost(e) => e,
        End::Left => ClientError::Closed("left".into()),
    });
}

/// Runs one connection until it ends. `controls` receives the broker's ConnectionControl
/// frames; cancelling `leave` makes the connection end politely (a `Disconnect` whose receipt
/// comes after every other).
pub(crate) async fn run_connection(
    mut pump: Pump,
    shared: Arc<Shared>,
    heartbeat: Duration,
    max_frame_size: usize,
    controls: mpsc::UnboundedSender<proto::ConnectionControl>,
    leave: CancellationToken,
) -> End {
    let broker_heartbeat = shared.info.read().heartbeat;
    let epoch = shared.epoch();
    let mut liveness = Liveness::new(
        tokio::time::Instant::now(),
        Some(heartbeat),
        Some(broker_heartbeat * BROKER_SILENT_INTERVALS),
    );
    let timer = tokio::time::sleep_until(next_check(&liveness));
    tokio::pin!(timer);
    // Set once the application closed the client: what is queued may still go out, for a
    // bounded time (a broker that stopped reading must not keep us spinning).
    let mut stopping: Option<Instant> = None;
    // Set once a failover client decided to leave this broker.
    let mut leaving: Option<Instant> = None;
    loop {
        take_outgoing(&shared, &mut pump);
        if let Some(since) = stopping {
            let flushed = pump.wbuf.is_empty() && shared.out.lock().buf.is_empty();
            if flushed || since.elapsed() > Duration::from_secs(2) {
                let _ = tokio::time::timeout(Duration::from_secs(2), pump.flush_and_close()).await;
                return End::Stopped(ClientError::Closed("closed by the client".into()));
            }
        }
        if leaving.is_some_and(|since| since.elapsed() > Duration::from_secs(5)) {
            let _ = tokio::time::timeout(Duration::from_secs(1), pump.flush_and_close()).await;
            return End::Left;
        }
        tokio::select! {
            _ = shared.stop.cancelled(), if stopping.is_none() => {
                stopping = Some(Instant::now());
            }
            _ = leave.cancelled(), if leaving.is_none() && stopping.is_none() => {
                leaving = Some(Instant::now());
                // New frames wait for the next connection; what was queued goes out first.
                {
                    let mut out = shared.out.lock();
                    out.connected = false;
                    pump.wbuf.extend_from_slice(&out.buf);
                    out.buf.clear();
                }
                wire::encode(&wire::frame(Body::Disconnect(proto::Disconnect {
                    receipt: LEAVE_RECEIPT,
                    reason: "moving to another broker".into(),
                })), &mut pump.wbuf);
            }
            // Lazy: a disabled branch's future is still built on every turn of the loop.
            _ = async { tokio::time::sleep(Duration::from_millis(100)).await }, if stopping.is_some() || leaving.is_some() => {}
            ev = pump.next_event(true, 256 * 1024, |cx| shared.poll_out(cx)) => match ev {
                Ok(IoEvent::Read) => {
                    liveness.read(tokio::time::Instant::now());
                    loop {
                        match wire::decode(&mut pump.rbuf, max_frame_size) {
                            Ok(Decoded::Frame(f)) => match on_frame(&shared, f, epoch) {
                                None => {}
                                Some(Outcome::Control(c)) => {
                                    let _ = controls.send(c);
                                }
                                Some(Outcome::Left) => {
                                    let _ = tokio::time::timeout(Duration::from_secs(1), pump.flush_and_close()).await;
                                    return End::Left;
                                }
                                Some(Outcome::Fatal(e)) => return End::Lost(e),
                            },
                            Ok(Decoded::NeedMore(_)) => break,
                            Err(e) => return End::Lost(ClientError::Protocol(e.to_string())),
                        }
                    }
                }
                Ok(IoEvent::Drained) => liveness.wrote(tokio::time::Instant::now()),
                Ok(IoEvent::Wake) => {}
                Ok(IoEvent::Closed) if leaving.is_some() => return End::Left,
                Ok(IoEvent::Closed) => return End::Lost(ClientError::Closed("the broker closed the connection".into())),
                Err(e) => return End::Lost(ClientError::Closed(format!("socket error: {e}"))),
            },
            _ = &mut timer => {
                pump.shrink_idle();
                match liveness.poll(tokio::time::Instant::now(), pump.wbuf.is_empty()) {
                    Some(Due::Dead(silence)) => {
                        return End::Lost(ClientError::Timeout(format!("no heartbeat from the broker for {silence:?}")));
                    }
                    Some(Due::Beat) => wire::encode(&wire::frame(Body::Heartbeat(proto::Heartbeat { receipt: 0 })), &mut pump.wbuf),
                    None => {}
                }
                timer.as_mut().reset(next_check(&liveness));
            }
        }
    }
}

/// Heartbeat intervals of the broker's silence after which a client gives its connection up.
const BROKER_SILENT_INTERVALS: u32 = 3;
/// Idle buffers are given back at least this often, heartbeats or not.
const SHRINK_EVERY: Duration = Duration::from_secs(10);

/// When the connection task must next look at its heartbeats (and idle buffers).
fn next_check(liveness: &Liveness) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    let shrink = now + SHRINK_EVERY;
    liveness.next_check(now).map_or(shrink, |at| at.min(shrink))
}

/// What a frame asks of the connection task.
enum Outcome {
    /// The broker ended the connection with this error.
    Fatal(ClientError),
    Control(proto::ConnectionControl),
    /// The receipt of a moving client's `Disconnect`.
    Left,
}

/// Handles one frame from the broker.
fn on_frame(shared: &Shared, f: Frame, epoch: u64) -> Option<Outcome> {
    match f.body {
        Some(Body::Deliver(d)) => {
            let subs = shared.subs.lock();
            if let Some(e) = subs.get(&d.subscription) {
                let _ = e.tx.send(Delivery::from_wire(d, epoch));
            }
            None
        }
        Some(Body::Receipt(r)) if r.receipt == LEAVE_RECEIPT => Some(Outcome::Left),
        Some(Body::Receipt(r)) => {
            shared.answer(r.receipt, Ok(()));
            None
        }
        Some(Body::Error(e)) => {
            let err = ClientError::from_frame(&e);
            if e.receipt != 0 {
                shared.answer(e.receipt, Err(err.clone()));
            } else if !e.fatal {
                shared.note_async_error(err.clone());
            }
            e.fatal.then_some(Outcome::Fatal(err))
        }
        Some(Body::Control(c)) => Some(Outcome::Control(c)),
        Some(Body::Heartbeat(_)) => None,
        other => Some(Outcome::Fatal(ClientError::Protocol(format!(
            "unexpected frame from the broker: {}",
            wire::frame_name(&Frame { body: other })
        )))),
    }
}
