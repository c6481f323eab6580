use std::path::Path;
use std::time::Duration;

use crate::config::{parse_str, OnFull, RebalanceOptions, SyncMode, Topology};
use crate::destination::Destination;

/// `[mesh]` and a one-member group `hub` (shared with `tests/it/bad_topologies.rs`).
const BASE: &str = concat!("\n", include_str!("../../../tests/fixtures/one_group.toml"));

/// A second single-member group `edge`.
const EDGE: &str = include_str!("../../../tests/fixtures/edge_group.toml");

const HASH: &str =
    "$argon2id$v=19$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4";

fn parse(text: &str) -> Topology {
    match parse_str(text, Path::new("/etc/meshmq/t.toml")) {
        Ok(t) => t,
        Err(e) => panic!("must parse:\n{e}"),
    }
}

/// The key paths of every error, in order.
fn refused_keys(text: &str) -> Vec<String> {
    match parse_str(text, Path::new("t.toml")) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors.into_iter().map(|e| e.key).collect(),
    }
}

#[test]
fn broker_policy_resolves_group_over_top_level_over_defaults() {
    let text = format!(
        "[broker]\nprefetch = 50\nmemory_limit = \"2GiB\"\n{BASE}[group.broker]\nprefetch = 7\n{EDGE}"
    );
    let topo = parse(&text);
    let (Some(hub), Some(edge)) = (topo.group("hub"), topo.group("edge")) else {
        panic!("both groups exist");
    };
    assert_eq!(hub.broker.prefetch, 7, "group override");
    assert_eq!(
        hub.broker.memory_limit,
        2 << 30,
        "top level under the override"
    );
    assert_eq!(edge.broker.prefetch, 50, "top level");
    assert_eq!(edge.broker.max_redeliveries, 6, "built-in default");
    assert_eq!(topo.broker.heartbeat, std::time::Duration::from_secs(10));
}

#[test]
fn defaults_of_a_minimal_topology() {
    let topo = parse(BASE);
    let Some((hub, member)) = topo.member("hub-1") else {
        panic!("hub-1 exists");
    };
    assert_eq!(hub.sync, SyncMode::LocalDisk);
    assert_eq!(hub.replicas, 1);
    assert_eq!(member.data_dir, Path::new("/etc/meshmq/data/hub-1"));
    assert_eq!(member.weight, 1);
    assert_eq!(member.listeners[0].max_connections, None);
    assert!(topo.security.allow_anonymous);
    assert_eq!(topo.store.segment_size, 64 << 20);
    assert_eq!(topo.metrics.max_destinations, 100);
    assert_eq!(topo.rebalance, RebalanceOptions::default());
    let tuned = parse(&format!(
        "[rebalance]\nthreshold = 0.25\nwindow = \"30s\"\nmax_moves_per_second = 20.0\nfailover_grace = \"1m\"\njoin_settle = \"0s\"\n{BASE}"
    ));
    assert_eq!(
        tuned.rebalance,
        RebalanceOptions {
            threshold: 0.25,
            window: Duration::from_secs(30),
            max_moves_per_second: 20.0,
            failover_grace: Duration::from_secs(60),
            join_settle: Duration::ZERO,
        }
    );
    assert!(topo.zookeeper.is_none());
    assert!(topo.unsupported().is_empty());
}

#[test]
fn zookeeper_groups_default_to_quorum_mem_and_their_member_count() {
    let text = r#"
[mesh]
name = "demo"
[zookeeper]
connect = "zk1:2181, 127.0.0.1:2182"
[[group]]
name = "hub"
election = "zookeeper"
replication_token = "a-token-of-24-characters"
[[group.member]]
name = "hub-1"
admin = "127.0.0.1:8161"
replication = "127.0.0.1:61619"
[[group.member.listener]]
url = "tcp://127.0.0.1:61616"
[[group.member]]
name = "hub-2"
admin = "127.0.0.1:8162"
replication = "127.0.0.1:61629"
[[group.member.listener]]
url = "tcp://127.0.0.1:61626"
"#;
    let topo = parse(text);
    let Some(hub) = topo.group("hub") else {
        panic!("hub exists");
    };
    assert_eq!((hub.sync, hub.replicas), (SyncMode::QuorumMem, 2));
    let zk = topo
        .zookeeper
        .as_ref()
        .map(|z| (z.connect.len(), z.root.as_str()));
    assert_eq!(zk, Some((2, "/meshmq")));
}

