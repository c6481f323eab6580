//! Consumers spread over every edge and never onto the hub, with the shipped
//! `topologies/edges.toml` (a hub dialling three edges that never dial each other; the edges'
//! listeners filter `edge-.*`): 300 failover consumers given only edge-1's URI are evened out by
//! the rebalance to each edge's fair share ± the threshold, none on the hub; after `kill -9` of
//! edge-2 every consumer is on edge-1 or edge-3 within 30 s, none on the hub; edge-2 restarted
//! gets its share back (within the guard) with no more moves than its share ± the threshold
//! (no storm, nobody moved twice); and the persistent messages a producer on the hub had
//! receipted all along are all delivered.
//! A chain hub → edge-a → edge-b shows the view travelling two hops: the hub's clients hear of
//! edge-b, edge-b's clients of the hub, and edge-b leaves the hub's view when edge-a dies.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::history::{consume, History};
use common::mesh::{connect_clients, Mesh, MeshBuilder};
use meshmq::client::{AckMode, Client, ClientOptions, Outgoing, SubscribeOptions};
use tokio_util::sync::CancellationToken;

const CONSUMERS: u64 = 300;
const EDGES: [&str; 3] = ["edge-1", "edge-2", "edge-3"];
const QUEUE: &str = "queue://spread.orders";
/// `[rebalance] threshold` of edges.toml.
const THRESHOLD: f64 = 0.1;

/// Client connections each running member counts (0 for one that does not answer).
fn counts(mesh: &Mesh) -> BTreeMap<String, u64> {
    mesh.members
        .iter()
        .map(|m| (m.name.clone(), m.clients()))
        .collect()
}

/// Moves still scheduled on the running edges.
fn pending(mesh: &Mesh) -> u64 {
    EDGES
        .iter()
        .filter_map(|e| mesh.member(e).status())
        .filter_map(|s| s.cluster)
        .map(|c| c.rebalance_pending)
        .sum()
}

/// Each of `edges` within its fair share of the consumers ± the threshold (at least 2).
fn fair(mesh: &Mesh, edges: &[&str]) -> bool {
    let c = counts(mesh);
    let share = CONSUMERS as f64 / edges.len() as f64;
    let slack = (share * THRESHOLD).max(2.0);
    edges.iter().map(|e| c[*e]).sum::<u64>() == CONSUMERS
        && edges.iter().all(|e| (c[*e] as f64 - share).abs() <= slack)
}

/// Polls `cond` every 100 ms for at most `bound`; fails naming `what` and the counts.
fn within(mesh: &Mesh, bound: Duration, what: &str, mut cond: impl FnMut(&Mesh) -> bool) -> f64 {
    common::wait::poll()
        .every(Duration::from_millis(100))
        .within(bound)
        .until_or(what, || cond(mesh), || format!("counts {:?}", counts(mesh)))
        .as_secs_f64()
}

/// The edge (by member name) each consumer is on now, by its URL.
fn homes(mesh: &Mesh, clients: &[Client]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for c in clients {
        let url = c.current_url();
        let name = mesh
            .members
            .iter()
            .find(|m| m.url() == url)
            .map_or(url.clone(), |m| m.name.clone());
        *out.entry(name).or_insert(0) += 1;
    }
    out
}

