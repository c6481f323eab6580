//! Journal tests on real files in temporary directories.

use std::time::Duration;

use bytes::Bytes;

use super::proto::{record::Kind, *};
use super::*;

fn config(dir: &Path) -> StoreConfig {
    StoreConfig {
        dir: dir.to_path_buf(),
        segment_size: 4096,
        store_limit: None,
        durability: Durability::Synced,
        group_commit_window: Duration::ZERO,
        max_record: 1 << 20,
        memory_budget: 1 << 30,
    }
}

fn added(dest: &str, body: &str, producer: &str, seq: u64) -> Record {
    Record {
        kind: Some(Kind::Added(MessageAdded {
            destination: dest.into(),
            body: Bytes::copy_from_slice(body.as_bytes()),
            producer_id: Bytes::copy_from_slice(producer.as_bytes()),
            sequence: seq,
            priority: 4,
            ..MessageAdded::default()
        })),
        tx: 0,
    }
}

fn removed(index: u64) -> Record {
    Record {
        kind: Some(Kind::Removed(MessageRemoved {
            message: index,
            ..MessageRemoved::default()
        })),
        tx: 0,
    }
}

fn bodies(r: &Recovered, dest: &str) -> Vec<String> {
    r.queues
        .iter()
        .find(|(d, _)| d == dest)
        .map(|(_, ms)| {
            ms.iter()
                .map(|m| String::from_utf8_lossy(&m.record.as_ref().unwrap().body).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn append_all(store: &Store, records: &[Record]) -> Vec<u64> {
    let idx: Vec<u64> = records.iter().map(|r| store.append(r)).collect();
    store
        .journal()
        .wait_synced(*idx.last().unwrap())
        .await
        .unwrap();
    idx
}

#[tokio::test]
async fn records_survive_a_reopen_and_removals_apply() {
    let dir = tempfile::tempdir().unwrap();
    let (store, rec) = Store::open(config(dir.path()), false).unwrap();
    assert!(rec.queues.is_empty());
    let idx = append_all(
        &store,
        &[
            added("queue://a", "one", "p", 1),
            added("queue://a", "two", "p", 2),
            added("queue://b", "three", "q", 7),
        ],
    )
    .await;
    append_all(&store, &[removed(idx[0])]).await;
    assert_eq!(
        String::from_utf8_lossy(&store.read_message(idx[1]).unwrap().body),
        "two"
    );
    store.close();
    let (store, rec) = Store::open(config(dir.path()), false).unwrap();
    assert_eq!(bodies(&rec, "queue://a"), vec!["two"]);
    assert_eq!(bodies(&rec, "queue://b"), vec!["three"]);
    let mut producers = rec.producers.clone();
    producers.sort();
    assert_eq!(
        producers,
        vec![(Bytes::from_static(b"p"), 2), (Bytes::from_static(b"q"), 7)]
    );
    assert!(!rec.clean, "no clean-shutdown checkpoint was written");
    assert!(rec
        .queues
        .iter()
        .all(|(_, m)| m.iter().all(|m| m.redelivery_count >= 1)));
    assert_eq!(store.journal().next_index(), idx[2] + 2);
    store.close();
}

#[tokio::test]
async fn durable_subscriptions_keep_their_topic_messages_and_transactions_apply_at_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(config(dir.path()), false).unwrap();
    let durable = |name: &str| Record {
        kind: Some(Kind::DurableAdded(DurableAdded {
            client_id: "c".into(),
            name: name.into(),
            pattern: "topic://news.>".into(),
            no_local: false,
            selector: String::new(),
        })),
        tx: 0,
    };
    let idx = append_all(
        &store,
        &[
            durable("a"),
            durable("b"),
            added("topic://news.eu", "n1", "p", 1),
            added("topic://other", "ignored", "p", 2),
        ],
    )
    .await;
    let mut tx_send = added("queue://q", "in tx", "p", 3);
    tx_send.tx = 9;
    let mut tx_abort = added("queue://q", "aborted", "p", 4);
    tx_abort.tx = 10;
    append_all(
        &store,
        &[
            Record {
                kind: Some(Kind::Removed(MessageRemoved {
                    message: idx[2],
                    durable_client_id: "c".into(),
                    durable_name: "a".into(),
                })),
                tx: 0,
            },
            tx_send,
            tx_abort,
            Record {
                kind: Some(Kind::TxEnd(TxEnd { commit: true })),
                tx: 9,
            },
            Record {
                kind: Some(Kind::TxEnd(TxEnd { commit: false })),
                tx: 10,
            },
        ],
    )
    .await;
    store.close();
    let (store, rec) = Store::open(config(dir.path()), false).unwrap();
    let mut d = rec.durables.clone();
    d.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(d[0].messages, vec![], "a acknowledged it");
    assert_eq!(d[1].messages.len(), 1, "b still holds it");
    assert_eq!(rec.topic_messages[&idx[2]].body, Bytes::from_static(b"n1"));
    assert_eq!(bodies(&rec, "queue://q"), vec!["in tx"], "committed only");
    store.close();
}

/// Writes three records, then cuts or damages the last one's bytes.
async fn three_records(dir: &Path) -> (PathBuf, Vec<u64>, u64) {
    let (store, _) = Store::open(config(dir), false).unwrap();
    let idx = append_all(
        &store,
        &[
            added("queue://a", "first", "p", 1),
            added("queue://a", "second", "p", 2),
            added("queue://a", "third", "p", 3),
        ],
    )
    .await;
    let seg = store.journal().shared.segments.read();
    let path = seg[0].path.clone();
    let last_offset = seg[0].offsets[2] as u64;
    drop(seg);
    store.close();
    (path, idx, last_offset)
}

#[tokio::test]
async fn a_torn_last_record_cut_at_every_byte_recovers_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _, last) = three_records(dir.path()).await;
    let pristine = std::fs::read(&path).unwrap();
    let end = {
        let s = frame::scan(&pristine, 1, 1 << 20);
        s.end
    };
    for cut in last as usize..end {
        let mut torn = pristine.clone();
        for b in &mut torn[cut..end] {
            *b = 0;
        }
        std::fs::write(&path, &torn).unwrap();
        // A torn write is one that never completed its sync: the mark is before it.
        write_mark(dir.path(), 2).unwrap();
        let (store, rec) =
            Store::open(config(dir.path()), false).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(
            bodies(&rec, "queue://a"),
            vec!["first", "second"],
            "cut at {cut}"
        );
        let next = store.append(&added("queue://a", "after", "p", 9));
        assert_eq!(next, 3, "the torn record's index is reused");
        store.journal().wait_synced(next).await.unwrap();
        store.close();
        let (store, rec) = Store::open(config(dir.path()), false).unwrap();
        assert_eq!(bodies(&rec, "queue://a"), vec!["first", "second", "after"]);
        store.close();
        std::fs::write(&path, &pristine).unwrap();
    }
}

#[tokio::test]
async fn a_flipped_byte_in_an_earlier_record_is_refused_with_its_offset_until_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _, _) = three_records(dir.path()).await;
    let mut bytes = std::fs::read(&path).unwrap();
    let second = {
        let s = frame::scan(&bytes, 1, 1 << 20);
        s.records[1].offset
    };
    bytes[second + frame::FRAME_HEADER + 3] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let err = Store::open(config(dir.path()), false).unwrap_err();
    match &err {
        StoreError::Corrupt {
            path: p, offset, ..
        } => {
            assert_eq!(*offset, second as u64);
            assert!(p.ends_with(".log"));
        }
        other => panic!("expected corruption, got {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&format!("offset {second}")) && text.contains("--repair"),
        "{text}"
    );
    let (store, rec) = Store::open(config(dir.path()), true).unwrap();
    assert_eq!(
        bodies(&rec, "queue://a"),
        vec!["first"],
        "repair cuts at the damage"
    );
    store.close();
}

