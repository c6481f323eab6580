//! A send whose receipt is lost, followed by a failover, is delivered exactly once: a failover
//! client sends a persistent message through a proxy that swallows the broker's replies; the
//! broker has stored it, but the client never hears so; the proxy then cuts the link; the
//! client reconnects (directly, its other URI) and re-sends the unreceipted message with the
//! same producer id and sequence; the broker's producer high-water mark drops the copy and
//! receipts it, so the `send_with_receipt` that was in flight returns `Ok` — and the consumer
//! gets that message once.

use crate::common;

use std::time::Duration;

use common::proxy::Proxy;
use common::{Broker, Config, GUARD};
use meshmq::client::{Client, ClientEvent, ClientOptions, Outgoing, SubscribeOptions};

const QUEUE: &str = "queue://exactly.once";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resent_copy_is_dropped_and_the_send_completes() {
    let broker = Broker::start(&Config::new());
    let proxy = Proxy::start(broker.ports().listen_addr());
    let producer = Client::connect(
        &format!(
            "failover:({},{})?randomize=false&initialReconnectDelay=20",
            proxy.url(),
            broker.url()
        ),
        ClientOptions::default(),
    )
    .await
    .expect("producer connects through the proxy");
    let mut events = producer.events();
    let consumer = broker.client().await;
    let mut sub = consumer
        .subscribe(QUEUE, SubscribeOptions::default())
        .await
        .expect("subscribe");

    producer
        .send_with_receipt(QUEUE, &Outgoing::new("before").persistent(true))
        .await
        .expect("a normal send");

    proxy.mute_replies(true);
    let in_flight = {
        let producer = producer.clone();
        tokio::spawn(async move {
            producer
                .send_with_receipt(QUEUE, &Outgoing::new("the one").persistent(true))
                .await
        })
    };
    // The broker stored it; its receipt went nowhere.
    common::wait_until("the broker has the second message", || {
        broker.destination(QUEUE).enqueued == 2
    });
    assert!(
        !in_flight.is_finished(),
        "no receipt can have reached the client"
    );

    proxy.cut();
    loop {
        match tokio::time::timeout(GUARD, events.recv()).await {
            Ok(Ok(ClientEvent::Resumed { url, resent, .. })) => {
                assert_eq!(url, broker.url(), "the other URI");
                assert_eq!(resent, 1, "the unreceipted send went again");
                break;
            }
            Ok(Ok(_)) => {}
            other => panic!("no Resumed ({other:?})"),
        }
    }
    tokio::time::timeout(GUARD, in_flight)
        .await
        .expect("the send completes after the failover")
        .expect("task")
        .expect("receipted by the new connection");
    producer
        .send_with_receipt(QUEUE, &Outgoing::new("after").persistent(true))
        .await
        .expect("a send after the failover");

    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("after") {
        let d = sub.next_timeout(GUARD).await.expect("a message");
        got.push(String::from_utf8(d.body.to_vec()).expect("utf-8"));
    }
    assert_eq!(got, ["before", "the one", "after"], "each exactly once");
    assert_eq!(
        broker.destination(QUEUE).enqueued,
        3,
        "the copy was dropped"
    );
    assert!(sub.next_timeout(Duration::from_millis(200)).await.is_none());
}
