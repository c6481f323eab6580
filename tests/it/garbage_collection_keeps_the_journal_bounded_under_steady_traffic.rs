//! Garbage collection keeps the journal's disk use bounded under steady traffic: persistent
//! messages produced and consumed for thirty times the segment size leave the journal
//! directory (every file in it, sampled all along) below six segments, because checkpoints —
//! taken as segments roll — let every segment whose messages were acknowledged go.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Broker, Config, GUARD};
use meshmq::client::{AckMode, Outgoing, SubscribeOptions};

const QUEUE: &str = "queue://steady";
const SEGMENT: u64 = 512 << 10;
/// What the journal may hold: the live data (at most WINDOW messages, part of a segment), the
/// active segment, the one a checkpoint started by the last segment roll has not let go yet,
/// the one-segment reserve file, and the checkpoint file: under five segments; six leaves one
/// for a checkpoint that runs late on a loaded machine.
const BOUND: u64 = 6 * SEGMENT;
const BODY: usize = 1024;
const TOTAL: u64 = 30 * SEGMENT / BODY as u64;
/// Messages sent but not yet consumed, at most: the traffic is steady, not a growing backlog.
const WINDOW: u64 = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_journal_stays_under_six_segments_while_thirty_segments_of_messages_flow() {
    let broker = Broker::start(
        &Config::new()
            .broker("expiry_check_interval = \"50ms\"")
            .store("segment_size = \"512KiB\"")
            .store("checkpoint_interval = \"100ms\""),
    );
    let consumed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));

    let consumer = {
        let client = broker.client().await;
        let consumed = consumed.clone();
        tokio::spawn(async move {
            let mut sub = client
                .subscribe(
                    QUEUE,
                    SubscribeOptions {
                        ack: AckMode::ClientIndividual,
                        prefetch: 32,
                        ..SubscribeOptions::default()
                    },
                )
                .await
                .expect("subscribe");
            for i in 0..TOTAL {
                let d = tokio::time::timeout(GUARD, sub.next())
                    .await
                    .expect("a steady flow")
                    .expect("open");
                assert_eq!(&d.body[..8], &i.to_be_bytes(), "in order");
                sub.ack(&d).await.expect("ack");
                consumed.store(i + 1, Ordering::Relaxed);
            }
            client.close().await.expect("close");
        })
    };
    let producer = {
        let client = broker.client().await;
        let consumed = consumed.clone();
        let done = done.clone();
        tokio::spawn(async move {
            for i in 0..TOTAL {
                while i >= consumed.load(Ordering::Relaxed) + WINDOW {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let mut body = vec![b's'; BODY];
                body[..8].copy_from_slice(&i.to_be_bytes());
                client
                    .send(QUEUE, &Outgoing::new(body).persistent(true))
                    .await
                    .expect("send");
            }
            client.flush().await.expect("flush");
            done.store(true, Ordering::Relaxed);
        })
    };

    let journal = broker.journal_dir();
    let mut samples = 0u64;
    let mut largest = 0u64;
    while !consumer.is_finished() {
        let bytes = common::dir_bytes(&journal);
        largest = largest.max(bytes);
        samples += 1;
        assert!(
            bytes < BOUND,
            "sample {samples}: the journal holds {bytes} bytes ({} segments of {SEGMENT}) after {} of {TOTAL} messages: {:?}",
            bytes as f64 / SEGMENT as f64,
            consumed.load(Ordering::Relaxed),
            std::fs::read_dir(&journal).map(|d| d
                .flatten()
                .map(|e| (e.file_name(), e.metadata().map(|m| m.len()).unwrap_or(0)))
                .collect::<Vec<_>>())
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    consumer.await.expect("consumer");
    producer.await.expect("producer");
    assert!(done.load(Ordering::Relaxed));
    let written = common::metric_sum(&broker.metrics(), "meshmq_journal_bytes_total", &[]);
    assert!(
        written >= (TOTAL * BODY as u64) as f64,
        "{written} bytes journaled"
    );
    assert!(samples > 10, "{samples} samples");
    eprintln!(
        "{samples} samples, largest {largest} bytes ({:.1} segments), {written} bytes journaled",
        largest as f64 / SEGMENT as f64
    );
}
