//! Consumer migration under load (S3): on the mesh's shape (a producer-facing hub, two edges,
//! duplex connectors), a producer on the hub sends 2,000 persistent messages at a steady pace
//! while a slow consumer (10 ms a message) stays on edge-2 and another consumer (20 ms a
//! message) moves between the edges — edge-1, edge-2, edge-1, edge-2 — closing each time with
//! messages still unacknowledged and more waiting for it on the edge it leaves.
//! Every message is delivered within 60 s of the first send (the scenario's bound), none is
//! invented, an extra copy is only ever a flagged redelivery, and nothing is left on any
//! broker afterwards: no message stuck where a consumer left.

use crate::common;

use std::time::{Duration, Instant};

use common::history::History;
use common::{wait_until, Mesh, MeshConfig};
use meshmq::client::{AckMode, Client, Outgoing, SubscribeOptions};
use tokio_util::sync::CancellationToken;

const DEST: &str = "queue://s3.work";
const TOTAL: usize = 2_000;
/// The scenario's bound, from the first send until every message arrived.
const BOUND: Duration = Duration::from_secs(60);
/// Where the moving consumer sits while each quarter of the messages is sent.
const ROUTE: [&str; 4] = ["edge-1", "edge-2", "edge-1", "edge-2"];

fn individual() -> SubscribeOptions {
    SubscribeOptions {
        ack: AckMode::ClientIndividual,
        ..SubscribeOptions::default()
    }
}

/// A consumer of DEST on `client` that takes `pace` over each message before acknowledging
/// it, recording each under `label`, until `stop` or its connection ends.
async fn paced_consumer(
    client: &Client,
    label: &'static str,
    pace: Duration,
    history: &History,
    stop: CancellationToken,
) {
    let mut sub = client
        .subscribe(DEST, individual())
        .await
        .expect("subscribe");
    let history = history.clone();
    tokio::spawn(async move {
        loop {
            let d = tokio::select! {
                d = sub.next() => match d { Some(d) => d, None => return },
                _ = stop.cancelled() => return,
            };
            tokio::time::sleep(pace).await;
            history.received(label, &String::from_utf8_lossy(&d.body), d.redelivered());
            if sub.ack(&d).await.is_err() {
                return;
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_moving_between_edges_under_load_strands_nothing() {
    let mut config = MeshConfig::new()
        .group("hub")
        .group("edge-1")
        .group("edge-2");
    for edge in ["edge-1", "edge-2"] {
        config = config.connector("hub", edge, &["duplex = true", "network_ttl = 3"]);
    }
    let mesh = Mesh::start(&config);
    let hub = mesh.member("hub");
    let history = History::new();
    let stop = CancellationToken::new();
    let slow = mesh.member("edge-2").client().await;
    paced_consumer(
        &slow,
        "slow",
        Duration::from_millis(10),
        &history,
        stop.clone(),
    )
    .await;

    let producer = hub.client().await;
    let started = Instant::now();
    let quarter = TOTAL / ROUTE.len();
    for (leg, edge) in ROUTE.iter().enumerate() {
        // The moving consumer arrives on this leg's edge…
        let mover = mesh.member(edge).client().await;
        let leg_stop = CancellationToken::new();
        let pace = Duration::from_millis(20);
        paced_consumer(&mover, "mover", pace, &history, leg_stop.clone()).await;
        // …while the producer keeps its pace, one receipted send every 5 ms.
        for n in leg * quarter..(leg + 1) * quarter {
            let id = format!("m-{n}");
            producer
                .send_with_receipt(DEST, &Outgoing::new(id.clone()).persistent(true))
                .await
                .unwrap_or_else(|e| panic!("send {id}: {e}"));
            history.sent(&id);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // …and leaves with whatever it has not acknowledged yet.
        leg_stop.cancel();
        mover.close().await.expect("the moving consumer closes");
    }

    // The last leg's consumer is gone: what it left, and everything parked on edge-1, must
    // still reach the slow consumer.
    history.wait_all_delivered().await;
    let took = started.elapsed();
    println!(
        "{TOTAL} messages delivered {took:?} after the first send; {:?}",
        history.verdict().by_consumer
    );
    for b in mesh.members() {
        wait_until("nothing is left on any broker", || {
            b.destination(DEST).depth == 0
        });
    }
    stop.cancel();
    slow.close().await.expect("close");
    let verdict = history.verdict();
    verdict.assert_ok();
    assert!(
        verdict.by_consumer.get("mover").copied().unwrap_or(0) > 0,
        "the moving consumer took part"
    );
    assert!(
        took <= BOUND,
        "the messages took {took:?} to arrive, over the bound of {BOUND:?}"
    );
}
