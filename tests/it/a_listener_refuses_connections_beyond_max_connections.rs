//! A listener serves at most `max_connections` clients: one more is refused with
//! `ResourceExhausted` (and counted), the admitted ones keep working, and a slot freed by a
//! closing client admits a new one.

use crate::common;

use common::{Broker, Config, GUARD};
use meshmq::client::{Client, ErrorCode, ErrorKind, Outgoing, SubscribeOptions};

const MAX: usize = 5;

/// Each client sends to itself through its own queue and gets the message back.
async fn round_trip(client: &Client, queue: &str, text: &str) {
    let mut sub = client
        .subscribe(queue, SubscribeOptions::default())
        .await
        .expect("subscribe");
    client
        .send_with_receipt(queue, &Outgoing::new(text.to_string()))
        .await
        .expect("send");
    let d = tokio::time::timeout(GUARD, sub.next())
        .await
        .expect("delivery within the guard")
        .expect("open");
    assert_eq!(&d.body[..], text.as_bytes());
    sub.unsubscribe(false).await.expect("unsubscribe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sixth_client_is_refused_and_a_freed_slot_admits_a_new_one() {
    let broker = Broker::start(&Config::new().listener(&format!("max_connections = {MAX}")));
    let url = broker.url();

    let mut clients = Vec::new();
    for _ in 0..MAX {
        clients.push(broker.client().await);
    }
    assert_eq!(broker.status().connections, MAX as u64);

    for attempt in 0..3 {
        let refused = Client::connect(&url, Default::default())
            .await
            .expect_err("one more than max_connections is refused");
        assert_eq!(
            refused.kind(),
            ErrorKind::Refused,
            "attempt {attempt}: {refused}"
        );
        assert_eq!(
            refused.code(),
            Some(ErrorCode::ResourceExhausted),
            "attempt {attempt}: {refused}"
        );
        assert!(
            refused.to_string().contains("max_connections (5)"),
            "{refused}"
        );
    }

    for (i, c) in clients.iter().enumerate() {
        round_trip(c, &format!("queue://own.{i}"), &format!("still served {i}")).await;
    }

    let leaving = clients.remove(0);
    leaving.close().await.expect("close");
    common::wait_until("the closed client's slot is free", || {
        broker.status().connections == (MAX - 1) as u64
    });
    let newcomer = broker.client().await;
    round_trip(&newcomer, "queue://newcomer", "admitted").await;
    for (i, c) in clients.iter().enumerate() {
        assert!(!c.is_closed(), "client {i} was not disturbed");
        round_trip(c, &format!("queue://own.{i}"), "still served").await;
    }
    let refused = Client::connect(&url, Default::default()).await;
    assert_eq!(
        refused.map(|_| ()).map_err(|e| e.code()),
        Err(Some(ErrorCode::ResourceExhausted)),
        "full again"
    );

    let listener = format!("listener=\"{url}\"");
    let refusals = common::metric_sum(
        &broker.metrics(),
        "meshmq_connections_refused_total",
        &[&listener, "reason=\"max_connections\""],
    );
    assert_eq!(refusals, 4.0);
    assert_eq!(broker.status().listeners[0].max_connections, MAX as u64);
}
