//! A scaled-down twenty-broker churn (S30): ten single-member groups in a full mesh of duplex
//! connectors (`network_ttl = 1`), producers on every broker and two consumers of one queue.
//! Four brokers are `kill -9`ed under load, then restarted. Every survivor's connectors show
//! exactly the live peers within a time budget after the kill and again after the restarts
//! (no peer-table entry for a dead broker, none missing), every message sent with a receipt —
//! on any broker, before, during and after the churn — is delivered exactly once, and the
//! survivors end with as many open files and threads as before the churn (within a small
//! slack: reconnected bridges replace the old ones, they do not pile up) and a bounded RSS.

use crate::common;

use std::time::{Duration, Instant};

use common::history::{consume, send_numbered, History};
use common::{wait_until, Mesh, MeshConfig};
use meshmq::client::{AckMode, SubscribeOptions};
use tokio_util::sync::CancellationToken;

const BROKERS: usize = 10;
const KILLED: [usize; 4] = [2, 4, 6, 8];
/// The consumers' brokers (never killed).
const CONSUMERS: [usize; 2] = [1, 9];
const DEST: &str = "queue://churn.orders";
const PER_BROKER: usize = 40;
/// From the kill (or the restarts) until every survivor's connectors show the live peers:
/// three 500 ms heartbeats to notice a dead bridge, redial backoff capped at 1 s. The rest is
/// headroom for ten brokers on a loaded 2-core machine (ActiveMQ's own test allows 120 s).
const BUDGET: Duration = Duration::from_secs(30);

fn name(i: usize) -> String {
    format!("b{i}")
}

/// The peers broker `i`'s connectors show up, and those they show down.
fn peers(mesh: &Mesh, i: usize) -> (Vec<usize>, Vec<usize>) {
    let mut up = Vec::new();
    let mut down = Vec::new();
    for c in mesh.member(&name(i)).status().connectors {
        let digits: String = c
            .peer
            .trim_start_matches(|ch: char| !ch.is_ascii_digit())
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let j: usize = digits.parse().expect("peers are named b<N>");
        if c.up {
            up.push(j);
        } else {
            down.push(j);
        }
    }
    up.sort_unstable();
    down.sort_unstable();
    (up, down)
}

/// Broker `i` shows every live peer it has a connector with up, and no dead one.
fn peers_right(mesh: &Mesh, i: usize, alive: &[bool]) -> bool {
    let (up, down) = peers(mesh, i);
    up.iter().all(|&j| alive[j])
        && down.iter().all(|&j| !alive[j])
        && up.len() + down.len() >= BROKERS - 1 - i
}

/// (open files, threads, RSS bytes) of broker `i`'s process.
fn resources(mesh: &Mesh, i: usize) -> (u64, u64, u64) {
    let broker = mesh.member(&name(i));
    let status = broker.status();
    let threads = std::fs::read_to_string(format!("/proc/{}/status", broker.pid()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|n| n.trim().parse().ok()))
                .flatten()
        })
        .unwrap_or(0);
    (status.process.open_fds, threads, status.process.rss_bytes)
}

/// Waits until every live broker shows its live peers up and no dead one; returns how long it
/// took, failing past the budget with what each broker shows.
fn wait_peers(mesh: &Mesh, alive: &[bool], since: Instant, what: &str) -> Duration {
    let live = || (0..BROKERS).filter(|&i| alive[i]);
    tokio::task::block_in_place(|| {
        common::wait::poll()
            .every(Duration::from_millis(50))
            .within(BUDGET.saturating_sub(since.elapsed()))
            .until_or(
                what,
                || live().all(|i| peers_right(mesh, i, alive)),
                || {
                    let shown: Vec<String> = live()
                        .map(|i| format!("b{i} (up, down): {:?}", peers(mesh, i)))
                        .collect();
                    format!("{what}: not within {BUDGET:?}; alive {alive:?}; {shown:?}")
                },
            );
        since.elapsed()
    })
}

