//! SUBSCRIBE and UNSUBSCRIBE: each filter becomes a subscription (a durable one in a
//! persistent session, a share group's queue for `$share/NAME/filter` — which a persistent
//! session keeps by name once it is granted), and the answers are
//! gathered filter by filter into one SUBACK/UNSUBACK, with the retained messages of new
//! subscriptions written after it. Owns: the client's filters and their subscriptions. Must
//! not touch: the socket. Invariant: every SUBSCRIBE/UNSUBSCRIBE gets exactly one answer with
//! one code per filter, written once every filter's request is answered.

use std::num::NonZeroU16;

use bytes::BytesMut;
use bytestring::ByteString;
use rmqtt_codec::types::QoS;
use rmqtt_codec::{v3, v5};

use crate::broker::{DestinationPattern, SubscribeSpec};
use crate::selector::Selector;

use super::super::conn::Inbound;
use super::super::request::Request;
use super::persistent::session_sub_name;
use super::topic::filter_to_pattern;
use super::topic::share_queue;
use super::wire::{reason, SELECTOR_PROPERTY};
use super::{Gathering, Mqtt, Receipt, Sub};

impl Mqtt {
    /// Records the answer for one filter; writes the SUBACK/UNSUBACK once all are in.
    pub(super) fn gather(
        &mut self,
        packet_id: NonZeroU16,
        index: usize,
        code: u8,
        out: &mut BytesMut,
    ) {
        let Some(g) = self.gathering.get_mut(&packet_id) else {
            return;
        };
        if let Some(slot) = g.codes.get_mut(index) {
            slot.get_or_insert(code);
        }
        if g.codes.iter().any(Option::is_none) {
            return;
        }
        let Some(g) = self.gathering.remove(&packet_id) else {
            return;
        };
        let retained = g.retained;
        let reason_string = g.reason.map(ByteString::from);
        let codes: Vec<u8> = g.codes.into_iter().flatten().collect();
        match (self.v5(), g.subscribe) {
            (false, true) => {
                let status = codes
                    .iter()
                    .map(|c| match QoS::try_from(*c) {
                        Ok(q) => v3::SubscribeReturnCode::Success(q),
                        Err(_) => v3::SubscribeReturnCode::Failure,
                    })
                    .collect();
                self.write_v3(v3::Packet::SubscribeAck { packet_id, status }, out);
            }
            (false, false) => self.write_v3(v3::Packet::UnsubscribeAck { packet_id }, out),
            (true, true) => {
                let status = codes
                    .iter()
                    .map(|c| {
                        v5::SubscribeAckReason::try_from(*c)
                            .unwrap_or(v5::SubscribeAckReason::UnspecifiedError)
                    })
                    .collect();
                self.write_v5(
                    v5::Packet::SubscribeAck(v5::SubscribeAck {
                        packet_id,
                        properties: Vec::new(),
                        reason_string,
                        status,
                    }),
                    out,
                );
            }
            (true, false) => {
                let status = codes
                    .iter()
                    .map(|c| {
                        v5::UnsubscribeAckReason::try_from(*c)
                            .unwrap_or(v5::UnsubscribeAckReason::UnspecifiedError)
                    })
                    .collect();
                self.write_v5(
                    v5::Packet::UnsubscribeAck(v5::UnsubscribeAck {
                        packet_id,
                        properties: Vec::new(),
                        reason_string: None,
                        status,
                    }),
                    out,
                );
            }
        }
        for (sub, m) in retained {
            if self.subs.contains_key(&sub) {
                self.write_publish(sub, None, 0, &m, out);
            }
        }
    }

