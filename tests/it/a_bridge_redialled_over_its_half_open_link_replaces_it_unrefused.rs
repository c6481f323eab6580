//! A fast reconnect is not a loop (S11b, NATS' "loop detected due to reconnect"): 100 times in
//! a row the hub's bridge to the edge loses its connection on the hub's side only — the edge
//! still holds the old connection open, silent, as when a dialler's link dies unseen — and
//! the hub dials again at once. Each time the edge takes the new bridge, refusing none (no
//! bridge refused, one reconnect per drop), and closes the old connection within 1 s of the new
//! one arriving — before its heartbeats (2.5 intervals of silence at the default `heartbeat`)
//! could have noticed it dead. Afterwards one bridge is left and carries each message once.
//! (The true loop half of S11 — a group dialling itself, another mesh, an unknown group — is
//! refused by `bridge_handshakes_from_strangers_are_refused_and_logged.rs`.)

use crate::common;

use std::time::Duration;

use common::history::{send_numbered, History};
use common::proxy::ProxyMode;
use common::{metric_sum, wait_until, Mesh, MeshConfig};
use tokio_util::sync::CancellationToken;

const DROPS: usize = 100;
/// The scenario's bound: from the new connection's arrival to the old one's close.
const REPLACED_WITHIN: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bridge_redialled_over_its_half_open_link_replaces_it_unrefused() {
    let mesh = Mesh::start(
        &MeshConfig::new()
            .group("hub")
            .group("edge")
            .behind_proxy("edge", ProxyMode::Forward)
            // In quick succession, as the scenario has it: the hub dials again 100 ms after
            // each drop.
            .connector(
                "hub",
                "edge",
                &["duplex = true", "reconnect_max_delay = \"100ms\""],
            ),
    );
    let (hub, edge, proxy) = (mesh.member("hub"), mesh.member("edge"), mesh.proxy("edge"));

    let mut slowest = Duration::ZERO;
    for drop in 0..DROPS {
        wait_until("the bridge is up on both sides", || {
            hub.connector("hub-edge").up && edge.connector("hub-edge").up
        });
        let dialled = proxy.accepted();
        proxy.abandon();
        wait_until("the hub dials again", || proxy.accepted() > dialled);
        wait_until("the edge closes the old connection", || {
            proxy.abandoned()[drop].1.is_some()
        });
        let (abandoned, closed) = proxy.abandoned()[drop];
        let redial = proxy.accepted_at()[dialled..]
            .iter()
            .copied()
            .find(|at| *at > abandoned)
            .expect("a dial after the drop");
        let took = closed.expect("closed").saturating_duration_since(redial);
        assert!(
            took <= REPLACED_WITHIN,
            "drop {drop}: the old connection was closed {took:?} after the new one arrived"
        );
        slowest = slowest.max(took);
    }
    let refused = metric_sum(&edge.metrics(), "meshmq_bridges_refused_total", &[]);
    let reconnects = hub.connector("hub-edge").reconnects;
    println!(
        "{DROPS} drops: each old connection closed at most {slowest:?} after its replacement \
         arrived; {reconnects} reconnects, {refused} bridges refused"
    );
    assert_eq!(refused, 0.0, "the edge refused a bridge: {}", edge.log());
    assert!(
        (DROPS as u64..=DROPS as u64 + 1).contains(&reconnects),
        "{reconnects} reconnects for {DROPS} drops (a refused dial costs another)"
    );

    // One bridge is left, and it carries each message once.
    wait_until("one connection is left", || proxy.live() == 1);
    let (history, stop) = (History::new(), CancellationToken::new());
    let _consumer = mesh
        .edge_consumer("queue://after-drops", &history, &stop)
        .await;
    send_numbered(
        &hub.client().await,
        &history,
        "queue://after-drops",
        "m",
        0..200,
        true,
    )
    .await;
    history.wait_all_delivered().await;
    stop.cancel();
    history.verdict().assert_exactly_once();
    assert!(hub.connector("hub-edge").up && edge.connector("hub-edge").up);
}
