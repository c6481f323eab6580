use std::net::SocketAddr;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::follower::SLOW_INSTALLS;
use super::machine::{epochs_to_proto, quorum_index, token_matches};
use super::proto::{to_follower, to_master, ToFollower, ToMaster};
use super::*;
use crate::store::{self, Durability, EpochHistory, Store, StoreConfig};

const TOKEN: &str = "the-group-replication-token";

fn config(dir: &std::path::Path) -> StoreConfig {
    StoreConfig {
        dir: dir.to_path_buf(),
        segment_size: 1 << 20,
        store_limit: None,
        durability: Durability::Written,
        group_commit_window: Duration::ZERO,
        max_record: 1 << 20,
        memory_budget: 1 << 30,
    }
}

fn record(sequence: u64) -> store::proto::Record {
    store::proto::Record {
        kind: Some(store::proto::record::Kind::Added(
            store::proto::MessageAdded {
                destination: "queue://q".into(),
                sequence,
                ..Default::default()
            },
        )),
        tx: 0,
    }
}

/// A member that learns of a newer epoch while it follows an older master (ZooKeeper
/// shows a new election it is not part of yet) must not take one more record from it,
/// or the old master could count it toward a quorum of a superseded epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_refuses_appends_from_an_older_epoch_in_the_middle_of_a_stream() {
    const GUARD: Duration = Duration::from_secs(30);
    let dir = tempfile::tempdir().expect("tempdir");
    let (master_store, _) =
        Store::open(config(&dir.path().join("master")), false).expect("master journal");
    master_store.journal().gate(GUARD);
    let epoch_start = master_store.begin_epoch(3);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, tracker) = (CancellationToken::new(), TaskTracker::new());
    let link = LinkOptions {
        token: Some(TOKEN.into()),
        heartbeat: Duration::from_millis(500),
    };
    Master::start(
        listener,
        master_store.clone(),
        3,
        epoch_start,
        1,
        true,
        Arc::new(|| true),
        link.clone(),
        vec!["f".into()],
        stop.clone(),
        &tracker,
    );
    let follower_cfg = config(&dir.path().join("follower"));
    let (follower_store, _) = Store::open(follower_cfg.clone(), false).expect("journal");
    let (newest_tx, newest) = tokio::sync::watch::channel(3);
    let opts = FollowOptions {
        member: "f".into(),
        link,
        store: follower_cfg,
    };
    let following = tokio::spawn(async move {
        follow(
            &opts,
            follower_store,
            addr,
            newest,
            CancellationToken::new(),
        )
        .await
    });

    // Streaming works: a record of epoch 3 is committed through the follower's ack.
    let first = master_store.append(&record(1));
    tokio::time::timeout(GUARD, master_store.journal().wait_synced(first))
        .await
        .expect("the follower never acknowledged")
        .expect("commit");

    // The member sees epoch 4 while the stream of epoch 3 goes on.
    newest_tx.send(4).expect("the follow is running");
    let later = master_store.append(&record(2));
    let (follower_store, result) = tokio::time::timeout(GUARD, following)
        .await
        .expect("the follower kept following a master of an older epoch")
        .expect("the follow task");
    assert!(
        matches!(&result, Err(ReplError::Refused(why)) if why.contains("epoch 3")),
        "{result:?}"
    );
    assert!(
        follower_store.journal().next_index() <= later,
        "record {later} of epoch 3 was appended after epoch 4 was seen"
    );
    follower_store.close();
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    master_store.close();
}

