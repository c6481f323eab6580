//! A send inside a transaction meets producer flow control exactly as a plain send does, on
//! STOMP and on the native protocol: at a full `on_full = "fail"` destination it is refused
//! (the transaction commits only what was taken before), and at a full `on_full = "block"`
//! destination it waits — its connection reads nothing more meanwhile, so its COMMIT waits too —
//! until a consumer makes room. (Before the one command pipeline, a transactional send skipped
//! flow control: a transaction could stage any amount past a destination's limit.)

use crate::common;
use crate::common_stomp;

use std::time::Duration;

use bytes::Bytes;
use common_stomp::{native_url, runtime, send, subscribe, RawStomp, Topology, GUARD};
use meshmq::client::{Client, ClientOptions, ErrorCode, Outgoing, SubscribeOptions};
use meshmq::stomp::{Command, Frame};

const SIZE: usize = 1024;
/// 64 KiB cannot hold this many messages of 1 KiB.
const TOO_MANY: u64 = 200;
/// A queue that refuses sends once it holds 64 KiB.
const FAIL_AT_64K: &str = "[[policy]]\ndestination = \"queue://small\"\n\
                           memory_limit = \"64KiB\"\non_full = \"fail\"\n";
/// A queue whose producers wait once it holds 64 KiB.
const BLOCK_AT_64K: &str = "[[policy]]\ndestination = \"queue://narrow\"\n\
                            memory_limit = \"64KiB\"\non_full = \"block\"\n";

fn body(seq: u64) -> Bytes {
    let mut b = vec![b'm'; SIZE];
    b[..8].copy_from_slice(&seq.to_be_bytes());
    Bytes::from(b)
}

fn depth(b: &common_stomp::Broker, queue: &str) -> f64 {
    b.metric("meshmq_destination_depth", &[("destination", queue)])
}

#[test]
fn a_stomp_transactional_send_to_a_full_fail_queue_is_refused() {
    let b = Topology::new()
        .section(FAIL_AT_64K)
        .listener("stomp", "stomp", "")
        .start();
    let mut c = RawStomp::connect(b.addr("stomp"), &[]);
    c.call(
        Frame::new(Command::Begin).with_header("transaction", "t1"),
        "begin",
    );
    let text = "x".repeat(SIZE);
    let mut accepted = 0u64;
    let refusal = loop {
        assert!(
            accepted < TOO_MANY,
            "{TOO_MANY} sends of 1 KiB staged past a 64 KiB limit: the transaction skipped flow control"
        );
        let receipt = format!("send-{accepted}");
        c.send(
            &send("/queue/small", &text)
                .with_header("transaction", "t1")
                .with_header("receipt", &receipt),
        );
        let answer = c.recv().expect("an answer to the send");
        match answer.command {
            Command::Receipt => {
                assert_eq!(answer.header("receipt-id"), Some(receipt.as_str()));
                accepted += 1;
            }
            Command::Error => break answer.header("message").unwrap_or("").to_string(),
            other => panic!("expected RECEIPT or ERROR, got {other}"),
        }
    };
    assert!(
        refusal.contains("queue://small") && refusal.contains("full"),
        "{refusal}"
    );
    assert!(accepted > 0 && accepted < 64, "{accepted} taken");
    // A STOMP error ends the connection, and its open transaction with it.
    assert!(c.recv().is_none(), "the connection stays open after ERROR");
    assert_eq!(
        depth(&b, "queue://small"),
        0.0,
        "an aborted send is visible"
    );
    assert!(b.metric("meshmq_sends_refused_total", &[("reason", "full")]) >= 1.0);
}

#[test]
fn a_native_transactional_send_to_a_full_fail_queue_is_refused() {
    let b = Topology::new()
        .section(FAIL_AT_64K)
        .listener("native", "tcp", "")
        .start();
    let rt = runtime();
    let (refused, committed) = rt.block_on(async {
        let c = Client::connect(&native_url(&b, "native"), ClientOptions::default())
            .await
            .expect("connect");
        let tx = c.begin().await.expect("begin");
        for i in 0..TOO_MANY {
            tx.send("queue://small", &Outgoing::new(body(i)))
                .await
                .expect("queued to the broker");
        }
        // The commit's receipt comes after every send before it was handled.
        tx.commit().await.expect("commit");
        let refused = c.take_errors();
        let mut sub = c
            .subscribe("queue://small", SubscribeOptions::default())
            .await
            .expect("subscribe");
        let mut committed = Vec::new();
        while let Some(d) = sub.next_timeout(Duration::from_millis(500)).await {
            committed.push(u64::from_be_bytes(d.body[..8].try_into().expect("8 bytes")));
        }
        (refused, committed)
    });
    assert!(
        !refused.is_empty(),
        "no send of the transaction was refused: it skipped flow control"
    );
    for e in &refused {
        assert_eq!(e.code(), Some(ErrorCode::ResourceExhausted), "{e}");
        assert!(e.to_string().contains("queue://small"), "{e}");
    }
    let n = committed.len() as u64;
    assert!(n > 0 && n < 64, "{n} committed");
    assert_eq!(
        committed,
        (0..n).collect::<Vec<_>>(),
        "what was taken before the limit, in order"
    );
    assert_eq!(
        n + refused.len() as u64,
        TOO_MANY,
        "each send taken or refused"
    );
}

