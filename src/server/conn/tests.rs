//! [`Connection::apply`] on an in-memory broker, one test per kind of request: each applies
//! requests as a codec would hand them over and reads back the native frames the connection
//! wrote (the socket is never touched: replies are read from the write buffer).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::DuplexStream;

use super::*;
use crate::broker::Destination;
use crate::broker::{Broker, BrokerSettings, DestinationLimits, Draft, OnFull, SubscribeSpec};
use crate::cluster::{Cluster, ClusterOptions, ClusterPolicy};
use crate::config::{Acl, Security};
use crate::security::LiveSecurity;
use crate::server::native::Native;
use crate::server::request::{Refusal, Request, SendRequest};
use crate::server::{ConnSettings, Identity, Protocol, StompLimits};
use crate::wire::proto;
use crate::wire::{self, Body};

fn dest(text: &str) -> Destination {
    Destination::parse(text).expect("a valid destination")
}

/// A broker whose `queue://small.*` queues hold one message (their memory limit is one byte:
/// the first message takes them past it) and then apply `on_full`.
fn broker(on_full: OnFull) -> Broker {
    let mut settings = BrokerSettings::default();
    settings.policies.push((
        DestinationPattern::parse("queue://small.>").expect("pattern"),
        DestinationLimits {
            memory_limit: Some(1),
            on_full,
            ..DestinationLimits::default()
        },
    ));
    Broker::new(settings)
}

/// A connection context on `broker`: anonymous logins allowed, `acls`, default settings.
pub(crate) fn ctx(broker: &Broker, acls: Vec<Acl>) -> Arc<ConnCtx> {
    let security = Security {
        allow_anonymous: true,
        users: Vec::new(),
        acls,
    };
    Arc::new(ConnCtx {
        broker: broker.clone(),
        settings: ConnSettings::default(),
        identity: Arc::new(Identity::default()),
        metrics: ListenerMetrics::new("tcp://127.0.0.1:1", Protocol::Native),
        security: LiveSecurity::new(&security, crate::security::DEFAULT_LOGIN_MEMORY),
        stomp: StompLimits {
            max_headers: 100,
            max_header_length: 10 * 1024,
        },
        network: None,
        cluster: Cluster::new(ClusterOptions::default()),
        cluster_policy: Arc::new(ClusterPolicy::default()),
        accepting: tokio_util::sync::CancellationToken::new(),
        mqtt_sessions: Default::default(),
    })
}

/// A native connection over an in-memory link (the far end is kept open, never read).
fn connection_with(
    broker: &Broker,
    acls: Vec<Acl>,
    principal: Principal,
) -> (Connection<Native>, DuplexStream) {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let conn = Connection::new(
        Native::new(1 << 20),
        Pump::new(Box::new(ours)),
        broker.open_session(None).expect("session"),
        ctx(broker, acls),
        principal,
        None,
        None,
    );
    (conn, theirs)
}

fn connection(broker: &Broker) -> (Connection<Native>, DuplexStream) {
    connection_with(broker, Vec::new(), Principal::anonymous())
}

/// The frames the connection wrote since the last call.
fn written(conn: &mut Connection<Native>) -> Vec<Body> {
    let mut buf: BytesMut = conn.pump.wbuf.split();
    let mut out = Vec::new();
    while let wire::Decoded::Frame(f) = wire::decode(&mut buf, 1 << 20).expect("good frames") {
        out.push(f.body.expect("a frame with a body"));
    }
    assert!(buf.is_empty(), "a partial frame was written");
    out
}

fn receipt(id: u64) -> Body {
    Body::Receipt(proto::Receipt { receipt: id })
}

