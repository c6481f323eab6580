//! Request/reply works over temporary queues, and a temporary queue belongs to the connection
//! that created it: `Client::request` gets the responder's reply (matched by correlation id);
//! another connection may send to the temporary queue but not consume from it (`Forbidden`);
//! the queue disappears with its connection (sending then is refused with `NotFound`). Across
//! a connector, replies reach a requester on another group through a stand-in of its temporary
//! queue or topic, which goes with the requester.

use crate::common;

use common::{wait_until, Broker, Config, Mesh, MeshConfig, GUARD};
use meshmq::client::{Client, Delivery, ErrorCode, ErrorKind, Outgoing, SubscribeOptions};

/// Answers every request on `queue://svc` with "re: BODY" to its reply-to, same correlation id.
fn responder(client: Client, mut sub: meshmq::client::Subscription) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(req) = sub.next().await {
            let reply = Outgoing::new(format!("re: {}", String::from_utf8_lossy(&req.body)))
                .correlation_id(req.correlation_id.clone());
            if client
                .send_with_receipt(&req.reply_to, &reply)
                .await
                .is_err()
            {
                return;
            }
        }
    })
}

/// A hub and an edge joined by a duplex connector at its defaults, with the `responder` serving
/// `queue://svc` on the edge, once the hub knows of it.
async fn service_on_the_edge() -> Mesh {
    let mesh = Mesh::start(&MeshConfig::new().group("hub").group("edge").connector(
        "hub",
        "edge",
        &["duplex = true"],
    ));
    let (hub, edge) = (mesh.member("hub"), mesh.member("edge"));
    let service = edge.client().await;
    let requests = service
        .subscribe("queue://svc", SubscribeOptions::default())
        .await
        .expect("subscribe");
    responder(service.clone(), requests);
    wait_until("the hub knows the edge's service", || {
        hub.connector("hub-edge").remote_demand == 1
    });
    mesh
}

/// The hub's `requester` leaves: the edge's stand-in for its temporary `dest` goes too (the
/// service's demand stays), and a send to it on the edge is refused with `NotFound`.
async fn gone_with_its_owner(mesh: &Mesh, requester: &Client, dest: &str) {
    let (hub, edge) = (mesh.member("hub"), mesh.member("edge"));
    let other = edge.client().await;
    requester.close().await.expect("close");
    wait_until("the edge's stand-in is gone with the requester", || {
        hub.connector("hub-edge").remote_demand == 1
            && edge.connector("hub-edge").remote_demand == 0
    });
    let err = other
        .send_with_receipt(dest, &Outgoing::new("too late"))
        .await
        .expect_err("the requester's temporary destination is gone on the edge");
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
}

