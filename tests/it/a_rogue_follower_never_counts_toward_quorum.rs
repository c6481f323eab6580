//! A rogue on a master's replication port never makes a receipt mean "on a quorum". In a
//! ZooKeeper group of three whose two real slaves were killed (`kill -9`), a follower that logs
//! in with no token, with a wrong token, or with the right token but a member name outside the
//! group — each then acknowledging every record it is sent, as a real follower would — is
//! refused and its link closed; one with the right token and a real slave's name that
//! acknowledges records it was never sent is cut off. Meanwhile every persistent STOMP send to
//! the master fails with the quorum error and none is receipted; each refusal is counted in
//! `meshmq_replication_refused_total` with its reason and logged with the peer's address.

use crate::common;
use crate::common_stomp;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::ha::{GroupSpec, HaGroup, REPLICATION_TOKEN};
use common::{http_get, metric_sum, GUARD};
use common_stomp::RawStomp;
use meshmq::ha::replication::proto::{to_follower, to_master, Hello, ToFollower, ToMaster};
use meshmq::stomp::Command as Cmd;
use prost::Message as _;

/// Persistent sends tried while each rogue is (or tries to be) connected.
const SENDS_PER_ROGUE: usize = 3;

/// What a rogue does once the master lets it in.
#[derive(Clone, Copy, Debug)]
enum Acks {
    /// Acknowledges the last record of every batch it receives, as a real follower does.
    WhatItIsSent,
    /// Acknowledges this index at once, before any record arrived.
    Forged(u64),
}

fn write_msg(s: &mut TcpStream, msg: &ToMaster) -> std::io::Result<()> {
    let body = msg.encode_to_vec();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    s.write_all(&out)
}

/// The next message from the master: `Ok(None)` once it closed the link, `Err` when nothing
/// came for a whole read timeout.
fn read_msg(s: &mut TcpStream) -> Result<Option<ToFollower>, String> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            return Err(format!("nothing from the master: {e}"))
        }
        Err(_) => return Ok(None),
    }
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    if s.read_exact(&mut body).is_err() {
        return Ok(None);
    }
    ToFollower::decode(&body[..])
        .map(Some)
        .map_err(|e| format!("an undecodable message from the master: {e}"))
}

/// Logs in to the replication port at `addr` as `member` with `token`. Returns the master's
/// answer, and a channel that says how the link ended: `Ok` when the master closed it, `Err`
/// when it was still open after [`GUARD`]. If admitted, the rogue plays a follower per `acks`
/// until the link ends.
fn rogue(
    addr: SocketAddr,
    token: &str,
    member: &str,
    acks: Acks,
) -> (ToFollower, mpsc::Receiver<Result<(), String>>) {
    let mut s = TcpStream::connect_timeout(&addr, GUARD)
        .unwrap_or_else(|e| panic!("connect to the replication port {addr}: {e}"));
    s.set_read_timeout(Some(GUARD)).expect("read timeout");
    let hello = ToMaster {
        kind: Some(to_master::Kind::Hello(Hello {
            token: token.into(),
            member: member.into(),
            ..Default::default()
        })),
    };
    write_msg(&mut s, &hello).expect("send the hello");
    let answer = match read_msg(&mut s) {
        Ok(Some(a)) => a,
        other => panic!("no answer to {member:?}'s hello: {other:?}"),
    };
    let admitted = matches!(answer.kind, Some(to_follower::Kind::Start(_)));
    let (ended, ended_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let deadline = Instant::now() + GUARD;
        if let (true, Acks::Forged(index)) = (admitted, acks) {
            let ack = ToMaster {
                kind: Some(to_master::Kind::Ack(index)),
            };
            let _ = write_msg(&mut s, &ack);
        }
        let outcome = loop {
            if Instant::now() >= deadline {
                break Err(format!("the link was still open after {GUARD:?}"));
            }
            match read_msg(&mut s) {
                Ok(None) => break Ok(()),
                Ok(Some(ToFollower {
                    kind: Some(to_follower::Kind::Records(r)),
                })) if admitted && matches!(acks, Acks::WhatItIsSent) && r.count > 0 => {
                    let ack = ToMaster {
                        kind: Some(to_master::Kind::Ack(r.first + r.count - 1)),
                    };
                    let _ = write_msg(&mut s, &ack);
                }
                Ok(Some(_)) => {}
                Err(e) => break Err(e),
            }
        };
        let _ = ended.send(outcome);
    });
    (answer, ended_rx)
}

