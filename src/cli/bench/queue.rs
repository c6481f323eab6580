//! The queue scenario: producers and consumers on one queue, native or STOMP.

use super::*;

pub async fn queue(args: &QueueArgs) -> anyhow::Result<Report> {
    if args.producers == 0 || args.consumers == 0 {
        bail!("--producers and --consumers must be at least 1");
    }
    if let Some(addr) = nats_addr(args.target.url.as_deref().unwrap_or("")).await? {
        return run_queue_nats(args, addr).await;
    }
    let broker = BrokerUnderTest::start(&args.target).await?;
    let syncs_before = journal_syncs(&broker).await;
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
    let syncs = match (syncs_before, journal_syncs(&broker).await) {
        (Some(before), Some(after)) => Some(after.since(&before)),
        _ => None,
    };
    broker.stop().await;
    let mut report = result?;
    if args.persistent && args.receipts {
        disk_limit(&mut report, args.producers, syncs).await?;
    }
    Ok(report)
}

/// The broker's journal syncs so far, from its `/metrics` (`None` without an admin address or
/// when the page cannot be read).
#[derive(Debug, Clone, Copy, PartialEq)]
struct JournalSyncs {
    count: f64,
    seconds: f64,
}

impl JournalSyncs {
    fn since(&self, before: &JournalSyncs) -> JournalSyncs {
        JournalSyncs {
            count: self.count - before.count,
            seconds: self.seconds - before.seconds,
        }
    }

