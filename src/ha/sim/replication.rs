//! Replication between members, decided by the real machines ([`MasterMachine`],
//! [`FollowerMachine`]): the follower's hello and the master's start are the real protocol's
//! messages; the simulation carries them and the records, cuts and appends journals, syncs
//! them, acknowledges, and commits (receipts) what the master's machine allows.

use super::*;

/// A replication message: the hello and the start are the real protocol's messages; records
/// are the simulation's own (the machines never look inside them).
#[derive(Debug, Clone)]
pub(super) enum ReplMsg {
    /// Follower → master: its token, name, newest epoch seen, epoch history and last record.
    Hello(proto::Hello),
    /// Master → follower: the stream's epoch and first record (never a snapshot: simulated
    /// journals collect nothing), and the master's epoch history.
    Start(proto::Start),
    Append {
        first: u64,
        records: Vec<Record>,
    },
    /// Follower → master: it holds every record up to this one.
    Ack(u64),
    /// Master → follower, on every tick: the follower answers with an `Ack`.
    Heartbeat,
}

pub(super) struct Following {
    pub(super) conn: u64,
    /// The real follower side of the stream.
    pub(super) machine: FollowerMachine,
    /// The master answered our hello: appends may come.
    pub(super) started: bool,
    /// The link failed or the master refused: the follow ends (and the machine hears of it)
    /// then, as the driver's follow task does after a pause.
    pub(super) ends_at: Option<Time>,
}

pub(super) struct Term {
    pub(super) epoch: u64,
    /// The index of our epoch-start record.
    pub(super) start: u64,
    pub(super) committed: u64,
    /// The real master side of replication.
    pub(super) machine: MasterMachine,
    /// Each follower's link: its machine session and member.
    pub(super) sessions: BTreeMap<u64, (u64, String)>,
}

impl Sim {
    /// Starts a follow: connects to the master and says hello with our journal.
    pub(super) fn connect_follower(&mut self, m: usize, master: usize) {
        let incarnation = self.members[m].incarnation;
        let master_end = Some((master, self.members[master].incarnation));
        let conn = self.open(Some((m, incarnation)), master_end);
        let node = self.node(m);
        node.follow = Some(Following {
            conn,
            machine: FollowerMachine::new(),
            started: false,
            ends_at: None,
        });
        let seen_epoch = node.machine.epoch();
        let member = &self.members[m];
        let hello = proto::Hello {
            token: TOKEN.into(),
            member: member.name.clone(),
            seen_epoch,
            epochs: epochs_to_proto(&member.history),
            last_index: member.last(),
        };
        self.repl_send(m, conn, ReplMsg::Hello(hello));
    }

    pub(super) fn repl_send(&mut self, from: usize, conn: u64, msg: ReplMsg) {
        let me = Some((from, self.members[from].incarnation));
        let ends = self.conns[conn as usize].ends;
        let Some((to, incarnation)) = (if ends[0] == me { ends[1] } else { ends[0] }) else {
            unreachable!("replication connects members");
        };
        self.send(
            conn,
            me,
            Event::Repl {
                to,
                incarnation,
                conn,
                msg,
            },
        );
    }

