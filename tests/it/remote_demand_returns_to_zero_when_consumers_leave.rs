//! Demand is undone as completely as it is done: consumers on 2,000 destinations across two
//! edges are advertised to the hub (and relayed to the other edge); when they go — half by
//! unsubscribing, half with their connection — remote demand returns to 0 on every member,
//! in `/status` and in `meshmq_remote_demand`, and no network consumer is left on any queue.

use crate::common;

use common::{metric_sum, wait_until, Mesh, MeshConfig};
use meshmq::client::SubscribeOptions;

const PER_EDGE: usize = 1000;
const REMOTE_DEMAND: &str = "meshmq_remote_demand";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn demand_for_2000_destinations_comes_and_goes() {
    let mesh = Mesh::start(
        &MeshConfig::new()
            .group("hub")
            .group("edge-1")
            .group("edge-2")
            .connector("hub", "edge-1", &["duplex = true", "network_ttl = 3"])
            .connector("hub", "edge-2", &["duplex = true", "network_ttl = 3"]),
    );
    // Queues consumed on edge-1, topics on edge-2.
    let one = mesh.member("edge-1").client().await;
    let mut queues = Vec::new();
    for n in 0..PER_EDGE {
        let sub = one
            .subscribe(&format!("queue://demand.{n}"), SubscribeOptions::default())
            .await
            .expect("subscribe");
        queues.push(sub);
    }
    let two = mesh.member("edge-2").client().await;
    for n in 0..PER_EDGE {
        two.subscribe(&format!("topic://demand.{n}"), SubscribeOptions::default())
            .await
            .expect("subscribe");
    }

    let n = PER_EDGE as u64;
    wait_until(
        "the demand spread: the hub hears each edge, each edge the other",
        || {
            let hub = mesh.member("hub");
            hub.connector("hub-edge-1").remote_demand == n
                && hub.connector("hub-edge-2").remote_demand == n
                && mesh.member("edge-1").connector("hub-edge-1").remote_demand == n
                && mesh.member("edge-2").connector("hub-edge-2").remote_demand == n
        },
    );
    let hub_metrics = mesh.member("hub").metrics();
    assert_eq!(metric_sum(&hub_metrics, REMOTE_DEMAND, &[]), 2.0 * n as f64);
    assert_eq!(
        metric_sum(
            &hub_metrics,
            REMOTE_DEMAND,
            &["destination=\"queue://demand.7\""]
        ),
        1.0
    );

    for sub in queues {
        sub.unsubscribe(false).await.expect("unsubscribe");
    }
    two.close().await.expect("close");

    wait_until("no remote demand is left anywhere", || {
        mesh.members().all(|m| {
            m.status().connectors.iter().all(|c| c.remote_demand == 0)
                && metric_sum(&m.metrics(), REMOTE_DEMAND, &[]) == 0.0
        })
    });
    for m in mesh.members() {
        let left: Vec<_> = m
            .status()
            .destinations
            .into_iter()
            .filter(|d| d.consumers > 0)
            .collect();
        assert!(
            left.is_empty(),
            "{} still has consumers: {left:?}",
            m.member()
        );
    }
}
