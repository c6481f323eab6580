//! The native protocol on a client connection: handshake (with login), then its codec —
//! frames → [`Request`]s, deliveries and replies → frames.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::time::{sleep_until, Instant as TokioInstant};
use tokio_util::sync::CancellationToken;

use crate::broker::{
    BrokerError, Delivery, Destination, DestinationError, DestinationPattern, Draft, Session,
    SubscribeSpec, COPY_BODY_BELOW,
};
use crate::cluster::{ClientHello, Registration};
use crate::security::Principal;
use crate::transport::{IoEvent, Permit, Pump, Stream};
use crate::wire::proto::{self, ErrorCode};
use crate::wire::{self, Body, DecodeError, Frame, MessageRef, SendRef};

use super::conn::{error_code, handshake_frame_limit, Codec, ConnCtx, Connection, Inbound};
use super::request::{Refusal, Request, SendRequest, TxName};

/// A native client is dropped after this many of its heartbeat intervals of silence.
const HEARTBEAT_GRACE: u32 = 3;

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
    // Boxed: its state is freed once it is done, not kept for the connection's life. A
    // client's connection is built in this statement, so the handshake's result (being moved
    // out of) is not kept beside it while it runs.
    let mut connection = match Box::pin(handshake(&mut pump, peer, &ctx, &shutdown)).await {
        Ok(Some(Hello::Bridge(info))) => {
            match &ctx.network {
                // Boxed: a bridge's state would otherwise be part of every client connection's.
                Some(network) => Box::pin(network.accept(pump, info, peer)).await,
                None => {
                    let _: std::io::Result<Option<()>> = refuse(
                        &mut pump,
                        ErrorCode::Unsupported,
                        "this broker runs no connectors",
                    )
                    .await;
                }
            }
            None
        }
        Ok(Some(Hello::Client(session, principal, client_heartbeat, registration))) => {
            let heartbeat_out =
                (!ctx.settings.heartbeat.is_zero()).then_some(ctx.settings.heartbeat);
            let native = Native::new(ctx.settings.max_frame_size);
            Some(
                Connection::new(
                    native,
                    pump,
                    *session,
                    ctx.clone(),
                    principal,
                    heartbeat_out,
                    client_heartbeat.map(|h| h * HEARTBEAT_GRACE),
                )
                .with_registration(registration),
            )
        }
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "connection failed before connecting");
            None
        }
    };
    if let Some(connection) = connection.as_mut() {
        let reason = connection.run(&shutdown).await;
        tracing::debug!(%peer, reason, "connection closed");
    }
    drop(connection);
    ctx.metrics.connection_closed();
}

/// Who opened a connection: a client, or another group's bridge.
enum Hello {
    Client(Box<Session>, Principal, Option<Duration>, Registration),
    Bridge(proto::BrokerInfo),
}

