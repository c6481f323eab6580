//! Where remote consumers are, seen from this group: for each remote demand, the group that
//! consumes, the bridge it came over and how many hops away it is. Topic messages follow one
//! route per consuming group — the shortest, ties broken by the peer's name — so a topic
//! message reaches each group once even when the mesh has cycles.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::broker::{Destination, DestinationPattern};

#[derive(Debug, Clone)]
struct Route {
    pattern: DestinationPattern,
    /// The consuming group (first element of the demand's path).
    group: Arc<str>,
    /// The peer group the demand came from.
    via: Arc<str>,
    hops: usize,
}

/// Remote demand of every bridge of this broker, keyed by (peer, remote consumer id).
#[derive(Debug, Default)]
pub struct Routes {
    routes: RwLock<HashMap<(Arc<str>, String), Route>>,
}

impl Routes {
    pub fn add(
        &self,
        via: &Arc<str>,
        consumer: &str,
        pattern: DestinationPattern,
        path: &[Arc<str>],
    ) {
        let Some(group) = path.first() else { return };
        self.routes.write().insert(
            (via.clone(), consumer.to_string()),
            Route {
                pattern,
                group: group.clone(),
                via: via.clone(),
                hops: path.len(),
            },
        );
    }

    pub fn remove(&self, via: &Arc<str>, consumer: &str) {
        self.routes
            .write()
            .remove(&(via.clone(), consumer.to_string()));
    }

    /// Forgets everything learned over one bridge (it went down).
    pub fn remove_peer(&self, via: &Arc<str>) {
        self.routes.write().retain(|(v, _), _| v != via);
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
            let better = match best.get(&r.group) {
                None => true,
                Some((hops, v)) => (r.hops, &r.via) < (*hops, *v),
            };
            if better {
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
        r.add(&g("C"), "c1", t.clone(), &[g("C")]);
        r.add(&g("B"), "c1-via-b", t.clone(), &[g("C"), g("B")]);
        r.add(&g("B"), "b1", t.clone(), &[g("B")]);
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
}
