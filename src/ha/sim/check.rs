//! The invariants listed in `mod.rs` that look at the receipted writes — when a member begins
//! to serve, when a follower cuts its journal to follow a stream, when a master receipts —
//! called from where those events are handled, and the settled group's check at the end of a
//! run. (The commit's own checks — one committer per epoch, only in ZooKeeper's current epoch
//! — and the stream's — each append continues the journal, never from an older epoch — stand
//! inline in `replication.rs`.)

use super::*;

impl Sim {
    /// Member `m` begins to serve `epoch`: it neither follows nor serves already, its journal
    /// holds no epoch as new, and it holds every receipted write of an earlier epoch at its
    /// index.
    pub(super) fn check_serve(&self, m: usize, epoch: u64) -> Check {
        let member = &self.members[m];
        let node = member.node.as_ref().expect("running");
        if node.follow.is_some() || node.term.is_some() {
            return Err(format!("m{m} serves while following or serving"));
        }
        if epoch <= member.history.last_epoch() {
            return Err(format!(
                "m{m} serves epoch {epoch} with epoch {} in its journal",
                member.history.last_epoch()
            ));
        }
        // (A claim's answer that reaches a member after a pause can still make it serve an
        // epoch older than one that receipted since; that term cannot commit.)
        let earlier = |r: &&Receipt| r.epoch < epoch && !self.excused.contains(&r.write);
        for r in self.receipts.iter().filter(earlier) {
            let held = member.journal.get(r.index as usize - 1);
            if held
                != Some(&Record {
                    epoch: r.epoch,
                    write: Some(r.write),
                })
            {
                return Err(format!(
                    "m{m} serves epoch {epoch} without receipted write {} (epoch {}, index {}); \
                     it holds {held:?}",
                    r.write, r.epoch, r.index
                ));
            }
        }
        Ok(())
    }

    /// Follower `m` keeps its journal up to `keep` to follow `master`'s stream of `epoch`: a
    /// receipted record it cuts is one its master holds at the same index (and sends again).
    pub(super) fn check_cut(&self, m: usize, master: usize, keep: u64, epoch: u64) -> Check {
        let member = &self.members[m];
        for (&index, writes) in self.receipted_at.range(keep + 1..member.last() + 1) {
            let held = member.journal[index as usize - 1];
            let resent = self.members[master].journal.get(index as usize - 1) == Some(&held);
            if !resent
                && writes.iter().any(|&(e, w)| {
                    held == Record {
                        epoch: e,
                        write: Some(w),
                    } && !self.excused.contains(&w)
                })
            {
                return Err(format!(
                    "m{m} cuts the receipted record {index} ({held:?}) following epoch {epoch}"
                ));
            }
        }
        Ok(())
    }

    /// Master `m` receipts `record` at `index`: the `needed` followers its commit counts hold
    /// it there now — synced, in `quorum_disk`; in memory, in `quorum_mem` (where a write some
    /// member lost in a crash since is excused). A follower's word for records it has not made
    /// durable (its hello names every record it wrote) must not count. (The schedules that
    /// catch a stream plan ignoring what the follower acknowledged — `MasterMachine::plan_stream`
    /// without `.min(vouched)` — are of this kind: a slow disk, the follower's link broken, its
    /// hello naming records it has not synced; e.g. 3 members seed 33, 5 members seed 39.)
    pub(super) fn check_receipt(
        &self,
        m: usize,
        index: u64,
        record: Record,
        needed: usize,
    ) -> Check {
        let durable = |o: &Member| self.p.sync == SyncMode::Mem || o.synced >= index;
        let holders: Vec<&str> = (0..self.p.members)
            .filter(|&o| o != m)
            .map(|o| &self.members[o])
            .filter(|o| o.journal.get(index as usize - 1) == Some(&record) && durable(o))
            .map(|o| o.name.as_str())
            .collect();
        let excused = record.write.is_some_and(|w| self.excused.contains(&w));
        if holders.len() < needed && !excused {
            return Err(format!(
                "m{m} receipts write {:?} (epoch {}, index {index}), which only {holders:?} hold \
                 ({:?} sync), not the {needed} followers a receipt needs",
                record.write, record.epoch, self.p.sync
            ));
        }
        Ok(())
    }

    pub(super) fn check_settled(&mut self) -> Check {
        let masters: Vec<usize> = (0..self.p.members)
            .filter(|&m| {
                self.members[m].node.as_ref().is_some_and(|n| {
                    n.term.is_some()
                        && matches!(n.machine.role(), ElectionRole::Master { .. })
                        && n.machine.may_commit(self.clock(m, self.now))
                })
            })
            .collect();
        let [m] = masters[..] else {
            return Err(format!(
                "after settling, {} members serve (zk epoch {}): {masters:?}",
                masters.len(),
                self.zk.epoch
            ));
        };
        let settled_writes = self
            .receipts
            .iter()
            .filter(|r| r.epoch == self.zk.epoch)
            .count();
        if settled_writes == 0 {
            return Err(format!(
                "after settling, m{m} receipted nothing in epoch {}",
                self.zk.epoch
            ));
        }
        let journal = &self.members[m].journal;
        let mut last_of_epoch: BTreeMap<u64, u64> = BTreeMap::new();
        for r in self
            .receipts
            .iter()
            .filter(|r| !self.excused.contains(&r.write))
        {
            let held = journal.get(r.index as usize - 1);
            if held
                != Some(&Record {
                    epoch: r.epoch,
                    write: Some(r.write),
                })
            {
                return Err(format!(
                    "the final master m{m} lost receipted write {} (epoch {}, index {})",
                    r.write, r.epoch, r.index
                ));
            }
            let prev = last_of_epoch.insert(r.epoch, r.index);
            if prev.is_some_and(|p| p >= r.index) {
                return Err(format!(
                    "receipted writes of epoch {} are out of order at {}",
                    r.epoch, r.index
                ));
            }
        }
        Ok(())
    }
}
