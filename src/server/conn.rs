//! The protocol-neutral half of a client connection: one task that reads frames, applies the
//! requests they carry, writes deliveries and replies, keeps heartbeats, and honours shutdown.
//!
//! A protocol plugs in through [`Codec`]: it decodes its frames into [`Request`]s and encodes
//! deliveries, receipts, errors and heartbeats; it never touches the socket or the broker.
//! [`Connection::apply`] is the one place a request takes effect, for every protocol:
//! authorize → resolve the destination (once; the codec parsed it) → flow control (plain and
//! transactional sends alike) → publish or stage → receipt. Receipts of journaled work wait in
//! a [`SyncedQueue`] until the journal has synced it, and go out in the order the frames came.
//! Owns: the connection's transactions, its blocked send, its held receipts. Must not touch:
//! the journal (the broker's durability facade stands for it) or bytes (the codec's).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::{
    Admission, BrokerError, Delivery, Destination, DestinationPattern, Message, MessageBuilder,
    Published, Session, SyncedQueue, Target,
};
use crate::cluster::Registration;
use crate::metrics::{LatencyBatch, DISPATCH_LATENCY_HISTOGRAM, END_TO_END_LATENCY_HISTOGRAM};
use crate::security::{Action, Principal, Rules};
use crate::store::StoreError;
use crate::transport::{Due, IoEvent, Liveness, Pump};
use crate::wire::proto::{self, ErrorCode};

use super::request::{Refusal, Request, SendRequest, TxName};
use super::ConnCtx;

/// Deliveries are moved from the outbox into the write buffer while it holds less than this.
const REFILL_BELOW: usize = 64 * 1024;
/// ... and until it holds this much.
const FILL_TO: usize = 256 * 1024;
/// A peer that does not read while we owe it more than this stops being read from.
const WRITE_BACKLOG_LIMIT: usize = 8 * 1024 * 1024;
/// Idle buffers are given back at least this often, heartbeats or not.
const SHRINK_EVERY: Duration = Duration::from_secs(10);
/// Received bytes a connection holds of frames not yet handed over without being charged to
/// the memory limit (about a socket buffer's worth), and all it may hold when the broker is at
/// its limit: past them it reads no more until there is room again.
const PENDING_WHEN_FULL: usize = 64 * 1024;
/// Subscriptions and new destinations one connection may create in a burst ...
const CREATION_BURST: f64 = 2000.0;
/// ... and per second after it.
const CREATIONS_PER_SECOND: f64 = 500.0;

/// What a codec found at the front of the read buffer.
// Not boxed: a request lives for microseconds between decode and apply, and boxing a send
// would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Inbound<R> {
    Request(Request<R>),
    /// Something that only shows the peer is alive (a heartbeat).
    Alive,
    NeedMore,
}

