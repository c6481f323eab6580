//! MQTT 3.1, 3.1.1 and 5 on a client connection: the CONNECT handshake (version, login, client
//! id, keep-alive), then a codec — packets → [`Request`]s, deliveries and replies → packets —
//! over rmqtt-codec's packet parser, with ActiveMQ's topic names.
//!
//! MQTT topics are meshmq topics: `/` ↔ `.`, `+` ↔ `*`, `#` ↔ `>` (and a `.` inside an MQTT
//! level becomes `/`, so the mapping is one to one). A QoS 0 publish is a non-persistent send;
//! a QoS 1 or 2 publish is a persistent send whose PUBACK (PUBREC) is its receipt, so it goes
//! out only once the message is durable. A delivery goes out at the subscription's QoS, capped
//! at 0 for a non-persistent message; QoS 0 deliveries are acknowledged as they are written,
//! QoS 1 ones by PUBACK, QoS 2 ones by PUBREC. A retained publish carries the
//! `ActiveMQ.Retain` header, so its topic keeps it (in memory, per group; forwarded copies are
//! retained where they arrive) and a new subscription gets it, flagged retained, right after
//! its SUBACK. A will is published through the same pipeline when the connection ends without
//! a DISCONNECT (or with MQTT 5's "disconnect with will"). A persistent session (MQTT 3
//! `clean_session=0`, MQTT 5 `clean_start=0` with a session expiry) keeps each filter in a
//! durable subscription named `mqtt:<qos>:<filter>` under the client id: messages that arrive
//! while the client is away, and its unacknowledged QoS 1/2 deliveries, wait there — journaled,
//! so across restarts and failovers of the group — and a reconnect resumes them (CONNACK
//! `session present`); a clean start deletes them, and so does the end of an MQTT 5 session's
//! expiry interval. An MQTT 5 SUBSCRIBE's `selector` user property is the JMS selector of
//! each of its filters' subscriptions (kept with a persistent session's durable ones). The
//! codec owns the packet ids of both
//! directions and the mapping from a client's filters to subscriptions; a persistent session's
//! ids in flight outlive the connection (`mqtt_session.rs`), so a reconnect resumes its QoS 1/2
//! deliveries with them. It never touches the socket or the broker. Invariants: every SUBSCRIBE/UNSUBSCRIBE gets exactly one
//! SUBACK/UNSUBACK with one code per filter, written once every filter's request is answered;
//! a refusal MQTT 3 cannot express (a refused publish, a lost subscription) closes the
//! connection; in MQTT 5 it is a reason code, and a fatal one a DISCONNECT with its reason.
//!
//! This module is the codec itself (the connection's state and the `Codec` glue); its parts
//! live beside it: `connect` (the handshake and the connection's life), `wire` (packets and
//! reason codes), `topic` (the topic mapping), `publish`, `subscribe`, `persistent` (the
//! persistent session) and `will`.

mod connect;
mod persistent;
mod publish;
mod subscribe;
mod topic;
pub(super) mod will;
mod wire;

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use rmqtt_codec::types::QoS;
use rmqtt_codec::{v3, v5};
use tokio_util::codec::Encoder;

use crate::broker::{Delivery, Message};
use crate::wire::proto::ErrorCode;

use super::conn::{Codec, Inbound};
use super::mqtt_session::{DeliveryKey, MqttSessions};
use super::request::{Refusal, Request, SendRequest};

pub(crate) use connect::{read_client_bytes, refuse_over_limit, serve};
pub(crate) use persistent::{expire_kept_sessions, kept_share_filter};
#[cfg(test)]
use persistent::{parse_session_sub_name, session_sub_name};
#[cfg(test)]
use topic::{destination_to_topic, topic_to_destination};
pub(crate) use topic::{fed_from, share_queue, SHARE_TOPIC_HEADER};
use wire::{decode_error, reason, reason_for, Packet, Wire};

