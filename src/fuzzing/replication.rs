//! Fuzz target `replication`: the replication messages as each end reads them, and its seeds.

use bytes::Bytes;
use prost::Message as _;

use crate::ha::replication::{self, proto as repl, StartPlan};
use crate::store::{frame, EpochHistory, RawFrames};

use super::journal::{trusted_records, JOURNAL_MAX_RECORD};
use super::measure::{proportional, within};

/// Runs a future that never waits (it reads from a slice) to its end.
fn at_once<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => panic!("a read from memory waited"),
    }
}

/// The replication messages, as each end reads them. Byte 0 picks the end: even, a master
/// reading a follower (a hello of at most `MAX_HELLO`, then acknowledgements); odd, a
/// follower reading its master (starts, records, checkpoints, heart-beats). Properties: no
/// panic; the hello costs no allocation past its limit; every message re-frames to bytes that
/// read back as the same message; a hello's epochs become a history of strictly increasing
/// epochs and first indexes, whose match point with the master's lies within both journals;
/// replicated records pass the follower's check only when they are whole, consecutive from
/// `first` and `count` in number.
pub fn replication(data: &[u8]) {
    let Some((&end, mut stream)) = data.split_first() else {
        return;
    };
    if end % 2 == 0 {
        let hello = within(
            "the master's read of a hello",
            replication::MAX_HELLO + proportional(data.len()),
            || {
                at_once(replication::read_msg_within::<repl::ToMaster>(
                    &mut stream,
                    "fuzz",
                    replication::MAX_HELLO,
                ))
            },
        );
        let Ok(hello) = hello else { return };
        master_reads(&hello);
        while let Ok(m) = at_once(replication::read_msg_within::<repl::ToMaster>(
            &mut stream,
            "fuzz",
            replication::MAX_MESSAGE,
        )) {
            master_reads(&m);
        }
    } else {
        while let Ok(m) = within(
            "a follower's read",
            replication::MAX_MESSAGE + proportional(data.len()),
            || {
                at_once(replication::read_msg_within::<repl::ToFollower>(
                    &mut stream,
                    "fuzz",
                    replication::MAX_MESSAGE,
                ))
            },
        ) {
            follower_reads(&m);
        }
    }
}

fn reframed<M: prost::Message + Default + PartialEq + std::fmt::Debug>(m: &M) {
    let bytes = replication::frame_msg(m);
    let back = at_once(replication::read_msg_within::<M>(
        &mut bytes.as_slice(),
        "fuzz",
        replication::MAX_MESSAGE,
    ));
    match back {
        Ok(back) => assert_eq!(&back, m, "a message read back changed"),
        Err(e) => panic!("a framed message did not read back: {e}"),
    }
}

fn master_reads(m: &repl::ToMaster) {
    reframed(m);
    if let Some(repl::to_master::Kind::Hello(h)) = &m.kind {
        let theirs = replication::epochs_from_proto(&h.epochs);
        for pair in theirs.starts().windows(2) {
            assert!(
                pair[0].0 < pair[1].0 && pair[0].1 < pair[1].1,
                "an epoch history out of order: {:?}",
                theirs.starts()
            );
        }
        let mine = EpochHistory::from_starts([(1, 1), (3, 40), (4, 90)]);
        let master_last = 120;
        let matched = mine.match_point(master_last, &theirs, h.last_index);
        assert!(
            matched <= master_last && matched <= h.last_index,
            "match point {matched} past a journal's end ({master_last}, {})",
            h.last_index
        );
    }
}

fn follower_reads(m: &repl::ToFollower) {
    reframed(m);
    match &m.kind {
        Some(repl::to_follower::Kind::Start(s)) => {
            // What the follower does with it, for followers at several journal ends: a cut
            // keeps a prefix of what it holds, an append follows its last record.
            for last in [0, 1, 7, s.from.saturating_sub(1), s.from, u64::MAX] {
                match replication::plan_start(s, last) {
                    Ok(StartPlan::CutAfter { keep }) => assert!(
                        keep < last && keep + 1 == s.from,
                        "a cut to {keep} for a stream from {} after record {last}",
                        s.from
                    ),
                    Ok(StartPlan::Append) => assert_eq!(
                        s.from,
                        last + 1,
                        "an append of a stream that does not follow record {last}"
                    ),
                    Ok(StartPlan::Snapshot) => assert!(s.snapshot && s.from > 0),
                    Err(_) => {}
                }
            }
            let mut covered = replication::epochs_from_proto(&s.epochs);
            covered.truncate_after(s.from.saturating_sub(1));
            if !s.checkpoint.is_empty() {
                let _ = crate::store::proto::Checkpoint::decode(s.checkpoint.as_ref());
            }
        }
        Some(repl::to_follower::Kind::Records(r)) => {
            let frames = RawFrames {
                first: r.first,
                count: r.count,
                bytes: r.frames.to_vec(),
            };
            if let Ok(scan) = frames.check(JOURNAL_MAX_RECORD) {
                let (trusted, clean) = trusted_records(&frames.bytes, r.first);
                assert!(clean, "damaged replicated records passed the check");
                assert_eq!(
                    scan.records.len(),
                    trusted.len(),
                    "records passed uncounted"
                );
                assert_eq!(
                    trusted.len() as u64,
                    r.count,
                    "a wrong count passed the check"
                );
            }
        }
        Some(repl::to_follower::Kind::Checkpoint(c)) => {
            let _ = crate::store::proto::Checkpoint::decode(c.as_ref());
        }
        _ => {}
    }
}

pub(super) fn replication_seeds() -> Vec<Vec<u8>> {
    let mut master = vec![0u8];
    master.extend(replication::frame_msg(&repl::ToMaster {
        kind: Some(repl::to_master::Kind::Hello(repl::Hello {
            token: "secret".into(),
            member: "b".into(),
            seen_epoch: 3,
            epochs: vec![
                repl::EpochStart { epoch: 1, first: 1 },
                repl::EpochStart {
                    epoch: 3,
                    first: 40,
                },
            ],
            last_index: 77,
        })),
    }));
    master.extend(replication::frame_msg(&repl::ToMaster {
        kind: Some(repl::to_master::Kind::Ack(60)),
    }));
    let mut frames = Vec::new();
    for i in 5..8u64 {
        frame::put_frame(i, format!("record {i}").as_bytes(), &mut frames);
    }
    let mut follower = vec![1u8];
    for m in [
        repl::to_follower::Kind::Start(repl::Start {
            epoch: 4,
            from: 5,
            snapshot: false,
            checkpoint: Bytes::new(),
            epochs: vec![repl::EpochStart { epoch: 4, first: 2 }],
        }),
        repl::to_follower::Kind::Records(repl::Records {
            first: 5,
            count: 3,
            frames: frames.into(),
        }),
        repl::to_follower::Kind::Heartbeat(8),
        repl::to_follower::Kind::Refused("no".into()),
    ] {
        follower.extend(replication::frame_msg(&repl::ToFollower { kind: Some(m) }));
    }
    vec![master, follower]
}
