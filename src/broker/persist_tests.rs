//! The broker over a real journal in a temporary directory, restarted in-process: closing the
//! store without a checkpoint is what a `kill -9` after the last sync leaves behind.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;

use super::tests::{pattern, to_dest};
use super::*;
use crate::store::{Durability, Store, StoreConfig};

fn store_config(dir: &Path) -> StoreConfig {
    StoreConfig {
        dir: dir.join("journal"),
        segment_size: 64 << 10,
        store_limit: None,
        durability: Durability::Synced,
        group_commit_window: Duration::ZERO,
        max_record: 1 << 20,
        memory_budget: 1 << 30,
    }
}

fn open(dir: &Path, settings: BrokerSettings) -> Broker {
    let (store, recovered) = Store::open(store_config(dir), false).unwrap();
    Broker::with_store(settings, store, recovered)
}

/// A broker whose group commit holds each write 300 ms on its way to the disk (so a test can
/// act while a commit is pending), and its store's configuration, to open it again.
fn open_with_slow_commits(dir: &Path) -> (Broker, StoreConfig) {
    let config = StoreConfig {
        group_commit_window: Duration::from_millis(300),
        ..store_config(dir)
    };
    let (store, recovered) = Store::open(config.clone(), false).unwrap();
    let broker = Broker::with_store(BrokerSettings::default(), store, recovered);
    (broker, config)
}

/// Stops without a checkpoint (as a crash after the last sync would).
fn crash(b: Broker) {
    b.store().unwrap().close();
}

fn msg(body: &str, persistent: bool) -> Message {
    Message {
        body: Bytes::copy_from_slice(body.as_bytes()),
        persistent,
        priority: DEFAULT_PRIORITY,
        ..Message::default()
    }
}

/// Publishes and waits until it is durable, and so visible (the broker publishes an index as
/// synced only once it has dispatched what it holds).
async fn publish(s: &mut Session, dest: &str, m: Message) -> Published {
    let t = s.target(&to_dest(dest)).unwrap();
    let p = s.publish(&t, m).unwrap();
    if let Published::Pending(i) = p {
        s.broker().wait_synced(i).await.unwrap();
    }
    p
}

fn sub(s: &mut Session, id: u64, dest: &str, durable: Option<&str>) {
    s.subscribe(SubscribeSpec {
        subscription: id,
        destination: pattern(dest),
        selector: String::new(),
        prefetch: 1000,
        priority: 0,
        durable_name: durable.map(String::from),
        no_local: false,
    })
    .unwrap();
}

fn drain(s: &Session) -> Vec<Delivery> {
    let mut out = VecDeque::new();
    s.outbox().drain_into(&mut out);
    out.into()
}

fn bodies(d: &[Delivery]) -> Vec<String> {
    d.iter()
        .map(|d| String::from_utf8_lossy(&d.message.body).into_owned())
        .collect()
}

#[tokio::test]
async fn unacknowledged_persistent_messages_survive_a_crash_flagged_redelivered() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), BrokerSettings::default());
    let mut p = b.open_session(None).unwrap();
    for i in 0..5 {
        assert!(matches!(
            publish(&mut p, "queue://q", msg(&i.to_string(), true)).await,
            Published::Pending(_)
        ));
    }
    assert_eq!(
        publish(&mut p, "queue://q", msg("memory only", false)).await,
        Published::Accepted
    );
    let mut c = b.open_session(None).unwrap();
    sub(&mut c, 1, "queue://q", None);
    let d = drain(&c);
    assert_eq!(d.len(), 6);
    let acked = d[1].tag;
    drop(d);
    c.ack(1, acked, &[]).unwrap();
    // Let the removal records reach the disk, then crash.
    let last = b.store().unwrap().journal().next_index() - 1;
    b.store()
        .unwrap()
        .journal()
        .wait_synced(last)
        .await
        .unwrap();
    drop(c);
    drop(p);
    crash(b);

    let b = open(dir.path(), BrokerSettings::default());
    let mut c = b.open_session(None).unwrap();
    sub(&mut c, 1, "queue://q", None);
    let d = drain(&c);
    assert_eq!(
        bodies(&d),
        vec!["2", "3", "4"],
        "acked ones gone, the non-persistent one lost"
    );
    assert!(
        d.iter().all(|d| d.redelivery_count >= 1),
        "after a crash, possibly delivered"
    );
}

