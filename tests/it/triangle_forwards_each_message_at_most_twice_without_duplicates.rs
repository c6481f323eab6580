//! A triangle (three groups, every pair linked by a duplex connector, TTL 3) has a cycle, yet
//! no message loops or doubles: a queue message reaches exactly one consumer and is forwarded
//! at most twice (the whole mesh forwards at most 2 × the messages sent), and a topic message
//! reaches each subscribing group exactly once, over its one shortest route.

use crate::common;

use common::history::{consume, send_numbered, History};

use common::{wait_until, Mesh, MeshConfig};
use meshmq::client::{AckMode, Client, SubscribeOptions};
use tokio_util::sync::CancellationToken;

const FORWARDED: &str = "meshmq_connector_forwarded_total";
const GROUPS: [&str; 3] = ["a", "b", "c"];
/// (from, to, connector name).
const CONNECTORS: [(&str, &str, &str); 3] =
    [("a", "b", "a-b"), ("b", "c", "b-c"), ("c", "a", "c-a")];

fn triangle() -> Mesh {
    let mut config = MeshConfig::new()
        // Topic subscribers here are never slow on purpose; a large pending limit keeps a
        // loaded machine from turning a burst into dropped messages, which is not this test.
        .broker("topic_pending_limit = 100000");
    for g in GROUPS {
        config = config.group(g);
    }
    for (from, to, _) in CONNECTORS {
        config = config.connector(from, to, &["duplex = true", "network_ttl = 3"]);
    }
    Mesh::start(&config)
}

/// Waits until every connector of every group knows `demand[group][connector]` remote
/// consumers.
fn wait_for_demand(mesh: &Mesh, demand: &[(&str, &str, u64)]) {
    let seen = || -> Vec<(&str, &str, u64)> {
        demand
            .iter()
            .map(|(g, c, _)| (*g, *c, mesh.member(g).connector(c).remote_demand))
            .collect()
    };
    common::wait::poll().until_or(
        "demand spreads as expected",
        || seen() == demand,
        || format!("want {demand:?}, have {:?}", seen()),
    );
}

async fn subscribe(mesh: &Mesh, group: &str, dest: &str) -> (Client, meshmq::client::Subscription) {
    let client = mesh.member(group).client().await;
    let sub = client
        .subscribe(
            dest,
            SubscribeOptions {
                ack: AckMode::ClientIndividual,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe");
    (client, sub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_message_is_delivered_once_and_forwarded_at_most_twice() {
    const DEST: &str = "queue://jobs";
    const TOTAL: usize = 3000;
    let mesh = triangle();
    let (history, stop) = (History::new(), CancellationToken::new());
    let mut clients = Vec::new();
    for g in ["b", "c"] {
        let (client, sub) = subscribe(&mesh, g, DEST).await;
        consume(sub, &history, g, stop.clone());
        clients.push(client);
    }
    // A hears of B's and C's consumers directly and through the other; B and C each hear of
    // the other's consumer directly and (relayed by A) the long way round.
    wait_for_demand(
        &mesh,
        &[
            ("a", "a-b", 2),
            ("a", "c-a", 2),
            ("b", "a-b", 1),
            ("b", "b-c", 1),
            ("c", "b-c", 1),
            ("c", "c-a", 1),
        ],
    );
    let producer = mesh.member("a").client().await;
    send_numbered(&producer, &history, DEST, "m", 0..TOTAL, false).await;
    history.wait_all_delivered().await;
    stop.cancel();
    history.verdict().assert_exactly_once();
    wait_until("every forward is acknowledged", || {
        mesh.members()
            .all(|m| m.status().connectors.iter().all(|c| c.inflight == 0))
    });
    let forwarded = mesh.metric_sum(FORWARDED, &[]);
    assert!(
        forwarded <= 2.0 * TOTAL as f64,
        "the mesh forwarded {forwarded} times for {TOTAL} messages"
    );
    assert!(
        forwarded >= TOTAL as f64,
        "A has no consumer: all must leave it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_topic_message_reaches_each_subscribing_group_once() {
    const DEST: &str = "topic://prices";
    const PER_PRODUCER: usize = 1000;
    let mesh = triangle();
    let stop = CancellationToken::new();
    let mut histories = Vec::new();
    let mut clients = Vec::new();
    for g in GROUPS {
        let history = History::new();
        let (client, sub) = subscribe(&mesh, g, DEST).await;
        consume(sub, &history, g, stop.clone());
        histories.push(history);
        clients.push(client);
    }
    // Every group hears of both others' subscribers: directly, and relayed by the third.
    let everywhere: Vec<(&str, &str, u64)> = CONNECTORS
        .iter()
        .flat_map(|(from, to, name)| [(*from, *name, 2), (*to, *name, 2)])
        .collect();
    wait_for_demand(&mesh, &everywhere);

    // Producers on two groups; every subscriber must get every message once.
    let all = History::new();
    for g in ["a", "b"] {
        let producer = mesh.member(g).client().await;
        send_numbered(&producer, &all, DEST, g, 0..PER_PRODUCER, false).await;
    }
    let sent = all.verdict().sent;
    for (g, history) in GROUPS.iter().zip(&histories) {
        for n in 0..PER_PRODUCER {
            for p in ["a", "b"] {
                history.sent(&format!("{p}-{n}"));
            }
        }
        history.wait_all_delivered().await;
        let verdict = history.verdict();
        verdict.assert_exactly_once();
        assert_eq!(verdict.by_consumer[*g], sent, "subscriber on {g}");
    }
    stop.cancel();
    wait_until("every forward is acknowledged", || {
        mesh.members()
            .all(|m| m.status().connectors.iter().all(|c| c.inflight == 0))
    });
    let forwarded = mesh.metric_sum(FORWARDED, &[]);
    assert_eq!(
        forwarded,
        2.0 * sent as f64,
        "each message goes once to each of the two other groups, by the direct route"
    );
}
