//! A persistent message forwarded from the hub to an edge, journaled there, whose forward
//! acknowledgement is lost, and then the edge killed (`kill -9`: its in-memory state gone) and
//! restarted, is delivered once: the hub sends the unacknowledged forwards again when the
//! bridge comes back, and the restarted edge knows them from its journal and drops the copies.
//! The acknowledgements are lost for real (a proxy between the groups reads them and throws
//! them away), the forwards flow over a static bridge (no consumer on the edge while it
//! dies), and the edge's consumer starts only after every copy has been sent again.

use crate::common;

use common::history::{consume_individually, send_numbered, History};
use common::proxy::ProxyMode;
use common::{metric_sum, wait_until, Mesh, MeshConfig};
use tokio_util::sync::CancellationToken;

const DEST: &str = "queue://forwarded.once";
const TOTAL: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forward_whose_ack_was_lost_is_delivered_once_after_the_target_restarts() {
    let mut mesh = Mesh::start(
        &MeshConfig::new()
            .group("hub")
            .group("edge")
            .behind_proxy("edge", ProxyMode::Forward)
            .connector(
                "hub",
                "edge",
                &[
                    &format!("statically_included = [\"{DEST}\"]"),
                    "static_bridge = true",
                    // Long enough that the hub keeps the link while the acks are lost.
                    "heartbeat = \"20s\"",
                ],
            ),
    );
    mesh.wait_connected();
    mesh.proxy("edge").mute_replies(true);

    let history = History::new();
    let producer = mesh.member("hub").client().await;
    send_numbered(&producer, &history, DEST, "f", 0..TOTAL, true).await;
    wait_until("the edge journaled every forward", || {
        mesh.member("edge").destination(DEST).enqueued >= TOTAL as u64
    });
    assert_eq!(
        mesh.member("hub").connector("hub-edge").inflight,
        TOTAL as u64,
        "no forward acknowledgement reached the hub"
    );

    // The edge dies before any acknowledgement gets through; its journal holds every forward.
    mesh.member_mut("edge").kill9();
    mesh.proxy("edge").mute_replies(false);
    mesh.proxy("edge").cut();
    mesh.member_mut("edge").restart();
    mesh.wait_connected();
    wait_until("the hub had every forward acknowledged", || {
        let hub = mesh.member("hub");
        hub.destination(DEST).depth == 0 && hub.connector("hub-edge").inflight == 0
    });
    let edge = mesh.member("edge");
    let resent = edge.destination(DEST);
    let dropped = metric_sum(
        &edge.metrics(),
        "meshmq_connector_duplicates_dropped_total",
        &[],
    );
    eprintln!(
        "after the restart the edge holds {} messages; {dropped} forwards sent again were dropped as copies",
        resent.depth
    );

    let stop = CancellationToken::new();
    let consumer = edge.client().await;
    let consuming = consume_individually(&consumer, DEST, &history, "edge", stop.clone()).await;
    history.wait_all_delivered().await;
    wait_until("the edge's queue is empty", || {
        mesh.member("edge").destination(DEST).depth == 0
    });
    stop.cancel();
    let _ = consuming.await;

    let verdict = history.verdict();
    eprintln!("{verdict:?}");
    verdict.assert_exactly_once();
    assert_eq!(verdict.sent, TOTAL);
    assert!(
        dropped > 0.0,
        "the hub sent the unacknowledged forwards again and the restarted edge dropped the copies"
    );
}
