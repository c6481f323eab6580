//! The follower's driver: connects to its master, says hello, carries out the start (append,
//! cut the divergent tail, or install the master's snapshot), appends the stream, installs
//! checkpoints and acknowledges. Whether to take the stream and what to acknowledge is the
//! [`FollowerMachine`]'s; this file moves bytes between it, the socket and the journal.
//! Must not touch: elections (the driver in `server::member::replicated` says whom to follow).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prost::Message as _;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::machine::{epochs_from_proto, epochs_to_proto, FollowerMachine, StartPlan, StreamError};
use super::proto::{self, to_follower, to_master, ToFollower, ToMaster};
use super::{read_msg, write_msg, LinkOptions, ReplError, READ_BUFFER};
use crate::store::{self, EpochHistory, RawFrames, Store, StoreConfig, StoreError};

/// Tests only: journal directories whose install work (a snapshot or a checkpoint from the
/// master) first sleeps this long, as on a slow disk.
#[cfg(test)]
pub(super) static SLOW_INSTALLS: std::sync::Mutex<Vec<(std::path::PathBuf, Duration)>> =
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

impl StreamError {
    fn at(self, peer: &str) -> ReplError {
        match self {
            StreamError::Refused(why) => ReplError::Refused(why),
            StreamError::Protocol(detail) => ReplError::Protocol {
                peer: peer.to_string(),
                detail,
            },
        }
    }
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
    let last = store.journal().next_index().saturating_sub(1);
    let mut machine = FollowerMachine::new();
    let plan = machine
        .handle_start(&start, last, *newest.borrow())
        .map_err(|e| e.at(&peer))?;
    let machine = Mutex::new(machine);
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
    let machine = &machine;
    // Every heartbeat is answered (with what we hold), so the master hears from an idle
    // follower too: its check quorum tells a silent link from a quiet one.
    let beat = tokio::sync::Notify::new();
    // While a checkpoint from the master installs the receiving side reads no heartbeat, so
    // the acknowledging side answers on its own every heartbeat interval (the machine's
    // `installing`; see also `answering_while`).
    let acks = async {
        let mut tick = tokio::time::interval(opts.link.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let held = *local.borrow_and_update();
            let ack = machine.lock().poll_ack(held);
            if let Some(index) = ack {
                let msg = ToMaster {
                    kind: Some(to_master::Kind::Ack(index)),
                };
                write_msg(&mut wr, &msg).await.map_err(io)?;
            }
            tokio::select! {
                r = local.changed() => {
                    if r.is_err() {
                        return Ok::<(), ReplError>(());
                    }
                    machine.lock().handle_durable();
                }
                _ = beat.notified() => machine.lock().handle_heartbeat(),
                _ = tick.tick() => machine.lock().handle_tick(),
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
                    let newest = *newest_at_append.borrow();
                    let taken = machine.lock().handle_records(r.first, r.count, newest);
                    taken.map_err(|e| e.at(&peer))?;
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
                    machine.lock().set_installing(true);
                    let installed = tokio::task::spawn_blocking(move || {
                        slow_disk(st.dir());
                        st.install_checkpoint(&c)
                    })
                    .await;
                    machine.lock().set_installing(false);
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
            let newest = *newest.borrow();
            machine
                .lock()
                .check_newest(newest)
                .map_err(|e| e.at(&peer))?;
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
