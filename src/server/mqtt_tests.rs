//! The MQTT codec on its own: client packets (written by rmqtt-codec as a client would) become
//! [`Request`]s, and deliveries and answers become packets a client decodes — round trips for
//! MQTT 3.1.1 and 5, every packet truncated at every byte, oversize and malformed lengths,
//! wildcards and bad UTF-8 in a PUBLISH, retained replays behind their SUBACK, wills, and
//! arbitrary bytes that must never panic.

use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use proptest::prelude::*;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::{v3, v5};
use tokio_util::codec::{Decoder, Encoder};

use super::super::conn::{Codec, Inbound};
use super::super::request::{Refusal, Request};
use super::topic::{filter_to_pattern, TopicError};
use super::{destination_to_topic, topic_to_destination, Mqtt, Receipt, Wire};
use crate::broker::{Delivery, Destination, Message, RETAIN_HEADER};
use crate::wire::proto::ErrorCode;

const MAX: u32 = 64 * 1024;

fn id(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).expect("non-zero")
}

fn codec(version5: bool) -> Mqtt {
    let wire = if version5 {
        Wire::V5(v5::Codec::new(MAX, 0))
    } else {
        Wire::V3(v3::Codec::new(MAX))
    };
    Mqtt::new(wire, "conn-1", 0)
}

fn v3_bytes(p: v3::Packet) -> Vec<u8> {
    let mut b = BytesMut::new();
    v3::Codec::new(0).encode(p, &mut b).expect("encode");
    b.to_vec()
}

fn v5_bytes(p: v5::Packet) -> Vec<u8> {
    let mut b = BytesMut::new();
    v5::Codec::new(0, 0).encode(p, &mut b).expect("encode");
    b.to_vec()
}

fn publish(topic: &str, qos: QoS, packet_id: Option<u16>, v5props: bool) -> Publish {
    Publish {
        dup: false,
        retain: false,
        qos,
        topic: ByteString::from(topic),
        packet_id: packet_id.map(id),
        payload: Bytes::from_static(b"21.5"),
        properties: v5props.then(v5::PublishProperties::default),
    }
}

/// Every request the bytes carry, in order; panics on a decode error.
fn requests(c: &mut Mqtt, bytes: &[u8]) -> Vec<Request<Receipt>> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    loop {
        match c.decode(&mut buf) {
            Ok(Inbound::Request(r)) => out.push(r),
            Ok(Inbound::Alive) => {}
            Ok(Inbound::NeedMore) => return out,
            Err(e) => panic!("decode failed: {e:?}"),
        }
    }
}

fn one(c: &mut Mqtt, bytes: &[u8]) -> Request<Receipt> {
    let mut r = requests(c, bytes);
    assert_eq!(r.len(), 1, "{r:?}");
    r.remove(0)
}

fn v3_replies(out: &BytesMut) -> Vec<v3::Packet> {
    let mut buf = out.clone();
    let mut c = v3::Codec::new(0);
    let mut replies = Vec::new();
    while let Some((p, _)) = c.decode(&mut buf).expect("our packets decode") {
        replies.push(p);
    }
    assert!(buf.is_empty(), "trailing bytes after our packets");
    replies
}

fn v5_replies(out: &BytesMut) -> Vec<v5::Packet> {
    let mut buf = out.clone();
    let mut c = v5::Codec::new(0, 0);
    let mut replies = Vec::new();
    while let Some((p, _)) = c.decode(&mut buf).expect("our packets decode") {
        replies.push(p);
    }
    assert!(buf.is_empty(), "trailing bytes after our packets");
    replies
}

/// Subscribes to one filter and answers it as the connection would; returns the subscription.
fn subscribed(c: &mut Mqtt, version5: bool, filter: &str, qos: QoS) -> u64 {
    let bytes = if version5 {
        v5_bytes(v5::Packet::Subscribe(v5::Subscribe {
            packet_id: id(1),
            id: None,
            user_properties: Vec::new(),
            topic_filters: vec![(
                ByteString::from(filter),
                v5::SubscriptionOptions {
                    qos,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: v5::RetainHandling::AtSubscribe,
                },
            )],
        }))
    } else {
        v3_bytes(v3::Packet::Subscribe {
            packet_id: id(1),
            topic_filters: vec![(ByteString::from(filter), qos)],
        })
    };
    match one(c, &bytes) {
        Request::Subscribe { spec, receipt } => {
            let mut out = BytesMut::new();
            c.encode_receipt(&receipt.expect("a SUBACK is owed"), &mut out);
            spec.subscription
        }
        other => panic!("not a subscribe: {other:?}"),
    }
}

fn delivery(subscription: u64, tag: u64, topic: &str, persistent: bool) -> Delivery {
    Delivery {
        subscription,
        tag,
        redelivery_count: 0,
        message: Arc::new(Message {
            destination: Some(Destination::parse(topic).expect("topic")),
            body: Bytes::from_static(b"payload"),
            persistent,
            headers: vec![("unit".into(), "celsius".into())],
            ..Message::default()
        }),
    }
}

