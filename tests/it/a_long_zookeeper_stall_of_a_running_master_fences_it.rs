//! Property: an 11 s stall of a *running* master's ZooKeeper link (S24's long stall; its
//! packets to ZooKeeper dropped with iptables while the process, its clients and its slaves
//! carry on, session timeout 4 s) fences it without two masters committing at once: another
//! member takes over in a newer epoch; the stalled master receipts nothing after the first
//! moment another member is seen as master (a producer pinned to it, sending receipted
//! messages throughout, checks); no two members are ever master of one epoch in 100 ms
//! sampling; after the stall ends the group has exactly one master and the old one follows it;
//! and every receipted message — the group's steady load and the pinned producer's — is
//! delivered, none invented. How long two members both *say* master (the old one fenced, in
//! the older epoch) is printed.
//!
//! Each member and ZooKeeper sit on their own address of this file's range 127.0.60.0/24, each
//! member as its own user so a rule can pick its packets. Skipped, saying why, only when not run
//! as root (iptables needs root; CI runs as root).

use crate::common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ha::{
    assert_history, runtime, send_receipted, GroupSpec, HaGroup, History, Load, Sampler,
};
use common::iptables::{unusable, Partition};
use common::zk::ZooKeeper;
use meshmq::client::{Client, ClientOptions};

const RANGE: [u8; 3] = [127, 0, 60];
const STALL: Duration = Duration::from_secs(11);
const SESSION: Duration = Duration::from_secs(4);
const SEND_LIMIT: Duration = Duration::from_secs(10);
/// Sequence numbers of the producer pinned to the master that gets stalled.
const PINNED: u64 = 1_000_000_000;

/// What the pinned producer saw: its history and when each receipt came.
#[derive(Default)]
struct Pinned {
    history: History,
    receipts: Vec<(u64, Instant)>,
}

/// Sends receipted messages to `url` only (reconnecting to it after a failure) until `stop`.
fn pin(
    url: String,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Pinned>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let options = ClientOptions {
                connect_timeout: Duration::from_secs(1),
                ..ClientOptions::default()
            };
            let mut seq = PINNED;
            let mut client: Option<Client> = None;
            while !stop.load(Ordering::Acquire) {
                let c = match client.take() {
                    Some(c) => c,
                    None => match Client::connect(&url, options.clone()).await {
                        Ok(c) => c,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let outcome = send_receipted(&c, seq, Duration::from_secs(2)).await;
                let receipted = outcome.is_ok();
                {
                    let mut s = seen.lock().unwrap();
                    s.history.record(seq, &outcome);
                    if receipted {
                        s.receipts.push((seq, Instant::now()));
                    }
                }
                if receipted {
                    client = Some(c);
                } else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                seq += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    })
}

#[test]
fn an_eleven_second_zookeeper_stall_fences_the_running_master() {
    if let Some(why) = unusable() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut partition = Partition::new(RANGE, "long-zookeeper-stall");
    let rt = runtime();
    let zk = ZooKeeper::standalone_on(partition.ip(10));
    let uids = [1, 2, 3].map(|i| 60_000 + i);
    let spec = GroupSpec {
        session_timeout: SESSION,
        ips: Some([1, 2, 3].map(|i| partition.ip(i))),
        uids: Some(uids),
        ..GroupSpec::default()
    };
    let group = HaGroup::start(&zk.connect_string(), spec);
    let sampled_from = Instant::now();
    let sampler = Sampler::start(group.members.iter().map(|m| m.admin).collect());
    let load = Load::start(group.endpoints(), 0, SEND_LIMIT);
    load.wait_more(&group, 100, "before the stall");

    let old = group.wait_master("a master serves before the stall");
    let old_epoch = group.members[old].status().expect("/status").epoch;
    let (stop, pinned) = (Arc::new(AtomicBool::new(false)), Arc::default());
    let pinner = pin(group.members[old].url(), stop.clone(), Arc::clone(&pinned));
    group.wait_for("the pinned producer has 20 receipts", || {
        pinned.lock().unwrap().receipts.len() >= 20
    });

    let zk_addr = zk.client_addr(0);
    let (ip, port) = (zk_addr.ip().to_string(), zk_addr.port().to_string());
    let uid = uids[old].to_string();
    partition.drop_packets(&[
        "-m",
        "owner",
        "--uid-owner",
        &uid,
        "-d",
        &ip,
        "-p",
        "tcp",
        "--dport",
        &port,
    ]);
    let stalled = Instant::now();
    std::thread::sleep(STALL);
    partition.heal();
    let healed = Instant::now();

    group.wait_for("exactly one master, the old one following it", || {
        let roles: Vec<Option<String>> = group.members.iter().map(|m| m.role()).collect();
        roles
            .iter()
            .filter(|r| r.as_deref() == Some("master"))
            .count()
            == 1
            && roles[old].as_deref() == Some("slave")
    });
    let settled = healed.elapsed();
    load.wait_more(&group, 100, "after the stall");
    stop.store(true, Ordering::Release);
    pinner.join().expect("the pinned producer");
    let mut history = load.finish();
    let samples = sampler.finish();
    let pinned = std::mem::take(&mut *pinned.lock().unwrap());
    history.merge(pinned.history.clone());

    // When another member was first seen master, in a newer epoch.
    let taken_over = samples.0.iter().find_map(|s| {
        s.masters()
            .iter()
            .any(|&(i, e)| i != old && e > old_epoch)
            .then(|| sampled_from + s.at)
    });
    let Some(taken_over) = taken_over else {
        group.fail(&format!(
            "no other member took over from the stalled master: {:?}",
            samples.master_changes()
        ))
    };
    let late: Vec<_> = pinned
        .receipts
        .iter()
        .filter(|(_, at)| *at > taken_over)
        .map(|(seq, at)| (seq, at.duration_since(stalled)))
        .collect();
    let last = pinned
        .receipts
        .iter()
        .filter(|(_, at)| *at < healed)
        .map(|(_, at)| at.saturating_duration_since(stalled))
        .max();
    let both: Vec<Duration> = samples
        .two_masters()
        .iter()
        .map(|s| (sampled_from + s.at).saturating_duration_since(stalled))
        .collect();
    println!(
        "stall {STALL:?}: the pinned producer's last receipt {last:?} into it, another master \
         {:?} into it; two members said master in {} samples ({:?} .. {:?} into the stall); \
         one master {settled:?} after the stall ended",
        taken_over.saturating_duration_since(stalled),
        both.len(),
        both.first(),
        both.last()
    );
    assert!(
        late.is_empty(),
        "the stalled master receipted after another member took over (seq, time into the \
         stall): {late:?}"
    );
    let same_epoch = samples.two_masters_in_one_epoch();
    assert!(
        same_epoch.is_empty(),
        "two masters of one epoch: {:?}",
        &same_epoch[..same_epoch.len().min(5)]
    );
    assert_history(&rt, &group, &history, &BTreeSet::new());
}
