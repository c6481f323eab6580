//! Journal replication: a master streams its journal's frames to each follower over TCP, the
//! followers append them verbatim and acknowledge what they hold, and the master commits
//! (lets receipts go) once `replicas/2` followers hold a record and its lease holds.
//!
//! Owns: the replication listener of a master term, one session per follower, and the
//! follower's client. Must not touch: elections (the driver decides who masters and follows) or
//! the broker. Invariants: a follower's journal is always a prefix of its master's — a follower
//! whose tail diverges (records the master does not have at that index and epoch) discards its
//! journal and copies the master's from its oldest retained record, with the checkpoint that
//! covers what came before; a follower refuses a master of an epoch older than the newest it
//! has seen, when the stream starts and before each append (its member may see a newer epoch
//! in the middle of a stream); the master commits an index only if it is at least its own
//! epoch's first record (so older records are committed through the new epoch, never on their
//! own).
//!
//! Trust: a master admits a follower only with the group's replication token (compared in
//! constant time) and a member name of the group other than its own, one link per member (a
//! second replaces the first). Only what the master can vouch for counts toward a quorum: an
//! acknowledgement above the last index sent on its link is a protocol violation that closes
//! the link uncounted, and a follower's claim (in its hello) to hold records of this term counts
//! only as far as that member acknowledged them on an earlier link — the rest is sent again.
//! Every refusal is logged with the peer and counted with a `reason`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::{self, EpochHistory, RawFrames, Store, StoreConfig, StoreError};

pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/meshmq.replication.rs"));
}

use proto::{to_follower, to_master, ToFollower, ToMaster};

/// The largest replication message accepted.
pub(crate) const MAX_MESSAGE: usize = 256 << 20;
/// The largest hello accepted: a stranger's first message costs at most this much memory
/// (room for thousands of terms of epoch history).
pub(crate) const MAX_HELLO: usize = 256 << 10;
/// Connections that may be waiting for their hello at once: a group has a handful of members,
/// so more than this is a stranger's flood, turned away at once (`reason="busy"`). With
/// `MAX_HELLO` this bounds what strangers on the replication port cost to 4 MiB.
const HANDSHAKES: usize = 16;
/// Records sent per message, about.
const BATCH_BYTES: usize = 512 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    #[error("replication link {peer}: {source}")]
    Io {
        peer: String,
        source: std::io::Error,
    },
    #[error("replication link {peer}: {detail}")]
    Protocol { peer: String, detail: String },
    #[error("refused by the master: {0}")]
    Refused(String),
    #[error("the journal is not a prefix of the master's; it was discarded to be copied again")]
    Resync,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What both ends agree on.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// The group's replication token; a master without one admits no follower.
    pub token: Option<String>,
    /// A link silent for three of these is dead.
    pub heartbeat: Duration,
}

/// The bytes of one message on the link: its length (u32, big-endian), then its encoding.
pub(crate) fn frame_msg(msg: &impl prost::Message) -> Vec<u8> {
    let len = msg.encoded_len();
    let mut buf = Vec::with_capacity(4 + len);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    msg.encode(&mut buf)
        .expect("a Vec grows to hold any message");
    buf
}

/// Writes one message with a single write: with `TCP_NODELAY` a separate length would go out
/// as a packet of its own and wake the peer twice.
async fn write_msg(
    s: &mut (impl AsyncWriteExt + Unpin),
    msg: &impl prost::Message,
) -> std::io::Result<()> {
    s.write_all(&frame_msg(msg)).await
}

/// Read buffer of each end of a link: a batch of records usually arrives in one read.
const READ_BUFFER: usize = 256 << 10;

async fn read_msg<M: prost::Message + Default>(
    s: &mut (impl AsyncReadExt + Unpin),
    peer: &str,
) -> Result<M, ReplError> {
    read_msg_within(s, peer, MAX_MESSAGE).await
}

/// Reads one message of at most `max` bytes; a longer one is refused from its length, before
/// anything is allocated for it.
pub(crate) async fn read_msg_within<M: prost::Message + Default>(
    s: &mut (impl AsyncReadExt + Unpin),
    peer: &str,
    max: usize,
) -> Result<M, ReplError> {
    let io = |source| ReplError::Io {
        peer: peer.to_string(),
        source,
    };
    let len = s.read_u32().await.map_err(io)? as usize;
    if len > max {
        return Err(ReplError::Protocol {
            peer: peer.to_string(),
            detail: format!("a message of {len} bytes is over the limit"),
        });
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await.map_err(io)?;
    M::decode(bytes::Bytes::from(buf)).map_err(|e| ReplError::Protocol {
        peer: peer.to_string(),
        detail: format!("undecodable message: {e}"),
    })
}

fn epochs_to_proto(h: &EpochHistory) -> Vec<proto::EpochStart> {
    h.starts()
        .iter()
        .map(|&(epoch, first)| proto::EpochStart { epoch, first })
        .collect()
}

pub(crate) fn epochs_from_proto(list: &[proto::EpochStart]) -> EpochHistory {
    EpochHistory::from_starts(list.iter().map(|e| (e.epoch, e.first)))
}

/// One follower as the master sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FollowerStatus {
    pub member: String,
    /// Every record up to it is held by the follower.
    pub acked: u64,
    /// Records the follower lacks.
    pub lag: u64,
}

/// Decides whether the master may commit now (its lease holds).
pub type LeaseCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// Why a master refused a replication peer or cut its link: the `reason` label of
/// `meshmq_replication_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
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
    fn label(self) -> &'static str {
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

    fn count(self) {
        metrics::counter!(crate::metrics::REPLICATION_REFUSED, "reason" => self.label())
            .increment(1);
    }
}

/// At most this much of a peer's claimed member name goes into a log line.
fn shown(member: &str) -> &str {
    match member.char_indices().nth(64) {
        Some((end, _)) => &member[..end],
        None => member,
    }
}

/// True when `offered` is the group's token; a master without one admits nobody. Constant
/// time in the token's bytes: a peer learns nothing from how long a refusal takes.
fn token_matches(expected: Option<&str>, offered: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    match expected {
        Some(t) if !t.is_empty() => t.as_bytes().ct_eq(offered.as_bytes()).into(),
        _ => false,
    }
}

/// One follower session as the master sees it.
struct Follower {
    member: String,
    acked: u64,
    heard: Instant,
}

/// The live link of one follower member.
struct Link {
    session: u64,
    peer: SocketAddr,
    stop: CancellationToken,
}

