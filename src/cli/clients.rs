//! `meshmq produce` and `meshmq consume`: the command-line client.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use serde::Serialize;

use meshmq::client::{Client, ClientError, ClientOptions, Outgoing, SubscribeOptions};

use super::bench::AckArg;

#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    /// Broker URL, e.g. tcp://127.0.0.1:61616, or a failover URL such as
    /// 'failover:(tcp://10.0.0.1:61616,tcp://10.0.0.2:61616)?randomize=false'
    pub url: String,
    /// Destination, e.g. queue://orders or topic://prices.eu
    #[arg(long)]
    pub dest: String,
    #[arg(long, default_value_t = 1)]
    pub count: u64,
    /// Body size in bytes (ignored with --body).
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// The body text (default: SIZE bytes of filler).
    #[arg(long)]
    pub body: Option<String>,
    #[arg(long)]
    pub persistent: bool,
    /// Messages per second (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Wait for the broker's receipt of every message.
    #[arg(long)]
    pub receipts: bool,
    #[arg(long, default_value_t = 4)]
    pub priority: u8,
    /// Time to live, e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,
    /// A header KEY=VALUE (repeatable).
    #[arg(long = "header", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

#[derive(Debug, Serialize)]
struct ProduceReport {
    sent: u64,
    seconds: f64,
    rate: f64,
    errors: u64,
}

pub async fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    if args.priority > 9 {
        bail!("--priority {} is out of range: use 0..=9", args.priority);
    }
    let client = Client::connect(&args.url, ClientOptions::default())
        .await
        .map_err(|e| connect_error(&args.url, e))?;
    let body = match &args.body {
        Some(text) => Bytes::from(text.clone().into_bytes()),
        None => Bytes::from(vec![b'x'; args.size]),
    };
    let mut msg = Outgoing::new(body)
        .persistent(args.persistent)
        .priority(args.priority);
    msg.headers = args.headers.clone();
    let start = Instant::now();
    for i in 0..args.count {
        if let Some(ttl) = args.ttl {
            msg = msg.ttl(ttl);
        }
        if args.receipts {
            client
                .send_with_receipt(&args.dest, &msg)
                .await
                .with_context(|| format!("message {} of {}", i + 1, args.count))?;
        } else {
            client.send(&args.dest, &msg).await?;
        }
        if let Some(rate) = args.rate.filter(|r| *r > 0.0) {
            let due = Duration::from_secs_f64((i + 1) as f64 / rate);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    client.flush().await?;
    let seconds = start.elapsed().as_secs_f64();
    let errors = client.take_errors();
    let report = ProduceReport {
        sent: args.count,
        seconds,
        rate: args.count as f64 / seconds.max(1e-9),
        errors: errors.len() as u64,
    };
    client.close().await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "sent {} messages to {} in {:.3}s ({:.0} msg/s)",
            report.sent, args.dest, report.seconds, report.rate
        );
    }
    if let Some(first) = errors.first() {
        bail!("the broker refused {} sends; first: {first}", errors.len());
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    /// Broker URL, e.g. tcp://127.0.0.1:61616, or a failover URL such as
    /// 'failover:(tcp://10.0.0.1:61616,tcp://10.0.0.2:61616)?randomize=false'
    pub url: String,
    #[arg(long)]
    pub dest: String,
    /// Stop after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop when nothing arrives for this many seconds.
    #[arg(long)]
    pub timeout: Option<f64>,
    #[arg(long, value_enum, default_value_t = AckArg::Auto)]
    pub ack: AckArg,
    #[arg(long, default_value_t = 0)]
    pub prefetch: u32,
    /// Durable subscription name (needs --client-id).
    #[arg(long)]
    pub durable: Option<String>,
    #[arg(long)]
    pub client_id: Option<String>,
    /// Never acknowledge (with --ack client or individual): the broker redelivers everything
    /// received once this consumer goes away. For testing redelivery.
    #[arg(long)]
    pub no_ack: bool,
    /// After the last message, keep the connection open this many seconds.
    #[arg(long)]
    pub linger: Option<f64>,
    /// Do not print message bodies.
    #[arg(long)]
    pub quiet: bool,
    /// Print one JSON line per message and a summary line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct ConsumedMessage<'a> {
    destination: &'a str,
    body: String,
    redelivery_count: u32,
    headers: &'a [(String, String)],
    correlation_id: &'a str,
    reply_to: &'a str,
}

pub async fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    if args.no_ack && matches!(args.ack, AckArg::Auto) {
        bail!("--no-ack needs --ack client or --ack individual (auto acknowledges for you)");
    }
    let client = Client::connect(
        &args.url,
        ClientOptions {
            client_id: args.client_id.clone(),
            ..ClientOptions::default()
        },
    )
    .await
    .map_err(|e| connect_error(&args.url, e))?;
    let mut sub = client
        .subscribe(
            &args.dest,
            SubscribeOptions {
                ack: args.ack.into(),
                prefetch: args.prefetch,
                durable_name: args.durable.clone(),
                ..SubscribeOptions::default()
            },
        )
        .await
        .with_context(|| format!("cannot subscribe to {}", args.dest))?;
    let start = Instant::now();
    let mut received = 0u64;
    while args.count.is_none_or(|c| received < c) {
        let next = match args.timeout {
            Some(t) => sub.next_timeout(Duration::from_secs_f64(t)).await,
            None => sub.next().await,
        };
        let Some(d) = next else { break };
        received += 1;
        if args.json {
            println!(
                "{}",
                serde_json::to_string(&ConsumedMessage {
                    destination: &d.destination,
                    body: String::from_utf8_lossy(&d.body).into_owned(),
                    redelivery_count: d.redelivery_count,
                    headers: &d.headers,
                    correlation_id: &d.correlation_id,
                    reply_to: &d.reply_to,
                })?
            );
        } else if !args.quiet {
            println!("{}", String::from_utf8_lossy(&d.body));
        }
        if !matches!(args.ack, AckArg::Auto) && !args.no_ack {
            sub.ack(&d).await?;
        }
    }
    if let Some(secs) = args.linger {
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    }
    sub.unsubscribe(false).await.ok();
    client.close().await?;
    let seconds = start.elapsed().as_secs_f64();
    if args.json {
        println!(
            "{}",
            serde_json::json!({"received": received, "seconds": seconds})
        );
    } else {
        eprintln!(
            "received {received} messages from {} in {seconds:.3}s",
            args.dest
        );
    }
    if let Some(c) = args.count {
        if received < c {
            bail!("received {received} of {c} messages before the timeout");
        }
    }
    Ok(())
}

/// A failed connect, saying each cause once: a connect error already names the URL it could
/// not reach; other refusals (a login, a limit) get the URL in front.
fn connect_error(url: &str, e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Connect { .. } => anyhow::Error::new(e),
        other => anyhow::Error::new(other).context(format!("cannot connect to {url}")),
    }
}
