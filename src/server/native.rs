//! The native protocol on a client connection: handshake (with login), frames → broker calls.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::{sleep_until, Instant as TokioInstant};
use tokio_util::sync::CancellationToken;

use crate::broker::{BrokerError, Delivery, Message, Session, SubscribeSpec};
use crate::cluster::{ClientHello, Registration};
use crate::security::{Action, Principal};
use crate::transport::{IoEvent, Permit, Pump, Stream};
use crate::wire::proto::{self, ErrorCode};
use crate::wire::{self, Body, DecodeError, Frame, MessageRef};

use super::conn::{error_code, Cx, Decoded, Driver, Protocol, Reply, Tx};
use super::ConnCtx;

/// A native client is dropped after this many of its heartbeat intervals of silence.
const HEARTBEAT_GRACE: u32 = 3;
/// Bodies smaller than this are copied out of the read buffer so a long-lived message never
/// pins a whole read chunk.
const COPY_BODY_BELOW: usize = 16 * 1024;

pub(crate) fn error_frame(
    code: ErrorCode,
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

fn decode_error_code(e: &DecodeError) -> ErrorCode {
    match e {
        DecodeError::TooLarge { .. } => ErrorCode::FrameTooLarge,
        DecodeError::Malformed(_) => ErrorCode::BadFrame,
    }
}

/// Serves one admitted native connection to completion.
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
        Ok(Some(Hello::Bridge(info))) => match &ctx.network {
            Some(network) => network.accept(pump, info).await,
            None => {
                let _: std::io::Result<Option<()>> = refuse(
                    &mut pump,
                    ErrorCode::Unsupported,
                    "this broker runs no connectors",
                )
                .await;
            }
        },
        Ok(Some(Hello::Client(session, principal, client_heartbeat, registration))) => {
            let heartbeat_out =
                (!ctx.settings.heartbeat.is_zero()).then_some(ctx.settings.heartbeat);
            let native = Native {
                max_frame_size: ctx.settings.max_frame_size,
                last_producer: Bytes::new(),
                txs: HashMap::new(),
            };
            let mut driver = Driver::new(
                native,
                pump,
                session,
                ctx.clone(),
                principal,
                heartbeat_out,
                client_heartbeat.map(|h| h * HEARTBEAT_GRACE),
            )
            .with_registration(registration);
            let reason = driver.run(&shutdown).await;
            tracing::debug!(%peer, reason, "connection closed");
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(%peer, error = %e, "connection failed before connecting"),
    }
    ctx.metrics.connection_closed();
}

/// Who opened a connection: a client, or another group's bridge.
enum Hello {
    Client(Session, Principal, Option<Duration>, Registration),
    Bridge(proto::BrokerInfo),
}

