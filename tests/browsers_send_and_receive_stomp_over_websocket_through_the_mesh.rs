//! A real browser speaks STOMP over WebSocket through the mesh: headless Chromium (Debian's,
//! driven through chromedriver by selenium) loads a page whose stomp.js (@stomp/stompjs, as
//! browsers use it) subscribes on the edge group's `ws://` listener and publishes on the hub
//! group's; every message arrives once, in order, across the connector, with the `v12.stomp`
//! subprotocol and STOMP 1.2 negotiated. The listener also refuses an upgrade that asks only for
//! subprotocols it does not serve.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{http_get, spawn_broker, write_file, ChildGuard, GUARD};
use meshmq::server::admin::MemberStatus;
use serde_json::{json, Value};

/// This test's own loopback addresses, one per group.
const HUB_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 30, 1);
const EDGE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 30, 2);

fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("bind {ip}:0: {e}"))
}

struct Member {
    admin: SocketAddr,
    ws: SocketAddr,
    _proc: ChildGuard,
}

impl Member {
    fn status(&self) -> Option<MemberStatus> {
        match http_get(self.admin, "/status") {
            Ok((200, body)) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + GUARD;
    while !cond() {
        assert!(Instant::now() < deadline, "gave up waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A hub and an edge, each with a native and a `ws://` listener, joined by a duplex connector.
fn mesh(dir: &std::path::Path) -> (Member, Member) {
    let place = |ip: Ipv4Addr| {
        (
            SocketAddr::from((ip, free_port(ip))),
            SocketAddr::from((ip, free_port(ip))),
            SocketAddr::from((ip, free_port(ip))),
        )
    };
    let (hub_tcp, hub_admin, hub_ws) = place(HUB_IP);
    let (edge_tcp, edge_admin, edge_ws) = place(EDGE_IP);
    let mut text = common::mesh_table("ws") + "\n[broker]\n";
    for (group, tcp, admin, ws) in [
        ("hub", hub_tcp, hub_admin, hub_ws),
        ("edge", edge_tcp, edge_admin, edge_ws),
    ] {
        text.push_str(&format!(
            "\n[[group]]\nname = \"{group}\"\n[[group.member]]\nname = \"{group}-1\"\nadmin = \"{admin}\"\n\
             data_dir = \"{}\"\n[[group.member.listener]]\nurl = \"tcp://{tcp}\"\n\
             [[group.member.listener]]\nurl = \"ws://{ws}\"\n",
            dir.join(group).display()
        ));
    }
    text.push_str(
        "\n[[connector]]\nfrom = \"hub\"\nto = \"edge\"\nduplex = true\n\
         reconnect_initial_delay = \"100ms\"\nreconnect_max_delay = \"1s\"\n",
    );
    let topology = write_file(dir, "topology.toml", &text);
    let start = |member: &str, admin, ws| Member {
        admin,
        ws,
        _proc: spawn_broker(
            &topology,
            member,
            &dir.join(format!("{member}.log")),
            &[("MESHMQ_LOG", "info")],
        ),
    };
    let hub = start("hub-1", hub_admin, hub_ws);
    let edge = start("edge-1", edge_admin, edge_ws);
    wait_until("both members serve and the connector is up", || {
        [&hub, &edge].iter().all(|m| {
            m.status().is_some_and(|s| {
                s.ready && !s.connectors.is_empty() && s.connectors.iter().all(|c| c.up)
            })
        })
    });
    (hub, edge)
}

#[test]
fn stomp_js_in_chromium_sends_on_the_hub_and_receives_on_the_edge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hub, edge) = mesh(dir.path());
    let count = 50;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ws_browser/exchange.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(format!("ws://{}", hub.ws))
        .arg(format!("ws://{}", edge.ws))
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
    let hub_status = hub.status().expect("hub status");
    assert_eq!(
        hub_status.connectors[0].forwarded, count as u64,
        "every message crossed the connector once"
    );
}

#[test]
fn an_upgrade_asking_only_for_unserved_subprotocols_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_hub, edge) = mesh(dir.path());
    let mut s = TcpStream::connect(edge.ws).expect("connect");
    s.set_read_timeout(Some(GUARD)).expect("timeout");
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: xmpp, wamp\r\n\r\n",
        edge.ws
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