#[tokio::test]
async fn checkpoints_let_acknowledged_segments_go() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(config(dir.path()), false).unwrap();
    let body = "x".repeat(1000);
    for round in 0..20u64 {
        let idx = append_all(&store, &[added("queue://a", &body, "p", round)]).await;
        store.journal().retain(idx[0]);
        append_all(&store, &[removed(idx[0])]).await;
        store.journal().release(idx[0]);
    }
    let before = store.journal().segment_count();
    let cp = Checkpoint {
        next_index: store.journal().next_index(),
        clean: true,
        queues: vec![QueueState {
            destination: "queue://a".into(),
            messages: Vec::new(),
        }],
        ..Checkpoint::default()
    };
    // A checkpoint that lists nothing live lets every finished segment go but the active one.
    let deleted = store.checkpoint(&cp).unwrap();
    assert!(
        before > 3 && deleted > 0,
        "{before} segments, {deleted} deleted"
    );
    assert_eq!(store.journal().segment_count(), before - deleted);
    let disk = store.journal().disk_bytes();
    store.close();
    let (store, rec) = Store::open(config(dir.path()), false).unwrap();
    assert!(rec.queues.iter().all(|(_, m)| m.is_empty()));
    assert_eq!(store.journal().disk_bytes(), disk);
    store.close();
}

#[tokio::test]
async fn garbage_collection_keeps_segments_with_live_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(config(dir.path()), false).unwrap();
    let body = "y".repeat(1500);
    let mut live = Vec::new();
    for i in 0..12u64 {
        let idx = append_all(&store, &[added("queue://a", &body, "p", i)]).await[0];
        store.journal().retain(idx);
        if i == 0 || i == 7 {
            live.push(idx);
        } else {
            append_all(&store, &[removed(idx)]).await;
            store.journal().release(idx);
        }
    }
    let cp = Checkpoint {
        next_index: store.journal().next_index(),
        clean: true,
        queues: vec![QueueState {
            destination: "queue://a".into(),
            messages: live
                .iter()
                .map(|i| LiveMessage {
                    index: *i,
                    redelivery_count: 2,
                })
                .collect(),
        }],
        ..Checkpoint::default()
    };
    store.checkpoint(&cp).unwrap();
    store.close();
    let (store, rec) = Store::open(config(dir.path()), false).unwrap();
    assert!(rec.clean);
    let q = &rec.queues[0].1;
    assert_eq!(q.iter().map(|m| m.index).collect::<Vec<_>>(), live);
    assert!(q
        .iter()
        .all(|m| m.redelivery_count == 2 && m.record.is_some()));
    store.close();
}