/// The error frame written for `receipt`: its code.
fn error_code_of(frames: &[Body], receipt: u64) -> ErrorCode {
    frames
        .iter()
        .find_map(|b| match b {
            Body::Error(e) if e.receipt == receipt => {
                Some(ErrorCode::try_from(e.code).expect("a known code"))
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no error for receipt {receipt} in {frames:?}"))
}

fn send_to(to: &str, body: &'static str, tx: Option<u64>, receipt: u64) -> Request<u64> {
    Request::Send(SendRequest {
        destination: dest(to),
        draft: Draft {
            body: Bytes::from_static(body.as_bytes()),
            priority: 4,
            ..Draft::default()
        },
        transaction: tx.map(TxName::Numbered),
        receipt: Some(receipt),
    })
}

fn subscribe(id: u64, to: &str, receipt: u64) -> Request<u64> {
    Request::Subscribe {
        spec: SubscribeSpec {
            subscription: id,
            destination: DestinationPattern::parse(to).expect("pattern"),
            selector: String::new(),
            prefetch: 100,
            priority: 0,
            durable_name: None,
            no_local: false,
        },
        receipt: Some(receipt),
    }
}

fn begin(tx: u64, receipt: u64) -> Request<u64> {
    Request::Begin {
        transaction: TxName::Numbered(tx),
        receipt: Some(receipt),
    }
}

fn commit(tx: u64, receipt: u64) -> Request<u64> {
    Request::Commit {
        transaction: TxName::Numbered(tx),
        receipt: Some(receipt),
    }
}

/// Deliveries written (subscription, tag, redelivery count, body).
fn deliveries(frames: &[Body]) -> Vec<(u64, u64, u32, Bytes)> {
    frames
        .iter()
        .filter_map(|b| match b {
            Body::Deliver(d) => Some((d.subscription, d.tag, d.redelivery_count, d.body.clone())),
            _ => None,
        })
        .collect()
}

fn depth(b: &Broker, queue: &str) -> usize {
    b.queue_depth(queue).unwrap_or(0)
}

#[tokio::test]
async fn a_send_is_published_and_receipted() {
    let b = Broker::new(BrokerSettings::default());
    let (mut c, _peer) = connection(&b);
    c.apply(send_to("queue://a", "hello", None, 7));
    assert_eq!(written(&mut c), [receipt(7)]);
    assert_eq!(depth(&b, "queue://a"), 1);
}

#[tokio::test]
async fn a_send_with_an_out_of_range_priority_is_refused_by_the_one_builder() {
    let b = Broker::new(BrokerSettings::default());
    let (mut c, _peer) = connection(&b);
    let mut bad = send_to("queue://a", "x", None, 3);
    if let Request::Send(s) = &mut bad {
        s.draft.priority = 10;
    }
    c.apply(bad);
    let frames = written(&mut c);
    assert_eq!(error_code_of(&frames, 3), ErrorCode::Invalid);
    assert!(format!("{frames:?}").contains("priority 10 is out of range"));
    assert_eq!(depth(&b, "queue://a"), 0);
}

#[tokio::test]
async fn a_send_to_a_full_fail_destination_is_refused_with_its_receipt() {
    let b = broker(OnFull::Fail);
    let (mut c, _peer) = connection(&b);
    c.apply(send_to("queue://small.a", "first", None, 1));
    c.apply(send_to("queue://small.a", "second", None, 2));
    let frames = written(&mut c);
    assert_eq!(frames[0], receipt(1));
    assert_eq!(error_code_of(&frames, 2), ErrorCode::ResourceExhausted);
    assert_eq!(depth(&b, "queue://small.a"), 1);
    assert!(
        c.closing.is_none(),
        "a refused send does not end a native connection"
    );
}

#[tokio::test]
async fn a_transactional_send_to_a_full_fail_destination_is_refused_like_a_plain_one() {
    let b = broker(OnFull::Fail);
    let (mut c, _peer) = connection(&b);
    c.apply(begin(5, 1));
    c.apply(send_to("queue://small.a", "first", Some(5), 2));
    c.apply(send_to("queue://small.a", "second", Some(5), 3));
    c.apply(commit(5, 4));
    let frames = written(&mut c);
    assert_eq!(&frames[..2], [receipt(1), receipt(2)]);
    assert_eq!(error_code_of(&frames, 3), ErrorCode::ResourceExhausted);
    assert_eq!(frames.last(), Some(&receipt(4)));
    assert_eq!(depth(&b, "queue://small.a"), 1, "only the first was taken");
}

#[tokio::test]
async fn a_send_to_a_full_block_destination_waits_and_holds_back_later_frames() {
    let b = broker(OnFull::Block);
    let (mut c, _peer) = connection(&b);
    let (mut consumer, _consumer_peer) = connection(&b);
    c.apply(send_to("queue://small.a", "first", None, 1));
    c.apply(send_to("queue://small.a", "second", None, 2));
    assert_eq!(written(&mut c), [receipt(1)], "the second send waits");
    assert!(c.blocked.is_some());
    // While it waits, nothing more is read from the client.
    c.pump.rbuf.extend_from_slice(&{
        let mut ping = BytesMut::new();
        wire::encode(
            &wire::frame(Body::Heartbeat(proto::Heartbeat { receipt: 9 })),
            &mut ping,
        );
        ping
    });
    c.process_frames();
    assert!(written(&mut c).is_empty(), "a frame was read while blocked");

    // A consumer takes the first message: there is room, the send goes, then the ping.
    consumer.apply(subscribe(1, "queue://small.a", 1));
    consumer.fill();
    let got = deliveries(&written(&mut consumer));
    assert_eq!(got.len(), 1);
    consumer.apply(Request::Ack {
        subscription: 1,
        up_to: 0,
        tags: vec![got[0].1],
        transaction: None,
        receipt: None,
    });
    assert!(b.has_room(
        c.blocked.as_ref().map(|s| &s.target).expect("blocked"),
        false
    ));
    c.retry_blocked();
    c.process_frames();
    assert_eq!(written(&mut c), [receipt(2), receipt(9)]);
    assert_eq!(depth(&b, "queue://small.a"), 1);
}

#[tokio::test]
async fn a_transactional_send_to_a_full_block_destination_waits_like_a_plain_one() {
    let b = broker(OnFull::Block);
    let (mut c, _peer) = connection(&b);
    c.apply(begin(5, 1));
    c.apply(send_to("queue://small.a", "first", Some(5), 2));
    c.apply(send_to("queue://small.a", "second", Some(5), 3));
    assert_eq!(written(&mut c), [receipt(1), receipt(2)]);
    assert!(
        c.blocked.as_ref().is_some_and(|s| s.transaction.is_some()),
        "the staged send past the limit waits"
    );
}

#[tokio::test]
async fn subscribe_delivers_and_ack_and_nack_settle_deliveries() {
    let b = Broker::new(BrokerSettings::default());
    let (mut c, _peer) = connection(&b);
    c.apply(subscribe(1, "queue://a", 10));
    c.apply(send_to("queue://a", "m", None, 11));
    c.fill();
    let frames = written(&mut c);
    assert_eq!(&frames[..2], [receipt(10), receipt(11)]);
    let first = deliveries(&frames);
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].0, first[0].2), (1, 0));
    c.apply(Request::Nack {
        subscription: 1,
        tags: vec![first[0].1],
        transaction: None,
        receipt: Some(12),
    });
    c.fill();
    let frames = written(&mut c);
    assert_eq!(frames[0], receipt(12));
    let again = deliveries(&frames);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].2, 1, "redelivered");
    c.apply(Request::Ack {
        subscription: 1,
        up_to: again[0].1,
        tags: Vec::new(),
        transaction: None,
        receipt: Some(13),
    });
    assert_eq!(written(&mut c), [receipt(13)]);
    assert_eq!(depth(&b, "queue://a"), 0);
    // A second ack of it is a refusal the client hears about.
    c.apply(Request::Ack {
        subscription: 1,
        up_to: 0,
        tags: vec![again[0].1],
        transaction: None,
        receipt: Some(14),
    });
    assert_eq!(error_code_of(&written(&mut c), 14), ErrorCode::Invalid);
}

