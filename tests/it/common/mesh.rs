//! Multi-group meshes of real `meshmq` processes: a topology built from a few lines per group
//! and connector, members started, killed (`kill -9`) and restarted by name, their `/status`
//! read, and failover URLs over their listeners. A wait that gives up prints every member's
//! log.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use meshmq::client::{Client, ClientOptions};
use meshmq::server::admin::MemberStatus;
use tempfile::TempDir;

use super::topology::{self, Connector, Group, Topology, QUICK_REDIAL};
use super::{free_ports, spawn_broker, ChildGuard};

struct GroupSpec {
    name: String,
    members: usize,
    listener: String,
    /// `election = "zookeeper"`: each member its own journal, replicated to the others.
    replicated: bool,
    /// Lines of the `[[group]]` table itself (e.g. `sync = "local_disk"`).
    lines: String,
}

/// Builds a mesh topology.
#[derive(Default)]
pub struct MeshBuilder {
    groups: Vec<GroupSpec>,
    connectors: Vec<Connector>,
    broker: Vec<String>,
    sections: Vec<String>,
    stomp: bool,
    mqtt: bool,
    zookeeper: Option<String>,
}

impl MeshBuilder {
    pub fn new() -> MeshBuilder {
        MeshBuilder::default()
    }

    /// A group of `members` members (more than one: a file-lock pair sharing a directory)
    /// whose native listeners carry the `listener` lines (e.g. `update_cluster_clients = true`).
    pub fn group(mut self, name: &str, members: usize, listener: &str) -> MeshBuilder {
        self.groups.push(GroupSpec {
            name: name.to_string(),
            members,
            listener: listener.to_string(),
            replicated: false,
            lines: String::new(),
        });
        self
    }

    /// A ZooKeeper-elected group of `members` members (`replicas = members`, `quorum_mem`),
    /// each with its own journal and replication port; ZooKeeper is at `zk_connect`.
    pub fn replicated_group(
        mut self,
        name: &str,
        members: usize,
        listener: &str,
        zk_connect: &str,
    ) -> MeshBuilder {
        self.zookeeper = Some(zk_connect.to_string());
        self.groups.push(GroupSpec {
            name: name.to_string(),
            members,
            listener: listener.to_string(),
            replicated: true,
            lines: format!(
                "election = \"zookeeper\"\nreplicas = {members}\nsync = \"quorum_mem\"\n\
                 replication_token = \"mesh-tests-replication-token\"\n"
            ),
        });
        self
    }

    /// Lines of group `name`'s own `[[group]]` table (e.g. `sync = "local_disk"`).
    pub fn group_lines(mut self, name: &str, lines: &str) -> MeshBuilder {
        let g = self
            .groups
            .iter_mut()
            .find(|g| g.name == name)
            .unwrap_or_else(|| panic!("no group {name}"));
        g.lines.push_str(lines);
        g.lines.push('\n');
        self
    }

    /// A connector written exactly as given.
    pub fn connector_as(mut self, connector: Connector) -> MeshBuilder {
        self.connectors.push(connector);
        self
    }

    /// A duplex connector `from` → `to` (its lines after the `to` key, e.g. `network_ttl = 2`).
    pub fn connector(mut self, from: &str, to: &str, extra: &str) -> MeshBuilder {
        let [initial, max] = QUICK_REDIAL;
        self.connectors.push(Connector::new(
            from,
            to,
            &[
                "duplex = true",
                initial,
                max,
                "heartbeat = \"500ms\"",
                extra,
            ],
        ));
        self
    }

    /// Tables appended as written, after `{url:MEMBER}` is replaced by that member's
    /// `tcp://` URL (e.g. a connector with a `uri`).
    pub fn section(mut self, text: &str) -> MeshBuilder {
        self.sections.push(text.to_string());
        self
    }

    /// Gives every member a `stomp://` listener too.
    pub fn stomp(mut self) -> MeshBuilder {
        self.stomp = true;
        self
    }