#[tokio::test]
async fn at_the_store_limit_the_journal_is_full_but_what_was_appended_is_still_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // Two 4 KiB segments fit the limit; two 1.5 KiB records fill a segment.
    cfg.store_limit = Some(2 * 4096);
    let (store, _) = Store::open(cfg, false).unwrap();
    let body = "z".repeat(1500);
    let mut idx = Vec::new();
    for i in 0..4u64 {
        let i = store.append(&added("queue://a", &body, "p", i));
        store.journal().retain(i);
        idx.push(i);
    }
    store.journal().wait_synced(idx[3]).await.unwrap();
    assert!(
        store.journal().has_room(),
        "the limit is reached, not passed"
    );
    // Appended before anyone could see the limit pass (sends already accepted): written into
    // a segment beyond the limit, which makes the journal full.
    for i in 4..6u64 {
        let i = store.append(&added("queue://a", &body, "p", i));
        store.journal().retain(i);
        idx.push(i);
    }
    let within = Duration::from_secs(10);
    tokio::time::timeout(within, store.journal().wait_synced(idx[5]))
        .await
        .expect("the writer never waits for the limit")
        .unwrap();
    assert!(store.journal().is_full() && !store.journal().has_room());
    assert_eq!(store.journal().disk_bytes(), 3 * 4096);
    // While full, consumers take every message; their acknowledgements are written too,
    // however many (here, with repeats, several segments' worth).
    let mut last = 0;
    for round in 0..200 {
        for i in &idx {
            last = store.append(&removed(*i));
            if round == 0 {
                store.journal().release(*i);
            }
        }
    }
    tokio::time::timeout(within, store.journal().wait_synced(last))
        .await
        .expect("acknowledgements are written while the journal is full")
        .unwrap();
    assert!(store.journal().is_full());
    assert!(store.journal().disk_bytes() > 4 * 4096);
    // A checkpoint after them lets every segment but the active one go: under the limit, room
    // again.
    let segments = store.journal().segment_count();
    let cp = Checkpoint {
        next_index: last + 1,
        ..Checkpoint::default()
    };
    assert_eq!(store.checkpoint(&cp).unwrap(), segments - 1);
    assert!(!store.journal().is_full() && store.journal().has_room());
    assert_eq!(store.journal().disk_bytes(), 4096);
    store.close();
}

#[tokio::test]
async fn concurrent_appends_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_size = 1 << 20;
    let (store, _) = Store::open(cfg, false).unwrap();
    let mut tasks = Vec::new();
    for p in 0..32u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for s in 0..20u64 {
                let i = store.append(&added("queue://a", "m", &p.to_string(), s));
                store.journal().wait_synced(i).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let syncs = store
        .journal()
        .shared
        .fsyncs
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(syncs < 640, "640 appends in {syncs} syncs");
    store.close();
}

#[tokio::test]
async fn a_quorum_wait_times_out_from_when_it_began_not_from_each_return_to_it() {
    // A connection comes back to the wait for its oldest receipt after every other frame it
    // handles; the quorum timeout must count from when the send was taken, or a busy client
    // would wait past it for ever.
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(config(dir.path()), false).unwrap();
    let timeout = Duration::from_millis(300);
    store.journal().gate(timeout);
    let index = store.append(&added("queue://a", "m", "p", 1));
    let began = tokio::time::Instant::now();
    // Come back to the wait every 50 ms, as a busy connection does: never commits, and each
    // slice alone is shorter than the timeout.
    let outcome = loop {
        let slice = tokio::time::sleep(Duration::from_millis(50));
        tokio::select! {
            r = store.journal().wait_synced_since(index, began) => break r,
            _ = slice => {}
        }
        assert!(
            began.elapsed() < timeout * 20,
            "the wait never timed out: it restarts on every return"
        );
    };
    assert!(
        matches!(outcome, Err(crate::store::StoreError::NoQuorum { waited }) if waited == timeout),
        "{outcome:?}"
    );
    store.close();
}

/// Damage to the last record, which was synced: corruption, named by file and offset.
#[tokio::test]
async fn a_flipped_byte_in_the_last_synced_record_is_refused_until_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let (path, idx, last) = three_records(dir.path()).await;
    assert_eq!(
        read_mark(dir.path()).unwrap(),
        Some(idx[2]),
        "the mark names the last record"
    );
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[last as usize + frame::FRAME_HEADER + 2] ^= 0x04;
    std::fs::write(&path, &bytes).unwrap();
    let err = Store::open(config(dir.path()), false).unwrap_err();
    match &err {
        StoreError::Corrupt {
            path: p,
            offset,
            reason,
        } => {
            assert_eq!(*offset, last);
            assert_eq!(p, &path.display().to_string());
            assert!(reason.contains("was synced"), "{reason}");
        }
        other => panic!("expected corruption, got {other}"),
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "a refused start changes nothing"
    );
    let (store, rec) = Store::open(config(dir.path()), true).unwrap();
    assert_eq!(bodies(&rec, "queue://a"), vec!["first", "second"]);
    assert_eq!(rec.next_index, 3);
    store.close();
    assert_eq!(
        read_mark(dir.path()).unwrap(),
        Some(2),
        "repair lowers the mark"
    );
    let (store, rec) = Store::open(config(dir.path()), false).unwrap();
    assert_eq!(bodies(&rec, "queue://a"), vec!["first", "second"]);
    store.close();
}