/// What the broker owes the client once a request is answered: the packet that answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Receipt {
    /// A QoS 1 publish is durable.
    PubAck(NonZeroU16),
    /// A QoS 2 publish is durable (first half of its exactly-once handshake).
    PubRec(NonZeroU16),
    /// The client released a QoS 2 publish.
    PubComp(NonZeroU16),
    /// A QoS 2 delivery reached the client (its PUBREC acknowledged it).
    PubRel(NonZeroU16),
    /// Filter `index` of SUBSCRIBE `packet_id` is answered.
    SubAck {
        packet_id: NonZeroU16,
        index: usize,
    },
    /// Filter `index` of UNSUBSCRIBE `packet_id` is answered.
    UnsubAck {
        packet_id: NonZeroU16,
        index: usize,
    },
    PingResp,
    /// Subscription `n` of a resumed persistent session is attached again (nothing to write).
    Resumed(u64),
}

/// One subscription as the client made it.
#[derive(Debug)]
struct Sub {
    filter: String,
    qos: QoS,
    /// The durable subscription that keeps it, in a persistent session.
    durable: Option<String>,
    /// Restored from the session when the client reconnected (no retained replay).
    resumed: bool,
}

/// A delivery at QoS 1 or 2 the client has not finished acknowledging.
#[derive(Debug, Clone, Copy)]
struct Outgoing {
    /// 0 for a retained message replayed to a new subscription (nothing to acknowledge).
    subscription: u64,
    tag: u64,
    qos: QoS,
}

/// The answers to one SUBSCRIBE or UNSUBSCRIBE, gathered filter by filter.
#[derive(Debug)]
struct Gathering {
    subscribe: bool,
    /// The MQTT 5 reason code of each filter, once known.
    codes: Vec<Option<u8>>,
    /// The subscription each filter of a SUBSCRIBE opened (to forget it if refused).
    subs: Vec<Option<u64>>,
    /// Retained messages for those subscriptions, written after the SUBACK.
    retained: Vec<(u64, Arc<Message>)>,
    /// Why a filter was refused (the first refusal): the MQTT 5 SUBACK's reason string.
    reason: Option<String>,
}

/// The MQTT side of one connection.
pub(crate) struct Mqtt {
    wire: Wire,
    connection_id: String,
    producer_id: Bytes,
    next_sequence: u64,
    subs: HashMap<u64, Sub>,
    by_filter: HashMap<String, u64>,
    next_sub: u64,
    /// Prefetch of each subscription (0: the destination's default).
    prefetch: u32,
    /// Requests decoded from one packet, waiting their turn.
    pending: VecDeque<Request<Receipt>>,
    gathering: HashMap<NonZeroU16, Gathering>,
    /// Our QoS 1/2 deliveries in flight, by the packet id we gave them.
    inflight: HashMap<u16, Outgoing>,
    next_packet_id: u16,
    /// QoS 2 publishes received and not yet released (their packet ids).
    awaiting_release: HashSet<u16>,
    /// The MQTT 5 reason of the refusal being written (set where the codec refuses).
    refusal_reason: Option<u8>,
    /// Published if the connection ends without a DISCONNECT. Boxed: most clients have
    /// none, and inline a message's draft would weigh on every idle connection.
    will: Option<Box<SendRequest<Receipt>>>,
    /// Where the will goes when the connection ends, if it waits for a delay (`will.rs`).
    delayed_will: Option<will::WillSlot>,
    /// Subscriptions are durable (a persistent session of a client with an id).
    persistent: bool,
    /// The session's expiry interval, shared with whoever ends the session.
    expiry: Option<Arc<AtomicU32>>,
    /// The delivery each packet id in flight carries, for a persistent session's
    /// subscriptions (`mqtt_session.rs`).
    keys: HashMap<u16, DeliveryKey>,
    /// The packet ids the session's last connection gave deliveries it never saw acknowledged:
    /// they go out again with them.
    resumed_ids: HashMap<DeliveryKey, u16>,
    /// Where a persistent session keeps what is in flight when the connection ends, and its
    /// client id.
    keeper: Option<(Arc<MqttSessions>, String)>,
    /// Where a persistent session keeps its shared subscriptions.
    shares: Option<persistent::SessionShares>,
}

