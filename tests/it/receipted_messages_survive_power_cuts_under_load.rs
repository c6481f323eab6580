//! Every persistent message a `local_disk` broker receipted survives a power cut under load: its
//! journal lives on a power-loss filesystem (FUSE) that keeps unsynced writes and directory
//! changes only in memory; mid-stream, with producers waiting for receipts and a consumer
//! acknowledging, the power is cut (everything not `fsync`ed is dropped, the disk fails every
//! call), the broker killed, the power restored and the broker restarted — five times. In the
//! end every receipted message was delivered, nothing was invented, and a message delivered
//! twice was flagged as a redelivery.

use crate::common;
use crate::powerloss;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{Broker, Config, History, GUARD};
use powerloss::PowerLoss;

const QUEUE: &str = "queue://orders";
const CUTS: usize = 5;
const PRODUCERS: usize = 3;
/// Receipts to collect in a cycle before the cut.
const RECEIPTS_PER_CYCLE: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn receipted_messages_survive_five_power_cuts_under_load() {
    let data = tempfile::tempdir().expect("tempdir");
    // Declared before the broker, so dropped after it: unmounted once nothing uses it.
    let disk = PowerLoss::mount(&data.path().join("journal"));
    // Small segments and frequent checkpoints: cuts land across segment rolls, checkpoints
    // (write, sync, rename, directory sync) and garbage collection.
    let mut broker = Broker::start(
        &Config::new()
            .data_dir(data.path())
            .group("sync = \"local_disk\"")
            .store("segment_size = \"128KiB\"")
            .store("checkpoint_interval = \"100ms\""),
    );
    let history = History::shared();
    let mut dropped = 0;
    for cut in 0..CUTS {
        let receipts = Arc::new(AtomicUsize::new(0));
        let delivered = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for p in 0..PRODUCERS {
            tasks.push(tokio::spawn(common::produce_until_broken(
                broker.url(),
                QUEUE,
                format!("c{cut}-p{p}"),
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
        dropped += disk.cut();
        if broker.exited().is_none() {
            broker.kill9();
        }
        for t in tasks {
            tokio::time::timeout(GUARD, t)
                .await
                .expect("clients notice the broker died")
                .expect("client task");
        }
        disk.power_on();
        broker.restart();
    }

    common::drain(&broker, QUEUE, &history).await;
    let h = history.lock().unwrap();
    eprintln!(
        "{CUTS} power cuts: {} sent, {} receipted, {} delivered in {} deliveries ({} flagged \
         redelivered), lost {}; {dropped} unsynced bytes dropped, {} syncs",
        h.sent_count(),
        h.receipted_count(),
        h.delivered_count(),
        h.deliveries(),
        h.redeliveries(),
        h.lost().len(),
        disk.counters.syncs.load(Ordering::Relaxed),
    );
    h.check();
    assert!(
        h.receipted_count() >= CUTS * RECEIPTS_PER_CYCLE,
        "{} receipted",
        h.receipted_count()
    );
    drop(h);
    broker.kill9();
}
