//! Every persistent message the broker receipted survives `kill -9` under load: producers
//! waiting for receipts and a consumer acknowledging as it goes, the broker killed mid-stream
//! five times and restarted on its data directory each time; in the end every receipted
//! message was delivered, nothing was invented, and a message delivered twice was flagged as a
//! redelivery the second time.

use crate::common;

use common::{Broker, Config, History};

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
        common::load_then_crash(
            &mut broker,
            QUEUE,
            cycle,
            (PRODUCERS, RECEIPTS_PER_CYCLE),
            &history,
            Broker::kill9,
        )
        .await;
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