#[tokio::test]
async fn a_clean_shutdown_keeps_exact_redelivery_counts() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), BrokerSettings::default());
    let mut p = b.open_session(None).unwrap();
    publish(&mut p, "queue://q", msg("never delivered", true)).await;
    drop(p);
    b.checkpoint(true).await.unwrap();
    crash(b);
    let b = open(dir.path(), BrokerSettings::default());
    let mut c = b.open_session(None).unwrap();
    sub(&mut c, 1, "queue://q", None);
    let d = drain(&c);
    assert_eq!(bodies(&d), vec!["never delivered"]);
    assert_eq!(d[0].redelivery_count, 0);
}

#[tokio::test]
async fn durable_subscriptions_and_their_messages_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), BrokerSettings::default());
    let mut d = b.open_session(Some("reader".into())).unwrap();
    sub(&mut d, 1, "topic://news.>", Some("all-news"));
    let got = drain(&d);
    assert!(got.is_empty());
    drop(d);
    let mut p = b.open_session(None).unwrap();
    for i in 0..3 {
        let r = publish(&mut p, "topic://news.eu", msg(&format!("n{i}"), true)).await;
        assert!(
            matches!(r, Published::Pending(_)),
            "journaled for the durable subscription"
        );
    }
    assert_eq!(
        publish(&mut p, "topic://unheard", msg("no durable listens", true)).await,
        Published::Accepted
    );
    b.checkpoint(false).await.unwrap();
    publish(&mut p, "topic://news.us", msg("after the checkpoint", true)).await;
    drop(p);
    crash(b);

    let b = open(dir.path(), BrokerSettings::default());
    let mut d = b.open_session(Some("reader".into())).unwrap();
    sub(&mut d, 7, "topic://news.>", Some("all-news"));
    let got = drain(&d);
    assert_eq!(bodies(&got), vec!["n0", "n1", "n2", "after the checkpoint"]);
    let last = got.last().unwrap().tag;
    drop(got);
    d.ack(7, last, &[]).unwrap();
    let next = b.store().unwrap().journal().next_index() - 1;
    b.store()
        .unwrap()
        .journal()
        .wait_synced(next)
        .await
        .unwrap();
    drop(d);
    crash(b);

    let b = open(dir.path(), BrokerSettings::default());
    assert_eq!(b.durable_subscriptions(), 1);
    let mut d = b.open_session(Some("reader".into())).unwrap();
    sub(&mut d, 7, "topic://news.>", Some("all-news"));
    assert!(drain(&d).is_empty(), "everything was acknowledged");
    d.unsubscribe(7, true).unwrap();
    let next = b.store().unwrap().journal().next_index() - 1;
    b.store()
        .unwrap()
        .journal()
        .wait_synced(next)
        .await
        .unwrap();
    drop(d);
    crash(b);
    let b = open(dir.path(), BrokerSettings::default());
    assert_eq!(b.durable_subscriptions(), 0, "its removal was journaled");
}

fn sub_selecting(s: &mut Session, id: u64, dest: &str, durable: &str, selector: &str) {
    s.subscribe(SubscribeSpec {
        subscription: id,
        destination: pattern(dest),
        selector: selector.to_string(),
        prefetch: 1000,
        priority: 0,
        durable_name: Some(durable.to_string()),
        no_local: false,
    })
    .unwrap();
}

fn kind(body: &str, kind: &str) -> Message {
    Message {
        headers: vec![("kind".into(), kind.into())],
        ..msg(body, true)
    }
}

/// Waits until everything journaled is on the disk, then stops without a checkpoint.
async fn sync_and_crash(b: Broker) {
    let next = b.store().unwrap().journal().next_index() - 1;
    b.store()
        .unwrap()
        .journal()
        .wait_synced(next)
        .await
        .unwrap();
    crash(b);
}