    /// Reads the `meshmq_journal_fsync_seconds` histogram's count and sum from a Prometheus
    /// text page (`None` when the page has no such series).
    fn parse(metrics: &str) -> Option<JournalSyncs> {
        let value = |name: &str| {
            metrics
                .lines()
                .filter(|l| {
                    l.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .reduce(|a, b| a + b)
        };
        Some(JournalSyncs {
            count: value("meshmq_journal_fsync_seconds_count")?,
            seconds: value("meshmq_journal_fsync_seconds_sum")?,
        })
    }
}

async fn journal_syncs(broker: &BrokerUnderTest) -> Option<JournalSyncs> {
    let (code, body) = http::get(broker.admin?, "/metrics", Duration::from_secs(5))
        .await
        .ok()?;
    // A page without the series is a journal that has not synced yet (a fresh broker's, before
    // the run): none so far, not unknown.
    (code == 200).then(|| {
        JournalSyncs::parse(&body).unwrap_or(JournalSyncs {
            count: 0.0,
            seconds: 0.0,
        })
    })
}

/// Appends of one 4 KiB block, each followed by `fdatasync`, timed for the disk's limit.
const SYNC_ROUNDS: u32 = 500;

/// Adds the disk's limit for a receipt per message to a persistent run: with one send in
/// flight per producer and one `fdatasync` per group commit at best, `producers / mean
/// fdatasync` messages per second. The mean is measured right after the run on the filesystem
/// of the temporary directory (where the bench's own broker keeps its journal), in a file
/// allocated and written through beforehand as the journal's segments are, so a sync writes
/// data, not its size nor the conversion of fallocated blocks.
///
/// On a machine whose CPUs are busy the measuring thread also waits for a CPU after each sync
/// completes, which can dwarf the disk's time; so when the broker's `/metrics` are at hand
/// (its own broker, or `--admin`) the report also gives the journal's own syncs over the run:
/// their mean, how many sends each carried, and the limit that mean makes.
async fn disk_limit(
    report: &mut Report,
    producers: usize,
    syncs: Option<JournalSyncs>,
) -> anyhow::Result<()> {
    let mean = tokio::task::spawn_blocking(|| mean_fdatasync(&std::env::temp_dir())).await??;
    let mean_us = mean.as_secs_f64() * 1e6;
    let limit = producers as f64 / mean.as_secs_f64();
    let round = |x: f64, places: i32| (x * 10f64.powi(places)).round() / 10f64.powi(places);
    let mut extra = serde_json::json!({
        "fdatasync_4k_mean_us": round(mean_us, 1),
        "disk_limit_msg_s": limit.round(),
        "of_disk_limit": round(report.rate / limit, 3),
    });
    if let Some(s) = syncs.filter(|s| s.count > 0.0 && s.seconds > 0.0) {
        let journal_mean = s.seconds / s.count;
        let journal_limit = producers as f64 / journal_mean;
        extra["journal_syncs"] = serde_json::json!(s.count.round());
        extra["journal_fdatasync_mean_us"] = serde_json::json!(round(journal_mean * 1e6, 1));
        extra["sends_per_sync"] = serde_json::json!(round(report.sent as f64 / s.count, 2));
        extra["journal_limit_msg_s"] = serde_json::json!(journal_limit.round());
        extra["of_journal_limit"] = serde_json::json!(round(report.rate / journal_limit, 3));
    }
    report.extra = Some(extra);
    Ok(())
}

fn mean_fdatasync(dir: &std::path::Path) -> anyhow::Result<Duration> {
    use std::io::{Seek, Write};
    use std::os::fd::AsRawFd;
    let mut file = tempfile::tempfile_in(dir).with_context(|| {
        format!(
            "cannot create a file in {} to time fdatasync",
            dir.display()
        )
    })?;
    let block = [0x5a_u8; 4096];
    // SAFETY: posix_fallocate on a file descriptor this function owns.
    let err = unsafe {
        libc::posix_fallocate(
            file.as_raw_fd(),
            0,
            (block.len() as u32 * SYNC_ROUNDS) as libc::off_t,
        )
    };
    if err != 0 {
        bail!(
            "cannot allocate a file in {} to time fdatasync: {}",
            dir.display(),
            std::io::Error::from_raw_os_error(err)
        );
    }
    // Written through first, as the journal's prefiller leaves its segments: a first write
    // into a fallocated block also commits the block's conversion, which is the filesystem's
    // cost, not the disk's.
    file.write_all(&vec![0u8; block.len() * SYNC_ROUNDS as usize])?;
    file.sync_data()?;
    file.rewind()?;
    let mut total = Duration::ZERO;
    for _ in 0..SYNC_ROUNDS {
        file.write_all(&block)?;
        let started = Instant::now();
        file.sync_data()?;
        total += started.elapsed();
    }
    Ok(total / SYNC_ROUNDS)
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
            // Made once: a wait made anew for every delivery registers with the token's lock
            // and deregisters again.
            let stopped = stop.cancelled();
            tokio::pin!(stopped);
            loop {
                let d = tokio::select! {
                    d = sub.next() => match d { Some(d) => d, None => break },
                    _ = &mut stopped => break,
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
            // Bodies are cut from one buffer: the client copies a body into its frame, so
            // the buffer is whole again (and reused) by the next message.
            let size = args.size.max(16);
            let mut room = BytesMut::with_capacity(size);
            let mut i = p as u64;
            while i < args.count {
                room.reserve(size);
                room.put_u64(base.elapsed().as_nanos() as u64);
                room.put_u64(i);
                room.resize(size, b'x');
                let msg = Outgoing::new(room.split().freeze()).persistent(args.persistent);
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
    let latency = hist.lock();
    Ok(queue_report(
        args,
        queue_params(args, ""),
        elapsed,
        sent.load(Ordering::Relaxed),
        received,
        dups.load(Ordering::Relaxed),
        redelivered.load(Ordering::Relaxed),
        &latency,
    ))
}

/// A STOMP producer writes once this much is buffered.
const STOMP_WRITE_BATCH: usize = 64 * 1024;

/// What one STOMP producer sends: indexes `first`, `first + step`, … below `count`.
pub(super) struct StompProducer {
    pub(super) addr: SocketAddr,
    pub(super) destination: String,
    pub(super) first: u64,
    pub(super) step: u64,
    pub(super) count: u64,
    pub(super) size: usize,
    pub(super) persistent: bool,
    /// Wait for a receipt on every message (else only on the last).
    pub(super) receipts: bool,
    pub(super) rate: Option<u64>,
}

impl StompProducer {
    /// Pipelined SENDs; returns once the broker has confirmed the last.
    pub(super) async fn run(self, base: Instant, sent: Arc<AtomicU64>) -> anyhow::Result<()> {
        let mut conn = StompConn::connect(self.addr).await?;
        let lines = SendLines::new(&self.destination, self.persistent);
        let mut body = vec![b'x'; self.size.max(16)];
        let mut pacer = Pacer {
            start: Instant::now(),
            per_sec: self.rate,
            sent: 0,
        };
        // The send time stamped in a body: the clock is read again whenever the buffered
        // frames were written, so a stamp is never later than the write that sends it.
        let mut now = base.elapsed().as_nanos() as u64;
        let mut receipt = String::new();
        let mut i = self.first;
        let mut unsent = 0;
        while i < self.count {
            stamp_body_at(&mut body, now, i);
            let last = i + self.step >= self.count;
            let wants_receipt = self.receipts || last;
            conn.send(&lines, wants_receipt.then_some(i), &body);
            unsent += 1;
            if wants_receipt {
                receipt.clear();
                use std::fmt::Write;
                let _ = write!(receipt, "r{i}");
                conn.receipt(&receipt).await?;
            } else if self.rate.is_some() {
                conn.flush_to(1).await?;
            } else if conn.buffered() >= STOMP_WRITE_BATCH {
                conn.flush_to(STOMP_WRITE_BATCH).await?;
            } else {
                i += self.step;
                continue;
            }
            sent.fetch_add(unsent, Ordering::Relaxed);
            unsent = 0;
            now = base.elapsed().as_nanos() as u64;
            pacer.wait().await;
            i += self.step;
        }
        sent.fetch_add(unsent, Ordering::Relaxed);
        Ok(())
    }
}

/// How a STOMP consumer acknowledges: every message (`client-individual`), or cumulatively
/// every `every` messages (`client`).
#[derive(Clone, Copy)]
pub(super) enum StompAcks {
    Each,
    Every(u32),
}

impl StompAcks {
    pub(super) fn new(ack: AckArg, prefetch: u32) -> StompAcks {
        match ack {
            AckArg::Individual => StompAcks::Each,
            AckArg::Auto | AckArg::Client => StompAcks::Every((prefetch / 2).max(1)),
        }
    }

    /// Counts one more message not yet acknowledged in `unacked`; true when it is to be
    /// acknowledged now (and `unacked` starts again from zero).
    pub(super) fn count(self, unacked: &mut u32) -> bool {
        *unacked += 1;
        let due = match self {
            StompAcks::Each => true,
            StompAcks::Every(n) => *unacked >= n,
        };
        if due {
            *unacked = 0;
        }
        due
    }

    pub(super) fn header(self) -> &'static str {
        match self {
            StompAcks::Each => "client-individual",
            StompAcks::Every(_) => "client",
        }
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
            loop {
                // One clock read for the messages of one read: they arrived together.
                let now = base.elapsed().as_nanos() as u64;
                let (mut copies, mut again) = (0, 0);
                let taken = conn.take_messages(|m| {
                    if let Some((lat, idx)) = read_body_at(now, m.body) {
                        let _ = local.record(lat.max(1));
                        if !seen.mark(idx) && !m.redelivered {
                            copies += 1;
                        }
                    }
                    again += m.redelivered as u64;
                    acks.count(&mut unacked)
                })?;
                if copies > 0 {
                    dups.fetch_add(copies, Ordering::Relaxed);
                }
                if again > 0 {
                    redelivered.fetch_add(again, Ordering::Relaxed);
                }
                if taken > 0 {
                    progress.add_many(taken as u64, count);
                    if progress.received.load(Ordering::Relaxed) >= count {
                        break;
                    }
                    continue;
                }
                tokio::select! {
                    more = conn.wait_read(Duration::from_secs(3600)) => if !more? { break },
                    _ = stop.cancelled() => break,
                }
            }
            // Acknowledge the tail too, and leave only once the broker has every ACK: what this
            // consumer took must not return to the queue (and reach the others as
            // redeliveries) when it disconnects.
            conn.finish().await?;
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
    Ok(queue_report(
        args,
        queue_params(args, " stomp"),
        elapsed,
        sent.load(Ordering::Relaxed),
        received,
        dups.load(Ordering::Relaxed),
        redelivered.load(Ordering::Relaxed),
        &hist,
    ))
}

#[cfg(test)]
mod tests {
    use super::JournalSyncs;

    #[test]
    fn journal_syncs_are_read_from_the_fsync_histogram_of_a_metrics_page() {
        let page = "\
# HELP meshmq_journal_fsync_seconds Time of one journal fdatasync.
# TYPE meshmq_journal_fsync_seconds histogram
meshmq_journal_fsync_seconds_bucket{group=\"g\",member=\"m\",le=\"0.001\"} 90
meshmq_journal_fsync_seconds_sum{group=\"g\",member=\"m\"} 0.025
meshmq_journal_fsync_seconds_count{group=\"g\",member=\"m\"} 100
meshmq_journal_fsync_seconds_count_other 7
";
        let syncs = JournalSyncs::parse(page).expect("the histogram is there");
        assert_eq!(syncs.count, 100.0);
        assert!((syncs.seconds - 0.025).abs() < 1e-12, "{syncs:?}");
        let later = JournalSyncs {
            count: 150.0,
            seconds: 0.035,
        };
        let run = later.since(&syncs);
        assert_eq!(run.count, 50.0);
        assert!((run.seconds - 0.01).abs() < 1e-12, "{run:?}");
        assert_eq!(JournalSyncs::parse("meshmq_up 1\n"), None);
    }
}
