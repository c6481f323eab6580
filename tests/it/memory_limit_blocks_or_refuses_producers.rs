//! The memory limit holds: with `on_full = "block"` a producer with no consumer stalls at the
//! broker's limit while the broker's RSS stays bounded, and completes once a consumer drains,
//! losing nothing; a queue with no `memory_limit` of its own stalls its producer at the default
//! queue share (an eighth of the broker's limit) while other queues still accept; with
//! `on_full = "fail"` on one queue its sends are refused with `ResourceExhausted` while another
//! queue still accepts.

use crate::common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Broker, Config, GUARD};
use meshmq::client::{ErrorCode, ErrorKind, Outgoing, SubscribeOptions};

const MIB: u64 = 1 << 20;
const LIMIT: u64 = 64 * MIB;
/// The process's own footprint, buffers and per-message bookkeeping beyond the accounted
/// bytes; generous on purpose: an unbounded broker would grow by the whole 200 MiB sent.
const RSS_SLACK: u64 = 80 * MIB;
const TOTAL: u64 = 200_000;
const SIZE: usize = 1024;
const QUEUE: &str = "queue://backlog";

fn body(seq: u64) -> Bytes {
    let mut b = vec![b'm'; SIZE];
    b[..8].copy_from_slice(&seq.to_be_bytes());
    Bytes::from(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_producer_blocks_at_the_memory_limit_and_resumes_when_drained() {
    // The queue's own cap is above the broker's, so the broker's limit is the one met.
    let broker = Broker::start(
        &Config::new()
            .broker("memory_limit = \"64MiB\"")
            .broker("on_full = \"block\"")
            .section("[[policy]]\ndestination = \"queue://backlog\"\nmemory_limit = \"1GiB\""),
    );
    let producer = broker.client().await;
    let sent = Arc::new(AtomicU64::new(0));
    let sending = {
        let producer = producer.clone();
        let sent = sent.clone();
        tokio::spawn(async move {
            for i in 0..TOTAL {
                producer.send(QUEUE, &Outgoing::new(body(i))).await?;
                sent.store(i + 1, Ordering::Relaxed);
            }
            producer.flush().await
        })
    };

    common::wait_until("the broker's memory is full", || {
        let s = broker.status();
        assert!(
            !sending.is_finished(),
            "the producer finished with no consumer"
        );
        s.memory_used_bytes >= s.memory_limit_bytes
    });
    let full = broker.status();
    assert_eq!(full.memory_limit_bytes, LIMIT);
    let enqueued = broker.destination(QUEUE).enqueued;
    assert!(enqueued < TOTAL, "{enqueued}");

    // Give an unbounded broker every chance to keep accepting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = broker.status();
    let stats = broker.destination(QUEUE);
    assert_eq!(stats.enqueued, enqueued, "nothing accepted while full");
    assert!(!sending.is_finished(), "the producer is stalled, not done");
    assert!(sent.load(Ordering::Relaxed) < TOTAL);
    assert!(
        later.memory_used_bytes < LIMIT + 2 * SIZE as u64 + 1024,
        "at most one message beyond the limit: {}",
        later.memory_used_bytes
    );
    assert!(
        later.process.rss_bytes > 0 && later.process.rss_bytes < LIMIT + RSS_SLACK,
        "broker RSS {} MiB exceeds the limit plus slack",
        later.process.rss_bytes / MIB
    );
    assert!(
        common::metric_sum(
            &broker.metrics(),
            "meshmq_producer_flow_control_waits_total",
            &[]
        ) >= 1.0
    );

    // A consumer drains: the producer resumes and completes; every message arrives once, in
    // order.
    let consumer = broker.client().await;
    let mut sub = consumer
        .subscribe(QUEUE, SubscribeOptions::default())
        .await
        .expect("subscribe");
    for i in 0..TOTAL {
        let d = tokio::time::timeout(GUARD, sub.next())
            .await
            .unwrap_or_else(|_| panic!("message {i} did not arrive"))
            .expect("open");
        assert_eq!(d.body, body(i), "message {i}");
    }
    let done = tokio::time::timeout(GUARD, sending)
        .await
        .expect("the producer completes once drained")
        .expect("join");
    assert!(done.is_ok(), "{done:?}");
    assert_eq!(
        producer.async_error_count(),
        0,
        "{:?}",
        producer.take_errors()
    );
    assert!(sub.next_timeout(Duration::from_millis(100)).await.is_none());
    common::wait_until(
        "every message is acknowledged and its memory released",
        || {
            let s = broker.destination(QUEUE);
            s.depth == 0 && s.dequeued == TOTAL && broker.status().memory_used_bytes == 0
        },
    );
}

/// The default cap of a queue with no `memory_limit` of its own: an eighth of 64 MiB.
const QUEUE_SHARE: u64 = LIMIT / 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_without_its_own_limit_stalls_its_producer_at_the_default_share() {
    const SENT: u64 = 6 * QUEUE_SHARE / SIZE as u64;
    let broker = Broker::start(&Config::new().broker("memory_limit = \"64MiB\""));
    let producer = broker.client().await;
    let sending = {
        let producer = producer.clone();
        tokio::spawn(async move {
            for i in 0..SENT {
                producer.send(QUEUE, &Outgoing::new(body(i))).await?;
            }
            producer.flush().await
        })
    };
    common::wait_until("the queue reaches its default share", || {
        assert!(
            !sending.is_finished(),
            "the producer sent six times the queue's share with no consumer"
        );
        broker.destination(QUEUE).memory_bytes >= QUEUE_SHARE
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = broker.destination(QUEUE);
    assert!(!sending.is_finished(), "the producer is stalled, not done");
    assert!(
        held.memory_bytes < QUEUE_SHARE + 2 * SIZE as u64 + 1024,
        "at most one message beyond the queue's share: {}",
        held.memory_bytes
    );
    let status = broker.status();
    assert!(
        status.memory_used_bytes < status.memory_limit_bytes / 2,
        "the broker itself is far from full: {} of {}",
        status.memory_used_bytes,
        status.memory_limit_bytes
    );

    // Another queue (another connection: the stalled one reads nothing more) still accepts.
    let other = broker.client().await;
    for i in 0..100 {
        other
            .send_with_receipt("queue://other", &Outgoing::new(body(i)))
            .await
            .expect("another queue still accepts");
    }
    assert_eq!(broker.destination("queue://other").depth, 100);

    // A consumer drains: the producer completes; every message arrives once, in order.
    let consumer = broker.client().await;
    let mut sub = consumer
        .subscribe(QUEUE, SubscribeOptions::default())
        .await
        .expect("subscribe");
    for i in 0..SENT {
        let d = tokio::time::timeout(GUARD, sub.next())
            .await
            .unwrap_or_else(|_| panic!("message {i} did not arrive"))
            .expect("open");
        assert_eq!(d.body, body(i), "message {i}");
    }
    let done = tokio::time::timeout(GUARD, sending)
        .await
        .expect("the producer completes once drained")
        .expect("join");
    assert!(done.is_ok(), "{done:?}");
    assert!(sub.next_timeout(Duration::from_millis(100)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fail_policy_refuses_sends_to_its_full_queue_only() {
    let broker = Broker::start(&Config::new().section(
        "[[policy]]\ndestination = \"queue://small\"\nmemory_limit = \"64KiB\"\non_full = \"fail\"",
    ));
    let client = broker.client().await;
    let msg = Outgoing::new(body(0));
    let mut accepted = 0u64;
    let refusal = loop {
        match client.send_with_receipt("queue://small", &msg).await {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 1000, "64 KiB cannot hold 1000 messages of 1 KiB");
    };
    assert_eq!(refusal.kind(), ErrorKind::Refused, "{refusal}");
    assert_eq!(
        refusal.code(),
        Some(ErrorCode::ResourceExhausted),
        "{refusal}"
    );
    assert!(refusal.to_string().contains("queue://small"), "{refusal}");
    assert!(accepted > 0 && accepted < 64, "{accepted}");

    // The refusal is per destination, and the connection is still fine.
    for _ in 0..100 {
        client
            .send_with_receipt("queue://large", &msg)
            .await
            .expect("another queue still accepts");
    }
    let again = client.send_with_receipt("queue://small", &msg).await;
    assert_eq!(
        again.map_err(|e| e.code()),
        Err(Some(ErrorCode::ResourceExhausted))
    );
    assert_eq!(broker.destination("queue://small").depth, accepted);
    assert_eq!(broker.destination("queue://large").depth, 100);
    assert!(
        common::metric_sum(
            &broker.metrics(),
            "meshmq_sends_refused_total",
            &["reason=\"full\""]
        ) >= 2.0
    );
}
