//! A drained master applies every frame its failover clients had already written before it
//! hands its group to the standby: a producer's batch (49 fire-and-forget persistent sends,
//! then one with a receipt) held on the wire by a stalled link when `meshmq drain` starts
//! arrives whole and exactly once after the producer has followed the group to the standby,
//! with no client error. (A master that closed its connections at once lost the 49 — nothing
//! re-sends a send without a receipt — while the receipted one was re-sent and arrived.)

use crate::common;

use std::time::{Duration, Instant};

use common::history::{consume, send_numbered, History};
use common::mesh::MeshBuilder;
use common::proxy::Proxy;
use common::{meshmq, refuses_connections, run};
use meshmq::client::{AckMode, Client, ClientOptions, SubscribeOptions};
use tokio_util::sync::CancellationToken;

const QUEUE: &str = "queue://drain.inflight";
const TOKEN: &str = "drain-inflight-admin-token-0123";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_on_the_wire_when_the_master_is_drained_arrives_whole() {
    let mut mesh = MeshBuilder::new()
        .group("edge", 2, "update_cluster_clients = true")
        .section(&format!("[admin]\ntoken = \"{TOKEN}\"\n"))
        .build();
    mesh.start("edgea");
    mesh.wait_until("edgea serves", |m| m.member("edgea").ready());
    mesh.start("edgeb");
    mesh.wait_until("edgeb stands by", |m| {
        m.member("edgeb")
            .status()
            .is_some_and(|s| s.role == "slave")
    });

    let history = History::new();
    let stop = CancellationToken::new();
    let consumer = Client::connect(
        &mesh.failover_url(
            &["edgea", "edgeb"],
            "randomize=false&initialReconnectDelay=50",
        ),
        ClientOptions::default(),
    )
    .await
    .expect("the consumer connects");
    let sub = consumer
        .subscribe(
            QUEUE,
            SubscribeOptions {
                ack: AckMode::ClientIndividual,
                prefetch: 20,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe");
    consume(sub, &history, "c", stop.clone());

    // The producer reaches edgea through a link the test can stall.
    let link = Proxy::start(mesh.member("edgea").listen);
    let producer = Client::connect(
        &format!(
            "failover:(tcp://{},{})?randomize=false&initialReconnectDelay=50",
            link.addr(),
            mesh.member("edgeb").url()
        ),
        ClientOptions::default(),
    )
    .await
    .expect("the producer connects through the link");
    send_numbered(&producer, &history, QUEUE, "m", 0..50, true).await;

    // The next batch leaves the producer but stays on the stalled link.
    link.pause();
    // The proxy's threads notice the pause between reads (every 20 ms).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sending = {
        let (producer, history) = (producer.clone(), history.clone());
        tokio::spawn(async move {
            send_numbered(&producer, &history, QUEUE, "m", 50..100, true).await;
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !sending.is_finished(),
        "the receipted send waits on the stalled link"
    );

    let (topology, started) = (mesh.topology.clone(), Instant::now());
    let draining = tokio::task::spawn_blocking(move || {
        run(meshmq()
            .arg("drain")
            .arg(&topology)
            .arg("edgea")
            .args(["--timeout", "40s"]))
    });
    // Until edgea has either stopped (it cut the producer off) or holds only the producer
    // (the consumer, whose link is not stalled, has left).
    mesh.wait_until(
        "edgea has stopped or holds only the stalled producer",
        |m| {
            let a = m.member("edgea");
            refuses_connections(a.admin)
                || a.status()
                    .is_some_and(|s| s.drain.is_some() && s.cluster.is_some_and(|c| c.clients == 1))
        },
    );
    link.resume();

    let done = draining.await.expect("drain command");
    assert!(
        done.status.success() && done.stdout.contains("group edge: edgeb serves now"),
        "meshmq drain failed\nstdout:\n{}\nstderr:\n{}",
        done.stdout,
        done.stderr
    );
    sending.await.expect("the producer saw no error");
    // edgea answered the batch before it let the producer go; the next batch goes to edgeb.
    send_numbered(&producer, &history, QUEUE, "m", 100..150, true).await;
    history.wait_all_delivered().await;
    stop.cancel();
    let verdict = history.verdict();
    println!(
        "drained in {:?}: {} delivered, {} lost, {} flagged duplicates",
        started.elapsed(),
        verdict.delivered,
        verdict.lost.len(),
        verdict.flagged_duplicates
    );
    verdict.assert_exactly_once();
    for (label, c) in [("consumer", &consumer), ("producer", &producer)] {
        assert_eq!(c.server_info().member, "edgeb", "{label}");
        assert!(!c.is_closed(), "{label} closed");
        let errors = c.take_errors();
        assert!(errors.is_empty(), "{label} saw errors: {errors:?}");
    }
}