/// A durable subscription keeps its selector across restarts — from a checkpoint and from the
/// journal alone — and keeps only what it matches; subscribing again with the same selector
/// attaches to it, with another one replaces it and what it kept (JMS 1.1 §6.11.1).
#[tokio::test]
async fn a_durable_subscriptions_selector_survives_restarts_and_a_changed_one_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), BrokerSettings::default());
    let mut d = b.open_session(Some("dev".into())).unwrap();
    sub_selecting(
        &mut d,
        1,
        "topic://sensors.>",
        "mqtt:1:sensors/#",
        "kind = 'hot'",
    );
    d.unsubscribe(1, false).unwrap();
    drop(d);
    let mut p = b.open_session(None).unwrap();
    publish(&mut p, "topic://sensors.a", kind("h0", "hot")).await;
    publish(&mut p, "topic://sensors.a", kind("c0", "cold")).await;
    b.checkpoint(false).await.unwrap();
    publish(&mut p, "topic://sensors.b", kind("h1", "hot")).await;
    publish(&mut p, "topic://sensors.b", kind("c1", "cold")).await;
    drop(p);
    sync_and_crash(b).await;

    // The durable comes back with its selector (which the MQTT session resumes with).
    let b = open(dir.path(), BrokerSettings::default());
    assert_eq!(
        b.durables_of("dev", "mqtt:"),
        vec![(
            "mqtt:1:sensors/#".to_string(),
            pattern("topic://sensors.>"),
            "kind = 'hot'".to_string()
        )]
    );
    let mut d = b.open_session(Some("dev".into())).unwrap();
    sub_selecting(
        &mut d,
        2,
        "topic://sensors.>",
        "mqtt:1:sensors/#",
        "kind = 'hot'",
    );
    assert_eq!(
        bodies(&drain(&d)),
        vec!["h0", "h1"],
        "only the hot ones were kept"
    );
    d.unsubscribe(2, false).unwrap();
    drop(d);
    let mut p = b.open_session(None).unwrap();
    publish(&mut p, "topic://sensors.c", kind("c2", "cold")).await;
    publish(&mut p, "topic://sensors.c", kind("h2", "hot")).await;
    drop(p);
    b.checkpoint(true).await.unwrap();
    crash(b);

    // After a clean checkpoint too; then another selector replaces the durable.
    let b = open(dir.path(), BrokerSettings::default());
    let mut d = b.open_session(Some("dev".into())).unwrap();
    sub_selecting(
        &mut d,
        3,
        "topic://sensors.>",
        "mqtt:1:sensors/#",
        "kind = 'hot'",
    );
    assert_eq!(
        bodies(&drain(&d)),
        vec!["h0", "h1", "h2"],
        "unacknowledged, kept"
    );
    d.unsubscribe(3, false).unwrap();
    sub_selecting(
        &mut d,
        4,
        "topic://sensors.>",
        "mqtt:1:sensors/#",
        "kind = 'cold'",
    );
    assert!(
        drain(&d).is_empty(),
        "a new selector starts a new subscription"
    );
    d.unsubscribe(4, false).unwrap();
    drop(d);
    let mut p = b.open_session(None).unwrap();
    publish(&mut p, "topic://sensors.d", kind("h3", "hot")).await;
    publish(&mut p, "topic://sensors.d", kind("c3", "cold")).await;
    drop(p);
    sync_and_crash(b).await;

    let b = open(dir.path(), BrokerSettings::default());
    assert_eq!(b.durable_subscriptions(), 1);
    let mut d = b.open_session(Some("dev".into())).unwrap();
    sub_selecting(
        &mut d,
        5,
        "topic://sensors.>",
        "mqtt:1:sensors/#",
        "kind = 'cold'",
    );
    assert_eq!(bodies(&drain(&d)), vec!["c3"]);
}

