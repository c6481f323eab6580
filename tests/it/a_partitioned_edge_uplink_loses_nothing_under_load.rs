//! S29 scaled down for CI: a hub and three edges at default settings (each edge binds its own
//! address of this file's range 127.0.20.0/24 and dials the hub over a duplex uplink), 300
//! consumer connections on the edges — queue consumers on 30 queues, six of which have
//! consumers only behind one edge, and subscribers of 3 topics — and producers on the hub at a
//! steady 200 messages a second of 1 KB, half of them persistent with a receipt. Halfway, that
//! one edge's uplink is cut with iptables (both ways) for 15 s, then healed. Nothing is lost:
//! every queue message (persistent or not) reaches a consumer, every extra copy is flagged
//! redelivered and there are no more of them than forwards the cut left unacknowledged; every
//! topic subscriber gets each message of its topic at most once, and all of them — except, on
//! the cut edge, those published while its uplink was down (README: a topic message reaches
//! the subscribers it has when it is published, and a group cut off has none at the hub). The
//! messages stranded on the hub during the cut are delivered within 60 s of the heal; outside
//! the partition window the p99 end-to-end latency stays under a generous bound, each broker's
//! RSS stays bounded, and `/metrics` answers within a second with every connection open.
//!
//! Skipped, saying why, only when not run as root (iptables needs root; CI runs as root).

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::history::History;
use common::iptables::{unusable, Partition};
use common::{wait_until, Mesh, MeshConfig};
use meshmq::client::{AckMode, Client, ClientOptions, Outgoing, SubscribeOptions};
use tokio_util::sync::CancellationToken;

const EDGES: [&str; 3] = ["edge1", "edge2", "edge3"];
/// The edge whose uplink is cut.
const CUT: &str = "edge1";
const QUEUES: usize = 30;
/// Queues `0..STRANDED` have consumers only on the cut edge: their messages wait on the hub
/// while the uplink is down.
const STRANDED: usize = 6;
const TOPICS: usize = 3;
const QUEUE_CONSUMERS_PER_EDGE: usize = 80;
const TOPIC_SUBSCRIBERS_PER_EDGE: usize = 20;
/// Producers on the hub, each sending one message every `PERIOD` (200 a second in all); every
/// fifth message goes to a topic, the others to queues; every other one is persistent.
const PRODUCERS: usize = 8;
const PERIOD: Duration = Duration::from_millis(40);
const BODY_BYTES: usize = 1024;
const BEFORE_CUT: Duration = Duration::from_secs(15);
const CUT_FOR: Duration = Duration::from_secs(15);
/// Load after the uplink is back (bridge up and the edge's demand known again at the hub).
const AFTER_BACK: Duration = Duration::from_secs(12);
/// Messages sent this long before the cut may still be on their way when it comes.
const BEFORE_MARGIN: Duration = Duration::from_secs(5);
/// Backlogs are delivered within this after the uplink is back (latency window's end).
const AFTER_MARGIN: Duration = Duration::from_secs(3);
/// The stranded messages drain within this after the heal (S29).
const DRAIN_BUDGET: Duration = Duration::from_secs(60);
/// p99 end-to-end latency outside the partition window: S29 asks for 250 ms on a quiet box;
/// this leaves headroom for a loaded 2-core CI machine running other tests.
const P99_BOUND: Duration = Duration::from_secs(2);
const RSS_BOUND: u64 = 256 << 20;
const SCRAPE_BOUND: Duration = Duration::from_secs(1);

fn queue(i: usize) -> String {
    format!("queue://soak.q{i:02}")
}

fn topic(i: usize) -> String {
    format!("topic://soak.t{i}")
}

/// A message as sent: its destination, whether persistent, and when (µs since the start).
#[derive(Debug, Clone)]
struct Sent {
    dest: String,
    persistent: bool,
    at_us: u64,
}

