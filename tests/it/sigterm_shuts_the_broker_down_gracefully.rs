//! SIGTERM shuts a broker down gracefully: every connected client — one consuming mid-stream,
//! one producing, one idle, one raw socket — is told `ShuttingDown` and closed (the error is
//! the last frame it gets), the process exits with status 0, and its ports are released so a
//! new broker binds them.

use crate::common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{Broker, Config, RawConn, GUARD};
use meshmq::client::{ClientError, ErrorCode, Outgoing, SubscribeOptions};
use meshmq::wire::{proto, Body, Frame};

const QUEUE: &str = "queue://stream";
/// The raw consumer's own queue, so it always has a backlog waiting for its credit.
const RAW_QUEUE: &str = "queue://stream.raw";

/// A raw consumer mid-stream: acks everything it reads until the broker's Error, then must see
/// the end of the stream and nothing else. Returns how many deliveries it read.
fn raw_consumer(mut raw: RawConn, started: Arc<AtomicU64>) -> u64 {
    raw.handshake(0);
    raw.send(Body::Subscribe(proto::Subscribe {
        subscription: 1,
        destination: RAW_QUEUE.into(),
        prefetch: 1000,
        ..Default::default()
    }));
    let mut delivered = 0;
    let error = loop {
        match raw.next() {
            Some(Frame {
                body: Some(Body::Deliver(d)),
            }) => {
                delivered += 1;
                started.store(delivered, Ordering::Relaxed);
                // The broker may close between its last delivery and this ack.
                let _ = raw.try_send(Body::Ack(proto::Ack {
                    subscription: 1,
                    up_to: d.tag,
                    ..Default::default()
                }));
            }
            Some(Frame {
                body: Some(Body::Error(e)),
            }) => break e,
            Some(Frame {
                body: Some(Body::Heartbeat(_)),
            }) => {}
            other => panic!("unexpected from the broker: {other:?}"),
        }
    };
    assert_eq!(
        error.code,
        proto::ErrorCode::ShuttingDown as i32,
        "{error:?}"
    );
    assert!(error.fatal);
    match raw.next() {
        None => delivered,
        other => panic!("the shutdown error must be the last frame, then came {other:?}"),
    }
}

fn shutting_down(e: &ClientError) -> bool {
    e.code() == Some(ErrorCode::ShuttingDown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_closes_every_client_then_exits_zero_and_releases_the_ports() {
    let config = Config::new();
    let mut broker = Broker::start(&config);
    let ports = broker.ports();

    let idle = broker.client().await;
    let producer = broker.client().await;
    let consumer = broker.client().await;
    let mut sub = consumer
        .subscribe(QUEUE, SubscribeOptions::default())
        .await
        .expect("subscribe");
    let received = Arc::new(AtomicU64::new(0));
    let receiving = {
        let received = received.clone();
        tokio::spawn(async move {
            while sub.next().await.is_some() {
                received.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let sending = {
        let producer = producer.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            loop {
                let msg = Outgoing::new(format!("m{i}"));
                producer.send(QUEUE, &msg).await?;
                producer.send(RAW_QUEUE, &msg).await?;
                i += 1;
                if i % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), ClientError>(())
        })
    };
    let raw_started = Arc::new(AtomicU64::new(0));
    let raw = {
        let raw = RawConn::open(ports.listen_addr());
        let started = raw_started.clone();
        tokio::task::spawn_blocking(move || raw_consumer(raw, started))
    };

    common::wait_until("both consumers are mid-stream", || {
        received.load(Ordering::Relaxed) >= 1000 && raw_started.load(Ordering::Relaxed) >= 1000
    });
    assert_eq!(broker.status().connections, 4);

    broker.sigterm();

    for (who, client) in [
        ("idle", &idle),
        ("consumer", &consumer),
        ("producer", &producer),
    ] {
        let why = tokio::time::timeout(GUARD, client.closed())
            .await
            .unwrap_or_else(|_| panic!("the {who} client was not closed"));
        if who != "producer" {
            // A producer may meet the closed socket while writing; the others are told.
            assert!(shutting_down(&why), "{who}: {why}");
        }
    }
    let sent = tokio::time::timeout(GUARD, sending)
        .await
        .expect("producer stops")
        .expect("join");
    assert!(sent.is_err(), "sends fail once the broker is gone");
    tokio::time::timeout(GUARD, receiving)
        .await
        .expect("the subscription ends with its connection")
        .expect("join");
    let raw_delivered = tokio::time::timeout(GUARD, raw)
        .await
        .expect("the raw consumer is closed")
        .expect("error, then end of stream");
    assert!(raw_delivered >= 1000);

    let status = broker.wait_exit();
    assert!(status.success(), "exit status {status}:\n{}", broker.log());
    let log = broker.log();
    assert!(log.contains("stopped"), "{log}");
    assert!(!log.contains("did not close within"), "{log}");

    assert!(common::refuses_connections(ports.listen_addr()));
    assert!(common::refuses_connections(ports.admin_addr()));
    let again = Broker::start_on(&config, ports);
    let client = again.client().await;
    client
        .send_with_receipt(QUEUE, &Outgoing::new("after restart"))
        .await
        .expect("the new broker serves on the same ports");
}
