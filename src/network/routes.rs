//! Where remote consumers are, seen from this group: for each remote demand, the group that
//! consumes, the real consumer it stands for, the bridge it came over and how many hops away
//! it is. Topic messages follow one route per consuming group — the shortest, ties broken by
//! the peer's name — so a topic message reaches each group once even when the mesh has
//! cycles. Queue consumers heard over several bridges have a best route by the same rule,
//! which bridges suppressing duplicate queue subscriptions keep alone. Every change bumps a
//! watch counter, so bridges can re-evaluate when another bridge's routes change.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::watch;

use crate::destination::{Destination, DestinationPattern};

#[derive(Debug, Clone)]
struct Route {
    pattern: DestinationPattern,
    /// The consuming group (first element of the demand's path).
    group: Arc<str>,
    /// The real consumer, the same over every route that reaches it.
    origin: Arc<str>,
    /// The peer group the demand came from.
    via: Arc<str>,
    hops: usize,
}

/// Remote demand of every bridge of this broker, keyed by (peer, remote consumer id).
#[derive(Debug)]
pub struct Routes {
    routes: RwLock<HashMap<(Arc<str>, String), Route>>,
    /// Bumped on every change.
    changed: watch::Sender<u64>,
}

impl Default for Routes {
    fn default() -> Routes {
        Routes {
            routes: RwLock::default(),
            changed: watch::channel(0).0,
        }
    }
}

/// The better of two routes to one consumer: fewer hops, then the peer's name.
fn better(a: (usize, &Arc<str>), b: (usize, &Arc<str>)) -> bool {
    a < b
}

impl Routes {
    pub fn add(
        &self,
        via: &Arc<str>,
        consumer: &str,
        origin: &Arc<str>,
        pattern: DestinationPattern,
        path: &[Arc<str>],
    ) {
        let Some(group) = path.first() else { return };
        self.routes.write().insert(
            (via.clone(), consumer.to_string()),
            Route {
                pattern,
                group: group.clone(),
                origin: origin.clone(),
                via: via.clone(),
                hops: path.len(),
            },
        );
        self.bump();
    }

    pub fn remove(&self, via: &Arc<str>, consumer: &str) {
        let removed = self
            .routes
            .write()
            .remove(&(via.clone(), consumer.to_string()));
        if removed.is_some() {
            self.bump();
        }
    }