#[test]
fn a_replicated_group_of_several_members_needs_a_token_of_16_characters() {
    let group = |token: &str| {
        format!(
            "[mesh]\nname = \"demo\"\n[zookeeper]\nconnect = \"127.0.0.1:2181\"\n\
             [[group]]\nname = \"hub\"\nelection = \"zookeeper\"\n{token}\n\
             [[group.member]]\nname = \"hub-1\"\nadmin = \"127.0.0.1:8161\"\n\
             replication = \"127.0.0.1:61619\"\n\
             [[group.member.listener]]\nurl = \"tcp://127.0.0.1:61616\"\n\
             [[group.member]]\nname = \"hub-2\"\nadmin = \"127.0.0.1:8162\"\n\
             replication = \"127.0.0.1:61629\"\n\
             [[group.member.listener]]\nurl = \"tcp://127.0.0.1:61626\"\n"
        )
    };
    let missing = match parse_str(&group(""), Path::new("t.toml")) {
        Ok(_) => panic!("a two-member group without a replication token was accepted"),
        Err(e) => e.to_string(),
    };
    for words in ["group[hub].replication_token", "is missing", "meshmq token"] {
        assert!(missing.contains(words), "{words:?} not in: {missing}");
    }
    let short = match parse_str(
        &group("replication_token = \"fifteen-chars-x\""),
        Path::new("t.toml"),
    ) {
        Ok(_) => panic!("a 15-character replication token was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(short.contains("15 characters"), "{short}");
    assert!(
        !short.contains("fifteen-chars-x"),
        "the token is echoed: {short}"
    );
    assert!(refused_keys(&group("replication_token = \"sixteen-chars-xx\"")).is_empty());
}

#[test]
fn policy_for_takes_the_first_matching_entry_key_by_key() {
    let text = format!(
        r#"
[broker]
max_redeliveries = 4
[[policy]]
destination = "queue://orders.eu"
prefetch = 1
[[policy]]
destination = "queue://orders.>"
prefetch = 10
memory_limit = "64MiB"
on_full = "fail"
{BASE}"#
    );
    let topo = parse(&text);
    let Some(hub) = topo.group("hub") else {
        panic!("hub exists");
    };
    let limits = |d: &str| match Destination::parse(d) {
        Ok(dest) => hub.policy_for(&topo, &dest),
        Err(e) => panic!("{e}"),
    };
    let eu = limits("queue://orders.eu");
    assert_eq!(
        (eu.prefetch, eu.memory_limit, eu.on_full),
        (1, None, OnFull::Block)
    );
    assert_eq!(
        eu.max_redeliveries, 4,
        "unset keys come from the group's broker policy"
    );
    let us = limits("queue://orders.us");
    assert_eq!(
        (us.prefetch, us.memory_limit, us.on_full),
        (10, Some(64 << 20), OnFull::Fail)
    );
    let other = limits("topic://orders.us");
    assert_eq!((other.prefetch, other.memory_limit), (1000, None));
}

#[test]
fn relative_paths_resolve_against_the_file_and_are_normalised() {
    let text = BASE.replace(
        "admin = \"127.0.0.1:8161\"",
        "admin = \"127.0.0.1:8161\"\ndata_dir = \"../var/./hub-1\"",
    );
    let topo = parse(&text);
    let dir = topo.member("hub-1").map(|(_, m)| m.data_dir.clone());
    assert_eq!(dir, Some("/etc/var/hub-1".into()));
}

#[test]
fn network_ttl_sets_both_ttls_unless_given() {
    let text = format!(
        "{BASE}{EDGE}[[connector]]\nfrom = \"hub\"\nto = \"edge\"\nnetwork_ttl = 3\nconsumer_ttl = 2\n"
    );
    let topo = parse(&text);
    let ttls = topo
        .connectors
        .first()
        .map(|c| (c.message_ttl, c.consumer_ttl, c.name.to_string()));
    assert_eq!(ttls, Some((3, 2, "hub-edge".to_string())));
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let text = r#"
[mesh]
name = "demo"
[zookeeper]
connect = "127.0.0.1:2181"
digest = "meshmq:topsecret"
[[group]]
name = "hub"
election = "zookeeper"
replication_token = "topsecret-topsecret"
[[group.member]]
name = "hub-1"
admin = "127.0.0.1:8161"
replication = "127.0.0.1:61619"
[[group.member.listener]]
url = "tcp://127.0.0.1:61616"
"#;
    let topo = parse(text);
    assert!(!format!("{topo:?}").contains("topsecret"));
    let digest = topo
        .zookeeper
        .as_ref()
        .and_then(|z| z.digest.as_ref())
        .map(|d| d.expose());
    assert_eq!(digest, Some("meshmq:topsecret"));
}

#[test]
fn every_semantic_check_names_its_key_and_all_are_collected() {
    let user = format!(
        "[[security.user]]\nname = \"alice\"\npassword_hash = \"{HASH}\"\ngroups = [\"p\"]\n"
    );
    let cases: Vec<(String, Vec<&str>)> = vec![
        ("".into(), vec!["mesh", "group"]),
        ("[mesh]\nname = \"a b\"\n".into(), vec!["mesh.name", "group"]),
        (format!("{BASE}{}", EDGE.replace("edge", "hub")), vec!["group[1].name", "group[1].member[0].name"]),
        (format!("{BASE}\n[[group]]\nname = \"e\"\n"), vec!["group[e]"]),
        (format!("{BASE}\n[[group]]\nname = \"e\"\n[[group.member]]\nname = \"e1\"\nadmin = \"127.0.0.1:1\"\n"), vec!["group[e].member[e1]"]),
        (format!("{BASE}\n[[group.member.listener]]\nurl = \"stomp://0.0.0.0:61616\"\n"), vec!["group[hub].member[hub-1].listener[1].url"]),
        (format!("{BASE}\n[[group.member.listener]]\nurl = \"stomp://[::]:8161\"\n"), vec!["group[hub].member[hub-1].listener[1].url"]),
        (format!("{BASE}\n[[group.member.listener]]\nurl = \"stomp://[::1]:61616\"\n"), vec![]),
        (format!("{BASE}{}", EDGE.replace("8171", "8161")), vec!["group[edge].member[edge-1].admin"]),
        (format!("{BASE}\n[[group.member]]\nname = \"hub-2\"\nadmin = \"127.0.0.1:2\"\n[[group.member.listener]]\nurl = \"tcp://127.0.0.1:3\"\n"), vec!["group[hub]"]),
        (BASE.replace("name = \"hub\"", "name = \"hub\"\nreplicas = 0"), vec!["group[hub].replicas"]),
        (BASE.replace("name = \"hub\"", "name = \"hub\"\nsync = \"quorum_disk\""), vec!["group[hub].sync"]),
        (BASE.replace("name = \"hub\"", "name = \"hub\"\nquorum_timeout = \"1s\""), vec!["group[hub].quorum_timeout"]),
        (BASE.replace("name = \"hub\"", "name = \"hub\"\nelection = \"file-lock\"\nshared_dir = \"data/hub-1\""), vec!["group[hub].shared_dir"]),
        (BASE.replace("name = \"hub\"", "name = \"hub\"\nelection = \"zookeeper\""), vec!["group[hub].member[hub-1].replication", "zookeeper"]),
        (format!("{BASE}tls_client_ca = \"ca.pem\"\n"), vec!["group[hub].member[hub-1].listener[0].tls_client_ca"]),
        (format!("{BASE}\n[[group.member.listener]]\nurl = \"quic://127.0.0.1:9\"\ntls_cert = \"c\"\n"), vec!["group[hub].member[hub-1].listener[1].tls_key"]),
        (format!("{BASE}{EDGE}[[connector]]\nfrom = \"hub\"\nto = \"nope\"\n"), vec!["connector[hub-nope].to"]),
        (format!("{BASE}{EDGE}[[connector]]\nfrom = \"edge\"\nto = \"edge\"\n"), vec!["connector[edge-edge].to"]),
        (format!("{BASE}{EDGE}[[connector]]\nfrom = \"hub\"\nto = \"edge\"\n[[connector]]\nfrom = \"edge\"\nto = \"hub\"\nduplex = true\n"), vec!["connector[edge-hub]"]),
        (format!("{BASE}{EDGE}[[connector]]\nfrom = \"hub\"\nto = \"edge\"\n[[connector]]\nfrom = \"edge\"\nto = \"hub\"\n"), vec![]),
        (format!("{BASE}{EDGE}[[connector]]\nfrom = \"hub\"\nto = \"edge\"\ntransport = \"quic\"\ntls_ca = \"ca.pem\"\n"), vec!["connector[hub-edge].transport"]),
        (format!("{BASE}{EDGE}[[connector]]\nfrom = \"hub\"\nto = \"edge\"\ntls_ca = \"ca.pem\"\n"), vec!["connector[hub-edge].tls_ca"]),
        (format!("{BASE}{EDGE}[[connector]]\nfrom = \"hub\"\nto = \"edge\"\nstatic_bridge = true\n"), vec!["connector[hub-edge].static_bridge"]),
        (format!("{BASE}{EDGE}[[connector]]\nfrom = \"hub\"\nto = \"edge\"\nreconnect_multiplier = 0.99\nprefetch = 0\nheartbeat = \"0s\"\n"), vec!["connector[hub-edge].prefetch", "connector[hub-edge].reconnect_multiplier", "connector[hub-edge].heartbeat"]),
        (format!("{BASE}{EDGE}[[connector]]\nfrom = \"hub\"\nto = \"edge\"\nusername = \"bob\"\n{user}"), vec!["connector[hub-edge].username"]),
        (format!("{user}[[security.acl]]\ndestination = \"queue://a\"\nread = [\"p\", \"q\"]\nadmin = [\"r\"]\n{BASE}"), vec!["security.acl[0].read[1]", "security.acl[0].admin[0]"]),
        (format!("[[security.user]]\nname = \"alice\"\npassword_hash = \"$argon2id$v=19$m=1,t=1,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4\"\n{BASE}"), vec!["security.user[alice].password_hash"]),
        (format!("[[security.user]]\nname = \"al:ice\"\npassword_hash = \"{HASH}\"\n{BASE}"), vec!["security.user[0].name"]),
        (format!("{BASE}update_cluster_clients = true\nupdate_cluster_filter = [\"ok\", \"(\"]\n"), vec!["group[hub].member[hub-1].listener[0].update_cluster_filter[1]"]),
        (format!("[store]\ncheckpoint_interval = \"0s\"\ngroup_commit_window = \"0s\"\n[metrics]\nmax_destinations = 0\n{BASE}"), vec!["store.checkpoint_interval", "metrics.max_destinations"]),
        (format!("[broker]\nmax_redeliveries = -1\nheartbeat = \"0s\"\n{BASE}"), vec!["broker.max_redeliveries"]),
        (format!("[rebalance]\nthreshold = 0.0\nmax_moves_per_second = 0.0\nwindow = \"soon\"\n{BASE}"), vec!["rebalance.threshold", "rebalance.max_moves_per_second", "rebalance.window"]),
        (format!("{BASE}\n[admin]\ntoken = \"short\"\n"), vec!["admin.token"]),
        (format!("{BASE}\n[admin]\ntoken = \"sixteen chars ok\"\n"), vec!["admin.token"]),
        (format!("{BASE}\n[admin]\ntoken = \"0123456789abcdef\"\n"), vec![]),
    ];
    for (text, keys) in cases {
        assert_eq!(refused_keys(&text), keys, "{text}");
    }
}

#[test]
fn password_hashes_must_be_argon2_phc_strings() {
    use super::security::check_password_hash;
    assert_eq!(check_password_hash(HASH), Ok(()));
    let refused = |h: &str| check_password_hash(h).is_err();
    assert!(refused("hunter2"));
    assert!(refused("$argon2id$v=19$m=256,t=2,p=1"));
    assert!(refused("$argon2id$garbage"));
    assert!(!check_password_hash("secret").is_err_and(|e| e.contains("secret")));
}

#[test]
fn wildcard_binds_overlap_only_what_they_cover() {
    use super::groups::overlaps;
    let addr = |s: &str| match s.parse() {
        Ok(a) => a,
        Err(e) => panic!("{s}: {e}"),
    };
    assert!(overlaps(addr("0.0.0.0:1"), addr("127.0.0.1:1")));
    assert!(overlaps(addr("[::1]:1"), addr("[::]:1")));
    assert!(
        overlaps(addr("127.0.0.1:1"), addr("[::]:1")),
        "[::] binds dual-stack"
    );
    assert!(!overlaps(addr("0.0.0.0:1"), addr("[::1]:1")));
    assert!(!overlaps(addr("0.0.0.0:1"), addr("127.0.0.1:2")));
    assert!(!overlaps(addr("127.0.0.1:1"), addr("127.0.0.2:1")));
}
