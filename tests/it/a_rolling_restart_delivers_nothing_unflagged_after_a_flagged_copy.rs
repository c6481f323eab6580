//! Graceful restarts never deliver a message unflagged after a flagged copy ("overtaken"). A
//! consumer that de-duplicates only flagged copies (JMS: an unflagged message is a first
//! delivery) must never take a message twice, so every copy after the first delivered one must
//! be flagged redelivered; and nothing receipted is lost, nothing is invented. Two cases:
//! - a stop whose receipts outlast its grace (a 5 s group-commit window): the failover
//!   producers re-send what had no receipt to another group, flagged, while the stopped group
//!   still holds the originals it journaled — after its restart those must come flagged too;
//! - a rolling restart (S17's shape): three single-member edges in a triangle of connectors,
//!   failover producers sending persistent messages with receipts and failover consumers
//!   acknowledging one by one, all moved about by `rebalance_cluster_clients`, while each edge
//!   in turn is stopped (SIGTERM) and started again, twice round.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::history::{self, Judgement, Ledger};
use common::mesh::{Mesh, MeshBuilder};
use meshmq::client::{Client, ClientOptions, Outgoing, SubscribeOptions};
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const EDGES: [&str; 3] = ["edge-1", "edge-2", "edge-3"];
const DEST: &str = "queue://rolling.overtaken";
const PRODUCERS: usize = 4;
/// Sending tasks per producer client: several sends of one client in flight at a stop.
const SENDERS: usize = 2;
const CONSUMERS: usize = 2;
const ROUNDS: usize = 2;

/// What the test saw of every message: the ledger, and for each key where it went (for the
/// report of a broken history).
#[derive(Default)]
struct Seen {
    ledger: Ledger<String>,
    /// key → every delivery: (consumer, its group then, redelivery count).
    copies: BTreeMap<String, Vec<(usize, String, u32)>>,
    /// key → (the producer's group when the send started, when it ended, receipted).
    sends: BTreeMap<String, (String, String, bool)>,
}

impl Seen {
    /// Prints what the ledger shows, and fails the test if a receipted message was lost, one
    /// was invented, or one arrived unflagged after it had already arrived (a second unflagged
    /// copy, or an unflagged copy after a flagged one: overtaken).
    fn judge_nothing_lost_or_overtaken(&self) -> Judgement<String> {
        let judged = self.ledger.judge();
        let Judgement {
            lost,
            invented,
            unflagged_duplicates,
            overtaken,
            flagged_duplicates,
        } = &judged;
        let flagged = self
            .ledger
            .deliveries
            .values()
            .filter(|c| c.iter().any(|r| *r))
            .count();
        let story = |keys: &[String]| -> Vec<String> {
            keys.iter()
                .take(10)
                .map(|k| {
                    format!(
                        "{k}: sent {:?}, delivered (consumer, group, redeliveries) {:?}",
                        self.sends.get(k),
                        self.copies.get(k)
                    )
                })
                .collect()
        };
        eprintln!(
            "{} receipted, {} in doubt, {} delivered ({flagged} messages flagged at least once); \
             lost {}, invented {}, unflagged duplicates {}, overtaken {}, flagged duplicates \
             {flagged_duplicates}",
            self.ledger.accepted.len(),
            self.ledger.in_doubt.len(),
            self.ledger.deliveries.values().map(Vec::len).sum::<usize>(),
            lost.len(),
            invented.len(),
            unflagged_duplicates.len(),
            overtaken.len(),
        );
        for line in story(overtaken) {
            eprintln!("overtaken {line}");
        }
        assert!(
            lost.is_empty()
                && invented.is_empty()
                && unflagged_duplicates.is_empty()
                && overtaken.is_empty(),
            "lost {:?}; invented {invented:?}; unflagged duplicates {:?}; overtaken (flagged, then \
             unflagged) {:?}",
            story(lost),
            story(unflagged_duplicates),
            story(overtaken)
        );
        judged
    }
}

type Shared = Arc<Mutex<Seen>>;

fn group_of(c: &Client) -> String {
    c.server_info().group
}

fn consume(label: usize, url: String, seen: Shared, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (consumer, mut sub) = history::individual_subscriber(&url, DEST, "consumer").await;
        loop {
            let d = tokio::select! {
                d = sub.next_timeout(Duration::from_millis(200)) => d,
                _ = stop.cancelled() => break,
            };
            let Some(d) = d else { continue };
            let key = String::from_utf8_lossy(&d.body).to_string();
            {
                let mut s = seen.lock();
                s.ledger.delivered(key.clone(), d.redelivered());
                s.copies.entry(key).or_default().push((
                    label,
                    group_of(&consumer),
                    d.redelivery_count,
                ));
            }
            let _ = sub.ack(&d).await;
        }
        let _ = consumer.close().await;
    })
}

