//! The protocol-neutral half of a client connection: one task that reads frames, writes
//! deliveries and replies, applies producer flow control, holds receipts until the journal has
//! synced what they confirm, keeps heartbeats, and honours shutdown. A protocol (native,
//! STOMP) plugs in through [`Protocol`]: it turns frames into broker calls and [`Reply`]s, and
//! encodes what goes out; it never touches the socket.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::time::Instant as TokioInstant;
use tokio_util::sync::CancellationToken;

use crate::broker::{BrokerError, Delivery, Message, OnFull, Published, Session, Target};
use crate::cluster::Registration;
use crate::metrics::{LatencyBatch, DISPATCH_LATENCY_HISTOGRAM, END_TO_END_LATENCY_HISTOGRAM};
use crate::security::{Action, Principal};
use crate::transport::{IoEvent, Pump};
use crate::wire::proto::{self, ErrorCode};

use super::ConnCtx;

/// Deliveries are moved from the outbox into the write buffer while it holds less than this.
const REFILL_BELOW: usize = 64 * 1024;
/// ... and until it holds this much.
const FILL_TO: usize = 256 * 1024;
/// A peer that does not read while we owe it more than this stops being read from.
const WRITE_BACKLOG_LIMIT: usize = 8 * 1024 * 1024;

/// What a protocol asks the driver to do after a frame.
// Not boxed: a reply lives for microseconds in a reused Vec, and boxing `Publish` would cost an
// allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Reply<R> {
    /// Confirm a frame now (after any receipts still waiting, to keep order).
    Receipt(R),
    /// Confirm once the journal has synced this index.
    ReceiptAfter(u64, R),
    /// Tell the peer something went wrong; `fatal` closes the connection after it.
    Error {
        code: ErrorCode,
        message: String,
        receipt: Option<R>,
        fatal: bool,
    },
    /// Accept a message (flow control applies; ACLs were checked by the protocol).
    Publish {
        target: Target,
        message: Message,
        receipt: Option<R>,
    },
    /// The client said goodbye: close once every receipt is out.
    Disconnect,
}

/// A frame decoded by a protocol.
pub(crate) enum Decoded<F> {
    Frame(F),
    /// Something that only shows the peer is alive (a heartbeat).
    Alive,
    NeedMore,
}

/// One wire protocol's side of a connection.
pub(crate) trait Protocol: Send + 'static {
    type Frame: Send;
    type Receipt: Send + std::fmt::Debug;

    /// Takes one frame off the buffer; an error closes the connection (after `encode_error`).
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded<Self::Frame>, (ErrorCode, String)>;
    /// Acts on a frame.
    fn handle(
        &mut self,
        frame: Self::Frame,
        cx: &mut Cx<'_>,
        replies: &mut Vec<Reply<Self::Receipt>>,
    );
    /// Writes a delivery; returns true when the protocol acknowledges it as it is written
    /// (STOMP `ack:auto`).
    fn encode_delivery(&mut self, d: &Delivery, out: &mut BytesMut) -> bool;
    fn encode_receipt(&mut self, receipt: &Self::Receipt, out: &mut BytesMut);
    fn encode_error(
        &mut self,
        code: ErrorCode,
        message: &str,
        receipt: Option<&Self::Receipt>,
        fatal: bool,
        out: &mut BytesMut,
    );
    fn encode_heartbeat(&mut self, out: &mut BytesMut);
    /// Writes a cluster push (protocols that have none never get one).
    fn encode_control(&mut self, _control: proto::ConnectionControl, _out: &mut BytesMut) {}
    /// True when every error ends the connection (STOMP).
    fn errors_are_fatal(&self) -> bool {
        false
    }
    /// What a producer should do with a persistent send that was not confirmed (it may or
    /// may not be delivered): resend it the way this protocol keeps from duplicating it.
    fn resend_advice(&self) -> &'static str {
        "resend it with the same producer id and sequence to be safe"
    }
    /// The connection is ending: undo what must not outlive it (open transactions).
    fn on_close(&mut self, _cx: &mut Cx<'_>) {}
}

/// What a protocol may use while handling a frame.
pub(crate) struct Cx<'a> {
    pub session: &'a mut Session,
    pub ctx: &'a ConnCtx,
    pub principal: &'a Principal,
}