#[test]
fn topics_map_as_activemq_does_both_ways() {
    let d = topic_to_destination("sensors/a/temp").expect("topic");
    assert_eq!(d.as_str(), "topic://sensors.a.temp");
    assert_eq!(destination_to_topic(&d), "sensors/a/temp");
    // A dot inside an MQTT level survives the trip as a slash inside a meshmq segment.
    let dotted = topic_to_destination("v1.2/x").expect("topic");
    assert_eq!(dotted.as_str(), "topic://v1/2.x");
    assert_eq!(destination_to_topic(&dotted), "v1.2/x");
    let p = filter_to_pattern("sensors/+/temp").expect("filter");
    assert_eq!(p.as_str(), "topic://sensors.*.temp");
    assert!(p.matches(&Destination::parse("topic://sensors.a.temp").expect("d")));
    assert_eq!(
        filter_to_pattern("sensors/#").expect("filter").as_str(),
        "topic://sensors.>"
    );
    assert_eq!(
        filter_to_pattern("#").expect("filter").as_str(),
        "topic://>"
    );
    assert!(matches!(
        topic_to_destination("sensors/+/temp"),
        Err(TopicError::Wildcard(_))
    ));
    assert!(matches!(
        topic_to_destination("a/#"),
        Err(TopicError::Wildcard(_))
    ));
    assert!(matches!(
        filter_to_pattern("a/b#"),
        Err(TopicError::BadFilter(_))
    ));
    assert!(matches!(
        filter_to_pattern("a/#/b"),
        Err(TopicError::BadFilter(_))
    ));
    assert!(matches!(
        topic_to_destination("a/*"),
        Err(TopicError::MeshmqWildcard(_))
    ));
    assert!(matches!(
        topic_to_destination("a//b"),
        Err(TopicError::Destination(..))
    ));
}

#[test]
fn a_publish_becomes_a_send_at_its_qos_and_a_qos1_receipt_is_its_puback() {
    for version5 in [false, true] {
        let mut c = codec(version5);
        let bytes = |p: Publish| {
            if version5 {
                v5_bytes(v5::Packet::Publish(Box::new(p)))
            } else {
                v3_bytes(v3::Packet::Publish(Box::new(p)))
            }
        };
        let q0 = one(
            &mut c,
            &bytes(publish("sensors/a/temp", QoS::AtMostOnce, None, version5)),
        );
        let Request::Send(s) = q0 else {
            panic!("not a send: {q0:?}")
        };
        assert_eq!(s.destination.as_str(), "topic://sensors.a.temp");
        assert!(!s.draft.persistent, "QoS 0 is a non-persistent send");
        assert_eq!(s.receipt, None);
        assert_eq!(&s.draft.body[..], b"21.5");
        let q1 = one(
            &mut c,
            &bytes(publish(
                "sensors/a/temp",
                QoS::AtLeastOnce,
                Some(7),
                version5,
            )),
        );
        let Request::Send(s) = q1 else {
            panic!("not a send: {q1:?}")
        };
        assert!(s.draft.persistent, "QoS 1 is a persistent send");
        assert_eq!(s.receipt, Some(Receipt::PubAck(id(7))));
        let mut out = BytesMut::new();
        c.encode_receipt(&Receipt::PubAck(id(7)), &mut out);
        if version5 {
            assert!(matches!(
                &v5_replies(&out)[..],
                [v5::Packet::PublishAck(a)] if a.packet_id == id(7) && a.reason_code == v5::PublishAckReason::Success
            ));
        } else {
            assert_eq!(
                v3_replies(&out),
                vec![v3::Packet::PublishAck { packet_id: id(7) }]
            );
        }
    }
}

#[test]
fn mqtt5_properties_become_the_message_headers_expiry_and_content_type() {
    let mut c = codec(true);
    let mut p = publish("a/b", QoS::AtLeastOnce, Some(3), true);
    p.properties = Some(v5::PublishProperties {
        user_properties: vec![(ByteString::from("site"), ByteString::from("north"))],
        message_expiry_interval: NonZeroU32::new(60),
        content_type: Some(ByteString::from("text/plain")),
        correlation_data: Some(Bytes::from_static(b"corr-1")),
        response_topic: Some(ByteString::from("replies/a")),
        ..v5::PublishProperties::default()
    });
    let r = one(&mut c, &v5_bytes(v5::Packet::Publish(Box::new(p))));
    let Request::Send(s) = r else {
        panic!("not a send: {r:?}")
    };
    assert_eq!(s.draft.headers, vec![("site".into(), "north".into())]);
    assert_eq!(s.draft.content_type, "text/plain");
    assert_eq!(s.draft.correlation_id, "corr-1");
    assert_eq!(s.draft.reply_to, "topic://replies.a");
    let now = crate::broker::now_ms();
    assert!(
        s.draft.expires_at_ms > now + 50_000 && s.draft.expires_at_ms <= now + 60_000,
        "expiry {} is not a minute from {now}",
        s.draft.expires_at_ms
    );
}