/// How long a failover reconnect waits for the connection it replaces to let go of its
/// client id.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// Opens the client's session. With `take_over` (a failover reconnect; any MQTT connect), a
/// client id still held here (its old connection's end has not been noticed yet: a half-open
/// socket, a lost receipt) ends that old connection and takes the id over, as ActiveMQ does
/// with a stale connection — but only when both are the same user: another user's connection
/// is refused and the holder keeps its session.
pub(super) async fn open_session(
    ctx: &ConnCtx,
    client_id: Option<String>,
    take_over: bool,
    principal: &Principal,
) -> Result<Session, BrokerError> {
    let deadline = TokioInstant::now() + TAKEOVER_WAIT;
    loop {
        match ctx
            .broker
            .open_session_as(client_id.clone(), principal.user.clone())
        {
            Err(BrokerError::ClientIdInUse(cid)) if take_over && TokioInstant::now() < deadline => {
                if let Some((holder, user)) = ctx.broker.client_id_holder(&cid) {
                    if user != principal.user {
                        return Err(BrokerError::ClientIdOwned(cid));
                    }
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
    peer: SocketAddr,
    ctx: &ConnCtx,
    shutdown: &CancellationToken,
) -> std::io::Result<Option<Hello>> {
    let deadline = TokioInstant::now() + ctx.settings.connect_timeout;
    let connect = loop {
        match wire::decode(&mut pump.rbuf, handshake_frame_limit(ctx)) {
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
            peer,
            (!connect.username.is_empty()).then(|| connect.username.clone()),
            (!connect.password.is_empty()).then(|| connect.password.clone()),
        )
        .await
    {
        Ok(p) => p,
        Err(message) => return refuse(pump, ErrorCode::Unauthenticated, message).await,
    };
    let client_id = (!connect.client_id.is_empty()).then(|| connect.client_id.clone());
    let mut session =
        match open_session(ctx, client_id, connect.failover_reconnect, &principal).await {
            Ok(s) => s,
            Err(e) => return refuse_owned(pump, ctx, &principal, e).await,
        };
    if connect.failover_reconnect {
        if let Err(e) = session.adopt_temp_prefixes(connect.temp_prefixes.clone()) {
            return refuse_owned(pump, ctx, &principal, e).await;
        }
        // Re-sends from another group: this group's producer marks cannot catch them.
        if !connect.resent_from_group.is_empty() && connect.resent_from_group != ctx.identity.group
        {
            session.flag_resends_below(connect.resends_below);
        }
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
        Box::new(session),
        principal,
        client_heartbeat,
        registration,
    )))
}

/// Refuses a connection whose session could not open; a name of another user's is logged.
async fn refuse_owned<T>(
    pump: &mut Pump,
    ctx: &ConnCtx,
    principal: &Principal,
    e: BrokerError,
) -> std::io::Result<Option<T>> {
    if matches!(
        e,
        BrokerError::ClientIdOwned(_) | BrokerError::TempPrefixOwned(_)
    ) {
        ctx.metrics.refused("claimed_by_another_user");
        tracing::warn!(user = ?principal.user, error = %e, "connection refused");
    }
    refuse(pump, error_code(&e), e.to_string()).await
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

fn receipt(receipt: u64) -> Option<u64> {
    (receipt != 0).then_some(receipt)
}

/// The native protocol's side of a connection: frames to requests, replies to frames.
pub(crate) struct Native {
    max_frame_size: usize,
    /// The last send's destination: a producer mostly sends to one, parsed once.
    last_send: Option<Destination>,
    /// The last producer id a send read in place named, copied out of the read buffer once
    /// for all the sends of that producer.
    last_producer: Bytes,
}

impl Native {
    pub(crate) fn new(max_frame_size: usize) -> Native {
        Native {
            max_frame_size,
            last_send: None,
            last_producer: Bytes::new(),
        }
    }

    /// The request of a `Send` read in place: what `inbound` makes of the same frame decoded,
    /// with the body copied out of the read buffer here (once: the builder keeps it) and the
    /// strings the message keeps copied from the buffer, the others never.
    fn send_request(&mut self, s: &SendRef<'_>) -> Request<u64> {
        let receipt = receipt(s.receipt);
        let destination = match self.send_destination(s.destination) {
            Ok(d) => d,
            Err(e) => return Request::refuse(Refusal::Send(e.into()), receipt),
        };
        if *self.last_producer != *s.producer_id {
            self.last_producer = Bytes::copy_from_slice(s.producer_id);
        }
        Request::Send(SendRequest {
            destination,
            transaction: transaction(s.transaction),
            draft: Draft {
                body: Bytes::copy_from_slice(s.body),
                body_is_own: true,
                headers: s
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                persistent: s.persistent,
                priority: s.priority,
                expires_at_ms: s.expires_at_ms,
                producer_id: self.last_producer.clone(),
                sequence: s.sequence,
                reply_to: s.reply_to.to_string(),
                correlation_id: s.correlation_id.to_string(),
                content_type: s.content_type.to_string(),
                timestamp_ms: s.timestamp_ms,
                ..Draft::default()
            },
            receipt,
        })
    }

    fn send_destination(&mut self, text: &str) -> Result<Destination, DestinationError> {
        if let Some(d) = self.last_send.as_ref().filter(|d| d.as_str() == text) {
            return Ok(d.clone());
        }
        let d = Destination::parse(text)?;
        self.last_send = Some(d.clone());
        Ok(d)
    }

    /// What a frame asks (destinations parsed here, once).
    pub(crate) fn inbound(&mut self, f: Frame) -> Inbound<u64> {
        let request = match f.body {
            Some(Body::Send(s)) => {
                let receipt = receipt(s.receipt);
                match self.send_destination(&s.destination) {
                    Ok(destination) => Request::Send(SendRequest {
                        destination,
                        transaction: transaction(s.transaction),
                        draft: Draft::from(s),
                        receipt,
                    }),
                    Err(e) => Request::refuse(Refusal::Send(e.into()), receipt),
                }
            }
            Some(Body::Subscribe(s)) => {
                let receipt = receipt(s.receipt);
                match DestinationPattern::parse(&s.destination) {
                    Ok(destination) => Request::Subscribe {
                        spec: SubscribeSpec {
                            subscription: s.subscription,
                            destination,
                            selector: s.selector,
                            prefetch: s.prefetch,
                            priority: s.priority,
                            durable_name: (!s.durable_name.is_empty()).then_some(s.durable_name),
                            no_local: s.no_local,
                        },
                        receipt,
                    },
                    Err(e) => Request::refuse(Refusal::invalid(e.to_string()), receipt),
                }
            }
            Some(Body::Ack(a)) => Request::Ack {
                subscription: a.subscription,
                up_to: a.up_to,
                tags: a.tags,
                transaction: transaction(a.transaction),
                receipt: receipt(a.receipt),
            },
            Some(Body::Nack(n)) => Request::Nack {
                subscription: n.subscription,
                tags: n.tags,
                transaction: None,
                receipt: receipt(n.receipt),
            },
            Some(Body::Transaction(t)) => {
                let receipt = receipt(t.receipt);
                let Some(transaction) = transaction(t.transaction) else {
                    return Inbound::Request(Request::refuse(
                        Refusal::invalid("transaction 0 is not a transaction; number them from 1"),
                        receipt,
                    ));
                };
                match proto::TransactionAction::try_from(t.action) {
                    Ok(proto::TransactionAction::Begin) => Request::Begin {
                        transaction,
                        receipt,
                    },
                    Ok(proto::TransactionAction::Commit) => Request::Commit {
                        transaction,
                        receipt,
                    },
                    Ok(proto::TransactionAction::Rollback) => Request::Abort {
                        transaction,
                        receipt,
                    },
                    Err(_) => Request::refuse(
                        Refusal::Invalid {
                            code: ErrorCode::BadFrame,
                            message: format!("unknown transaction action {}", t.action),
                        },
                        receipt,
                    ),
                }
            }
            Some(Body::Unsubscribe(u)) => Request::Unsubscribe {
                subscription: u.subscription,
                remove_durable: u.remove_durable,
                receipt: receipt(u.receipt),
            },
            // A heartbeat with a receipt is a ping: answered after every earlier frame; one
            // without is only a sign of life.
            Some(Body::Heartbeat(h)) => match receipt(h.receipt) {
                Some(receipt) => Request::Ping { receipt },
                None => return Inbound::Alive,
            },
            Some(Body::Disconnect(d)) => Request::Disconnect {
                receipt: receipt(d.receipt),
            },
            other => {
                let name = wire::frame_name(&Frame { body: other });
                Request::refuse(
                    Refusal::BadFrame {
                        code: ErrorCode::BadFrame,
                        message: format!("{name} is not a frame a client may send here"),
                        fatal: true,
                    },
                    None,
                )
            }
        };
        Inbound::Request(request)
    }
}

/// A frame's transaction field: 0 is none.
fn transaction(number: u64) -> Option<TxName> {
    (number != 0).then_some(TxName::Numbered(number))
}

impl Codec for Native {
    type Receipt = u64;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Inbound<u64>, (ErrorCode, String)> {
        // Most frames a producer sends are Sends whose body the broker copies: read in place,
        // no `Frame` is built and no string of theirs allocated that the message does not keep.
        if let Some(send) = wire::read_send(buf, self.max_frame_size, COPY_BODY_BELOW) {
            let len = send.frame_len;
            let request = self.send_request(&send);
            buf.advance(len);
            return Ok(Inbound::Request(request));
        }
        match wire::decode(buf, self.max_frame_size) {
            Ok(wire::Decoded::Frame(f)) => Ok(self.inbound(f)),
            Ok(wire::Decoded::NeedMore(_)) => Ok(Inbound::NeedMore),
            Err(e) => Err((decode_error_code(&e), e.to_string())),
        }
    }

    fn encode_delivery(&mut self, d: &Delivery, out: &mut BytesMut) -> bool {
        wire::encode_deliver(
            d.subscription,
            d.tag,
            d.redelivery_count,
            &MessageRef::from(&*d.message),
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
    ) -> bool {
        wire::encode(
            &error_frame(code, message, receipt.copied().unwrap_or(0), fatal),
            out,
        );
        fatal
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
}
