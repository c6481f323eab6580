//! PUBLISH both ways: a client's publish (or will) becomes a send — QoS 0 non-persistent,
//! QoS 1/2 persistent with its PUBACK/PUBREC as the receipt, written once the message is
//! durable — with its MQTT 5 properties as headers; a delivery becomes a PUBLISH at the
//! subscription's QoS (capped at 0 for a non-persistent message) with a packet id of its own
//! or, for a persistent session's resumed delivery, the one it had. Owns: packet ids of
//! deliveries and the acknowledgement packets of the QoS 1/2 flows. Must not touch: the socket.

use std::num::NonZeroU16;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::{v3, v5};

use crate::broker::{Destination, Draft, Kind, Message, RETAIN_HEADER};

use super::super::conn::Inbound;
use super::super::request::{Request, SendRequest};
use super::topic::SHARE_TOPIC_HEADER;
use super::topic::{destination_to_topic, message_topic, topic_to_destination};
use super::wire::reason;
use super::{Mqtt, Outgoing, Receipt};

impl Mqtt {
    /// Writes an acknowledgement of the QoS 1/2 flows with an MQTT 5 reason code.
    pub(super) fn write_ack(
        &mut self,
        receipt: &Receipt,
        code: u8,
        why: Option<&str>,
        out: &mut BytesMut,
    ) {
        let reason_string = why.map(ByteString::from);
        match (self.v5(), receipt) {
            (false, Receipt::PubAck(id)) => {
                self.write_v3(v3::Packet::PublishAck { packet_id: *id }, out)
            }
            (false, Receipt::PubRec(id)) => {
                self.write_v3(v3::Packet::PublishReceived { packet_id: *id }, out)
            }
            (false, Receipt::PubRel(id)) => {
                self.write_v3(v3::Packet::PublishRelease { packet_id: *id }, out)
            }
            (false, Receipt::PubComp(id)) => {
                self.write_v3(v3::Packet::PublishComplete { packet_id: *id }, out)
            }
            (true, Receipt::PubAck(id) | Receipt::PubRec(id)) => {
                let ack = v5::PublishAck {
                    packet_id: *id,
                    reason_code: v5::PublishAckReason::try_from(code)
                        .unwrap_or(v5::PublishAckReason::UnspecifiedError),
                    properties: Vec::new(),
                    reason_string,
                };
                let packet = if matches!(receipt, Receipt::PubAck(_)) {
                    v5::Packet::PublishAck(ack)
                } else {
                    v5::Packet::PublishReceived(ack)
                };
                self.write_v5(packet, out);
            }
            (true, Receipt::PubRel(id) | Receipt::PubComp(id)) => {
                let ack = v5::PublishAck2 {
                    packet_id: *id,
                    reason_code: v5::PublishAck2Reason::Success,
                    properties: Vec::new(),
                    reason_string: None,
                };
                let packet = if matches!(receipt, Receipt::PubRel(_)) {
                    v5::Packet::PublishRelease(ack)
                } else {
                    v5::Packet::PublishComplete(ack)
                };
                self.write_v5(packet, out);
            }
            (false, Receipt::PingResp) => self.write_v3(v3::Packet::PingResponse, out),
            (true, Receipt::PingResp) => {
                self.write_v5(v5::Packet::PingResponse, out);
            }
            (_, Receipt::SubAck { .. } | Receipt::UnsubAck { .. }) => {
                unreachable!("SUBACK and UNSUBACK are gathered, not written one filter at a time")
            }
            // A resumed subscription answers nothing.
            (_, Receipt::Resumed(_)) => {}
        }
    }

