//! `meshmq apply --rolling` applies a change only a restart can take (here `[broker]
//! heartbeat`, which each connection agrees on when it opens) by restarting the members it
//! concerns one at a time, each on its own (`POST /restart` on its admin port): the standby
//! of a file-lock pair first, then the master, which hands the group over to it. A producer
//! and consumers on a failover URL carry on throughout: every message sent during the roll is
//! delivered (duplicates only flagged redeliveries, counted), no client sees an error; the new
//! key is in effect afterwards and the members' processes are new runs of the same PIDs.
//! Without `--rolling`, `apply` restarts nothing and says who still needs a restart; a
//! `/restart` without the admin token is refused and restarts nothing.

use crate::common;

use std::time::{Duration, Instant};

use common::history::QueueTraffic;
use common::mesh::MeshBuilder;
use common::{http_post, meshmq, run, RawConn};

const QUEUE: &str = "queue://roll.orders";
const TOKEN: &str = "rolling-test-admin-token-0123";
const LISTENER: &str = "update_cluster_clients = true";

/// The heartbeat a member's native listener offers a new connection, in ms.
fn offered_heartbeat(addr: std::net::SocketAddr) -> u32 {
    RawConn::open(addr).handshake(1000).heartbeat_ms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_apply_restarts_a_pair_one_member_at_a_time_and_loses_nothing() {
    let mut mesh = MeshBuilder::new()
        .group("hub", 2, LISTENER)
        .section(&format!("[admin]\ntoken = \"{TOKEN}\"\n"))
        .build();
    mesh.start("huba");
    mesh.wait_until("huba serves", |m| m.member("huba").ready());
    mesh.start("hubb");
    mesh.wait_until("hubb stands by", |m| {
        m.member("hubb").status().is_some_and(|s| s.role == "slave")
    });
    let pids = (
        mesh.member_mut("huba").pid().expect("huba runs"),
        mesh.member_mut("hubb").pid().expect("hubb runs"),
    );
    let (a_admin, a_listen) = (mesh.member("huba").admin, mesh.member("huba").listen);
    assert_eq!(offered_heartbeat(a_listen), 10_000, "the default heartbeat");

    // A restart without the token, or with a wrong one, is refused and restarts nothing.
    for token in [None, Some("not-the-admin-token-at-all")] {
        let (code, answer) = http_post(a_admin, "/restart", token);
        assert_eq!(code, 401, "{answer}");
    }

    // The change needs every member restarted; a plain apply restarts nobody and says so.
    let original = std::fs::read_to_string(&mesh.topology).expect("topology");
    let text = original.replacen("[broker]\n", "[broker]\nheartbeat = \"3s\"\n", 1);
    assert_ne!(text, original);
    let rolled = mesh.dir.path().join("rolled.toml");
    std::fs::write(&rolled, &text).expect("write");
    let plain = run(meshmq().arg("apply").arg(&rolled));
    assert!(plain.status.success(), "{}\n{}", plain.stdout, plain.stderr);
    assert!(
        plain
            .stdout
            .contains("still to restart for the changes above: huba, hubb")
            && plain.stdout.contains("meshmq apply --rolling"),
        "{}",
        plain.stdout
    );
    assert_eq!(offered_heartbeat(a_listen), 10_000, "nothing restarted yet");

    // Load on a failover URL over both members.
    let url = mesh.failover_url(
        &["huba", "hubb"],
        "randomize=false&initialReconnectDelay=50",
    );
    let mut traffic = QueueTraffic::new(QUEUE);
    traffic.consumers(&url, 3).await;
    traffic.produce(&url, 2000).await;
    mesh.wait_until("the consumers have had messages", |_| traffic.flowing(3));

    let rolling = Instant::now();
    let out = {
        let rolled = rolled.clone();
        tokio::task::spawn_blocking(move || {
            run(meshmq()
                .arg("apply")
                .arg("--rolling")
                .args(["--member-timeout", "40s"])
                .arg(&rolled))
        })
        .await
        .expect("apply --rolling")
    };
    let took = rolling.elapsed();
    println!("apply --rolling took {took:?}:\n{}", out.stdout);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let (b_at, a_at) = (
        out.stdout.find("restarting hubb").expect("hubb restarted"),
        out.stdout.find("restarting huba").expect("huba restarted"),
    );
    assert!(b_at < a_at, "the standby goes first:\n{}", out.stdout);
    assert!(
        out.stdout
            .contains("every member to restart runs the new file: hubb, huba"),
        "{}",
        out.stdout
    );

    // Keep producing a moment on the new master, then check the history.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let verdict = traffic.stop("rolling restart under load").await;
    verdict.assert_ok();
    for (label, c) in traffic.labelled() {
        assert!(!c.is_closed(), "{label} closed");
        let errors = c.take_errors();
        assert!(errors.is_empty(), "{label} saw errors: {errors:?}");
    }

    // The new key is in effect on the master now serving, both members run the file with
    // nothing pending, as new runs of the same processes; each saved the file it runs.
    let master = mesh.master("hub").expect("the group serves").listen;
    assert_eq!(offered_heartbeat(master), 3_000);
    for name in ["huba", "hubb"] {
        let m = mesh.member(name);
        let s = m.status().expect("status");
        // Up since the roll began: a new run (the first one started before it).
        assert!(
            s.uptime_seconds < rolling.elapsed().as_secs_f64(),
            "{name} did not restart: up {}s",
            s.uptime_seconds
        );
        let (code, body) = common::http_get(m.admin, "/topology").expect("topology");
        assert_eq!(code, 200);
        let running: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(running["text"], text.as_str(), "{name}");
        assert_eq!(running["restart_pending"], serde_json::json!([]), "{name}");
    }
    assert_eq!(
        std::fs::read_to_string(&mesh.topology).expect("topology"),
        text,
        "the members saved the file they run where they read it"
    );
    assert_eq!(mesh.member_mut("huba").pid(), Some(pids.0));
    assert_eq!(mesh.member_mut("hubb").pid(), Some(pids.1));
}
