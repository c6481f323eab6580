//! Every STOMP limit stops the connection that passes it — with an ERROR frame and a close,
//! counted — while a well-behaved client on the same broker keeps exchanging messages:
//! slowloris sockets (connect_timeout), max_connections, header floods, over-long headers,
//! content-length past max_frame_size (refused before the body is sent),
//! max_subscriptions_per_connection, and a malformed frame inside a transaction (whose sends
//! never appear).

use crate::common_stomp;

use common_stomp::{send, subscribe, Broker, GoodClient, RawStomp, Topology};
use meshmq::stomp::{Command, Frame};

const MAX_HEADERS: usize = 20;
const MAX_HEADER_LENGTH: usize = 1024;
const MAX_FRAME_SIZE: usize = 64 * 1024;
const MAX_SUBSCRIPTIONS: usize = 5;

fn broker() -> Broker {
    Topology::new()
        .broker(&format!(
            "connect_timeout = \"1s\"\nstomp_max_headers = {MAX_HEADERS}\n\
             stomp_max_header_length = \"{MAX_HEADER_LENGTH}\"\nmax_frame_size = \"{MAX_FRAME_SIZE}\"\n\
             max_subscriptions_per_connection = {MAX_SUBSCRIPTIONS}"
        ))
        .listener("stomp", "stomp", "")
        .listener("small", "stomp", "max_connections = 2")
        .start()
}

fn bad_frames(b: &Broker) -> f64 {
    b.metric(
        "meshmq_bad_frames_total",
        &[("listener", &b.url("stomp")), ("protocol", "stomp")],
    )
}

#[test]
fn slowloris_sockets_are_closed_after_the_connect_timeout() {
    let b = broker();
    let good = GoodClient::start(b.addr("stomp"), "/queue/good");
    let mut silent = RawStomp::open(b.addr("stomp"));
    let mut half = RawStomp::open(b.addr("stomp"));
    half.write_raw(b"CONNECT\naccept-version:1.2\nhost:loc");
    good.progress();
    for c in [&mut silent, &mut half] {
        assert_eq!(
            c.expect_error_and_close(),
            "no CONNECT frame within the connect timeout (1s)"
        );
    }
    good.progress();
    assert_eq!(
        b.metric(
            "meshmq_connections_refused_total",
            &[("listener", &b.url("stomp")), ("reason", "connect_timeout")]
        ),
        2.0
    );
    good.finish();
}

#[test]
fn a_listener_at_max_connections_refuses_the_next_with_an_error() {
    let b = broker();
    let good = GoodClient::start(b.addr("small"), "/queue/good-1");
    let other = GoodClient::start(b.addr("small"), "/queue/good-2");
    let mut extra = RawStomp::open(b.addr("small"));
    // Refused as soon as it is accepted, before it says anything.
    assert_eq!(
        extra.expect_error_and_close(),
        "this listener already serves its max_connections (2); try another broker"
    );
    good.progress();
    other.progress();
    assert_eq!(
        b.metric(
            "meshmq_connections_refused_total",
            &[("listener", &b.url("small")), ("reason", "max_connections")]
        ),
        1.0
    );
    good.finish();
    other.finish();
}

#[test]
fn a_header_flood_is_refused_with_an_error_and_a_close() {
    let b = broker();
    let good = GoodClient::start(b.addr("stomp"), "/queue/good");
    let mut flood = RawStomp::connect(b.addr("stomp"), &[]);
    let mut frame = send("/queue/flooded", "x");
    for i in 0..MAX_HEADERS {
        frame = frame.with_header(format!("h{i}"), "v");
    }
    flood.send(&frame);
    assert_eq!(
        flood.expect_error_and_close(),
        format!("SEND frame has more than {MAX_HEADERS} headers")
    );
    good.progress();
    assert_eq!(bad_frames(&b), 1.0);
    good.finish();
}

#[test]
fn an_overlong_header_is_refused_with_an_error_and_a_close() {
    let b = broker();
    let good = GoodClient::start(b.addr("stomp"), "/queue/good");
    let mut long = RawStomp::connect(b.addr("stomp"), &[]);
    long.send(&send("/queue/long", "x").with_header("big", "y".repeat(MAX_HEADER_LENGTH)));
    assert_eq!(
        long.expect_error_and_close(),
        format!("SEND frame: a header line is longer than {MAX_HEADER_LENGTH} bytes")
    );
    good.progress();
    assert_eq!(bad_frames(&b), 1.0);
    good.finish();
}

#[test]
fn a_content_length_past_max_frame_size_is_refused_before_the_body_is_sent() {
    let b = broker();
    let good = GoodClient::start(b.addr("stomp"), "/queue/good");
    let mut big = RawStomp::connect(b.addr("stomp"), &[]);
    // Only the headers: the refusal must come without a byte of the body.
    big.write_raw(b"SEND\ndestination:/queue/big\ncontent-length:1000000\n\n");
    let message = big.expect_error_and_close();
    assert!(
        message.ends_with(&format!("exceeds the limit of {MAX_FRAME_SIZE} bytes")),
        "{message}"
    );
    good.progress();
    assert_eq!(bad_frames(&b), 1.0);
    good.finish();
}

#[test]
fn a_connection_past_max_subscriptions_is_refused_with_an_error_and_a_close() {
    let b = broker();
    let good = GoodClient::start(b.addr("stomp"), "/queue/good");
    let mut greedy = RawStomp::connect(b.addr("stomp"), &[]);
    for i in 0..MAX_SUBSCRIPTIONS {
        greedy.call(
            subscribe(&format!("/topic/greedy.{i}"), &format!("s{i}"), "auto"),
            &format!("r{i}"),
        );
    }
    greedy.send(&subscribe("/topic/greedy.more", "more", "auto"));
    assert_eq!(
        greedy.expect_error_and_close(),
        format!(
            "this connection already has {MAX_SUBSCRIPTIONS} subscriptions, the broker's max_subscriptions_per_connection"
        )
    );
    good.progress();
    good.finish();
}

#[test]
fn a_malformed_frame_inside_a_transaction_closes_the_connection_and_drops_its_sends() {
    let b = broker();
    let good = GoodClient::start(b.addr("stomp"), "/queue/good");
    let mut consumer = RawStomp::connect(b.addr("stomp"), &[]);
    consumer.call(subscribe("/queue/tx.broken", "c", "auto"), "sub");
    let mut producer = RawStomp::connect(b.addr("stomp"), &[]);
    producer.call(
        Frame::new(Command::Begin).with_header("transaction", "t1"),
        "begin",
    );
    for body in ["in-tx-1", "in-tx-2"] {
        producer.call(
            send("/queue/tx.broken", body).with_header("transaction", "t1"),
            body,
        );
    }
    // Garbage, with a COMMIT right behind it that must never be read.
    producer.write_raw(b"BOGUS\n\n\0COMMIT\ntransaction:t1\n\n\0");
    let message = producer.expect_error_and_close();
    assert!(
        message.starts_with("unknown command \"BOGUS\""),
        "{message}"
    );
    good.progress();

    let mut later = RawStomp::connect(b.addr("stomp"), &[]);
    later.call(send("/queue/tx.broken", "marker"), "marker");
    let first = consumer.expect(Command::Message);
    assert_eq!(
        &first.body[..],
        b"marker",
        "the broken transaction's sends must never appear"
    );
    assert_eq!(bad_frames(&b), 1.0);
    good.finish();
}
