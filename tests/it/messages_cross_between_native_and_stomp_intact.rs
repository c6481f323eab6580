//! A message crosses between the native protocol and STOMP intact, both ways: a binary body
//! with NUL bytes (STOMP carries it with content-length), user headers (even with characters
//! STOMP 1.2 must escape), content-type, correlation-id, reply-to, priority, persistent and
//! expires.

use crate::common_stomp;

use bytes::Bytes;
use common_stomp::{native_url, runtime, subscribe, Broker, RawStomp, Topology, GUARD};
use meshmq::client::{AckMode, Client, ClientOptions, Outgoing, SubscribeOptions};
use meshmq::stomp::{Command, Frame};

const BODY: &[u8] = b"\x00binary\x00body\xff\xfe\r\n\x00";
const USER_HEADERS: [(&str, &str); 2] = [
    ("user-key", "plain value"),
    ("tricky", "colon:backslash\\newline\nend"),
];

fn broker() -> Broker {
    Topology::new()
        .listener("native", "tcp", "")
        .listener("stomp", "stomp", "")
        .start()
}

/// An hour from now, in milliseconds since the epoch.
fn expires() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    now.as_millis() as u64 + 3_600_000
}

#[test]
fn a_native_message_reaches_a_stomp_subscriber_intact() {
    let b = broker();
    let rt = runtime();
    let mut stomp = RawStomp::connect(b.addr("stomp"), &[]);
    stomp.call(
        subscribe("/queue/cross.to-stomp", "s1", "client-individual"),
        "sub",
    );
    let native = rt
        .block_on(Client::connect(
            &native_url(&b, "native"),
            ClientOptions::default(),
        ))
        .expect("native connect");
    let expires_at = expires();
    let mut msg = Outgoing::new(Bytes::from_static(BODY))
        .persistent(true)
        .priority(7)
        .content_type("application/octet-stream")
        .correlation_id("corr-42")
        .reply_to("queue://cross.replies");
    for (k, v) in USER_HEADERS {
        msg = msg.header(k, v);
    }
    msg.expires_at_ms = expires_at;
    rt.block_on(native.send_with_receipt("queue://cross.to-stomp", &msg))
        .expect("native send");

    let m = stomp.expect(Command::Message);
    assert_eq!(&m.body[..], BODY, "the body, NULs and all");
    assert_eq!(
        m.header("content-length"),
        Some(BODY.len().to_string().as_str())
    );
    assert_eq!(m.header("destination"), Some("/queue/cross.to-stomp"));
    assert_eq!(m.header("subscription"), Some("s1"));
    assert_eq!(m.header("content-type"), Some("application/octet-stream"));
    assert_eq!(m.header("correlation-id"), Some("corr-42"));
    assert_eq!(m.header("reply-to"), Some("/queue/cross.replies"));
    assert_eq!(m.header("priority"), Some("7"));
    assert_eq!(m.header("persistent"), Some("true"));
    assert_eq!(m.header("expires"), Some(expires_at.to_string().as_str()));
    for (k, v) in USER_HEADERS {
        assert_eq!(m.header(k), Some(v), "user header {k}");
    }
    assert!(m.header("message-id").is_some() && m.header("ack").is_some());
}

#[test]
fn a_stomp_message_reaches_a_native_subscriber_intact() {
    let b = broker();
    let rt = runtime();
    let native = rt
        .block_on(Client::connect(
            &native_url(&b, "native"),
            ClientOptions::default(),
        ))
        .expect("native connect");
    let mut sub = rt
        .block_on(native.subscribe(
            "queue://cross.to-native",
            SubscribeOptions {
                ack: AckMode::ClientIndividual,
                ..SubscribeOptions::default()
            },
        ))
        .expect("native subscribe");

    let expires_at = expires();
    let mut send = Frame::new(Command::Send)
        .with_header("destination", "/queue/cross.to-native")
        .with_header("content-type", "application/octet-stream")
        .with_header("correlation-id", "corr-43")
        .with_header("reply-to", "/queue/cross.replies")
        .with_header("priority", "7")
        .with_header("persistent", "true")
        .with_header("expires", expires_at.to_string());
    for (k, v) in USER_HEADERS {
        send = send.with_header(k, v);
    }
    let mut stomp = RawStomp::connect(b.addr("stomp"), &[]);
    // The encoder writes content-length, so the NULs in the body survive.
    stomp.call(send.with_body(Bytes::from_static(BODY)), "sent");

    let d = rt
        .block_on(sub.next_timeout(GUARD))
        .expect("the STOMP message reaches the native subscriber");
    assert_eq!(&d.body[..], BODY, "the body, NULs and all");
    assert_eq!(d.destination, "queue://cross.to-native");
    assert_eq!(d.content_type, "application/octet-stream");
    assert_eq!(d.correlation_id, "corr-43");
    assert_eq!(d.reply_to, "queue://cross.replies");
    assert_eq!(d.priority, 7);
    assert!(d.persistent);
    assert_eq!(d.expires_at_ms, expires_at);
    let expected: Vec<(String, String)> = USER_HEADERS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        d.headers, expected,
        "exactly the user headers: STOMP's own (receipt, content-length, …) do not leak"
    );
    rt.block_on(sub.ack(&d)).expect("ack");
}

#[test]
fn a_message_goes_stomp_to_native_to_stomp_unchanged() {
    // A native relay forwards what it receives, field by field, to a STOMP subscriber.
    let b = broker();
    let rt = runtime();
    let relay = rt
        .block_on(Client::connect(
            &native_url(&b, "native"),
            ClientOptions::default(),
        ))
        .expect("native connect");
    let mut inbox = rt
        .block_on(relay.subscribe("queue://cross.relay-in", SubscribeOptions::default()))
        .expect("relay subscribe");
    let mut consumer = RawStomp::connect(b.addr("stomp"), &[]);
    consumer.call(subscribe("/queue/cross.relay-out", "out", "auto"), "sub");
    let mut producer = RawStomp::connect(b.addr("stomp"), &[]);
    let mut send = Frame::new(Command::Send)
        .with_header("destination", "/queue/cross.relay-in")
        .with_header("content-type", "application/x-binary")
        .with_header("correlation-id", "corr-44")
        .with_header("reply-to", "/topic/cross.answers")
        .with_header("priority", "2");
    for (k, v) in USER_HEADERS {
        send = send.with_header(k, v);
    }
    producer.call(send.with_body(Bytes::from_static(BODY)), "sent");

    let d = rt
        .block_on(inbox.next_timeout(GUARD))
        .expect("the relay receives");
    let mut forward = Outgoing::new(d.body.clone())
        .priority(d.priority)
        .persistent(d.persistent)
        .content_type(d.content_type.clone())
        .correlation_id(d.correlation_id.clone())
        .reply_to(d.reply_to.clone());
    forward.headers = d.headers.clone();
    rt.block_on(relay.send_with_receipt("queue://cross.relay-out", &forward))
        .expect("relay send");

    let m = consumer.expect(Command::Message);
    assert_eq!(&m.body[..], BODY);
    assert_eq!(m.header("content-type"), Some("application/x-binary"));
    assert_eq!(m.header("correlation-id"), Some("corr-44"));
    assert_eq!(m.header("reply-to"), Some("/topic/cross.answers"));
    assert_eq!(m.header("priority"), Some("2"));
    assert_eq!(m.header("persistent"), Some("false"));
    for (k, v) in USER_HEADERS {
        assert_eq!(m.header(k), Some(v), "user header {k}");
    }
}
