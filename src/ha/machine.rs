//! The role of one member of a ZooKeeper-elected group, as a state machine with no I/O.
//!
//! The driver feeds it what it observes — the group's znodes (`handle_view`), the session's
//! state, the outcome of a claim, the end of a follow or a term, each successful lease renewal —
//! and carries out the `Action`s it polls. Time comes in as an argument, never from a clock.
//!
//! Invariants (checked over random schedules in `ha/sim/`):
//! - A member announces `Following` — and the driver waits for that write — before it appends
//!   anything from a master, and announces `Candidate` with its position only after its
//!   replication client has stopped: a published candidate position is final.
//! - An election happens only when no live master of the current epoch is registered, every
//!   registered member is a candidate, and at least `replicas/2 + 1` are. The highest
//!   (position, weight, name) claims, with one conditional ZooKeeper transaction that checks
//!   every candidate's znode version and the epoch znode's version: two claims of one epoch
//!   cannot both succeed, and a claim fails if any counted position changed.
//! - A master commits (receipts) only while its lease holds: until `0.75 × session_timeout`
//!   after the start of the last ZooKeeper operation that succeeded. ZooKeeper expires the
//!   session no earlier than `session_timeout` after it last heard from the member, and no
//!   other master can be elected before that, so two masters never commit at the same time.
//! - Check quorum (as Raft's CheckQuorum): a master whose commits wait for followers steps
//!   down when it has not heard from `replicas/2` of them for `quorum_timeout` (and at least two
//!   session timeouts, so that dead followers have left ZooKeeper by then) while `replicas/2 +
//!   1` others are registered — they could elect one of them, it could not be re-elected — and
//!   then announces itself `Withdrawn` until a newer epoch begins or as long again has passed.
//!   A master whose followers are dead stays master and refuses writes for want of a quorum. A withdrawn member's term has ended (its commits were fenced first) and it appends
//!   nothing, so an election among the others may leave it out: any `replicas/2 + 1` members
//!   other than it include one of the `replicas/2` followers that acknowledged each committed
//!   write. Without the withdrawal its unreplicated tail — the highest position — would win
//!   every election, and the group would stay stuck behind a master its followers cannot reach.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::store::Position;

/// What a member announces in its znode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Candidate,
    Following,
    Master,
    /// Stepped down for want of a quorum of followers: final like a candidate's position, but
    /// neither claims nor is waited for by an election (see the module's invariants).
    Withdrawn,
}

/// The data of a member znode (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    pub name: String,
    pub phase: Phase,
    /// The epoch it follows or leads; for a candidate the newest epoch it has seen.
    pub epoch: u64,
    /// Its journal position; final when `phase` is `Candidate`.
    pub position: Position,
    pub weight: u32,
    /// Where followers replicate from (its replication address).
    pub replication: String,
}

/// One registered member as read from ZooKeeper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The znode's path.
    pub path: String,
    pub version: i32,
    pub info: Announce,
}

/// The group as read from ZooKeeper in one consistent sweep.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct View {
    pub members: Vec<Seen>,
    /// The current epoch (the epoch znode) and its version.
    pub epoch: u64,
    pub epoch_version: i32,
}

impl View {
    /// The registered master of the current epoch, if any.
    pub fn live_master(&self) -> Option<&Seen> {
        self.members
            .iter()
            .find(|s| s.info.phase == Phase::Master && s.info.epoch == self.epoch)
    }
}

