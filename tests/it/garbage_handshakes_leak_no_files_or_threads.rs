//! Property: garbage in the bridge handshake leaks nothing (S7, AMQ-2448). The hub's connector
//! dials an edge whose address answers every dial with something other than the edge's
//! handshake — another protocol's bytes, an oversized length prefix, an undecodable frame, a
//! frame that is not a handshake, a refusal, another mesh's handshake, a STOMP frame — and
//! strangers send the same garbage to the hub's own listener. After hundreds of such failed
//! handshakes each way, the hub holds no more open files and threads than after the first few
//! (within 10, the scenario's slack), still redials, and once the real edge answers exactly one
//! bridge comes up and carries every message once.
//!
//! Every limit is the default; only the connector's redial delay is cut (to 10–50 ms, from its
//! 1–30 s backoff) so that hundreds of handshakes fail within seconds.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use common::history::{send_numbered, History};
use common::proxy::ProxyMode;
use common::{wait, Broker, Mesh, MeshConfig, GUARD};
use meshmq::wire::{self, proto, Body};
use tokio_util::sync::CancellationToken;

/// Failed dials (and stranger connections) before the baseline is taken, and after it.
const WARM_UP: usize = 30;
const STORM: usize = 300;
/// What the scenario lets a broker's open files and threads grow by over the whole run.
const SLACK: u64 = 10;

fn frame(body: Body) -> Vec<u8> {
    let mut out = BytesMut::new();
    wire::encode(&wire::frame(body), &mut out);
    out.to_vec()
}

/// Each a whole answer a peer that is not the edge might give, written at once.
fn garbage() -> Vec<Vec<u8>> {
    let mut undecodable = 8u32.to_be_bytes().to_vec();
    undecodable.extend([0xff; 8]);
    vec![
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".to_vec(),
        [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0].to_vec(),
        undecodable,
        frame(Body::Heartbeat(proto::Heartbeat::default())),
        frame(Body::Error(proto::Error {
            code: proto::ErrorCode::Forbidden as i32,
            message: "go away".into(),
            receipt: 0,
            fatal: true,
        })),
        frame(Body::BrokerInfo(proto::BrokerInfo {
            mesh: "another-mesh".into(),
            group: "edge".into(),
            member: "edge-1".into(),
            ..proto::BrokerInfo::default()
        })),
        b"CONNECTED\nversion:1.2\n\n\0".to_vec(),
    ]
}

/// (open files, threads) of a broker's process.
fn resources(broker: &Broker) -> (u64, u64) {
    let threads = std::fs::read_to_string(format!("/proc/{}/status", broker.pid()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|n| n.trim().parse().ok()))
                .flatten()
        })
        .expect("the broker's thread count");
    (broker.status().process.open_fds, threads)
}

/// `n` stranger connections to `addr`, 10 at a time, each sending one answer of [`garbage`]
/// and reading until the broker closes it.
fn strangers(addr: SocketAddr, n: usize) {
    let garbage = garbage();
    for batch in (0..n).collect::<Vec<_>>().chunks(10) {
        let threads: Vec<_> = batch
            .iter()
            .map(|&i| {
                let bytes = garbage[i % garbage.len()].clone();
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut s = std::net::TcpStream::connect(addr).expect("connect to the hub");
                    s.set_read_timeout(Some(GUARD)).expect("timeout");
                    let _ = s.write_all(&bytes);
                    let mut sink = Vec::new();
                    s.read_to_end(&mut sink)
                        .map(|_| ())
                        .or_else(|e| match e.kind() {
                            std::io::ErrorKind::ConnectionReset => Ok(()),
                            _ => Err(e),
                        })
                        .expect("the hub closes a stranger's garbage connection");
                })
            })
            .collect();
        for t in threads {
            t.join().expect("stranger");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundreds_of_garbage_handshakes_leave_the_hubs_files_and_threads_as_they_were() {
    let mesh = Mesh::start_unconnected(
        &MeshConfig::new()
            .group("hub")
            .group("edge")
            .behind_proxy("edge", ProxyMode::Refuse)
            .connector(
                "hub",
                "edge",
                &[
                    "reconnect_initial_delay = \"10ms\"",
                    "reconnect_max_delay = \"50ms\"",
                ],
            ),
    );
    let (hub, proxy) = (mesh.member("hub"), mesh.proxy("edge"));
    proxy.answer_with(garbage());
    let hub_addr = hub.listen_addr();
    let dials = |n: usize| {
        let from = proxy.accepted();
        wait::poll()
            .within(GUARD)
            .until(&format!("the hub dialled {n} more times"), || {
                proxy.accepted() >= from + n
            });
    };

    tokio::task::block_in_place(|| {
        dials(WARM_UP);
        strangers(hub_addr, WARM_UP);
    });
    let before = resources(hub);
    let reconnects_before = hub.connector("hub-edge").reconnects;
    tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            s.spawn(|| strangers(hub_addr, STORM));
            dials(STORM);
        })
    });
    let after = wait::poll().within(Duration::from_secs(5)).settle(
        || resources(hub),
        |r| r.0 <= before.0 + SLACK && r.1 <= before.1 + SLACK,
    );
    println!(
        "hub (open files, threads): {before:?} after {WARM_UP} failed dials and stranger \
         connections, {after:?} after {STORM} more of each"
    );
    let status = hub.connector("hub-edge");
    assert!(!status.up, "no bridge on garbage: {status:?}");
    assert!(
        status.reconnects >= reconnects_before + STORM as u64,
        "every failed handshake counts as a redial: {status:?}, {reconnects_before} before"
    );
    assert!(
        after.0 <= before.0 + SLACK,
        "the hub's open files grew from {} to {} over {STORM} garbage handshakes each way",
        before.0,
        after.0
    );
    assert!(
        after.1 <= before.1 + SLACK,
        "the hub's threads grew from {} to {} over {STORM} garbage handshakes each way",
        before.1,
        after.1
    );

    // The real edge answers: one bridge, every message once.
    proxy.forward();
    mesh.wait_connected();
    let (history, stop) = (History::new(), CancellationToken::new());
    let _consumer = mesh
        .edge_consumer("queue://after-garbage", &history, &stop)
        .await;
    let producer = hub.client().await;
    send_numbered(
        &producer,
        &history,
        "queue://after-garbage",
        "m",
        0..100,
        false,
    )
    .await;
    history.wait_all_delivered().await;
    stop.cancel();
    history.verdict().assert_exactly_once();
    assert_eq!(
        proxy.live(),
        1,
        "exactly one bridge through the edge's address"
    );
}
