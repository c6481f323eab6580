//! A broker whose log reader is gone — the `meshmq up` that piped its output was killed, so
//! every log line fails with a broken pipe — keeps serving and still stops cleanly on SIGTERM
//! (a failed log write used to panic whichever task logged, the signal handler included, and
//! such a member could then only be killed).

use crate::common;

use std::process::Stdio;

use common::{meshmq, ChildGuard, Config, Ports, GUARD};

#[test]
fn a_broker_logging_into_a_closed_pipe_serves_and_stops_on_sigterm() {
    let ports = Ports::pick();
    let dir = tempfile::tempdir().expect("tempdir");
    let topology = common::write_file(dir.path(), "topology.toml", &Config::new().topology(ports));
    let mut child = meshmq()
        .args(["broker", "--topology"])
        .arg(&topology)
        .args(["--member", "hub-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meshmq broker");
    // Close the read ends: from now on every write to stdout or stderr is a broken pipe.
    drop(child.stdout.take());
    drop(child.stderr.take());
    let mut broker = ChildGuard::new(child);

    common::wait_until("the broker is ready", || {
        assert!(broker.try_wait().is_none(), "the broker exited");
        matches!(
            common::http_get(ports.admin_addr(), "/readyz"),
            Ok((200, _))
        )
    });
    // Connections log as they come and go.
    for _ in 0..3 {
        let mut conn = common::RawConn::open(ports.listen_addr());
        conn.handshake(0);
    }
    assert!(
        matches!(
            common::http_get(ports.admin_addr(), "/readyz"),
            Ok((200, _))
        ),
        "still serving"
    );

    broker.signal(libc::SIGTERM);
    let status = broker
        .wait_timeout(GUARD)
        .expect("SIGTERM stops a broker that cannot log");
    assert!(status.success(), "{status}");
}