/// One wire protocol's side of a connection: bytes to requests, and replies to bytes.
pub(crate) trait Codec: Send + 'static {
    type Receipt: Send + std::fmt::Debug;

    /// Takes one frame off the buffer; an error closes the connection (after `encode_error`).
    fn decode(&mut self, buf: &mut BytesMut)
        -> Result<Inbound<Self::Receipt>, (ErrorCode, String)>;
    /// Writes a delivery; returns true when the protocol acknowledges it as it is written
    /// (STOMP `ack:auto`).
    fn encode_delivery(&mut self, d: &Delivery, out: &mut BytesMut) -> bool;
    fn encode_receipt(&mut self, receipt: &Self::Receipt, out: &mut BytesMut);
    /// Writes an error (`fatal`: the connection closes after it). Returns whether the
    /// connection must close: a protocol may have no way to tell a client of an error but
    /// closing (every STOMP error; an MQTT 3 refused publish).
    fn encode_error(
        &mut self,
        code: ErrorCode,
        message: &str,
        receipt: Option<&Self::Receipt>,
        fatal: bool,
        out: &mut BytesMut,
    ) -> bool;
    fn encode_heartbeat(&mut self, out: &mut BytesMut);
    /// Writes a cluster push (protocols that have none never get one).
    fn encode_control(&mut self, _control: proto::ConnectionControl, _out: &mut BytesMut) {}
    /// What a producer should do with a persistent send that was not confirmed (it may or
    /// may not be delivered): resend it the way this protocol keeps from duplicating it.
    fn resend_advice(&self) -> &'static str {
        "resend it with the same producer id and sequence to be safe"
    }
    /// A transaction's acknowledgements `(subscription, tag)` took effect at its commit.
    fn committed_acks(&mut self, _acks: &[(u64, u64)]) {}
    /// True when a new subscription gets the retained messages of the topics it matches
    /// (MQTT); they are then handed to [`Codec::encode_retained`].
    fn replays_retained(&self) -> bool {
        false
    }
    /// Writes the retained messages a new subscription matches (not acknowledged to the
    /// broker: they stay retained).
    fn encode_retained(
        &mut self,
        _subscription: u64,
        _retained: &[Arc<Message>],
        _out: &mut BytesMut,
    ) {
    }
    /// What the connection asks of the broker as it ends, unless the client said goodbye
    /// (MQTT's will message). Asked once.
    fn farewell(&mut self) -> Option<Request<Self::Receipt>> {
        None
    }
}

/// A transaction's staged work, native and STOMP alike.
#[derive(Debug, Default)]
struct Tx {
    sends: Vec<(Target, Message)>,
    acks: Vec<(u64, u64)>,
    nacks: Vec<(u64, u64)>,
}

impl Tx {
    /// Applies the transaction: its sends and acknowledgements take effect together, its
    /// nacks after. Returns the journal index a receipt must wait for (0: none).
    fn commit(self, session: &mut Session) -> u64 {
        let index = session.commit(self.sends, &self.acks);
        for (sub, tag) in self.nacks {
            let _ = session.nack(sub, &[tag]);
        }
        index
    }

