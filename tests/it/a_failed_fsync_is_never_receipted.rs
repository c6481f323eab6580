//! A journal `fsync` that fails (EIO from the power-loss filesystem) is never receipted: the
//! send it covered gets an error, the member logs why and exits with a failure (a lone member
//! has no standby to hand over to), and — even after the power is then cut, dropping whatever
//! the failed sync left unsynced — a restart delivers every message that was receipted.

use crate::common;
use crate::powerloss;

use common::History;
use meshmq::client::Outgoing;
use powerloss::PowerLoss;

const QUEUE: &str = "queue://ledger";
const BEFORE: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_send_whose_sync_failed_gets_an_error_and_the_member_exits_then_recovers() {
    let data = tempfile::tempdir().expect("tempdir");
    let (disk, mut broker) = PowerLoss::local_disk_broker(data.path());
    let history = History::shared();
    let producer = broker.client().await;
    for i in 0..BEFORE {
        let name = format!("before-{i:03}");
        history.lock().unwrap().sent(&name);
        producer
            .send_with_receipt(QUEUE, &Outgoing::new(name.clone()).persistent(true))
            .await
            .expect("a send before the failure");
        history.lock().unwrap().receipted(&name);
    }

    disk.fail_next_syncs(1);
    history.lock().unwrap().sent("failed");
    let sent = producer
        .send_with_receipt(QUEUE, &Outgoing::new("failed").persistent(true))
        .await;
    assert!(
        sent.is_err(),
        "the send whose fsync failed was receipted:\n{}",
        broker.log()
    );
    assert_eq!(
        disk.counters
            .failed_syncs
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the failure came from the disk"
    );
    let status = broker.wait_exit();
    assert!(!status.success(), "{status}:\n{}", broker.log());
    let log = broker.log();
    for part in [
        "the journal failed",
        "cannot sync",
        "Input/output error",
        "exiting with a failure",
    ] {
        assert!(log.contains(part), "the log does not say {part:?}:\n{log}");
    }

    // Whatever the failed sync did not make durable is gone now.
    disk.cut();
    disk.power_on();
    broker.restart();
    common::drain(&broker, QUEUE, &history).await;
    let h = history.lock().unwrap();
    h.check();
    assert!(h.delivered_count() >= BEFORE, "{h:?}");
    drop(h);
    broker.kill9();
}
