//! The demo mesh keeps its persistent messages: a copy of `topologies/demo.toml` (free ports,
//! a temporary data dir) run with `meshmq up`, persistent messages sent to the hub and to an
//! edge, then `up` and every member killed with `kill -9` and the mesh brought up again — every
//! receipted message is there.

mod common;

use std::path::{Path, PathBuf};

use common::{meshmq, CliChild, History, SharedHistory, GUARD};
use meshmq::client::{Client, Outgoing};

/// The demo's addresses, in the order `free_ports` replaces them.
const DEMO_PORTS: [u16; 9] = [
    8161, 61616, 61613, 8162, 61626, 61623, 8163, 61636, 61633,
];

struct Demo {
    topology: PathBuf,
    /// The demo's port → the port this copy uses.
    ports: Vec<(u16, u16)>,
}

impl Demo {
    fn copy_into(dir: &Path) -> Demo {
        let original = Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/demo.toml");
        let mut text = std::fs::read_to_string(&original).expect("read the demo topology");
        let ports: Vec<(u16, u16)> = DEMO_PORTS
            .into_iter()
            .zip(common::free_ports(DEMO_PORTS.len()))
            .collect();
        for (old, new) in &ports {
            let from = format!("127.0.0.1:{old}\"");
            assert!(text.contains(&from), "the demo has no {from}");
            text = text.replace(&from, &format!("127.0.0.1:{new}\""));
        }
        assert!(text.contains("data_dir = \"../data/demo/"));
        text = text.replace("data_dir = \"../data/demo/", "data_dir = \"data/");
        Demo {
            topology: common::write_file(dir, "demo.toml", &text),
            ports,
        }
    }

    fn port(&self, demo: u16) -> u16 {
        self.ports
            .iter()
            .find(|(old, _)| *old == demo)
            .map(|(_, new)| *new)
            .expect("a demo port")
    }

    fn url(&self, demo: u16) -> String {
        format!("tcp://127.0.0.1:{}", self.port(demo))
    }

    fn admin(&self, demo: u16) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port(demo)))
    }

    fn up(&self) -> CliChild {
        let mut up = CliChild::spawn(meshmq().arg("up").arg(&self.topology));
        common::wait_until("`up` reports the mesh ready", || {
            assert!(
                up.proc.try_wait().is_none(),
                "up exited early:\n{}\n{}",
                up.stdout(),
                up.stderr()
            );
            up.stdout().contains("press Ctrl-C to stop every member")
        });
        up
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
async fn the_demo_brought_down_hard_and_up_again_has_its_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let demo = Demo::copy_into(dir.path());
    let hub_history = History::shared();
    let edge_history = History::shared();

    let mut up = demo.up();
    send(&demo.url(61616), "queue://demo.orders", "order", 100, &hub_history).await;
    send(&demo.url(61626), "queue://demo.audit", "audit", 50, &edge_history).await;

    // The machine dies: `up` and its members, all at once.
    let members = common::children_of(up.proc.pid());
    assert_eq!(members.len(), 3, "three members: {members:?}");
    up.proc.signal(libc::SIGKILL);
    up.proc.wait_timeout(GUARD).expect("SIGKILL ends `up`");
    for pid in &members {
        // SAFETY: signalling the members `up` started, by the pids it reported as children.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    for demo_port in DEMO_PORTS {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], demo.port(demo_port)));
        common::wait_until("the killed members' ports are free", || {
            common::refuses_connections(addr)
        });
    }

    let mut again = demo.up();
    common::drain_at(
        &demo.url(61616),
        demo.admin(8161),
        "queue://demo.orders",
        &hub_history,
    )
    .await;
    common::drain_at(
        &demo.url(61626),
        demo.admin(8162),
        "queue://demo.audit",
        &edge_history,
    )
    .await;
    hub_history.lock().unwrap().check();
    edge_history.lock().unwrap().check();

    again.proc.signal(libc::SIGINT);
    let status = again.proc.wait_timeout(GUARD).expect("`up` stops on SIGINT");
    assert!(status.success(), "{status}:\n{}", again.stdout());
}
