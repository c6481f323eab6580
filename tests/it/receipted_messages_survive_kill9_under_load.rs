//! Every persistent message the broker receipted survives `kill -9` under load: producers
//! waiting for receipts and a consumer acknowledging as it goes, the broker killed mid-stream
//! five times and restarted on its data directory each time; in the end every receipted
//! message was delivered, nothing was invented, and a message delivered twice was flagged as a
//! redelivery the second time.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{Broker, Config, History, GUARD};

const QUEUE: &str = "queue://orders";
const CYCLES: usize = 5;
const PRODUCERS: usize = 3;
/// Receipts to collect in a cycle before the kill.
const RECEIPTS_PER_CYCLE: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn receipted_messages_survive_five_kill9s_under_load() {
    // Small segments and frequent checkpoints: the kills land across segment rolls,
    // checkpoints and garbage collection, not only in the middle of one file.
    let mut broker = Broker::start(
        &Config::new()
            .broker("expiry_check_interval = \"50ms\"")
            .store("segment_size = \"256KiB\"")
            .store("checkpoint_interval = \"100ms\""),
    );
    let history = History::shared();
    for cycle in 0..CYCLES {
        let receipts = Arc::new(AtomicUsize::new(0));
        let delivered = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for p in 0..PRODUCERS {
            tasks.push(tokio::spawn(common::produce_until_broken(
                broker.url(),
                QUEUE,
                format!("c{cycle}-p{p}"),
                history.clone(),
                receipts.clone(),
            )));
        }
        tasks.push(tokio::spawn(common::consume_until_broken(
            broker.url(),
            QUEUE,
            history.clone(),
            delivered.clone(),
        )));
        common::wait_until("producers are receipted and the consumer is busy", || {
            assert!(
                broker.exited().is_none(),
                "the broker died:\n{}",
                broker.log()
            );
            receipts.load(Ordering::Relaxed) >= RECEIPTS_PER_CYCLE
                && delivered.load(Ordering::Relaxed) >= RECEIPTS_PER_CYCLE / 2
        });
        broker.kill9();
        for t in tasks {
            tokio::time::timeout(GUARD, t)
                .await
                .expect("clients notice the broker died")
                .expect("client task");
        }
        broker.restart();
    }

    common::drain(&broker, QUEUE, &history).await;
    let h = history.lock().unwrap();
    h.check();
    assert!(
        h.receipted_count() >= CYCLES * RECEIPTS_PER_CYCLE,
        "{} receipted",
        h.receipted_count()
    );
    eprintln!(
        "{} sent, {} receipted, {} delivered in {} deliveries ({} flagged redelivered)",
        h.sent_count(),
        h.receipted_count(),
        h.delivered_count(),
        h.deliveries(),
        h.redeliveries()
    );
}
