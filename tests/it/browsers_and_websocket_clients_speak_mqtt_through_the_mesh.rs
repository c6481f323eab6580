//! Real MQTT clients over WebSocket: in headless Chromium (Debian's, driven by selenium), a page
//! whose mqtt.js (npm's `mqtt`, MQTT 3.1.1 and 5) is on the edge group's `ws://` listener
//! meets stomp.js on the hub group's, across the connector both ways — every message once, in
//! order; and paho-mqtt over `wss://`, and over `mqtt+ssl://`, publishes and receives when it
//! trusts the CA `meshmq certs` made, while a client that does not is refused in the TLS
//! handshake.

use crate::common;
use crate::common_stomp;

use std::net::Ipv4Addr;
use std::process::Command;

use common::ws_mesh::mesh;
use common_stomp::{python_in, Topology};
use serde_json::json;

/// This test's own loopback addresses, one per group.
const HUB_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 20, 1);
const EDGE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 20, 2);

#[test]
fn mqtt_js_in_chromium_meets_stomp_js_across_the_connector_both_ways() {
    let mesh = mesh(HUB_IP, EDGE_IP);
    let (hub_ws, edge_ws) = (mesh.ws_addr("hub"), mesh.ws_addr("edge"));
    let count = 30;
    for version in [4, 5] {
        // Fails unless chromedriver and Chromium ended with the script and left no profile.
        let result = python_in(
            "ws_browser",
            "meet.py",
            &[
                format!("ws://{hub_ws}"),
                format!("ws://{edge_ws}"),
                count.to_string(),
                version.to_string(),
            ],
        );
        assert_eq!(
            result["errors"],
            json!([]),
            "MQTT level {version}: {result}"
        );
        assert_eq!(
            result["granted"],
            json!([1]),
            "MQTT level {version}: {result}"
        );
        let sent: Vec<String> = (0..count).map(|i| format!("m{i}")).collect();
        let answers: Vec<String> = sent.iter().map(|m| format!("re-{m}")).collect();
        assert_eq!(
            result["mqtt"],
            json!(sent),
            "MQTT level {version}: mqtt.js on the edge got STOMP's messages once, in order"
        );
        assert!(
            result["mqttTopics"]
                .as_array()
                .is_some_and(|t| t.iter().all(|t| t == "sensors/web/temp")),
            "MQTT level {version}: on the MQTT topic name: {result}"
        );
        assert_eq!(
            result["stomp"],
            json!(answers),
            "MQTT level {version}: stomp.js on the hub got mqtt.js's answers once, in order"
        );
    }
}

const SERVER_FILES: &str = "tls_cert = \"certs/m1.pem\"\ntls_key = \"certs/m1.key\"\n";

#[test]
fn paho_over_wss_works_with_the_meshmq_ca_and_strangers_are_refused() {
    paho_over_tls("wss", "websockets");
}

#[test]
fn paho_over_mqtt_ssl_works_with_the_meshmq_ca_and_strangers_are_refused() {
    paho_over_tls("mqtt+ssl", "tcp");
}

/// paho-mqtt (`transport`) on a `scheme` listener with the certificates `meshmq certs` made.
fn paho_over_tls(scheme: &str, transport: &str) {
    let mut topo = Topology::new().listener("tls", scheme, SERVER_FILES);
    let file = topo.write();
    let certs = topo.dir().join("certs");
    let out = Command::new(env!("CARGO_BIN_EXE_meshmq"))
        .arg("certs")
        .arg(&file)
        .arg("--out")
        .arg(&certs)
        .output()
        .expect("run meshmq certs");
    assert!(
        out.status.success(),
        "meshmq certs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let broker = topo.start();
    let n = 20;
    let r = python_in(
        "mqtt_py",
        "paho_wss.py",
        &[
            broker.port("tls").to_string(),
            certs.join("ca.pem").display().to_string(),
            n.to_string(),
            transport.to_string(),
        ],
    );
    let want: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
    assert_eq!(r["311"], json!(want), "MQTT 3.1.1 over {scheme}: {r}");
    assert_eq!(r["5"], json!(want), "MQTT 5 over {scheme}: {r}");
    assert!(
        r["stranger"]
            .as_str()
            .is_some_and(|s| s.starts_with("refused")),
        "a client that does not trust the CA is refused: {r}"
    );
}
