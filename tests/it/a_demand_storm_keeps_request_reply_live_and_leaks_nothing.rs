//! Property: a demand storm leaves nothing behind and stops nobody (S12). On the mesh's real
//! shape — a hub where producers and requesters connect, two consumer edges, duplex connectors
//! with the shipped `edge.toml`'s TTL and every other setting at its default — 4,000 consumers
//! of 1,000 queues (4 each, over 40 connections) come up on edge-1 at once while a requester on
//! the hub keeps asking a responder on edge-1 over the same bridge. Every queue's demand reaches
//! the hub and is relayed to edge-2; then all 4,000 go at once (half their connections close,
//! half unsubscribe). Throughout, every request is answered (the time is printed, never
//! asserted); afterwards every connector of every member holds exactly the remote demand it
//! held before the storm (the request/reply pair's), no storm queue keeps a consumer, and the hub's and edge-1's open files are back within 10 of what they
//! were before the storm and their RSS within 10 % (at least 16 MiB) of it.

use crate::common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{wait, Broker, Mesh, MeshConfig, GUARD};
use meshmq::client::{Client, Outgoing, SubscribeOptions};
use tokio_util::sync::CancellationToken;

const QUEUES: usize = 1000;
const PER_QUEUE: usize = 4;
/// Connections per consumer round: round `r`'s connection `j` consumes queues
/// `j * QUEUES / CONNECTIONS ..`, so each queue has one consumer per round.
const CONNECTIONS: usize = 10;
const SERVICE: &str = "queue://svc.echo";
/// Where the requester on the hub takes its replies. (Not a temporary queue: a responder on
/// another group than the requester's is refused `NotFound` when it replies to one.)
const REPLIES: &str = "queue://svc.replies";
/// Open files a broker may hold beyond its pre-storm count once the storm is over.
const FD_SLACK: u64 = 10;

/// (open files, RSS bytes) of a broker's process.
fn resources(broker: &Broker) -> (u64, u64) {
    let p = broker.status().process;
    (p.open_fds, p.rss_bytes)
}

/// Every member's connectors' remote demand: (member, connector, demand).
fn demand_now(mesh: &Mesh) -> Vec<(String, String, u64)> {
    mesh.members()
        .flat_map(|m| {
            m.status()
                .connectors
                .into_iter()
                .map(|c| (m.member().to_string(), c.name, c.remote_demand))
        })
        .collect()
}

fn rss_bound(before: u64) -> u64 {
    before + (before / 10).max(16 << 20)
}

/// Answers every request on [`SERVICE`] with "re: BODY" to its reply-to.
async fn respond(client: Client, stop: CancellationToken) {
    let mut sub = client
        .subscribe(SERVICE, SubscribeOptions::default())
        .await
        .expect("subscribe the responder");
    loop {
        let req = tokio::select! {
            r = sub.next() => r,
            _ = stop.cancelled() => return,
        };
        let Some(req) = req else { return };
        let reply = Outgoing::new(format!("re: {}", String::from_utf8_lossy(&req.body)))
            .correlation_id(req.correlation_id.clone());
        client
            .send_with_receipt(&req.reply_to, &reply)
            .await
            .expect("the responder replies");
    }
}

/// What the requester saw: answered round trips and each one's time.
#[derive(Default)]
struct RoundTrips {
    answered: AtomicU64,
    times: Mutex<Vec<Duration>>,
}

