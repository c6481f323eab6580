//! The replication protocol without I/O: what a master decides about its followers and what a
//! follower decides about its master's stream, as two state machines in the style of
//! `ha/machine.rs` (inputs in, decisions out, time passed in).
//!
//! Owns: [`MasterMachine`] — who is admitted (token, member, epoch), where each follower's
//! stream starts (match point, vouching, snapshot), what each acknowledgement proves (never
//! above what its link was sent), what may commit (the `needed`-th highest acknowledgement of
//! distinct members, never past what the master holds, never below its epoch's first record),
//! when a quorum was last heard from (check quorum) — and [`FollowerMachine`]: how to start a
//! stream ([`plan_start`]), whether records of a master may be taken (never from an epoch
//! older than the newest seen), and what to acknowledge (what is durable here, and an answer to
//! each heartbeat). Must not touch: sockets, clocks, files or the journal: the drivers
//! (`master.rs`, `follower.rs`, and the group simulation `ha/sim/`) feed in what they
//! received and what their journal did, as numbers and [`EpochHistory`]s, and carry out the
//! answers. Nothing here knows what a record holds.
//!
//! Invariants: a follower's acknowledgement counts only up to what its link was sent, and a
//! follower's claim to hold records of this term only up to what that member acknowledged in
//! this term; one member is one replica however many links it opens; a commit index is at least
//! the epoch's first record and at most what the master holds; a follower takes nothing from
//! a master of an epoch older than the newest it has seen, and acknowledges only what its
//! driver reported durable.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use super::proto;
use super::FollowerStatus;
use crate::store::EpochHistory;

/// Why a master refused a replication peer or cut its link: the `reason` label of
/// `meshmq_replication_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The first message was not a hello (or came late, too large or undecodable).
    NoHello,
    /// Too many connections were already waiting for their hello.
    Busy,
    /// A hello without a token.
    NoToken,
    /// A hello whose token is not the group's.
    WrongToken,
    /// A hello naming no member of the group that may follow (or the master itself).
    UnknownMember,
    /// A follower that has seen a newer epoch than this master's.
    OldEpoch,
    /// An acknowledgement above the last index sent on the link.
    AckBeyondSent,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::NoHello => "no_hello",
            Refusal::Busy => "busy",
            Refusal::NoToken => "no_token",
            Refusal::WrongToken => "wrong_token",
            Refusal::UnknownMember => "unknown_member",
            Refusal::OldEpoch => "old_epoch",
            Refusal::AckBeyondSent => "ack_beyond_sent",
        }
    }
}

/// At most this much of a peer's claimed member name goes into a log line.
pub fn shown(member: &str) -> &str {
    match member.char_indices().nth(64) {
        Some((end, _)) => &member[..end],
        None => member,
    }
}

/// True when `offered` is the group's token; a master without one admits nobody. Constant
/// time in the token's bytes: a peer learns nothing from how long a refusal takes.
pub fn token_matches(expected: Option<&str>, offered: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    match expected {
        Some(t) if !t.is_empty() => t.as_bytes().ct_eq(offered.as_bytes()).into(),
        _ => false,
    }
}

/// The highest index `needed` followers all hold.
pub fn quorum_index(acks: &mut [u64], needed: usize) -> Option<u64> {
    if needed == 0 {
        return Some(u64::MAX);
    }
    if acks.len() < needed {
        return None;
    }
    acks.sort_unstable_by(|a, b| b.cmp(a));
    Some(acks[needed - 1])
}

pub fn epochs_to_proto(h: &EpochHistory) -> Vec<proto::EpochStart> {
    h.starts()
        .iter()
        .map(|&(epoch, first)| proto::EpochStart { epoch, first })
        .collect()
}

pub fn epochs_from_proto(list: &[proto::EpochStart]) -> EpochHistory {
    EpochHistory::from_starts(list.iter().map(|e| (e.epoch, e.first)))
}

/// What a master's term is.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    pub epoch: u64,
    /// The index of this epoch's first record.
    pub epoch_start: u64,
    /// Followers that must hold a record before it commits.
    pub needed: usize,
    /// The group's replication token; without one nobody is admitted.
    pub token: Option<String>,
    /// The group's members other than this one: the only names a follower may log in as.
    pub peers: Vec<String>,
}

/// A refusal and the reason given to the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub reason: Refusal,
    pub why: String,
}

