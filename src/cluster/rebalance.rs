//! Load-aware, bounded rebalancing. ActiveMQ's `rebalanceClusterClients` asks every client to
//! reconnect somewhere at once; here groups share their client counts (and capacities) over
//! their bridges, and each overloaded group moves only its *surplus*, each client to a named
//! less-loaded group, spread over a window with jitter and capped in new connections per
//! second per target — so a group joining never causes a reconnect storm.
//!
//! The groups planned over are this group and those a rebalancing listener's
//! `update_cluster_filter` admits, from the mesh-wide view (however many hops away), so a
//! consumer-facing edge never sends its clients to a producer-facing group the filter leaves
//! out, and edges that reach each other only through a hub still even out between them.
//!
//! Every group plans from the same shared numbers: a group's fair share is the total number of
//! clients in proportion to its capacity (the sum of its listeners' `max_connections`); a group
//! more than `[rebalance] threshold` (and `MIN_SURPLUS` clients) above its share is overloaded; each
//! overloaded group sends each underloaded group the part of that group's deficit that matches
//! its own part of the total surplus (so two overloaded groups do not both fill the same gap).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::counter;
use rand::seq::SliceRandom;
use tokio_util::sync::CancellationToken;

use crate::config::RebalanceOptions;
use crate::metrics as m;
use crate::wire::proto;

use super::{Cluster, ClusterPolicy};

/// How often the rebalancer looks at the loads.
const TICK: Duration = Duration::from_secs(1);
/// After a round's last move, wait this long for the counts to catch up.
const SETTLE: Duration = Duration::from_secs(5);
/// A group is overloaded only when it is more than this many clients above its share (and
/// more than the `[rebalance] threshold` fraction of it): a few clients never move.
const MIN_SURPLUS: f64 = 2.0;
// The rest (threshold, window, rate cap, failover grace, join settle) is `[rebalance]` in the
// topology: `RebalanceOptions`.

/// One group's load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Load {
    pub group: String,
    pub clients: u64,
    /// Client connections its listeners admit; 0 when unknown.
    pub capacity: u64,
}

/// What one group should do this round.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Target group → how many of this group's clients go there.
    pub moves: Vec<(String, u64)>,
    /// The most connections per second this group may send one target.
    pub rate: f64,
}

/// The plan of `loads[0]` (this group), given every group's load.
pub fn plan(loads: &[Load], opts: &RebalanceOptions) -> Plan {
    let none = Plan {
        moves: Vec::new(),
        rate: 0.0,
    };
    if loads.len() < 2 {
        return none;
    }
    let total: f64 = loads.iter().map(|l| l.clients as f64).sum();
    let known = loads.iter().all(|l| l.capacity > 0);
    let weight = |l: &Load| if known { l.capacity as f64 } else { 1.0 };
    let weights: f64 = loads.iter().map(weight).sum();
    let surplus: Vec<f64> = loads
        .iter()
        .map(|l| l.clients as f64 - total * weight(l) / weights)
        .collect();
    let overloaded = |i: usize| {
        let share = total * weight(&loads[i]) / weights;
        surplus[i] > MIN_SURPLUS.max(opts.threshold * share)
    };
    if !overloaded(0) {
        return none;
    }
    let all_surplus: f64 = (0..loads.len())
        .filter(|i| overloaded(*i))
        .map(|i| surplus[i])
        .sum();
    let part = surplus[0] / all_surplus;
    let mut budget = surplus[0].floor() as u64;
    let mut moves = Vec::new();
    for (i, l) in loads.iter().enumerate().skip(1) {
        if surplus[i] >= 0.0 {
            continue;
        }
        let mut deficit = -surplus[i];
        if l.capacity > 0 {
            deficit = deficit.min(l.capacity.saturating_sub(l.clients) as f64);
        }
        let n = ((deficit * part).floor() as u64).min(budget);
        if n > 0 {
            budget -= n;
            moves.push((l.group.clone(), n));
        }
    }
    Plan {
        moves,
        rate: opts.max_moves_per_second * part,
    }
}