    pub(super) fn on_publish(&mut self, p: Box<Publish>) -> Inbound<Receipt> {
        let receipt = match (p.qos, p.packet_id) {
            (QoS::AtMostOnce, _) => None,
            (QoS::AtLeastOnce, Some(id)) => Some(Receipt::PubAck(id)),
            (QoS::ExactlyOnce, Some(id)) => {
                if self.awaiting_release.contains(&id.get()) {
                    // A resend of a QoS 2 publish we hold: answer it again, take it once.
                    return Inbound::Request(Request::Ping {
                        receipt: Receipt::PubRec(id),
                    });
                }
                Some(Receipt::PubRec(id))
            }
            (_, None) => {
                return self.fatal(
                    reason::PROTOCOL_ERROR,
                    "a QoS 1 or 2 PUBLISH needs a packet id".into(),
                )
            }
        };
        let (destination, draft) = match self.draft_of(&p) {
            Ok(d) => d,
            Err((reason, message)) => return self.fatal(reason, message),
        };
        if let Some(Receipt::PubRec(id)) = &receipt {
            self.awaiting_release.insert(id.get());
        }
        Inbound::Request(Request::Send(SendRequest {
            destination,
            draft,
            transaction: None,
            receipt,
        }))
    }

    /// The destination and message a PUBLISH (or a will) stands for; an MQTT 5 reason and
    /// why when it cannot be one.
    pub(super) fn draft_of(&mut self, p: &Publish) -> Result<(Destination, Draft), (u8, String)> {
        let props = p.properties.clone().unwrap_or_default();
        if props.topic_alias.is_some() {
            return Err((
                reason::TOPIC_ALIAS_INVALID,
                "topic aliases are not accepted here (the CONNACK allowed none)".into(),
            ));
        }
        let destination = topic_to_destination(&p.topic)
            .map_err(|e| (reason::TOPIC_NAME_INVALID, e.to_string()))?;
        let reply_to = match props.response_topic.as_deref().map(topic_to_destination) {
            Some(Ok(d)) => d.to_string(),
            Some(Err(e)) => return Err((reason::TOPIC_NAME_INVALID, e.to_string())),
            None => String::new(),
        };
        // The retain flag alone decides what the topic keeps: a client's property of the same
        // name does not.
        let mut headers: Vec<(String, String)> = props
            .user_properties
            .iter()
            .filter(|(k, _)| &**k != RETAIN_HEADER)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if p.retain {
            headers.push((RETAIN_HEADER.to_string(), "true".to_string()));
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let expires_at_ms = props.message_expiry_interval.map_or(0, |secs| {
            crate::broker::now_ms() + u64::from(secs.get()) * 1000
        });
        let draft = Draft {
            body: p.payload.clone(),
            headers,
            persistent: p.qos != QoS::AtMostOnce,
            priority: u32::from(crate::broker::DEFAULT_PRIORITY),
            expires_at_ms,
            producer_id: self.producer_id.clone(),
            sequence,
            reply_to,
            correlation_id: props
                .correlation_data
                .as_ref()
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .unwrap_or_default(),
            content_type: props
                .content_type
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            timestamp_ms: 0,
            ..Draft::default()
        };
        Ok((destination, draft))
    }

    /// A free packet id for a delivery (`None` when 65,535 deliveries are in flight).
    pub(super) fn take_packet_id(&mut self) -> Option<NonZeroU16> {
        for _ in 0..u16::MAX {
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            let id = self.next_packet_id;
            if !self.inflight.contains_key(&id) && !self.resumed_ids.values().any(|r| *r == id) {
                return NonZeroU16::new(self.next_packet_id);
            }
        }
        None
    }

    /// The packet id of a persistent session's delivery of journaled message `m`, derived
    /// from its journal index, which it keeps across restarts and failovers: so a delivery the
    /// client never acknowledged comes again with the packet id it had, at no cost. `None`
    /// when that id is taken (a message 65,535 records apart still in flight, a resumed id,
    /// another subscription's copy): then the next free one serves.
    fn journaled_packet_id(&self, m: &Message) -> Option<NonZeroU16> {
        let id = ((m.store_index.checked_sub(1)? % 65_535) + 1) as u16;
        (!self.inflight.contains_key(&id) && !self.resumed_ids.values().any(|r| *r == id))
            .then(|| NonZeroU16::new(id))
            .flatten()
    }

    /// Writes one PUBLISH of `m` to subscription `sub`: a delivery (`tag`) or a retained
    /// replay (`None`, flagged retained). True when it needs no acknowledgement (QoS 0, or not
    /// written).
    pub(super) fn write_publish(
        &mut self,
        sub: u64,
        tag: Option<u64>,
        redelivery_count: u32,
        m: &Message,
        out: &mut BytesMut,
    ) -> bool {
        let retain = tag.is_none();
        let Some((sub_qos, durable)) = self.subs.get(&sub).map(|s| (s.qos, s.durable.as_ref()))
        else {
            return true;
        };
        // A persistent session's delivery: known by its subscription and identity, so that a
        // later connection sends it again with the same packet id.
        let key = durable
            .filter(|_| tag.is_some() && m.persistent && sub_qos != QoS::AtMostOnce)
            .map(|name| (name.clone(), m.producer_id.clone(), m.sequence));
        // A non-persistent message was published at QoS 0: it is never delivered above it.
        let qos = if m.persistent {
            sub_qos
        } else {
            QoS::AtMostOnce
        };
        let topic = message_topic(m);
        let (qos, packet_id) = match qos {
            QoS::AtMostOnce => (qos, None),
            _ => match key
                .as_ref()
                .and_then(|k| self.resumed_ids.remove(k))
                .filter(|id| !self.inflight.contains_key(id))
                .and_then(NonZeroU16::new)
                .or_else(|| key.as_ref().and_then(|_| self.journaled_packet_id(m)))
                .or_else(|| self.take_packet_id())
            {
                Some(id) => (qos, Some(id)),
                None => {
                    tracing::warn!(connection = %self.connection_id, subscription = sub, "65,535 MQTT deliveries are unacknowledged: this one goes out at QoS 0");
                    (QoS::AtMostOnce, None)
                }
            },
        };
        let properties = self.v5().then(|| {
            let now = crate::broker::now_ms();
            v5::PublishProperties {
                message_expiry_interval: (m.expires_at_ms != 0).then(|| {
                    let left = m.expires_at_ms.saturating_sub(now).div_ceil(1000).max(1);
                    std::num::NonZeroU32::new(left.min(u64::from(u32::MAX)) as u32)
                        .unwrap_or(std::num::NonZeroU32::MIN)
                }),
                content_type: (!m.content_type.is_empty())
                    .then(|| ByteString::from(m.content_type.as_str())),
                correlation_data: (!m.correlation_id.is_empty())
                    .then(|| Bytes::copy_from_slice(m.correlation_id.as_bytes())),
                response_topic: Destination::parse(&m.reply_to)
                    .ok()
                    .filter(|d| d.kind() == Kind::Topic)
                    .map(|d| ByteString::from(destination_to_topic(&d))),
                user_properties: m
                    .headers
                    .iter()
                    .filter(|(k, _)| k != RETAIN_HEADER && k != SHARE_TOPIC_HEADER)
                    .map(|(k, v)| (ByteString::from(k.as_str()), ByteString::from(v.as_str())))
                    .collect(),
                ..v5::PublishProperties::default()
            }
        });
        let publish = Publish {
            dup: redelivery_count > 0 && qos != QoS::AtMostOnce,
            retain,
            qos,
            topic: ByteString::from(topic),
            packet_id,
            payload: m.body.clone(),
            properties,
        };
        // MQTT 5: one larger than the client's maximum packet size is dropped (3.1.2.25).
        let written = if self.v5() {
            self.write_v5(v5::Packet::Publish(Box::new(publish)), out)
        } else {
            self.write_v3(v3::Packet::Publish(Box::new(publish)), out);
            true
        };
        match packet_id {
            Some(id) if written => {
                self.inflight.insert(
                    id.get(),
                    Outgoing {
                        subscription: if tag.is_some() { sub } else { 0 },
                        tag: tag.unwrap_or(0),
                        qos,
                    },
                );
                if let Some(key) = key {
                    self.keys.insert(id.get(), key);
                }
                false
            }
            _ => true,
        }
    }
}
