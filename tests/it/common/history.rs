//! A history checker for delivery guarantees: what producers sent (and the broker accepted),
//! what each consumer received, and a verdict — every message delivered, none invented, and a
//! message delivered more than once only when its later copies are flagged redelivered.
//!
//! Message bodies are their ids (`<prefix>-<n>`), so a delivery names its message.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshmq::client::{
    AckMode, Client, ClientOptions, Delivery, Outgoing, SubscribeOptions, Subscription,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::GUARD;

#[derive(Debug, Default)]
struct State {
    sent: BTreeSet<String>,
    /// Sends whose outcome the producer never learned (no receipt, no refusal): they may
    /// arrive or not, so they are neither lost nor invented.
    in_doubt: BTreeSet<String>,
    /// id → every delivery: (consumer label, flagged redelivered).
    received: BTreeMap<String, Vec<(String, bool)>>,
}

/// Shared by the test's producers and consumers (clone freely).
#[derive(Debug, Clone, Default)]
pub struct History {
    state: Arc<Mutex<State>>,
}

/// What the history shows.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub sent: usize,
    /// Distinct sent messages that arrived at least once.
    pub delivered: usize,
    pub lost: Vec<String>,
    pub invented: Vec<String>,
    /// Deliveries beyond the first that were not flagged redelivered (must be none).
    pub unflagged_duplicates: Vec<String>,
    /// Deliveries beyond the first that were flagged redelivered (allowed: at least once).
    pub flagged_duplicates: usize,
    /// Deliveries per consumer label.
    pub by_consumer: BTreeMap<String, usize>,
}

impl Verdict {
    /// Fails the test unless every message arrived, none was invented and every extra copy
    /// was flagged redelivered.
    pub fn assert_ok(&self) {
        assert!(
            self.lost.is_empty() && self.invented.is_empty() && self.unflagged_duplicates.is_empty(),
            "history broken: {} sent, {} delivered; lost {:?}; invented {:?}; unflagged duplicates {:?}; per consumer {:?}",
            self.sent,
            self.delivered,
            sample(&self.lost),
            sample(&self.invented),
            sample(&self.unflagged_duplicates),
            self.by_consumer
        );
    }

    /// `assert_ok`, and not even a flagged duplicate.
    pub fn assert_exactly_once(&self) {
        self.assert_ok();
        assert_eq!(
            self.flagged_duplicates, 0,
            "{} messages arrived again (flagged redelivered); per consumer {:?}",
            self.flagged_duplicates, self.by_consumer
        );
    }
}

