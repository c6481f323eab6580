//! One native-protocol connection: handshake, frames → broker commands, deliveries → frames,
//! producer flow control, heartbeats and shutdown. One task per connection.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::time::{sleep_until, Instant as TokioInstant};
use tokio_util::sync::CancellationToken;

use crate::broker::{BrokerError, Delivery, Message, Session, SubscribeSpec, Target};
use crate::transport::{IoEvent, Permit, Pump, Stream};
use crate::wire::{self, proto, Body, DecodeError, Decoded, Frame, MessageRef};

use super::ConnCtx;

/// Deliveries are moved from the outbox into the write buffer while it holds less than this.
const REFILL_BELOW: usize = 64 * 1024;
/// ... and until it holds this much.
const FILL_TO: usize = 256 * 1024;
/// A peer that does not read while we owe it more than this stops being read from.
const WRITE_BACKLOG_LIMIT: usize = 8 * 1024 * 1024;
/// A peer is dropped after this many of its heartbeat intervals of silence.
const HEARTBEAT_GRACE: u32 = 3;
/// Bodies smaller than this are copied out of the read buffer so a long-lived message never
/// pins a whole read chunk.
const COPY_BODY_BELOW: usize = 16 * 1024;

fn error_frame(
    code: proto::ErrorCode,
    message: impl Into<String>,
    receipt: u64,
    fatal: bool,
) -> Frame {
    wire::frame(Body::Error(proto::Error {
        code: code as i32,
        message: message.into(),
        receipt,
        fatal,
    }))
}

/// Maps a broker refusal onto a wire error code.
pub(crate) fn error_code(e: &BrokerError) -> proto::ErrorCode {
    use proto::ErrorCode as C;
    match e {
        BrokerError::Destination(_)
        | BrokerError::SubscriptionExists(_)
        | BrokerError::DurableNeedsClientId
        | BrokerError::DurableOnQueue(_)
        | BrokerError::BadPriority(_)
        | BrokerError::UnknownDelivery { .. } => C::Invalid,
        BrokerError::NotFound(_) | BrokerError::NoSuchSubscription(_) => C::NotFound,
        BrokerError::NotOwner(_) => C::Forbidden,
        BrokerError::TooManySubscriptions(_) | BrokerError::Full { .. } => C::ResourceExhausted,
        BrokerError::ClientIdInUse(_) => C::ClientIdInUse,
        BrokerError::DurableInUse { .. } => C::Invalid,
        BrokerError::WildcardQueue(_) | BrokerError::SelectorUnsupported(_) => C::Unsupported,
    }
}

