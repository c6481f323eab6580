//! A selector on an edge consumer limits what crosses the connector: demand carries the
//! selector to the producer-facing hub, whose network consumer forwards only the messages it
//! matches (the connector's `forwarded` count and the hub's queue show it); the others stay on
//! the hub, in order, for a consumer without a selector. Topic subscribers get only their
//! matches across the mesh. A stock STOMP client (stomp.py) selects the same way on the edge,
//! and a selector that does not parse gets a STOMP ERROR naming the position, is counted, and
//! makes no subscription (no demand reaches the hub).

use crate::common;
use crate::common_stomp;

use std::time::Duration;

use common::mesh::{Mesh, MeshBuilder};
use common::{http_get, metric_sum, GUARD};
use meshmq::client::{AckMode, Client, ClientOptions, Outgoing, SubscribeOptions, Subscription};
use serde_json::json;

fn hub_and_edge() -> Mesh {
    let mut mesh = MeshBuilder::new()
        .group("hub", 1, "")
        .group("edge", 1, "")
        .connector("hub", "edge", "")
        .stomp()
        .build();
    mesh.start_all();
    mesh.wait_until("the hub-edge bridge is up", |m| {
        connector(m, "hub").is_some_and(|c| c.up) && connector(m, "edge").is_some_and(|c| c.up)
    });
    mesh
}

fn connector(mesh: &Mesh, member: &str) -> Option<meshmq::network::ConnectorStatus> {
    mesh.member(member)
        .status()?
        .connectors
        .into_iter()
        .find(|c| c.name == "hub-edge")
}

fn forwarded(mesh: &Mesh) -> u64 {
    connector(mesh, "hub").map_or(0, |c| c.forwarded)
}

fn depth(mesh: &Mesh, member: &str, dest: &str) -> u64 {
    mesh.member(member)
        .status()
        .and_then(|s| s.destinations.into_iter().find(|d| d.destination == dest))
        .map_or(0, |d| d.depth)
}

async fn client(mesh: &Mesh, member: &str) -> Client {
    Client::connect(&mesh.member(member).url(), ClientOptions::default())
        .await
        .expect("connect")
}

/// Receives exactly `n` messages (acknowledging each) and returns their bodies.
async fn take(sub: &mut Subscription, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        let d = sub
            .next_timeout(GUARD)
            .await
            .unwrap_or_else(|| panic!("only {got:?} arrived, {n} expected"));
        sub.ack(&d).await.expect("ack");
        got.push(String::from_utf8_lossy(&d.body).into_owned());
    }
    got
}

/// Nothing more arrives within a short wait (the positive checks above it already waited
/// for everything that was going to come; this only catches extras).
async fn nothing_more(sub: &mut Subscription) {
    if let Some(d) = sub.next_timeout(Duration::from_millis(500)).await {
        panic!(
            "an unexpected message arrived: {:?} {:?}",
            String::from_utf8_lossy(&d.body),
            d.headers
        );
    }
}

