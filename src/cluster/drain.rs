//! A drained member's clients leave for other groups: every client that takes pushes is asked
//! to move (`reconnect_to`), at most `max_moves_per_second` a second, each to the peer group
//! with the fewest clients for its capacity at that moment — so a drain never sends one group a
//! reconnect storm, and the groups it empties into stay even. A member that stops without
//! another group to send them to (a master handing its group to a standby, a restart, the end
//! of a drain) tells its remaining clients to leave (`leave`), so that none is cut off with
//! frames the member never read.
//!
//! Owns: the choice of target and the pacing. Must not touch: sockets (the connection writes
//! the control frame; the client connects to the target before it leaves, so a move loses no
//! send), or which clients may take pushes (`Cluster::register` decides that). Invariant: a
//! client still here a few seconds after it was asked is asked again, so a move that failed
//! (its target was down) is retried until the drain's deadline.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::wire::proto;

/// How long a client asked to move has before it is asked again.
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(5);

impl Cluster {
    /// Client connections that can be asked to move (they take pushes).
    fn askable(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .clients
            .lock()
            .iter()
            .filter(|(_, e)| e.control.is_some())
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The peer group to send the next client to: the fewest clients (counting the ones
    /// already sent) for its capacity. `None` when no other group is in the view.
    fn drain_target(&self, sent: &HashMap<String, u64>) -> Option<String> {
        let view = self.view();
        self.loads()
            .into_iter()
            .filter(|l| l.group != self.opts.group && view.groups.contains_key(&l.group))
            .min_by(|a, b| {
                let share = |l: &super::Load| {
                    (l.clients + sent.get(&l.group).copied().unwrap_or(0)) as f64
                        / l.capacity.max(1) as f64
                };
                share(a).total_cmp(&share(b))
            })
            .map(|l| l.group)
    }

    /// Client connections still here that can be told to leave.
    pub fn askable_count(&self) -> usize {
        self.clients
            .lock()
            .values()
            .filter(|e| e.control.is_some())
            .count()
    }

    /// Tells every client that takes pushes that this member is stopping: each sends
    /// `Disconnect` after every frame it has queued and, once the receipt shows this member
    /// applied them all, reconnects by its failover URL (to the standby that takes the group
    /// over, or to this member restarted). Returns how many were told.
    pub fn ask_everyone_to_go(&self) -> u64 {
        let clients = self.clients.lock();
        let mut told = 0;
        for e in clients.values() {
            let Some(control) = &e.control else {
                continue;
            };
            let sent = control.send(proto::ConnectionControl {
                cluster: None,
                rebalance: false,
                reconnect_to: String::new(),
                leave: true,
            });
            if sent.is_ok() {
                told += 1;
            }
        }
        told
    }

    /// Asks every client that takes pushes to move to another group, paced by the
    /// `[rebalance]` rate, until none is left, `stop` fires or there is no other group.
    /// Returns the number of requests sent.
    pub async fn ask_everyone_to_leave(&self, stop: &CancellationToken) -> u64 {
        let pace = Duration::from_secs_f64(1.0 / self.opts.settings.max_moves_per_second.max(0.1));
        let mut asked_at: HashMap<u64, Instant> = HashMap::new();
        let mut sent: HashMap<String, u64> = HashMap::new();
        let mut requests = 0;
        loop {
            let now = Instant::now();
            let due: Vec<u64> = self
                .askable()
                .into_iter()
                .filter(|id| asked_at.get(id).is_none_or(|t| now >= *t + ASK_AGAIN_AFTER))
                .collect();
            if due.is_empty() {
                if self.askable().is_empty() {
                    return requests;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    _ = stop.cancelled() => return requests,
                }
            }
            for id in due {
                let Some(group) = self.drain_target(&sent) else {
                    tracing::warn!("draining: no other group is connected; the remaining clients are closed at the end and reconnect by their failover URLs");
                    return requests;
                };
                self.ask_to_move(id, &group);
                *sent.entry(group).or_default() += 1;
                asked_at.insert(id, Instant::now());
                requests += 1;
                tokio::select! {
                    _ = tokio::time::sleep(pace) => {}
                    _ = stop.cancelled() => return requests,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{ClientHello, ClusterOptions, ClusterPolicy};
    use super::*;
    use crate::wire::proto;

    fn policy() -> Arc<ClusterPolicy> {
        Arc::new(ClusterPolicy {
            update: true,
            scheme: "tcp".into(),
            ..ClusterPolicy::default()
        })
    }

    fn peer(group: &str, port: u16, clients: u64) -> proto::BrokerInfo {
        proto::BrokerInfo {
            group: group.into(),
            client_uris: vec![format!("tcp://127.0.0.1:{port}")],
            clients,
            capacity: 100,
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_pushable_client_is_asked_to_move_to_the_emptier_groups_at_the_set_rate() {
        let settings = crate::config::RebalanceOptions {
            max_moves_per_second: 10.0,
            ..Default::default()
        };
        let c = Cluster::new(ClusterOptions {
            group: "edge-1".into(),
            uris: vec!["tcp://127.0.0.1:1".into()],
            capacity: 100,
            rebalance: false,
            settings,
            rebalance_filters: Vec::new(),
        });
        c.peer_up(1, &peer("edge-2", 2, 0));
        c.peer_up(2, &peer("edge-3", 3, 4));
        let hello = ClientHello {
            fault_tolerant: true,
            ..Default::default()
        };
        let mut regs: Vec<_> = (0..6)
            .map(|i| c.register(i, &hello, Some(policy())))
            .collect();
        let stomp = c.register(99, &ClientHello::default(), None);
        for r in &mut regs {
            r.feed.as_mut().unwrap().initial();
        }
        let started = Instant::now();
        let stop = CancellationToken::new();
        let leaving = {
            let c = c.clone();
            let stop = stop.clone();
            tokio::spawn(async move { c.ask_everyone_to_leave(&stop).await })
        };
        let mut targets = Vec::new();
        for r in &mut regs {
            let control = r.feed.as_mut().unwrap().next().await;
            assert!(control.rebalance);
            targets.push(control.reconnect_to);
        }
        // Paced: six requests at ten a second take at least half a second.
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        let to = |port: u16| format!("tcp://127.0.0.1:{port}");
        // edge-2 (empty) gets clients until it holds as many as edge-3 (4), then they alternate.
        assert_eq!(
            targets.iter().filter(|t| **t == to(2)).count(),
            5,
            "{targets:?}"
        );
        assert_eq!(
            targets.iter().filter(|t| **t == to(3)).count(),
            1,
            "{targets:?}"
        );
        drop(regs);
        let requests = tokio::time::timeout(Duration::from_secs(10), leaving)
            .await
            .expect("ends when only clients that take no pushes are left")
            .unwrap();
        assert_eq!(requests, 6, "the STOMP client is not asked");
        drop(stomp);
    }
}
