//! Head-of-line: one destination full on the edge (its memory limit reached, no consumer
//! there, `on_full = "fail"`) does not hold up the bridge: the edge answers "retry" for it,
//! while another destination's messages flow from the hub to the edge at full speed and all
//! arrive; the full destination's messages wait on the hub (none lost) and arrive, each once,
//! when room appears.

use crate::common;

use common::history::{consume, send_numbered, History};
use common::{metric_sum, wait_until, Mesh, MeshConfig};
use meshmq::client::{AckMode, ErrorCode, Outgoing, SubscribeOptions};
use tokio_util::sync::CancellationToken;

const FULL: &str = "queue://full";
const FLOW: &str = "queue://flow";
const FLOW_TOTAL: usize = 20_000;
/// Sends to the full destination stop at the first refusal, or here.
const FULL_ATTEMPTS: usize = 1000;

fn individual() -> SubscribeOptions {
    SubscribeOptions {
        ack: AckMode::ClientIndividual,
        ..SubscribeOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_destination_waits_while_another_flows() {
    let mesh = Mesh::start(
        &MeshConfig::new()
            .group("hub")
            .group("edge")
            // queue://full is always forwarded, though nobody consumes it on the edge.
            .connector("hub", "edge", &["statically_included = [\"queue://full\"]"])
            .section(
                "[[policy]]\ndestination = \"queue://full\"\nmemory_limit = \"16KiB\"\non_full = \"fail\"\n",
            ),
    );
    let (hub, edge) = (mesh.member("hub"), mesh.member("edge"));

    // Fill queue://full on the edge (and then on the hub): sends stop at the first refusal.
    let full = History::new();
    let producer = hub.client().await;
    for n in 0..FULL_ATTEMPTS {
        let id = format!("full-{n}");
        match producer
            .send_with_receipt(FULL, &Outgoing::new(id.clone()))
            .await
        {
            Ok(()) => full.sent(&id),
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::ResourceExhausted), "{e}");
                break;
            }
        }
    }
    let accepted = full.verdict().sent;
    assert!(
        accepted < FULL_ATTEMPTS,
        "the hub refused once both sides were full"
    );
    wait_until("the edge refuses forwards to the full destination", || {
        metric_sum(&edge.metrics(), "meshmq_connector_refused_full_total", &[]) > 0.0
    });

    // Another destination streams hub → edge at full speed meanwhile.
    let (flow, stop) = (History::new(), CancellationToken::new());
    let consumer = edge.client().await;
    let sub = consumer
        .subscribe(FLOW, individual())
        .await
        .expect("subscribe");
    consume(sub, &flow, "edge", stop.clone());
    wait_until("the hub knows the edge consumer", || {
        hub.connector("hub-edge").remote_demand == 1
    });
    send_numbered(&producer, &flow, FLOW, "flow", 0..FLOW_TOTAL, false).await;
    flow.wait_all_delivered().await;
    flow.verdict().assert_exactly_once();

    // The full destination's messages are all still held: on the edge, or on the hub.
    wait_until("every full message is on the edge or the hub", || {
        edge.destination(FULL).depth + hub.destination(FULL).depth == accepted as u64
    });
    assert!(hub.destination(FULL).depth > 0, "some wait on the hub");

    // Room appears on the edge: they all arrive, each once.
    let sub = consumer
        .subscribe(FULL, individual())
        .await
        .expect("subscribe");
    consume(sub, &full, "edge", stop.clone());
    full.wait_all_delivered().await;
    stop.cancel();
    full.verdict().assert_exactly_once();
    wait_until("the hub's full queue drained", || {
        hub.destination(FULL).depth == 0
    });
}
