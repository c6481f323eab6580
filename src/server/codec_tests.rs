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
    let f = frame(
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
    let s = send_of(c.request(f));
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
    let next = send_of(c.request(frame(Command::Send, &[("destination", "/topic/t")])));
    assert_eq!(next.destination.as_str(), "topic://t");
    assert_eq!(
        next.draft.sequence,
        d.sequence + 1,
        "numbered per connection"
    );
    let own = send_of(c.request(frame(Command::Send, &[("destination", "/temp-queue/x")])));
    assert_eq!(own.destination.as_str(), "temp-queue://ID-conn-1.x");
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
        let r = c.request(frame(Command::Send, headers));
        assert!(
            matches!(&r, Request::Refuse { refusal: Refusal::Invalid { .. }, receipt: Some(x) } if x == "r"),
            "{headers:?}: {r:?}"
        );
    }
}

#[test]
fn stomp_subscribe_and_unsubscribe_name_their_subscription() {
    let mut c = stomp_codec(Version::V1_2);
    let num = match c.request(frame(
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
        let r = c.request(frame(Command::Subscribe, bad));
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
        c.request(frame(
            Command::Unsubscribe,
            &[("id", "s1"), ("activemq.subscriptionName", "dur")]
        )),
        Request::Unsubscribe { subscription, remove_durable: true, .. } if subscription == num
    ));
    assert!(matches!(
        c.request(frame(Command::Unsubscribe, &[("id", "s1")])),
        Request::Refuse { .. }
    ));
}

#[test]
fn stomp_acks_name_deliveries_cumulatively_in_client_mode_and_by_tag_in_a_transaction() {
    let mut c = stomp_codec(Version::V1_2);
    let sub = |c: &mut Stomp, id: &str, ack: &str| match c.request(frame(
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
        c.request(frame(Command::Ack, &[("id", &ack_id(client, 7))])),
        Request::Ack { subscription, up_to: 7, ref tags, transaction: None, .. }
            if subscription == client && tags.is_empty()
    ));
    assert!(matches!(
        c.request(frame(Command::Ack, &[("id", &ack_id(individual, 7))])),
        Request::Ack { up_to: 0, ref tags, .. } if tags == &[7]
    ));
    assert!(matches!(
        c.request(frame(
            Command::Ack,
            &[("id", &ack_id(client, 8)), ("transaction", "t")]
        )),
        Request::Ack { up_to: 0, ref tags, transaction: Some(TxName::Named(ref t)), .. }
            if tags == &[8] && t == "t"
    ));
    assert!(matches!(
        c.request(frame(Command::Nack, &[("id", &ack_id(client, 9))])),
        Request::Nack { ref tags, transaction: None, .. } if tags == &[9]
    ));
    for bad in [&[("id", "nonsense")][..], &[("id", "99:1")], &[]] {
        let r = c.request(frame(Command::Ack, bad));
        assert!(matches!(r, Request::Refuse { .. }), "{bad:?}: {r:?}");
    }
}

#[test]
fn stomp_transactions_disconnect_and_frames_a_client_may_not_send() {
    let mut c = stomp_codec(Version::V1_1);
    let named = |c: &mut Stomp, command| c.request(frame(command, &[("transaction", "t")]));
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
        c.request(frame(Command::Begin, &[])),
        Request::Refuse {
            refusal: Refusal::Invalid { .. },
            ..
        }
    ));
    assert!(matches!(
        c.request(frame(Command::Disconnect, &[("receipt", "bye")])),
        Request::Disconnect { receipt: Some(ref r) } if r == "bye"
    ));
    assert!(matches!(
        c.request(frame(Command::Connect, &[])),
        Request::Refuse {
            refusal: Refusal::Invalid { .. },
            ..
        }
    ));
    assert!(matches!(
        c.request(frame(Command::Message, &[])),
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
