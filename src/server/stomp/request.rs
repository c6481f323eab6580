//! STOMP frames → the neutral [`Request`]s a connection applies: destination names translated
//! and parsed once (a producer's repeated destination is parsed once for all), a SEND's headers
//! drafted into a message, and ACK/NACK mapped to the delivery they name (by `ack` id in 1.2,
//! by `message-id` in 1.0/1.1).

use bytes::Bytes;

use crate::broker::{Destination, DestinationPattern, Draft, Kind, SubscribeSpec};
use crate::server::request::{Refusal, Request, SendRequest, TxName};
use crate::stomp::{self, Command, Frame, Version};
use crate::wire::proto::ErrorCode;

use super::codec::{AckMode, Stomp, Sub};

/// What a SEND header means to the broker: one of the headers it reads, one it ignores (frame
/// or delivery headers a client may echo back), or — `None` — a header that travels with the
/// message.
#[derive(Clone, Copy)]
enum SendHeader {
    Destination,
    Receipt,
    Transaction,
    Priority,
    Expires,
    ReplyTo,
    Persistent,
    CorrelationId,
    ContentType,
    Ignored,
}

impl SendHeader {
    fn of(name: &str) -> Option<SendHeader> {
        Some(match name {
            "destination" => SendHeader::Destination,
            "receipt" => SendHeader::Receipt,
            "transaction" => SendHeader::Transaction,
            "priority" => SendHeader::Priority,
            "expires" => SendHeader::Expires,
            "reply-to" => SendHeader::ReplyTo,
            "persistent" => SendHeader::Persistent,
            "correlation-id" => SendHeader::CorrelationId,
            "content-type" => SendHeader::ContentType,
            "content-length" | "message-id" | "subscription" | "ack" | "timestamp"
            | "redelivered" => SendHeader::Ignored,
            _ => return None,
        })
    }
}

/// A SEND's headers sorted out in one pass over the frame: the value of each header the broker
/// reads (the first of a repeated name, as [`Frame::header`] finds it) and how many headers
/// travel with the message. Each header's name is compared once, not once per header read.
#[derive(Default)]
struct SendHeaders<'f> {
    destination: Option<&'f str>,
    receipt: Option<&'f str>,
    transaction: Option<&'f str>,
    priority: Option<&'f str>,
    expires: Option<&'f str>,
    reply_to: Option<&'f str>,
    persistent: Option<&'f str>,
    correlation_id: Option<&'f str>,
    content_type: Option<&'f str>,
    travelling: usize,
}

impl<'f> SendHeaders<'f> {
    fn of(headers: impl Iterator<Item = (&'f str, &'f str)>) -> SendHeaders<'f> {
        let mut h = SendHeaders::default();
        for (name, value) in headers {
            let slot = match SendHeader::of(name) {
                None => {
                    h.travelling += 1;
                    continue;
                }
                Some(SendHeader::Ignored) => continue,
                Some(SendHeader::Destination) => &mut h.destination,
                Some(SendHeader::Receipt) => &mut h.receipt,
                Some(SendHeader::Transaction) => &mut h.transaction,
                Some(SendHeader::Priority) => &mut h.priority,
                Some(SendHeader::Expires) => &mut h.expires,
                Some(SendHeader::ReplyTo) => &mut h.reply_to,
                Some(SendHeader::Persistent) => &mut h.persistent,
                Some(SendHeader::CorrelationId) => &mut h.correlation_id,
                Some(SendHeader::ContentType) => &mut h.content_type,
            };
            slot.get_or_insert(value);
        }
        h
    }
}

fn parse_ack_id(id: &str) -> Option<(u64, u64)> {
    let (s, t) = id.split_once(':')?;
    Some((s.parse().ok()?, t.parse().ok()?))
}

impl Stomp {
    /// A destination as this connection names it → meshmq's form.
    pub(super) fn destination(&self, given: &str) -> Result<Destination, String> {
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

    /// The message a SEND carries, as a draft for the broker's builder: its body, and what its
    /// headers `h` (read off `headers`) say.
    /// The headers that travel with the message are copied out of the frame's header text (the
    /// others never become strings of their own).
    fn draft<'f>(
        &mut self,
        h: &SendHeaders<'f>,
        headers: impl Iterator<Item = (&'f str, &'f str)>,
        body: Bytes,
    ) -> Result<Draft, String> {
        let priority = match h.priority {
            Some(p) => p
                .trim()
                .parse::<u32>()
                .map_err(|_| format!("priority {p:?} is not a number from 0 to 9"))?,
            None => crate::broker::DEFAULT_PRIORITY as u32,
        };
        let expires_at_ms = match h.expires {
            Some(e) => e.trim().parse::<u64>().map_err(|_| {
                format!("expires {e:?} is not a time in milliseconds since the epoch")
            })?,
            None => 0,
        };
        let reply_to = match h.reply_to {
            Some(r) => self.destination(r)?.to_string(),
            None => String::new(),
        };
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let persistent = h.persistent.is_some_and(|p| p.eq_ignore_ascii_case("true"));
        let correlation_id = h.correlation_id.unwrap_or("").to_string();
        let content_type = h.content_type.unwrap_or("").to_string();
        // Only the headers that travel with the message become strings of their own (the
        // message may live long: it keeps nothing of the frame's text).
        let mut travelling = Vec::new();
        if h.travelling > 0 {
            travelling.reserve_exact(h.travelling);
            travelling.extend(
                headers
                    .filter(|(k, _)| SendHeader::of(k).is_none())
                    .map(|(k, v)| (k.to_string(), v.to_string())),
            );
        }
        Ok(Draft {
            body_is_own: self.decoder.copies_body(body.len()),
            body,
            headers: travelling,
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

    pub(super) fn forget_acked(&mut self, sub: u64, tag: u64, cumulative: bool) {
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

    /// What a SEND asks: its headers, as decoded or read in place, and its body.
    pub(super) fn on_send<'f>(
        &mut self,
        headers: impl Iterator<Item = (&'f str, &'f str)> + Clone,
        body: Bytes,
    ) -> Request<String> {
        let h = SendHeaders::of(headers.clone());
        let receipt = h.receipt.map(String::from);
        let Some(given) = h.destination else {
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
        let transaction = h.transaction.map(|t| TxName::Named(t.to_string()));
        let draft = match self.draft(&h, headers, body) {
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

    /// What a frame asks (destinations translated and parsed here, once). A SEND's body is
    /// taken; the headers stay in the frame, for the decoder to reuse their room.
    pub(crate) fn request(&mut self, f: &mut Frame) -> Request<String> {
        match f.command {
            Command::Send => self.on_send(f.headers.iter(), std::mem::take(&mut f.body)),
            _ => self.on_other(f),
        }
    }

    /// What a frame other than SEND asks.
    fn on_other(&mut self, f: &Frame) -> Request<String> {
        let receipt = f.header("receipt").map(String::from);
        match f.command {
            Command::Subscribe => self.on_subscribe(f, receipt),
            Command::Unsubscribe => self.on_unsubscribe(f, receipt),
            Command::Ack => self.on_ack(f, false, receipt),
            Command::Nack => self.on_ack(f, true, receipt),
            Command::Begin | Command::Commit | Command::Abort => self.on_transaction(f, receipt),
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
