//! What a login costs, bounded: password verification (argon2, megabytes of memory and tens of
//! milliseconds each) runs on a fixed number of slots sized from a memory budget, a login
//! waits for a slot only briefly and only behind a bounded queue, and an address whose logins
//! keep failing is refused without verifying for a while (per-address backoff).
//!
//! Owns: the slots, the waiting count, and the failure record of each address. Must not touch:
//! sockets or frames (the caller says who is asking and tells the client). Invariants: at most
//! `slots` verifications run at once, so their memory stays within the budget whatever the
//! number of connections; a refusal for a busy pool or a backed-off address costs no
//! verification; a successful login clears its address's record; the record is bounded
//! ([`MAX_TRACKED`] addresses).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Semaphore;

/// Failed logins in a row an address may make before it is slowed.
pub const FREE_FAILURES: u32 = 5;
/// The backoff after the first failure past the free ones; it doubles with each further one.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A failure older than this (and past its backoff) is forgotten.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(60);
/// Addresses whose failures are remembered at most (about 50 bytes each).
pub const MAX_TRACKED: usize = 100_000;
/// How long a login waits for a verification slot before it is refused as busy.
pub const SLOT_WAIT: Duration = Duration::from_secs(2);
/// Logins that may wait for a slot, per slot; beyond them a login is refused at once.
pub const WAITING_PER_SLOT: usize = 32;

/// Why a login was turned away before its password was verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateRefusal {
    #[error("too many failed logins from this address: try again in {}ms", .0.as_millis())]
    Backoff(Duration),
    #[error("the broker is busy verifying other logins: try again shortly")]
    Busy,
}

impl GateRefusal {
    /// The `reason` label of `meshmq_connections_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            GateRefusal::Backoff(_) => "login_backoff",
            GateRefusal::Busy => "login_busy",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    /// In a row, since the last success or since they were forgotten.
    count: u32,
    last: Instant,
    /// Refused without verifying until then.
    until: Instant,
}

/// The slots and the failure records.
pub struct LoginGate {
    slots: Semaphore,
    size: usize,
    waiting: AtomicUsize,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

/// A slot held while one verification runs.
pub struct Slot<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl LoginGate {
    /// As many slots as `budget` bytes hold verifications of `per_verification` bytes each,
    /// and no more than half the CPUs (verifying is CPU-bound: the rest keep serving), but
    /// at least one.
    pub fn new(budget: u64, per_verification: u64) -> LoginGate {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let by_memory = (budget / per_verification.max(1)) as usize;
        let size = by_memory.min(cpus / 2).max(1);
        LoginGate {
            slots: Semaphore::new(size),
            size,
            waiting: AtomicUsize::new(0),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Verifications that may run at once.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Refuses an address that is backing off.
    pub fn admit(&self, from: IpAddr) -> Result<(), GateRefusal> {
        let now = Instant::now();
        match self.failures.lock().get(&from) {
            Some(f) if f.until > now => Err(GateRefusal::Backoff(f.until - now)),
            _ => Ok(()),
        }
    }

    /// Waits (briefly, and only behind a bounded queue) for a verification slot.
    pub async fn slot(&self) -> Result<Slot<'_>, GateRefusal> {
        if let Ok(permit) = self.slots.try_acquire() {
            return Ok(Slot { _permit: permit });
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.size * WAITING_PER_SLOT {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(GateRefusal::Busy);
        }
        let got = tokio::time::timeout(SLOT_WAIT, self.slots.acquire()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match got {
            Ok(Ok(permit)) => Ok(Slot { _permit: permit }),
            _ => Err(GateRefusal::Busy),
        }
    }

    /// Records the outcome of a verified login from `from`.
    pub fn record(&self, from: IpAddr, ok: bool) {
        self.record_at(from, ok, Instant::now());
    }

    fn record_at(&self, from: IpAddr, ok: bool, now: Instant) {
        let mut failures = self.failures.lock();
        if ok {
            failures.remove(&from);
            return;
        }
        if failures.len() >= MAX_TRACKED && !failures.contains_key(&from) {
            failures.retain(|_, f| !forgotten(f, now));
            if failures.len() >= MAX_TRACKED {
                // Full of live records: this address goes untracked (the slots still bound it).
                return;
            }
        }
        let f = failures.entry(from).or_insert(Failures {
            count: 0,
            last: now,
            until: now,
        });
        if forgotten(f, now) {
            f.count = 0;
        }
        f.count += 1;
        f.last = now;
        if f.count > FREE_FAILURES {
            let doublings = (f.count - FREE_FAILURES - 1).min(16);
            f.until = now + (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF);
        }
    }
}

fn forgotten(f: &Failures, now: Instant) -> bool {
    now.saturating_duration_since(f.last) > FAILURE_MEMORY && now >= f.until
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn an_address_that_keeps_failing_is_slowed_and_a_success_clears_it() {
        let gate = LoginGate::new(1 << 30, 1);
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES {
            gate.record_at(ip(1), false, t0);
            assert_eq!(gate.admit(ip(1)), Ok(()), "the first failures are free");
        }
        gate.record_at(ip(1), false, t0);
        assert!(matches!(gate.admit(ip(1)), Err(GateRefusal::Backoff(d)) if d <= FIRST_BACKOFF));
        gate.record_at(ip(1), false, t0);
        gate.record_at(ip(1), false, t0);
        let until = gate.failures.lock()[&ip(1)].until;
        assert_eq!(until - t0, FIRST_BACKOFF * 4, "doubling");
        assert_eq!(gate.admit(ip(2)), Ok(()), "other addresses are not slowed");
        for _ in 0..40 {
            gate.record_at(ip(1), false, t0);
        }
        assert_eq!(gate.failures.lock()[&ip(1)].until - t0, MAX_BACKOFF);
        gate.record_at(ip(1), true, t0);
        assert_eq!(gate.admit(ip(1)), Ok(()));
        // Failures long past are forgotten: the count starts again.
        for _ in 0..FREE_FAILURES {
            gate.record_at(ip(3), false, t0);
        }
        let later = t0 + FAILURE_MEMORY + Duration::from_secs(1);
        gate.record_at(ip(3), false, later);
        assert_eq!(gate.failures.lock()[&ip(3)].count, 1);
    }

    #[test]
    fn the_pool_is_sized_from_memory_and_never_empty() {
        assert_eq!(LoginGate::new(19 << 20, 19 << 20).size(), 1);
        assert_eq!(LoginGate::new(1 << 20, 64 << 20).size(), 1);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(LoginGate::new(1 << 40, 1).size(), (cpus / 2).max(1));
    }

    #[tokio::test(start_paused = true)]
    async fn logins_beyond_the_slots_and_the_queue_are_refused_quickly() {
        use tokio::time::Instant;
        let gate = LoginGate::new(1, 1);
        assert_eq!(gate.size(), 1);
        let held = gate.slot().await.expect("a free slot");
        let started = Instant::now();
        let waited = gate.slot().await;
        assert!(matches!(waited, Err(GateRefusal::Busy)));
        assert!(
            started.elapsed() >= SLOT_WAIT,
            "it waited for the slot first"
        );
        gate.waiting
            .store(gate.size() * WAITING_PER_SLOT, Ordering::Release);
        let started = Instant::now();
        assert!(matches!(gate.slot().await, Err(GateRefusal::Busy)));
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "refused at once"
        );
        gate.waiting.store(0, Ordering::Release);
        drop(held);
        assert!(gate.slot().await.is_ok());
    }
}
