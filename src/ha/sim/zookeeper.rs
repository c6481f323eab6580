//! The simulated ZooKeeper service (one linearizable server): sessions opened by a handshake
//! and expiring on the server's timeout, ephemeral sequential member znodes, versions, the
//! claim's conditional multi, and watches pushing a consistent view of the group after every
//! change.

use super::*;

#[derive(Debug, Clone)]
pub(super) enum ZkRequest {
    /// Open a new session.
    Connect,
    /// Resume our session on a new connection.
    Reconnect,
    /// Create our member znode (ephemeral, sequential) with this data.
    Register(Announce),
    Ping,
    /// The lease renewal (any read, e.g. `exists`).
    Renew {
        op: u64,
    },
    SetData {
        op: u64,
        path: String,
        data: Announce,
    },
    Multi {
        op: u64,
        checks: Vec<(String, i32)>,
        epoch: u64,
        epoch_version: i32,
        path: String,
        data: Announce,
    },
}

#[derive(Debug, Clone)]
pub(super) enum ZkReply {
    Session(u64),
    /// The session lives on; the member znode it owns, if any.
    Reconnected(Option<String>),
    Registered(String),
    Expired,
    Pong,
    Done {
        op: u64,
        ok: bool,
    },
    View(View),
}

pub(super) struct ServerSession {
    pub(super) member: usize,
    pub(super) incarnation: u32,
    pub(super) conn: u64,
    pub(super) last_contact: Time,
    pub(super) alive: bool,
}

pub(super) struct Znode {
    pub(super) version: i32,
    pub(super) data: Announce,
    pub(super) owner: u64,
}

pub(super) struct ZooKeeper {
    pub(super) up: bool,
    pub(super) sessions: BTreeMap<u64, ServerSession>,
    pub(super) znodes: BTreeMap<String, Znode>,
    pub(super) epoch: u64,
    pub(super) epoch_version: i32,
    pub(super) next_seq: u64,
}

