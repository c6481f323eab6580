//! Conservation across a hub and two edges (the demo's shape): every message producers on the
//! hub send is delivered exactly once to the consumers on the edges — none lost, none
//! invented, none twice — and the split between the edges follows their consumers: the edge
//! with three consumers gets more than the edge with one.

use crate::common;

use common::history::{consume_individually, send_numbered, History};
use common::{wait_until, Mesh, MeshConfig};
use tokio_util::sync::CancellationToken;

const DEST: &str = "queue://orders";
const PRODUCERS: usize = 2;
const PER_PRODUCER: usize = 3000;

fn demo_like() -> MeshConfig {
    MeshConfig::new()
        .group("hub")
        .group("edge-1")
        .group("edge-2")
        .connector("hub", "edge-1", &["duplex = true", "network_ttl = 3"])
        .connector("hub", "edge-2", &["duplex = true", "network_ttl = 3"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_message_reaches_one_consumer_and_the_busier_edge_gets_more() {
    let mesh = Mesh::start(&demo_like());
    let history = History::new();
    let stop = CancellationToken::new();
    let mut consumers = Vec::new();
    for (group, count) in [("edge-1", 1), ("edge-2", 3)] {
        for _ in 0..count {
            let client = mesh.member(group).client().await;
            let consuming =
                consume_individually(&client, DEST, &history, group, stop.clone()).await;
            consumers.push((client, consuming));
        }
    }
    wait_until("the hub knows every edge consumer", || {
        let hub = mesh.member("hub");
        hub.connector("hub-edge-1").remote_demand == 1
            && hub.connector("hub-edge-2").remote_demand == 3
    });

    let hub = mesh.member("hub");
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let client = hub.client().await;
        let history = history.clone();
        producers.push(tokio::spawn(async move {
            let prefix = format!("p{p}");
            send_numbered(&client, &history, DEST, &prefix, 0..PER_PRODUCER, false).await;
        }));
    }
    for p in producers {
        p.await.expect("producer");
    }
    history.wait_all_delivered().await;
    stop.cancel();

    let verdict = history.verdict();
    verdict.assert_exactly_once();
    assert_eq!(verdict.sent, PRODUCERS * PER_PRODUCER);
    let (one, three) = (verdict.by_consumer["edge-1"], verdict.by_consumer["edge-2"]);
    assert!(
        three > one,
        "the edge with 3 consumers got {three} messages, the edge with 1 got {one}"
    );
    wait_until("the hub's queue is empty", || {
        mesh.member("hub").destination(DEST).depth == 0
    });
}
