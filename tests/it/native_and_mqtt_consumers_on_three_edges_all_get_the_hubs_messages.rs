//! Native and MQTT consumers side by side on three edges all get what the hub sends: a hub and
//! three edges (each edge with a `tcp://` and an `mqtt://` listener) joined by duplex
//! connectors; `meshmq bench connections` runs once per edge and protocol (six processes, 50
//! idle subscribers each, 300 in all, each process on a topic of its own); once the hub knows
//! every consumer, all six send their one message from the hub at one moment (`--publish-url`,
//! `--go-file`): every subscriber gets its message, none is lost. (A small version of the
//! 30,000-consumer run; the numbers come from `meshmq bench`, the test checks the counts.)

use crate::common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use common::mesh::MeshBuilder;
use common::{free_ports, http_get, GUARD};
use serde_json::Value;

const EDGES: [&str; 3] = ["edge-1", "edge-2", "edge-3"];
const PER_PROCESS: usize = 50;

/// Killed and reaped on drop (a failed test leaves no bench behind).
struct Bench(Child);

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hub_remote_demand(admin: std::net::SocketAddr) -> u64 {
    let Ok((200, body)) = http_get(admin, "/status") else {
        return 0;
    };
    serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|s| {
            s["connectors"].as_array().map(|cs| {
                cs.iter()
                    .map(|c| c["remote_demand"].as_u64().unwrap_or(0))
                    .sum()
            })
        })
        .unwrap_or(0)
}

#[test]
fn three_edges_of_native_and_mqtt_idle_subscribers_each_get_the_hubs_message() {
    let mqtt_ports = free_ports(EDGES.len());
    let mut builder = MeshBuilder::new().group("hub", 1, "");
    for (edge, port) in EDGES.iter().zip(&mqtt_ports) {
        builder = builder
            .group(
                edge,
                1,
                &format!("\n[[group.member.listener]]\nurl = \"mqtt://127.0.0.1:{port}\""),
            )
            .connector("hub", edge, "");
    }
    let mut mesh = builder.build();
    mesh.start_all();
    mesh.wait_for_view(&["hub", "edge-1", "edge-2", "edge-3"]);
    let hub = mesh.member("hub").url();
    let hub_admin = mesh.member("hub").admin;
    let go = mesh.dir.path().join("go");

    let (ready_tx, ready_rx) = mpsc::channel::<String>();
    let mut benches = Vec::new();
    for (e, (edge, mqtt_port)) in EDGES.iter().zip(&mqtt_ports).enumerate() {
        let member = mesh.member(edge);
        for (p, (protocol, url)) in [
            ("native", member.url()),
            ("mqtt", format!("mqtt://127.0.0.1:{mqtt_port}")),
        ]
        .into_iter()
        .enumerate()
        {
            let source = format!("127.0.30.{}", 11 + 2 * e + p);
            let mut child = Command::new(env!("CARGO_BIN_EXE_meshmq"))
                .args(["bench", "connections", "--url", &url])
                .args(["--admin", &member.admin.to_string()])
                .args(["--protocol", protocol])
                .args(["--connections", &PER_PROCESS.to_string()])
                .args(["--sources", &source])
                .args(["--destination", &format!("topic://mixed.{edge}.{protocol}")])
                .args(["--publish-url", &hub])
                .arg("--go-file")
                .arg(&go)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run meshmq bench connections");
            let stderr = child.stderr.take().expect("piped stderr");
            let ready = ready_tx.clone();
            let name = format!("{edge} {protocol}");
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.starts_with("ready:") {
                        let _ = ready.send(name.clone());
                    } else {
                        eprintln!("{name}: {line}");
                    }
                }
            });
            benches.push((format!("{edge} {protocol}"), Bench(child)));
        }
    }
    drop(ready_tx);
    let deadline = Instant::now() + GUARD;
    for _ in 0..benches.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        ready_rx
            .recv_timeout(left)
            .expect("every bench opens its subscribers within the guard");
    }
    let consumers = (benches.len() * PER_PROCESS) as u64;
    mesh.wait_until("the hub knows every edge consumer", |_| {
        hub_remote_demand(hub_admin) >= consumers
    });
    std::fs::write(&go, "go").expect("write the go file");

    for (name, mut bench) in benches {
        let status = bench.0.wait().expect("wait for the bench");
        let mut stdout = String::new();
        bench
            .0
            .stdout
            .take()
            .expect("piped stdout")
            .read_to_string(&mut stdout)
            .expect("read the bench's report");
        assert!(status.success(), "{name}: the bench failed: {stdout}");
        let report: Value = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("{name}: no JSON report: {stdout}"));
        assert_eq!(
            (report["received"].as_u64(), report["lost"].as_u64()),
            (Some(PER_PROCESS as u64), Some(0)),
            "{name}: every idle subscriber gets the hub's message: {report}"
        );
        assert!(
            report["extra"]["fanout_to_all_ms"].is_number(),
            "{name}: the message reached all of them: {report}"
        );
    }
}
