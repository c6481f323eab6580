//! One heartbeat policy for every link: a client connection on the broker, a bridge between
//! groups, and the client library's connection.
//!
//! [`Liveness`] is a state machine without I/O: the link tells it when it read and wrote, asks
//! [`Liveness::poll`] what is due (a heartbeat to write, or a peer silent for too long), and
//! sleeps until [`Liveness::next_check`]. Each caller sets the two parameters its protocol
//! documents (the STOMP heart-beat grace, the bridge's 2.5 silent intervals, …); the rule is the
//! same everywhere: write when nothing was written for `send_every` and nothing is waiting to
//! be written; give the peer up once nothing was read for `silence_limit`. Time is passed in
//! (the runtime's clock, so the rules are tested on paused time).

use std::time::Duration;

use tokio::time::Instant;

/// What a link must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing was written for `send_every`: write a heartbeat (counted as written).
    Beat,
    /// Nothing was read for this long (the silence limit): the peer is gone.
    Dead(Duration),
}

/// The heartbeat state of one link.
#[derive(Debug, Clone)]
pub struct Liveness {
    last_read: Instant,
    last_write: Instant,
    /// How often to write when idle (`None`: never).
    send_every: Option<Duration>,
    /// How long the peer may be silent (`None`: for ever).
    silence_limit: Option<Duration>,
}

impl Liveness {
    pub fn new(
        now: Instant,
        send_every: Option<Duration>,
        silence_limit: Option<Duration>,
    ) -> Liveness {
        Liveness {
            last_read: now,
            last_write: now,
            send_every: send_every.filter(|d| !d.is_zero()),
            silence_limit: silence_limit.filter(|d| !d.is_zero()),
        }
    }

    /// The peer showed it is alive (any bytes).
    pub fn read(&mut self, now: Instant) {
        self.last_read = now;
    }

    /// Bytes went out to the peer.
    pub fn wrote(&mut self, now: Instant) {
        self.last_write = now;
    }

    pub fn silence_limit(&self) -> Option<Duration> {
        self.silence_limit
    }

    /// What is due at `now`. `idle` says nothing is waiting to be written: a write still
    /// under way tells the peer as much as a heartbeat would, so none is added behind it.
    pub fn poll(&mut self, now: Instant, idle: bool) -> Option<Due> {
        if let Some(limit) = self.silence_limit {
            if now >= self.last_read + limit {
                return Some(Due::Dead(limit));
            }
        }
        if let Some(every) = self.send_every {
            if idle && now >= self.last_write + every {
                self.last_write = now;
                return Some(Due::Beat);
            }
        }
        None
    }

    /// When [`Liveness::poll`] may next have something to say (`None`: never). A heartbeat
    /// held back by a write under way is looked at again a quarter interval later.
    pub fn next_check(&self, now: Instant) -> Option<Instant> {
        let dead = self.silence_limit.map(|limit| self.last_read + limit);
        let beat = self.send_every.map(|every| {
            let at = self.last_write + every;
            if at > now {
                at
            } else {
                now + (every / 4).max(Duration::from_millis(1))
            }
        });
        match (dead, beat) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_secs(1);

    /// Runs `l` the way a link does — sleep until the next check, poll — until `until`,
    /// with the peer writing at `peer_writes` (offsets from the start). Returns when each
    /// heartbeat was written and when (if) the peer was given up.
    async fn drive(
        mut l: Liveness,
        peer_writes: &[Duration],
        until: Duration,
    ) -> (Vec<Duration>, Option<Duration>) {
        let start = Instant::now();
        let mut reads = peer_writes.iter().map(|d| start + *d).peekable();
        let mut beats = Vec::new();
        loop {
            let now = Instant::now();
            if now - start >= until {
                return (beats, None);
            }
            match l.poll(now, true) {
                Some(Due::Beat) => beats.push(now - start),
                Some(Due::Dead(_)) => return (beats, Some(now - start)),
                None => {}
            }
            let check = l.next_check(now).unwrap_or(start + until);
            let wake = match reads.peek() {
                Some(r) if *r < check => *r,
                _ => check,
            }
            .min(start + until);
            tokio::time::sleep_until(wake).await;
            if reads.peek().is_some_and(|r| *r <= Instant::now()) {
                reads.next();
                l.read(Instant::now());
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_link_writes_a_heartbeat_every_interval() {
        let l = Liveness::new(Instant::now(), Some(EVERY), None);
        let (beats, dead) = drive(l, &[], EVERY * 5 + EVERY / 2).await;
        assert_eq!(dead, None, "no silence limit: never given up");
        assert_eq!(beats, (1..=5).map(|k| EVERY * k).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_given_up_exactly_at_the_limit() {
        // The bridge's rule: 2.5 intervals of silence.
        let limit = EVERY * 5 / 2;
        let l = Liveness::new(Instant::now(), Some(EVERY), Some(limit));
        let writes: Vec<Duration> = (1..=4).map(|k| EVERY * k).collect();
        let (_, dead) = drive(l, &writes, EVERY * 20).await;
        assert_eq!(
            dead,
            Some(EVERY * 4 + limit),
            "given up at last read + limit"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_writing_just_inside_the_limit_is_kept() {
        // The STOMP grace: twice the client's interval, with the client writing at 1.9.
        let limit = EVERY * 2;
        let l = Liveness::new(Instant::now(), None, Some(limit));
        let writes: Vec<Duration> = (1..=10).map(|k| EVERY * 19 * k / 10).collect();
        let (beats, dead) = drive(l, &writes, EVERY * 19).await;
        assert!(beats.is_empty(), "send_every None: never beats");
        assert_eq!(dead, None, "kept while the peer writes inside the limit");
    }

    #[tokio::test(start_paused = true)]
    async fn no_heartbeat_is_queued_behind_a_write_under_way() {
        let now = Instant::now();
        let mut l = Liveness::new(now, Some(EVERY), None);
        let later = now + EVERY * 2;
        assert_eq!(l.poll(later, false), None, "output pending: no beat");
        assert_eq!(
            l.next_check(later),
            Some(later + EVERY / 4),
            "looked at again a quarter interval later, not at once"
        );
        assert_eq!(l.poll(later, true), Some(Due::Beat));
        assert_eq!(l.next_check(later), Some(later + EVERY));
        l.wrote(later + EVERY / 2);
        assert_eq!(l.next_check(later), Some(later + EVERY * 3 / 2));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_durations_mean_never() {
        let now = Instant::now();
        let mut l = Liveness::new(now, Some(Duration::ZERO), Some(Duration::ZERO));
        assert_eq!(l.next_check(now), None);
        assert_eq!(l.poll(now + EVERY * 1000, true), None);
    }
}
