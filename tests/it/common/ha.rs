//! A ZooKeeper-elected HA group of three real `meshmq broker` processes (each its own data
//! directory and replication port), plus what the HA tests check it with:
//!
//! - [`Load`]: a producer thread that finds the master through `/status`, sends persistent
//!   1 KiB messages with receipts one at a time, and on any failure looks for the master again
//!   and re-sends the same sequence number; it keeps the [`History`] of what was receipted and
//!   what is in doubt (a send that failed may or may not have been kept).
//! - [`Sampler`]: every member's `/status`, all at once, every 100 ms, to show that two members
//!   never served as master together.
//! - [`drain`] and [`check`]: the history checker — every receipted message delivered, none
//!   invented, duplicates only of sends that were in doubt, and none of a test's *forbidden*
//!   messages (sends that reached only a member whose tail had to be truncated).
//!
//! Everything here is blocking or runs on its own threads, so a test's body can wait, kill and
//! sample while the load keeps going; bounds are [`GUARD`], a failure guard, not a measurement.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meshmq::client::{AckMode, Client, ClientError, ClientOptions, Outgoing, SubscribeOptions};
use meshmq::server::admin::MemberStatus;
use tempfile::TempDir;

use super::history::Ledger;
use super::topology::{self, Connector, Group, Topology};
use crate::powerloss::PowerLoss;

use super::{free_ports, http_get_within, spawn_broker, spawn_broker_as, ChildGuard, GUARD};

/// The queue every HA test loads and drains.
pub const QUEUE: &str = "queue://ha.orders";

/// How long a `/status` or `/readyz` probe may take: a stopped member accepts the connection
/// in the kernel and never answers.
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);

/// The pause of the load between receipted sends (at most ~500 messages a second).
const PACE: Duration = Duration::from_millis(2);

/// The replication token of every group the harness writes (validation requires one in a
/// replicated group of more than one member).
pub const REPLICATION_TOKEN: &str = "ha-tests-replication-token";

/// The group's knobs a test chooses.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    pub session_timeout: Duration,
    pub quorum_timeout: Duration,
    /// Per member; a higher weight wins an election between equal journal positions.
    pub weights: [u32; 3],
    /// The group's `sync` mode (default `quorum_mem`).
    pub sync: &'static str,
    /// More groups written after group `g`; the test starts their members itself. Relative
    /// paths in them are relative to the topology's directory.
    pub extra_groups: Vec<Group>,
    /// Connectors between `g` and those groups.
    pub extra_connectors: Vec<Connector>,
    /// `[zookeeper] digest` (`USER:PASSWORD`), if any.
    pub zk_digest: Option<String>,
    /// Per member: the loopback address it binds (default `127.0.0.1`).
    pub ips: Option<[std::net::Ipv4Addr; 3]>,
    /// Per member: the user id it runs as (default: the test's own).
    pub uids: Option<[u32; 3]>,
}

impl Default for GroupSpec {
    fn default() -> Self {
        GroupSpec {
            session_timeout: Duration::from_secs(2),
            quorum_timeout: Duration::from_secs(3),
            weights: [1, 1, 1],
            sync: "quorum_mem",
            extra_groups: Vec::new(),
            extra_connectors: Vec::new(),
            zk_digest: None,
            ips: None,
            uids: None,
        }
    }
}

/// One member of the group: a `meshmq broker` process that may be running, stopped or dead.
pub struct Member {
    pub name: String,
    pub listen: SocketAddr,
    /// Its STOMP listener (open only while it is master, like `listen`).
    pub stomp: SocketAddr,
    pub admin: SocketAddr,
    pub replication: SocketAddr,
    log: PathBuf,
    proc: Option<ChildGuard>,
    stopped: bool,
    uid: Option<u32>,
}

impl Member {
    /// `tcp://127.0.0.1:PORT` of its client listener.
    pub fn url(&self) -> String {
        format!("tcp://{}", self.listen)
    }

    pub fn is_running(&self) -> bool {
        self.proc.is_some()
    }

