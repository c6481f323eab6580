//! A member: its journal (which survives a crash up to what was synced), and, while it runs,
//! its process — the real election [`Machine`], its ZooKeeper client (sessions, `Disconnected`,
//! resuming or expiring, the lease renewed by an operation every fifth of the timeout) and the
//! driver that carries out the machine's actions in order, each awaited.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ZkState {
    /// Opening a new session.
    Connecting,
    /// Creating our member znode in the new session.
    Registering,
    Connected,
    Disconnected,
}

pub(super) struct ZkClient {
    pub(super) state: ZkState,
    pub(super) session: Option<u64>,
    pub(super) path: Option<String>,
    pub(super) conn: u64,
    pub(super) last_heard: Time,
    /// The client gives the session up this long after it last heard from the servers.
    pub(super) give_up_after: Time,
    pub(super) last_ping: Time,
    pub(super) last_renew: Time,
    pub(super) next_attempt: Time,
    /// Lease renewals in flight: op → sent at.
    pub(super) renewals: BTreeMap<u64, Time>,
}

/// A ZooKeeper action of the driver awaiting its answer.
pub(super) enum Awaiting {
    Publish { op: u64 },
    Claim { op: u64, sent_at: Time },
}

/// A running member process; lost on a crash.
pub(super) struct Node {
    pub(super) machine: Machine,
    pub(super) zk: ZkClient,
    pub(super) actions: VecDeque<Action>,
    pub(super) awaiting: Option<Awaiting>,
    pub(super) follow: Option<Following>,
    pub(super) term: Option<Term>,
    /// The newest epoch this process has seen (views, its journal, its streams).
    pub(super) seen_epoch: u64,
}

pub(super) struct Member {
    pub(super) name: String,
    pub(super) weight: u32,
    /// Survives crashes up to `synced`.
    pub(super) journal: Vec<Record>,
    pub(super) history: EpochHistory,
    pub(super) synced: u64,
    /// Until then its disk stalls: nothing more is synced (a crash keeps only `synced`).
    pub(super) disk_stall: Time,
    pub(super) incarnation: u32,
    /// How fast its clock runs against real time.
    pub(super) clock_rate: f64,
    pub(super) node: Option<Node>,
    pub(super) paused: bool,
    pub(super) deferred: VecDeque<Event>,
}

impl Member {
    pub(super) fn last(&self) -> u64 {
        self.journal.len() as u64
    }
}

impl Sim {
    pub(super) fn start(&mut self, m: usize) {
        let member = &mut self.members[m];
        let position = member.history.position(member.last());
        let config = Config {
            name: member.name.clone(),
            weight: member.weight,
            replication: format!("{}:7000", member.name),
            replicas: self.p.members,
            session_timeout: Duration::from_micros(self.p.session_timeout),
            quorum_timeout: Some(Duration::from_micros(self.p.quorum_timeout)),
        };
        let incarnation = member.incarnation;
        let seen_epoch = member.history.last_epoch();
        let give_up_after = self.p.session_timeout * self.rng.random_range(13..=15) / 10;
        self.members[m].node = Some(Node {
            machine: Machine::new(config, position),
            zk: ZkClient {
                state: ZkState::Connecting,
                session: None,
                path: None,
                conn: u64::MAX,
                last_heard: self.now,
                give_up_after,
                last_ping: 0,
                last_renew: 0,
                next_attempt: self.now,
                renewals: BTreeMap::new(),
            },
            actions: VecDeque::new(),
            awaiting: None,
            follow: None,
            term: None,
            seen_epoch,
        });
        self.log(|| format!("m{m}: starts at {position}"));
        self.connect_session(m);
        let at = self.now + self.rng.random_range(MS..300 * MS);
        self.schedule(
            at,
            Event::Sync {
                member: m,
                incarnation,
            },
        );
        let at = self.now + self.rng.random_range(0..self.p.session_timeout / 10);
        self.schedule(
            at,
            Event::Tick {
                member: m,
                incarnation,
            },
        );
    }

    /// Opens a new session (a handshake; our znode is created once it is open).
    pub(super) fn connect_session(&mut self, m: usize) {
        let incarnation = self.members[m].incarnation;
        let conn = self.open(Some((m, incarnation)), None);
        let retry = self.p.session_timeout / 2;
        let now = self.now;
        let zk = &mut self.node(m).zk;
        zk.state = ZkState::Connecting;
        zk.session = None;
        zk.path = None;
        zk.conn = conn;
        zk.next_attempt = now + retry;
        self.zk_send(m, ZkRequest::Connect);
    }

    /// Creates our znode with what the machine announces now.
    pub(super) fn register(&mut self, m: usize) {
        let node = self.node(m);
        node.zk.state = ZkState::Registering;
        let data = node.machine.announce();
        self.zk_send(m, ZkRequest::Register(data));
    }