#[tokio::test]
async fn a_producer_re_send_after_a_restart_is_dropped_as_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), BrokerSettings::default());
    let mut p = b.open_session(None).unwrap();
    let tagged = |seq: u64| Message {
        producer_id: Bytes::from_static(b"producer-7"),
        sequence: seq,
        ..msg(&format!("s{seq}"), true)
    };
    for seq in 1..=3 {
        publish(&mut p, "queue://q", tagged(seq)).await;
    }
    drop(p);
    crash(b);
    let b = open(dir.path(), BrokerSettings::default());
    let mut p = b.open_session(None).unwrap();
    assert_eq!(
        publish(&mut p, "queue://q", tagged(2)).await,
        Published::Duplicate
    );
    assert_eq!(
        publish(&mut p, "queue://q", tagged(3)).await,
        Published::Duplicate
    );
    assert!(matches!(
        publish(&mut p, "queue://q", tagged(4)).await,
        Published::Pending(_)
    ));
    let mut c = b.open_session(None).unwrap();
    sub(&mut c, 1, "queue://q", None);
    assert_eq!(bodies(&drain(&c)), vec!["s1", "s2", "s3", "s4"]);
}

#[tokio::test]
async fn persistent_messages_past_the_memory_limit_are_paged_out_and_read_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let settings = BrokerSettings {
        memory_limit: 64 << 10,
        ..BrokerSettings::default()
    };
    let b = open(dir.path(), settings.clone());
    let mut p = b.open_session(None).unwrap();
    let body = "p".repeat(1000);
    let t = p.target(&to_dest("queue://big")).unwrap();
    let mut last = 0;
    for i in 0..1000 {
        // The journal's own flow control (its writer at most half a segment behind) may hold
        // a send back; memory never does.
        let journal = b.store().unwrap().journal().clone();
        while !journal.has_room() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            p.has_room(&t, true),
            "persistent sends are not held back by memory"
        );
        if let Published::Pending(idx) = p.publish(&t, msg(&format!("{i:04}{body}"), true)).unwrap()
        {
            last = idx;
        }
    }
    b.wait_synced(last).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        b.memory().used() <= (64 << 10) + 4 * 1300,
        "memory holds only what fits: {} bytes",
        b.memory().used()
    );
    assert_eq!(b.queue_depth("queue://big"), Some(1000));
    let mut c = b.open_session(None).unwrap();
    c.subscribe(SubscribeSpec {
        subscription: 1,
        destination: pattern("queue://big"),
        selector: String::new(),
        prefetch: 10,
        priority: 0,
        durable_name: None,
        no_local: false,
    })
    .unwrap();
    let mut got = Vec::new();
    while got.len() < 1000 {
        let d = drain(&c);
        assert!(!d.is_empty(), "stalled after {}", got.len());
        let tag = d.last().unwrap().tag;
        got.extend(
            d.iter()
                .map(|d| String::from_utf8_lossy(&d.message.body[..4]).into_owned()),
        );
        drop(d);
        c.ack(1, tag, &[]).unwrap();
    }
    let expected: Vec<String> = (0..1000).map(|i| format!("{i:04}")).collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn dead_lettered_persistent_messages_stay_persistent() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = BrokerSettings::default();
    settings.defaults.max_redeliveries = 0;
    let b = open(dir.path(), settings.clone());
    let mut p = b.open_session(None).unwrap();
    publish(&mut p, "queue://orders", msg("poison", true)).await;
    let mut c = b.open_session(None).unwrap();
    sub(&mut c, 1, "queue://orders", None);
    let d = drain(&c);
    let tag = d[0].tag;
    drop(d);
    c.nack(1, &[tag]).unwrap();
    let next = b.store().unwrap().journal().next_index() - 1;
    b.store()
        .unwrap()
        .journal()
        .wait_synced(next)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(c);
    drop(p);
    crash(b);
    let b = open(dir.path(), settings);
    assert_eq!(b.queue_depth("queue://orders"), Some(0));
    assert_eq!(b.queue_depth("queue://DLQ.orders"), Some(1));
}

#[tokio::test]
async fn acknowledged_segments_are_deleted_after_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), BrokerSettings::default());
    let mut p = b.open_session(None).unwrap();
    let mut c = b.open_session(None).unwrap();
    sub(&mut c, 1, "queue://q", None);
    let body = "g".repeat(4000);
    for round in 0..100 {
        publish(&mut p, "queue://q", msg(&format!("{round}{body}"), true)).await;
        let d = drain(&c);
        let tag = d.last().unwrap().tag;
        drop(d);
        c.ack(1, tag, &[]).unwrap();
    }
    let journal = b.store().unwrap().journal().clone();
    let before = journal.segment_count();
    let deleted = b.checkpoint(false).await.unwrap();
    assert!(before >= 6, "{before} segments of 64 KiB for 400 KB");
    assert!(
        journal.segment_count() <= 2,
        "{before} → {} after deleting {deleted}",
        journal.segment_count()
    );
}