    /// `selectors`: the SUBSCRIBE's `selector` user properties (MQTT 5); the one there may be
    /// selects for every filter of the packet.
    pub(super) fn on_subscribe(
        &mut self,
        packet_id: NonZeroU16,
        filters: Vec<(ByteString, QoS, bool)>,
        selectors: Vec<ByteString>,
    ) -> Inbound<Receipt> {
        if self.gathering.contains_key(&packet_id) {
            return self.fatal(
                reason::PROTOCOL_ERROR,
                format!("packet id {packet_id} is already in use by an unanswered SUBSCRIBE or UNSUBSCRIBE"),
            );
        }
        let mut g = Gathering {
            subscribe: true,
            codes: vec![None; filters.len()],
            subs: vec![None; filters.len()],
            retained: Vec::new(),
            reason: None,
        };
        let selector = match selectors.as_slice() {
            [] => String::new(),
            [one] => one.to_string(),
            _ => {
                g.reason = Some(format!(
                    "a SUBSCRIBE carries at most one `{SELECTOR_PROPERTY}` user property, this one has {}",
                    selectors.len()
                ));
                return self.refuse_every_filter(packet_id, g, reason::IMPLEMENTATION_SPECIFIC);
            }
        };
        // A selector that does not parse is refused by the broker (counted there), filter by
        // filter; the filters' earlier subscriptions stay as they were.
        let bad_selector = !selector.trim().is_empty() && Selector::parse(&selector).is_err();
        for (index, (filter, qos, no_local)) in filters.into_iter().enumerate() {
            let filter = filter.to_string();
            let receipt = Some(Receipt::SubAck { packet_id, index });
            let durable_name = self.persistent.then(|| session_sub_name(qos, &filter));
            let shared = share_queue(&filter);
            // A persistent session keeps a shared subscription by its name alone: a selector
            // on it would be lost when the session resumes, so it is refused.
            if self.persistent && shared.is_some() && !selector.trim().is_empty() {
                g.reason.get_or_insert_with(|| {
                    format!("{filter}: a persistent session cannot keep a selector on a shared subscription; subscribe in a clean session, or without a selector")
                });
                g.codes[index] = Some(reason::IMPLEMENTATION_SPECIFIC);
                self.pending.push_back(Request::Ping {
                    receipt: Receipt::SubAck { packet_id, index },
                });
                continue;
            }
            // Subscribing again to a filter replaces its subscription (MQTT 3.8.4); a durable
            // one of the same name is only detached, so what it kept is not lost (the broker
            // replaces it if its selector changed, as JMS does).
            let old = if bad_selector {
                None
            } else {
                self.by_filter.remove(&filter)
            };
            if let Some(old) = old {
                let same = self
                    .subs
                    .get(&old)
                    .is_some_and(|s| s.durable.is_some() && s.durable == durable_name);
                // A shared one kept at another QoS is kept at the new one once granted.
                if self.subs.get(&old).is_some_and(|s| s.qos != qos) {
                    self.keep_share(old, false);
                }
                self.forget_subscription(old);
                self.pending.push_back(Request::Unsubscribe {
                    subscription: old,
                    remove_durable: !same,
                    receipt: None,
                });
            }
            // A shared subscription reads its group's queue: not a durable subscription (the
            // session keeps its name once it is granted).
            let durable_name = durable_name.filter(|_| shared.is_none());
            let pattern = match shared.map_or_else(
                || filter_to_pattern(&filter).map_err(|e| e.to_string()),
                |q| {
                    q.map_err(|e| e.to_string()).and_then(|d| {
                        DestinationPattern::parse(d.as_str()).map_err(|e| e.to_string())
                    })
                },
            ) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(connection = %self.connection_id, error = %e, "MQTT subscription refused");
                    g.codes[index] = Some(reason::TOPIC_FILTER_INVALID);
                    self.pending.push_back(Request::Ping {
                        receipt: Receipt::SubAck { packet_id, index },
                    });
                    continue;
                }
            };
            let num = self.next_sub;
            self.next_sub += 1;
            self.subs.insert(
                num,
                Sub {
                    filter: filter.clone(),
                    qos,
                    durable: durable_name.clone(),
                    resumed: false,
                },
            );
            // Refused for its selector, it will not replace the filter's subscription.
            if !bad_selector {
                self.by_filter.insert(filter, num);
            }
            g.subs[index] = Some(num);
            self.pending.push_back(Request::Subscribe {
                spec: SubscribeSpec {
                    subscription: num,
                    destination: pattern,
                    selector: selector.clone(),
                    prefetch: self.prefetch,
                    priority: 0,
                    durable_name,
                    no_local,
                },
                receipt,
            });
        }
        self.gathering.insert(packet_id, g);
        self.next_pending()
    }

    pub(super) fn on_unsubscribe(
        &mut self,
        packet_id: NonZeroU16,
        filters: Vec<ByteString>,
    ) -> Inbound<Receipt> {
        if self.gathering.contains_key(&packet_id) {
            return self.fatal(
                reason::PROTOCOL_ERROR,
                format!("packet id {packet_id} is already in use by an unanswered SUBSCRIBE or UNSUBSCRIBE"),
            );
        }
        let mut g = Gathering {
            subscribe: false,
            codes: vec![None; filters.len()],
            subs: vec![None; filters.len()],
            retained: Vec::new(),
            reason: None,
        };
        for (index, filter) in filters.iter().enumerate() {
            let receipt = Receipt::UnsubAck { packet_id, index };
            match self.by_filter.remove(&filter.to_string()) {
                Some(num) => {
                    // An UNSUBSCRIBE ends a persistent session's subscription too.
                    self.keep_share(num, false);
                    self.forget_subscription(num);
                    self.pending.push_back(Request::Unsubscribe {
                        subscription: num,
                        remove_durable: true,
                        receipt: Some(receipt),
                    });
                }
                None => {
                    g.codes[index] = Some(reason::NO_SUBSCRIPTION_EXISTED);
                    self.pending.push_back(Request::Ping { receipt });
                }
            }
        }
        self.gathering.insert(packet_id, g);
        self.next_pending()
    }

    /// Answers every filter of a SUBSCRIBE with `code`, subscribing to none.
    fn refuse_every_filter(
        &mut self,
        packet_id: NonZeroU16,
        mut g: Gathering,
        code: u8,
    ) -> Inbound<Receipt> {
        for (index, slot) in g.codes.iter_mut().enumerate() {
            *slot = Some(code);
            self.pending.push_back(Request::Ping {
                receipt: Receipt::SubAck { packet_id, index },
            });
        }
        self.gathering.insert(packet_id, g);
        self.next_pending()
    }

    /// Forgets a subscription the client ended: its deliveries in flight need no more acks.
    pub(super) fn forget_subscription(&mut self, num: u64) {
        self.subs.remove(&num);
        self.inflight.retain(|_, o| o.subscription != num);
        let inflight = &self.inflight;
        self.keys.retain(|id, _| inflight.contains_key(id));
    }
}