    /// Forgets everything learned over one bridge (it went down).
    pub fn remove_peer(&self, via: &Arc<str>) {
        let mut routes = self.routes.write();
        let before = routes.len();
        routes.retain(|(v, _), _| v != via);
        let changed = routes.len() != before;
        drop(routes);
        if changed {
            self.bump();
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Resolves (`changed()`) after each later change of the routes.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// For each remote queue consumer (by origin), the peer of its best route: the fewest
    /// hops, ties broken by the peer's name.
    pub fn best_queue_routes(&self) -> HashMap<Arc<str>, Arc<str>> {
        let routes = self.routes.read();
        let mut best: HashMap<&Arc<str>, (usize, &Arc<str>)> = HashMap::new();
        for r in routes.values().filter(|r| r.pattern.kind().is_queue()) {
            let take = best
                .get(&r.origin)
                .is_none_or(|held| better((r.hops, &r.via), *held));
            if take {
                best.insert(&r.origin, (r.hops, &r.via));
            }
        }
        best.into_iter()
            .map(|(origin, (_, via))| (origin.clone(), via.clone()))
            .collect()
    }

    /// The groups a topic message on `dest` should reach through `via`: those whose best
    /// route goes there, limited to `allowed` when the message came with targets.
    pub fn targets(
        &self,
        dest: &Destination,
        via: &Arc<str>,
        allowed: Option<&[Arc<str>]>,
    ) -> Vec<Arc<str>> {
        let routes = self.routes.read();
        let mut best: HashMap<&Arc<str>, (usize, &Arc<str>)> = HashMap::new();
        for r in routes.values().filter(|r| r.pattern.matches(dest)) {
            let take = best
                .get(&r.group)
                .is_none_or(|held| better((r.hops, &r.via), *held));
            if take {
                best.insert(&r.group, (r.hops, &r.via));
            }
        }
        let mut out: Vec<Arc<str>> = best
            .into_iter()
            .filter(|(g, (_, v))| *v == via && allowed.is_none_or(|a| a.contains(g)))
            .map(|(g, _)| g.clone())
            .collect();
        out.sort();
        out
    }

    /// Remote consumers per destination pattern (for metrics).
    pub fn demand_by_destination(&self) -> HashMap<String, u64> {
        let mut out = HashMap::new();
        for r in self.routes.read().values() {
            *out.entry(r.pattern.to_string()).or_insert(0) += 1;
        }
        out
    }

    pub fn len(&self) -> usize {
        self.routes.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn one_route_per_group_the_shortest() {
        let r = Routes::default();
        let t = DestinationPattern::parse("topic://prices.>").unwrap();
        // A triangle seen from A: C's consumer directly and through B; B's own consumer.
        r.add(&g("C"), "c1", &g("C/1"), t.clone(), &[g("C")]);
        r.add(&g("B"), "c1-via-b", &g("C/1"), t.clone(), &[g("C"), g("B")]);
        r.add(&g("B"), "b1", &g("B/1"), t.clone(), &[g("B")]);
        let dest = Destination::parse("topic://prices.eu").unwrap();
        assert_eq!(r.targets(&dest, &g("B"), None), vec![g("B")]);
        assert_eq!(r.targets(&dest, &g("C"), None), vec![g("C")]);
        // A chain A–B–C seen from A: C only through B.
        r.remove(&g("C"), "c1");
        assert_eq!(r.targets(&dest, &g("B"), None), vec![g("B"), g("C")]);
        assert_eq!(
            r.targets(&dest, &g("B"), Some(&[g("C")])),
            vec![g("C")],
            "a forwarded message keeps to its targets"
        );
        r.remove_peer(&g("B"));
        assert!(r.is_empty());
    }

    #[test]
    fn each_queue_consumer_has_one_best_route_that_moves_when_it_goes() {
        let r = Routes::default();
        let mut changes = r.watch();
        let q = DestinationPattern::parse("queue://jobs").unwrap();
        let t = DestinationPattern::parse("topic://prices").unwrap();
        // A triangle seen from A: C's consumer directly and through B, B's through C.
        r.add(&g("B"), "7", &g("C/1"), q.clone(), &[g("C"), g("B")]);
        assert!(changes.has_changed().unwrap(), "an added route is a change");
        changes.mark_unchanged();
        assert_eq!(r.best_queue_routes()[&g("C/1")], g("B"), "the only route");
        r.add(&g("C"), "1", &g("C/1"), q.clone(), &[g("C")]);
        r.add(&g("C"), "9", &g("B/4"), q.clone(), &[g("B"), g("C")]);
        r.add(&g("C"), "10", &g("C/2"), t.clone(), &[g("C")]);
        let best = r.best_queue_routes();
        assert_eq!(best[&g("C/1")], g("C"), "the shorter route wins");
        assert_eq!(best[&g("B/4")], g("C"));
        assert!(
            !best.contains_key(&g("C/2")),
            "topic routes are not queue routes"
        );
        // Two routes of the same length: the peer's name decides, whatever the order heard.
        r.add(&g("D"), "3", &g("B/4"), q.clone(), &[g("B"), g("D")]);
        assert_eq!(r.best_queue_routes()[&g("B/4")], g("C"));
        r.add(&g("B"), "4", &g("E/5"), q.clone(), &[g("E"), g("B")]);
        r.add(&g("A0"), "4", &g("E/5"), q.clone(), &[g("E"), g("A0")]);
        assert_eq!(r.best_queue_routes()[&g("E/5")], g("A0"));
        // The best bridge goes down: the next-best takes over.
        changes.mark_unchanged();
        r.remove_peer(&g("C"));
        assert!(changes.has_changed().unwrap(), "a lost bridge is a change");
        let best = r.best_queue_routes();
        assert_eq!(best[&g("C/1")], g("B"));
        assert_eq!(best[&g("B/4")], g("D"));
        // Removing what is not there changes nothing.
        changes.mark_unchanged();
        r.remove(&g("C"), "1");
        r.remove_peer(&g("C"));
        assert!(!changes.has_changed().unwrap());
        r.remove(&g("B"), "7");
        assert!(changes.has_changed().unwrap());
        assert!(!r.best_queue_routes().contains_key(&g("C/1")));
    }
}