impl Sim {
    pub(super) fn zk_receive(
        &mut self,
        conn: u64,
        session: Option<u64>,
        request: ZkRequest,
    ) -> Check {
        if !self.arrives(conn, None) || !self.zk.up {
            return Ok(());
        }
        let Some((m, incarnation)) = self.conns[conn as usize].ends[0] else {
            unreachable!("a member opens every ZooKeeper connection");
        };
        let reply = |sim: &mut Sim, reply: ZkReply| {
            sim.send(
                conn,
                None,
                Event::FromZk {
                    to: m,
                    incarnation,
                    conn,
                    reply,
                },
            );
        };
        let Some(id) = session else {
            let id = self.zk.sessions.len() as u64 + 1;
            self.zk.sessions.insert(
                id,
                ServerSession {
                    member: m,
                    incarnation,
                    conn,
                    last_contact: self.now,
                    alive: true,
                },
            );
            let at = self.now + self.p.session_timeout;
            self.schedule(at, Event::SessionCheck { session: id });
            reply(self, ZkReply::Session(id));
            return Ok(());
        };
        let session = self.zk.sessions.get_mut(&id).expect("sessions are kept");
        if !session.alive {
            reply(self, ZkReply::Expired);
            return Ok(());
        }
        if let ZkRequest::Reconnect = request {
            session.conn = conn;
            session.last_contact = self.now;
            let path = self
                .zk
                .znodes
                .iter()
                .find(|(_, z)| z.owner == id)
                .map(|(p, _)| p.clone());
            reply(self, ZkReply::Reconnected(path));
            let view = self.zk_view();
            reply(self, ZkReply::View(view));
            return Ok(());
        }
        if session.conn != conn {
            // The servers closed that connection when the client reconnected.
            return Ok(());
        }
        session.last_contact = self.now;
        match request {
            ZkRequest::Connect | ZkRequest::Reconnect => unreachable!("handled above"),
            ZkRequest::Register(data) => {
                self.zk.next_seq += 1;
                let path = format!("/g/member-{:010}", self.zk.next_seq);
                self.log(|| format!("zk: session {id} of m{m} registers {path}"));
                self.zk.znodes.insert(
                    path.clone(),
                    Znode {
                        version: 0,
                        data,
                        owner: id,
                    },
                );
                reply(self, ZkReply::Registered(path));
                self.zk_notify();
            }
            ZkRequest::Ping => reply(self, ZkReply::Pong),
            ZkRequest::Renew { op } => reply(self, ZkReply::Done { op, ok: true }),
            ZkRequest::SetData { op, path, data } => {
                let ok = match self.zk.znodes.get_mut(&path) {
                    Some(z) if z.owner == id => {
                        z.version += 1;
                        z.data = data;
                        true
                    }
                    _ => false,
                };
                reply(self, ZkReply::Done { op, ok });
                if ok {
                    self.zk_notify();
                }
            }
            ZkRequest::Multi {
                op,
                checks,
                epoch,
                epoch_version,
                path,
                data,
            } => {
                let ok = checks
                    .iter()
                    .all(|(p, v)| self.zk.znodes.get(p).is_some_and(|z| z.version == *v))
                    && self.zk.epoch_version == epoch_version
                    && self.zk.znodes.get(&path).is_some_and(|z| z.owner == id);
                if ok {
                    self.zk.epoch = epoch;
                    self.zk.epoch_version += 1;
                    let z = self.zk.znodes.get_mut(&path).expect("checked");
                    z.version += 1;
                    z.data = data;
                    self.log(|| format!("zk: m{m} claims epoch {epoch}"));
                } else {
                    let stale: Vec<_> = checks
                        .iter()
                        .filter(|(p, v)| self.zk.znodes.get(p).map(|z| z.version) != Some(*v))
                        .map(|(p, v)| (p.clone(), *v, self.zk.znodes.get(p).map(|z| z.version)))
                        .collect();
                    let versions = (epoch_version, self.zk.epoch_version);
                    self.log(|| {
                        format!(
                            "zk: m{m}'s claim fails: stale {stale:?}, epoch versions {versions:?}"
                        )
                    });
                }
                reply(self, ZkReply::Done { op, ok });
                if ok {
                    self.zk_notify();
                } else {
                    // The driver reads the group again after a failed claim.
                    let view = self.zk_view();
                    reply(self, ZkReply::View(view));
                }
            }
        }
        Ok(())
    }

    pub(super) fn zk_view(&self) -> View {
        View {
            members: self
                .zk
                .znodes
                .iter()
                .map(|(path, z)| Seen {
                    path: path.clone(),
                    version: z.version,
                    info: z.data.clone(),
                })
                .collect(),
            epoch: self.zk.epoch,
            epoch_version: self.zk.epoch_version,
        }
    }

    /// Watches fire: every connected session reads the group afresh.
    pub(super) fn zk_notify(&mut self) {
        let view = self.zk_view();
        let targets: Vec<_> = self
            .zk
            .sessions
            .values()
            .filter(|s| s.alive)
            .map(|s| (s.member, s.incarnation, s.conn))
            .collect();
        for (to, incarnation, conn) in targets {
            self.send(
                conn,
                None,
                Event::FromZk {
                    to,
                    incarnation,
                    conn,
                    reply: ZkReply::View(view.clone()),
                },
            );
        }
    }

    pub(super) fn zk_check_session(&mut self, id: u64) {
        let timeout = self.p.session_timeout;
        let session = &self.zk.sessions[&id];
        if !session.alive {
            return;
        }
        let deadline = session.last_contact + timeout;
        if !self.zk.up || self.now < deadline {
            let at = deadline.max(self.now + timeout / 10);
            self.schedule(at, Event::SessionCheck { session: id });
            return;
        }
        let member = session.member;
        self.zk.sessions.get_mut(&id).expect("present").alive = false;
        self.zk.znodes.retain(|_, z| z.owner != id);
        self.log(|| format!("zk: session {id} of m{member} expires"));
        self.zk_notify();
    }
}
