//! The one way a test waits for something: poll a condition (or a value) at a steady pace until
//! it holds, and fail the test — saying what was awaited, for how long, and whatever the caller
//! adds to read (member logs, counters) — once a bound has passed. Blocking and async forms
//! poll alike; the async ones sleep on the runtime, so clients on the same runtime go on.
//!
//! Every wait is bounded: by [`GUARD`](super::GUARD) unless the test names its own budget
//! (`within`), which is then part of what the test proves.

use std::time::{Duration, Instant};

use super::GUARD;

/// How a wait polls: every `every`, for at most `within`.
#[derive(Debug, Clone, Copy)]
pub struct Poll {
    pub every: Duration,
    pub within: Duration,
}

impl Default for Poll {
    /// Every 20 ms, within [`GUARD`].
    fn default() -> Poll {
        Poll {
            every: Duration::from_millis(20),
            within: GUARD,
        }
    }
}

/// Every 20 ms within [`GUARD`], as [`Poll::default`].
pub fn poll() -> Poll {
    Poll::default()
}

impl Poll {
    /// Polls every `every` instead.
    pub fn every(self, every: Duration) -> Poll {
        Poll { every, ..self }
    }

    /// Gives up after `within` instead.
    pub fn within(self, within: Duration) -> Poll {
        Poll { within, ..self }
    }

    /// Polls `value` until it gives something and returns it. Past the bound it fails the test:
    /// `explain` adds what there is to read (it may fail the test itself, with more).
    pub fn value<T>(
        self,
        what: &str,
        mut value: impl FnMut() -> Option<T>,
        explain: impl FnOnce() -> String,
    ) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = value() {
                return v;
            }
            if start.elapsed() >= self.within {
                self.give_up(what, explain);
            }
            std::thread::sleep(self.every);
        }
    }

    /// Polls `cond` until it holds; returns how long that took. Past the bound it fails the
    /// test with `what` and what `explain` adds.
    pub fn until_or(
        self,
        what: &str,
        mut cond: impl FnMut() -> bool,
        explain: impl FnOnce() -> String,
    ) -> Duration {
        let start = Instant::now();
        self.value(what, || cond().then_some(()), explain);
        start.elapsed()
    }

    /// [`Poll::until_or`] with nothing to add.
    pub fn until(self, what: &str, cond: impl FnMut() -> bool) -> Duration {
        self.until_or(what, cond, String::new)
    }

    /// Polls `sample` until `done` holds for it or the bound has passed, and returns the last
    /// sample either way: for a test that asserts on what it found, not on the waiting.
    pub fn settle<T>(self, mut sample: impl FnMut() -> T, done: impl Fn(&T) -> bool) -> T {
        let start = Instant::now();
        loop {
            let v = sample();
            if done(&v) || start.elapsed() >= self.within {
                return v;
            }
            std::thread::sleep(self.every);
        }
    }

    /// [`Poll::value`] for an async test: sleeps on the runtime between polls.
    pub async fn value_async<T>(
        self,
        what: &str,
        mut value: impl FnMut() -> Option<T>,
        explain: impl FnOnce() -> String,
    ) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = value() {
                return v;
            }
            if start.elapsed() >= self.within {
                self.give_up(what, explain);
            }
            tokio::time::sleep(self.every).await;
        }
    }

    /// [`Poll::until_or`] for an async test.
    pub async fn until_async_or(
        self,
        what: &str,
        mut cond: impl FnMut() -> bool,
        explain: impl FnOnce() -> String,
    ) -> Duration {
        let start = Instant::now();
        self.value_async(what, || cond().then_some(()), explain)
            .await;
        start.elapsed()
    }

    /// [`Poll::until`] for an async test.
    pub async fn until_async(self, what: &str, cond: impl FnMut() -> bool) -> Duration {
        self.until_async_or(what, cond, String::new).await
    }

    /// [`Poll::settle`] for an async test.
    pub async fn settle_async<T>(
        self,
        mut sample: impl FnMut() -> T,
        done: impl Fn(&T) -> bool,
    ) -> T {
        let start = Instant::now();
        loop {
            let v = sample();
            if done(&v) || start.elapsed() >= self.within {
                return v;
            }
            tokio::time::sleep(self.every).await;
        }
    }

    fn give_up(&self, what: &str, explain: impl FnOnce() -> String) -> ! {
        let more = explain();
        let sep = if more.is_empty() { "" } else { "\n" };
        panic!(
            "gave up after {:?} waiting until {what}{sep}{more}",
            self.within
        );
    }
}
