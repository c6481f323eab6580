//! Each protocol's frames decoded into [`Request`]s: destinations parsed (and STOMP's names
//! translated) once, messages drafted, receipts and transactions carried, bad frames refused.

use bytes::Bytes;

use super::super::conn::Inbound;
use super::{Refusal, Request, SendRequest, TxName};
use crate::broker::{BrokerError, DestinationError};
use crate::server::native::Native;
use crate::server::stomp::Stomp;
use crate::stomp::{self, Command, Decoder, Limits, Version};
use crate::wire::proto::{self, ErrorCode};
use crate::wire::{self, Body};

fn native(body: Body) -> Request<u64> {
    match Native::new(1 << 20).inbound(wire::frame(body)) {
        Inbound::Request(r) => r,
        _ => panic!("not a request"),
    }
}

fn send_of<R: std::fmt::Debug>(r: Request<R>) -> SendRequest<R> {
    match r {
        Request::Send(s) => s,
        other => panic!("not a send: {other:?}"),
    }
}

#[test]
fn a_native_send_carries_its_parsed_destination_draft_transaction_and_receipt() {
    let s = send_of(native(Body::Send(proto::Send {
        destination: "queue://orders".into(),
        body: Bytes::from_static(b"x"),
        persistent: true,
        priority: 7,
        producer_id: Bytes::from_static(b"p"),
        sequence: 3,
        receipt: 9,
        transaction: 2,
        timestamp_ms: 11,
        ..proto::Send::default()
    })));
    assert_eq!(s.destination.as_str(), "queue://orders");
    assert_eq!(s.transaction, Some(TxName::Numbered(2)));
    assert_eq!(s.receipt, Some(9));
    assert_eq!(&s.draft.body[..], b"x");
    assert!(s.draft.persistent);
    assert_eq!((s.draft.priority, s.draft.sequence), (7, 3));
    assert_eq!(s.draft.timestamp_ms, 11);
    let plain = send_of(native(Body::Send(proto::Send {
        destination: "topic://t".into(),
        ..proto::Send::default()
    })));
    assert_eq!((plain.transaction, plain.receipt), (None, None));
}

#[test]
fn a_native_send_to_a_malformed_destination_is_a_refused_send() {
    let r = native(Body::Send(proto::Send {
        destination: "queue://a.*".into(),
        receipt: 4,
        ..proto::Send::default()
    }));
    assert!(
        matches!(
            r,
            Request::Refuse {
                refusal: Refusal::Send(BrokerError::Destination(DestinationError::Wildcard(_))),
                receipt: Some(4)
            }
        ),
        "{r:?}"
    );
}

#[test]
fn native_subscribe_ack_nack_and_unsubscribe_become_their_requests() {
    match native(Body::Subscribe(proto::Subscribe {
        subscription: 5,
        destination: "topic://news.>".into(),
        prefetch: 10,
        durable_name: "d".into(),
        receipt: 1,
        ..proto::Subscribe::default()
    })) {
        Request::Subscribe { spec, receipt } => {
            assert_eq!(spec.subscription, 5);
            assert!(spec.destination.is_wildcard());
            assert_eq!(spec.destination.as_str(), "topic://news.>");
            assert_eq!(spec.durable_name.as_deref(), Some("d"));
            assert_eq!((spec.prefetch, receipt), (10, Some(1)));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        native(Body::Subscribe(proto::Subscribe {
            destination: "queue://a.>.b".into(),
            ..proto::Subscribe::default()
        })),
        Request::Refuse {
            refusal: Refusal::Invalid { .. },
            ..
        }
    ));
    match native(Body::Ack(proto::Ack {
        subscription: 5,
        up_to: 0,
        tags: vec![3, 4],
        transaction: 7,
        receipt: 2,
    })) {
        Request::Ack {
            subscription,
            up_to,
            tags,
            transaction,
            receipt,
        } => {
            assert_eq!((subscription, up_to, tags), (5, 0, vec![3, 4]));
            assert_eq!(transaction, Some(TxName::Numbered(7)));
            assert_eq!(receipt, Some(2));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        native(Body::Nack(proto::Nack {
            subscription: 5,
            tags: vec![3],
            receipt: 0,
        })),
        Request::Nack { subscription: 5, ref tags, transaction: None, receipt: None } if tags == &[3]
    ));
    assert!(matches!(
        native(Body::Unsubscribe(proto::Unsubscribe {
            subscription: 5,
            remove_durable: true,
            receipt: 8,
        })),
        Request::Unsubscribe {
            subscription: 5,
            remove_durable: true,
            receipt: Some(8)
        }
    ));
}