/// A journal cut at a record boundary (the last record's bytes gone, the file shorter or its
/// zeros back) scans clean: only the mark shows a synced record is missing.
#[tokio::test]
async fn a_journal_cut_at_a_record_boundary_is_refused_until_repaired() {
    for shorten in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, last) = three_records(dir.path()).await;
        let mut bytes = std::fs::read(&path).unwrap();
        if shorten {
            bytes.truncate(last as usize);
        } else {
            bytes[last as usize..].fill(0);
        }
        std::fs::write(&path, &bytes).unwrap();
        let err = Store::open(config(dir.path()), false).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&path.display().to_string())
                && text.contains(&format!("offset {last}"))
                && text.contains("records up to 3 were synced")
                && text.contains("--repair"),
            "shorten {shorten}: {text}"
        );
        let (store, rec) = Store::open(config(dir.path()), true).unwrap();
        assert_eq!(bodies(&rec, "queue://a"), vec!["first", "second"]);
        store.close();
    }
}

/// The newest segment deleted: the records it held were synced, so the start is refused.
#[tokio::test]
async fn a_deleted_last_segment_is_refused_until_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(config(dir.path()), false).unwrap();
    let body = "y".repeat(1000);
    let records: Vec<Record> = (0..12)
        .map(|i| added("queue://a", &format!("{i}{body}"), "p", i + 1))
        .collect();
    let idx = append_all(&store, &records).await;
    let segs: Vec<(u64, PathBuf)> = store
        .journal()
        .shared
        .segments
        .read()
        .iter()
        .map(|s| (s.first, s.path.clone()))
        .collect();
    store.close();
    assert!(segs.len() >= 3, "{segs:?}");
    let (first_gone, gone) = segs.last().unwrap().clone();
    std::fs::remove_file(&gone).unwrap();
    let err = Store::open(config(dir.path()), false).unwrap_err();
    let text = err.to_string();
    let before = &segs[segs.len() - 2].1;
    assert!(
        text.contains(&before.display().to_string())
            && text.contains(&format!(
                "ends at record {} but records up to {} were synced",
                first_gone - 1,
                idx.last().unwrap()
            )),
        "{text}"
    );
    let (store, rec) = Store::open(config(dir.path()), true).unwrap();
    assert_eq!(
        bodies(&rec, "queue://a").len() as u64,
        first_gone - 1,
        "repair keeps the segments before"
    );
    assert_eq!(rec.next_index, first_gone);
    store.close();
}

/// A damaged checkpoint is refused naming it; `--repair` replays from the first record.
#[tokio::test]
async fn a_corrupt_checkpoint_is_refused_until_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(config(dir.path()), false).unwrap();
    append_all(
        &store,
        &[
            added("queue://a", "one", "p", 1),
            added("queue://a", "two", "p", 2),
        ],
    )
    .await;
    let mut c = Checkpoint {
        next_index: store.journal().next_index(),
        ..Checkpoint::default()
    };
    c.queues.push(QueueState {
        destination: "queue://a".into(),
        messages: vec![
            LiveMessage {
                index: 1,
                redelivery_count: 0,
            },
            LiveMessage {
                index: 2,
                redelivery_count: 0,
            },
        ],
    });
    store.checkpoint(&c).unwrap();
    store.close();
    let cp = dir.path().join("checkpoint");
    let mut bytes = std::fs::read(&cp).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x08;
    std::fs::write(&cp, &bytes).unwrap();
    let err = Store::open(config(dir.path()), false).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&cp.display().to_string()) && text.contains("checksum"),
        "{text}"
    );
    let (store, rec) = Store::open(config(dir.path()), true).unwrap();
    assert_eq!(bodies(&rec, "queue://a"), vec!["one", "two"]);
    assert!(
        rec.notes.iter().any(|n| n.contains("ignored")),
        "{:?}",
        rec.notes
    );
    store.close();
    // Repaired once is repaired: a plain start (a crash before the next checkpoint) replays
    // the same records instead of refusing the same checkpoint again.
    let (store, rec) = Store::open(config(dir.path()), false).unwrap();
    assert_eq!(bodies(&rec, "queue://a"), vec!["one", "two"]);
    assert!(!cp.exists(), "the ignored checkpoint is still read");
    assert_eq!(
        std::fs::read(dir.path().join("checkpoint.corrupt")).unwrap(),
        bytes,
        "the damaged checkpoint is kept aside as it was"
    );
    store.close();
}

