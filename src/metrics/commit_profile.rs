//! A debugging profile of the path from a persistent send to its receipt, off unless the
//! environment variable `MESHMQ_COMMIT_PROFILE` is set when the broker starts.
//!
//! When on, the journal writer, the broker's commit dispatch and the connections record how
//! long each stage of a group commit took — records per batch, the oldest record's wait before
//! its write, the write, the `fdatasync`, the writer's idle time between batches, the way from
//! the writer's publish to the dispatch (a hop to another thread, when there is one), the
//! dispatch, and the hop from the dispatch's publish to a receipt being encoded — and the journal prints a table of their distributions to
//! standard error when it closes. When off, each probe is one relaxed atomic load. The hops
//! compare against the newest publish, so a batch overtaken by the next one before a waiter
//! woke counts from the newer publish (short by at most one batch).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// A stage of the send-to-receipt path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Records in one group commit (a count, not a time).
    BatchRecords,
    /// First append of a batch → its write began.
    WaitToWrite,
    /// The `write` of a batch (all its chunks).
    Write,
    /// The batch's `fdatasync`.
    Fdatasync,
    /// The writer finished a batch → it began the next one (it waited for appends).
    WriterIdle,
    /// The writer published a synced index → the dispatch of it began.
    PublishToDispatch,
    /// The dispatch made a commit's messages visible and published it.
    Dispatch,
    /// The dispatch published a synced index → a connection encoded the receipts it freed.
    DispatchToReceipt,
}

const STAGES: [(Stage, &str, &str); 8] = [
    (Stage::BatchRecords, "batch_records", "records"),
    (Stage::WaitToWrite, "append_to_write", "us"),
    (Stage::Write, "write", "us"),
    (Stage::Fdatasync, "fdatasync", "us"),
    (Stage::WriterIdle, "writer_idle", "us"),
    (Stage::PublishToDispatch, "publish_to_dispatch", "us"),
    (Stage::Dispatch, "dispatch", "us"),
    (Stage::DispatchToReceipt, "dispatch_to_receipt", "us"),
];

/// 0: not decided yet, 1: off, 2: on.
static STATE: AtomicU8 = AtomicU8::new(0);
static BASE: OnceLock<Instant> = OnceLock::new();
static HISTOGRAMS: OnceLock<Vec<Mutex<Histogram<u64>>>> = OnceLock::new();
/// When the writer last published a synced index (nanoseconds since `BASE`).
static WRITER_PUBLISHED: AtomicU64 = AtomicU64::new(0);
/// When the dispatch last published a synced index.
static DISPATCHED: AtomicU64 = AtomicU64::new(0);

/// Whether the profile records (decided once, from the environment).
#[inline]
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => decide(),
    }
}

#[cold]
fn decide() -> bool {
    let on = std::env::var_os("MESHMQ_COMMIT_PROFILE").is_some();
    if on {
        BASE.get_or_init(Instant::now);
        HISTOGRAMS.get_or_init(|| {
            STAGES
                .iter()
                .map(|_| {
                    Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid bounds"))
                })
                .collect()
        });
    }
    STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
    on
}

fn nanos(at: Instant) -> u64 {
    BASE.get()
        .map_or(0, |b| at.saturating_duration_since(*b).as_nanos() as u64)
}

fn slot(stage: Stage) -> usize {
    STAGES
        .iter()
        .position(|(s, _, _)| *s == stage)
        .expect("every stage is listed")
}

/// Records a value (a count, or microseconds) for `stage`.
pub fn record(stage: Stage, value: u64) {
    if !enabled() {
        return;
    }
    if let Some(h) = HISTOGRAMS.get() {
        let _ = h[slot(stage)].lock().record(value.max(1));
    }
}

/// Records the time from `since` to now for `stage`.
pub fn record_since(stage: Stage, since: Instant) {
    if enabled() {
        record(stage, since.elapsed().as_micros() as u64);
    }
}

/// The writer published a synced index now.
pub fn writer_published() {
    if enabled() {
        WRITER_PUBLISHED.store(nanos(Instant::now()), Ordering::Relaxed);
    }
}

/// The dispatch of a published index begins: records the way from the writer.
pub fn dispatch_began() {
    if enabled() {
        hop(Stage::PublishToDispatch, &WRITER_PUBLISHED);
    }
}

/// The dispatch published a synced index now.
pub fn dispatched() {
    if enabled() {
        DISPATCHED.store(nanos(Instant::now()), Ordering::Relaxed);
    }
}

/// A connection encoded receipts a sync freed: records the hop from the dispatch.
pub fn receipts_released() {
    if enabled() {
        hop(Stage::DispatchToReceipt, &DISPATCHED);
    }
}

fn hop(stage: Stage, from: &AtomicU64) {
    let from = from.load(Ordering::Relaxed);
    let now = nanos(Instant::now());
    if from != 0 && now >= from {
        record(stage, (now - from) / 1000);
    }
}

/// The recorded distributions as a table (empty when the profile is off).
pub fn report() -> String {
    use std::fmt::Write as _;
    let Some(hs) = HISTOGRAMS.get() else {
        return String::new();
    };
    let mut out = String::from(
        "commit profile       unit        count     mean      p10      p50      p90      p99      max\n",
    );
    for ((_, name, unit), h) in STAGES.iter().zip(hs) {
        let h = h.lock();
        let _ = writeln!(
            out,
            "{name:<20} {unit:<8} {:>8} {:>8.1} {:>8} {:>8} {:>8} {:>8} {:>8}",
            h.len(),
            h.mean(),
            h.value_at_quantile(0.10),
            h.value_at_quantile(0.50),
            h.value_at_quantile(0.90),
            h.value_at_quantile(0.99),
            h.max(),
        );
    }
    out
}
