//! What a failover producer re-sends to another group arrives once, or flagged. A failover
//! client re-sends every send whose receipt it has not seen on the connection it fails over
//! to; when that is another group of the mesh, the group it left may hold the same message,
//! and producer marks (kept per group) cannot catch the copy. Two faults, each with eight
//! producers sending persistent messages with receipts through a two-group mesh whose
//! consumer sits on the second group:
//! - the first group is stopped (SIGTERM) three times: a stopping broker sends the receipts of
//!   what it accepted before it closes, so nothing it holds is re-sent, and every message
//!   arrives exactly once;
//! - the producers' link to the first group swallows its receipts and is then cut (the group
//!   itself keeps running and forwards what it took): the re-sent copies are accepted flagged
//!   redelivered, so every message arrives, none is invented, and no message arrives twice
//!   unflagged.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::history::{History, Verdict};
use common::mesh::{Mesh, MeshBuilder};
use common::proxy::Proxy;
use meshmq::client::{AckMode, Client, ClientOptions, Outgoing, SubscribeOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const DEST: &str = "queue://resent.orders";
const SENDERS: usize = 8;

/// Two groups, `a` forwarding to `b`, and a consumer on `b` recording what it gets.
async fn mesh_with_consumer(history: &History) -> (Mesh, Client, JoinHandle<()>) {
    let mut mesh = MeshBuilder::new()
        .group("a", 1, "")
        .group("b", 1, "")
        .connector("a", "b", "")
        .build();
    tokio::task::block_in_place(|| {
        mesh.start_all();
        mesh.wait_for_view(&["a", "b"]);
    });
    let consumer = Client::connect(&mesh.member("b").url(), ClientOptions::default())
        .await
        .expect("consumer");
    let mut sub = consumer
        .subscribe(
            DEST,
            SubscribeOptions {
                ack: AckMode::ClientIndividual,
                prefetch: 100,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe");
    let history = history.clone();
    let consuming = tokio::spawn(async move {
        while let Some(d) = sub.next_timeout(Duration::from_secs(8)).await {
            let id = String::from_utf8_lossy(&d.body).to_string();
            history.received("b", &id, d.redelivered());
            let _ = sub.ack(&d).await;
        }
    });
    (mesh, consumer, consuming)
}

/// A failover producer on `url` and `SENDERS` tasks sending persistent messages with receipts
/// until `stop`; a send whose receipt never came is in doubt (it may arrive or not).
async fn producers(url: &str, history: &History, stop: &CancellationToken) -> Vec<JoinHandle<()>> {
    let producer = Arc::new(
        Client::connect(url, ClientOptions::default())
            .await
            .expect("producer"),
    );
    (0..SENDERS)
        .map(|s| {
            let (producer, history, stop) = (producer.clone(), history.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.is_cancelled() {
                    let id = format!("s{s}-{n}");
                    let msg = Outgoing::new(id.clone()).persistent(true);
                    match tokio::time::timeout(
                        Duration::from_secs(20),
                        producer.send_with_receipt(DEST, &msg),
                    )
                    .await
                    {
                        Ok(Ok(())) => history.sent(&id),
                        _ => history.in_doubt(&id),
                    }
                    n += 1;
                }
            })
        })
        .collect()
}

async fn finish(
    stop: CancellationToken,
    senders: Vec<JoinHandle<()>>,
    history: &History,
    consuming: JoinHandle<()>,
) -> Verdict {
    stop.cancel();
    for s in senders {
        s.await.expect("sender");
    }
    history.wait_all_delivered().await;
    consuming.await.expect("consumer");
    let v = history.verdict();
    eprintln!(
        "{} receipted, {} delivered, flagged duplicates {}, unflagged duplicates {}",
        v.sent,
        v.delivered,
        v.flagged_duplicates,
        v.unflagged_duplicates.len()
    );
    assert!(
        v.sent > 500,
        "too little traffic to test anything: {}",
        v.sent
    );
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_broker_receipts_what_it_took_so_nothing_is_sent_twice() {
    let history = History::new();
    let (mut mesh, _consumer, consuming) = mesh_with_consumer(&history).await;
    // The producers prefer a, fail over to b while a is down, and come back to a.
    let url = mesh.failover_url(
        &["a", "b"],
        "randomize=false&initialReconnectDelay=20&maxReconnectDelay=200&priorityBackup=true",
    );
    let stop = CancellationToken::new();
    let senders = producers(&url, &history, &stop).await;
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        tokio::task::block_in_place(|| mesh.stop("a"));
        tokio::time::sleep(Duration::from_millis(700)).await;
        tokio::task::block_in_place(|| {
            mesh.start("a");
            mesh.wait_until(&format!("a serves again (round {round})"), |m| {
                m.member("a").ready()
            });
            mesh.wait_for_view(&["a", "b"]);
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    finish(stop, senders, &history, consuming)
        .await
        .assert_exactly_once();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_resent_to_another_group_after_a_cut_arrive_once_or_flagged() {
    let history = History::new();
    let (mesh, _consumer, consuming) = mesh_with_consumer(&history).await;
    let proxy = Proxy::start(mesh.member("a").listen);
    let url = format!(
        "failover:({},{})?randomize=false&initialReconnectDelay=20&maxReconnectDelay=200",
        proxy.url(),
        mesh.member("b").url()
    );
    let stop = CancellationToken::new();
    let senders = producers(&url, &history, &stop).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    // a takes the sends in flight now, but its receipts never reach the producers; then the
    // link is cut and stays out of reach: the producers re-send them to b.
    proxy.mute_replies(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.refuse_new(true);
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let v = finish(stop, senders, &history, consuming).await;
    v.assert_ok();
    assert!(
        v.flagged_duplicates > 0,
        "no send was re-sent after the cut, so nothing was tested: {v:?}"
    );
}
