//! The one history checker of the tests, with one meaning for each word it uses:
//!
//! - **sent**: a producer handed the message to its client;
//! - **accepted**: the producer was told the broker has it (a receipt, or a send the client
//!   reported no error for): it must arrive;
//! - **in doubt**: a send that failed without an answer and went again — the broker may hold
//!   it twice, so it may arrive twice;
//! - **lost**: accepted and never delivered;
//! - **invented**: delivered and never sent;
//! - **duplicate**: a delivery of a message after its first;
//! - **redelivered**: a delivery the broker flagged as possibly seen before. A message may
//!   arrive unflagged once; an *unflagged duplicate* (a second unflagged copy, of a send not
//!   in doubt) breaks the guarantee, a flagged duplicate is at-least-once;
//! - **overtaken**: the message's first copy was flagged and its one unflagged copy came
//!   later — in a mesh a forward sent again after a lost acknowledgement can overtake the
//!   original on another path. The single-broker, failover and rolling-restart tests forbid
//!   it; [`History`]'s verdict, used by the tests that cut links, does not count it (a forward
//!   sent again after its acknowledgement was lost on a cut link may still overtake).
//!
//! [`Ledger`] holds those facts for any message key (an id string, a sequence number) and
//! judges them; [`History`] is the ledger shared by a test's producer and consumer tasks, whose
//! message bodies are their ids (`<prefix>-<n>`), with the helpers that feed it
//! ([`send_numbered`], [`consume`], [`produce_in_batches`], [`QueueTraffic`]); its
//! [`History::judge`] keeps the overtaken that its verdict leaves out, and
//! [`History::out_of_order`] names the messages that reached a consumer after a later one of
//! their producer. The HA and crash
//! tests keep their own records of sends (`ha::History`, `SharedHistory`) and judge them with a
//! [`Ledger`] too.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshmq::client::{
    AckMode, Client, ClientOptions, Delivery, Outgoing, SubscribeOptions, Subscription,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What producers and consumers saw of each message (see the words in the module doc).
#[derive(Debug, Clone)]
pub struct Ledger<K: Ord> {
    pub sent: BTreeSet<K>,
    pub accepted: BTreeSet<K>,
    pub in_doubt: BTreeSet<K>,
    /// Every delivery of each message, in order: true where it was flagged redelivered.
    pub deliveries: BTreeMap<K, Vec<bool>>,
}

impl<K: Ord> Default for Ledger<K> {
    fn default() -> Ledger<K> {
        Ledger {
            sent: BTreeSet::new(),
            accepted: BTreeSet::new(),
            in_doubt: BTreeSet::new(),
            deliveries: BTreeMap::new(),
        }
    }
}

/// The judgement of a [`Ledger`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement<K> {
    pub lost: Vec<K>,
    pub invented: Vec<K>,
    pub unflagged_duplicates: Vec<K>,
    /// Flagged first, then its one unflagged copy (of a send not in doubt).
    pub overtaken: Vec<K>,
    /// Copies flagged redelivered beyond the one each message may arrive as (allowed: at
    /// least once).
    pub flagged_duplicates: usize,
}

impl<K: Ord + Clone> Judgement<K> {
    /// The unflagged duplicates and the overtaken messages together: every message that
    /// arrived unflagged after it had already arrived.
    pub fn unflagged_after_the_first(&self) -> Vec<K> {
        let mut all: Vec<K> = self
            .unflagged_duplicates
            .iter()
            .chain(&self.overtaken)
            .cloned()
            .collect();
        all.sort();
        all
    }
}

impl<K: Ord + Clone> Ledger<K> {
    pub fn sent(&mut self, key: K) {
        self.sent.insert(key);
    }

    /// Accepted (and so sent).
    pub fn accepted(&mut self, key: K) {
        self.sent.insert(key.clone());
        self.accepted.insert(key);
    }

    /// Sent again after a send that failed without an answer.
    pub fn in_doubt(&mut self, key: K) {
        self.sent.insert(key.clone());
        self.in_doubt.insert(key);
    }

    pub fn delivered(&mut self, key: K, redelivered: bool) {
        self.deliveries.entry(key).or_default().push(redelivered);
    }