/// Sends one persistent message with a receipt on a fresh STOMP connection to `stomp`; returns
/// the ERROR's message, or fails the test if it was receipted.
fn persistent_send(group: &HaGroup, stomp: SocketAddr, what: &str) -> Result<(), String> {
    let mut c = RawStomp::connect(stomp, &[]);
    c.send(
        &common_stomp::send("/queue/rogue.probe", what)
            .with_header("persistent", "true")
            .with_header("receipt", "r"),
    );
    match c.recv() {
        Some(f) if f.command == Cmd::Receipt => Ok(()),
        Some(f) if f.command == Cmd::Error => {
            Err(f.header("message").unwrap_or_default().to_string())
        }
        other => group.fail(&format!(
            "{what}: neither RECEIPT nor ERROR: {:?}",
            other.map(|f| (f.command, f.headers))
        )),
    }
}

#[test]
fn rogue_followers_are_refused_and_no_send_is_receipted_without_the_real_slaves() {
    let started = Instant::now();
    let zk = common::zk::ZooKeeper::standalone();
    let spec = GroupSpec {
        quorum_timeout: Duration::from_secs(1),
        ..GroupSpec::default()
    };
    let mut group = HaGroup::start(&zk.connect_string(), spec);
    let master = group.wait_master("a master serves");
    let (stomp, replication, admin) = {
        let m = &group.members[master];
        (m.stomp, m.replication, m.admin)
    };
    // With its slaves the master receipts: the refusals below are the rogues' doing.
    if let Err(e) = persistent_send(&group, stomp, "with both slaves") {
        group.fail(&format!("a send with both slaves was refused: {e}"));
    }
    let slaves: Vec<usize> = (0..3).filter(|&i| i != master).collect();
    let slave_name = group.members[slaves[0]].name.clone();
    for &i in &slaves {
        group.kill9(i);
    }

    let wrong_token = format!("{REPLICATION_TOKEN}-but-not-quite");
    let rogues: [(&str, &str, &str, Acks, &str); 4] = [
        (
            "no token",
            "",
            &slave_name,
            Acks::WhatItIsSent,
            "no replication token",
        ),
        (
            "a wrong token",
            &wrong_token,
            &slave_name,
            Acks::WhatItIsSent,
            "wrong replication token",
        ),
        (
            "the right token and a member outside the group",
            REPLICATION_TOKEN,
            "g-9",
            Acks::WhatItIsSent,
            "is not a member of this group",
        ),
        (
            "the right token, a real slave's name and acks of records never sent",
            REPLICATION_TOKEN,
            &slave_name,
            Acks::Forged(1_000_000_000_000),
            "",
        ),
    ];
    for (case, token, member, acks, refusal) in rogues {
        let (answer, ended) = rogue(replication, token, member, acks);
        // The invariant first: nothing is receipted, whatever the master answered.
        for n in 0..SENDS_PER_ROGUE {
            let what = format!("{case}, send {n}");
            match persistent_send(&group, stomp, &what) {
                Ok(()) => group.fail(&format!(
                    "{what} was receipted with both slaves dead and a rogue follower \
                     (the master answered its hello with {:?})",
                    answer.kind
                )),
                Err(e) if !e.contains("no quorum") => {
                    group.fail(&format!("{what} failed without the quorum error: {e}"))
                }
                Err(_) => {}
            }
        }
        match (&answer.kind, refusal) {
            (Some(to_follower::Kind::Refused(why)), expected) if !expected.is_empty() => {
                if !why.contains(expected) {
                    group.fail(&format!("{case}: refused with {why:?}, not {expected:?}"));
                }
            }
            (Some(to_follower::Kind::Start(_)), "") => {}
            (other, _) => group.fail(&format!("{case}: the master answered {other:?}")),
        }
        match ended.recv_timeout(GUARD) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => group.fail(&format!("{case}: {e}")),
            Err(e) => group.fail(&format!("{case}: the rogue's reader never ended: {e}")),
        }
    }

    let metrics = match http_get(admin, "/metrics") {
        Ok((200, body)) => body,
        other => group.fail(&format!("the master's /metrics: {other:?}")),
    };
    for reason in [
        "no_token",
        "wrong_token",
        "unknown_member",
        "ack_beyond_sent",
    ] {
        let label = format!("reason=\"{reason}\"");
        let counted = metric_sum(&metrics, "meshmq_replication_refused_total", &[&label]);
        if counted != 1.0 {
            group.fail(&format!(
                "meshmq_replication_refused_total{{{label}}} is {counted}, not 1"
            ));
        }
    }
    let refused = group.log_lines(master, &["replication login refused", "127.0.0.1:"]);
    let cut = group.log_lines(master, &["replication link closed", "acknowledged index"]);
    if refused.len() != 3 || cut.len() != 1 {
        group.fail(&format!(
            "expected 3 refusals and 1 cut link in the master's log, with the peer: {refused:?} {cut:?}"
        ));
    }
    eprintln!(
        "four rogues refused, {} sends failed; the test took {:?}",
        4 * SENDS_PER_ROGUE,
        started.elapsed()
    );
}
