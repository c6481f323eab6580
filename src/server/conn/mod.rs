//! The protocol-neutral half of a client connection: one task that reads frames, applies the
//! requests they carry, writes deliveries and replies, keeps heartbeats, and honours shutdown.
//!
//! A protocol plugs in through [`Codec`] (`codec.rs`): it decodes its frames into
//! [`Request`]s and encodes deliveries, receipts, errors and heartbeats; it never touches the
//! socket or the broker. [`Connection::apply`] (`apply.rs`) is the one place a request takes
//! effect, for every protocol. Here: the connection's loop, its timers, filling the write
//! buffer from the outbox, and its receipts — receipts of journaled work wait in a
//! [`SyncedQueue`] until the journal has synced it, and go out in the order the frames came.
//! Beside it: `ctx.rs` (what every connection of a listener shares), `transaction.rs` (an open
//! transaction's staged work), `bucket.rs` (the creation rate limit).
//! A stopping broker's connection stops reading and delivering, sends the receipts of what it
//! had accepted once they are synced (at most `STOP_GRACE`), then closes with an error. What a
//! connection accepted but never receipted (past the grace, or a broken link) is flagged
//! redelivered here, since its client sends it again, maybe to another group.
//! Owns: the connection's transactions, its blocked send, its held receipts. Must not touch:
//! the journal (the broker's durability facade stands for it) or bytes (the codec's).

mod apply;
mod bucket;
mod codec;
mod ctx;
mod transaction;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::{
    BrokerError, Delivery, DestinationPattern, MessageBuilder, NewMessage, Session, SyncedQueue,
    Target,
};
use crate::cluster::Registration;
use crate::metrics::{LatencyBatch, DISPATCH_LATENCY_HISTOGRAM, END_TO_END_LATENCY_HISTOGRAM};
use crate::security::{Action, Principal, Rules};
use crate::server::request::TxName;
use crate::store::StoreError;
use crate::transport::{Due, IoEvent, Liveness, Pump};
use crate::wire::proto::ErrorCode;

use bucket::TokenBucket;
pub(crate) use codec::{error_code, Codec, Inbound};
pub(crate) use ctx::{handshake_frame_limit, ConnCtx, ListenerMetrics};
use transaction::Tx;

/// Deliveries are moved from the outbox into the write buffer while it holds less than this.
const REFILL_BELOW: usize = 64 * 1024;
/// ... and until it holds this much.
const FILL_TO: usize = 256 * 1024;
/// A peer that does not read while we owe it more than this stops being read from.
const WRITE_BACKLOG_LIMIT: usize = 8 * 1024 * 1024;
/// How long a connection of a stopping broker waits for the receipts of what it already
/// accepted (see `Connection::stopping`) before it closes anyway.
const STOP_GRACE: Duration = Duration::from_secs(2);
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