impl Mqtt {
    fn new(wire: Wire, connection_id: &str, prefetch: u32) -> Mqtt {
        Mqtt {
            wire,
            connection_id: connection_id.to_string(),
            producer_id: Bytes::from(connection_id.to_string()),
            next_sequence: 1,
            subs: HashMap::new(),
            by_filter: HashMap::new(),
            next_sub: 1,
            prefetch,
            pending: VecDeque::new(),
            gathering: HashMap::new(),
            inflight: HashMap::new(),
            next_packet_id: 0,
            awaiting_release: HashSet::new(),
            refusal_reason: None,
            will: None,
            delayed_will: None,
            persistent: false,
            expiry: None,
            keys: HashMap::new(),
            resumed_ids: HashMap::new(),
            keeper: None,
            shares: None,
        }
    }

    fn v5(&self) -> bool {
        matches!(self.wire, Wire::V5(_))
    }

    fn write_v3(&mut self, packet: v3::Packet, out: &mut BytesMut) {
        if let Wire::V3(c) = &mut self.wire {
            if let Err(e) = c.encode(packet, out) {
                tracing::warn!(connection = %self.connection_id, error = %e, "an MQTT packet could not be encoded");
            }
        }
    }

    fn write_v5(&mut self, packet: v5::Packet, out: &mut BytesMut) -> bool {
        if let Wire::V5(c) = &mut self.wire {
            if let Err(e) = c.encode(packet, out) {
                tracing::debug!(connection = %self.connection_id, error = %e, "an MQTT packet could not be encoded");
                return false;
            }
        }
        true
    }

    /// A packet that ends the connection as malformed (counted as a bad frame).
    fn fatal(&mut self, reason: u8, message: String) -> Inbound<Receipt> {
        self.refusal_reason = Some(reason);
        Inbound::Request(Request::refuse(
            Refusal::BadFrame {
                code: ErrorCode::BadFrame,
                message,
                fatal: true,
            },
            None,
        ))
    }

    fn next_pending(&mut self) -> Inbound<Receipt> {
        match self.take_pending() {
            Some(r) => Inbound::Request(r),
            None => Inbound::Alive,
        }
    }

    /// The next request waiting its turn. The queue is freed once it is empty: it fills only
    /// for a SUBSCRIBE, UNSUBSCRIBE or resume, and an idle connection (most of an edge's ten
    /// thousand) would otherwise keep room for several requests for its whole life.
    fn take_pending(&mut self) -> Option<Request<Receipt>> {
        let next = self.pending.pop_front();
        if self.pending.is_empty() && self.pending.capacity() > 0 {
            self.pending = VecDeque::new();
        }
        next
    }

    fn on_packet(&mut self, packet: Packet) -> Inbound<Receipt> {
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(id) => match self.inflight.remove(&id.get()).inspect(|_| {
                self.keys.remove(&id.get());
            }) {
                Some(o) if o.subscription != 0 => Inbound::Request(Request::Ack {
                    subscription: o.subscription,
                    up_to: 0,
                    tags: vec![o.tag],
                    transaction: None,
                    receipt: None,
                }),
                // A retained replay, or a delivery of a subscription since ended: nothing to
                // acknowledge.
                _ => Inbound::Alive,
            },
            Packet::PubRec(id) => match self.inflight.get(&id.get()).copied() {
                Some(o) if o.qos == QoS::ExactlyOnce && o.subscription != 0 => {
                    // The packet id stays taken until PUBCOMP; the message is acknowledged
                    // now, so it is delivered once. A persistent session's delivery is
                    // journaled as released first, so its PUBREL comes again after a restart.
                    if self.keys.remove(&id.get()).is_some() {
                        if let Some(s) = &self.shares {
                            s.broker.session_released(&s.client_id, id.get(), true);
                        }
                    }
                    self.inflight.insert(
                        id.get(),
                        Outgoing {
                            qos: QoS::AtMostOnce,
                            ..o
                        },
                    );
                    Inbound::Request(Request::Ack {
                        subscription: o.subscription,
                        up_to: 0,
                        tags: vec![o.tag],
                        transaction: None,
                        receipt: Some(Receipt::PubRel(id)),
                    })
                }
                other => {
                    if let Some(o) = other {
                        // A retained replay at QoS 2: released, nothing to acknowledge.
                        self.inflight.insert(
                            id.get(),
                            Outgoing {
                                qos: QoS::AtMostOnce,
                                ..o
                            },
                        );
                    }
                    Inbound::Request(Request::Ping {
                        receipt: Receipt::PubRel(id),
                    })
                }
            },
            Packet::PubRel(id) => {
                self.awaiting_release.remove(&id.get());
                Inbound::Request(Request::Ping {
                    receipt: Receipt::PubComp(id),
                })
            }
            Packet::PubComp(id) => {
                if self.inflight.remove(&id.get()).is_some() {
                    if let Some(s) = &self.shares {
                        s.broker.session_released(&s.client_id, id.get(), false);
                    }
                }
                Inbound::Alive
            }
            Packet::Subscribe {
                packet_id,
                filters,
                selectors,
            } => self.on_subscribe(packet_id, filters, selectors),
            Packet::Unsubscribe { packet_id, filters } => self.on_unsubscribe(packet_id, filters),
            Packet::Ping => Inbound::Request(Request::Ping {
                receipt: Receipt::PingResp,
            }),
            Packet::Disconnect { keep_will, expiry } => {
                if !keep_will {
                    self.will = None;
                }
                // A session that was to end with its connection may not be kept after all
                // (MQTT 5 3.14.2.2.2): only a kept one's interval changes.
                if let (Some(shared), Some(secs)) = (&self.expiry, expiry) {
                    if self.persistent {
                        shared.store(secs, Ordering::Relaxed);
                    }
                }
                Inbound::Request(Request::Disconnect { receipt: None })
            }
            Packet::Unexpected(what) => self.fatal(
                reason::PROTOCOL_ERROR,
                format!("{what} is not allowed from a connected client"),
            ),
        }
    }
}

