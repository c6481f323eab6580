//! Bridges authenticate by default: a stranger who reaches a client listener and speaks the
//! bridge handshake as a real group over a real connector — without the mesh secret, or with
//! a wrong one — is refused with `Forbidden` and a close, counted in
//! `meshmq_bridges_refused_total{reason="bad_secret"}` and logged with its address, and moves
//! no message: the queue it asked for keeps every message. This holds in a mesh without users
//! (where clients are anonymous) and in one with users. In a mesh without a secret, a connector
//! without credentials is refused as `anonymous` — the real group's bridge too — unless the
//! topology says `allow_anonymous_bridges = true`.

use crate::common;

use std::time::Duration;

use common::{topology, wait_until, Broker, Mesh, MeshConfig, RawConn, MESH_SECRET};
use meshmq::client::{Client, ClientOptions, Outgoing};
use meshmq::wire::proto::{self, ErrorCode};
use meshmq::wire::{Body, Frame};

const DEST: &str = "queue://parked";
const PARKED: usize = 50;
const USER: &str = "app";
const PASSWORD: &str = "app-password";

/// The handshake of the hub's side of connector `hub-edge`, with `token` as the mesh secret.
fn hub_hello(token: &str) -> proto::BrokerInfo {
    proto::BrokerInfo {
        mesh: "test".into(),
        group: "hub".into(),
        member: "hub-1".into(),
        connector: "hub-edge".into(),
        duplex: true,
        token: token.into(),
        ..proto::BrokerInfo::default()
    }
}

fn with_users() -> String {
    topology::security(false, &[(USER, PASSWORD)])
}

async fn client(edge: &Broker, users: bool) -> Client {
    let mut options = ClientOptions::default();
    if users {
        options.username = Some(USER.into());
        options.password = Some(PASSWORD.into());
    }
    edge.client_with(options).await
}

/// Parks `PARKED` persistent messages on the edge, where nobody consumes them.
async fn park(edge: &Broker, users: bool) {
    let producer = client(edge, users).await;
    for n in 0..PARKED {
        producer
            .send_with_receipt(DEST, &Outgoing::new(format!("m-{n}")).persistent(true))
            .await
            .unwrap_or_else(|e| panic!("send m-{n}: {e}"));
    }
    assert_eq!(edge.destination(DEST).depth, PARKED as u64);
}

/// Plays a stranger: the hub's handshake with `token`, then demand for `DEST`. Returns the
/// refusal; fails the test if the edge answers with its own handshake or forwards anything.
fn stranger(edge: &Broker, token: &str) -> (proto::Error, String) {
    let mut raw = RawConn::open(edge.listen_addr());
    let local = raw.stream.local_addr().expect("local address").to_string();
    raw.send(Body::BrokerInfo(hub_hello(token)));
    // Demand right behind the handshake: a bridge let in would start forwarding at once.
    let _ = raw.try_send(Body::DemandAdd(proto::DemandAdd {
        destination: DEST.into(),
        broker_path: vec!["hub".into()],
        consumer_id: "1".into(),
        priority: 0,
        origin: "hub/1".into(),
        selector: String::new(),
    }));
    match raw.next() {
        Some(Frame {
            body: Some(Body::Error(e)),
        }) => {
            assert_eq!(raw.next(), None, "the edge closes after refusing");
            (e, local)
        }
        other => {
            panic!("a stranger's bridge with token {token:?} got {other:?} instead of a refusal")
        }
    }
}

fn refused(edge: &Broker, reason: &str) -> f64 {
    common::metric_sum(
        &edge.metrics(),
        "meshmq_bridges_refused_total",
        &[&format!("reason=\"{reason}\"")],
    )
}

async fn strangers_are_refused(users: bool) {
    let mut config =
        MeshConfig::new()
            .group("hub")
            .group("edge")
            .connector("hub", "edge", &["duplex = true"]);
    if users {
        config = config.section(&with_users());
    }
    let mesh = Mesh::start(&config);
    let edge = mesh.member("edge");
    wait_until("the real bridge is up", || edge.connector("hub-edge").up);
    park(edge, users).await;

    for (token, says) in [
        ("", "presented no mesh secret"),
        ("not-the-mesh-secret", "presented the wrong mesh secret"),
        // One character short: compared whole, not by prefix.
        (
            &MESH_SECRET[..MESH_SECRET.len() - 1],
            "presented the wrong mesh secret",
        ),
    ] {
        let (error, peer) = stranger(edge, token);
        assert_eq!(error.code, ErrorCode::Forbidden as i32, "{error:?}");
        assert!(error.message.contains(says), "{token:?}: {error:?}");
        wait_until("the refusal is logged with the stranger's address", || {
            edge.log()
                .lines()
                .any(|l| l.contains("bridge refused") && l.contains(&peer))
        });
    }
    assert_eq!(refused(edge, "bad_secret"), 3.0);
    // Give a stranger's forwards time to land, were any let through.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        edge.destination(DEST).depth,
        PARKED as u64,
        "every parked message stays where it is"
    );
    let status = edge.connector("hub-edge");
    assert!(status.up, "the real bridge is untouched: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_without_the_mesh_secret_is_refused_in_a_mesh_without_users() {
    strangers_are_refused(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_without_the_mesh_secret_is_refused_in_a_mesh_with_users() {
    strangers_are_refused(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_anonymous_bridges_are_refused_unless_allowed() {
    let config = |mesh_lines: &[&str]| {
        MeshConfig::new()
            .without_secret(mesh_lines)
            .group("hub")
            .group("edge")
            .connector("hub", "edge", &["duplex = true"])
    };
    let closed = Mesh::start_unconnected(&config(&[]));
    let edge = closed.member("edge");
    wait_until("the real hub's bridge is refused as anonymous", || {
        refused(edge, "anonymous") >= 1.0
    });
    park(edge, false).await;
    let (error, _) = stranger(edge, "");
    assert!(error.message.contains("proved nothing"), "{error:?}");
    assert!(!edge.connector("hub-edge").up);
    assert_eq!(edge.destination(DEST).depth, PARKED as u64);
    assert!(
        edge.log()
            .contains("no [mesh] secret and no credentials for this connector"),
        "the edge warns at start that its bridges will be refused"
    );
    drop(closed);

    let open = Mesh::start(&config(&["allow_anonymous_bridges = true"]));
    let edge = open.member("edge");
    wait_until("an anonymous bridge is let in", || {
        edge.connector("hub-edge").up
    });
    assert!(
        edge.log().contains("allow_anonymous_bridges = true"),
        "the edge warns at start"
    );
    assert_eq!(refused(edge, "anonymous"), 0.0);
}