    pub(super) fn zk_send(&mut self, m: usize, request: ZkRequest) {
        let incarnation = self.members[m].incarnation;
        let node = self.node(m);
        let (conn, session) = (node.zk.conn, node.zk.session);
        self.send(
            conn,
            Some((m, incarnation)),
            Event::ToZk {
                conn,
                session,
                request,
            },
        );
    }

    pub(super) fn op(&mut self) -> u64 {
        self.next_op += 1;
        self.next_op
    }

    pub(super) fn zk_reply(&mut self, m: usize, conn: u64, reply: ZkReply) -> Check {
        let now = self.now;
        let clock = self.clock_of(m);
        let at = clock(now);
        let quirks = self.p.quirks;
        let name = self.members[m].name.clone();
        let node = self.members[m].node.as_mut().expect("running");
        if conn != node.zk.conn || !self.conns[conn as usize].ends.contains(&None) {
            return Ok(());
        }
        node.zk.last_heard = now;
        match reply {
            ZkReply::Session(id) => {
                if node.zk.state == ZkState::Connecting {
                    node.zk.session = Some(id);
                    self.register(m);
                }
            }
            ZkReply::Registered(path) => {
                if node.zk.state == ZkState::Registering {
                    node.zk.state = ZkState::Connected;
                    node.zk.path = Some(path);
                    node.machine.handle_session(ZkSession::Connected, at);
                }
            }
            ZkReply::Reconnected(path) => {
                if node.zk.state == ZkState::Disconnected {
                    match path {
                        Some(path) => {
                            node.zk.state = ZkState::Connected;
                            node.zk.path = Some(path);
                            node.machine.handle_session(ZkSession::Connected, at);
                        }
                        // Our create was lost with the old connection.
                        None => self.register(m),
                    }
                }
            }
            ZkReply::Expired => self.expire(m),
            ZkReply::Pong => {}
            ZkReply::Done { op, ok } => {
                if let Some(sent_at) = node.zk.renewals.remove(&op) {
                    node.machine.handle_lease(clock(sent_at), at);
                    return Ok(());
                }
                match node.awaiting.take() {
                    Some(Awaiting::Publish { op: o }) if o == op => {
                        if ok || quirks.publish_failure_continues {
                            node.actions.pop_front();
                        }
                    }
                    Some(Awaiting::Claim { op: o, sent_at }) if o == op => {
                        node.machine.handle_claimed(ok, clock(sent_at), at);
                    }
                    other => node.awaiting = other,
                }
            }
            ZkReply::View(mut view) => {
                // The driver leaves out our own znodes of earlier sessions (not a live member).
                let me = node.zk.path.as_ref();
                view.members
                    .retain(|s| s.info.name != name || Some(&s.path) == me);
                node.seen_epoch = node.seen_epoch.max(view.epoch);
                node.machine.handle_view(view, at);
            }
        }
        Ok(())
    }

    /// The connection to ZooKeeper is lost (the session may live on): pending operations
    /// fail with a connection loss.
    pub(super) fn disconnect(&mut self, m: usize) {
        let clock = self.clock_of(m);
        let at = clock(self.now);
        let node = self.members[m].node.as_mut().expect("running");
        node.zk.state = ZkState::Disconnected;
        node.zk.renewals.clear();
        node.zk.next_attempt = 0;
        node.machine.handle_session(ZkSession::Disconnected, at);
        match node.awaiting.take() {
            // The outcome is unknown; the driver reports a failure.
            Some(Awaiting::Claim { sent_at, .. }) => {
                node.machine.handle_claimed(false, clock(sent_at), at)
            }
            Some(Awaiting::Publish { .. }) if self.p.quirks.publish_failure_continues => {
                node.actions.pop_front();
            }
            _ => {}
        }
        self.log(|| format!("m{m}: zk disconnected"));
    }

    /// The session is gone: tell the machine, open a new one.
    pub(super) fn expire(&mut self, m: usize) {
        let at = self.clock(m, self.now);
        let node = self.node(m);
        node.zk.renewals.clear();
        node.machine.handle_session(ZkSession::Expired, at);
        node.awaiting = None;
        self.log(|| format!("m{m}: zk session expired"));
        self.connect_session(m);
    }

