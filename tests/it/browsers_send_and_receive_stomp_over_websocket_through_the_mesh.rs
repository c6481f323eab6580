//! A real browser speaks STOMP over WebSocket through the mesh: headless Chromium (Debian's,
//! driven through chromedriver by selenium) loads a page whose stomp.js (@stomp/stompjs, as
//! browsers use it) subscribes on the edge group's `ws://` listener and publishes on the hub
//! group's; every message arrives once, in order, across the connector, with the `v12.stomp`
//! subprotocol and STOMP 1.2 negotiated; chromedriver and Chromium end with the script and leave
//! no browser profile behind. The listener also refuses an upgrade that asks only for
//! subprotocols it does not serve.

use crate::common;
use crate::common_stomp;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};

use common::ws_mesh::mesh;
use common::GUARD;
use common_stomp::python_in;
use serde_json::json;

/// This test's own loopback addresses, one per group.
const HUB_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 30, 1);
const EDGE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 30, 2);

#[test]
fn stomp_js_in_chromium_sends_on_the_hub_and_receives_on_the_edge() {
    let mesh = mesh(HUB_IP, EDGE_IP);
    let (hub_ws, edge_ws) = (mesh.ws_addr("hub"), mesh.ws_addr("edge"));
    let count = 50;
    // Fails unless chromedriver and Chromium ended with the script and left no profile.
    let result = python_in(
        "ws_browser",
        "exchange.py",
        &[
            format!("ws://{hub_ws}"),
            format!("ws://{edge_ws}"),
            "/queue/browser".to_string(),
            count.to_string(),
        ],
    );
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
