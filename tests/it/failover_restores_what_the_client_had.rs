//! A failover client gets its state back on the new connection: its subscriptions keep their
//! ids and receive what arrived while it was away (a durable one by its name, messages stored
//! for it meanwhile included), its request/reply temporary queue keeps its name and works;
//! with `trackMessages` fire-and-forget sends lost in the cut are re-sent (without it they are
//! not); an open transaction is rolled back and a commit whose answer was lost is reported
//! rolled back; and `timeout` bounds how long a send waits for a connection while the client
//! keeps reconnecting. The link is a TCP proxy the test cuts.

use crate::common;

use std::time::Duration;

use common::proxy::Proxy;
use common::{Broker, Config, GUARD};
use meshmq::client::{
    AckMode, Client, ClientEvent, ClientOptions, ErrorKind, Outgoing, SubscribeOptions,
};
use tokio::sync::broadcast::Receiver;

async fn next_event(events: &mut Receiver<ClientEvent>, want: &str) -> ClientEvent {
    loop {
        match tokio::time::timeout(GUARD, events.recv()).await {
            Ok(Ok(e @ ClientEvent::Interrupted { .. })) if want == "Interrupted" => return e,
            Ok(Ok(e @ ClientEvent::Resumed { .. })) if want == "Resumed" => return e,
            Ok(Ok(_)) => {}
            other => panic!("no {want} event ({other:?})"),
        }
    }
}

/// Cuts the client off and keeps it off until `away` has run.
async fn away_from<F: std::future::Future<Output = ()>>(
    proxy: &Proxy,
    events: &mut Receiver<ClientEvent>,
    away: F,
) -> ClientEvent {
    proxy.refuse_new(true);
    proxy.cut();
    next_event(events, "Interrupted").await;
    away.await;
    proxy.refuse_new(false);
    next_event(events, "Resumed").await
}