/// Where an admitted follower's stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPlan {
    /// The last record both hold (as far as this master believes the follower).
    pub matched: u64,
    /// The first record sent.
    pub from: u64,
    /// The follower starts over from the master's checkpoint (it lacks collected records).
    pub snapshot: bool,
}

/// One follower session (one link) as the master sees it.
#[derive(Debug)]
struct Session {
    member: String,
    /// Every record up to it is held by the follower.
    acked: u64,
    /// When the master last heard from it (a follower answers every heartbeat).
    heard: Instant,
    /// The highest index sent on this link: no acknowledgement may go above it.
    sent_up_to: u64,
    /// The next record to send.
    next: u64,
}

/// The master's side of replication for one term.
#[derive(Debug)]
pub struct MasterMachine {
    config: MasterConfig,
    /// Started sessions.
    sessions: HashMap<u64, Session>,
    /// The live link (session) of each member: a second one replaces the first.
    links: HashMap<String, u64>,
    /// The highest index each member acknowledged on any link of this term (acknowledgements
    /// are bounded by what was sent): how far its claim to hold this term's records is believed.
    vouched: HashMap<String, u64>,
    next_session: u64,
}

impl MasterMachine {
    pub fn new(config: MasterConfig) -> MasterMachine {
        MasterMachine {
            config,
            sessions: HashMap::new(),
            links: HashMap::new(),
            vouched: HashMap::new(),
            next_session: 1,
        }
    }

    pub fn config(&self) -> &MasterConfig {
        &self.config
    }

    /// Whether a hello is let in: the token first (a stranger learns nothing about the
    /// group's members), then the member's name, then its epoch.
    pub fn check_hello(&self, hello: &proto::Hello) -> Result<(), Refused> {
        let c = &self.config;
        if !token_matches(c.token.as_deref(), &hello.token) {
            let (reason, why) = if hello.token.is_empty() {
                (Refusal::NoToken, "no replication token")
            } else {
                (Refusal::WrongToken, "wrong replication token")
            };
            return Err(Refused {
                reason,
                why: why.into(),
            });
        }
        if !c.peers.contains(&hello.member) {
            return Err(Refused {
                reason: Refusal::UnknownMember,
                why: format!(
                    "{:?} is not a member of this group that may follow its master",
                    shown(&hello.member)
                ),
            });
        }
        if hello.seen_epoch > c.epoch {
            return Err(Refused {
                reason: Refusal::OldEpoch,
                why: format!(
                    "this master's epoch {} is older than epoch {} the follower has seen",
                    c.epoch, hello.seen_epoch
                ),
            });
        }
        Ok(())
    }

    /// A new session's id (the driver pins the journal under it before it looks at it).
    pub fn new_session(&mut self) -> u64 {
        let id = self.next_session;
        self.next_session += 1;
        id
    }

    /// Where the stream of an admitted follower starts, given the master's journal: its
    /// epochs, its last record and its oldest retained record. The follower's claim to hold
    /// records of this term counts only as far as this member acknowledged them before (what
    /// it holds beyond that is cut and sent again); records of earlier terms are matched by
    /// their epochs and never commit on their own.
    pub fn plan_stream(
        &self,
        hello: &proto::Hello,
        mine: &EpochHistory,
        master_last: u64,
        first: u64,
    ) -> StreamPlan {
        let theirs = epochs_from_proto(&hello.epochs);
        let vouched = self
            .vouched
            .get(&hello.member)
            .copied()
            .unwrap_or(0)
            .max(self.config.epoch_start.saturating_sub(1));
        let matched = mine
            .match_point(master_last, &theirs, hello.last_index)
            .min(vouched);
        let (from, snapshot) = if matched + 1 < first {
            (first, true)
        } else {
            (matched + 1, false)
        };
        StreamPlan {
            matched,
            from,
            snapshot,
        }
    }

    /// Makes `session` the live link of `member`; returns the session it replaces, which the
    /// driver closes.
    pub fn open_link(&mut self, member: &str, session: u64) -> Option<u64> {
        self.links
            .insert(member.to_string(), session)
            .filter(|&old| old != session)
    }

