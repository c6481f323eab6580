//! An edge with uplinks to two hubs keeps its consumers receiving when one hub dies (S10): a
//! source group dials both hubs, the edge dials both (duplex), two consumers of one queue sit
//! on the edge. With one hub `kill -9`ed mid-stream, messages sent after the kill reach the
//! edge through the other hub within a time budget; once the dead hub is back, what it held
//! is delivered too. Every message arrives exactly once (no loop between the two routes, no
//! duplicate of a forward whose acknowledgement died with the hub), and no message keeps
//! travelling: once all are delivered, no group holds any and the deliveries stop.

use crate::common;

use std::time::{Duration, Instant};

use common::history::{consume, send_numbered, History};
use common::{wait_until, Mesh, MeshConfig};
use meshmq::client::{AckMode, SubscribeOptions};
use meshmq::server::admin::MemberStatus;
use tokio_util::sync::CancellationToken;

const DEST: &str = "queue://rehome.orders";
/// The hubs the edge dials.
const UPLINKS: [&str; 2] = ["hub-a", "hub-b"];
const BATCH: usize = 500;
/// From the kill to the first message sent after it reaching the edge: the source notices the
/// dead bridge within three 500 ms heartbeats and sends through the other hub. The rest is
/// headroom for a loaded 2-core machine.
const BUDGET: Duration = Duration::from_secs(10);

fn mesh(uplinks: &[&str]) -> Mesh {
    let beat = "heartbeat = \"500ms\"";
    let ttl = "network_ttl = 2";
    let mut config = MeshConfig::new()
        .group("source")
        .group("hub-a")
        .group("hub-b")
        .group("edge");
    for hub in ["hub-a", "hub-b"] {
        config = config.connector("source", hub, &[beat, ttl]);
    }
    for hub in uplinks {
        config = config.connector("edge", hub, &["duplex = true", beat, ttl]);
    }
    Mesh::start(&config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_keeps_receiving_through_its_other_hub_when_one_dies() {
    let started = Instant::now();
    let mut mesh = mesh(&UPLINKS);
    let history = History::new();
    let stop = CancellationToken::new();
    let consumers_client = mesh.member("edge").client().await;
    let mut consumers = Vec::new();
    for label in ["edge-1", "edge-2"] {
        let sub = consumers_client
            .subscribe(
                DEST,
                SubscribeOptions {
                    ack: AckMode::ClientIndividual,
                    prefetch: 20,
                    ..SubscribeOptions::default()
                },
            )
            .await
            .expect("subscribe on the edge");
        consumers.push(consume(sub, &history, label, stop.clone()));
    }
    // Demand reaches the source through both hubs.
    until(&mesh, "source", "the hubs carry the edge's demand", |s| {
        s.connectors
            .iter()
            .filter(|c| c.up && c.remote_demand > 0)
            .count()
            == UPLINKS.len()
    });

    let producer = mesh.member("source").client().await;
    send_numbered(&producer, &history, DEST, "before", 0..BATCH, true).await;
    history.wait_all_delivered().await;
    let via = |mesh: &Mesh, hub: &str| {
        mesh.member("source")
            .connector(&format!("source-{hub}"))
            .forwarded
    };
    let (a_before, b_before) = (via(&mesh, "hub-a"), via(&mesh, "hub-b"));

    // Kill one hub mid-stream.
    let streaming = {
        let (producer, history) = (producer.clone(), history.clone());
        tokio::spawn(async move {
            send_numbered(&producer, &history, DEST, "during", 0..BATCH, true).await;
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::task::block_in_place(|| mesh.member_mut("hub-a").kill9());
    let killed = Instant::now();
    streaming.await.expect("the producer panicked");
    // A message sent after the kill reaches the edge within the budget.
    let probe = "after-0";
    send_numbered(&producer, &history, DEST, "after", 0..1, true).await;
    common::wait::poll()
        .within(BUDGET.saturating_sub(killed.elapsed()))
        .until_async("a message sent after hub-a died reaches the edge", || {
            !history.verdict().lost.iter().any(|l| l == probe)
        })
        .await;
    let reached = killed.elapsed();
    send_numbered(&producer, &history, DEST, "after", 1..BATCH, true).await;

    // The dead hub comes back with what it held.
    tokio::task::block_in_place(|| mesh.member_mut("hub-a").restart());
    history.wait_all_delivered().await;
    let all_at = started.elapsed();
    // Nothing keeps travelling: deliveries stop and no group holds a message.
    let settled = history.verdict();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = history.verdict();
    assert_eq!(
        settled.by_consumer, later.by_consumer,
        "deliveries went on after every message had arrived (a loop)"
    );
    for group in ["source", "hub-a", "hub-b", "edge"] {
        until(&mesh, group, "holds no message of the queue", |s| {
            s.destinations
                .iter()
                .filter(|d| d.destination == DEST)
                .all(|d| d.depth == 0)
        });
    }
    stop.cancel();
    for c in consumers {
        let _ = c.await;
    }
    eprintln!(
        "{} sent: after the kill of hub-a the first new message reached the edge in {reached:?} \
         (budget {BUDGET:?}); all delivered {all_at:?} into the test; per consumer {:?}; \
         forwarded before the kill via hub-a {a_before}, via hub-b {b_before}; after: via hub-b {}",
        later.sent,
        later.by_consumer,
        via(&mesh, "hub-b")
    );
    later.assert_exactly_once();
    assert!(
        a_before > 0 && b_before > 0,
        "both routes carried messages before the kill: hub-a {a_before}, hub-b {b_before}"
    );
}

/// Waits (off the runtime's workers) until `group`'s `/status` satisfies `cond`.
fn until(mesh: &Mesh, group: &str, what: &str, cond: impl Fn(&MemberStatus) -> bool) {
    tokio::task::block_in_place(|| {
        wait_until(&format!("{group}: {what}"), || {
            cond(&mesh.member(group).status())
        })
    });
}
