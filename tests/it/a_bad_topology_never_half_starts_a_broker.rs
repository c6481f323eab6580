//! A bad topology never half-starts a broker: `meshmq broker` on an invalid or an unservable
//! topology exits non-zero with an error naming the file and the key (or
//! address), and neither its listener nor its admin port was ever served.

use crate::common;

use std::net::TcpListener;

use common::{meshmq, run, write_file, Config, Finished, Ports};

fn broker(topology: &std::path::Path) -> Finished {
    run(meshmq()
        .args(["broker", "--topology"])
        .arg(topology)
        .args(["--member", "hub-1"]))
}

/// Nothing was served: no "listening"/"serving" log line, and both ports refuse connections.
fn assert_nothing_served(done: &Finished, ports: Ports) {
    for word in ["listening", "member serving"] {
        assert!(
            !done.stderr.contains(word) && !done.stdout.contains(word),
            "the broker logged {word:?} before refusing: {done:?}"
        );
    }
    assert!(common::refuses_connections(ports.listen_addr()));
    assert!(common::refuses_connections(ports.admin_addr()));
}

#[test]
fn an_invalid_topology_is_refused_naming_file_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = Ports::pick();
    let path = write_file(
        dir.path(),
        "invalid.toml",
        &Config::new()
            .broker("heartbeat = \"often\"")
            .topology(ports),
    );
    let done = broker(&path);
    assert!(!done.status.success(), "{done:?}");
    let first = done.stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("meshmq: {}: broker.heartbeat: ", path.display())),
        "the error names the file and the key: {done:?}"
    );
    assert_nothing_served(&done, ports);
}

#[test]
fn an_unknown_member_is_refused_listing_the_members() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = Ports::pick();
    let path = write_file(dir.path(), "t.toml", &Config::new().topology(ports));
    let done = run(meshmq()
        .args(["broker", "--topology"])
        .arg(&path)
        .args(["--member", "hub-9"]));
    assert!(!done.status.success(), "{done:?}");
    assert_eq!(
        done.stderr,
        format!(
            "meshmq: {}: no member named \"hub-9\"; the members are: hub-1\n",
            path.display()
        )
    );
    assert_nothing_served(&done, ports);
}

#[test]
fn a_taken_admin_port_stops_the_start_before_any_listener_is_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Something else holds the admin port; the native listener binds first and must not be
    // served (nor left bound) when the admin bind fails.
    let squatter = TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let ports = Ports {
        listen: common::free_ports(1)[0],
        admin: squatter.local_addr().expect("squatted port").port(),
    };
    let path = write_file(dir.path(), "t.toml", &Config::new().topology(ports));
    let done = broker(&path);
    assert!(!done.status.success(), "{done:?}");
    assert!(
        done.stderr.contains(&format!(
            "meshmq: cannot serve the admin port {}: ",
            ports.admin_addr()
        )),
        "the error names the address: {done:?}"
    );
    for word in ["listening", "member serving"] {
        assert!(!done.stderr.contains(word), "{word:?} logged: {done:?}");
    }
    assert!(common::refuses_connections(ports.listen_addr()));
    drop(squatter);
}
