//! With `backup=true` a failover client keeps a warm standby connection to another broker and
//! fails over onto it: the standby broker counts the client's second connection before
//! anything fails; after `kill -9` of the live broker the client resumes there, restores its
//! subscription and receives — and that broker accepted no new connection for it.

use crate::common;

use common::mesh::{Mesh, MeshBuilder};
use common::{metric_sum, GUARD};
use meshmq::client::{Client, ClientEvent, ClientOptions, Outgoing, SubscribeOptions};

fn accepted(mesh: &Mesh, member: &str) -> f64 {
    let m = mesh.member(member);
    match common::http_get(m.admin, "/metrics") {
        Ok((200, text)) => metric_sum(&text, "meshmq_connections_accepted_total", &[]),
        other => panic!("metrics of {member}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_connection_becomes_the_live_one() {
    let mut mesh = MeshBuilder::new()
        .group("edge-1", 1, "")
        .group("edge-2", 1, "")
        .build();
    mesh.start_all();
    let url = mesh.failover_url(&["edge-1", "edge-2"], "randomize=false&backup=true");
    let client = Client::connect(&url, ClientOptions::default())
        .await
        .expect("connect");
    let mut events = client.events();
    let mut sub = client
        .subscribe("queue://backup", SubscribeOptions::default())
        .await
        .expect("subscribe");
    assert_eq!(client.current_url(), mesh.member("edge-1").url());
    mesh.wait_until("edge-2 holds the standby connection", |m| {
        m.member("edge-2").clients() == 1
    });
    let before = accepted(&mesh, "edge-2");

    mesh.kill9("edge-1");
    loop {
        match tokio::time::timeout(GUARD, events.recv()).await {
            Ok(Ok(ClientEvent::Resumed {
                url, subscriptions, ..
            })) => {
                assert_eq!(url, mesh.member("edge-2").url());
                assert_eq!(subscriptions, 1);
                break;
            }
            Ok(Ok(_)) => {}
            other => panic!("no Resumed ({other:?})"),
        }
    }
    client
        .send_with_receipt("queue://backup", &Outgoing::new("after"))
        .await
        .expect("send");
    let d = sub.next_timeout(GUARD).await.expect("receive");
    assert_eq!(&d.body[..], b"after");
    assert_eq!(
        accepted(&mesh, "edge-2"),
        before,
        "the failover used the standby, not a new connection"
    );
    assert_eq!(mesh.member("edge-2").clients(), 1);
}
