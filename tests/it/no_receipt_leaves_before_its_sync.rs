//! No receipt leaves before the sync that makes its message durable. The journal of a
//! `local_disk` broker lives on a power-loss filesystem whose every sync takes a second, so a
//! record stays unsynced for long after it is written; four producers each wait for every
//! receipt (several sends share each group commit) while a consumer acknowledges. The moment
//! enough receipts have come back the power is cut — everything not yet synced is dropped — and
//! after a restart every receipted message is delivered. A receipt sent when its record was
//! written, or on any sync but its own, would name a message the cut dropped.

use crate::common;
use crate::powerloss;

use std::time::Duration;

use common::{Broker, Config, History};
use powerloss::PowerLoss;

const QUEUE: &str = "queue://receipted";
const PRODUCERS: usize = 4;
/// Receipts to collect before the cut: more than one group commit's worth.
const RECEIPTS: usize = 12;
/// How long each sync takes: far longer than a receipt's way back to its producer.
const SYNC_TIME: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receipt_never_leaves_before_the_sync_of_its_message() {
    let data = tempfile::tempdir().expect("tempdir");
    // Declared before the broker, so dropped after it: unmounted once nothing uses it.
    let disk = PowerLoss::mount(&data.path().join("journal"));
    let mut broker = Broker::start(
        &Config::new()
            .data_dir(data.path())
            .group("sync = \"local_disk\""),
    );
    // Slow from now on: the broker started (and synced its new journal) at full speed.
    disk.delay_syncs(SYNC_TIME);
    let history = History::shared();
    let mut dropped = 0;
    common::load_then_crash(
        &mut broker,
        QUEUE,
        0,
        (PRODUCERS, RECEIPTS),
        &history,
        |broker| {
            dropped = disk.cut();
            if broker.exited().is_none() {
                broker.kill9();
            }
        },
    )
    .await;
    disk.delay_syncs(Duration::ZERO);
    disk.power_on();
    broker.restart();

    common::drain(&broker, QUEUE, &history).await;
    let h = history.lock().unwrap();
    eprintln!(
        "{} sent, {} receipted, {} delivered; the cut dropped {dropped} unsynced bytes",
        h.sent_count(),
        h.receipted_count(),
        h.delivered_count(),
    );
    h.check();
    assert!(h.receipted_count() >= RECEIPTS, "{h:?}");
    drop(h);
    broker.kill9();
}
