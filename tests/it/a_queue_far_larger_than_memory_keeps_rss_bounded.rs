//! A queue of persistent messages far larger than `memory_limit` keeps the broker's RSS
//! bounded: 400 MB of 4 KiB messages with no consumer stay on disk beyond the 32 MiB limit, the
//! RSS sampled all along stays under the limit plus 150 MiB, and a consumer then receives every
//! message, in order, read back from the journal.

use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Broker, Config, GUARD};
use meshmq::client::{Outgoing, SubscribeOptions};

const MIB: u64 = 1 << 20;
const QUEUE: &str = "queue://archive";
const BODY: usize = 4096;
const TOTAL: u64 = 100_000;
const LIMIT: u64 = 32 * MIB;
/// What the broker may hold beyond the accounted message bytes (the limit), from what is in
/// memory besides them:
/// - the journal's write batch, which flow control caps at 8 MiB of unsynced records, and the
///   bodies of those same messages until they are durable and paged out;
/// - a queue slot per paged-out message, ~40 bytes: 100,000 × 40 B ≈ 4 MB;
/// - the process itself (code, runtime, allocator arenas, socket and read buffers): ~20 MiB;
/// - pages freed in the last second that the allocator has not handed back yet (the broker
///   configures jemalloc to return them after a second): at the ~100 MB/s of bodies that
///   stream through memory to the journal here, up to ~100 MiB.
const SLACK: u64 = 150 * MIB;

fn body(i: u64) -> Vec<u8> {
    let mut b = format!("m{i:06}|").into_bytes();
    b.resize(BODY, b'a');
    b
}

/// Samples the broker's RSS from `/status` until stopped, failing past the bound; returns the
/// largest seen.
fn sample_rss(admin: SocketAddr, stop: Arc<AtomicBool>) -> u64 {
    let mut largest = 0;
    while !stop.load(Ordering::Relaxed) {
        let rss = common::member_status(admin).process.rss_bytes;
        assert!(rss > 0, "/status reports the RSS");
        assert!(
            rss < LIMIT + SLACK,
            "broker RSS {} MiB exceeds the {} MiB limit plus {} MiB",
            rss / MIB,
            LIMIT / MIB,
            SLACK / MIB
        );
        largest = largest.max(rss);
        std::thread::sleep(Duration::from_millis(50));
    }
    largest
}

fn start_sampling(broker: &Broker) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let admin = broker.admin();
    let flag = stop.clone();
    (
        stop,
        tokio::task::spawn_blocking(move || sample_rss(admin, flag)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_hundred_megabytes_queued_past_a_32_mib_limit_keep_rss_bounded_and_drain_in_order() {
    let broker = Broker::start(&Config::new().broker("memory_limit = \"32MiB\""));

    let (stop, sampler) = start_sampling(&broker);
    let producer = broker.client().await;
    for i in 0..TOTAL {
        producer
            .send(QUEUE, &Outgoing::new(body(i)).persistent(true))
            .await
            .expect("send");
    }
    producer.flush().await.expect("flush");
    assert_eq!(
        producer.async_error_count(),
        0,
        "{:?}",
        producer.take_errors()
    );
    producer.close().await.expect("close");
    common::wait_until("every message is stored", || {
        broker.destination(QUEUE).depth == TOTAL
    });
    let status = broker.status();
    assert!(
        status.memory_used_bytes <= LIMIT + 2 * BODY as u64 + 1024,
        "{} bytes of messages in memory",
        status.memory_used_bytes
    );
    stop.store(true, Ordering::Relaxed);
    let producing = sampler.await.expect("sampler");

    let (stop, sampler) = start_sampling(&broker);
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
        assert_eq!(
            common::message_name(&d.body),
            format!("m{i:06}"),
            "in order"
        );
        assert_eq!(d.body.len(), BODY);
    }
    assert!(sub.next_timeout(Duration::from_millis(200)).await.is_none());
    consumer.close().await.expect("close");
    common::wait_until("every message is acknowledged", || {
        broker.destination(QUEUE).depth == 0
    });
    stop.store(true, Ordering::Relaxed);
    let draining = sampler.await.expect("sampler");
    eprintln!(
        "largest RSS: {} MiB while producing, {} MiB while draining",
        producing / MIB,
        draining / MIB
    );
}