fn through(proxy: &Proxy, options: &str) -> String {
    format!(
        "failover:({})?initialReconnectDelay=20&maxReconnectDelay=100{options}",
        proxy.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_durables_and_temp_queues_come_back() {
    let broker = Broker::start(&Config::new());
    let proxy = Proxy::start(broker.ports().listen_addr());
    let client = Client::connect(
        &through(&proxy, ""),
        ClientOptions {
            client_id: Some("restorer".into()),
            ..ClientOptions::default()
        },
    )
    .await
    .expect("connect");
    let mut events = client.events();
    let other = broker.client().await;

    // A responder for request/reply.
    let responder = broker.client().await;
    let mut service = responder
        .subscribe("queue://service", SubscribeOptions::default())
        .await
        .expect("service");
    tokio::spawn(async move {
        while let Some(d) = service.next().await {
            let reply = Outgoing::new(format!("re: {}", String::from_utf8_lossy(&d.body)))
                .correlation_id(d.correlation_id.clone());
            let _ = responder.send(&d.reply_to, &reply).await;
        }
    });

    let mut queue = client
        .subscribe("queue://restore.q", SubscribeOptions::default())
        .await
        .expect("queue sub");
    let mut durable = client
        .subscribe(
            "topic://restore.news",
            SubscribeOptions {
                durable_name: Some("d1".into()),
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("durable sub");
    let (queue_id, durable_id) = (queue.id(), durable.id());
    let reply = client
        .request("queue://service", Outgoing::new("one"), GUARD)
        .await
        .expect("a request before");
    let reply_queue = reply_to_of(&reply);
    assert_eq!(&reply.body[..], b"re: one");

    let resumed = away_from(&proxy, &mut events, async {
        common::wait_until("the broker let go of the old connection", || {
            broker.destination("queue://restore.q").consumers == 0
        });
        other
            .send_with_receipt("queue://restore.q", &Outgoing::new("queued while away"))
            .await
            .expect("send");
        other
            .send_with_receipt(
                "topic://restore.news",
                &Outgoing::new("published while away").persistent(true),
            )
            .await
            .expect("publish");
    })
    .await;
    let ClientEvent::Resumed { subscriptions, .. } = resumed else {
        unreachable!()
    };
    assert_eq!(
        subscriptions, 3,
        "the queue, the durable and the reply queue"
    );

    let d = queue.next_timeout(GUARD).await.expect("queued message");
    assert_eq!(
        (&d.body[..], d.subscription),
        (&b"queued while away"[..], queue_id)
    );
    let d = durable
        .next_timeout(GUARD)
        .await
        .expect("stored for the durable");
    assert_eq!(
        (&d.body[..], d.subscription),
        (&b"published while away"[..], durable_id)
    );
    let reply = client
        .request("queue://service", Outgoing::new("two"), GUARD)
        .await
        .expect("a request after");
    assert_eq!(&reply.body[..], b"re: two");
    assert_eq!(reply_to_of(&reply), reply_queue, "the same temporary queue");
}

/// The reply queue a reply came to (the responder copied the request's correlation id; the
/// request's reply-to is the client's temporary queue).
fn reply_to_of(d: &meshmq::client::Delivery) -> String {
    d.destination.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_messages_resends_fire_and_forget_sends_lost_in_a_cut() {
    let broker = Broker::start(&Config::new());
    let proxy = Proxy::start(broker.ports().listen_addr());
    let consumer = broker.client().await;
    let mut sub = consumer
        .subscribe("queue://tracked", SubscribeOptions::default())
        .await
        .expect("subscribe");
    for (options, dest) in [("&trackMessages=true", "tracked"), ("", "untracked")] {
        let producer = Client::connect(&through(&proxy, options), ClientOptions::default())
            .await
            .expect("connect");
        let mut events = producer.events();
        proxy.mute_requests(true);
        for i in 0..10 {
            producer
                .send("queue://tracked", &Outgoing::new(format!("{dest} {i}")))
                .await
                .expect("fire and forget");
        }
        // Written into the muted link, then lost with it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ClientEvent::Resumed { resent, .. } = away_from(&proxy, &mut events, async {
            proxy.mute_requests(false);
        })
        .await
        else {
            unreachable!()
        };
        assert_eq!(resent, if options.is_empty() { 0 } else { 10 }, "{dest}");
        // A flush confirms what went before: nothing stays cached to be sent twice.
        producer.flush().await.expect("flush");
        let ClientEvent::Resumed { resent, .. } = away_from(&proxy, &mut events, async {}).await
        else {
            unreachable!()
        };
        assert_eq!(resent, 0, "{dest}: confirmed sends are not re-sent");
        producer
            .send_with_receipt("queue://tracked", &Outgoing::new(format!("{dest} end")))
            .await
            .expect("send");
    }
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("untracked end") {
        let d = sub.next_timeout(GUARD).await.expect("a message");
        got.push(String::from_utf8(d.body.to_vec()).expect("utf-8"));
    }
    let mut want: Vec<String> = (0..10).map(|i| format!("tracked {i}")).collect();
    want.push("tracked end".into());
    want.push("untracked end".into());
    assert_eq!(
        got, want,
        "tracked sends arrive once each, untracked ones are lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_and_in_doubt_transactions_are_reported_rolled_back() {
    let broker = Broker::start(&Config::new());
    let proxy = Proxy::start(broker.ports().listen_addr());
    let client = Client::connect(&through(&proxy, ""), ClientOptions::default())
        .await
        .expect("connect");
    let mut events = client.events();
    let consumer = broker.client().await;
    let mut sub = consumer
        .subscribe(
            "queue://tx",
            SubscribeOptions {
                ack: AckMode::ClientIndividual,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe");

    // Open across a failover: the broker dropped it with the old connection.
    let tx = client.begin().await.expect("begin");
    tx.send("queue://tx", &Outgoing::new("never"))
        .await
        .expect("staged");
    away_from(&proxy, &mut events, async {}).await;
    let e = tx
        .send("queue://tx", &Outgoing::new("late"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RolledBack, "{e}");
    assert_eq!(tx.commit().await.unwrap_err().kind(), ErrorKind::RolledBack);

    // A commit whose answer is lost: in doubt, so reported rolled back.
    let tx = client.begin().await.expect("begin");
    tx.send("queue://tx", &Outgoing::new("in doubt"))
        .await
        .expect("staged");
    proxy.mute_replies(true);
    let commit = tokio::spawn(tx.commit());
    common::wait_until("the broker committed", || {
        broker.destination("queue://tx").enqueued == 1
    });
    proxy.mute_replies(false);
    away_from(&proxy, &mut events, async {}).await;
    let e = commit.await.expect("task").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RolledBack, "{e}");
    assert!(e.to_string().contains("in doubt"), "{e}");

    // A transaction on the new connection commits normally.
    let tx = client.begin().await.expect("begin");
    tx.send("queue://tx", &Outgoing::new("committed"))
        .await
        .expect("staged");
    tx.commit().await.expect("commit");
    let bodies: Vec<String> = [
        sub.next_timeout(GUARD).await.expect("one"),
        sub.next_timeout(GUARD).await.expect("two"),
    ]
    .iter()
    .map(|d| String::from_utf8(d.body.to_vec()).expect("utf-8"))
    .collect();
    assert_eq!(
        bodies,
        ["in doubt", "committed"],
        "the open transaction's send never arrived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_bounds_a_send_waiting_for_a_connection() {
    let broker = Broker::start(&Config::new());
    let proxy = Proxy::start(broker.ports().listen_addr());
    let client = Client::connect(&through(&proxy, "&timeout=300"), ClientOptions::default())
        .await
        .expect("connect");
    let mut events = client.events();
    away_from(&proxy, &mut events, async {
        let e = client
            .send("queue://t", &Outgoing::new("nowhere to go"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        assert!(!client.is_closed(), "the client keeps reconnecting");
    })
    .await;
    client
        .send_with_receipt("queue://t", &Outgoing::new("once back"))
        .await
        .expect("sends work again");
}