    /// Gives every member an `mqtt://` listener too.
    pub fn mqtt(mut self) -> MeshBuilder {
        self.mqtt = true;
        self
    }

    /// A line of the `[broker]` section.
    pub fn broker(mut self, line: &str) -> MeshBuilder {
        self.broker.push(line.to_string());
        self
    }

    /// Picks ports and writes the topology; nothing is started.
    pub fn build(self) -> Mesh {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker: Vec<&str> = self.broker.iter().map(String::as_str).collect();
        let mut t = Topology::new("test").table("broker", &broker);
        if let Some(connect) = &self.zookeeper {
            t = t.table(
                "zookeeper",
                &[
                    &format!("connect = \"{connect}\""),
                    "session_timeout = \"2s\"",
                    "root = \"/meshmq\"",
                ],
            );
        }
        let mut members = Vec::new();
        for g in &self.groups {
            let mut group = if g.members > 1 && !g.replicated {
                let shared = dir.path().join(format!("shared-{}", g.name));
                Group::file_lock(&g.name, &shared.display().to_string(), "200ms")
            } else {
                Group::new(&g.name)
            }
            .lines(&[&g.lines]);
            for i in 0..g.members {
                let name = if g.members > 1 {
                    format!("{}{}", g.name, (b'a' + i as u8) as char)
                } else {
                    g.name.clone()
                };
                let p = free_ports(5);
                let listen = SocketAddr::from(([127, 0, 0, 1], p[0]));
                let admin = SocketAddr::from(([127, 0, 0, 1], p[1]));
                let stomp = self.stomp.then(|| SocketAddr::from(([127, 0, 0, 1], p[2])));
                let mqtt = self.mqtt.then(|| SocketAddr::from(([127, 0, 0, 1], p[4])));
                let mut member = topology::Member::new(&name, admin)
                    .data_dir(dir.path().join(format!("data-{name}")));
                if g.replicated {
                    member = member.lines(&[&format!("replication = \"127.0.0.1:{}\"", p[3])]);
                }
                member = member.listener(&format!("tcp://{listen}"), &[&g.listener]);
                if let Some(addr) = stomp {
                    member = member.listener(&format!("stomp://{addr}"), &[]);
                }
                if let Some(addr) = mqtt {
                    member = member.listener(&format!("mqtt://{addr}"), &[]);
                }
                group = group.member(member);
                members.push(Member {
                    name,
                    group: g.name.clone(),
                    listen,
                    stomp,
                    mqtt,
                    ws: None,
                    admin,
                    proc: None,
                    log: dir.path().join(format!("{}.log", members.len())),
                });
            }
            t = t.group(group);
        }
        t = t.connectors(self.connectors);
        for section in &self.sections {
            let mut section = section.clone();
            for m in &members {
                section = section.replace(&format!("{{url:{}}}", m.name), &m.url());
            }
            t = t.section(&section);
        }
        let topology = t.write(dir.path(), "topology.toml");
        Mesh {
            dir,
            topology,
            written: Some(t),
            members,
        }
    }
}

pub struct Member {
    pub name: String,
    pub group: String,
    pub listen: SocketAddr,
    /// The STOMP listener, with [`MeshBuilder::stomp`].
    pub stomp: Option<SocketAddr>,
    /// The MQTT and WebSocket listeners of a shipped topology that has them.
    pub mqtt: Option<SocketAddr>,
    pub ws: Option<SocketAddr>,
    pub admin: SocketAddr,
    proc: Option<ChildGuard>,
    log: PathBuf,
}

impl Member {
    pub fn url(&self) -> String {
        format!("tcp://{}", self.listen)
    }

    pub fn running(&self) -> bool {
        self.proc.is_some()
    }

    /// The process id of the running member (`None` when it is not running or has exited).
    pub fn pid(&mut self) -> Option<i32> {
        let p = self.proc.as_mut()?;
        p.try_wait().is_none().then(|| p.pid())
    }

