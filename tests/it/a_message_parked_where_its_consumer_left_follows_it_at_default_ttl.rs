//! No stuck messages at default settings: in a triangle of duplex connectors with the default
//! `network_ttl` of 1 (ActiveMQ's, and what a full mesh needs), queue messages forwarded from
//! `a` to a consumer on `b` that then left are parked on `b` with `a` on their path and their
//! TTL spent; when the consumer comes back on `a` (their origin) or appears on `c` (a third
//! group), every parked message reaches it, exactly once. Red before replays ignored the TTL:
//! nothing moved off `b`.

use crate::common;

use common::history::{consume, send_numbered, History};
use common::{wait_until, Mesh, MeshConfig, GUARD};
use meshmq::client::{AckMode, SubscribeOptions};
use tokio_util::sync::CancellationToken;

const TOTAL: usize = 200;
/// What the consumer on `b` takes before it leaves.
const TAKEN: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parked_messages_reach_their_consumer_back_on_their_origin_or_on_a_third_group() {
    let mut config = MeshConfig::new().group("a").group("b").group("c");
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a")] {
        config = config.connector(from, to, &["duplex = true"]);
    }
    let mesh = Mesh::start(&config);
    let options = SubscribeOptions {
        ack: AckMode::ClientIndividual,
        prefetch: 10,
        ..SubscribeOptions::default()
    };

    // (queue, where the consumer appears after leaving b)
    for (dest, then) in [("queue://parked.back", "a"), ("queue://parked.on", "c")] {
        let (a, b) = (mesh.member("a"), mesh.member("b"));
        let history = History::new();
        let first = b.client().await;
        let mut sub = first
            .subscribe(dest, options.clone())
            .await
            .expect("subscribe");
        wait_until("a knows b's consumer", || {
            a.connector("a-b").remote_demand == 1
        });
        let producer = a.client().await;
        send_numbered(&producer, &history, dest, "m", 0..TOTAL, true).await;
        for _ in 0..TAKEN {
            let d = tokio::time::timeout(GUARD, sub.next())
                .await
                .expect("b's consumer gets messages within the guard")
                .expect("subscription open");
            history.received("b", &String::from_utf8_lossy(&d.body), d.redelivered());
            sub.ack_with_receipt(&d).await.expect("ack");
        }
        wait_until("every message left a for b", || {
            a.destination(dest).depth == 0
        });
        first.close().await.expect("close");
        wait_until("the rest is parked on b", || {
            let d = b.destination(dest);
            d.consumers == 0 && d.depth == (TOTAL - TAKEN) as u64
        });

        let stop = CancellationToken::new();
        let second = mesh.member(then).client().await;
        let sub = second
            .subscribe(dest, options.clone())
            .await
            .expect("subscribe");
        consume(sub, &history, then, stop.clone());
        history.wait_all_delivered().await;
        wait_until("nothing is left queued anywhere", || {
            mesh.members().all(|m| m.destination(dest).depth == 0)
        });
        stop.cancel();
        let verdict = history.verdict();
        verdict.assert_exactly_once();
        assert_eq!(
            verdict.by_consumer[then],
            TOTAL - TAKEN,
            "every parked message reached the consumer on {then}"
        );
        second.close().await.expect("close");
        producer.close().await.expect("close");
    }
}
