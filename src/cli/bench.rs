//! `meshmq bench`: the load generator. Each scenario prints one JSON line; `suite` runs the
//! standard set and prints a table. Benchmarks measure; tests never assert on timing.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;

use meshmq::broker::Destination;
use meshmq::client::{AckMode, Client, ClientOptions, Outgoing, SubscribeOptions};
use meshmq::server::admin::MemberStatus;
use meshmq::stomp::Command;
use rmqtt_codec::types::QoS;

use super::http;
use super::mqtt_load::MqttConn;
use super::spawn::{free_port, Spawned};
use super::stomp_load::StompConn;

#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Broker to load (tcp://HOST:PORT or failover:(…)?options, or stomp://HOST:PORT with
    /// --protocol stomp). Without it the bench starts its own broker.
    #[arg(long)]
    pub url: Option<String>,
    /// The broker's admin address (HOST:PORT), for RSS readings with --url.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AckArg {
    Auto,
    Client,
    Individual,
}

impl From<AckArg> for AckMode {
    fn from(a: AckArg) -> AckMode {
        match a {
            AckArg::Auto => AckMode::Auto,
            AckArg::Client => AckMode::Client,
            AckArg::Individual => AckMode::ClientIndividual,
        }
    }
}

/// The protocol the load generator's clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolArg {
    Native,
    /// STOMP 1.2, on the broker's stomp:// listener.
    Stomp,
    /// MQTT 3.1.1, on the broker's mqtt:// listener (fanout and connections).
    Mqtt,
}

#[derive(Debug, Clone, clap::Args)]
pub struct QueueArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Messages in total.
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
    /// Body bytes (at least 16: a timestamp and an index).
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    #[arg(long)]
    pub persistent: bool,
    /// Each send waits for the broker's receipt.
    #[arg(long)]
    pub receipts: bool,
    #[arg(long, value_enum, default_value_t = AckArg::Auto)]
    pub ack: AckArg,
    #[arg(long, default_value_t = 1000)]
    pub prefetch: u32,
    /// Total send rate in messages per second (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<u64>,
    #[arg(long, default_value = "queue://bench")]
    pub destination: String,
    /// Give up when nothing arrives for this many seconds.
    #[arg(long, default_value_t = 30)]
    pub idle_timeout: u64,
    #[arg(long, value_enum, default_value_t = ProtocolArg::Native)]
    pub protocol: ProtocolArg,
}

#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Messages published (each reaches every subscriber).
    #[arg(long, default_value_t = 20_000)]
    pub count: u64,
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    #[arg(long, default_value_t = 1000)]
    pub prefetch: u32,
    #[arg(long)]
    pub rate: Option<u64>,
    #[arg(long, default_value = "topic://bench.fanout")]
    pub destination: String,
    #[arg(long, default_value_t = 30)]
    pub idle_timeout: u64,
    #[arg(long, value_enum, default_value_t = ProtocolArg::Native)]
    pub protocol: ProtocolArg,
    /// With --protocol mqtt: the QoS of the publishes and the subscriptions (0 or 1).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionsArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Source addresses to spread connections over (127.0.0.0/8 on loopback).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.1.1,127.0.1.2,127.0.1.3,127.0.1.4"
    )]
    pub sources: Vec<IpAddr>,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    #[arg(long, default_value = "topic://bench.connections")]
    pub destination: String,
    /// native (the default) or mqtt (MQTT 3.1.1 subscribers at QoS 0 and a QoS 1 publisher,
    /// on the broker's mqtt:// listener).
    #[arg(long, value_enum, default_value_t = ProtocolArg::Native)]
    pub protocol: ProtocolArg,
    /// Send the one message through this broker instead, with a native client and a receipt
    /// (tcp://HOST:PORT or failover:(…)): e.g. the hub, with --url naming an edge.
    #[arg(long)]
    pub publish_url: Option<String>,
    /// Once every subscriber is open, print `ready` on stderr and send only when this file
    /// exists: several bench processes (one per edge and protocol) then send at one moment.
    #[arg(long)]
    pub go_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SuiteArgs {
    /// A shorter run (a tenth of the messages; 2,000 connections; 900 failover clients).
    #[arg(long)]
    pub quick: bool,
}

/// One scenario's result (one JSON line).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub scenario: String,
    pub params: String,
    /// Messages per second (queue) or deliveries per second (fanout).
    pub rate: f64,
    pub unit: String,
    pub sent: u64,
    pub received: u64,
    pub seconds: f64,
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
    pub latency_us_p999: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub redelivered: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Value>,
}

/// The broker a scenario loads: one it started, or one it was pointed at.
struct BrokerUnderTest {
    url: String,
    /// Its STOMP listener (the bench's own broker always has one).
    stomp: Option<SocketAddr>,
    /// Its MQTT listener (the bench's own broker always has one).
    mqtt: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    spawned: Option<Spawned>,
}