    /// Its `/status`, or `None` when it does not answer quickly.
    pub fn status(&self) -> Option<MemberStatus> {
        status_of(self.admin)
    }

    /// Its role, or `None` when it does not answer quickly.
    pub fn role(&self) -> Option<String> {
        self.status().map(|s| s.role)
    }

    /// `/readyz` answers 200: it is the master and serves clients.
    pub fn ready(&self) -> bool {
        matches!(
            http_get_within(self.admin, "/readyz", PROBE_TIMEOUT),
            Ok((200, _))
        )
    }

    /// True when the test started it and it has exited since (a zombie not yet reaped).
    fn exited(&self) -> bool {
        self.proc.as_ref().is_some_and(|p| {
            std::fs::read_to_string(format!("/proc/{}/stat", p.pid()))
                .ok()
                .and_then(|stat| {
                    stat.rsplit_once(") ")
                        .map(|(_, rest)| rest.starts_with('Z'))
                })
                .unwrap_or(true)
        })
    }

    /// Its stdout and stderr over every run.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn note_in_log(&self, what: &str) {
        if let Ok(mut f) = File::options().create(true).append(true).open(&self.log) {
            let _ = writeln!(f, "===== test: {what} =====");
        }
    }
}

/// True when every thread of `pid` is in the stopped state (`T` in `/proc/PID/task/*/stat`).
fn all_threads_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            // The state follows the parenthesised command name, which may contain spaces.
            .and_then(|stat| {
                stat.rsplit_once(") ")
                    .map(|(_, rest)| rest.starts_with('T'))
            })
            .unwrap_or(false)
    })
}

