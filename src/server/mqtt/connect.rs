//! The CONNECT handshake and the life of one MQTT connection: the version the first bytes
//! name, the CONNECT (login, will topic, client id — a taken-over id of the same user, another
//! user's refused), the persistent session resumed or discarded, the CONNACK, then the
//! connection until it ends and the session's expiry starts. Refusals are CONNACKs of the
//! client's own version. Owns: the handshake and `read_client_bytes`, the socketless entry of
//! the fuzz target. Must not touch: what packets mean once connected (the codec).

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use rmqtt_codec::error::DecodeError;
use rmqtt_codec::types::Publish;
use rmqtt_codec::version::{ProtocolVersion, VersionCodec};
use rmqtt_codec::{v3, v5};
use tokio::time::{sleep_until, Instant as TokioInstant};
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

use crate::broker::{BrokerError, Session};
use crate::security::Principal;
use crate::transport::{IoEvent, Permit, Pump, Stream};
use crate::wire::proto::ErrorCode;

use super::super::conn::ConnCtx;
use super::super::conn::Connection;
use super::super::mqtt_session::KeptInflight;
use super::persistent::{SessionEnd, SessionShares, NEVER_EXPIRES, SESSION_PREFIX};
use super::topic::topic_to_destination;
use super::will::{DelayedWills, WillSlot};
use super::wire::{decode_error, reason, Packet, Wire};
use super::Mqtt;

/// A client is dropped after one and a half of its keep-alive intervals of silence (MQTT
/// 3.1.2.10).
pub(super) const KEEP_ALIVE_GRACE: f64 = 1.5;

/// How the handshake ended when it did not connect.
pub(super) async fn close(pump: &mut Pump) -> std::io::Result<Option<Handshake>> {
    let _ = tokio::time::timeout(Duration::from_secs(2), pump.flush_and_close()).await;
    Ok(None)
}

/// A refused CONNECT: the CONNACK return code (MQTT 3) or reason code (MQTT 5).
#[derive(Debug, Clone, Copy)]
pub(super) enum ConnRefusal {
    Version,
    Identifier,
    Credentials,
    /// Logged in, but not allowed this (another user's client id).
    NotAuthorized,
    Unavailable,
    /// The listener already serves `max_connections` clients: MQTT 3's "server unavailable";
    /// MQTT 5's 0x97 "quota exceeded" (an administrative limit was reached, MQTT 5 §3.2.2.2,
    /// as the other protocols' `ResourceExhausted`) rather than 0x89 "server busy", which
    /// says the server is loaded, not that a configured limit is full.
    OverLimit,
    Malformed(u8),
}

pub(super) fn write_connack_refusal(wire: &mut Wire, refusal: ConnRefusal, out: &mut BytesMut) {
    match wire {
        Wire::V3(c) => {
            let return_code = match refusal {
                ConnRefusal::Version => v3::ConnectAckReason::UnacceptableProtocolVersion,
                ConnRefusal::Identifier => v3::ConnectAckReason::IdentifierRejected,
                ConnRefusal::Credentials => v3::ConnectAckReason::BadUserNameOrPassword,
                ConnRefusal::NotAuthorized => v3::ConnectAckReason::NotAuthorized,
                ConnRefusal::Unavailable | ConnRefusal::OverLimit => {
                    v3::ConnectAckReason::ServiceUnavailable
                }
                // MQTT 3 answers a malformed CONNECT by closing.
                ConnRefusal::Malformed(_) => return,
            };
            let _ = c.encode(
                v3::Packet::ConnectAck(v3::ConnectAck {
                    return_code,
                    session_present: false,
                }),
                out,
            );
        }
        Wire::V5(c) => {
            let reason_code = match refusal {
                ConnRefusal::Version => v5::ConnectAckReason::UnsupportedProtocolVersion,
                ConnRefusal::Identifier => v5::ConnectAckReason::ClientIdentifierNotValid,
                ConnRefusal::Credentials => v5::ConnectAckReason::BadUserNameOrPassword,
                ConnRefusal::NotAuthorized => v5::ConnectAckReason::NotAuthorized,
                ConnRefusal::Unavailable => v5::ConnectAckReason::ServerBusy,
                ConnRefusal::OverLimit => v5::ConnectAckReason::QuotaExceeded,
                ConnRefusal::Malformed(r) => v5::ConnectAckReason::try_from(r)
                    .unwrap_or(v5::ConnectAckReason::MalformedPacket),
            };
            let _ = c.encode(
                v5::Packet::ConnectAck(Box::new(v5::ConnectAck {
                    reason_code,
                    ..v5::ConnectAck::default()
                })),
                out,
            );
        }
    }
}

