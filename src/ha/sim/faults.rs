//! Clients and faults: client writes (mostly to a member that serves), and the random fault
//! schedule of the first part of a run — cuts and stalls, isolation, splits, broken
//! connections, ZooKeeper outages, pauses, crashes and restarts — every one healed after.

use super::*;

#[derive(Debug, Clone)]
pub(super) enum Fault {
    /// Cut a member's link to ZooKeeper towards ZooKeeper, back, or both.
    CutZk(usize, [bool; 2]),
    HealZk(usize, [bool; 2]),
    CutPeers(usize, usize),
    HealPeers(usize, usize),
    /// Hold the link's messages until then.
    StallZk(usize, Time),
    StallPeers(usize, usize, Time),
    /// The member's disk stalls until then: its journal reaches the disk only when the stall
    /// ends (an fsync that hangs for seconds).
    StallDisk(usize, Time),
    BreakConn,
    /// Every connection between the member and another member breaks.
    BreakPeers(usize),
    /// A partition in two (the cuts it makes follow as their own faults).
    Split,
    Pause(usize),
    Resume(usize),
    Crash(usize),
    Restart(usize),
    ZkDown,
    ZkUp,
}

impl Sim {
    pub(super) fn next_write_event(&mut self) {
        if self.now > self.p.chaos + self.p.settle / 2 {
            return;
        }
        self.next_write += 1;
        let id = self.next_write;
        // Clients write to a member that serves (one that has not noticed it was deposed
        // too), now and then to any member.
        let serving: Vec<usize> = (0..self.p.members)
            .filter(|&m| {
                self.members[m]
                    .node
                    .as_ref()
                    .is_some_and(|n| n.term.is_some())
            })
            .collect();
        let to = if !serving.is_empty() && self.rng.random_bool(0.9) {
            serving[self.rng.random_range(0..serving.len())]
        } else {
            self.rng.random_range(0..self.p.members)
        };
        let incarnation = self.members[to].incarnation;
        let at = self.now + self.latency();
        self.schedule(
            at,
            Event::Write {
                to,
                incarnation,
                id,
            },
        );
        let next = self.now + self.rng.random_range(1..2 * self.p.write_every);
        self.schedule(next, Event::NextWrite);
    }

    pub(super) fn next_fault(&mut self) {
        let t = self.p.session_timeout;
        let left = self.p.chaos.saturating_sub(self.now);
        if left < t / 10 {
            return;
        }
        let n = self.p.members;
        let m = self.rng.random_range(0..n);
        let other = (m + self.rng.random_range(1..n)) % n;
        let long = self.rng.random_range(t / 10..3 * t).min(left);
        let short = self.rng.random_range(t / 20..3 * t / 2).min(left);
        let one_way = [[true, false], [false, true]][self.rng.random_range(0..2)];
        let (fault, heal, after) = match self.rng.random_range(0..13) {
            0 => (
                Fault::CutZk(m, [true; 2]),
                Some(Fault::HealZk(m, [true; 2])),
                long,
            ),
            10 => (
                Fault::CutZk(m, one_way),
                Some(Fault::HealZk(m, one_way)),
                long,
            ),
            1 => (
                Fault::CutPeers(m, other),
                Some(Fault::HealPeers(m, other)),
                long,
            ),
            2 => {
                // Isolate: cut from ZooKeeper and every peer.
                for o in (0..n).filter(|&o| o != m) {
                    self.schedule(self.now, Event::Fault(Fault::CutPeers(m, o)));
                    self.schedule(self.now + long, Event::Fault(Fault::HealPeers(m, o)));
                }
                (
                    Fault::CutZk(m, [true; 2]),
                    Some(Fault::HealZk(m, [true; 2])),
                    long,
                )
            }
            3 => (Fault::StallZk(m, self.now + short), None, 0),
            4 => (Fault::StallPeers(m, other, self.now + short), None, 0),
            5 => (Fault::BreakConn, None, 0),
            6 => (Fault::Pause(m), Some(Fault::Resume(m)), long),
            7 | 8 => (
                Fault::Crash(m),
                Some(Fault::Restart(m)),
                self.rng.random_range(0..2 * t).min(left),
            ),
            9 => (Fault::ZkDown, Some(Fault::ZkUp), short),
            11 => {
                // Split the group in two; one side may lose ZooKeeper too.
                let side: Vec<bool> = (0..n)
                    .map(|i| i == m || self.rng.random_bool(0.4))
                    .collect();
                for a in (0..n).filter(|&a| side[a]) {
                    for b in (0..n).filter(|&b| !side[b]) {
                        self.schedule(self.now, Event::Fault(Fault::CutPeers(a, b)));
                        self.schedule(self.now + long, Event::Fault(Fault::HealPeers(a, b)));
                    }
                }
                let cut_zk = self.rng.random_bool(0.5);
                for a in (0..n).filter(|&a| cut_zk && side[a]) {
                    self.schedule(self.now, Event::Fault(Fault::CutZk(a, [true; 2])));
                    self.schedule(self.now + long, Event::Fault(Fault::HealZk(a, [true; 2])));
                }
                (Fault::Split, None, 0)
            }
            12 => {
                // A slow disk: nothing the member writes is synced until the stall ends, and
                // meanwhile its links to the other members break, so a follower says hello
                // again holding records it has not synced (and a master with a stalled disk
                // commits nothing).
                let stall = self.rng.random_range(t / 4..3 * t / 2).min(left);
                let at = self.now + self.rng.random_range(stall / 4..stall / 2 + 1);
                self.schedule(at, Event::Fault(Fault::BreakPeers(m)));
                (Fault::StallDisk(m, self.now + stall), None, 0)
            }
            _ => unreachable!("faults are numbered"),
        };
        self.schedule(self.now, Event::Fault(fault));
        if let Some(heal) = heal {
            self.schedule(self.now + after, Event::Fault(heal));
        }
        let next = self.now + self.rng.random_range(1..2 * self.p.fault_every);
        self.schedule(next, Event::NextFault);
    }

