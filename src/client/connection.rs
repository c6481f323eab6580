//! One connection task: the loop that moves frames between the shared state and the socket,
//! heartbeats, and what each frame from the broker means to the client.

use super::*;

/// Moves the outgoing buffer into the pump while it has room; wakes waiting senders.
pub(crate) fn take_outgoing(shared: &Shared, pump: &mut Pump) {
    const REFILL_BELOW: usize = 256 * 1024;
    if pump.wbuf.len() >= REFILL_BELOW {
        return;
    }
    let mut out = shared.out.lock();
    if out.buf.is_empty() {
        return;
    }
    if pump.wbuf.is_empty() {
        // The buffer the application fills next is the one swapped out: the large one a drained
        // connection of this thread left, when there is one, so sends do not regrow it from
        // nothing (a copy of everything buffered at each doubling).
        pump.ready_to_fill();
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
pub(crate) const LEAVE_RECEIPT: u64 = u64::MAX;

/// Lifecycle events kept for a reader of `Client::events` that falls behind.
pub(crate) const EVENT_BACKLOG: usize = 1024;

/// A plain (non-failover) client: one connection, then the end.
pub(crate) async fn run_single(
    pump: Pump,
    shared: Arc<Shared>,
    heartbeat: Duration,
    max_frame_size: usize,
) {
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
/// comes after every other). A leave that ends any other way (no receipt in time, the broker
/// closed or failed first) is a loss, and the fire-and-forget sends it leaves in doubt are
/// reported (`Client::take_errors`).
pub(crate) async fn run_connection(
    pump: Pump,
    shared: Arc<Shared>,
    heartbeat: Duration,
    max_frame_size: usize,
    controls: mpsc::UnboundedSender<proto::ConnectionControl>,
    leave: CancellationToken,
) -> End {
    let end = serve(
        pump,
        shared.clone(),
        heartbeat,
        max_frame_size,
        controls,
        leave.clone(),
    )
    .await;
    if let End::Lost(e) = &end {
        if leave.is_cancelled() {
            shared.report_unconfirmed_leave(&e.to_string());
        }
    }
    end
}

async fn serve(
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
    // Made once, not on every turn of the loop: a subscriber's connection turns once or twice
    // per delivery, and each new wait would check and register with its token's lock anew
    // (and deregister as the turn ends).
    let stopped = shared.stop.cancelled();
    tokio::pin!(stopped);
    let left = leave.cancelled();
    tokio::pin!(left);
    loop {
        take_outgoing(&shared, &mut pump);
        if let Some(since) = stopping {
            let flushed = pump.wbuf.is_empty() && shared.out.lock().buf.is_empty();
            if flushed || since.elapsed() > Duration::from_secs(2) {
                let _ = tokio::time::timeout(Duration::from_secs(2), pump.flush_and_close()).await;
                return End::Stopped(ClientError::Closed("closed by the client".into()));
            }
        }
        if leaving.is_some_and(|since| since.elapsed() > LEAVE_TIMEOUT) {
            let _ = tokio::time::timeout(Duration::from_secs(1), pump.flush_and_close()).await;
            return End::Lost(ClientError::Timeout(format!(
                "no receipt for the Disconnect within {LEAVE_TIMEOUT:?}"
            )));
        }
        tokio::select! {
            _ = &mut stopped, if stopping.is_none() => {
                stopping = Some(Instant::now());
            }
            _ = &mut left, if leaving.is_none() && stopping.is_none() => {
                leaving = Some(Instant::now());
                shared.leaving.store(true, Ordering::Release);
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
                            // Deliveries the broker wrote before it read our Disconnect: it
                            // takes them back when it does (the session ends before the
                            // receipt), and an ack from here could only reach the next broker.
                            Ok(Decoded::Frame(f))
                                if leaving.is_some() && matches!(f.body, Some(Body::Deliver(_))) => {}
                            Ok(Decoded::Frame(f)) => match on_frame(&shared, f, epoch) {
                                None => {}
                                Some(Outcome::Control(c)) => {
                                    let _ = controls.send(c);
                                }
                                Some(Outcome::Left) => {
                                    shared.leave_confirmed();
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

/// How long a leaving client waits for its `Disconnect`'s receipt (a broker that stopped
/// reading must not keep it).
pub(crate) const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Heartbeat intervals of the broker's silence after which a client gives its connection up.
pub(crate) const BROKER_SILENT_INTERVALS: u32 = 3;
/// Idle buffers are given back at least this often, heartbeats or not.
pub(crate) const SHRINK_EVERY: Duration = Duration::from_secs(10);

/// When the connection task must next look at its heartbeats (and idle buffers).
pub(crate) fn next_check(liveness: &Liveness) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    let shrink = now + SHRINK_EVERY;
    liveness.next_check(now).map_or(shrink, |at| at.min(shrink))
}

/// What a frame asks of the connection task.
pub(crate) enum Outcome {
    /// The broker ended the connection with this error.
    Fatal(ClientError),
    Control(proto::ConnectionControl),
    /// The receipt of a moving client's `Disconnect`.
    Left,
}

/// Handles one frame from the broker.
pub(crate) fn on_frame(shared: &Shared, f: Frame, epoch: u64) -> Option<Outcome> {
    match f.body {
        Some(Body::Deliver(d)) => {
            let subs = shared.subs.lock();
            if let Some(e) = subs.get(&d.subscription) {
                let _ = e.tx.send(Box::new(Delivery::from_wire(d, epoch)));
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
