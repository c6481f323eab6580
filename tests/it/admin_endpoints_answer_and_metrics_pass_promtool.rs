//! The admin port answers: `/metrics` after varied traffic passes `promtool check metrics`
//! with no lint output, and `/status`, `/healthz` and `/readyz` answer as documented.
//! `promtool` comes from Debian's `prometheus` package (`make test-deps` installs it); without
//! it this test fails, it never skips.

use crate::common;

use common::{promtool_check, Broker, Config, RawConn, GUARD};
use meshmq::client::{AckMode, Client, Outgoing, SubscribeOptions};
use meshmq::wire::{proto, Body};

/// Traffic that makes every kind of series appear: sends, deliveries, redeliveries, a DLQ, a
/// topic with a dropping subscriber, a refused send, a refused connection and a bad frame.
async fn traffic(broker: &Broker) {
    let client = broker.client().await;
    let mut sub = client
        .subscribe(
            "queue://orders",
            SubscribeOptions {
                ack: AckMode::ClientIndividual,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe");
    for i in 0..20 {
        client
            .send_with_receipt("queue://orders", &Outgoing::new(format!("o{i}")))
            .await
            .expect("send");
    }
    // o0 and o10 are refused twice each, which sends them to the DLQ (max_redeliveries = 1).
    let mut settled = 0;
    while settled < 20 {
        let d = tokio::time::timeout(GUARD, sub.next())
            .await
            .expect("delivery")
            .expect("open");
        if d.body.ends_with(b"0") {
            sub.nack(&d).await.expect("nack");
            settled += usize::from(d.redelivery_count == 1);
        } else {
            sub.ack_with_receipt(&d).await.expect("ack");
            settled += 1;
        }
    }

    let mut slow = client
        .subscribe(
            "topic://ticks",
            SubscribeOptions {
                prefetch: 1,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe topic");
    for i in 0..50 {
        client
            .send("topic://ticks", &Outgoing::new(format!("t{i}")))
            .await
            .expect("publish");
    }
    client.flush().await.expect("flush");
    assert!(slow.next_timeout(GUARD).await.is_some());

    let big = Outgoing::new(vec![0u8; 4096]);
    client
        .send_with_receipt("queue://tiny", &big)
        .await
        .expect("the first message fits");
    let refused = client.send_with_receipt("queue://tiny", &big).await;
    assert!(
        refused.is_err(),
        "queue://tiny is over its limit after one message"
    );

    let extra: Vec<Client> = {
        let mut v = Vec::new();
        while v.len() < 2 {
            v.push(broker.client().await);
        }
        v
    };
    assert!(Client::connect(&broker.url(), Default::default())
        .await
        .is_err());
    drop(extra);
    common::wait_until("the extra clients have gone", || {
        broker.status().connections == 1
    });

    let addr = broker.ports().listen_addr();
    tokio::task::spawn_blocking(move || {
        let mut raw = RawConn::open(addr);
        raw.send(Body::Receipt(proto::Receipt { receipt: 1 }));
        raw.expect_error_then_eof();
    })
    .await
    .expect("bad frame answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_pass_promtool_and_status_healthz_readyz_answer() {
    let broker = Broker::start(
        &Config::new()
            .broker("max_redeliveries = 1")
            .broker("topic_pending_limit = 5")
            .listener("max_connections = 3")
            .section("[[policy]]\ndestination = \"queue://tiny\"\nmemory_limit = \"4KiB\"\non_full = \"fail\""),
    );
    traffic(&broker).await;

    let metrics = broker.metrics();
    for family in [
        "meshmq_connections_accepted_total",
        "meshmq_connections_refused_total",
        "meshmq_bad_frames_total",
        "meshmq_messages_received_total",
        "meshmq_messages_delivered_total",
        "meshmq_sends_refused_total",
        "meshmq_destination_dead_lettered_total",
        "meshmq_destination_dropped_total",
        "meshmq_destination_redelivered_total",
        "meshmq_memory_used_bytes",
        "meshmq_producers",
        "meshmq_consumers",
        "meshmq_slow_consumers",
        "meshmq_dispatch_latency_seconds",
        "meshmq_end_to_end_latency_seconds",
        "meshmq_destination_depth",
        "meshmq_process_resident_memory_bytes",
        "meshmq_up",
        "meshmq_ha_role",
        "meshmq_ha_epoch",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {family} ")),
            "{family} is exported:\n{metrics}"
        );
    }
    for line in metrics
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        assert!(line.starts_with("meshmq_"), "{line}");
        assert!(
            line.contains("group=\"hub\"") && line.contains("member=\"hub-1\""),
            "every series names its member: {line}"
        );
    }
    let checked = promtool_check(&metrics);
    let lint = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(checked.status.success(), "promtool: {lint}\n{metrics}");
    assert_eq!(lint, "", "promtool has no complaint");

    let status = broker.status();
    assert_eq!(
        (
            status.mesh.as_str(),
            status.group.as_str(),
            status.member.as_str()
        ),
        ("test", "hub", "hub-1")
    );
    assert_eq!(status.role, "master");
    assert!(status.ready);
    assert_eq!(status.listeners.len(), 1);
    assert_eq!(status.listeners[0].url, broker.url());
    assert_eq!(
        status.listeners[0].bound,
        broker.ports().listen_addr().to_string()
    );
    assert!(status.process.rss_bytes > 0 && status.process.open_fds > 0);
    let dlq = status
        .destinations
        .iter()
        .find(|d| d.destination == "queue://DLQ.orders")
        .expect("the DLQ is listed");
    assert_eq!(dlq.depth, 2);

    assert_eq!(
        common::http_get(broker.admin(), "/healthz").expect("healthz"),
        (200, "ok\n".to_string())
    );
    assert_eq!(
        common::http_get(broker.admin(), "/readyz").expect("readyz"),
        (200, "ready\n".to_string())
    );
    let (code, _) = common::http_get(broker.admin(), "/no-such-page").expect("404");
    assert_eq!(code, 404);
}