/// Each live broker gets `PER_BROKER` persistent messages from a fresh producer (closed after).
async fn produce(mesh: &Mesh, history: &History, alive: &[bool], phase: &str) {
    for i in (0..BROKERS).filter(|&i| alive[i]) {
        let client = mesh.member(&name(i)).client().await;
        send_numbered(
            &client,
            history,
            DEST,
            &format!("{phase}-b{i}"),
            0..PER_BROKER,
            true,
        )
        .await;
        client.close().await.expect("close the producer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_brokers_churning_deliver_every_message_once_and_leak_nothing() {
    let started = Instant::now();
    let mut config = MeshConfig::new();
    for i in 0..BROKERS {
        config = config.group(&name(i));
    }
    for i in 0..BROKERS {
        for j in i + 1..BROKERS {
            config = config.connector(
                &name(i),
                &name(j),
                &["duplex = true", "network_ttl = 1", "heartbeat = \"500ms\""],
            );
        }
    }
    let mut mesh = tokio::task::block_in_place(|| Mesh::start(&config));
    let mut alive = [true; BROKERS];
    let up_at = started.elapsed();

    let history = History::new();
    let stop = CancellationToken::new();
    let mut consumers = Vec::new();
    let mut consumer_clients = Vec::new();
    for i in CONSUMERS {
        let client = mesh.member(&name(i)).client().await;
        let sub = client
            .subscribe(
                DEST,
                SubscribeOptions {
                    ack: AckMode::ClientIndividual,
                    prefetch: 20,
                    ..SubscribeOptions::default()
                },
            )
            .await
            .expect("subscribe");
        consumers.push(consume(sub, &history, &name(i), stop.clone()));
        consumer_clients.push(client);
    }
    // Demand for the queue is known on every broker before anything is sent.
    tokio::task::block_in_place(|| {
        wait_until("every broker knows the consumers' demand", || {
            (0..BROKERS).all(|i| {
                CONSUMERS.contains(&i)
                    || mesh
                        .member(&name(i))
                        .status()
                        .connectors
                        .iter()
                        .any(|c| c.up && c.remote_demand > 0)
            })
        })
    });
    produce(&mesh, &history, &alive, "before").await;
    history.wait_all_delivered().await;
    let survivors: Vec<usize> = (0..BROKERS).filter(|i| !KILLED.contains(i)).collect();
    let baseline: Vec<(u64, u64, u64)> = survivors.iter().map(|&i| resources(&mesh, i)).collect();

    // The churn: four brokers die under load.
    let load = {
        let history = history.clone();
        let clients = producers(&mesh, &survivors).await;
        tokio::spawn(async move {
            for (i, c) in clients {
                send_numbered(
                    &c,
                    &history,
                    DEST,
                    &format!("during-b{i}"),
                    0..PER_BROKER,
                    true,
                )
                .await;
                let _ = c.close().await;
            }
        })
    };
    for &i in &KILLED {
        tokio::task::block_in_place(|| mesh.member_mut(&name(i)).kill9());
        alive[i] = false;
    }
    let killed_at = Instant::now();
    let down = wait_peers(
        &mesh,
        &alive,
        killed_at,
        "the survivors show only live peers",
    );
    load.await.expect("the producers panicked");

    for &i in &KILLED {
        tokio::task::block_in_place(|| mesh.member_mut(&name(i)).restart());
        alive[i] = true;
    }
    let restarted_at = Instant::now();
    let back = wait_peers(
        &mesh,
        &alive,
        restarted_at,
        "every broker shows all its peers again",
    );
    produce(&mesh, &history, &alive, "after").await;
    history.wait_all_delivered().await;
    // Let the dust settle (idle blocking threads time out in 10 s), then count again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let end: Vec<(u64, u64, u64)> = survivors.iter().map(|&i| resources(&mesh, i)).collect();
    stop.cancel();
    for c in consumers {
        let _ = c.await;
    }
    let verdict = history.verdict();
    eprintln!(
        "{BROKERS} brokers up in {up_at:?}; after killing {KILLED:?} the survivors showed only \
         live peers in {down:?}, after the restarts all peers in {back:?} (budget {BUDGET:?}); \
         {} messages, per consumer {:?}; survivors (fds, threads, rss) before {baseline:?} \
         after {end:?}; the test took {:?}",
        verdict.sent,
        verdict.by_consumer,
        started.elapsed()
    );
    verdict.assert_exactly_once();
    for ((&i, b), e) in survivors.iter().zip(&baseline).zip(&end) {
        let fd_slack = (b.0 / 20).max(4);
        assert!(
            e.0 <= b.0 + fd_slack,
            "b{i} holds {} open files after the churn, {} before: a leak",
            e.0,
            b.0
        );
        assert!(
            e.1 <= b.1 + 8,
            "b{i} runs {} threads after the churn, {} before: a leak",
            e.1,
            b.1
        );
        assert!(
            e.2 <= b.2 * 2 + (64 << 20),
            "b{i}'s RSS grew from {} to {} bytes",
            b.2,
            e.2
        );
    }
    drop(consumer_clients);
}

/// One producer client on each of `brokers`.
async fn producers(mesh: &Mesh, brokers: &[usize]) -> Vec<(usize, meshmq::client::Client)> {
    let mut clients = Vec::new();
    for &i in brokers {
        clients.push((i, mesh.member(&name(i)).client().await));
    }
    clients
}