/// When each chosen client is asked to move: per target, `n` moves spread evenly over at
/// least `window` (longer when the rate cap needs it), each at a random point of its slot.
/// A client goes only to a group its listener's filter admits.
fn schedule(
    plan: &Plan,
    window: Duration,
    mut eligible: Vec<(u64, Arc<ClusterPolicy>)>,
) -> Vec<(Duration, u64, String)> {
    eligible.shuffle(&mut rand::rng());
    let mut out = Vec::new();
    for (group, n) in &plan.moves {
        let mut chosen: Vec<u64> = Vec::new();
        eligible.retain(|(id, policy)| {
            if chosen.len() < *n as usize && policy.shows(group) {
                chosen.push(*id);
                false
            } else {
                true
            }
        });
        if chosen.is_empty() {
            continue;
        }
        let k = chosen.len() as f64;
        let span = window.max(Duration::from_secs_f64(k / plan.rate.max(1.0)));
        for (i, id) in chosen.into_iter().enumerate() {
            let at = span.mul_f64((i as f64 + rand::random::<f64>()) / k);
            out.push((at, id, group.clone()));
        }
    }
    out.sort_by_key(|(at, _, _)| *at);
    out
}

impl Cluster {
    /// Client connections that may be asked to move now, with their listener's policy.
    fn eligible(&self, now: Instant) -> Vec<(u64, Arc<ClusterPolicy>)> {
        self.clients
            .lock()
            .iter()
            .filter(|(_, e)| {
                e.movable
                    && !e.pinned
                    && e.failed_over_at
                        .is_none_or(|t| now.duration_since(t) >= self.opts.settings.failover_grace)
            })
            .map(|(id, e)| (*id, e.policy.clone()))
            .collect()
    }

    /// Tells client `id` to reconnect to `group` (its URIs of the client's scheme), if its
    /// listener's filter admits that group.
    pub(super) fn ask_to_move(&self, id: u64, group: &str) {
        let Some(uris) = self.view().groups.get(group).cloned() else {
            return;
        };
        let clients = self.clients.lock();
        let Some(e) = clients.get(&id) else {
            return;
        };
        let Some(control) = &e.control else {
            return;
        };
        if !e.policy.shows(group) {
            return;
        }
        let prefix = format!("{}://", e.policy.scheme);
        let uris: Vec<String> = uris
            .into_iter()
            .filter(|u| u.starts_with(&prefix))
            .collect();
        if uris.is_empty() {
            return;
        }
        let sent = control.send(proto::ConnectionControl {
            cluster: None,
            rebalance: true,
            reconnect_to: uris.join(","),
            leave: false,
        });
        if sent.is_ok() {
            self.moves.fetch_add(1, Ordering::Relaxed);
            counter!(m::REBALANCE_MOVES).increment(1);
        }
    }