struct MasterShared {
    store: Store,
    epoch: u64,
    /// The index of this epoch's first record.
    epoch_start: u64,
    /// Followers that must hold a record before it commits.
    needed: usize,
    /// Commits wait for followers (remote_* / quorum_* modes).
    gated: bool,
    lease: LeaseCheck,
    options: LinkOptions,
    /// The group's members other than this one: the only names a follower may log in as.
    peers: Vec<String>,
    /// Each live session: its member, the highest index it acknowledged, and when the master
    /// last heard from it (a follower answers every heartbeat).
    followers: Mutex<HashMap<u64, Follower>>,
    /// The live link of each member: a second one replaces the first.
    links: Mutex<HashMap<String, Link>>,
    /// The highest index each member acknowledged on any link of this term (acknowledgements
    /// are bounded by what was sent): how far its claim to hold this term's records is believed.
    vouched: Mutex<HashMap<String, u64>>,
    /// Held while a commit is worked out and published.
    committing: Mutex<()>,
    changed: tokio::sync::Notify,
    next_session: AtomicU64,
    checkpoints: tokio::sync::watch::Sender<Option<Arc<store::proto::Checkpoint>>>,
}

/// The master's side of replication for one term.
#[derive(Clone)]
pub struct Master {
    shared: Arc<MasterShared>,
}