impl Codec for Mqtt {
    type Receipt = Receipt;

    fn encode_delivery(&mut self, d: &Delivery, out: &mut BytesMut) -> bool {
        self.write_publish(
            d.subscription,
            Some(d.tag),
            d.redelivery_count,
            &d.message,
            out,
        )
    }

    fn replays_retained(&self) -> bool {
        true
    }

    fn encode_retained(
        &mut self,
        subscription: u64,
        retained: &[Arc<Message>],
        out: &mut BytesMut,
    ) {
        // A resumed session's subscriptions get no retained replay: that follows a SUBSCRIBE.
        if self.subs.get(&subscription).is_some_and(|s| s.resumed) {
            return;
        }
        // Behind the SUBACK when it is still being gathered.
        let gathering = self
            .gathering
            .values_mut()
            .find(|g| g.subs.contains(&Some(subscription)));
        match gathering {
            Some(g) => g
                .retained
                .extend(retained.iter().map(|m| (subscription, m.clone()))),
            None => {
                for m in retained {
                    self.write_publish(subscription, None, 0, m, out);
                }
            }
        }
    }

    fn farewell(&mut self) -> Option<Request<Receipt>> {
        if let Some((sessions, client_id)) = self.keeper.take() {
            let kept = self.inflight_to_keep();
            sessions.keep(&client_id, kept);
        }
        self.take_will().map(Request::Send)
    }

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Inbound<Receipt>, (ErrorCode, String)> {
        if let Some(r) = self.take_pending() {
            return Ok(Inbound::Request(r));
        }
        match self.wire.decode(buf) {
            Ok(Some(packet)) => Ok(self.on_packet(packet)),
            Ok(None) => Ok(Inbound::NeedMore),
            Err(e) => {
                let (reason, code) = decode_error(&e);
                self.refusal_reason = Some(reason);
                Err((code, format!("malformed MQTT packet: {e}")))
            }
        }
    }

    fn encode_receipt(&mut self, receipt: &Receipt, out: &mut BytesMut) {
        match receipt {
            Receipt::SubAck { packet_id, index } => {
                let num = self
                    .gathering
                    .get(packet_id)
                    .and_then(|g| g.subs.get(*index).copied().flatten());
                let granted = num
                    .and_then(|num| self.subs.get(&num))
                    .map_or(reason::UNSPECIFIED, |s| u8::from(s.qos));
                if let Some(num) = num {
                    self.keep_share(num, true);
                }
                self.gather(*packet_id, *index, granted, out);
            }
            Receipt::UnsubAck { packet_id, index } => self.gather(*packet_id, *index, 0, out),
            Receipt::Resumed(_) => {}
            other => self.write_ack(other, 0, None, out),
        }
    }