/// Serves one admitted connection to completion.
pub(crate) async fn serve(
    stream: Stream,
    peer: SocketAddr,
    ctx: Arc<ConnCtx>,
    shutdown: CancellationToken,
    _permit: Permit,
) {
    ctx.metrics.connection_opened();
    let mut pump = Pump::new(stream);
    match handshake(&mut pump, &ctx, &shutdown).await {
        Ok(Some((session, client_heartbeat))) => {
            let mut conn = Connection::new(pump, session, ctx.clone(), client_heartbeat);
            let reason = conn.run(&shutdown).await;
            tracing::debug!(%peer, reason, "connection closed");
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(%peer, error = %e, "connection failed before connecting"),
    }
    ctx.metrics.connection_closed();
}

/// Waits for `Connect` and answers `Connected`, or an error and a close.
async fn handshake(
    pump: &mut Pump,
    ctx: &ConnCtx,
    shutdown: &CancellationToken,
) -> std::io::Result<Option<(Session, Option<Duration>)>> {
    let deadline = TokioInstant::now() + ctx.settings.connect_timeout;
    let connect = loop {
        match wire::decode(&mut pump.rbuf, ctx.settings.max_frame_size) {
            Ok(Decoded::Frame(Frame {
                body: Some(Body::Connect(c)),
            })) => break c,
            Ok(Decoded::Frame(f)) => {
                ctx.metrics.bad_frame();
                let what = wire::frame_name(&f);
                return refuse(
                    pump,
                    proto::ErrorCode::NotConnected,
                    format!("the first frame must be Connect, got {what}"),
                )
                .await;
            }
            Ok(Decoded::NeedMore(_)) => {}
            Err(e) => {
                ctx.metrics.bad_frame();
                return refuse(pump, decode_error_code(&e), e.to_string()).await;
            }
        }
        tokio::select! {
            ev = pump.next_event(true, 0, |_| std::task::Poll::Pending) => match ev? {
                IoEvent::Closed => return Ok(None),
                _ => continue,
            },
            _ = sleep_until(deadline) => {
                ctx.metrics.refused("connect_timeout");
                return refuse(pump, proto::ErrorCode::Timeout, format!(
                    "no Connect frame within the connect timeout ({:?})", ctx.settings.connect_timeout)).await;
            }
            _ = shutdown.cancelled() => {
                return refuse(pump, proto::ErrorCode::ShuttingDown, "the broker is shutting down").await;
            }
        }
    };
    if connect.protocol_version == 0 {
        return refuse(
            pump,
            proto::ErrorCode::ProtocolVersion,
            format!(
                "protocol version 0 is not a version; this broker speaks 1..={}",
                wire::PROTOCOL_VERSION
            ),
        )
        .await;
    }
    let client_id = (!connect.client_id.is_empty()).then(|| connect.client_id.clone());
    let session = match ctx.broker.open_session(client_id) {
        Ok(s) => s,
        Err(e) => return refuse(pump, error_code(&e), e.to_string()).await,
    };
    let connected = wire::frame(Body::Connected(proto::Connected {
        protocol_version: connect.protocol_version.min(wire::PROTOCOL_VERSION),
        connection_id: session.connection_id().to_string(),
        server: format!("meshmq/{}", env!("CARGO_PKG_VERSION")),
        group: ctx.identity.group.clone(),
        member: ctx.identity.member.clone(),
        heartbeat_ms: ctx.settings.heartbeat.as_millis() as u32,
        max_frame_size: ctx.settings.max_frame_size as u64,
        cluster: None,
    }));
    wire::encode(&connected, &mut pump.wbuf);
    let client_heartbeat =
        (connect.heartbeat_ms > 0).then(|| Duration::from_millis(connect.heartbeat_ms as u64));
    Ok(Some((session, client_heartbeat)))
}

async fn refuse<T>(
    pump: &mut Pump,
    code: proto::ErrorCode,
    message: impl Into<String>,
) -> std::io::Result<Option<T>> {
    wire::encode(&error_frame(code, message, 0, true), &mut pump.wbuf);
    let _ = tokio::time::timeout(Duration::from_secs(2), pump.flush_and_close()).await;
    Ok(None)
}

fn decode_error_code(e: &DecodeError) -> proto::ErrorCode {
    match e {
        DecodeError::TooLarge { .. } => proto::ErrorCode::FrameTooLarge,
        DecodeError::Malformed(_) => proto::ErrorCode::BadFrame,
    }
}

/// A send waiting for memory room (producer flow control).
struct Blocked {
    target: Target,
    message: Message,
    receipt: u64,
}

struct Connection {
    pump: Pump,
    session: Session,
    ctx: Arc<ConnCtx>,
    deliveries: VecDeque<Delivery>,
    blocked: Option<Blocked>,
    /// Set once the connection is to end: flush what is buffered, then close.
    closing: Option<&'static str>,
    last_read: Instant,
    last_write: Instant,
    client_heartbeat: Option<Duration>,
    last_producer: Bytes,
}

impl Connection {
    fn new(
        pump: Pump,
        session: Session,
        ctx: Arc<ConnCtx>,
        client_heartbeat: Option<Duration>,
    ) -> Connection {
        let now = Instant::now();
        Connection {
            pump,
            session,
            ctx,
            deliveries: VecDeque::new(),
            blocked: None,
            closing: None,
            last_read: now,
            last_write: now,
            client_heartbeat,
            last_producer: Bytes::new(),
        }
    }

    fn next_heartbeat_check(&self) -> TokioInstant {
        let far = Instant::now() + Duration::from_secs(3600);
        let out = if self.ctx.settings.heartbeat.is_zero() {
            far
        } else {
            self.last_write + self.ctx.settings.heartbeat
        };
        let inbound = self
            .client_heartbeat
            .map(|h| self.last_read + h * HEARTBEAT_GRACE)
            .unwrap_or(far);
        TokioInstant::from_std(out.min(inbound))
    }

    async fn run(&mut self, shutdown: &CancellationToken) -> &'static str {
        let heartbeat = tokio::time::sleep_until(self.next_heartbeat_check());
        tokio::pin!(heartbeat);
        // Frames may already be buffered behind the Connect.
        self.process_frames();
        loop {
            if let Some(reason) = self.closing {
                // The frame that ended the connection (an error, a Disconnect's receipt) is the
                // last one written: deliveries not yet encoded go back to their destinations
                // with the session's close instead of trailing after it.
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), self.pump.flush_and_close()).await;
                return reason;
            }
            self.fill();
            let reading = self.blocked.is_none() && self.pump.wbuf.len() < WRITE_BACKLOG_LIMIT;
            let outbox = self.session.outbox().clone();
            let blocked_counters = self.blocked.as_ref().map(|b| b.target.counters().clone());
            let broker = self.session.broker().clone();
            let room = async {
                match &blocked_counters {
                    Some(c) => broker.memory().wait_for_room(c).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = self.pump.next_event(reading, REFILL_BELOW, |cx| outbox.poll_ready(cx)) => match ev {
                    Ok(IoEvent::Read) => {
                        self.last_read = Instant::now();
                        self.process_frames();
                        self.pump.shrink_idle();
                    }
                    Ok(IoEvent::Drained) => {
                        self.last_write = Instant::now();
                        self.pump.shrink_idle();
                    }
                    Ok(IoEvent::Wake) => {}
                    Ok(IoEvent::Closed) => return "peer closed",
                    Err(_) => return "socket error",
                },
                _ = room => {
                    self.retry_blocked();
                    self.process_frames();
                }
                _ = &mut heartbeat => {
                    self.on_heartbeat_timer();
                    heartbeat.as_mut().reset(self.next_heartbeat_check());
                }
                _ = shutdown.cancelled(), if self.closing.is_none() => {
                    self.push_frame(&error_frame(proto::ErrorCode::ShuttingDown,
                        "the broker is shutting down; reconnect to another member", 0, true));
                    self.closing = Some("broker shutting down");
                }
            }
        }
    }

    fn on_heartbeat_timer(&mut self) {
        let now = Instant::now();
        if let Some(h) = self.client_heartbeat {
            if now >= self.last_read + h * HEARTBEAT_GRACE {
                self.push_frame(&error_frame(
                    proto::ErrorCode::Timeout,
                    format!(
                        "no frame or heartbeat from the client for {:?}",
                        h * HEARTBEAT_GRACE
                    ),
                    0,
                    true,
                ));
                self.closing = Some("heartbeat timeout");
                return;
            }
        }
        let hb = self.ctx.settings.heartbeat;
        if !hb.is_zero() && now >= self.last_write + hb && self.pump.wbuf.is_empty() {
            self.push_frame(&wire::frame(Body::Heartbeat(proto::Heartbeat {
                receipt: 0,
            })));
            self.last_write = now;
        }
    }

    /// Moves deliveries from the outbox into the write buffer.
    fn fill(&mut self) {
        if self.pump.wbuf.len() >= REFILL_BELOW {
            return;
        }
        if self.deliveries.is_empty() {
            self.session.outbox().drain_into(&mut self.deliveries);
        }
        let mut written = 0u64;
        while self.pump.wbuf.len() < FILL_TO {
            let Some(d) = self.deliveries.pop_front() else {
                break;
            };
            let m = &d.message;
            wire::encode_deliver(
                d.subscription,
                d.tag,
                d.redelivery_count,
                &message_ref(m),
                &mut self.pump.wbuf,
            );
            written += 1;
        }
        if written > 0 {
            self.ctx.metrics.delivered(written);
        }
    }

    fn push_frame(&mut self, f: &Frame) {
        wire::encode(f, &mut self.pump.wbuf);
    }

    fn fail(&mut self, e: &BrokerError, receipt: u64) {
        self.push_frame(&error_frame(error_code(e), e.to_string(), receipt, false));
    }

    fn receipt(&mut self, receipt: u64) {
        if receipt != 0 {
            self.push_frame(&wire::frame(Body::Receipt(proto::Receipt { receipt })));
        }
    }

    fn process_frames(&mut self) {
        while self.blocked.is_none() && self.closing.is_none() {
            match wire::decode(&mut self.pump.rbuf, self.ctx.settings.max_frame_size) {
                Ok(Decoded::Frame(f)) => self.handle(f),
                Ok(Decoded::NeedMore(_)) => return,
                Err(e) => {
                    self.ctx.metrics.bad_frame();
                    self.push_frame(&error_frame(decode_error_code(&e), e.to_string(), 0, true));
                    self.closing = Some("bad frame");
                }
            }
        }
    }

    fn handle(&mut self, f: Frame) {
        match f.body {
            Some(Body::Send(s)) => self.on_send(s),
            Some(Body::Subscribe(s)) => {
                let receipt = s.receipt;
                let spec = SubscribeSpec {
                    subscription: s.subscription,
                    destination: s.destination,
                    selector: s.selector,
                    prefetch: s.prefetch,
                    priority: s.priority,
                    durable_name: (!s.durable_name.is_empty()).then_some(s.durable_name),
                    no_local: s.no_local,
                };
                match self.session.subscribe(spec) {
                    Ok(()) => self.receipt(receipt),
                    Err(e) => self.fail(&e, receipt),
                }
            }
            Some(Body::Ack(a)) => match self.session.ack(a.subscription, a.up_to, &a.tags) {
                Ok(_) => self.receipt(a.receipt),
                Err(e) => self.fail(&e, a.receipt),
            },
            Some(Body::Nack(n)) => match self.session.nack(n.subscription, &n.tags) {
                Ok(_) => self.receipt(n.receipt),
                Err(e) => self.fail(&e, n.receipt),
            },
            Some(Body::Unsubscribe(u)) => {
                match self.session.unsubscribe(u.subscription, u.remove_durable) {
                    Ok(()) => self.receipt(u.receipt),
                    Err(e) => self.fail(&e, u.receipt),
                }
            }
            Some(Body::Heartbeat(h)) => self.receipt(h.receipt),
            Some(Body::Disconnect(d)) => {
                self.receipt(d.receipt);
                self.closing = Some("client disconnected");
            }
            other => {
                self.ctx.metrics.bad_frame();
                let name = wire::frame_name(&Frame { body: other });
                self.push_frame(&error_frame(
                    proto::ErrorCode::BadFrame,
                    format!("{name} is not a frame a client may send here"),
                    0,
                    true,
                ));
                self.closing = Some("unexpected frame");
            }
        }
    }

    fn on_send(&mut self, s: proto::Send) {
        let receipt = s.receipt;
        let target = match self.session.target(&s.destination) {
            Ok(t) => t,
            Err(e) => {
                self.ctx.metrics.send_refused(&e);
                return self.fail(&e, receipt);
            }
        };
        let message = self.message_from(s);
        if !self.session.has_room(&target) {
            match target.on_full() {
                crate::broker::OnFull::Fail => {
                    let e = BrokerError::Full {
                        destination: target.destination().to_string(),
                    };
                    self.ctx.metrics.send_refused(&e);
                    return self.fail(&e, receipt);
                }
                crate::broker::OnFull::Block => {
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

    fn publish(&mut self, target: &Target, message: Message, receipt: u64) {
        match self.session.publish(target, message) {
            Ok(()) => {
                self.ctx.metrics.received();
                self.receipt(receipt);
            }
            Err(e) => {
                self.ctx.metrics.send_refused(&e);
                self.fail(&e, receipt)
            }
        }
    }

    fn retry_blocked(&mut self) {
        if let Some(b) = self.blocked.take() {
            if self.session.has_room(&b.target) {
                self.publish(&b.target, b.message, b.receipt);
            } else {
                self.blocked = Some(b);
            }
        }
    }

    fn message_from(&mut self, s: proto::Send) -> Message {
        let body = if s.body.len() < COPY_BODY_BELOW {
            Bytes::copy_from_slice(&s.body)
        } else {
            s.body
        };
        if s.producer_id != self.last_producer {
            self.last_producer = Bytes::copy_from_slice(&s.producer_id);
        }
        Message {
            destination: None,
            body,
            headers: wire::headers_from_wire(s.headers),
            persistent: s.persistent,
            // Out-of-range priorities are refused by the broker with a clear error.
            priority: s.priority.min(u8::MAX as u32) as u8,
            expires_at_ms: s.expires_at_ms,
            producer_id: self.last_producer.clone(),
            sequence: s.sequence,
            reply_to: s.reply_to,
            correlation_id: s.correlation_id,
            content_type: s.content_type,
            timestamp_ms: if s.timestamp_ms == 0 {
                crate::broker::now_ms()
            } else {
                s.timestamp_ms
            },
            ..Message::default()
        }
    }
}

/// Borrows a message's fields for the wire encoder.
pub(crate) fn message_ref(m: &Message) -> MessageRef<'_> {
    MessageRef {
        destination: m.destination.as_ref().map(|d| d.as_str()).unwrap_or(""),
        body: &m.body,
        headers: &m.headers,
        persistent: m.persistent,
        priority: m.priority as u32,
        expires_at_ms: m.expires_at_ms,
        producer_id: &m.producer_id,
        sequence: m.sequence,
        reply_to: &m.reply_to,
        correlation_id: &m.correlation_id,
        content_type: &m.content_type,
        timestamp_ms: m.timestamp_ms,
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Deliveries drained but not written go back with the session's close.
        self.deliveries.clear();
        self.session.close();
    }
}

/// Writes a refusal to a connection over the listener's limit and closes it.
pub(crate) async fn refuse_over_limit(stream: Stream, max: usize) {
    let mut pump = Pump::new(stream);
    let mut buf = BytesMut::new();
    wire::encode(
        &error_frame(
            proto::ErrorCode::ResourceExhausted,
            format!("this listener already serves its max_connections ({max}); try another member"),
            0,
            true,
        ),
        &mut buf,
    );
    pump.wbuf = buf;
    let _ = tokio::time::timeout(Duration::from_secs(2), pump.flush_and_close()).await;
}