/// The session with ZooKeeper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZkSession {
    /// Connected; our member znode is registered at this path with this version.
    Connected,
    /// Connection lost; the session may still be alive on the servers.
    Disconnected,
    /// The session is gone (our znode with it); the driver opens a new one.
    Expired,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write our znode's data (conditional on the version the driver last saw; a failed write
    /// is followed by a fresh view).
    Publish(Announce),
    /// Start replicating from this master, after the preceding `Publish` succeeded.
    Follow { master: Announce, epoch: u64 },
    /// Stop the replication client; report `handle_stopped` once nothing more is appended.
    StopFollowing,
    /// One transaction: check every `checks` (path, version), set the epoch znode to `epoch`
    /// at `epoch_version`, set our znode to `announce` — all or nothing.
    Claim {
        epoch: u64,
        checks: Vec<(String, i32)>,
        epoch_version: i32,
        announce: Announce,
    },
    /// Become master of `epoch` (recover, begin the epoch, catch followers up, serve).
    Serve { epoch: u64 },
    /// Stop serving at once (fence pending writes); report `handle_stopped` when done.
    Resign { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElectionRole {
    /// Waiting for a master or an election; our published position is final.
    Candidate,
    Following {
        master: String,
        epoch: u64,
    },
    /// Our replication client is stopping.
    Unfollowing,
    Claiming {
        epoch: u64,
    },
    Master {
        epoch: u64,
    },
    /// Our term is stopping.
    Resigning,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub weight: u32,
    pub replication: String,
    pub replicas: usize,
    pub session_timeout: Duration,
    /// Check quorum: how long a master may go without hearing from `replicas/2` followers
    /// before it steps down. `None` when commits do not wait for followers (`local_*` sync
    /// modes, or a group of one): such a master serves without them.
    pub quorum_timeout: Option<Duration>,
}

impl Config {
    /// Members that must take part in an election.
    pub fn quorum(&self) -> usize {
        self.replicas / 2 + 1
    }

    fn lease(&self) -> Duration {
        self.session_timeout * 3 / 4
    }

    /// How long a master goes without hearing from a quorum of followers before it steps
    /// down: `quorum_timeout`, and at least two session timeouts — by then ZooKeeper has
    /// expired the session of a follower that died (at most 1.5 × `session_timeout` after its
    /// last word, the servers' tick included), so followers still registered are alive and
    /// cut off from us, not dead.
    pub fn check_quorum_after(&self) -> Option<Duration> {
        self.quorum_timeout.map(|q| q.max(self.session_timeout * 2))
    }
}

pub struct Machine {
    config: Config,
    role: ElectionRole,
    position: Position,
    /// The newest epoch seen anywhere (never goes back).
    epoch: u64,
    session: ZkSession,
    view: Option<View>,
    /// What we last asked to publish (to avoid rewriting the same data).
    published: Option<Announce>,
    lease_until: Option<Instant>,
    /// The view our pending claim was computed from.
    claimed_from: Option<View>,
    /// As master: the last time `replicas/2` followers had all been heard from (or when the
    /// term began).
    quorum_heard: Option<Instant>,
    /// Stepped down for want of a quorum of followers: announce `Withdrawn` (and never claim)
    /// until then, or until an epoch newer than `.1` begins.
    withdrawn: Option<(Instant, u64)>,
    actions: std::collections::VecDeque<Action>,
}

impl Machine {
    /// A member whose journal ends at `position`, not yet registered.
    pub fn new(config: Config, position: Position) -> Machine {
        Machine {
            config,
            role: ElectionRole::Candidate,
            epoch: position.epoch,
            position,
            session: ZkSession::Disconnected,
            view: None,
            published: None,
            lease_until: None,
            claimed_from: None,
            quorum_heard: None,
            withdrawn: None,
            actions: Default::default(),
        }
    }

    pub fn role(&self) -> &ElectionRole {
        &self.role
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Our announcement as it should read now.
    pub fn announce(&self) -> Announce {
        let (phase, epoch) = match &self.role {
            ElectionRole::Following { epoch, .. } => (Phase::Following, *epoch),
            ElectionRole::Master { epoch } => (Phase::Master, *epoch),
            ElectionRole::Claiming { epoch } => (Phase::Master, *epoch),
            // Not final yet: an election must not count these.
            ElectionRole::Unfollowing | ElectionRole::Resigning => (Phase::Following, self.epoch),
            ElectionRole::Candidate if self.withdrawn.is_some() => (Phase::Withdrawn, self.epoch),
            ElectionRole::Candidate => (Phase::Candidate, self.epoch),
        };
        Announce {
            name: self.config.name.clone(),
            phase,
            epoch,
            position: self.position,
            weight: self.config.weight,
            replication: self.config.replication.clone(),
        }
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// True while a master may acknowledge writes.
    pub fn may_commit(&self, now: Instant) -> bool {
        matches!(self.role, ElectionRole::Master { .. })
            && self.session == ZkSession::Connected
            && self.lease_until.is_some_and(|t| now < t)
    }

    /// When the lease runs out (the driver renews well before).
    pub fn lease_until(&self) -> Option<Instant> {
        self.lease_until
    }

    /// True while stepped down for want of a quorum of followers.
    pub fn withdrawn(&self) -> bool {
        self.withdrawn.is_some()
    }

    /// As master: `replicas/2` followers had all been heard from at `at` (the driver reports
    /// the latest such time it knows).
    pub fn handle_quorum_contact(&mut self, at: Instant, now: Instant) {
        if matches!(self.role, ElectionRole::Master { .. }) {
            self.quorum_heard = Some(self.quorum_heard.map_or(at, |t| t.max(at)));
        }
        self.check_lease(now);
    }

    /// A fresh read of the group.
    pub fn handle_view(&mut self, view: View, now: Instant) {
        self.epoch = self.epoch.max(view.epoch);
        if self.withdrawn.is_some_and(|(_, from)| view.epoch > from) {
            // The others elected without us: we are an ordinary member again.
            self.withdrawn = None;
        }
        if let Some(me) = view
            .members
            .iter()
            .find(|s| s.info.name == self.config.name)
        {
            // What ZooKeeper holds for us is what we published (the driver re-publishes a
            // lost write on the next view).
            if self.published.as_ref() != Some(&me.info) {
                self.published = None;
            }
        } else {
            self.published = None;
        }
        self.view = Some(view);
        self.evaluate(now);
    }

    pub fn handle_session(&mut self, session: ZkSession, now: Instant) {
        self.session = session;
        match session {
            ZkSession::Expired => {
                self.view = None;
                self.published = None;
                self.lease_until = None;
                match self.role {
                    ElectionRole::Master { .. } => self.resign("the ZooKeeper session expired"),
                    // The claim's outcome is unknown; our znode is gone either way, so a
                    // master of that epoch can never be seen live — never serve it.
                    ElectionRole::Claiming { .. } => self.role = ElectionRole::Candidate,
                    _ => {}
                }
            }
            ZkSession::Disconnected => {}
            ZkSession::Connected => self.evaluate(now),
        }
    }

    /// A ZooKeeper operation sent at `sent_at` succeeded: the session was alive then.
    pub fn handle_lease(&mut self, sent_at: Instant, now: Instant) {
        if matches!(self.role, ElectionRole::Master { .. }) {
            let until = sent_at + self.config.lease();
            self.lease_until = Some(self.lease_until.map_or(until, |t| t.max(until)));
        }
        self.check_lease(now);
    }

    /// Time passed (the driver calls this on a timer).
    pub fn handle_tick(&mut self, now: Instant) {
        self.check_lease(now);
        if self.withdrawn.is_some_and(|(until, _)| now >= until) {
            // Nobody was elected meanwhile (the others may be gone rather than cut off): stand
            // again, or the group could never elect once they come back.
            self.withdrawn = None;
            self.evaluate(now);
        }
    }

    /// The outcome of our `Claim` sent at `sent_at`.
    pub fn handle_claimed(&mut self, ok: bool, sent_at: Instant, now: Instant) {
        let ElectionRole::Claiming { epoch } = self.role else {
            return;
        };
        if ok && self.session == ZkSession::Connected {
            self.epoch = self.epoch.max(epoch);
            self.role = ElectionRole::Master { epoch };
            self.lease_until = Some(sent_at + self.config.lease());
            self.quorum_heard = Some(now);
            self.published = Some(self.announce());
            self.actions.push_back(Action::Serve { epoch });
        } else {
            // A failed transaction left our znode as it was, so `published` still holds. (Had
            // it been cleared, the unchanged candidacy would be rewritten, and the next claim —
            // computed from the view of the previous write — would check a version that the
            // rewrite bumps: it fails and queues another rewrite, for ever.) If the answer was
            // lost and the claim did succeed, the next view shows a master znode that differs
            // from `published`, and `handle_view` republishes. The view the claim came from is
            // stale (that is why it failed): unless a newer one arrived meanwhile, claiming
            // again from it would fail the same way, so wait for a fresh one.
            self.role = ElectionRole::Candidate;
            if self.view == self.claimed_from {
                self.view = None;
            }
        }
        self.claimed_from = None;
        self.evaluate(now);
    }

    /// A `Publish` failed: ZooKeeper may not hold what we last asked to write, so the next
    /// change of role writes it again.
    pub fn handle_publish_failed(&mut self) {
        self.published = None;
    }

    /// Our replication client or our term ended; the journal now ends at `position`.
    pub fn handle_stopped(&mut self, position: Position, now: Instant) {
        self.position = position;
        self.epoch = self.epoch.max(position.epoch);
        match self.role {
            ElectionRole::Following { .. }
            | ElectionRole::Unfollowing
            | ElectionRole::Resigning => {
                self.role = ElectionRole::Candidate;
                self.lease_until = None;
            }
            ElectionRole::Master { .. } => {
                // The term ended by itself (a fatal journal error, a bind failure).
                self.role = ElectionRole::Candidate;
                self.lease_until = None;
            }
            ElectionRole::Candidate | ElectionRole::Claiming { .. } => {}
        }
        self.evaluate(now);
    }

    /// A candidate's journal position changed (only before it registers).
    pub fn set_position(&mut self, position: Position) {
        if self.role == ElectionRole::Candidate {
            self.position = position;
            self.epoch = self.epoch.max(position.epoch);
        }
    }

    fn resign(&mut self, reason: &str) {
        self.role = ElectionRole::Resigning;
        self.lease_until = None;
        self.quorum_heard = None;
        self.actions.push_back(Action::Resign {
            reason: reason.to_string(),
        });
    }

    fn check_lease(&mut self, now: Instant) {
        if let (ElectionRole::Master { .. }, Some(until)) = (&self.role, self.lease_until) {
            // Unable to renew for a whole session timeout past the lease: the session is
            // certainly gone on the servers; stop instead of waiting for the client's verdict.
            if now >= until + self.config.session_timeout {
                self.resign("no ZooKeeper contact for longer than the session timeout");
                return;
            }
        }
        if let (ElectionRole::Master { epoch }, Some(heard), Some(after)) = (
            &self.role,
            self.quorum_heard,
            self.config.check_quorum_after(),
        ) {
            if now >= heard + after && self.others_registered() >= self.config.quorum() {
                let epoch = *epoch;
                self.withdrawn = Some((now + after, epoch));
                self.resign(&format!(
                    "no quorum of followers heard from for {after:?}, while enough of the \
                     others are registered in ZooKeeper to elect one of them: withdrawing so \
                     that a member they can reach is elected"
                ));
            }
        }
    }

    /// Other members registered in the last view that could vote in an election without us:
    /// following (trying to reach us) or candidates.
    fn others_registered(&self) -> usize {
        let Some(view) = &self.view else {
            return 0;
        };
        let mut names: Vec<&str> = view
            .members
            .iter()
            .filter(|s| {
                s.info.name != self.config.name
                    && matches!(s.info.phase, Phase::Candidate | Phase::Following)
            })
            .map(|s| s.info.name.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        names.len()
    }

    /// Queues a write of our announcement if it changed; true when one was queued.
    fn publish(&mut self) -> bool {
        let a = self.announce();
        if self.published.as_ref() == Some(&a) {
            return false;
        }
        self.published = Some(a.clone());
        self.actions.push_back(Action::Publish(a));
        true
    }

    fn evaluate(&mut self, now: Instant) {
        self.check_lease(now);
        if self.session != ZkSession::Connected {
            return;
        }
        let Some(view) = self.view.clone() else {
            return;
        };
        match self.role.clone() {
            ElectionRole::Candidate => {
                if let Some(master) = view.live_master() {
                    if master.info.name != self.config.name {
                        self.role = ElectionRole::Following {
                            master: master.info.name.clone(),
                            epoch: view.epoch,
                        };
                        self.publish();
                        self.actions.push_back(Action::Follow {
                            master: master.info.clone(),
                            epoch: view.epoch,
                        });
                        return;
                    }
                    // Our own old master znode (a claim whose answer was lost, a term that
                    // ended): an epoch we never served. Announce we are a candidate; the
                    // election that follows moves past it.
                }
                // A claim must check the version our write creates: wait for the next view.
                if !self.publish() {
                    self.maybe_claim(&view);
                }
            }
            ElectionRole::Following { master, epoch } => {
                let still = view.live_master().is_some_and(|m| m.info.name == master)
                    && view.epoch == epoch;
                if !still {
                    self.role = ElectionRole::Unfollowing;
                    self.actions.push_back(Action::StopFollowing);
                }
            }
            ElectionRole::Master { epoch } => {
                // A view older than our claim says nothing about this term.
                if view.epoch < epoch {
                    return;
                }
                let me_master = view.members.iter().any(|s| {
                    s.info.name == self.config.name
                        && s.info.phase == Phase::Master
                        && s.info.epoch == epoch
                });
                if view.epoch > epoch || !me_master {
                    self.resign("a newer epoch began or our znode no longer names us master");
                }
            }
            ElectionRole::Unfollowing | ElectionRole::Claiming { .. } | ElectionRole::Resigning => {
            }
        }
    }

    fn maybe_claim(&mut self, view: &View) {
        if view.live_master().is_some() {
            return;
        }
        let me = &self.config.name;
        // Our own znode must show our final candidacy, or others cannot count us.
        let mine = self.announce();
        if !view
            .members
            .iter()
            .any(|s| &s.info.name == me && s.info == mine)
        {
            return;
        }
        if self.withdrawn.is_some() {
            return;
        }
        // A withdrawn member's term is over and it appends nothing: not waited for, not
        // counted, never chosen.
        if view
            .members
            .iter()
            .any(|s| matches!(s.info.phase, Phase::Following | Phase::Master) && s.info.name != *me)
        {
            return;
        }
        // A member that restarted (or reconnected with a new session) keeps its previous
        // znode until that session expires on the servers: one member, two znodes. Counted
        // twice, it would make a quorum on its own (and its old position may be stale). Wait
        // until every registered member has exactly one znode.
        let mut names: Vec<&str> = view.members.iter().map(|s| s.info.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let candidates = view
            .members
            .iter()
            .filter(|s| s.info.phase == Phase::Candidate);
        if names.len() != view.members.len() || candidates.clone().count() < self.config.quorum() {
            return;
        }
        let best = candidates
            .max_by(|a, b| {
                (a.info.position, a.info.weight, &a.info.name).cmp(&(
                    b.info.position,
                    b.info.weight,
                    &b.info.name,
                ))
            })
            .expect("a quorum is not empty");
        if &best.info.name != me {
            return;
        }
        let epoch = view.epoch.max(self.epoch) + 1;
        self.role = ElectionRole::Claiming { epoch };
        self.claimed_from = Some(view.clone());
        let announce = self.announce();
        self.actions.push_back(Action::Claim {
            epoch,
            checks: view
                .members
                .iter()
                .map(|s| (s.path.clone(), s.version))
                .collect(),
            epoch_version: view.epoch_version,
            announce,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str) -> Config {
        Config {
            name: name.into(),
            weight: 1,
            replication: format!("{name}:1"),
            replicas: 3,
            session_timeout: Duration::from_secs(2),
            quorum_timeout: Some(Duration::from_secs(3)),
        }
    }

    fn seen(a: Announce, version: i32) -> Seen {
        Seen {
            path: format!("/g/{}", a.name),
            version,
            info: a,
        }
    }

    fn candidate(name: &str, epoch: u64, index: u64) -> Announce {
        Announce {
            name: name.into(),
            phase: Phase::Candidate,
            epoch,
            position: Position { epoch, index },
            weight: 1,
            replication: format!("{name}:1"),
        }
    }

    #[test]
    fn the_highest_position_claims_once_a_quorum_of_candidates_is_in() {
        let t = Instant::now();
        let mut m = Machine::new(config("a"), Position { epoch: 1, index: 9 });
        m.handle_session(ZkSession::Connected, t);
        let view = |members: Vec<Seen>| View {
            members,
            epoch: 1,
            epoch_version: 4,
        };
        m.handle_view(view(vec![seen(candidate("a", 1, 9), 0)]), t);
        assert!(matches!(m.poll_action(), Some(Action::Publish(_))));
        assert_eq!(m.poll_action(), None, "alone is not a quorum");
        m.handle_view(
            view(vec![
                seen(candidate("a", 1, 9), 1),
                seen(candidate("b", 1, 7), 0),
            ]),
            t,
        );
        match m.poll_action() {
            Some(Action::Claim {
                epoch,
                checks,
                epoch_version,
                ..
            }) => {
                assert_eq!(epoch, 2);
                assert_eq!(epoch_version, 4);
                assert_eq!(checks.len(), 2);
            }
            other => panic!("expected a claim, got {other:?}"),
        }
        m.handle_claimed(true, t, t);
        assert_eq!(m.poll_action(), Some(Action::Serve { epoch: 2 }));
        assert!(m.may_commit(t));
        assert!(
            !m.may_commit(t + Duration::from_millis(1600)),
            "lease ran out"
        );
    }

    #[test]
    fn a_lower_position_waits_and_a_following_member_blocks_the_election() {
        let t = Instant::now();
        let mut m = Machine::new(config("b"), Position { epoch: 1, index: 7 });
        m.handle_session(ZkSession::Connected, t);
        let mut following = candidate("c", 1, 3);
        following.phase = Phase::Following;
        m.handle_view(
            View {
                members: vec![seen(candidate("a", 1, 9), 0), seen(candidate("b", 1, 7), 0)],
                epoch: 1,
                epoch_version: 0,
            },
            t,
        );
        while let Some(a) = m.poll_action() {
            assert!(!matches!(a, Action::Claim { .. }), "b is not the highest");
        }
        let mut m = Machine::new(config("a"), Position { epoch: 1, index: 9 });
        m.handle_session(ZkSession::Connected, t);
        m.handle_view(
            View {
                members: vec![
                    seen(candidate("a", 1, 9), 0),
                    seen(candidate("b", 1, 7), 0),
                    seen(following, 0),
                ],
                epoch: 1,
                epoch_version: 0,
            },
            t,
        );
        while let Some(a) = m.poll_action() {
            assert!(
                !matches!(a, Action::Claim { .. }),
                "c may still be appending"
            );
        }
    }

    #[test]
    fn a_candidate_follows_the_live_master_and_stops_when_it_goes() {
        let t = Instant::now();
        let mut m = Machine::new(config("b"), Position { epoch: 1, index: 7 });
        m.handle_session(ZkSession::Connected, t);
        let mut master = candidate("a", 2, 9);
        master.phase = Phase::Master;
        m.handle_view(
            View {
                members: vec![seen(master.clone(), 1), seen(candidate("b", 1, 7), 0)],
                epoch: 2,
                epoch_version: 1,
            },
            t,
        );
        match m.poll_action() {
            Some(Action::Publish(a)) => assert_eq!(a.phase, Phase::Following),
            other => panic!("expected to announce following first, got {other:?}"),
        }
        assert!(matches!(
            m.poll_action(),
            Some(Action::Follow { epoch: 2, .. })
        ));
        m.handle_view(
            View {
                members: vec![seen(candidate("b", 2, 7), 1)],
                epoch: 2,
                epoch_version: 1,
            },
            t,
        );
        assert_eq!(m.poll_action(), Some(Action::StopFollowing));
        m.handle_stopped(
            Position {
                epoch: 2,
                index: 12,
            },
            t,
        );
        match m.poll_action() {
            Some(Action::Publish(a)) => {
                assert_eq!(a.phase, Phase::Candidate);
                assert_eq!(
                    a.position,
                    Position {
                        epoch: 2,
                        index: 12
                    }
                );
            }
            other => panic!("expected a final candidacy, got {other:?}"),
        }
    }

    /// Found by the simulation (3 members, seeds 0 and 105, before this fix). Seed 0: every
    /// member starts with `published` unknown, so its first evaluation rewrote its znode (same
    /// data, next version) and — in the same breath — claimed with the version the view
    /// showed. The driver runs the write first, so the claim failed; the failure cleared
    /// `published`, which queued the same write-then-claim pair again, and the group never
    /// elected anyone. Seed 105: the claim, no longer queued behind the write, was computed
    /// from the view of the previous identical write while the next one was in flight — the
    /// failure's rewrite kept the two one step out of phase for good.
    #[test]
    fn a_claim_is_never_queued_behind_a_write_to_our_own_znode() {
        let t = Instant::now();
        let mut m = Machine::new(config("a"), Position { epoch: 1, index: 9 });
        m.handle_session(ZkSession::Connected, t);
        let view = |a_version: i32| View {
            members: vec![
                seen(candidate("a", 1, 9), a_version),
                seen(candidate("b", 1, 7), 0),
            ],
            epoch: 1,
            epoch_version: 4,
        };
        let drain = |m: &mut Machine| std::iter::from_fn(|| m.poll_action()).collect::<Vec<_>>();
        let claims_version = |actions: &[Action]| {
            actions.iter().find_map(|a| match a {
                Action::Claim { checks, .. } => Some(checks[0].1),
                _ => None,
            })
        };
        m.handle_view(view(0), t);
        let actions = drain(&mut m);
        assert!(matches!(actions[..], [Action::Publish(_)]), "{actions:?}");
        // The write landed: version 1.
        m.handle_view(view(1), t);
        let actions = drain(&mut m);
        assert_eq!(claims_version(&actions), Some(1), "{actions:?}");
        // The claim failed (b's znode changed meanwhile): our znode is as it was, so it is
        // not rewritten, and the claim is retried on the view that shows b's change.
        m.handle_view(
            View {
                members: vec![seen(candidate("a", 1, 9), 1), seen(candidate("b", 1, 7), 1)],
                epoch: 1,
                epoch_version: 4,
            },
            t,
        );
        assert_eq!(drain(&mut m), vec![], "nothing while claiming");
        m.handle_claimed(false, t, t);
        let actions = drain(&mut m);
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Publish(_))),
            "{actions:?}"
        );
        match &actions[..] {
            [Action::Claim { checks, .. }] => {
                assert_eq!(checks, &[("/g/a".to_string(), 1), ("/g/b".to_string(), 1)])
            }
            other => panic!("expected a fresh claim, got {other:?}"),
        }
    }

    /// Found by a real ZooKeeper group (a fresh group that never elected): a claim that fails
    /// because its view was stale must not be sent again from that same view — the driver
    /// would repeat it for ever without reading the group again.
    #[test]
    fn a_failed_claim_waits_for_a_fresh_view() {
        let t = Instant::now();
        let mut m = Machine::new(config("a"), Position { epoch: 1, index: 9 });
        m.handle_session(ZkSession::Connected, t);
        let stale = View {
            members: vec![seen(candidate("a", 1, 9), 0), seen(candidate("b", 1, 7), 0)],
            epoch: 1,
            epoch_version: 4,
        };
        m.handle_view(stale.clone(), t);
        while m.poll_action().is_some() {}
        m.handle_view(stale.clone(), t);
        let _ = m.poll_action();
        assert!(
            matches!(m.role(), ElectionRole::Claiming { .. }),
            "{:?}",
            m.role()
        );
        m.handle_claimed(false, t, t);
        assert_eq!(
            m.poll_action(),
            None,
            "no second claim from the same stale view"
        );
        let mut fresh = stale;
        fresh.members[1].version = 1;
        m.handle_view(fresh, t);
        match m.poll_action() {
            Some(Action::Claim { checks, .. }) => assert_eq!(checks[1].1, 1),
            other => panic!("expected a claim from the fresh view, got {other:?}"),
        }
    }

    /// Found by the simulation, before this fix. 3 members, seed 5: m2 crashed and restarted
    /// within the session timeout while m0 and m1, which held the last receipted writes, were
    /// paused and lost their sessions; the znodes of m2's old and new sessions made "two
    /// candidates", and m2 claimed epoch 3 alone, without the writes m1 had receipted with
    /// m0's acknowledgement. The driver now leaves our own older znodes out of the view, but
    /// not another member's: 5 members, seed 9, m0 claimed epoch 4 on {m0, m4's old znode,
    /// m4's new one} — "three" candidates, two members — without the writes m3 had receipted.
    #[test]
    fn a_member_with_two_znodes_is_one_vote_and_waits_for_the_old_one_to_go() {
        let t = Instant::now();
        let five = Config {
            replicas: 5,
            ..config("a")
        };
        let mut m = Machine::new(five, Position { epoch: 1, index: 9 });
        m.handle_session(ZkSession::Connected, t);
        let mut old_b = seen(candidate("b", 1, 7), 2);
        old_b.path = "/g/b-old".into();
        let view = |members: Vec<Seen>| View {
            members,
            epoch: 1,
            epoch_version: 0,
        };
        m.handle_view(view(vec![seen(candidate("a", 1, 9), 0)]), t);
        while m.poll_action().is_some() {}
        let no_claim = |m: &mut Machine| {
            std::iter::from_fn(|| m.poll_action()).all(|a| !matches!(a, Action::Claim { .. }))
        };
        let a = seen(candidate("a", 1, 9), 1);
        let b = seen(candidate("b", 1, 7), 0);
        m.handle_view(view(vec![a.clone(), old_b.clone(), b.clone()]), t);
        assert!(no_claim(&mut m), "two members are not a quorum of 5");
        let c = seen(candidate("c", 1, 5), 0);
        m.handle_view(view(vec![a.clone(), old_b, b.clone(), c.clone()]), t);
        assert!(
            no_claim(&mut m),
            "b's old session may hold a stale position"
        );
        m.handle_view(view(vec![a, b, c]), t);
        assert!(matches!(m.poll_action(), Some(Action::Claim { .. })));
    }

    #[test]
    fn a_master_resigns_when_its_session_expires_or_contact_is_lost_too_long() {
        let t = Instant::now();
        let mut m = Machine::new(config("a"), Position { epoch: 1, index: 9 });
        m.handle_session(ZkSession::Connected, t);
        // Our candidacy is written, then claimed on the view that shows it.
        for version in [0, 1] {
            m.handle_view(
                View {
                    members: vec![
                        seen(candidate("a", 1, 9), version),
                        seen(candidate("b", 1, 7), 0),
                    ],
                    epoch: 1,
                    epoch_version: 0,
                },
                t,
            );
            while m.poll_action().is_some() {}
        }
        m.handle_claimed(true, t, t);
        assert!(matches!(m.role(), ElectionRole::Master { epoch: 2 }));
        while m.poll_action().is_some() {}
        m.handle_session(ZkSession::Disconnected, t);
        assert!(!m.may_commit(t), "no commits while disconnected");
        m.handle_tick(t + Duration::from_millis(3600));
        assert!(matches!(m.poll_action(), Some(Action::Resign { .. })));
        assert_eq!(m.role(), &ElectionRole::Resigning);
    }

    /// Claims epoch 2 for `a` (position 1:9) on a view of a, b and c, and drains the actions.
    fn master_a(t: Instant) -> Machine {
        let mut m = Machine::new(config("a"), Position { epoch: 1, index: 9 });
        m.handle_session(ZkSession::Connected, t);
        for version in [0, 1] {
            m.handle_view(
                View {
                    members: vec![
                        seen(candidate("a", 1, 9), version),
                        seen(candidate("b", 1, 7), 0),
                        seen(candidate("c", 1, 7), 0),
                    ],
                    epoch: 1,
                    epoch_version: 0,
                },
                t,
            );
            while m.poll_action().is_some() {}
        }
        m.handle_claimed(true, t, t);
        assert!(matches!(m.role(), ElectionRole::Master { epoch: 2 }));
        while m.poll_action().is_some() {}
        m
    }

    /// Check quorum: a master that hears from no quorum of followers for `quorum_timeout`
    /// steps down while ZooKeeper still backs it, and announces itself withdrawn — so the
    /// others, whose positions are lower than its unreplicated tail, can elect one of them.
    #[test]
    fn a_master_without_a_quorum_of_followers_steps_down_and_withdraws() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut m = master_a(t);
        // Followers keep in touch, and ZooKeeper renews the lease: it stays master.
        for k in 1..=20 {
            let now = t + ms(500 * k);
            m.handle_lease(now, now);
            m.handle_quorum_contact(now, now);
            m.handle_tick(now);
            assert_eq!(m.poll_action(), None, "resigned with a quorum at {k}");
        }
        // Cut from its followers at 10 s; ZooKeeper still answers.
        let cut = t + ms(10_000);
        let mut resigned_at = None;
        for k in 1..=60 {
            let now = cut + ms(100 * k);
            m.handle_lease(now, now);
            m.handle_tick(now);
            if let Some(a) = m.poll_action() {
                match a {
                    Action::Resign { reason } => assert!(reason.contains("quorum"), "{reason}"),
                    other => panic!("expected a resignation, got {other:?}"),
                }
                resigned_at = Some(now);
                break;
            }
            assert!(m.may_commit(now), "the lease holds while it is master");
        }
        let resigned_at = resigned_at.expect("stepped down");
        assert_eq!(
            resigned_at - cut,
            ms(4000),
            "after quorum_timeout and two session timeouts, not before"
        );
        assert!(!m.may_commit(resigned_at));
        // The term ended: its journal has an unreplicated tail, the highest position.
        let tail = Position {
            epoch: 2,
            index: 30,
        };
        m.handle_stopped(tail, resigned_at);
        match m.poll_action() {
            Some(Action::Publish(a)) => {
                assert_eq!(a.phase, Phase::Withdrawn);
                assert_eq!(a.position, tail);
            }
            other => panic!("expected to announce the withdrawal, got {other:?}"),
        }
        let withdrawn = m.announce();
        let others = |b: Announce| View {
            members: vec![
                seen(withdrawn.clone(), 5),
                seen(b, 1),
                seen(candidate("c", 2, 20), 1),
            ],
            epoch: 2,
            epoch_version: 1,
        };
        // It never claims while withdrawn, though its position is the highest.
        m.handle_view(others(candidate("b", 2, 21)), resigned_at);
        assert_eq!(m.poll_action(), None);
        // b, the best of the others, claims without waiting for it.
        let mut b = Machine::new(
            config("b"),
            Position {
                epoch: 2,
                index: 21,
            },
        );
        b.handle_session(ZkSession::Connected, resigned_at);
        b.handle_view(others(candidate("b", 2, 21)), resigned_at);
        assert!(matches!(b.poll_action(), Some(Action::Publish(_))));
        b.handle_view(others(candidate("b", 2, 21)), resigned_at);
        match b.poll_action() {
            Some(Action::Claim { epoch, checks, .. }) => {
                assert_eq!(epoch, 3);
                assert_eq!(checks.len(), 3, "every znode's version is checked");
            }
            other => panic!("expected b to claim, got {other:?}"),
        }
        // Once b masters epoch 3, a is an ordinary member again and follows it.
        let mut b_master = candidate("b", 3, 21);
        b_master.phase = Phase::Master;
        m.handle_view(
            View {
                members: vec![
                    seen(withdrawn.clone(), 5),
                    seen(b_master, 2),
                    seen(candidate("c", 2, 20), 1),
                ],
                epoch: 3,
                epoch_version: 2,
            },
            resigned_at,
        );
        assert!(!m.withdrawn());
        match m.poll_action() {
            Some(Action::Publish(a)) => assert_eq!(a.phase, Phase::Following),
            other => panic!("expected to announce following, got {other:?}"),
        }
        assert!(matches!(
            m.poll_action(),
            Some(Action::Follow { epoch: 3, .. })
        ));
    }

    /// A withdrawal ends by itself after as long again when nobody was elected (the others
    /// went away meanwhile): the member stands again.
    #[test]
    fn a_withdrawal_ends_when_nobody_was_elected_meanwhile() {
        let t = Instant::now();
        let mut m = master_a(t);
        let lost = t + Duration::from_secs(4);
        m.handle_lease(lost, lost);
        m.handle_tick(lost);
        assert!(matches!(m.poll_action(), Some(Action::Resign { .. })));
        m.handle_stopped(Position { epoch: 2, index: 9 }, lost);
        assert!(matches!(m.poll_action(), Some(Action::Publish(a)) if a.phase == Phase::Withdrawn));
        m.handle_tick(lost + Duration::from_millis(3900));
        assert_eq!(m.poll_action(), None, "still withdrawn");
        m.handle_tick(lost + Duration::from_secs(4));
        assert!(!m.withdrawn());
        assert!(matches!(m.poll_action(), Some(Action::Publish(a)) if a.phase == Phase::Candidate));
    }

    /// Followers that died leave ZooKeeper: nobody could be elected without the master, so it
    /// stays master (its writes refused for want of a quorum) until they are back — and steps
    /// down only if they register again yet still cannot reach it.
    #[test]
    fn a_master_whose_followers_are_dead_stays_master() {
        let t = Instant::now();
        let mut m = master_a(t);
        let mut me = candidate("a", 2, 9);
        me.phase = Phase::Master;
        let view = |members: Vec<Seen>| View {
            members,
            epoch: 2,
            epoch_version: 1,
        };
        m.handle_view(view(vec![seen(me.clone(), 2)]), t);
        for k in 1..=100 {
            let now = t + Duration::from_millis(100 * k);
            m.handle_lease(now, now);
            m.handle_tick(now);
            assert_eq!(
                m.poll_action(),
                None,
                "stepped down at {k} with nobody to elect"
            );
        }
        let back = t + Duration::from_secs(10);
        m.handle_view(
            view(vec![seen(me.clone(), 2), seen(candidate("b", 1, 7), 0)]),
            back,
        );
        m.handle_tick(back);
        assert_eq!(m.poll_action(), None, "one other cannot elect");
        m.handle_view(
            view(vec![
                seen(me, 2),
                seen(candidate("b", 1, 7), 0),
                seen(candidate("c", 1, 7), 0),
            ]),
            back,
        );
        m.handle_tick(back);
        assert!(matches!(m.poll_action(), Some(Action::Resign { .. })));
    }

    /// Without check quorum (a `local_*` sync mode) a master serves on alone.
    #[test]
    fn a_master_whose_commits_need_no_followers_keeps_serving_without_them() {
        let t = Instant::now();
        let mut m = Machine::new(
            Config {
                quorum_timeout: None,
                ..config("a")
            },
            Position { epoch: 1, index: 9 },
        );
        m.handle_session(ZkSession::Connected, t);
        for version in [0, 1] {
            m.handle_view(
                View {
                    members: vec![
                        seen(candidate("a", 1, 9), version),
                        seen(candidate("b", 1, 7), 0),
                    ],
                    epoch: 1,
                    epoch_version: 0,
                },
                t,
            );
            while m.poll_action().is_some() {}
        }
        m.handle_claimed(true, t, t);
        while m.poll_action().is_some() {}
        for k in 1..=100 {
            let now = t + Duration::from_millis(200 * k);
            m.handle_lease(now, now);
            m.handle_tick(now);
            assert_eq!(m.poll_action(), None);
        }
        assert!(matches!(m.role(), ElectionRole::Master { epoch: 2 }));
    }
}
