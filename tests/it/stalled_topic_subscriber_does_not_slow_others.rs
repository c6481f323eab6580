//! A topic subscriber that never reads its socket does not slow or stop the others: they get
//! every message, in order; the producer is never refused; the stalled subscriber's backlog is
//! dropped (counted) at `topic_pending_limit`; closing the stalled sockets leaves the broker
//! serving.

use crate::common;

use bytes::Bytes;
use common::{Broker, Config, RawConn, GUARD};
use meshmq::client::{Client, Outgoing, SubscribeOptions};
use meshmq::wire::{proto, Body, Frame};
use tokio::sync::watch;

const TOTAL: u64 = 200_000;
const SIZE: usize = 1024;
const PENDING_LIMIT: u64 = 1000;
/// The producer lets each normal subscriber fall at most this far behind, so a normal
/// subscriber can never reach the pending limit however slowly the machine runs it; a broker
/// that held the others back for the stalled one would stop them from catching up at all.
const WINDOW: u64 = PENDING_LIMIT / 2;
const TOPIC: &str = "topic://feed";

fn body(seq: u64) -> Bytes {
    let mut b = vec![b'.'; SIZE];
    b[..8].copy_from_slice(&seq.to_be_bytes());
    Bytes::from(b)
}

/// A raw connection that subscribes with `prefetch` and then never reads again.
fn stalled_subscriber(broker: &Broker, prefetch: u32) -> RawConn {
    let mut raw = RawConn::open(broker.ports().listen_addr());
    raw.handshake(0);
    raw.send(Body::Subscribe(proto::Subscribe {
        subscription: 1,
        destination: TOPIC.into(),
        prefetch,
        receipt: 7,
        ..Default::default()
    }));
    match raw.next() {
        Some(Frame {
            body: Some(Body::Receipt(r)),
        }) => assert_eq!(r.receipt, 7),
        other => panic!("expected the subscription's receipt, got {other:?}"),
    }
    raw
}

/// Receives TOTAL messages and checks each one's sequence and size; publishes its progress.
fn normal_subscriber(
    client: Client,
    mut sub: meshmq::client::Subscription,
    progress: watch::Sender<u64>,
) -> tokio::task::JoinHandle<Result<(), String>> {
    tokio::spawn(async move {
        let _client = client;
        let mut next = 0u64;
        while next < TOTAL {
            let d = sub
                .next()
                .await
                .ok_or_else(|| format!("subscription ended after {next} messages"))?;
            let seq = d
                .body
                .get(..8)
                .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")));
            if seq != Some(next) || d.body.len() != SIZE {
                return Err(format!(
                    "expected message {next} of {SIZE} bytes, got {seq:?} of {} bytes",
                    d.body.len()
                ));
            }
            next += 1;
            progress.send_replace(next);
        }
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_that_never_reads_does_not_hold_back_the_others() {
    let broker =
        Broker::start(&Config::new().broker(&format!("topic_pending_limit = {PENDING_LIMIT}")));

    // One stalled subscriber with a small prefetch, as asked; one whose prefetch is large
    // enough that the broker fills its socket buffers and then has to stop writing to it.
    let stalled_small = stalled_subscriber(&broker, 10);
    let stalled_full = stalled_subscriber(&broker, 50_000);

    let mut subscribers = Vec::new();
    let mut progress = Vec::new();
    for _ in 0..3 {
        let client = broker.client().await;
        let sub = client
            .subscribe(TOPIC, SubscribeOptions::default())
            .await
            .expect("subscribe");
        let (tx, rx) = watch::channel(0u64);
        subscribers.push(normal_subscriber(client, sub, tx));
        progress.push(rx);
    }
    assert_eq!(broker.destination(TOPIC).consumers, 5);

    let producer = broker.client().await;
    let mut sent = 0u64;
    while sent < TOTAL {
        let batch_end = (sent + WINDOW).min(TOTAL);
        while sent < batch_end {
            producer
                .send(TOPIC, &Outgoing::new(body(sent)))
                .await
                .expect("the producer is never refused");
            sent += 1;
        }
        for (i, rx) in progress.iter_mut().enumerate() {
            let caught_up = tokio::time::timeout(GUARD, rx.wait_for(|n| *n >= batch_end))
                .await
                .map(|r| r.is_ok());
            match caught_up {
                Ok(true) => {}
                Ok(false) => {
                    let failed = subscribers.remove(i).await.expect("join");
                    panic!("subscriber {i} stopped: {failed:?}");
                }
                Err(_) => panic!(
                    "subscriber {i} is stuck at {} of {batch_end} messages",
                    *rx.borrow()
                ),
            }
        }
    }
    producer.flush().await.expect("every send processed");
    assert_eq!(
        producer.async_error_count(),
        0,
        "{:?}",
        producer.take_errors()
    );
    for (i, s) in subscribers.into_iter().enumerate() {
        let done = tokio::time::timeout(GUARD, s)
            .await
            .expect("subscriber ends");
        assert_eq!(done.expect("join"), Ok(()), "subscriber {i}");
    }

    let stats = broker.destination(TOPIC);
    assert_eq!(stats.enqueued, TOTAL, "{stats:?}");
    assert!(
        stats.dropped > 0,
        "the stalled backlogs were dropped: {stats:?}"
    );
    // What is still held is bounded by the stalled subscribers' limits, not by TOTAL.
    assert!(
        stats.pending <= 2 * PENDING_LIMIT,
        "pending is capped per subscriber: {stats:?}"
    );
    let metrics = broker.metrics();
    assert_eq!(
        common::metric_sum(&metrics, "meshmq_sends_refused_total", &[]),
        0.0
    );

    drop(stalled_small);
    drop(stalled_full);
    common::wait_until("the stalled connections are gone", || {
        let s = broker.status();
        s.connections == 1 && broker.destination(TOPIC).consumers == 0
    });

    // Still serving: a new subscriber and a new message, end to end.
    let client = broker.client().await;
    let mut sub = client
        .subscribe(TOPIC, SubscribeOptions::default())
        .await
        .expect("subscribe after the stall");
    producer
        .send_with_receipt(TOPIC, &Outgoing::new(body(TOTAL)))
        .await
        .expect("send after the stall");
    let d = tokio::time::timeout(GUARD, sub.next())
        .await
        .expect("delivered after the stall")
        .expect("open");
    assert_eq!(d.body, body(TOTAL));
    let (code, _) = common::http_get(broker.admin(), "/healthz").expect("healthz");
    assert_eq!(code, 200);
}
