//! What this build cannot serve yet. Each feature is one small check naming the keys that use
//! it; when the feature lands, delete its check and its line in `CHECKS`.

use super::topology::{Listener, Topology};

type Check = fn(&Topology, &mut Vec<String>);

const CHECKS: &[Check] = &[cluster_client_options];

pub(super) fn unsupported(topo: &Topology) -> Vec<String> {
    let mut keys = Vec::new();
    for check in CHECKS {
        check(topo, &mut keys);
    }
    keys
}

/// Every listener of the mesh with its key path.
fn listeners(topo: &Topology) -> impl Iterator<Item = (String, &Listener)> {
    topo.members().flat_map(|(g, m)| {
        m.listeners.iter().enumerate().map(move |(i, l)| {
            (
                format!("group[{}].member[{}].listener[{i}]", g.name, m.name),
                l,
            )
        })
    })
}

fn cluster_client_options(topo: &Topology, keys: &mut Vec<String>) {
    for (at, l) in listeners(topo) {
        let options = [
            ("update_cluster_clients", l.update_cluster_clients),
            ("rebalance_cluster_clients", l.rebalance_cluster_clients),
            (
                "update_cluster_clients_on_remove",
                l.update_cluster_clients_on_remove,
            ),
            ("update_cluster_filter", !l.update_cluster_filter.is_empty()),
        ];
        for (k, _) in options.iter().filter(|(_, on)| *on) {
            keys.push(format!("{at}.{k}"));
        }
    }
}
