//! A real full disk (the broker's data dir on a 64 MiB tmpfs the test mounts) is handled like
//! `store_limit`: persistent sends wait (`on_full = "block"`) or are refused with an error
//! naming the journal (`"fail"`), the broker does not crash, consumers keep draining during the
//! full state and producers resume, and the journal is not corrupted — restarted after a
//! `kill -9`, it delivers every receipted message.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Broker, Config, History, SharedHistory, GUARD};
use meshmq::client::{AckMode, Client, ClientError, ErrorCode, Outgoing, SubscribeOptions};
use tempfile::TempDir;

const QUEUE: &str = "queue://media";
const BODY: usize = 16 << 10;
/// About twice what the filesystem holds.
const PER_PRODUCER: usize = 2800;
const PRODUCERS: usize = 3;

/// A size-limited tmpfs mounted for the test and unmounted when dropped.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Tmpfs { dir },
            Ok(o) => panic!(
                "this test needs to mount a {size} tmpfs at {} and was not permitted ({}): {} — run the tests as root (CI does) or with CAP_SYS_ADMIN",
                dir.path().display(),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => panic!("this test needs the `mount` command to mount a tmpfs: {e}"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds it (a broker being reaped): detach it now, freed later.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

fn config(disk: &Tmpfs, on_full: &str) -> Config {
    Config::new()
        .broker(&format!("on_full = \"{on_full}\""))
        .broker("expiry_check_interval = \"50ms\"")
        .store("segment_size = \"4MiB\"")
        .store("checkpoint_interval = \"100ms\"")
        .data_dir(&disk.path().join("data"))
}

fn message(name: &str) -> Outgoing {
    let mut body = format!("{name}|").into_bytes();
    body.resize(BODY, b'd');
    Outgoing::new(body).persistent(true)
}

fn journal_full(broker: &Broker) -> bool {
    common::metric_sum(&broker.metrics(), "meshmq_journal_full", &[]) == 1.0
}

/// Sends one receipt at a time; a send refused for a full journal is retried a moment later
/// when `retry_when_full`, any other failure ends it.
async fn produce(
    client: Client,
    prefix: String,
    history: SharedHistory,
    receipted: Arc<AtomicUsize>,
    retry_when_full: bool,
) -> Result<(), ClientError> {
    for i in 0..PER_PRODUCER {
        let name = format!("{prefix}-{i:05}");
        history.lock().unwrap().sent(&name);
        loop {
            match client.send_with_receipt(QUEUE, &message(&name)).await {
                Ok(()) => break,
                Err(e) if retry_when_full && e.code() == Some(ErrorCode::ResourceExhausted) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => return Err(e),
            }
        }
        history.lock().unwrap().receipted(&name);
        receipted.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Consumes and acknowledges into `history` until `stop` says so.
async fn consume(
    url: String,
    history: SharedHistory,
    delivered: Arc<AtomicUsize>,
    stop: tokio_util::sync::CancellationToken,
) {
    let client = Client::connect(&url, Default::default())
        .await
        .expect("connect");
    let mut sub = client
        .subscribe(
            QUEUE,
            SubscribeOptions {
                ack: AckMode::ClientIndividual,
                prefetch: 20,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe");
    loop {
        let d = tokio::select! {
            d = sub.next() => d.expect("the broker stays up"),
            _ = stop.cancelled() => break,
        };
        history
            .lock()
            .unwrap()
            .delivered(&common::message_name(&d.body), d.redelivery_count);
        delivered.fetch_add(1, Ordering::Relaxed);
        sub.ack(&d).await.expect("ack");
    }
    client.close().await.expect("close");
}

async fn fill_drain_and_recover(on_full: &str) {
    let disk = Tmpfs::mount("64m");
    let mut broker = Broker::start(&config(&disk, on_full));
    let history = History::shared();
    let receipted = Arc::new(AtomicUsize::new(0));
    let retry = on_full == "fail";
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        producers.push(tokio::spawn(produce(
            broker.client().await,
            format!("p{p}"),
            history.clone(),
            receipted.clone(),
            retry,
        )));
    }
    common::wait_until("the disk is full", || {
        assert!(
            broker.exited().is_none(),
            "the broker died:\n{}",
            broker.log()
        );
        journal_full(&broker)
    });
    assert!(
        broker.log().contains("journal full"),
        "the broker says the journal is full:\n{}",
        broker.log()
    );

    if on_full == "fail" {
        let other = broker.client().await;
        history.lock().unwrap().sent("refused");
        let refusal = other
            .send_with_receipt(QUEUE, &message("refused"))
            .await
            .expect_err("a send to a full journal is refused under on_full = fail");
        assert_eq!(
            refusal.code(),
            Some(ErrorCode::ResourceExhausted),
            "{refusal}"
        );
        let text = refusal.to_string();
        for word in ["journal", "disk", QUEUE] {
            assert!(
                text.contains(word),
                "the refusal does not mention {word:?}: {text}"
            );
        }
    } else {
        // Each producer waits for one receipt at a time, so at most PRODUCERS sends were
        // accepted before the journal was seen full; those are still written and receipted (the
        // journal's promise for what it accepted). Past them, nothing.
        let at_full = receipted.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let settled = receipted.load(Ordering::Relaxed);
        assert!(
            settled - at_full <= PRODUCERS,
            "receipts went on with the disk full: {} after it filled, more than the {PRODUCERS} \
             sends in flight",
            settled - at_full
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            receipted.load(Ordering::Relaxed),
            settled,
            "receipts went on with the disk full"
        );
    }

    // A consumer drains while the disk is full; the producers resume and finish.
    let delivered = Arc::new(AtomicUsize::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let consumer = tokio::spawn(consume(
        broker.url(),
        history.clone(),
        delivered.clone(),
        stop.clone(),
    ));
    for p in producers {
        tokio::time::timeout(GUARD, p)
            .await
            .expect("the producers finish once a consumer drains")
            .expect("join")
            .expect("every send was accepted in the end");
    }
    assert!(
        broker.exited().is_none(),
        "the broker died:\n{}",
        broker.log()
    );
    assert!(delivered.load(Ordering::Relaxed) > 0);
    stop.cancel();
    tokio::time::timeout(GUARD, consumer)
        .await
        .expect("the consumer stops")
        .expect("join");

    // The journal that went through the full disk recovers everything still pending.
    broker.kill9();
    broker.restart();
    common::drain(&broker, QUEUE, &history).await;
    let h = history.lock().unwrap();
    h.check();
    assert_eq!(h.receipted_count(), PRODUCERS * PER_PRODUCER);
    assert!(!h.was_delivered("refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_makes_persistent_sends_wait_under_block() {
    fill_drain_and_recover("block").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_makes_persistent_sends_fail_under_fail() {
    fill_drain_and_recover("fail").await;
}