#[test]
fn a_subscribe_of_several_filters_is_one_request_each_and_one_suback_at_the_end() {
    for version5 in [false, true] {
        let mut c = codec(version5);
        let filters = [
            ("sensors/+/temp", QoS::AtLeastOnce),
            ("bad/#/x", QoS::AtMostOnce),
            ("a/#", QoS::ExactlyOnce),
        ];
        let bytes = if version5 {
            v5_bytes(v5::Packet::Subscribe(v5::Subscribe {
                packet_id: id(9),
                id: None,
                user_properties: Vec::new(),
                topic_filters: filters
                    .iter()
                    .map(|(f, q)| {
                        (
                            ByteString::from(*f),
                            v5::SubscriptionOptions {
                                qos: *q,
                                no_local: false,
                                retain_as_published: false,
                                retain_handling: v5::RetainHandling::AtSubscribe,
                            },
                        )
                    })
                    .collect(),
            }))
        } else {
            v3_bytes(v3::Packet::Subscribe {
                packet_id: id(9),
                topic_filters: filters
                    .iter()
                    .map(|(f, q)| (ByteString::from(*f), *q))
                    .collect(),
            })
        };
        let rs = requests(&mut c, &bytes);
        assert_eq!(rs.len(), 3, "{rs:?}");
        let mut out = BytesMut::new();
        match &rs[0] {
            Request::Subscribe { spec, receipt } => {
                assert_eq!(spec.destination.as_str(), "topic://sensors.*.temp");
                c.encode_receipt(receipt.as_ref().expect("receipt"), &mut out);
            }
            other => panic!("{other:?}"),
        }
        match &rs[1] {
            Request::Ping { receipt } => c.encode_receipt(receipt, &mut out),
            other => panic!("a bad filter is answered, not subscribed: {other:?}"),
        }
        assert!(out.is_empty(), "the SUBACK waits for every filter");
        match &rs[2] {
            Request::Subscribe { spec, receipt } => {
                assert_eq!(spec.destination.as_str(), "topic://a.>");
                let closes = c.encode_error(
                    ErrorCode::Forbidden,
                    "no read right",
                    receipt.as_ref(),
                    false,
                    &mut out,
                );
                assert!(!closes, "a refused filter is a SUBACK code, not a close");
            }
            other => panic!("{other:?}"),
        }
        if version5 {
            let replies = v5_replies(&out);
            let [v5::Packet::SubscribeAck(ack)] = &replies[..] else {
                panic!("{replies:?}")
            };
            assert_eq!(ack.packet_id, id(9));
            assert_eq!(
                ack.status,
                vec![
                    v5::SubscribeAckReason::GrantedQos1,
                    v5::SubscribeAckReason::TopicFilterInvalid,
                    v5::SubscribeAckReason::NotAuthorized
                ]
            );
        } else {
            assert_eq!(
                v3_replies(&out),
                vec![v3::Packet::SubscribeAck {
                    packet_id: id(9),
                    status: vec![
                        v3::SubscribeReturnCode::Success(QoS::AtLeastOnce),
                        v3::SubscribeReturnCode::Failure,
                        v3::SubscribeReturnCode::Failure
                    ]
                }]
            );
        }
        // The refused filter left nothing behind: unsubscribing it says there was none.
        let unsub = v3_or_v5_unsubscribe(version5, "a/#");
        match one(&mut c, &unsub) {
            Request::Ping { .. } => {}
            other => panic!("{other:?}"),
        }
    }
}

fn v3_or_v5_unsubscribe(version5: bool, filter: &str) -> Vec<u8> {
    if version5 {
        v5_bytes(v5::Packet::Unsubscribe(v5::Unsubscribe {
            packet_id: id(11),
            user_properties: Vec::new(),
            topic_filters: vec![ByteString::from(filter)],
        }))
    } else {
        v3_bytes(v3::Packet::Unsubscribe {
            packet_id: id(11),
            topic_filters: vec![ByteString::from(filter)],
        })
    }
}

/// An MQTT 5 SUBSCRIBE of `filters` at QoS 1 with `selectors` as `selector` user properties.
fn v5_subscribe_selecting(packet_id: u16, filters: &[&str], selectors: &[&str]) -> Vec<u8> {
    v5_bytes(v5::Packet::Subscribe(v5::Subscribe {
        packet_id: id(packet_id),
        id: None,
        user_properties: selectors
            .iter()
            .map(|s| (ByteString::from("selector"), ByteString::from(*s)))
            .chain([(ByteString::from("other"), ByteString::from("x"))])
            .collect(),
        topic_filters: filters
            .iter()
            .map(|f| {
                (
                    ByteString::from(*f),
                    v5::SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: v5::RetainHandling::AtSubscribe,
                    },
                )
            })
            .collect(),
    }))
}

/// The one SUBACK in `out`: its reason codes and reason string.
fn v5_suback(out: &BytesMut) -> (Vec<u8>, Option<String>) {
    let replies = v5_replies(out);
    let [v5::Packet::SubscribeAck(ack)] = &replies[..] else {
        panic!("{replies:?}")
    };
    (
        ack.status.iter().map(|r| u8::from(*r)).collect(),
        ack.reason_string.as_ref().map(|r| r.to_string()),
    )
}

