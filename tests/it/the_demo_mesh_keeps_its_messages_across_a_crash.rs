//! The demo mesh keeps its persistent messages across crashes: a copy of `topologies/demo.toml`
//! (free ports, a temporary data dir: three file-lock pairs, each sharing one journal directory)
//! run with `meshmq up`. Persistent messages are sent to the hub and to an edge; the hub's
//! master is killed with `kill -9` and its standby, taking over the same journal, delivers every
//! receipted message sent to the hub. Then the machine dies — `up` and every member killed with
//! `kill -9` at once — and the mesh brought up again has every receipted message that was not
//! consumed yet, on the hub and on the edge.

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::{History, SharedHistory, Up, GUARD};
use meshmq::client::{Client, Outgoing};

const ORDERS: &str = "queue://demo.orders";
const AUDIT: &str = "queue://demo.audit";

struct Member {
    name: String,
    admin: SocketAddr,
    url: String,
}

struct Demo {
    topology: PathBuf,
    /// Every group by name, with its members.
    groups: Vec<(String, Vec<Member>)>,
}

impl Demo {
    /// Copies the demo with every `127.0.0.1:PORT` moved to a free port and its shared
    /// directories under `dir`.
    fn copy_into(dir: &Path) -> Demo {
        let original = Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/demo.toml");
        let text = std::fs::read_to_string(&original).expect("read the demo topology");
        let mut ports: Vec<u16> = Vec::new();
        let marker = "127.0.0.1:";
        let mut rest = text.as_str();
        while let Some(at) = rest.find(marker) {
            rest = &rest[at + marker.len()..];
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            if rest[digits.len()..].starts_with('"') {
                ports.push(digits.parse().expect("a port"));
            }
        }
        assert!(ports.len() >= 6, "the demo's addresses: {ports:?}");
        let mut copy = text.clone();
        for (old, new) in ports.iter().zip(common::free_ports(ports.len())) {
            let from = format!("127.0.0.1:{old}\"");
            assert!(copy.contains(&from), "the demo has no {from}");
            copy = copy.replace(&from, &format!("127.0.0.1:{new}\""));
        }
        let shared = "shared_dir = \"../data/demo/";
        assert_eq!(copy.matches(shared).count(), 3, "three file-lock groups");
        copy = copy.replace(shared, "shared_dir = \"data/");
        copy = copy.replace("secret_file = \"../data/demo/", "secret_file = \"data/");
        let topology = common::write_file(dir, "demo.toml", &copy);

        let topo = meshmq::config::load(&topology).expect("the copy is a valid topology");
        let groups = topo
            .groups
            .iter()
            .map(|g| {
                assert_eq!(g.members.len(), 2, "{} is a pair", g.name.as_str());
                let members = g
                    .members
                    .iter()
                    .map(|m| Member {
                        name: m.name.as_str().to_string(),
                        admin: m.admin,
                        url: m
                            .listeners
                            .iter()
                            .map(|l| l.url.to_string())
                            .find(|u| u.starts_with("tcp://"))
                            .expect("a tcp listener"),
                    })
                    .collect();
                (g.name.as_str().to_string(), members)
            })
            .collect();
        Demo { topology, groups }
    }

    fn group(&self, name: &str) -> &[Member] {
        &self
            .groups
            .iter()
            .find(|(g, _)| g == name)
            .unwrap_or_else(|| panic!("the demo has no group {name}"))
            .1
    }

    /// The member of `group` that serves, once exactly one does.
    fn master(&self, group: &str) -> &Member {
        let members = self.group(group);
        let mut serving = Vec::new();
        common::wait_until(&format!("one member of {group} serves"), || {
            serving = members
                .iter()
                .filter(|m| matches!(common::http_get(m.admin, "/readyz"), Ok((200, _))))
                .collect();
            serving.len() == 1
        });
        serving[0]
    }

    fn up(&self) -> Up {
        Up::start(&self.topology)
    }

    /// Every address of every member is closed.
    fn wait_all_down(&self) {
        for (_, members) in &self.groups {
            for m in members {
                let listen: SocketAddr = m
                    .url
                    .trim_start_matches("tcp://")
                    .parse()
                    .expect("a tcp address");
                for addr in [m.admin, listen] {
                    common::wait_until("the killed members' ports are free", || {
                        common::refuses_connections(addr)
                    });
                }
            }
        }
    }
}

async fn send(url: &str, dest: &str, prefix: &str, count: usize, history: &SharedHistory) {
    let client = Client::connect(url, Default::default())
        .await
        .expect("connect");
    for i in 0..count {
        let name = format!("{prefix}-{i:03}");
        history.lock().unwrap().sent(&name);
        client
            .send_with_receipt(dest, &Outgoing::new(name.clone()).persistent(true))
            .await
            .expect("send");
        history.lock().unwrap().receipted(&name);
    }
    client.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_demo_keeps_its_messages_when_a_master_dies_and_when_the_machine_dies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let demo = Demo::copy_into(dir.path());
    let hub_history = History::shared();
    let edge_history = History::shared();

    let mut up = demo.up();
    let hub = demo.master("hub");
    send(&hub.url, ORDERS, "order", 100, &hub_history).await;
    let edge = demo.master("edge-1");
    send(&edge.url, AUDIT, "audit", 50, &edge_history).await;

    // The hub's master dies; its standby takes over the same journal and has every order.
    let killed = hub.name.clone();
    // SAFETY: signalling a member `up` started, found among its children by its command line.
    unsafe { libc::kill(up.pid_of(&killed), libc::SIGKILL) };
    let hub = demo.master("hub");
    assert_ne!(hub.name, killed, "the standby serves the hub");
    common::drain_at(&hub.url, hub.admin, ORDERS, &hub_history).await;
    hub_history.lock().unwrap().check();
    send(&hub.url, ORDERS, "later-order", 60, &hub_history).await;

    // The machine dies: `up` and its members, all at once.
    let members = common::children_of(up.0.proc.pid());
    assert_eq!(members.len(), 5, "five members still run: {members:?}");
    up.0.proc.signal(libc::SIGKILL);
    up.0.proc.wait_timeout(GUARD).expect("SIGKILL ends `up`");
    for pid in &members {
        // SAFETY: signalling the members `up` started, by the pids it reported as children.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    demo.wait_all_down();

    let again = demo.up();
    let hub = demo.master("hub");
    common::drain_at(&hub.url, hub.admin, ORDERS, &hub_history).await;
    let edge = demo.master("edge-1");
    common::drain_at(&edge.url, edge.admin, AUDIT, &edge_history).await;
    let h = hub_history.lock().unwrap();
    h.check();
    assert_eq!(h.receipted_count(), 160);
    drop(h);
    let h = edge_history.lock().unwrap();
    h.check();
    assert_eq!(h.receipted_count(), 50);
    drop(h);

    again.stop();
}
