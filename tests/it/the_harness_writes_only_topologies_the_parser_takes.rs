//! Every topology the test harness writes is one the real parser takes, holding what the test
//! asked for: the [`common::Topology`] writer with each of its parts (mesh lines, top-level
//! tables, group and member lines, a group's broker section, listeners with their own lines,
//! connectors with the quick re-dial defaults, security), and each builder that writes through
//! it (`Config`, `MeshConfig`, `MeshBuilder`, the file-lock pair, the ZooKeeper group). A
//! builder that wrote a wrong key or a value in the wrong table fails here, before any test
//! that starts members from it; `meshmq check` (the CLI) takes the writer's fullest file too.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::ha::{GroupSpec, HaGroup};
use common::mesh::MeshBuilder;
use common::pair::{file_lock_group, file_lock_pair};
use common::topology::{self, Connector, Group, Member, Topology, QUICK_REDIAL};
use common::{free_ports, meshmq, run, Config, MeshConfig, Ports};
use meshmq::config::{load, Election};

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Parses `path` with the broker's own loader; fails with the file's text when it refuses.
fn parsed(path: &Path) -> meshmq::config::Topology {
    load(path).unwrap_or_else(|e| {
        panic!(
            "the harness wrote a topology the parser refuses: {e}\n{}",
            std::fs::read_to_string(path).unwrap_or_default()
        )
    })
}

#[test]
fn the_topology_writer_writes_every_part_where_the_parser_reads_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = free_ports(8);
    let file = Topology::new("selftest")
        .table("broker", &["max_redeliveries = 3"])
        .table("admin", &["token = \"a-token-for-the-harness-self-test\""])
        .group(
            Group::new("hub").broker("max_redeliveries = 5").member(
                Member::new("hub-1", local(p[0]))
                    .data_dir("data-hub")
                    .lines(&["weight = 2"])
                    .tcp(local(p[1]))
                    .listener(
                        &format!("stomp://{}", local(p[2])),
                        &["max_connections = 7"],
                    ),
            ),
        )
        .group(Group::file_lock("pair", "shared", "250ms").members([
            Member::new("pair-1", local(p[3])).tcp(local(p[4])),
            Member::new("pair-2", local(p[5])).tcp(local(p[6])),
        ]))
        .connectors([Connector::new(
            "hub",
            "pair",
            &["duplex = true", "reconnect_max_delay = \"3s\""],
        )
        .or_lines(&QUICK_REDIAL)])
        .section(&topology::security(false, &[("app", "app-password")]))
        .write(dir.path(), "full.toml");
    let t = parsed(&file);

    assert_eq!(t.mesh.as_str(), "selftest");
    assert!(
        t.bridges.secret_file.is_some(),
        "the tests' mesh secret is set"
    );
    assert_eq!(t.broker.max_redeliveries, 3);
    assert!(t.admin.token.is_some());
    let hub = t.group("hub").expect("group hub");
    assert_eq!(
        hub.broker.max_redeliveries, 5,
        "the group's own [group.broker]"
    );
    let m = &hub.members[0];
    assert_eq!(m.name.as_str(), "hub-1");
    assert_eq!(m.admin, local(p[0]));
    assert!(m.data_dir.ends_with("data-hub"), "{:?}", m.data_dir);
    assert_eq!(m.weight, 2);
    assert_eq!(m.listeners.len(), 2);
    assert_eq!(m.listeners[0].url.addr, local(p[1]));
    assert_eq!(m.listeners[0].max_connections, None);
    assert_eq!(m.listeners[1].url.addr, local(p[2]));
    assert_eq!(m.listeners[1].max_connections, Some(7));
    let pair = t.group("pair").expect("group pair");
    assert!(matches!(pair.election, Election::FileLock), "{pair:?}");
    assert_eq!(pair.lock_poll, Duration::from_millis(250));
    assert!(pair
        .shared_dir
        .as_ref()
        .is_some_and(|d| d.ends_with("shared")));
    assert_eq!(pair.members.len(), 2);
    let c = &t.connectors[0];
    assert_eq!((c.from.as_str(), c.to.as_str()), ("hub", "pair"));
    assert!(c.duplex);
    assert_eq!(c.reconnect_initial_delay, Duration::from_millis(100));
    assert_eq!(
        c.reconnect_max_delay,
        Duration::from_secs(3),
        "a connector's own key wins over the quick re-dial default"
    );
    assert!(!t.security.allow_anonymous);
    assert_eq!(t.security.users.len(), 1);
    assert_eq!(t.security.users[0].name, "app");

    // The same file through the CLI.
    let checked = run(meshmq().arg("check").arg(&file));
    assert!(checked.status.success(), "{checked:?}");

    // Without the group `pair`, its connector goes too, and the rest still parses.
    let without = Topology::new("selftest")
        .group(Group::new("hub").member(Member::new("hub-1", local(p[0])).tcp(local(p[1]))))
        .group(Group::new("edge").member(Member::new("edge-1", local(p[3])).tcp(local(p[4]))))
        .connector("hub", "edge", &[])
        .without_group("edge")
        .write(dir.path(), "without.toml");
    let t = parsed(&without);
    assert_eq!(t.groups.len(), 1);
    assert!(t.connectors.is_empty());

    // A mesh table without the secret, with a line of its own.
    let open = Topology::without_secret("open")
        .mesh_lines(&["allow_anonymous_bridges = true"])
        .group(Group::new("hub").member(Member::new("hub-1", local(p[0])).tcp(local(p[1]))))
        .write(dir.path(), "open.toml");
    let t = parsed(&open);
    assert!(t.bridges.secret_file.is_none());
    assert!(t.bridges.allow_anonymous);
}

