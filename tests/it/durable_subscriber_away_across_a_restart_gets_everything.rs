//! A durable topic subscriber that is away while the broker restarts — killed with `kill -9`
//! or stopped with SIGTERM — gets every persistent message published while it was away, before
//! and after the restart, when it returns: nothing lost, nothing invented, repeats only flagged
//! as redeliveries.

use crate::common;

use std::time::Duration;

use common::{Broker, Config, History, SharedHistory};
use meshmq::client::{AckMode, Client, ClientOptions, Outgoing, SubscribeOptions, Subscription};

const TOPIC: &str = "topic://news";
const AWAY_BEFORE_RESTART: usize = 200;
const AWAY_AFTER_RESTART: usize = 50;

#[derive(Debug, Clone, Copy)]
enum Stop {
    Kill9,
    Sigterm,
}

async fn reader(broker: &Broker) -> (Client, Subscription) {
    let client = broker
        .client_with(ClientOptions {
            client_id: Some("reader-1".into()),
            ..ClientOptions::default()
        })
        .await;
    let sub = client
        .subscribe(
            TOPIC,
            SubscribeOptions {
                ack: AckMode::ClientIndividual,
                durable_name: Some("headlines".into()),
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("durable subscribe");
    (client, sub)
}

async fn publish(broker: &Broker, history: &SharedHistory, prefix: &str, count: usize) {
    let producer = broker.client().await;
    for i in 0..count {
        let body = format!("{prefix}-{i:04}");
        history.lock().unwrap().sent(&body);
        producer
            .send_with_receipt(TOPIC, &Outgoing::new(body.clone()).persistent(true))
            .await
            .expect("publish");
        history.lock().unwrap().receipted(&body);
    }
    producer.close().await.expect("close");
}

/// Receives until every receipted message has arrived and nothing more comes.
async fn receive_all(sub: &mut Subscription, history: &SharedHistory) {
    let mut progress = std::time::Instant::now();
    loop {
        match sub.next_timeout(Duration::from_millis(300)).await {
            Some(d) => {
                history
                    .lock()
                    .unwrap()
                    .delivered(&common::message_name(&d.body), d.redelivery_count);
                sub.ack_with_receipt(&d).await.expect("ack");
                progress = std::time::Instant::now();
            }
            None if history.lock().unwrap().lost().is_empty() => return,
            None => assert!(
                progress.elapsed() < common::GUARD,
                "missing: {:?}",
                history.lock().unwrap().lost()
            ),
        }
    }
}

async fn away_across_a_restart(stop: Stop) {
    let mut broker = Broker::start(&Config::new());
    let history = History::shared();

    // Online: the subscription exists and has taken what was published so far.
    let (client, mut sub) = reader(&broker).await;
    publish(&broker, &history, "online", 10).await;
    receive_all(&mut sub, &history).await;
    client.close().await.expect("the reader leaves");

    publish(&broker, &history, "away", AWAY_BEFORE_RESTART).await;
    match stop {
        Stop::Kill9 => broker.kill9(),
        Stop::Sigterm => {
            broker.sigterm();
            let status = broker.wait_exit();
            assert!(status.success(), "{status}:\n{}", broker.log());
        }
    }
    broker.restart();
    publish(&broker, &history, "restarted", AWAY_AFTER_RESTART).await;

    let (client, mut sub) = reader(&broker).await;
    receive_all(&mut sub, &history).await;
    client.close().await.expect("close");
    let h = history.lock().unwrap();
    h.check();
    for i in 0..AWAY_BEFORE_RESTART {
        assert!(h.was_delivered(&format!("away-{i:04}")));
    }
    if let Stop::Sigterm = stop {
        // A clean stop knows exactly what was delivered: nothing comes twice.
        assert_eq!(h.redeliveries(), 0, "{h:?}");
        assert_eq!(h.deliveries(), h.delivered_count());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_durable_subscriber_away_across_a_kill9_gets_everything() {
    away_across_a_restart(Stop::Kill9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_durable_subscriber_away_across_a_sigterm_gets_everything() {
    away_across_a_restart(Stop::Sigterm).await;
}
