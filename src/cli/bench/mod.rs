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
use super::stomp_load::{SendLines, StompConn};

mod connections;
pub mod failover;
mod fanout;
mod nats;
mod queue;

pub use connections::connections;
pub use fanout::fanout;
use fanout::fanout_report;
use nats::{nats_addr, run_fanout_nats, run_queue_nats};
pub use queue::queue;
pub(crate) use queue::run_queue_at;
use queue::{StompAcks, StompProducer};

#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Broker to load (tcp://HOST:PORT or failover:(…)?options, or stomp://HOST:PORT with
    /// --protocol stomp), or a NATS server (nats://HOST:PORT: queue and fanout, the same load
    /// in NATS's protocol, for comparison). Without it the bench starts its own broker.
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
    /// native (the default), stomp (STOMP 1.2 subscribers with `ack:auto` and a SEND with a
    /// receipt, on the broker's stomp:// listener) or mqtt (MQTT 3.1.1 subscribers at QoS 0
    /// and a QoS 1 publisher, on the broker's mqtt:// listener).
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

/// What one fanout subscriber has seen of the `count` messages sent: each counted once, in
/// publish order (an index below the next expected one is a duplicate), with its latency.
struct FanoutTally {
    local: Histogram<u64>,
    next_index: u64,
    got: u64,
}

impl FanoutTally {
    fn new() -> FanoutTally {
        FanoutTally {
            local: new_histogram(),
            next_index: 0,
            got: 0,
        }
    }

    /// Whether messages of the `count` sent are still to come.
    fn wants(&self, count: u64) -> bool {
        self.next_index < count
    }

    /// Counts one delivered body (a duplicate goes to `dups` instead).
    fn see(
        &mut self,
        base: Instant,
        body: &[u8],
        dups: &AtomicU64,
        progress: &Progress,
        expected: u64,
    ) {
        if self.see_at(base.elapsed().as_nanos() as u64, body, dups) {
            progress.add(expected);
        }
    }

    /// Counts one body that arrived `now` (ns since the run's base), leaving progress to the
    /// caller; false when it was a duplicate (counted in `dups` instead).
    fn see_at(&mut self, now: u64, body: &[u8], dups: &AtomicU64) -> bool {
        if let Some((lat, idx)) = read_body_at(now, body) {
            let _ = self.local.record(lat.max(1));
            if idx < self.next_index {
                dups.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            self.next_index = idx + 1;
        }
        self.got += 1;
        true
    }

    /// The messages this subscriber never saw, gaps included.
    fn missing(&self, count: u64) -> u64 {
        count.saturating_sub(self.got)
    }
}

fn read_body(base: Instant, body: &[u8]) -> Option<(u64, u64)> {
    read_body_at(base.elapsed().as_nanos() as u64, body)
}

/// A body's latency in µs (it arrived `now`, in ns since the run's base) and its index.
fn read_body_at(now: u64, body: &[u8]) -> Option<(u64, u64)> {
    if body.len() < 16 {
        return None;
    }
    let sent = u64::from_be_bytes(body[0..8].try_into().ok()?);
    let index = u64::from_be_bytes(body[8..16].try_into().ok()?);
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
        self.add_many(1, target);
    }

    /// Counts `count` more received at once.
    fn add_many(&self, count: u64, target: u64) {
        let before = self.received.fetch_add(count, Ordering::Relaxed);
        let n = before + count;
        if n / 1024 != before / 1024 || n >= target {
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

/// A queue run's parameters as the table shows them; `protocol` (e.g. " stomp") ends them.
fn queue_params(args: &QueueArgs, protocol: &str) -> String {
    format!(
        "{}P/{}C {}B{}{} ack={:?}{protocol}",
        args.producers,
        args.consumers,
        args.size,
        if args.persistent { " persistent" } else { "" },
        if args.receipts { " receipts" } else { "" },
        args.ack
    )
    .to_lowercase()
}

/// The report of a queue run that received `received` of `args.count` messages in `elapsed`.
#[allow(clippy::too_many_arguments)]
fn queue_report(
    args: &QueueArgs,
    params: String,
    elapsed: Duration,
    sent: u64,
    received: u64,
    duplicates: u64,
    redelivered: u64,
    latency: &Histogram<u64>,
) -> Report {
    let mut r = Report {
        scenario: "queue".into(),
        params,
        rate: received as f64 / elapsed.as_secs_f64(),
        unit: "msg/s".into(),
        sent,
        received,
        seconds: elapsed.as_secs_f64(),
        lost: args.count - received,
        duplicates,
        redelivered,
        ..Report::default()
    };
    fill_latency(&mut r, latency);
    r
}

fn fill_latency(r: &mut Report, h: &Histogram<u64>) {
    if !h.is_empty() {
        r.latency_us_p50 = h.value_at_quantile(0.5);
        r.latency_us_p99 = h.value_at_quantile(0.99);
        r.latency_us_p999 = h.value_at_quantile(0.999);
    }
}

/// The MQTT topic name of a meshmq topic (`topic://a.b` → `a/b`).
fn mqtt_topic(destination: &str) -> anyhow::Result<String> {
    let d =
        Destination::parse(destination).map_err(|e| anyhow!("--destination {destination}: {e}"))?;
    match d.kind() {
        meshmq::broker::Kind::Topic => Ok(d.name().replace('.', "/")),
        _ => bail!("--protocol mqtt needs a topic:// destination, not {destination}"),
    }
}

/// A destination as STOMP clients name it (`queue://x` → `/queue/x`).
fn stomp_destination(destination: &str) -> anyhow::Result<String> {
    let d =
        Destination::parse(destination).map_err(|e| anyhow!("--destination {destination}: {e}"))?;
    Ok(meshmq::stomp::to_stomp_destination(&d))
}

/// Writes `body`'s send time and index in place (the layout `body` makes, without allocating).
fn stamp_body(buf: &mut [u8], base: Instant, index: u64) {
    stamp_body_at(buf, base.elapsed().as_nanos() as u64, index);
}

/// Writes a send time (`sent`, in ns since the run's base) and an index in place.
fn stamp_body_at(buf: &mut [u8], sent: u64, index: u64) {
    buf[0..8].copy_from_slice(&sent.to_be_bytes());
    buf[8..16].copy_from_slice(&index.to_be_bytes());
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
    let r = failover::failover(&failover::FailoverArgs {
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