/// Asks [`SERVICE`] one request at a time until stopped, each with [`REPLIES`] as its reply-to;
/// a request that goes unanswered within the guard, or is answered wrongly, fails the test.
async fn request(client: Client, seen: Arc<RoundTrips>, stop: CancellationToken) {
    let mut replies = client
        .subscribe(REPLIES, SubscribeOptions::default())
        .await
        .expect("subscribe the requester's replies");
    let mut n = 0u64;
    while !stop.is_cancelled() {
        let start = Instant::now();
        let id = format!("q{n}");
        client
            .send(
                SERVICE,
                &Outgoing::new(id.clone())
                    .reply_to(REPLIES)
                    .correlation_id(id.clone()),
            )
            .await
            .unwrap_or_else(|e| panic!("request {id} was not sent: {e}"));
        let reply = tokio::time::timeout(GUARD, replies.next())
            .await
            .unwrap_or_else(|_| panic!("request {id} was not answered within {GUARD:?}"))
            .expect("the replies subscription ended");
        assert_eq!(reply.correlation_id, id);
        assert_eq!(&reply.body[..], format!("re: {id}").as_bytes());
        seen.times.lock().unwrap().push(start.elapsed());
        seen.answered.fetch_add(1, Ordering::AcqRel);
        n += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the requester has had `more` answers beyond `from`.
async fn answered_since(seen: &RoundTrips, from: u64, more: u64, what: &str) {
    wait::poll()
        .within(GUARD)
        .until_async(what, || {
            seen.answered.load(Ordering::Acquire) >= from + more
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_thousand_consumers_come_and_go_while_requests_are_answered() {
    let edge = ["duplex = true", "network_ttl = 2"];
    let mesh = Mesh::start(
        &MeshConfig::new()
            .group("hub")
            .group("edge-1")
            .group("edge-2")
            .connector("hub", "edge-1", &edge)
            .connector("hub", "edge-2", &edge),
    );
    let (hub, edge1, edge2) = (
        mesh.member("hub"),
        mesh.member("edge-1"),
        mesh.member("edge-2"),
    );

    // Request/reply from the hub to edge-1, running before, during and after the storm.
    let stop = CancellationToken::new();
    let responder = tokio::spawn(respond(edge1.client().await, stop.clone()));
    tokio::task::block_in_place(|| {
        wait::poll()
            .within(GUARD)
            .until("the hub hears the responder", || {
                hub.connector("hub-edge-1").remote_demand == 1
            })
    });
    let seen = Arc::new(RoundTrips::default());
    let requester = tokio::spawn(request(hub.client().await, seen.clone(), stop.clone()));
    answered_since(&seen, 0, 20, "20 requests are answered before the storm").await;
    let before = [resources(hub), resources(edge1)];
    let demand_before = demand_now(&mesh);
    println!(
        "before the storm (open files, RSS): hub {:?}, edge-1 {:?}",
        before[0], before[1]
    );

    // The storm: every consumer connection subscribes its share at once.
    let mut connections = Vec::new();
    for _ in 0..PER_QUEUE * CONNECTIONS {
        connections.push(edge1.client().await);
    }
    let storm = Instant::now();
    let answered_before = seen.answered.load(Ordering::Acquire);
    let share = QUEUES / CONNECTIONS;
    let subscribing: Vec<_> = connections
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let c = c.clone();
            let first = (i % CONNECTIONS) * share;
            tokio::spawn(async move {
                let mut subs = Vec::new();
                for q in first..first + share {
                    subs.push(
                        c.subscribe(&format!("queue://storm.{q}"), SubscribeOptions::default())
                            .await
                            .expect("subscribe a storm consumer"),
                    );
                }
                subs
            })
        })
        .collect();
    let mut subscriptions = Vec::new();
    for s in subscribing {
        subscriptions.push(s.await.expect("subscriber"));
    }
    // One route per consumer, the responder's included.
    let demand = (QUEUES * PER_QUEUE + 1) as u64;
    tokio::task::block_in_place(|| {
        wait::poll().within(GUARD).until_or(
            "every queue's demand reaches the hub and edge-2",
            || {
                hub.connector("hub-edge-1").remote_demand == demand
                    && edge2.connector("hub-edge-2").remote_demand >= QUEUES as u64
            },
            || {
                format!(
                    "hub from edge-1: {:?}; edge-2 from the hub: {:?}",
                    hub.connector("hub-edge-1"),
                    edge2.connector("hub-edge-2")
                )
            },
        )
    });
    let up = storm.elapsed();
    let on_hub = hub.connector("hub-edge-1").remote_demand;
    answered_since(
        &seen,
        answered_before,
        1,
        "a request is answered after the storm came up",
    )
    .await;

    // All 4,000 go at once: half the connections close, the other half unsubscribe.
    let leaving = Instant::now();
    let answered_before = seen.answered.load(Ordering::Acquire);
    let mut going = Vec::new();
    for (i, (c, subs)) in connections.into_iter().zip(subscriptions).enumerate() {
        going.push(tokio::spawn(async move {
            if i % 2 == 0 {
                c.close().await.expect("close a storm connection");
            } else {
                for s in subs {
                    s.unsubscribe(false).await.expect("unsubscribe");
                }
                c.close().await.expect("close a storm connection");
            }
        }));
    }
    for g in going {
        g.await.expect("leaving");
    }
    tokio::task::block_in_place(|| {
        wait::poll().within(GUARD).until_or(
            "every connector's remote demand is back to what it was before the storm",
            || demand_now(&mesh) == demand_before,
            || format!("before: {demand_before:?}\nnow: {:?}", demand_now(&mesh)),
        )
    });
    let gone = leaving.elapsed();
    answered_since(
        &seen,
        answered_before,
        1,
        "a request is answered after the storm went",
    )
    .await;
    for m in mesh.members() {
        let left: Vec<_> = m
            .status()
            .destinations
            .into_iter()
            .filter(|d| d.destination.starts_with("queue://storm.") && d.consumers > 0)
            .collect();
        assert!(left.is_empty(), "{} keeps consumers: {left:?}", m.member());
    }

    // Open files and RSS settle back (jemalloc returns freed pages within seconds).
    let after = tokio::task::block_in_place(|| {
        wait::poll().within(Duration::from_secs(30)).settle(
            || [resources(hub), resources(edge1)],
            |now| {
                now.iter()
                    .zip(&before)
                    .all(|(n, b)| n.0 <= b.0 + FD_SLACK && n.1 <= rss_bound(b.1))
            },
        )
    });
    stop.cancel();
    requester.await.expect("the requester never failed");
    responder.await.expect("the responder never failed");
    let mut times = seen.times.lock().unwrap().clone();
    times.sort();
    println!(
        "demand for {on_hub} consumers on the hub {:.1}s after the storm began, gone {:.1}s \
         after they left; {} requests answered, p50 {:?}, p99 {:?}, max {:?}; after \
         (open files, RSS): hub {:?}, edge-1 {:?}",
        up.as_secs_f64(),
        gone.as_secs_f64(),
        times.len(),
        times[times.len() / 2],
        times[times.len() * 99 / 100],
        times[times.len() - 1],
        after[0],
        after[1]
    );
    for ((name, b), a) in ["hub", "edge-1"].iter().zip(&before).zip(&after) {
        assert!(
            a.0 <= b.0 + FD_SLACK,
            "{name} holds {} open files after the storm, {} before",
            a.0,
            b.0
        );
        assert!(
            a.1 <= rss_bound(b.1),
            "{name}'s RSS is {} MiB after the storm, {} MiB before",
            a.1 >> 20,
            b.1 >> 20
        );
    }
}