#[test]
fn every_builder_of_the_harness_writes_what_it_was_asked_for() {
    let dir = tempfile::tempdir().expect("tempdir");

    // Config: a lone member with its own data directory, store, group and listener lines.
    let ports = Ports::pick();
    let data = dir.path().join("lone-data");
    let lone = Config::new()
        .broker("max_redeliveries = 4")
        .store("segment_size = \"256KiB\"")
        .group("sync = \"local_disk\"")
        .listener("max_connections = 9")
        .data_dir(&data)
        .section("[[policy]]\ndestination = \"queue://a.>\"\nmemory_limit = \"16KiB\"");
    let t = parsed(&common::write_file(
        dir.path(),
        "lone.toml",
        &lone.topology(ports),
    ));
    let (group, member) = t.member("hub-1").expect("hub-1");
    assert_eq!(group.name.as_str(), "hub");
    assert_eq!(member.admin, ports.admin_addr());
    assert_eq!(member.data_dir, data);
    assert_eq!(member.listeners[0].url.addr, ports.listen_addr());
    assert_eq!(member.listeners[0].max_connections, Some(9));
    assert_eq!(t.broker.max_redeliveries, 4);
    assert_eq!(t.store.segment_size, 256 * 1024);
    assert_eq!(t.policies.len(), 1);

    // MeshConfig: one member per group, each on its own address, bound there.
    let mesh = MeshConfig::new()
        .group("hub")
        .group("edge")
        .group_broker("edge", "max_redeliveries = 2")
        .connector("hub", "edge", &["duplex = true"]);
    let t = parsed(&common::write_file(
        dir.path(),
        "mesh.toml",
        &mesh.topology_text(),
    ));
    let (_, edge) = t.member("edge-1").expect("edge-1");
    assert_eq!(edge.bind, Some(edge.admin.ip()));
    assert_eq!(t.group("edge").expect("edge").broker.max_redeliveries, 2);
    assert_eq!(
        t.connectors[0].reconnect_initial_delay,
        Duration::from_millis(100)
    );
    assert!(t.bridges.secret_file.is_some());

    // MeshBuilder: a file-lock pair, a ZooKeeper group, STOMP listeners and a `{url:…}` section.
    let built = MeshBuilder::new()
        .group("hub", 2, "update_cluster_clients = true")
        .replicated_group("zk", 3, "", "127.0.0.1:2181")
        .group("edge", 1, "")
        .connector("hub", "zk", "")
        .stomp()
        .section("[[connector]]\nname = \"up\"\nfrom = \"edge\"\nto = \"hub\"\nuri = \"failover:({url:huba})\"\n")
        .build();
    let t = parsed(&built.topology);
    let hub = t.group("hub").expect("hub");
    assert!(matches!(hub.election, Election::FileLock));
    assert_eq!(hub.members.len(), 2);
    assert!(hub.members[0].listeners[0].update_cluster_clients);
    assert_eq!(hub.members[0].listeners.len(), 2, "native and STOMP");
    let zk = t.group("zk").expect("zk");
    assert!(matches!(zk.election, Election::ZooKeeper));
    assert!(zk.members.iter().all(|m| m.replication.is_some()));
    assert!(t.zookeeper.is_some());
    assert_eq!(t.connectors.len(), 2);

    // The file-lock pair, alone and as a group of the ZooKeeper group's mesh.
    let (pair_file, members) = file_lock_pair(dir.path(), "pairs", "mqtt", "500ms");
    let t = parsed(&pair_file);
    let (_, g2) = t.member("g-2").expect("g-2");
    assert_eq!(g2.listeners[0].url.addr, members[1].listen);
    assert_eq!(g2.admin, members[1].admin);
    let logs = tempfile::tempdir().expect("tempdir");
    let (f, _) = file_lock_group("f", "f-shared", "200ms", "tcp", logs.path());
    let ha = HaGroup::configure(
        "127.0.0.1:2181",
        GroupSpec {
            zk_digest: Some("user:password".into()),
            extra_groups: vec![f],
            extra_connectors: vec![Connector::new("f", "g", &[])],
            ..GroupSpec::default()
        },
    );
    let t = parsed(ha.topology());
    let g = t.group("g").expect("g");
    assert_eq!(g.replicas, 3);
    assert_eq!(g.members.len(), 3);
    assert_eq!(
        g.members[0].replication,
        Some(ha.members[0].replication),
        "{g:?}"
    );
    assert!(t.group("f").is_some());
    assert_eq!(t.connectors.len(), 1);
}