/// Waits for the first bytes to show the protocol version; `None` when the client closed,
/// said nothing in time or sent something that is not an MQTT CONNECT (closed then).
pub(super) async fn detect_version(
    pump: &mut Pump,
    ctx: &ConnCtx,
    shutdown: &CancellationToken,
) -> std::io::Result<Option<Wire>> {
    let deadline = TokioInstant::now() + ctx.settings.connect_timeout;
    // Before the login, a packet (the CONNECT) may be at most what any protocol may send
    // before logging in; the listener's own limit applies once logged in.
    let max = u32::try_from(super::super::conn::handshake_frame_limit(ctx)).unwrap_or(u32::MAX);
    loop {
        match VersionCodec.decode(&mut pump.rbuf) {
            Ok(Some(ProtocolVersion::MQTT3)) => return Ok(Some(Wire::V3(v3::Codec::new(max)))),
            Ok(Some(ProtocolVersion::MQTT5)) => return Ok(Some(Wire::V5(v5::Codec::new(max, 0)))),
            Ok(None) => {}
            Err(DecodeError::InvalidProtocol) if unsupported_level(&pump.rbuf) => {
                // A known protocol name at a level we do not speak: MQTT 3.1.2.2 says to
                // answer with return code 1 and close.
                ctx.metrics.bad_frame();
                let mut wire = Wire::V3(v3::Codec::new(max));
                write_connack_refusal(&mut wire, ConnRefusal::Version, &mut pump.wbuf);
                return close(pump).await.map(|_| None);
            }
            Err(e) => {
                ctx.metrics.bad_frame();
                tracing::debug!(error = %e, "not an MQTT CONNECT");
                return close(pump).await.map(|_| None);
            }
        }
        tokio::select! {
            ev = pump.next_event(true, 0, |_| std::task::Poll::Pending) => match ev? {
                IoEvent::Closed => return Ok(None),
                _ => continue,
            },
            _ = sleep_until(deadline) => {
                ctx.metrics.refused("connect_timeout");
                return close(pump).await.map(|_| None);
            }
            _ = shutdown.cancelled() => return close(pump).await.map(|_| None),
        }
    }
}

/// True when the buffer starts with a CONNECT naming MQTT or MQIsdp at another level.
pub(super) fn unsupported_level(buf: &[u8]) -> bool {
    let Some(start) = (1..5).find(|i| buf.get(*i).is_some_and(|b| b & 0x80 == 0)) else {
        return false;
    };
    let rest = &buf[start + 1..];
    buf.first() == Some(&0x10)
        && (rest.starts_with(b"\x00\x04MQTT") || rest.starts_with(b"\x00\x06MQIsdp"))
}

/// Writes a refusal to a connection over the listener's limit and closes it: the CONNECT is
/// read first, so the refusal is a CONNACK of the client's own version.
pub(crate) async fn refuse_over_limit(stream: Stream, ctx: Arc<ConnCtx>) {
    let mut pump = Pump::new(stream);
    let never = CancellationToken::new();
    if let Ok(Some(mut wire)) = detect_version(&mut pump, &ctx, &never).await {
        write_connack_refusal(&mut wire, ConnRefusal::OverLimit, &mut pump.wbuf);
        let _ = close(&mut pump).await;
    }
}