async fn produce(
    p: usize,
    senders: usize,
    url: String,
    seen: Shared,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let producer = Arc::new(
        Client::connect(&url, ClientOptions::default())
            .await
            .expect("producer"),
    );
    let tasks: Vec<JoinHandle<()>> = (0..senders)
        .map(|s| {
            let (producer, seen, stop) = (producer.clone(), seen.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.is_cancelled() {
                    let key = format!("p{p}s{s}-{n}");
                    let msg = Outgoing::new(key.clone()).persistent(true);
                    let from = group_of(&producer);
                    let sent = tokio::time::timeout(
                        Duration::from_secs(20),
                        producer.send_with_receipt(DEST, &msg),
                    )
                    .await;
                    let receipted = matches!(sent, Ok(Ok(())));
                    {
                        let mut seen = seen.lock();
                        if receipted {
                            seen.ledger.accepted(key.clone());
                        } else {
                            // Unanswered: the failover client may have sent it again.
                            seen.ledger.in_doubt(key.clone());
                        }
                        seen.sends
                            .insert(key, (from, group_of(&producer), receipted));
                    }
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    tokio::spawn(async move {
        for t in tasks {
            t.await.expect("sender");
        }
        let _ = producer.close().await;
    })
}

fn restart(mesh: &mut Mesh, edge: &str) {
    mesh.stop(edge);
    mesh.start(edge);
    mesh.wait_until(&format!("{edge} serves again"), |m| m.member(edge).ready());
    mesh.wait_for_view(&EDGES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_delivers_nothing_unflagged_after_a_flagged_copy() {
    let listener = "update_cluster_clients = true\nrebalance_cluster_clients = true";
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
    let url = mesh.failover_url(&EDGES, "initialReconnectDelay=50&maxReconnectDelay=1000");
    let seen: Shared = Arc::default();
    let stop = CancellationToken::new();
    let consumers: Vec<JoinHandle<()>> = (0..CONSUMERS)
        .map(|c| consume(c, url.clone(), seen.clone(), stop.clone()))
        .collect();
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        producers.push(produce(p, SENDERS, url.clone(), seen.clone(), stop.clone()).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..ROUNDS {
        for edge in EDGES {
            tokio::task::block_in_place(|| restart(&mut mesh, edge));
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    stop.cancel();
    for p in producers {
        p.await.expect("producer");
    }
    for c in consumers {
        c.await.expect("consumer");
    }

    // Drain what is left, with a consumer on every edge (a message may wait on an edge its
    // path forbids forwarding onward from), then judge.
    let drains = EDGES.map(|e| {
        let (url, seen) = (mesh.member(e).url(), seen.clone());
        tokio::spawn(async move {
            let drain = Client::connect(&url, ClientOptions::default())
                .await
                .expect("drain");
            let mut sub = drain
                .subscribe(DEST, SubscribeOptions::default())
                .await
                .expect("subscribe to drain");
            while let Some(d) = sub.next_timeout(Duration::from_secs(5)).await {
                let key = String::from_utf8_lossy(&d.body).to_string();
                {
                    let mut s = seen.lock();
                    s.ledger.delivered(key.clone(), d.redelivered());
                    s.copies.entry(key).or_default().push((
                        9,
                        group_of(&drain),
                        d.redelivery_count,
                    ));
                }
                let _ = sub.ack(&d).await;
            }
        })
    });
    for d in drains {
        d.await.expect("drain");
    }
    let s = seen.lock();
    assert!(!s.ledger.accepted.is_empty(), "nothing was receipted");
    s.judge_nothing_lost_or_overtaken();
}

/// Waits until every receipted message arrived and nothing more came for 12 s (at most 90 s).
async fn settle(seen: &Shared) {
    let mut last = usize::MAX;
    let mut quiet = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while tokio::time::Instant::now() < deadline {
        let (all, count) = {
            let s = seen.lock();
            let all = s
                .ledger
                .accepted
                .iter()
                .all(|k| s.ledger.deliveries.contains_key(k));
            (
                all,
                s.ledger.deliveries.values().map(Vec::len).sum::<usize>(),
            )
        };
        quiet = if count == last { quiet + 1 } else { 0 };
        last = count;
        // Originals a restarted group still holds come a forward and a commit window later.
        if all && quiet >= 24 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_whose_receipts_outlast_the_grace_flags_the_originals_it_holds() {
    // Every journal commit waits 5 s, so a send taken just after a commit is still without
    // its receipt when the stopping broker's grace (2 s) runs out.
    let mut mesh = MeshBuilder::new()
        .group("a", 1, "")
        .group("b", 1, "")
        .connector("a", "b", "")
        .section("[store]\ngroup_commit_window = \"5s\"\n")
        .build();
    tokio::task::block_in_place(|| {
        mesh.start_all();
        mesh.wait_for_view(&["a", "b"]);
    });
    let seen: Shared = Arc::default();
    let stop = CancellationToken::new();
    // The consumer outlives the producers: it takes what arrives after they stopped.
    let consumer_stop = CancellationToken::new();
    let consuming = consume(
        0,
        mesh.member("b").url(),
        seen.clone(),
        consumer_stop.clone(),
    );
    let url = mesh.failover_url(
        &["a", "b"],
        "randomize=false&initialReconnectDelay=20&maxReconnectDelay=200",
    );
    let producing = produce(0, 16, url, seen.clone(), stop.clone()).await;
    // Right after a commit's receipts the next sends wait a whole window: stop then.
    tokio::task::block_in_place(|| {
        common::wait::poll()
            .every(Duration::from_millis(20))
            .until("the first commit's receipts", || {
                !seen.lock().ledger.accepted.is_empty()
            })
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| {
        mesh.stop("a");
        mesh.start("a");
        mesh.wait_until("a serves again", |m| m.member("a").ready());
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    producing.await.expect("producer");
    settle(&seen).await;
    consumer_stop.cancel();
    consuming.await.expect("consumer");

    let s = seen.lock();
    let judged = s.judge_nothing_lost_or_overtaken();
    assert!(
        judged.flagged_duplicates > 0,
        "no message was sent twice: the stop left no send in doubt, so the case did not happen"
    );
}
