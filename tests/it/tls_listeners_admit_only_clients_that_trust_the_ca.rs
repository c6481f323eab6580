//! TLS listeners (`ssl://`, `stomp+ssl://`) serve clients that trust the development CA made by
//! `meshmq certs`, and refuse the handshake of clients that do not; with `tls_client_ca`, a
//! client must also present a certificate signed by that CA.

use crate::common_stomp;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use common_stomp::{python, Broker, Topology, GUARD, MEMBER};
use meshmq::wire::{self, proto, Body, Decoded, MessageRef};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

const SERVER_FILES: &str = "tls_cert = \"certs/m1.pem\"\ntls_key = \"certs/m1.key\"\n";
const CLIENT_CA: &str = "tls_client_ca = \"certs/ca.pem\"\n";

struct Pki {
    broker: Broker,
    /// The CA the broker's certificates come from.
    ca: PathBuf,
    /// A certificate and key signed by it (a client may present them).
    cert: PathBuf,
    key: PathBuf,
    /// Another development CA, which signed nothing the broker holds.
    stranger_ca: PathBuf,
}

/// Runs the real `meshmq certs` on the topology, writing into `out`.
fn meshmq_certs(topology: &Path, out: &Path) {
    let result = Command::new(env!("CARGO_BIN_EXE_meshmq"))
        .arg("certs")
        .arg(topology)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run meshmq certs");
    assert!(
        result.status.success(),
        "meshmq certs failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    let listed = String::from_utf8_lossy(&result.stdout);
    for file in ["ca.pem", "ca.key", "m1.pem", "m1.key"] {
        assert!(
            listed.lines().any(|l| l.ends_with(file)) && out.join(file).exists(),
            "meshmq certs should write and list {file}: {listed}"
        );
    }
}

fn start() -> Pki {
    let mut topo = Topology::new()
        .listener("ssl", "ssl", SERVER_FILES)
        .listener("stomp_ssl", "stomp+ssl", SERVER_FILES)
        .listener("ssl_mutual", "ssl", &format!("{SERVER_FILES}{CLIENT_CA}"))
        .listener(
            "stomp_ssl_mutual",
            "stomp+ssl",
            &format!("{SERVER_FILES}{CLIENT_CA}"),
        );
    let file = topo.write();
    let certs = topo.dir().join("certs");
    meshmq_certs(&file, &certs);
    let stranger = topo.dir().join("stranger");
    meshmq_certs(&file, &stranger);
    Pki {
        broker: topo.start(),
        ca: certs.join("ca.pem"),
        cert: certs.join(format!("{MEMBER}.pem")),
        key: certs.join(format!("{MEMBER}.key")),
        stranger_ca: stranger.join("ca.pem"),
    }
}

/// The next frame other than a heartbeat; an Error frame or a failure is the error text.
async fn next_frame<S: AsyncReadExt + Unpin>(
    tls: &mut S,
    buf: &mut BytesMut,
) -> Result<Body, String> {
    loop {
        match wire::decode(buf, wire::DEFAULT_MAX_FRAME_SIZE) {
            Ok(Decoded::Frame(f)) => match f.body {
                Some(Body::Error(e)) => return Err(format!("broker error: {}", e.message)),
                Some(Body::Heartbeat(_)) => continue,
                Some(body) => return Ok(body),
                None => return Err("an empty frame".into()),
            },
            Ok(Decoded::NeedMore(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
        let n = tls.read_buf(buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the broker closed the connection".into());
        }
    }
}

/// A minimal native client over tokio-rustls: connects, subscribes, sends one message to
/// itself and returns its body, or the first failure (handshake included) as text.
async fn native_round_trip(addr: SocketAddr, config: ClientConfig) -> Result<Bytes, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let mut out = BytesMut::new();
    wire::encode(
        &wire::frame(Body::Connect(proto::Connect {
            protocol_version: wire::PROTOCOL_VERSION,
            client_name: "tls-test".into(),
            ..proto::Connect::default()
        })),
        &mut out,
    );
    wire::encode(
        &wire::frame(Body::Subscribe(proto::Subscribe {
            subscription: 1,
            destination: "queue://tls".into(),
            receipt: 1,
            ..proto::Subscribe::default()
        })),
        &mut out,
    );
    wire::encode_send(
        &MessageRef {
            destination: "queue://tls",
            body: b"over-tls",
            priority: 4,
            ..MessageRef::default()
        },
        2,
        &mut out,
    );
    tls.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::new();
    loop {
        match next_frame(&mut tls, &mut buf).await? {
            Body::Deliver(d) => return Ok(d.body),
            Body::Connected(_) | Body::Receipt(_) => {}
            _ => return Err("an unexpected frame".into()),
        }
    }
}

fn native(addr: SocketAddr, config: ClientConfig) -> Result<Bytes, String> {
    common_stomp::runtime().block_on(async {
        tokio::time::timeout(GUARD, native_round_trip(addr, config))
            .await
            .unwrap_or_else(|_| Err(format!("hung for {GUARD:?}")))
    })
}

fn stomp_py(port: u16, ca: &Path, identity: Option<(&Path, &Path)>) -> serde_json::Value {
    let mut args = vec![port.to_string(), ca.display().to_string()];
    if let Some((cert, key)) = identity {
        args.push(cert.display().to_string());
        args.push(key.display().to_string());
    }
    python("tls_client.py", &args)
}

#[test]
fn clients_trusting_the_generated_ca_exchange_messages_over_tls() {
    let pki = start();
    let trusting = meshmq::security::client_config(&pki.ca).expect("client config");
    assert_eq!(
        native(pki.broker.addr("ssl"), trusting),
        Ok(Bytes::from_static(b"over-tls"))
    );
    let r = stomp_py(pki.broker.port("stomp_ssl"), &pki.ca, None);
    assert_eq!(r, json!({"connected": true, "body": "over-tls"}));
}

#[test]
fn a_client_that_does_not_trust_the_ca_fails_the_handshake() {
    let pki = start();
    let distrusting = meshmq::security::client_config(&pki.stranger_ca).expect("client config");
    let native_result = native(pki.broker.addr("ssl"), distrusting);
    let err = native_result.expect_err("a client trusting another CA must not get in");
    // The stranger CA has the same name as the real one: its signature is what fails.
    assert!(
        err.starts_with("handshake: invalid peer certificate"),
        "the handshake itself fails on the broker's certificate: {err}"
    );
    let r = stomp_py(pki.broker.port("stomp_ssl"), &pki.stranger_ca, None);
    assert_eq!(r["connected"], json!(false), "{r}");
    assert!(
        r["error"].as_str().unwrap_or("").contains("ConnectFailed"),
        "stomp.py cannot connect: {r}"
    );
    assert!(
        pki.broker.metric(
            "meshmq_connections_refused_total",
            &[("reason", "tls_handshake")]
        ) >= 2.0,
        "failed handshakes are counted"
    );
}

#[test]
fn tls_client_ca_requires_a_client_certificate_signed_by_it() {
    let pki = start();
    // Without a client certificate: refused, on both protocols.
    let anonymous = meshmq::security::client_config(&pki.ca).expect("client config");
    let err = native(pki.broker.addr("ssl_mutual"), anonymous)
        .expect_err("a client without a certificate must not get in");
    assert!(
        err.to_lowercase().contains("certificate"),
        "the refusal is about the missing certificate: {err}"
    );
    let refused = |b: &Broker| {
        b.metric(
            "meshmq_connections_refused_total",
            &[("reason", "tls_handshake")],
        )
    };
    let before = refused(&pki.broker);
    let r = stomp_py(pki.broker.port("stomp_ssl_mutual"), &pki.ca, None);
    assert_eq!(r["connected"], json!(false), "{r}");
    assert_eq!(
        refused(&pki.broker),
        before + 1.0,
        "the broker itself refused the stomp.py handshake ({r})"
    );

    // With the member certificate the CA signed: served.
    let identified = meshmq::security::client_config_with_identity(&pki.ca, &pki.cert, &pki.key)
        .expect("client config with identity");
    assert_eq!(
        native(pki.broker.addr("ssl_mutual"), identified),
        Ok(Bytes::from_static(b"over-tls"))
    );
    let r = stomp_py(
        pki.broker.port("stomp_ssl_mutual"),
        &pki.ca,
        Some((&pki.cert, &pki.key)),
    );
    assert_eq!(r, json!({"connected": true, "body": "over-tls"}));
    assert!(
        pki.broker.metric(
            "meshmq_connections_refused_total",
            &[("reason", "tls_handshake")]
        ) >= 2.0,
        "refused handshakes are counted"
    );
}