/// A corrupt checkpoint whose records garbage collection already deleted: `--repair` can only
/// rebuild from the oldest record left (saying what is lost), and a plain start afterwards
/// does the same instead of refusing.
#[tokio::test]
async fn a_corrupt_checkpoint_over_collected_segments_is_repaired_from_the_oldest_record() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(config(dir.path()), false).unwrap();
    let body = "x".repeat(1000);
    for round in 0..20u64 {
        let idx = append_all(&store, &[added("queue://a", &body, "p", round)]).await;
        store.journal().retain(idx[0]);
        append_all(&store, &[removed(idx[0])]).await;
        store.journal().release(idx[0]);
    }
    let cp = Checkpoint {
        next_index: store.journal().next_index(),
        ..Checkpoint::default()
    };
    assert!(
        store.checkpoint(&cp).unwrap() > 0,
        "no segment was collected"
    );
    append_all(
        &store,
        &[
            added("queue://a", "after-0", "p", 100),
            added("queue://a", "after-1", "p", 101),
        ],
    )
    .await;
    store.close();
    let oldest = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".log")?.parse::<u64>().ok()
        })
        .min()
        .unwrap();
    assert!(oldest > 1, "the first segment is still there");
    let path = dir.path().join("checkpoint");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x08;
    std::fs::write(&path, &bytes).unwrap();
    let err = Store::open(config(dir.path()), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");

    let (store, rec) = Store::open(config(dir.path()), true).unwrap();
    assert_eq!(bodies(&rec, "queue://a"), vec!["after-0", "after-1"]);
    assert!(
        rec.notes
            .iter()
            .any(|n| n.contains(&format!("rebuilt from record {oldest}"))),
        "{:?}",
        rec.notes
    );
    store.close();
    let (store, rec) = Store::open(config(dir.path()), false).unwrap();
    assert_eq!(bodies(&rec, "queue://a"), vec!["after-0", "after-1"]);
    store.close();
}

/// A `_mem` journal (`Written`) of twelve 1 KB messages over several 4 KiB segments, the
/// messages of the first segment acknowledged, then a checkpoint listing as live the others and
/// `also_live` (the first segment is pinned, so the checkpoint does not delete it). Returns the
/// first segment's path and records, and every segment's first index.
async fn checkpointed_over_segments(
    dir: &Path,
    also_live: &[u64],
) -> (PathBuf, Vec<u64>, Vec<u64>) {
    let mut cfg = config(dir);
    cfg.durability = Durability::Written;
    let (store, _) = Store::open(cfg, false).unwrap();
    store.journal().pin(1, 1);
    let body = "z".repeat(1000);
    let records: Vec<Record> = (0..12)
        .map(|i| added("queue://a", &format!("{i:02}{body}"), "p", i + 1))
        .collect();
    let idx = append_all(&store, &records).await;
    let (first_path, first_records, firsts) = {
        let segs = store.journal().shared.segments.read();
        let s = &segs[0];
        (
            s.path.clone(),
            (s.first..s.first + s.offsets.len() as u64).collect::<Vec<u64>>(),
            segs.iter().map(|s| s.first).collect::<Vec<u64>>(),
        )
    };
    assert!(firsts.len() >= 3, "{firsts:?}");
    let acks: Vec<Record> = first_records.iter().map(|&i| removed(i)).collect();
    append_all(&store, &acks).await;
    let live: Vec<LiveMessage> = idx
        .iter()
        .filter(|i| !first_records.contains(i) || also_live.contains(i))
        .map(|&index| LiveMessage {
            index,
            redelivery_count: 0,
        })
        .collect();
    let c = Checkpoint {
        next_index: store.journal().next_index(),
        queues: vec![QueueState {
            destination: "queue://a".into(),
            messages: live,
        }],
        ..Checkpoint::default()
    };
    store.checkpoint(&c).unwrap();
    store.close();
    (first_path, first_records, firsts)
}

/// What a power cut leaves of a segment that was never synced: its preallocated zeros.
fn zero_file(path: &Path) {
    let len = std::fs::metadata(path).unwrap().len() as usize;
    std::fs::write(path, vec![0u8; len]).unwrap();
}

/// The shape a power cut left on a `quorum_mem` member: the first segment empty (never
/// synced), later segments whole, and a checkpoint covering the first segment's records with
/// none of them live. Nothing receipted is missing, so the journal opens.
#[tokio::test]
async fn an_empty_first_segment_the_checkpoint_covers_is_no_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (first_path, first_records, firsts) = checkpointed_over_segments(dir.path(), &[]).await;
    zero_file(&first_path);
    let mut cfg = config(dir.path());
    cfg.durability = Durability::Written;
    let (store, rec) =
        Store::open(cfg, false).unwrap_or_else(|e| panic!("refused an undamaged journal: {e}"));
    let want: Vec<String> = (first_records.len()..12)
        .map(|i| format!("{i:02}{}", "z".repeat(1000)))
        .collect();
    assert_eq!(
        bodies(&rec, "queue://a"),
        want,
        "every live message is back"
    );
    assert!(
        rec.notes
            .iter()
            .any(|n| n.contains(&format!("records 1..{} are missing", firsts[1]))),
        "{:?}",
        rec.notes
    );
    let next = store.append(&added("queue://a", "after", "p", 99));
    assert_eq!(next, rec.next_index, "the journal goes on where it was");
    store.journal().wait_synced(next).await.unwrap();
    store.close();
}

