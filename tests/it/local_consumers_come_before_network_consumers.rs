//! Local consumers first: while a consumer on the hub has room in its prefetch, the hub gives
//! it every message and forwards none to the edge (the edge's network consumer ranks below
//! it); once the hub consumer stops acknowledging and its prefetch is full, exactly the
//! overflow goes to the edge; when it leaves, what it held goes there too (flagged
//! redelivered), so nothing is lost or delivered twice unflagged.

use crate::common;

use std::time::Duration;

use common::history::{consume, send_numbered, History};
use common::{wait_until, Mesh, MeshConfig, GUARD};
use meshmq::client::{AckMode, SubscribeOptions};
use tokio_util::sync::CancellationToken;

const DEST: &str = "queue://work";
/// The hub consumer's prefetch; the first phase sends fewer, so it can never be full.
const PREFETCH: usize = 1000;
const KEPT_UP: usize = 500;
const OVERFLOW: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_edge_gets_only_what_the_hub_consumer_has_no_room_for() {
    let mesh = Mesh::start(&MeshConfig::new().group("hub").group("edge").connector(
        "hub",
        "edge",
        &["duplex = true", "network_ttl = 3"],
    ));
    let (hub, edge) = (mesh.member("hub"), mesh.member("edge"));
    let history = History::new();
    let stop = CancellationToken::new();
    let options = SubscribeOptions {
        ack: AckMode::ClientIndividual,
        prefetch: PREFETCH as u32,
        ..SubscribeOptions::default()
    };

    let edge_client = edge.client().await;
    let edge_sub = edge_client
        .subscribe(DEST, options.clone())
        .await
        .expect("subscribe on the edge");
    let edge_consumer = consume(edge_sub, &history, "edge", stop.clone());
    wait_until("the hub knows the edge consumer", || {
        hub.connector("hub-edge").remote_demand == 1
    });

    // Phase 1: the hub consumer keeps up (it can never hold PREFETCH unacknowledged messages,
    // since fewer are sent): all of them are its.
    let hub_client = hub.client().await;
    let mut hub_sub = hub_client
        .subscribe(DEST, options.clone())
        .await
        .expect("subscribe on the hub");
    let producer = hub.client().await;
    send_numbered(&producer, &history, DEST, "m", 0..KEPT_UP, false).await;
    for _ in 0..KEPT_UP {
        let d = tokio::time::timeout(GUARD, hub_sub.next())
            .await
            .expect("the hub consumer gets its messages within the guard")
            .expect("subscription open");
        history.received("hub", &String::from_utf8_lossy(&d.body), d.redelivered());
        hub_sub.ack(&d).await.expect("ack");
    }
    assert_eq!(history.count_by("edge"), 0, "{:?}", history.verdict());
    assert_eq!(
        hub.connector("hub-edge").forwarded,
        0,
        "nothing is forwarded while the local consumer has room"
    );

    // Phase 2: the hub consumer stops acknowledging; it takes PREFETCH more, the rest overflows.
    send_numbered(
        &producer,
        &history,
        DEST,
        "m",
        KEPT_UP..KEPT_UP + PREFETCH + OVERFLOW,
        false,
    )
    .await;
    wait_until("the overflow reached the edge", || {
        history.count_by("edge") >= OVERFLOW
    });
    let mut held = 0;
    while let Some(d) = hub_sub.next_timeout(Duration::from_millis(200)).await {
        assert!(!d.redelivered());
        held += 1;
    }
    assert_eq!(held, PREFETCH, "the hub consumer's prefetch is full");
    assert_eq!(
        history.count_by("edge"),
        OVERFLOW,
        "exactly the overflow went to the edge"
    );

    // The hub consumer leaves without acknowledging: what it held goes to the edge.
    hub_client.close().await.expect("close");
    history.wait_all_delivered().await;
    stop.cancel();
    edge_consumer.await.expect("edge consumer");
    let verdict = history.verdict();
    verdict.assert_ok();
    assert_eq!(verdict.by_consumer["hub"], KEPT_UP);
    assert_eq!(verdict.by_consumer["edge"], PREFETCH + OVERFLOW);
}
