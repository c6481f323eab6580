//! When a synced journal's writer starts its next group commit, sized by what waits for it: a
//! policy with no I/O and time passed in, and the count of commit waits it reads.
//!
//! An `fdatasync` costs about the same for one record as for four, so a sync should carry the
//! records that will soon need one. Producers that each wait for a receipt send again as soon
//! as their receipt arrives; without a policy the writer syncs whatever is queued when the last
//! sync ends — the sends that arrived *during* it — so the producers split into two cohorts
//! that sync in turn, each waiting for the other's sync and then for its own.
//! - Every wait for a commit is announced ([`Waits::add`], dropped when it ends), with the
//!   index it waits for.
//! - A sync that released N waits expects N back: the next sync starts once the waits for
//!   records after the last sync number those queued when it ended plus N — or once the mean
//!   sync time has passed since it ended (at most [`MAX_RETURN_WAIT`]), so a producer that
//!   stopped costs at most that once. With no wait released, a sync starts at once.
//! - Holding back pays only while the released come back faster than a sync takes: a producer
//!   then waits one sync plus its way back per round, where in a cohort it waits two syncs.
//!   When they come back slower (a busy machine), cohorts cost nothing — each producer's next
//!   send finds the other cohort's sync over — and holding back would make every producer
//!   wait for the slowest. So the time until the released are back is measured every round
//!   (held back or not) and a sync is held back only while its mean is below the mean sync.
//! - Nothing sits between a sync's end and the receipts it frees: the policy only decides
//!   when the *next* sync starts.
//!
//! Invariant: a start is never put off for longer than the bound above; what a sync covers is
//! released only after it completes (the writer's business, not this module's).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The longest a sync waits for returning waiters, however slow the disk's syncs are.
pub(crate) const MAX_RETURN_WAIT: Duration = Duration::from_millis(2);

/// The commit waits in progress, by the index each waits for.
#[derive(Debug, Default)]
pub(super) struct Waits {
    by_index: BTreeMap<u64, u32>,
    /// The last index the writer synced.
    synced: u64,
    /// Waits for records after `synced`.
    after: usize,
    /// The policy's target for `after` since the last sync (0: none).
    target: usize,
    /// When `after` first reached `target` since the last sync.
    returned: Option<Instant>,
}

impl Waits {
    /// A wait for `index` began at `now`. Returns the waits for records after the last sync.
    pub fn add(&mut self, index: u64, now: Instant) -> usize {
        *self.by_index.entry(index).or_default() += 1;
        if index > self.synced {
            self.after += 1;
            if self.target != 0 && self.after >= self.target && self.returned.is_none() {
                self.returned = Some(now);
            }
        }
        self.after
    }

    /// A wait for `index` ended (satisfied, failed or given up).
    pub fn remove(&mut self, index: u64) {
        if let std::collections::btree_map::Entry::Occupied(mut e) = self.by_index.entry(index) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
            if index > self.synced {
                self.after -= 1;
            }
        }
    }

    /// Everything up to `last` is synced: returns what the policy learns from it (and forgets
    /// the target, until [`Waits::expect`] sets the next).
    pub fn synced(&mut self, last: u64) -> Synced {
        let before = self.after;
        self.synced = self.synced.max(last);
        self.after = self
            .by_index
            .range(self.synced + 1..)
            .map(|(_, &n)| n as usize)
            .sum();
        self.target = 0;
        Synced {
            released: before.saturating_sub(self.after),
            queued: self.after,
            returned: self.returned.take(),
        }
    }

    /// The waits after the last sync at which the released count as back.
    pub fn expect(&mut self, target: usize) {
        self.target = target;
    }

    /// Waits for records after the last sync.
    pub fn after(&self) -> usize {
        self.after
    }
}

/// What a completed sync tells the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Synced {
    /// Waits it released.
    pub released: usize,
    /// Waits for records after it.
    pub queued: usize,
    /// When the waits the sync before it released were back (`None`: not all of them were).
    pub returned: Option<Instant>,
}

