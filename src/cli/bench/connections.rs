//! The connections scenario: many idle subscriber connections (native, STOMP or MQTT), then
//! one message to all of them.

use super::*;

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
        ProtocolArg::Stomp => match broker.stomp_addr() {
            Ok(addr) => run_connections_stomp(args, &broker, addr).await,
            Err(e) => Err(e),
        },
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

impl IdleSubscriber for StompConn {
    async fn next_message(&mut self) -> bool {
        loop {
            match self.next_frame().await {
                Ok(f) if f.command == Command::Message => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
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

/// STOMP 1.2 subscribers (`ack:auto`, prefetch 10, as the native ones) and one SEND with a
/// receipt.
async fn run_connections_stomp(
    args: &ConnectionsArgs,
    broker: &BrokerUnderTest,
    addr: SocketAddr,
) -> anyhow::Result<Report> {
    let destination = stomp_destination(&args.destination)?;
    let open = |i: usize, source: IpAddr| {
        let destination = destination.clone();
        async move {
            let mut conn = StompConn::connect_from(addr, Some(source)).await?;
            conn.subscribe(&destination, &format!("s{i}"), "auto", 10)
                .await?;
            Ok(conn)
        }
    };
    let publish = || async {
        if let Some(url) = &args.publish_url {
            return publish_native(url, &args.destination).await;
        }
        let mut publisher = StompConn::connect(addr).await?;
        publisher.frame(
            Command::Send,
            &[("destination", destination.as_str()), ("receipt", "sent")],
            b"to everyone",
        );
        publisher.receipt("sent").await
    };
    run_idle_subscribers(args, broker, "stomp ", open, publish).await
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
    // When the first subscriber, and half of them, had the message (ns since `start`).
    let arrivals = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
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
        let arrivals = arrivals.clone();
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
            if subscriber.next_message().await {
                let count = received.fetch_add(1, Ordering::Relaxed) + 1;
                if count == 1 || count == total.div_ceil(2) {
                    let at = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    arrivals[usize::from(count != 1)].store(at, Ordering::Relaxed);
                }
                if count == total {
                    all_in.notify_one();
                }
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
    let arrived_ms = |i: usize| {
        let at = arrivals[i].load(Ordering::Relaxed);
        let since_start = sent_at.duration_since(start).as_nanos() as f64;
        (at != 0).then(|| (at as f64 - since_start) / 1e6)
    };
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
            "fanout_to_first_ms": arrived_ms(0),
            "fanout_to_half_ms": arrived_ms(1),
        })),
        ..Report::default()
    })
}
