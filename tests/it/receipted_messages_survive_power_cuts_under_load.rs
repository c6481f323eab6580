//! Every persistent message a `local_disk` broker receipted survives a power cut under load: its
//! journal lives on a power-loss filesystem (FUSE) that keeps unsynced writes and directory
//! changes only in memory; mid-stream, with producers waiting for receipts and a consumer
//! acknowledging, the power is cut (everything not `fsync`ed is dropped, the disk fails every
//! call), the broker killed, the power restored and the broker restarted — five times. In the
//! end every receipted message was delivered, nothing was invented, and a message delivered
//! twice was flagged as a redelivery.

use crate::common;
use crate::powerloss;

use std::sync::atomic::Ordering;

use common::{Broker, Config, History};
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
        common::load_then_crash(
            &mut broker,
            QUEUE,
            cut,
            (PRODUCERS, RECEIPTS_PER_CYCLE),
            &history,
            |broker| {
                dropped += disk.cut();
                if broker.exited().is_none() {
                    broker.kill9();
                }
            },
        )
        .await;
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
