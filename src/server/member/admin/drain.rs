//! Draining a member before an upgrade (`POST /drain` on its admin port; `meshmq drain`), or
//! before it restarts itself (`POST /restart`; `meshmq apply --rolling`).
//!
//! A drained master stops accepting connections at once. Alone in its group, it then asks its
//! failover clients to move to the other groups at a bounded rate (see `cluster::drain`), waits
//! until they have left and its queues have emptied through the connectors, and exits. With
//! standbys in its group it hands the group over instead: it tells its failover clients to
//! leave — each sends `Disconnect` after everything it wrote, and leaves once the member has
//! applied it all — then its term stops (the rest of the connections told, a clean checkpoint,
//! the journal closed) and the file lock or the ZooKeeper session goes with the process, so a
//! standby takes over and the clients reconnect to it through their failover URLs. A standby just exits. A drain for a restart moves the clients the same way but does
//! not wait for the queues (the journal keeps them for the restarted process), and ends with
//! the process executing its own binary again instead of exiting.
//!
//! Owns: the drain's sequence (its progress and the restart request are recorded in the
//! member's state, `../operations.rs`, which `/status` shows).
//! Must not touch: how a client moves (the cluster registry asks it) or how a term stops (the
//! term does that). Invariants: a drain starts at most once and only with the `[admin]` token;
//! nothing is dropped — a failover client that no other group took is told to leave before
//! the member stops (never cut off with frames the member did not read), a client that cannot
//! be told is closed by the ordinary shutdown (it reconnects through its failover URL), and
//! messages still queued at the deadline stay in the journal for the member's next start.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::Uri;
use tokio_util::sync::CancellationToken;

use super::super::operations::{DrainStatus, Operations};
use super::super::state::MemberState;
use super::super::term_view::TermView;

/// What a drain is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// The member exits once empty (an upgrade, or leaving the mesh).
    Exit,
    /// The member runs its own binary again once its clients have moved (a restart-only
    /// change): its queues stay in its journal.
    Restart,
}

/// Why an admin write was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// A drain is already running.
    AlreadyDraining,
}

/// The `timeout` parameter of `/drain?timeout=90s` (and `/restart?timeout=30s`): how long the
/// drain waits for clients and queues before the member exits (or runs again) anyway.
pub(super) fn timeout_param(uri: &Uri) -> Option<String> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("timeout="))
        .map(str::to_string)
}

/// Starts draining `state`'s member (at most once); it exits (or, for a restart, runs itself
/// again) within about `timeout`.
pub(crate) fn start(
    state: &Arc<MemberState>,
    timeout: Duration,
    purpose: Purpose,
) -> Result<(), Refused> {
    {
        let mut drain = state.operations.drain.lock();
        if drain.is_some() {
            return Err(Refused::AlreadyDraining);
        }
        *drain = Some((
            Instant::now() + timeout,
            DrainStatus {
                phase: "starting".into(),
                clients: 0,
                queued: 0,
                moves_asked: 0,
                seconds_left: timeout.as_secs_f64(),
            },
        ));
    }
    if purpose == Purpose::Restart {
        state
            .operations
            .restart
            .requested
            .store(true, Ordering::SeqCst);
    }
    tracing::info!(?timeout, ?purpose, "drain requested");
    tokio::spawn(run(state.clone(), timeout, purpose));
    Ok(())
}

/// Messages held on the broker's queues (durable topic subscriptions keep theirs for their
/// subscriber and are not waited for).
fn queued(broker: &crate::broker::Broker) -> u64 {
    broker
        .destination_stats()
        .iter()
        .filter(|d| d.destination.starts_with("queue://"))
        .map(|d| d.depth)
        .sum()
}

