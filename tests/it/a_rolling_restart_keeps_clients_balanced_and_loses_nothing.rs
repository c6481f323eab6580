//! A rolling restart keeps the clients balanced and loses nothing (S17, scaled down): three
//! edges with `rebalance_cluster_clients` in a triangle of connectors hold 600 failover
//! clients; each edge in turn is stopped gracefully (SIGTERM) and started again, the next one
//! only once the mesh has rebalanced. Within a time budget after the last restart every edge
//! holds 25–42 % of the clients (nats-server #1556 ended at 62/38/0 %), every client is
//! connected, and a failover producer and consumer that ran through all three restarts saw
//! every receipted message delivered, none invented, extra copies only flagged as redelivered
//! (none unflagged after a flagged one: see `a_rolling_restart_delivers_nothing_unflagged_…`).

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::history::{self, Judgement, Ledger};
use common::mesh::{connect_clients, Mesh, MeshBuilder};
use meshmq::client::{Client, ClientOptions, Delivery, Outgoing, SubscribeOptions};
use parking_lot::Mutex;

const EDGES: [&str; 3] = ["edge-1", "edge-2", "edge-3"];
const CLIENTS: usize = 600;
const DEST: &str = "queue://rolling.orders";
/// From the last restart until every edge holds its share: the restarted edge joins, the
/// others' next rebalancing rounds move their surplus with jittered delays. Headroom included
/// for a loaded 2-core machine.
const BUDGET: Duration = Duration::from_secs(40);

fn counts(mesh: &Mesh) -> Vec<u64> {
    EDGES
        .iter()
        .map(|e| mesh.master(e).map_or(0, |m| m.clients()))
        .collect()
}

/// The number a delivery's body carries (`u64::MAX`, never sent, for one that carries none).
fn number(d: &Delivery) -> u64 {
    std::str::from_utf8(&d.body)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX)
}

fn balanced(c: &[u64], total: u64) -> bool {
    c.iter().sum::<u64>() == total
        && c.iter()
            .all(|n| (0.25..=0.42).contains(&(*n as f64 / total as f64)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_keeps_clients_balanced_and_loses_nothing() {
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
    tokio::task::block_in_place(|| {
        mesh.start_all();
        mesh.wait_for_view(&EDGES);
    });
    let options = "initialReconnectDelay=50&maxReconnectDelay=1000";
    let url = mesh.failover_url(&EDGES, options);
    let clients = connect_clients(&[(url.clone(), CLIENTS)]).await;
    // The producer and consumer count too: every edge's share is of all connections.
    let total = CLIENTS as u64 + 2;

    let seen = Arc::new(Mutex::new(Ledger::<u64>::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let (consumer, mut sub) = history::individual_subscriber(&url, DEST, "consumer").await;
    let consuming = {
        let (seen, stop) = (seen.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                let Some(d) = sub.next_timeout(Duration::from_millis(200)).await else {
                    continue;
                };
                seen.lock().delivered(number(&d), d.redelivered());
                let _ = sub.ack(&d).await;
            }
        })
    };
    let producer = Client::connect(&url, ClientOptions::default())
        .await
        .expect("producer");
    let producing = {
        let (seen, stop, producer) = (seen.clone(), stop.clone(), producer.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                let msg = Outgoing::new(n.to_string()).persistent(true);
                match tokio::time::timeout(
                    Duration::from_secs(20),
                    producer.send_with_receipt(DEST, &msg),
                )
                .await
                {
                    Ok(Ok(())) => seen.lock().accepted(n),
                    // Unanswered: the failover client may send it again after a reconnect.
                    _ => seen.lock().in_doubt(n),
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::task::block_in_place(|| {
        mesh.wait_until("the clients are spread before the restarts", |m| {
            balanced(&counts(m), total)
        })
    });
    let before = counts(&mesh);

    let mut last_restart = Instant::now();
    for edge in EDGES {
        tokio::task::block_in_place(|| {
            mesh.stop(edge);
            mesh.wait_until(&format!("every client left {edge} for the others"), |m| {
                counts(m).iter().sum::<u64>() == total
            });
            mesh.start(edge);
            mesh.wait_until(&format!("{edge} serves again"), |m| m.member(edge).ready());
        });
        last_restart = Instant::now();
        tokio::task::block_in_place(|| {
            mesh.wait_until(&format!("rebalanced after restarting {edge}"), |m| {
                balanced(&counts(m), total)
            })
        });
    }
    let took = last_restart.elapsed();
    let after = counts(&mesh);
    stop.store(true, Ordering::Release);
    producing.await.expect("producer");
    consuming.await.expect("consumer");
    assert!(
        took <= BUDGET,
        "the last rebalance took {took:?}, past the budget of {BUDGET:?}: {after:?}"
    );
    assert!(clients.iter().all(|c| !c.is_closed()), "a client gave up");

    // Drain what is left, then check the history. The consumer's unread deliveries go back
    // (flagged) when it closes. A message waits where it is until a consumer takes it, and
    // the connectors here are one-way (edge-2 forwards to nobody), so each edge is drained
    // directly: one drain through the failover URL reaches only what can flow to its edge.
    consumer.close().await.expect("close the consumer");
    for edge in EDGES {
        let url = mesh.master(edge).expect("a master").url();
        let drain = Client::connect(&url, ClientOptions::default())
            .await
            .expect("drain");
        let mut sub = drain
            .subscribe(DEST, SubscribeOptions::default())
            .await
            .expect("subscribe to drain");
        while let Some(d) = sub.next_timeout(Duration::from_secs(3)).await {
            seen.lock().delivered(number(&d), d.redelivered());
            let _ = sub.ack(&d).await;
        }
        drain.close().await.expect("close the drain");
    }
    let s = seen.lock();
    let judgement = s.judge();
    // A second unflagged copy, or an unflagged copy after a flagged one (overtaken): either
    // is a duplicate to a consumer that trusts the flag.
    let unflagged = judgement.unflagged_after_the_first();
    let Judgement { lost, invented, .. } = judgement;
    eprintln!(
        "clients per edge before {before:?}, after the rolling restart {after:?} ({took:?} after \
         the last restart, budget {BUDGET:?}); {} receipted, {} in doubt, {} delivered; lost \
         {}, invented {}, unflagged duplicates or overtaken {}",
        s.accepted.len(),
        s.in_doubt.len(),
        s.deliveries.values().map(Vec::len).sum::<usize>(),
        lost.len(),
        invented.len(),
        unflagged.len()
    );
    assert!(
        lost.is_empty() && invented.is_empty() && unflagged.is_empty(),
        "lost {lost:?}, invented {invented:?}, unflagged duplicates or overtaken {unflagged:?}"
    );
    assert!(!s.accepted.is_empty(), "nothing was receipted");
}