/// A master of epoch 3 that needs one follower (`f` or `g`) to commit, with no follower
/// yet: what a rogue peer meets.
struct Lone {
    _dir: tempfile::TempDir,
    store: Store,
    master: Master,
    addr: SocketAddr,
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Lone {
    async fn start(quorum_timeout: Duration) -> Lone {
        Lone::start_with(quorum_timeout, Duration::from_millis(200)).await
    }

    /// As `start`, with `heartbeat` for the links (a hello is awaited for three of them).
    async fn start_with(quorum_timeout: Duration, heartbeat: Duration) -> Lone {
        Lone::start_at(1, quorum_timeout, heartbeat).await
    }

    /// As `start_with`, with a journal whose oldest record is `first` (the ones before
    /// it collected): a follower with less must copy a snapshot.
    async fn start_at(first: u64, quorum_timeout: Duration, heartbeat: Duration) -> Lone {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config(&dir.path().join("master"));
        let store = if first == 1 {
            Store::open(cfg, false).expect("master journal").0
        } else {
            Store::open_empty_at(cfg, first, EpochHistory::default()).expect("master journal")
        };
        store.journal().gate(quorum_timeout);
        let epoch_start = store.begin_epoch(3);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (stop, tracker) = (CancellationToken::new(), TaskTracker::new());
        let master = Master::start(
            listener,
            store.clone(),
            3,
            epoch_start,
            1,
            true,
            Arc::new(|| true),
            LinkOptions {
                token: Some(TOKEN.into()),
                heartbeat,
            },
            vec!["f".into(), "g".into()],
            stop.clone(),
            &tracker,
        );
        Lone {
            _dir: dir,
            store,
            master,
            addr,
            stop,
            tracker,
        }
    }

    async fn end(self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        self.store.close();
    }
}

type Rogue = (
    tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
);

/// Connects to `addr` and says hello; returns the link and the master's answer.
async fn hello(addr: SocketAddr, hello: proto::Hello) -> (Rogue, ToFollower) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (rd, mut wr) = stream.into_split();
    let mut rd = tokio::io::BufReader::new(rd);
    let msg = ToMaster {
        kind: Some(to_master::Kind::Hello(hello)),
    };
    write_msg(&mut wr, &msg).await.expect("hello");
    let answer = tokio::time::timeout(GUARD, read_msg::<ToFollower>(&mut rd, "master"))
        .await
        .expect("no answer to a hello")
        .expect("an answer");
    ((rd, wr), answer)
}

fn login(token: &str, member: &str) -> proto::Hello {
    proto::Hello {
        token: token.into(),
        member: member.into(),
        ..Default::default()
    }
}

/// Reads until the master closes the link; panics if it stays open.
async fn assert_closed(rd: &mut tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>) {
    let closed = tokio::time::timeout(GUARD, async {
        while read_msg::<ToFollower>(rd, "master").await.is_ok() {}
    })
    .await;
    assert!(closed.is_ok(), "the master kept the link open");
}

