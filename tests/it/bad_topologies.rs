//! A bad topology is refused before anything starts, with file, key and fix.

use std::path::{Path, PathBuf};

use meshmq::config::{load, parse_str};

/// `[mesh]` and a one-member group `hub`; rows append to it or write their own.
macro_rules! base {
    () => {
        include_str!("../fixtures/one_group.toml")
    };
}

/// A second single-member group `edge` for connector rows.
macro_rules! edge {
    () => {
        include_str!("../fixtures/edge_group.toml")
    };
}

/// The base and the edge, and a connector from the hub to the edge with `$lines` (each ending
/// in a newline, or none).
macro_rules! connector {
    ($lines:expr) => {
        concat!(
            base!(),
            edge!(),
            "\n[[connector]]\nfrom = \"hub\"\nto = \"edge\"\n",
            $lines
        )
    };
}

/// The base with a second listener of `hub-1` on `$url`.
macro_rules! listener {
    ($url:expr) => {
        concat!(
            base!(),
            "\n[[group.member.listener]]\nurl = \"",
            $url,
            "\"\n"
        )
    };
}

/// (the check a row proves, the topology, the exact error).
const ROWS: &[(&str, &str, &str)] = &[
    (
        "missing [mesh]",
        r#"
[[group]]
name = "hub"
[[group.member]]
name = "hub-1"
admin = "127.0.0.1:8161"
[[group.member.listener]]
url = "tcp://127.0.0.1:61616"
"#,
        r#"bad.toml: mesh: is missing; add a [mesh] section with name = "demo" at the top of the file"#,
    ),
    (
        "[mesh] without a name, and no group at all: both reported",
        "[mesh]\n",
        r#"bad.toml: mesh.name: is required; name the mesh, e.g. name = "demo"
bad.toml: group: is missing: a mesh needs at least one group; add a [[group]] with a [[group.member]] and its [[group.member.listener]]"#,
    ),
    (
        "bad mesh name",
        concat!("[mesh]\nname = \"my mesh\"\n", "[[group]]\nname = \"hub\"\n[[group.member]]\nname = \"hub-1\"\nadmin = \"127.0.0.1:8161\"\n[[group.member.listener]]\nurl = \"tcp://127.0.0.1:61616\"\n"),
        r#"bad.toml: mesh.name: "my mesh" is not a valid name: only letters, digits, '_', '.' and '-' are allowed; use 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit, e.g. "hub-1""#,
    ),
    (
        "duplicate group name",
        concat!(base!(), r#"
[[group]]
name = "hub"
[[group.member]]
name = "hub-2"
admin = "127.0.0.1:8162"
[[group.member.listener]]
url = "tcp://127.0.0.1:61626"
"#),
        r#"bad.toml: group[1].name: "hub" is also the name of group[0]; give each group a different name"#,
    ),
    (
        "duplicate member name across groups",
        concat!(base!(), r#"
[[group]]
name = "edge"
[[group.member]]
name = "hub-1"
admin = "127.0.0.1:8171"
[[group.member.listener]]
url = "tcp://127.0.0.1:61716"
"#),
        r#"bad.toml: group[edge].member[0].name: "hub-1" is also the name of group[hub].member[0]; give each member of the mesh a different name"#,
    ),
    (
        "duplicate connector name",
        concat!(base!(), edge!(), r#"
[[connector]]
name = "link"
from = "hub"
to = "edge"
[[connector]]
name = "link"
from = "edge"
to = "hub"
"#),
        r#"bad.toml: connector[1].name: "link" is also the name of connector[0]; give each connector a different name (the default is "<from>-<to>")"#,
    ),
    (
        "group with no members",
        concat!(base!(), "\n[[group]]\nname = \"edge\"\n"),
        r#"bad.toml: group[edge]: has no members; add a [[group.member]] with name, admin and a [[group.member.listener]]"#,
    ),
    (
        "member with no listener",
        concat!(base!(), "\n[[group]]\nname = \"edge\"\n[[group.member]]\nname = \"edge-1\"\nadmin = \"127.0.0.1:8171\"\n"),
        r#"bad.toml: group[edge].member[edge-1]: has no listener; add a [[group.member.listener]] with url = "tcp://127.0.0.1:61616""#,
    ),
    (
        "bad member name",
        r#"[mesh]
name = "demo"
[[group]]
name = "hub"
[[group.member]]
name = "-hub"
admin = "127.0.0.1:8161"
[[group.member.listener]]
url = "tcp://127.0.0.1:61616"
"#,
        r#"bad.toml: group[hub].member[0].name: "-hub" is not a valid name: it must start with a letter or digit; use 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit, e.g. "hub-1""#,
    ),
    (
        "same listener address in two members",
        concat!(base!(), r#"
[[group]]
name = "edge"
[[group.member]]
name = "edge-1"
admin = "127.0.0.1:8171"
[[group.member.listener]]
url = "tcp://127.0.0.1:61616"
"#),
        r#"bad.toml: group[edge].member[edge-1].listener[0].url: 127.0.0.1:61616 is also used by group[hub].member[hub-1].listener[0].url; give every listener, admin and replication address its own port"#,
    ),
    (
        "admin address equal to a listener of another member",
        concat!(base!(), r#"
[[group]]
name = "edge"
[[group.member]]
name = "edge-1"
admin = "127.0.0.1:61616"
[[group.member.listener]]
url = "tcp://127.0.0.1:61716"
"#),
        r#"bad.toml: group[edge].member[edge-1].admin: 127.0.0.1:61616 is also used by group[hub].member[hub-1].listener[0].url; give every listener, admin and replication address its own port"#,
    ),
    (
        "0.0.0.0:P clashes with IP:P in the same member",
        listener!("stomp://0.0.0.0:61616"),
        r#"bad.toml: group[hub].member[hub-1].listener[1].url: 0.0.0.0:61616 overlaps 127.0.0.1:61616 of group[hub].member[hub-1].listener[0].url (same port, and one listens on every address); give every listener, admin and replication address its own port"#,
    ),
    (
        "URL without a port",
        r#"[mesh]
name = "demo"
[[group]]
name = "hub"
[[group.member]]
name = "hub-1"
admin = "127.0.0.1:8161"
[[group.member.listener]]
url = "tcp://localhost"
"#,
        r#"bad.toml: group[hub].member[hub-1].listener[0].url: "tcp://localhost" has no port; write tcp://IP:PORT, e.g. tcp://127.0.0.1:61616"#,
    ),
    (
        "unknown scheme",
        listener!("http://127.0.0.1:8080"),
        r#"bad.toml: group[hub].member[hub-1].listener[1].url: "http://127.0.0.1:8080" has an unknown scheme "http"; use tcp, ssl, stomp, stomp+ssl, mqtt, mqtt+ssl, quic, ws or wss, e.g. tcp://127.0.0.1:61616"#,
    ),
    (
        "host that is not an IP",
        listener!("stomp://broker1:61613"),
        r#"bad.toml: group[hub].member[hub-1].listener[1].url: "stomp://broker1:61613" has host "broker1", which is not an IP address; a listener binds an IP literal (127.0.0.1, 0.0.0.0, [::1]) or localhost, e.g. stomp://127.0.0.1:61613; set advertise for the name clients dial"#,
    ),
    (
        "port 0",
        listener!("stomp://127.0.0.1:0"),
        r#"bad.toml: group[hub].member[hub-1].listener[1].url: "stomp://127.0.0.1:0" has an invalid port "0"; use a port from 1 to 65535, e.g. stomp://127.0.0.1:61613"#,
    ),
    (
        "admin without port",
        r#"[mesh]
name = "demo"
[[group]]
name = "hub"
[[group.member]]
name = "hub-1"
admin = "127.0.0.1"
[[group.member.listener]]
url = "tcp://127.0.0.1:61616"
"#,
        r#"bad.toml: group[hub].member[hub-1].admin: "127.0.0.1" has no port; write IP:PORT, e.g. 127.0.0.1:8161"#,
    ),
    (
        "election none with two members (default election)",
        concat!(base!(), "\n[[group.member]]\nname = \"hub-2\"\nadmin = \"127.0.0.1:8162\"\n[[group.member.listener]]\nurl = \"tcp://127.0.0.1:61626\"\n"),
        r#"bad.toml: group[hub]: has 2 members, but election "none" (the default) allows exactly one; set election = "file-lock" (members share a store on one machine) or "zookeeper" (replicated), or give each member its own group"#,
    ),
    (
        "unknown election",
        r#"[mesh]
name = "demo"
[[group]]
name = "hub"
election = "zk"
[[group.member]]
name = "hub-1"
admin = "127.0.0.1:8161"
[[group.member.listener]]
url = "tcp://127.0.0.1:61616"
"#,
        r#"bad.toml: group[hub].election: is "zk", but must be one of: none, file-lock or zookeeper; write one of them in quotes, e.g. election = "none""#,
    ),
    (
        "zookeeper election without [zookeeper]",
        r#"[mesh]
name = "demo"
[[group]]
name = "hub"
election = "zookeeper"
[[group.member]]
name = "hub-1"
admin = "127.0.0.1:8161"
replication = "127.0.0.1:61619"
[[group.member.listener]]
url = "tcp://127.0.0.1:61616"
"#,
        r#"bad.toml: zookeeper: is missing, but group[hub] has election = "zookeeper"; add a [zookeeper] section with connect = "127.0.0.1:2181""#,
    ),
    (
        "[zookeeper] that no group uses",
        concat!(base!(), "\n[zookeeper]\nconnect = \"127.0.0.1:2181\"\n"),
        r#"bad.toml: zookeeper: is set, but no group has election = "zookeeper"; remove the [zookeeper] section, or set election = "zookeeper" on a replicated group"#,
    ),
    (
        "bad zookeeper root and connect list",
        r#"[mesh]
name = "demo"
[zookeeper]
connect = "127.0.0.1:2181,,zk2"
root = "meshmq/"
[[group]]
name = "hub"
election = "zookeeper"
[[group.member]]
name = "hub-1"
admin = "127.0.0.1:8161"
replication = "127.0.0.1:61619"
[[group.member.listener]]
url = "tcp://127.0.0.1:61616"
"#,
        r#"bad.toml: zookeeper.connect: "127.0.0.1:2181,,zk2" has an empty entry; list the ZooKeeper servers, e.g. connect = "127.0.0.1:2181,127.0.0.1:2182"
bad.toml: zookeeper.connect: "zk2" has no port; write HOST:PORT, e.g. 127.0.0.1:2181
bad.toml: zookeeper.root: "meshmq/" is not a znode path; write an absolute path without a trailing '/', e.g. root = "/meshmq""#,
    ),
    (
        "sync mode that needs zookeeper",
        r#"[mesh]
name = "demo"
[[group]]
name = "hub"
sync = "remote_disk"
[[group.member]]
name = "hub-1"
admin = "127.0.0.1:8161"
[[group.member.listener]]
url = "tcp://127.0.0.1:61616"
"#,
        r#"bad.toml: group[hub].sync: is "remote_disk", which waits for replicas, and only election = "zookeeper" groups have them; use local_disk or local_mem, or set election = "zookeeper""#,
    ),
    (
        "zookeeper member without replication, replicas above the member count",
        r#"[mesh]
name = "demo"
[zookeeper]
connect = "127.0.0.1:2181"
[[group]]
name = "hub"
election = "zookeeper"
replicas = 3
[[group.member]]
name = "hub-1"
admin = "127.0.0.1:8161"
replication = "127.0.0.1:61619"
[[group.member.listener]]
url = "tcp://127.0.0.1:61616"
[[group.member]]
name = "hub-2"
admin = "127.0.0.1:8162"
[[group.member.listener]]
url = "tcp://127.0.0.1:61626"
"#,
        r#"bad.toml: group[hub].member[hub-2].replication: is required for election = "zookeeper"; set the address followers replicate the journal from, e.g. replication = "127.0.0.1:61619"
bad.toml: group[hub].replicas: is 3, but the group has 2 members; set replicas to at most 2, or add members
bad.toml: group[hub].replication_token: is missing, and the group's 2 members replicate its journal to each other: without it anyone who reaches a replication port could follow the master and acknowledge writes; make one with `meshmq token` and set replication_token = "THAT TOKEN" in this [[group]] (every member reads the same file)"#,
    ),
    (
        "a replication token short enough to guess is refused without echoing it",
        r#"[mesh]
name = "demo"
[zookeeper]
connect = "127.0.0.1:2181"
[[group]]
name = "hub"
election = "zookeeper"
replication_token = "short-token"
[[group.member]]
name = "hub-1"
admin = "127.0.0.1:8161"
replication = "127.0.0.1:61619"
[[group.member.listener]]
url = "tcp://127.0.0.1:61616"
"#,
        r#"bad.toml: group[hub].replication_token: is 11 characters long, shorter than 16: it could be guessed; make one with `meshmq token` and set replication_token = "THAT TOKEN" in this [[group]] (every member reads the same file)"#,
    ),
    (
        "replication and replication_token outside zookeeper",
        r#"[mesh]
name = "demo"
[[group]]
name = "hub"
replication_token = "s3cret"
[[group.member]]
name = "hub-1"
admin = "127.0.0.1:8161"
replication = "127.0.0.1:61619"
[[group.member.listener]]
url = "tcp://127.0.0.1:61616"
"#,
        r#"bad.toml: group[hub].member[hub-1].replication: is only used by election = "zookeeper" groups, and this group's election is "none"; remove it, or set election = "zookeeper"
bad.toml: group[hub].replication_token: is only used by election = "zookeeper" groups, and this group's election is "none"; remove it, or set election = "zookeeper""#,
    ),
    (
        "file-lock without shared_dir",
        r#"[mesh]
name = "demo"
[[group]]
name = "hub"
election = "file-lock"
[[group.member]]
name = "hub-1"
admin = "127.0.0.1:8161"
[[group.member.listener]]
url = "tcp://127.0.0.1:61616"
"#,
        r#"bad.toml: group[hub].shared_dir: is required for election = "file-lock"; set the directory every member of the group locks and shares, e.g. shared_dir = "data/hub""#,
    ),
    (
        "shared_dir and lock_poll outside file-lock",
        r#"[mesh]
name = "demo"
[[group]]
name = "hub"
shared_dir = "data/hub"
lock_poll = "1s"
[[group.member]]
name = "hub-1"
admin = "127.0.0.1:8161"
[[group.member.listener]]
url = "tcp://127.0.0.1:61616"
"#,
        r#"bad.toml: group[hub].lock_poll: is only used by election = "file-lock" groups, and this group's election is "none"; remove it, or set election = "file-lock"
bad.toml: group[hub].shared_dir: is only used by election = "file-lock" groups, and this group's election is "none"; remove it, or set election = "file-lock""#,
    ),
    (
        "ssl listener without certificate and key",
        listener!("ssl://127.0.0.1:61617"),
        r#"bad.toml: group[hub].member[hub-1].listener[1].tls_cert: is required because the url's scheme is "ssl"; set the PEM certificate chain file, e.g. tls_cert = "certs/hub-1.pem"
bad.toml: group[hub].member[hub-1].listener[1].tls_key: is required because the url's scheme is "ssl"; set the PEM private key file, e.g. tls_key = "certs/hub-1.key""#,
    ),
    (
        "tls keys on a tcp listener",
        concat!(base!(), "tls_cert = \"certs/hub-1.pem\"\n"),
        r#"bad.toml: group[hub].member[hub-1].listener[0].tls_cert: is only used by ssl, stomp+ssl, mqtt+ssl, quic and wss listeners, and this one is "tcp"; remove it, or change the url's scheme to ssl, stomp+ssl, mqtt+ssl, quic or wss"#,
    ),
    (
        "connector to an unknown group",
        concat!(base!(), edge!(), "\n[[connector]]\nfrom = \"hub\"\nto = \"egde\"\n"),
        r#"bad.toml: connector[hub-egde].to: no group is named "egde"; use one of: hub, edge"#,
    ),
    (
        "connector from a group to itself",
        concat!(base!(), "\n[[connector]]\nfrom = \"hub\"\nto = \"hub\"\n"),
        r#"bad.toml: connector[hub-hub].to: is "hub", the same group as from: a connector from a group to itself forwards nothing; set to to another group, or remove the connector"#,
    ),
    (
        "the same from/to twice",
        connector!("[[connector]]\nname = \"again\"\nfrom = \"hub\"\nto = \"edge\"\n"),
        r#"bad.toml: connector[again]: links hub to edge, like connector[hub-edge]; keep one connector per pair of groups and merge their options"#,
    ),
    (
        "a reverse connector next to a duplex one",
        connector!("duplex = true\n[[connector]]\nfrom = \"edge\"\nto = \"hub\"\n"),
        r#"bad.toml: connector[edge-hub]: links edge to hub, but connector[hub-edge] links hub to edge and a duplex connector already forwards both ways; remove one of them, or set duplex = false on both"#,
    ),
    (
        "transport without matching listeners",
        connector!("transport = \"ssl\"\ntls_ca = \"ca.pem\"\n"),
        r#"bad.toml: connector[hub-edge].transport: is "ssl", but member edge-1 of group edge has no ssl listener; give every member of edge a listener with scheme ssl, or set transport to a scheme they all listen on"#,
    ),
    (
        "tls_ca on a tcp connector",
        connector!("tls_ca = \"ca.pem\"\n"),
        r#"bad.toml: connector[hub-edge].tls_ca: is set, but the transport is tcp (no TLS); remove tls_ca, or set transport = "ssl" or "quic""#,
    ),
    (
        "a connector uri with an unknown failover option",
        connector!("uri = \"failover:(tcp://127.0.0.1:61716)?initialReconectDelay=5\"\n"),
        r#"bad.toml: connector[hub-edge].uri: "failover:(tcp://127.0.0.1:61716)?initialReconectDelay=5": unknown failover option(s) initialReconectDelay; the options are initialReconnectDelay, maxReconnectDelay, useExponentialBackOff, reconnectDelayExponent, maxReconnectAttempts, startupMaxReconnectAttempts, randomize, backup, backupPoolSize, priorityBackup, priorityURIs, timeout, trackMessages, maxCacheSize, updateURIsSupported, updateURIsURL, rebalanceUpdateURIs, reconnectSupported, warnAfterReconnectAttempts (and nested.* for every broker URL); write failover:(tcp://HOST:PORT,tcp://HOST:PORT)?option=value with ActiveMQ failover options (initialReconnectDelay, maxReconnectDelay, useExponentialBackOff, reconnectDelayExponent, randomize, nested.*)"#,
    ),
    (
        "a connector uri with options only clients honour",
        connector!("uri = \"failover:(tcp://127.0.0.1:61716)?trackMessages=true&timeout=5\"\n"),
        r#"bad.toml: connector[hub-edge].uri: sets timeout, trackMessages (only clients honour them); write failover:(tcp://HOST:PORT,tcp://HOST:PORT)?option=value with ActiveMQ failover options (initialReconnectDelay, maxReconnectDelay, useExponentialBackOff, reconnectDelayExponent, randomize, nested.*)"#,
    ),
    (
        "a connector uri of another scheme than its transport, with reconnect_* keys too",
        connector!("uri = \"ssl://127.0.0.1:61716\"\nreconnect_multiplier = 1.5\n"),
        r#"bad.toml: connector[hub-edge].uri: names ssl://127.0.0.1:61716, but the connector's transport is tcp; write tcp:// URIs, or set transport to their scheme
bad.toml: connector[hub-edge].uri: is set together with reconnect_multiplier; set the reconnect delays in one place: the uri's failover options or the reconnect_* keys"#,
    ),
    (
        "ssl connector without tls_ca",
        connector!("transport = \"ssl\"\n"),
        concat!(
            r#"bad.toml: connector[hub-edge].transport: is "ssl", but member edge-1 of group edge has no ssl listener; give every member of edge a listener with scheme ssl, or set transport to a scheme they all listen on"#,
            "\n",
            r#"bad.toml: connector[hub-edge].tls_ca: is missing: ssl and quic connectors verify the target's certificate; set tls_ca to the CA file that signed the target members' certificates, e.g. the ca.pem of `meshmq certs`"#
        ),
    ),
    (
        "static_bridge without statically_included",
        connector!("static_bridge = true\n"),
        r#"bad.toml: connector[hub-edge].static_bridge: is true, but statically_included is empty, so the bridge would forward nothing; list the destinations to forward in statically_included, or set static_bridge = false"#,
    ),
    (
        "suppress_duplicate_topic_subscriptions = false (duplicates in cycles)",
        connector!("suppress_duplicate_topic_subscriptions = false\n"),
        r#"bad.toml: connector[hub-edge].suppress_duplicate_topic_subscriptions: is false, which would give every network topic subscription its own copy, so a topic message would reach a group once per route in a cyclic mesh; meshmq always sends each topic message to each subscribing group once, over its shortest route; remove the key or set it to true"#,
    ),
    (
        "reconnect_multiplier below 1",
        connector!("reconnect_multiplier = 0.5\n"),
        r#"bad.toml: connector[hub-edge].reconnect_multiplier: is 0.5, but must be at least 1.0; write 1.0 to retry at a constant delay, or more to back off, e.g. reconnect_multiplier = 2.0"#,
    ),
    (
        "prefetch 0",
        connector!("prefetch = 0\n"),
        r#"bad.toml: connector[hub-edge].prefetch: is 0, but must be at least 1; write a whole number from 1 to 4294967295"#,
    ),
    (
        "reconnect_max_delay below reconnect_initial_delay",
        connector!("reconnect_initial_delay = \"1m\"\n"),
        r#"bad.toml: connector[hub-edge].reconnect_max_delay: is 30s (the default), shorter than reconnect_initial_delay (1m); make reconnect_max_delay at least reconnect_initial_delay"#,
    ),
    (
        "password_file without username",
        connector!("password_file = \"secrets/bridge\"\n"),
        r#"bad.toml: connector[hub-edge].password_file: is set, but username is not; set username too, or remove password_file"#,
    ),
    (
        "bad destination pattern",
        connector!("excluded = [\"queue://a.>.b\"]\n"),
        r#"bad.toml: connector[hub-edge].excluded[0]: "queue://a.>.b" uses '>' before the last segment: '>' matches the rest and must come last; write a destination pattern such as "queue://orders.>" or "topic://prices.*""#,
    ),
    (
        "sizes that do not parse, or are zero",
        concat!("[broker]\nmemory_limit = \"1gb\"\nmax_frame_size = \"0\"\n", base!()),
        r#"bad.toml: broker.memory_limit: "1gb" has an unknown unit "gb"; write a whole number of bytes with an optional unit KiB, MiB, GiB, TiB, KB, MB or GB, e.g. "64MiB"
bad.toml: broker.max_frame_size: is "0", but must be more than zero; write a positive size such as "64MiB""#,
    ),
    (
        "durations that do not parse, or are zero",
        concat!("[broker]\nheartbeat = \"10\"\nconnect_timeout = \"0s\"\n", base!()),
        r#"bad.toml: broker.heartbeat: "10" is not a duration (time unit needed, for example 10sec or 10ms); write a number and a unit, e.g. "500ms", "10s" or "1m"
bad.toml: broker.connect_timeout: is "0s", but must be longer than zero; write a positive duration such as "1s""#,
    ),
    (
        "on_full keyword",
        concat!("[[policy]]\ndestination = \"queue://orders.>\"\non_full = \"drop\"\n", base!()),
        r#"bad.toml: policy[0].on_full: is "drop", but must be one of: block or fail; write one of them in quotes, e.g. on_full = "block""#,
    ),
    (
        "policy without destination, topic limit on a queue pattern",
        concat!("[[policy]]\nprefetch = 0\n[[policy]]\ndestination = \"queue://x\"\ntopic_pending_limit = 5\n", base!()),
        r#"bad.toml: policy[0].destination: is required; write the destinations it applies to, e.g. destination = "queue://orders.>"
bad.toml: policy[1].topic_pending_limit: only applies to topics, and "queue://x" is a queue pattern; remove it, or move it to a policy for topic:// destinations"#,
    ),
    (
        "store limit below a segment",
        concat!("[store]\nsegment_size = \"64MiB\"\nstore_limit = \"1MiB\"\n", base!()),
        r#"bad.toml: store.store_limit: is "1MiB", less than one segment (segment_size "64MiB"); make store_limit at least segment_size, or remove it for no limit"#,
    ),
    (
        "ACL naming a security group no user belongs to",
        concat!("[[security.user]]\nname = \"alice\"\npassword_hash = \"", "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc", "\"\ngroups = [\"producers\"]\n[[security.acl]]\ndestination = \"queue://orders.>\"\nread = [\"consumer\"]\n", base!()),
        r#"bad.toml: security.acl[0].read[0]: names security group "consumer", which no user belongs to; add "consumer" to some user's groups, or fix the name (groups in use: producers)"#,
    ),
    (
        "plaintext password",
        concat!("[[security.user]]\nname = \"alice\"\npassword_hash = \"hunter2\"\n", base!()),
        r#"bad.toml: security.user[alice].password_hash: is not a password hash (it looks like a plaintext password, which must never be stored); run `meshmq passwd` and paste the argon2 hash it prints"#,
    ),
    (
        "malformed PHC string",
        concat!("[[security.user]]\nname = \"alice\"\npassword_hash = \"$argon2id$v=19$m=65536\"\n", base!()),
        r#"bad.toml: security.user[alice].password_hash: has no salt or no hash part; run `meshmq passwd` and paste the argon2 hash it prints"#,
    ),
    (
        "duplicate user names",
        concat!("[[security.user]]\nname = \"alice\"\npassword_hash = \"", "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc", "\"\n[[security.user]]\nname = \"alice\"\npassword_hash = \"", "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc", "\"\n", base!()),
        r#"bad.toml: security.user[1].name: "alice" is also the name of security.user[0]; give each user a different name"#,
    ),
    (
        "update_cluster_clients_on_remove without update_cluster_clients",
        concat!(base!(), "update_cluster_clients_on_remove = true\n"),
        r#"bad.toml: group[hub].member[hub-1].listener[0].update_cluster_clients_on_remove: is true, but update_cluster_clients is not; set update_cluster_clients = true too, or remove this key"#,
    ),
    (
        "a regex that does not compile",
        concat!(base!(), "update_cluster_filter = [\"edge-(\"]\n"),
        r#"bad.toml: group[hub].member[hub-1].listener[0].update_cluster_filter[0]: "edge-(" is not a valid regex (unclosed group); write a regex over group names, e.g. "edge-.*""#,
    ),
    (
        "a cluster filter that matches no group with a client listener",
        concat!(base!(), "update_cluster_clients = true\nupdate_cluster_filter = [\"egde\", \"edge-[0-9]\"]\n", edge!()),
        r#"bad.toml: group[hub].member[hub-1].listener[0].update_cluster_filter: ["egde", "edge-[0-9]"] matches no group with a client listener (those are: hub, edge); write regexes that match whole group names, e.g. ["edge-.*"]"#,
    ),
    (
        "a cluster filter that leaves out the listener's own group",
        concat!(base!(), "rebalance_cluster_clients = true\nupdate_cluster_filter = [\"edge\"]\n", edge!()),
        r#"bad.toml: group[hub].member[hub-1].listener[0].update_cluster_filter: ["edge"] leaves out this listener's own group "hub"; add a regex matching "hub": its clients are always told of their own group"#,
    ),
    (
        "advertise needed for a wildcard listener when cluster updates are on",
        r#"[mesh]
name = "demo"
[[group]]
name = "hub"
[[group.member]]
name = "hub-1"
admin = "127.0.0.1:8161"
[[group.member.listener]]
url = "tcp://0.0.0.0:61616"
update_cluster_clients = true
"#,
        r#"bad.toml: group[hub].member[hub-1].listener[0].advertise: is required: tcp://0.0.0.0:61616 listens on every address and cluster updates are on, so clients need an address to dial; set advertise = "tcp://HOST:61616" with the host name clients use"#,
    ),
    (
        "two members sharing a data_dir",
        concat!(base!(), "\n[[group]]\nname = \"edge\"\n[[group.member]]\nname = \"edge-1\"\nadmin = \"127.0.0.1:8171\"\ndata_dir = \"./data/hub-1\"\n[[group.member.listener]]\nurl = \"tcp://127.0.0.1:61716\"\n"),
        r#"bad.toml: group[edge].member[edge-1].data_dir: "./data/hub-1" is also the directory of group[hub].member[hub-1].data_dir; give each member its own data_dir and each file-lock group its own shared_dir; two brokers must never share a journal by accident"#,
    ),
    (
        "unknown key (serde), with a suggestion",
        concat!(base!(), "max_conections = 10\n"),
        r#"bad.toml: group[hub].member[hub-1].listener[0].max_conections: unknown key; did you mean "max_connections"? valid keys here are: url, advertise, max_connections, update_cluster_clients, rebalance_cluster_clients, update_cluster_clients_on_remove, update_cluster_filter, tls_cert, tls_key, tls_client_ca"#,
    ),
    (
        "wrong type (serde), shown by the element's name",
        concat!(base!(), "max_connections = \"10\"\n"),
        r#"bad.toml: group[hub].member[hub-1].listener[0].max_connections: is "10", but must be a whole number; write it like max_connections = 10000"#,
    ),
    (
        "[group] instead of [[group]]",
        "[mesh]\nname = \"demo\"\n[group]\nname = \"hub\"\n",
        r#"bad.toml: group: is a table, but must be a list; write a [[group]] table (double brackets) for each entry"#,
    ),
    (
        "broken TOML",
        "[mesh]\nname = \"demo\n",
        r#"bad.toml: TOML syntax error at line 2, column 13 (name = "demo): invalid basic string, expected `"`; fix the TOML at line 2"#,
    ),
    (
        "member without admin",
        r#"[mesh]
name = "demo"
[[group]]
name = "hub"
[[group.member]]
name = "hub-1"
[[group.member.listener]]
url = "tcp://127.0.0.1:61616"
"#,
        r#"bad.toml: group[hub].member[hub-1].admin: is required; set the admin HTTP address, e.g. admin = "127.0.0.1:8161""#,
    ),
    (
        "unknown top-level section",
        concat!("[brokr]\nprefetch = 10\n", base!()),
        r#"bad.toml: brokr: unknown key; did you mean "broker"? valid keys here are: mesh, broker, policy, store, metrics, security, zookeeper, rebalance, group, connector, admin"#,
    ),
    (
        "a hash of another algorithm",
        concat!("[[security.user]]\nname = \"alice\"\npassword_hash = \"$pbkdf2-sha256$i=1000$c29tZXNhbHQ$c29tZWhhc2hzb21laGFzaA\"\n", base!()),
        r#"bad.toml: security.user[alice].password_hash: uses algorithm "pbkdf2-sha256", but only argon2 hashes (argon2id, argon2i, argon2d) are accepted; run `meshmq passwd` and paste the argon2 hash it prints"#,
    ),
    (
        "an ACL when no user is defined",
        concat!("[[security.acl]]\ndestination = \"queue://orders.>\"\nwrite = [\"producers\"]\n", base!()),
        r#"bad.toml: security.acl[0].write[0]: names security group "producers", which no user belongs to; no user is defined: add a [[security.user]] with groups = ["producers"]"#,
    ),
    (
        "advertise with another scheme than the listener",
        concat!(base!(), "advertise = \"ssl://broker1.example.com:61617\"\n"),
        r#"bad.toml: group[hub].member[hub-1].listener[0].advertise: has scheme "ssl", but the listener's url is "tcp"; advertise the same scheme, e.g. advertise = "tcp://broker1.example.com:61617""#,
    ),
    (
        "IPv6 without brackets, and a bind that is not an IP",
        r#"[mesh]
name = "demo"
[[group]]
name = "hub"
[[group.member]]
name = "hub-1"
admin = "::1:8161"
bind = "eth0"
[[group.member.listener]]
url = "tcp://127.0.0.1:61616"
"#,
        r#"bad.toml: group[hub].member[hub-1].admin: "::1:8161" has an IPv6 address without brackets; write [IPv6]:PORT, e.g. [::1]:8161
bad.toml: group[hub].member[hub-1].bind: "eth0" is not an IP address; write an IP literal such as 127.0.0.1 or ::1, without a port"#,
    ),
    (
        "connector without from, and an unknown transport",
        concat!(base!(), edge!(), "\n[[connector]]\nname = \"x\"\nto = \"edge\"\ntransport = \"udp\"\n"),
        r#"bad.toml: connector[x].from: is required; name a group, e.g. from = "hub"
bad.toml: connector[x].transport: is "udp", but must be one of: tcp, ssl or quic; write one of them in quotes, e.g. transport = "tcp""#,
    ),
    (
        "a listener that accepts no connection",
        concat!(base!(), "max_connections = 0\n"),
        r#"bad.toml: group[hub].member[hub-1].listener[0].max_connections: is 0, but must be at least 1; write a whole number from 1 to 4294967295"#,
    ),
    (
        "a zookeeper digest that is not user:password is refused without echoing it",
        r#"[mesh]
name = "demo"
[zookeeper]
connect = "127.0.0.1:2181"
digest = "justapassword"
[[group]]
name = "hub"
election = "zookeeper"
[[group.member]]
name = "hub-1"
admin = "127.0.0.1:8161"
replication = "127.0.0.1:61619"
[[group.member.listener]]
url = "tcp://127.0.0.1:61616"
"#,
        r#"bad.toml: zookeeper.digest: is not written user:password; write digest = "USER:PASSWORD""#,
    ),
    (
        "a policy pattern without a scheme",
        concat!("[[policy]]\ndestination = \"orders.>\"\nprefetch = 5\n", base!()),
        r#"bad.toml: policy[0].destination: "orders.>" is not a destination pattern; write a destination pattern such as "queue://orders.>" or "topic://prices.*""#,
    ),
    (
        "a size too large for a frame",
        concat!("[broker]\nmax_frame_size = \"8GiB\"\n", base!()),
        r#"bad.toml: broker.max_frame_size: is "8GiB", but a frame's length is a 32-bit number, so at most 4294967295 bytes; write at most "4095MiB", e.g. "100MiB""#,
    ),

    (
        "nan is refused, not read as an unset key",
        connector!("reconnect_multiplier = nan\n"),
        r#"bad.toml: connector[hub-edge].reconnect_multiplier: is nan or inf, which no key accepts; write it like reconnect_multiplier = 2.0"#,
    ),

];

fn refusal(text: &str) -> String {
    match parse_str(text, Path::new("bad.toml")) {
        Ok(_) => "accepted".to_string(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_bad_topology_is_refused_with_its_exact_error() {
    let mut wrong = Vec::new();
    for (i, (check, text, expected)) in ROWS.iter().enumerate() {
        let got = refusal(text);
        if got != *expected {
            wrong.push(format!(
                "row {i} ({check}):\n  expected: {expected}\n  got:      {got}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_base_of_the_table_is_itself_good_and_served_by_this_build() {
    let topo = parse_str(base!(), Path::new("good.toml"));
    assert_eq!(topo.map(|t| t.unsupported()).ok(), Some(Vec::new()));
}

#[test]
fn a_missing_file_is_named_with_a_fix() {
    let err = load(Path::new("no/such/topology.toml")).map(|_| ());
    assert_eq!(
        err.map_err(|e| e.to_string()),
        Err("no/such/topology.toml: does not exist; check the path given with --topology, e.g. topologies/reference.toml".to_string())
    );
}

fn reference_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/reference.toml")
}

/// The reference topology sets every key of the format (a unit test checks that); it loads, and
/// `unsupported()` names nothing: this build serves every key.
#[test]
fn the_full_reference_topology_loads_and_lists_what_this_build_cannot_serve() {
    let topo = match load(&reference_path()) {
        Ok(t) => t,
        Err(e) => panic!("reference.toml must load:\n{e}"),
    };
    assert_eq!(
        topo.unsupported(),
        Vec::<String>::new(),
        "every key is served"
    );

    let dir = reference_path()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let Some((hub, hub_1)) = topo.member("hub-1") else {
        panic!("hub-1 is a member");
    };
    assert_eq!(hub.name.as_str(), "hub");
    assert_eq!(hub_1.data_dir, dir.join("data/hub-1"));
    assert_eq!(
        hub.broker.memory_limit,
        2 << 30,
        "[group.broker] overrides [broker]"
    );
    assert_eq!(topo.broker.memory_limit, 1 << 30);
    assert_eq!(topo.members().count(), 6);
    let Some(edge_1) = topo.group("edge-1") else {
        panic!("edge-1 is a group");
    };
    assert_eq!(edge_1.shared_dir, Some(dir.join("data/edge-1")));
    assert_eq!(
        edge_1.replicas, 2,
        "replicas defaults to the number of members"
    );
    assert_eq!(
        topo.connectors[1].name.as_str(),
        "edge-2-hub",
        "default connector name"
    );

    let summary = topo.summary();
    for line in [
        "mesh reference (",
        "group hub: election zookeeper, sync quorum_mem, replicas 3, 3 members",
        "  member hub-1: tcp://127.0.0.1:61616, ssl://127.0.0.1:61617; admin http://127.0.0.1:8161",
        "  edge-2-hub: edge-2 <-> hub over ssl",
        "users: 2, acls: 1, anonymous refused",
        "policies (first match wins): queue://orders.>, topic://prices.>",
    ] {
        assert!(summary.contains(line), "summary lacks {line:?}:\n{summary}");
    }
}
