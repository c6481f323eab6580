//! A mass failover with messages in flight (S15): on the mesh's shape (a hub, two edges, duplex
//! connectors), 300 consumers and 20 producers sending persistent messages with receipts all sit
//! on edge-1 through failover URLs (edge-1, then edge-2); edge-1 is killed with `kill -9`
//! mid-stream. Every one of its clients is connected again — resumed on edge-2 — within 15 s
//! of the kill; the producers go on there; the consumers (slower than the producers) leave a
//! backlog in edge-1's store, which — once edge-1 restarts — reaches them on edge-2 within 30 s. Every receipted message is delivered, none invented, and a
//! message delivered twice carries the redelivered flag on every copy after the first.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::history::{Judgement, Ledger};
use common::mesh::{Mesh, MeshBuilder};
use meshmq::client::{
    AckMode, Client, ClientEvent, ClientOptions, Delivery, Outgoing, SubscribeOptions,
};
use parking_lot::Mutex;
use tokio::task::JoinHandle;

const DEST: &str = "queue://s15.orders";
const CONSUMERS: usize = 300;
const PRODUCERS: usize = 20;
/// The scenario's bound on every displaced client's reconnection.
const RECONNECT_BOUND: Duration = Duration::from_secs(15);
/// The scenario's bound on delivering what the killed edge had stored, once it is back.
const STRANDED_BOUND: Duration = Duration::from_secs(30);

type Seen = Arc<Mutex<Ledger<String>>>;

fn id_of(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.body).into_owned()
}

/// Resolves with the instant of the client's first `Resumed` after this call.
fn first_resume(client: &Client) -> JoinHandle<Instant> {
    let mut events = client.events();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(ClientEvent::Resumed { .. }) => return Instant::now(),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("the client's events ended: {e}"),
            }
        }
    })
}

