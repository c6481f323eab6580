//! The simulated network: FIFO connections (like TCP) with random delays, between members and
//! to ZooKeeper; a lost message breaks its connection and both ends learn it after a delay;
//! cuts (both ways, or one way only: half open, nobody told) and stalls of a link.

use super::*;

/// One end of a connection; `None` is ZooKeeper.
pub(super) type End = Option<(usize, u32)>;

/// A connection; direction `d` carries messages from `ends[d]`.
pub(super) struct Conn {
    pub(super) ends: [End; 2],
    /// Nothing more gets through in this direction (both: the connection is broken).
    pub(super) dead: [bool; 2],
    /// The last delivery time in each direction (FIFO).
    pub(super) last_due: [Time; 2],
}

impl Conn {
    pub(super) fn broken(&self) -> bool {
        self.dead == [true, true]
    }

    /// The direction of a message from `from`.
    pub(super) fn dir(&self, from: End) -> usize {
        usize::from(self.ends[0] != from)
    }
}

#[derive(Default)]
pub(super) struct Links {
    /// Active cuts between a member and ZooKeeper (a count: cuts may overlap), towards
    /// ZooKeeper and back: a cut one way leaves the connection half open.
    pub(super) zk_cut: Vec<[u32; 2]>,
    pub(super) peer_cut: Vec<Vec<u32>>,
    /// Messages on a stalled link are held until then.
    pub(super) zk_stall: Vec<Time>,
    pub(super) peer_stall: Vec<Vec<Time>>,
}

impl Sim {
    pub(super) fn latency(&mut self) -> Time {
        let r: f64 = self.rng.random();
        if r < 0.9 {
            self.rng.random_range(200..5 * MS)
        } else if r < 0.99 {
            self.rng.random_range(5 * MS..50 * MS)
        } else {
            self.rng.random_range(50 * MS..400 * MS)
        }
    }

    pub(super) fn in_chaos(&self) -> bool {
        self.now < self.p.chaos
    }

    /// Whether the link under a connection is cut in direction `dir`.
    pub(super) fn link_cut(&self, ends: [End; 2], dir: usize) -> bool {
        match ends {
            [Some((m, _)), None] => self.links.zk_cut[m][dir] > 0,
            [Some((a, _)), Some((b, _))] => self.links.peer_cut[a][b] > 0,
            _ => unreachable!("members open connections"),
        }
    }

    pub(super) fn link_stall(&self, ends: [End; 2]) -> Time {
        match ends {
            [Some((m, _)), None] => self.links.zk_stall[m],
            [Some((a, _)), Some((b, _))] => self.links.peer_stall[a][b],
            _ => unreachable!("members open connections"),
        }
    }

    pub(super) fn open(&mut self, from: End, to: End) -> u64 {
        let ends = [from, to];
        self.conns.push(Conn {
            ends,
            dead: [false, false],
            last_due: [0, 0],
        });
        let id = self.conns.len() as u64 - 1;
        let cut = [self.link_cut(ends, 0), self.link_cut(ends, 1)];
        self.cut_conn(id, cut);
        id
    }

    /// Breaks a connection: what is in flight is lost; member ends learn it after a delay
    /// (a ZooKeeper client only by its own timeout).
    pub(super) fn break_conn(&mut self, id: u64) {
        let conn = &mut self.conns[id as usize];
        if conn.broken() {
            return;
        }
        conn.dead = [true, true];
        let ends = conn.ends;
        if ends.contains(&None) {
            return;
        }
        for (m, incarnation) in ends.into_iter().flatten() {
            let at = self.now + self.rng.random_range(10 * MS..800 * MS);
            self.schedule(
                at,
                Event::ReplClosed {
                    to: m,
                    incarnation,
                    conn: id,
                },
            );
        }
    }

    /// Loses what is in flight in the directions cut: both break the connection, one leaves it
    /// half open (nothing more gets through that way, and nobody is told).
    pub(super) fn cut_conn(&mut self, id: u64, dirs: [bool; 2]) {
        match dirs {
            [true, true] => self.break_conn(id),
            [false, false] => {}
            _ => {
                let conn = &mut self.conns[id as usize];
                for (dead, cut) in conn.dead.iter_mut().zip(dirs) {
                    *dead |= cut;
                }
            }
        }
    }

    /// Sends on a connection: FIFO, delayed, held by stalls, lost when the link is cut (and
    /// with a small probability during the chaos, breaking the connection).
    pub(super) fn send(&mut self, id: u64, from: End, event: Event) {
        let conn = &self.conns[id as usize];
        let dir = conn.dir(from);
        if conn.dead[dir] {
            return;
        }
        let ends = conn.ends;
        if self.link_cut(ends, dir) {
            let mut dirs = [false; 2];
            dirs[dir] = true;
            self.cut_conn(id, dirs);
            return;
        }
        if self.in_chaos() && self.rng.random_bool(0.0005) {
            self.break_conn(id);
            return;
        }
        let delay = self.latency();
        let stall = self.link_stall(ends);
        let conn = &mut self.conns[id as usize];
        let at = (self.now + delay).max(conn.last_due[dir] + 1).max(stall);
        conn.last_due[dir] = at;
        self.seq += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.seq,
            event,
        });
    }

    /// Whether a message sent on `conn` towards `to` still gets there.
    pub(super) fn arrives(&self, conn: u64, to: End) -> bool {
        let conn = &self.conns[conn as usize];
        !conn.dead[1 - conn.dir(to)]
    }

    pub(super) fn conns_where(&self, pick: impl Fn([End; 2]) -> bool) -> Vec<u64> {
        (0..self.conns.len() as u64)
            .filter(|&c| {
                let conn = &self.conns[c as usize];
                !conn.broken() && pick(conn.ends)
            })
            .collect()
    }

    pub(super) fn break_where(&mut self, pick: impl Fn([End; 2]) -> bool) {
        for c in self.conns_where(pick) {
            self.break_conn(c);
        }
    }
}
