//! With `suppress_duplicate_queue_subscriptions = true`, a group that hears of one remote queue
//! consumer over several bridges of a cyclic mesh keeps a network consumer for it only over
//! its best route: in a triangle the producer's group forwards nothing over the long way round
//! while the direct link stands, and every message arrives exactly once. When the best route's
//! link is cut, the other bridge takes the consumer up and messages keep flowing, none lost and
//! none twice (a forward whose acknowledgement died with the link, sent again the long way
//! round, is known at the consumer's group and dropped); once the link heals, the direct route
//! takes over again and the detour drains. With the option off, both bridges hold a network
//! consumer for it.

use crate::common;

use common::history::{consume_individually, send_numbered, History};
use common::proxy::ProxyMode;
use common::{wait_until, Mesh, MeshConfig};
use meshmq::client::Client;
use tokio_util::sync::CancellationToken;

const DEST: &str = "queue://jobs";
/// (from, to): the connectors of the triangle, named `from-to`.
const CONNECTORS: [(&str, &str); 3] = [("a", "b"), ("b", "c"), ("c", "a")];

/// A triangle of duplex connectors with TTL 3; group `a` is reached (by connector c-a, the
/// only one that dials it) through a proxy the test controls.
fn triangle(suppress: bool) -> Mesh {
    let option = format!("suppress_duplicate_queue_subscriptions = {suppress}");
    let mut config = MeshConfig::new()
        .group("a")
        .group("b")
        .group("c")
        .behind_proxy("a", ProxyMode::Forward);
    for (from, to) in CONNECTORS {
        config = config.connector(from, to, &["duplex = true", "network_ttl = 3", &option]);
    }
    Mesh::start(&config)
}

/// A consumer on `group` recording into `history`.
async fn consumer_on(
    mesh: &Mesh,
    group: &str,
    history: &History,
    stop: &CancellationToken,
) -> Client {
    let client = mesh.member(group).client().await;
    consume_individually(&client, DEST, history, group, stop.clone()).await;
    client
}

/// What group `a` holds for C's consumer: (network demand over a-b, over c-a, consumers on
/// its queue — network consumers only: `a` has no local one).
fn held_at_a(mesh: &Mesh) -> (u64, u64, u64) {
    let a = mesh.member("a");
    (
        a.connector("a-b").remote_demand,
        a.connector("c-a").remote_demand,
        a.destination(DEST).consumers,
    )
}

fn wait_held_at_a(mesh: &Mesh, what: &str, want: (u64, u64, u64)) {
    common::wait::poll().until_or(
        what,
        || held_at_a(mesh) == want,
        || {
            format!(
                "(a-b, c-a, consumers) is {:?}, not {want:?}\n{}",
                held_at_a(mesh),
                mesh.logs()
            )
        },
    );
}

fn wait_forwards_settled(mesh: &Mesh) {
    wait_until("every forward is acknowledged", || {
        mesh.members()
            .all(|m| m.status().connectors.iter().all(|c| c.inflight == 0))
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_route_per_remote_consumer_and_the_next_takes_over_when_it_breaks() {
    let mesh = triangle(true);
    let (a, b, proxy) = (mesh.member("a"), mesh.member("b"), mesh.proxy("a"));
    let (history, stop) = (History::new(), CancellationToken::new());
    let _consumer = consumer_on(&mesh, "c", &history, &stop).await;

    // A hears of C's consumer directly ([c]) and through B ([c, b]); it keeps the direct one.
    // B likewise keeps its direct route and drops the one relayed by A.
    wait_held_at_a(&mesh, "a holds C's consumer over c-a only", (0, 1, 1));
    wait_until("b holds C's consumer over b-c only", || {
        (
            b.connector("a-b").remote_demand,
            b.connector("b-c").remote_demand,
            b.destination(DEST).consumers,
        ) == (0, 1, 1)
    });

    let producer = a.client().await;
    send_numbered(&producer, &history, DEST, "direct", 0..1000, true).await;
    history.wait_all_delivered().await;
    wait_forwards_settled(&mesh);
    history.verdict().assert_exactly_once();
    assert_eq!(
        a.connector("a-b").forwarded,
        0,
        "while the direct route stands, nothing goes the long way round"
    );

    // Cut the direct link mid-stream and keep it down (re-dials hang).
    let streaming = {
        let (producer, history) = (producer.clone(), history.clone());
        tokio::spawn(async move {
            send_numbered(&producer, &history, DEST, "cut", 0..2000, true).await;
        })
    };
    wait_until("the stream is flowing", || history.count_by("c") >= 1200);
    proxy.accept_and_hang();
    proxy.cut();
    wait_until("a sees the direct link down", || !a.connector("c-a").up);
    wait_held_at_a(&mesh, "a-b takes C's consumer up", (1, 0, 1));
    streaming.await.expect("producer");
    // Sent after the takeover: only the route through B can carry these.
    send_numbered(&producer, &history, DEST, "detour", 0..500, true).await;
    history.wait_all_delivered().await;
    wait_forwards_settled(&mesh);
    history.verdict().assert_exactly_once();
    let detoured = a.connector("a-b").forwarded;
    assert!(
        detoured >= 500,
        "a forwarded {detoured} messages through b while the direct link was down"
    );
    assert_eq!(a.destination(DEST).depth, 0, "nothing is stuck on a");

    // Heal: the direct route is best again and the detour drains.
    proxy.forward();
    mesh.wait_connected();
    wait_held_at_a(&mesh, "c-a holds C's consumer again", (0, 1, 1));
    send_numbered(&producer, &history, DEST, "healed", 0..1000, true).await;
    history.wait_all_delivered().await;
    wait_forwards_settled(&mesh);
    stop.cancel();
    let verdict = history.verdict();
    verdict.assert_exactly_once();
    assert_eq!(verdict.sent, 4500);
    assert_eq!(
        a.connector("a-b").forwarded,
        detoured,
        "after the heal nothing goes through b again"
    );
    eprintln!("{verdict:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_option_both_bridges_hold_the_consumer() {
    let mesh = triangle(false);
    let (history, stop) = (History::new(), CancellationToken::new());
    let _consumer = consumer_on(&mesh, "c", &history, &stop).await;
    wait_held_at_a(&mesh, "a holds C's consumer over both bridges", (1, 1, 2));
    let producer = mesh.member("a").client().await;
    send_numbered(&producer, &history, DEST, "m", 0..1000, true).await;
    history.wait_all_delivered().await;
    wait_forwards_settled(&mesh);
    stop.cancel();
    history.verdict().assert_exactly_once();
    assert_eq!(
        held_at_a(&mesh),
        (1, 1, 2),
        "both network consumers stay while the consumer does"
    );
}