    pub fn judge(&self) -> Judgement<K> {
        let lost = self
            .accepted
            .iter()
            .filter(|k| !self.deliveries.contains_key(*k))
            .cloned()
            .collect();
        let invented = self
            .deliveries
            .keys()
            .filter(|k| !self.sent.contains(*k))
            .cloned()
            .collect();
        let mut unflagged_duplicates = Vec::new();
        let mut overtaken = Vec::new();
        let mut flagged_duplicates = 0;
        for (key, copies) in &self.deliveries {
            let unflagged = copies.iter().filter(|r| !**r).count();
            // Every copy but one: the one is the unflagged copy, or else the first.
            flagged_duplicates += copies.len() - 1 - (unflagged.max(1) - 1);
            if self.in_doubt.contains(key) {
                continue;
            }
            if unflagged > 1 {
                unflagged_duplicates.push(key.clone());
            } else if unflagged == 1 && copies[0] {
                overtaken.push(key.clone());
            }
        }
        Judgement {
            lost,
            invented,
            unflagged_duplicates,
            overtaken,
            flagged_duplicates,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Ids sent and accepted (a send is recorded once the client took it without an error).
    sent: BTreeSet<String>,
    /// Sends whose outcome the producer never learned (no receipt, no refusal): they may
    /// arrive or not, so they are neither lost nor invented.
    in_doubt: BTreeSet<String>,
    /// id → every delivery: (consumer label, flagged redelivered).
    received: BTreeMap<String, Vec<(String, bool)>>,
    /// Every delivery in the order the consumers recorded them: (consumer label, id).
    arrivals: Vec<(String, String)>,
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
    /// Messages delivered again without the redelivery flag (must be none).
    pub unflagged_duplicates: Vec<String>,
    /// Duplicates flagged redelivered (allowed: at least once).
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
        let mut st = self.state.lock().unwrap();
        st.received
            .entry(id.to_string())
            .or_default()
            .push((consumer.to_string(), redelivered));
        st.arrivals.push((consumer.to_string(), id.to_string()));
    }

    /// Messages whose first copy reached a consumer after a later message of the same producer
    /// had reached that consumer (ids `<producer>-<n>`, n counting up per producer): a queue
    /// consumer whose own link never broke sees each producer's messages in the order sent.
    pub fn out_of_order(&self) -> Vec<String> {
        let st = self.state.lock().unwrap();
        let mut first = BTreeSet::new();
        let mut highest: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        let mut late = Vec::new();
        for (consumer, id) in &st.arrivals {
            if !first.insert(id.as_str()) {
                continue;
            }
            let Some((producer, n)) = id
                .rsplit_once('-')
                .and_then(|(p, n)| Some((p, n.parse::<u64>().ok()?)))
            else {
                continue;
            };
            let top = highest.entry((consumer.as_str(), producer)).or_insert(n);
            if n < *top {
                late.push(id.clone());
            }
            *top = (*top).max(n);
        }
        late
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

    /// The history as a [`Ledger`]: what was sent (accepted), in doubt and delivered.
    fn ledger(st: &State) -> Ledger<String> {
        let mut ledger = Ledger::default();
        for id in &st.sent {
            ledger.accepted(id.clone());
        }
        // Sent with no receipt and no refusal: neither lost nor invented; a second unflagged
        // copy of one is still an unflagged duplicate (its producer did not send it twice).
        for id in &st.in_doubt {
            ledger.sent(id.clone());
        }
        for (id, copies) in &st.received {
            for (_, redelivered) in copies {
                ledger.delivered(id.clone(), *redelivered);
            }
        }
        ledger
    }

    /// The ledger's full judgement, overtaken messages included (which [`History::verdict`]
    /// leaves out), for tests whose links never break under a forward.
    pub fn judge(&self) -> Judgement<String> {
        History::ledger(&self.state.lock().unwrap()).judge()
    }

    pub fn verdict(&self) -> Verdict {
        let st = self.state.lock().unwrap();
        let mut by_consumer: BTreeMap<String, usize> = BTreeMap::new();
        for (consumer, _) in st.received.values().flatten() {
            *by_consumer.entry(consumer.clone()).or_default() += 1;
        }
        let judged = History::ledger(&st).judge();
        Verdict {
            sent: st.sent.len(),
            delivered: st.sent.len() - judged.lost.len(),
            lost: judged.lost,
            invented: judged.invented,
            unflagged_duplicates: judged.unflagged_duplicates,
            flagged_duplicates: judged.flagged_duplicates,
            by_consumer,
        }
    }

    /// Waits (within the guard) until every sent message has arrived at least once.
    pub async fn wait_all_delivered(&self) {
        let every_message = || self.verdict().lost.is_empty();
        super::wait::poll()
            .until_async_or("every sent message arrived", every_message, || {
                let v = self.verdict();
                format!(
                    "{} of {} messages never arrived (e.g. {}); per consumer {:?}",
                    v.lost.len(),
                    v.sent,
                    sample(&v.lost),
                    v.by_consumer
                )
            })
            .await;
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

/// Subscribes `client` to `dest` with individual acknowledgements (default prefetch) and
/// consumes it into `history` under `label` (see [`consume`]).
pub async fn consume_individually(
    client: &Client,
    dest: &str,
    history: &History,
    label: &str,
    stop: CancellationToken,
) -> JoinHandle<Subscription> {
    let sub = client
        .subscribe(
            dest,
            SubscribeOptions {
                ack: AckMode::ClientIndividual,
                ..SubscribeOptions::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{label} subscribes to {dest}: {e}"));
    consume(sub, history, label, stop)
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
    let (client, sub) = individual_subscriber(url, dest, label).await;
    consume(sub, history, label, stop.clone());
    client
}

/// A client connected through `url` (a failover URL, usually) with a subscription to queue
/// `dest`: individual acks, a prefetch of 20 — the consumer of the tests that judge a history.
pub async fn individual_subscriber(url: &str, dest: &str, label: &str) -> (Client, Subscription) {
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
    (client, sub)
}

/// Queue traffic for the tests that change a mesh under load (a drain, a rolling apply): queue
/// consumers `c0`, `c1`, … (see [`queue_consumer`]) and a batch producer (see
/// [`produce_in_batches`]), all recording into one [`History`]; [`QueueTraffic::stop`] ends it
/// in order — the producer, then every sent message arrived, then the consumers — and judges it.
pub struct QueueTraffic {
    pub history: History,
    pub consumers: Vec<Client>,
    pub producer: Option<Client>,
    queue: &'static str,
    stop_consumers: CancellationToken,
    stop_producing: CancellationToken,
    sending: Option<JoinHandle<usize>>,
}

impl QueueTraffic {
    pub fn new(queue: &'static str) -> QueueTraffic {
        QueueTraffic {
            history: History::new(),
            consumers: Vec::new(),
            producer: None,
            queue,
            stop_consumers: CancellationToken::new(),
            stop_producing: CancellationToken::new(),
            sending: None,
        }
    }

    /// Adds `n` consumers through `url`, labelled on from the ones there are.
    pub async fn consumers(&mut self, url: &str, n: usize) {
        for _ in 0..n {
            let label = format!("c{}", self.consumers.len());
            let c = queue_consumer(url, self.queue, &self.history, &label, &self.stop_consumers);
            self.consumers.push(c.await);
        }
    }

    /// Connects the producer through `url` and starts it (at most `max_batches` batches).
    pub async fn produce(&mut self, url: &str, max_batches: usize) {
        let producer = Client::connect(url, ClientOptions::default())
            .await
            .unwrap_or_else(|e| panic!("the producer connects to {url}: {e}"));
        self.sending = Some(produce_in_batches(
            producer.clone(),
            &self.history,
            self.queue,
            max_batches,
            self.stop_producing.clone(),
        ));
        self.producer = Some(producer);
    }

    /// True once each of the first `n` consumers has had 20 messages.
    pub fn flowing(&self, n: usize) -> bool {
        (0..n).all(|i| self.history.count_by(&format!("c{i}")) >= 20)
    }

    /// Stops the producer (which must have seen no error), waits until every sent message has
    /// arrived, stops the consumers, and prints the verdict under `what`.
    pub async fn stop(&mut self, what: &str) -> Verdict {
        self.stop_producing.cancel();
        let sending = self.sending.take().expect("the producer was started");
        let sent = sending.await.expect("the producer saw no error");
        self.history.wait_all_delivered().await;
        self.stop_consumers.cancel();
        let verdict = self.history.verdict();
        println!(
            "{what}: {sent} sent, {} delivered, {} lost, {} flagged duplicates, per consumer {:?}",
            verdict.delivered,
            verdict.lost.len(),
            verdict.flagged_duplicates,
            verdict.by_consumer
        );
        verdict
    }

    /// Every client, labelled: `c0`, `c1`, …, then `producer`.
    pub fn labelled(&self) -> Vec<(String, &Client)> {
        self.consumers
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("c{i}"), c))
            .chain(self.producer.iter().map(|p| ("producer".to_string(), p)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{Judgement, Ledger};

    /// Each word of the module doc, on a history made to show it.
    #[test]
    fn the_ledger_judges_lost_invented_and_duplicates_by_the_words() {
        let mut l = Ledger::default();
        for seq in 1..=6 {
            l.accepted(seq);
        }
        l.in_doubt(7);
        l.sent(8);
        // 1: once. 2: never (lost). 3: again, flagged. 4: again, unflagged. 5: first copy
        // flagged, then an unflagged one (overtaken). 7: twice unflagged, but its send was in doubt.
        // 8: sent, not accepted, never delivered (not lost). 9: never sent (invented).
        for (seq, redelivered) in [
            (1, false),
            (3, false),
            (3, true),
            (4, false),
            (4, false),
            (5, true),
            (5, false),
            (6, false),
            (7, false),
            (7, false),
            (9, false),
        ] {
            l.delivered(seq, redelivered);
        }
        assert_eq!(
            l.judge(),
            Judgement {
                lost: vec![2],
                invented: vec![9],
                unflagged_duplicates: vec![4],
                overtaken: vec![5],
                flagged_duplicates: 2,
            }
        );
    }
}