/// Serves one MQTT session over any byte stream (TCP, TLS — or a WebSocket adapted to a
/// stream): the handshake, then the connection until it ends.
pub(crate) async fn serve(
    stream: Stream,
    peer: SocketAddr,
    ctx: Arc<ConnCtx>,
    shutdown: CancellationToken,
    _permit: Permit,
) {
    ctx.metrics.connection_opened();
    let mut pump = Pump::new(stream);
    // Boxed: its state is freed once it is done, not kept for the connection's life. The
    // connection is built in this statement, so the handshake's result (a second copy of the
    // codec and session, being moved out of) is not kept beside it while it runs; what the
    // session's end needs is boxed, and only kept when the session outlives the connection.
    let mut connection = match Box::pin(handshake(&mut pump, peer, &ctx, &shutdown)).await {
        Ok(Some((codec, session, principal, keep_alive, session_end))) => {
            let session_id = session.id();
            // Counted in the group's load; MQTT takes no cluster pushes.
            let registration =
                ctx.cluster
                    .register(session.id(), &crate::cluster::ClientHello::default(), None);
            let silence = keep_alive.map(|k| k.mul_f64(KEEP_ALIVE_GRACE));
            let ending = session_end.map(|end| Box::new((end, session_id, principal.clone())));
            let connection =
                Connection::new(codec, pump, session, ctx.clone(), principal, None, silence)
                    .with_registration(registration);
            Some((connection, ending))
        }
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "mqtt connection failed before connecting");
            None
        }
    };
    if let Some((connection, ending)) = connection.as_mut() {
        let reason = connection.run(&shutdown).await;
        tracing::debug!(%peer, reason, "mqtt connection closed");
        if let Some(ending) = ending.take() {
            let (end, session_id, principal) = *ending;
            end.schedule(&ctx, session_id, principal, &shutdown);
        }
    }
    drop(connection);
    ctx.metrics.connection_closed();
}

pub(super) type Handshake = (
    Mqtt,
    Session,
    Principal,
    Option<Duration>,
    Option<SessionEnd>,
);

/// What a CONNECT says, whatever the version.
pub(super) struct Connect {
    clean: bool,
    /// How long the session outlives the connection (MQTT 3: forever unless clean).
    session_expiry: u32,
    keep_alive: u16,
    client_id: String,
    username: Option<String>,
    password: Option<Bytes>,
    /// MQTT 5: how many QoS 1/2 deliveries the client takes at once.
    receive_max: Option<u16>,
    /// MQTT 5: the largest packet the client takes.
    max_packet_size: Option<u32>,
    /// The will, as the PUBLISH it becomes.
    will: Option<Publish>,
    /// MQTT 5: how long after the connection ends the will waits (seconds).
    will_delay: u32,
}

/// The CONNECT of an MQTT 3 client; `None` for any other packet.
pub(super) fn v3_connect(p: v3::Packet) -> Option<Connect> {
    let v3::Packet::Connect(c) = p else {
        return None;
    };
    Some(Connect {
        clean: c.clean_session,
        session_expiry: if c.clean_session { 0 } else { NEVER_EXPIRES },
        keep_alive: c.keep_alive,
        client_id: c.client_id.to_string(),
        username: c.username.map(|u| u.to_string()),
        password: c.password,
        receive_max: None,
        max_packet_size: None,
        will_delay: 0,
        will: c.last_will.map(|w| Publish {
            dup: false,
            retain: w.retain,
            qos: w.qos,
            topic: w.topic,
            packet_id: None,
            payload: w.message,
            properties: None,
        }),
    })
}

