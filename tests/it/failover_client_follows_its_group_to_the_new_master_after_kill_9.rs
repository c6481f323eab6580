//! A failover client survives `kill -9` of the broker it is on: with a `failover:(…)` URL over
//! both members of a file-lock pair, a producer (persistent, receipted sends) and a consumer
//! are on the master when it is killed; both report `Interrupted`, then `Resumed` on the
//! standby that took over; their next send and receive succeed on the same subscription; and a
//! history check finds every receipted message delivered, none invented, and no duplicate that
//! is not flagged as a redelivery (a re-sent send the dead master had journaled is dropped by
//! the producer high-water mark recovered from the shared journal).

use crate::common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::history::{Judgement, Ledger};
use common::mesh::MeshBuilder;
use common::GUARD;
use meshmq::client::{AckMode, Client, ClientEvent, ClientOptions, Outgoing, SubscribeOptions};
use parking_lot::Mutex;

const QUEUE: &str = "queue://failover.orders";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reconnects_to_the_new_master_and_loses_nothing_receipted() {
    let mut mesh = MeshBuilder::new().group("edge", 2, "").build();
    mesh.start_all();
    let (master, standby) = mesh.master_and_standby("edge");
    let url = mesh.failover_url(
        &[&master, &standby],
        "randomize=false&initialReconnectDelay=50&maxReconnectDelay=500",
    );

    let producer = Client::connect(&url, ClientOptions::default())
        .await
        .expect("producer connects");
    let consumer = Client::connect(
        &url,
        ClientOptions {
            client_id: Some("failover-consumer".into()),
            ..ClientOptions::default()
        },
    )
    .await
    .expect("consumer connects");
    assert_eq!(producer.current_url(), mesh.member(&master).url());
    let mut producer_events = producer.events();
    let mut consumer_events = consumer.events();
    let mut sub = consumer
        .subscribe(
            QUEUE,
            SubscribeOptions {
                ack: AckMode::ClientIndividual,
                prefetch: 50,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe");
    let sub_id = sub.id();

    // What the producer knows: the sequence numbers the broker receipted.
    let receipted = Arc::new(Mutex::new(Vec::<u64>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (producer, receipted, stop) = (producer.clone(), receipted.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                let msg = Outgoing::new(n.to_string()).persistent(true);
                if producer.send_with_receipt(QUEUE, &msg).await.is_ok() {
                    receipted.lock().push(n);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut received: BTreeMap<u64, u32> = BTreeMap::new();
    let mut ledger = Ledger::default();
    let mut take = |d: &meshmq::client::Delivery, received: &mut BTreeMap<u64, u32>| {
        let n: u64 = std::str::from_utf8(&d.body).unwrap().parse().unwrap();
        *received.entry(n).or_insert(0) += 1;
        ledger.delivered(n, d.redelivered());
    };
    // Some traffic before the kill.
    while received.len() < 100 {
        let d = sub
            .next_timeout(GUARD)
            .await
            .expect("a message before the kill");
        take(&d, &mut received);
        sub.ack(&d).await.expect("ack");
    }

    mesh.kill9(&master);

    // Both clients notice, and resume on the standby once it serves.
    for (who, events) in [
        ("producer", &mut producer_events),
        ("consumer", &mut consumer_events),
    ] {
        let mut interrupted = false;
        loop {
            let e = tokio::time::timeout(GUARD, events.recv())
                .await
                .unwrap_or_else(|_| panic!("{who}: no Resumed within {GUARD:?}"))
                .expect("event stream");
            match e {
                ClientEvent::Interrupted { url, .. } => {
                    assert_eq!(url, mesh.member(&master).url(), "{who}");
                    interrupted = true;
                }
                ClientEvent::Resumed {
                    url, moved, member, ..
                } => {
                    assert!(interrupted, "{who}: Interrupted comes first");
                    assert!(!moved, "{who}: a broken link, not a move");
                    assert_eq!(url, mesh.member(&standby).url(), "{who}");
                    assert_eq!(member, standby, "{who}");
                    break;
                }
                _ => {}
            }
        }
    }

    // The next send and receive succeed, on the same subscription.
    let after = receipted.lock().len();
    mesh.wait_until("the producer gets receipts from the new master", |_| {
        receipted.lock().len() > after + 50
    });
    stop.store(true, Ordering::Release);
    sender.await.expect("sender");
    let last = *receipted.lock().last().expect("receipts");
    let deadline = tokio::time::Instant::now() + GUARD;
    while received.range(last..).next().is_none() || received.len() < receipted.lock().len() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(d) = sub.next_timeout(left).await else {
            break;
        };
        assert_eq!(
            d.subscription, sub_id,
            "the same subscription id after failover"
        );
        take(&d, &mut received);
        sub.ack(&d).await.expect("ack");
    }

    let receipted = receipted.lock().clone();
    // Sent: every number up to the one after the last receipted (the producer numbers its
    // sends 1, 2, …; only receipts are recorded).
    let max_sent = receipted.last().copied().unwrap_or(0) + 1;
    for n in 1..=max_sent {
        ledger.sent(n);
    }
    for n in &receipted {
        ledger.accepted(*n);
    }
    let judged = ledger.judge();
    let unflagged_duplicates = judged.unflagged_after_the_first();
    let Judgement { lost, invented, .. } = judged;
    assert!(lost.is_empty(), "receipted but never delivered: {lost:?}");
    assert!(
        invented.is_empty(),
        "delivered but never sent: {invented:?}"
    );
    assert!(
        unflagged_duplicates.is_empty(),
        "delivered twice without a redelivery flag: {unflagged_duplicates:?}"
    );
    assert_eq!(producer.reconnects(), (1, 0));
    assert_eq!(consumer.reconnects(), (1, 0));
    producer.close().await.expect("close");
    consumer.close().await.expect("close");
}