/// A send past authorization, resolved and built, waiting for room or about to be taken.
struct Accepted<R> {
    target: Target,
    message: NewMessage,
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
    /// Plain sends to one topic or queue (no receipt, no transaction) taken from this run of
    /// frames and not published yet: they are published together — each topic subscription,
    /// or the queue, taking them under one lock — before any other request takes effect, before
    /// a send to another destination, and when the run ends
    /// ([`Connection::publish_held`]). Empty between runs; kept for its room.
    held: Vec<NewMessage>,
    held_for: Option<Target>,
    /// Tags of plain individual acknowledgements (no receipt, no transaction) of one
    /// subscription taken from this run of frames and not applied yet: a consumer that
    /// acknowledges each message sends a run of them, and they are applied together — one
    /// queue lock, one dispatch round, one release of their memory — before any other request
    /// takes effect, and when the run ends ([`Connection::ack_held`]). Empty between runs; kept
    /// for its room. Outside a run (`in_run` false) an acknowledgement takes effect at once.
    held_acks: Vec<u64>,
    held_acks_for: u64,
    in_run: bool,
    /// A send waiting for room (producer flow control); no frame is read meanwhile. Boxed:
    /// it is rare, and inline its message would weigh on every idle connection.
    blocked: Option<Box<Accepted<C::Receipt>>>,
    /// Receipts waiting for the journal, in frame order.
    receipts: SyncedQueue<C::Receipt>,
    closing: Option<&'static str>,
    disconnecting: bool,
    /// The broker is stopping (until this deadline): nothing more is read or delivered, and
    /// the connection closes once the receipts of what it accepted have gone out — a client
    /// is never left to re-send elsewhere a message this broker holds and would deliver.
    stopping: Option<Instant>,
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
            held: Vec::new(),
            held_for: None,
            held_acks: Vec::new(),
            held_acks_for: 0,
            in_run: false,
            blocked: None,
            receipts: SyncedQueue::default(),
            closing: None,
            disconnecting: false,
            stopping: None,
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
        if !self.receipts.is_empty() {
            // Receipts that never went out (a stop past its grace, a broken link) leave their
            // sends in doubt: the client sends them again (see `Session::flag_unconfirmed`).
            self.session.flag_unconfirmed(self.receipts.confirmed());
        }
        self.end_session();
        reason
    }

    /// Undoes what must not outlive the connection and closes the session (idempotent).
    fn end_session(&mut self) {
        if let Some(last) = self.codec.farewell() {
            self.apply(last);
        }
        self.ack_held();
        self.publish_held();
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
            if let Some(deadline) = self.stopping {
                if self.closing.is_none()
                    && (self.receipts.is_empty() || Instant::now() >= deadline)
                {
                    self.error(
                        ErrorCode::ShuttingDown,
                        "the broker is shutting down; reconnect to another member",
                        None,
                        true,
                    );
                    self.closing = Some("broker shutting down");
                }
            }
            if let Some(reason) = self.closing {
                // The frame that ended the connection (an error, a Disconnect's receipt) is the
                // last one written: deliveries not yet encoded go back to their destinations
                // with the session's close instead of trailing after it.
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), self.pump.flush_and_close()).await;
                return reason;
            }
            if self.stopping.is_none() {
                self.fill();
            }
            self.count_consumers(self.session.subscription_count());
            let broker = self.session.broker().clone();
            // Partial frames count against the memory limit; at the limit, a connection that
            // already holds some stops reading (as a blocked producer does) until there is room.
            self.pending
                .set(self.pump.rbuf.len().saturating_sub(PENDING_WHEN_FULL) as u64);
            let starved =
                self.pump.rbuf.len() >= PENDING_WHEN_FULL && !broker.memory().has_broker_room();
            let reading = self.blocked.is_none()
                && self.pump.wbuf.len() < WRITE_BACKLOG_LIMIT
                && !starved
                && self.stopping.is_none();
            // A disconnecting client's session has ended: its closed outbox would wake us
            // at once, forever. A stopping connection delivers nothing more.
            let outbox = (!self.disconnecting && self.stopping.is_none())
                .then(|| self.session.outbox().clone());
            let stop_deadline = self.stopping;
            // This future and `room` are boxed when they are needed (rarely: a stopping
            // broker, a blocked producer): inline, their state would be part of every idle
            // connection's.
            let grace_over = async {
                match stop_deadline {
                    Some(at) => Box::pin(tokio::time::sleep_until(at)).await,
                    None => std::future::pending().await,
                }
            };
            let blocked = self
                .blocked
                .as_ref()
                .map(|b| (b.target.clone(), b.message.persistent));
            let room = async {
                match &blocked {
                    Some((target, persistent)) => {
                        Box::pin(broker.wait_room(target, *persistent)).await
                    }
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
                _ = shutdown.cancelled(), if self.closing.is_none() && self.stopping.is_none() => {
                    // What was accepted is receipted before the close; a send still waiting
                    // for room was not accepted (its client re-sends it elsewhere).
                    self.blocked = None;
                    self.stopping = Some(Instant::now() + STOP_GRACE);
                }
                _ = grace_over => {}
            }
        }
    }

    fn on_timer(&mut self) {
        // Buffers a burst grew are given back here, not after every write: a busy connection
        // would otherwise drop and regrow them all the time.
        self.pump.shrink_idle();
        self.acked_on_write.shrink_to(256);
        self.ack_tags.shrink_to(256);
        self.held.shrink_to(256);
        self.held_acks.shrink_to(256);
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
        if !self.deliveries.is_empty() {
            self.pump.ready_to_fill();
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

    /// Applies the frames buffered so far; the messages they sent are counted once for all,
    /// and the consumers they feed are woken once for all, when the run ends. They all arrived
    /// before the run began, and are stamped received with one clock read.
    fn process_frames(&mut self) {
        let _wakes = crate::broker::defer_wakes();
        self.builder.begin_run();
        self.in_run = true;
        self.apply_buffered();
        self.in_run = false;
        self.ack_held();
        self.publish_held();
        self.builder.end_run();
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
                let mut released = false;
                for r in self.receipts.release(&broker) {
                    self.codec.encode_receipt(&r, &mut self.pump.wbuf);
                    released = true;
                }
                if released {
                    crate::metrics::commit_profile::receipts_released();
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
mod alloc_tests;
#[cfg(test)]
pub(crate) mod tests;