/// Everything the producers and consumers saw.
#[derive(Default)]
struct Log {
    sent: HashMap<String, Sent>,
    /// (sent at, received at) of every delivery, in µs since the start.
    latencies: Vec<(u64, u64)>,
    /// Queue message id → when it was first delivered (µs).
    first_delivery: HashMap<String, u64>,
    /// Topic subscriber → (its edge, its topic, the ids it received, in order).
    topic_received: HashMap<usize, (String, String, Vec<String>)>,
}

type Shared = Arc<Mutex<Log>>;

fn micros(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

/// `id@sent_us|padding` → (id, sent µs).
fn parse(body: &[u8]) -> (String, u64) {
    let text = String::from_utf8_lossy(body);
    let head = text.split('|').next().expect("a body");
    let (id, at) = head.split_once('@').expect("id@micros");
    (id.to_string(), at.parse().expect("micros"))
}

async fn connect(url: &str) -> Client {
    Client::connect(url, ClientOptions::default())
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// A queue consumer on `edge`: records and acknowledges each delivery until `stop`.
async fn queue_consumer(
    url: String,
    edge: &'static str,
    dest: String,
    history: History,
    log: Shared,
    start: Instant,
    stop: CancellationToken,
) -> Client {
    let client = connect(&url).await;
    let mut sub = client
        .subscribe(
            &dest,
            SubscribeOptions {
                ack: AckMode::ClientIndividual,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe");
    tokio::spawn(async move {
        loop {
            let d = tokio::select! {
                d = sub.next() => match d { Some(d) => d, None => return },
                _ = stop.cancelled() => return,
            };
            let now = micros(start);
            let (id, at) = parse(&d.body);
            history.received(edge, &id, d.redelivered());
            {
                let mut log = log.lock().unwrap();
                log.latencies.push((at, now));
                log.first_delivery.entry(id).or_insert(now);
            }
            if sub.ack(&d).await.is_err() {
                return;
            }
        }
    });
    client
}

/// Topic subscriber `n` on `edge`: records each delivery until `stop`.
async fn topic_subscriber(
    url: String,
    n: usize,
    dest: String,
    log: Shared,
    start: Instant,
    stop: CancellationToken,
) -> Client {
    let client = connect(&url).await;
    let mut sub = client
        .subscribe(&dest, SubscribeOptions::default())
        .await
        .expect("subscribe");
    tokio::spawn(async move {
        loop {
            let d = tokio::select! {
                d = sub.next() => match d { Some(d) => d, None => return },
                _ = stop.cancelled() => return,
            };
            let now = micros(start);
            let (id, at) = parse(&d.body);
            let mut log = log.lock().unwrap();
            log.latencies.push((at, now));
            log.topic_received
                .get_mut(&n)
                .expect("a registered subscriber")
                .2
                .push(id);
        }
    });
    client
}

/// Producer `p` on the hub: one message every `PERIOD` until `stop`.
async fn produce(
    client: Client,
    p: usize,
    history: History,
    log: Shared,
    start: Instant,
    stop: CancellationToken,
) {
    let padding = "x".repeat(BODY_BYTES - 40);
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0usize;
    while !stop.is_cancelled() {
        tick.tick().await;
        let id = format!("p{p}-{n}");
        let dest = if n % 5 == 4 {
            topic((p + n / 5) % TOPICS)
        } else {
            queue((p * 7 + n) % QUEUES)
        };
        let persistent = n % 2 == 0;
        let at = micros(start);
        let msg = Outgoing::new(format!("{id}@{at}|{padding}")).persistent(persistent);
        if persistent {
            client
                .send_with_receipt(&dest, &msg)
                .await
                .unwrap_or_else(|e| panic!("send {id} to {dest}: {e}"));
        } else {
            client
                .send(&dest, &msg)
                .await
                .unwrap_or_else(|e| panic!("send {id} to {dest}: {e}"));
        }
        if dest.starts_with("queue://") {
            history.sent(&id);
        }
        log.lock().unwrap().sent.insert(
            id,
            Sent {
                dest,
                persistent,
                at_us: at,
            },
        );
        n += 1;
    }
    let errors = client.take_errors();
    assert!(errors.is_empty(), "producer {p}: sends refused: {errors:?}");
}

/// What the topic subscribers got.
#[derive(Debug, Default)]
struct TopicCheck {
    /// Deliveries owed: each message of a subscriber's topic, except on the cut edge those
    /// published in the partition window.
    expected: usize,
    missing: Vec<String>,
    duplicates: Vec<String>,
    /// On the cut edge, messages published in the window that arrived anyway, and those that
    /// did not.
    arrived_in_window: usize,
    undelivered_in_window: usize,
}

/// Checks every topic subscriber against what was published, `window` (µs) being when the
/// cut edge had no subscription at the hub: from a margin before the cut (a message may still
/// be on its way when it comes) until its uplink was back with its demand.
fn check_topics(log: &Log, window: (u64, u64)) -> TopicCheck {
    let mut check = TopicCheck::default();
    for (n, (edge, dest, got)) in &log.topic_received {
        let mut seen = std::collections::HashSet::new();
        for id in got {
            if !seen.insert(id.as_str()) {
                check.duplicates.push(format!("{id} to subscriber {n}"));
            }
            assert!(
                log.sent.contains_key(id),
                "subscriber {n} got {id}, never sent"
            );
        }
        for (id, s) in log.sent.iter().filter(|(_, s)| &s.dest == dest) {
            if edge == CUT && s.at_us >= window.0 && s.at_us <= window.1 {
                if seen.contains(id.as_str()) {
                    check.arrived_in_window += 1;
                } else {
                    check.undelivered_in_window += 1;
                }
                continue;
            }
            check.expected += 1;
            if !seen.contains(id.as_str()) {
                check.missing.push(format!(
                    "{id} (sent at {} ms) to subscriber {n} on {edge}",
                    s.at_us / 1000
                ));
            }
        }
    }
    check
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_edge_uplink_loses_nothing_under_load() {
    if let Some(why) = unusable() {
        eprintln!("skipped: {why}");
        return;
    }
    let began = Instant::now();
    let mut partition = Partition::new([127, 0, 20], "soak");
    let hub_ip = partition.ip(1);
    let mut config = MeshConfig::new().group("hub").at("hub", hub_ip);
    for (i, edge) in EDGES.iter().enumerate() {
        // Uplinks at the product's defaults (the harness's quicker redial is not used).
        config = config
            .group(edge)
            .at(edge, partition.ip(11 + i as u8))
            .connector(
                edge,
                "hub",
                &[
                    "duplex = true",
                    "reconnect_initial_delay = \"1s\"",
                    "reconnect_max_delay = \"30s\"",
                ],
            );
    }
    let mesh = Mesh::start(&config);
    let hub = mesh.member("hub");
    let uplink = |edge: &str| format!("{edge}-hub");

    let start = Instant::now();
    let (history, log) = (History::new(), Shared::default());
    let stop_consumers = CancellationToken::new();
    let mut consumers = Vec::new();
    for edge in EDGES {
        let url = mesh.member(edge).url();
        let mut opening = Vec::new();
        for k in 0..QUEUE_CONSUMERS_PER_EDGE {
            let q = if edge == CUT {
                k % QUEUES
            } else {
                STRANDED + k % (QUEUES - STRANDED)
            };
            opening.push(tokio::spawn(queue_consumer(
                url.clone(),
                edge,
                queue(q),
                history.clone(),
                log.clone(),
                start,
                stop_consumers.clone(),
            )));
        }
        for k in 0..TOPIC_SUBSCRIBERS_PER_EDGE {
            let n = consumers.len() + opening.len();
            let dest = topic(k % TOPICS);
            log.lock()
                .unwrap()
                .topic_received
                .insert(n, (edge.to_string(), dest.clone(), Vec::new()));
            opening.push(tokio::spawn(topic_subscriber(
                url.clone(),
                n,
                dest,
                log.clone(),
                start,
                stop_consumers.clone(),
            )));
        }
        for o in opening {
            consumers.push(o.await.expect("a consumer opened"));
        }
    }
    let per_edge = (QUEUE_CONSUMERS_PER_EDGE + TOPIC_SUBSCRIBERS_PER_EDGE) as u64;
    wait_until("the hub knows every edge consumer", || {
        EDGES
            .iter()
            .all(|e| hub.connector(&uplink(e)).remote_demand == per_edge)
    });
    eprintln!(
        "{} consumer connections open after {:?}",
        consumers.len(),
        began.elapsed()
    );

    let stop_producers = CancellationToken::new();
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let client = hub.client().await;
        producers.push(tokio::spawn(produce(
            client,
            p,
            history.clone(),
            log.clone(),
            start,
            stop_producers.clone(),
        )));
    }
    tokio::time::sleep(BEFORE_CUT).await;

    let (hub_s, cut_s) = (hub_ip.to_string(), partition.ip(11).to_string());
    partition.drop_packets(&["-s", &hub_s, "-d", &cut_s]);
    partition.drop_packets(&["-s", &cut_s, "-d", &hub_s]);
    let cut_at = micros(start);
    tokio::time::sleep(CUT_FOR).await;
    assert!(
        !hub.connector(&uplink(CUT)).up,
        "the hub never gave the cut uplink up"
    );
    partition.heal();
    let healed_at = micros(start);
    wait_until("the cut uplink is back with its demand", || {
        let c = hub.connector(&uplink(CUT));
        c.up && c.remote_demand == per_edge
    });
    let back_at = micros(start);
    tokio::time::sleep(AFTER_BACK).await;
    stop_producers.cancel();
    for p in producers {
        p.await.expect("a producer");
    }

    // Every queue message arrives; nothing is left on the hub or in flight.
    history.wait_all_delivered().await;
    wait_until(
        "every hub queue is empty and no forward is in flight",
        || {
            (0..QUEUES).all(|q| hub.destination(&queue(q)).depth == 0)
                && EDGES
                    .iter()
                    .all(|e| hub.connector(&uplink(e)).inflight == 0)
        },
    );
    let quiet = micros(start);
    let window = (
        cut_at.saturating_sub(BEFORE_MARGIN.as_micros() as u64),
        back_at,
    );
    let topics = common::wait::poll()
        .every(Duration::from_millis(100))
        .within(Duration::from_secs(30))
        .settle_async(
            || check_topics(&log.lock().unwrap(), window),
            |check| check.missing.is_empty(),
        )
        .await;

    // Measured with every connection still open.
    let mut scrapes = Vec::new();
    let mut rss = Vec::new();
    for m in mesh.members() {
        let t = Instant::now();
        let (code, _) = common::http_get_within(m.admin(), "/metrics", Duration::from_secs(10))
            .expect("scrape");
        scrapes.push((m.member().to_string(), code, t.elapsed()));
        rss.push((m.member().to_string(), m.status().process.rss_bytes));
    }
    stop_consumers.cancel();

    let verdict = history.verdict();
    let (forwarded, acked): (u64, u64) = EDGES
        .iter()
        .map(|e| hub.connector(&uplink(e)))
        .fold((0, 0), |(f, a), c| (f + c.forwarded, a + c.acked));
    let unacked_forwards = forwarded.saturating_sub(acked);
    let log = log.lock().unwrap();
    let sent_topics = log
        .sent
        .values()
        .filter(|s| s.dest.starts_with("topic://"))
        .count();
    let persistent_queue = log
        .sent
        .values()
        .filter(|s| s.persistent && s.dest.starts_with("queue://"))
        .count();

    // Latency outside the partition window.
    let outside = |at: u64| at < window.0 || at > back_at + AFTER_MARGIN.as_micros() as u64;
    let mut lat: Vec<u64> = log
        .latencies
        .iter()
        .filter(|(at, _)| outside(*at))
        .map(|(at, got)| got.saturating_sub(*at))
        .collect();
    lat.sort_unstable();
    let (p50, p99, max) = (
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0),
    );

    // The stranded backlog: queue messages sent before the heal, delivered after it.
    let drained_at = log
        .sent
        .iter()
        .filter(|(_, s)| s.dest.starts_with("queue://") && s.at_us < healed_at)
        .filter_map(|(id, _)| log.first_delivery.get(id).copied())
        .max()
        .unwrap_or(healed_at);
    let drain = Duration::from_micros(drained_at.saturating_sub(healed_at));
    let stranded_during_cut = log
        .sent
        .values()
        .filter(|s| {
            s.at_us >= cut_at && s.at_us < healed_at && (0..STRANDED).any(|q| s.dest == queue(q))
        })
        .count();

    eprintln!(
        "S29 scaled: {} messages sent ({} to queues, {persistent_queue} of them persistent and \
         receipted; {sent_topics} to topics), {} consumer connections; cut at {:.1} s, healed at \
         {:.1} s, uplink back with its demand at {:.1} s, quiet at {:.1} s; queue verdict: lost \
         {}, invented {}, unflagged duplicates {}, flagged duplicates {} (forwards the hub never \
         saw acknowledged: {unacked_forwards}); {stranded_during_cut} messages stranded on the \
         hub during the cut, the last delivered {drain:?} after the heal; topic deliveries \
         expected {}, missing {}, duplicated {}, on the cut edge during the cut {} arrived and {} \
         did not; latency outside the \
         window over {} deliveries: p50 {} ms, p99 {} ms, max {} ms; /metrics {:?}; RSS {:?}; \
         test took {:?}",
        log.sent.len(),
        verdict.sent,
        consumers.len(),
        cut_at as f64 / 1e6,
        healed_at as f64 / 1e6,
        back_at as f64 / 1e6,
        quiet as f64 / 1e6,
        verdict.lost.len(),
        verdict.invented.len(),
        verdict.unflagged_duplicates.len(),
        verdict.flagged_duplicates,
        topics.expected,
        topics.missing.len(),
        topics.duplicates.len(),
        topics.arrived_in_window,
        topics.undelivered_in_window,
        lat.len(),
        p50 / 1000,
        p99 / 1000,
        max / 1000,
        scrapes,
        rss.iter()
            .map(|(m, b)| format!("{m} {} MiB", b >> 20))
            .collect::<Vec<_>>(),
        began.elapsed(),
    );

    verdict.assert_ok();
    assert!(
        verdict.flagged_duplicates as u64 <= unacked_forwards,
        "{} queue messages arrived twice, more than the {unacked_forwards} forwards the cut left \
         unacknowledged",
        verdict.flagged_duplicates
    );
    assert!(
        topics.missing.is_empty(),
        "{} of {} topic deliveries never arrived, e.g. {:?}",
        topics.missing.len(),
        topics.expected,
        &topics.missing[..topics.missing.len().min(10)]
    );
    assert!(
        topics.duplicates.is_empty(),
        "topic messages delivered twice to one subscriber: {:?}",
        &topics.duplicates[..topics.duplicates.len().min(10)]
    );
    assert!(
        stranded_during_cut > 0,
        "no message waited for the cut edge"
    );
    assert!(
        drain <= DRAIN_BUDGET,
        "the stranded messages took {drain:?} after the heal to drain"
    );
    assert!(
        Duration::from_micros(p99) <= P99_BOUND,
        "p99 latency outside the partition window is {} ms",
        p99 / 1000
    );
    for (member, code, took) in &scrapes {
        assert_eq!(*code, 200, "{member} /metrics");
        assert!(
            *took <= SCRAPE_BOUND,
            "{member}: a /metrics scrape took {took:?} with every connection open"
        );
    }
    for (member, bytes) in &rss {
        assert!(
            *bytes <= RSS_BOUND,
            "{member}: RSS {} MiB over {} MiB",
            bytes >> 20,
            RSS_BOUND >> 20
        );
    }
    drop(consumers);
}