#[test]
fn a_native_transactional_send_to_a_full_block_queue_waits_for_room() {
    let b = Topology::new()
        .section(BLOCK_AT_64K)
        .listener("native", "tcp", "")
        .start();
    let url = native_url(&b, "native");
    let rt = runtime();
    rt.block_on(async {
        // A plain producer fills the queue to its limit and stalls there.
        let filler = Client::connect(&url, ClientOptions::default())
            .await
            .expect("connect");
        let filling = tokio::spawn({
            let filler = filler.clone();
            async move {
                for i in 0..TOO_MANY {
                    filler.send("queue://narrow", &Outgoing::new(body(i))).await?;
                }
                filler.flush().await
            }
        });
        common::wait::poll()
            .within(GUARD)
            .until_async("the queue fills", || {
                b.metric(
                    "meshmq_destination_memory_bytes",
                    &[("destination", "queue://narrow")],
                ) >= 64.0 * 1024.0
            })
            .await;

        // A transactional producer: its send must wait like the plain one, and its commit
        // behind it.
        let producer = Client::connect(&url, ClientOptions::default())
            .await
            .expect("connect");
        let tx = producer.begin().await.expect("begin");
        tx.send("queue://narrow", &Outgoing::new(Bytes::from_static(b"in-tx")))
            .await
            .expect("queued to the broker");
        let commit = tokio::spawn(tx.commit());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !commit.is_finished(),
            "the commit was answered while the queue was full: the transactional send skipped flow control"
        );
        assert!(!filling.is_finished(), "the plain producer is stalled too");

        // A consumer drains the queue: both producers go on, the commit is answered, and
        // every message arrives once.
        let consumer = Client::connect(&url, ClientOptions::default())
            .await
            .expect("connect");
        let mut sub = consumer
            .subscribe("queue://narrow", SubscribeOptions::default())
            .await
            .expect("subscribe");
        let mut plain = 0u64;
        let mut in_tx = 0;
        while plain < TOO_MANY || in_tx == 0 {
            let d = tokio::time::timeout(GUARD, sub.next())
                .await
                .unwrap_or_else(|_| panic!("{plain} plain and {in_tx} transactional arrived"))
                .expect("subscription open");
            if &d.body[..] == b"in-tx" {
                in_tx += 1;
            } else {
                assert_eq!(d.body, body(plain), "plain message {plain}");
                plain += 1;
            }
        }
        tokio::time::timeout(GUARD, commit)
            .await
            .expect("the commit is answered once there is room")
            .expect("join")
            .expect("commit");
        tokio::time::timeout(GUARD, filling)
            .await
            .expect("the plain producer completes")
            .expect("join")
            .expect("plain sends");
        assert!(sub.next_timeout(Duration::from_millis(200)).await.is_none());
        assert_eq!(in_tx, 1);
        assert_eq!(producer.async_error_count(), 0, "{:?}", producer.take_errors());
    });
    assert!(b.metric("meshmq_producer_flow_control_waits_total", &[]) >= 2.0);
}

#[test]
fn a_stomp_transactional_send_to_a_full_block_queue_waits_for_room() {
    let b = Topology::new()
        .section(BLOCK_AT_64K)
        .listener("stomp", "stomp", "")
        .start();
    let text = "y".repeat(SIZE);
    // Fill the queue to its limit with plain sends (each receipted before the next).
    let mut filler = RawStomp::connect(b.addr("stomp"), &[]);
    let mut filled = 0;
    while b.metric(
        "meshmq_destination_memory_bytes",
        &[("destination", "queue://narrow")],
    ) < 64.0 * 1024.0
    {
        filler.call(send("/queue/narrow", &text), &format!("fill-{filled}"));
        filled += 1;
        assert!(filled < TOO_MANY, "the queue never filled");
    }
    let mut producer = RawStomp::connect(b.addr("stomp"), &[]);
    producer.call(
        Frame::new(Command::Begin).with_header("transaction", "t1"),
        "begin",
    );
    producer.send(
        &send("/queue/narrow", "in-tx")
            .with_header("transaction", "t1")
            .with_header("receipt", "staged"),
    );
    // Nothing comes back while the queue is full: the send waits for room.
    let waiting = std::thread::spawn(move || {
        let staged = producer.expect(Command::Receipt);
        assert_eq!(staged.header("receipt-id"), Some("staged"));
        producer.call(
            Frame::new(Command::Commit).with_header("transaction", "t1"),
            "commit",
        );
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !waiting.is_finished(),
        "the transactional send was taken while the queue was full: it skipped flow control"
    );
    // A consumer drains: the send is taken and the transaction commits.
    let mut consumer = RawStomp::connect(b.addr("stomp"), &[]);
    consumer.send(&subscribe("/queue/narrow", "s1", "auto"));
    let mut plain = 0;
    let mut in_tx = 0;
    while plain < filled || in_tx == 0 {
        let m = consumer.expect(Command::Message);
        if &m.body[..] == b"in-tx" {
            in_tx += 1;
        } else {
            plain += 1;
        }
    }
    waiting
        .join()
        .expect("the transaction commits once there is room");
    assert_eq!((plain, in_tx), (filled, 1));
}
