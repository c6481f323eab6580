//! Dead links never pass for live ones: a silent link (bytes stop, sockets stay open) is torn
//! down on both sides for want of heartbeats and re-dialled, leaving exactly one live bridge
//! — one connection, `up` on both sides in `/status` and `meshmq_connector_up` 1 — and losing
//! nothing sent before, during or after the silence; a peer that accepts TCP and never answers
//! the handshake times out at `handshake_timeout` and the dialler keeps trying until a real
//! one answers; and a storm of 20 quick cuts leaves exactly one live bridge that carries each
//! message once. (That silence is detected within 3 heartbeat intervals is a rule of the
//! bridge, proved on controlled time by its unit tests in `src/network/bridge.rs`.)

use crate::common;

use common::history::{send_numbered, History};
use common::proxy::ProxyMode;
use common::{metric_sum, wait_until, Mesh, MeshConfig};
use tokio_util::sync::CancellationToken;

const UP: &str = "meshmq_connector_up";

fn hub_and_edge(mode: ProxyMode, connector: &[&str]) -> MeshConfig {
    MeshConfig::new()
        .group("hub")
        .group("edge")
        .behind_proxy("edge", mode)
        .connector("hub", "edge", connector)
}

/// Messages sent on the hub reach a consumer on the edge, each once.
async fn carries_messages(mesh: &Mesh, dest: &str) {
    let (history, stop) = (History::new(), CancellationToken::new());
    let _consumer = mesh.edge_consumer(dest, &history, &stop).await;
    let producer = mesh.member("hub").client().await;
    send_numbered(&producer, &history, dest, "m", 0..100, false).await;
    history.wait_all_delivered().await;
    stop.cancel();
    history.verdict().assert_exactly_once();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_link_is_torn_down_and_redialled_to_one_bridge_losing_nothing() {
    const DEST: &str = "queue://through-silence";
    let mesh = Mesh::start(&hub_and_edge(
        ProxyMode::Forward,
        &["heartbeat = \"500ms\""],
    ));
    let (hub, edge, proxy) = (mesh.member("hub"), mesh.member("edge"), mesh.proxy("edge"));
    let (history, stop) = (History::new(), CancellationToken::new());
    let _consumer = mesh.edge_consumer(DEST, &history, &stop).await;
    let producer = hub.client().await;
    send_numbered(&producer, &history, DEST, "before", 0..500, true).await;
    history.wait_all_delivered().await;

    // The link goes silent with sockets open; messages keep coming to the hub meanwhile.
    let dialled = proxy.accepted();
    proxy.pause();
    send_numbered(&producer, &history, DEST, "during", 0..500, true).await;
    wait_until("both sides give the silent link up", || {
        !hub.connector("hub-edge").up && !edge.connector("hub-edge").up
    });
    for (side, peer) in [(hub, "edge"), (edge, "hub")] {
        assert!(
            side.log().contains(&format!("no heartbeat from {peer}")),
            "{} names the silence as the reason:\n{}",
            side.member(),
            side.log()
        );
    }
    wait_until("the hub dials again", || proxy.accepted() > dialled);
    proxy.resume();

    mesh.wait_connected();
    send_numbered(&producer, &history, DEST, "after", 0..500, true).await;
    history.wait_all_delivered().await;
    wait_until("the hub's queue is empty", || {
        hub.destination(DEST).depth == 0
    });
    stop.cancel();
    history.verdict().assert_exactly_once();
    assert!(hub.connector("hub-edge").reconnects >= 1);
    one_bridge(&mesh);
}

/// Exactly one live bridge for the connector: one connection through the proxy, `up` on both
/// sides in `/status` and `meshmq_connector_up` 1 on each.
fn one_bridge(mesh: &Mesh) {
    let proxy = mesh.proxy("edge");
    wait_until("one connection is left between them", || proxy.live() == 1);
    for side in [mesh.member("hub"), mesh.member("edge")] {
        let status = side.connector("hub-edge");
        assert!(status.up, "{}: {status:?}", side.member());
        assert_eq!(
            metric_sum(&side.metrics(), UP, &["connector=\"hub-edge\""]),
            1.0,
            "{}",
            side.member()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_that_never_answers_times_out_and_the_dialler_keeps_trying() {
    let mesh = Mesh::start_unconnected(&hub_and_edge(
        ProxyMode::Hang,
        &[
            "handshake_timeout = \"500ms\"",
            "reconnect_max_delay = \"200ms\"",
        ],
    ));
    let (hub, proxy) = (mesh.member("hub"), mesh.proxy("edge"));
    wait_until("the hub dialled three times", || proxy.accepted() >= 3);
    assert!(
        hub.log().contains("no handshake within 500ms"),
        "{}",
        hub.log()
    );
    let status = hub.connector("hub-edge");
    assert!(!status.up, "{status:?}");
    assert!(status.reconnects >= 2, "{status:?}");
    proxy.forward();
    mesh.wait_connected();
    carries_messages(&mesh, "queue://after-hang").await;
    one_bridge(&mesh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconnect_storm_leaves_exactly_one_bridge() {
    let mesh = Mesh::start(&hub_and_edge(
        ProxyMode::Forward,
        &["reconnect_max_delay = \"200ms\""],
    ));
    let (hub, proxy) = (mesh.member("hub"), mesh.proxy("edge"));
    for _ in 0..20 {
        let dialled = proxy.accepted();
        proxy.cut();
        wait_until("the hub dials again", || proxy.accepted() > dialled);
    }
    mesh.wait_connected();
    one_bridge(&mesh);
    assert!(hub.connector("hub-edge").reconnects >= 20);
    carries_messages(&mesh, "queue://after-storm").await;
    one_bridge(&mesh);
}