#[test]
fn an_mqtt5_selector_property_selects_for_every_filter_and_a_bad_one_replaces_nothing() {
    let mut c = codec(true);
    let plain = subscribed(&mut c, true, "sensors/#", QoS::AtLeastOnce);

    // One `selector` property: every filter's subscription carries it, and the filter already
    // subscribed is replaced.
    let rs = requests(
        &mut c,
        &v5_subscribe_selecting(2, &["sensors/#", "$share/g/plant/#"], &["kind = 'hot'"]),
    );
    let mut out = BytesMut::new();
    let mut selecting = Vec::new();
    for r in &rs {
        match r {
            Request::Unsubscribe { subscription, .. } => assert_eq!(*subscription, plain),
            Request::Subscribe { spec, receipt } => {
                assert_eq!(spec.selector, "kind = 'hot'");
                selecting.push(spec.subscription);
                c.encode_receipt(receipt.as_ref().expect("receipt"), &mut out);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(rs.len(), 3, "{rs:?}");
    assert_eq!(v5_suback(&out).0, vec![1, 1]);

    // A selector that does not parse goes to the broker (which refuses and counts it) and
    // does not end the filter's subscription; the SUBACK says 0x83 with the broker's reason.
    let rs = requests(
        &mut c,
        &v5_subscribe_selecting(3, &["sensors/#"], &["kind = = 'x'"]),
    );
    let [Request::Subscribe { spec, receipt }] = &rs[..] else {
        panic!("only the refused subscription, no unsubscribe: {rs:?}")
    };
    assert_eq!(spec.selector, "kind = = 'x'");
    let mut out = BytesMut::new();
    let closes = c.encode_error(
        ErrorCode::Invalid,
        "topic://sensors.>: bad selector",
        receipt.as_ref(),
        false,
        &mut out,
    );
    assert!(!closes, "a bad selector is a SUBACK code, not a close");
    assert_eq!(
        v5_suback(&out),
        (
            vec![0x83],
            Some("topic://sensors.>: bad selector".to_string())
        )
    );
    match one(&mut c, &v3_or_v5_unsubscribe(true, "sensors/#")) {
        Request::Unsubscribe { subscription, .. } => assert_eq!(subscription, selecting[0]),
        other => panic!("the selecting subscription is still there: {other:?}"),
    }

    // Two `selector` properties are ambiguous: every filter is refused, nothing subscribed.
    let rs = requests(
        &mut c,
        &v5_subscribe_selecting(4, &["a/#", "b/#"], &["x = 1", "y = 2"]),
    );
    let mut out = BytesMut::new();
    for r in &rs {
        match r {
            Request::Ping { receipt } => c.encode_receipt(receipt, &mut out),
            other => panic!("nothing is subscribed: {other:?}"),
        }
    }
    let (codes, why) = v5_suback(&out);
    assert_eq!(codes, vec![0x83, 0x83]);
    assert!(why.is_some_and(|w| w.contains("at most one")));

    // Without the property (and in MQTT 3, which has no properties) there is no selector.
    let rs = requests(&mut c, &v5_subscribe_selecting(5, &["c/#"], &[]));
    let [Request::Subscribe { spec, .. }] = &rs[..] else {
        panic!("{rs:?}")
    };
    assert_eq!(spec.selector, "");
}

#[test]
fn a_persistent_session_refuses_a_selector_on_a_shared_subscription_it_could_not_keep() {
    let mut c = codec(true);
    c.persistent = true;
    let rs = requests(
        &mut c,
        &v5_subscribe_selecting(2, &["$share/g/plant/#", "plant/#"], &["kind = 'hot'"]),
    );
    let mut out = BytesMut::new();
    for r in &rs {
        match r {
            Request::Ping { receipt } => c.encode_receipt(receipt, &mut out),
            Request::Subscribe { spec, receipt } => {
                assert_eq!(spec.durable_name.as_deref(), Some("mqtt:1:plant/#"));
                assert_eq!(spec.selector, "kind = 'hot'");
                c.encode_receipt(receipt.as_ref().expect("receipt"), &mut out);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(rs.len(), 2, "{rs:?}");
    let (codes, why) = v5_suback(&out);
    assert_eq!(codes, vec![0x83, 1]);
    assert!(why.is_some_and(|w| w.contains("shared subscription")));
}

#[test]
fn deliveries_go_out_at_the_subscription_qos_and_a_puback_acknowledges_them() {
    for version5 in [false, true] {
        let mut c = codec(version5);
        let sub = subscribed(&mut c, version5, "sensors/+/temp", QoS::AtLeastOnce);
        let mut out = BytesMut::new();
        let acked_on_write =
            c.encode_delivery(&delivery(sub, 42, "topic://sensors.a.temp", true), &mut out);
        assert!(!acked_on_write, "a QoS 1 delivery waits for its PUBACK");
        let publish = if version5 {
            let replies = v5_replies(&out);
            let [v5::Packet::Publish(p)] = &replies[..] else {
                panic!("{replies:?}")
            };
            let props = p.properties.clone().expect("MQTT 5 properties");
            assert_eq!(
                props.user_properties,
                vec![(ByteString::from("unit"), ByteString::from("celsius"))]
            );
            (**p).clone()
        } else {
            let replies = v3_replies(&out);
            let [v3::Packet::Publish(p)] = &replies[..] else {
                panic!("{replies:?}")
            };
            (**p).clone()
        };
        assert_eq!(&publish.topic[..], "sensors/a/temp");
        assert_eq!(publish.qos, QoS::AtLeastOnce);
        let packet_id = publish.packet_id.expect("a QoS 1 delivery has a packet id");
        let puback = if version5 {
            v5_bytes(v5::Packet::PublishAck(v5::PublishAck {
                packet_id,
                ..v5::PublishAck::default()
            }))
        } else {
            v3_bytes(v3::Packet::PublishAck { packet_id })
        };
        match one(&mut c, &puback) {
            Request::Ack {
                subscription,
                up_to: 0,
                tags,
                transaction: None,
                receipt: None,
            } => {
                assert_eq!((subscription, tags), (sub, vec![42]));
            }
            other => panic!("{other:?}"),
        }
        // A second PUBACK of the same id acknowledges nothing more.
        assert!(requests(&mut c, &puback).is_empty());
        // A message published at QoS 0 (non-persistent) never goes out above QoS 0.
        let mut out = BytesMut::new();
        assert!(
            c.encode_delivery(
                &delivery(sub, 43, "topic://sensors.b.temp", false),
                &mut out
            ),
            "a QoS 0 delivery is acknowledged as it is written"
        );
        let qos = if version5 {
            match &v5_replies(&out)[..] {
                [v5::Packet::Publish(p)] => p.qos,
                other => panic!("{other:?}"),
            }
        } else {
            match &v3_replies(&out)[..] {
                [v3::Packet::Publish(p)] => p.qos,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(qos, QoS::AtMostOnce);
    }
}

#[test]
fn a_qos2_publish_is_taken_once_however_often_it_is_resent_before_its_release() {
    let mut c = codec(false);
    let mut p = publish("a/b", QoS::ExactlyOnce, Some(5), false);
    let first = one(&mut c, &v3_bytes(v3::Packet::Publish(Box::new(p.clone()))));
    assert!(
        matches!(&first, Request::Send(s) if s.receipt == Some(Receipt::PubRec(id(5)))),
        "{first:?}"
    );
    p.dup = true;
    let resent = one(&mut c, &v3_bytes(v3::Packet::Publish(Box::new(p.clone()))));
    assert!(
        matches!(resent, Request::Ping { receipt: Receipt::PubRec(i) } if i == id(5)),
        "a resend before PUBREL is answered, not published again: {resent:?}"
    );
    let rel = one(
        &mut c,
        &v3_bytes(v3::Packet::PublishRelease { packet_id: id(5) }),
    );
    let Request::Ping { receipt } = rel else {
        panic!("{rel:?}")
    };
    let mut out = BytesMut::new();
    c.encode_receipt(&receipt, &mut out);
    assert_eq!(
        v3_replies(&out),
        vec![v3::Packet::PublishComplete { packet_id: id(5) }]
    );
    // Released: the id is free for a new message.
    p.dup = false;
    let again = one(&mut c, &v3_bytes(v3::Packet::Publish(Box::new(p))));
    assert!(matches!(again, Request::Send(_)), "{again:?}");
}

#[test]
fn a_qos2_delivery_is_acknowledged_at_pubrec_and_answered_with_pubrel() {
    let mut c = codec(true);
    let sub = subscribed(&mut c, true, "a/#", QoS::ExactlyOnce);
    let mut out = BytesMut::new();
    assert!(!c.encode_delivery(&delivery(sub, 7, "topic://a.b", true), &mut out));
    let packet_id = match &v5_replies(&out)[..] {
        [v5::Packet::Publish(p)] if p.qos == QoS::ExactlyOnce => p.packet_id.expect("id"),
        other => panic!("{other:?}"),
    };
    let pubrec = v5_bytes(v5::Packet::PublishReceived(v5::PublishAck {
        packet_id,
        ..v5::PublishAck::default()
    }));
    let receipt = match one(&mut c, &pubrec) {
        Request::Ack {
            subscription,
            tags,
            receipt: Some(r),
            ..
        } => {
            assert_eq!((subscription, tags), (sub, vec![7]));
            r
        }
        other => panic!("{other:?}"),
    };
    let mut out = BytesMut::new();
    c.encode_receipt(&receipt, &mut out);
    assert!(matches!(
        &v5_replies(&out)[..],
        [v5::Packet::PublishRelease(a)] if a.packet_id == packet_id
    ));
    // A resent PUBREC is answered again but acknowledges nothing twice.
    assert!(matches!(
        one(&mut c, &pubrec),
        Request::Ping {
            receipt: Receipt::PubRel(_)
        }
    ));
    let pubcomp = v5_bytes(v5::Packet::PublishComplete(v5::PublishAck2 {
        packet_id,
        reason_code: v5::PublishAck2Reason::Success,
        properties: Vec::new(),
        reason_string: None,
    }));
    assert!(requests(&mut c, &pubcomp).is_empty());
}

/// One of each packet a client sends, in both versions.
fn client_packets() -> Vec<(bool, Vec<u8>)> {
    let mut with_props = publish("sensors/a/temp", QoS::ExactlyOnce, Some(300), true);
    with_props.properties = Some(v5::PublishProperties {
        user_properties: vec![(ByteString::from("k"), ByteString::from("v"))],
        message_expiry_interval: NonZeroU32::new(10),
        ..v5::PublishProperties::default()
    });
    vec![
        (
            false,
            v3_bytes(v3::Packet::Publish(Box::new(publish(
                "a/b",
                QoS::AtMostOnce,
                None,
                false,
            )))),
        ),
        (
            false,
            v3_bytes(v3::Packet::Publish(Box::new(publish(
                "a/b",
                QoS::AtLeastOnce,
                Some(1),
                false,
            )))),
        ),
        (false, v3_bytes(v3::Packet::PublishAck { packet_id: id(2) })),
        (
            false,
            v3_bytes(v3::Packet::PublishReceived { packet_id: id(3) }),
        ),
        (
            false,
            v3_bytes(v3::Packet::PublishRelease { packet_id: id(4) }),
        ),
        (
            false,
            v3_bytes(v3::Packet::PublishComplete { packet_id: id(5) }),
        ),
        (
            false,
            v3_bytes(v3::Packet::Subscribe {
                packet_id: id(6),
                topic_filters: vec![
                    (ByteString::from("a/+"), QoS::AtLeastOnce),
                    (ByteString::from("b/#"), QoS::AtMostOnce),
                ],
            }),
        ),
        (false, v3_or_v5_unsubscribe(false, "a/+")),
        (false, v3_bytes(v3::Packet::PingRequest)),
        (false, v3_bytes(v3::Packet::Disconnect)),
        (true, v5_bytes(v5::Packet::Publish(Box::new(with_props)))),
        (
            true,
            v5_bytes(v5::Packet::PublishAck(v5::PublishAck {
                packet_id: id(2),
                ..v5::PublishAck::default()
            })),
        ),
        (true, v3_or_v5_unsubscribe(true, "a/+")),
        (true, v5_bytes(v5::Packet::PingRequest)),
        (
            true,
            v5_bytes(v5::Packet::Disconnect(v5::Disconnect::default())),
        ),
    ]
}

#[test]
fn every_packet_truncated_at_every_byte_needs_more_and_whole_decodes_once() {
    for (version5, bytes) in client_packets() {
        for cut in 0..bytes.len() {
            let mut c = codec(version5);
            let mut buf = BytesMut::from(&bytes[..cut]);
            match c.decode(&mut buf) {
                Ok(Inbound::NeedMore) => {}
                Ok(Inbound::Request(r)) => {
                    panic!("{cut} of {} bytes decoded as {r:?}", bytes.len())
                }
                Ok(Inbound::Alive) => panic!("{cut} of {} bytes decoded", bytes.len()),
                Err(e) => panic!("{cut} of {} bytes: {e:?}", bytes.len()),
            }
        }
        // Fed one byte at a time to one codec: nothing until the last byte, then the packet.
        let mut c = codec(version5);
        let mut buf = BytesMut::new();
        for (i, b) in bytes.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let r = c.decode(&mut buf).expect("a valid packet decodes");
            if i + 1 < bytes.len() {
                assert!(matches!(r, Inbound::NeedMore), "early at byte {i}");
            } else {
                assert!(!matches!(r, Inbound::NeedMore), "the whole packet decodes");
            }
        }
    }
}

#[test]
fn an_oversize_packet_is_refused_from_its_header_before_its_body() {
    for version5 in [false, true] {
        let mut c = codec(version5);
        // PUBLISH announcing 100,000 bytes (over the 64 KiB limit); no body sent.
        let mut buf = BytesMut::from(&[0x30u8, 0xA0, 0x8D, 0x06][..]);
        match c.decode(&mut buf) {
            Err((ErrorCode::FrameTooLarge, message)) => assert!(message.contains("size")),
            other => panic!("{:?}", other.map(|_| ())),
        }
        let mut out = BytesMut::new();
        assert!(c.encode_error(ErrorCode::FrameTooLarge, "too large", None, true, &mut out));
        if version5 {
            assert!(matches!(
                &v5_replies(&out)[..],
                [v5::Packet::Disconnect(d)] if d.reason_code == v5::DisconnectReasonCode::PacketTooLarge
            ));
        } else {
            assert!(out.is_empty(), "MQTT 3 has no DISCONNECT from the server");
        }
    }
}

#[test]
fn a_remaining_length_of_five_bytes_is_malformed() {
    let mut c = codec(true);
    let mut buf = BytesMut::from(&[0x30u8, 0xFF, 0xFF, 0xFF, 0xFF, 0x01][..]);
    assert!(matches!(c.decode(&mut buf), Err((ErrorCode::BadFrame, _))));
    let mut out = BytesMut::new();
    assert!(c.encode_error(ErrorCode::BadFrame, "bad", None, true, &mut out));
    assert!(matches!(
        &v5_replies(&out)[..],
        [v5::Packet::Disconnect(d)] if d.reason_code == v5::DisconnectReasonCode::MalformedPacket
    ));
}

#[test]
fn a_wildcard_in_a_publish_topic_closes_the_connection_as_topic_name_invalid() {
    for version5 in [false, true] {
        let mut c = codec(version5);
        let p = publish("sensors/+/temp", QoS::AtLeastOnce, Some(1), version5);
        let bytes = if version5 {
            v5_bytes(v5::Packet::Publish(Box::new(p)))
        } else {
            v3_bytes(v3::Packet::Publish(Box::new(p)))
        };
        let r = one(&mut c, &bytes);
        let Request::Refuse {
            refusal:
                Refusal::BadFrame {
                    code,
                    message,
                    fatal: true,
                },
            receipt: None,
        } = r
        else {
            panic!("not a fatal bad frame: {r:?}")
        };
        assert!(message.contains("wildcard"), "{message}");
        let mut out = BytesMut::new();
        assert!(c.encode_error(code, &message, None, true, &mut out));
        if version5 {
            assert!(matches!(
                &v5_replies(&out)[..],
                [v5::Packet::Disconnect(d)] if d.reason_code == v5::DisconnectReasonCode::TopicNameInvalid
            ));
        } else {
            assert!(out.is_empty());
        }
    }
}

#[test]
fn a_topic_that_is_not_utf8_is_malformed() {
    for version5 in [false, true] {
        let mut c = codec(version5);
        // PUBLISH QoS 0, topic of two bytes that are not UTF-8, then "x" (and MQTT 5's empty
        // property length).
        let mut bytes = vec![0x30u8, 0x00, 0x00, 0x02, 0xC3, 0x28];
        if version5 {
            bytes.push(0x00);
        }
        bytes.push(b'x');
        bytes[1] = (bytes.len() - 2) as u8;
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(matches!(c.decode(&mut buf), Err((ErrorCode::BadFrame, _))));
        let mut out = BytesMut::new();
        assert!(c.encode_error(ErrorCode::BadFrame, "bad", None, true, &mut out));
        if version5 {
            assert!(matches!(
                &v5_replies(&out)[..],
                [v5::Packet::Disconnect(d)] if d.reason_code == v5::DisconnectReasonCode::MalformedPacket
            ));
        }
    }
}

#[test]
fn a_refused_qos1_publish_is_a_puback_reason_in_mqtt5_and_a_close_in_mqtt3() {
    let mut c5 = codec(true);
    let mut out = BytesMut::new();
    let closes = c5.encode_error(
        ErrorCode::Forbidden,
        "no write right",
        Some(&Receipt::PubAck(id(8))),
        false,
        &mut out,
    );
    assert!(!closes);
    assert!(matches!(
        &v5_replies(&out)[..],
        [v5::Packet::PublishAck(a)] if a.packet_id == id(8) && a.reason_code == v5::PublishAckReason::NotAuthorized
    ));
    let mut c3 = codec(false);
    let mut out = BytesMut::new();
    assert!(c3.encode_error(
        ErrorCode::Forbidden,
        "no write right",
        Some(&Receipt::PubAck(id(8))),
        false,
        &mut out
    ));
    assert!(
        out.is_empty(),
        "MQTT 3 cannot refuse a publish but by closing"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(
        version5 in any::<bool>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut c = codec(version5);
        let mut buf = BytesMut::from(&bytes[..]);
        for _ in 0..400 {
            match c.decode(&mut buf) {
                Ok(Inbound::NeedMore) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

#[test]
fn a_retain_flag_becomes_the_retain_header_and_a_clients_own_header_does_not() {
    let mut c = codec(true);
    let mut p = publish("status/boiler", QoS::AtLeastOnce, Some(1), true);
    p.retain = true;
    let r = one(&mut c, &v5_bytes(v5::Packet::Publish(Box::new(p.clone()))));
    let Request::Send(s) = r else { panic!("{r:?}") };
    assert!(s
        .draft
        .headers
        .contains(&(RETAIN_HEADER.to_string(), "true".to_string())));
    p.retain = false;
    p.packet_id = Some(id(2));
    p.properties = Some(v5::PublishProperties {
        user_properties: vec![(ByteString::from(RETAIN_HEADER), ByteString::from("true"))],
        ..v5::PublishProperties::default()
    });
    let r = one(&mut c, &v5_bytes(v5::Packet::Publish(Box::new(p))));
    let Request::Send(s) = r else { panic!("{r:?}") };
    assert!(
        s.draft.headers.iter().all(|(k, _)| k != RETAIN_HEADER),
        "only the retain flag retains: {:?}",
        s.draft.headers
    );
}

#[test]
fn retained_messages_follow_the_suback_flagged_and_need_no_acknowledgement() {
    let mut c = codec(false);
    let bytes = v3_bytes(v3::Packet::Subscribe {
        packet_id: id(9),
        topic_filters: vec![
            (ByteString::from("status/#"), QoS::AtLeastOnce),
            (ByteString::from("other/+"), QoS::AtMostOnce),
        ],
    });
    let rs = requests(&mut c, &bytes);
    let mut out = BytesMut::new();
    let (Request::Subscribe { spec, receipt }, Request::Subscribe { receipt: last, .. }) =
        (&rs[0], &rs[1])
    else {
        panic!("{rs:?}")
    };
    c.encode_receipt(receipt.as_ref().expect("receipt"), &mut out);
    let mut retained = delivery(0, 0, "topic://status.boiler", true).message;
    Arc::get_mut(&mut retained).expect("unshared").headers =
        vec![(RETAIN_HEADER.to_string(), "true".to_string())];
    c.encode_retained(spec.subscription, &[retained.clone()], &mut out);
    assert!(out.is_empty(), "nothing goes out before the SUBACK");
    c.encode_receipt(last.as_ref().expect("receipt"), &mut out);
    let replies = v3_replies(&out);
    let [v3::Packet::SubscribeAck { .. }, v3::Packet::Publish(p)] = &replies[..] else {
        panic!("the SUBACK, then the retained message: {replies:?}")
    };
    assert!(p.retain, "a retained replay is flagged retained");
    assert_eq!((&p.topic[..], p.qos), ("status/boiler", QoS::AtLeastOnce));
    let puback = v3_bytes(v3::Packet::PublishAck {
        packet_id: p.packet_id.expect("QoS 1"),
    });
    assert!(
        requests(&mut c, &puback).is_empty(),
        "a retained replay is not a delivery the broker waits for"
    );
    // A live delivery of the same message is not flagged, and MQTT 5 does not see the header.
    let mut c5 = codec(true);
    let sub = subscribed(&mut c5, true, "status/#", QoS::AtMostOnce);
    let mut out = BytesMut::new();
    let live = Delivery {
        subscription: sub,
        tag: 1,
        redelivery_count: 0,
        message: retained,
    };
    c5.encode_delivery(&live, &mut out);
    match &v5_replies(&out)[..] {
        [v5::Packet::Publish(p)] => {
            assert!(!p.retain);
            let props = p.properties.clone().expect("properties");
            assert!(props
                .user_properties
                .iter()
                .all(|(k, _)| &**k != RETAIN_HEADER));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_will_is_asked_for_unless_the_client_said_goodbye() {
    let will = || Publish {
        dup: false,
        retain: false,
        qos: QoS::AtLeastOnce,
        topic: ByteString::from("wills/dev-1"),
        packet_id: None,
        payload: Bytes::from_static(b"gone"),
        properties: Some(v5::PublishProperties::default()),
    };
    let disconnect = |reason| {
        v5_bytes(v5::Packet::Disconnect(v5::Disconnect {
            reason_code: reason,
            ..v5::Disconnect::default()
        }))
    };
    // Vanished: the will goes out, once.
    let mut c = codec(true);
    c.set_will(will());
    match c.farewell() {
        Some(Request::Send(s)) => {
            assert_eq!(s.destination.as_str(), "topic://wills.dev-1");
            assert!(s.draft.persistent);
            assert_eq!(&s.draft.body[..], b"gone");
        }
        other => panic!("{other:?}"),
    }
    assert!(c.farewell().is_none(), "asked once");
    // A plain DISCONNECT: no will.
    let mut c = codec(true);
    c.set_will(will());
    let r = one(
        &mut c,
        &disconnect(v5::DisconnectReasonCode::NormalDisconnection),
    );
    assert!(matches!(r, Request::Disconnect { .. }), "{r:?}");
    assert!(c.farewell().is_none());
    // MQTT 5's "disconnect with will message": the will all the same.
    let mut c = codec(true);
    c.set_will(will());
    one(
        &mut c,
        &disconnect(v5::DisconnectReasonCode::DisconnectWithWillMessage),
    );
    assert!(matches!(c.farewell(), Some(Request::Send(_))));
}

#[test]
fn a_persistent_sessions_filters_are_durable_subscriptions_resumed_without_suback_or_retained() {
    use super::{parse_session_sub_name, session_sub_name};
    // The name keeps the QoS and the whole filter (colons in it too).
    for (qos, filter) in [
        (QoS::AtLeastOnce, "plant/+/temp"),
        (QoS::ExactlyOnce, "a:b/#"),
    ] {
        let name = session_sub_name(qos, filter);
        assert!(name.starts_with("mqtt:"), "{name}");
        assert_eq!(
            parse_session_sub_name(&name),
            Some((qos, filter.to_string()))
        );
    }
    assert_eq!(parse_session_sub_name("headlines"), None);

    // In a persistent session a SUBSCRIBE names its durable subscription; a clean one does not.
    for persistent in [true, false] {
        let mut c = codec(false);
        c.persistent = persistent;
        let bytes = v3_bytes(v3::Packet::Subscribe {
            packet_id: id(1),
            topic_filters: vec![(ByteString::from("plant/+/temp"), QoS::AtLeastOnce)],
        });
        match one(&mut c, &bytes) {
            Request::Subscribe { spec, .. } => assert_eq!(
                spec.durable_name,
                persistent.then(|| "mqtt:1:plant/+/temp".to_string())
            ),
            other => panic!("{other:?}"),
        }
        // An UNSUBSCRIBE ends the durable subscription too.
        let bytes = v3_or_v5_unsubscribe(false, "plant/+/temp");
        match one(&mut c, &bytes) {
            Request::Unsubscribe { remove_durable, .. } => assert!(remove_durable),
            other => panic!("{other:?}"),
        }
    }

    // A resumed session attaches its kept subscriptions first, answers nothing for them and
    // replays no retained message to them; its deliveries go out at the kept QoS.
    let mut c = codec(false);
    c.persistent = true;
    let pattern = filter_to_pattern("plant/+/temp").expect("filter");
    c.resume(
        vec![(
            "mqtt:1:plant/+/temp".to_string(),
            pattern.clone(),
            String::new(),
        )],
        Vec::new(),
    );
    let resumed = match requests(&mut c, &[]).as_slice() {
        [Request::Subscribe { spec, receipt }] => {
            assert_eq!(spec.durable_name.as_deref(), Some("mqtt:1:plant/+/temp"));
            assert_eq!(spec.destination, pattern);
            assert_eq!(*receipt, Some(Receipt::Resumed(spec.subscription)));
            let mut out = BytesMut::new();
            c.encode_receipt(receipt.as_ref().expect("receipt"), &mut out);
            assert!(out.is_empty(), "no SUBACK for a resumed subscription");
            spec.subscription
        }
        other => panic!("{other:?}"),
    };
    let mut out = BytesMut::new();
    let retained = delivery(0, 0, "topic://plant.boiler.temp", true).message;
    c.encode_retained(resumed, &[retained], &mut out);
    assert!(out.is_empty(), "no retained replay on resume");
    c.encode_delivery(
        &delivery(resumed, 1, "topic://plant.boiler.temp", true),
        &mut out,
    );
    match &v3_replies(&out)[..] {
        [v3::Packet::Publish(p)] => assert_eq!(p.qos, QoS::AtLeastOnce),
        other => panic!("{other:?}"),
    }
    // Subscribing again at the same QoS keeps the durable subscription (and what it kept);
    // at another QoS the old one goes.
    for (qos, keeps) in [(QoS::AtLeastOnce, true), (QoS::AtMostOnce, false)] {
        let bytes = v3_bytes(v3::Packet::Subscribe {
            packet_id: id(2),
            topic_filters: vec![(ByteString::from("plant/+/temp"), qos)],
        });
        let rs = requests(&mut c, &bytes);
        match rs.as_slice() {
            [Request::Unsubscribe { remove_durable, .. }, Request::Subscribe { receipt, .. }] => {
                assert_eq!(*remove_durable, !keeps, "{qos:?}");
                let mut out = BytesMut::new();
                c.encode_receipt(receipt.as_ref().expect("receipt"), &mut out);
            }
            other => panic!("{other:?}"),
        }
    }
}
