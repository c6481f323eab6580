//! The state a client's handles share with its connection task: the outgoing buffer, pending
//! receipts and the send tracker a failover replays, the subscriptions' channels.

use super::*;

pub(crate) type ReceiptSender = oneshot::Sender<Result<(), ClientError>>;

/// What a pending receipt confirms, which decides its fate when a failover client's
/// connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitKind {
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

pub(crate) enum Waiter {
    Reply(ReceiptSender, WaitKind),
    /// A subscription restored after a failover (its id); an error ends it.
    Restore(u64),
}

/// Sends kept for re-sending after a failover: every send waiting for its receipt, and with
/// `trackMessages` the latest fire-and-forget ones (up to `max_cache` bytes) until a later
/// receipt shows the broker has them (it processes a connection's frames in order).
pub(crate) struct SendTracker {
    /// By producer sequence: re-sent in this order.
    pub(super) sends: BTreeMap<u64, (Bytes, u64)>,
    /// Receipt id → the sequence of its send (sends), or the next sequence when it was asked
    /// (flushes): its answer confirms every fire-and-forget send below that.
    by_receipt: HashMap<u64, u64>,
    pings: HashMap<u64, u64>,
    fire_and_forget: VecDeque<u64>,
    cached_bytes: usize,
    max_cache: usize,
    track_fire_and_forget: bool,
    /// The sequence of the latest fire-and-forget send written, and the sequence below which
    /// the broker confirmed every send (a later receipt, a flush, a leave's receipt): what
    /// lies between is in doubt when a connection ends unconfirmed.
    last_fire_and_forget: u64,
    confirmed_below: u64,
}

impl SendTracker {
    pub(super) fn new(track_fire_and_forget: bool, max_cache: usize) -> SendTracker {
        SendTracker {
            sends: BTreeMap::new(),
            by_receipt: HashMap::new(),
            pings: HashMap::new(),
            fire_and_forget: VecDeque::new(),
            cached_bytes: 0,
            max_cache,
            track_fire_and_forget,
            last_fire_and_forget: 0,
            confirmed_below: 0,
        }
    }

    /// A fire-and-forget send (`sequence`) was written.
    pub(super) fn fire_and_forget_written(&mut self, sequence: u64) {
        self.last_fire_and_forget = sequence;
    }

    /// The broker has every send below `sequence` (e.g. a leave's receipt came).
    pub(super) fn confirm_below(&mut self, sequence: u64) {
        self.confirmed_below = self.confirmed_below.max(sequence);
    }

    /// The fire-and-forget sends no receipt has confirmed and no re-send will repeat (they are
    /// not tracked): the first and last sequence they may span. Taking them marks them
    /// reported.
    pub(super) fn take_unconfirmed(&mut self, next: u64) -> Option<(u64, u64)> {
        let span = (!self.track_fire_and_forget
            && self.last_fire_and_forget > 0
            && self.last_fire_and_forget >= self.confirmed_below)
            .then(|| (self.confirmed_below.max(1), self.last_fire_and_forget));
        self.confirmed_below = next;
        span
    }

    pub(super) fn wants(&self, receipt: u64) -> bool {
        receipt != 0 || self.track_fire_and_forget
    }

