//! STOMP 1.0–1.2 on a client connection: CONNECT/STOMP with version, heart-beat and login
//! negotiation, then its codec — frames → [`Request`]s, deliveries and replies → frames — with
//! ActiveMQ's destination names.
//!
//! Every error is an ERROR frame with a `message` header followed by a close (STOMP has no
//! non-fatal errors); an open transaction dies with its connection. Temporary destinations a
//! client names `/temp-queue/x` are its own (`temp-queue://<connection>.x`); another
//! connection's appear to it as `/remote-temp-queue/<connection>.x`, as in ActiveMQ.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::time::{sleep_until, Instant as TokioInstant};
use tokio_util::sync::CancellationToken;

use crate::broker::{
    Delivery, Destination, DestinationPattern, Draft, Kind, Message, Session, SubscribeSpec,
};
use crate::security::Principal;
use crate::stomp::{self, Command, Decoder, Frame, Limits, Version};
use crate::transport::{IoEvent, Permit, Pump, Stream};
use crate::wire::proto::ErrorCode;

use super::conn::{Codec, Connection, Inbound};
use super::request::{Refusal, Request, SendRequest, TxName};
use super::ConnCtx;

/// A STOMP client is dropped after this many of its heart-beat intervals of silence.
const HEARTBEAT_GRACE: u32 = 2;

/// Headers with a meaning of their own; every other header travels with the message.
const RESERVED: &[&str] = &[
    "destination",
    "content-length",
    "content-type",
    "receipt",
    "transaction",
    "persistent",
    "priority",
    "expires",
    "reply-to",
    "correlation-id",
    "message-id",
    "subscription",
    "ack",
    "timestamp",
    "redelivered",
];

fn limits(ctx: &ConnCtx) -> Limits {
    Limits {
        max_frame_size: ctx.settings.max_frame_size,
        max_headers: ctx.stomp.max_headers,
        max_header_length: ctx.stomp.max_header_length,
    }
}

fn error(message: &str) -> Frame {
    Frame::new(Command::Error)
        .with_header("message", message)
        .with_header("content-type", "text/plain")
        .with_body(Bytes::copy_from_slice(message.as_bytes()))
}

async fn refuse<T>(pump: &mut Pump, message: &str) -> std::io::Result<Option<T>> {
    stomp::encode(&error(message), Version::V1_0, &mut pump.wbuf);
    let _ = tokio::time::timeout(Duration::from_secs(2), pump.flush_and_close()).await;
    Ok(None)
}

/// Writes a refusal to a connection over the listener's limit and closes it.
pub(crate) async fn refuse_over_limit(stream: Stream, max: usize) {
    let mut pump = Pump::new(stream);
    let _: std::io::Result<Option<()>> = refuse(
        &mut pump,
        &format!("this listener already serves its max_connections ({max}); try another broker"),
    )
    .await;
}