impl BrokerUnderTest {
    async fn start(target: &Target) -> anyhow::Result<BrokerUnderTest> {
        if let Some(url) = &target.url {
            let resolve = |scheme: &'static str| async move {
                match url.strip_prefix(scheme) {
                    Some(addr) => Ok::<_, anyhow::Error>(Some(
                        tokio::net::lookup_host(addr)
                            .await
                            .with_context(|| format!("cannot resolve {url}"))?
                            .next()
                            .ok_or_else(|| anyhow!("{url} resolves to no address"))?,
                    )),
                    None => Ok(None),
                }
            };
            return Ok(BrokerUnderTest {
                url: url.clone(),
                stomp: resolve("stomp://").await?,
                mqtt: resolve("mqtt://").await?,
                admin: target.admin,
                spawned: None,
            });
        }
        let port = free_port()?;
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let stomp_port = free_port()?;
        let mqtt_port = free_port()?;
        let topology = format!(
            r#"[mesh]
name = "bench"

[[group]]
name = "bench"

[[group.member]]
name = "bench-1"
admin = "{admin}"
data_dir = "data"

[[group.member.listener]]
url = "tcp://127.0.0.1:{port}"

[[group.member.listener]]
url = "stomp://127.0.0.1:{stomp_port}"

[[group.member.listener]]
url = "mqtt://127.0.0.1:{mqtt_port}"
"#
        );
        let spawned = Spawned::start(&topology, &[("bench-1", admin)]).await?;
        Ok(BrokerUnderTest {
            url: format!("tcp://127.0.0.1:{port}"),
            stomp: Some(SocketAddr::from(([127, 0, 0, 1], stomp_port))),
            mqtt: Some(SocketAddr::from(([127, 0, 0, 1], mqtt_port))),
            admin: Some(admin),
            spawned: Some(spawned),
        })
    }

    /// The STOMP listener to load with `--protocol stomp`.
    fn stomp_addr(&self) -> anyhow::Result<SocketAddr> {
        self.stomp.ok_or_else(|| {
            anyhow!(
                "--protocol stomp loads a STOMP listener: give --url stomp://HOST:PORT (got {})",
                self.url
            )
        })
    }

    /// The MQTT listener to load with `--protocol mqtt`.
    fn mqtt_addr(&self) -> anyhow::Result<SocketAddr> {
        self.mqtt.ok_or_else(|| {
            anyhow!(
                "--protocol mqtt loads an MQTT listener: give --url mqtt://HOST:PORT (got {})",
                self.url
            )
        })
    }

    async fn status(&self) -> Option<MemberStatus> {
        let (code, body) = http::get(self.admin?, "/status", Duration::from_secs(5))
            .await
            .ok()?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    async fn stop(self) {
        if let Some(s) = self.spawned {
            s.stop().await;
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// Body: 8 bytes send time (ns since `base`), 8 bytes message index, padding.
fn body(base: Instant, index: u64, size: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(size.max(16));
    b.put_u64(base.elapsed().as_nanos() as u64);
    b.put_u64(index);
    b.resize(size.max(16), b'x');
    b.freeze()
}

fn read_body(base: Instant, body: &[u8]) -> Option<(u64, u64)> {
    if body.len() < 16 {
        return None;
    }
    let sent = u64::from_be_bytes(body[0..8].try_into().ok()?);
    let index = u64::from_be_bytes(body[8..16].try_into().ok()?);
    let now = base.elapsed().as_nanos() as u64;
    Some((now.saturating_sub(sent) / 1000, index))
}

/// Which message indexes arrived (lock-free bitset).
struct Seen {
    bits: Vec<AtomicU64>,
}

impl Seen {
    fn new(n: u64) -> Seen {
        Seen {
            bits: (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// True when `i` was new.
    fn mark(&self, i: u64) -> bool {
        let Some(word) = self.bits.get((i / 64) as usize) else {
            return false;
        };
        let bit = 1u64 << (i % 64);
        word.fetch_or(bit, Ordering::Relaxed) & bit == 0
    }

    fn count(&self) -> u64 {
        self.bits
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones() as u64)
            .sum()
    }
}

/// Paces a producer to `rate` messages per second.
struct Pacer {
    start: Instant,
    per_sec: Option<u64>,
    sent: u64,
}

impl Pacer {
    async fn wait(&mut self) {
        if let Some(rate) = self.per_sec {
            self.sent += 1;
            let due = Duration::from_secs_f64(self.sent as f64 / rate as f64);
            let elapsed = self.start.elapsed();
            if due > elapsed + Duration::from_millis(1) {
                tokio::time::sleep(due - elapsed).await;
            }
        }
    }
}

struct Progress {
    received: AtomicU64,
    last: Mutex<Instant>,
    done: Notify,
}

impl Progress {
    fn new() -> Arc<Progress> {
        Arc::new(Progress {
            received: AtomicU64::new(0),
            last: Mutex::new(Instant::now()),
            done: Notify::new(),
        })
    }

    fn add(&self, target: u64) {
        let n = self.received.fetch_add(1, Ordering::Relaxed) + 1;
        if n % 1024 == 0 || n >= target {
            *self.last.lock() = Instant::now();
        }
        if n >= target {
            self.done.notify_waiters();
        }
    }

    /// Waits until `target` arrived or nothing arrived for `idle`.
    async fn wait(&self, target: u64, idle: Duration) {
        loop {
            let notified = self.done.notified();
            if self.received.load(Ordering::Relaxed) >= target {
                return;
            }
            if tokio::time::timeout(Duration::from_millis(200), notified)
                .await
                .is_ok()
            {
                continue;
            }
            if self.last.lock().elapsed() > idle {
                return;
            }
        }
    }
}

fn fill_latency(r: &mut Report, h: &Histogram<u64>) {
    if !h.is_empty() {
        r.latency_us_p50 = h.value_at_quantile(0.5);
        r.latency_us_p99 = h.value_at_quantile(0.99);
        r.latency_us_p999 = h.value_at_quantile(0.999);
    }
}

pub async fn queue(args: &QueueArgs) -> anyhow::Result<Report> {
    if args.producers == 0 || args.consumers == 0 {
        bail!("--producers and --consumers must be at least 1");
    }
    let broker = BrokerUnderTest::start(&args.target).await?;
    let result = match args.protocol {
        ProtocolArg::Native => run_queue(args, &broker.url).await,
        ProtocolArg::Mqtt => Err(anyhow!(
            "the queue bench has no MQTT clients (MQTT has no queues): use fanout or connections"
        )),
        ProtocolArg::Stomp => match broker.stomp_addr() {
            Ok(addr) => run_queue_stomp(args, addr).await,
            Err(e) => Err(e),
        },
    };
    broker.stop().await;
    result
}

async fn run_queue(args: &QueueArgs, url: &str) -> anyhow::Result<Report> {
    run_queue_at(args, &[url.to_string()], &[url.to_string()]).await
}

/// The queue scenario with producers spread over `producer_urls` and consumers over
/// `consumer_urls` (round robin): one broker, or a mesh.
pub(crate) async fn run_queue_at(
    args: &QueueArgs,
    producer_urls: &[String],
    consumer_urls: &[String],
) -> anyhow::Result<Report> {
    let base = Instant::now();
    let seen = Arc::new(Seen::new(args.count));
    let progress = Progress::new();
    let hist = Arc::new(Mutex::new(new_histogram()));
    let dups = Arc::new(AtomicU64::new(0));
    let redelivered = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut consumers = Vec::new();
    for c in 0..args.consumers {
        let url = &consumer_urls[c % consumer_urls.len()];
        let client = Client::connect(url, ClientOptions::default()).await?;
        let mut sub = client
            .subscribe(
                &args.destination,
                SubscribeOptions {
                    ack: args.ack.into(),
                    prefetch: args.prefetch,
                    ..SubscribeOptions::default()
                },
            )
            .await?;
        let (seen, progress, hist, dups, redelivered) = (
            seen.clone(),
            progress.clone(),
            hist.clone(),
            dups.clone(),
            redelivered.clone(),
        );
        let count = args.count;
        let ack = args.ack;
        let stop = stop.clone();
        consumers.push(tokio::spawn(async move {
            let mut local = new_histogram();
            loop {
                let d = tokio::select! {
                    d = sub.next() => match d { Some(d) => d, None => break },
                    _ = stop.cancelled() => break,
                };
                if let Some((lat, idx)) = read_body(base, &d.body) {
                    let _ = local.record(lat.max(1));
                    if !seen.mark(idx) && !d.redelivered() {
                        dups.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if d.redelivered() {
                    redelivered.fetch_add(1, Ordering::Relaxed);
                }
                match ack {
                    AckArg::Auto => {}
                    AckArg::Client | AckArg::Individual => {
                        if sub.ack(&d).await.is_err() {
                            break;
                        }
                    }
                }
                progress.add(count);
                if progress.received.load(Ordering::Relaxed) >= count {
                    break;
                }
            }
            hist.lock().add(&local).ok();
            drop(client);
        }));
    }
    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let mut producers = Vec::new();
    for p in 0..args.producers {
        let url = &producer_urls[p % producer_urls.len()];
        let client = Client::connect(url, ClientOptions::default()).await?;
        let args = args.clone();
        let sent = sent.clone();
        producers.push(tokio::spawn(async move {
            let mut pacer = Pacer {
                start: Instant::now(),
                per_sec: args.rate.map(|r| (r / args.producers as u64).max(1)),
                sent: 0,
            };
            let mut i = p as u64;
            while i < args.count {
                let msg = Outgoing::new(body(base, i, args.size)).persistent(args.persistent);
                if args.receipts {
                    client.send_with_receipt(&args.destination, &msg).await?;
                } else {
                    client.send(&args.destination, &msg).await?;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                pacer.wait().await;
                i += args.producers as u64;
            }
            client.flush().await?;
            Ok::<_, anyhow::Error>(())
        }));
    }
    for p in producers {
        p.await??;
    }
    progress
        .wait(args.count, Duration::from_secs(args.idle_timeout))
        .await;
    let elapsed = progress.last.lock().duration_since(started);
    stop.cancel();
    for c in consumers {
        let _ = c.await;
    }
    let received = seen.count();
    let mut r = Report {
        scenario: "queue".into(),
        params: format!(
            "{}P/{}C {}B{}{} ack={:?}",
            args.producers,
            args.consumers,
            args.size,
            if args.persistent { " persistent" } else { "" },
            if args.receipts { " receipts" } else { "" },
            args.ack
        )
        .to_lowercase(),
        rate: received as f64 / elapsed.as_secs_f64(),
        unit: "msg/s".into(),
        sent: sent.load(Ordering::Relaxed),
        received,
        seconds: elapsed.as_secs_f64(),
        lost: args.count - received,
        duplicates: dups.load(Ordering::Relaxed),
        redelivered: redelivered.load(Ordering::Relaxed),
        ..Report::default()
    };
    fill_latency(&mut r, &hist.lock());
    Ok(r)
}

/// A destination as STOMP clients name it (`queue://x` → `/queue/x`).
/// The MQTT topic name of a meshmq topic (`topic://a.b` → `a/b`).
fn mqtt_topic(destination: &str) -> anyhow::Result<String> {
    let d =
        Destination::parse(destination).map_err(|e| anyhow!("--destination {destination}: {e}"))?;
    match d.kind() {
        meshmq::broker::Kind::Topic => Ok(d.name().replace('.', "/")),
        _ => bail!("--protocol mqtt needs a topic:// destination, not {destination}"),
    }
}

fn stomp_destination(destination: &str) -> anyhow::Result<String> {
    let d =
        Destination::parse(destination).map_err(|e| anyhow!("--destination {destination}: {e}"))?;
    Ok(meshmq::stomp::to_stomp_destination(&d))
}

/// Writes `body`'s send time and index in place (the layout `body` makes, without allocating).
fn stamp_body(buf: &mut [u8], base: Instant, index: u64) {
    buf[0..8].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_be_bytes());
    buf[8..16].copy_from_slice(&index.to_be_bytes());
}

/// A STOMP producer writes once this much is buffered.
const STOMP_WRITE_BATCH: usize = 64 * 1024;

/// What one STOMP producer sends: indexes `first`, `first + step`, … below `count`.
struct StompProducer {
    addr: SocketAddr,
    destination: String,
    first: u64,
    step: u64,
    count: u64,
    size: usize,
    persistent: bool,
    /// Wait for a receipt on every message (else only on the last).
    receipts: bool,
    rate: Option<u64>,
}

impl StompProducer {
    /// Pipelined SENDs; returns once the broker has confirmed the last.
    async fn run(self, base: Instant, sent: Arc<AtomicU64>) -> anyhow::Result<()> {
        let mut conn = StompConn::connect(self.addr).await?;
        let mut body = vec![b'x'; self.size.max(16)];
        let mut pacer = Pacer {
            start: Instant::now(),
            per_sec: self.rate,
            sent: 0,
        };
        let mut receipt = String::new();
        let mut i = self.first;
        while i < self.count {
            stamp_body(&mut body, base, i);
            let last = i + self.step >= self.count;
            receipt.clear();
            if self.receipts || last {
                use std::fmt::Write;
                let _ = write!(receipt, "r{i}");
            }
            let mut headers = [("destination", self.destination.as_str()); 3];
            let mut n = 1;
            if self.persistent {
                headers[n] = ("persistent", "true");
                n += 1;
            }
            if !receipt.is_empty() {
                headers[n] = ("receipt", receipt.as_str());
                n += 1;
            }
            conn.frame(Command::Send, &headers[..n], &body);
            sent.fetch_add(1, Ordering::Relaxed);
            if !receipt.is_empty() {
                conn.receipt(&receipt).await?;
            } else if self.rate.is_some() {
                conn.flush_to(1).await?;
            } else if conn.buffered() >= STOMP_WRITE_BATCH {
                conn.flush_to(STOMP_WRITE_BATCH).await?;
            }
            pacer.wait().await;
            i += self.step;
        }
        Ok(())
    }
}

/// How a STOMP consumer acknowledges: every message (`client-individual`), or cumulatively
/// every `every` messages (`client`).
#[derive(Clone, Copy)]
enum StompAcks {
    Each,
    Every(u32),
}

impl StompAcks {
    fn new(ack: AckArg, prefetch: u32) -> StompAcks {
        match ack {
            AckArg::Individual => StompAcks::Each,
            AckArg::Auto | AckArg::Client => StompAcks::Every((prefetch / 2).max(1)),
        }
    }

    fn header(self) -> &'static str {
        match self {
            StompAcks::Each => "client-individual",
            StompAcks::Every(_) => "client",
        }
    }
}

/// Acknowledges `m` when it is due; `unacked` counts the messages not acknowledged yet.
fn stomp_ack(conn: &mut StompConn, acks: StompAcks, m: &meshmq::stomp::Frame, unacked: &mut u32) {
    *unacked += 1;
    let due = match acks {
        StompAcks::Each => true,
        StompAcks::Every(n) => *unacked >= n,
    };
    if let (true, Some(id)) = (due, m.header("ack")) {
        conn.frame(Command::Ack, &[("id", id)], &[]);
        *unacked = 0;
    }
}

async fn run_queue_stomp(args: &QueueArgs, addr: SocketAddr) -> anyhow::Result<Report> {
    let base = Instant::now();
    let destination = stomp_destination(&args.destination)?;
    let seen = Arc::new(Seen::new(args.count));
    let progress = Progress::new();
    let dups = Arc::new(AtomicU64::new(0));
    let redelivered = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let acks = StompAcks::new(args.ack, args.prefetch);
    let mut consumers = Vec::new();
    for c in 0..args.consumers {
        let mut conn = StompConn::connect(addr).await?;
        conn.subscribe(&destination, &format!("c{c}"), acks.header(), args.prefetch)
            .await?;
        let (seen, progress, dups, redelivered, stop) = (
            seen.clone(),
            progress.clone(),
            dups.clone(),
            redelivered.clone(),
            stop.clone(),
        );
        let count = args.count;
        consumers.push(tokio::spawn(async move {
            let mut local = new_histogram();
            let mut unacked = 0u32;
            let mut last = None;
            loop {
                let m = tokio::select! {
                    m = conn.next_frame() => m?,
                    _ = stop.cancelled() => break,
                };
                if m.command != Command::Message {
                    continue;
                }
                let again = m.header("redelivered").is_some();
                if let Some((lat, idx)) = read_body(base, &m.body) {
                    let _ = local.record(lat.max(1));
                    if !seen.mark(idx) && !again {
                        dups.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if again {
                    redelivered.fetch_add(1, Ordering::Relaxed);
                }
                stomp_ack(&mut conn, acks, &m, &mut unacked);
                last = Some(m);
                progress.add(count);
                if progress.received.load(Ordering::Relaxed) >= count {
                    break;
                }
            }
            // Acknowledge the tail too: what this consumer took must not return to the queue
            // (and reach the others as redeliveries) when it disconnects.
            if let (true, Some(id)) = (unacked > 0, last.as_ref().and_then(|m| m.header("ack"))) {
                conn.frame(Command::Ack, &[("id", id), ("receipt", "tail")], &[]);
                conn.receipt("tail").await?;
            }
            Ok::<_, anyhow::Error>(local)
        }));
    }
    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let mut producers = Vec::new();
    for p in 0..args.producers {
        let producer = StompProducer {
            addr,
            destination: destination.clone(),
            first: p as u64,
            step: args.producers as u64,
            count: args.count,
            size: args.size,
            persistent: args.persistent,
            receipts: args.receipts,
            rate: args.rate.map(|r| (r / args.producers as u64).max(1)),
        };
        producers.push(tokio::spawn(producer.run(base, sent.clone())));
    }
    for p in producers {
        p.await??;
    }
    progress
        .wait(args.count, Duration::from_secs(args.idle_timeout))
        .await;
    let elapsed = progress.last.lock().duration_since(started);
    stop.cancel();
    let mut hist = new_histogram();
    for c in consumers {
        hist.add(&c.await??).ok();
    }
    let received = seen.count();
    let mut r = Report {
        scenario: "queue".into(),
        params: format!(
            "{}P/{}C {}B{}{} ack={:?} stomp",
            args.producers,
            args.consumers,
            args.size,
            if args.persistent { " persistent" } else { "" },
            if args.receipts { " receipts" } else { "" },
            args.ack
        )
        .to_lowercase(),
        rate: received as f64 / elapsed.as_secs_f64(),
        unit: "msg/s".into(),
        sent: sent.load(Ordering::Relaxed),
        received,
        seconds: elapsed.as_secs_f64(),
        lost: args.count - received,
        duplicates: dups.load(Ordering::Relaxed),
        redelivered: redelivered.load(Ordering::Relaxed),
        ..Report::default()
    };
    fill_latency(&mut r, &hist);
    Ok(r)
}

pub async fn fanout(args: &FanoutArgs) -> anyhow::Result<Report> {
    // A default broker: what a user gets is what the benchmark measures, drops included.
    let broker = BrokerUnderTest::start(&args.target).await?;
    let result = match args.protocol {
        ProtocolArg::Native => run_fanout(args, &broker.url).await,
        ProtocolArg::Mqtt => match broker.mqtt_addr() {
            Ok(addr) => run_fanout_mqtt(args, addr).await,
            Err(e) => Err(e),
        },
        ProtocolArg::Stomp => match broker.stomp_addr() {
            Ok(addr) => run_fanout_stomp(args, addr).await,
            Err(e) => Err(e),
        },
    };
    broker.stop().await;
    result
}

async fn run_fanout(args: &FanoutArgs, url: &str) -> anyhow::Result<Report> {
    let base = Instant::now();
    let expected = args.count * args.subscribers as u64;
    let progress = Progress::new();
    let hist = Arc::new(Mutex::new(new_histogram()));
    let lost = Arc::new(AtomicU64::new(0));
    let dups = Arc::new(AtomicU64::new(0));
    let mut subs = Vec::new();
    for _ in 0..args.subscribers {
        let client = Client::connect(url, ClientOptions::default()).await?;
        let mut sub = client
            .subscribe(
                &args.destination,
                SubscribeOptions {
                    prefetch: args.prefetch,
                    ..SubscribeOptions::default()
                },
            )
            .await?;
        let (progress, hist, lost, dups) =
            (progress.clone(), hist.clone(), lost.clone(), dups.clone());
        let count = args.count;
        let idle = Duration::from_secs(args.idle_timeout);
        subs.push(tokio::spawn(async move {
            let mut local = new_histogram();
            let mut next_index = 0u64;
            let mut got = 0u64;
            while next_index < count {
                let Some(d) = sub.next_timeout(idle).await else {
                    break;
                };
                if let Some((lat, idx)) = read_body(base, &d.body) {
                    let _ = local.record(lat.max(1));
                    if idx < next_index {
                        dups.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    next_index = idx + 1;
                }
                got += 1;
                progress.add(expected);
            }
            // Every message this subscriber never saw (gaps included: a subscriber that fell
            // past its topic_pending_size loses its oldest).
            lost.fetch_add(count.saturating_sub(got), Ordering::Relaxed);
            hist.lock().add(&local).ok();
            drop(client);
        }));
    }
    let started = Instant::now();
    let client = Client::connect(url, ClientOptions::default()).await?;
    let mut pacer = Pacer {
        start: Instant::now(),
        per_sec: args.rate,
        sent: 0,
    };
    for i in 0..args.count {
        client
            .send(&args.destination, &Outgoing::new(body(base, i, args.size)))
            .await?;
        pacer.wait().await;
    }
    client.flush().await?;
    progress
        .wait(expected, Duration::from_secs(args.idle_timeout))
        .await;
    let elapsed = progress.last.lock().duration_since(started);
    for s in subs {
        let _ = tokio::time::timeout(Duration::from_secs(args.idle_timeout + 5), s).await;
    }
    let received = progress.received.load(Ordering::Relaxed);
    let mut r = Report {
        scenario: "fanout".into(),
        params: format!("1P -> {} subscribers {}B", args.subscribers, args.size),
        rate: received as f64 / elapsed.as_secs_f64(),
        unit: "deliveries/s".into(),
        sent: args.count,
        received,
        seconds: elapsed.as_secs_f64(),
        lost: lost.load(Ordering::Relaxed),
        duplicates: dups.load(Ordering::Relaxed),
        ..Report::default()
    };
    fill_latency(&mut r, &hist.lock());
    Ok(r)
}

async fn run_fanout_mqtt(args: &FanoutArgs, addr: SocketAddr) -> anyhow::Result<Report> {
    let base = Instant::now();
    let topic = mqtt_topic(&args.destination)?;
    let qos = if args.qos == 1 {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    };
    let expected = args.count * args.subscribers as u64;
    let progress = Progress::new();
    let lost = Arc::new(AtomicU64::new(0));
    let dups = Arc::new(AtomicU64::new(0));
    let mut subs = Vec::new();
    for s in 0..args.subscribers {
        let mut conn = MqttConn::connect(addr, None, &format!("bench-fanout-{s}")).await?;
        conn.subscribe(&topic, qos).await?;
        let (progress, lost, dups) = (progress.clone(), lost.clone(), dups.clone());
        let count = args.count;
        let idle = Duration::from_secs(args.idle_timeout);
        subs.push(tokio::spawn(async move {
            let mut local = new_histogram();
            let mut next_index = 0u64;
            let mut got = 0u64;
            while next_index < count {
                let Ok(m) = tokio::time::timeout(idle, conn.next_message()).await else {
                    break;
                };
                let m = m?;
                if let Some((lat, idx)) = read_body(base, &m.payload) {
                    let _ = local.record(lat.max(1));
                    if idx < next_index {
                        dups.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    next_index = idx + 1;
                }
                got += 1;
                progress.add(expected);
            }
            lost.fetch_add(count.saturating_sub(got), Ordering::Relaxed);
            Ok::<_, anyhow::Error>(local)
        }));
    }
    let started = Instant::now();
    let mut publisher = MqttConn::connect(addr, None, "bench-fanout-publisher").await?;
    let mut pacer = Pacer {
        start: Instant::now(),
        per_sec: args.rate,
        sent: 0,
    };
    for i in 0..args.count {
        publisher
            .publish(&topic, body(base, i, args.size), qos)
            .await?;
        pacer.wait().await;
    }
    let params = format!(
        "1P -> {} subscribers {}B mqtt qos {}",
        args.subscribers, args.size, args.qos
    );
    fanout_report(
        args, params, &progress, started, expected, subs, &lost, &dups,
    )
    .await
}

async fn run_fanout_stomp(args: &FanoutArgs, addr: SocketAddr) -> anyhow::Result<Report> {
    let base = Instant::now();
    let destination = stomp_destination(&args.destination)?;
    let expected = args.count * args.subscribers as u64;
    let progress = Progress::new();
    let lost = Arc::new(AtomicU64::new(0));
    let dups = Arc::new(AtomicU64::new(0));
    let acks = StompAcks::new(AckArg::Client, args.prefetch);
    let mut subs = Vec::new();
    for s in 0..args.subscribers {
        let mut conn = StompConn::connect(addr).await?;
        conn.subscribe(&destination, &format!("s{s}"), acks.header(), args.prefetch)
            .await?;
        let (progress, lost, dups) = (progress.clone(), lost.clone(), dups.clone());
        let count = args.count;
        let idle = Duration::from_secs(args.idle_timeout);
        subs.push(tokio::spawn(async move {
            let mut local = new_histogram();
            let mut next_index = 0u64;
            let mut got = 0u64;
            let mut unacked = 0u32;
            while next_index < count {
                let Ok(m) = tokio::time::timeout(idle, conn.next_frame()).await else {
                    break;
                };
                let m = m?;
                if m.command != Command::Message {
                    continue;
                }
                stomp_ack(&mut conn, acks, &m, &mut unacked);
                if let Some((lat, idx)) = read_body(base, &m.body) {
                    let _ = local.record(lat.max(1));
                    if idx < next_index {
                        dups.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    next_index = idx + 1;
                }
                got += 1;
                progress.add(expected);
            }
            lost.fetch_add(count.saturating_sub(got), Ordering::Relaxed);
            Ok::<_, anyhow::Error>(local)
        }));
    }
    let started = Instant::now();
    StompProducer {
        addr,
        destination,
        first: 0,
        step: 1,
        count: args.count,
        size: args.size,
        persistent: false,
        receipts: false,
        rate: args.rate,
    }
    .run(base, Arc::new(AtomicU64::new(0)))
    .await?;
    let params = format!(
        "1P -> {} subscribers {}B stomp",
        args.subscribers, args.size
    );
    fanout_report(
        args, params, &progress, started, expected, subs, &lost, &dups,
    )
    .await
}

/// Waits for the fanout's deliveries (or its idle timeout), collects each subscriber's latency
/// histogram and reports deliveries per second from the first send to the last delivery.
#[allow(clippy::too_many_arguments)]
async fn fanout_report(
    args: &FanoutArgs,
    params: String,
    progress: &Progress,
    started: Instant,
    expected: u64,
    subs: Vec<tokio::task::JoinHandle<anyhow::Result<Histogram<u64>>>>,
    lost: &AtomicU64,
    dups: &AtomicU64,
) -> anyhow::Result<Report> {
    progress
        .wait(expected, Duration::from_secs(args.idle_timeout))
        .await;
    let elapsed = progress.last.lock().duration_since(started);
    let mut hist = new_histogram();
    for s in subs {
        match tokio::time::timeout(Duration::from_secs(args.idle_timeout + 5), s).await {
            Ok(done) => {
                hist.add(&done??).ok();
            }
            Err(_) => bail!("a subscriber did not finish"),
        }
    }
    let received = progress.received.load(Ordering::Relaxed);
    let mut r = Report {
        scenario: "fanout".into(),
        params,
        rate: received as f64 / elapsed.as_secs_f64(),
        unit: "deliveries/s".into(),
        sent: args.count,
        received,
        seconds: elapsed.as_secs_f64(),
        lost: lost.load(Ordering::Relaxed),
        duplicates: dups.load(Ordering::Relaxed),
        ..Report::default()
    };
    fill_latency(&mut r, &hist);
    Ok(r)
}

pub async fn connections(args: &ConnectionsArgs) -> anyhow::Result<Report> {
    if args.sources.is_empty() {
        bail!("--sources needs at least one address");
    }
    let broker = BrokerUnderTest::start(&args.target).await?;
    let result = match args.protocol {
        ProtocolArg::Native => run_connections(args, &broker).await,
        ProtocolArg::Mqtt => match broker.mqtt_addr() {
            Ok(addr) => run_connections_mqtt(args, &broker, addr).await,
            Err(e) => Err(e),
        },
        ProtocolArg::Stomp => Err(anyhow!(
            "the connections bench speaks native or mqtt (--protocol stomp is not served)"
        )),
    };
    broker.stop().await;
    result
}

/// One idle subscriber of the connections bench, whatever protocol it speaks.
trait IdleSubscriber: Send + 'static {
    /// Waits for the next message: false when the connection ended first.
    fn next_message(&mut self) -> impl std::future::Future<Output = bool> + Send;
}

impl IdleSubscriber for (Client, meshmq::client::Subscription) {
    async fn next_message(&mut self) -> bool {
        self.1.next().await.is_some()
    }
}

impl IdleSubscriber for MqttConn {
    async fn next_message(&mut self) -> bool {
        MqttConn::next_message(self).await.is_ok()
    }
}

/// Native subscribers (prefetch 10) and one receipted send.
async fn run_connections(
    args: &ConnectionsArgs,
    broker: &BrokerUnderTest,
) -> anyhow::Result<Report> {
    let open = |_: usize, source: IpAddr| {
        let (url, dest) = (broker.url.clone(), args.destination.clone());
        async move {
            let options = ClientOptions {
                local_addr: Some(source),
                ..ClientOptions::default()
            };
            let client = Client::connect(&url, options).await?;
            let sub = client
                .subscribe(
                    &dest,
                    SubscribeOptions {
                        prefetch: 10,
                        ..SubscribeOptions::default()
                    },
                )
                .await?;
            Ok((client, sub))
        }
    };
    let url = args.publish_url.as_deref().unwrap_or(&broker.url);
    let publish = || publish_native(url, &args.destination);
    run_idle_subscribers(args, broker, "", open, publish).await
}

/// The connections bench's one message, sent through `url` by a native client with a receipt.
async fn publish_native(url: &str, destination: &str) -> anyhow::Result<()> {
    let publisher = Client::connect(url, ClientOptions::default()).await?;
    publisher
        .send_with_receipt(destination, &Outgoing::new(&b"to everyone"[..]))
        .await?;
    Ok(())
}

/// MQTT 3.1.1 clients: idle QoS 0 subscribers, one QoS 1 publish.
async fn run_connections_mqtt(
    args: &ConnectionsArgs,
    broker: &BrokerUnderTest,
    addr: SocketAddr,
) -> anyhow::Result<Report> {
    let topic = mqtt_topic(&args.destination)?;
    let run = std::process::id();
    let open = |i: usize, source: IpAddr| {
        let topic = topic.clone();
        async move {
            let mut conn =
                MqttConn::connect(addr, Some(source), &format!("bench-{run}-{i}")).await?;
            conn.subscribe(&topic, QoS::AtMostOnce).await?;
            Ok(conn)
        }
    };
    let publish = || async {
        if let Some(url) = &args.publish_url {
            return publish_native(url, &args.destination).await;
        }
        let mut publisher =
            MqttConn::connect(addr, None, &format!("bench-{run}-publisher")).await?;
        publisher
            .publish(&topic, Bytes::from_static(b"to everyone"), QoS::AtLeastOnce)
            .await?;
        Ok(())
    };
    run_idle_subscribers(args, broker, "mqtt ", open, publish).await
}

/// Opens `args.connections` subscribers with `open` (at most `args.concurrency` at a time, from
/// the given sources), reads the broker's memory before and after, then sends one message with
/// `publish` and times its arrival at every subscriber.
async fn run_idle_subscribers<S, Open, Opening, Publish, Published>(
    args: &ConnectionsArgs,
    broker: &BrokerUnderTest,
    protocol: &str,
    open: Open,
    publish: Publish,
) -> anyhow::Result<Report>
where
    S: IdleSubscriber,
    Open: Fn(usize, IpAddr) -> Opening,
    Opening: std::future::Future<Output = anyhow::Result<S>> + Send + 'static,
    Publish: FnOnce() -> Published,
    Published: std::future::Future<Output = anyhow::Result<()>>,
{
    let rss_before = broker.status().await.map(|s| s.process.rss_bytes);
    let received = Arc::new(AtomicU64::new(0));
    let all_in = Arc::new(Notify::new());
    let permits = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.connections);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<anyhow::Result<()>>();
    for i in 0..args.connections {
        let opening = open(i, args.sources[i % args.sources.len()]);
        let permits = permits.clone();
        let ready = ready_tx.clone();
        let received = received.clone();
        let all_in = all_in.clone();
        let total = args.connections as u64;
        tasks.push(tokio::spawn(async move {
            let opened = async {
                let _permit = permits.acquire().await?;
                opening.await
            }
            .await;
            let mut subscriber = match opened {
                Ok(s) => {
                    let _ = ready.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            if subscriber.next_message().await
                && received.fetch_add(1, Ordering::Relaxed) + 1 == total
            {
                all_in.notify_one();
            }
            // An idle subscriber stays connected and subscribed: closing here would put ten
            // thousand disconnects (and the broker's session teardowns) inside the window
            // being measured. The tasks are aborted, and the clients closed, once it is over.
            std::future::pending::<()>().await;
            drop(subscriber);
        }));
    }
    drop(ready_tx);
    let mut connected = 0usize;
    let mut first_error = None;
    for _ in 0..args.connections {
        let Some(r) = ready_rx.recv().await else {
            break;
        };
        match r {
            Ok(()) => connected += 1,
            Err(e) => {
                if first_error.is_none() {
                    first_error = Some(e);
                }
            }
        }
    }
    let connect_secs = start.elapsed().as_secs_f64();
    if connected < args.connections {
        for t in tasks {
            t.abort();
        }
        return Err(anyhow!(
            "{} of {} {protocol}connections failed; first error: {}",
            args.connections - connected,
            args.connections,
            first_error.map(|e| e.to_string()).unwrap_or_default()
        ));
    }
    // Let the broker settle, then read its memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = broker.status().await.map(|s| s.process.rss_bytes);
    if let Some(go) = &args.go_file {
        eprintln!(
            "ready: {} {protocol}subscribers open; sending once {} exists",
            args.connections,
            go.display()
        );
        while !go.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let waiting = all_in.notified();
    tokio::pin!(waiting);
    waiting.as_mut().enable();
    let sent_at = Instant::now();
    publish().await?;
    let reached_all = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .is_ok();
    let fanout_ms = sent_at.elapsed().as_secs_f64() * 1000.0;
    let got = received.load(Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / args.connections as f64),
        _ => None,
    };
    Ok(Report {
        scenario: "connections".into(),
        params: format!("{} idle {protocol}subscribers", args.connections),
        rate: args.connections as f64 / connect_secs,
        unit: "connects/s".into(),
        sent: 1,
        received: got,
        seconds: connect_secs,
        lost: args.connections as u64 - got,
        extra: Some(serde_json::json!({
            "connect_seconds": connect_secs,
            "broker_rss_per_connection_bytes": per_conn,
            "broker_rss_before_bytes": rss_before,
            "broker_rss_after_bytes": rss_after,
            "fanout_to_all_ms": if reached_all { Some(fanout_ms) } else { None },
        })),
        ..Report::default()
    })
}

/// Runs the standard set and prints a table.
pub async fn suite(args: &SuiteArgs) -> anyhow::Result<Vec<Report>> {
    let scale = if args.quick { 10 } else { 1 };
    let local = Target {
        url: None,
        admin: None,
    };
    let q = |p: usize, c: usize, protocol: ProtocolArg| QueueArgs {
        target: local.clone(),
        producers: p,
        consumers: c,
        count: 2_000_000 / scale,
        size: 256,
        persistent: false,
        receipts: false,
        ack: AckArg::Auto,
        prefetch: 1000,
        rate: None,
        destination: "queue://bench".into(),
        idle_timeout: 30,
        protocol,
    };
    let fan = |protocol: ProtocolArg| FanoutArgs {
        target: local.clone(),
        subscribers: 100,
        count: 20_000 / scale,
        size: 256,
        prefetch: 1000,
        rate: None,
        destination: "topic://bench.fanout".into(),
        idle_timeout: 30,
        protocol,
        qos: 0,
    };
    let mut reports = Vec::new();
    for (p, c, protocol) in [
        (1, 1, ProtocolArg::Native),
        (4, 4, ProtocolArg::Native),
        (4, 4, ProtocolArg::Stomp),
    ] {
        let r = queue(&q(p, c, protocol)).await?;
        println!("{}", serde_json::to_string(&r)?);
        reports.push(r);
    }
    for protocol in [ProtocolArg::Native, ProtocolArg::Stomp] {
        let r = fanout(&fan(protocol)).await?;
        println!("{}", serde_json::to_string(&r)?);
        reports.push(r);
    }
    let r = connections(&ConnectionsArgs {
        target: local,
        connections: if args.quick { 2_000 } else { 10_000 },
        sources: ["127.0.1.1", "127.0.1.2", "127.0.1.3", "127.0.1.4"]
            .iter()
            .map(|s| s.parse().expect("valid IP literal"))
            .collect(),
        concurrency: 256,
        destination: "topic://bench.connections".into(),
        protocol: ProtocolArg::Native,
        publish_url: None,
        go_file: None,
    })
    .await?;
    println!("{}", serde_json::to_string(&r)?);
    reports.push(r);
    let r = super::bench_failover::failover(&super::bench_failover::FailoverArgs {
        edges: 3,
        clients_per_edge: if args.quick { 300 } else { 3000 },
        processes_per_edge: if args.quick { 1 } else { 2 },
        first_source: std::net::Ipv4Addr::new(127, 0, 3, 1),
        kill: vec![1],
        before_kill: Duration::from_secs(3),
        restart_after: Duration::from_secs(2),
        ha: false,
        rebalance: false,
        rate: 200,
        options: String::new(),
        hub: false,
    })
    .await?;
    println!("{}", serde_json::to_string(&r)?);
    reports.push(r);
    print_table(&reports);
    Ok(reports)
}

pub fn print_table(reports: &[Report]) {
    println!();
    println!(
        "{:<12} {:<34} {:>16} {:>9} {:>9} {:>9} {:>6} {:>6}",
        "scenario", "parameters", "rate", "p50 us", "p99 us", "p999 us", "lost", "dups"
    );
    for r in reports {
        println!(
            "{:<12} {:<34} {:>10.0} {:<5} {:>9} {:>9} {:>9} {:>6} {:>6}",
            r.scenario,
            r.params,
            r.rate,
            r.unit.split('/').next().unwrap_or(""),
            r.latency_us_p50,
            r.latency_us_p99,
            r.latency_us_p999,
            r.lost,
            r.duplicates
        );
        if let Some(extra) = &r.extra {
            println!("{:<12} {}", "", extra);
        }
    }
}