impl Master {
    /// Starts serving followers on `listener` and committing per the quorum rule. `peers` are
    /// the members that may follow (the group's others).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        listener: TcpListener,
        store: Store,
        epoch: u64,
        epoch_start: u64,
        needed: usize,
        gated: bool,
        lease: LeaseCheck,
        options: LinkOptions,
        peers: Vec<String>,
        stop: CancellationToken,
        tracker: &TaskTracker,
    ) -> Master {
        let (checkpoints, _) = tokio::sync::watch::channel(None);
        let shared = Arc::new(MasterShared {
            store: store.clone(),
            epoch,
            epoch_start,
            needed,
            gated,
            lease,
            options,
            peers,
            followers: Mutex::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
            vouched: Mutex::new(HashMap::new()),
            committing: Mutex::new(()),
            changed: tokio::sync::Notify::new(),
            next_session: AtomicU64::new(1),
            checkpoints,
        });
        {
            let s = shared.clone();
            store.set_on_checkpoint(Box::new(move |c| {
                s.checkpoints.send_replace(Some(Arc::new(c.clone())));
            }));
        }
        tracker.spawn(commit_loop(shared.clone(), stop.clone()));
        let t = tracker.clone();
        let s = shared.clone();
        let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
        tracker.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => a,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
                            Refusal::Busy.count();
                            tracing::warn!(%peer, reason = Refusal::Busy.label(), "replication peer refused: {HANDSHAKES} connections are already waiting for their hello");
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let s = s.clone();
                        let stop = stop.clone();
                        t.spawn(async move {
                            if let Err(e) = serve_follower(&s, stream, peer, handshake, stop).await {
                                tracing::info!(%peer, error = %e, "replication session ended");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "replication accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Master { shared }
    }

    /// Waits until `needed` followers hold this epoch's first record.
    pub async fn caught_up(&self) {
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.count_at_least(self.shared.epoch_start) >= self.shared.needed {
                return;
            }
            changed.await;
        }
    }

    /// The latest time at which `needed` distinct followers had all been heard from (now when
    /// none are needed; `None` while fewer are connected): what check quorum needs.
    pub fn quorum_contact(&self) -> Option<Instant> {
        let needed = self.shared.needed;
        if needed == 0 {
            return Some(Instant::now());
        }
        let mut by_member: HashMap<String, Instant> = HashMap::new();
        for f in self.shared.followers.lock().values() {
            let t = by_member.entry(f.member.clone()).or_insert(f.heard);
            *t = (*t).max(f.heard);
        }
        let mut heard: Vec<Instant> = by_member.into_values().collect();
        heard.sort_unstable_by(|a, b| b.cmp(a));
        heard.get(needed - 1).copied()
    }

    fn count_at_least(&self, index: u64) -> usize {
        self.shared
            .member_acks()
            .values()
            .filter(|acked| **acked >= index)
            .count()
    }

    pub fn epoch(&self) -> u64 {
        self.shared.epoch
    }

    /// Each connected follower, for `/status` and metrics.
    pub fn followers(&self) -> Vec<FollowerStatus> {
        let last = self.shared.store.journal().next_index().saturating_sub(1);
        self.shared
            .member_acks()
            .into_iter()
            .map(|(member, acked)| FollowerStatus {
                member,
                lag: last.saturating_sub(acked),
                acked,
            })
            .collect()
    }
}

impl MasterShared {
    /// Commits what `needed` followers and this member hold, if the lease holds. Called by
    /// each follower's session as its ack arrives (no hop to another task on the way to the
    /// receipts) and by the commit loop on local writes and lease ticks.
    fn commit(&self) {
        if !self.gated {
            return;
        }
        // One commit at a time, so the journal's hook sees commits in order.
        let _one = self.committing.lock();
        if !(self.lease)() {
            return;
        }
        let journal = self.store.journal();
        let written = journal.local_synced();
        let mut acks: Vec<u64> = self.member_acks().into_values().collect();
        if let Some(q) = quorum_index(&mut acks, self.needed) {
            let commit = q.min(written);
            if commit >= self.epoch_start {
                journal.publish_committed(commit);
            }
        }
    }

    /// The highest ack of each follower member: a member with two sessions (it reconnected
    /// before its old session ended) is one replica, never two.
    fn member_acks(&self) -> std::collections::BTreeMap<String, u64> {
        let mut by_member = std::collections::BTreeMap::new();
        for f in self.followers.lock().values() {
            let best = by_member.entry(f.member.clone()).or_insert(0);
            *best = (*best).max(f.acked);
        }
        by_member
    }
}

/// The highest index `needed` followers all hold.
fn quorum_index(acks: &mut [u64], needed: usize) -> Option<u64> {
    if needed == 0 {
        return Some(u64::MAX);
    }
    if acks.len() < needed {
        return None;
    }
    acks.sort_unstable_by(|a, b| b.cmp(a));
    Some(acks[needed - 1])
}

async fn commit_loop(s: Arc<MasterShared>, stop: CancellationToken) {
    let journal = s.store.journal().clone();
    let mut local = journal.watch_local();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Registered before looking, so an ack arriving meanwhile is not missed.
        let changed = s.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        // Marks the value seen, so `changed()` below waits for the next write.
        local.borrow_and_update();
        s.commit();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changed => {}
            r = local.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}

/// Answers a refused peer, logs and counts the refusal; the link is closed by the caller.
async fn refuse(
    wr: &mut (impl AsyncWriteExt + Unpin),
    peer: SocketAddr,
    member: &str,
    reason: Refusal,
    why: String,
) -> Result<(), ReplError> {
    reason.count();
    tracing::warn!(%peer, member = %shown(member), reason = reason.label(), "replication login refused: {why}");
    let msg = ToFollower {
        kind: Some(to_follower::Kind::Refused(why)),
    };
    let _ = write_msg(wr, &msg).await;
    Ok(())
}

async fn serve_follower(
    s: &Arc<MasterShared>,
    stream: TcpStream,
    peer: SocketAddr,
    handshake: tokio::sync::OwnedSemaphorePermit,
    stop: CancellationToken,
) -> Result<(), ReplError> {
    let peer_s = peer.to_string();
    let (mut rd, mut wr) = stream.into_split();
    // The hello is read unbuffered (a follower sends nothing else before its start): the read
    // buffer is given only to a follower that was let in.
    let first = tokio::time::timeout(
        s.options.heartbeat * 3,
        read_msg_within::<ToMaster>(&mut rd, &peer_s, MAX_HELLO),
    )
    .await;
    drop(handshake);
    let mut rd = tokio::io::BufReader::with_capacity(READ_BUFFER, rd);
    let hello = match first {
        Ok(Ok(ToMaster {
            kind: Some(to_master::Kind::Hello(h)),
        })) => h,
        other => {
            let detail = match other {
                Ok(Ok(_)) => "the first message is not a hello".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no hello in time".to_string(),
            };
            Refusal::NoHello.count();
            tracing::warn!(%peer, reason = Refusal::NoHello.label(), "replication peer refused: {detail}");
            return Err(ReplError::Protocol {
                peer: peer_s,
                detail,
            });
        }
    };
    let io = |source| ReplError::Io {
        peer: peer.to_string(),
        source,
    };
    // The token first: a stranger learns nothing about the group's members.
    if !token_matches(s.options.token.as_deref(), &hello.token) {
        let (reason, why) = if hello.token.is_empty() {
            (Refusal::NoToken, "no replication token")
        } else {
            (Refusal::WrongToken, "wrong replication token")
        };
        return refuse(&mut wr, peer, &hello.member, reason, why.into()).await;
    }
    if !s.peers.contains(&hello.member) {
        let why = format!(
            "{:?} is not a member of this group that may follow its master",
            shown(&hello.member)
        );
        return refuse(&mut wr, peer, &hello.member, Refusal::UnknownMember, why).await;
    }
    if hello.seen_epoch > s.epoch {
        let why = format!(
            "this master's epoch {} is older than epoch {} the follower has seen",
            s.epoch, hello.seen_epoch
        );
        return refuse(&mut wr, peer, &hello.member, Refusal::OldEpoch, why).await;
    }
    let journal = s.store.journal().clone();
    let session = s.next_session.fetch_add(1, Ordering::Relaxed);
    // Pin before looking at the oldest record, so it cannot go while we start.
    journal.pin(session, journal.first_index());
    let _unpin = scopeguard(journal.clone(), session);
    let mine = s.store.epochs();
    let master_last = journal.next_index().saturating_sub(1);
    let theirs = epochs_from_proto(&hello.epochs);
    // The follower's claim to hold records of this term counts only as far as this member
    // acknowledged them before (what it holds beyond that is cut and sent again); records of
    // earlier terms are matched by their epochs and never commit on their own.
    let vouched = s
        .vouched
        .lock()
        .get(&hello.member)
        .copied()
        .unwrap_or(0)
        .max(s.epoch_start.saturating_sub(1));
    let matched = mine
        .match_point(master_last, &theirs, hello.last_index)
        .min(vouched);
    let first = journal.first_index();
    let (from, snapshot) = if matched + 1 < first {
        (first, true)
    } else {
        (matched + 1, false)
    };
    journal.pin(session, from);
    let checkpoint = if snapshot {
        s.store
            .read_checkpoint()?
            .map(|c| c.encode_to_vec())
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    tracing::info!(
        member = %hello.member,
        follower_last = hello.last_index,
        matched,
        from,
        snapshot,
        "follower joined"
    );
    let start = ToFollower {
        kind: Some(to_follower::Kind::Start(proto::Start {
            epoch: s.epoch,
            from,
            snapshot,
            checkpoint: checkpoint.into(),
            epochs: epochs_to_proto(&mine),
        })),
    };
    let link_stop = stop.child_token();
    let replaced = s.links.lock().insert(
        hello.member.clone(),
        Link {
            session,
            peer,
            stop: link_stop.clone(),
        },
    );
    if let Some(old) = replaced {
        tracing::warn!(member = %hello.member, %peer, old_peer = %old.peer, "a second replication link of this member replaces the first");
        old.stop.cancel();
    }
    let _gone = FollowerGone(s.clone(), session, hello.member.clone());
    // The highest index sent on this link: no acknowledgement may go above it.
    let sent_up_to = Arc::new(AtomicU64::new(from.saturating_sub(1)));
    write_msg(&mut wr, &start).await.map_err(io)?;
    s.followers.lock().insert(
        session,
        Follower {
            member: hello.member.clone(),
            acked: from.saturating_sub(1),
            heard: Instant::now(),
        },
    );
    let acks_total =
        metrics::counter!(crate::metrics::REPLICATION_ACKS, "slave" => hello.member.clone());
    // Acks come in on their own task.
    let acks = {
        let s = s.clone();
        let peer_s = peer_s.clone();
        let journal = journal.clone();
        let sent_up_to = sent_up_to.clone();
        let member = hello.member.clone();
        async move {
            loop {
                match read_msg::<ToMaster>(&mut rd, &peer_s).await? {
                    ToMaster {
                        kind: Some(to_master::Kind::Ack(index)),
                    } => {
                        let bound = sent_up_to.load(Ordering::Acquire);
                        if index > bound {
                            Refusal::AckBeyondSent.count();
                            let detail = format!(
                                "acknowledged index {index}, above {bound}, the last sent on this link"
                            );
                            tracing::warn!(%peer, %member, reason = Refusal::AckBeyondSent.label(), "replication link closed: {detail}");
                            return Err(ReplError::Protocol {
                                peer: peer_s,
                                detail,
                            });
                        }
                        acks_total.increment(1);
                        if let Some(f) = s.followers.lock().get_mut(&session) {
                            f.acked = f.acked.max(index);
                            f.heard = Instant::now();
                        }
                        {
                            let mut vouched = s.vouched.lock();
                            let v = vouched.entry(member.clone()).or_insert(0);
                            *v = (*v).max(index);
                        }
                        journal.pin(session, index + 1);
                        s.commit();
                        s.changed.notify_waiters();
                    }
                    _ => {
                        return Err::<(), _>(ReplError::Protocol {
                            peer: peer_s,
                            detail: "unexpected message from a follower".into(),
                        })
                    }
                }
            }
        }
    };
    let mut next = from;
    let mut local = journal.watch_local();
    let mut checkpoints = s.checkpoints.subscribe();
    let mut pending_checkpoint: Option<Arc<store::proto::Checkpoint>> = None;
    let sends = async {
        let mut heartbeat = tokio::time::interval(s.options.heartbeat);
        heartbeat.tick().await;
        loop {
            let mut sent = false;
            // Seen: `changed()` below then waits for records written after this sweep.
            local.borrow_and_update();
            while let Some(frames) = journal.read_frames(next, BATCH_BYTES)? {
                let count = frames.count;
                // Raised before the records leave: the follower's ack may beat our return.
                sent_up_to.fetch_max(frames.first + count.saturating_sub(1), Ordering::Release);
                let msg = ToFollower {
                    kind: Some(to_follower::Kind::Records(proto::Records {
                        first: frames.first,
                        count,
                        frames: frames.bytes.into(),
                    })),
                };
                write_msg(&mut wr, &msg).await.map_err(io)?;
                next += count;
                sent = true;
            }
            if let Some(c) = pending_checkpoint.take() {
                if c.next_index <= next {
                    let msg = ToFollower {
                        kind: Some(to_follower::Kind::Checkpoint(c.encode_to_vec().into())),
                    };
                    write_msg(&mut wr, &msg).await.map_err(io)?;
                    sent = true;
                } else {
                    pending_checkpoint = Some(c);
                }
            }
            if sent {
                heartbeat.reset();
            }
            tokio::select! {
                r = local.changed() => if r.is_err() { return Ok::<(), ReplError>(()) },
                r = checkpoints.changed() => {
                    if r.is_err() { return Ok(()) }
                    pending_checkpoint = checkpoints.borrow_and_update().clone();
                }
                _ = heartbeat.tick() => {
                    let msg = ToFollower { kind: Some(to_follower::Kind::Heartbeat(next)) };
                    write_msg(&mut wr, &msg).await.map_err(io)?;
                }
            }
        }
    };
    tokio::select! {
        _ = link_stop.cancelled() => Ok(()),
        r = acks => r,
        r = sends => r,
    }
}

/// Unpins a session's records when it ends.
struct Unpinner(crate::store::Journal, u64);

impl Drop for Unpinner {
    fn drop(&mut self) {
        self.0.unpin(self.1);
    }
}

fn scopeguard(journal: crate::store::Journal, session: u64) -> Unpinner {
    Unpinner(journal, session)
}

/// Forgets a follower's session (and its member's link, unless a newer one replaced it) when
/// the session ends.
struct FollowerGone(Arc<MasterShared>, u64, String);

impl Drop for FollowerGone {
    fn drop(&mut self) {
        self.0.followers.lock().remove(&self.1);
        let mut links = self.0.links.lock();
        if links.get(&self.2).is_some_and(|l| l.session == self.1) {
            links.remove(&self.2);
        }
        drop(links);
        self.0.changed.notify_waiters();
    }
}

/// What a follower does with its master's `Start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartPlan {
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
pub(crate) fn plan_start(start: &proto::Start, last: u64) -> Result<StartPlan, String> {
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

/// Tests only: journal directories whose install work (a snapshot or a checkpoint from the
/// master) first sleeps this long, as on a slow disk.
#[cfg(test)]
static SLOW_INSTALLS: std::sync::Mutex<Vec<(std::path::PathBuf, Duration)>> =
    std::sync::Mutex::new(Vec::new());

#[cfg(test)]
fn slow_disk(dir: &std::path::Path) {
    let delay = SLOW_INSTALLS
        .lock()
        .expect("the slow-disk table")
        .iter()
        .find(|(d, _)| d == dir)
        .map(|(_, delay)| *delay);
    if let Some(delay) = delay {
        std::thread::sleep(delay);
    }
}

#[cfg(not(test))]
fn slow_disk(_: &std::path::Path) {}

/// Waits for `job` (blocking install work) while telling the master, every `every`, that
/// this follower is alive and holds `held`: it reads nothing meanwhile, so it cannot answer
/// heartbeats, and a master counts a follower silent for its check-quorum window as cut off —
/// an install on a slow disk can outlast that window. A failed write stops the answers, not
/// the job (the stream fails on the dead link after it).
async fn answering_while<T>(
    wr: &mut (impl AsyncWriteExt + Unpin),
    held: u64,
    every: Duration,
    job: tokio::task::JoinHandle<T>,
) -> Result<T, tokio::task::JoinError> {
    tokio::pin!(job);
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let mut answering = true;
    loop {
        tokio::select! {
            r = &mut job => return r,
            _ = tick.tick(), if answering => {
                let msg = ToMaster { kind: Some(to_master::Kind::Ack(held)) };
                answering = write_msg(wr, &msg).await.is_ok();
            }
        }
    }
}

/// What a follower needs to know.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    pub member: String,
    pub link: LinkOptions,
    /// The journal's configuration (to start over when told to).
    pub store: StoreConfig,
}

/// Follows the master at `master` until `stop`, the link dies, or the master refuses; the
/// journal (possibly replaced by a fresh copy) is handed back either way, with nothing
/// appended after this returns. `newest` is the newest epoch this member has seen, kept up to
/// date while the stream runs: once it is newer than the master's epoch, the stream ends with
/// [`ReplError::Refused`] and nothing more of it is appended — at its start or at any point.
pub async fn follow(
    opts: &FollowOptions,
    mut store: Store,
    master: SocketAddr,
    newest: tokio::sync::watch::Receiver<u64>,
    stop: CancellationToken,
) -> (Store, Result<(), ReplError>) {
    let result = follow_inner(opts, &mut store, master, newest, stop).await;
    (store, result)
}

/// Refuses a master of `epoch` when this member has seen a newer one.
fn check_epoch(epoch: u64, newest: &tokio::sync::watch::Receiver<u64>) -> Result<(), ReplError> {
    let seen = *newest.borrow();
    if epoch < seen {
        return Err(ReplError::Refused(format!(
            "master of epoch {epoch} is older than epoch {seen} this member has seen"
        )));
    }
    Ok(())
}

async fn follow_inner(
    opts: &FollowOptions,
    store: &mut Store,
    master: SocketAddr,
    mut newest: tokio::sync::watch::Receiver<u64>,
    stop: CancellationToken,
) -> Result<(), ReplError> {
    let seen_epoch = *newest.borrow_and_update();
    let peer = master.to_string();
    let io = |source| ReplError::Io {
        peer: master.to_string(),
        source,
    };
    let stream = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        r = tokio::time::timeout(opts.link.heartbeat * 3, TcpStream::connect(master)) => match r {
            Ok(r) => r.map_err(io)?,
            Err(_) => return Err(io(std::io::ErrorKind::TimedOut.into())),
        },
    };
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let mut rd = tokio::io::BufReader::with_capacity(READ_BUFFER, rd);
    let hello = ToMaster {
        kind: Some(to_master::Kind::Hello(proto::Hello {
            token: opts.link.token.clone().unwrap_or_default(),
            member: opts.member.clone(),
            seen_epoch,
            epochs: epochs_to_proto(&store.epochs()),
            last_index: store.journal().next_index().saturating_sub(1),
        })),
    };
    write_msg(&mut wr, &hello).await.map_err(io)?;
    let dead = opts.link.heartbeat * 3;
    let first = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        r = tokio::time::timeout(dead, read_msg::<ToFollower>(&mut rd, &peer)) => match r {
            Ok(r) => r?,
            Err(_) => return Err(io(std::io::ErrorKind::TimedOut.into())),
        },
    };
    let start = match first.kind {
        Some(to_follower::Kind::Start(s)) => s,
        Some(to_follower::Kind::Refused(why)) => return Err(ReplError::Refused(why)),
        _ => {
            return Err(ReplError::Protocol {
                peer,
                detail: "the master did not start the stream".into(),
            })
        }
    };
    let epoch = start.epoch;
    check_epoch(epoch, &newest)?;
    let last = store.journal().next_index().saturating_sub(1);
    let plan = plan_start(&start, last).map_err(|detail| ReplError::Protocol {
        peer: peer.clone(),
        detail,
    })?;
    let master_epochs = epochs_from_proto(&start.epochs);
    if let StartPlan::CutAfter { keep } = plan {
        // Our tail diverged from the master's: cut it at the match point, keeping everything
        // before it (committed records stay where a quorum needs them).
        let cfg = opts.store.clone();
        let old = store.clone();
        let cut = tokio::task::spawn_blocking(move || -> Result<Option<Store>, StoreError> {
            old.close();
            if !store::truncate_journal_after(&cfg.dir, keep, cfg.max_record)? {
                return Ok(None);
            }
            Store::open(cfg, false).map(|(s, _)| Some(s))
        })
        .await
        .map_err(|e| StoreError::Failed(format!("truncating the journal panicked: {e}")))??;
        match cut {
            Some(s) if s.journal().next_index() == start.from => {
                tracing::warn!(master = %master, had = last, kept = keep, "divergent tail cut");
                *store = s;
            }
            other => {
                // The checkpoint covers the divergent records (or the cut did not land where
                // asked): only a fresh copy is sound.
                let cfg = opts.store.clone();
                let old = other.unwrap_or_else(|| store.clone());
                *store = tokio::task::spawn_blocking(move || -> Result<Store, StoreError> {
                    old.close();
                    store::wipe_journal(&cfg.dir)?;
                    Store::open_empty_at(cfg, 1, EpochHistory::default())
                })
                .await
                .map_err(|e| {
                    StoreError::Failed(format!("resetting the journal panicked: {e}"))
                })??;
                tracing::warn!(master = %master, had = last, "journal discarded to be copied again");
                return Err(ReplError::Resync);
            }
        }
    } else if plan == StartPlan::Snapshot {
        // Too far behind: discard this journal and copy the master's from its checkpoint.
        let cfg = opts.store.clone();
        let old = store.clone();
        let checkpoint = (!start.checkpoint.is_empty())
            .then(|| store::proto::Checkpoint::decode(start.checkpoint.as_ref()))
            .transpose()
            .map_err(|e| ReplError::Protocol {
                peer: peer.clone(),
                detail: format!("undecodable checkpoint: {e}"),
            })?;
        let from = start.from;
        let epochs = master_epochs.clone();
        let install = tokio::task::spawn_blocking(move || -> Result<Store, StoreError> {
            slow_disk(&cfg.dir);
            old.close();
            store::wipe_journal(&cfg.dir)?;
            let mut covered = epochs.clone();
            covered.truncate_after(from - 1);
            let fresh = Store::open_empty_at(cfg, from, covered)?;
            if let Some(c) = checkpoint {
                fresh.install_checkpoint(&c)?;
            }
            Ok(fresh)
        });
        // The master counts this follower as holding what comes before `from` (the snapshot
        // covers it) from the start: answering with that claims nothing more.
        let fresh = answering_while(&mut wr, from - 1, opts.link.heartbeat, install)
            .await
            .map_err(|e| StoreError::Failed(format!("resetting the journal panicked: {e}")))??;
        *store = fresh;
        tracing::warn!(
            master = %master,
            had = last,
            from,
            "journal replaced by the master's snapshot"
        );
    }
    store.set_epochs(master_epochs);
    let journal = store.journal().clone();
    let mut local = journal.watch_local();
    let newest_at_append = newest.clone();
    // Every heartbeat is answered (with what we hold), so the master hears from an idle
    // follower too: its check quorum tells a silent link from a quiet one.
    let beat = tokio::sync::Notify::new();
    // Set while a checkpoint from the master installs: the receiving side reads no heartbeat
    // then, so the acknowledging side answers on its own every heartbeat interval (see
    // `answering_while`).
    let installing = std::sync::atomic::AtomicBool::new(false);
    let acks = async {
        let mut acked = 0;
        let mut answer = false;
        let mut tick = tokio::time::interval(opts.link.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = *local.borrow_and_update();
            if now > acked || answer {
                let msg = ToMaster {
                    kind: Some(to_master::Kind::Ack(now)),
                };
                write_msg(&mut wr, &msg).await.map_err(io)?;
                acked = acked.max(now);
            }
            tokio::select! {
                r = local.changed() => {
                    if r.is_err() {
                        return Ok::<(), ReplError>(());
                    }
                    answer = false;
                }
                _ = beat.notified() => answer = true,
                _ = tick.tick() => answer = installing.load(Ordering::Acquire),
            }
        }
    };
    let receive = async {
        loop {
            let msg = match tokio::time::timeout(dead, read_msg::<ToFollower>(&mut rd, &peer)).await
            {
                Ok(r) => r?,
                Err(_) => {
                    return Err(ReplError::Protocol {
                        peer: peer.clone(),
                        detail: format!("silent for {dead:?}"),
                    })
                }
            };
            match msg.kind {
                Some(to_follower::Kind::Records(r)) => {
                    // The member may have seen a newer epoch since the stream began.
                    check_epoch(epoch, &newest_at_append)?;
                    journal.append_frames(&RawFrames {
                        first: r.first,
                        count: r.count,
                        bytes: r.frames.to_vec(),
                    })?;
                }
                Some(to_follower::Kind::Checkpoint(bytes)) => {
                    let c = store::proto::Checkpoint::decode(bytes.as_ref()).map_err(|e| {
                        ReplError::Protocol {
                            peer: peer.clone(),
                            detail: format!("undecodable checkpoint: {e}"),
                        }
                    })?;
                    // The records it covers arrived before it, but may wait for the writer.
                    journal.wait_local(c.next_index.saturating_sub(1)).await?;
                    let st = store.clone();
                    installing.store(true, Ordering::Release);
                    let installed = tokio::task::spawn_blocking(move || {
                        slow_disk(st.dir());
                        st.install_checkpoint(&c)
                    })
                    .await;
                    installing.store(false, Ordering::Release);
                    installed
                        .map_err(|e| StoreError::Failed(format!("checkpoint panicked: {e}")))??;
                }
                Some(to_follower::Kind::Heartbeat(_)) => beat.notify_one(),
                Some(to_follower::Kind::Refused(why)) => return Err(ReplError::Refused(why)),
                Some(to_follower::Kind::Start(_)) | None => {
                    return Err(ReplError::Protocol {
                        peer: peer.clone(),
                        detail: "unexpected message in the stream".into(),
                    })
                }
            }
        }
    };
    let superseded = async {
        loop {
            if newest.changed().await.is_err() {
                return std::future::pending().await;
            }
            check_epoch(epoch, &newest)?;
        }
    };
    let started = Instant::now();
    let r = tokio::select! {
        _ = stop.cancelled() => Ok(()),
        r = acks => r,
        r = receive => r,
        r = superseded => r,
    };
    tracing::info!(master = %master, seconds = started.elapsed().as_secs_f64(), "stopped following");
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Durability;

    const TOKEN: &str = "the-group-replication-token";

    fn config(dir: &std::path::Path) -> StoreConfig {
        StoreConfig {
            dir: dir.to_path_buf(),
            segment_size: 1 << 20,
            store_limit: None,
            durability: Durability::Written,
            group_commit_window: Duration::ZERO,
            max_record: 1 << 20,
            memory_budget: 1 << 30,
        }
    }

    fn record(sequence: u64) -> store::proto::Record {
        store::proto::Record {
            kind: Some(store::proto::record::Kind::Added(
                store::proto::MessageAdded {
                    destination: "queue://q".into(),
                    sequence,
                    ..Default::default()
                },
            )),
            tx: 0,
        }
    }

    /// A member that learns of a newer epoch while it follows an older master (ZooKeeper
    /// shows a new election it is not part of yet) must not take one more record from it,
    /// or the old master could count it toward a quorum of a superseded epoch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_refuses_appends_from_an_older_epoch_in_the_middle_of_a_stream() {
        const GUARD: Duration = Duration::from_secs(30);
        let dir = tempfile::tempdir().expect("tempdir");
        let (master_store, _) =
            Store::open(config(&dir.path().join("master")), false).expect("master journal");
        master_store.journal().gate(GUARD);
        let epoch_start = master_store.begin_epoch(3);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (stop, tracker) = (CancellationToken::new(), TaskTracker::new());
        let link = LinkOptions {
            token: Some(TOKEN.into()),
            heartbeat: Duration::from_millis(500),
        };
        Master::start(
            listener,
            master_store.clone(),
            3,
            epoch_start,
            1,
            true,
            Arc::new(|| true),
            link.clone(),
            vec!["f".into()],
            stop.clone(),
            &tracker,
        );
        let follower_cfg = config(&dir.path().join("follower"));
        let (follower_store, _) = Store::open(follower_cfg.clone(), false).expect("journal");
        let (newest_tx, newest) = tokio::sync::watch::channel(3);
        let opts = FollowOptions {
            member: "f".into(),
            link,
            store: follower_cfg,
        };
        let following = tokio::spawn(async move {
            follow(
                &opts,
                follower_store,
                addr,
                newest,
                CancellationToken::new(),
            )
            .await
        });

        // Streaming works: a record of epoch 3 is committed through the follower's ack.
        let first = master_store.append(&record(1));
        tokio::time::timeout(GUARD, master_store.journal().wait_synced(first))
            .await
            .expect("the follower never acknowledged")
            .expect("commit");

        // The member sees epoch 4 while the stream of epoch 3 goes on.
        newest_tx.send(4).expect("the follow is running");
        let later = master_store.append(&record(2));
        let (follower_store, result) = tokio::time::timeout(GUARD, following)
            .await
            .expect("the follower kept following a master of an older epoch")
            .expect("the follow task");
        assert!(
            matches!(&result, Err(ReplError::Refused(why)) if why.contains("epoch 3")),
            "{result:?}"
        );
        assert!(
            follower_store.journal().next_index() <= later,
            "record {later} of epoch 3 was appended after epoch 4 was seen"
        );
        follower_store.close();
        stop.cancel();
        tracker.close();
        tracker.wait().await;
        master_store.close();
    }

    /// A master of epoch 3 that needs one follower (`f` or `g`) to commit, with no follower
    /// yet: what a rogue peer meets.
    struct Lone {
        _dir: tempfile::TempDir,
        store: Store,
        master: Master,
        addr: SocketAddr,
        stop: CancellationToken,
        tracker: TaskTracker,
    }

    impl Lone {
        async fn start(quorum_timeout: Duration) -> Lone {
            Lone::start_with(quorum_timeout, Duration::from_millis(200)).await
        }

        /// As `start`, with `heartbeat` for the links (a hello is awaited for three of them).
        async fn start_with(quorum_timeout: Duration, heartbeat: Duration) -> Lone {
            Lone::start_at(1, quorum_timeout, heartbeat).await
        }

        /// As `start_with`, with a journal whose oldest record is `first` (the ones before
        /// it collected): a follower with less must copy a snapshot.
        async fn start_at(first: u64, quorum_timeout: Duration, heartbeat: Duration) -> Lone {
            let dir = tempfile::tempdir().expect("tempdir");
            let cfg = config(&dir.path().join("master"));
            let store = if first == 1 {
                Store::open(cfg, false).expect("master journal").0
            } else {
                Store::open_empty_at(cfg, first, EpochHistory::default()).expect("master journal")
            };
            store.journal().gate(quorum_timeout);
            let epoch_start = store.begin_epoch(3);
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("address");
            let (stop, tracker) = (CancellationToken::new(), TaskTracker::new());
            let master = Master::start(
                listener,
                store.clone(),
                3,
                epoch_start,
                1,
                true,
                Arc::new(|| true),
                LinkOptions {
                    token: Some(TOKEN.into()),
                    heartbeat,
                },
                vec!["f".into(), "g".into()],
                stop.clone(),
                &tracker,
            );
            Lone {
                _dir: dir,
                store,
                master,
                addr,
                stop,
                tracker,
            }
        }

        async fn end(self) {
            self.stop.cancel();
            self.tracker.close();
            self.tracker.wait().await;
            self.store.close();
        }
    }

    type Rogue = (
        tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
        tokio::net::tcp::OwnedWriteHalf,
    );

    /// Connects to `addr` and says hello; returns the link and the master's answer.
    async fn hello(addr: SocketAddr, hello: proto::Hello) -> (Rogue, ToFollower) {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (rd, mut wr) = stream.into_split();
        let mut rd = tokio::io::BufReader::new(rd);
        let msg = ToMaster {
            kind: Some(to_master::Kind::Hello(hello)),
        };
        write_msg(&mut wr, &msg).await.expect("hello");
        let answer = tokio::time::timeout(GUARD, read_msg::<ToFollower>(&mut rd, "master"))
            .await
            .expect("no answer to a hello")
            .expect("an answer");
        ((rd, wr), answer)
    }

    fn login(token: &str, member: &str) -> proto::Hello {
        proto::Hello {
            token: token.into(),
            member: member.into(),
            ..Default::default()
        }
    }

    /// Reads until the master closes the link; panics if it stays open.
    async fn assert_closed(rd: &mut tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>) {
        let closed = tokio::time::timeout(GUARD, async {
            while read_msg::<ToFollower>(rd, "master").await.is_ok() {}
        })
        .await;
        assert!(closed.is_ok(), "the master kept the link open");
    }

    const GUARD: Duration = Duration::from_secs(30);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn strangers_are_refused_and_closed_before_they_count() {
        let lone = Lone::start(GUARD).await;
        let cases = [
            ("", "f", "no replication token"),
            (
                "the-group-replication-tokeN",
                "f",
                "wrong replication token",
            ),
            (TOKEN, "g-9", "is not a member of this group"),
            (TOKEN, "", "is not a member of this group"),
        ];
        for (token, member, why) in cases {
            let ((mut rd, _wr), answer) = hello(lone.addr, login(token, member)).await;
            match answer.kind {
                Some(to_follower::Kind::Refused(text)) => {
                    assert!(
                        text.contains(why),
                        "{member:?}: {text:?} does not say {why:?}"
                    )
                }
                other => panic!("token {token:?}, member {member:?} was not refused: {other:?}"),
            }
            assert_closed(&mut rd).await;
            assert!(lone.master.followers().is_empty());
        }
        // The right token and a member of the group: admitted.
        let (_link, answer) = hello(lone.addr, login(TOKEN, "f")).await;
        assert!(
            matches!(answer.kind, Some(to_follower::Kind::Start(_))),
            "{answer:?}"
        );
        lone.end().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ack_above_what_the_link_was_sent_closes_it_and_never_commits() {
        let lone = Lone::start(Duration::from_millis(500)).await;
        let ((mut rd, mut wr), answer) = hello(lone.addr, login(TOKEN, "f")).await;
        let Some(to_follower::Kind::Start(start)) = answer.kind else {
            panic!("not admitted: {answer:?}");
        };
        let forged = start.from + 1_000_000_000_000;
        let ack = ToMaster {
            kind: Some(to_master::Kind::Ack(forged)),
        };
        write_msg(&mut wr, &ack).await.expect("ack");
        assert_closed(&mut rd).await;
        let index = lone.store.append(&record(1));
        let outcome = lone.store.journal().wait_synced(index).await;
        assert!(
            matches!(outcome, Err(StoreError::NoQuorum { .. })),
            "a record was committed on a forged ack: {outcome:?}"
        );
        assert!(lone.master.followers().is_empty());
        lone.end().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hello_claiming_this_terms_records_counts_only_what_was_acknowledged() {
        let lone = Lone::start(Duration::from_millis(500)).await;
        let index = lone.store.append(&record(1));
        // A follower that says it already holds everything the master has, epochs and all.
        let claim = proto::Hello {
            epochs: epochs_to_proto(&lone.store.epochs()),
            last_index: index,
            ..login(TOKEN, "f")
        };
        let (_link, answer) = hello(lone.addr, claim).await;
        let Some(to_follower::Kind::Start(start)) = answer.kind else {
            panic!("not admitted: {answer:?}");
        };
        assert!(
            start.from <= index,
            "records up to {index} were taken on the follower's word (stream from {})",
            start.from
        );
        let outcome = lone.store.journal().wait_synced(index).await;
        assert!(
            matches!(outcome, Err(StoreError::NoQuorum { .. })),
            "a record was committed on a follower's claim: {outcome:?}"
        );
        lone.end().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_link_of_a_member_replaces_the_first() {
        let lone = Lone::start(GUARD).await;
        let ((mut first, _w1), a1) = hello(lone.addr, login(TOKEN, "f")).await;
        assert!(
            matches!(a1.kind, Some(to_follower::Kind::Start(_))),
            "{a1:?}"
        );
        let (_second, a2) = hello(lone.addr, login(TOKEN, "f")).await;
        assert!(
            matches!(a2.kind, Some(to_follower::Kind::Start(_))),
            "{a2:?}"
        );
        assert_closed(&mut first).await;
        let members: Vec<String> = lone
            .master
            .followers()
            .into_iter()
            .map(|f| f.member)
            .collect();
        assert_eq!(members, ["f"]);
        lone.end().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn strangers_waiting_for_their_hello_are_bounded() {
        // Strangers get 30 s to send their hello: the slots stay taken for the whole test.
        let lone = Lone::start_with(GUARD, Duration::from_secs(10)).await;
        // Strangers that connect and say nothing hold every handshake slot...
        let mut idle = Vec::new();
        for _ in 0..HANDSHAKES {
            idle.push(TcpStream::connect(lone.addr).await.expect("connect"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // ...so the next connection is closed before its hello is read, even a valid one.
        let stream = TcpStream::connect(lone.addr).await.expect("connect");
        let (rd, mut wr) = stream.into_split();
        let mut rd = tokio::io::BufReader::new(rd);
        let msg = ToMaster {
            kind: Some(to_master::Kind::Hello(login(TOKEN, "f"))),
        };
        let _ = write_msg(&mut wr, &msg).await;
        let answer = tokio::time::timeout(GUARD, read_msg::<ToFollower>(&mut rd, "master"))
            .await
            .expect("the master neither answered nor closed");
        assert!(
            answer.is_err(),
            "a connection past {HANDSHAKES} waiting handshakes was served: {answer:?}"
        );
        // Once the strangers are gone, a follower is let in again.
        drop(idle);
        let admitted = tokio::time::timeout(GUARD, async {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let stream = TcpStream::connect(lone.addr).await.expect("connect");
                let (rd, mut wr) = stream.into_split();
                let mut rd = tokio::io::BufReader::new(rd);
                let _ = write_msg(&mut wr, &msg).await;
                if let Ok(ToFollower {
                    kind: Some(to_follower::Kind::Start(_)),
                }) = read_msg::<ToFollower>(&mut rd, "master").await
                {
                    return;
                }
            }
        })
        .await;
        assert!(admitted.is_ok(), "the slots were never given back");
        lone.end().await;
    }

    #[test]
    fn a_start_is_planned_only_from_record_1_and_without_gaps() {
        let start = |from, snapshot| proto::Start {
            epoch: 3,
            from,
            snapshot,
            ..Default::default()
        };
        // (start, follower's last record, plan)
        let cases = [
            (start(0, false), 0, None),
            (start(0, false), 7, None),
            (start(0, true), 7, None),
            (start(1, false), 0, Some(StartPlan::Append)),
            (start(8, false), 7, Some(StartPlan::Append)),
            (start(3, false), 7, Some(StartPlan::CutAfter { keep: 2 })),
            (start(1, false), 7, Some(StartPlan::CutAfter { keep: 0 })),
            (start(9, false), 7, None),
            (
                start(u64::MAX, false),
                u64::MAX,
                Some(StartPlan::CutAfter { keep: u64::MAX - 1 }),
            ),
            (start(40, true), 7, Some(StartPlan::Snapshot)),
            (start(3, true), 7, Some(StartPlan::Snapshot)),
        ];
        for (start, last, plan) in cases {
            let got = plan_start(&start, last);
            assert_eq!(
                got.as_ref().ok(),
                plan.as_ref(),
                "{start:?} after record {last}: {got:?}"
            );
            if let Err(why) = got {
                assert!(why.contains(&format!("record {}", start.from)), "{why}");
            }
        }
    }

    /// A master (or a stranger holding the token, or a damaged frame) that starts the stream
    /// at record 0 gets the link closed with a clear error; the follower neither panics nor
    /// touches its journal.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_from_record_0_closes_the_link_and_leaves_the_journal_as_it_was() {
        for snapshot in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let cfg = config(&dir.path().join("follower"));
            let (store, _) = Store::open(cfg.clone(), false).expect("journal");
            for sequence in 1..=3 {
                store.append(&record(sequence));
            }
            store.journal().wait_local(3).await.expect("written");
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("address");
            let master = tokio::spawn(async move {
                let (stream, _) = listener.accept().await.expect("accept");
                let (rd, mut wr) = stream.into_split();
                let mut rd = tokio::io::BufReader::new(rd);
                read_msg::<ToMaster>(&mut rd, "follower")
                    .await
                    .expect("a hello");
                let start = ToFollower {
                    kind: Some(to_follower::Kind::Start(proto::Start {
                        epoch: 3,
                        from: 0,
                        snapshot,
                        ..Default::default()
                    })),
                };
                write_msg(&mut wr, &start).await.expect("start");
                // Open until the follower closes it.
                while read_msg::<ToMaster>(&mut rd, "follower").await.is_ok() {}
            });
            let (_newest_tx, newest) = tokio::sync::watch::channel(3);
            let opts = FollowOptions {
                member: "f".into(),
                link: LinkOptions {
                    token: Some(TOKEN.into()),
                    heartbeat: Duration::from_millis(200),
                },
                store: cfg.clone(),
            };
            let (store, result) = tokio::time::timeout(
                GUARD,
                follow(&opts, store, addr, newest, CancellationToken::new()),
            )
            .await
            .expect("the follower kept following a stream from record 0");
            match &result {
                Err(ReplError::Protocol { detail, .. }) => {
                    assert!(detail.contains("record 0"), "snapshot {snapshot}: {detail}")
                }
                other => panic!("snapshot {snapshot}: not refused as a bad stream: {other:?}"),
            }
            tokio::time::timeout(GUARD, master)
                .await
                .expect("the follower kept the link open")
                .expect("the master's task");
            assert_eq!(
                store.journal().next_index(),
                4,
                "snapshot {snapshot}: the journal changed"
            );
            store.close();
            let (again, _) = Store::open(cfg, false).expect("reopen the journal");
            assert_eq!(again.journal().next_index(), 4, "snapshot {snapshot}");
            for sequence in 1..=3 {
                let m = again.read_message(sequence).expect("a record kept");
                assert_eq!(m.sequence, sequence, "snapshot {snapshot}");
            }
            again.close();
        }
    }

    /// Samples the master's quorum contact (what its check quorum steps down on) for `span`;
    /// returns the longest time it showed no contact.
    async fn longest_silence(master: &Master, span: Duration) -> Duration {
        let end = Instant::now() + span;
        let mut worst = Duration::ZERO;
        while Instant::now() < end {
            if let Some(heard) = master.quorum_contact() {
                worst = worst.max(heard.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        worst
    }

    /// A follower's install of its master's snapshot (at the start) or of a checkpoint (in the
    /// stream) on a slow disk blocks its reading, so heartbeats go unread: it still tells the
    /// master it is there every heartbeat interval, so a master that has just been elected
    /// does not step down (check quorum) for want of a follower that is only busy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_installing_a_snapshot_or_a_checkpoint_still_answers_its_master() {
        const HEARTBEAT: Duration = Duration::from_millis(200);
        const INSTALL: Duration = Duration::from_secs(4);
        // Ten heartbeats: a follower that answers is never silent that long, even on a loaded
        // machine; one that does not is silent for the whole install.
        const SILENCE: Duration = Duration::from_secs(2);
        // The master's oldest record is 100: an empty follower must copy a snapshot.
        let lone = Lone::start_at(100, GUARD, HEARTBEAT).await;
        let epoch_start = lone.store.journal().next_index() - 1;
        let follower_cfg = config(&lone._dir.path().join("follower"));
        SLOW_INSTALLS
            .lock()
            .expect("the slow-disk table")
            .push((follower_cfg.dir.clone(), INSTALL));
        let (follower_store, _) = Store::open(follower_cfg.clone(), false).expect("journal");
        let (_newest_tx, newest) = tokio::sync::watch::channel(3);
        let opts = FollowOptions {
            member: "f".into(),
            link: LinkOptions {
                token: Some(TOKEN.into()),
                heartbeat: HEARTBEAT,
            },
            store: follower_cfg.clone(),
        };
        let stop = CancellationToken::new();
        let following = tokio::spawn({
            let (stop, addr) = (stop.clone(), lone.addr);
            async move { follow(&opts, follower_store, addr, newest, stop).await }
        });

        // The snapshot: the follower is admitted (from 100, with a snapshot), then installs.
        tokio::time::timeout(GUARD, async {
            while lone.master.quorum_contact().is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the follower was never admitted");
        let silent = longest_silence(&lone.master, INSTALL).await;
        assert!(
            silent < SILENCE,
            "the master heard nothing from its follower for {silent:?} while it installed a snapshot"
        );
        tokio::time::timeout(GUARD, lone.store.journal().wait_synced(epoch_start))
            .await
            .expect("the follower never caught up after the snapshot")
            .expect("commit");

        // A checkpoint in the stream: sent once the follower has what it covers.
        let index = lone.store.append(&record(1));
        tokio::time::timeout(GUARD, lone.store.journal().wait_synced(index))
            .await
            .expect("the follower never acknowledged")
            .expect("commit");
        let master_store = lone.store.clone();
        tokio::task::spawn_blocking(move || {
            master_store.checkpoint(&store::proto::Checkpoint {
                next_index: index + 1,
                ..Default::default()
            })
        })
        .await
        .expect("the checkpoint task")
        .expect("a checkpoint");
        let silent = longest_silence(&lone.master, INSTALL).await;
        assert!(
            silent < SILENCE,
            "the master heard nothing from its follower for {silent:?} while it installed a checkpoint"
        );
        let index = lone.store.append(&record(2));
        tokio::time::timeout(GUARD, lone.store.journal().wait_synced(index))
            .await
            .expect("the follower stopped acknowledging after the checkpoint")
            .expect("commit");

        stop.cancel();
        let (follower_store, result) = following.await.expect("the follow task");
        assert!(result.is_ok(), "{result:?}");
        follower_store.close();
        SLOW_INSTALLS
            .lock()
            .expect("the slow-disk table")
            .retain(|(dir, _)| *dir != follower_cfg.dir);
        lone.end().await;
    }

    #[test]
    fn tokens_match_only_when_equal_and_configured() {
        assert!(token_matches(Some(TOKEN), TOKEN));
        assert!(!token_matches(Some(TOKEN), "the-group-replication-toke"));
        assert!(!token_matches(Some(TOKEN), ""));
        assert!(!token_matches(None, ""));
        assert!(!token_matches(Some(""), ""));
    }

    #[test]
    fn the_quorum_index_is_the_needed_th_highest_ack() {
        assert_eq!(quorum_index(&mut [5, 9], 1), Some(9));
        assert_eq!(quorum_index(&mut [5, 9, 7], 2), Some(7));
        assert_eq!(quorum_index(&mut [5], 2), None);
        assert_eq!(quorum_index(&mut [], 0), Some(u64::MAX));
    }
}