/// Puts native frames in the connection's read buffer, as one read would.
fn arrive(c: &mut Connection<Native>, bodies: Vec<Body>) {
    for body in bodies {
        wire::encode(&wire::frame(body), &mut c.pump.rbuf);
    }
}

fn plain_ack(subscription: u64, tag: u64, receipt: u64) -> Body {
    Body::Ack(proto::Ack {
        subscription,
        up_to: 0,
        tags: vec![tag],
        receipt,
        transaction: 0,
    })
}

/// The acknowledgements a run of frames carries are applied together (`held_acks`): they
/// settle exactly the deliveries they name, in any order, as one by one — a tag named twice is
/// refused the second time, and a later frame (here an ack with a receipt) sees them applied.
#[tokio::test]
async fn a_runs_plain_acks_applied_together_settle_exactly_what_they_name() {
    let b = Broker::new(BrokerSettings::default());
    let (mut c, _peer) = connection(&b);
    c.apply(subscribe(1, "queue://a", 1));
    for (i, body) in ["m0", "m1", "m2", "m3", "m4", "m5"].into_iter().enumerate() {
        c.apply(send_to("queue://a", body, None, 10 + i as u64));
    }
    c.fill();
    let got = deliveries(&written(&mut c));
    assert_eq!(got.len(), 6);
    let tag = |i: usize| got[i].1;
    arrive(
        &mut c,
        vec![
            plain_ack(1, tag(3), 0),
            plain_ack(1, tag(0), 0),
            plain_ack(1, tag(5), 0),
            plain_ack(1, tag(0), 0),
            plain_ack(1, tag(1), 20),
        ],
    );
    c.process_frames();
    let frames = written(&mut c);
    assert_eq!(
        error_code_of(&frames, 0),
        ErrorCode::Invalid,
        "m0 acked twice"
    );
    assert_eq!(frames.last(), Some(&receipt(20)));
    assert_eq!(depth(&b, "queue://a"), 2, "m2 and m4 are still in flight");
    // Another plain run, then the session ends: what it acked is gone, the rest comes back.
    arrive(&mut c, vec![plain_ack(1, tag(4), 0)]);
    c.process_frames();
    assert_eq!(depth(&b, "queue://a"), 1);
    c.end_session();
    let (mut next, _next_peer) = connection(&b);
    next.apply(subscribe(2, "queue://a", 1));
    next.fill();
    let again = deliveries(&written(&mut next));
    let bodies: Vec<(u32, &[u8])> = again.iter().map(|d| (d.2, &d.3[..])).collect();
    assert_eq!(bodies, [(1, &b"m2"[..])], "only m2 comes back, redelivered");
}