#[test]
fn native_transactions_are_numbered_from_one_with_known_actions() {
    let tx = |transaction, action: proto::TransactionAction| {
        native(Body::Transaction(proto::Transaction {
            transaction,
            action: action as i32,
            receipt: 1,
        }))
    };
    assert!(matches!(
        tx(3, proto::TransactionAction::Begin),
        Request::Begin {
            transaction: TxName::Numbered(3),
            receipt: Some(1)
        }
    ));
    assert!(matches!(
        tx(3, proto::TransactionAction::Commit),
        Request::Commit {
            transaction: TxName::Numbered(3),
            ..
        }
    ));
    assert!(matches!(
        tx(3, proto::TransactionAction::Rollback),
        Request::Abort {
            transaction: TxName::Numbered(3),
            ..
        }
    ));
    assert!(matches!(
        tx(0, proto::TransactionAction::Begin),
        Request::Refuse {
            refusal: Refusal::Invalid { .. },
            receipt: Some(1)
        }
    ));
    assert!(matches!(
        native(Body::Transaction(proto::Transaction {
            transaction: 3,
            action: 99,
            receipt: 1,
        })),
        Request::Refuse {
            refusal: Refusal::Invalid {
                code: ErrorCode::BadFrame,
                ..
            },
            ..
        }
    ));
}