/// Messages counted live in their journal segments (what garbage collection must keep).
fn live_in_segments(b: &Broker) -> u64 {
    b.store()
        .unwrap()
        .journal()
        .shared
        .segments
        .read()
        .iter()
        .map(|s| s.live.load(std::sync::atomic::Ordering::Relaxed))
        .sum()
}

#[tokio::test]
async fn dispatch_runs_before_anyone_sees_the_commit() {
    // The committer makes messages visible and counts them live in their segments; a receipt
    // or a checkpoint waiting for the commit through the broker must find that done, or a
    // checkpoint could let a segment with a live message go.
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), BrokerSettings::default());
    let mut p = b.open_session(None).unwrap();
    let t = p.target(&to_dest("queue://q")).unwrap();
    let (mut seen_dispatched, mut seen_early) = (0u64, 0u64);
    for i in 0..40u64 {
        if i == 20 {
            // Replicated: commits are published by replication once a quorum has the records.
            b.store().unwrap().journal().gate(Duration::from_secs(10));
        }
        let Published::Pending(index) = p.publish(&t, msg(&i.to_string(), true)).unwrap() else {
            panic!("a persistent message is journaled");
        };
        if i >= 20 {
            let journal = b.store().unwrap().journal().clone();
            let mut local = journal.watch_local();
            local.wait_for(|l| *l >= index).await.unwrap();
            assert!(b.synced() < index, "seen synced before a quorum had it");
            journal.publish_committed(index);
        }
        b.wait_synced(index).await.unwrap();
        let visible = b.queue_depth("queue://q") == Some(i as usize + 1);
        let counted = live_in_segments(&b) == i + 1;
        if visible && counted {
            seen_dispatched += 1;
        } else {
            seen_early += 1;
        }
    }
    assert_eq!(
        seen_dispatched, 40,
        "every commit seen found its message dispatched"
    );
    assert_eq!(seen_early, 0);
}

/// A message forwarded here from `hub` (producer `p`, sequence `seq`).
fn forwarded(body: &str, seq: u64) -> Message {
    Message {
        producer_id: Bytes::from_static(b"p"),
        sequence: seq,
        broker_path: vec![Arc::from("hub")],
        ..msg(body, true)
    }
}

/// A forward this group took is known again after a restart, whether its record comes after
/// the last checkpoint (replayed) or before it (remembered by the checkpoint): a copy the
/// source sends again after losing the acknowledgement is dropped, not delivered twice.
#[tokio::test]
async fn forwards_taken_are_known_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let settings = BrokerSettings {
        group: "edge".into(),
        ..BrokerSettings::default()
    };
    let b = open(dir.path(), settings.clone());
    let mut s = b.open_session(None).unwrap();
    let t = s.target(&to_dest("queue://f")).unwrap();
    for seq in 1..=3 {
        let m = forwarded(&format!("before {seq}"), seq);
        assert!(b.first_forward(&m, false, "edge"));
        if let Published::Pending(i) = s.publish_forwarded(&t, m).unwrap() {
            b.wait_synced(i).await.unwrap();
        }
    }
    b.checkpoint(false).await.unwrap();
    for seq in 4..=5 {
        let m = forwarded(&format!("after {seq}"), seq);
        assert!(b.first_forward(&m, false, "edge"));
        if let Published::Pending(i) = s.publish_forwarded(&t, m).unwrap() {
            b.wait_synced(i).await.unwrap();
        }
    }
    drop(s);
    crash(b);
    let b = open(dir.path(), settings);
    for seq in 1..=5 {
        assert!(
            !b.first_forward(&forwarded("again", seq), false, "edge"),
            "sequence {seq} is taken for new after the restart"
        );
    }
    assert!(
        b.first_forward(&forwarded("new", 6), false, "edge"),
        "a forward never seen is new"
    );
    let mut back = forwarded("replayed back", 1);
    back.broker_path.push(Arc::from("edge"));
    back.broker_path.push(Arc::from("hub"));
    assert!(
        b.first_forward(&back, false, "edge"),
        "a message that left here and legitimately comes back is not a copy"
    );
    crash(b);
}