#[tokio::test]
async fn unsubscribe_ends_a_subscription_once() {
    let b = Broker::new(BrokerSettings::default());
    let (mut c, _peer) = connection(&b);
    c.apply(subscribe(1, "topic://t", 1));
    let unsubscribe = |receipt| Request::Unsubscribe {
        subscription: 1,
        remove_durable: false,
        receipt: Some(receipt),
    };
    c.apply(unsubscribe(2));
    c.apply(unsubscribe(3));
    let frames = written(&mut c);
    assert_eq!(&frames[..2], [receipt(1), receipt(2)]);
    assert_eq!(error_code_of(&frames, 3), ErrorCode::NotFound);
    assert_eq!(c.session.subscription_count(), 0);
}

#[tokio::test]
async fn a_commit_applies_sends_and_acks_together_and_an_abort_undoes_them() {
    let b = Broker::new(BrokerSettings::default());
    let (mut c, _peer) = connection(&b);
    c.apply(subscribe(1, "queue://in", 1));
    c.apply(send_to("queue://in", "work", None, 2));
    c.fill();
    let tag = deliveries(&written(&mut c))[0].1;

    // Abort: the staged send vanishes, the acknowledged delivery comes back.
    c.apply(begin(1, 3));
    c.apply(send_to("queue://out", "result", Some(1), 4));
    c.apply(Request::Ack {
        subscription: 1,
        up_to: 0,
        tags: vec![tag],
        transaction: Some(TxName::Numbered(1)),
        receipt: Some(5),
    });
    assert_eq!(depth(&b, "queue://out"), 0, "staged, not visible");
    c.apply(Request::Abort {
        transaction: TxName::Numbered(1),
        receipt: Some(6),
    });
    c.fill();
    let frames = written(&mut c);
    assert_eq!(
        &frames[..4],
        [receipt(3), receipt(4), receipt(5), receipt(6)]
    );
    let back = deliveries(&frames);
    assert_eq!(back.len(), 1, "the aborted ack's delivery is redelivered");
    assert_eq!(depth(&b, "queue://out"), 0);

    // Commit: both at once.
    c.apply(begin(2, 7));
    c.apply(send_to("queue://out", "result", Some(2), 8));
    c.apply(Request::Ack {
        subscription: 1,
        up_to: 0,
        tags: vec![back[0].1],
        transaction: Some(TxName::Numbered(2)),
        receipt: Some(9),
    });
    c.apply(commit(2, 10));
    assert_eq!(
        written(&mut c),
        [receipt(7), receipt(8), receipt(9), receipt(10)]
    );
    assert_eq!(depth(&b, "queue://out"), 1);
    assert_eq!(depth(&b, "queue://in"), 0);
}

