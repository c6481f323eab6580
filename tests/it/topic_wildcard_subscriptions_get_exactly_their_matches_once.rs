//! Topic subscriptions with `*` (one segment) and `>` (one or more trailing segments) each get
//! exactly the messages of the topics they match, once each, in publish order.

use crate::common;

use std::time::Duration;

use common::{Broker, Config, GUARD};
use meshmq::client::{Outgoing, SubscribeOptions};

const TOPICS: &[&str] = &[
    "prices.eu",
    "prices.us",
    "prices.eu.fr",
    "prices.us.fr",
    "prices.eu.fr.paris",
    "stocks.eu",
];

/// Each subscription and the topics it must match, written out by hand (not computed by the
/// matcher under test).
const EXPECTED: &[(&str, &[&str])] = &[
    ("topic://prices.eu", &["prices.eu"]),
    ("topic://prices.*", &["prices.eu", "prices.us"]),
    (
        "topic://prices.>",
        &[
            "prices.eu",
            "prices.us",
            "prices.eu.fr",
            "prices.us.fr",
            "prices.eu.fr.paris",
        ],
    ),
    ("topic://prices.*.fr", &["prices.eu.fr", "prices.us.fr"]),
    ("topic://*.eu", &["prices.eu", "stocks.eu"]),
    (
        "topic://prices.eu.>",
        &["prices.eu.fr", "prices.eu.fr.paris"],
    ),
    ("topic://*.*.fr.*", &["prices.eu.fr.paris"]),
    ("topic://>", TOPICS),
];

const ROUNDS: usize = 5;

/// Every message in publish order: ROUNDS rounds of one message per topic, then one `end`
/// message per topic. A subscription's last matching `end` is the last thing it can receive.
fn published() -> Vec<(String, String)> {
    let mut all = Vec::new();
    for round in 0..ROUNDS {
        for t in TOPICS {
            all.push((t.to_string(), format!("data-{round}-{t}")));
        }
    }
    for t in TOPICS {
        all.push((t.to_string(), format!("end-{t}")));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_wildcard_subscription_gets_exactly_its_matching_messages_once() {
    let broker = Broker::start(&Config::new());
    let url = broker.url();

    let mut subscribers = Vec::new();
    for (pattern, topics) in EXPECTED {
        let client = broker.client().await;
        let sub = client
            .subscribe(pattern, SubscribeOptions::default())
            .await
            .unwrap_or_else(|e| panic!("subscribe {pattern}: {e}"));
        let expected: Vec<(String, String)> = published()
            .into_iter()
            .filter(|(t, _)| topics.contains(&t.as_str()))
            .collect();
        subscribers.push((pattern, client, sub, expected));
    }

    let producer = meshmq::client::Client::connect(&url, Default::default())
        .await
        .expect("connect producer");
    for (topic, body) in published() {
        producer
            .send_with_receipt(&format!("topic://{topic}"), &Outgoing::new(body))
            .await
            .expect("publish");
    }

    for (pattern, _client, sub, expected) in &mut subscribers {
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let d = tokio::time::timeout(GUARD, sub.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{pattern}: only {} of {} arrived",
                        got.len(),
                        expected.len()
                    )
                })
                .expect("subscription open");
            let topic = d
                .destination
                .strip_prefix("topic://")
                .expect("delivered from a concrete topic")
                .to_string();
            let body = String::from_utf8(d.body.to_vec()).expect("utf-8");
            assert_eq!(d.redelivery_count, 0);
            got.push((topic, body));
        }
        assert_eq!(
            &got, expected,
            "{pattern}: exactly its matches, once, in order"
        );
    }

    // Nothing more is on its way: asking for one more message acknowledges everything taken
    // (auto ack) and must find nothing; then each topic has delivered and had acknowledged
    // exactly one copy per matching subscription, with nothing left pending or in flight.
    for (pattern, _client, sub, _) in &mut subscribers {
        if let Some(extra) = sub.next_timeout(Duration::from_millis(100)).await {
            panic!("{pattern} got an extra message: {extra:?}");
        }
    }
    for t in TOPICS {
        let matching = EXPECTED.iter().filter(|(_, ts)| ts.contains(t)).count() as u64;
        let per_topic = (ROUNDS + 1) as u64;
        common::wait_until(&format!("topic://{t} has every copy acknowledged"), || {
            let s = broker.destination(&format!("topic://{t}"));
            assert_eq!(s.enqueued, per_topic, "{s:?}");
            assert!(
                s.dequeued <= per_topic * matching,
                "more copies than matches: {s:?}"
            );
            s.dequeued == per_topic * matching && s.pending == 0 && s.inflight == 0
        });
    }
}
