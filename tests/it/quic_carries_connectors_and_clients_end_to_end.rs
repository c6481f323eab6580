//! QUIC end to end: a connector with `transport = "quic"` links a hub and an edge over the
//! edge's `quic://` listener, and Rust clients trusting the development CA send on the hub and
//! receive on the edge over `quic://` — every message once; a client without that CA cannot
//! connect. The shipped `topologies/quic.toml` is valid once `meshmq certs` has made its
//! certificates, as its header says.

use crate::common;

use common::history::{consume_individually, send_numbered, History};
use common::{meshmq, run, wait_until, Mesh, MeshConfig};
use meshmq::client::{Client, ClientOptions, ErrorKind};
use tokio_util::sync::CancellationToken;

const DEST: &str = "queue://over-quic";
const TOTAL: usize = 2000;

fn trusting(ca: std::path::PathBuf) -> ClientOptions {
    ClientOptions {
        tls_ca: Some(ca),
        ..ClientOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quic_connector_and_quic_clients_carry_every_message_once() {
    let mesh = Mesh::start(
        &MeshConfig::new()
            .group("hub")
            .group("edge")
            .quic("hub")
            .quic("edge")
            .connector(
                "hub",
                "edge",
                &["transport = \"quic\"", "tls_ca = \"certs/ca.pem\""],
            ),
    );
    let ca = mesh.dir().join("certs/ca.pem");
    let (hub_url, edge_url) = (mesh.quic_url("hub"), mesh.quic_url("edge"));
    let quic_connections = |group: &str| {
        mesh.member(group)
            .status()
            .listeners
            .iter()
            .filter(|l| l.url.starts_with("quic://"))
            .map(|l| l.connections)
            .sum::<u64>()
    };
    assert_eq!(quic_connections("edge"), 1, "the bridge came in over QUIC");

    let (history, stop) = (History::new(), CancellationToken::new());
    let consumer = Client::connect(&edge_url, trusting(ca.clone()))
        .await
        .expect("a client trusting the CA connects over QUIC");
    consume_individually(&consumer, DEST, &history, "edge", stop.clone()).await;
    wait_until("the hub knows the edge consumer", || {
        mesh.member("hub").connector("hub-edge").remote_demand == 1
    });
    let producer = Client::connect(&hub_url, trusting(ca))
        .await
        .expect("connect to the hub over QUIC");
    assert_eq!(quic_connections("hub"), 1);
    send_numbered(&producer, &history, DEST, "m", 0..TOTAL, true).await;
    history.wait_all_delivered().await;
    stop.cancel();
    history.verdict().assert_exactly_once();
    assert_eq!(mesh.member("hub").connector("hub-edge").acked, TOTAL as u64);

    // Without the CA: no client configuration to trust the broker with, and with another
    // CA, a failed handshake.
    let none = Client::connect(&edge_url, ClientOptions::default())
        .await
        .expect_err("a QUIC client needs a CA");
    assert_eq!(none.kind(), ErrorKind::InvalidArgument, "{none}");
    let stranger = mesh.dir().join("stranger");
    let made = run(meshmq()
        .arg("certs")
        .arg(mesh.topology())
        .arg("--out")
        .arg(&stranger));
    assert!(made.status.success(), "{}", made.stderr);
    let refused = Client::connect(&edge_url, trusting(stranger.join("ca.pem")))
        .await
        .expect_err("a client trusting another CA cannot connect");
    assert_eq!(refused.kind(), ErrorKind::Connect, "{refused}");
}

#[test]
fn the_shipped_quic_topology_is_valid_once_its_certificates_exist() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/topologies/quic.toml");
    let copy = dir.path().join("quic.toml");
    std::fs::copy(shipped, &copy).expect("copy topologies/quic.toml");
    let text = std::fs::read_to_string(&copy).expect("read");
    assert!(
        text.contains("meshmq certs topologies/quic.toml --out topologies/certs"),
        "the header documents the one command that makes its certificates"
    );
    let made = run(meshmq()
        .arg("certs")
        .arg(&copy)
        .arg("--out")
        .arg(dir.path().join("certs")));
    assert!(made.status.success(), "{}", made.stderr);
    for member in ["hub-1", "edge-1"] {
        assert!(dir.path().join(format!("certs/{member}.pem")).exists());
    }
    let checked = run(meshmq().arg("check").arg(&copy));
    assert!(
        checked.status.success(),
        "{}\n{}",
        checked.stdout,
        checked.stderr
    );
    assert!(
        checked.stdout.contains("over quic"),
        "the summary shows the QUIC connector: {}",
        checked.stdout
    );
}