fn status_of(admin: SocketAddr) -> Option<MemberStatus> {
    match http_get_within(admin, "/status", PROBE_TIMEOUT) {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// Three members `g-1`, `g-2`, `g-3` of group `g` in mesh `ha`, with `election = "zookeeper"`,
/// `replicas = 3` and the default `sync` (`quorum_mem`).
pub struct HaGroup {
    pub members: Vec<Member>,
    pub spec: GroupSpec,
    topology: PathBuf,
    _dir: TempDir,
}

impl HaGroup {
    /// Writes the topology (members reach ZooKeeper at `zk_connect`), starts all three members
    /// and waits until one serves as master and the other two follow it.
    pub fn start(zk_connect: &str, spec: GroupSpec) -> HaGroup {
        let mut group = HaGroup::configure(zk_connect, spec);
        group.start_all();
        group
    }

    /// [`HaGroup::start`] with each member's journal on its own power-loss filesystem
    /// ([`PowerLoss`], mounted before the members start). Drop the group before the disks.
    pub fn start_on_power_loss_disks(
        zk_connect: &str,
        spec: GroupSpec,
    ) -> (HaGroup, Vec<PowerLoss>) {
        let mut group = HaGroup::configure(zk_connect, spec);
        let disks: Vec<PowerLoss> = (0..3)
            .map(|i| PowerLoss::mount(&group.journal_dir(i)))
            .collect();
        group.start_all();
        (group, disks)
    }

    /// Starts all three members and waits until one serves as master and the other two
    /// follow it.
    fn start_all(&mut self) {
        for i in 0..3 {
            self.start_member(i);
        }
        let master = self.wait_master("a first master serves");
        for i in (0..3).filter(|&i| i != master) {
            self.wait_role(i, "slave");
        }
    }

    /// Writes the topology without starting anyone.
    pub fn configure(zk_connect: &str, spec: GroupSpec) -> HaGroup {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = free_ports(12);
        let ips = spec.ips.unwrap_or([std::net::Ipv4Addr::LOCALHOST; 3]);
        let members: Vec<Member> = (0..3)
            .map(|i| {
                let addr = |port: u16| SocketAddr::from((ips[i], port));
                Member {
                    name: format!("g-{}", i + 1),
                    admin: addr(p[4 * i]),
                    listen: addr(p[4 * i + 1]),
                    replication: addr(p[4 * i + 2]),
                    stomp: addr(p[4 * i + 3]),
                    log: dir.path().join(format!("g-{}.log", i + 1)),
                    proc: None,
                    stopped: false,
                    uid: spec.uids.map(|u| u[i]),
                }
            })
            .collect();
        if let Some(uids) = spec.uids {
            // Each member's own data directory, writable by its user; the topology readable.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod the group's directory");
            for (m, uid) in members.iter().zip(uids) {
                let data = dir.path().join(&m.name);
                std::fs::create_dir_all(&data).expect("member data directory");
                std::os::unix::fs::chown(&data, Some(uid), Some(uid))
                    .expect("chown the member's data directory");
            }
        }
        let mut zookeeper = vec![
            format!("connect = \"{zk_connect}\""),
            format!(
                "session_timeout = \"{}ms\"",
                spec.session_timeout.as_millis()
            ),
            "root = \"/meshmq\"".to_string(),
        ];
        if let Some(d) = &spec.zk_digest {
            zookeeper.push(format!("digest = \"{d}\""));
        }
        let group = Group::new("g")
            .lines(&[
                "election = \"zookeeper\"",
                "replicas = 3",
                &format!("sync = \"{}\"", spec.sync),
                &format!("quorum_timeout = \"{}ms\"", spec.quorum_timeout.as_millis()),
                &format!("replication_token = \"{REPLICATION_TOKEN}\""),
            ])
            .members(members.iter().zip(spec.weights).map(|(m, weight)| {
                topology::Member::new(&m.name, m.admin)
                    .data_dir(dir.path().join(&m.name))
                    .lines(&[
                        &format!("weight = {weight}"),
                        &format!("replication = \"{}\"", m.replication),
                    ])
                    .tcp(m.listen)
                    .listener(&format!("stomp://{}", m.stomp), &[])
            }));
        let zookeeper: Vec<&str> = zookeeper.iter().map(String::as_str).collect();
        let text = Topology::new("ha")
            .table("zookeeper", &zookeeper)
            .group(group)
            .groups(spec.extra_groups.iter().cloned())
            .connectors(spec.extra_connectors.iter().cloned())
            .text();
        let topology = dir.path().join("topology.toml");
        std::fs::write(&topology, text).expect("write topology");
        HaGroup {
            members,
            spec,
            topology,
            _dir: dir,
        }
    }

    /// Member `i`'s journal directory (`DIR/g-N/journal`).
    pub fn journal_dir(&self, i: usize) -> PathBuf {
        self.topology
            .parent()
            .expect("the topology's directory")
            .join(&self.members[i].name)
            .join("journal")
    }

    /// The topology file every member runs from.
    pub fn topology(&self) -> &std::path::Path {
        &self.topology
    }

    /// Starts member `i` (again, on its own data directory); does not wait.
    pub fn start_member(&mut self, i: usize) {
        let m = &mut self.members[i];
        assert!(m.proc.is_none(), "{} is running", m.name);
        m.note_in_log("starting");
        m.proc = Some(spawn_broker_as(&self.topology, &m.name, &m.log, &[], m.uid));
        m.stopped = false;
    }

    /// Starts member `i` from another topology file (a variant of [`HaGroup::topology`]); does
    /// not wait.
    pub fn start_member_from(&mut self, i: usize, topology: &std::path::Path) {
        let m = &mut self.members[i];
        assert!(m.proc.is_none(), "{} is running", m.name);
        m.note_in_log(&format!("starting from {}", topology.display()));
        m.proc = Some(spawn_broker(topology, &m.name, &m.log, &[]));
        m.stopped = false;
    }

    /// `kill -9` member `i` (continuing it first if it was stopped) and reaps it.
    pub fn kill9(&mut self, i: usize) {
        let m = &mut self.members[i];
        let mut p = m
            .proc
            .take()
            .unwrap_or_else(|| panic!("{} is not running", m.name));
        p.signal(libc::SIGKILL);
        if p.wait_timeout(GUARD).is_none() {
            panic!("{} did not die of SIGKILL", m.name);
        }
        m.stopped = false;
        m.note_in_log("killed with SIGKILL");
    }

    /// `kill -STOP` member `i` and waits until every thread of it is stopped: it keeps its
    /// sockets but runs nothing.
    pub fn sigstop(&mut self, i: usize) {
        let m = &mut self.members[i];
        let p = m
            .proc
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", m.name));
        p.signal(libc::SIGSTOP);
        let pid = p.pid();
        m.stopped = true;
        self.wait_for(
            &format!("every thread of {} is stopped", self.members[i].name),
            || all_threads_stopped(pid),
        );
    }

    /// `kill -CONT` member `i`.
    pub fn sigcont(&mut self, i: usize) {
        let m = &mut self.members[i];
        m.proc
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", m.name))
            .signal(libc::SIGCONT);
        m.stopped = false;
        m.note_in_log("continued with SIGCONT");
    }

    /// The member serving as master right now (`/readyz` 200), if exactly one does.
    pub fn master(&self) -> Option<usize> {
        let ready: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].is_running() && !self.members[i].stopped)
            .filter(|&i| self.members[i].ready())
            .collect();
        match ready[..] {
            [one] => Some(one),
            _ => None,
        }
    }

    /// Waits until exactly one member serves as master; returns it.
    pub fn wait_master(&self, what: &str) -> usize {
        let mut found = None;
        self.wait_for(what, || {
            found = self.master();
            found.is_some()
        });
        found.expect("a master")
    }

    /// Waits until a member other than `old` serves as master; returns it.
    pub fn wait_new_master(&self, old: usize, what: &str) -> usize {
        let mut found = None;
        self.wait_for(what, || {
            found = self.master().filter(|&m| m != old);
            found.is_some()
        });
        found.expect("a new master")
    }

    /// How many records member `slave` lacks, as the master `master` reports in `/status`
    /// (`None` when the master does not list it as a connected slave).
    pub fn slave_lag(&self, master: usize, slave: usize) -> Option<u64> {
        let name = &self.members[slave].name;
        self.members[master]
            .status()?
            .slaves
            .into_iter()
            .find(|f| &f.member == name)
            .map(|f| f.lag)
    }

    /// Waits until member `i` reports `role`.
    pub fn wait_role(&self, i: usize, role: &str) {
        let m = &self.members[i];
        self.wait_for(&format!("{} reports role {role:?}", m.name), || {
            m.role().as_deref() == Some(role)
        });
    }

    /// Polls `cond` every 20 ms; after [`GUARD`] fails the test with every member's log.
    pub fn wait_for(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let held = || {
            if cond() {
                return true;
            }
            if let Some(m) = self.members.iter().find(|m| m.exited()) {
                self.fail(&format!(
                    "{} exited on its own while waiting until {what}",
                    m.name
                ));
            }
            false
        };
        super::wait::poll().until_or(what, held, || {
            self.fail(&format!("gave up after {GUARD:?} waiting until {what}"))
        });
    }

    /// Fails the test with `msg`, every member's role and the tail of every member's log.
    pub fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n{}", self.logs())
    }

    /// The lines of member `i`'s log that contain every one of `words` (for reports).
    pub fn log_lines(&self, i: usize, words: &[&str]) -> Vec<String> {
        self.members[i]
            .log()
            .lines()
            .filter(|l| words.iter().all(|w| l.contains(w)))
            .map(str::to_string)
            .collect()
    }

    /// Every member's role and the tail of its log, for failure messages.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let log = m.log();
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(80)..];
                let role = if m.stopped {
                    "stopped".to_string()
                } else {
                    m.status()
                        .map(|s| format!("{} epoch {}", s.role, s.epoch))
                        .unwrap_or_else(|| "no answer".into())
                };
                format!("--- {} ({role}), log tail ---\n{}", m.name, tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Where the load and the sampler find the members.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.members
            .iter()
            .map(|m| Endpoint {
                admin: m.admin,
                url: m.url(),
            })
            .collect()
    }
}

