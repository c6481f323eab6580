//! Bridge tests: one bridge driven over an in-memory stream, on paused time.

use super::*;
use crate::broker::{Broker, BrokerSettings};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const HEARTBEAT: Duration = Duration::from_secs(1);

fn config() -> BridgeConfig {
    BridgeConfig {
        connector: "hub-edge".into(),
        local: Arc::from("hub"),
        peer: Arc::from("edge"),
        forward: true,
        export: true,
        message_ttl: 1,
        consumer_ttl: 1,
        conduit: true,
        decrease_priority: true,
        priority_base: -5,
        prefetch: 1000,
        dynamically_included: Vec::new(),
        statically_included: Vec::new(),
        excluded: Vec::new(),
        static_bridge: false,
        bridge_temp: true,
        replay: None,
        heartbeat: HEARTBEAT,
        max_frame_size: 1 << 20,
        always_sync_send: true,
        suppress_duplicate_queues: false,
    }
}

/// A bridge over one end of an in-memory link; the test plays the peer on the other.
fn bridge(stream: DuplexStream) -> Bridge {
    let broker = Broker::new(BrokerSettings::default());
    Bridge::new(
        Arc::new(config()),
        Pump::new(Box::new(stream)),
        broker.open_session(None).expect("session"),
        Arc::new(Routes::default()),
        Arc::new(BridgeMetrics::new("hub-edge", "edge")),
        (
            crate::cluster::Cluster::new(crate::cluster::ClusterOptions::default()),
            0,
        ),
    )
}

fn heartbeat() -> BytesMut {
    let mut b = BytesMut::new();
    wire::encode(
        &wire::frame(Body::Heartbeat(proto::Heartbeat { receipt: 0 })),
        &mut b,
    );
    b
}

/// Reads (and drops) what the bridge writes, so it is never blocked on a full link.
fn drain(mut r: tokio::io::ReadHalf<DuplexStream>) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while matches!(r.read(&mut buf).await, Ok(n) if n > 0) {}
    });
}

// Time is the runtime's paused clock: it moves only when every task waits, so these
// check the bridge's rules, not this machine's speed.

#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_given_up_within_three_heartbeat_intervals() {
    // The peer's last byte falls at every phase of the bridge's checks.
    for k in 0..8u32 {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let (r, mut w) = tokio::io::split(theirs);
        drain(r);
        let started = tokio::time::Instant::now();
        let run = tokio::spawn(async move {
            let stop = CancellationToken::new();
            let reason = bridge(ours).run(&stop).await;
            (reason, tokio::time::Instant::now())
        });
        for _ in 0..5 {
            tokio::time::sleep(HEARTBEAT).await;
            w.write_all(&heartbeat()).await.expect("write");
        }
        tokio::time::sleep(HEARTBEAT * k / 8).await;
        w.write_all(&heartbeat()).await.expect("write");
        let last_byte = tokio::time::Instant::now();
        // The socket stays open: only silence can end the bridge.
        let (reason, ended) = run.await.expect("bridge task");
        assert!(reason.contains("no heartbeat from edge"), "{reason}");
        assert!(
            ended - last_byte <= HEARTBEAT * 3,
            "phase {k}: given up {:?} after the last byte",
            ended - last_byte
        );
        assert!(ended - started > HEARTBEAT * 5, "not before the silence");
        drop(w);
    }
}

fn forward_frame(forward_id: u64, sequence: u64, unacknowledged: bool) -> BytesMut {
    let mut b = BytesMut::new();
    wire::encode(
        &wire::frame(Body::Forward(proto::Forward {
            forward_id,
            message: Some(proto::Send {
                destination: "queue://q".into(),
                body: Bytes::from_static(b"tick"),
                producer_id: Bytes::from_static(b"edge-producer"),
                sequence,
                ..proto::Send::default()
            }),
            broker_path: vec!["edge".into()],
            redelivery_count: 0,
            targets: Vec::new(),
            unacknowledged,
        })),
        &mut b,
    );
    b
}

#[tokio::test]
async fn an_unacknowledged_forward_is_taken_once_and_never_answered() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let (mut r, mut w) = tokio::io::split(theirs);
    let b = bridge(ours);
    let broker = b.session.broker().clone();
    let stop = CancellationToken::new();
    let run = {
        let stop = stop.clone();
        tokio::spawn(async move { b.run(&stop).await })
    };
    w.write_all(&forward_frame(1, 7, true))
        .await
        .expect("write");
    // The same message again (same producer and sequence): a copy to drop, unanswered too.
    w.write_all(&forward_frame(2, 7, true))
        .await
        .expect("write");
    // A synchronous one after them: its answer shows the two before were handled.
    w.write_all(&forward_frame(3, 8, false))
        .await
        .expect("write");
    let mut acked = Vec::new();
    let mut buf = BytesMut::new();
    while !acked.contains(&3) {
        match wire::decode(&mut buf, 1 << 20).expect("the bridge writes good frames") {
            wire::Decoded::Frame(Frame {
                body: Some(Body::ForwardAck(a)),
            }) => {
                assert!(a.accepted, "{a:?}");
                acked.push(a.forward_id);
                acked.extend(a.more);
            }
            wire::Decoded::Frame(_) => {}
            wire::Decoded::NeedMore(_) => {
                let mut chunk = vec![0u8; 4096];
                let n = r.read(&mut chunk).await.expect("read");
                assert!(n > 0, "the bridge closed the link");
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
    assert_eq!(acked, [3], "only the synchronous forward is answered");
    let q = broker
        .destination_stats()
        .into_iter()
        .find(|d| d.destination == "queue://q")
        .expect("the queue exists");
    assert_eq!(q.enqueued, 2, "sequence 7 once, sequence 8 once: {q:?}");
    stop.cancel();
    assert_eq!(run.await.expect("bridge task"), "stopped");
}

#[tokio::test(start_paused = true)]
async fn a_peer_heartbeating_at_its_slowest_keeps_the_link_and_hears_one_in_time() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let (mut r, mut w) = tokio::io::split(theirs);
    let stop = CancellationToken::new();
    let run = {
        let stop = stop.clone();
        tokio::spawn(async move { bridge(ours).run(&stop).await })
    };
    // What the bridge writes, and when: with no traffic, only heartbeats.
    let heard = tokio::spawn(async move {
        let mut at = Vec::new();
        let mut buf = vec![0u8; 4096];
        while matches!(r.read(&mut buf).await, Ok(n) if n > 0) {
            at.push(tokio::time::Instant::now());
        }
        at
    });
    let started = tokio::time::Instant::now();
    // The slowest a live bridge heartbeats: 1.25 intervals apart.
    for _ in 0..16 {
        tokio::time::sleep(HEARTBEAT * 5 / 4).await;
        w.write_all(&heartbeat()).await.expect("write");
    }
    assert!(!run.is_finished(), "the link was kept");
    stop.cancel();
    assert_eq!(run.await.expect("bridge task"), "stopped");
    drop(w);
    let mut at = heard.await.expect("reader");
    at.insert(0, started);
    let longest = at.windows(2).map(|p| p[1] - p[0]).max().expect("heard");
    assert!(at.len() > 10, "{} writes", at.len());
    assert!(
        longest <= HEARTBEAT * 5 / 4,
        "the bridge was silent for {longest:?}"
    );
}