    pub(super) fn repl_receive(&mut self, m: usize, conn: u64, msg: ReplMsg) -> Check {
        match msg {
            ReplMsg::Hello(hello) => {
                self.master_hello(m, conn, hello);
                Ok(())
            }
            ReplMsg::Ack(index) => {
                let at = self.clock(m, self.now);
                let Some(term) = self.node(m).term.as_mut() else {
                    return Ok(());
                };
                let Some((session, member)) = term.sessions.get(&conn).cloned() else {
                    return Ok(());
                };
                if let Err(refused) = term.machine.handle_ack(session, index, at) {
                    term.sessions.remove(&conn);
                    term.machine.handle_closed(session, &member);
                    self.log(|| format!("m{m}: closes {member}'s link: {}", refused.why));
                    self.break_conn(conn);
                    return Ok(());
                }
                self.try_commit(m)
            }
            ReplMsg::Heartbeat => {
                if let Some(f) = self.stream(m, conn) {
                    f.machine.handle_heartbeat();
                    self.ack(m);
                }
                Ok(())
            }
            ReplMsg::Start(start) => self.follower_start(m, conn, start),
            ReplMsg::Append { first, records } => {
                let newest = self.node(m).machine.epoch();
                let Some(f) = self.stream(m, conn) else {
                    return Ok(());
                };
                match f
                    .machine
                    .handle_records(first, records.len() as u64, newest)
                {
                    Ok(()) => {}
                    Err(StreamError::Refused(why)) => {
                        self.log(|| format!("m{m}: {why}"));
                        self.break_conn(conn);
                        return Ok(());
                    }
                    Err(StreamError::Protocol(why)) => {
                        return Err(format!("m{m}: a bad stream from its master: {why}"))
                    }
                }
                let epoch = f.machine.epoch().unwrap_or_default();
                self.check_stream_epoch(m, epoch)?;
                let member = &mut self.members[m];
                if first != member.last() + 1 {
                    return Err(format!(
                        "m{m} got records from {first} with its journal at {}",
                        member.last()
                    ));
                }
                for r in records {
                    member.journal.push(r);
                    let index = member.last();
                    if r.write.is_none() {
                        member.history.begin(r.epoch, index);
                    }
                    if member.history.epoch_at(index) != r.epoch {
                        return Err(format!("m{m}: epoch history disagrees at {index}"));
                    }
                }
                let master = self.peer_of(conn, m);
                if !self.members[master]
                    .journal
                    .starts_with(&self.members[m].journal)
                {
                    return Err(format!(
                        "m{m}'s journal is not a prefix of its master m{master}'s after records \
                         from {first}"
                    ));
                }
                if self.p.sync == SyncMode::Mem {
                    if let Some(f) = self.stream(m, conn) {
                        f.machine.handle_durable();
                    }
                }
                self.ack(m);
                Ok(())
            }
        }
    }

    /// A follower's hello reaches member `m`: admitted by its term's machine (or refused,
    /// which closes the link), it gets its start and the records after it.
    pub(super) fn master_hello(&mut self, m: usize, conn: u64, hello: proto::Hello) {
        let at = self.clock(m, self.now);
        let member = &self.members[m];
        let Some(term) = member.node.as_ref().and_then(|n| n.term.as_ref()) else {
            // Not serving: no replication listener.
            self.break_conn(conn);
            return;
        };
        if let Err(refused) = term.machine.check_hello(&hello) {
            self.log(|| format!("m{m}: refuses {}: {}", hello.member, refused.why));
            self.break_conn(conn);
            return;
        }
        let plan = term
            .machine
            .plan_stream(&hello, &member.history, member.last(), 1);
        let epochs = epochs_to_proto(&member.history);
        let term = self.node(m).term.as_mut().expect("serving");
        let session = term.machine.new_session();
        let replaced = term.machine.open_link(&hello.member, session);
        term.machine
            .handle_started(session, &hello.member, plan.from, at);
        term.sessions.insert(conn, (session, hello.member.clone()));
        let start = proto::Start {
            epoch: term.epoch,
            from: plan.from,
            snapshot: plan.snapshot,
            checkpoint: Default::default(),
            epochs,
        };
        if let Some(old) = replaced {
            let old_conn = term
                .sessions
                .iter()
                .find(|(_, (s, _))| *s == old)
                .map(|(&c, _)| c);
            term.machine.handle_closed(old, &hello.member);
            if let Some(c) = old_conn {
                term.sessions.remove(&c);
                self.break_conn(c);
            }
        }
        self.log(|| format!("m{m}: admits {} from {}", hello.member, plan.from));
        self.repl_send(m, conn, ReplMsg::Start(start));
        self.flush(m);
    }