async fn consumer(url: String, seen: Seen, stop: Arc<AtomicBool>) -> (Client, JoinHandle<()>) {
    let client = Client::connect(&url, ClientOptions::default())
        .await
        .expect("a consumer connects");
    let mut sub = client
        .subscribe(
            DEST,
            SubscribeOptions {
                ack: AckMode::ClientIndividual,
                // One at a time, so what the consumers cannot take yet waits in edge-1's store.
                prefetch: 1,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe");
    let task = tokio::spawn(async move {
        while !stop.load(Ordering::Acquire) {
            let Some(d) = sub.next_timeout(Duration::from_millis(200)).await else {
                continue;
            };
            seen.lock().delivered(id_of(&d), d.redelivered());
            // Slower than the producers (300 x 2/s against 20 x 50/s): a backlog builds.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = sub.ack(&d).await;
        }
    });
    (client, task)
}

/// Persistent sends with a receipt each, every 20 ms, until `stop`: a receipt makes the
/// message accepted; a send the client gave up on is in doubt.
fn producer(client: Client, p: usize, seen: Seen, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::Acquire) {
            let id = format!("p{p}-{n}");
            let msg = Outgoing::new(id.clone()).persistent(true);
            match tokio::time::timeout(common::GUARD, client.send_with_receipt(DEST, &msg)).await {
                Ok(Ok(())) => seen.lock().accepted(id),
                _ => seen.lock().in_doubt(id),
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// DEST's depth on `member` (0 when it is down or has none).
fn depth(mesh: &Mesh, member: &str) -> u64 {
    mesh.member(member)
        .status()
        .and_then(|s| s.destinations.into_iter().find(|d| d.destination == DEST))
        .map_or(0, |d| d.depth)
}

fn clients_on(mesh: &Mesh, member: &str) -> u64 {
    mesh.master(member).map_or(0, |m| m.clients())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_killed_under_load_loses_no_receipt_and_its_clients_fail_over_in_time() {
    let mut mesh = MeshBuilder::new()
        .group("hub", 1, "")
        .group("edge-1", 1, "")
        .group("edge-2", 1, "")
        .connector("hub", "edge-1", "network_ttl = 3")
        .connector("hub", "edge-2", "network_ttl = 3")
        .build();
    tokio::task::block_in_place(|| {
        mesh.start_all();
        mesh.wait_connected();
    });
    // Every client starts on edge-1 and knows edge-2.
    let url = mesh.failover_url(&["edge-1", "edge-2"], "randomize=false");

    let seen: Seen = Arc::default();
    let (stop_producing, stop_consuming) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut connecting = Vec::new();
    for _ in 0..CONSUMERS {
        connecting.push(tokio::spawn(consumer(
            url.clone(),
            seen.clone(),
            stop_consuming.clone(),
        )));
    }
    let mut clients = Vec::new();
    let mut consuming = Vec::new();
    for c in connecting {
        let (client, task) = c.await.expect("consumer task");
        clients.push(client);
        consuming.push(task);
    }
    let mut producing = Vec::new();
    for p in 0..PRODUCERS {
        let client = Client::connect(&url, ClientOptions::default())
            .await
            .expect("a producer connects");
        producing.push(producer(
            client.clone(),
            p,
            seen.clone(),
            stop_producing.clone(),
        ));
        clients.push(client);
    }
    let total = (CONSUMERS + PRODUCERS) as u64;
    tokio::task::block_in_place(|| {
        mesh.wait_until("every client is on edge-1", |m| {
            clients_on(m, "edge-1") == total
        });
        mesh.wait_until("messages flow", |_| seen.lock().deliveries.len() >= 500);
    });

    // Kill edge-1 mid-stream.
    let resumes: Vec<JoinHandle<Instant>> = clients.iter().map(first_resume).collect();
    let killed = Instant::now();
    tokio::task::block_in_place(|| mesh.kill9("edge-1"));
    let mut slowest = Duration::ZERO;
    for r in resumes {
        let at = tokio::time::timeout(common::GUARD, r)
            .await
            .expect("every displaced client resumes")
            .expect("resume watcher");
        slowest = slowest.max(at - killed);
    }
    println!("all {total} clients of the killed edge resumed within {slowest:?}");
    assert!(
        slowest <= RECONNECT_BOUND,
        "a client of the killed edge took {slowest:?} to reconnect, over {RECONNECT_BOUND:?}"
    );
    tokio::task::block_in_place(|| {
        mesh.wait_until("every client is on edge-2", |m| {
            clients_on(m, "edge-2") == total
        })
    });
    assert!(clients.iter().all(|c| !c.is_closed()), "a client gave up");

    // The producers go on through edge-2 for a while, then stop.
    let resumed_at = seen.lock().accepted.len();
    tokio::task::block_in_place(|| {
        mesh.wait_until("receipts continue on edge-2", |_| {
            seen.lock().accepted.len() >= resumed_at + 500
        })
    });
    stop_producing.store(true, Ordering::Release);
    for p in producing {
        p.await.expect("producer");
    }

    // Everything the hub and edge-2 hold is consumed; what is still missing sits in the killed
    // edge-1's store.
    tokio::task::block_in_place(|| {
        mesh.wait_until("the hub and edge-2 hold nothing more", |m| {
            ["hub", "edge-2"].iter().all(|g| depth(m, g) == 0)
        })
    });
    let stranded = seen.lock().judge().lost.len();
    assert!(
        stranded > 0,
        "edge-1 held no receipted message when it was killed"
    );

    // edge-1 comes back; what it stored reaches the consumers on edge-2.
    let restarted = Instant::now();
    tokio::task::block_in_place(|| {
        mesh.start("edge-1");
        mesh.wait_until("every receipted message is delivered", |_| {
            seen.lock().judge().lost.is_empty()
        });
    });
    let drained = restarted.elapsed();
    // A copy coming late would show here.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_consuming.store(true, Ordering::Release);
    for c in consuming {
        c.await.expect("consumer");
    }

    let s = seen.lock();
    let judgement = s.judge();
    let unflagged = judgement.unflagged_after_the_first();
    let Judgement {
        lost,
        invented,
        flagged_duplicates,
        ..
    } = judgement;
    println!(
        "{} receipted, {} in doubt, {} delivered, {flagged_duplicates} flagged duplicates; \
         {stranded} receipted messages held by the killed edge-1, delivered {drained:?} after its \
         restart",
        s.accepted.len(),
        s.in_doubt.len(),
        s.deliveries.values().map(Vec::len).sum::<usize>(),
    );
    assert!(
        lost.is_empty() && invented.is_empty() && unflagged.is_empty(),
        "lost {lost:?}, invented {invented:?}, unflagged duplicates or overtaken {unflagged:?}"
    );
    assert!(
        drained <= STRANDED_BOUND,
        "edge-1's stored messages took {drained:?} after its restart, over {STRANDED_BOUND:?}"
    );
}
