//! A consumer process killed with unacknowledged messages loses nothing: another consumer gets
//! exactly those messages flagged redelivered (count 1), and every other message once, not
//! flagged; nothing is lost and nothing invented.

use crate::common;

use std::collections::BTreeSet;

use common::{meshmq, Broker, CliChild, Config, GUARD};
use meshmq::client::{AckMode, Outgoing, SubscribeOptions};

const TOTAL: usize = 60;
const HELD: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unacked_messages_of_a_killed_consumer_go_to_the_next_consumer_flagged() {
    let broker = Broker::start(&Config::new());
    let url = broker.url();
    let dest = "queue://work";

    let producer = broker.client().await;
    for i in 0..TOTAL {
        producer
            .send_with_receipt(dest, &Outgoing::new(format!("job-{i:03}")))
            .await
            .expect("send");
    }

    // A real consumer process takes HELD messages (its whole prefetch), never acks, and lingers.
    let held = HELD.to_string();
    let mut victim = CliChild::spawn(meshmq().args([
        "consume",
        &url,
        "--dest",
        dest,
        "--ack",
        "client",
        "--no-ack",
        "--linger",
        "60",
        "--count",
        &held,
        "--prefetch",
        &held,
    ]));
    common::wait_until("the consumer printed its messages", || {
        assert!(
            victim.proc.try_wait().is_none(),
            "the consumer exited early: {}",
            victim.stderr()
        );
        victim.stdout().lines().count() >= HELD
    });
    let printed: Vec<String> = victim.stdout().lines().map(str::to_string).collect();
    assert_eq!(
        printed.len(),
        HELD,
        "prefetch bounds what it got: {printed:?}"
    );
    assert_eq!(broker.destination(dest).inflight, HELD as u64);

    victim.proc.signal(libc::SIGKILL);
    victim.proc.wait_timeout(GUARD).expect("SIGKILL ends it");

    let consumer = broker.client().await;
    let mut sub = consumer
        .subscribe(
            dest,
            SubscribeOptions {
                ack: AckMode::ClientIndividual,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe");
    let mut redelivered = BTreeSet::new();
    let mut fresh = BTreeSet::new();
    for _ in 0..TOTAL {
        let d = tokio::time::timeout(GUARD, sub.next())
            .await
            .expect("every message arrives within the guard")
            .expect("subscription open");
        let body = String::from_utf8(d.body.to_vec()).expect("utf-8 body");
        let new = match d.redelivery_count {
            0 => fresh.insert(body.clone()),
            1 => {
                assert!(d.redelivered());
                redelivered.insert(body.clone())
            }
            n => panic!("{body} was delivered {n} times before"),
        };
        assert!(new, "{body} arrived twice");
        sub.ack_with_receipt(&d).await.expect("ack");
    }

    let expected_redelivered: BTreeSet<String> = printed.into_iter().collect();
    assert_eq!(
        redelivered, expected_redelivered,
        "exactly the killed consumer's messages"
    );
    let all: BTreeSet<String> = (0..TOTAL).map(|i| format!("job-{i:03}")).collect();
    let got: BTreeSet<String> = redelivered.union(&fresh).cloned().collect();
    assert_eq!(got, all, "nothing lost, nothing invented");
    assert!(redelivered.is_disjoint(&fresh));

    let stats = broker.destination(dest);
    assert_eq!(stats.depth, 0, "{stats:?}");
    assert_eq!(stats.enqueued, TOTAL as u64, "{stats:?}");
    assert_eq!(stats.dequeued, TOTAL as u64, "{stats:?}");
    assert_eq!(stats.redelivered, HELD as u64, "{stats:?}");
}