/// How long a failover reconnect waits for the connection it replaces to let go of its
/// client id.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// Opens the client's session. A failover reconnect whose client id is still held here (its
/// old connection's end has not been noticed yet: a half-open socket, a lost receipt) ends
/// that old connection and takes the id over, as ActiveMQ does with a stale connection.
async fn open_session(ctx: &ConnCtx, connect: &proto::Connect) -> Result<Session, BrokerError> {
    let client_id = (!connect.client_id.is_empty()).then(|| connect.client_id.clone());
    let deadline = TokioInstant::now() + TAKEOVER_WAIT;
    loop {
        match ctx.broker.open_session(client_id.clone()) {
            Err(BrokerError::ClientIdInUse(cid))
                if connect.failover_reconnect && TokioInstant::now() < deadline =>
            {
                if let Some(holder) = ctx.broker.client_id_holder(&cid) {
                    if ctx.cluster.kick(holder) {
                        tracing::debug!(client_id = %cid, "a failover reconnect takes over the client id");
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// Waits for `Connect` (or a bridge's `BrokerInfo`), logs the client in, and answers
/// `Connected` — or an error and a close.
async fn handshake(
    pump: &mut Pump,
    ctx: &ConnCtx,
    shutdown: &CancellationToken,
) -> std::io::Result<Option<Hello>> {
    let deadline = TokioInstant::now() + ctx.settings.connect_timeout;
    let connect = loop {
        match wire::decode(&mut pump.rbuf, ctx.settings.max_frame_size) {
            Ok(wire::Decoded::Frame(Frame {
                body: Some(Body::Connect(c)),
            })) => break c,
            Ok(wire::Decoded::Frame(Frame {
                body: Some(Body::BrokerInfo(info)),
            })) => return Ok(Some(Hello::Bridge(info))),
            Ok(wire::Decoded::Frame(f)) => {
                ctx.metrics.bad_frame();
                let what = wire::frame_name(&f);
                return refuse(
                    pump,
                    ErrorCode::NotConnected,
                    format!("the first frame must be Connect, got {what}"),
                )
                .await;
            }
            Ok(wire::Decoded::NeedMore(_)) => {}
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
                return refuse(pump, ErrorCode::Timeout, format!(
                    "no Connect frame within the connect timeout ({:?})", ctx.settings.connect_timeout)).await;
            }
            _ = shutdown.cancelled() => {
                return refuse(pump, ErrorCode::ShuttingDown, "the broker is shutting down").await;
            }
        }
    };
    if connect.protocol_version == 0 {
        return refuse(
            pump,
            ErrorCode::ProtocolVersion,
            format!(
                "protocol version 0 is not a version; this broker speaks 1..={}",
                wire::PROTOCOL_VERSION
            ),
        )
        .await;
    }
    let principal = match ctx
        .login(
            (!connect.username.is_empty()).then(|| connect.username.clone()),
            (!connect.password.is_empty()).then(|| connect.password.clone()),
        )
        .await
    {
        Ok(p) => p,
        Err(message) => return refuse(pump, ErrorCode::Unauthenticated, message).await,
    };
    let mut session = match open_session(ctx, &connect).await {
        Ok(s) => s,
        Err(e) => return refuse(pump, error_code(&e), e.to_string()).await,
    };
    if connect.failover_reconnect {
        session.adopt_temp_prefixes(connect.temp_prefixes.clone());
    }
    let mut registration = ctx.cluster.register(
        session.id(),
        &ClientHello {
            fault_tolerant: connect.fault_tolerant,
            failover_reconnect: connect.failover_reconnect,
            priority_pinned: connect.priority_pinned,
        },
        Some(ctx.cluster_policy.clone()),
    );
    let cluster = registration.feed.as_mut().map(|f| f.initial());
    let connected = wire::frame(Body::Connected(proto::Connected {
        protocol_version: connect.protocol_version.min(wire::PROTOCOL_VERSION),
        connection_id: session.connection_id().to_string(),
        server: format!("meshmq/{}", env!("CARGO_PKG_VERSION")),
        group: ctx.identity.group.clone(),
        member: ctx.identity.member.clone(),
        heartbeat_ms: ctx.settings.heartbeat.as_millis() as u32,
        max_frame_size: ctx.settings.max_frame_size as u64,
        cluster,
    }));
    wire::encode(&connected, &mut pump.wbuf);
    let client_heartbeat =
        (connect.heartbeat_ms > 0).then(|| Duration::from_millis(connect.heartbeat_ms as u64));
    Ok(Some(Hello::Client(
        session,
        principal,
        client_heartbeat,
        registration,
    )))
}

async fn refuse<T>(
    pump: &mut Pump,
    code: ErrorCode,
    message: impl Into<String>,
) -> std::io::Result<Option<T>> {
    wire::encode(&error_frame(code, message, 0, true), &mut pump.wbuf);
    let _ = tokio::time::timeout(Duration::from_secs(2), pump.flush_and_close()).await;
    Ok(None)
}

/// Writes a refusal to a connection over the listener's limit and closes it.
pub(crate) async fn refuse_over_limit(stream: Stream, max: usize) {
    let mut pump = Pump::new(stream);
    let mut buf = BytesMut::new();
    wire::encode(
        &error_frame(
            ErrorCode::ResourceExhausted,
            format!("this listener already serves its max_connections ({max}); try another member"),
            0,
            true,
        ),
        &mut buf,
    );
    pump.wbuf = buf;
    let _ = tokio::time::timeout(Duration::from_secs(2), pump.flush_and_close()).await;
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

fn some(receipt: u64) -> Option<u64> {
    (receipt != 0).then_some(receipt)
}

/// The native protocol's side of a connection.
struct Native {
    max_frame_size: usize,
    last_producer: Bytes,
    /// Open transactions, by the client's number.
    txs: HashMap<u64, Tx>,
}

impl Native {
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

fn no_transaction(transaction: u64, receipt: u64) -> Reply<u64> {
    refusal(
        ErrorCode::NotFound,
        format!("no open transaction {transaction} on this connection: begin it first"),
        receipt,
    )
}

impl Native {
    fn on_transaction(
        &mut self,
        t: proto::Transaction,
        cx: &mut Cx<'_>,
        replies: &mut Vec<Reply<u64>>,
    ) {
        let (id, receipt) = (t.transaction, t.receipt);
        if id == 0 {
            return replies.push(refusal(
                ErrorCode::Invalid,
                "transaction 0 is not a transaction; number them from 1".into(),
                receipt,
            ));
        }
        match proto::TransactionAction::try_from(t.action) {
            Ok(proto::TransactionAction::Begin) => {
                if self.txs.contains_key(&id) {
                    return replies.push(refusal(
                        ErrorCode::Invalid,
                        format!("transaction {id} is already open"),
                        receipt,
                    ));
                }
                self.txs.insert(id, Tx::default());
                replies.extend(some(receipt).map(Reply::Receipt));
            }
            Ok(proto::TransactionAction::Commit) => match self.txs.remove(&id) {
                Some(tx) => {
                    let index = tx.commit(cx);
                    replies.extend(some(receipt).map(|r| Reply::ReceiptAfter(index, r)));
                }
                None => replies.push(no_transaction(id, receipt)),
            },
            Ok(proto::TransactionAction::Rollback) => match self.txs.remove(&id) {
                Some(tx) => {
                    tx.abort(cx);
                    replies.extend(some(receipt).map(Reply::Receipt));
                }
                None => replies.push(no_transaction(id, receipt)),
            },
            Err(_) => replies.push(refusal(
                ErrorCode::BadFrame,
                format!("unknown transaction action {}", t.action),
                receipt,
            )),
        }
    }
}

fn refusal(code: ErrorCode, message: String, receipt: u64) -> Reply<u64> {
    Reply::Error {
        code,
        message,
        receipt: some(receipt),
        fatal: false,
    }
}

impl Protocol for Native {
    type Frame = Frame;
    type Receipt = u64;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded<Frame>, (ErrorCode, String)> {
        match wire::decode(buf, self.max_frame_size) {
            Ok(wire::Decoded::Frame(Frame {
                body: Some(Body::Heartbeat(proto::Heartbeat { receipt: 0 })),
            })) => Ok(Decoded::Alive),
            Ok(wire::Decoded::Frame(f)) => Ok(Decoded::Frame(f)),
            Ok(wire::Decoded::NeedMore(_)) => Ok(Decoded::NeedMore),
            Err(e) => Err((decode_error_code(&e), e.to_string())),
        }
    }

    fn handle(&mut self, f: Frame, cx: &mut Cx<'_>, replies: &mut Vec<Reply<u64>>) {
        match f.body {
            Some(Body::Send(s)) => {
                let receipt = s.receipt;
                if let Err(denied) = cx.authorize(Action::Write, &s.destination) {
                    cx.ctx.metrics.denied();
                    return replies.push(refusal(ErrorCode::Forbidden, denied, receipt));
                }
                let target = match cx.session.target(&s.destination) {
                    Ok(t) => t,
                    Err(e) => {
                        cx.ctx.metrics.send_refused(&e);
                        return replies.push(refusal(error_code(&e), e.to_string(), receipt));
                    }
                };
                let transaction = s.transaction;
                let message = self.message_from(s);
                if transaction != 0 {
                    let Some(tx) = self.txs.get_mut(&transaction) else {
                        return replies.push(no_transaction(transaction, receipt));
                    };
                    match cx.session.stage(&target, message) {
                        Ok(staged) => tx.sends.extend(staged),
                        Err(e) => {
                            return replies.push(refusal(error_code(&e), e.to_string(), receipt))
                        }
                    }
                    return replies.extend(some(receipt).map(Reply::Receipt));
                }
                replies.push(Reply::Publish {
                    target,
                    message,
                    receipt: some(receipt),
                });
            }
            Some(Body::Subscribe(s)) => {
                let receipt = s.receipt;
                if let Err(denied) = cx.authorize(Action::Read, &s.destination) {
                    cx.ctx.metrics.denied();
                    return replies.push(refusal(ErrorCode::Forbidden, denied, receipt));
                }
                let spec = SubscribeSpec {
                    subscription: s.subscription,
                    destination: s.destination,
                    selector: s.selector,
                    prefetch: s.prefetch,
                    priority: s.priority,
                    durable_name: (!s.durable_name.is_empty()).then_some(s.durable_name),
                    no_local: s.no_local,
                };
                let before = cx.session.last_record();
                match cx.session.subscribe(spec) {
                    Ok(()) => replies
                        .extend(some(receipt).map(|r| Reply::ReceiptAfter(changed(cx, before), r))),
                    Err(e) => replies.push(refusal(error_code(&e), e.to_string(), receipt)),
                }
            }
            Some(Body::Ack(a)) if a.transaction != 0 => {
                let Some(tx) = self.txs.get_mut(&a.transaction) else {
                    return replies.push(no_transaction(a.transaction, a.receipt));
                };
                if a.up_to != 0 {
                    return replies.push(refusal(
                        ErrorCode::Invalid,
                        "inside a transaction, acknowledge deliveries by their tags (not up_to)"
                            .into(),
                        a.receipt,
                    ));
                }
                tx.acks
                    .extend(a.tags.iter().map(|tag| (a.subscription, *tag)));
                replies.extend(some(a.receipt).map(Reply::Receipt));
            }
            Some(Body::Ack(a)) => match cx.session.ack(a.subscription, a.up_to, &a.tags) {
                Ok(_) => replies.extend(some(a.receipt).map(Reply::Receipt)),
                Err(e) => replies.push(refusal(error_code(&e), e.to_string(), a.receipt)),
            },
            Some(Body::Transaction(t)) => self.on_transaction(t, cx, replies),
            Some(Body::Nack(n)) => match cx.session.nack(n.subscription, &n.tags) {
                Ok(_) => replies.extend(some(n.receipt).map(Reply::Receipt)),
                Err(e) => replies.push(refusal(error_code(&e), e.to_string(), n.receipt)),
            },
            Some(Body::Unsubscribe(u)) => {
                let before = cx.session.last_record();
                match cx.session.unsubscribe(u.subscription, u.remove_durable) {
                    Ok(()) => replies.extend(
                        some(u.receipt).map(|r| Reply::ReceiptAfter(changed(cx, before), r)),
                    ),
                    Err(e) => replies.push(refusal(error_code(&e), e.to_string(), u.receipt)),
                }
            }
            // A heartbeat with a receipt is a ping: answered after every earlier frame.
            Some(Body::Heartbeat(h)) => replies.extend(some(h.receipt).map(Reply::Receipt)),
            Some(Body::Disconnect(d)) => {
                replies.extend(some(d.receipt).map(Reply::Receipt));
                replies.push(Reply::Disconnect);
            }
            other => {
                cx.ctx.metrics.bad_frame();
                let name = wire::frame_name(&Frame { body: other });
                replies.push(Reply::Error {
                    code: ErrorCode::BadFrame,
                    message: format!("{name} is not a frame a client may send here"),
                    receipt: None,
                    fatal: true,
                });
            }
        }
    }

    fn encode_delivery(&mut self, d: &Delivery, out: &mut BytesMut) -> bool {
        wire::encode_deliver(
            d.subscription,
            d.tag,
            d.redelivery_count,
            &message_ref(&d.message),
            out,
        );
        false
    }

    fn encode_receipt(&mut self, receipt: &u64, out: &mut BytesMut) {
        wire::encode(
            &wire::frame(Body::Receipt(proto::Receipt { receipt: *receipt })),
            out,
        );
    }

    fn encode_error(
        &mut self,
        code: ErrorCode,
        message: &str,
        receipt: Option<&u64>,
        fatal: bool,
        out: &mut BytesMut,
    ) {
        wire::encode(
            &error_frame(code, message, receipt.copied().unwrap_or(0), fatal),
            out,
        );
    }

    fn encode_heartbeat(&mut self, out: &mut BytesMut) {
        wire::encode(
            &wire::frame(Body::Heartbeat(proto::Heartbeat { receipt: 0 })),
            out,
        );
    }

    fn encode_control(&mut self, control: proto::ConnectionControl, out: &mut BytesMut) {
        wire::encode(&wire::frame(Body::Control(control)), out);
    }

    fn on_close(&mut self, cx: &mut Cx<'_>) {
        for (_, tx) in std::mem::take(&mut self.txs) {
            tx.abort(cx);
        }
    }
}

/// The journal record an operation appended (0: none, nothing to wait for).
pub(crate) fn changed(cx: &Cx<'_>, before: u64) -> u64 {
    let now = cx.session.last_record();
    if now != before {
        now
    } else {
        0
    }
}
