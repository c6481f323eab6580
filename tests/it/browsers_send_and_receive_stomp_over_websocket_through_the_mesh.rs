//! A real browser speaks STOMP over WebSocket through the mesh: headless Chromium (Debian's,
//! driven through chromedriver by selenium) loads a page whose stomp.js (@stomp/stompjs, as
//! browsers use it) subscribes on the edge group's `ws://` listener and publishes on the hub
//! group's; every message arrives once, in order, across the connector, with the `v12.stomp`
//! subprotocol and STOMP 1.2 negotiated. The listener also refuses an upgrade that asks only for
//! subprotocols it does not serve.

use crate::common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::process::Command;

use common::ws_mesh::mesh;
use common::GUARD;
use serde_json::{json, Value};

/// This test's own loopback addresses, one per group.
const HUB_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 30, 1);
const EDGE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 30, 2);

#[test]
fn stomp_js_in_chromium_sends_on_the_hub_and_receives_on_the_edge() {
    let mesh = mesh(HUB_IP, EDGE_IP);
    let (hub_ws, edge_ws) = (mesh.ws_addr("hub"), mesh.ws_addr("edge"));
    let count = 50;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ws_browser/exchange.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(format!("ws://{hub_ws}"))
        .arg(format!("ws://{edge_ws}"))
        .arg("/queue/browser")
        .arg(count.to_string())
        .output()
        .expect("python3 runs (make test-deps installs selenium, chromium and chromium-driver)");
    assert!(
        out.status.success(),
        "the browser script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the browser script printed {:?} ({e})",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(result["errors"], json!([]), "{result}");
    let want: Vec<String> = (0..count).map(|i| format!("m{i}")).collect();
    assert_eq!(result["bodies"], json!(want));
    assert_eq!(
        result["protocols"],
        json!({"consumer": "v12.stomp", "producer": "v12.stomp"})
    );
    assert_eq!(
        result["versions"],
        json!({"consumer": "1.2", "producer": "1.2"})
    );
    let hub_status = mesh.member("hub").status();
    assert_eq!(
        hub_status.connectors[0].forwarded, count as u64,
        "every message crossed the connector once"
    );
}

#[test]
fn an_upgrade_asking_only_for_unserved_subprotocols_is_refused() {
    let mesh = mesh(HUB_IP, EDGE_IP);
    let edge_ws = mesh.ws_addr("edge");
    let mut s = TcpStream::connect(edge_ws).expect("connect");
    s.set_read_timeout(Some(GUARD)).expect("timeout");
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: xmpp, wamp\r\n\r\n",
        edge_ws
    )
    .expect("write");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 400"),
        "not refused: {answer:?}"
    );
    assert!(answer.contains("v12.stomp"), "{answer:?}");
}