/// The CONNECT of an MQTT 5 client; `None` for any other packet.
pub(super) fn v5_connect(p: v5::Packet) -> Option<Connect> {
    let v5::Packet::Connect(c) = p else {
        return None;
    };
    Some(Connect {
        clean: c.clean_start,
        session_expiry: c.session_expiry_interval_secs,
        keep_alive: c.keep_alive,
        client_id: c.client_id.to_string(),
        username: c.username.map(|u| u.to_string()),
        password: c.password,
        receive_max: c.receive_max.map(NonZeroU16::get),
        max_packet_size: c.max_packet_size.map(|m| m.get()),
        will_delay: c
            .last_will
            .as_ref()
            .and_then(|w| w.will_delay_interval_sec)
            .unwrap_or(0),
        will: c.last_will.map(|w| Publish {
            dup: false,
            retain: w.retain,
            qos: w.qos,
            topic: w.topic,
            packet_id: None,
            payload: w.message,
            properties: Some(v5::PublishProperties {
                correlation_data: w.correlation_data,
                message_expiry_interval: w.message_expiry_interval,
                content_type: w.content_type,
                user_properties: w.user_properties,
                is_utf8_payload: w.is_utf8_payload.unwrap_or(false),
                response_topic: w.response_topic,
                ..v5::PublishProperties::default()
            }),
        }),
    })
}

/// What a connection makes of a client's bytes, with no socket (the entry of the MQTT fuzz
/// target, `fuzzing::mqtt`): the version the first bytes name, the CONNECT at
/// `handshake_max`, then packets at `max`, each through the parsers the connection uses.
/// `Ok(packets read)` when the bytes run out; `Err` with the MQTT 5 reason code and the
/// broker's error code when the connection would be closed for what it read.
pub(crate) fn read_client_bytes(
    buf: &mut BytesMut,
    handshake_max: u32,
    max: u32,
) -> Result<usize, (u8, ErrorCode)> {
    let refused = |e: &DecodeError| decode_error(e);
    let mut wire = match VersionCodec.decode(buf) {
        Ok(Some(ProtocolVersion::MQTT3)) => Wire::V3(v3::Codec::new(handshake_max)),
        Ok(Some(ProtocolVersion::MQTT5)) => Wire::V5(v5::Codec::new(handshake_max, 0)),
        Ok(None) => return Ok(0),
        Err(DecodeError::InvalidProtocol) if unsupported_level(buf) => {
            return Err((reason::PROTOCOL_ERROR, ErrorCode::BadFrame))
        }
        Err(e) => return Err(refused(&e)),
    };
    let connect = match &mut wire {
        Wire::V3(c) => c.decode(buf).map(|p| p.map(|(p, _)| v3_connect(p))),
        Wire::V5(c) => c.decode(buf).map(|p| p.map(|(p, _)| v5_connect(p))),
    };
    match connect {
        Ok(Some(Some(_))) => {}
        Ok(Some(None)) => return Err((reason::PROTOCOL_ERROR, ErrorCode::BadFrame)),
        Ok(None) => return Ok(0),
        Err(e) => return Err(refused(&e)),
    }
    match &mut wire {
        Wire::V3(c) => c.set_max_size(max),
        Wire::V5(c) => c.set_max_inbound_size(max),
    }
    let mut read = 1;
    loop {
        match wire.decode(buf) {
            Ok(Some(Packet::Unexpected(_))) => {
                return Err((reason::PROTOCOL_ERROR, ErrorCode::BadFrame))
            }
            Ok(Some(_)) => read += 1,
            Ok(None) => return Ok(read),
            Err(e) => return Err(refused(&e)),
        }
    }
}

