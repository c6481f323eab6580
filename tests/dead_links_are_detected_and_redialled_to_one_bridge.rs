//! Dead links never pass for live ones: a silent link (bytes stop, sockets stay open) is torn
//! down on both sides and re-dialled; a peer that accepts TCP and never answers the handshake
//! times out at `handshake_timeout` and the dialler keeps trying until a real one answers; and
//! a storm of 20 quick cuts leaves exactly one live bridge — one connection, `up` on both
//! sides in `/status` and `meshmq_connector_up` 1 — that carries each message once.

mod common;

use common::history::{consume, send_numbered, History};
use common::proxy::ProxyMode;
use common::{metric_sum, wait_until, Mesh, MeshConfig};
use meshmq::client::{AckMode, SubscribeOptions};
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
    let consumer = mesh.member("edge").client().await;
    let sub = consumer
        .subscribe(
            dest,
            SubscribeOptions {
                ack: AckMode::ClientIndividual,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe");
    consume(sub, &history, "edge", stop.clone());
    wait_until("the hub knows the edge consumer", || {
        mesh.member("hub").connector("hub-edge").remote_demand == 1
    });
    let producer = mesh.member("hub").client().await;
    send_numbered(&producer, &history, dest, "m", 0..100, false).await;
    history.wait_all_delivered().await;
    stop.cancel();
    history.verdict().assert_exactly_once();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_link_is_torn_down_and_redialled() {
    let mesh = Mesh::start(&hub_and_edge(
        ProxyMode::Forward,
        &["heartbeat = \"500ms\""],
    ));
    let (hub, edge, proxy) = (mesh.member("hub"), mesh.member("edge"), mesh.proxy("edge"));
    let dialled = proxy.accepted();
    proxy.pause();
    wait_until("both sides give the silent link up", || {
        !hub.connector("hub-edge").up && !edge.connector("hub-edge").up
    });
    assert!(
        hub.log().contains("no heartbeat from edge"),
        "{}",
        hub.log()
    );
    wait_until("the hub dials again", || proxy.accepted() > dialled);
    proxy.resume();
    mesh.wait_connected();
    assert!(hub.connector("hub-edge").reconnects >= 1);
    carries_messages(&mesh, "queue://after-silence").await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconnect_storm_leaves_exactly_one_bridge() {
    let mesh = Mesh::start(&hub_and_edge(
        ProxyMode::Forward,
        &["reconnect_max_delay = \"200ms\""],
    ));
    let (hub, edge, proxy) = (mesh.member("hub"), mesh.member("edge"), mesh.proxy("edge"));
    for _ in 0..20 {
        let dialled = proxy.accepted();
        proxy.cut();
        wait_until("the hub dials again", || proxy.accepted() > dialled);
    }
    mesh.wait_connected();
    wait_until("one connection is left between them", || proxy.live() == 1);
    for side in [hub, edge] {
        let status = side.connector("hub-edge");
        assert!(status.up, "{}: {status:?}", side.member());
        assert_eq!(
            metric_sum(&side.metrics(), UP, &["connector=\"hub-edge\""]),
            1.0,
            "{}",
            side.member()
        );
    }
    assert!(hub.connector("hub-edge").reconnects >= 20);
    carries_messages(&mesh, "queue://after-storm").await;
    assert_eq!(proxy.live(), 1, "still one connection");
}