    /// The start was sent: the session counts from now, as holding what precedes `from`.
    pub fn handle_started(&mut self, session: u64, member: &str, from: u64, now: Instant) {
        self.sessions.insert(
            session,
            Session {
                member: member.to_string(),
                acked: from.saturating_sub(1),
                heard: now,
                sent_up_to: from.saturating_sub(1),
                next: from,
            },
        );
    }

    /// The next record `session` is to be sent (`None` once it is closed).
    pub fn next_to_send(&self, session: u64) -> Option<u64> {
        self.sessions.get(&session).map(|s| s.next)
    }

    /// Records `first..first + count` leave on `session` (reported before they are written:
    /// the follower's ack may beat the write's return).
    pub fn handle_sent(&mut self, session: u64, first: u64, count: u64) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.sent_up_to = s.sent_up_to.max(first + count.saturating_sub(1));
            s.next = s.next.max(first + count);
        }
    }

    /// A follower acknowledges every record up to `index`. An acknowledgement above what
    /// its link was sent is a protocol violation: the driver closes the link, uncounted.
    pub fn handle_ack(&mut self, session: u64, index: u64, now: Instant) -> Result<(), Refused> {
        let Some(s) = self.sessions.get_mut(&session) else {
            return Ok(());
        };
        let bound = s.sent_up_to;
        if index > bound {
            return Err(Refused {
                reason: Refusal::AckBeyondSent,
                why: format!(
                    "acknowledged index {index}, above {bound}, the last sent on this link"
                ),
            });
        }
        s.acked = s.acked.max(index);
        s.heard = now;
        let v = self.vouched.entry(s.member.clone()).or_insert(0);
        *v = (*v).max(index);
        Ok(())
    }

    /// A session ended: it no longer counts (nor does its member's link, unless a newer one
    /// replaced it).
    pub fn handle_closed(&mut self, session: u64, member: &str) {
        self.sessions.remove(&session);
        if self.links.get(member) == Some(&session) {
            self.links.remove(member);
        }
    }

    /// The highest ack of each follower member: a member with two sessions (it reconnected
    /// before its old session ended) is one replica, never two.
    pub fn member_acks(&self) -> BTreeMap<String, u64> {
        let mut by_member = BTreeMap::new();
        for s in self.sessions.values() {
            let best = by_member.entry(s.member.clone()).or_insert(0);
            *best = (*best).max(s.acked);
        }
        by_member
    }

    /// What may be committed now that this member holds every record up to `held` (and its
    /// lease holds: the driver asks only then); `None` while too few followers acknowledged
    /// a record of this epoch.
    pub fn commit_index(&self, held: u64) -> Option<u64> {
        let mut acks: Vec<u64> = self.member_acks().into_values().collect();
        let commit = quorum_index(&mut acks, self.config.needed)?.min(held);
        (commit >= self.config.epoch_start).then_some(commit)
    }

    /// Followers (members) holding every record up to `index`.
    pub fn count_at_least(&self, index: u64) -> usize {
        self.member_acks()
            .values()
            .filter(|acked| **acked >= index)
            .count()
    }

    /// Whether `needed` followers hold this epoch's first record.
    pub fn caught_up(&self) -> bool {
        self.count_at_least(self.config.epoch_start) >= self.config.needed
    }

    /// The latest time at which `needed` distinct followers had all been heard from (`now`
    /// when none are needed; `None` while fewer are connected): what check quorum needs.
    pub fn quorum_contact(&self, now: Instant) -> Option<Instant> {
        let needed = self.config.needed;
        if needed == 0 {
            return Some(now);
        }
        let mut by_member: HashMap<&str, Instant> = HashMap::new();
        for s in self.sessions.values() {
            let t = by_member.entry(&s.member).or_insert(s.heard);
            *t = (*t).max(s.heard);
        }
        let mut heard: Vec<Instant> = by_member.into_values().collect();
        heard.sort_unstable_by(|a, b| b.cmp(a));
        heard.get(needed - 1).copied()
    }

    /// Each follower member, with what it lacks of a journal ending at `last`.
    pub fn followers(&self, last: u64) -> Vec<FollowerStatus> {
        self.member_acks()
            .into_iter()
            .map(|(member, acked)| FollowerStatus {
                member,
                lag: last.saturating_sub(acked),
                acked,
            })
            .collect()
    }
}

/// What a follower does with its master's `Start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPlan {
    /// Our journal ends right before the stream: append it.
    Append,
    /// Our tail diverged from the master's: keep records up to `keep`, then append.
    CutAfter { keep: u64 },
    /// Too far behind: discard the journal and start over from the master's snapshot.
    Snapshot,
}

