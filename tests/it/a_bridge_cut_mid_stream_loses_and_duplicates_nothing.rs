//! A bridge broken while persistent messages stream from the hub to an edge consumer loses
//! nothing and delivers nothing twice (not even flagged as a redelivery: the consumer's own
//! link never broke), whether the link is closed, silenced past
//! three heartbeat intervals (both sides tear it down; the hub re-dials), or the edge's
//! forward acknowledgements are lost on the way back before the link closes — the hub then
//! sends those forwards again and the edge drops the copies it already has.

use crate::common;

use common::history::{send_numbered, History};
use common::proxy::ProxyMode;
use common::{metric_sum, wait_until, Mesh, MeshConfig};
use tokio_util::sync::CancellationToken;

const DEST: &str = "queue://stream";
const TOTAL: usize = 4000;

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Close both sides of the link.
    Cut,
    /// Move no bytes until both ends have given the link up, then heal.
    Pause,
    /// Lose everything the edge sends back (its forward acks) for a while, then close.
    LoseAcks,
}

async fn stream_through(fault: Fault) {
    let mesh = Mesh::start(
        &MeshConfig::new()
            .group("hub")
            .group("edge")
            .behind_proxy("edge", ProxyMode::Forward)
            .connector("hub", "edge", &["heartbeat = \"500ms\""]),
    );
    let (hub, edge, proxy) = (mesh.member("hub"), mesh.member("edge"), mesh.proxy("edge"));
    let (history, stop) = (History::new(), CancellationToken::new());
    let _consumer = mesh.edge_consumer(DEST, &history, &stop).await;

    let producer = hub.client().await;
    let sending = {
        let history = history.clone();
        tokio::spawn(async move {
            send_numbered(&producer, &history, DEST, "m", 0..TOTAL, true).await;
        })
    };
    wait_until("a quarter has arrived", || {
        history.count_by("edge") >= TOTAL / 4
    });
    eprintln!(
        "{fault:?} with {} of {TOTAL} delivered and {} forwards in flight",
        history.count_by("edge"),
        hub.connector("hub-edge").inflight
    );
    match fault {
        Fault::Cut => proxy.cut(),
        Fault::Pause => {
            proxy.pause();
            wait_until("both ends gave the silent link up", || {
                !hub.connector("hub-edge").up && !edge.connector("hub-edge").up
            });
            proxy.resume();
        }
        Fault::LoseAcks => {
            let before = history.count_by("edge");
            proxy.mute_replies(true);
            wait_until("forwards arrive whose acks are lost", || {
                history.count_by("edge") >= before + 100
            });
            proxy.mute_replies(false);
            proxy.cut();
        }
    }
    sending.await.expect("producer");
    history.wait_all_delivered().await;
    mesh.wait_connected();
    wait_until("the hub's queue is empty", || {
        hub.destination(DEST).depth == 0
    });
    stop.cancel();

    let verdict = history.verdict();
    verdict.assert_exactly_once();
    assert_eq!(verdict.sent, TOTAL);
    assert!(
        hub.connector("hub-edge").reconnects >= 1,
        "the fault broke the bridge"
    );
    if let Fault::LoseAcks = fault {
        let dropped = metric_sum(
            &edge.metrics(),
            "meshmq_connector_duplicates_dropped_total",
            &[],
        );
        assert!(
            dropped > 0.0,
            "the hub sent the unacknowledged forwards again and the edge dropped them"
        );
    }
    eprintln!("{fault:?}: {verdict:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_closed_link_loses_nothing() {
    stream_through(Fault::Cut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_link_past_three_heartbeats_loses_nothing() {
    stream_through(Fault::Pause).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_forward_acks_cause_no_duplicate_deliveries() {
    stream_through(Fault::LoseAcks).await;
}
