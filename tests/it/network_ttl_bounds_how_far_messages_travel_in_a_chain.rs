//! TTL in a chain A → B → C: with `network_ttl = 2` a consumer on C gets A's messages (two
//! hops); with `network_ttl = 1` C's demand never reaches A, so A's messages stay on A and a
//! consumer there gets every one; with `message_ttl = 1` (demand still travels two hops) they
//! go as far as B and stop, and a consumer on B gets every one. Nothing is lost either way.

use crate::common;

use common::history::{consume, send_numbered, History};
use common::{wait_until, Mesh, MeshConfig};
use meshmq::client::{AckMode, Client, SubscribeOptions};
use tokio_util::sync::CancellationToken;

const DEST: &str = "queue://chain";
const TOTAL: usize = 300;

fn chain(ttl: &[&str]) -> Mesh {
    Mesh::start(
        &MeshConfig::new()
            .group("a")
            .group("b")
            .group("c")
            .connector("a", "b", ttl)
            .connector("b", "c", ttl),
    )
}

fn individual() -> SubscribeOptions {
    SubscribeOptions {
        ack: AckMode::ClientIndividual,
        ..SubscribeOptions::default()
    }
}

/// A consumer on `group` recording into `history`.
async fn consumer(mesh: &Mesh, group: &str, history: &History, stop: &CancellationToken) -> Client {
    let client = mesh.member(group).client().await;
    let sub = client
        .subscribe(DEST, individual())
        .await
        .expect("subscribe");
    consume(sub, history, group, stop.clone());
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ttl_2_carries_messages_from_a_through_b_to_c() {
    let mesh = chain(&["network_ttl = 2"]);
    let (history, stop) = (History::new(), CancellationToken::new());
    let _c = consumer(&mesh, "c", &history, &stop).await;
    wait_until("C's demand reached A through B", || {
        mesh.member("a").connector("a-b").remote_demand == 1
    });
    let producer = mesh.member("a").client().await;
    send_numbered(&producer, &history, DEST, "m", 0..TOTAL, true).await;
    history.wait_all_delivered().await;
    stop.cancel();
    let verdict = history.verdict();
    verdict.assert_exactly_once();
    assert_eq!(verdict.by_consumer["c"], TOTAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ttl_1_keeps_them_on_a_for_a_consumer_there() {
    let mesh = chain(&["network_ttl = 1"]);
    let (history, stop) = (History::new(), CancellationToken::new());
    let _c = consumer(&mesh, "c", &history, &stop).await;
    wait_until("C's demand reached B", || {
        mesh.member("b").connector("b-c").remote_demand == 1
    });
    // B tells A about its demand in order: had it relayed C's consumer, that would reach A
    // before this later consumer of B's own — so A then knows exactly one consumer.
    let b = mesh.member("b").client().await;
    let _marker = b
        .subscribe("queue://marker", individual())
        .await
        .expect("subscribe");
    wait_until("B's own demand reached A", || {
        mesh.member("a").connector("a-b").remote_demand >= 1
    });
    assert_eq!(
        mesh.member("a").connector("a-b").remote_demand,
        1,
        "only B's own consumer is one hop from A; C's is two"
    );

    let producer = mesh.member("a").client().await;
    send_numbered(&producer, &history, DEST, "m", 0..TOTAL, true).await;
    wait_until("A holds every message", || {
        mesh.member("a").destination(DEST).depth == TOTAL as u64
    });
    let _a = consumer(&mesh, "a", &history, &stop).await;
    history.wait_all_delivered().await;
    stop.cancel();
    let verdict = history.verdict();
    verdict.assert_exactly_once();
    assert_eq!(verdict.by_consumer["a"], TOTAL);
    assert_eq!(history.count_by("c"), 0);
    assert_eq!(mesh.member("a").connector("a-b").forwarded, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn message_ttl_1_stops_them_on_b_for_a_consumer_there() {
    let mesh = chain(&["network_ttl = 2", "message_ttl = 1"]);
    let (history, stop) = (History::new(), CancellationToken::new());
    let _c = consumer(&mesh, "c", &history, &stop).await;
    wait_until("C's demand reached A through B", || {
        mesh.member("a").connector("a-b").remote_demand == 1
    });
    let producer = mesh.member("a").client().await;
    send_numbered(&producer, &history, DEST, "m", 0..TOTAL, true).await;
    wait_until("every message moved from A to B", || {
        mesh.member("a").destination(DEST).depth == 0
            && mesh.member("b").destination(DEST).depth == TOTAL as u64
    });
    let _b = consumer(&mesh, "b", &history, &stop).await;
    history.wait_all_delivered().await;
    stop.cancel();
    let verdict = history.verdict();
    verdict.assert_exactly_once();
    assert_eq!(verdict.by_consumer["b"], TOTAL);
    assert_eq!(history.count_by("c"), 0);
    assert_eq!(mesh.member("b").connector("b-c").forwarded, 0);
}
