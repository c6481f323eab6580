//! A committed STOMP transaction survives checkpoints and restarts, whole: a producer commits
//! transactions of two persistent sends back to back while the broker takes a checkpoint every
//! 10 ms (each commit waiting out a 10 ms group-commit window, so checkpoints land while
//! commits are still on their way to disk), and the broker is `kill -9`ed (three times), then
//! stopped with SIGTERM (twice), with transactions in flight. It must start again each time (a
//! checkpoint must never list a message under an index whose record is not that message), and
//! the queue must then hold both sends of every receipted transaction and of no transaction
//! only one, each once.

use crate::common;
use crate::common_stomp::{self, RawStomp};

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Broker, Config, GUARD};
use meshmq::stomp::{Command as Cmd, Frame};

const QUEUE: &str = "/queue/tx.checkpointed";
const STATUS_NAME: &str = "queue://tx.checkpointed";
/// Receipted commits to wait for before each kill: with a commit every ~10 ms, about a
/// hundred checkpoints land among them.
const COMMITS: usize = 100;
/// Rounds ended by `kill -9`, then rounds ended by SIGTERM: whether the last checkpoint
/// before a stop caught a commit on its way is chance, so several stops make a miss unlikely.
const KILLS: u64 = 3;
const STOPS: u64 = 2;
/// Transaction numbers of one round start at `round * ROUND`.
const ROUND: u64 = 1_000_000;

/// Commits transactions `first`, `first + 1`, … (two persistent sends each) until `stop` or
/// until the broker goes away; the numbers whose COMMIT was receipted go into `receipted`.
fn produce(
    addr: SocketAddr,
    first: u64,
    stop: Arc<AtomicBool>,
    receipted: Arc<Mutex<BTreeSet<u64>>>,
) {
    let mut c = RawStomp::connect(addr, &[]);
    let mut n = first;
    while !stop.load(Ordering::Relaxed) {
        let tx = format!("t{n}");
        c.send(&Frame::new(Cmd::Begin).with_header("transaction", tx.clone()));
        for part in ["a", "b"] {
            c.send(
                &common_stomp::send(QUEUE, &format!("{n}-{part}"))
                    .with_header("persistent", "true")
                    .with_header("transaction", tx.clone()),
            );
        }
        c.send(
            &Frame::new(Cmd::Commit)
                .with_header("transaction", tx.clone())
                .with_header("receipt", tx.clone()),
        );
        match c.recv() {
            Some(f) if f.command == Cmd::Receipt && f.header("receipt-id") == Some(tx.as_str()) => {
                receipted.lock().unwrap().insert(n);
            }
            // The broker stopped (an ERROR on its way out, or the connection just ends).
            _ => return,
        }
        n += 1;
    }
}

/// Runs a producer from `first` until `COMMITS` more commits are receipted, then calls `stop`
/// on the broker while the producer is still committing.
fn produce_then(
    broker: &mut Broker,
    addr: SocketAddr,
    first: u64,
    receipted: &Arc<Mutex<BTreeSet<u64>>>,
    stop: impl FnOnce(&mut Broker),
) {
    let before = receipted.lock().unwrap().len();
    let halt = Arc::new(AtomicBool::new(false));
    let producer = {
        let (halt, receipted) = (halt.clone(), receipted.clone());
        std::thread::spawn(move || produce(addr, first, halt, receipted))
    };
    let deadline = Instant::now() + GUARD;
    while receipted.lock().unwrap().len() < before + COMMITS {
        assert!(
            Instant::now() < deadline && !producer.is_finished(),
            "only {} commits receipted within {GUARD:?}:\n{}",
            receipted.lock().unwrap().len() - before,
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The producer is mid-transaction: the stop lands among commits and checkpoints.
    stop(broker);
    halt.store(true, Ordering::Relaxed);
    // Its writes may fail once the broker is gone: how it ended does not matter.
    let _ = producer.join();
}

#[test]
fn committed_transactions_are_whole_after_kill_9_and_sigterm_amid_checkpoints() {
    let stomp_port = common::free_ports(1)[0];
    let mut broker = Broker::start(
        &Config::new()
            .store("checkpoint_interval = \"10ms\"")
            .store("group_commit_window = \"10ms\"")
            .section(&format!(
                "[[group.member.listener]]\nurl = \"stomp://127.0.0.1:{stomp_port}\""
            )),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], stomp_port));
    let receipted = Arc::new(Mutex::new(BTreeSet::new()));

    for round in 0..KILLS {
        produce_then(&mut broker, addr, round * ROUND, &receipted, |b| b.kill9());
        // Refused ("the checkpoint lists message N as live but its record is not in the
        // journal") when a checkpoint listed a committed send under its transaction's end.
        broker.restart();
    }
    for round in KILLS..KILLS + STOPS {
        produce_then(&mut broker, addr, round * ROUND, &receipted, |b| {
            b.sigterm();
            b.wait_exit();
        });
        broker.restart();
    }

    let depth = broker.destination(STATUS_NAME).depth;
    let mut consumer = RawStomp::connect(addr, &[]);
    consumer.send(&common_stomp::subscribe(QUEUE, "s", "auto"));
    let mut seen: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for _ in 0..depth {
        let f = consumer.expect(Cmd::Message);
        let body = String::from_utf8(f.body.to_vec()).expect("a text body");
        let (n, part) = body.split_once('-').expect("N-PART");
        seen.entry(n.parse().expect("a number"))
            .or_default()
            .push(part.to_string());
    }
    let receipted = receipted.lock().unwrap();
    let missing: Vec<u64> = receipted
        .iter()
        .filter(|n| !seen.contains_key(n))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "{} receipted transactions are gone after the restarts (first: {:?}); the queue held {depth}\n{}",
        missing.len(),
        missing.first(),
        broker.log()
    );
    for (n, mut parts) in seen {
        parts.sort();
        assert_eq!(
            parts,
            ["a", "b"],
            "transaction {n} came back with sends {parts:?}, not both once"
        );
    }
}
