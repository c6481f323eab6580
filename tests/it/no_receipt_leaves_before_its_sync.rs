//! No receipt leaves before the sync that makes its message durable. The journal of a
//! `local_disk` broker lives on a power-loss filesystem whose every sync takes a second, so a
//! record stays unsynced for long after it is written; four producers each wait for every
//! receipt (several sends share each group commit), and nobody consumes, so a receipted message
//! can only survive on the disk. The moment enough receipts have come back the power is cut —
//! everything not yet synced is dropped — and after a restart every receipted message is
//! delivered. A receipt sent when its record was written, or on any sync but its own, would
//! name a message the cut dropped. The same holds for an acknowledgement sent with a receipt:
//! once the receipt is back, a power cut never brings its message back.

use crate::common;
use crate::powerloss;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::History;
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
    let (disk, mut broker) = PowerLoss::local_disk_broker(data.path());
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

/// The same promise for an acknowledgement: once its receipt is back, its message is gone for
/// good. Acknowledgements nobody waits for ride on a later sync (a power cut before it brings
/// their messages back, flagged); one sent with a receipt must not be receipted before its
/// removal is on the disk. The cut comes the moment the receipt arrives, while every sync takes
/// a second: after the restart only the messages never acknowledged are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_acknowledgement_whose_receipt_came_back_survives_a_power_cut() {
    use meshmq::client::{AckMode, Client, ClientOptions, Outgoing, SubscribeOptions};
    const ACKED: &str = "queue://acked";
    let data = tempfile::tempdir().expect("tempdir");
    let (disk, mut broker) = PowerLoss::local_disk_broker(data.path());
    let client = Client::connect(&broker.url(), ClientOptions::default())
        .await
        .expect("connect");
    for body in ["first", "second", "third"] {
        let msg = Outgoing::new(body).persistent(true);
        client
            .send_with_receipt(ACKED, &msg)
            .await
            .expect("receipted send");
    }
    let options = SubscribeOptions {
        ack: AckMode::ClientIndividual,
        prefetch: 1,
        ..SubscribeOptions::default()
    };
    let mut sub = client
        .subscribe(ACKED, options.clone())
        .await
        .expect("subscribe");
    let d = sub
        .next_timeout(common::GUARD)
        .await
        .expect("the first message arrives");
    assert_eq!(&d.body[..], b"first");
    // Slow from now on: the sends above are synced; the acknowledgement is the only record
    // the cut can drop.
    disk.delay_syncs(SYNC_TIME);
    sub.ack_with_receipt(&d).await.expect("receipted ack");
    let dropped = disk.cut();
    broker.kill9();
    drop(sub);
    drop(client);
    disk.delay_syncs(Duration::ZERO);
    disk.power_on();
    broker.restart();

    let client = Client::connect(&broker.url(), ClientOptions::default())
        .await
        .expect("connect after the restart");
    let mut sub = client.subscribe(ACKED, options).await.expect("subscribe");
    let mut after = Vec::new();
    while let Some(d) = sub.next_timeout(Duration::from_secs(2)).await {
        after.push(String::from_utf8_lossy(&d.body).into_owned());
        sub.ack_with_receipt(&d).await.expect("ack");
    }
    eprintln!("after the cut (it dropped {dropped} unsynced bytes): {after:?}");
    assert_eq!(
        after,
        ["second", "third"],
        "a message whose acknowledgement was receipted came back after the power cut"
    );
    broker.kill9();
}