/// When to start the next sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Start {
    Now,
    /// At this time, or earlier once the waits reach [`GroupCommit::target`].
    At(Instant),
}

/// The writer's memory of its last sync.
#[derive(Debug, Default)]
pub(super) struct GroupCommit {
    /// Waits for records after the last sync at which the next one starts without waiting
    /// longer (0: none expected).
    target: usize,
    /// When the last sync that released waits ended.
    completed_at: Option<Instant>,
    /// Exponentially weighted mean of the syncs' durations.
    sync_mean: Option<Duration>,
    /// Exponentially weighted mean of the time from a sync's end until the waits it released
    /// were back.
    return_mean: Option<Duration>,
}

fn ewma(mean: Option<Duration>, sample: Duration) -> Option<Duration> {
    Some(match mean {
        None => sample,
        Some(mean) => (mean * 7 + sample) / 8,
    })
}

impl GroupCommit {
    /// A sync that took `took` ended at `now`.
    pub fn synced(&mut self, sync: Synced, took: Duration, now: Instant) {
        self.sync_mean = ewma(self.sync_mean, took);
        if let Some(completed) = self.completed_at {
            // Not back by now: at least this long.
            let back = sync
                .returned
                .unwrap_or(now)
                .saturating_duration_since(completed);
            self.return_mean = ewma(self.return_mean, back);
        }
        if sync.released == 0 {
            self.target = 0;
            self.completed_at = None;
        } else {
            self.target = sync.queued + sync.released;
            self.completed_at = Some(now);
        }
    }

    /// The waits at which the next sync starts at once (0: it does anyway).
    pub fn target(&self) -> usize {
        self.target
    }