    /// Undoes the transaction: its sends vanish; what it acknowledged is redelivered.
    fn abort(self, session: &mut Session) {
        for (sub, tag) in self.acks.into_iter().chain(self.nacks) {
            let _ = session.nack(sub, &[tag]);
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
        | BrokerError::BadSelector { .. }
        | BrokerError::UnknownDelivery { .. } => C::Invalid,
        BrokerError::NotFound(_) | BrokerError::NoSuchSubscription(_) => C::NotFound,
        BrokerError::NotOwner(_)
        | BrokerError::ClientIdOwned(_)
        | BrokerError::TempPrefixOwned(_) => C::Forbidden,
        BrokerError::TooManySubscriptions(_)
        | BrokerError::Full { .. }
        | BrokerError::JournalFull { .. } => C::ResourceExhausted,
        BrokerError::ClientIdInUse(_) => C::ClientIdInUse,
        BrokerError::WildcardQueue(_) | BrokerError::DurableSelectorUnsupported(_) => {
            C::Unsupported
        }
    }
}

fn no_transaction(name: &TxName) -> String {
    format!("no open transaction {name} on this connection: begin it first")
}

/// A send past authorization, resolved and built, waiting for room or about to be taken.
struct Accepted<R> {
    target: Target,
    message: Message,
    transaction: Option<TxName>,
    receipt: Option<R>,
}

/// One client connection: its protocol codec, socket, broker session and state.
pub(crate) struct Connection<C: Codec> {
    pub codec: C,
    pump: Pump,
    session: Session,
    ctx: Arc<ConnCtx>,
    principal: Principal,
    builder: MessageBuilder,
    /// Open transactions, by the client's name for them.
    txs: HashMap<TxName, Tx>,
    deliveries: VecDeque<Delivery>,
    /// (subscription, tag) of the deliveries one `fill` wrote that the protocol acknowledges
    /// on write, and the tags of one subscription among them: kept for their room (no
    /// allocation per fill), empty between calls.
    acked_on_write: Vec<(u64, u64)>,
    ack_tags: Vec<u64>,
    /// A send waiting for room (producer flow control); no frame is read meanwhile.
    blocked: Option<Accepted<C::Receipt>>,
    /// Receipts waiting for the journal, in frame order.
    receipts: SyncedQueue<C::Receipt>,
    closing: Option<&'static str>,
    disconnecting: bool,
    liveness: Liveness,
    /// The connection's place in the cluster registry: its pushes, and the signal that a
    /// failover reconnect of the same client took over.
    registration: Option<Registration>,
    /// Counted in the listener's producers gauge (it has sent a message).
    producing: bool,
    /// Messages taken since the received counter was last told (once per run of frames).
    received: u64,
    /// Subscriptions counted in the listener's consumers gauge.
    consumers: usize,
    /// The received bytes not yet handed over as frames (a frame still arriving, frames
    /// behind a blocked send), charged to the broker's memory.
    pending: crate::broker::PendingCharge,
    /// Rate-limits creating subscriptions and destinations.
    creations: TokenBucket,
    /// The login and ACL rules this connection was last checked against, and the signal
    /// that they were replaced (`meshmq apply`): then it is checked again at once.
    rules: Arc<Rules>,
    rules_changed: tokio::sync::watch::Receiver<u64>,
    /// What each open subscription reads (to end those whose read right is revoked).
    subscribed: HashMap<u64, DestinationPattern>,
}

impl<C: Codec> Connection<C> {
    /// `heartbeat_out`: how often we write when idle; `peer_silence`: how long the peer may be
    /// silent (each protocol's own grace over the interval the client announced).
    pub fn new(
        codec: C,
        pump: Pump,
        session: Session,
        ctx: Arc<ConnCtx>,
        principal: Principal,
        heartbeat_out: Option<Duration>,
        peer_silence: Option<Duration>,
    ) -> Connection<C> {
        let pending = session.broker().memory_pending();
        let rules_changed = ctx.security.watch();
        // The login may have been checked against rules replaced since: the first turn of
        // the loop checks it against these.
        let rules = ctx.security.current();
        Connection {
            pending,
            creations: TokenBucket::new(CREATION_BURST, CREATIONS_PER_SECOND, Instant::now()),
            codec,
            pump,
            session,
            ctx,
            principal,
            builder: MessageBuilder::default(),
            txs: HashMap::new(),
            deliveries: VecDeque::new(),
            acked_on_write: Vec::new(),
            ack_tags: Vec::new(),
            blocked: None,
            receipts: SyncedQueue::default(),
            closing: None,
            disconnecting: false,
            liveness: Liveness::new(Instant::now(), heartbeat_out, peer_silence),
            registration: None,
            producing: false,
            received: 0,
            consumers: 0,
            rules,
            rules_changed,
            subscribed: HashMap::new(),
        }
    }

    /// Checks the connection against the member's current rules: a login that is no longer
    /// valid (user removed, password changed, anonymous access turned off) ends the
    /// connection; a subscription whose read right is gone ends with an error; every later
    /// action is checked against the new ACLs.
    fn recheck_rules(&mut self) {
        self.rules_changed.borrow_and_update();
        let now = self.ctx.security.current();
        match now.readmit(&self.principal, &self.rules) {
            Err(e) => {
                self.ctx.metrics.denied();
                tracing::info!(user = ?self.principal.user, "a topology change revoked this connection's login");
                self.error(ErrorCode::Unauthenticated, &e.to_string(), None, true);
                self.closing = Some("login revoked");
            }
            Ok(principal) => {
                self.principal = principal;
                self.rules = now;
                let mut lost: Vec<(u64, DestinationPattern)> = self
                    .subscribed
                    .iter()
                    .filter(|(_, p)| {
                        self.rules
                            .authorizer
                            .check_pattern(&self.principal, Action::Read, p)
                            .is_err()
                    })
                    .map(|(s, p)| (*s, p.clone()))
                    .collect();
                lost.sort_by_key(|(s, _)| *s);
                for (sub, pattern) in lost {
                    self.ctx.metrics.denied();
                    self.subscribed.remove(&sub);
                    let _ = self.session.unsubscribe(sub, false);
                    self.error(
                        ErrorCode::Forbidden,
                        &format!("subscription {sub} to {pattern}: the read right was revoked by a topology change; the subscription is closed"),
                        None,
                        false,
                    );
                }
            }
        }
    }

