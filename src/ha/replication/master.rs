//! The master's driver: the replication listener of one term, one task per follower link
//! (its sends and its acknowledgements), and the commit loop. Every decision — who is let
//! in, where a stream starts, what an acknowledgement counts for, what commits, when a quorum
//! was heard from — is the [`MasterMachine`]'s; this file moves bytes between it, the sockets
//! and the journal. Must not touch: elections (the driver in `server::member::replicated` decides who
//! masters) or the broker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prost::Message as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::machine::{epochs_to_proto, shown, MasterConfig, MasterMachine, Refusal, Refused};
use super::proto::{self, to_follower, to_master, ToFollower, ToMaster};
use super::{
    read_msg, read_msg_within, write_msg, FollowerStatus, LeaseCheck, LinkOptions, ReplError,
    BATCH_BYTES, HANDSHAKES, MAX_HELLO, READ_BUFFER,
};
use crate::store::{self, Store};

impl Refusal {
    fn count(self) {
        metrics::counter!(crate::metrics::REPLICATION_REFUSED, "reason" => self.label())
            .increment(1);
    }
}

/// The live link of one follower session: what closes it.
struct Link {
    peer: SocketAddr,
    stop: CancellationToken,
}

struct MasterShared {
    store: Store,
    /// Commits wait for followers (remote_* / quorum_* modes).
    gated: bool,
    lease: LeaseCheck,
    options: LinkOptions,
    /// The protocol's state: sessions, links, acknowledgements, vouching.
    machine: Mutex<MasterMachine>,
    /// The live links by session.
    links: Mutex<HashMap<u64, Link>>,
    /// Held while a commit is worked out and published.
    committing: Mutex<()>,
    changed: tokio::sync::Notify,
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
        let machine = MasterMachine::new(MasterConfig {
            epoch,
            epoch_start,
            needed,
            token: options.token.clone(),
            peers,
        });
        let shared = Arc::new(MasterShared {
            store: store.clone(),
            gated,
            lease,
            options,
            machine: Mutex::new(machine),
            links: Mutex::new(HashMap::new()),
            committing: Mutex::new(()),
            changed: tokio::sync::Notify::new(),
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
            if self.shared.machine.lock().caught_up() {
                return;
            }
            changed.await;
        }
    }

    /// The latest time at which `needed` distinct followers had all been heard from (now when
    /// none are needed; `None` while fewer are connected): what check quorum needs.
    pub fn quorum_contact(&self) -> Option<Instant> {
        self.shared.machine.lock().quorum_contact(Instant::now())
    }

    pub fn epoch(&self) -> u64 {
        self.shared.machine.lock().config().epoch
    }

    /// Each connected follower, for `/status` and metrics.
    pub fn followers(&self) -> Vec<FollowerStatus> {
        let last = self.shared.store.journal().next_index().saturating_sub(1);
        self.shared.machine.lock().followers(last)
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
        let commit = self.machine.lock().commit_index(written);
        if let Some(commit) = commit {
            journal.publish_committed(commit);
        }
    }
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
    wr: &mut (impl tokio::io::AsyncWriteExt + Unpin),
    peer: SocketAddr,
    member: &str,
    refused: Refused,
) -> Result<(), ReplError> {
    let Refused { reason, why } = refused;
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
    let checked = s.machine.lock().check_hello(&hello);
    if let Err(refused) = checked {
        return refuse(&mut wr, peer, &hello.member, refused).await;
    }
    let journal = s.store.journal().clone();
    let session = s.machine.lock().new_session();
    // Pin before looking at the oldest record, so it cannot go while we start.
    journal.pin(session, journal.first_index());
    let _unpin = Unpinner(journal.clone(), session);
    let mine = s.store.epochs();
    let master_last = journal.next_index().saturating_sub(1);
    let first = journal.first_index();
    let plan = s
        .machine
        .lock()
        .plan_stream(&hello, &mine, master_last, first);
    let (from, snapshot) = (plan.from, plan.snapshot);
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
        matched = plan.matched,
        from,
        snapshot,
        "follower joined"
    );
    let start = ToFollower {
        kind: Some(to_follower::Kind::Start(proto::Start {
            epoch: s.machine.lock().config().epoch,
            from,
            snapshot,
            checkpoint: checkpoint.into(),
            epochs: epochs_to_proto(&mine),
        })),
    };
    let link_stop = stop.child_token();
    let replaced = {
        let mut links = s.links.lock();
        links.insert(
            session,
            Link {
                peer,
                stop: link_stop.clone(),
            },
        );
        let replaced = s.machine.lock().open_link(&hello.member, session);
        replaced.and_then(|old| links.remove(&old))
    };
    if let Some(old) = replaced {
        tracing::warn!(member = %hello.member, %peer, old_peer = %old.peer, "a second replication link of this member replaces the first");
        old.stop.cancel();
    }
    let _gone = FollowerGone(s.clone(), session, hello.member.clone());
    write_msg(&mut wr, &start).await.map_err(io)?;
    s.machine
        .lock()
        .handle_started(session, &hello.member, from, Instant::now());
    let acks_total =
        metrics::counter!(crate::metrics::REPLICATION_ACKS, "slave" => hello.member.clone());
    // Acks come in on their own task.
    let acks = {
        let s = s.clone();
        let peer_s = peer_s.clone();
        let journal = journal.clone();
        let member = hello.member.clone();
        async move {
            loop {
                match read_msg::<ToMaster>(&mut rd, &peer_s).await? {
                    ToMaster {
                        kind: Some(to_master::Kind::Ack(index)),
                    } => {
                        let counted = s.machine.lock().handle_ack(session, index, Instant::now());
                        if let Err(Refused { reason, why }) = counted {
                            reason.count();
                            tracing::warn!(%peer, %member, reason = reason.label(), "replication link closed: {why}");
                            return Err(ReplError::Protocol {
                                peer: peer_s,
                                detail: why,
                            });
                        }
                        acks_total.increment(1);
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
    let mut local = journal.watch_local();
    let mut checkpoints = s.checkpoints.subscribe();
    let mut pending_checkpoint: Option<Arc<store::proto::Checkpoint>> = None;
    let next = || s.machine.lock().next_to_send(session).unwrap_or(from);
    let sends = async {
        let mut heartbeat = tokio::time::interval(s.options.heartbeat);
        heartbeat.tick().await;
        loop {
            let mut sent = false;
            // Seen: `changed()` below then waits for records written after this sweep.
            local.borrow_and_update();
            while let Some(frames) = journal.read_frames(next(), BATCH_BYTES)? {
                // Counted before the records leave: the follower's ack may beat our return.
                s.machine
                    .lock()
                    .handle_sent(session, frames.first, frames.count);
                let msg = ToFollower {
                    kind: Some(to_follower::Kind::Records(proto::Records {
                        first: frames.first,
                        count: frames.count,
                        frames: frames.bytes.into(),
                    })),
                };
                write_msg(&mut wr, &msg).await.map_err(io)?;
                sent = true;
            }
            if let Some(c) = pending_checkpoint.take() {
                if c.next_index <= next() {
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
                    let msg = ToFollower { kind: Some(to_follower::Kind::Heartbeat(next())) };
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

/// Forgets a follower's session (and its member's link, unless a newer one replaced it) when
/// the session ends.
struct FollowerGone(Arc<MasterShared>, u64, String);

impl Drop for FollowerGone {
    fn drop(&mut self) {
        self.0.links.lock().remove(&self.1);
        self.0.machine.lock().handle_closed(self.1, &self.2);
        self.0.changed.notify_waiters();
    }
}
