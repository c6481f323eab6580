//! A bridge handshake (a `BrokerInfo` as the first frame) is accepted only from a known group
//! of the same mesh, over a connector the topology names, with that connector's credentials:
//! an unknown group, another mesh, the group itself, an unknown connector, a wrong password
//! or none are each answered with a `Forbidden` error and a close, and logged; the real
//! bridge stays up throughout.

use crate::common;

use common::{wait_until, Mesh, MeshConfig, RawConn};
use meshmq::wire::proto::{self, ErrorCode};
use meshmq::wire::Body;

const PASSWORD: &str = "bridge-secret";

fn hello(mesh: &str, group: &str, connector: &str, password: &str) -> proto::BrokerInfo {
    proto::BrokerInfo {
        mesh: mesh.into(),
        group: group.into(),
        member: format!("{group}-1"),
        connector: connector.into(),
        username: if password.is_empty() {
            String::new()
        } else {
            "bridge".into()
        },
        password: password.into(),
        token: common::MESH_SECRET.into(),
        ..proto::BrokerInfo::default()
    }
}

#[test]
fn strangers_are_refused_with_a_reason_and_a_log_line() {
    let setup = tempfile::tempdir().expect("tempdir");
    let password_file = setup.path().join("bridge.password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("password file");
    let mesh = Mesh::start(
        &MeshConfig::new()
            .group("hub")
            .group("edge")
            .connector(
                "hub",
                "edge",
                &[
                    "username = \"bridge\"",
                    &format!("password_file = \"{}\"", password_file.display()),
                ],
            )
            .section(&format!(
                "[security]\nallow_anonymous = true\n\n[[security.user]]\nname = \"bridge\"\npassword_hash = \"{}\"\n",
                meshmq::security::hash_password(PASSWORD)
            )),
    );
    let edge = mesh.member("edge");
    // Dial attempts made before the edge listened count as reconnects too: compare with now.
    let reconnects = |side: &str| mesh.member(side).connector("hub-edge").reconnects;
    let before = [reconnects("hub"), reconnects("edge")];

    let cases = [
        (
            hello("test", "intruder", "hub-edge", PASSWORD),
            "no connector \"hub-edge\" from group \"intruder\"",
        ),
        (
            hello("elsewhere", "hub", "hub-edge", PASSWORD),
            "mesh \"elsewhere\" is not this mesh \"test\"",
        ),
        (
            hello("test", "edge", "hub-edge", PASSWORD),
            "group edge dialled itself",
        ),
        (
            hello("test", "hub", "hub-elsewhere", PASSWORD),
            "no connector \"hub-elsewhere\" from group \"hub\"",
        ),
        (
            hello("test", "hub", "hub-edge", "not-the-password"),
            "connector \"hub-edge\": wrong or missing credentials",
        ),
        (
            hello("test", "hub", "hub-edge", ""),
            "connector \"hub-edge\": wrong or missing credentials",
        ),
    ];
    for (info, reason) in cases {
        let mut raw = RawConn::open(edge.listen_addr());
        raw.send(Body::BrokerInfo(info.clone()));
        let error = raw.expect_error_then_eof();
        assert_eq!(
            error.code,
            ErrorCode::Forbidden as i32,
            "{info:?}: {error:?}"
        );
        assert!(
            error.message.contains(reason),
            "{info:?}: the refusal says why: {:?}",
            error.message
        );
        wait_until("the refusal is logged", || {
            edge.log()
                .lines()
                .any(|l| l.contains("bridge refused") && l.contains(reason))
        });
    }
    for (side, before) in ["hub", "edge"].into_iter().zip(before) {
        let status = mesh.member(side).connector("hub-edge");
        assert!(status.up, "{side}: {status:?}");
        assert_eq!(
            status.reconnects, before,
            "{side}: the real bridge never dropped"
        );
    }
}