/// The same gap, but the checkpoint lists a message in it as live: its body is lost, which is
/// real damage — refused, naming the segment and the offset where its records stop.
#[tokio::test]
async fn a_missing_segment_holding_a_live_message_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (first_path, first_records, _) = checkpointed_over_segments(dir.path(), &[2]).await;
    assert!(first_records.contains(&2));
    zero_file(&first_path);
    let mut cfg = config(dir.path());
    cfg.durability = Durability::Written;
    match Store::open(cfg, false).unwrap_err() {
        StoreError::Corrupt {
            path,
            offset,
            reason,
        } => {
            assert_eq!(path, first_path.display().to_string());
            assert_eq!(offset, 0);
            assert!(reason.contains("lists message 2"), "{reason}");
        }
        other => panic!("expected corruption, got {other}"),
    }
}

/// A checkpoint listing a live message whose record is gone (here the only segment is empty) is
/// refused rather than opened silently without the message; `--repair` drops it and says so.
#[tokio::test]
async fn a_live_message_whose_record_is_gone_is_refused_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.durability = Durability::Written;
    let (store, _) = Store::open(cfg.clone(), false).unwrap();
    let idx = append_all(
        &store,
        &[
            added("queue://a", "one", "p", 1),
            added("queue://a", "two", "p", 2),
        ],
    )
    .await;
    let path = store.journal().shared.segments.read()[0].path.clone();
    let c = Checkpoint {
        next_index: store.journal().next_index(),
        queues: vec![QueueState {
            destination: "queue://a".into(),
            messages: idx
                .iter()
                .map(|&index| LiveMessage {
                    index,
                    redelivery_count: 0,
                })
                .collect(),
        }],
        ..Checkpoint::default()
    };
    store.checkpoint(&c).unwrap();
    store.close();
    zero_file(&path);
    let err = Store::open(cfg.clone(), false).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&path.display().to_string())
            && text
                .contains("lists message 1 as live but its record is not in the journal (2 such"),
        "{text}"
    );
    let (store, rec) = Store::open(cfg, true).unwrap();
    assert!(bodies(&rec, "queue://a").is_empty());
    assert!(
        rec.notes.iter().any(|n| n.contains("repair: dropped")),
        "{:?}",
        rec.notes
    );
    store.close();
}

/// A `Written` journal syncs nothing per batch, so a checkpoint first syncs the segments it
/// covers (a checkpoint must not outlive its live messages' records) and moves the mark.
#[tokio::test]
async fn a_written_journals_checkpoint_first_syncs_the_records_it_covers() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.durability = Durability::Written;
    let (store, _) = Store::open(cfg, false).unwrap();
    let body = "w".repeat(1000);
    let records: Vec<Record> = (0..12)
        .map(|i| added("queue://a", &body, "p", i + 1))
        .collect();
    let idx = append_all(&store, &records).await;
    let segments = store.journal().segment_count() as u64;
    assert_eq!(store.journal().counters().0, 0, "no sync per batch");
    assert_eq!(read_mark(dir.path()).unwrap(), None, "nothing synced yet");
    let c = Checkpoint {
        next_index: store.journal().next_index(),
        ..Checkpoint::default()
    };
    store.journal().pin(1, 1);
    store.checkpoint(&c).unwrap();
    assert_eq!(
        store.journal().counters().0,
        segments,
        "one sync per segment"
    );
    assert_eq!(read_mark(dir.path()).unwrap(), Some(*idx.last().unwrap()));
    store.checkpoint(&c).unwrap();
    assert_eq!(
        store.journal().counters().0,
        segments,
        "nothing new to sync"
    );
    store.close();
}

/// A `_mem` journal's unsynced tail dropped by a power cut: the segments after its last
/// checkpoint are all zeros, so records stop and the next segment starts after a gap with
/// nothing behind it. That is the journal's end (as a torn tail is), not damage in the middle.
#[tokio::test]
async fn unwritten_segments_after_a_dropped_tail_end_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.durability = Durability::Written;
    let (store, _) = Store::open(cfg.clone(), false).unwrap();
    store.journal().pin(1, 1);
    let body = "t".repeat(1000);
    let records: Vec<Record> = (0..12)
        .map(|i| added("queue://a", &format!("{i:02}{body}"), "p", i + 1))
        .collect();
    append_all(&store, &records).await;
    let segs: Vec<(u64, PathBuf)> = store
        .journal()
        .shared
        .segments
        .read()
        .iter()
        .map(|s| (s.first, s.path.clone()))
        .collect();
    assert!(segs.len() >= 3, "{segs:?}");
    let covered = segs[1].0;
    let c = Checkpoint {
        next_index: covered,
        queues: vec![QueueState {
            destination: "queue://a".into(),
            messages: (1..covered)
                .map(|index| LiveMessage {
                    index,
                    redelivery_count: 0,
                })
                .collect(),
        }],
        ..Checkpoint::default()
    };
    store.checkpoint(&c).unwrap();
    store.close();
    for (_, p) in &segs[1..] {
        zero_file(p);
    }
    let (store, rec) =
        Store::open(cfg, false).unwrap_or_else(|e| panic!("refused a dropped tail: {e}"));
    let want: Vec<String> = (0..covered - 1).map(|i| format!("{i:02}{body}")).collect();
    assert_eq!(bodies(&rec, "queue://a"), want, "the checkpointed messages");
    assert_eq!(rec.next_index, covered);
    assert!(!segs[2].1.exists(), "the empty segments after the end go");
    let next = store.append(&added("queue://a", "after", "p", 99));
    assert_eq!(next, covered);
    store.journal().wait_synced(next).await.unwrap();
    store.close();
}