    /// Runs rounds until `stop`: each looks at the loads and, when this group is overloaded,
    /// schedules the moves of its surplus.
    pub async fn run_rebalancer(self: Arc<Self>, stop: CancellationToken) {
        if !self.opts.rebalance {
            return;
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut groups: HashSet<String> = HashSet::new();
        let mut groups_since = Instant::now();
        let mut quiet_until = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let now = Instant::now();
            let seen: HashSet<String> = self
                .view()
                .groups
                .keys()
                .filter(|g| self.opts.rebalances_over(g))
                .cloned()
                .collect();
            if seen != groups {
                groups = seen;
                groups_since = now;
            }
            if now < quiet_until
                || now.duration_since(groups_since) < self.opts.settings.join_settle
            {
                continue;
            }
            self.rounds.fetch_add(1, Ordering::Relaxed);
            counter!(m::REBALANCE_ROUNDS).increment(1);
            let plan = plan(&self.rebalance_loads(), &self.opts.settings);
            if plan.moves.is_empty() {
                continue;
            }
            let moves = schedule(&plan, self.opts.settings.window, self.eligible(now));
            let Some((last, _, _)) = moves.last() else {
                continue;
            };
            tracing::info!(plan = ?plan.moves, clients = moves.len(), over = ?*last, "rebalancing: moving this group's surplus clients");
            quiet_until = now + *last + SETTLE;
            self.pending.store(moves.len() as u64, Ordering::Relaxed);
            let (cluster, stop) = (self.clone(), stop.clone());
            let start = tokio::time::Instant::now();
            tokio::spawn(async move {
                for (at, id, group) in moves {
                    tokio::select! {
                        _ = tokio::time::sleep_until(start + at) => cluster.ask_to_move(id, &group),
                        _ = stop.cancelled() => return,
                    }
                    cluster.pending.fetch_sub(1, Ordering::Relaxed);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clients on a listener without a filter.
    fn anyone(ids: std::ops::Range<u64>) -> Vec<(u64, Arc<ClusterPolicy>)> {
        let policy = Arc::new(ClusterPolicy::default());
        ids.map(|id| (id, policy.clone())).collect()
    }

    fn load(group: &str, clients: u64, capacity: u64) -> Load {
        Load {
            group: group.into(),
            clients,
            capacity,
        }
    }

    #[test]
    fn a_joining_group_gets_only_the_surplus_shared_between_the_overloaded() {
        let loads = [
            load("a", 1000, 10_000),
            load("b", 1000, 10_000),
            load("c", 0, 10_000),
        ];
        let p = plan(&loads, &RebalanceOptions::default());
        assert_eq!(p.moves, vec![("c".to_string(), 333)]);
        assert!(
            (p.rate - RebalanceOptions::default().max_moves_per_second / 2.0).abs() < 1e-9,
            "half the cap each"
        );
        let loads = [
            load("b", 1000, 10_000),
            load("a", 1000, 10_000),
            load("c", 0, 10_000),
        ];
        assert_eq!(
            plan(&loads, &RebalanceOptions::default()).moves,
            vec![("c".to_string(), 333)]
        );
        let loads = [
            load("c", 0, 10_000),
            load("a", 1000, 10_000),
            load("b", 1000, 10_000),
        ];
        assert!(
            plan(&loads, &RebalanceOptions::default()).moves.is_empty(),
            "the new group moves nobody"
        );
    }

    #[test]
    fn a_balanced_mesh_stays_put() {
        let loads = [
            load("a", 700, 100),
            load("b", 650, 100),
            load("c", 650, 100),
        ];
        assert!(
            plan(&loads, &RebalanceOptions::default()).moves.is_empty(),
            "within the threshold"
        );
        let loads = [load("a", 3, 10), load("b", 0, 10)];
        assert!(
            plan(&loads, &RebalanceOptions::default()).moves.is_empty(),
            "a surplus of one or two clients is noise"
        );
    }

    #[test]
    fn capacity_weighs_the_fair_share_and_caps_what_a_target_takes() {
        // b admits three times as many clients as a.
        let loads = [load("a", 500, 1000), load("b", 500, 3000)];
        assert_eq!(
            plan(&loads, &RebalanceOptions::default()).moves,
            vec![("b".to_string(), 250)]
        );
        // c is nearly full: it takes only its headroom.
        let loads = [
            load("a", 2000, 2000),
            load("c", 1950, 2000),
            load("d", 0, 10),
        ];
        let p = plan(&loads, &RebalanceOptions::default());
        assert!(p.moves.iter().all(|(_, n)| *n <= 10), "{:?}", p.moves);
    }

    #[test]
    fn moves_are_spread_over_the_window_and_capped_per_target() {
        let p = Plan {
            moves: vec![("c".into(), 50), ("d".into(), 3000)],
            rate: 100.0,
        };
        let s = schedule(&p, RebalanceOptions::default().window, anyone(0..100));
        assert_eq!(s.len(), 100, "no more moves than eligible clients");
        let to_c: Vec<_> = s.iter().filter(|(_, _, g)| g == "c").collect();
        assert_eq!(to_c.len(), 50);
        assert!(s
            .iter()
            .all(|(at, _, _)| *at <= RebalanceOptions::default().window));
        let ids: HashSet<u64> = s.iter().map(|(_, id, _)| *id).collect();
        assert_eq!(ids.len(), 100, "each client at most once");
        // 1000 moves at 50/s take 20 s, more than the window.
        let p = Plan {
            moves: vec![("c".into(), 1000)],
            rate: 50.0,
        };
        let s = schedule(&p, RebalanceOptions::default().window, anyone(0..1000));
        let in_first_second = s
            .iter()
            .filter(|(at, _, _)| *at < Duration::from_secs(1))
            .count();
        assert!(in_first_second <= 51, "{in_first_second}");
    }
}
