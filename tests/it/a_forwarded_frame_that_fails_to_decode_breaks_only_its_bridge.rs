//! Bad bytes on a bridge: a frame from the peer that fails to decode tears down that bridge
//! only — the edge's other connector stays up, never re-dialled — and what the broken bridge
//! carried without an acknowledgement is redelivered from the source: a consumer on the edge
//! then gets every such message, each once (flagged redelivered), and none is lost.
//!
//! The test plays the hub: it dials the edge over the duplex connector the topology names,
//! asks for a queue, takes the forwards and never acknowledges them, then sends garbage.

use crate::common;

use common::history::{consume_individually, send_numbered, History};
use common::{wait_until, Mesh, MeshConfig, RawConn};
use meshmq::wire::{proto, Body, Frame};
use tokio_util::sync::CancellationToken;

const DEST: &str = "queue://carried";
const TOTAL: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_ends_one_bridge_and_its_forwards_come_back() {
    let mesh = Mesh::start_unconnected(
        &MeshConfig::new()
            .group("hub")
            .group("edge")
            .group("other")
            .played_by_test("hub")
            .connector("hub", "edge", &["duplex = true"])
            .connector("other", "edge", &[]),
    );
    let (edge, other) = (mesh.member("edge"), mesh.member("other"));
    wait_until("the other group's bridge is up", || {
        edge.connector("other-edge").up && other.connector("other-edge").up
    });
    // Dial attempts made before the edge listened count as reconnects too: compare with now.
    let reconnects = |side: &common::Broker| side.connector("other-edge").reconnects;
    let before = [reconnects(edge), reconnects(other)];

    // The hub's side of the bridge: a BrokerInfo, then demand for DEST.
    let mut hub = RawConn::open(edge.listen_addr());
    hub.send(Body::BrokerInfo(proto::BrokerInfo {
        mesh: "test".into(),
        group: "hub".into(),
        member: "hub-1".into(),
        connector: "hub-edge".into(),
        duplex: true,
        token: common::MESH_SECRET.into(),
        ..proto::BrokerInfo::default()
    }));
    match hub.next() {
        Some(Frame {
            body: Some(Body::BrokerInfo(info)),
        }) => assert_eq!(info.group, "edge"),
        other => panic!("expected the edge's BrokerInfo, got {other:?}"),
    }
    hub.send(Body::DemandAdd(proto::DemandAdd {
        destination: DEST.into(),
        broker_path: vec!["hub".into()],
        consumer_id: "1".into(),
        priority: 0,
        origin: "hub/1".into(),
        selector: String::new(),
    }));
    wait_until("the edge knows the hub's consumer", || {
        edge.connector("hub-edge").remote_demand == 1
    });

    // Messages sent on the edge go to the hub: all of them, none acknowledged.
    let history = History::new();
    let producer = edge.client().await;
    send_numbered(&producer, &history, DEST, "m", 0..TOTAL, true).await;
    let mut forwarded = 0;
    while forwarded < TOTAL {
        match hub.next() {
            Some(Frame {
                body: Some(Body::Forward(_)),
            }) => forwarded += 1,
            Some(_) => {}
            None => panic!("the edge closed the bridge after {forwarded} forwards"),
        }
    }
    assert_eq!(
        edge.destination(DEST).depth,
        TOTAL as u64,
        "all still unacknowledged"
    );

    // A frame of the right length whose bytes are no protobuf (field 0 is never valid).
    hub.write(&[0, 0, 0, 4, 0, 0, 0, 0]);
    loop {
        match hub.next() {
            None => break,
            Some(Frame {
                body: Some(Body::Heartbeat(_) | Body::DemandAdd(_) | Body::DemandRemove(_)),
            }) => {}
            other => panic!("expected the edge to close the bridge, got {other:?}"),
        }
    }
    wait_until("the edge logs why it ended the bridge", || {
        edge.log().contains("bad frame from the peer")
    });
    assert!(!edge.connector("hub-edge").up);

    // What the bridge carried comes back: a consumer on the edge gets it all, once.
    let stop = CancellationToken::new();
    let consumer = edge.client().await;
    consume_individually(&consumer, DEST, &history, "edge", stop.clone()).await;
    history.wait_all_delivered().await;
    wait_until("the edge's queue is empty", || {
        edge.destination(DEST).depth == 0
    });
    stop.cancel();
    history.verdict().assert_exactly_once();

    // The other bridge never noticed.
    for (side, before) in [edge, other].into_iter().zip(before) {
        let status = side.connector("other-edge");
        assert!(status.up, "{}: {status:?}", side.member());
        assert_eq!(status.reconnects, before, "{}: {status:?}", side.member());
    }
}