/// A member as a client sees it: its admin port (to ask who is master) and its client URL.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub admin: SocketAddr,
    pub url: String,
}

/// The member that says it serves as master (the highest epoch if, wrongly, several do).
pub fn find_master(endpoints: &[Endpoint]) -> Option<usize> {
    endpoints
        .iter()
        .enumerate()
        .filter_map(|(i, e)| status_of(e.admin).map(|s| (i, s)))
        .filter(|(_, s)| s.role == "master" && s.ready)
        .max_by_key(|(_, s)| s.epoch)
        .map(|(i, _)| i)
}

/// Connects to whichever member serves as master, retrying until it can or `stop` is set.
/// (The client's own failover transport is tested elsewhere; this follows the master by hand.)
pub async fn connect_master(endpoints: &[Endpoint], stop: &AtomicBool) -> Option<Client> {
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    };
    loop {
        if let Some(i) = find_master(endpoints) {
            if let Ok(c) = Client::connect(&endpoints[i].url, options.clone()).await {
                return Some(c);
            }
        }
        if stop.load(Ordering::Acquire) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One attempt to connect to the member that says it serves as master.
pub async fn try_connect_master(endpoints: &[Endpoint]) -> Option<Client> {
    let i = find_master(endpoints)?;
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    };
    Client::connect(&endpoints[i].url, options).await.ok()
}