    pub(super) fn record(&mut self, sequence: u64, frame: Bytes, receipt: u64) {
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

    pub(super) fn answered(&mut self, receipt: u64) {
        // The broker processes a connection's frames in order: a send's receipt confirms it
        // and every send before it, a flush's every send before it was asked.
        let below = match self.by_receipt.remove(&receipt) {
            Some(seq) => {
                self.sends.remove(&seq);
                self.confirm_below(seq + 1);
                seq
            }
            None => match self.pings.remove(&receipt) {
                Some(next) => {
                    self.confirm_below(next);
                    next
                }
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
    pub(super) fn ping(&mut self, receipt: u64, next: u64) {
        self.pings.insert(receipt, next);
    }

    fn replay(&self, out: &mut BytesMut) -> usize {
        for (frame, _) in self.sends.values() {
            out.extend_from_slice(frame);
        }
        self.sends.len()
    }
}

pub(crate) struct Outbound {
    pub(super) buf: BytesMut,
    pub(super) closed: Option<ClientError>,
    /// False while a failover client is between connections: senders wait.
    pub(super) connected: bool,
    pub(super) next_sequence: u64,
    /// `Some` for failover clients.
    pub(super) tracker: Option<SendTracker>,
}

/// A live subscription: where its deliveries go, and how to restore it after a failover.
pub(crate) struct SubEntry {
    pub(super) tx: mpsc::UnboundedSender<Box<Delivery>>,
    pub(super) frame: proto::Subscribe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameKind {
    /// A message: with a failover `timeout`, waits at most that long for a connection.
    Send,
    Other,
}

pub(crate) struct Shared {
    pub(super) out: Mutex<Outbound>,
    pub(super) out_ready: AtomicWaker,
    /// Woken when the outgoing buffer drains, and when a failover client (re)connects.
    pub(super) room: Notify,
    pub(super) send_buffer: usize,
    receipts: Mutex<HashMap<u64, Waiter>>,
    pub(super) subs: Mutex<HashMap<u64, SubEntry>>,
    next_receipt: AtomicU64,
    pub(super) next_subscription: AtomicU64,
    pub(super) next_temp: AtomicU64,
    pub(super) next_transaction: AtomicU64,
    pub(super) producer_id: Bytes,
    /// Temporary destination names start with this: the first connection's id, kept across
    /// failovers.
    pub(super) temp_prefix: String,
    pub(super) info: RwLock<ServerInfo>,
    /// Which connection this is (a failover client counts up).
    pub(super) epoch: AtomicU64,
    /// Set while a failover client leaves its broker: deliveries not yet taken are left to the
    /// broker (it takes them back at the `Disconnect`), as their acks could not reach it.
    pub(super) leaving: AtomicBool,
    /// Errors the broker reported for requests without a receipt (fire-and-forget sends).
    pub(super) async_errors: Mutex<Vec<ClientError>>,
    pub(super) async_error_count: AtomicU64,
    pub(super) stop: CancellationToken,
    pub(super) ended: CancellationToken,
    pub(super) replies: tokio::sync::Mutex<Option<ReplyRouter>>,
    /// Created by the first `events()` call: a broadcast channel allocates all its slots up
    /// front, which ten thousand clients in one process would pay for (memory, and time at
    /// drop) without ever reading an event.
    pub(super) events: OnceLock<broadcast::Sender<ClientEvent>>,
    /// The failover `timeout`: how long a send waits for a connection.
    send_timeout: Option<Duration>,
    /// The URL of the broker this client is on now.
    pub(super) current_url: RwLock<String>,
    /// Connections a failover client opened after its first, and how many were moves.
    pub(super) reconnects: AtomicU64,
    pub(super) moves: AtomicU64,
    /// The URIs the brokers pushed (a failover client's learned list).
    pub(super) cluster_uris: RwLock<Vec<String>>,
}

impl Shared {
    pub(super) fn new(
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
            leaving: AtomicBool::new(false),
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

    pub(super) fn closed_error(&self) -> Option<ClientError> {
        self.out.lock().closed.clone()
    }

    /// Runs `write` on the outgoing buffer once there is a connection and room, waiting until
    /// then (a send waits for a connection at most the failover `timeout`).
    pub(super) async fn enqueue<R>(
        &self,
        kind: FrameKind,
        write: impl FnOnce(&mut Outbound) -> R,
    ) -> Result<R, ClientError> {
        let mut write = Some(write);
        // The common case first: room now, and nothing registered with `room` (registering
        // takes the Notify's lock, and so does dropping the registration).
        if let Ok(r) = self.try_enqueue(&mut write)? {
            return Ok(r);
        }
        let mut deadline = match kind {
            FrameKind::Send => self.send_timeout.map(|t| tokio::time::Instant::now() + t),
            FrameKind::Other => None,
        };
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Checked again once registered: room made since is not missed.
            let connected = match self.try_enqueue(&mut write)? {
                Ok(r) => return Ok(r),
                Err(connected) => connected,
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

    /// Runs `write` on the outgoing buffer if there is a connection and room now (`Ok(r)`);
    /// else answers whether there is a connection (`Err(connected)`), for the caller to wait.
    fn try_enqueue<R, W: FnOnce(&mut Outbound) -> R>(
        &self,
        write: &mut Option<W>,
    ) -> Result<Result<R, bool>, ClientError> {
        let mut out = self.out.lock();
        if let Some(e) = &out.closed {
            return Err(e.clone());
        }
        if !out.connected || out.buf.len() >= self.send_buffer {
            return Ok(Err(out.connected));
        }
        // The connection task is woken when the buffer stops being empty, and it takes the
        // whole buffer (it registers before it looks, see `poll_out`): a wake for every frame
        // would only schedule it again.
        let wake = out.buf.is_empty();
        let write = write.take().expect("written once");
        let r = write(&mut out);
        drop(out);
        if wake {
            self.out_ready.wake();
        }
        Ok(Ok(r))
    }

    pub(super) fn register_receipt(
        &self,
        kind: WaitKind,
    ) -> (u64, oneshot::Receiver<Result<(), ClientError>>) {
        let id = self.next_receipt.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.receipts.lock().insert(id, Waiter::Reply(tx, kind));
        (id, rx)
    }

    pub(super) fn forget_receipt(&self, id: u64) {
        self.receipts.lock().remove(&id);
    }

    pub(super) async fn await_receipt(
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

    pub(super) fn poll_out(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.out_ready.register(cx.waker());
        if !self.out.lock().buf.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub(super) fn emit(&self, event: ClientEvent) {
        // Nobody has asked for events yet: nobody could see this one.
        if let Some(events) = self.events.get() {
            let _ = events.send(event);
        }
    }

    /// A receipt arrived (or an error carrying one): answer whoever waits for it.
    pub(super) fn answer(&self, id: u64, result: Result<(), ClientError>) {
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

    pub(super) fn note_async_error(&self, err: ClientError) {
        self.async_error_count.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.async_errors.lock();
        if errors.len() < 1000 {
            errors.push(err);
        }
    }

    /// A failover client's connection ended: new frames wait for the next one; deliveries and
    /// acks of this one become stale; requests that will not be repeated are answered.
    pub(super) fn interrupt(&self, reason: &ClientError) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.leaving.store(false, Ordering::Release);
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
    pub(super) fn restore(&self, wbuf: &mut BytesMut) -> (usize, usize) {
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

    /// What a reconnect tells the new broker about the sends it is about to re-send: the
    /// group the client was connected to, and the first sequence not used yet (every tracked
    /// send lies below it).
    pub(super) fn resends(&self) -> (String, u64) {
        let group = self.info.read().group.clone();
        (group, self.out.lock().next_sequence)
    }

    /// A leave's receipt came: the broker applied every frame this connection carried.
    pub(super) fn leave_confirmed(&self) {
        let mut out = self.out.lock();
        let next = out.next_sequence;
        if let Some(t) = &mut out.tracker {
            t.confirm_below(next);
        }
    }

    /// The connection ended without the broker confirming the fire-and-forget sends written
    /// since its last receipt (they are not tracked, so nothing re-sends them): their span,
    /// once (see `SendTracker::take_unconfirmed`).
    pub(super) fn take_unconfirmed(&self) -> Option<(u64, u64)> {
        let mut out = self.out.lock();
        let next = out.next_sequence;
        out.tracker.as_mut().and_then(|t| t.take_unconfirmed(next))
    }

    /// A leave the broker did not confirm (`why`): the fire-and-forget sends it may have lost
    /// are reported to the application (`Client::take_errors`), never dropped in silence.
    pub(super) fn report_unconfirmed_leave(&self, why: &str) {
        let Some((first, last)) = self.take_unconfirmed() else {
            return;
        };
        let url = self.current_url.read().clone();
        tracing::warn!(%url, first, last, why, "failover: left a broker that did not confirm the fire-and-forget sends");
        self.note_async_error(ClientError::Interrupted(format!(
            "left {url} without its confirmation ({why}): the sends without a receipt among \
             producer sequences {first}..={last} may not have arrived; send with a receipt, or \
             set trackMessages=true to have them re-sent"
        )));
    }

    /// The client is over: everyone waiting is answered, every stream ends.
    pub(super) fn finish(&self, reason: ClientError) {
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
pub(crate) struct CloseOnDrop(pub(super) Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.stop.cancel();
        // The connection task waits on this waker, not on the token: without the wake it
        // would notice only at its next heartbeat tick, seconds later.
        self.0.out_ready.wake();
    }
}
