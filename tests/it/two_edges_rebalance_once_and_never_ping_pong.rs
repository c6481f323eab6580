//! Two edges rebalance once and then stay put (S18, nats jsm.go #748): 1,000 failover clients
//! with `rebalance_cluster_clients` all start on edge-a while edge-b is down; edge-b joins, and
//! edge-a moves only its surplus, so each edge ends with 40–60 % of the clients; further
//! rebalancing rounds on the now balanced pair — each edge runs three more, nothing changed —
//! move fewer than 5 % of the clients (no ping-pong between the two). Queue consumers and a
//! producer among the clients move too, and the receipted messages sent throughout are all
//! delivered, none invented, and none arrives unflagged after its first copy.

use crate::common;

use common::history::QueueTraffic;
use common::mesh::{connect_clients, Mesh, MeshBuilder};
use meshmq::client::Client;

const EDGES: [&str; 2] = ["edge-a", "edge-b"];
const CLIENTS: usize = 1000;
const CONSUMERS: usize = 10;
const QUEUE: &str = "queue://rebalanced.orders";

fn counts(mesh: &Mesh) -> Vec<u64> {
    EDGES.iter().map(|e| mesh.member(e).clients()).collect()
}

/// Each edge's rebalancing rounds so far, and the moves still scheduled.
fn rounds_and_pending(mesh: &Mesh) -> (Vec<u64>, u64) {
    let mut rounds = Vec::new();
    let mut pending = 0;
    for e in EDGES {
        let c = mesh
            .member(e)
            .status()
            .and_then(|s| s.cluster)
            .unwrap_or_default();
        rounds.push(c.rebalance_rounds);
        pending += c.rebalance_pending;
    }
    (rounds, pending)
}

fn reconnects<'a>(clients: impl IntoIterator<Item = &'a Client>) -> u64 {
    clients.into_iter().map(|c| c.reconnects().0).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_rebalance_once_and_stay_put_losing_nothing() {
    let listener =
        "max_connections = 5000\nupdate_cluster_clients = true\nrebalance_cluster_clients = true";
    let mut mesh = MeshBuilder::new()
        .group("edge-a", 1, listener)
        .group("edge-b", 1, listener)
        .connector("edge-a", "edge-b", "")
        .build();
    tokio::task::block_in_place(|| {
        mesh.start("edge-a");
        mesh.wait_until("edge-a serves", |m| m.member("edge-a").ready());
    });

    // Everyone starts on edge-a (edge-b is down, and listed second).
    let url = mesh.failover_url(
        &EDGES,
        "randomize=false&initialReconnectDelay=50&maxReconnectDelay=1000",
    );
    let clients = connect_clients(&[(url.clone(), CLIENTS)]).await;
    let mut traffic = QueueTraffic::new(QUEUE);
    traffic.consumers(&url, CONSUMERS).await;
    traffic.produce(&url, 5000).await;
    let total = (CLIENTS + CONSUMERS + 1) as u64;
    tokio::task::block_in_place(|| {
        mesh.wait_until("edge-a holds every client", |m| counts(m) == [total, 0])
    });
    tokio::task::block_in_place(|| {
        mesh.wait_until("the consumers have had messages", |_| {
            traffic.flowing(CONSUMERS)
        })
    });

    // edge-b joins: the first rebalance.
    tokio::task::block_in_place(|| {
        mesh.start("edge-b");
        mesh.wait_for_view(&EDGES);
        mesh.wait_until(
            "each edge holds 40-60 % of the clients and the round is over",
            |m| {
                let c = counts(m);
                c.iter().sum::<u64>() == total
                    && c.iter()
                        .all(|n| (0.40..=0.60).contains(&(*n as f64 / total as f64)))
                    && rounds_and_pending(m).1 == 0
            },
        )
    });
    let spread = counts(&mesh);
    let labelled = traffic.labelled();
    let first = reconnects(&clients) + reconnects(labelled.iter().map(|(_, c)| *c));
    let traffic_moved = reconnects(labelled.iter().map(|(_, c)| *c));
    let sent_by_then = traffic.history.verdict().sent;
    println!("after edge-b joined: {spread:?}, {first} moves ({traffic_moved} of them consumers or the producer)");

    // Nothing changes; each edge runs three more rounds.
    let (rounds_before, _) = rounds_and_pending(&mesh);
    tokio::task::block_in_place(|| {
        mesh.wait_until("each edge ran three more rebalancing rounds", |m| {
            let (rounds, pending) = rounds_and_pending(m);
            pending == 0
                && rounds
                    .iter()
                    .zip(&rounds_before)
                    .all(|(now, then)| *now >= then + 3)
        })
    });
    let labelled = traffic.labelled();
    let again = reconnects(&clients) + reconnects(labelled.iter().map(|(_, c)| *c)) - first;
    let settled = counts(&mesh);
    println!("after three more rounds each: {settled:?}, {again} more moves");

    let verdict = traffic.stop("two-edge rebalance").await;
    let judged = traffic.history.judge();
    let unflagged = judged.unflagged_after_the_first();
    println!("{verdict:?}");
    assert!(
        judged.lost.is_empty() && judged.invented.is_empty() && unflagged.is_empty(),
        "lost {:?}, invented {:?}, unflagged after the first copy {:?}",
        judged.lost,
        judged.invented,
        unflagged
    );
    assert!(
        (again as f64) < 0.05 * total as f64,
        "{again} more moves on a balanced pair: ping-pong"
    );
    assert!(
        verdict.sent > sent_by_then,
        "the producer stopped before the first rebalance was over"
    );
    assert!(
        traffic_moved > 0,
        "no consumer or producer moved: the messages never crossed a move"
    );
    assert!(clients.iter().all(|c| !c.is_closed()), "a client gave up");
    for (label, c) in traffic.labelled() {
        assert!(!c.is_closed(), "{label} gave up");
    }
}