#[tokio::test]
async fn a_checkpoint_taken_while_a_transaction_commits_lists_its_sends_by_their_records() {
    // A committed transaction's sends become visible with its end marker, but each is
    // journaled under its own record: a checkpoint taken before the end marker is durable must
    // list each under that record (and a send not journaled not at all), or the next start
    // finds the "live message" is the end marker and refuses.
    let dir = tempfile::tempdir().unwrap();
    // Holds the commit on its way to the disk while the checkpoint takes its snapshot.
    let (b, config) = open_with_slow_commits(dir.path());
    let mut p = b.open_session(None).unwrap();
    let t = p.target(&to_dest("queue://q")).unwrap();
    let sends = [("one", true), ("memory only", false), ("two", true)]
        .into_iter()
        .map(|(body, persistent)| p.stage(&t, msg(body, persistent)).unwrap().unwrap())
        .collect();
    let end = p.commit(sends, &[]);
    assert!(end > 0, "the commit is journaled");
    assert!(
        b.synced() < end,
        "the checkpoint must find the commit still pending"
    );
    b.checkpoint(false).await.unwrap();
    drop(p);
    crash(b);

    let (store, recovered) = Store::open(config, false)
        .expect("a checkpoint taken during a commit leaves a journal that opens");
    let b = Broker::with_store(BrokerSettings::default(), store, recovered);
    let mut c = b.open_session(None).unwrap();
    sub(&mut c, 1, "queue://q", None);
    assert_eq!(bodies(&drain(&c)), ["one", "two"]);
}

#[tokio::test]
async fn sends_a_connection_never_confirmed_come_back_flagged_after_a_graceful_restart() {
    // A connection that ends before their receipts went out leaves its sends in doubt (its
    // client sends them again, maybe to another group): those it journaled after its last
    // confirmed record are flagged redelivered — queued ones and ones still on their way to
    // the disk — and stay flagged across a graceful restart; the confirmed one and another
    // connection's are not.
    let dir = tempfile::tempdir().unwrap();
    // Holds the last send on its way to the disk while the connection ends.
    let (b, config) = open_with_slow_commits(dir.path());
    let mut p = b.open_session(None).unwrap();
    let mut other = b.open_session(None).unwrap();
    let Published::Pending(confirmed) = publish(&mut p, "queue://q", msg("confirmed", true)).await
    else {
        panic!("a persistent send is journaled");
    };
    publish(&mut other, "queue://q", msg("another's", true)).await;
    publish(&mut p, "queue://q", msg("queued", true)).await;
    let t = p.target(&to_dest("queue://q")).unwrap();
    let Ok(Published::Pending(last)) = p.publish(&t, msg("on its way", true)) else {
        panic!("a persistent send is journaled");
    };
    assert!(b.synced() < last, "the last send must still be on its way");
    p.flag_unconfirmed(confirmed);
    drop(p);
    drop(other);
    b.wait_synced(last).await.unwrap();
    b.checkpoint(true).await.unwrap();
    crash(b);

    let (store, recovered) = Store::open(config, false).unwrap();
    let b = Broker::with_store(BrokerSettings::default(), store, recovered);
    let mut c = b.open_session(None).unwrap();
    sub(&mut c, 1, "queue://q", None);
    let got: Vec<(String, u32)> = drain(&c)
        .iter()
        .map(|d| {
            let body = String::from_utf8_lossy(&d.message.body).into_owned();
            (body, d.redelivery_count)
        })
        .collect();
    let want = [
        ("confirmed", 0),
        ("another's", 0),
        ("queued", 1),
        ("on its way", 1),
    ];
    assert_eq!(got, want.map(|(b, r)| (b.to_string(), r)));
}

fn retained(body: &str, persistent: bool) -> Message {
    Message {
        headers: vec![(RETAIN_HEADER.to_string(), "true".to_string())],
        ..msg(body, persistent)
    }
}