fn numbered(range: std::ops::Range<u32>, pick: impl Fn(u32) -> bool) -> Vec<String> {
    range
        .filter(|i| pick(*i))
        .map(|i| format!("m{i}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_matching_queue_messages_cross_and_the_rest_wait_on_the_hub() {
    let mesh = hub_and_edge();
    let edge = client(&mesh, "edge").await;
    let mut red = edge
        .subscribe(
            "queue://orders",
            SubscribeOptions {
                ack: AckMode::ClientIndividual,
                selector: "color = 'red' AND items > 10".into(),
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe with a selector");
    mesh.wait_until("the hub hears the edge's consumer", |m| {
        connector(m, "hub").is_some_and(|c| c.remote_demand == 1)
    });

    // 40 messages on the hub: a quarter are red with more than 10 items.
    let hub = client(&mesh, "hub").await;
    for i in 0..40u32 {
        let color = if i % 2 == 0 { "red" } else { "blue" };
        let items = if i % 4 == 0 { "12" } else { "3" };
        hub.send_with_receipt(
            "queue://orders",
            &Outgoing::new(format!("m{i}"))
                .persistent(true)
                .header("color", color)
                .header("items", items),
        )
        .await
        .expect("send");
    }
    let wanted = numbered(0..40, |i| i % 4 == 0);
    assert_eq!(take(&mut red, wanted.len()).await, wanted);
    nothing_more(&mut red).await;
    assert_eq!(
        forwarded(&mesh),
        wanted.len() as u64,
        "only the matching messages cross the connector"
    );
    assert_eq!(depth(&mesh, "hub", "queue://orders"), 30);

    // A consumer without a selector on the hub gets the others, in the order they were sent.
    let mut plain = hub
        .subscribe(
            "queue://orders",
            SubscribeOptions {
                ack: AckMode::ClientIndividual,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe");
    let rest = numbered(0..40, |i| i % 4 != 0);
    assert_eq!(take(&mut plain, rest.len()).await, rest);
    nothing_more(&mut plain).await;
    assert_eq!(forwarded(&mesh), wanted.len() as u64);
    mesh.wait_until("every queue is empty", |m| {
        depth(m, "hub", "queue://orders") == 0 && depth(m, "edge", "queue://orders") == 0
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_subscriber_on_the_edge_gets_only_its_matches() {
    let mesh = hub_and_edge();
    let edge = client(&mesh, "edge").await;
    let mut urgent = edge
        .subscribe(
            "topic://alerts.>",
            SubscribeOptions {
                selector: "JMSPriority >= 7 OR level IN ('fatal')".into(),
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe with a selector");
    mesh.wait_until("the hub hears the edge's subscriber", |m| {
        connector(m, "hub").is_some_and(|c| c.remote_demand == 1)
    });
    let hub = client(&mesh, "hub").await;
    let mut everything = hub
        .subscribe("topic://alerts.>", SubscribeOptions::default())
        .await
        .expect("subscribe");
    for i in 0..30u32 {
        let level = if i % 5 == 0 { "fatal" } else { "info" };
        let priority = if i % 3 == 0 { 8 } else { 4 };
        hub.send_with_receipt(
            "topic://alerts.disk",
            &Outgoing::new(format!("m{i}"))
                .priority(priority)
                .header("level", level),
        )
        .await
        .expect("send");
    }
    assert_eq!(take(&mut everything, 30).await.len(), 30);
    let wanted = numbered(0..30, |i| i % 5 == 0 || i % 3 == 0);
    assert_eq!(take(&mut urgent, wanted.len()).await, wanted);
    nothing_more(&mut urgent).await;
    assert_eq!(forwarded(&mesh), wanted.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_py_selects_on_the_edge_and_a_bad_selector_is_an_error() {
    let mesh = hub_and_edge();
    // The messages wait on the hub before any consumer exists.
    let hub = client(&mesh, "hub").await;
    for i in 0..24u32 {
        let region = ["eu-west", "us-east", "eu-north"][i as usize % 3];
        hub.send_with_receipt(
            "queue://sel.stomp",
            &Outgoing::new(format!("m{i}"))
                .persistent(true)
                .header("region", region)
                .header("size", (i * 2).to_string()),
        )
        .await
        .expect("send");
    }
    let edge_stomp = mesh.member("edge").stomp.expect("a stomp listener");
    let wanted = numbered(0..24, |i| i % 3 != 1 && i * 2 > 20);
    let r = common_stomp::python(
        "selective_consumer.py",
        &[
            edge_stomp.port().to_string(),
            "/queue/sel.stomp".into(),
            "region LIKE 'eu-%' AND size > 20".into(),
            wanted.len().to_string(),
        ],
    );
    assert_eq!(r["bodies"], json!(wanted));
    let error = r["error"]
        .as_str()
        .expect("an ERROR frame for the bad selector");
    assert!(
        error.contains("at character 8: expected an identifier, a literal, NOT or '('"),
        "the ERROR names the position and what was expected: {error}"
    );
    let edge_metrics = match http_get(mesh.member("edge").admin, "/metrics") {
        Ok((200, text)) => text,
        other => panic!("edge metrics: {other:?}"),
    };
    assert_eq!(
        metric_sum(
            &edge_metrics,
            "meshmq_bad_selectors_total",
            &["protocol=\"stomp\""]
        ),
        1.0
    );
    assert_eq!(forwarded(&mesh), wanted.len() as u64);
    assert_eq!(
        depth(&mesh, "hub", "queue://sel.stomp"),
        24 - wanted.len() as u64
    );
}
