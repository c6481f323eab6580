//! Brokers with `update_cluster_clients` teach failover clients the mesh, within what the
//! listener's `update_cluster_filter` admits, and a push never drops a URI the client was
//! given: a client given only edge-1's URI learns edge-2 when edge-2's bridge comes up (a push
//! on change), never hears of the filtered-out hub, and survives `kill -9` of edge-1 by moving
//! to the learned edge-2, where it sends and receives; a client also given the hub's URI
//! reaches the hub when both edges are dead, because its static URIs outlive every push.

use crate::common;

use std::time::Duration;

use common::mesh::MeshBuilder;
use common::GUARD;
use meshmq::client::{Client, ClientEvent, ClientOptions, Outgoing, SubscribeOptions};

const OPTIONS: &str = "randomize=false&initialReconnectDelay=50&maxReconnectDelay=300";

async fn wait_resumed(
    client: &Client,
    events: &mut tokio::sync::broadcast::Receiver<ClientEvent>,
) -> String {
    loop {
        match tokio::time::timeout(GUARD, events.recv()).await {
            Ok(Ok(ClientEvent::Resumed { url, .. })) => return url,
            Ok(Ok(_)) => {}
            other => panic!("no Resumed event ({other:?}); on {}", client.current_url()),
        }
    }
}

async fn round_trip(client: &Client, queue: &str) {
    let mut sub = client
        .subscribe(queue, SubscribeOptions::default())
        .await
        .expect("subscribe");
    client
        .send_with_receipt(queue, &Outgoing::new("ping"))
        .await
        .expect("send");
    let d = sub.next_timeout(GUARD).await.expect("receive");
    assert_eq!(&d.body[..], b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_learn_filtered_groups_from_pushes_and_keep_their_static_uris() {
    let listener = "update_cluster_clients = true\nupdate_cluster_filter = [\"edge-.*\"]";
    let mut mesh = MeshBuilder::new()
        .group("edge-1", 1, listener)
        .group("edge-2", 1, listener)
        .group("hub", 1, "")
        .connector("edge-1", "edge-2", "")
        .connector("hub", "edge-1", "")
        .connector("hub", "edge-2", "")
        .build();
    mesh.start("edge-1");
    mesh.start("hub");
    mesh.wait_until("edge-1 and the hub serve", |m| {
        m.member("edge-1").ready() && m.member("hub").ready()
    });
    mesh.wait_for_view(&["edge-1", "hub"]);
    let (edge1, edge2, hub) = (
        mesh.member("edge-1").url(),
        mesh.member("edge-2").url(),
        mesh.member("hub").url(),
    );

    let learner = Client::connect(
        &format!("failover:({edge1})?{OPTIONS}"),
        ClientOptions::default(),
    )
    .await
    .expect("learner connects");
    let keeper = Client::connect(
        &format!("failover:({edge1},{hub})?{OPTIONS}"),
        ClientOptions::default(),
    )
    .await
    .expect("keeper connects");
    assert_eq!(
        learner.cluster_uris(),
        vec![edge1.clone()],
        "the Connected frame carries the view; the hub is filtered out"
    );
    let mut learner_events = learner.events();
    let mut keeper_events = keeper.events();

    // edge-2 joins: a push tells connected clients.
    mesh.start("edge-2");
    async fn learn(
        events: &mut tokio::sync::broadcast::Receiver<ClientEvent>,
        uri: &str,
    ) -> Vec<String> {
        loop {
            match tokio::time::timeout(GUARD, events.recv()).await {
                Ok(Ok(ClientEvent::ClusterUpdated { uris })) if uris.iter().any(|u| u == uri) => {
                    return uris
                }
                Ok(Ok(_)) => {}
                other => panic!("no push with {uri} ({other:?})"),
            }
        }
    }
    let learned = learn(&mut learner_events, &edge2).await;
    // Both clients must have heard of edge-2 before edge-1 dies (pushes reach them one by one).
    learn(&mut keeper_events, &edge2).await;
    assert!(
        !learned.contains(&hub),
        "the filter hides the hub: {learned:?}"
    );

    // edge-1 dies: the learner moves to the URI it only learned.
    mesh.kill9("edge-1");
    assert_eq!(wait_resumed(&learner, &mut learner_events).await, edge2);
    round_trip(&learner, "queue://learned").await;
    assert_eq!(wait_resumed(&keeper, &mut keeper_events).await, edge2);

    // edge-2 dies too: only a static URI leads anywhere now.
    mesh.kill9("edge-2");
    assert_eq!(wait_resumed(&keeper, &mut keeper_events).await, hub);
    round_trip(&keeper, "queue://static").await;
    assert!(
        learner.cluster_uris().iter().all(|u| *u != hub),
        "the learner never heard of the hub: {:?}",
        learner.cluster_uris()
    );
    // The learner keeps trying its two dead edges (nothing else it may know).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!learner.is_closed());
    keeper.close().await.expect("close");
}
