//! A producer that re-sends after the broker was killed and restarted is deduplicated by
//! (producer id, sequence): every re-send of a sequence the broker had stored is receipted and
//! dropped, so each original is delivered exactly once — also when the originals were consumed
//! and the journal segments holding them were collected before the crash — while new sequences
//! are accepted.

use crate::common;

use std::collections::HashSet;

use bytes::Bytes;
use common::{Broker, Config, History, RawConn};
use meshmq::wire::{proto, Body, Frame};

const QUEUE: &str = "queue://payments";
const PRODUCER: &[u8] = b"payments-producer-7";
/// Sequences 1..=ORIGINALS are sent before the crash; all of them and up to TOTAL after it.
const ORIGINALS: u64 = 60;
const TOTAL: u64 = 90;

/// Sends `(sequence, body)` pairs on one raw connection, pipelined, each asking for a receipt,
/// and waits for every receipt (an Error instead fails the test).
fn send_all(broker: &Broker, sends: &[(u64, String)]) {
    let mut conn = RawConn::open(broker.ports().listen_addr());
    conn.handshake(0);
    for (n, (sequence, body)) in sends.iter().enumerate() {
        conn.send(Body::Send(proto::Send {
            destination: QUEUE.into(),
            body: Bytes::from(body.clone()),
            persistent: true,
            priority: 4,
            producer_id: Bytes::from_static(PRODUCER),
            sequence: *sequence,
            receipt: n as u64 + 1,
            ..proto::Send::default()
        }));
    }
    let mut waiting: HashSet<u64> = (1..=sends.len() as u64).collect();
    while !waiting.is_empty() {
        match conn.next() {
            Some(Frame {
                body: Some(Body::Receipt(r)),
            }) => assert!(waiting.remove(&r.receipt), "receipt {} twice", r.receipt),
            Some(Frame {
                body: Some(Body::Heartbeat(_)),
            }) => {}
            other => panic!("expected receipts, got {other:?}"),
        }
    }
}

fn originals() -> Vec<(u64, String)> {
    (1..=ORIGINALS)
        .map(|s| (s, format!("orig-{s:03}")))
        .collect()
}

/// Re-sends of every original (different bodies, so a re-send that got through shows) and the
/// new sequences after them.
fn resends() -> Vec<(u64, String)> {
    (1..=TOTAL).map(|s| (s, format!("resend-{s:03}"))).collect()
}

/// The history of the scenario: what must arrive is the originals not consumed before the
/// crash and the new sequences; a re-send of an old sequence arriving is "invented".
fn expected(history: &mut History, originals_pending: bool) {
    for (_, body) in originals() {
        history.sent(&body);
        if originals_pending {
            history.receipted(&body);
        }
    }
    for (_, body) in resends().into_iter().skip(ORIGINALS as usize) {
        history.sent(&body);
        history.receipted(&body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn re_sends_after_a_kill9_are_receipted_and_dropped() {
    let mut broker = Broker::start(&Config::new());
    send_all(&broker, &originals());
    broker.kill9();
    broker.restart();
    send_all(&broker, &resends());

    let history = History::shared();
    expected(&mut history.lock().unwrap(), true);
    common::drain(&broker, QUEUE, &history).await;
    let h = history.lock().unwrap();
    h.check();
    assert_eq!(
        h.deliveries() as u64,
        TOTAL,
        "each original once, each new sequence once: {h:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn re_sends_are_dropped_even_after_the_originals_segments_were_collected() {
    // Small segments and frequent checkpoints: the originals' records are garbage collected
    // before the crash, so the producer's high-water mark survives only in a checkpoint.
    let mut broker = Broker::start(
        &Config::new()
            .broker("expiry_check_interval = \"50ms\"")
            .store("segment_size = \"4KiB\"")
            .store("checkpoint_interval = \"50ms\""),
    );
    let padded: Vec<(u64, String)> = originals()
        .into_iter()
        .map(|(s, body)| (s, format!("{body}|{}", "x".repeat(300))))
        .collect();
    send_all(&broker, &padded);
    let consumed = History::shared();
    for (_, body) in originals() {
        consumed.lock().unwrap().sent(&body);
        consumed.lock().unwrap().receipted(&body);
    }
    common::drain(&broker, QUEUE, &consumed).await;
    consumed.lock().unwrap().check();
    let first = broker.journal_dir().join(format!("{:020}.log", 1));
    common::wait_until("the originals' first segment is collected", || {
        !first.exists()
    });

    broker.kill9();
    broker.restart();
    assert!(!first.exists(), "recovery did not bring the segment back");
    send_all(&broker, &resends());

    let history = History::shared();
    expected(&mut history.lock().unwrap(), false);
    common::drain(&broker, QUEUE, &history).await;
    let h = history.lock().unwrap();
    h.check();
    assert_eq!(
        h.deliveries() as u64,
        TOTAL - ORIGINALS,
        "only the new sequences: {h:?}"
    );
}
