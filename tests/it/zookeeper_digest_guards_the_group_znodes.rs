//! With `[zookeeper] digest`, a real ZooKeeper lets only the holders of that digest near a
//! group's znodes: a member started with a wrong digest never registers nor follows, and a
//! client with a wrong digest, or none, can neither read the group's znodes (`epoch`,
//! `members`, a member's znode) nor change them (write the epoch, add or delete a member) —
//! while a client with the right digest reads them and the group keeps its master and epoch.

use crate::common;

use std::time::{Duration, Instant};

use common::ha::{runtime, GroupSpec, HaGroup};
use zookeeper_client as zk;

const RIGHT: &str = "meshmq:the-right-password";
const WRONG: &str = "meshmq:a-wrong-password";
/// The group's znode (`ROOT/MESH/GROUP` of `common::ha`'s topology).
const GROUP: &str = "/meshmq/ha/g";

async fn session(connect: &str, digest: Option<&str>) -> zk::Client {
    let mut connector = zk::Client::connector().with_session_timeout(Duration::from_secs(4));
    if let Some(d) = digest {
        connector = connector.with_auth("digest", d.as_bytes());
    }
    connector
        .connect(connect)
        .await
        .unwrap_or_else(|e| panic!("a ZooKeeper session at {connect}: {e}"))
}

/// Every read and write an outsider might try on the group's znodes, with what came of each
/// (`Ok` when ZooKeeper let it through).
async fn attempts(c: &zk::Client, member_znode: &str) -> Vec<(String, Result<(), zk::Error>)> {
    let epoch = format!("{GROUP}/epoch");
    let members = format!("{GROUP}/members");
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    vec![
        (
            format!("read {epoch}"),
            c.get_data(&epoch).await.map(|_| ()),
        ),
        (
            format!("write {epoch}"),
            c.set_data(&epoch, b"999", None).await.map(|_| ()),
        ),
        (
            format!("list {members}"),
            c.list_children(&members).await.map(|_| ()),
        ),
        (
            format!("read {member_znode}"),
            c.get_data(member_znode).await.map(|_| ()),
        ),
        (
            format!("add a member under {members}"),
            c.create(&format!("{members}/g-9-"), b"{}", &persistent)
                .await
                .map(|_| ()),
        ),
        (
            format!("delete {member_znode}"),
            c.delete(member_znode, None).await,
        ),
        (
            format!("rewrite the ACL of {GROUP}"),
            c.set_acl(GROUP, &zk::Acls::anyone_all(), None)
                .await
                .map(|_| ()),
        ),
    ]
}

#[test]
fn only_holders_of_the_digest_read_or_change_the_group_znodes() {
    let started = Instant::now();
    let rt = runtime();
    let zk_server = common::zk::ZooKeeper::standalone();
    let connect = zk_server.connect_string();
    let spec = GroupSpec {
        zk_digest: Some(RIGHT.to_string()),
        ..GroupSpec::default()
    };
    let mut group = HaGroup::configure(&connect, spec);
    // Two of three are a quorum: g-1 and g-2 elect a master with the right digest.
    group.start_member(0);
    group.start_member(1);
    let master = group.wait_master("a master serves");
    group.wait_role(1 - master, "slave");
    let epoch_before = group.members[master].status().map(|s| s.epoch);

    // g-3 runs with a wrong digest.
    let text = std::fs::read_to_string(group.topology()).expect("read the topology");
    assert!(
        text.contains(RIGHT),
        "the topology carries no digest: {text}"
    );
    let wrong = group.topology().with_file_name("wrong-digest.toml");
    std::fs::write(&wrong, text.replace(RIGHT, WRONG)).expect("write the wrong-digest topology");
    group.start_member_from(2, &wrong);
    group.wait_for("g-3 reports that ZooKeeper refused it", || {
        group.members[2]
            .log()
            .lines()
            .any(|l| l.contains("ZooKeeper") && l.contains("not authorized"))
    });

    let right = rt.block_on(session(&connect, Some(RIGHT)));
    let members = rt
        .block_on(right.list_children(&format!("{GROUP}/members")))
        .unwrap_or_else(|e| group.fail(&format!("the right digest cannot list the members: {e}")));
    if members.iter().any(|m| m.starts_with("g-3-")) || members.len() != 2 {
        group.fail(&format!(
            "the members registered are {members:?}: g-3 (wrong digest) must not be one"
        ));
    }
    let member_znode = format!("{GROUP}/members/{}", members[0]);

    for (who, digest) in [("a wrong digest", Some(WRONG)), ("no digest", None)] {
        let outsider = rt.block_on(session(&connect, digest));
        for (what, outcome) in rt.block_on(attempts(&outsider, &member_znode)) {
            match outcome {
                Err(zk::Error::NoAuth) => {}
                other => group.fail(&format!(
                    "with {who}, ZooKeeper answered {other:?} to: {what}"
                )),
            }
        }
    }
    // The holders of the digest can read what the outsiders could not.
    let (data, _) = rt
        .block_on(right.get_data(&format!("{GROUP}/epoch")))
        .unwrap_or_else(|e| group.fail(&format!("the right digest cannot read the epoch: {e}")));
    let epoch: Option<u64> = std::str::from_utf8(&data)
        .ok()
        .and_then(|t| t.trim().parse().ok());
    if epoch.is_none() || epoch != epoch_before {
        group.fail(&format!(
            "the epoch znode holds {data:?}; the master reported epoch {epoch_before:?}"
        ));
    }

    // Nothing the outsiders did moved the group: same master, same epoch, g-3 never followed.
    std::thread::sleep(Duration::from_secs(1));
    if group.master() != Some(master)
        || group.members[master].status().map(|s| s.epoch) != epoch_before
    {
        group.fail("the master or its epoch changed");
    }
    let slaves: Vec<String> = group.members[master]
        .status()
        .map(|s| s.slaves.into_iter().map(|f| f.member).collect())
        .unwrap_or_default();
    if slaves.iter().any(|s| s == "g-3") {
        group.fail(&format!("g-3 follows with a wrong digest: {slaves:?}"));
    }
    eprintln!(
        "outsiders refused (NoAuth) on every znode of the group; the test took {:?}",
        started.elapsed()
    );
}