/// A checkpoint that covers records past the journal's end (a `_mem` journal lost its unsynced
/// last records): the journal goes on at the checkpoint's index, in a new segment, and what is
/// appended there reads back after a restart.
#[tokio::test]
async fn a_journal_behind_its_checkpoint_goes_on_in_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.durability = Durability::Written;
    let (store, _) = Store::open(cfg.clone(), false).unwrap();
    append_all(
        &store,
        &[
            added("queue://a", "one", "p", 1),
            added("queue://a", "two", "p", 2),
        ],
    )
    .await;
    let c = Checkpoint {
        next_index: 6,
        ..Checkpoint::default()
    };
    store.checkpoint(&c).unwrap();
    store.close();
    let (store, rec) = Store::open(cfg.clone(), false).unwrap();
    assert_eq!(rec.next_index, 6);
    let next = append_all(&store, &[added("queue://a", "six", "p", 6)]).await[0];
    assert_eq!(next, 6);
    assert_eq!(
        store.journal().segment_count(),
        2,
        "a new segment for record 6"
    );
    store.close();
    let (store, rec) = Store::open(cfg, false).unwrap();
    assert_eq!(bodies(&rec, "queue://a"), vec!["six"]);
    assert_eq!(rec.next_index, 7);
    store.close();
}

/// Bytes of `[from, to)` of `path` that the filesystem holds as unwritten (fallocated, never
/// written) extents, from `FS_IOC_FIEMAP`; `None` where the filesystem cannot say.
fn unwritten_bytes(path: &Path, from: u64, to: u64) -> Option<u64> {
    use std::os::fd::AsRawFd;
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_FLAG_SYNC: u32 = 1;
    const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
    const EXTENTS: usize = 64;
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Extent {
        logical: u64,
        physical: u64,
        length: u64,
        reserved64: [u64; 2],
        flags: u32,
        reserved: [u32; 3],
    }
    #[repr(C)]
    struct Map {
        start: u64,
        length: u64,
        flags: u32,
        mapped: u32,
        count: u32,
        reserved: u32,
        extents: [Extent; EXTENTS],
    }
    let file = std::fs::File::open(path).unwrap();
    let mut map = Map {
        start: from,
        length: to - from,
        flags: FIEMAP_FLAG_SYNC,
        mapped: 0,
        count: EXTENTS as u32,
        reserved: 0,
        extents: [Extent::default(); EXTENTS],
    };
    // SAFETY: FS_IOC_FIEMAP on a descriptor we own, with a map of `EXTENTS` extents.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, &mut map as *mut Map) };
    if rc != 0 {
        return None;
    }
    Some(
        map.extents[..map.mapped as usize]
            .iter()
            .filter(|e| e.flags & FIEMAP_EXTENT_UNWRITTEN != 0)
            .map(|e| {
                let start = e.logical.max(from);
                let end = (e.logical + e.length).min(to);
                end.saturating_sub(start)
            })
            .sum(),
    )
}

/// A synced journal's prefiller writes zeros ahead of its appends — the blocks just past the
/// last record stop being unwritten extents, so the next `fdatasync`s commit no extent
/// conversion — and never over a record: every record, over several segments, reads back
/// while the journal runs and after it is opened again.
#[tokio::test]
async fn the_prefiller_writes_ahead_of_appends_and_never_over_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_size = 4 << 20;
    let (store, _) = Store::open(cfg.clone(), false).unwrap();
    let body = |i: usize| format!("{i:05}{}", "p".repeat(700 + i % 600));
    let count = 5000;
    let mut indexes = Vec::new();
    for i in 0..count {
        indexes.push(store.append(&added("queue://p", &body(i), "p", i as u64 + 1)));
        if i % 10 == 9 {
            store.journal().wait_synced(indexes[i]).await.unwrap();
        }
    }
    store
        .journal()
        .wait_synced(indexes[count - 1])
        .await
        .unwrap();
    assert!(store.journal().segment_count() > 1, "the journal rolled");
    for &index in &indexes {
        store
            .journal()
            .read(index)
            .unwrap_or_else(|e| panic!("record {index} was overwritten: {e}"));
    }
    let (path, end, capacity) = {
        let segs = store.journal().shared.segments.read();
        let s = segs.last().unwrap();
        (s.path.clone(), s.end, s.capacity)
    };
    // The prefiller keeps at least half a MiB written ahead of the last record.
    let from = end.div_ceil(4096) * 4096;
    let ahead = (from, (from + (512 << 10)).min(capacity));
    match unwritten_bytes(&path, capacity - 4096, capacity) {
        Some(tail) if tail > 0 => {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                let unwritten = unwritten_bytes(&path, ahead.0, ahead.1).unwrap();
                if unwritten == 0 {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{unwritten} bytes of {ahead:?} past the last record are still unwritten extents"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        _ => eprintln!("this filesystem shows no unwritten extents: the prefill is not checked"),
    }
    store.close();
    let (store, rec) = Store::open(cfg, false).unwrap();
    let want: Vec<String> = (0..count).map(body).collect();
    assert!(
        bodies(&rec, "queue://p") == want,
        "every record is recovered after the prefill"
    );
    store.close();
}

/// A journal dropped without `close` (a crash, as tests model one) leaves no thread of its own
/// running: its writer and prefiller are stopped and joined by the drop, so no write of theirs
/// (a queued batch, 256 KiB of zeros) can land in the journal opened again after it. What was
/// synced before the drop is recovered.
#[tokio::test]
async fn a_journal_dropped_without_close_stops_its_threads_before_the_drop_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_size = 4 << 20;
    for round in 0..3 {
        let (store, _) = Store::open(cfg.clone(), false).unwrap();
        let synced = append_all(
            &store,
            &(0..50)
                .map(|i| added("queue://d", &format!("{round}-{i}"), "p", 1 + i))
                .collect::<Vec<_>>(),
        )
        .await;
        assert!(!synced.is_empty());
        // Queued behind the synced ones when the journal goes: written or not, as in a crash.
        store.append(&added("queue://d", "late", "p", 99));
        let shared = std::sync::Arc::downgrade(&store.journal().shared);
        drop(store);
        assert!(
            shared.upgrade().is_none(),
            "a thread of the dropped journal still runs (it holds the journal's state)"
        );
    }
    let (store, rec) = Store::open(cfg, false).unwrap();
    let got = bodies(&rec, "queue://d");
    for round in 0..3 {
        for i in 0..50 {
            let want = format!("{round}-{i}");
            assert!(got.contains(&want), "synced record {want} was lost");
        }
    }
    store.close();
}