const GUARD: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_and_closed_before_they_count() {
    let lone = Lone::start(GUARD).await;
    let cases = [
        ("", "f", "no replication token"),
        (
            "the-group-replication-tokeN",
            "f",
            "wrong replication token",
        ),
        (TOKEN, "g-9", "is not a member of this group"),
        (TOKEN, "", "is not a member of this group"),
    ];
    for (token, member, why) in cases {
        let ((mut rd, _wr), answer) = hello(lone.addr, login(token, member)).await;
        match answer.kind {
            Some(to_follower::Kind::Refused(text)) => {
                assert!(
                    text.contains(why),
                    "{member:?}: {text:?} does not say {why:?}"
                )
            }
            other => panic!("token {token:?}, member {member:?} was not refused: {other:?}"),
        }
        assert_closed(&mut rd).await;
        assert!(lone.master.followers().is_empty());
    }
    // The right token and a member of the group: admitted.
    let (_link, answer) = hello(lone.addr, login(TOKEN, "f")).await;
    assert!(
        matches!(answer.kind, Some(to_follower::Kind::Start(_))),
        "{answer:?}"
    );
    lone.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_above_what_the_link_was_sent_closes_it_and_never_commits() {
    let lone = Lone::start(Duration::from_millis(500)).await;
    let ((mut rd, mut wr), answer) = hello(lone.addr, login(TOKEN, "f")).await;
    let Some(to_follower::Kind::Start(start)) = answer.kind else {
        panic!("not admitted: {answer:?}");
    };
    let forged = start.from + 1_000_000_000_000;
    let ack = ToMaster {
        kind: Some(to_master::Kind::Ack(forged)),
    };
    write_msg(&mut wr, &ack).await.expect("ack");
    assert_closed(&mut rd).await;
    let index = lone.store.append(&record(1));
    let outcome = lone.store.journal().wait_synced(index).await;
    assert!(
        matches!(outcome, Err(StoreError::NoQuorum { .. })),
        "a record was committed on a forged ack: {outcome:?}"
    );
    assert!(lone.master.followers().is_empty());
    lone.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_claiming_this_terms_records_counts_only_what_was_acknowledged() {
    let lone = Lone::start(Duration::from_millis(500)).await;
    let index = lone.store.append(&record(1));
    // A follower that says it already holds everything the master has, epochs and all.
    let claim = proto::Hello {
        epochs: epochs_to_proto(&lone.store.epochs()),
        last_index: index,
        ..login(TOKEN, "f")
    };
    let (_link, answer) = hello(lone.addr, claim).await;
    let Some(to_follower::Kind::Start(start)) = answer.kind else {
        panic!("not admitted: {answer:?}");
    };
    assert!(
        start.from <= index,
        "records up to {index} were taken on the follower's word (stream from {})",
        start.from
    );
    let outcome = lone.store.journal().wait_synced(index).await;
    assert!(
        matches!(outcome, Err(StoreError::NoQuorum { .. })),
        "a record was committed on a follower's claim: {outcome:?}"
    );
    lone.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_link_of_a_member_replaces_the_first() {
    let lone = Lone::start(GUARD).await;
    let ((mut first, _w1), a1) = hello(lone.addr, login(TOKEN, "f")).await;
    assert!(
        matches!(a1.kind, Some(to_follower::Kind::Start(_))),
        "{a1:?}"
    );
    let (_second, a2) = hello(lone.addr, login(TOKEN, "f")).await;
    assert!(
        matches!(a2.kind, Some(to_follower::Kind::Start(_))),
        "{a2:?}"
    );
    assert_closed(&mut first).await;
    let members: Vec<String> = lone
        .master
        .followers()
        .into_iter()
        .map(|f| f.member)
        .collect();
    assert_eq!(members, ["f"]);
    lone.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_waiting_for_their_hello_are_bounded() {
    // Strangers get 30 s to send their hello: the slots stay taken for the whole test.
    let lone = Lone::start_with(GUARD, Duration::from_secs(10)).await;
    // Strangers that connect and say nothing hold every handshake slot...
    let mut idle = Vec::new();
    for _ in 0..HANDSHAKES {
        idle.push(TcpStream::connect(lone.addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...so the next connection is closed before its hello is read, even a valid one.
    let stream = TcpStream::connect(lone.addr).await.expect("connect");
    let (rd, mut wr) = stream.into_split();
    let mut rd = tokio::io::BufReader::new(rd);
    let msg = ToMaster {
        kind: Some(to_master::Kind::Hello(login(TOKEN, "f"))),
    };
    let _ = write_msg(&mut wr, &msg).await;
    let answer = tokio::time::timeout(GUARD, read_msg::<ToFollower>(&mut rd, "master"))
        .await
        .expect("the master neither answered nor closed");
    assert!(
        answer.is_err(),
        "a connection past {HANDSHAKES} waiting handshakes was served: {answer:?}"
    );
    // Once the strangers are gone, a follower is let in again.
    drop(idle);
    let admitted = tokio::time::timeout(GUARD, async {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let stream = TcpStream::connect(lone.addr).await.expect("connect");
            let (rd, mut wr) = stream.into_split();
            let mut rd = tokio::io::BufReader::new(rd);
            let _ = write_msg(&mut wr, &msg).await;
            if let Ok(ToFollower {
                kind: Some(to_follower::Kind::Start(_)),
            }) = read_msg::<ToFollower>(&mut rd, "master").await
            {
                return;
            }
        }
    })
    .await;
    assert!(admitted.is_ok(), "the slots were never given back");
    lone.end().await;
}

#[test]
fn a_start_is_planned_only_from_record_1_and_without_gaps() {
    let start = |from, snapshot| proto::Start {
        epoch: 3,
        from,
        snapshot,
        ..Default::default()
    };
    // (start, follower's last record, plan)
    let cases = [
        (start(0, false), 0, None),
        (start(0, false), 7, None),
        (start(0, true), 7, None),
        (start(1, false), 0, Some(StartPlan::Append)),
        (start(8, false), 7, Some(StartPlan::Append)),
        (start(3, false), 7, Some(StartPlan::CutAfter { keep: 2 })),
        (start(1, false), 7, Some(StartPlan::CutAfter { keep: 0 })),
        (start(9, false), 7, None),
        (
            start(u64::MAX, false),
            u64::MAX,
            Some(StartPlan::CutAfter { keep: u64::MAX - 1 }),
        ),
        (start(40, true), 7, Some(StartPlan::Snapshot)),
        (start(3, true), 7, Some(StartPlan::Snapshot)),
    ];
    for (start, last, plan) in cases {
        let got = plan_start(&start, last);
        assert_eq!(
            got.as_ref().ok(),
            plan.as_ref(),
            "{start:?} after record {last}: {got:?}"
        );
        if let Err(why) = got {
            assert!(why.contains(&format!("record {}", start.from)), "{why}");
        }
    }
}

/// A master (or a stranger holding the token, or a damaged frame) that starts the stream
/// at record 0 gets the link closed with a clear error; the follower neither panics nor
/// touches its journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_from_record_0_closes_the_link_and_leaves_the_journal_as_it_was() {
    for snapshot in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config(&dir.path().join("follower"));
        let (store, _) = Store::open(cfg.clone(), false).expect("journal");
        for sequence in 1..=3 {
            store.append(&record(sequence));
        }
        store.journal().wait_local(3).await.expect("written");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let master = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let (rd, mut wr) = stream.into_split();
            let mut rd = tokio::io::BufReader::new(rd);
            read_msg::<ToMaster>(&mut rd, "follower")
                .await
                .expect("a hello");
            let start = ToFollower {
                kind: Some(to_follower::Kind::Start(proto::Start {
                    epoch: 3,
                    from: 0,
                    snapshot,
                    ..Default::default()
                })),
            };
            write_msg(&mut wr, &start).await.expect("start");
            // Open until the follower closes it.
            while read_msg::<ToMaster>(&mut rd, "follower").await.is_ok() {}
        });
        let (_newest_tx, newest) = tokio::sync::watch::channel(3);
        let opts = FollowOptions {
            member: "f".into(),
            link: LinkOptions {
                token: Some(TOKEN.into()),
                heartbeat: Duration::from_millis(200),
            },
            store: cfg.clone(),
        };
        let (store, result) = tokio::time::timeout(
            GUARD,
            follow(&opts, store, addr, newest, CancellationToken::new()),
        )
        .await
        .expect("the follower kept following a stream from record 0");
        match &result {
            Err(ReplError::Protocol { detail, .. }) => {
                assert!(detail.contains("record 0"), "snapshot {snapshot}: {detail}")
            }
            other => panic!("snapshot {snapshot}: not refused as a bad stream: {other:?}"),
        }
        tokio::time::timeout(GUARD, master)
            .await
            .expect("the follower kept the link open")
            .expect("the master's task");
        assert_eq!(
            store.journal().next_index(),
            4,
            "snapshot {snapshot}: the journal changed"
        );
        store.close();
        let (again, _) = Store::open(cfg, false).expect("reopen the journal");
        assert_eq!(again.journal().next_index(), 4, "snapshot {snapshot}");
        for sequence in 1..=3 {
            let m = again.read_message(sequence).expect("a record kept");
            assert_eq!(m.sequence, sequence, "snapshot {snapshot}");
        }
        again.close();
    }
}

/// Samples the master's quorum contact (what its check quorum steps down on) for `span`;
/// returns the longest time it showed no contact.
async fn longest_silence(master: &Master, span: Duration) -> Duration {
    let end = Instant::now() + span;
    let mut worst = Duration::ZERO;
    while Instant::now() < end {
        if let Some(heard) = master.quorum_contact() {
            worst = worst.max(heard.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worst
}

/// A follower's install of its master's snapshot (at the start) or of a checkpoint (in the
/// stream) on a slow disk blocks its reading, so heartbeats go unread: it still tells the
/// master it is there every heartbeat interval, so a master that has just been elected
/// does not step down (check quorum) for want of a follower that is only busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_installing_a_snapshot_or_a_checkpoint_still_answers_its_master() {
    const HEARTBEAT: Duration = Duration::from_millis(200);
    const INSTALL: Duration = Duration::from_secs(4);
    // Ten heartbeats: a follower that answers is never silent that long, even on a loaded
    // machine; one that does not is silent for the whole install.
    const SILENCE: Duration = Duration::from_secs(2);
    // The master's oldest record is 100: an empty follower must copy a snapshot.
    let lone = Lone::start_at(100, GUARD, HEARTBEAT).await;
    let epoch_start = lone.store.journal().next_index() - 1;
    let follower_cfg = config(&lone._dir.path().join("follower"));
    SLOW_INSTALLS
        .lock()
        .expect("the slow-disk table")
        .push((follower_cfg.dir.clone(), INSTALL));
    let (follower_store, _) = Store::open(follower_cfg.clone(), false).expect("journal");
    let (_newest_tx, newest) = tokio::sync::watch::channel(3);
    let opts = FollowOptions {
        member: "f".into(),
        link: LinkOptions {
            token: Some(TOKEN.into()),
            heartbeat: HEARTBEAT,
        },
        store: follower_cfg.clone(),
    };
    let stop = CancellationToken::new();
    let following = tokio::spawn({
        let (stop, addr) = (stop.clone(), lone.addr);
        async move { follow(&opts, follower_store, addr, newest, stop).await }
    });

    // The snapshot: the follower is admitted (from 100, with a snapshot), then installs.
    tokio::time::timeout(GUARD, async {
        while lone.master.quorum_contact().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the follower was never admitted");
    let silent = longest_silence(&lone.master, INSTALL).await;
    assert!(
        silent < SILENCE,
        "the master heard nothing from its follower for {silent:?} while it installed a snapshot"
    );
    tokio::time::timeout(GUARD, lone.store.journal().wait_synced(epoch_start))
        .await
        .expect("the follower never caught up after the snapshot")
        .expect("commit");

    // A checkpoint in the stream: sent once the follower has what it covers.
    let index = lone.store.append(&record(1));
    tokio::time::timeout(GUARD, lone.store.journal().wait_synced(index))
        .await
        .expect("the follower never acknowledged")
        .expect("commit");
    let master_store = lone.store.clone();
    tokio::task::spawn_blocking(move || {
        master_store.checkpoint(&store::proto::Checkpoint {
            next_index: index + 1,
            ..Default::default()
        })
    })
    .await
    .expect("the checkpoint task")
    .expect("a checkpoint");
    let silent = longest_silence(&lone.master, INSTALL).await;
    assert!(
        silent < SILENCE,
        "the master heard nothing from its follower for {silent:?} while it installed a checkpoint"
    );
    let index = lone.store.append(&record(2));
    tokio::time::timeout(GUARD, lone.store.journal().wait_synced(index))
        .await
        .expect("the follower stopped acknowledging after the checkpoint")
        .expect("commit");

    stop.cancel();
    let (follower_store, result) = following.await.expect("the follow task");
    assert!(result.is_ok(), "{result:?}");
    follower_store.close();
    SLOW_INSTALLS
        .lock()
        .expect("the slow-disk table")
        .retain(|(dir, _)| *dir != follower_cfg.dir);
    lone.end().await;
}

#[test]
fn tokens_match_only_when_equal_and_configured() {
    assert!(token_matches(Some(TOKEN), TOKEN));
    assert!(!token_matches(Some(TOKEN), "the-group-replication-toke"));
    assert!(!token_matches(Some(TOKEN), ""));
    assert!(!token_matches(None, ""));
    assert!(!token_matches(Some(""), ""));
}

#[test]
fn the_quorum_index_is_the_needed_th_highest_ack() {
    assert_eq!(quorum_index(&mut [5, 9], 1), Some(9));
    assert_eq!(quorum_index(&mut [5, 9, 7], 2), Some(7));
    assert_eq!(quorum_index(&mut [5], 2), None);
    assert_eq!(quorum_index(&mut [], 0), Some(u64::MAX));
}