/// Sends 20 concurrent requests `q0`..`q19` to `queue://svc` and returns each one's reply,
/// checked to be the responder's answer to that very request.
async fn twenty_requests(requester: &Client) -> Vec<Delivery> {
    let pending: Vec<_> = (0..20)
        .map(|i| {
            let r = requester.clone();
            tokio::spawn(async move {
                r.request("queue://svc", Outgoing::new(format!("q{i}")), GUARD)
                    .await
                    .map(|d| (i, d))
            })
        })
        .collect();
    let mut replies = Vec::new();
    for p in pending {
        let (i, reply) = p.await.expect("join").expect("a reply");
        assert_eq!(&reply.body[..], format!("re: q{i}").as_bytes());
        replies.push(reply);
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_get_their_own_replies_through_a_temporary_queue() {
    let broker = Broker::start(&Config::new());
    let service = broker.client().await;
    let requests = service
        .subscribe("queue://svc", SubscribeOptions::default())
        .await
        .expect("subscribe");
    let _responder = responder(service.clone(), requests);

    let requester = broker.client().await;
    for reply in twenty_requests(&requester).await {
        assert!(
            reply.destination.starts_with("temp-queue://"),
            "{}",
            reply.destination
        );
        assert!(
            reply
                .destination
                .contains(&requester.server_info().connection_id),
            "the reply queue is named after the requester's connection"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_temporary_queue_is_its_owners_alone_and_dies_with_its_connection() {
    let broker = Broker::start(&Config::new());
    let owner = broker.client().await;
    let other = broker.client().await;
    let temp = owner.temp_queue_name();
    let mut mine = owner
        .subscribe(&temp, SubscribeOptions::default())
        .await
        .expect("the owner creates its temporary queue by subscribing");

    // Anyone may send to it (that is what reply-to is for) ...
    other
        .send_with_receipt(&temp, &Outgoing::new("for the owner"))
        .await
        .expect("another connection may send to it");
    let d = tokio::time::timeout(GUARD, mine.next())
        .await
        .expect("delivered")
        .expect("open");
    assert_eq!(&d.body[..], b"for the owner");

    // ... but only the owner may consume from it.
    let stolen = other
        .subscribe(&temp, SubscribeOptions::default())
        .await
        .expect_err("another connection cannot consume from it");
    assert_eq!(stolen.kind(), ErrorKind::Refused, "{stolen}");
    assert_eq!(stolen.code(), Some(ErrorCode::Forbidden), "{stolen}");
    // Nor may it create a temporary queue in the owner's name.
    let squatted = other
        .subscribe(&format!("{temp}.x"), SubscribeOptions::default())
        .await
        .expect_err("a temporary queue named after another connection");
    assert_eq!(squatted.code(), Some(ErrorCode::Forbidden), "{squatted}");

    owner.close().await.expect("close");
    common::wait_until("the temporary queue is deleted with its connection", || {
        !broker
            .status()
            .destinations
            .iter()
            .any(|d| d.destination == temp)
    });
    let gone = other
        .send_with_receipt(&temp, &Outgoing::new("too late"))
        .await
        .expect_err("the temporary queue no longer exists");
    assert_eq!(gone.kind(), ErrorKind::Refused, "{gone}");
    assert_eq!(gone.code(), Some(ErrorCode::NotFound), "{gone}");
    // The refusal does not end the sender's connection.
    assert!(!other.is_closed());
    other
        .send_with_receipt("queue://ordinary", &Outgoing::new("fine"))
        .await
        .expect("ordinary sends still work");
}

/// Across groups: a requester on the hub, the service on an edge (a duplex connector at its
/// defaults). The requester's demand for its temporary queue crosses the connector, so the
/// edge holds a stand-in for it that the responder's replies go to and are forwarded from;
/// when the requester's connection ends, the stand-in goes too and a send to it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_from_another_group_get_their_replies_across_the_connector() {
    let mesh = service_on_the_edge().await;
    let requester = mesh.member("hub").client().await;
    let replies = twenty_requests(&requester).await;
    let reply_queue = replies[0].destination.clone();

    // The requester leaves: its temporary queue is gone on the edge too.
    gone_with_its_owner(&mesh, &requester, &reply_queue).await;
}

/// A temporary topic crosses the connector like a temporary queue: the edge's responder answers
/// on the hub requester's temporary topic through a stand-in, every reply arrives once and in
/// order, and the stand-in goes with its owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replies_on_a_temporary_topic_cross_the_connector_to_its_owner() {
    let mesh = service_on_the_edge().await;
    let (hub, edge) = (mesh.member("hub"), mesh.member("edge"));

    let requester = hub.client().await;
    let reply_topic = requester.temp_topic_name();
    let mut replies = requester
        .subscribe(&reply_topic, SubscribeOptions::default())
        .await
        .expect("the owner subscribes to its temporary topic");
    wait_until(
        "the edge stands in for the requester's temporary topic",
        || edge.connector("hub-edge").remote_demand == 1,
    );
    for i in 0..20 {
        let request = Outgoing::new(format!("q{i}"))
            .reply_to(reply_topic.clone())
            .correlation_id(format!("c{i}"));
        requester
            .send_with_receipt("queue://svc", &request)
            .await
            .expect("request");
    }
    for i in 0..20 {
        let reply = replies.next_timeout(GUARD).await.expect("a reply");
        assert_eq!(reply.destination, reply_topic);
        assert_eq!(&reply.body[..], format!("re: q{i}").as_bytes());
        assert_eq!(reply.correlation_id, format!("c{i}"));
    }
    assert!(
        replies
            .next_timeout(std::time::Duration::from_millis(300))
            .await
            .is_none(),
        "a reply arrived twice"
    );

    gone_with_its_owner(&mesh, &requester, &reply_topic).await;
}
