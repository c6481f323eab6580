//! `meshmq apply` changes destination policies and limits in a running member without
//! restarting it: a `[[policy]]` added with a small memory limit and `on_full = "fail"` makes
//! the next send to a queue that already exists — and to a new one it matches — refused as a
//! full queue is refused at start, while a queue it does not match still accepts; removing the
//! entry again lets the existing queue accept once more; a lowered `max_connections` refuses
//! the next connection while the admitted ones go on. The member keeps its process (same PID)
//! and a STOMP subscriber stays connected throughout.

use crate::common;
use crate::common_stomp;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use common::mesh::MeshBuilder;
use common::{apply, meshmq, metric_sum, run, wait_until, GUARD};
use common_stomp::StompSubscriber;
use meshmq::client::{Client, ClientOptions, ErrorCode, ErrorKind, Outgoing, SubscribeOptions};

const TOKEN: &str = "policy-apply-admin-token-0123456789";
const KIB: usize = 1024;

/// Runs `meshmq apply FILE`; fails the test unless every member took it in place.
fn apply_in_place(file: &Path) -> String {
    let out = apply(file);
    assert!(
        !out.contains("at its next restart"),
        "a policy or limit change was left for a restart:\n{}",
        out
    );
    out
}

/// Sends 1 KiB messages with receipts until one is refused; returns how many were accepted
/// and the refusal (fails past `most`).
async fn fill(client: &Client, dest: &str, most: usize) -> (usize, meshmq::client::ClientError) {
    let msg = Outgoing::new(vec![b'p'; KIB]);
    for accepted in 0..=most {
        if let Err(e) = client.send_with_receipt(dest, &msg).await {
            return (accepted, e);
        }
    }
    panic!("{dest} accepted {most} messages of 1 KiB past its limit");
}

fn assert_full(refusal: &meshmq::client::ClientError, dest: &str) {
    assert_eq!(refusal.kind(), ErrorKind::Refused, "{refusal}");
    assert_eq!(
        refusal.code(),
        Some(ErrorCode::ResourceExhausted),
        "{refusal}"
    );
    assert!(refusal.to_string().contains(dest), "{refusal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_and_limits_change_in_a_running_member() {
    let mut mesh = MeshBuilder::new()
        .group("hub", 1, "")
        .section(&format!("[admin]\ntoken = \"{TOKEN}\"\n"))
        .stomp()
        .build();
    mesh.start_all();
    let pid = mesh.member_mut("hub").pid().expect("running");
    let hub = mesh.member("hub");
    let (url, admin) = (hub.url(), hub.admin);
    let subscriber = StompSubscriber::start(hub.stomp.expect("stomp listener"), "/topic/news");
    let original = std::fs::read_to_string(&mesh.topology).expect("topology");

    // Before: no policy; the queue takes 100 KiB without a murmur.
    let producer = Client::connect(&url, ClientOptions::default())
        .await
        .expect("producer");
    let bystander = Client::connect(&url, ClientOptions::default())
        .await
        .expect("bystander");
    let msg = Outgoing::new(vec![b'p'; KIB]);
    for _ in 0..100 {
        producer
            .send_with_receipt("queue://orders.old", &msg)
            .await
            .expect("no limit yet");
    }

    // A policy for queue://orders.> (16 KiB, fail when full) and max_connections at the two
    // clients the native listener holds now.
    let listener_line = format!("url = \"{url}\"\n");
    assert!(original.contains(&listener_line), "{original}");
    let limited_text = format!(
        "{}\n[[policy]]\ndestination = \"queue://orders.>\"\nmemory_limit = \"16KiB\"\non_full = \"fail\"\n",
        original.replace(
            &listener_line,
            &format!("{listener_line}max_connections = 2\n")
        )
    );
    let limited = mesh.dir.path().join("limited.toml");
    std::fs::write(&limited, &limited_text).expect("write");
    let plan = run(meshmq().arg("plan").arg(&limited));
    assert!(plan.status.success(), "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stdout.contains("policy queue://orders.>: added")
            && plan.stdout.contains("max_connections: default -> 2")
            && !plan.stdout.contains("needs a restart"),
        "plan does not show the policy and limit as taken in place:\n{}",
        plan.stdout
    );
    let applying = Instant::now();
    let out = apply_in_place(&limited);
    eprintln!(
        "apply took {:?} (the policy is in effect when it returns):\n{out}",
        applying.elapsed()
    );

    // The existing queue holds 100 KiB, past its new 16 KiB: the next send is refused.
    let refused = producer
        .send_with_receipt("queue://orders.old", &msg)
        .await
        .expect_err("an existing queue took its new policy");
    assert_full(&refused, "queue://orders.old");
    // A new queue the entry matches fills to about 16 KiB, then refuses.
    let (accepted, refusal) = fill(&producer, "queue://orders.new", 64).await;
    assert_full(&refusal, "queue://orders.new");
    assert!((1..=17).contains(&accepted), "{accepted} KiB accepted");
    // A queue it does not match still accepts, on the same connection.
    for _ in 0..100 {
        producer
            .send_with_receipt("queue://other", &msg)
            .await
            .expect("an unmatched queue still accepts");
    }
    assert!(
        metric_sum(
            &common::http_get(admin, "/metrics").expect("metrics").1,
            "meshmq_sends_refused_total",
            &["reason=\"full\""]
        ) >= 2.0
    );

    // The listener is at its new max_connections: a newcomer is refused, the admitted stay.
    let newcomer = Client::connect(&url, ClientOptions::default()).await;
    let e = newcomer
        .map(|_| ())
        .expect_err("a third client is over max_connections = 2");
    assert_eq!(e.code(), Some(ErrorCode::ResourceExhausted), "{e}");
    assert!(e.to_string().contains("max_connections (2)"), "{e}");
    let mut sub = bystander
        .subscribe("queue://other", SubscribeOptions::default())
        .await
        .expect("the bystander still works");
    tokio::time::timeout(GUARD, sub.next())
        .await
        .expect("a delivery within the guard")
        .expect("open");
    let status = common::member_status(admin);
    assert_eq!(status.listeners[0].max_connections, 2, "{status:?}");

    // The entry removed again (and the listener back to its default): the existing queue
    // accepts again, and a third client is admitted.
    let relaxed = mesh.dir.path().join("relaxed.toml");
    std::fs::write(&relaxed, &original).expect("write");
    apply_in_place(&relaxed);
    producer
        .send_with_receipt("queue://orders.old", &msg)
        .await
        .expect("without the entry the queue accepts again");
    Client::connect(&url, ClientOptions::default())
        .await
        .expect("max_connections is back to its default");

    // The same process all along, and the STOMP subscriber never noticed.
    producer
        .send_with_receipt("topic://news", &Outgoing::new("still here".to_string()))
        .await
        .expect("publish");
    wait_until("the STOMP subscriber gets the news", || {
        subscriber.got("still here") || subscriber.broken.load(Ordering::SeqCst)
    });
    assert!(
        !subscriber.broken.load(Ordering::SeqCst),
        "the STOMP subscriber was disconnected"
    );
    assert_eq!(
        mesh.member_mut("hub").pid(),
        Some(pid),
        "the member restarted"
    );
}