    pub(super) fn tick(&mut self, m: usize) -> Check {
        let now = self.now;
        let at = self.clock(m, now);
        let t = self.p.session_timeout;
        let node = self.node(m);
        if let Some(term) = &node.term {
            // Check quorum: when `replicas/2` followers had all been heard from, as the driver
            // asks the replication.
            if let Some(heard) = term.machine.quorum_contact(at) {
                node.machine.handle_quorum_contact(heard, at);
            }
        }
        node.machine.handle_tick(at);
        let zk = &mut node.zk;
        match zk.state {
            ZkState::Connecting => {
                if now >= zk.next_attempt {
                    self.connect_session(m);
                }
            }
            ZkState::Registering | ZkState::Connected if now - zk.last_heard > t * 2 / 3 => {
                self.disconnect(m)
            }
            ZkState::Registering | ZkState::Connected => {
                let ping = now - zk.last_ping >= t / 3;
                if ping {
                    zk.last_ping = now;
                }
                let renew = zk.state == ZkState::Connected && now - zk.last_renew >= t / 5;
                if ping {
                    self.zk_send(m, ZkRequest::Ping);
                }
                if renew {
                    let op = self.op();
                    let zk = &mut self.node(m).zk;
                    zk.last_renew = now;
                    zk.renewals.insert(op, now);
                    self.zk_send(m, ZkRequest::Renew { op });
                }
            }
            ZkState::Disconnected if now - zk.last_heard > zk.give_up_after => self.expire(m),
            ZkState::Disconnected => {
                if now >= zk.next_attempt {
                    let incarnation = self.members[m].incarnation;
                    let conn = self.open(Some((m, incarnation)), None);
                    let retry = self.rng.random_range(t / 10..t / 3);
                    let zk = &mut self.node(m).zk;
                    zk.conn = conn;
                    zk.next_attempt = now + retry;
                    self.zk_send(m, ZkRequest::Reconnect);
                }
            }
        }
        let ended = self
            .node(m)
            .follow
            .as_ref()
            .is_some_and(|f| f.ends_at.is_some_and(|t| now >= t));
        if ended {
            self.node(m).follow = None;
            self.stopped(m);
        }
        self.drive(m)?;
        self.try_commit(m)?;
        let streams: Vec<u64> = self
            .node(m)
            .term
            .iter()
            .flat_map(|t| t.sessions.keys().copied())
            .collect();
        for conn in streams {
            self.repl_send(m, conn, ReplMsg::Heartbeat);
        }
        let incarnation = self.members[m].incarnation;
        let next = now + self.rng.random_range(t / 20..t / 8);
        self.schedule(
            next,
            Event::Tick {
                member: m,
                incarnation,
            },
        );
        Ok(())
    }

    /// Carries out the machine's actions in order, each awaited.
    pub(super) fn drive(&mut self, m: usize) -> Check {
        let quirks = self.p.quirks;
        loop {
            let now = self.now;
            let at = self.clock(m, now);
            let node = self.node(m);
            while let Some(a) = node.machine.poll_action() {
                node.actions.push_back(a);
            }
            if node.awaiting.is_some() {
                return Ok(());
            }
            let Some(action) = node.actions.front().cloned() else {
                return Ok(());
            };
            let connected = node.zk.state == ZkState::Connected;
            if let Action::Publish(_) = action {
                // Kept at the head until a write succeeds (retried after a reconnect or on the
                // next session).
                if !connected {
                    if quirks.publish_failure_continues {
                        node.actions.pop_front();
                        continue;
                    }
                    return Ok(());
                }
            } else {
                node.actions.pop_front();
            }
            self.log(|| format!("m{m}: {action:?}"));
            match action {
                Action::Publish(data) => {
                    let op = self.op();
                    let node = self.node(m);
                    let path = node.zk.path.clone().expect("connected");
                    node.awaiting = Some(Awaiting::Publish { op });
                    self.zk_send(m, ZkRequest::SetData { op, path, data });
                    return Ok(());
                }
                Action::Claim {
                    epoch,
                    checks,
                    epoch_version,
                    announce,
                } => {
                    if !connected {
                        self.node(m).machine.handle_claimed(false, at, at);
                        continue;
                    }
                    let op = self.op();
                    let node = self.node(m);
                    let path = node.zk.path.clone().expect("connected");
                    node.awaiting = Some(Awaiting::Claim { op, sent_at: now });
                    self.zk_send(
                        m,
                        ZkRequest::Multi {
                            op,
                            checks,
                            epoch,
                            epoch_version,
                            path,
                            data: announce,
                        },
                    );
                    return Ok(());
                }
                Action::Follow { master, .. } => {
                    let node = self.node(m);
                    if node.follow.is_some() || node.term.is_some() {
                        return Err(format!("m{m} follows while following or serving"));
                    }
                    self.connect_follower(m, index_of(&master.name));
                }
                Action::StopFollowing => {
                    if let Some(f) = self.node(m).follow.take() {
                        self.break_conn(f.conn);
                    }
                    self.stopped(m);
                }
                Action::Serve { epoch } => self.serve(m, epoch)?,
                Action::Resign { .. } => {
                    let term = self.node(m).term.take();
                    for conn in term.into_iter().flat_map(|t| t.sessions.into_keys()) {
                        self.break_conn(conn);
                    }
                    self.stopped(m);
                }
            }
        }
    }

    /// Our replication client or term has stopped: report where the journal ends.
    pub(super) fn stopped(&mut self, m: usize) {
        let at = self.clock(m, self.now);
        let member = &self.members[m];
        let position = member.history.position(member.last());
        self.node(m).machine.handle_stopped(position, at);
    }
}

/// The index of member `m<index>`.
pub(super) fn index_of(name: &str) -> usize {
    name[1..].parse().expect("members are named m<index>")
}