    /// Ties the connection to its place in the cluster registry (pushes, takeover).
    pub fn with_registration(mut self, registration: Registration) -> Connection<C> {
        self.registration = Some(registration);
        self
    }

    fn next_timer(&self) -> Instant {
        let now = Instant::now();
        let shrink = now + SHRINK_EVERY;
        self.liveness
            .next_check(now)
            .map_or(shrink, |at| at.min(shrink))
    }

    /// Serves the connection until it ends; returns why.
    pub async fn run(&mut self, shutdown: &CancellationToken) -> &'static str {
        let reason = self.run_loop(shutdown).await;
        self.end_session();
        reason
    }

    /// Undoes what must not outlive the connection and closes the session (idempotent).
    fn end_session(&mut self) {
        if let Some(last) = self.codec.farewell() {
            self.apply(last);
        }
        for (_, tx) in std::mem::take(&mut self.txs) {
            tx.abort(&mut self.session);
        }
        self.blocked = None;
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
        let timer = tokio::time::sleep_until(self.next_timer());
        tokio::pin!(timer);
        self.recheck_rules();
        // Frames may already be buffered behind the handshake.
        self.process_frames();
        loop {
            if self.disconnecting && self.receipts.is_empty() && self.closing.is_none() {
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
            let broker = self.session.broker().clone();
            // Partial frames count against the memory limit; at the limit, a connection that
            // already holds some stops reading (as a blocked producer does) until there is room.
            self.pending
                .set(self.pump.rbuf.len().saturating_sub(PENDING_WHEN_FULL) as u64);
            let starved =
                self.pump.rbuf.len() >= PENDING_WHEN_FULL && !broker.memory().has_broker_room();
            let reading =
                self.blocked.is_none() && self.pump.wbuf.len() < WRITE_BACKLOG_LIMIT && !starved;
            // A disconnecting client's session has ended: its closed outbox would wake us
            // at once, forever.
            let outbox = (!self.disconnecting).then(|| self.session.outbox().clone());
            let blocked = self
                .blocked
                .as_ref()
                .map(|b| (b.target.clone(), b.message.persistent));
            let room = async {
                match &blocked {
                    Some((target, persistent)) => broker.wait_room(target, *persistent).await,
                    None => std::future::pending().await,
                }
            };
            let synced = self.receipts.synced(&broker);
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
            let mut rules_changed = self.rules_changed.clone();
            tokio::select! {
                Ok(()) = rules_changed.changed() => self.recheck_rules(),
                control = pushed => {
                    self.codec.encode_control(control, &mut self.pump.wbuf);
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
                        self.liveness.read(Instant::now());
                        self.process_frames();
                    }
                    Ok(IoEvent::Drained) => self.liveness.wrote(Instant::now()),
                    Ok(IoEvent::Wake) => {}
                    Ok(IoEvent::Closed) => return "peer closed",
                    Err(_) => return "socket error",
                },
                _ = room => {
                    self.retry_blocked();
                    self.process_frames();
                }
                _ = broker.memory().wait_for_broker_room(), if starved => {}
                result = synced => self.release_receipts(result),
                _ = &mut timer => {
                    self.on_timer();
                    timer.as_mut().reset(self.next_timer());
                }
                _ = shutdown.cancelled(), if self.closing.is_none() => {
                    self.error(ErrorCode::ShuttingDown, "the broker is shutting down; reconnect to another member", None, true);
                    self.closing = Some("broker shutting down");
                }
            }
        }
    }

