//! The fanout scenario: one producer, many topic subscribers (native, STOMP or MQTT), each
//! its own connection; lost deliveries are counted per subscriber.

use super::*;

pub async fn fanout(args: &FanoutArgs) -> anyhow::Result<Report> {
    if let Some(addr) = nats_addr(args.target.url.as_deref().unwrap_or("")).await? {
        return run_fanout_nats(args, addr).await;
    }
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
            let mut tally = FanoutTally::new();
            while tally.wants(count) {
                let Some(d) = sub.next_timeout(idle).await else {
                    break;
                };
                tally.see(base, &d.body, &dups, &progress, expected);
            }
            // Every message this subscriber never saw (gaps included: a subscriber that fell
            // past its topic_pending_size loses its oldest).
            lost.fetch_add(tally.missing(count), Ordering::Relaxed);
            hist.lock().add(&tally.local).ok();
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
            let mut tally = FanoutTally::new();
            while tally.wants(count) {
                let Ok(m) = tokio::time::timeout(idle, conn.next_message()).await else {
                    break;
                };
                let m = m?;
                tally.see(base, &m.payload, &dups, &progress, expected);
            }
            lost.fetch_add(tally.missing(count), Ordering::Relaxed);
            Ok::<_, anyhow::Error>(tally.local)
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
            let mut tally = FanoutTally::new();
            let mut unacked = 0u32;
            while tally.wants(count) {
                // One clock read for the messages of one read: they arrived together.
                let now = base.elapsed().as_nanos() as u64;
                let mut counted = 0;
                let taken = conn.take_messages(|m| {
                    counted += tally.see_at(now, m.body, &dups) as u64;
                    acks.count(&mut unacked)
                })?;
                if counted > 0 {
                    progress.add_many(counted, expected);
                }
                if taken == 0 && !conn.wait_read(idle).await? {
                    break;
                }
            }
            lost.fetch_add(tally.missing(count), Ordering::Relaxed);
            Ok::<_, anyhow::Error>(tally.local)
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
pub(super) async fn fanout_report(
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