    pub(super) fn fault(&mut self, f: Fault) -> Check {
        self.log(|| format!("fault: {f:?}"));
        match f {
            Fault::CutZk(m, dirs) => {
                self.stats.faults += 1;
                for (count, cut) in self.links.zk_cut[m].iter_mut().zip(dirs) {
                    *count += u32::from(cut);
                }
                let picked =
                    self.conns_where(|ends| ends[1].is_none() && ends[0].is_some_and(|e| e.0 == m));
                for c in picked {
                    self.cut_conn(c, dirs);
                }
            }
            Fault::HealZk(m, dirs) => {
                for (count, cut) in self.links.zk_cut[m].iter_mut().zip(dirs) {
                    *count -= u32::from(cut);
                }
            }
            Fault::CutPeers(a, b) => {
                self.stats.faults += 1;
                self.links.peer_cut[a][b] += 1;
                self.links.peer_cut[b][a] += 1;
                self.break_where(|ends| {
                    let ms: Vec<_> = ends.iter().flatten().map(|e| e.0).collect();
                    ms == [a, b] || ms == [b, a]
                });
            }
            Fault::HealPeers(a, b) => {
                self.links.peer_cut[a][b] -= 1;
                self.links.peer_cut[b][a] -= 1;
            }
            Fault::Split => self.stats.faults += 1,
            Fault::StallZk(m, until) => {
                self.stats.faults += 1;
                self.links.zk_stall[m] = until;
            }
            Fault::StallPeers(a, b, until) => {
                self.stats.faults += 1;
                self.links.peer_stall[a][b] = until;
                self.links.peer_stall[b][a] = until;
            }
            Fault::StallDisk(m, until) => {
                self.stats.faults += 1;
                self.members[m].disk_stall = until;
            }
            Fault::BreakPeers(m) => {
                self.break_where(|ends| {
                    ends.iter().all(Option::is_some) && ends.iter().flatten().any(|e| e.0 == m)
                });
            }
            Fault::BreakConn => {
                let live: Vec<u64> = (0..self.conns.len() as u64)
                    .filter(|&c| !self.conns[c as usize].broken())
                    .collect();
                if !live.is_empty() {
                    self.stats.faults += 1;
                    let c = live[self.rng.random_range(0..live.len())];
                    self.break_conn(c);
                }
            }
            Fault::Pause(m) => {
                if self.members[m].node.is_some() {
                    self.stats.faults += 1;
                    self.members[m].paused = true;
                }
            }
            Fault::Resume(m) => {
                let member = &mut self.members[m];
                if member.paused {
                    member.paused = false;
                    let deferred = std::mem::take(&mut member.deferred);
                    for e in deferred {
                        self.dispatch(e)?;
                    }
                }
            }
            Fault::Crash(m) => {
                let member = &mut self.members[m];
                if member.node.take().is_some() {
                    let kept = member.synced;
                    if self.p.sync == SyncMode::Mem {
                        let lost = member.journal[kept as usize..].iter();
                        self.excused.extend(lost.filter_map(|r| r.write));
                    }
                    self.stats.lost_records += member.last() - kept;
                    member.journal.truncate(kept as usize);
                    member.history.truncate_after(kept);
                    self.stats.faults += 1;
                    member.incarnation += 1;
                    member.paused = false;
                    member.deferred.clear();
                    self.break_where(|ends| ends.iter().flatten().any(|e| e.0 == m));
                }
            }
            Fault::Restart(m) => {
                if self.members[m].node.is_none() {
                    self.start(m);
                }
            }
            Fault::ZkDown => {
                self.stats.faults += 1;
                self.zk.up = false;
                self.break_where(|ends| ends.contains(&None));
            }
            Fault::ZkUp => {
                // A new ZooKeeper leader gives every session a fresh timeout.
                self.zk.up = true;
                for s in self.zk.sessions.values_mut() {
                    s.last_contact = self.now;
                }
            }
        }
        Ok(())
    }
}