/// A persistent 1 KiB message whose body starts with its sequence number (12 digits).
pub fn message(seq: u64) -> Outgoing {
    let mut body = format!("{seq:012}").into_bytes();
    body.resize(1024, b'.');
    Outgoing::new(body).persistent(true)
}

/// What producers know about what they sent.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// Sequence numbers the group receipted.
    pub receipted: BTreeSet<u64>,
    /// Sequence numbers whose send failed at least once without a receipt: the failed attempt
    /// may or may not have been kept, so they may arrive (again) or not.
    pub in_doubt: BTreeSet<u64>,
    /// The first distinct errors seen, for the report.
    pub errors: Vec<String>,
    pub failed_sends: u64,
}

impl History {
    /// Records one attempt to send `seq`.
    pub fn record(&mut self, seq: u64, outcome: &Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.receipted.insert(seq);
            }
            Err(e) => {
                self.in_doubt.insert(seq);
                self.failed_sends += 1;
                if self.errors.len() < 20 && !self.errors.contains(e) {
                    self.errors.push(e.clone());
                }
            }
        }
    }

    /// A sequence number after every one this history knows.
    pub fn next_seq(&self) -> u64 {
        let last = |s: &BTreeSet<u64>| s.last().map_or(0, |l| l + 1);
        last(&self.receipted).max(last(&self.in_doubt))
    }

    pub fn merge(&mut self, other: History) {
        self.receipted.extend(other.receipted);
        self.in_doubt.extend(other.in_doubt);
        self.failed_sends += other.failed_sends;
        for e in other.errors {
            if self.errors.len() < 20 && !self.errors.contains(&e) {
                self.errors.push(e);
            }
        }
    }
}

/// Sends `seq` with a receipt, giving up (as a failure) after `limit`.
pub async fn send_receipted(client: &Client, seq: u64, limit: Duration) -> Result<(), String> {
    match tokio::time::timeout(limit, client.send_with_receipt(QUEUE, &message(seq))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no receipt and no error within {limit:?}")),
    }
}

/// A producer on its own thread (and its own tokio runtime) following the master.
pub struct Load {
    stop: Arc<AtomicBool>,
    receipted: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<JoinHandle<History>>,
}