fn fsyncs(store: &Store) -> u64 {
    store
        .journal()
        .shared
        .fsyncs
        .load(std::sync::atomic::Ordering::SeqCst)
}

/// A record appended unwaited (an acknowledgement) gets no sync when appended, but neither
/// the synced watch nor the local one, nor the synced mark a restart reads, covers it before
/// an `fdatasync` ran after it was appended: every move of a watch past it is seen with a
/// sync counted since.
#[tokio::test]
async fn an_unwaited_record_is_covered_only_after_an_fdatasync_ran() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_size = 1 << 20;
    let (store, _) = Store::open(cfg.clone(), false).unwrap();
    let first = append_all(&store, &[added("queue://a", "m", "p", 1)]).await[0];
    let mut synced = store.journal().watch_synced();
    let mut local = store.journal().watch_local();
    for round in 0..3 {
        let before = fsyncs(&store);
        let ack = store.append_unwaited(&removed(first));
        // Nobody waits: the record is held back for a while; whenever a watch covers it, a
        // sync ran since it was appended.
        let covered = async {
            loop {
                let (s, l) = (*synced.borrow_and_update(), *local.borrow_and_update());
                if s >= ack || l >= ack {
                    return (s, l, fsyncs(&store));
                }
                tokio::select! {
                    r = synced.changed() => r.unwrap(),
                    r = local.changed() => r.unwrap(),
                }
            }
        };
        let (s, l, syncs) = tokio::time::timeout(Duration::from_secs(10), covered)
            .await
            .expect("an unwaited record is synced within its bound");
        assert!(
            syncs > before,
            "round {round}: synced {s} / local {l} cover the unwaited record {ack} with no sync since it was appended"
        );
    }
    store
        .journal()
        .wait_synced(store.journal().next_index() - 1)
        .await
        .unwrap();
    // A crash now (no close, no later sync of the mark): the mark covers the acknowledgements,
    // so recovery refuses damage to them rather than cutting them as a torn tail.
    drop(store);
    let (_, recovered) = Store::open(cfg, false).unwrap();
    assert!(
        bodies(&recovered, "queue://a").is_empty(),
        "the acknowledgement was recovered"
    );
}

/// An acknowledgement appended while nobody waits rides on the next sync somebody needs (a
/// producer's send), instead of costing a sync of its own in front of it. Each round leaves a
/// gap after the acknowledgement — longer than the group commit holds a sync back for
/// returning waiters, shorter than an unwaited record's bound — in which a journal that syncs
/// what nobody needs would sync it alone: one sync per round, not two.
#[tokio::test]
async fn an_unwaited_record_rides_on_the_next_needed_sync() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_size = 1 << 20;
    let (store, _) = Store::open(cfg, false).unwrap();
    let mut last = append_all(&store, &[added("queue://a", "m", "p", 0)]).await[0];
    const ROUNDS: u64 = 20;
    let gap = journal::MAX_RETURN_WAIT + Duration::from_millis(1);
    assert!(gap < journal::MAX_UNWAITED);
    let before = fsyncs(&store);
    for seq in 1..=ROUNDS {
        let ack = store.append_unwaited(&removed(last));
        std::thread::sleep(gap);
        last = store.append(&added("queue://a", "m", "p", seq));
        store.journal().wait_synced(last).await.unwrap();
        assert!(store.journal().synced() >= ack);
    }
    let syncs = fsyncs(&store) - before;
    // A round whose gap outlasted the bound on a stalled machine costs a second sync; most
    // rounds cannot.
    assert!(
        syncs < ROUNDS * 3 / 2,
        "{ROUNDS} rounds of an acknowledgement and a send took {syncs} syncs"
    );
    store.close();
}