    /// The master's start reaches follower `m`: its machine plans it; the journal is cut to
    /// the match point when it diverged.
    pub(super) fn follower_start(&mut self, m: usize, conn: u64, start: proto::Start) -> Check {
        let newest = self.node(m).machine.epoch();
        let last = self.members[m].last();
        let Some(f) = self.stream(m, conn) else {
            return Ok(());
        };
        let plan = match f.machine.handle_start(&start, last, newest) {
            Ok(plan) => plan,
            Err(StreamError::Refused(why)) => {
                self.log(|| format!("m{m}: {why}"));
                self.break_conn(conn);
                return Ok(());
            }
            Err(StreamError::Protocol(why)) => {
                return Err(format!("m{m}: a bad start from its master: {why}"))
            }
        };
        let epoch = start.epoch;
        self.check_stream_epoch(m, epoch)?;
        let keep = match plan {
            StartPlan::Append => last,
            StartPlan::CutAfter { keep } => keep,
            StartPlan::Snapshot => {
                return Err(format!(
                    "m{m} is told to copy a snapshot, but nothing was collected"
                ))
            }
        };
        self.check_cut(m, self.peer_of(conn, m), keep, epoch)?;
        let member = &mut self.members[m];
        if self.p.quirks.wipe_on_divergence && keep < member.last() {
            // Start over empty; the follow ends and begins again.
            member.journal.clear();
            member.history = EpochHistory::default();
            member.synced = 0;
            self.break_conn(conn);
            return Ok(());
        }
        member.journal.truncate(keep as usize);
        member.history.truncate_after(keep);
        member.synced = member.synced.min(keep);
        self.node(m).follow.as_mut().expect("following").started = true;
        self.ack(m);
        Ok(())
    }

    /// A follower acknowledges what its machine says: what it holds in memory or on disk, as
    /// the mode says.
    pub(super) fn ack(&mut self, m: usize) {
        let member = &mut self.members[m];
        let durable = match self.p.sync {
            SyncMode::Mem => member.last(),
            SyncMode::Disk => member.synced,
        };
        let ack = member
            .node
            .as_mut()
            .and_then(|n| n.follow.as_mut().filter(|f| f.started))
            .and_then(|f| Some((f.conn, f.machine.poll_ack(durable)?)));
        if let Some((conn, index)) = ack {
            self.repl_send(m, conn, ReplMsg::Ack(index));
        }
    }

    pub(super) fn sync(&mut self, m: usize) -> Check {
        let member = &mut self.members[m];
        let incarnation = member.incarnation;
        if self.now < member.disk_stall {
            // The disk stalls: this sync completes when the stall ends.
            let at = member.disk_stall;
            self.schedule(
                at,
                Event::Sync {
                    member: m,
                    incarnation,
                },
            );
            return Ok(());
        }
        member.synced = member.last();
        if self.p.sync == SyncMode::Disk {
            if let Some(f) = member.node.as_mut().and_then(|n| n.follow.as_mut()) {
                f.machine.handle_durable();
            }
            self.ack(m);
            self.try_commit(m)?;
        }
        let at = self.now + self.rng.random_range(MS..300 * MS);
        self.schedule(
            at,
            Event::Sync {
                member: m,
                incarnation,
            },
        );
        Ok(())
    }

    /// The member at the other end of replication connection `conn` from `m`.
    pub(super) fn peer_of(&self, conn: u64, m: usize) -> usize {
        self.conns[conn as usize]
            .ends
            .into_iter()
            .flatten()
            .map(|e| e.0)
            .find(|&o| o != m)
            .expect("replication connects two members")
    }

    /// The follow of member `m`, if `conn` is its current stream (one that has not ended).
    pub(super) fn stream(&mut self, m: usize, conn: u64) -> Option<&mut Following> {
        self.node(m)
            .follow
            .as_mut()
            .filter(|f| f.conn == conn && f.ends_at.is_none())
    }

    /// The invariant the follower's machine keeps: it takes nothing from a master of an epoch
    /// older than the newest its process has seen (views, its journal).
    pub(super) fn check_stream_epoch(&mut self, m: usize, epoch: u64) -> Check {
        let seen = self.node(m).seen_epoch;
        if epoch < seen {
            return Err(format!(
                "m{m} appends from epoch {epoch} after seeing epoch {seen}"
            ));
        }
        Ok(())
    }

    pub(super) fn repl_closed(&mut self, m: usize, conn: u64) {
        let ends_at = self.now + 300 * MS;
        let node = self.node(m);
        if let Some(f) = &mut node.follow {
            if f.conn == conn && f.ends_at.is_none() {
                f.ends_at = Some(ends_at);
            }
        }
        if let Some(t) = &mut node.term {
            if let Some((session, member)) = t.sessions.remove(&conn) {
                t.machine.handle_closed(session, &member);
            }
        }
    }