fn sample(ids: &[String]) -> String {
    if ids.len() <= 10 {
        format!("{ids:?}")
    } else {
        format!("{:?} and {} more", &ids[..10], ids.len() - 10)
    }
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    pub fn sent(&self, id: &str) {
        self.state.lock().unwrap().sent.insert(id.to_string());
    }

    /// A send whose receipt never came: it may arrive or not.
    pub fn in_doubt(&self, id: &str) {
        self.state.lock().unwrap().in_doubt.insert(id.to_string());
    }

    pub fn received(&self, consumer: &str, id: &str, redelivered: bool) {
        self.state
            .lock()
            .unwrap()
            .received
            .entry(id.to_string())
            .or_default()
            .push((consumer.to_string(), redelivered));
    }

    /// Distinct messages received so far.
    pub fn distinct_received(&self) -> usize {
        self.state.lock().unwrap().received.len()
    }

    /// Deliveries `consumer` got so far.
    pub fn count_by(&self, consumer: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .received
            .values()
            .flatten()
            .filter(|(c, _)| c == consumer)
            .count()
    }

    pub fn verdict(&self) -> Verdict {
        let st = self.state.lock().unwrap();
        let mut v = Verdict {
            sent: st.sent.len(),
            ..Verdict::default()
        };
        for id in &st.sent {
            if st.received.contains_key(id) {
                v.delivered += 1;
            } else {
                v.lost.push(id.clone());
            }
        }
        for (id, copies) in &st.received {
            if !st.sent.contains(id) && !st.in_doubt.contains(id) {
                v.invented.push(id.clone());
            }
            for (consumer, _) in copies {
                *v.by_consumer.entry(consumer.clone()).or_default() += 1;
            }
            // The first copy may be flagged (its first forward was lost on the way); every
            // copy after the first unflagged one must be flagged.
            let unflagged = copies.iter().filter(|(_, r)| !*r).count();
            if unflagged > 1 {
                v.unflagged_duplicates.push(id.clone());
            }
            v.flagged_duplicates += copies.len() - 1 - (unflagged.max(1) - 1);
        }
        v
    }

    /// Waits (within the guard) until every sent message has arrived at least once.
    pub async fn wait_all_delivered(&self) {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let v = self.verdict();
            if v.lost.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gave up after {GUARD:?}: {} of {} messages never arrived (e.g. {}); per consumer {:?}",
                v.lost.len(),
                v.sent,
                sample(&v.lost),
                v.by_consumer
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Sends `<prefix>-<n>` for each n in `range` to `dest`, recording each as sent. Every 100th
/// and the last wait for the broker's receipt (the client→broker link is never faulted, so
/// the final receipt covers the ones before it); any refusal fails the test.
pub async fn send_numbered(
    client: &Client,
    history: &History,
    dest: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
    persistent: bool,
) {
    let last = range.end.saturating_sub(1);
    for n in range {
        let id = format!("{prefix}-{n}");
        let msg = Outgoing::new(id.clone()).persistent(persistent);
        if n % 100 == 99 || n == last {
            client
                .send_with_receipt(dest, &msg)
                .await
                .unwrap_or_else(|e| panic!("send {id} to {dest}: {e}"));
        } else {
            client
                .send(dest, &msg)
                .await
                .unwrap_or_else(|e| panic!("send {id} to {dest}: {e}"));
        }
        history.sent(&id);
    }
    let errors = client.take_errors();
    assert!(
        errors.is_empty(),
        "sends to {dest} were refused: {errors:?}"
    );
}

/// A consumer task: records every delivery under `label` and acknowledges it, until `stop`
/// fires or the connection ends. Returns the subscription when stopped (so the test decides
/// whether to unsubscribe or close).
pub fn consume(
    mut sub: Subscription,
    history: &History,
    label: &str,
    stop: CancellationToken,
) -> JoinHandle<Subscription> {
    let (history, label) = (history.clone(), label.to_string());
    tokio::spawn(async move {
        loop {
            let d: Delivery = tokio::select! {
                d = sub.next() => match d {
                    Some(d) => d,
                    None => return sub,
                },
                _ = stop.cancelled() => return sub,
            };
            history.received(&label, &String::from_utf8_lossy(&d.body), d.redelivered());
            if sub.ack(&d).await.is_err() {
                return sub;
            }
        }
    })
}

/// A producer task: persistent sends of `m-<n>` to `dest` in batches of 50 (each batch's last
/// one receipted) every 20 ms until `stop`, then one last batch — at most `max_batches` in
/// all; any refusal or error panics the task. Returns how many it sent.
pub fn produce_in_batches(
    client: Client,
    history: &History,
    dest: &'static str,
    max_batches: usize,
    stop: CancellationToken,
) -> JoinHandle<usize> {
    let history = history.clone();
    tokio::spawn(async move {
        let mut batch = 0;
        loop {
            let last = stop.is_cancelled();
            send_numbered(
                &client,
                &history,
                dest,
                "m",
                batch * 50..(batch + 1) * 50,
                true,
            )
            .await;
            batch += 1;
            if last || batch >= max_batches {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        batch * 50
    })
}

/// A consumer of queue `dest` through `url` (a failover URL, usually): individual acks, a
/// prefetch of 20, every delivery recorded under `label` (see [`consume`]) until `stop`.
pub async fn queue_consumer(
    url: &str,
    dest: &str,
    history: &History,
    label: &str,
    stop: &CancellationToken,
) -> Client {
    let client = Client::connect(url, ClientOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{label} connects to {url}: {e}"));
    let sub = client
        .subscribe(
            dest,
            SubscribeOptions {
                ack: AckMode::ClientIndividual,
                prefetch: 20,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe");
    consume(sub, history, label, stop.clone());
    client
}