/// Each retained message under `pattern`: (topic, body, persistent).
fn retained_under(b: &Broker, p: &str) -> Vec<(String, String, bool)> {
    b.retained_matching(&pattern(p))
        .iter()
        .map(|m| {
            (
                m.dest().as_str().to_string(),
                String::from_utf8_lossy(&m.body).into_owned(),
                m.persistent,
            )
        })
        .collect()
}

#[tokio::test]
async fn retained_messages_outlive_crashes_and_the_segments_that_set_them() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), BrokerSettings::default());
    let mut p = b.open_session(None).unwrap();
    assert!(matches!(
        publish(&mut p, "topic://status.boiler", retained("hot", true)).await,
        Published::Pending(_)
    ));
    publish(&mut p, "topic://status.fan", retained("spinning", false)).await;
    publish(&mut p, "topic://status.pump", retained("running", true)).await;
    publish(&mut p, "topic://status.pump", retained("", true)).await;
    publish(&mut p, "topic://status.valve", retained("open", true)).await;
    let kept = vec![
        ("topic://status.boiler".to_string(), "hot".to_string(), true),
        (
            "topic://status.fan".to_string(),
            "spinning".to_string(),
            false,
        ),
        ("topic://status.valve".to_string(), "open".to_string(), true),
    ];
    assert_eq!(retained_under(&b, "topic://status.>"), kept);
    // The crash replays the records.
    drop(p);
    crash(b);
    let b = open(dir.path(), BrokerSettings::default());
    assert_eq!(
        retained_under(&b, "topic://status.>"),
        kept,
        "after a crash"
    );

    // Traffic fills segments past the ones that set them; a checkpoint lets those go.
    let mut p = b.open_session(None).unwrap();
    let mut c = b.open_session(None).unwrap();
    sub(&mut c, 1, "queue://q", None);
    let body = "g".repeat(4000);
    for round in 0..100 {
        publish(&mut p, "queue://q", msg(&format!("{round}{body}"), true)).await;
        let d = drain(&c);
        let tag = d.last().unwrap().tag;
        drop(d);
        c.ack(1, tag, &[]).unwrap();
    }
    publish(&mut p, "topic://status.valve", retained("", false)).await;
    let journal = b.store().unwrap().journal().clone();
    b.checkpoint(false).await.unwrap();
    assert!(
        journal.segment_count() <= 2,
        "retained messages pin no segment: {} left",
        journal.segment_count()
    );
    drop((p, c));
    crash(b);
    let b = open(dir.path(), BrokerSettings::default());
    assert_eq!(
        retained_under(&b, "topic://status.>"),
        kept[..2],
        "from the checkpoint, with the records that set them gone"
    );
}

#[tokio::test]
async fn a_checkpoint_keeps_a_retained_message_still_waiting_to_be_durable() {
    // On a topic a durable subscription holds, a retained message is journaled as that
    // message and is in place only once durable: a checkpoint covering its record while it
    // waits must hold it, or a start from that checkpoint never replays it.
    let dir = tempfile::tempdir().unwrap();
    let (b, config) = open_with_slow_commits(dir.path());
    let mut d = b.open_session(Some("keeper".into())).unwrap();
    sub(&mut d, 1, "topic://status.>", Some("keep"));
    let mut p = b.open_session(None).unwrap();
    let t = p.target(&to_dest("topic://status.boiler")).unwrap();
    let Published::Pending(index) = p.publish(&t, retained("hot", true)).unwrap() else {
        panic!("journaled for the durable subscription");
    };
    assert!(b.synced() < index, "the checkpoint must find it pending");
    assert!(retained_under(&b, "topic://status.>").is_empty());
    b.checkpoint(false).await.unwrap();
    drop((p, d));
    crash(b);

    let (store, recovered) = Store::open(config, false).unwrap();
    assert!(
        recovered.checkpoint_next.unwrap_or(0) > index,
        "the checkpoint covers its record"
    );
    let b = Broker::with_store(BrokerSettings::default(), store, recovered);
    assert_eq!(
        retained_under(&b, "topic://status.>"),
        [("topic://status.boiler".to_string(), "hot".to_string(), true)]
    );
}
