//! A topic message reaches every subscriber still connected exactly once — each subscriber on
//! its own connection — after subscribers were detached from the start, the middle and the end
//! of the topic's subscriber list, and re-subscribed on a fresh connection; the ones that left
//! get nothing and count as consumers no more.

use crate::common;

use std::time::Duration;

use common::{Broker, Config, GUARD};
use meshmq::client::{Client, Outgoing, SubscribeOptions, Subscription};

const TOPIC: &str = "topic://fan.out.leavers";
const SUBSCRIBERS: usize = 60;
const MESSAGES: usize = 3;

async fn subscriber(broker: &Broker) -> (Client, Subscription) {
    let client = broker.client().await;
    let sub = client
        .subscribe(TOPIC, SubscribeOptions::default())
        .await
        .expect("subscribe");
    (client, sub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_remaining_subscriber_gets_every_message_once() {
    let broker = Broker::start(&Config::new());

    let mut subscribers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        subscribers.push(subscriber(&broker).await);
    }
    // Leave: the first, the last, and every third in between (so detached entries come from
    // every part of the list, and later removals hit entries an earlier one moved).
    let leaving: Vec<usize> = (0..SUBSCRIBERS)
        .filter(|i| *i == 0 || *i == SUBSCRIBERS - 1 || i % 3 == 1)
        .collect();
    let mut left = Vec::new();
    for i in leaving.iter().rev() {
        let (client, sub) = subscribers.remove(*i);
        client.close().await.expect("close");
        left.push(sub);
    }
    // One comes back on a new connection.
    subscribers.push(subscriber(&broker).await);
    let staying = subscribers.len() as u64;
    common::wait_until("the leavers are no longer consumers", || {
        broker.destination(TOPIC).consumers == staying
    });

    let producer = broker.client().await;
    for n in 0..MESSAGES {
        producer
            .send_with_receipt(TOPIC, &Outgoing::new(format!("m{n}")))
            .await
            .expect("publish");
    }

    for (i, (_client, sub)) in subscribers.iter_mut().enumerate() {
        for n in 0..MESSAGES {
            let d = tokio::time::timeout(GUARD, sub.next())
                .await
                .unwrap_or_else(|_| panic!("subscriber {i}: message {n} did not arrive"))
                .expect("subscription open");
            assert_eq!(&d.body[..], format!("m{n}").as_bytes(), "subscriber {i}");
            assert_eq!(d.redelivery_count, 0, "subscriber {i}");
        }
    }
    // Asking for one more acknowledges what was taken (auto ack) and must find nothing.
    for (i, (_client, sub)) in subscribers.iter_mut().enumerate() {
        if let Some(extra) = sub.next_timeout(Duration::from_millis(100)).await {
            panic!("subscriber {i} got a second copy: {extra:?}");
        }
    }
    for mut sub in left {
        assert!(
            sub.next().await.is_none(),
            "a closed subscriber's stream ends with nothing in it"
        );
    }
    let copies = staying * MESSAGES as u64;
    common::wait_until("every copy delivered and acknowledged", || {
        let s = broker.destination(TOPIC);
        assert_eq!(s.enqueued, MESSAGES as u64, "{s:?}");
        assert!(s.dequeued <= copies, "more copies than subscribers: {s:?}");
        s.dequeued == copies && s.pending == 0 && s.inflight == 0
    });
}