/// Checks the master's `start` against the last record this follower holds: a stream from
/// record 0 (records are numbered from 1) or past our end without a snapshot (a gap) is a
/// protocol violation — the link closes with it and the journal is left as it was.
pub fn plan_start(start: &proto::Start, last: u64) -> Result<StartPlan, String> {
    if start.from == 0 {
        return Err(format!(
            "the master's stream (snapshot: {}) starts at record 0, but records are numbered \
             from 1",
            start.snapshot
        ));
    }
    if start.snapshot {
        return Ok(StartPlan::Snapshot);
    }
    if start.from <= last {
        return Ok(StartPlan::CutAfter {
            keep: start.from - 1,
        });
    }
    if start.from > last.saturating_add(1) {
        return Err(format!(
            "the master's stream starts at record {}, past this journal's end at record \
             {last}, without a snapshot",
            start.from
        ));
    }
    Ok(StartPlan::Append)
}

/// Why a follower stops taking its master's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// The master's epoch is older than the newest this member has seen.
    Refused(String),
    /// The master broke the protocol.
    Protocol(String),
}

/// The follower's side of one stream from its master.
#[derive(Debug, Default)]
pub struct FollowerMachine {
    /// The master's epoch, once the stream started.
    epoch: Option<u64>,
    /// The last record taken from the stream (or held before it: what precedes `from`).
    appended: u64,
    /// The highest index acknowledged.
    acked: u64,
    /// The next acknowledgement goes out even if it says nothing new (a heartbeat came, or an
    /// install keeps the reading side busy).
    answer: bool,
    /// A checkpoint from the master installs: the heartbeats are not read meanwhile, so the
    /// follower answers on its own each tick.
    installing: bool,
}

impl FollowerMachine {
    pub fn new() -> FollowerMachine {
        FollowerMachine::default()
    }

    /// The master's epoch, once its start was taken.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// The last record taken (or held before the stream).
    pub fn appended(&self) -> u64 {
        self.appended
    }

    /// The master's answer to our hello, with `last` our journal's last record and `newest`
    /// the newest epoch this member has seen: how to start, or why not.
    pub fn handle_start(
        &mut self,
        start: &proto::Start,
        last: u64,
        newest: u64,
    ) -> Result<StartPlan, StreamError> {
        check_epoch(start.epoch, newest)?;
        let plan = plan_start(start, last).map_err(StreamError::Protocol)?;
        self.epoch = Some(start.epoch);
        self.appended = start.from - 1;
        Ok(plan)
    }

    /// Whether the stream may go on now that `newest` is the newest epoch this member has
    /// seen (it may see a newer one in the middle of a stream).
    pub fn check_newest(&self, newest: u64) -> Result<(), StreamError> {
        match self.epoch {
            Some(epoch) => check_epoch(epoch, newest),
            None => Ok(()),
        }
    }

    /// Records `first..first + count` arrived: `Ok` when the driver may append them.
    pub fn handle_records(
        &mut self,
        first: u64,
        count: u64,
        newest: u64,
    ) -> Result<(), StreamError> {
        if self.epoch.is_none() {
            return Err(StreamError::Protocol(
                "records before the start of the stream".into(),
            ));
        }
        self.check_newest(newest)?;
        self.appended = self.appended.max(first + count.saturating_sub(1));
        Ok(())
    }

    /// A heartbeat from the master: the next acknowledgement answers it.
    pub fn handle_heartbeat(&mut self) {
        self.answer = true;
    }

    /// What this member holds durably moved.
    pub fn handle_durable(&mut self) {
        self.answer = false;
    }

    /// The heartbeat interval passed without anything else.
    pub fn handle_tick(&mut self) {
        self.answer = self.installing;
    }

    /// A checkpoint from the master starts (`true`) or ends installing.
    pub fn set_installing(&mut self, installing: bool) {
        self.installing = installing;
    }

    /// The acknowledgement to send now, if any, given that every record up to `durable` is
    /// held here per the group's sync mode.
    pub fn poll_ack(&mut self, durable: u64) -> Option<u64> {
        let held = durable;
        if held > self.acked || self.answer {
            self.acked = self.acked.max(held);
            self.answer = false;
            return Some(held);
        }
        None
    }
}

