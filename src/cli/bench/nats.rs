//! The queue and fanout scenarios against a NATS server (`--url nats://HOST:PORT`), with the
//! same bodies, counting and report as the meshmq runs, so one generator measures both.
//!
//! NATS has no queues: the queue scenario's consumers are one queue group (each message goes
//! to one member), its producers publish to the destination's name as a subject. Core NATS
//! neither acknowledges nor redelivers, so `--ack`, `--prefetch`, `--persistent` and
//! `--receipts` do not apply; a message the server dropped (a slow consumer) shows as lost.

use super::*;
use crate::cli::nats_load::NatsConn;

/// A NATS producer writes once this much is buffered.
const NATS_WRITE_BATCH: usize = 64 * 1024;
/// The queue group the queue scenario's consumers join.
const QUEUE_GROUP: &str = "meshmq-bench";

/// The subject a destination's name becomes (`queue://bench` → `bench`).
fn subject(destination: &str) -> anyhow::Result<String> {
    let d =
        Destination::parse(destination).map_err(|e| anyhow!("--destination {destination}: {e}"))?;
    Ok(d.name().to_string())
}

/// The server a `nats://HOST:PORT` URL names.
pub(super) async fn nats_addr(url: &str) -> anyhow::Result<Option<SocketAddr>> {
    let Some(addr) = url.strip_prefix("nats://") else {
        return Ok(None);
    };
    Ok(Some(
        tokio::net::lookup_host(addr)
            .await
            .with_context(|| format!("cannot resolve {url}"))?
            .next()
            .ok_or_else(|| anyhow!("{url} resolves to no address"))?,
    ))
}

/// What one NATS producer sends: indexes `first`, `first + step`, … below `count`; returns
/// once the server has handled the last (a PING's PONG).
async fn produce(
    addr: SocketAddr,
    subject: String,
    (first, step, count): (u64, u64, u64),
    size: usize,
    rate: Option<u64>,
    base: Instant,
    sent: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut conn = NatsConn::connect(addr).await?;
    let mut body = vec![b'x'; size.max(16)];
    let mut pacer = Pacer {
        start: Instant::now(),
        per_sec: rate,
        sent: 0,
    };
    let mut i = first;
    while i < count {
        stamp_body(&mut body, base, i);
        conn.publish(&subject, &body);
        sent.fetch_add(1, Ordering::Relaxed);
        if rate.is_some() {
            conn.flush_to(1).await?;
        } else if conn.buffered() >= NATS_WRITE_BATCH {
            conn.flush_to(NATS_WRITE_BATCH).await?;
        }
        pacer.wait().await;
        i += step;
    }
    conn.flush().await
}

pub(super) async fn run_queue_nats(args: &QueueArgs, addr: SocketAddr) -> anyhow::Result<Report> {
    if args.persistent || args.receipts {
        bail!("core NATS has no persistence or receipts: --persistent and --receipts do not apply to nats://");
    }
    let base = Instant::now();
    let subject = subject(&args.destination)?;
    let seen = Arc::new(Seen::new(args.count));
    let progress = Progress::new();
    let dups = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut consumers = Vec::new();
    for c in 0..args.consumers {
        let mut conn = NatsConn::connect(addr).await?;
        conn.subscribe(&subject, Some(QUEUE_GROUP), c as u64 + 1)
            .await?;
        let (seen, progress, dups, stop) =
            (seen.clone(), progress.clone(), dups.clone(), stop.clone());
        let count = args.count;
        consumers.push(tokio::spawn(async move {
            let mut local = new_histogram();
            loop {
                let m = tokio::select! {
                    m = conn.next_message() => m?,
                    _ = stop.cancelled() => break,
                };
                if let Some((lat, idx)) = read_body(base, &m) {
                    let _ = local.record(lat.max(1));
                    if !seen.mark(idx) {
                        dups.fetch_add(1, Ordering::Relaxed);
                    }
                }
                progress.add(count);
                if progress.received.load(Ordering::Relaxed) >= count {
                    break;
                }
            }
            Ok::<_, anyhow::Error>(local)
        }));
    }
    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let mut producers = Vec::new();
    for p in 0..args.producers {
        producers.push(tokio::spawn(produce(
            addr,
            subject.clone(),
            (p as u64, args.producers as u64, args.count),
            args.size,
            args.rate.map(|r| (r / args.producers as u64).max(1)),
            base,
            sent.clone(),
        )));
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
    let params = format!(
        "{}P/{}C {}B nats",
        args.producers, args.consumers, args.size
    );
    Ok(queue_report(
        args,
        params,
        elapsed,
        sent.load(Ordering::Relaxed),
        received,
        dups.load(Ordering::Relaxed),
        0,
        &hist,
    ))
}

pub(super) async fn run_fanout_nats(args: &FanoutArgs, addr: SocketAddr) -> anyhow::Result<Report> {
    let base = Instant::now();
    let subject = subject(&args.destination)?;
    let expected = args.count * args.subscribers as u64;
    let progress = Progress::new();
    let lost = Arc::new(AtomicU64::new(0));
    let dups = Arc::new(AtomicU64::new(0));
    let mut subs = Vec::new();
    for s in 0..args.subscribers {
        let mut conn = NatsConn::connect(addr).await?;
        conn.subscribe(&subject, None, s as u64 + 1).await?;
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
                tally.see(base, &m, &dups, &progress, expected);
            }
            lost.fetch_add(tally.missing(count), Ordering::Relaxed);
            Ok::<_, anyhow::Error>(tally.local)
        }));
    }
    let started = Instant::now();
    produce(
        addr,
        subject,
        (0, 1, args.count),
        args.size,
        args.rate,
        base,
        Arc::new(AtomicU64::new(0)),
    )
    .await?;
    let params = format!("1P -> {} subscribers {}B nats", args.subscribers, args.size);
    fanout_report(
        args, params, &progress, started, expected, subs, &lost, &dups,
    )
    .await
}