impl Cx<'_> {
    /// Checks an ACL action on a destination; creating a destination that does not exist yet
    /// also needs `Admin`.
    pub fn authorize(&self, action: Action, destination: &str) -> Result<(), String> {
        let Some(authz) = &self.ctx.authorizer else {
            return Ok(());
        };
        let pattern =
            crate::broker::DestinationPattern::parse(destination).map_err(|e| e.to_string())?;
        authz
            .check_pattern(self.principal, action, &pattern)
            .map_err(|d| d.to_string())?;
        let Some(concrete) = pattern.as_destination() else {
            return Ok(());
        };
        if !concrete.kind().is_temp() && !self.session.broker().destination_exists(&concrete) {
            authz
                .check(self.principal, Action::Admin, &concrete)
                .map_err(|d| d.to_string())?;
        }
        Ok(())
    }
}

/// A transaction's staged work, native and STOMP alike.
#[derive(Debug, Default)]
pub(crate) struct Tx {
    pub sends: Vec<(Target, Message)>,
    pub acks: Vec<(u64, u64)>,
    pub nacks: Vec<(u64, u64)>,
}

impl Tx {
    /// Applies the transaction: its sends and acknowledgements take effect together, its
    /// nacks after. Returns the journal index a receipt must wait for (0: none).
    pub fn commit(self, cx: &mut Cx<'_>) -> u64 {
        let index = cx.session.commit(self.sends, &self.acks);
        for (sub, tag) in self.nacks {
            let _ = cx.session.nack(sub, &[tag]);
        }
        index
    }

    /// Undoes the transaction: its sends vanish; what it acknowledged is redelivered.
    pub fn abort(self, cx: &mut Cx<'_>) {
        for (sub, tag) in self.acks.into_iter().chain(self.nacks) {
            let _ = cx.session.nack(sub, &[tag]);
        }
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
        | BrokerError::UnknownDelivery { .. } => C::Invalid,
        BrokerError::NotFound(_) | BrokerError::NoSuchSubscription(_) => C::NotFound,
        BrokerError::NotOwner(_) => C::Forbidden,
        BrokerError::TooManySubscriptions(_)
        | BrokerError::Full { .. }
        | BrokerError::JournalFull { .. } => C::ResourceExhausted,
        BrokerError::ClientIdInUse(_) => C::ClientIdInUse,
        BrokerError::WildcardQueue(_) | BrokerError::SelectorUnsupported(_) => C::Unsupported,
    }
}

/// A send waiting for room (producer flow control).
struct Blocked<R> {
    target: Target,
    message: Message,
    receipt: Option<R>,
}

pub(crate) struct Driver<P: Protocol> {
    pub proto: P,
    pump: Pump,
    session: Session,
    ctx: Arc<ConnCtx>,
    principal: Principal,
    deliveries: VecDeque<Delivery>,
    blocked: Option<Blocked<P::Receipt>>,
    /// Receipts waiting for the journal: (index, when the send was taken, receipt). The
    /// quorum timeout of a replicated group counts from when the send was taken.
    deferred: VecDeque<(u64, tokio::time::Instant, P::Receipt)>,
    closing: Option<&'static str>,
    disconnecting: bool,
    last_read: Instant,
    last_write: Instant,
    /// How often we write when idle, and how long the peer may be silent (None: no limit).
    heartbeat_out: Option<Duration>,
    peer_silence: Option<Duration>,
    /// The connection's place in the cluster registry: its pushes, and the signal that a
    /// failover reconnect of the same client took over.
    registration: Option<Registration>,
    /// Counted in the listener's producers gauge (it has sent a message).
    producing: bool,
    /// Subscriptions counted in the listener's consumers gauge.
    consumers: usize,
}

impl<P: Protocol> Driver<P> {
    pub fn new(
        proto: P,
        pump: Pump,
        session: Session,
        ctx: Arc<ConnCtx>,
        principal: Principal,
        heartbeat_out: Option<Duration>,
        peer_silence: Option<Duration>,
    ) -> Driver<P> {
        let now = Instant::now();
        Driver {
            proto,
            pump,
            session,
            ctx,
            principal,
            deliveries: VecDeque::new(),
            blocked: None,
            deferred: VecDeque::new(),
            closing: None,
            disconnecting: false,
            last_read: now,
            last_write: now,
            heartbeat_out,
            peer_silence,
            registration: None,
            producing: false,
            consumers: 0,
        }
    }

    /// Ties the connection to its place in the cluster registry (pushes, takeover).
    pub fn with_registration(mut self, registration: Registration) -> Driver<P> {
        self.registration = Some(registration);
        self
    }

