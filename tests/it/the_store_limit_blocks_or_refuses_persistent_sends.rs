//! `store_limit` holds: with `on_full = "block"` persistent sends past it wait — the producer
//! stops being receipted while no consumer frees space, and the journal's segments stay within
//! the limit plus the one segment that takes what was already accepted — then a consumer drains
//! and the producer completes, nothing lost; with `on_full = "fail"` sends are refused with an
//! error that names the journal and `store_limit`, and accepted again once consumers made room.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Broker, Config, History, SharedHistory, GUARD};
use meshmq::client::{Client, ClientError, ErrorCode, ErrorKind, Outgoing};

const QUEUE: &str = "queue://bulk";
const SEGMENT: u64 = 64 << 10;
const LIMIT: u64 = 4 * SEGMENT;
/// Four times what the limit holds.
const TOTAL: usize = 1024;

fn config(on_full: &str) -> Config {
    Config::new()
        .broker(&format!("on_full = \"{on_full}\""))
        .broker("expiry_check_interval = \"50ms\"")
        .store("segment_size = \"64KiB\"")
        .store("store_limit = \"256KiB\"")
        .store("checkpoint_interval = \"100ms\"")
}

fn message(name: &str) -> Outgoing {
    Outgoing::new(format!("{name}|{}", "b".repeat(1000))).persistent(true)
}

fn journal_full(broker: &Broker) -> bool {
    common::metric_sum(&broker.metrics(), "meshmq_journal_full", &[]) == 1.0
}

/// Sends `names` one receipt at a time. A refusal ends it, unless `retry_when_full`: then a
/// send refused for a full journal is tried again a moment later.
async fn produce(
    client: Client,
    names: Vec<String>,
    history: SharedHistory,
    receipted: Arc<AtomicUsize>,
    retry_when_full: bool,
) -> Result<(), ClientError> {
    for name in names {
        history.lock().unwrap().sent(&name);
        loop {
            match client.send_with_receipt(QUEUE, &message(&name)).await {
                Ok(()) => break,
                Err(e) if retry_when_full && e.code() == Some(ErrorCode::ResourceExhausted) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => return Err(e),
            }
        }
        history.lock().unwrap().receipted(&name);
        receipted.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn persistent_sends_wait_at_the_store_limit_until_a_consumer_drains() {
    let broker = Broker::start(&config("block"));
    let history = History::shared();
    let receipted = Arc::new(AtomicUsize::new(0));
    let producer = tokio::spawn(produce(
        broker.client().await,
        (0..TOTAL).map(|i| format!("m{i:04}")).collect(),
        history.clone(),
        receipted.clone(),
        false,
    ));

    common::wait_until("the journal is full", || {
        assert!(
            !producer.is_finished(),
            "the producer finished with no consumer"
        );
        journal_full(&broker)
    });
    let at_limit = receipted.load(Ordering::Relaxed);
    // Give a broker that ignores its limit every chance to go on receipting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        receipted.load(Ordering::Relaxed),
        at_limit,
        "receipts went on past the store limit"
    );
    assert!(at_limit < TOTAL && !producer.is_finished());
    let segments: u64 = common::segment_files(&broker.journal_dir())
        .iter()
        .map(|p| std::fs::metadata(p).expect("segment").len())
        .sum();
    assert!(
        segments <= LIMIT + SEGMENT,
        "the journal's segments hold {segments} bytes, past the {LIMIT}-byte limit and the one segment beyond it that takes what was already accepted"
    );

    // A consumer drains: space is freed, the producer completes, nothing is lost.
    let draining = {
        let history = history.clone();
        let url = broker.url();
        tokio::spawn(async move { drain_until(url, &history, TOTAL).await })
    };
    tokio::time::timeout(GUARD, producer)
        .await
        .expect("the producer completes once a consumer drains")
        .expect("join")
        .expect("no send refused under on_full = block");
    tokio::time::timeout(GUARD, draining)
        .await
        .expect("drained")
        .expect("join");
    common::drain(&broker, QUEUE, &history).await;
    let h = history.lock().unwrap();
    h.check();
    assert_eq!(h.receipted_count(), TOTAL);
}

/// Consumes (acknowledging) until `count` distinct messages arrived.
async fn drain_until(url: String, history: &SharedHistory, count: usize) {
    let client = Client::connect(&url, Default::default())
        .await
        .expect("connect");
    let mut sub = client
        .subscribe(
            QUEUE,
            meshmq::client::SubscribeOptions {
                ack: meshmq::client::AckMode::ClientIndividual,
                prefetch: 50,
                ..Default::default()
            },
        )
        .await
        .expect("subscribe");
    while history.lock().unwrap().delivered_count() < count {
        let d = tokio::time::timeout(GUARD, sub.next())
            .await
            .expect("deliveries keep coming")
            .expect("subscription open");
        history
            .lock()
            .unwrap()
            .delivered(&common::message_name(&d.body), d.redelivery_count);
        sub.ack(&d).await.expect("ack");
    }
    client.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn persistent_sends_past_the_store_limit_are_refused_with_a_clear_error_under_fail() {
    let broker = Broker::start(&config("fail"));
    let history = History::shared();
    let receipted = Arc::new(AtomicUsize::new(0));
    // One producer fills the journal; the send that does not fit waits in the journal.
    let filler = tokio::spawn(produce(
        broker.client().await,
        (0..TOTAL).map(|i| format!("fill{i:04}")).collect(),
        history.clone(),
        receipted.clone(),
        true,
    ));
    common::wait_until("the journal is full", || {
        assert!(
            !filler.is_finished(),
            "the filler finished with no consumer"
        );
        journal_full(&broker)
    });

    // Another producer meets the full journal: refused, with an error that says why.
    let other = broker.client().await;
    history.lock().unwrap().sent("refused");
    let refusal = other
        .send_with_receipt(QUEUE, &message("refused"))
        .await
        .expect_err("a send to a full journal is refused under on_full = fail");
    assert_eq!(refusal.kind(), ErrorKind::Refused, "{refusal}");
    assert_eq!(
        refusal.code(),
        Some(ErrorCode::ResourceExhausted),
        "{refusal}"
    );
    let text = refusal.to_string();
    for word in ["journal", "store_limit", QUEUE] {
        assert!(
            text.contains(word),
            "the refusal does not mention {word:?}: {text}"
        );
    }
    assert!(!other.is_closed(), "a refusal does not end the connection");

    // Consumers make room: sends are accepted again and everything receipted arrives.
    let draining = {
        let history = history.clone();
        let url = broker.url();
        tokio::spawn(async move { drain_until(url, &history, TOTAL).await })
    };
    tokio::time::timeout(GUARD, filler)
        .await
        .expect("the filler completes once a consumer drains")
        .expect("join")
        .expect("the filler's sends were accepted");
    tokio::time::timeout(GUARD, draining)
        .await
        .expect("drained")
        .expect("join");
    history.lock().unwrap().sent("accepted");
    other
        .send_with_receipt(QUEUE, &message("accepted"))
        .await
        .expect("accepted again once there is room");
    history.lock().unwrap().receipted("accepted");
    common::drain(&broker, QUEUE, &history).await;
    let h = history.lock().unwrap();
    h.check();
    assert!(!h.was_delivered("refused"));
}
