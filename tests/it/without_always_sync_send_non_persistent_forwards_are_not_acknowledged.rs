//! With `always_sync_send = false` a connector forwards non-persistent messages without
//! waiting for the peer: the source acknowledges them as soon as they are on the link, none is
//! ever in flight and the peer sends no forward acknowledgement for them — while persistent
//! messages over the same connector are still acknowledged one by one by the peer. With the
//! default (`true`) every forward, persistent or not, waits for the peer's acknowledgement.
//! Either way, on a healthy link every message reaches the consumer exactly once.

use crate::common;

use common::history::{send_numbered, History};
use common::{wait_until, Mesh, MeshConfig};
use tokio_util::sync::CancellationToken;

const DEST: &str = "queue://ticks";
const NON_PERSISTENT: usize = 3000;
const PERSISTENT: usize = 500;

/// Sends `NON_PERSISTENT` non-persistent then `PERSISTENT` persistent messages from the hub
/// to a consumer on the edge; returns the hub's connector status after each batch settled.
async fn forward_both_kinds(
    always_sync_send: bool,
) -> (
    meshmq::network::ConnectorStatus,
    meshmq::network::ConnectorStatus,
) {
    let option = format!("always_sync_send = {always_sync_send}");
    let mesh = Mesh::start(&MeshConfig::new().group("hub").group("edge").connector(
        "hub",
        "edge",
        &[&option],
    ));
    let (hub, edge) = (mesh.member("hub"), mesh.member("edge"));
    let (history, stop) = (History::new(), CancellationToken::new());
    let _consumer = mesh.edge_consumer(DEST, &history, &stop).await;
    let producer = hub.client().await;
    let settled = || {
        wait_until("the hub's queue is empty and nothing is in flight", || {
            hub.destination(DEST).depth == 0 && hub.connector("hub-edge").inflight == 0
        });
        hub.connector("hub-edge")
    };

    send_numbered(&producer, &history, DEST, "np", 0..NON_PERSISTENT, false).await;
    history.wait_all_delivered().await;
    let after_non_persistent = settled();

    send_numbered(&producer, &history, DEST, "p", 0..PERSISTENT, true).await;
    history.wait_all_delivered().await;
    let after_persistent = settled();
    stop.cancel();

    let verdict = history.verdict();
    verdict.assert_exactly_once();
    assert_eq!(verdict.sent, NON_PERSISTENT + PERSISTENT);
    assert_eq!(
        edge.destination(DEST).enqueued,
        (NON_PERSISTENT + PERSISTENT) as u64,
        "the edge took each forward once"
    );
    (after_non_persistent, after_persistent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn non_persistent_forwards_are_acknowledged_at_the_source_and_persistent_ones_by_the_peer() {
    let (np, p) = forward_both_kinds(false).await;
    assert_eq!(np.forwarded, NON_PERSISTENT as u64, "{np:?}");
    assert_eq!(
        np.acked, 0,
        "the peer acknowledged no non-persistent forward: {np:?}"
    );
    assert_eq!(p.forwarded, (NON_PERSISTENT + PERSISTENT) as u64, "{p:?}");
    assert_eq!(
        p.acked, PERSISTENT as u64,
        "each persistent forward was acknowledged by the peer: {p:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn by_default_every_forward_waits_for_the_peer() {
    let (np, p) = forward_both_kinds(true).await;
    assert_eq!(np.forwarded, NON_PERSISTENT as u64, "{np:?}");
    assert_eq!(np.acked, NON_PERSISTENT as u64, "{np:?}");
    assert_eq!(p.forwarded, (NON_PERSISTENT + PERSISTENT) as u64, "{p:?}");
    assert_eq!(p.acked, (NON_PERSISTENT + PERSISTENT) as u64, "{p:?}");
}
