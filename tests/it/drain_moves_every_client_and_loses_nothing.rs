//! `meshmq drain MEMBER` under load costs no message and no client error: a drained edge that
//! is alone in its group asks its failover consumers to move to another group of the mesh (the
//! hub, or edge-2, which it knows through the hub) — they do, each once, politely — lets its
//! queue empty through the connectors and
//! exits; a drained master of
//! a file-lock pair hands the group to its standby, which its producer and consumers follow.
//! In both, with a producer sending persistent messages throughout, every message arrives
//! exactly once (not even a flagged redelivery), no client sees an error or closes, and the
//! drained member's process has exited when the command returns. An admin write without the
//! topology's token is refused and changes nothing.

use crate::common;

use std::time::Duration;

use common::history::QueueTraffic;
use common::mesh::{Mesh, MeshBuilder};
use common::{meshmq, refuses_connections, run};
use meshmq::client::Client;

const QUEUE: &str = "queue://drain.orders";
const TOKEN: &str = "drain-test-admin-token-0123";
const LISTENER: &str = "update_cluster_clients = true";

fn admin_section() -> String {
    format!("[admin]\ntoken = \"{TOKEN}\"\n")
}

/// Runs `meshmq drain` to the end and returns its stdout (it must succeed).
async fn drain(mesh: &Mesh, member: &str) -> String {
    let (topology, member) = (mesh.topology.clone(), member.to_string());
    let done = tokio::task::spawn_blocking(move || {
        run(meshmq()
            .arg("drain")
            .arg(&topology)
            .arg(&member)
            .args(["--timeout", "40s"]))
    })
    .await
    .expect("drain command");
    assert!(
        done.status.success(),
        "meshmq drain failed\nstdout:\n{}\nstderr:\n{}",
        done.stdout,
        done.stderr
    );
    println!("{}", done.stdout);
    done.stdout
}

fn assert_no_client_error(clients: &[(&str, &Client)]) {
    for (label, c) in clients {
        assert!(!c.is_closed(), "{label} closed");
        let errors = c.take_errors();
        assert!(errors.is_empty(), "{label} saw errors: {errors:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_edge_moves_its_consumers_away_and_loses_nothing() {
    let connector = "network_ttl = 3\nreplay_delay = \"300ms\"";
    let mut mesh = MeshBuilder::new()
        .group("hub", 1, LISTENER)
        .group("edge-1", 1, LISTENER)
        .group("edge-2", 1, LISTENER)
        .connector("hub", "edge-1", connector)
        .connector("hub", "edge-2", connector)
        .section(&admin_section())
        .build();
    mesh.start_all();
    mesh.wait_for_view(&["hub", "edge-1"]);
    mesh.wait_for_view(&["hub", "edge-2"]);

    let mut traffic = QueueTraffic::new(QUEUE);
    // Three consumers start on edge-1 (listed first, no randomizing), one on edge-2.
    let on_edge1 = mesh.failover_url(&["edge-1", "edge-2"], "randomize=false");
    let on_edge2 = mesh.failover_url(&["edge-2", "edge-1"], "randomize=false");
    traffic.consumers(&on_edge1, 3).await;
    traffic.consumers(&on_edge2, 1).await;
    for c in &traffic.consumers[..3] {
        assert_eq!(c.server_info().group, "edge-1");
    }
    mesh.wait_until("the hub sees demand from both edges", |m| {
        m.member("hub").status().is_some_and(|s| {
            s.connectors.len() == 2 && s.connectors.iter().all(|c| c.up && c.remote_demand > 0)
        })
    });

    traffic.produce(&mesh.member("hub").url(), 600).await;
    mesh.wait_until("edge-1's consumers have had messages", |_| {
        traffic.flowing(3)
    });

    // A write without the token is refused and changes nothing.
    let text = std::fs::read_to_string(&mesh.topology).expect("topology");
    let no_token = mesh.dir.path().join("no-token.toml");
    std::fs::write(&no_token, text.replace(&admin_section(), "")).expect("write");
    let refused = run(meshmq()
        .args(["drain", "--timeout", "5s"])
        .arg(&no_token)
        .arg("edge-1"));
    assert!(
        !refused.status.success() && refused.stderr.contains("no [admin] token"),
        "{refused:?}"
    );
    let unauthenticated = common::http_post(mesh.member("edge-1").admin, "/drain", None);
    assert_eq!(unauthenticated.0, 401, "{unauthenticated:?}");
    let wrong = common::http_post(
        mesh.member("edge-1").admin,
        "/drain",
        Some("drain-test-admin-token-9999"),
    );
    assert_eq!(wrong.0, 401, "{wrong:?}");
    assert!(mesh.member("edge-1").status().unwrap().drain.is_none());

    let out = drain(&mesh, "edge-1").await;
    assert!(out.contains("edge-1 has stopped"), "{out}");
    assert!(refuses_connections(mesh.member("edge-1").admin));
    assert!(refuses_connections(mesh.member("edge-1").listen));

    let verdict = traffic.stop("drained edge").await;
    verdict.assert_exactly_once();
    for (i, c) in traffic.consumers.iter().enumerate() {
        let (reconnects, moves) = c.reconnects();
        if i < 3 {
            // edge-1 knows the whole mesh (the hub, and edge-2 through it): its clients move
            // to another group, spread by load.
            let group = c.server_info().group;
            assert!(
                group == "hub" || group == "edge-2",
                "c{i} is on {group} ({})",
                c.current_url()
            );
            assert_eq!((reconnects, moves), (1, 1), "c{i} moved once, on request");
        } else {
            assert_eq!(reconnects, 0, "c3 stayed where it was");
        }
    }
    let labelled = traffic.labelled();
    let labelled: Vec<(&str, &Client)> = labelled.iter().map(|(l, c)| (l.as_str(), *c)).collect();
    assert_no_client_error(&labelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_master_hands_its_group_to_the_standby_and_loses_nothing() {
    let mut mesh = MeshBuilder::new()
        .group("edge", 2, LISTENER)
        .section(&admin_section())
        .build();
    mesh.start("edgea");
    mesh.wait_until("edgea serves", |m| m.member("edgea").ready());
    mesh.start("edgeb");
    mesh.wait_until("edgeb stands by", |m| {
        m.member("edgeb")
            .status()
            .is_some_and(|s| s.role == "slave")
    });

    let url = mesh.failover_url(
        &["edgea", "edgeb"],
        "randomize=false&initialReconnectDelay=50",
    );
    let mut traffic = QueueTraffic::new(QUEUE);
    traffic.consumers(&url, 3).await;
    traffic.produce(&url, 600).await;
    mesh.wait_until("the consumers have had messages", |_| traffic.flowing(3));

    let out = drain(&mesh, "edgea").await;
    assert!(out.contains("edgea has stopped"), "{out}");
    assert!(out.contains("group edge: edgeb serves now"), "{out}");
    assert!(refuses_connections(mesh.member("edgea").admin));

    // Keep producing for a moment on the new master, then check the history.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let verdict = traffic.stop("handed-over master").await;
    verdict.assert_exactly_once();
    let labelled = traffic.labelled();
    for (label, c) in &labelled {
        assert_eq!(c.server_info().member, "edgeb", "{label}");
        assert_eq!(c.reconnects().0, 1, "{label} reconnected once");
    }
    let labelled: Vec<(&str, &Client)> = labelled.iter().map(|(l, c)| (l.as_str(), *c)).collect();
    assert_no_client_error(&labelled);
}