    fn on_timer(&mut self) {
        // Buffers a burst grew are given back here, not after every write: a busy connection
        // would otherwise drop and regrow them all the time.
        self.pump.shrink_idle();
        self.acked_on_write.shrink_to(256);
        self.ack_tags.shrink_to(256);
        match self
            .liveness
            .poll(Instant::now(), self.pump.wbuf.is_empty())
        {
            Some(Due::Dead(silence)) => {
                self.error(
                    ErrorCode::Timeout,
                    &format!("nothing received from the client for {silence:?} (heartbeats)"),
                    None,
                    true,
                );
                self.closing = Some("heartbeat timeout");
            }
            Some(Due::Beat) => self.codec.encode_heartbeat(&mut self.pump.wbuf),
            None => {}
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
        let mut dispatch = LatencyBatch::default();
        let mut end_to_end = LatencyBatch::default();
        let timed = self.ctx.metrics.per_message && !self.deliveries.is_empty();
        let now = if timed { crate::broker::now_ms() } else { 0 };
        while self.pump.wbuf.len() < FILL_TO {
            let Some(d) = self.deliveries.pop_front() else {
                break;
            };
            if self.codec.encode_delivery(&d, &mut self.pump.wbuf) {
                self.acked_on_write.push((d.subscription, d.tag));
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
        // One ack per subscription, naming its tags in the order written. Not cumulative: a
        // protocol may acknowledge some deliveries of a subscription on write and leave others
        // to the client (MQTT: QoS 0 and QoS 1 messages on one subscription).
        // Tags grow in the order a subscription's deliveries are written, so sorting by
        // (subscription, tag) keeps that order (and an unstable sort needs no scratch memory).
        self.acked_on_write.sort_unstable();
        let mut run = 0;
        while run < self.acked_on_write.len() {
            let sub = self.acked_on_write[run].0;
            self.ack_tags.clear();
            while let Some((_, tag)) = self.acked_on_write.get(run).filter(|(s, _)| *s == sub) {
                self.ack_tags.push(*tag);
                run += 1;
            }
            let _ = self.session.ack(sub, 0, &self.ack_tags);
        }
        self.acked_on_write.clear();
    }

    fn error(&mut self, code: ErrorCode, message: &str, receipt: Option<&C::Receipt>, fatal: bool) {
        let fatal = self
            .codec
            .encode_error(code, message, receipt, fatal, &mut self.pump.wbuf);
        if fatal && self.closing.is_none() {
            self.closing = Some("error");
        }
    }

    /// Refuses a subscription or a new destination over the connection's creation rate.
    fn creation_refused(&mut self, receipt: Option<C::Receipt>) {
        self.ctx.metrics.creation_refused();
        self.error(
            ErrorCode::ResourceExhausted,
            &format!(
                "this connection creates subscriptions and destinations faster than {CREATIONS_PER_SECOND} per second (after a burst of {CREATION_BURST}): slow down and retry"
            ),
            receipt.as_ref(),
            false,
        );
    }

    /// Tells the client the broker refused what it asked.
    fn refuse(&mut self, e: &BrokerError, receipt: Option<C::Receipt>) {
        self.error(error_code(e), &e.to_string(), receipt.as_ref(), false);
    }

    /// Applies the frames buffered so far; the messages they sent are counted once for all.
    fn process_frames(&mut self) {
        self.apply_buffered();
        self.ctx
            .metrics
            .received(std::mem::take(&mut self.received));
    }

    fn apply_buffered(&mut self) {
        while self.blocked.is_none() && self.closing.is_none() && !self.disconnecting {
            match self.codec.decode(&mut self.pump.rbuf) {
                Ok(Inbound::Request(r)) => self.apply(r),
                Ok(Inbound::Alive) => {}
                Ok(Inbound::NeedMore) => return,
                Err((code, message)) => {
                    self.ctx.metrics.bad_frame();
                    self.error(code, &message, None, true);
                    self.closing = Some("bad frame");
                }
            }
        }
    }

    /// Checks an ACL action on a destination or pattern; creating a destination that does
    /// not exist yet also needs `Admin`.
    fn authorize(&self, action: Action, pattern: &DestinationPattern) -> Result<(), String> {
        let Some(concrete) = pattern.as_destination() else {
            return self.authorize_pattern(action, pattern);
        };
        self.authorize_destination(action, &concrete)
    }

    fn authorize_pattern(
        &self,
        action: Action,
        pattern: &DestinationPattern,
    ) -> Result<(), String> {
        self.rules
            .authorizer
            .check_pattern(&self.principal, action, pattern)
            .map_err(|d| d.to_string())
    }

    fn authorize_destination(&self, action: Action, dest: &Destination) -> Result<(), String> {
        let authz = &self.rules.authorizer;
        authz
            .check(&self.principal, action, dest)
            .map_err(|d| d.to_string())?;
        if !dest.kind().is_temp() && !self.session.broker().destination_exists(dest) {
            authz
                .check(&self.principal, Action::Admin, dest)
                .map_err(|d| d.to_string())?;
        }
        Ok(())
    }

    /// Does what one request asks: the only place requests take effect, for every protocol.
    fn apply(&mut self, request: Request<C::Receipt>) {
        // Rules replaced while frames were being read apply from the next frame on.
        if self.rules_changed.has_changed().unwrap_or(false) {
            self.recheck_rules();
            if self.closing.is_some() {
                return;
            }
        }
        match request {
            Request::Send(send) => self.on_send(send),
            Request::Subscribe { spec, receipt } => {
                if let Err(denied) = self.authorize(Action::Read, &spec.destination) {
                    self.ctx.metrics.denied();
                    return self.error(ErrorCode::Forbidden, &denied, receipt.as_ref(), false);
                }
                if !self.creations.take(Instant::now()) {
                    return self.creation_refused(receipt);
                }
                let before = self.session.last_record();
                let (sub, pattern) = (spec.subscription, spec.destination.clone());
                match self.session.subscribe(spec) {
                    Ok(()) => {
                        self.receipt_after(self.session.record_since(before), receipt);
                        if self.codec.replays_retained() {
                            let retained = self.session.broker().retained_matching(&pattern);
                            if !retained.is_empty() {
                                self.codec
                                    .encode_retained(sub, &retained, &mut self.pump.wbuf);
                            }
                        }
                        self.subscribed.insert(sub, pattern);
                    }
                    Err(e) => {
                        if matches!(e, BrokerError::BadSelector { .. }) {
                            self.ctx.metrics.bad_selector();
                        }
                        self.refuse(&e, receipt)
                    }
                }
            }
            Request::Unsubscribe {
                subscription,
                remove_durable,
                receipt,
            } => {
                let before = self.session.last_record();
                match self.session.unsubscribe(subscription, remove_durable) {
                    Ok(()) => {
                        self.subscribed.remove(&subscription);
                        self.receipt_after(self.session.record_since(before), receipt)
                    }
                    Err(e) => self.refuse(&e, receipt),
                }
            }
            Request::Ack {
                subscription,
                up_to,
                tags,
                transaction: Some(name),
                receipt,
            } => {
                let Some(tx) = self.txs.get_mut(&name) else {
                    return self.error(
                        ErrorCode::NotFound,
                        &no_transaction(&name),
                        receipt.as_ref(),
                        false,
                    );
                };
                if up_to != 0 {
                    return self.error(
                        ErrorCode::Invalid,
                        "inside a transaction, acknowledge deliveries by their tags (not up_to)",
                        receipt.as_ref(),
                        false,
                    );
                }
                tx.acks.extend(tags.iter().map(|tag| (subscription, *tag)));
                self.receipt_after(0, receipt);
            }
            Request::Ack {
                subscription,
                up_to,
                tags,
                transaction: None,
                receipt,
            } => match self.session.ack(subscription, up_to, &tags) {
                Ok(_) => self.receipt_after(0, receipt),
                Err(e) => self.refuse(&e, receipt),
            },
            Request::Nack {
                subscription,
                tags,
                transaction: Some(name),
                receipt,
            } => {
                let Some(tx) = self.txs.get_mut(&name) else {
                    return self.error(
                        ErrorCode::NotFound,
                        &no_transaction(&name),
                        receipt.as_ref(),
                        false,
                    );
                };
                tx.nacks.extend(tags.iter().map(|tag| (subscription, *tag)));
                self.receipt_after(0, receipt);
            }
            Request::Nack {
                subscription,
                tags,
                transaction: None,
                receipt,
            } => match self.session.nack(subscription, &tags) {
                Ok(_) => self.receipt_after(0, receipt),
                Err(e) => self.refuse(&e, receipt),
            },
            Request::Begin {
                transaction,
                receipt,
            } => {
                if self.txs.contains_key(&transaction) {
                    return self.error(
                        ErrorCode::Invalid,
                        &format!("transaction {transaction} is already open"),
                        receipt.as_ref(),
                        false,
                    );
                }
                self.txs.insert(transaction, Tx::default());
                self.receipt_after(0, receipt);
            }
            Request::Commit {
                transaction,
                receipt,
            } => match self.txs.remove(&transaction) {
                Some(tx) => {
                    self.codec.committed_acks(&tx.acks);
                    let index = tx.commit(&mut self.session);
                    self.receipt_after(index, receipt);
                }
                None => self.error(
                    ErrorCode::NotFound,
                    &no_transaction(&transaction),
                    receipt.as_ref(),
                    false,
                ),
            },
            Request::Abort {
                transaction,
                receipt,
            } => match self.txs.remove(&transaction) {
                Some(tx) => {
                    tx.abort(&mut self.session);
                    self.receipt_after(0, receipt);
                }
                None => self.error(
                    ErrorCode::NotFound,
                    &no_transaction(&transaction),
                    receipt.as_ref(),
                    false,
                ),
            },
            Request::Ping { receipt } => self.receipt_after(0, Some(receipt)),
            Request::Disconnect { receipt } => {
                self.receipt_after(0, receipt);
                // A client may reconnect (with the same client id, to the same durable
                // subscriptions) the moment it reads its DISCONNECT receipt, which is written
                // after this: the session ends now, not once the socket has closed.
                self.end_session();
                self.disconnecting = true;
            }
            Request::Refuse { refusal, receipt } => match refusal {
                Refusal::BadFrame {
                    code,
                    message,
                    fatal,
                } => {
                    self.ctx.metrics.bad_frame();
                    self.error(code, &message, receipt.as_ref(), fatal);
                }
                Refusal::Invalid { code, message } => {
                    self.error(code, &message, receipt.as_ref(), false)
                }
                Refusal::Send(e) => {
                    self.ctx.metrics.send_refused(&e);
                    self.refuse(&e, receipt);
                }
            },
        }
    }

    /// A send: authorized, resolved, built, then through flow control — transactional or not.
    fn on_send(&mut self, send: SendRequest<C::Receipt>) {
        let SendRequest {
            destination,
            draft,
            transaction,
            receipt,
        } = send;
        if let Err(denied) = self.authorize_destination(Action::Write, &destination) {
            self.ctx.metrics.denied();
            return self.error(ErrorCode::Forbidden, &denied, receipt.as_ref(), false);
        }
        if !destination.kind().is_temp()
            && !self.session.broker().destination_exists(&destination)
            && !self.creations.take(Instant::now())
        {
            return self.creation_refused(receipt);
        }
        let target = match self.session.target(&destination) {
            Ok(t) => t,
            Err(e) => {
                self.ctx.metrics.send_refused(&e);
                return self.refuse(&e, receipt);
            }
        };
        let message = match self.builder.build(draft) {
            Ok(m) => m,
            Err(e) => {
                self.ctx.metrics.send_refused(&e);
                return self.refuse(&e, receipt);
            }
        };
        if let Some(name) = &transaction {
            if !self.txs.contains_key(name) {
                let message = no_transaction(name);
                return self.error(ErrorCode::NotFound, &message, receipt.as_ref(), false);
            }
        }
        let send = Accepted {
            target,
            message,
            transaction,
            receipt,
        };
        match self.session.admit(&send.target, send.message.persistent) {
            Admission::Now => self.take(send),
            Admission::Wait => {
                self.ctx.metrics.producer_blocked();
                self.blocked = Some(send);
            }
            Admission::Refuse(e) => {
                self.ctx.metrics.send_refused(&e);
                self.refuse(&e, send.receipt);
            }
        }
    }

    /// Takes a send that has room: stages it in its transaction, or publishes it.
    fn take(&mut self, send: Accepted<C::Receipt>) {
        let Accepted {
            target,
            message,
            transaction,
            receipt,
        } = send;
        if let Some(name) = transaction {
            return match self.session.stage(&target, message) {
                Ok(staged) => {
                    self.received += 1;
                    self.count_producer();
                    if let Some(tx) = self.txs.get_mut(&name) {
                        tx.sends.extend(staged);
                    }
                    self.receipt_after(0, receipt);
                }
                Err(e) => {
                    self.ctx.metrics.send_refused(&e);
                    self.refuse(&e, receipt);
                }
            };
        }
        match self.session.publish(&target, message) {
            Ok(published) => {
                self.received += 1;
                self.count_producer();
                let index = match published {
                    Published::Pending(index) => index,
                    Published::Accepted | Published::Duplicate => 0,
                };
                self.receipt_after(index, receipt);
            }
            Err(e) => {
                self.ctx.metrics.send_refused(&e);
                self.refuse(&e, receipt);
            }
        }
    }

    fn retry_blocked(&mut self) {
        if let Some(b) = self.blocked.take() {
            if self.session.has_room(&b.target, b.message.persistent) {
                self.take(b);
            } else {
                self.blocked = Some(b);
            }
        }
    }

    /// Sends a receipt once the journal has synced `index` (0: nothing to wait for), in the
    /// order the frames arrived.
    fn receipt_after(&mut self, index: u64, receipt: Option<C::Receipt>) {
        let Some(receipt) = receipt else {
            return;
        };
        let broker = self.session.broker();
        if let Some(now) = self.receipts.push(broker, index, receipt) {
            self.codec.encode_receipt(&now, &mut self.pump.wbuf);
        }
    }

    /// Sends the held receipts the journal has synced (errors if the journal failed).
    fn release_receipts(&mut self, result: Result<(), StoreError>) {
        let broker = self.session.broker().clone();
        match result {
            Ok(()) => {
                for r in self.receipts.release(&broker) {
                    self.codec.encode_receipt(&r, &mut self.pump.wbuf);
                }
            }
            Err(e) => {
                let failed: Vec<_> = self.receipts.fail_all().collect();
                for r in failed {
                    self.error(
                        ErrorCode::Unknown,
                        &format!("not confirmed: {e} — {}", self.codec.resend_advice()),
                        Some(&r),
                        false,
                    );
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;

/// A token bucket: `burst` tokens, refilled at `per_second`.
#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    burst: f64,
    per_second: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(burst: f64, per_second: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: burst,
            burst,
            per_second,
            at: now,
        }
    }

    /// Takes a token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod bucket_tests {
    use super::TokenBucket;
    use std::time::Duration;
    use tokio::time::Instant;

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3.0, 10.0, t0);
        assert!((0..3).all(|_| b.take(t0)));
        assert!(!b.take(t0), "the burst is spent");
        assert!(!b.take(t0 + Duration::from_millis(50)));
        assert!(b.take(t0 + Duration::from_millis(150)), "one per 100 ms");
        assert!(!b.take(t0 + Duration::from_millis(150)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            (0..10).filter(|_| b.take(later)).count(),
            3,
            "never above the burst"
        );
    }
}