/// Refuses a master of `epoch` when this member has seen a newer one.
pub fn check_epoch(epoch: u64, newest: u64) -> Result<(), StreamError> {
    if epoch < newest {
        return Err(StreamError::Refused(format!(
            "master of epoch {epoch} is older than epoch {newest} this member has seen"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const TOKEN: &str = "the-group-replication-token";

    /// A master of epoch 3 whose epoch starts at record 5, needing one of `f` and `g`.
    fn master() -> MasterMachine {
        MasterMachine::new(MasterConfig {
            epoch: 3,
            epoch_start: 5,
            needed: 1,
            token: Some(TOKEN.into()),
            peers: vec!["f".into(), "g".into()],
        })
    }

    fn hello(member: &str, epochs: &[(u64, u64)], last_index: u64) -> proto::Hello {
        proto::Hello {
            token: TOKEN.into(),
            member: member.into(),
            seen_epoch: 3,
            epochs: epochs
                .iter()
                .map(|&(epoch, first)| proto::EpochStart { epoch, first })
                .collect(),
            last_index,
        }
    }

    /// Admits `member` (journal as in `h`) to a master whose journal holds epoch 1 from 1 and
    /// epoch 3 from 5, up to `master_last`; returns the session and its plan.
    fn join(m: &mut MasterMachine, h: &proto::Hello, master_last: u64) -> (u64, StreamPlan) {
        m.check_hello(h).expect("admitted");
        let session = m.new_session();
        let mine = EpochHistory::from_starts([(1, 1), (3, 5)]);
        let plan = m.plan_stream(h, &mine, master_last, 1);
        m.open_link(&h.member, session);
        m.handle_started(session, &h.member, plan.from, Instant::now());
        (session, plan)
    }

    #[test]
    fn hellos_are_refused_for_token_member_and_epoch_in_that_order() {
        let m = master();
        let refused = |h: proto::Hello| m.check_hello(&h).err().map(|r| r.reason);
        let mut h = hello("f", &[], 0);
        assert_eq!(refused(h.clone()), None);
        h.seen_epoch = 4;
        assert_eq!(refused(h.clone()), Some(Refusal::OldEpoch));
        h.member = "x".into();
        assert_eq!(refused(h.clone()), Some(Refusal::UnknownMember));
        h.token = "nope".into();
        assert_eq!(refused(h.clone()), Some(Refusal::WrongToken));
        h.token.clear();
        assert_eq!(refused(h), Some(Refusal::NoToken));
    }

    #[test]
    fn a_stream_starts_after_the_match_point_believed_only_as_far_as_vouched() {
        let mut m = master();
        // Holds epoch 1 up to 4 like the master: the stream starts at 5.
        let (_, plan) = join(&mut m, &hello("f", &[(1, 1)], 4), 9);
        assert_eq!((plan.matched, plan.from, plan.snapshot), (4, 5, false));
        // Claims all of epoch 3 up to 9, never acknowledged: believed up to 4 only.
        let (s, plan) = join(&mut m, &hello("g", &[(1, 1), (3, 5)], 9), 9);
        assert_eq!(plan.from, 5);
        // Once it acknowledged 7 on a link, a new link believes up to 7.
        m.handle_sent(s, 5, 5);
        m.handle_ack(s, 7, Instant::now())
            .expect("within what was sent");
        m.handle_closed(s, "g");
        let (_, plan) = join(&mut m, &hello("g", &[(1, 1), (3, 5)], 9), 9);
        assert_eq!(plan.from, 8);
        // Lacking collected records: a snapshot from the oldest one held.
        let mine = EpochHistory::from_starts([(1, 1), (3, 5)]);
        let plan = m.plan_stream(&hello("f", &[], 0), &mine, 9, 3);
        assert_eq!((plan.from, plan.snapshot), (3, true));
    }

    #[test]
    fn an_ack_above_what_was_sent_is_refused_and_counts_nothing() {
        let mut m = master();
        let (s, _) = join(&mut m, &hello("f", &[(1, 1)], 4), 9);
        let refused = m.handle_ack(s, 5, Instant::now());
        assert_eq!(refused.map_err(|r| r.reason), Err(Refusal::AckBeyondSent));
        assert_eq!(m.commit_index(9), None);
        m.handle_sent(s, 5, 2);
        m.handle_ack(s, 6, Instant::now()).expect("sent");
        assert_eq!(m.commit_index(9), Some(6));
        // Never past what the master holds itself.
        assert_eq!(m.commit_index(5), Some(5));
    }

    #[test]
    fn commits_need_distinct_members_and_this_epochs_first_record() {
        let mut m = MasterMachine::new(MasterConfig {
            needed: 2,
            ..master().config().clone()
        });
        let (a, _) = join(&mut m, &hello("f", &[(1, 1)], 4), 9);
        // A second link of `f` replaces the first, and one member is one replica.
        let (b, _) = join(&mut m, &hello("f", &[(1, 1)], 4), 9);
        for s in [a, b] {
            m.handle_sent(s, 5, 5);
            m.handle_ack(s, 9, Instant::now()).expect("sent");
        }
        assert_eq!(m.commit_index(9), None);
        assert!(!m.caught_up());
        let (c, _) = join(&mut m, &hello("g", &[(1, 1)], 4), 9);
        // Records of an older epoch never commit on their own.
        m.handle_ack(c, 4, Instant::now()).expect("held before");
        assert_eq!(m.commit_index(9), None);
        m.handle_sent(c, 5, 1);
        m.handle_ack(c, 5, Instant::now()).expect("sent");
        assert_eq!(m.commit_index(9), Some(5));
        assert!(m.caught_up());
        assert_eq!(m.followers(9).len(), 2);
    }

    #[test]
    fn quorum_contact_is_when_the_needed_th_member_was_last_heard() {
        let mut m = MasterMachine::new(MasterConfig {
            needed: 2,
            ..master().config().clone()
        });
        let t0 = Instant::now();
        assert_eq!(m.quorum_contact(t0), None);
        let (f, _) = join(&mut m, &hello("f", &[(1, 1)], 4), 4);
        let (g, _) = join(&mut m, &hello("g", &[(1, 1)], 4), 4);
        let later = t0 + Duration::from_secs(5);
        m.handle_ack(f, 4, later).expect("held");
        m.handle_ack(g, 4, t0 + Duration::from_secs(2))
            .expect("held");
        assert_eq!(m.quorum_contact(later), Some(t0 + Duration::from_secs(2)));
        m.handle_closed(g, "g");
        assert_eq!(m.quorum_contact(later), None);
    }

    fn start(epoch: u64, from: u64) -> proto::Start {
        proto::Start {
            epoch,
            from,
            ..Default::default()
        }
    }

    #[test]
    fn a_follower_takes_no_stream_of_an_epoch_older_than_it_has_seen() {
        let mut f = FollowerMachine::new();
        assert!(matches!(
            f.handle_start(&start(3, 5), 4, 4),
            Err(StreamError::Refused(_))
        ));
        let mut f = FollowerMachine::new();
        assert_eq!(f.handle_start(&start(3, 5), 4, 3), Ok(StartPlan::Append));
        assert_eq!(f.handle_records(5, 2, 3), Ok(()));
        assert_eq!(f.appended(), 6);
        assert!(matches!(
            f.handle_records(7, 1, 4),
            Err(StreamError::Refused(_))
        ));
        assert!(f.check_newest(4).is_err());
        assert!(matches!(
            FollowerMachine::new().handle_records(1, 1, 0),
            Err(StreamError::Protocol(_))
        ));
    }

    #[test]
    fn a_follower_acknowledges_what_is_durable_and_answers_heartbeats() {
        let mut f = FollowerMachine::new();
        f.handle_start(&start(3, 5), 4, 3).expect("started");
        assert_eq!(f.poll_ack(4), Some(4));
        f.handle_records(5, 3, 3).expect("taken");
        // Appended but not durable: nothing new to say.
        f.handle_durable();
        assert_eq!(f.poll_ack(4), None);
        f.handle_durable();
        assert_eq!(f.poll_ack(6), Some(6));
        // A heartbeat is answered with what is held, once.
        f.handle_heartbeat();
        assert_eq!(f.poll_ack(6), Some(6));
        assert_eq!(f.poll_ack(6), None);
        // While a checkpoint installs, each tick answers; otherwise a tick says nothing.
        f.handle_tick();
        assert_eq!(f.poll_ack(6), None);
        f.set_installing(true);
        f.handle_tick();
        assert_eq!(f.poll_ack(6), Some(6));
    }
}