    /// When the sync of what is queued (not empty) should start, with `waiting` waits for
    /// records after the last sync.
    pub fn start(&self, waiting: usize, now: Instant) -> Start {
        let Some(completed) = self.completed_at else {
            return Start::Now;
        };
        let sync = self.sync_mean.unwrap_or(Duration::ZERO);
        if waiting >= self.target || self.return_mean.is_some_and(|back| back >= sync) {
            return Start::Now;
        }
        let at = completed + sync.min(MAX_RETURN_WAIT);
        if at <= now {
            Start::Now
        } else {
            Start::At(at)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYNC: Duration = Duration::from_micros(300);

    fn synced(released: usize, queued: usize) -> Synced {
        Synced {
            released,
            queued,
            returned: None,
        }
    }

    #[test]
    fn with_no_wait_released_a_sync_starts_at_once() {
        let t0 = Instant::now();
        assert_eq!(GroupCommit::default().start(0, t0), Start::Now);
        let mut g = GroupCommit::default();
        g.synced(synced(0, 2), SYNC, t0);
        assert_eq!(g.start(0, t0), Start::Now);
    }

    #[test]
    fn a_sync_waits_for_the_waits_the_last_one_released_to_come_back() {
        let t0 = Instant::now();
        let mut g = GroupCommit::default();
        g.synced(synced(4, 0), SYNC, t0);
        let later = t0 + Duration::from_micros(40);
        assert_eq!(g.start(1, later), Start::At(t0 + SYNC));
        assert_eq!(g.start(3, later), Start::At(t0 + SYNC));
        assert_eq!(g.start(4, later), Start::Now);
        // One that stopped waiting costs at most the mean sync.
        assert_eq!(g.start(3, t0 + SYNC), Start::Now);
    }

    /// Two cohorts syncing in turn: one sync released two producers while two others queued
    /// behind it; the next sync waits for the two to come back and carries all four.
    #[test]
    fn cohorts_that_sync_in_turn_merge_into_one() {
        let t0 = Instant::now();
        let mut g = GroupCommit::default();
        g.synced(synced(2, 2), SYNC, t0);
        assert_eq!(g.target(), 4);
        assert_eq!(g.start(2, t0), Start::At(t0 + SYNC));
        assert_eq!(g.start(3, t0), Start::At(t0 + SYNC));
        assert_eq!(g.start(4, t0), Start::Now);
    }

    #[test]
    fn the_wait_follows_the_mean_sync_within_a_bound() {
        let t0 = Instant::now();
        let mut g = GroupCommit::default();
        g.synced(synced(2, 0), Duration::from_micros(800), t0);
        for _ in 0..40 {
            // Every round's waits back at once: holding back pays.
            g.synced(
                Synced {
                    returned: Some(t0),
                    ..synced(2, 0)
                },
                Duration::from_micros(100),
                t0,
            );
        }
        match g.start(1, t0) {
            Start::At(at) => {
                let wait = at - t0;
                assert!(
                    wait >= Duration::from_micros(100) && wait < Duration::from_micros(110),
                    "{wait:?}"
                );
            }
            Start::Now => panic!("must wait for the second waiter"),
        }
        for _ in 0..40 {
            g.synced(
                Synced {
                    returned: Some(t0),
                    ..synced(2, 0)
                },
                Duration::from_secs(1),
                t0,
            );
        }
        assert_eq!(g.start(1, t0), Start::At(t0 + MAX_RETURN_WAIT));
    }

    /// Waits that come back slower than a sync takes: the cohorts cost nothing then, and
    /// holding back would make every producer wait for the slowest, so syncs start at once;
    /// once they come back faster again, holding back resumes.
    #[test]
    fn a_sync_is_held_back_only_while_the_released_return_faster_than_a_sync() {
        let t0 = Instant::now();
        let mut g = GroupCommit::default();
        let mut now = t0;
        for _ in 0..40 {
            let ended = now;
            now += SYNC * 3;
            // The last sync's waits came back two syncs after it ended.
            g.synced(
                Synced {
                    returned: Some(ended + SYNC * 2),
                    ..synced(2, 2)
                },
                SYNC,
                now,
            );
        }
        assert_eq!(g.start(2, now), Start::Now);
        for _ in 0..40 {
            let ended = now;
            now += SYNC * 2;
            g.synced(
                Synced {
                    returned: Some(ended + SYNC / 4),
                    ..synced(2, 2)
                },
                SYNC,
                now,
            );
        }
        assert_eq!(g.start(2, now), Start::At(now + SYNC));
    }

    #[test]
    fn waits_are_counted_by_whether_their_record_is_after_the_last_sync() {
        let t = Instant::now();
        let mut w = Waits::default();
        assert_eq!(w.add(5, t), 1);
        assert_eq!(w.add(6, t), 2);
        assert_eq!(w.add(6, t), 3);
        // Synced up to 5: one released, two still queued.
        assert_eq!(w.synced(5), synced(1, 2));
        // The released wait ends after the sync: it no longer counts either way.
        w.remove(5);
        assert_eq!(w.after(), 2);
        assert_eq!(w.add(9, t), 3);
        w.remove(6);
        assert_eq!(w.synced(8), synced(1, 1));
        w.remove(6);
        w.remove(9);
        assert_eq!(w.after(), 0);
        // A wait for an index already synced (it will return at once) is not "after".
        assert_eq!(w.add(3, t), 0);
        w.remove(3);
        assert_eq!(w.synced(100), synced(0, 0));
    }

    #[test]
    fn the_released_are_back_when_the_waits_first_reach_the_target() {
        let t = Instant::now();
        let at = |us| t + Duration::from_micros(us);
        let mut w = Waits::default();
        w.add(1, t);
        w.add(2, t);
        assert_eq!(w.synced(2), synced(2, 0));
        w.remove(1);
        w.remove(2);
        w.expect(2);
        w.add(3, at(10));
        w.add(4, at(30));
        w.remove(3);
        // Reached once already: a later wait does not move it.
        w.add(5, at(50));
        assert_eq!(
            w.synced(5),
            Synced {
                returned: Some(at(30)),
                ..synced(2, 0)
            }
        );
        // Not reached: no time.
        w.remove(4);
        w.remove(5);
        w.expect(2);
        w.add(6, at(60));
        assert_eq!(w.synced(6), synced(1, 0));
    }
}
