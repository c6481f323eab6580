//! No receipt leaves before the sync that makes its message durable. The journal of a
//! `local_disk` broker lives on a power-loss filesystem whose every sync takes a second, so a
//! record stays unsynced for long after it is written; four producers each wait for every
//! receipt (several sends share each group commit), and nobody consumes, so a receipted message
//! can only survive on the disk. The moment enough receipts have come back the power is cut —
//! everything not yet synced is dropped — and after a restart every receipted message is
//! delivered. A receipt sent when its record was written, or on any sync but its own, would
//! name a message the cut dropped.

use crate::common;
use crate::powerloss;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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
    let receipted = Arc::new(AtomicUsize::new(0));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            tokio::spawn(common::produce_until_broken(
                broker.url(),
                QUEUE,
                format!("p{p}"),
                history.clone(),
                receipted.clone(),
            ))
        })
        .collect();
    common::wait_until("producers are receipted", || {
        assert!(
            broker.exited().is_none(),
            "the broker died:\n{}",
            broker.log()
        );
        receipted.load(Ordering::Relaxed) >= RECEIPTS
    });
    let dropped = disk.cut();
    broker.kill9();
    for p in producers {
        tokio::time::timeout(common::GUARD, p)
            .await
            .expect("producers notice the broker died")
            .expect("producer task");
    }
    disk.delay_syncs(Duration::ZERO);
    disk.power_on();
    broker.restart();

    common::drain(&broker, QUEUE, &history).await;
    let h = history.lock().unwrap();
    eprintln!(
        "{} sent, {} receipted, {} delivered after the cut; it dropped {dropped} unsynced bytes",
        h.sent_count(),
        h.receipted_count(),
        h.delivered_count(),
    );
    h.check();
    assert!(h.receipted_count() >= RECEIPTS, "{h:?}");
    drop(h);
    broker.kill9();
}