    fn next_heartbeat_check(&self) -> TokioInstant {
        // At least this often, so idle buffers are given back even without heartbeats.
        let far = Instant::now() + Duration::from_secs(10);
        let out = self
            .heartbeat_out
            .map(|h| self.last_write + h)
            .unwrap_or(far);
        let inbound = self.peer_silence.map(|s| self.last_read + s).unwrap_or(far);
        TokioInstant::from_std(out.min(inbound))
    }

    /// Serves the connection until it ends; returns why.
    pub async fn run(&mut self, shutdown: &CancellationToken) -> &'static str {
        let reason = self.run_loop(shutdown).await;
        self.end_session();
        reason
    }

    /// Undoes what must not outlive the connection and closes the session (idempotent).
    fn end_session(&mut self) {
        let mut cx = Cx {
            session: &mut self.session,
            ctx: &self.ctx,
            principal: &self.principal,
        };
        self.proto.on_close(&mut cx);
        self.deliveries.clear();
        self.session.close();
        self.count_consumers(0);
        if std::mem::take(&mut self.producing) {
            self.ctx.metrics.producer_gone();
        }
    }

    /// Brings the listener's consumers gauge in line with this connection's subscriptions.
    fn count_consumers(&mut self, now: usize) {
        if now != self.consumers {
            self.ctx
                .metrics
                .consumers(now as f64 - self.consumers as f64);
            self.consumers = now;
        }
    }

    fn count_producer(&mut self) {
        if !self.producing {
            self.producing = true;
            self.ctx.metrics.producer_started();
        }
    }

    async fn run_loop(&mut self, shutdown: &CancellationToken) -> &'static str {
        let heartbeat = tokio::time::sleep_until(self.next_heartbeat_check());
        tokio::pin!(heartbeat);
        // Frames may already be buffered behind the handshake.
        self.process_frames();
        loop {
            if self.disconnecting && self.deferred.is_empty() && self.closing.is_none() {
                self.closing = Some("client disconnected");
            }
            if let Some(reason) = self.closing {
                // The frame that ended the connection (an error, a Disconnect's receipt) is the
                // last one written: deliveries not yet encoded go back to their destinations
                // with the session's close instead of trailing after it.
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), self.pump.flush_and_close()).await;
                return reason;
            }
            self.fill();
            self.count_consumers(self.session.subscription_count());
            let reading = self.blocked.is_none() && self.pump.wbuf.len() < WRITE_BACKLOG_LIMIT;
            // A disconnecting client's session has ended: its closed outbox would wake us
            // at once, forever.
            let outbox = (!self.disconnecting).then(|| self.session.outbox().clone());
            let broker = self.session.broker().clone();
            let blocked = self
                .blocked
                .as_ref()
                .map(|b| (b.target.counters().clone(), b.message.persistent));
            let room = async {
                match (&blocked, broker.store()) {
                    (Some((_, true)), Some(store)) => {
                        // The journal frees room as consumers acknowledge and segments go.
                        while !store.journal().has_room() {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    (Some((c, _)), _) => broker.memory().wait_for_room(c).await,
                    (None, _) => std::future::pending().await,
                }
            };
            let synced = async {
                match (self.deferred.front(), broker.store()) {
                    (Some((index, since, _)), Some(store)) => {
                        store.journal().wait_synced_since(*index, *since).await
                    }
                    _ => std::future::pending().await,
                }
            };
            let kicked = self.registration.as_ref().map(|r| r.kicked());
            let replaced = async {
                match &kicked {
                    Some(k) => k.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            let feed = self.registration.as_mut().and_then(|r| r.feed.as_mut());
            let pushed = async {
                match feed {
                    Some(f) => f.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                control = pushed => {
                    self.proto.encode_control(control, &mut self.pump.wbuf);
                }
                _ = replaced, if self.closing.is_none() => {
                    self.error(ErrorCode::ClientIdInUse, "a newer connection of this client took over (failover reconnect)", None, true);
                    self.closing = Some("replaced by a failover reconnect");
                }
                ev = self.pump.next_event(reading, REFILL_BELOW, |cx| match &outbox {
                    Some(o) => o.poll_ready(cx),
                    None => std::task::Poll::Pending,
                }) => match ev {
                    Ok(IoEvent::Read) => {
                        self.last_read = Instant::now();
                        self.process_frames();
                    }
                    Ok(IoEvent::Drained) => self.last_write = Instant::now(),
                    Ok(IoEvent::Wake) => {}
                    Ok(IoEvent::Closed) => return "peer closed",
                    Err(_) => return "socket error",
                },
                _ = room => {
                    self.retry_blocked();
                    self.process_frames();
                }
                result = synced => self.release_receipts(result),
                _ = &mut heartbeat => {
                    self.on_heartbeat_timer();
                    heartbeat.as_mut().reset(self.next_heartbeat_check());
                }
                _ = shutdown.cancelled(), if self.closing.is_none() => {
                    self.error(ErrorCode::ShuttingDown, "the broker is shutting down; reconnect to another member", None, true);
                    self.closing = Some("broker shutting down");
                }
            }
        }
    }

    fn on_heartbeat_timer(&mut self) {
        // Buffers a burst grew are given back here, not after every write: a busy connection
        // would otherwise drop and regrow them all the time.
        self.pump.shrink_idle();
        let now = Instant::now();
        if let Some(silence) = self.peer_silence {
            if now >= self.last_read + silence {
                self.error(
                    ErrorCode::Timeout,
                    &format!("nothing received from the client for {silence:?} (heartbeats)"),
                    None,
                    true,
                );
                self.closing = Some("heartbeat timeout");
                return;
            }
        }
        if let Some(h) = self.heartbeat_out {
            if now >= self.last_write + h && self.pump.wbuf.is_empty() {
                self.proto.encode_heartbeat(&mut self.pump.wbuf);
                self.last_write = now;
            }
        }
    }

    /// Moves deliveries from the outbox into the write buffer; acknowledges the ones the
    /// protocol acknowledges on write.
    fn fill(&mut self) {
        if self.pump.wbuf.len() >= REFILL_BELOW {
            return;
        }
        if self.deliveries.is_empty() {
            self.session.outbox().drain_into(&mut self.deliveries);
        }
        let mut written = 0u64;
        let mut ack_on_write: HashMap<u64, Vec<u64>> = HashMap::new();
        let mut dispatch = LatencyBatch::default();
        let mut end_to_end = LatencyBatch::default();
        let timed = self.ctx.metrics.per_message && !self.deliveries.is_empty();
        let now = if timed { crate::broker::now_ms() } else { 0 };
        while self.pump.wbuf.len() < FILL_TO {
            let Some(d) = self.deliveries.pop_front() else {
                break;
            };
            if self.proto.encode_delivery(&d, &mut self.pump.wbuf) {
                ack_on_write.entry(d.subscription).or_default().push(d.tag);
            }
            // Redeliveries would report how long the first consumer held them, not dispatch.
            if timed && d.redelivery_count == 0 {
                if d.message.received_ms != 0 {
                    dispatch.record_ms(now.saturating_sub(d.message.received_ms));
                }
                if d.message.timestamp_ms != 0 {
                    end_to_end.record_ms(now.saturating_sub(d.message.timestamp_ms));
                }
            }
            written += 1;
        }
        if written > 0 {
            self.ctx.metrics.delivered(written);
            self.ctx.metrics.write_batch(written);
            DISPATCH_LATENCY_HISTOGRAM.add(&mut dispatch);
            END_TO_END_LATENCY_HISTOGRAM.add(&mut end_to_end);
        }
        for (sub, tags) in ack_on_write {
            let _ = self.session.ack(sub, 0, &tags);
        }
    }

    fn error(&mut self, code: ErrorCode, message: &str, receipt: Option<&P::Receipt>, fatal: bool) {
        let fatal = fatal || self.proto.errors_are_fatal();
        self.proto
            .encode_error(code, message, receipt, fatal, &mut self.pump.wbuf);
        if fatal && self.closing.is_none() {
            self.closing = Some("error");
        }
    }

    fn process_frames(&mut self) {
        let mut replies = Vec::new();
        while self.blocked.is_none() && self.closing.is_none() && !self.disconnecting {
            match self.proto.decode(&mut self.pump.rbuf) {
                Ok(Decoded::Frame(f)) => {
                    let mut cx = Cx {
                        session: &mut self.session,
                        ctx: &self.ctx,
                        principal: &self.principal,
                    };
                    self.proto.handle(f, &mut cx, &mut replies);
                    for r in replies.drain(..) {
                        self.apply(r);
                    }
                }
                Ok(Decoded::Alive) => {}
                Ok(Decoded::NeedMore) => return,
                Err((code, message)) => {
                    self.ctx.metrics.bad_frame();
                    self.error(code, &message, None, true);
                    self.closing = Some("bad frame");
                }
            }
        }
    }

    fn apply(&mut self, reply: Reply<P::Receipt>) {
        match reply {
            Reply::Receipt(r) => self.receipt_after(0, r),
            Reply::ReceiptAfter(index, r) => self.receipt_after(index, r),
            Reply::Error {
                code,
                message,
                receipt,
                fatal,
            } => self.error(code, &message, receipt.as_ref(), fatal),
            Reply::Publish {
                target,
                message,
                receipt,
            } => self.send(target, message, receipt),
            Reply::Disconnect => {
                // A client may reconnect (with the same client id, to the same durable
                // subscriptions) the moment it reads its DISCONNECT receipt, which is written
                // after this: the session ends now, not once the socket has closed.
                self.end_session();
                self.disconnecting = true;
            }
        }
    }

    /// Accepts a message, or waits for room, or refuses it, per the destination's `on_full`.
    fn send(&mut self, target: Target, message: Message, receipt: Option<P::Receipt>) {
        if !self.session.has_room(&target, message.persistent) {
            match target.on_full() {
                OnFull::Fail => {
                    let e = self.session.full_error(&target, message.persistent);
                    self.ctx.metrics.send_refused(&e);
                    self.error(error_code(&e), &e.to_string(), receipt.as_ref(), false);
                    return;
                }
                OnFull::Block => {
                    self.ctx.metrics.producer_blocked();
                    self.blocked = Some(Blocked {
                        target,
                        message,
                        receipt,
                    });
                    return;
                }
            }
        }
        self.publish(&target, message, receipt);
    }

    fn publish(&mut self, target: &Target, message: Message, receipt: Option<P::Receipt>) {
        match self.session.publish(target, message) {
            Ok(Published::Accepted) | Ok(Published::Duplicate) => {
                self.ctx.metrics.received();
                self.count_producer();
                if let Some(r) = receipt {
                    self.receipt_after(0, r);
                }
            }
            Ok(Published::Pending(index)) => {
                self.ctx.metrics.received();
                self.count_producer();
                if let Some(r) = receipt {
                    self.receipt_after(index, r);
                }
            }
            Err(e) => {
                self.ctx.metrics.send_refused(&e);
                self.error(error_code(&e), &e.to_string(), receipt.as_ref(), false);
            }
        }
    }

    fn retry_blocked(&mut self) {
        if let Some(b) = self.blocked.take() {
            if self.session.has_room(&b.target, b.message.persistent) {
                self.publish(&b.target, b.message, b.receipt);
            } else {
                self.blocked = Some(b);
            }
        }
    }

    /// Sends a receipt once the journal has synced `index` (0: nothing to wait for), in the
    /// order the frames arrived.
    fn receipt_after(&mut self, index: u64, receipt: P::Receipt) {
        let waits = self
            .deferred
            .back()
            .map(|(i, _, _)| *i)
            .unwrap_or(0)
            .max(index);
        let synced = self
            .session
            .broker()
            .store()
            .map(|s| s.journal().synced())
            .unwrap_or(u64::MAX);
        if waits == 0 || (self.deferred.is_empty() && synced >= waits) {
            self.proto.encode_receipt(&receipt, &mut self.pump.wbuf);
        } else {
            self.deferred
                .push_back((waits, tokio::time::Instant::now(), receipt));
        }
    }

    /// Sends the deferred receipts the journal has synced (errors if the journal failed).
    fn release_receipts(&mut self, result: Result<(), crate::store::StoreError>) {
        let synced = self
            .session
            .broker()
            .store()
            .map(|s| s.journal().synced())
            .unwrap_or(u64::MAX);
        match result {
            Ok(()) => {
                while self.deferred.front().is_some_and(|(i, _, _)| *i <= synced) {
                    if let Some((_, _, r)) = self.deferred.pop_front() {
                        self.proto.encode_receipt(&r, &mut self.pump.wbuf);
                    }
                }
            }
            Err(e) => {
                for (_, _, r) in std::mem::take(&mut self.deferred) {
                    self.error(
                        ErrorCode::Unknown,
                        &format!("not confirmed: {e} — {}", self.proto.resend_advice()),
                        Some(&r),
                        false,
                    );
                }
            }
        }
    }
}
