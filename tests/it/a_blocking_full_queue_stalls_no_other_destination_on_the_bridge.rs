//! A full queue that blocks its producers (`on_full = "block"`, the default) never stalls the
//! bridge it arrives over (ActiveMQ AMQ-3331), on the mesh's shape — a producer-facing hub, a
//! consumer edge, one duplex connector at its defaults: while the edge's consumer of the full
//! queue holds its messages unacknowledged, the edge refuses further forwards to it ("full,
//! try again"), another destination's messages keep crossing the same connector and all
//! arrive, each once; once that consumer acknowledges, every message of the full queue arrives,
//! each once. Proved twice: a queue full in memory (its `memory_limit`, non-persistent
//! messages, persistent receipted traffic flowing beside it) and a persistent queue that fills
//! the edge's journal to `store_limit` (non-persistent traffic flowing beside it).

use crate::common;

use std::time::Duration;

use common::history::{consume, send_numbered, History};
use common::{metric_sum, wait_until, Broker, Mesh, MeshConfig, GUARD};
use meshmq::client::{AckMode, Client, Delivery, Outgoing, SubscribeOptions, Subscription};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const FULL: &str = "queue://full";
const FLOW: &str = "queue://flow";
const FLOW_TOTAL: usize = 5_000;

fn individual() -> SubscribeOptions {
    SubscribeOptions {
        ack: AckMode::ClientIndividual,
        ..SubscribeOptions::default()
    }
}

fn mesh(extra: MeshConfig) -> Mesh {
    Mesh::start(
        &extra
            .group("hub")
            .group("edge")
            .connector("hub", "edge", &["duplex = true"]),
    )
}

/// Sends `full-<n>` for n in 0..total to FULL, each with a receipt (so a blocked send waits
/// here, on its own connection), recording each as sent first.
fn produce_full(
    producer: Client,
    history: &History,
    total: usize,
    persistent: bool,
) -> JoinHandle<()> {
    let history = history.clone();
    tokio::spawn(async move {
        for n in 0..total {
            let id = format!("full-{n}");
            let body = format!("{id}|{}", "f".repeat(1000));
            history.sent(&id);
            producer
                .send_with_receipt(FULL, &Outgoing::new(body).persistent(persistent))
                .await
                .unwrap_or_else(|e| panic!("send {id}: {e}"));
        }
    })
}

/// The edge's consumer of FULL: it records what it receives but acknowledges nothing until
/// `release` fires; then it acknowledges what it holds and everything after, until `stop`.
/// Returns how many it held when released.
fn stuck_consumer(
    mut sub: Subscription,
    history: &History,
    release: oneshot::Receiver<()>,
    stop: CancellationToken,
) -> JoinHandle<usize> {
    let history = history.clone();
    tokio::spawn(async move {
        let record = |d: &Delivery| {
            let body = String::from_utf8_lossy(&d.body);
            let id = body.split('|').next().unwrap_or_default().to_string();
            history.received("edge", &id, d.redelivered());
        };
        let mut held = Vec::new();
        tokio::pin!(release);
        loop {
            tokio::select! {
                d = sub.next() => {
                    let d = d.expect("the edge's connection stays up");
                    record(&d);
                    held.push(d);
                }
                _ = &mut release => break,
            }
        }
        for d in &held {
            sub.ack(d).await.expect("ack a held message");
        }
        loop {
            tokio::select! {
                d = sub.next() => {
                    let d = d.expect("the edge's connection stays up");
                    record(&d);
                    sub.ack(&d).await.expect("ack");
                }
                _ = stop.cancelled() => break,
            }
        }
        held.len()
    })
}

fn refused_full(edge: &Broker) -> f64 {
    metric_sum(&edge.metrics(), "meshmq_connector_refused_full_total", &[])
}

/// The common course: FULL fills on the edge (its consumer holds everything), `flow_persistent`
/// traffic crosses meanwhile, exactly once; then FULL drains, exactly once.
async fn full_queue_waits_while_another_flows(
    mesh: &Mesh,
    full_total: usize,
    full_persistent: bool,
    flow_persistent: bool,
    edge_is_full: impl Fn(&Broker) -> bool,
) {
    let (hub, edge) = (mesh.member("hub"), mesh.member("edge"));
    let (full, flow) = (History::new(), History::new());

    let consumer = edge.client().await;
    let full_sub = consumer.subscribe(FULL, individual()).await.expect("sub");
    let (release, released) = oneshot::channel();
    let stop = CancellationToken::new();
    let stuck = stuck_consumer(full_sub, &full, released, stop.clone());
    let flow_sub = consumer.subscribe(FLOW, individual()).await.expect("sub");
    consume(flow_sub, &flow, "edge", stop.clone());
    wait_until("the hub knows both edge consumers", || {
        hub.connector("hub-edge").remote_demand == 2
    });

    let full_producer = produce_full(hub.client().await, &full, full_total, full_persistent);
    wait_until("the edge is full and refuses forwards to FULL", || {
        edge_is_full(edge) && refused_full(edge) > 0.0
    });

    // Over the same connector, the other destination flows and all of it arrives, once.
    let flow_producer = hub.client().await;
    send_numbered(
        &flow_producer,
        &flow,
        FLOW,
        "flow",
        0..FLOW_TOTAL,
        flow_persistent,
    )
    .await;
    flow.wait_all_delivered().await;
    flow.verdict().assert_exactly_once();
    assert!(
        edge_is_full(edge),
        "the edge stayed full while FLOW crossed"
    );
    assert!(
        full.distinct_received() < full_total,
        "FULL's messages were held back, not all delivered"
    );
    assert!(
        hub.destination(FULL).depth > 0,
        "some of FULL's messages wait on the hub"
    );

    // Room appears: every message of FULL arrives, each once.
    release.send(()).expect("the stuck consumer is waiting");
    tokio::time::timeout(GUARD, full_producer)
        .await
        .expect("the blocked producer of FULL completes once there is room")
        .expect("the producer of FULL");
    full.wait_all_delivered().await;
    wait_until("the hub's FULL drained", || {
        hub.destination(FULL).depth == 0
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let held = stuck.await.expect("the consumer of FULL");
    assert!(held > 0, "the edge's consumer held messages of FULL");
    full.verdict().assert_exactly_once();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_full_in_memory_holds_only_its_own_messages() {
    let mesh = mesh(MeshConfig::new().section(
        "[[policy]]\ndestination = \"queue://full\"\nmemory_limit = \"32KiB\"\non_full = \"block\"\n",
    ));
    full_queue_waits_while_another_flows(&mesh, 300, false, true, |edge: &Broker| {
        edge.destination(FULL).depth > 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_persistent_queue_that_fills_the_journal_holds_only_its_own_messages() {
    let mesh = mesh(
        MeshConfig::new()
            .broker("on_full = \"block\"")
            .section("[store]\nsegment_size = \"64KiB\"\nstore_limit = \"256KiB\"\ncheckpoint_interval = \"100ms\"\n"),
    );
    full_queue_waits_while_another_flows(&mesh, 1_000, true, false, |edge: &Broker| {
        metric_sum(&edge.metrics(), "meshmq_journal_full", &[]) == 1.0
    })
    .await;
}