    pub fn status(&self) -> Option<MemberStatus> {
        super::try_status(self.admin)
    }

    /// True while this member serves its group.
    pub fn ready(&self) -> bool {
        super::is_ready(self.admin)
    }

    /// Client connections it holds now (0 when it does not answer).
    pub fn clients(&self) -> u64 {
        self.status()
            .and_then(|s| s.cluster)
            .map_or(0, |c| c.clients)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A running (or partly running) mesh.
pub struct Mesh {
    pub dir: TempDir,
    pub topology: PathBuf,
    /// What [`MeshBuilder::build`] wrote to `topology` (`None` for a shipped copy), for a test
    /// to write a variant of.
    pub written: Option<Topology>,
    pub members: Vec<Member>,
}

impl Mesh {
    /// A copy of the shipped `topologies/NAME`, every `127.0.0.1:PORT` moved to a free port
    /// (data directories default to the copy's directory); nothing is started.
    pub fn from_shipped(name: &str) -> Mesh {
        let original = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("topologies")
            .join(name);
        let text = std::fs::read_to_string(&original).expect("read the shipped topology");
        let marker = "127.0.0.1:";
        let mut ports: Vec<u16> = Vec::new();
        let mut rest = text.as_str();
        while let Some(at) = rest.find(marker) {
            rest = &rest[at + marker.len()..];
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            if rest[digits.len()..].starts_with('"') {
                ports.push(digits.parse().expect("a port"));
            }
        }
        let mut copy = text.clone();
        for (old, new) in ports.iter().zip(free_ports(ports.len())) {
            copy = copy.replace(&format!("{marker}{old}\""), &format!("{marker}{new}\""));
        }
        // The shipped file keeps its mesh secret beside the data (`meshmq up` writes it); the
        // copy uses the tests' secret file instead.
        let copy: String = copy
            .lines()
            .map(|line| {
                if line.starts_with("secret_file = ") {
                    format!(
                        "secret_file = {:?}",
                        super::mesh_secret_file().display().to_string()
                    )
                } else {
                    line.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let dir = tempfile::tempdir().expect("tempdir");
        let topology = dir.path().join(name);
        std::fs::write(&topology, &copy).expect("write the copy");
        let topo = meshmq::config::load(&topology).expect("the copy is a valid topology");
        let mut members = Vec::new();
        for g in &topo.groups {
            for m in &g.members {
                let addr_of = |scheme: &str| {
                    m.listeners
                        .iter()
                        .find(|l| l.url.scheme.to_string() == scheme)
                        .map(|l| l.url.addr)
                };
                members.push(Member {
                    name: m.name.as_str().to_string(),
                    group: g.name.as_str().to_string(),
                    listen: addr_of("tcp").expect("a tcp listener"),
                    stomp: addr_of("stomp"),
                    mqtt: addr_of("mqtt"),
                    ws: addr_of("ws"),
                    admin: m.admin,
                    proc: None,
                    log: dir.path().join(format!("{}.log", members.len())),
                });
            }
        }
        Mesh {
            dir,
            topology,
            written: None,
            members,
        }
    }

    pub fn member(&self, name: &str) -> &Member {
        self.members
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no member {name}"))
    }

    pub fn member_mut(&mut self, name: &str) -> &mut Member {
        self.members
            .iter_mut()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no member {name}"))
    }

    /// The members of `group`.
    pub fn group(&self, group: &str) -> Vec<&Member> {
        self.members.iter().filter(|m| m.group == group).collect()
    }

    /// Starts one member (does not wait).
    pub fn start(&mut self, name: &str) {
        let topology = self.topology.clone();
        let m = self.member_mut(name);
        assert!(m.proc.is_none(), "{name} is already running");
        m.proc = Some(spawn_broker(
            &topology,
            &m.name,
            &m.log,
            &[("MESHMQ_LOG", "info")],
        ));
    }

    /// Starts every member and waits until each group has a master.
    pub fn start_all(&mut self) {
        let names: Vec<String> = self.members.iter().map(|m| m.name.clone()).collect();
        for n in &names {
            self.start(n);
        }
        let groups: Vec<String> = self.members.iter().map(|m| m.group.clone()).collect();
        for g in groups {
            self.wait_until(&format!("group {g} has a master"), |mesh| {
                mesh.group(&g).iter().any(|m| m.ready())
            });
        }
    }

    /// `kill -9` of a member; waits for it to be gone.
    pub fn kill9(&mut self, name: &str) {
        let m = self.member_mut(name);
        m.proc.take().expect("running").kill9(name);
    }

    /// SIGTERM to a member (a graceful stop); waits until it has exited.
    pub fn stop(&mut self, name: &str) {
        let m = self.member_mut(name);
        m.proc.take().expect("running").stop(name);
    }

    /// SIGTERM to a member (a graceful stop); does not wait.
    pub fn sigterm(&self, name: &str) {
        if let Some(p) = &self.member(name).proc {
            p.signal(libc::SIGTERM);
        }
    }

    /// The member of `group` that serves now, if any.
    pub fn master(&self, group: &str) -> Option<&Member> {
        self.group(group).into_iter().find(|m| m.ready())
    }

    /// The names of the member of `group` that serves now and of one that stands by.
    pub fn master_and_standby(&self, group: &str) -> (String, String) {
        let master = self.master(group).expect("a master").name.clone();
        let standby = self
            .group(group)
            .iter()
            .find(|m| m.name != master)
            .expect("a standby")
            .name
            .clone();
        (master, standby)
    }

    /// `failover:(…)?options` over the listeners of `members`, in that order.
    pub fn failover_url(&self, members: &[&str], options: &str) -> String {
        let uris: Vec<String> = members.iter().map(|n| self.member(n).url()).collect();
        if options.is_empty() {
            format!("failover:({})", uris.join(","))
        } else {
            format!("failover:({})?{options}", uris.join(","))
        }
    }

    /// Polls `cond` every 50 ms; fails with every member's log after [`super::GUARD`].
    pub fn wait_until(&self, what: &str, mut cond: impl FnMut(&Mesh) -> bool) {
        let every = Duration::from_millis(50);
        super::wait::poll().every(every).until_or(
            what,
            || cond(self),
            || {
                let logs: Vec<String> = self
                    .members
                    .iter()
                    .map(|m| {
                        let log = m.log();
                        let tail: Vec<&str> = log.lines().rev().take(40).collect();
                        let tail: Vec<&str> = tail.into_iter().rev().collect();
                        format!("--- {} ---\n{}", m.name, tail.join("\n"))
                    })
                    .collect();
                logs.join("\n")
            },
        );
    }

    /// Waits until every running member reports each of its connectors up.
    pub fn wait_connected(&self) {
        self.wait_until("every running member's connectors are up", |mesh| {
            mesh.members.iter().filter(|m| m.running()).all(|m| {
                m.status()
                    .is_some_and(|s| s.connectors.iter().all(|c| c.up))
            })
        });
    }

    /// Waits until every running master sees `n` groups in its cluster view.
    pub fn wait_for_view(&self, groups: &[&str]) {
        self.wait_until(&format!("every master sees groups {groups:?}"), |mesh| {
            groups.iter().all(|g| {
                mesh.master(g)
                    .and_then(|m| m.status())
                    .and_then(|s| s.cluster)
                    .is_some_and(|c| {
                        groups
                            .iter()
                            .all(|want| c.groups.iter().any(|v| v.name == *want))
                    })
            })
        });
    }
}

/// Connects `n` clients to each URL (64 connects at a time); fails the test if one cannot.
pub async fn connect_clients(urls: &[(String, usize)]) -> Vec<Client> {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for (url, n) in urls {
        for _ in 0..*n {
            let (url, gate) = (url.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = gate.acquire().await.expect("semaphore");
                Client::connect(&url, ClientOptions::default()).await
            }));
        }
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.expect("task").expect("client connects"));
    }
    clients
}