    /// Sends every stream the records it does not have yet.
    pub(super) fn flush(&mut self, m: usize) {
        let last = self.members[m].last();
        let Some(term) = self.node(m).term.as_mut() else {
            return;
        };
        let mut sends = Vec::new();
        for (&conn, &(session, _)) in &term.sessions {
            if let Some(next) = term.machine.next_to_send(session).filter(|&n| n <= last) {
                term.machine.handle_sent(session, next, last + 1 - next);
                sends.push((conn, next));
            }
        }
        for (conn, first) in sends {
            let records = self.members[m].journal[first as usize - 1..].to_vec();
            self.repl_send(m, conn, ReplMsg::Append { first, records });
        }
    }

    pub(super) fn serve(&mut self, m: usize, epoch: u64) -> Check {
        self.check_serve(m, epoch)?;
        let member = &mut self.members[m];
        member.journal.push(Record { epoch, write: None });
        let start = member.last();
        member.history.begin(epoch, start);
        let peers = (0..self.p.members)
            .filter(|&o| o != m)
            .map(|o| self.members[o].name.clone())
            .collect();
        self.node(m).term = Some(Term {
            epoch,
            start,
            committed: 0,
            machine: MasterMachine::new(MasterConfig {
                epoch,
                epoch_start: start,
                needed: self.p.members / 2,
                token: Some(TOKEN.into()),
                peers,
            }),
            sessions: BTreeMap::new(),
        });
        self.log(|| format!("m{m}: serves epoch {epoch} from {start}"));
        Ok(())
    }

    pub(super) fn client_write(&mut self, m: usize, id: u64) -> Check {
        let Some(epoch) = self.node(m).term.as_ref().map(|t| t.epoch) else {
            return Ok(());
        };
        self.members[m].journal.push(Record {
            epoch,
            write: Some(id),
        });
        self.flush(m);
        self.try_commit(m)
    }

    /// Commits (receipts) what `replicas/2` followers hold, if the lease allows.
    pub(super) fn try_commit(&mut self, m: usize) -> Check {
        let at = self.clock(m, self.now);
        let held = match self.p.sync {
            SyncMode::Mem => self.members[m].last(),
            SyncMode::Disk => self.members[m].synced,
        };
        let incarnation = self.members[m].incarnation;
        let node = self.node(m);
        let Some(term) = &node.term else {
            return Ok(());
        };
        let Some(commit) = term.machine.commit_index(held) else {
            return Ok(());
        };
        if commit <= term.committed || !node.machine.may_commit(at) {
            return Ok(());
        }
        let quorum = term.machine.member_acks();
        let needed = term.machine.config().needed;
        let (epoch, from) = (term.epoch, term.committed.max(term.start));
        node.term.as_mut().expect("serving").committed = commit;
        if let Some(&(other, inc)) = self.committers.get(&epoch) {
            if (other, inc) != (m, incarnation) {
                return Err(format!("m{m} and m{other} both commit in epoch {epoch}"));
            }
        }
        self.committers.insert(epoch, (m, incarnation));
        if epoch < self.newest_commit_epoch {
            return Err(format!(
                "m{m} commits in epoch {epoch} after a commit in epoch {}",
                self.newest_commit_epoch
            ));
        }
        self.newest_commit_epoch = epoch;
        if self.zk.epoch != epoch {
            return Err(format!(
                "m{m} commits in epoch {epoch} while ZooKeeper's epoch is {}",
                self.zk.epoch
            ));
        }
        for index in from + 1..=commit {
            let r = self.members[m].journal[index as usize - 1];
            if let (Some(write), true) = (r.write, r.epoch == epoch) {
                self.check_receipt(m, index, r, needed)?;
                self.receipts.push(Receipt {
                    write,
                    epoch,
                    index,
                    at: self.now,
                });
                self.receipted_at
                    .entry(index)
                    .or_default()
                    .push((epoch, write));
            }
        }
        self.log(|| format!("m{m}: commits up to {commit} in epoch {epoch} (acks {quorum:?})"));
        Ok(())
    }
}
