//! A message refused more than `max_redeliveries` times is delivered exactly
//! `max_redeliveries + 1` times and then moves to `queue://DLQ.<name>`, carrying its original
//! destination; `/status` counts it as dead-lettered.

use crate::common;

use common::{Broker, Config, GUARD};
use meshmq::client::{AckMode, Delivery, Outgoing, SubscribeOptions, Subscription};

async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(GUARD, sub.next())
        .await
        .expect("a delivery within the guard")
        .expect("subscription open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_nacked_three_times_with_max_redeliveries_two_is_dead_lettered() {
    // The broker-wide default is 6; the policy for this queue says 2.
    let broker = Broker::start(
        &Config::new()
            .broker("max_redeliveries = 6")
            .section("[[policy]]\ndestination = \"queue://payments.>\"\nmax_redeliveries = 2"),
    );
    let dest = "queue://payments.eu";
    let client = broker.client().await;
    let mut sub = client
        .subscribe(
            dest,
            SubscribeOptions {
                ack: AckMode::ClientIndividual,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe");
    client
        .send_with_receipt(
            dest,
            &Outgoing::new("poison")
                .header("order", "42")
                .correlation_id("c-42"),
        )
        .await
        .expect("send");

    for attempt in 0..3u32 {
        let d = next(&mut sub).await;
        assert_eq!(&d.body[..], b"poison");
        assert_eq!(d.redelivery_count, attempt, "delivery {} of 3", attempt + 1);
        sub.nack(&d).await.expect("nack");
    }

    let stats = broker.destination(dest);
    assert_eq!(stats.dead_lettered, 1, "{stats:?}");
    assert_eq!(stats.depth, 0, "no fourth delivery is pending: {stats:?}");
    assert_eq!(stats.redelivered, 3, "{stats:?}");

    let dlq_name = "queue://DLQ.payments.eu";
    assert_eq!(broker.destination(dlq_name).depth, 1);
    let mut dlq = client
        .subscribe(dlq_name, SubscribeOptions::default())
        .await
        .expect("subscribe to the DLQ");
    let dead = next(&mut dlq).await;
    assert_eq!(&dead.body[..], b"poison");
    assert_eq!(dead.destination, dlq_name);
    assert_eq!(dead.header("meshmq.original_destination"), Some(dest));
    assert_eq!(
        dead.header("order"),
        Some("42"),
        "the message's own headers stay"
    );
    assert_eq!(dead.correlation_id, "c-42");

    let status = broker.status();
    let source = status
        .destinations
        .iter()
        .find(|d| d.destination == dest)
        .expect("the source queue is listed");
    assert_eq!(source.dead_lettered, 1);
    assert_eq!(
        status
            .destinations
            .iter()
            .map(|d| d.dead_lettered)
            .sum::<u64>(),
        1,
        "dead-lettered once, not again from the DLQ"
    );
}