    fn encode_error(
        &mut self,
        code: ErrorCode,
        message: &str,
        receipt: Option<&Receipt>,
        fatal: bool,
        out: &mut BytesMut,
    ) -> bool {
        let reason = self
            .refusal_reason
            .take()
            .unwrap_or_else(|| reason_for(code));
        tracing::debug!(connection = %self.connection_id, ?code, message, fatal, "MQTT request refused");
        // Whether the refusal could be told in the answer the request expects.
        let told = match receipt {
            Some(Receipt::SubAck { packet_id, index }) => {
                if let Some(num) = self
                    .gathering
                    .get(packet_id)
                    .and_then(|g| g.subs.get(*index).copied().flatten())
                {
                    // A refused SUBSCRIBE with a bad selector left the filter's earlier
                    // subscription in place: only this one is forgotten.
                    if let Some(sub) = self.subs.remove(&num) {
                        if self.by_filter.get(&sub.filter) == Some(&num) {
                            self.by_filter.remove(&sub.filter);
                        }
                    }
                }
                if let Some(g) = self.gathering.get_mut(packet_id) {
                    g.reason.get_or_insert_with(|| message.to_string());
                }
                let code = match (self.v5(), reason) {
                    (true, reason::NOT_AUTHORIZED | reason::QUOTA_EXCEEDED) => reason,
                    (true, _) => reason::IMPLEMENTATION_SPECIFIC,
                    (false, _) => reason::UNSPECIFIED,
                };
                self.gather(*packet_id, *index, code, out);
                true
            }
            Some(Receipt::UnsubAck { packet_id, index }) => {
                self.gather(*packet_id, *index, reason::UNSPECIFIED, out);
                true
            }
            // A kept subscription that cannot be resumed (its read right was revoked, say) is
            // dropped from the session; the client may subscribe again.
            Some(Receipt::Resumed(num)) => {
                self.keep_share(*num, false);
                if let Some(sub) = self.subs.remove(num) {
                    tracing::info!(connection = %self.connection_id, filter = %sub.filter, message, "a persistent session's subscription could not be resumed");
                    self.by_filter.remove(&sub.filter);
                }
                true
            }
            Some(r @ (Receipt::PubAck(id) | Receipt::PubRec(id))) => {
                self.awaiting_release.remove(&id.get());
                if self.v5() {
                    let code = match reason {
                        reason::NOT_AUTHORIZED
                        | reason::QUOTA_EXCEEDED
                        | reason::TOPIC_NAME_INVALID
                        | reason::UNSPECIFIED => reason,
                        _ => reason::IMPLEMENTATION_SPECIFIC,
                    };
                    self.write_ack(r, code, Some(message), out);
                }
                // MQTT 3 has no way to refuse a publish but closing (MQTT 3.3.5).
                self.v5()
            }
            // The client's side of these flows is done whatever happened here.
            Some(r @ (Receipt::PubRel(_) | Receipt::PubComp(_) | Receipt::PingResp)) => {
                self.write_ack(r, 0, None, out);
                true
            }
            // An acknowledgement of a delivery that is gone already: no harm, nothing to say.
            None => matches!(code, ErrorCode::Invalid | ErrorCode::NotFound) && !fatal,
        };
        let closes = fatal || !told;
        if closes && self.v5() {
            self.write_v5(
                v5::Packet::Disconnect(v5::Disconnect {
                    reason_code: v5::DisconnectReasonCode::try_from(reason)
                        .unwrap_or(v5::DisconnectReasonCode::UnspecifiedError),
                    session_expiry_interval_secs: None,
                    server_reference: None,
                    reason_string: Some(ByteString::from(message)),
                    user_properties: Vec::new(),
                }),
                out,
            );
        }
        closes
    }

    fn encode_heartbeat(&mut self, _out: &mut BytesMut) {
        // An MQTT server never pings: the client keeps the connection alive (PINGREQ), and
        // the connection is built without an outgoing heartbeat interval.
    }

    fn resend_advice(&self) -> &'static str {
        "publish it again (it may then arrive twice)"
    }
}

#[cfg(test)]
#[path = "mqtt_tests.rs"]
mod tests;
