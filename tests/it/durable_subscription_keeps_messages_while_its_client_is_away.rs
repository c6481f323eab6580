//! A durable topic subscription (client id + name) keeps collecting while its client is
//! disconnected and delivers what was published meanwhile when the client returns, without
//! repeating what was acknowledged; a client id serves one connection at a time
//! (`ClientIdInUse`).

use crate::common;

use common::{Broker, Config, GUARD};
use meshmq::client::{
    AckMode, Client, ClientOptions, ErrorCode, ErrorKind, Outgoing, SubscribeOptions,
};

const TOPIC: &str = "topic://news";

fn as_reader() -> ClientOptions {
    ClientOptions {
        client_id: Some("reader-1".into()),
        ..ClientOptions::default()
    }
}

fn durable() -> SubscribeOptions {
    SubscribeOptions {
        ack: AckMode::ClientIndividual,
        durable_name: Some("headlines".into()),
        ..SubscribeOptions::default()
    }
}

async fn publish(producer: &Client, range: std::ops::Range<u32>) {
    for i in range {
        producer
            .send_with_receipt(TOPIC, &Outgoing::new(format!("n{i}")))
            .await
            .expect("publish");
    }
}

/// Receives and acknowledges the messages of `range`, in order, none redelivered.
async fn receive(sub: &mut meshmq::client::Subscription, range: std::ops::Range<u32>) {
    for i in range {
        let d = tokio::time::timeout(GUARD, sub.next())
            .await
            .unwrap_or_else(|_| panic!("n{i} did not arrive"))
            .expect("open");
        assert_eq!(&d.body[..], format!("n{i}").as_bytes());
        assert_eq!(d.redelivery_count, 0, "n{i}");
        sub.ack_with_receipt(&d).await.expect("ack");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_published_while_a_durable_subscriber_is_away_are_delivered_on_return() {
    let broker = Broker::start(&Config::new());
    let producer = broker.client().await;

    let reader = broker.client_with(as_reader()).await;
    let mut sub = reader.subscribe(TOPIC, durable()).await.expect("subscribe");
    publish(&producer, 0..10).await;
    receive(&mut sub, 0..10).await;

    let twin = Client::connect(&broker.url(), as_reader())
        .await
        .expect_err("a second connection with the same client id");
    assert_eq!(twin.kind(), ErrorKind::Refused, "{twin}");
    assert_eq!(twin.code(), Some(ErrorCode::ClientIdInUse), "{twin}");
    assert!(twin.to_string().contains("reader-1"), "{twin}");

    reader.close().await.expect("close");
    drop(sub);
    common::wait_until("the reader has gone", || broker.status().connections == 1);

    // Published while nobody is connected for the subscription.
    publish(&producer, 10..60).await;
    assert_eq!(broker.destination(TOPIC).pending, 50);

    let back = broker.client_with(as_reader()).await;
    let mut sub = back.subscribe(TOPIC, durable()).await.expect("resubscribe");
    receive(&mut sub, 10..60).await;
    publish(&producer, 60..65).await;
    receive(&mut sub, 60..65).await;

    let stats = broker.destination(TOPIC);
    assert_eq!(stats.depth, 0, "{stats:?}");
    assert_eq!(
        stats.dequeued, 65,
        "each message acknowledged once: {stats:?}"
    );

    // Removing the durable subscription forgets it: nothing collects for it any more.
    sub.unsubscribe(true)
        .await
        .expect("remove the durable subscription");
    publish(&producer, 65..70).await;
    let stats = broker.destination(TOPIC);
    assert_eq!((stats.depth, stats.consumers), (0, 0), "{stats:?}");
}
