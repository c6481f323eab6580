//! Dead links never pass for live ones: a silent link (bytes stop, sockets stay open) is torn
//! down on both sides for want of heartbeats and re-dialled, leaving exactly one live bridge
//! — one connection, `up` on both sides in `/status` and `meshmq_connector_up` 1 — and losing
//! nothing sent before, during or after the silence; a peer that accepts TCP and never answers
//! the handshake times out at `handshake_timeout` and the dialler keeps trying until a real
//! one answers; and a storm of 20 quick cuts leaves exactly one live bridge that carries each
//! message once — also with persistent receipted traffic running through the storm: every
//! message reaches the edge's consumers once, each producer's in the order sent, and the hub
//! counts one reconnect per cut (a flap that left a second bridge, or tore a live one down
//! again, would count more). (That silence is detected within 3 heartbeat intervals is a rule of the
//! bridge, proved on controlled time by its unit tests in `src/network/bridge.rs`.)

use crate::common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::history::{consume_individually, send_numbered, History};
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

/// S5: bridge flapping under steady load. Producers on the hub, consumers on the edge (the
/// mesh's own shape); the link is cut 20 times while persistent, receipted sends keep coming,
/// each cut only once the new bridge has carried messages again (so every cut breaks a live
/// bridge with forwards in flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traffic_through_a_reconnect_storm_arrives_once_and_in_order() {
    const DEST: &str = "queue://through-the-storm";
    const CUTS: u64 = 20;
    const PRODUCERS: usize = 3;
    let mesh = Mesh::start(
        &hub_and_edge(ProxyMode::Forward, &["reconnect_max_delay = \"200ms\""])
            .at("hub", Ipv4Addr::new(127, 0, 70, 1))
            .at("edge", Ipv4Addr::new(127, 0, 70, 2)),
    );
    let (hub, edge, proxy) = (mesh.member("hub"), mesh.member("edge"), mesh.proxy("edge"));
    let (history, stop_consumers) = (History::new(), CancellationToken::new());
    let mut consumers = Vec::new();
    for label in ["edge-a", "edge-b"] {
        let client = edge.client().await;
        consume_individually(&client, DEST, &history, label, stop_consumers.clone()).await;
        consumers.push(client);
    }
    wait_until("the hub knows the edge's consumers", || {
        hub.connector("hub-edge").remote_demand >= 1
    });

    let stop_producing = CancellationToken::new();
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let (client, history, stop) = (hub.client().await, history.clone(), stop_producing.clone());
        producers.push(tokio::spawn(async move {
            let mut batch = 0;
            while !stop.is_cancelled() {
                let range = batch * 50..(batch + 1) * 50;
                send_numbered(&client, &history, DEST, &format!("p{p}"), range, true).await;
                batch += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            batch * 50
        }));
    }

    let mut in_flight_at_cuts = Vec::new();
    for _ in 0..CUTS {
        // Counted by the hub's forward acknowledgements, not by deliveries on the edge (which
        // go on from the edge's own backlog while the link is down): the new bridge is up
        // and has carried 100 forwards, so the cut breaks a live bridge, not a handshake.
        let acked = hub.connector("hub-edge").acked;
        wait_until("the new bridge carries messages", || {
            let c = hub.connector("hub-edge");
            c.up && c.acked >= acked + 100
        });
        in_flight_at_cuts.push(hub.connector("hub-edge").inflight);
        let dialled = proxy.accepted();
        proxy.cut();
        wait_until("the hub dials again", || proxy.accepted() > dialled);
    }
    stop_producing.cancel();
    let mut sent = 0;
    for p in producers {
        sent += p.await.expect("a producer saw an error");
    }
    history.wait_all_delivered().await;
    mesh.wait_connected();
    wait_until("the hub's queue is empty", || {
        hub.destination(DEST).depth == 0
    });
    stop_consumers.cancel();

    let verdict = history.verdict();
    let dropped = metric_sum(
        &edge.metrics(),
        "meshmq_connector_duplicates_dropped_total",
        &[],
    );
    let reconnects = hub.connector("hub-edge").reconnects;
    eprintln!(
        "{CUTS} cuts with {in_flight_at_cuts:?} forwards in flight; {sent} sent; the edge dropped \
         {dropped} forwards sent again; {reconnects} reconnects; {verdict:?}"
    );
    verdict.assert_exactly_once();
    assert_eq!(verdict.sent, sent);
    let late = history.out_of_order();
    assert!(
        late.is_empty(),
        "{} messages reached a consumer after a later one of their producer: {:?}",
        late.len(),
        &late[..late.len().min(10)]
    );
    assert!(
        (CUTS..=CUTS + 1).contains(&reconnects),
        "{reconnects} reconnects for {CUTS} cuts"
    );
    one_bridge(&mesh);
}