pub(super) async fn handshake(
    pump: &mut Pump,
    peer: SocketAddr,
    ctx: &Arc<ConnCtx>,
    shutdown: &CancellationToken,
) -> std::io::Result<Option<Handshake>> {
    let Some(mut wire) = detect_version(pump, ctx, shutdown).await? else {
        return Ok(None);
    };
    let deadline = TokioInstant::now() + ctx.settings.connect_timeout;
    let connect = loop {
        let decoded = match &mut wire {
            Wire::V3(c) => c
                .decode(&mut pump.rbuf)
                .map(|p| p.map(|(p, _)| v3_connect(p))),
            Wire::V5(c) => c
                .decode(&mut pump.rbuf)
                .map(|p| p.map(|(p, _)| v5_connect(p))),
        };
        match decoded {
            Ok(Some(Some(connect))) => break connect,
            Ok(Some(None)) => {
                // Cannot happen: the version codec saw a CONNECT header.
                ctx.metrics.bad_frame();
                return close(pump).await;
            }
            Ok(None) => {}
            Err(e) => {
                ctx.metrics.bad_frame();
                tracing::debug!(error = %e, "malformed MQTT CONNECT");
                let (reason, _) = decode_error(&e);
                let refusal = match e {
                    DecodeError::UnsupportedProtocolLevel => ConnRefusal::Version,
                    DecodeError::InvalidClientId => ConnRefusal::Identifier,
                    _ => ConnRefusal::Malformed(reason),
                };
                write_connack_refusal(&mut wire, refusal, &mut pump.wbuf);
                return close(pump).await;
            }
        }
        tokio::select! {
            ev = pump.next_event(true, 0, |_| std::task::Poll::Pending) => match ev? {
                IoEvent::Closed => return Ok(None),
                _ => continue,
            },
            _ = sleep_until(deadline) => {
                ctx.metrics.refused("connect_timeout");
                return close(pump).await;
            }
            _ = shutdown.cancelled() => {
                write_connack_refusal(&mut wire, ConnRefusal::Unavailable, &mut pump.wbuf);
                return close(pump).await;
            }
        }
    };
    let v5 = matches!(wire, Wire::V5(_));
    // A password that is not UTF-8 cannot match any user's.
    let password = connect
        .password
        .as_ref()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let principal = match ctx.login(peer, connect.username.clone(), password).await {
        Ok(p) => p,
        Err(message) => {
            tracing::debug!(user = ?connect.username, message, "MQTT login refused");
            write_connack_refusal(&mut wire, ConnRefusal::Credentials, &mut pump.wbuf);
            return close(pump).await;
        }
    };
    if let Some(Err(e)) = connect
        .will
        .as_ref()
        .map(|w| topic_to_destination(&w.topic))
    {
        ctx.metrics.bad_frame();
        tracing::debug!(error = %e, "MQTT will refused");
        let refusal = ConnRefusal::Malformed(reason::TOPIC_NAME_INVALID);
        write_connack_refusal(&mut wire, refusal, &mut pump.wbuf);
        return close(pump).await;
    }
    // MQTT 3.1.1 assigns an id to a clean client that gave none, and refuses an unclean one.
    let assigned = connect.client_id.is_empty();
    if assigned && !connect.clean && !v5 {
        write_connack_refusal(&mut wire, ConnRefusal::Identifier, &mut pump.wbuf);
        return close(pump).await;
    }
    let client_id = (!assigned).then(|| connect.client_id.clone());
    // A new connection with a client id in use takes it over (MQTT 3.1.4-3), if it is the
    // same user's: another user's client id is refused as not authorized.
    let session =
        match super::super::native::open_session(ctx, client_id.clone(), true, &principal).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "MQTT session refused");
                let refusal = match e {
                    BrokerError::ClientIdInUse(_) => ConnRefusal::Identifier,
                    BrokerError::ClientIdOwned(_) => ConnRefusal::NotAuthorized,
                    _ => ConnRefusal::Unavailable,
                };
                write_connack_refusal(&mut wire, refusal, &mut pump.wbuf);
                return close(pump).await;
            }
        };
    // A session is kept for a client with an id of its own: a clean start discards what an
    // earlier one kept, otherwise the client resumes it. The session lives in durable
    // subscriptions, journaled and replicated as any, so it survives restarts and follows the
    // client to whichever member of the group is master.
    // Its shared subscriptions are kept by name beside them.
    let (kept, shares) = match &client_id {
        Some(cid) if connect.clean => {
            ctx.broker.end_session(cid, SESSION_PREFIX);
            (Vec::new(), Vec::new())
        }
        Some(cid) => (
            ctx.broker.durables_of(cid, SESSION_PREFIX),
            ctx.broker.shares_of(cid),
        ),
        None => (Vec::new(), Vec::new()),
    };
    let session_present = !kept.is_empty() || !shares.is_empty();
    // A will waiting for its delay is cancelled by the client's return to its session, or
    // published now if the client starts clean (its old session ends).
    if let Some(cid) = &client_id {
        DelayedWills::reconnected(ctx, cid, connect.clean);
    }
    let mut inflight = match &client_id {
        Some(cid) if session_present => ctx.mqtt_sessions.take(cid),
        Some(cid) => {
            ctx.mqtt_sessions.forget(cid);
            KeptInflight::default()
        }
        None => KeptInflight::default(),
    };
    // Released QoS 2 deliveries are journaled with the session: after a restart or a
    // failover only the journal has them.
    if let Some(cid) = client_id.as_ref().filter(|_| session_present) {
        for id in ctx.broker.released_of(cid) {
            if !inflight.released.contains(&id) {
                inflight.released.push(id);
            }
        }
    }
    let max = u32::try_from(ctx.settings.max_frame_size).unwrap_or(u32::MAX);
    match &mut wire {
        Wire::V3(c) => {
            c.set_max_size(max);
            let _ = c.encode(
                v3::Packet::ConnectAck(v3::ConnectAck {
                    return_code: v3::ConnectAckReason::ConnectionAccepted,
                    session_present,
                }),
                &mut pump.wbuf,
            );
        }
        Wire::V5(c) => {
            c.set_max_inbound_size(max);
            if let Some(max) = connect.max_packet_size {
                c.set_max_outbound_size(max);
            }
            let _ = c.encode(
                v5::Packet::ConnectAck(Box::new(v5::ConnectAck {
                    session_present,
                    max_packet_size: u32::try_from(ctx.settings.max_frame_size).ok(),
                    assigned_client_id: assigned
                        .then(|| ByteString::from(session.connection_id().to_string())),
                    topic_alias_max: 0,
                    retain_available: true,
                    wildcard_subscription_available: true,
                    subscription_identifiers_available: false,
                    shared_subscription_available: true,
                    ..v5::ConnectAck::default()
                })),
                &mut pump.wbuf,
            );
        }
    }
    let keep_alive =
        (connect.keep_alive > 0).then(|| Duration::from_secs(u64::from(connect.keep_alive)));
    let prefetch = connect.receive_max.map_or(0, u32::from);
    let mut codec = Mqtt::new(wire, session.connection_id(), prefetch);
    if let Some(will) = connect.will {
        codec.set_will(will);
    }
    // A session that may be kept or was resumed has its expiry journaled; a clean one that
    // ends with its connection keeps nothing to expire.
    let kept_session = !connect.clean || connect.session_expiry > 0;
    let session_end = client_id.filter(|_| kept_session).map(|client_id| {
        let expiry = Arc::new(AtomicU32::new(connect.session_expiry));
        codec.persistent = connect.session_expiry > 0;
        codec.expiry = Some(expiry.clone());
        if codec.persistent {
            codec.keeper = Some((ctx.mqtt_sessions.clone(), client_id.clone()));
            codec.shares = Some(SessionShares {
                broker: ctx.broker.clone(),
                client_id: client_id.clone(),
            });
        }
        ctx.broker
            .session_taken(&client_id, connect.session_expiry, session.id());
        // An MQTT 5 will with a delay waits for it when the session outlives the connection
        // (a session that ends with it publishes its will at once, MQTT 5 §3.1.3.2.2).
        let will = (connect.will_delay > 0 && connect.session_expiry > 0 && codec.will.is_some())
            .then(|| {
                let slot = WillSlot::default();
                codec.delayed_will = Some(slot.clone());
                (slot, connect.will_delay)
            });
        SessionEnd {
            client_id,
            expiry,
            will,
        }
    });
    codec.resume_inflight(inflight);
    codec.resume(kept, shares);
    Ok(Some((codec, session, principal, keep_alive, session_end)))
}
