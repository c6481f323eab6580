//! `meshmq apply` refuses, before anything changes, a connector that would dial its own group
//! or duplicate another (S8, NetworkLoopBackTest): a `uri` that reaches the dialling group's
//! own listener — as `localhost`, as `127.0.0.1`, or as the group's own address, its listener
//! binding every address — alone or beside a good URI of the target; a second connector
//! between the same two groups; and a connector back over a duplex one. Each is refused with
//! the key and the reason, every member keeps running the file it had, the bridge is never
//! re-dialled, and messages flow over it as before. A `uri` naming the target's own listener
//! is taken (the bridge re-dials through it and carries messages on).

use crate::common;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use common::history::{send_numbered, History};
use common::proxy::ProxyMode;
use common::topology::Topology;
use common::{apply, meshmq, run, wait_until, Mesh, MeshConfig};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "self-connector-admin-token-0123";
const DEST: &str = "queue://self.check";

fn running_text(mesh: &Mesh, group: &str) -> String {
    let (code, body) =
        common::http_get(mesh.member(group).admin(), "/topology").expect("GET /topology");
    assert_eq!(code, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    json["text"].as_str().expect("the running text").to_string()
}

/// The started file with the connector hub → edge rewritten to dial `uri`.
fn with_uri(mesh: &Mesh, uri: &str) -> Topology {
    mesh.written()
        .clone()
        .without_connector("hub", "edge")
        .connector(
            "hub",
            "edge",
            &["duplex = true", &format!("uri = \"{uri}\"")],
        )
}

/// Sends `n` numbered messages on the hub and waits until the edge consumer has them all.
async fn carries(mesh: &Mesh, history: &History, prefix: &str) {
    let producer = mesh.member("hub").client().await;
    send_numbered(&producer, history, DEST, prefix, 0..100, true).await;
    history.wait_all_delivered().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectors_to_their_own_group_or_doubled_are_refused_and_change_nothing() {
    // The hub's native listener binds every address (the harness does that for a group
    // behind a proxy; nothing dials the hub, so the proxy carries nothing): its own address,
    // 127.0.0.1 and localhost all reach it.
    let mesh = Mesh::start(
        &MeshConfig::new()
            .group("hub")
            .group("edge")
            .at("hub", Ipv4Addr::new(127, 0, 70, 11))
            .at("edge", Ipv4Addr::new(127, 0, 70, 12))
            .behind_proxy("hub", ProxyMode::Forward)
            .connector("hub", "edge", &["duplex = true"])
            .section(&format!("[admin]\ntoken = \"{TOKEN}\"\n")),
    );
    let (hub, edge) = (mesh.member("hub"), mesh.member("edge"));
    let own_port = hub.listen_addr().port();
    let edge_uri = format!("tcp://{}", edge.listen_addr());
    let (history, stop) = (History::new(), CancellationToken::new());
    let _consumer = mesh.edge_consumer(DEST, &history, &stop).await;
    carries(&mesh, &history, "before").await;
    let files = ["hub", "edge"].map(|g| running_text(&mesh, g));
    let reconnects = hub.connector("hub-edge").reconnects;

    let self_uris = [
        format!("tcp://localhost:{own_port}"),
        format!("tcp://127.0.0.1:{own_port}"),
        format!("tcp://127.0.70.11:{own_port}"),
        format!("failover:({edge_uri},tcp://localhost:{own_port})?randomize=false"),
    ];
    let mut refused: Vec<(String, PathBuf, &str)> = self_uris
        .iter()
        .enumerate()
        .map(|(i, uri)| {
            let file = with_uri(&mesh, uri).write(mesh.dir(), &format!("self-{i}.toml"));
            (uri.clone(), file, "the connector would dial itself")
        })
        .collect();
    refused.push((
        "a second connector hub → edge".into(),
        mesh.written()
            .clone()
            .connector("hub", "edge", &["name = \"hub-edge-again\""])
            .write(mesh.dir(), "twice.toml"),
        "links hub to edge, like connector[hub-edge]",
    ));
    refused.push((
        "a connector edge → hub beside the duplex hub → edge".into(),
        mesh.written()
            .clone()
            .connector("edge", "hub", &[])
            .write(mesh.dir(), "back.toml"),
        "a duplex connector already forwards both ways",
    ));

    for (i, (what, file, reason)) in refused.iter().enumerate() {
        let out = run(meshmq().arg("apply").arg(file));
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what}: applied?\n{}\n{}",
            out.stdout,
            out.stderr
        );
        assert!(
            out.stderr.contains("nothing was changed") && out.stderr.contains(reason),
            "{what}: the refusal does not say {reason:?}:\n{}",
            out.stderr
        );
        eprintln!("{what}: {}", out.stderr.trim());
        for (group, before) in ["hub", "edge"].iter().zip(&files) {
            assert_eq!(
                &running_text(&mesh, group),
                before,
                "{what}: {group} runs another file"
            );
        }
        carries(&mesh, &history, &format!("after{i}")).await;
    }
    let status = hub.connector("hub-edge");
    assert!(status.up, "{status:?}");
    assert_eq!(
        status.reconnects, reconnects,
        "a refused file re-dialled the bridge"
    );

    // The target's own listener is a good uri: taken, and the bridge carries on through it.
    let good = with_uri(&mesh, &edge_uri).write(mesh.dir(), "good.toml");
    let out = apply(&good);
    eprintln!("{out}");
    assert_ne!(
        running_text(&mesh, "hub"),
        files[0],
        "the hub kept its file"
    );
    wait_until("the connector is up through its uri", || {
        hub.connector("hub-edge").up
    });
    carries(&mesh, &history, "through").await;
    stop.cancel();
    history.verdict().assert_exactly_once();
}
