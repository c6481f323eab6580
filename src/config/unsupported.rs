//! What this build cannot serve yet. Each feature is one small check naming the keys that use
//! it; when the feature lands, delete its check and its line in `CHECKS`.

use super::topology::{Election, Topology};

type Check = fn(&Topology, &mut Vec<String>);

const CHECKS: &[Check] = &[
    elections_other_than_none,
    zookeeper_section,
    replication_addresses,
    replication_tokens,
];

pub(super) fn unsupported(topo: &Topology) -> Vec<String> {
    let mut keys = Vec::new();
    for check in CHECKS {
        check(topo, &mut keys);
    }
    keys
}

fn elections_other_than_none(topo: &Topology, keys: &mut Vec<String>) {
    for g in topo
        .groups
        .iter()
        .filter(|g| g.election == Election::ZooKeeper)
    {
        keys.push(format!("group[{}].election ({})", g.name, g.election));
    }
}

fn zookeeper_section(topo: &Topology, keys: &mut Vec<String>) {
    if topo.zookeeper.is_some() {
        keys.push("zookeeper".to_string());
    }
}

fn replication_addresses(topo: &Topology, keys: &mut Vec<String>) {
    for (g, m) in topo.members().filter(|(_, m)| m.replication.is_some()) {
        keys.push(format!("group[{}].member[{}].replication", g.name, m.name));
    }
}

fn replication_tokens(topo: &Topology, keys: &mut Vec<String>) {
    for g in topo.groups.iter().filter(|g| g.replication_token.is_some()) {
        keys.push(format!("group[{}].replication_token", g.name));
    }
}
