//! Rebalancing is load-aware and bounded: 2,000 failover clients on two edges with
//! `rebalance_cluster_clients`; a third edge joins; the edges, sharing their client counts over
//! their bridges, move only their surplus to it, so every edge ends with 28–39 % of the clients
//! while the clients moved at most 800 times in total (no storm: nobody moves who need not);
//! and further rebalancing rounds on the balanced mesh move fewer than 5 % of the clients.

use crate::common;

use common::mesh::{connect_clients, Mesh, MeshBuilder};
use meshmq::client::Client;

const CLIENTS: usize = 2000;

fn counts(mesh: &Mesh) -> Vec<u64> {
    ["edge-1", "edge-2", "edge-3"]
        .iter()
        .map(|e| mesh.member(e).clients())
        .collect()
}

/// Moves asked so far, each edge's rounds, and moves still scheduled.
fn moves_and_rounds(mesh: &Mesh) -> (u64, Vec<u64>, u64) {
    let mut moves = 0;
    let mut pending = 0;
    let mut rounds = Vec::new();
    for e in ["edge-1", "edge-2", "edge-3"] {
        let c = mesh
            .member(e)
            .status()
            .and_then(|s| s.cluster)
            .unwrap_or_default();
        moves += c.rebalance_moves;
        pending += c.rebalance_pending;
        rounds.push(c.rebalance_rounds);
    }
    (moves, rounds, pending)
}

fn total_moves(clients: &[Client]) -> u64 {
    clients.iter().map(|c| c.reconnects().0).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_edge_gets_a_fair_share_without_a_storm() {
    let listener =
        "max_connections = 5000\nupdate_cluster_clients = true\nrebalance_cluster_clients = true";
    let mut mesh = MeshBuilder::new()
        .group("edge-1", 1, listener)
        .group("edge-2", 1, listener)
        .group("edge-3", 1, listener)
        .connector("edge-1", "edge-2", "")
        .connector("edge-3", "edge-1", "")
        .connector("edge-3", "edge-2", "")
        .build();
    mesh.start("edge-1");
    mesh.start("edge-2");
    mesh.wait_for_view(&["edge-1", "edge-2"]);

    let url = mesh.failover_url(
        &["edge-1", "edge-2"],
        "initialReconnectDelay=50&maxReconnectDelay=1000",
    );
    let clients = connect_clients(&[(url, CLIENTS)]).await;
    mesh.wait_until("both edges count all 2,000 clients", |m| {
        counts(m).iter().sum::<u64>() == CLIENTS as u64
    });
    let before = counts(&mesh);
    println!("before the join: {before:?}");

    mesh.start("edge-3");
    let share = |n: u64| n as f64 / CLIENTS as f64;
    mesh.wait_until(
        "every edge holds 28-39 % of the clients and the round is over",
        |m| {
            let c = counts(m);
            c.iter().sum::<u64>() == CLIENTS as u64
                && c.iter().all(|n| (0.28..=0.39).contains(&share(*n)))
                && moves_and_rounds(m).2 == 0
        },
    );
    let balanced = counts(&mesh);
    let moved = total_moves(&clients);
    println!("after the join: {balanced:?}, {moved} moves");
    assert!(moved <= 800, "{moved} reconnects: a storm");

    // Further rounds on a balanced mesh move (almost) nobody.
    let (moves_before, rounds_before, _) = moves_and_rounds(&mesh);
    mesh.wait_until("every edge ran three more rebalancing rounds", |m| {
        let (_, rounds, _) = moves_and_rounds(m);
        rounds
            .iter()
            .zip(&rounds_before)
            .all(|(now, then)| *now >= then + 3)
    });
    let (moves_after, _, _) = moves_and_rounds(&mesh);
    let again = total_moves(&clients) - moved;
    println!(
        "second rebalance: {} asked, {again} moved",
        moves_after - moves_before
    );
    assert!(
        (again as f64) < 0.05 * CLIENTS as f64,
        "{again} more moves on a balanced mesh"
    );
    assert!(clients.iter().all(|c| !c.is_closed()));
}
