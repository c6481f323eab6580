//! `meshmq up` follows its topology file: a saved change that running members can take in
//! place (a new group and a connector to it) is applied without restarting them — the hub
//! keeps its process and messages reach the new group through the new connector — a change
//! that needs a restart (the hub's listener moves to another port) restarts only the member
//! it concerns, and a file saved invalid is reported and changes nothing.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;

use common::topology::{Group, Member, Topology};
use common::{free_ports, meshmq, run, wait_until, write_file, CliChild, Up};

const TOKEN: &str = "an-admin-token-for-this-test";

struct Ports {
    hub: u16,
    hub_moved: u16,
    hub_admin: u16,
    edge: u16,
    edge_admin: u16,
}

/// The mesh `follow`: the hub listening on `hub_listener`, and with `edge` the edge group and
/// a connector from the hub to it.
fn topology(p: &Ports, hub_listener: u16, edge: bool) -> String {
    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let mut t = Topology::new("follow")
        .table("admin", &[&format!("token = \"{TOKEN}\"")])
        .group(
            Group::new("hub").member(
                Member::new("hub-1", local(p.hub_admin))
                    .data_dir("data-hub")
                    .tcp(local(hub_listener)),
            ),
        );
    if edge {
        t = t
            .group(
                Group::new("edge").member(
                    Member::new("edge-1", local(p.edge_admin))
                        .data_dir("data-edge")
                        .tcp(local(p.edge)),
                ),
            )
            .connector("hub", "edge", &[]);
    }
    t.text()
}

/// Saves `text` as the topology the way an editor does: a new file renamed over the old one.
fn save(dir: &Path, text: &str) {
    let tmp = write_file(dir, "mesh.toml.new", text);
    std::fs::rename(tmp, dir.join("mesh.toml")).expect("save the topology");
}

fn produce(port: u16, dest: &str, body: &str) {
    let done = run(meshmq().args([
        "produce",
        &format!("tcp://127.0.0.1:{port}"),
        "--dest",
        dest,
        "--body",
        body,
        "--persistent",
        "--receipts",
    ]));
    assert!(done.status.success(), "produce failed:\n{}", done.stderr);
}

#[test]
fn up_takes_a_saved_topology_in_place_or_by_restarting_only_whom_it_concerns() {
    let ports = free_ports(5);
    let p = Ports {
        hub: ports[0],
        hub_moved: ports[1],
        hub_admin: ports[2],
        edge: ports[3],
        edge_admin: ports[4],
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_file(dir.path(), "mesh.toml", &topology(&p, p.hub, false));
    let up = Up::start(&file);
    let hub_pid = up.pid_of("hub-1");

    // A new group and a connector to it: the edge starts, the hub takes the connector live.
    save(dir.path(), &topology(&p, p.hub, true));
    wait_until("`up` starts the new member", || {
        up.0.stdout().contains("starting edge-1 (new in the file)")
            && common::children_of(up.0.proc.pid()).len() == 2
    });
    let consumer = CliChild::spawn(meshmq().args([
        "consume",
        &format!("failover:(tcp://127.0.0.1:{})", p.edge),
        "--dest",
        "queue://follow.q",
        "--count",
        "1",
        "--timeout",
        "60",
    ]));
    // The consumer's demand must cross the new connector before the message is sent, or the
    // message would wait on the hub: send until one arrives.
    let mut sent = 0;
    let got = loop {
        produce(
            p.hub,
            "queue://follow.q",
            &format!("through-the-new-connector-{sent}"),
        );
        sent += 1;
        let mut done = None;
        for _ in 0..50 {
            if consumer.stdout().contains("through-the-new-connector") {
                done = Some(consumer.stdout());
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        if let Some(out) = done {
            break out;
        }
        assert!(
            sent < 10,
            "no message crossed the connector added by the saved file\nup:\n{}",
            up.0.stdout()
        );
    };
    assert!(got.contains("through-the-new-connector"), "{got}");
    assert_eq!(
        up.pid_of("hub-1"),
        hub_pid,
        "the hub restarted for a change it can take in place:\n{}",
        up.0.stdout()
    );

    // The hub's listener moves: that needs a restart, of the hub alone.
    let edge_pid = up.pid_of("edge-1");
    save(dir.path(), &topology(&p, p.hub_moved, true));
    wait_until("`up` restarts the hub", || {
        up.0.stdout()
            .contains("restarting hub-1 to take the change")
            && common::children_of(up.0.proc.pid()).len() == 2
            && std::net::TcpStream::connect(("127.0.0.1", p.hub_moved)).is_ok()
    });
    assert_ne!(up.pid_of("hub-1"), hub_pid, "the hub kept its process");
    assert_eq!(
        up.pid_of("edge-1"),
        edge_pid,
        "the edge restarted for a change of the hub's listener"
    );
    produce(p.hub_moved, "queue://follow.moved", "on-the-moved-listener");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", p.hub)).is_err(),
        "the hub still listens on its old port"
    );

    // A file saved invalid changes nothing and is said once.
    let before = up.0.stdout();
    save(dir.path(), "[mesh]\nname = \"follow\"\n[[group]]\n");
    wait_until("`up` reports the invalid file", || {
        up.0.stdout()
            .contains("cannot be taken; the mesh keeps running the previous version")
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(
        up.0.stdout().matches("cannot be taken").count(),
        1,
        "one bad save, reported once"
    );
    assert_eq!(common::children_of(up.0.proc.pid()).len(), 2);
    produce(p.hub_moved, "queue://follow.moved", "still-served");
    assert!(before.len() <= up.0.stdout().len());
    up.stop();
}