#[test]
fn native_heartbeats_pings_disconnects_and_server_frames() {
    let mut n = Native::new(1 << 20);
    let beat = |receipt| wire::frame(Body::Heartbeat(proto::Heartbeat { receipt }));
    assert!(matches!(n.inbound(beat(0)), Inbound::Alive));
    assert!(matches!(
        native(Body::Heartbeat(proto::Heartbeat { receipt: 6 })),
        Request::Ping { receipt: 6 }
    ));
    assert!(matches!(
        native(Body::Disconnect(proto::Disconnect {
            receipt: 2,
            reason: String::new()
        })),
        Request::Disconnect { receipt: Some(2) }
    ));
    match native(Body::Receipt(proto::Receipt { receipt: 1 })) {
        Request::Refuse {
            refusal:
                Refusal::BadFrame {
                    code: ErrorCode::BadFrame,
                    message,
                    fatal: true,
                },
            receipt: None,
        } => assert!(
            message.contains("Receipt is not a frame a client may send"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
}

fn stomp_codec(version: Version) -> Stomp {
    let mut decoder = Decoder::new(Version::V1_0, Limits::default());
    decoder.set_version(version);
    Stomp::new(decoder, "ID-conn-1")
}

fn frame(command: Command, headers: &[(&str, &str)]) -> stomp::Frame {
    headers
        .iter()
        .fold(stomp::Frame::new(command), |f, (k, v)| {
            f.with_header(*k, *v)
        })
}

#[test]
fn a_stomp_send_translates_its_destination_and_drafts_the_message() {
    let mut c = stomp_codec(Version::V1_2);
    let mut f = frame(
        Command::Send,
        &[
            ("destination", "/queue/orders"),
            ("receipt", "r1"),
            ("transaction", "t1"),
            ("persistent", "true"),
            ("priority", "8"),
            ("reply-to", "/temp-queue/replies"),
            ("correlation-id", "c1"),
            ("app", "kept"),
        ],
    )
    .with_body(Bytes::from_static(b"payload"));
    let s = send_of(c.request(&mut f));
    assert_eq!(s.destination.as_str(), "queue://orders");
    assert_eq!(s.receipt.as_deref(), Some("r1"));
    assert_eq!(s.transaction, Some(TxName::Named("t1".into())));
    let d = s.draft;
    assert!(d.persistent);
    assert_eq!(d.priority, 8);
    assert_eq!(d.reply_to, "temp-queue://ID-conn-1.replies");
    assert_eq!(d.correlation_id, "c1");
    assert_eq!(d.headers, [("app".to_string(), "kept".to_string())]);
    assert_eq!(&d.body[..], b"payload");
    assert_eq!(&d.producer_id[..], b"ID-conn-1");
    assert_eq!(d.timestamp_ms, 0, "stamped by the builder");
    let next = send_of(c.request(&mut frame(Command::Send, &[("destination", "/topic/t")])));
    assert_eq!(next.destination.as_str(), "topic://t");
    assert_eq!(
        next.draft.sequence,
        d.sequence + 1,
        "numbered per connection"
    );
    let own = send_of(c.request(&mut frame(
        Command::Send,
        &[("destination", "/temp-queue/x")],
    )));
    assert_eq!(own.destination.as_str(), "temp-queue://ID-conn-1.x");
}

/// A SEND's headers are sorted out in one pass: of a repeated header the broker reads, the
/// first counts (as `Frame::header` finds it); the frame and delivery headers a client may echo
/// back are dropped; every other header travels, in order, repeats kept.
#[test]
fn a_stomp_send_reads_the_first_of_a_repeated_header_and_passes_the_others_on_in_order() {
    let mut c = stomp_codec(Version::V1_2);
    let mut f = frame(
        Command::Send,
        &[
            ("x-first", "1"),
            ("destination", "/queue/first"),
            ("priority", "7"),
            ("content-length", "0"),
            ("destination", "/queue/second"),
            ("receipt", "r1"),
            ("priority", "not a number"),
            ("message-id", "echoed"),
            ("subscription", "echoed"),
            ("ack", "echoed"),
            ("timestamp", "1"),
            ("redelivered", "true"),
            ("receipt", "r2"),
            ("content-type", "text/plain"),
            ("x-first", "2"),
            ("persistent", "false"),
            ("persistent", "true"),
            ("expires", "99"),
        ],
    );
    let s = send_of(c.request(&mut f));
    assert_eq!(s.destination.as_str(), "queue://first");
    assert_eq!(s.receipt.as_deref(), Some("r1"));
    let d = s.draft;
    assert_eq!(d.priority, 7);
    assert!(!d.persistent, "the first persistent header says false");
    assert_eq!(d.expires_at_ms, 99);
    assert_eq!(d.content_type, "text/plain");
    assert_eq!(
        d.headers,
        [
            ("x-first".to_string(), "1".to_string()),
            ("x-first".to_string(), "2".to_string())
        ]
    );
}

#[test]
fn a_stomp_send_with_bad_headers_is_refused_before_the_broker() {
    let mut c = stomp_codec(Version::V1_2);
    for headers in [
        &[("receipt", "r")][..],
        &[("destination", "/nowhere/x"), ("receipt", "r")],
        &[
            ("destination", "/queue/a"),
            ("priority", "high"),
            ("receipt", "r"),
        ],
        &[
            ("destination", "/queue/a"),
            ("expires", "soon"),
            ("receipt", "r"),
        ],
    ] {
        let r = c.request(&mut frame(Command::Send, headers));
        assert!(
            matches!(&r, Request::Refuse { refusal: Refusal::Invalid { .. }, receipt: Some(x) } if x == "r"),
            "{headers:?}: {r:?}"
        );
    }
}

#[test]
fn stomp_subscribe_and_unsubscribe_name_their_subscription() {
    let mut c = stomp_codec(Version::V1_2);
    let num = match c.request(&mut frame(
        Command::Subscribe,
        &[
            ("destination", "/topic/prices.>"),
            ("id", "s1"),
            ("ack", "client"),
            ("activemq.prefetchSize", "5"),
            ("activemq.subscriptionName", "dur"),
            ("receipt", "r"),
        ],
    )) {
        Request::Subscribe { spec, receipt } => {
            assert_eq!(spec.destination.as_str(), "topic://prices.>");
            assert_eq!(spec.prefetch, 5);
            assert_eq!(spec.durable_name.as_deref(), Some("dur"));
            assert_eq!(receipt.as_deref(), Some("r"));
            spec.subscription
        }
        other => panic!("{other:?}"),
    };
    for bad in [
        &[("destination", "/topic/x"), ("id", "s1")][..],
        &[
            ("destination", "/topic/x"),
            ("id", "s2"),
            ("ack", "sometimes"),
        ],
        &[("id", "s3")],
        &[("destination", "/topic/x")],
    ] {
        let r = c.request(&mut frame(Command::Subscribe, bad));
        assert!(
            matches!(
                r,
                Request::Refuse {
                    refusal: Refusal::Invalid { .. },
                    ..
                }
            ),
            "{bad:?}: {r:?}"
        );
    }
    assert!(matches!(
        c.request(&mut frame(
            Command::Unsubscribe,
            &[("id", "s1"), ("activemq.subscriptionName", "dur")]
        )),
        Request::Unsubscribe { subscription, remove_durable: true, .. } if subscription == num
    ));
    assert!(matches!(
        c.request(&mut frame(Command::Unsubscribe, &[("id", "s1")])),
        Request::Refuse { .. }
    ));
}

#[test]
fn stomp_acks_name_deliveries_cumulatively_in_client_mode_and_by_tag_in_a_transaction() {
    let mut c = stomp_codec(Version::V1_2);
    let sub = |c: &mut Stomp, id: &str, ack: &str| match c.request(&mut frame(
        Command::Subscribe,
        &[("destination", "/queue/q"), ("id", id), ("ack", ack)],
    )) {
        Request::Subscribe { spec, .. } => spec.subscription,
        other => panic!("{other:?}"),
    };
    let client = sub(&mut c, "c", "client");
    let individual = sub(&mut c, "i", "client-individual");
    let ack_id = |s: u64, tag: u64| format!("{s}:{tag}");
    assert!(matches!(
        c.request(&mut frame(Command::Ack, &[("id", &ack_id(client, 7))])),
        Request::Ack { subscription, up_to: 7, ref tags, transaction: None, .. }
            if subscription == client && tags.is_empty()
    ));
    assert!(matches!(
        c.request(&mut frame(Command::Ack, &[("id", &ack_id(individual, 7))])),
        Request::Ack { up_to: 0, ref tags, .. } if tags == &[7]
    ));
    assert!(matches!(
        c.request(&mut frame(
            Command::Ack,
            &[("id", &ack_id(client, 8)), ("transaction", "t")]
        )),
        Request::Ack { up_to: 0, ref tags, transaction: Some(TxName::Named(ref t)), .. }
            if tags == &[8] && t == "t"
    ));
    assert!(matches!(
        c.request(&mut frame(Command::Nack, &[("id", &ack_id(client, 9))])),
        Request::Nack { ref tags, transaction: None, .. } if tags == &[9]
    ));
    for bad in [&[("id", "nonsense")][..], &[("id", "99:1")], &[]] {
        let r = c.request(&mut frame(Command::Ack, bad));
        assert!(matches!(r, Request::Refuse { .. }), "{bad:?}: {r:?}");
    }
}

#[test]
fn stomp_transactions_disconnect_and_frames_a_client_may_not_send() {
    let mut c = stomp_codec(Version::V1_1);
    let named = |c: &mut Stomp, command| c.request(&mut frame(command, &[("transaction", "t")]));
    assert!(matches!(
        named(&mut c, Command::Begin),
        Request::Begin { transaction: TxName::Named(ref t), .. } if t == "t"
    ));
    assert!(matches!(
        named(&mut c, Command::Commit),
        Request::Commit { .. }
    ));
    assert!(matches!(
        named(&mut c, Command::Abort),
        Request::Abort { .. }
    ));
    assert!(matches!(
        c.request(&mut frame(Command::Begin, &[])),
        Request::Refuse {
            refusal: Refusal::Invalid { .. },
            ..
        }
    ));
    assert!(matches!(
        c.request(&mut frame(Command::Disconnect, &[("receipt", "bye")])),
        Request::Disconnect { receipt: Some(ref r) } if r == "bye"
    ));
    assert!(matches!(
        c.request(&mut frame(Command::Connect, &[])),
        Request::Refuse {
            refusal: Refusal::Invalid { .. },
            ..
        }
    ));
    assert!(matches!(
        c.request(&mut frame(Command::Message, &[])),
        Request::Refuse {
            refusal: Refusal::BadFrame { fatal: true, .. },
            ..
        }
    ));
}

#[test]
fn a_transaction_name_reads_as_the_client_wrote_it() {
    assert_eq!(TxName::Numbered(4).to_string(), "4");
    assert_eq!(TxName::Named("t 1".into()).to_string(), "\"t 1\"");
}

/// Subscribes `codec` to `destination` as `id` and returns the subscription's number.
fn stomp_subscribe(codec: &mut Stomp, destination: &str, id: &str, ack: &str) -> u64 {
    match codec.request(&mut frame(
        Command::Subscribe,
        &[("destination", destination), ("id", id), ("ack", ack)],
    )) {
        Request::Subscribe { spec, .. } => spec.subscription,
        other => panic!("{other:?}"),
    }
}

/// The ids the server generates — the 1.2 `ack` id, and the `message-id` of a message without
/// its producer's identity — are written directly with each ':' as the version writes it
/// (raw in 1.0, `\c` from 1.1), read back as generated, and name the delivery in an ACK.
#[test]
fn generated_ids_are_escaped_per_version_and_name_their_delivery() {
    use crate::broker::{Destination, Message};
    use crate::server::conn::Codec;
    let m = std::sync::Arc::new(Message {
        destination: Some(Destination::parse("queue://q").expect("valid")),
        body: Bytes::from_static(b"b"),
        ..Message::default()
    });
    for version in Version::ALL {
        let mut c = stomp_codec(version);
        let sub = stomp_subscribe(&mut c, "/queue/q", "s", "client-individual");
        let mut raw = bytes::BytesMut::new();
        let delivery = crate::broker::Delivery {
            subscription: sub,
            tag: 41,
            redelivery_count: 0,
            message: m.clone(),
        };
        c.encode_delivery(&delivery, &mut raw);
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let (ack_line, id_line) = match version {
            Version::V1_0 => (None, format!("\nmessage-id:ID:{sub}:41\n")),
            Version::V1_1 => (None, format!("\nmessage-id:ID\\c{sub}\\c41\n")),
            Version::V1_2 => (
                Some(format!("\nack:{sub}\\c41\n")),
                format!("\nmessage-id:ID\\c{sub}\\c41\n"),
            ),
        };
        assert!(raw.contains(&id_line), "{version}: {raw:?}");
        assert_eq!(
            ack_line.as_ref().is_some_and(|l| raw.contains(l.as_str())),
            ack_line.is_some(),
            "{version}: {raw:?}"
        );

        let f = stomp_delivery(&mut c, &m, sub, 41, 0);
        let mid = format!("ID:{sub}:41");
        assert_eq!(f.header("message-id"), Some(mid.as_str()), "{version}");
        let mut ack = match version {
            Version::V1_2 => {
                assert_eq!(f.header("ack"), Some(format!("{sub}:41").as_str()));
                frame(Command::Ack, &[("id", f.header("ack").expect("ack"))])
            }
            Version::V1_1 => frame(Command::Ack, &[("message-id", &mid), ("subscription", "s")]),
            Version::V1_0 => frame(Command::Ack, &[("message-id", &mid)]),
        };
        assert!(
            matches!(
                c.request(&mut ack),
                Request::Ack { subscription, ref tags, .. } if subscription == sub && tags == &[41]
            ),
            "{version}"
        );
    }

    // A producer's identity is escaped where it needs it; the rest is written as is.
    let from_producer = std::sync::Arc::new(Message {
        destination: Some(Destination::parse("queue://q").expect("valid")),
        producer_id: Bytes::from_static(b"p:1\\x"),
        sequence: 9,
        ..Message::default()
    });
    let mut c = stomp_codec(Version::V1_2);
    let sub = stomp_subscribe(&mut c, "/queue/q", "s", "auto");
    let f = stomp_delivery(&mut c, &from_producer, sub, 1, 0);
    assert_eq!(f.header("message-id"), Some("ID:p:1\\x:9"));
}

/// The MESSAGE frame `codec` writes for one delivery, decoded back.
fn stomp_delivery(
    codec: &mut Stomp,
    message: &std::sync::Arc<crate::broker::Message>,
    subscription: u64,
    tag: u64,
    redelivery_count: u32,
) -> stomp::Frame {
    use crate::server::conn::Codec;
    let delivery = crate::broker::Delivery {
        subscription,
        tag,
        redelivery_count,
        message: message.clone(),
    };
    let mut out = bytes::BytesMut::new();
    codec.encode_delivery(&delivery, &mut out);
    // Version 1.1 and 1.2 unescape alike for what these tests send; 1.1 writes U+FFFD for a
    // carriage return, which decodes as itself.
    let mut decoder = Decoder::new(Version::V1_0, Limits::default());
    decoder.set_version(Version::V1_2);
    let frame = match decoder.decode(&mut out) {
        Ok(stomp::Decoded::Frame(f)) => f,
        other => panic!("not a frame: {other:?}"),
    };
    assert!(out.is_empty(), "one frame per delivery");
    let mut names: Vec<&str> = frame.headers.iter().map(|(k, _)| k).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(
        before,
        names.len(),
        "a header written twice: {:?}",
        frame.headers
    );
    frame
}

/// A topic message's headers are encoded once and shared by its subscribers: every frame still
/// names its own subscription, ack id and redelivery, each connection sees a temporary reply-to
/// under its own name, and a client of another version gets its own escaping.
#[test]
fn each_topic_subscriber_gets_its_own_message_frame_from_one_shared_encoding() {
    use crate::broker::{Destination, Message};
    use std::sync::Arc;
    let topic_message = |reply_to: &str| {
        Arc::new(Message {
            destination: Some(Destination::parse("topic://prices.eu").expect("valid")),
            body: Bytes::from_static(b"body\0with a NUL"),
            headers: vec![("region".into(), "eu:west\rline".into())],
            producer_id: Bytes::from_static(b"ID-prod:7"),
            sequence: 3,
            priority: 6,
            timestamp_ms: 1_800_000_000_000,
            reply_to: reply_to.into(),
            correlation_id: "corr-1".into(),
            content_type: "text/plain".into(),
            ..Message::default()
        })
    };
    let mut one = stomp_codec(Version::V1_2);
    let auto = stomp_subscribe(&mut one, "/topic/prices.>", "s-auto", "auto");
    let individual = stomp_subscribe(&mut one, "/topic/prices.eu", "s-ind", "client-individual");
    let mut other_decoder = Decoder::new(Version::V1_0, Limits::default());
    other_decoder.set_version(Version::V1_2);
    let mut two = Stomp::new(other_decoder, "ID-conn-2");
    let two_sub = stomp_subscribe(&mut two, "/topic/prices.eu", "s-two", "client");
    let mut old = stomp_codec(Version::V1_1);
    let old_sub = stomp_subscribe(&mut old, "/topic/prices.eu", "s-old", "client");

    let m = topic_message("queue://replies");
    let frames = [
        (stomp_delivery(&mut one, &m, auto, 1, 0), "s-auto", None),
        (
            stomp_delivery(&mut one, &m, individual, 1, 2),
            "s-ind",
            Some(format!("{individual}:1")),
        ),
        (
            stomp_delivery(&mut two, &m, two_sub, 5, 0),
            "s-two",
            Some(format!("{two_sub}:5")),
        ),
        (stomp_delivery(&mut old, &m, old_sub, 9, 0), "s-old", None),
    ];
    for (i, (f, sub, ack)) in frames.iter().enumerate() {
        assert_eq!(f.command, Command::Message);
        assert_eq!(f.header("subscription"), Some(*sub), "frame {i}");
        assert_eq!(f.header("ack").map(String::from), *ack, "frame {i}");
        assert_eq!(f.header("message-id"), Some("ID:ID-prod:7:3"), "frame {i}");
        assert_eq!(f.header("destination"), Some("/topic/prices.eu"));
        assert_eq!(f.header("reply-to"), Some("/queue/replies"));
        assert_eq!(f.header("correlation-id"), Some("corr-1"));
        assert_eq!(f.header("content-type"), Some("text/plain"));
        assert_eq!(f.header("priority"), Some("6"));
        assert_eq!(f.header("persistent"), Some("false"));
        assert_eq!(f.header("timestamp"), Some("1800000000000"));
        assert_eq!(f.header("content-length"), Some("15"));
        assert_eq!(&f.body[..], b"body\0with a NUL");
        let redelivered = i == 1;
        assert_eq!(f.header("redelivered").is_some(), redelivered, "frame {i}");
        assert_eq!(
            f.header("meshmq.redelivery_count"),
            redelivered.then_some("2"),
            "frame {i}"
        );
    }
    // 1.2 escapes a carriage return; 1.1 cannot carry one and writes U+FFFD.
    for (f, _, _) in &frames[..3] {
        assert_eq!(f.header("region"), Some("eu:west\rline"));
    }
    assert_eq!(frames[3].0.header("region"), Some("eu:west\u{fffd}line"));

    // A temporary reply-to is named per connection: its owner sees its own name.
    let m = topic_message("temp-queue://ID-conn-1.r");
    let mine = stomp_delivery(&mut one, &m, auto, 2, 0);
    let theirs = stomp_delivery(&mut two, &m, two_sub, 6, 0);
    assert_eq!(mine.header("reply-to"), Some("/temp-queue/r"));
    assert_eq!(
        theirs.header("reply-to"),
        Some("/remote-temp-queue/ID-conn-1.r")
    );

    // Without a producer identity the message id is per delivery.
    let anonymous = Arc::new(Message {
        producer_id: Bytes::new(),
        ..Message {
            destination: Some(Destination::parse("topic://prices.eu").expect("valid")),
            ..Message::default()
        }
    });
    let a = stomp_delivery(&mut one, &anonymous, auto, 7, 0);
    let b = stomp_delivery(&mut two, &anonymous, two_sub, 8, 0);
    assert_eq!(
        a.header("message-id"),
        Some(format!("ID:{auto}:7").as_str())
    );
    assert_eq!(
        b.header("message-id"),
        Some(format!("ID:{two_sub}:8").as_str())
    );
}

/// What a STOMP connection keeps of a SEND never pins the buffer it was read into: a small
/// body is copied out as the frame is decoded, and the builder keeps that copy (no second
/// one); a large body shares the buffer, as the builder's rule says.
#[test]
fn a_kept_stomp_body_is_copied_out_of_the_read_buffer_once() {
    use crate::broker::{MessageBuilder, COPY_BODY_BELOW};
    use crate::server::conn::Codec;
    let mut c = stomp_codec(Version::V1_2);
    let large = vec![b'L'; COPY_BODY_BELOW];
    let mut buf = bytes::BytesMut::new();
    for body in [&b"small"[..], &large] {
        let f = frame(Command::Send, &[("destination", "/queue/q")])
            .with_body(Bytes::copy_from_slice(body));
        stomp::encode(&f, Version::V1_2, &mut buf);
    }
    let chunk = buf.as_ptr_range();
    let inside = |b: &Bytes| chunk.contains(&b.as_ptr());
    let mut next = |buf: &mut bytes::BytesMut| match c.decode(buf) {
        Ok(Inbound::Request(r)) => send_of(r).draft,
        _ => panic!("a SEND"),
    };
    let mut builder = MessageBuilder::default();
    let small = next(&mut buf);
    assert!(!inside(&small.body), "a small body is copied out");
    assert!(small.body_is_own);
    let body_at = small.body.as_ptr();
    let kept = builder.build(small).unwrap();
    assert_eq!(kept.body.as_ptr(), body_at, "and not copied again");
    let big = next(&mut buf);
    assert!(inside(&big.body), "a large body shares the buffer");
    assert!(!big.body_is_own);
    assert_eq!(&big.body[..], &large[..]);
}

/// A native Send read in place (the codec's fast path) is the request decoding the same frame
/// makes — destination, receipt, transaction and every field of the draft — except that its
/// small body is already copied out of the read buffer (and the builder keeps that copy); a
/// large body is left to decoding, which shares the buffer.
#[test]
fn a_native_send_read_in_place_is_the_request_decoding_makes() {
    use crate::broker::COPY_BODY_BELOW;
    use crate::server::conn::Codec;
    let large = Bytes::from(vec![b'L'; COPY_BODY_BELOW]);
    let full = proto::Send {
        destination: "queue://orders".into(),
        body: Bytes::from_static(b"x\x00y"),
        headers: vec![
            proto::Header {
                key: "k".into(),
                value: "v".into(),
            },
            proto::Header {
                key: "k".into(),
                value: String::new(),
            },
        ],
        persistent: true,
        priority: 7,
        expires_at_ms: 99,
        producer_id: Bytes::from_static(b"p-1"),
        sequence: 3,
        receipt: 9,
        reply_to: "temp-queue://c.1".into(),
        correlation_id: "c".into(),
        content_type: "text/plain".into(),
        timestamp_ms: 11,
        transaction: 2,
    };
    let sends = [
        full.clone(),
        proto::Send {
            producer_id: Bytes::from_static(b"p-2"),
            ..full.clone()
        },
        proto::Send {
            destination: "topic://t".into(),
            ..proto::Send::default()
        },
        proto::Send {
            destination: "queue://a.*".into(),
            receipt: 4,
            ..proto::Send::default()
        },
        proto::Send {
            priority: 300,
            ..full.clone()
        },
        proto::Send {
            body: large,
            ..full.clone()
        },
    ];
    let mut buf = bytes::BytesMut::new();
    for s in &sends {
        wire::encode(&wire::frame(Body::Send(s.clone())), &mut buf);
    }
    let chunk = buf.as_ptr_range();
    let mut codec = Native::new(1 << 20);
    for (i, s) in sends.iter().enumerate() {
        let read = match codec.decode(&mut buf) {
            Ok(Inbound::Request(r)) => r,
            _ => panic!("send {i}: not a request"),
        };
        let expected = native(Body::Send(s.clone()));
        let (read, expected) = match (read, expected) {
            (Request::Send(mut read), Request::Send(expected)) => {
                let large = s.body.len() >= COPY_BODY_BELOW;
                let inside = chunk.contains(&read.draft.body.as_ptr());
                assert_eq!(
                    inside, large,
                    "send {i}: only a large body shares the buffer"
                );
                assert_eq!(read.draft.body_is_own, !large, "send {i}");
                read.draft.body_is_own = false;
                (Request::Send(read), Request::Send(expected))
            }
            other => other,
        };
        assert_eq!(format!("{read:?}"), format!("{expected:?}"), "send {i}");
    }
    assert!(buf.is_empty());
}