async fn run(state: Arc<MemberState>, timeout: Duration, purpose: Purpose) {
    let ops = &state.operations;
    let deadline = tokio::time::Instant::now() + timeout;
    let term = state.term.read().clone();
    let Some(term) = term else {
        tracing::info!("draining a standby: it serves no client; stopping");
        ops.set(|s| s.phase = "stopping".into());
        ops.shutdown.cancel();
        return;
    };
    term.accepting.cancel();
    tracing::info!("draining: new connections are refused");
    if ops.group_members > 1 {
        // A standby takes the group over once this term has stopped and the lock (or the
        // ZooKeeper session) has gone with the process.
        ops.set(|s| {
            s.phase = "handing over".into();
            s.clients = term.cluster.load().0;
        });
        tracing::info!("draining: handing the group over to a standby");
        send_clients_away(ops, &term, deadline).await;
        ops.restart
            .handed_over_at
            .store(state.epoch.load(Ordering::Acquire), Ordering::SeqCst);
        ops.set(|s| s.phase = "stopping".into());
        ops.shutdown.cancel();
        return;
    }
    ops.set(|s| s.phase = "moving clients".into());
    let asking = CancellationToken::new();
    let mover = {
        let (cluster, asking) = (term.cluster.clone(), asking.clone());
        tokio::spawn(async move { cluster.ask_everyone_to_leave(&asking).await })
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(deadline) => break,
            _ = ops.shutdown.cancelled() => break,
        }
        let clients = term.cluster.load().0;
        let queued = queued(&term.broker);
        let moves = term.cluster.status().rebalance_moves;
        ops.set(|s| {
            s.clients = clients;
            s.queued = queued;
            s.moves_asked = moves;
            s.phase = if clients > 0 {
                "moving clients".into()
            } else {
                "emptying queues".into()
            };
        });
        // A restart keeps the queues in the journal: only the clients need to have moved (or
        // be beyond moving: no other group, or clients that take no pushes).
        let restart_ready = purpose == Purpose::Restart && (clients == 0 || mover.is_finished());
        if (clients == 0 && queued == 0) || restart_ready {
            break;
        }
    }
    asking.cancel();
    let asked = mover.await.unwrap_or(0);
    let queued = queued(&term.broker);
    // The clients no other group took: told to leave, so none is cut off mid-send.
    let grace = deadline.max(tokio::time::Instant::now() + LEAVE_GRACE);
    send_clients_away(ops, &term, grace).await;
    let clients = term.cluster.load().0;
    if purpose == Purpose::Restart {
        tracing::info!(asked, clients, queued, "draining for a restart: stopping, then running again (the remaining clients reconnect by their failover URLs; queued messages stay in the journal)");
        ops.set(|s| s.phase = "restarting".into());
        ops.shutdown.cancel();
        return;
    }
    if clients > 0 || queued > 0 {
        tracing::warn!(clients, queued, "draining: the deadline passed; the remaining clients are closed (they reconnect by their failover URLs) and the queued messages stay in the journal");
    }
    tracing::info!(asked, "draining: empty; stopping");
    ops.set(|s| s.phase = "stopping".into());
    ops.shutdown.cancel();
}

/// How long the clients told to leave at the end of a drain have, even past its deadline.
const LEAVE_GRACE: Duration = Duration::from_secs(5);

/// Tells the failover clients still here that this member is stopping, and waits until they
/// have left or `deadline` passes. A client leaves politely: its `Disconnect` comes after every
/// frame it wrote, and the member applies them all before its receipt — whereas the term's stop
/// closes a connection at once, dropping what the member had not read yet (fire-and-forget
/// sends that no receipt covers, lost for good). The clients that cannot be told (plain
/// connections, STOMP, MQTT, listeners without cluster updates) are closed by the stop.
async fn send_clients_away(ops: &Operations, term: &TermView, deadline: tokio::time::Instant) {
    let told = term.cluster.ask_everyone_to_go();
    if told == 0 {
        return;
    }
    tracing::info!(
        told,
        "draining: the clients were told to leave; waiting for their goodbyes"
    );
    loop {
        let left = term.cluster.askable_count();
        ops.set(|s| s.clients = term.cluster.load().0);
        if left == 0 {
            tracing::info!(told, "draining: every told client has left");
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(told, left, "draining: some clients told to leave did not within the drain's time; they are closed");
                return;
            }
            _ = ops.shutdown.cancelled() => return,
        }
    }
}