#[tokio::test]
async fn transactions_must_be_begun_once_and_named_when_used() {
    let b = Broker::new(BrokerSettings::default());
    let (mut c, _peer) = connection(&b);
    c.apply(begin(1, 1));
    c.apply(begin(1, 2));
    c.apply(commit(9, 3));
    c.apply(send_to("queue://a", "x", Some(9), 4));
    c.apply(Request::Ack {
        subscription: 1,
        up_to: 5,
        tags: Vec::new(),
        transaction: Some(TxName::Numbered(1)),
        receipt: Some(5),
    });
    c.apply(Request::Abort {
        transaction: TxName::Numbered(9),
        receipt: Some(6),
    });
    let frames = written(&mut c);
    assert_eq!(frames[0], receipt(1));
    assert_eq!(error_code_of(&frames, 2), ErrorCode::Invalid);
    assert_eq!(error_code_of(&frames, 3), ErrorCode::NotFound);
    assert_eq!(error_code_of(&frames, 4), ErrorCode::NotFound);
    assert_eq!(error_code_of(&frames, 5), ErrorCode::Invalid);
    assert_eq!(error_code_of(&frames, 6), ErrorCode::NotFound);
    assert!(format!("{frames:?}").contains("no open transaction 9"));
    assert_eq!(depth(&b, "queue://a"), 0);
}

#[tokio::test]
async fn a_closing_connection_aborts_its_open_transactions() {
    let b = Broker::new(BrokerSettings::default());
    let (mut c, _peer) = connection(&b);
    c.apply(begin(1, 1));
    c.apply(send_to("queue://a", "never", Some(1), 2));
    c.end_session();
    assert!(c.txs.is_empty());
    assert_eq!(depth(&b, "queue://a"), 0);
}

#[tokio::test]
async fn a_ping_is_answered_in_order_and_a_disconnect_ends_the_session() {
    let b = Broker::new(BrokerSettings {
        ..BrokerSettings::default()
    });
    let (mut c, _peer) = connection(&b);
    c.apply(subscribe(1, "queue://a", 1));
    c.apply(Request::Ping { receipt: 2 });
    c.apply(Request::Disconnect { receipt: Some(3) });
    assert_eq!(written(&mut c), [receipt(1), receipt(2), receipt(3)]);
    assert!(c.disconnecting);
    assert_eq!(c.session.subscription_count(), 0, "the session ended");
}

#[tokio::test]
async fn refusals_become_errors_and_a_bad_frame_ends_the_connection() {
    let b = Broker::new(BrokerSettings::default());
    let (mut c, _peer) = connection(&b);
    c.apply(Request::refuse(Refusal::invalid("no such thing"), Some(1)));
    c.apply(Request::refuse(
        Refusal::Send(BrokerError::NotFound("temp-queue://gone".into())),
        Some(2),
    ));
    assert!(c.closing.is_none());
    c.apply(Request::refuse(
        Refusal::BadFrame {
            code: ErrorCode::BadFrame,
            message: "Deliver is not a frame a client may send here".into(),
            fatal: true,
        },
        None,
    ));
    let frames = written(&mut c);
    assert_eq!(error_code_of(&frames, 1), ErrorCode::Invalid);
    assert_eq!(error_code_of(&frames, 2), ErrorCode::NotFound);
    assert_eq!(error_code_of(&frames, 0), ErrorCode::BadFrame);
    assert_eq!(c.closing, Some("error"));
}

#[tokio::test]
async fn sends_and_subscriptions_are_authorized_on_the_parsed_destination() {
    let b = Broker::new(BrokerSettings::default());
    let acls = vec![Acl {
        destination: DestinationPattern::parse("queue://shared.>").expect("pattern"),
        read: vec!["readers".into()],
        write: vec!["writers".into()],
        admin: vec!["writers".into()],
    }];
    let writer = Principal {
        user: Some("w".into()),
        groups: vec!["writers".into()],
    };
    let (mut c, _peer) = connection_with(&b, acls, writer);
    c.apply(send_to("queue://shared.a", "ok", None, 1));
    c.apply(send_to("queue://private", "no", None, 2));
    c.apply(subscribe(1, "queue://shared.a", 3));
    c.apply(subscribe(2, "queue://shared.>", 4));
    let frames = written(&mut c);
    assert_eq!(frames[0], receipt(1));
    assert_eq!(error_code_of(&frames, 2), ErrorCode::Forbidden);
    assert_eq!(error_code_of(&frames, 3), ErrorCode::Forbidden);
    assert_eq!(error_code_of(&frames, 4), ErrorCode::Forbidden);
    assert_eq!(depth(&b, "queue://shared.a"), 1);
    assert!(b.queue_depth("queue://private").is_none(), "never created");
}