pub(crate) async fn serve(
    stream: Stream,
    peer: SocketAddr,
    ctx: Arc<ConnCtx>,
    shutdown: CancellationToken,
    _permit: Permit,
) {
    ctx.metrics.connection_opened();
    let mut pump = Pump::new(stream);
    match handshake(&mut pump, peer, &ctx, &shutdown).await {
        Ok(Some((proto, session, principal, send_every, expect_every))) => {
            // Counted in the group's load; STOMP takes no pushes.
            let registration =
                ctx.cluster
                    .register(session.id(), &crate::cluster::ClientHello::default(), None);
            let mut connection = Connection::new(
                proto,
                pump,
                session,
                ctx.clone(),
                principal,
                send_every,
                expect_every.map(|e| e * HEARTBEAT_GRACE),
            )
            .with_registration(registration);
            let reason = connection.run(&shutdown).await;
            tracing::debug!(%peer, reason, "stomp connection closed");
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(%peer, error = %e, "stomp connection failed before connecting"),
    }
    ctx.metrics.connection_closed();
}

type Handshake = (
    Stomp,
    Session,
    Principal,
    Option<Duration>,
    Option<Duration>,
);

async fn handshake(
    pump: &mut Pump,
    peer: SocketAddr,
    ctx: &ConnCtx,
    shutdown: &CancellationToken,
) -> std::io::Result<Option<Handshake>> {
    let deadline = TokioInstant::now() + ctx.settings.connect_timeout;
    // Before the login, a frame is a CONNECT: small (a stranger holds little memory).
    let mut decoder = Decoder::new(
        Version::V1_0,
        Limits {
            max_frame_size: super::handshake_frame_limit(ctx),
            ..limits(ctx)
        },
    );
    let connect = loop {
        match decoder.decode(&mut pump.rbuf) {
            Ok(stomp::Decoded::Frame(f))
                if matches!(f.command, Command::Connect | Command::Stomp) =>
            {
                break f
            }
            Ok(stomp::Decoded::Frame(f)) => {
                ctx.metrics.bad_frame();
                return refuse(
                    pump,
                    &format!(
                        "the first frame must be CONNECT or STOMP, got {}",
                        f.command.as_str()
                    ),
                )
                .await;
            }
            Ok(stomp::Decoded::Heartbeat) => continue,
            Ok(stomp::Decoded::NeedMore) => {}
            Err(e) => {
                ctx.metrics.bad_frame();
                return refuse(pump, &e.to_string()).await;
            }
        }
        tokio::select! {
            ev = pump.next_event(true, 0, |_| std::task::Poll::Pending) => match ev? {
                IoEvent::Closed => return Ok(None),
                _ => continue,
            },
            _ = sleep_until(deadline) => {
                ctx.metrics.refused("connect_timeout");
                return refuse(pump, &format!("no CONNECT frame within the connect timeout ({:?})", ctx.settings.connect_timeout)).await;
            }
            _ = shutdown.cancelled() => return refuse(pump, "the broker is shutting down").await,
        }
    };
    let Some(version) = stomp::negotiate(connect.header("accept-version")) else {
        return refuse(
            pump,
            &format!(
                "no common STOMP version: the client accepts {:?}, this broker speaks 1.0, 1.1 and 1.2",
                connect.header("accept-version").unwrap_or("")
            ),
        )
        .await;
    };
    let client_beats = match connect.header("heart-beat").map(stomp::parse_heartbeat) {
        Some(Ok(b)) => b,
        Some(Err(e)) => return refuse(pump, &e.to_string()).await,
        None => (0, 0),
    };
    let server_ms = ctx.settings.heartbeat.as_millis() as u64;
    let (send_every, expect_every) =
        stomp::negotiate_heartbeat(client_beats, (server_ms, server_ms));
    let principal = match ctx
        .login(
            peer,
            connect.header("login").map(String::from),
            connect.header("passcode").map(String::from),
        )
        .await
    {
        Ok(p) => p,
        Err(message) => return refuse(pump, &message).await,
    };
    let client_id = connect.header("client-id").map(String::from);
    let session = match ctx
        .broker
        .open_session_as(client_id, principal.user.clone())
    {
        Ok(s) => s,
        Err(e) => {
            if matches!(e, crate::broker::BrokerError::ClientIdOwned(_)) {
                ctx.metrics.refused("claimed_by_another_user");
                tracing::warn!(user = ?principal.user, error = %e, "connection refused");
            }
            return refuse(pump, &e.to_string()).await;
        }
    };
    let connected = Frame::new(Command::Connected)
        .with_header("version", version.as_str())
        .with_header("heart-beat", format!("{send_every},{expect_every}"))
        .with_header("server", format!("meshmq/{}", env!("CARGO_PKG_VERSION")))
        .with_header("session", session.connection_id());
    stomp::encode(&connected, version, &mut pump.wbuf);
    // Logged in: frames up to max_frame_size from now on.
    let decoder = Decoder::new(version, limits(ctx));
    let proto = Stomp::new(decoder, session.connection_id());
    let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
    Ok(Some((
        proto,
        session,
        principal,
        ms(send_every),
        ms(expect_every),
    )))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckMode {
    Auto,
    Client,
    Individual,
}

#[derive(Debug)]
struct Sub {
    ack: AckMode,
    durable: Option<String>,
    /// Its `subscription:<id>` header line, escaped once for every MESSAGE it gets.
    line: Box<[u8]>,
}

impl Sub {
    fn new(id: &str, ack: AckMode, durable: Option<String>, version: Version) -> Sub {
        let mut line = BytesMut::new();
        stomp::put_message_header(version, "subscription", id.as_bytes(), &mut line);
        Sub {
            ack,
            durable,
            line: Vec::from(line).into_boxed_slice(),
        }
    }
}

/// The key under which a STOMP codec of `version` shares a message's encoded headers
/// ([`Message::encoded_once`]): the headers are escaped differently per version.
fn shared_key(version: Version) -> u32 {
    const STOMP: u32 = 0x5354_0000;
    STOMP | version as u32
}

/// True when the message carries its producer's identity (its `message-id` is then the same
/// for every delivery).
fn has_producer_id(m: &Message) -> bool {
    !m.producer_id.is_empty() && m.sequence != 0
}

/// True when neither the message's destination nor its reply-to is a temporary destination:
/// every connection then names them alike.
fn names_no_temporary(m: &Message) -> bool {
    let temp = m.destination.as_ref().is_some_and(|d| d.kind().is_temp())
        || (!m.reply_to.is_empty()
            && Destination::parse(&m.reply_to).is_ok_and(|d| d.kind().is_temp()));
    !temp
}

/// Writes a MESSAGE's headers without allocating once warm: a scratch buffer for ids, and the
/// last destination's header line (a consumer mostly reads one destination).
#[derive(Debug, Default)]
struct HeaderWriter {
    scratch: BytesMut,
    last_destination: Option<(Destination, Box<[u8]>)>,
}

impl HeaderWriter {
    /// `prefix` `a` `:` `b` into the scratch buffer.
    fn id_pair(&mut self, prefix: &str, a: u64, b: u64) {
        self.scratch.clear();
        self.scratch.put_slice(prefix.as_bytes());
        stomp::put_decimal(a, &mut self.scratch);
        self.scratch.put_u8(b':');
        stomp::put_decimal(b, &mut self.scratch);
    }

    /// The headers of the message itself (what is the same for every subscription), the
    /// `content-length` and the blank line before the body.
    fn message_headers(
        &mut self,
        version: Version,
        connection_id: &str,
        m: &Message,
        out: &mut BytesMut,
    ) {
        if has_producer_id(m) {
            self.scratch.clear();
            self.scratch.put_slice(b"ID:");
            match std::str::from_utf8(&m.producer_id) {
                Ok(id) => self.scratch.put_slice(id.as_bytes()),
                Err(_) => self
                    .scratch
                    .put_slice(String::from_utf8_lossy(&m.producer_id).as_bytes()),
            }
            self.scratch.put_u8(b':');
            stomp::put_decimal(m.sequence, &mut self.scratch);
            stomp::put_message_header(version, "message-id", &self.scratch, out);
        }
        match &m.destination {
            Some(dest) => {
                let fresh = self
                    .last_destination
                    .as_ref()
                    .is_none_or(|(d, _)| d != dest);
                if fresh {
                    let mut line = BytesMut::new();
                    let name = stomp_name(connection_id, dest);
                    stomp::put_message_header(version, "destination", name.as_bytes(), &mut line);
                    self.last_destination =
                        Some((dest.clone(), Vec::from(line).into_boxed_slice()));
                }
                if let Some((_, line)) = &self.last_destination {
                    out.put_slice(line);
                }
            }
            None => out.put_slice(b"destination:\n"),
        }
        if !m.content_type.is_empty() {
            stomp::put_message_header(version, "content-type", m.content_type.as_bytes(), out);
        }
        out.put_slice(if m.persistent {
            b"persistent:true\n"
        } else {
            b"persistent:false\n"
        });
        out.put_slice(b"priority:");
        stomp::put_decimal(m.priority, out);
        out.put_slice(b"\ntimestamp:");
        stomp::put_decimal(m.timestamp_ms, out);
        out.put_u8(b'\n');
        if m.expires_at_ms != 0 {
            out.put_slice(b"expires:");
            stomp::put_decimal(m.expires_at_ms, out);
            out.put_u8(b'\n');
        }
        if !m.reply_to.is_empty() {
            let reply_to = reply_to_stomp(connection_id, &m.reply_to);
            stomp::put_message_header(version, "reply-to", reply_to.as_bytes(), out);
        }
        if !m.correlation_id.is_empty() {
            let id = m.correlation_id.as_bytes();
            stomp::put_message_header(version, "correlation-id", id, out);
        }
        for (k, v) in &m.headers {
            stomp::put_message_header(version, k, v.as_bytes(), out);
        }
        out.put_slice(b"content-length:");
        stomp::put_decimal(m.body.len() as u64, out);
        out.put_slice(b"\n\n");
    }
}

pub(crate) struct Stomp {
    decoder: Decoder,
    version: Version,
    connection_id: String,
    subs: HashMap<u64, Sub>,
    sub_ids: HashMap<String, u64>,
    next_sub: u64,
    /// STOMP 1.0/1.1 acknowledge by `message-id` (1.1 with `subscription`): which delivery
    /// that is, for deliveries of client-acknowledged subscriptions.
    by_message_id: HashMap<(String, u64), u64>,
    next_sequence: u64,
    producer_id: Bytes,
    writer: HeaderWriter,
    /// The last SEND's destination as the client wrote it, and parsed.
    last_send: Option<(Box<str>, Destination)>,
}

impl Stomp {
    /// The codec of a connection whose handshake settled `decoder`'s version.
    pub(crate) fn new(decoder: Decoder, connection_id: &str) -> Stomp {
        Stomp {
            version: decoder.version(),
            decoder,
            connection_id: connection_id.to_string(),
            subs: HashMap::new(),
            sub_ids: HashMap::new(),
            next_sub: 1,
            by_message_id: HashMap::new(),
            next_sequence: 1,
            producer_id: Bytes::from(connection_id.to_string()),
            writer: HeaderWriter::default(),
            last_send: None,
        }
    }
}

/// A meshmq destination → how connection `connection_id` sees it.
fn stomp_name(connection_id: &str, d: &Destination) -> String {
    if d.kind().is_temp() {
        let prefix = format!("{connection_id}.");
        let (own, remote) = match d.kind() {
            Kind::TempQueue => ("/temp-queue/", "/remote-temp-queue/"),
            _ => ("/temp-topic/", "/remote-temp-topic/"),
        };
        return match d.name().strip_prefix(&prefix) {
            Some(local) => format!("{own}{local}"),
            None => format!("{remote}{}", d.name()),
        };
    }
    stomp::to_stomp_destination(d)
}

fn reply_to_stomp(connection_id: &str, reply_to: &str) -> String {
    match Destination::parse(reply_to) {
        Ok(d) => stomp_name(connection_id, &d),
        Err(_) => reply_to.to_string(),
    }
}

fn parse_ack_id(id: &str) -> Option<(u64, u64)> {
    let (s, t) = id.split_once(':')?;
    Some((s.parse().ok()?, t.parse().ok()?))
}

fn message_id(m: &Message, sub: u64, tag: u64) -> String {
    if m.producer_id.is_empty() || m.sequence == 0 {
        format!("ID:{sub}:{tag}")
    } else {
        format!(
            "ID:{}:{}",
            String::from_utf8_lossy(&m.producer_id),
            m.sequence
        )
    }
}

impl Stomp {
    /// A destination as this connection names it → meshmq's form.
    fn destination(&self, given: &str) -> Result<Destination, String> {
        if let Some(rest) = given.strip_prefix("/remote-temp-queue/") {
            return Destination::new(Kind::TempQueue, rest).map_err(|e| e.to_string());
        }
        if let Some(rest) = given.strip_prefix("/remote-temp-topic/") {
            return Destination::new(Kind::TempTopic, rest).map_err(|e| e.to_string());
        }
        let d = stomp::from_stomp_destination(given).map_err(|e| e.to_string())?;
        if d.kind().is_temp() {
            return Destination::new(d.kind(), &format!("{}.{}", self.connection_id, d.name()))
                .map_err(|e| e.to_string());
        }
        Ok(d)
    }

    /// The message a SEND carries, as a draft for the broker's builder.
    /// Takes the frame's body and the headers that travel with the message (moved, not copied).
    fn draft(&mut self, f: &mut Frame) -> Result<Draft, String> {
        let priority = match f.header("priority") {
            Some(p) => p
                .trim()
                .parse::<u32>()
                .map_err(|_| format!("priority {p:?} is not a number from 0 to 9"))?,
            None => crate::broker::DEFAULT_PRIORITY as u32,
        };
        let expires_at_ms = match f.header("expires") {
            Some(e) => e.trim().parse::<u64>().map_err(|_| {
                format!("expires {e:?} is not a time in milliseconds since the epoch")
            })?,
            None => 0,
        };
        let reply_to = match f.header("reply-to") {
            Some(r) => self.destination(r)?.to_string(),
            None => String::new(),
        };
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let persistent = f
            .header("persistent")
            .is_some_and(|p| p.eq_ignore_ascii_case("true"));
        let correlation_id = f.header("correlation-id").unwrap_or("").to_string();
        let content_type = f.header("content-type").unwrap_or("").to_string();
        let mut headers = std::mem::take(&mut f.headers);
        headers.retain(|(k, _)| !RESERVED.contains(&k.as_str()));
        // The message may live long: it keeps no room for the headers that stayed behind.
        headers.shrink_to_fit();
        Ok(Draft {
            body: std::mem::take(&mut f.body),
            headers,
            persistent,
            priority,
            expires_at_ms,
            producer_id: self.producer_id.clone(),
            sequence,
            reply_to,
            correlation_id,
            content_type,
            // STOMP producers give no timestamp: the builder stamps it now.
            timestamp_ms: 0,
            ..Draft::default()
        })
    }

    /// The delivery an ACK or NACK names.
    fn delivery_named(&mut self, f: &Frame) -> Result<(u64, u64), String> {
        if self.version == Version::V1_2 {
            let id = f
                .header("id")
                .ok_or("ACK/NACK needs the id header (the ack header of the MESSAGE)")?;
            return parse_ack_id(id).ok_or_else(|| {
                format!("{id:?} is not the ack header of a MESSAGE of this connection")
            });
        }
        let mid = f
            .header("message-id")
            .ok_or("ACK/NACK needs the message-id header")?;
        let sub = match f.header("subscription") {
            Some(s) => *self
                .sub_ids
                .get(s)
                .ok_or_else(|| format!("no subscription {s:?} on this connection"))?,
            None if self.version == Version::V1_1 => {
                return Err("STOMP 1.1 ACK/NACK needs the subscription header".into())
            }
            None => {
                let hit = self
                    .by_message_id
                    .keys()
                    .find(|(m, _)| m == mid)
                    .map(|(_, s)| *s);
                hit.ok_or_else(|| format!("no unacknowledged message {mid:?} on this connection"))?
            }
        };
        let tag = self
            .by_message_id
            .get(&(mid.to_string(), sub))
            .copied()
            .ok_or_else(|| format!("no unacknowledged message {mid:?} on this subscription"))?;
        Ok((sub, tag))
    }

    fn forget_acked(&mut self, sub: u64, tag: u64, cumulative: bool) {
        self.by_message_id
            .retain(|(_, s), t| !(*s == sub && (*t == tag || (cumulative && *t < tag))));
    }

    fn on_ack(&mut self, f: &Frame, nack: bool, receipt: Option<String>) -> Request<String> {
        let (sub, tag) = match self.delivery_named(f) {
            Ok(x) => x,
            Err(e) => return Request::refuse(Refusal::invalid(e), receipt),
        };
        let Some(mode) = self.subs.get(&sub).map(|s| s.ack) else {
            let message = format!("no subscription {sub} on this connection");
            return Request::refuse(Refusal::invalid(message), receipt);
        };
        let transaction = f
            .header("transaction")
            .map(|t| TxName::Named(t.to_string()));
        // In client mode an ACK covers every earlier delivery of its subscription; inside a
        // transaction it names its own (and is forgotten here once the transaction commits).
        let cumulative = mode == AckMode::Client && !nack;
        if transaction.is_none() {
            self.forget_acked(sub, tag, cumulative);
        }
        match (nack, cumulative && transaction.is_none()) {
            (true, _) => Request::Nack {
                subscription: sub,
                tags: vec![tag],
                transaction,
                receipt,
            },
            (false, true) => Request::Ack {
                subscription: sub,
                up_to: tag,
                tags: Vec::new(),
                transaction,
                receipt,
            },
            (false, false) => Request::Ack {
                subscription: sub,
                up_to: 0,
                tags: vec![tag],
                transaction,
                receipt,
            },
        }
    }

    fn on_subscribe(&mut self, f: &Frame, receipt: Option<String>) -> Request<String> {
        let fail = |message: &str| Request::refuse(Refusal::invalid(message), receipt.clone());
        let Some(given) = f.header("destination") else {
            return fail("SUBSCRIBE needs a destination header");
        };
        let pattern = if given.starts_with("/temp-") || given.starts_with("/remote-temp-") {
            self.destination(given)
                .and_then(|d| DestinationPattern::parse(d.as_str()).map_err(|e| e.to_string()))
        } else {
            stomp::from_stomp_pattern(given).map_err(|e| e.to_string())
        };
        let pattern = match pattern {
            Ok(p) => p,
            Err(e) => return fail(&e),
        };
        let id = match (f.header("id"), self.version) {
            (Some(id), _) => id.to_string(),
            (None, Version::V1_0) => given.to_string(),
            (None, _) => return fail("SUBSCRIBE needs an id header"),
        };
        if self.sub_ids.contains_key(&id) {
            return fail(&format!(
                "subscription id {id:?} is already in use on this connection"
            ));
        }
        let ack = match f.header("ack").unwrap_or("auto") {
            "auto" => AckMode::Auto,
            "client" => AckMode::Client,
            "client-individual" => AckMode::Individual,
            other => {
                return fail(&format!(
                    "ack mode {other:?} is not one of auto, client, client-individual"
                ))
            }
        };
        let prefetch = match f
            .header("activemq.prefetchSize")
            .map(|p| p.trim().parse::<u32>())
        {
            Some(Ok(p)) => p,
            Some(Err(_)) => return fail("activemq.prefetchSize must be a whole number"),
            None => 0,
        };
        let durable = f
            .header("activemq.subscriptionName")
            .or_else(|| f.header("durable-subscription-name"))
            .map(String::from);
        let num = self.next_sub;
        self.next_sub += 1;
        let spec = SubscribeSpec {
            subscription: num,
            destination: pattern,
            selector: f.header("selector").unwrap_or("").to_string(),
            prefetch,
            priority: f
                .header("activemq.priority")
                .and_then(|p| p.parse().ok())
                .unwrap_or(0),
            durable_name: durable.clone(),
            no_local: f.header("activemq.noLocal").is_some_and(|v| v == "true"),
        };
        // Known before the broker has the subscription: if it refuses, the error closes the
        // connection (STOMP errors are fatal), so no delivery ever looks this id up in vain.
        self.subs
            .insert(num, Sub::new(&id, ack, durable, self.version));
        self.sub_ids.insert(id, num);
        Request::Subscribe { spec, receipt }
    }

    fn on_unsubscribe(&mut self, f: &Frame, receipt: Option<String>) -> Request<String> {
        let id = f.header("id").or_else(|| f.header("destination"));
        let Some(num) = id.and_then(|id| self.sub_ids.remove(id)) else {
            return Request::refuse(
                Refusal::invalid("UNSUBSCRIBE names no subscription of this connection"),
                receipt,
            );
        };
        let sub = self.subs.remove(&num);
        let remove_durable = sub.as_ref().is_some_and(|s| s.durable.is_some())
            && (f.header("activemq.subscriptionName").is_some()
                || f.header("durable-subscription-name").is_some());
        self.by_message_id.retain(|(_, s), _| *s != num);
        Request::Unsubscribe {
            subscription: num,
            remove_durable,
            receipt,
        }
    }

    fn on_send(&mut self, mut f: Frame, receipt: Option<String>) -> Request<String> {
        let Some(given) = f.header("destination") else {
            return Request::refuse(Refusal::invalid("SEND needs a destination header"), receipt);
        };
        // A producer mostly sends to one destination: it is translated and parsed once.
        let destination = match &self.last_send {
            Some((text, d)) if **text == *given => d.clone(),
            _ => match self.destination(given) {
                Ok(d) => {
                    self.last_send = Some((given.into(), d.clone()));
                    d
                }
                Err(e) => return Request::refuse(Refusal::invalid(e), receipt),
            },
        };
        let transaction = f
            .header("transaction")
            .map(|t| TxName::Named(t.to_string()));
        let draft = match self.draft(&mut f) {
            Ok(d) => d,
            Err(e) => return Request::refuse(Refusal::invalid(e), receipt),
        };
        Request::Send(SendRequest {
            destination,
            draft,
            transaction,
            receipt,
        })
    }

    fn on_transaction(&mut self, f: &Frame, receipt: Option<String>) -> Request<String> {
        let Some(name) = f.header("transaction") else {
            let message = format!("{} needs a transaction header", f.command.as_str());
            return Request::refuse(Refusal::invalid(message), receipt);
        };
        let transaction = TxName::Named(name.to_string());
        match f.command {
            Command::Begin => Request::Begin {
                transaction,
                receipt,
            },
            Command::Commit => Request::Commit {
                transaction,
                receipt,
            },
            _ => Request::Abort {
                transaction,
                receipt,
            },
        }
    }

    /// What a frame asks (destinations translated and parsed here, once).
    pub(crate) fn request(&mut self, f: Frame) -> Request<String> {
        let receipt = f.header("receipt").map(String::from);
        match f.command {
            Command::Send => self.on_send(f, receipt),
            Command::Subscribe => self.on_subscribe(&f, receipt),
            Command::Unsubscribe => self.on_unsubscribe(&f, receipt),
            Command::Ack => self.on_ack(&f, false, receipt),
            Command::Nack => self.on_ack(&f, true, receipt),
            Command::Begin | Command::Commit | Command::Abort => self.on_transaction(&f, receipt),
            Command::Disconnect => Request::Disconnect { receipt },
            Command::Connect | Command::Stomp => {
                Request::refuse(Refusal::invalid("already connected"), receipt)
            }
            other => Request::refuse(
                Refusal::BadFrame {
                    code: ErrorCode::Invalid,
                    message: format!(
                        "{} is a frame the server sends, not the client",
                        other.as_str()
                    ),
                    fatal: true,
                },
                receipt,
            ),
        }
    }
}

impl Codec for Stomp {
    type Receipt = String;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Inbound<String>, (ErrorCode, String)> {
        match self.decoder.decode(buf) {
            Ok(stomp::Decoded::Frame(f)) => Ok(Inbound::Request(self.request(f))),
            Ok(stomp::Decoded::Heartbeat) => Ok(Inbound::Alive),
            Ok(stomp::Decoded::NeedMore) => Ok(Inbound::NeedMore),
            Err(e) => Err((ErrorCode::BadFrame, e.to_string())),
        }
    }

    /// Writes a MESSAGE: first the lines of this delivery (subscription, ack id, redelivery),
    /// then the message's own headers. Those are the same for every subscriber of a topic
    /// message that names no temporary destination (which each connection sees under its own
    /// name), so they are encoded once per message and copied for each delivery; otherwise
    /// they are written here. Nothing is allocated on the way unless a 1.0/1.1 client
    /// acknowledges by `message-id`.
    fn encode_delivery(&mut self, d: &Delivery, out: &mut BytesMut) -> bool {
        let Stomp {
            version,
            connection_id,
            subs,
            by_message_id,
            writer,
            ..
        } = self;
        let Some(sub) = subs.get(&d.subscription) else {
            return false;
        };
        let (m, version) = (&d.message, *version);
        let auto = sub.ack == AckMode::Auto;
        out.reserve(sub.line.len() + 256 + m.body.len());
        out.put_slice(b"MESSAGE\n");
        out.put_slice(&sub.line);
        if version == Version::V1_2 && !auto {
            writer.id_pair("", d.subscription, d.tag);
            stomp::put_message_header(version, "ack", &writer.scratch, out);
        }
        if d.redelivery_count > 0 {
            out.put_slice(b"redelivered:true\nmeshmq.redelivery_count:");
            stomp::put_decimal(d.redelivery_count, out);
            out.put_u8(b'\n');
        }
        if !has_producer_id(m) {
            writer.id_pair("ID:", d.subscription, d.tag);
            stomp::put_message_header(version, "message-id", &writer.scratch, out);
        }
        let shared = m
            .destination
            .as_ref()
            .is_some_and(|dest| dest.kind() == Kind::Topic)
            && names_no_temporary(m);
        let cached = if shared {
            m.encoded_once(shared_key(version), |buf| {
                writer.message_headers(version, connection_id, m, buf)
            })
        } else {
            None
        };
        match cached {
            Some(block) => out.put_slice(block),
            None => writer.message_headers(version, connection_id, m, out),
        }
        out.put_slice(&m.body);
        out.put_u8(0);
        if !auto && version != Version::V1_2 {
            let mid = message_id(m, d.subscription, d.tag);
            by_message_id.insert((mid, d.subscription), d.tag);
        }
        auto
    }

    fn encode_receipt(&mut self, receipt: &String, out: &mut BytesMut) {
        stomp::encode(
            &Frame::new(Command::Receipt).with_header("receipt-id", receipt.as_str()),
            self.version,
            out,
        );
    }

    fn encode_error(
        &mut self,
        _code: ErrorCode,
        message: &str,
        receipt: Option<&String>,
        _fatal: bool,
        out: &mut BytesMut,
    ) -> bool {
        let mut frame = error(message);
        if let Some(r) = receipt {
            frame = frame.with_header("receipt-id", r.as_str());
        }
        stomp::encode(&frame, self.version, out);
        // STOMP has no non-fatal errors: every ERROR ends the connection.
        true
    }

    fn encode_heartbeat(&mut self, out: &mut BytesMut) {
        out.extend_from_slice(b"\n");
    }

    fn resend_advice(&self) -> &'static str {
        // A STOMP producer's sends are numbered per connection: a resend is a new message.
        "resend it to be safe (it may then arrive twice)"
    }

    fn committed_acks(&mut self, acks: &[(u64, u64)]) {
        for (sub, tag) in acks {
            let cumulative = self.subs.get(sub).is_some_and(|s| s.ack == AckMode::Client);
            self.forget_acked(*sub, *tag, cumulative);
        }
    }
}