impl Load {
    /// Starts sending sequence numbers from `first_seq`; a send without an answer within
    /// `send_limit` counts as failed (and the producer looks for the master again).
    pub fn start(endpoints: Vec<Endpoint>, first_seq: u64, send_limit: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let receipted = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, receipted, failed) = (stop.clone(), receipted.clone(), failed.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("load runtime");
                rt.block_on(produce(
                    endpoints, first_seq, send_limit, stop, receipted, failed,
                ))
            })
        };
        Load {
            stop,
            receipted,
            failed,
            thread: Some(thread),
        }
    }

    /// Messages receipted so far.
    pub fn receipted(&self) -> u64 {
        self.receipted.load(Ordering::Acquire)
    }

    /// Sends that failed so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Acquire)
    }

    /// Waits until `n` more messages are receipted than now.
    pub fn wait_more(&self, group: &HaGroup, n: u64, what: &str) {
        let target = self.receipted() + n;
        group.wait_for(&format!("{n} more receipts ({what})"), || {
            self.receipted() >= target
        });
    }

    /// Stops the producer and returns its history.
    pub fn finish(mut self) -> History {
        self.stop.store(true, Ordering::Release);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("the load thread panicked")
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn produce(
    endpoints: Vec<Endpoint>,
    first_seq: u64,
    send_limit: Duration,
    stop: Arc<AtomicBool>,
    receipted: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> History {
    let mut history = History::default();
    let mut seq = first_seq;
    let mut client: Option<Client> = None;
    while !stop.load(Ordering::Acquire) {
        let c = match client.take() {
            Some(c) => c,
            None => match connect_master(&endpoints, &stop).await {
                Some(c) => c,
                None => break,
            },
        };
        let outcome = send_receipted(&c, seq, send_limit).await;
        history.record(seq, &outcome);
        if outcome.is_ok() {
            receipted.fetch_add(1, Ordering::AcqRel);
            seq += 1;
            client = Some(c);
            // A steady load, not a flood: the journals and the final drain stay small.
            tokio::time::sleep(PACE).await;
        } else {
            // The same sequence number goes again, to whoever is master next.
            failed.fetch_add(1, Ordering::AcqRel);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    history
}

/// Takes every message off [`QUEUE`] at `url` (client acks), counting each sequence number's
/// deliveries; ends after 5 s without a delivery.
pub async fn drain(url: &str) -> Result<BTreeMap<u64, u32>, ClientError> {
    let client = Client::connect(url, ClientOptions::default()).await?;
    let mut sub = client
        .subscribe(
            QUEUE,
            SubscribeOptions {
                ack: AckMode::Client,
                ..SubscribeOptions::default()
            },
        )
        .await?;
    let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
    while let Some(d) = sub.next_timeout(Duration::from_secs(5)).await {
        let seq = std::str::from_utf8(d.body.get(..12).unwrap_or_default())
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        *seen.entry(seq).or_default() += 1;
        sub.ack(&d).await?;
    }
    client.close().await?;
    Ok(seen)
}

/// What the history checker found, in its words (see `history`): the drain reads no
/// redelivery flags, so every duplicate of a send not in doubt counts as unflagged.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Receipted, never delivered.
    pub lost: Vec<u64>,
    /// Delivered, never sent (or not a message of ours: `u64::MAX`).
    pub invented: Vec<u64>,
    /// Delivered more than once though its only send was receipted.
    pub doubled: Vec<u64>,
    /// Delivered though the test knows it can only have survived on a truncated tail.
    pub resurrected: Vec<u64>,
}

impl Verdict {
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.invented.is_empty()
            && self.doubled.is_empty()
            && self.resurrected.is_empty()
    }
}

/// The history check: compares what was delivered (sequence number → copies) with what
/// producers know; a `forbidden` message delivered is resurrected, not invented.
pub fn check(
    history: &History,
    delivered: &BTreeMap<u64, u32>,
    forbidden: &BTreeSet<u64>,
) -> Verdict {
    let mut ledger = Ledger::default();
    for seq in &history.receipted {
        ledger.accepted(*seq);
    }
    for seq in &history.in_doubt {
        ledger.in_doubt(*seq);
    }
    for (seq, copies) in delivered {
        for _ in 0..*copies {
            ledger.delivered(*seq, false);
        }
    }
    let judged = ledger.judge();
    Verdict {
        lost: judged.lost,
        invented: judged
            .invented
            .into_iter()
            .filter(|s| !forbidden.contains(s))
            .collect(),
        doubled: judged.unflagged_duplicates,
        resurrected: delivered
            .keys()
            .filter(|s| forbidden.contains(s))
            .copied()
            .collect(),
    }
}

/// Drains the queue from the serving master and fails the test unless the history checks out.
pub fn assert_history(
    rt: &tokio::runtime::Runtime,
    group: &HaGroup,
    history: &History,
    forbidden: &BTreeSet<u64>,
) -> BTreeMap<u64, u32> {
    let master = group.wait_master("a master serves for the final drain");
    let delivered = rt
        .block_on(drain(&group.members[master].url()))
        .unwrap_or_else(|e| group.fail(&format!("draining {}: {e}", group.members[master].name)));
    let v = check(history, &delivered, forbidden);
    eprintln!(
        "history: {} receipted, {} in doubt, {} delivered (from {}); lost {}, invented {}, \
         doubled {}, resurrected {}; errors seen: {:?}",
        history.receipted.len(),
        history.in_doubt.len(),
        delivered.values().map(|n| u64::from(*n)).sum::<u64>(),
        group.members[master].name,
        v.lost.len(),
        v.invented.len(),
        v.doubled.len(),
        v.resurrected.len(),
        history.errors
    );
    if !v.is_clean() {
        group.fail(&format!("the history does not check out: {v:?}"));
    }
    delivered
}

/// A multi-threaded runtime for a test's async steps (clients live on it while the test's own
/// thread blocks in waits).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// One round of `/status` from every member, taken at the same time.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Since the sampler started.
    pub at: Duration,
    /// Per member: `(role, epoch)`, or `None` when it did not answer.
    pub members: Vec<Option<(String, u64)>>,
}

impl Sample {
    /// `(member, epoch)` of every member that said it was master.
    pub fn masters(&self) -> Vec<(usize, u64)> {
        self.members
            .iter()
            .enumerate()
            .filter_map(|(i, m)| match m {
                Some((role, epoch)) if role == "master" => Some((i, *epoch)),
                _ => None,
            })
            .collect()
    }
}

/// Samples every member's `/status` every 100 ms on its own thread.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sample>>>,
}

