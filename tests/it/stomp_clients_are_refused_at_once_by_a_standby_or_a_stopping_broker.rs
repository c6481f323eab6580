//! STOMP clients cannot receive cluster pushes, so they fail over by trying their list of
//! hosts; that only works if a broker that cannot serve says so at once. A file-lock standby
//! refuses STOMP connections (nothing listens); a master told to stop sends its STOMP
//! connections an ERROR and closes them, and answers a new CONNECT with an ERROR or a refused
//! connection, never a hang; the standby that takes over accepts the next host a client tries.

use crate::common;
use crate::common_stomp;

use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::Duration;

use common::mesh::MeshBuilder;
use common_stomp::RawStomp;
use meshmq::stomp::Command as Cmd;

#[test]
fn a_standby_refuses_and_a_stopping_master_answers_error() {
    let mut mesh = MeshBuilder::new().group("edge", 2, "").stomp().build();
    mesh.start_all();
    let (master, standby) = mesh.master_and_standby("edge");
    let master_stomp = mesh.member(&master).stomp.expect("stomp listener");
    let standby_stomp = mesh.member(&standby).stomp.expect("stomp listener");

    assert!(
        common::refuses_connections(standby_stomp),
        "a standby has no listener open"
    );

    let mut open = RawStomp::connect(master_stomp, &[]);
    mesh.sigterm(&master);
    let told = open.expect(Cmd::Error);
    assert!(
        told.header("message")
            .unwrap_or("")
            .contains("shutting down"),
        "{told:?}"
    );
    assert!(open.recv().is_none(), "closed after the ERROR");

    // A new attempt while it stops: refused, or an ERROR — either way at once.
    match TcpStream::connect_timeout(&master_stomp, Duration::from_secs(5)) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}"),
        Ok(s) => {
            s.set_read_timeout(Some(common::GUARD)).expect("timeout");
            let mut c = RawStomp::over(Box::new(s));
            match c.handshake(&[]) {
                f if f.command == Cmd::Error => {}
                f => panic!("a stopping broker accepted a STOMP client: {f:?}"),
            }
        }
    }

    // The client's next host: the standby, once it has taken over.
    mesh.wait_until("the standby serves", |m| m.member(&standby).ready());
    let mut next = RawStomp::connect(standby_stomp, &[]);
    next.send(&meshmq::stomp::Frame::new(Cmd::Disconnect).with_header("receipt", "bye"));
    next.expect(Cmd::Receipt);
}