fn moves(clients: &[Client]) -> Vec<u64> {
    clients.iter().map(|c| c.reconnects().0).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_given_one_edge_spread_over_all_edges_and_follow_a_kill_and_a_restart() {
    let mut mesh = Mesh::from_shipped("edges.toml");
    for m in ["hub", "edge-1", "edge-2", "edge-3"] {
        mesh.start(m);
    }
    mesh.wait_until("every edge sees the hub and all three edges", |m| {
        EDGES.iter().all(|e| {
            m.member(e)
                .status()
                .and_then(|s| s.cluster)
                .is_some_and(|c| c.groups.len() == 4)
        })
    });

    // The producer on the hub: persistent, receipted, numbered, all along.
    let history = History::new();
    let producer = Client::connect(&mesh.member("hub").url(), ClientOptions::default())
        .await
        .expect("producer connects");
    let producing = CancellationToken::new();
    let sender = {
        let (producer, history, producing) = (producer.clone(), history.clone(), producing.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !producing.is_cancelled() {
                n += 1;
                let id = format!("m-{n}");
                let msg = Outgoing::new(id.clone()).persistent(true);
                producer
                    .send_with_receipt(QUEUE, &msg)
                    .await
                    .unwrap_or_else(|e| panic!("send {id}: {e}"));
                history.sent(&id);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // 300 consumers that know only edge-1.
    let url = format!(
        "failover:({})?initialReconnectDelay=100&maxReconnectDelay=1000",
        mesh.member("edge-1").url()
    );
    let clients = connect_clients(&[(url, CONSUMERS as usize)]).await;
    let stop = CancellationToken::new();
    let mut consumers = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let sub = c
            .subscribe(
                QUEUE,
                SubscribeOptions {
                    ack: AckMode::ClientIndividual,
                    prefetch: 5,
                    ..SubscribeOptions::default()
                },
            )
            .await
            .expect("subscribe");
        consumers.push(consume(sub, &history, &format!("c{i}"), stop.clone()));
    }
    let told = clients[0].cluster_uris();
    assert!(
        !told.contains(&mesh.member("hub").url()) && told.len() == 3,
        "an edge's client hears of the three edges, not the hub: {told:?}"
    );

    // The rebalance: fair shares within the window (10 s) plus the join settle and slack.
    let took = within(
        &mesh,
        Duration::from_secs(40),
        "each edge holds its fair share ± the threshold and the round is over",
        |m| fair(m, &EDGES) && pending(m) == 0,
    );
    let spread = counts(&mesh);
    println!("spread after {took:.1}s: {spread:?}");
    assert_eq!(spread["hub"], 1, "only the producer on the hub");
    assert_eq!(homes(&mesh, &clients).get("hub"), None);
    let moved_in_spread: u64 = moves(&clients).iter().sum();

    // kill -9 of edge-2: its consumers land on edge-1 and edge-3 only.
    let killed = Instant::now();
    mesh.kill9("edge-2");
    let took = within(
        &mesh,
        Duration::from_secs(30),
        "every consumer is on edge-1 or edge-3",
        |m| {
            let c = counts(m);
            c["edge-1"] + c["edge-3"] == CONSUMERS
                && homes(m, &clients)
                    .keys()
                    .all(|h| h == "edge-1" || h == "edge-3")
        },
    );
    println!(
        "all on the survivors {took:.1}s after the kill ({:.1}s): {:?}",
        killed.elapsed().as_secs_f64(),
        counts(&mesh)
    );
    assert_eq!(
        counts(&mesh)["hub"],
        1,
        "no consumer failed over to the hub"
    );

    // edge-2 comes back and gets its share back, without a storm.
    let before: Vec<u64> = moves(&clients);
    mesh.start("edge-2");
    // 41-46 s seen on a 2-core machine under a load average of 9-10: the guard (60 s) is the
    // bound, with less than the 3 times headroom the other budgets have (a longer one would
    // weaken the test).
    let took = within(
        &mesh,
        common::GUARD,
        "edge-2 holds its fair share again and the round is over",
        |m| fair(m, &EDGES) && pending(m) == 0,
    );
    let after = moves(&clients);
    let moved: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let total: u64 = moved.iter().sum();
    println!(
        "rebalanced after the restart in {took:.1}s: {:?}; {total} moves (the spread took {moved_in_spread})",
        counts(&mesh)
    );
    let share = CONSUMERS / 3;
    assert!(
        total <= share + (share as f64 * THRESHOLD) as u64,
        "{total} moves to give edge-2 a share of {share}: a storm"
    );
    assert!(
        moved.iter().all(|m| *m <= 1),
        "a consumer moved {} times after the restart",
        moved.iter().max().unwrap_or(&0)
    );
    assert_eq!(counts(&mesh)["hub"], 1);

    producing.cancel();
    sender.await.expect("producer");
    history.wait_all_delivered().await;
    stop.cancel();
    for c in consumers {
        let _ = c.await;
    }
    let verdict = history.verdict();
    println!(
        "{} receipted, {} delivered, {} flagged redeliveries",
        verdict.sent, verdict.delivered, verdict.flagged_duplicates
    );
    verdict.assert_ok();
    assert!(clients.iter().all(|c| !c.is_closed()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_travels_two_hops_along_a_chain_and_leaves_with_its_path() {
    let listener = "update_cluster_clients = true\nupdate_cluster_clients_on_remove = true";
    let mut mesh = MeshBuilder::new()
        .group("hub", 1, listener)
        .group("edge-a", 1, listener)
        .group("edge-b", 1, listener)
        .connector("hub", "edge-a", "")
        .connector("edge-a", "edge-b", "")
        .build();
    mesh.start_all();
    mesh.wait_for_view(&["hub", "edge-a", "edge-b"]);
    let url = |name: &str| format!("failover:({})", mesh.member(name).url());
    let on_hub = Client::connect(&url("hub"), ClientOptions::default())
        .await
        .expect("connect to the hub");
    let on_a = Client::connect(&url("edge-a"), ClientOptions::default())
        .await
        .expect("connect to edge-a");
    let on_b = Client::connect(&url("edge-b"), ClientOptions::default())
        .await
        .expect("connect to edge-b");
    let all: Vec<String> = ["hub", "edge-a", "edge-b"]
        .iter()
        .map(|m| mesh.member(m).url())
        .collect();
    for (who, c) in [("hub", &on_hub), ("edge-a", &on_a), ("edge-b", &on_b)] {
        let mut told = c.cluster_uris();
        told.sort();
        let mut want = all.clone();
        want.sort();
        assert_eq!(told, want, "the clients of {who} hear of every group");
    }
    let hub = mesh
        .member("hub")
        .status()
        .and_then(|s| s.cluster)
        .expect("hub status");
    assert!(
        hub.groups.iter().any(|g| g.name == "edge-b"),
        "the hub knows edge-b two hops away: {:?}",
        hub.groups
    );

    // The middle dies: edge-b's only path to the hub is gone, and the hub's clients are told.
    mesh.kill9("edge-a");
    let edge_b = mesh.member("edge-b").url();
    common::wait::poll()
        .every(Duration::from_millis(50))
        .until_async("the hub's clients no longer hear of edge-b", || {
            !on_hub.cluster_uris().contains(&edge_b)
        })
        .await;
    mesh.wait_until("edge-b leaves the hub's view with its path", |m| {
        m.member("hub")
            .status()
            .and_then(|s| s.cluster)
            .is_some_and(|c| c.groups.iter().all(|g| g.name != "edge-b"))
    });
    mesh.wait_until("the hub leaves edge-b's view", |m| {
        m.member("edge-b")
            .status()
            .and_then(|s| s.cluster)
            .is_some_and(|c| c.groups.len() == 1)
    });
}