impl Sampler {
    pub fn start(admins: Vec<SocketAddr>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut samples = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    let at = started.elapsed();
                    let members = std::thread::scope(|s| {
                        let probes: Vec<_> = admins
                            .iter()
                            .map(|a| s.spawn(move || status_of(*a).map(|st| (st.role, st.epoch))))
                            .collect();
                        probes
                            .into_iter()
                            .map(|p| p.join().expect("probe"))
                            .collect()
                    });
                    samples.push(Sample { at, members });
                    std::thread::sleep(Duration::from_millis(100));
                }
                samples
            })
        };
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) -> Samples {
        self.stop.store(true, Ordering::Release);
        Samples(
            self.thread
                .take()
                .expect("running")
                .join()
                .expect("the sampler panicked"),
        )
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every sample a [`Sampler`] took.
#[derive(Debug)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Samples in which more than one member said it was master.
    pub fn two_masters(&self) -> Vec<&Sample> {
        self.0.iter().filter(|s| s.masters().len() > 1).collect()
    }

    /// Samples in which two members said they were master of the same epoch.
    pub fn two_masters_in_one_epoch(&self) -> Vec<&Sample> {
        self.0
            .iter()
            .filter(|s| {
                let m = s.masters();
                m.iter()
                    .enumerate()
                    .any(|(k, (_, e))| m[k + 1..].iter().any(|(_, e2)| e2 == e))
            })
            .collect()
    }

    /// The masters in the order they were seen: `(member, epoch)`, each change once.
    pub fn master_changes(&self) -> Vec<(usize, u64)> {
        let mut changes: Vec<(usize, u64)> = Vec::new();
        for s in &self.0 {
            for m in s.masters() {
                if !changes.contains(&m) {
                    changes.push(m);
                }
            }
        }
        changes
    }
}
