//! The integration-test harness: real `meshmq` processes on loopback ports the test picks, a
//! topology written into a temporary directory, a tiny HTTP GET for the admin port, a raw
//! wire-protocol connection for tests that misbehave on purpose, and for fault tests a broker
//! restarted on its own data directory, a history checker and a journal-frame reader.
//!
//! Every topology a test writes goes through [`topology::Topology`] (groups, members,
//! listeners, connectors, top-level tables, security): the builders below render through it,
//! and a test that needs a file of its own shape (for `meshmq up`, `apply`, `check`) builds one
//! with it, or starts from [`Config::topology_of`]. Every member process is started by
//! [`spawn_broker_with`] (or its shorthands) and held by a [`ChildGuard`], which kills
//! ([`ChildGuard::kill9`]), stops ([`ChildGuard::stop`]) and reaps it (on drop too); a member is
//! ready when [`is_ready`] and its `/status` is [`try_status`].
//!
//! A lone broker is [`Broker::start`] (group `hub`, member `hub-1`). A mesh is [`Mesh::start`]:
//! one topology, one `meshmq broker --member X` process per group, each group on its own
//! loopback IP; a group may sit behind a [`proxy::Proxy`] that cuts, silences or blackholes
//! its links (see [`MeshConfig`] for how the proxy gets between the groups).
//! [`history::History`] checks what was sent against what was delivered. A helper script
//! (python driving stomp.py, paho-mqtt or a headless browser) runs as a [`script::Script`]: in
//! its own process group, ended with everything it started.
//!
//! Everything here is blocking (std sockets, std processes) so it can be called from plain
//! tests and from multi-threaded tokio tests alike; waits are bounded by [`GUARD`], which is a
//! failure guard, never a measurement.

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod ha;
pub mod history;
pub mod iptables;
pub mod mesh;
pub mod pair;
pub mod prometheus;
pub mod proxy;
pub mod repair;
pub mod script;
pub mod topology;
pub mod wait;
pub mod ws_mesh;
pub mod zk;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use meshmq::broker::DestinationStats;
use meshmq::client::{AckMode, Client, ClientOptions, SubscribeOptions};
use meshmq::network::ConnectorStatus;
use meshmq::server::admin::MemberStatus;
use meshmq::wire::{self, proto, Body, Decoded, Frame};
use proxy::{Proxy, ProxyMode};
use tempfile::TempDir;
pub use topology::Topology;

/// How long any wait may take before the test fails. Generous: tests run two at a time on a
/// loaded two-core machine.
pub const GUARD: Duration = Duration::from_secs(60);

/// The mesh secret of every test topology: its bridges prove with it that they belong to the
/// mesh (a stranger's bridge, which lacks it, is refused).
pub const MESH_SECRET: &str = "test-mesh-secret-4b1d9c0e7a";

/// The file holding [`MESH_SECRET`], shared by every test (written, atomically, on first use
/// in each test process: the content is always the same).
pub fn mesh_secret_file() -> &'static Path {
    static FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join("meshmq-test-mesh.secret");
        let fresh = std::env::temp_dir().join(format!("meshmq-test-mesh.{}", std::process::id()));
        std::fs::write(&fresh, MESH_SECRET).expect("write the test mesh secret");
        std::fs::rename(&fresh, &path).expect("put the test mesh secret in place");
        path
    })
}

/// The `[mesh]` table of a test topology named `name`, with [`mesh_secret_file`].
pub fn mesh_table(name: &str) -> String {
    format!(
        "[mesh]\nname = \"{name}\"\nsecret_file = \"{}\"\n",
        mesh_secret_file().display()
    )
}

/// Runs `promtool check metrics` (Debian's `prometheus` package) on an exposition; panics
/// with how to install it when it is missing — a test that needs it fails, it never skips.
pub fn promtool_check(text: &str) -> std::process::Output {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot run promtool ({e}): it comes from Debian's `prometheus` package; \
             `make test-deps` installs it (apt-get install --no-install-recommends prometheus)"
        ),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    child.wait_with_output().expect("promtool output")
}

/// The `meshmq` binary under test.
pub fn meshmq() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshmq"))
}

/// Every port this test process has handed out. Released ports go back to the kernel's pool, and
/// the kernel may give the same one to the next bind; two members of one mesh must never share a
/// port, so a port is handed out once per process.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port from `bind` (a fresh socket on port 0) that this process has not handed out before.
fn unique_port(mut bind: impl FnMut() -> io::Result<u16>) -> u16 {
    for _ in 0..1000 {
        let port = bind().unwrap_or_else(|e| panic!("bind port 0: {e}"));
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("no port this process has not handed out already after 1000 binds");
}

/// `n` distinct loopback ports that were free a moment ago (bound to port 0, read, released),
/// none handed out before in this process.
pub fn free_ports(n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| {
            unique_port(|| {
                TcpListener::bind("127.0.0.1:0")?
                    .local_addr()
                    .map(|a| a.port())
            })
        })
        .collect()
}

/// A member's two ports: its native listener and its admin HTTP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub listen: u16,
    pub admin: u16,
}

impl Ports {
    pub fn pick() -> Ports {
        let p = free_ports(2);
        Ports {
            listen: p[0],
            admin: p[1],
        }
    }

    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.listen))
    }

    pub fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin))
    }

    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.listen)
    }
}

/// What a test adds to the one-member topology (`mesh` test, group `hub`, member `hub-1`).
#[derive(Debug, Clone, Default)]
pub struct Config {
    broker: Vec<String>,
    store: Vec<String>,
    group: Vec<String>,
    data_dir: Option<PathBuf>,
    listener: Vec<String>,
    sections: Vec<String>,
}

impl Config {
    pub fn new() -> Config {
        Config::default()
    }

    /// A `key = value` line of the `[broker]` section.
    pub fn broker(mut self, line: &str) -> Config {
        self.broker.push(line.to_string());
        self
    }

    /// A `key = value` line of the `[store]` section (the journal).
    pub fn store(mut self, line: &str) -> Config {
        self.store.push(line.to_string());
        self
    }

    /// A `key = value` line of the group (e.g. `sync = "local_mem"`).
    pub fn group(mut self, line: &str) -> Config {
        self.group.push(line.to_string());
        self
    }

    /// The member's `data_dir` (default: `data/hub-1` beside the topology).
    pub fn data_dir(mut self, dir: &Path) -> Config {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// A `key = value` line of the member's listener.
    pub fn listener(mut self, line: &str) -> Config {
        self.listener.push(line.to_string());
        self
    }

    /// Whole tables appended to the file, e.g. a `[[policy]]`.
    pub fn section(mut self, text: &str) -> Config {
        self.sections.push(text.to_string());
        self
    }

    /// The topology text for a member on `ports`.
    pub fn topology(&self, ports: Ports) -> String {
        self.topology_of(ports).text()
    }

    /// The topology for a member on `ports`, for a test to add groups or connectors to.
    pub fn topology_of(&self, ports: Ports) -> Topology {
        fn lines(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        let mut member = topology::Member::new("hub-1", ports.admin_addr());
        if let Some(dir) = &self.data_dir {
            member = member.data_dir(dir);
        }
        let mut t = Topology::new("test").table("broker", &lines(&self.broker));
        if !self.store.is_empty() {
            t = t.table("store", &lines(&self.store));
        }
        let mut t = t.group(
            topology::Group::new("hub")
                .lines(&lines(&self.group))
                .member(member.listener(&ports.url(), &lines(&self.listener))),
        );
        for s in &self.sections {
            t = t.section(s);
        }
        t
    }
}

/// Writes `text` as `name` into `dir`; returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write topology");
    path
}

/// A child process killed (SIGKILL) and reaped when dropped, unless it already exited.
pub struct ChildGuard {
    pub child: Child,
    exited: Option<ExitStatus>,
}

/// Starts `meshmq broker --topology T --member M` with stdout and stderr appended to `log`
/// (a restarted member keeps one log) and `env` set.
pub fn spawn_broker(topology: &Path, member: &str, log: &Path, env: &[(&str, &str)]) -> ChildGuard {
    spawn_broker_as(topology, member, log, env, None)
}

/// [`spawn_broker`] running as user id `uid` when given (so iptables can match its packets
/// by owner).
pub fn spawn_broker_as(
    topology: &Path,
    member: &str,
    log: &Path,
    env: &[(&str, &str)],
    uid: Option<u32>,
) -> ChildGuard {
    spawn_broker_with(topology, member, log, env, &[], uid)
}

/// The one way the harness starts a member: `meshmq broker --topology T --member M ARGS…`
/// with `env` set, as user `uid` when given, stdout and stderr appended to `log`.
pub fn spawn_broker_with(
    topology: &Path,
    member: &str,
    log: &Path,
    env: &[(&str, &str)],
    args: &[&str],
    uid: Option<u32>,
) -> ChildGuard {
    let log = File::options()
        .create(true)
        .append(true)
        .open(log)
        .expect("member log");
    let mut cmd = meshmq();
    if let Some(uid) = uid {
        std::os::unix::process::CommandExt::uid(&mut cmd, uid);
    }
    let child = cmd
        .args(["broker", "--topology"])
        .arg(topology)
        .args(["--member", member])
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .expect("spawn meshmq broker");
    ChildGuard::new(child)
}

impl ChildGuard {
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard {
            child,
            exited: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        if self.exited.is_none() {
            // SAFETY: signalling a child this guard owns and has not reaped.
            unsafe { libc::kill(self.pid(), sig) };
        }
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited
    }

    /// SIGKILL, then waits (within the guard) until it is gone; `what` names it in the failure.
    pub fn kill9(&mut self, what: &str) {
        self.signal(libc::SIGKILL);
        if self.wait_timeout(GUARD).is_none() {
            panic!("{what} did not die of SIGKILL");
        }
    }

    /// SIGTERM (a graceful stop), then waits (within the guard) until it has exited.
    pub fn stop(&mut self, what: &str) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_timeout(GUARD)
            .unwrap_or_else(|| panic!("{what} did not stop on SIGTERM within {GUARD:?}"))
    }

    /// Waits for the process to exit; `None` when it is still running after `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait::poll()
            .within(timeout)
            .settle(|| self.try_wait(), Option::is_some)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A CLI child process whose stdout and stderr go to files (so a chatty child never blocks on
/// a full pipe), killed and reaped on drop.
pub struct CliChild {
    pub proc: ChildGuard,
    dir: TempDir,
}

/// A finished CLI run.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliChild {
    pub fn spawn(cmd: &mut Command) -> CliChild {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = File::create(dir.path().join("stdout")).expect("stdout file");
        let err = File::create(dir.path().join("stderr")).expect("stderr file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn meshmq");
        CliChild {
            proc: ChildGuard::new(child),
            dir,
        }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// Waits (within the guard) for the child to exit.
    pub fn finish(mut self) -> Finished {
        let Some(status) = self.proc.wait_timeout(GUARD) else {
            panic!(
                "the command did not finish within {GUARD:?}\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
        };
        Finished {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }
}

/// Runs a CLI command to completion (within the guard).
pub fn run(cmd: &mut Command) -> Finished {
    CliChild::spawn(cmd).finish()
}

/// Runs `meshmq bench ARGS…` and returns its JSON report (the last line that is a JSON
/// object); fails the test if the bench fails or prints no report.
pub fn bench_report(args: &[&str]) -> serde_json::Value {
    let done = run(meshmq().arg("bench").args(args));
    assert!(
        done.status.success(),
        "meshmq bench {args:?} failed ({}):\n{}\n{}",
        done.status,
        done.stdout,
        done.stderr
    );
    let line = done
        .stdout
        .lines()
        .rfind(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no report in:\n{}", done.stdout));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("no JSON report ({e}): {line}"))
}

/// Runs `meshmq apply FILE` and returns its stdout; fails the test unless every member took it.
pub fn apply(file: &Path) -> String {
    let out = run(meshmq().arg("apply").arg(file));
    assert!(
        out.status.success(),
        "meshmq apply {} failed ({}):\n{}\n{}",
        file.display(),
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// One `meshmq broker` process, killed and reaped on drop: a lone broker ([`Broker::start`])
/// or one member of a [`Mesh`]. It can be started again on the same topology, ports and data
/// directory once it has exited (`restart`).
pub struct Broker {
    proc: ChildGuard,
    ports: Ports,
    /// The IP its native listener and admin port are reached at.
    ip: Ipv4Addr,
    member: String,
    /// The topology's directory (shared by a mesh's members), removed with the last of them.
    dir: Arc<TempDir>,
    topology: PathBuf,
    data_dir: PathBuf,
    /// How many times a process was started (each run logs to its own file).
    runs: usize,
}

/// Why a broker did not come up.
enum StartError {
    /// One of its ports was taken between our probe and its bind.
    PortTaken(String),
    Other(String),
}

impl Broker {
    /// Starts a broker on fresh ports and waits until `/readyz` answers 200.
    pub fn start(config: &Config) -> Broker {
        let mut last = String::new();
        for _ in 0..3 {
            match Broker::spawn(config, Ports::pick()) {
                Ok(b) => return b,
                Err(StartError::PortTaken(log)) => last = log,
                Err(StartError::Other(log)) => panic!("the broker did not start:\n{log}"),
            }
        }
        panic!("the broker could not bind fresh ports three times:\n{last}")
    }

    /// Starts a broker on the given ports (e.g. to show an earlier one released them).
    pub fn start_on(config: &Config, ports: Ports) -> Broker {
        match Broker::spawn(config, ports) {
            Ok(b) => b,
            Err(StartError::PortTaken(log) | StartError::Other(log)) => {
                panic!("the broker did not start on {ports:?}:\n{log}")
            }
        }
    }

    fn spawn(config: &Config, ports: Ports) -> Result<Broker, StartError> {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let topology = write_file(dir.path(), "topology.toml", &config.topology(ports));
        let data_dir = config
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data").join("hub-1"));
        let mut broker = Broker::new_member(&dir, &topology, "hub-1", Ipv4Addr::LOCALHOST, ports);
        broker.data_dir = data_dir;
        broker.wait_ready()?;
        Ok(broker)
    }

    /// Starts `meshmq broker --member member` without waiting for it (run 1); its output goes
    /// to `<member>-1.log` beside the topology.
    fn new_member(
        dir: &Arc<TempDir>,
        topology: &Path,
        member: &str,
        ip: Ipv4Addr,
        ports: Ports,
    ) -> Broker {
        Broker {
            proc: Broker::launch(dir.path(), topology, member, 1, &[]),
            ports,
            ip,
            member: member.to_string(),
            dir: dir.clone(),
            topology: topology.to_path_buf(),
            data_dir: dir.path().join("data").join(member),
            runs: 1,
        }
    }

    /// Starts run `run` of `member`, logging to `<member>-<run>.log` in `dir`.
    fn launch(dir: &Path, topology: &Path, member: &str, run: usize, args: &[&str]) -> ChildGuard {
        let log = dir.join(format!("{member}-{run}.log"));
        spawn_broker_with(topology, member, &log, &[], args, None)
    }

    /// Waits until `/readyz` answers 200 (within the guard).
    fn wait_ready(&mut self) -> Result<(), StartError> {
        let admin = self.admin();
        let (exited, ready) = wait::poll().settle(
            || {
                let exited = self.proc.try_wait();
                let ready = exited.is_none() && matches!(http_get(admin, "/readyz"), Ok((200, _)));
                (exited, ready)
            },
            |(exited, ready)| exited.is_some() || *ready,
        );
        if let Some(status) = exited {
            let log = format!("{} exited with {status}:\n{}", self.member, self.log());
            return Err(if log.contains("Address already in use") {
                StartError::PortTaken(log)
            } else {
                StartError::Other(log)
            });
        }
        if ready {
            return Ok(());
        }
        Err(StartError::Other(format!(
            "{} not ready within {GUARD:?}:\n{}",
            self.member,
            self.log()
        )))
    }

    /// Starts the broker again (after it exited) on the same topology, ports and data
    /// directory, with extra command-line `args`, and waits until it is ready.
    pub fn restart_with(&mut self, args: &[&str]) {
        assert!(
            self.proc.try_wait().is_some(),
            "restart: the broker is still running"
        );
        self.runs += 1;
        self.proc = Broker::launch(
            self.dir.path(),
            &self.topology,
            &self.member,
            self.runs,
            args,
        );
        if let Err(StartError::PortTaken(log) | StartError::Other(log)) = self.wait_ready() {
            panic!("the broker did not start again:\n{log}");
        }
    }

    pub fn restart(&mut self) {
        self.restart_with(&[]);
    }

    /// Starts the broker again expecting it to refuse: waits for it to exit and returns its
    /// status and log. Fails the test if it becomes ready instead.
    pub fn restart_refused(&mut self, args: &[&str]) -> (ExitStatus, String) {
        assert!(
            self.proc.try_wait().is_some(),
            "the broker is still running"
        );
        self.runs += 1;
        self.proc = Broker::launch(
            self.dir.path(),
            &self.topology,
            &self.member,
            self.runs,
            args,
        );
        match self.wait_ready() {
            Ok(()) => panic!(
                "the broker started but should have refused:\n{}",
                self.log()
            ),
            Err(StartError::PortTaken(log)) => panic!("a port was taken:\n{log}"),
            Err(StartError::Other(_)) => {}
        }
        let status = self.proc.try_wait().expect("it exited");
        (status, self.log())
    }

    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// `tcp://IP:PORT` of the native listener.
    pub fn url(&self) -> String {
        format!("tcp://{}", self.listen_addr())
    }

    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.ports.listen))
    }

    pub fn admin(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.ports.admin))
    }

    /// The member's name in the topology.
    pub fn member(&self) -> &str {
        &self.member
    }

    /// The topology file it was started with.
    pub fn topology(&self) -> &Path {
        &self.topology
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// The stdout and stderr of the broker's current (or last) run so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("{}-{}.log", self.member, self.runs)),
        )
        .unwrap_or_default()
    }

    /// The directory holding its topology (and a mesh's certificates).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The member's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Where its journal lives (`data_dir/journal`).
    pub fn journal_dir(&self) -> PathBuf {
        self.data_dir.join("journal")
    }

    /// True once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.proc.try_wait()
    }

    /// `GET /status`, parsed.
    pub fn status(&self) -> MemberStatus {
        member_status(self.admin())
    }

    /// One destination's counters from `/status` (all zero when it does not exist).
    pub fn destination(&self, name: &str) -> DestinationStats {
        destination_at(self.admin(), name)
    }

    /// `GET /metrics` text.
    pub fn metrics(&self) -> String {
        let (code, body) = http_get(self.admin(), "/metrics").expect("GET /metrics");
        assert_eq!(code, 200, "/metrics answered {code}: {body}");
        body
    }

    pub fn sigterm(&self) {
        self.proc.signal(libc::SIGTERM);
    }

    pub fn kill9(&mut self) {
        self.proc.kill9(&self.member);
    }

    /// Waits for the broker to exit (within the guard) and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        match self.proc.wait_timeout(GUARD) {
            Some(s) => s,
            None => panic!("the broker did not exit within {GUARD:?}:\n{}", self.log()),
        }
    }

    /// A Rust client connected with default options.
    pub async fn client(&self) -> Client {
        self.client_with(ClientOptions::default()).await
    }

    pub async fn client_with(&self, options: ClientOptions) -> Client {
        Client::connect(&self.url(), options)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url()))
    }
}

/// Loopback IPs handed to mesh groups, one each (127.0.0.2 …), so the groups of tests that
/// run at the same time never share an address.
static NEXT_IP: AtomicU32 = AtomicU32::new(0);

fn next_ip() -> Ipv4Addr {
    let n = NEXT_IP.fetch_add(1, Ordering::Relaxed);
    Ipv4Addr::new(127, 0, 0, 2 + (n % 250) as u8)
}

/// A TCP port on `ip` that was free a moment ago.
pub fn free_port_on(ip: Ipv4Addr) -> u16 {
    unique_port(|| TcpListener::bind((ip, 0))?.local_addr().map(|a| a.port()))
}

/// A UDP port on `ip` that was free a moment ago (for QUIC listeners).
fn free_udp_port_on(ip: Ipv4Addr) -> u16 {
    unique_port(|| {
        std::net::UdpSocket::bind((ip, 0))?
            .local_addr()
            .map(|a| a.port())
    })
}

#[derive(Debug, Clone)]
struct GroupSpec {
    name: String,
    broker: Vec<String>,
    quic: bool,
    /// A `ws://` listener too.
    ws: bool,
    proxy: Option<ProxyMode>,
    /// `false`: in the topology, but no process runs it (the test plays it).
    process: bool,
    /// Its loopback address (default: the next free one of `127.0.0.2..`).
    ip: Option<Ipv4Addr>,
}

/// A mesh for [`Mesh::start`]: groups of one member each (`<group>-1`), every group on its
/// own loopback IP (its member binds its listener, admin port and outgoing links there), and
/// connectors between them. Every member reads the same topology file.
///
/// A group put [`behind_proxy`](MeshConfig::behind_proxy) is reached by the connectors that
/// dial it only through a [`Proxy`] the test controls: its member's native listener binds
/// every address (`tcp://0.0.0.0:P`) and advertises the proxy (`advertise =
/// "tcp://127.0.0.1:Q"`); a connector dials a listener that binds every address at the address
/// it advertises, so the dialling group reaches `Q`, and the proxy forwards to the member's
/// real port `P`. Clients of the test connect to the member directly (its IP, port `P`).
#[derive(Debug, Clone, Default)]
pub struct MeshConfig {
    /// `None`: the `[mesh]` table carries [`MESH_SECRET`]; `Some(lines)`: no secret, and
    /// these lines instead.
    without_secret: Option<Vec<String>>,
    broker: Vec<String>,
    groups: Vec<GroupSpec>,
    connectors: Vec<topology::Connector>,
    sections: Vec<String>,
}

impl MeshConfig {
    pub fn new() -> MeshConfig {
        MeshConfig::default()
    }

    /// A `[mesh]` table without the secret (by default it carries [`MESH_SECRET`]), with
    /// `lines` instead (e.g. `allow_anonymous_bridges = true`).
    pub fn without_secret(mut self, lines: &[&str]) -> MeshConfig {
        self.without_secret = Some(lines.iter().map(|l| l.to_string()).collect());
        self
    }

    /// A `key = value` line of the mesh-wide `[broker]` section.
    pub fn broker(mut self, line: &str) -> MeshConfig {
        self.broker.push(line.to_string());
        self
    }

    /// A group with one member, `<name>-1`, serving the native protocol over TCP.
    pub fn group(mut self, name: &str) -> MeshConfig {
        self.groups.push(GroupSpec {
            name: name.to_string(),
            broker: Vec::new(),
            quic: false,
            ws: false,
            proxy: None,
            process: true,
            ip: None,
        });
        self
    }

    /// The group's member listens on, and dials from, `ip` (a test's own loopback address, so
    /// iptables rules can name the group's links).
    pub fn at(mut self, group: &str, ip: Ipv4Addr) -> MeshConfig {
        self.group_mut(group).ip = Some(ip);
        self
    }

    /// A group in the topology with no `meshmq` process behind it: the test plays it, e.g.
    /// dialling a real group over a connector with a [`RawConn`].
    pub fn played_by_test(mut self, group: &str) -> MeshConfig {
        self.group_mut(group).process = false;
        self
    }

    fn group_mut(&mut self, name: &str) -> &mut GroupSpec {
        self.groups
            .iter_mut()
            .find(|g| g.name == name)
            .unwrap_or_else(|| panic!("no group {name} in this mesh config"))
    }

    /// A `key = value` line of the group's own `[group.broker]` section.
    pub fn group_broker(mut self, group: &str, line: &str) -> MeshConfig {
        self.group_mut(group).broker.push(line.to_string());
        self
    }

    /// Gives the group's member a `quic://` listener too, with a certificate from the
    /// development CA that `meshmq certs` writes into `certs/` beside the topology.
    pub fn quic(mut self, group: &str) -> MeshConfig {
        self.group_mut(group).quic = true;
        self
    }

    /// Gives the group's member a `ws://` listener too (STOMP and MQTT over WebSocket).
    pub fn ws(mut self, group: &str) -> MeshConfig {
        self.group_mut(group).ws = true;
        self
    }

    /// Connectors reach the group only through a proxy, which starts in `mode`.
    pub fn behind_proxy(mut self, group: &str, mode: ProxyMode) -> MeshConfig {
        self.group_mut(group).proxy = Some(mode);
        self
    }

    /// A `[[connector]]` from `from` to `to` with extra `key = value` lines. Unless the lines
    /// say otherwise, it re-dials after 100 ms, backing off to at most 1 s (tests wait less).
    pub fn connector(mut self, from: &str, to: &str, lines: &[&str]) -> MeshConfig {
        self.connectors
            .push(topology::Connector::new(from, to, lines).or_lines(&topology::QUICK_REDIAL));
        self
    }

    /// Whole tables appended to the file, e.g. a `[[policy]]` or `[[security.user]]`.
    pub fn section(mut self, text: &str) -> MeshConfig {
        self.sections.push(text.to_string());
        self
    }

    /// The topology text, on fresh addresses and ports (nothing is started but the proxies,
    /// which are dropped).
    pub fn topology_text(&self) -> String {
        Mesh::topology_of(self, &Mesh::place(self)).text()
    }

    fn uses_quic(&self) -> bool {
        self.groups.iter().any(|g| g.quic)
    }
}

/// Where one member of a mesh listens, picked before the topology is written.
struct Placement {
    ip: Ipv4Addr,
    ports: Ports,
    quic: Option<u16>,
    ws: Option<u16>,
    proxy: Option<Proxy>,
}

/// Several `meshmq broker --member X` processes of one topology; all killed when dropped.
pub struct Mesh {
    dir: Arc<TempDir>,
    topology: PathBuf,
    /// What was written to `topology`.
    written: Topology,
    members: Vec<(String, Broker)>,
    proxies: Vec<(String, Proxy)>,
}

impl Mesh {
    /// Starts every member, waits until each is ready and every connector's bridge is up.
    pub fn start(config: &MeshConfig) -> Mesh {
        let mesh = Mesh::start_unconnected(config);
        mesh.wait_connected();
        mesh
    }

    /// Starts every member and waits until each is ready (bridges may still be down).
    pub fn start_unconnected(config: &MeshConfig) -> Mesh {
        let mut last = String::new();
        for _ in 0..3 {
            match Mesh::try_start(config) {
                Ok(mesh) => return mesh,
                Err(StartError::PortTaken(log)) => last = log,
                Err(StartError::Other(log)) => panic!("the mesh did not start:\n{log}"),
            }
        }
        panic!("the mesh could not bind fresh ports three times:\n{last}")
    }

    fn try_start(config: &MeshConfig) -> Result<Mesh, StartError> {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let placements = Mesh::place(config);
        let written = Mesh::topology_of(config, &placements);
        let topology = written.write(dir.path(), "topology.toml");
        if config.uses_quic() {
            let made = run(meshmq()
                .arg("certs")
                .arg(&topology)
                .arg("--out")
                .arg(dir.path().join("certs")));
            assert!(made.status.success(), "meshmq certs: {}", made.stderr);
        }
        let mut members: Vec<(String, Broker)> = config
            .groups
            .iter()
            .zip(&placements)
            .filter(|(g, _)| g.process)
            .map(|(g, p)| {
                let member = format!("{}-1", g.name);
                let broker = Broker::new_member(&dir, &topology, &member, p.ip, p.ports);
                (g.name.clone(), broker)
            })
            .collect();
        for (_, broker) in &mut members {
            broker.wait_ready()?;
        }
        let proxies = config
            .groups
            .iter()
            .zip(placements)
            .filter_map(|(g, p)| Some((g.name.clone(), p.proxy?)))
            .collect();
        Ok(Mesh {
            dir,
            topology,
            written,
            members,
            proxies,
        })
    }

    /// Picks each group's address and ports (and starts its proxy) before the topology is
    /// written.
    fn place(config: &MeshConfig) -> Vec<Placement> {
        config
            .groups
            .iter()
            .map(|g| {
                let ip = g.ip.unwrap_or_else(next_ip);
                let listen = if g.proxy.is_some() {
                    free_port_on(Ipv4Addr::UNSPECIFIED)
                } else {
                    free_port_on(ip)
                };
                let ports = Ports {
                    listen,
                    admin: free_port_on(ip),
                };
                Placement {
                    ip,
                    ports,
                    quic: g.quic.then(|| free_udp_port_on(ip)),
                    ws: g.ws.then(|| free_port_on(ip)),
                    proxy: g
                        .proxy
                        .map(|mode| Proxy::start_in(SocketAddr::from((ip, listen)), mode)),
                }
            })
            .collect()
    }

    fn topology_of(config: &MeshConfig, placements: &[Placement]) -> Topology {
        let broker: Vec<&str> = config.broker.iter().map(String::as_str).collect();
        let mut t = match &config.without_secret {
            None => Topology::new("test"),
            Some(lines) => Topology::without_secret("test")
                .mesh_lines(&lines.iter().map(String::as_str).collect::<Vec<_>>()),
        }
        .table("broker", &broker);
        for (g, p) in config.groups.iter().zip(placements) {
            let name = format!("{}-1", g.name);
            let mut member = topology::Member::new(&name, SocketAddr::from((p.ip, p.ports.admin)))
                .lines(&[&format!("bind = \"{}\"", p.ip)]);
            member = match &p.proxy {
                Some(proxy) => member.listener(
                    &format!("tcp://0.0.0.0:{}", p.ports.listen),
                    &[&format!("advertise = \"tcp://{}\"", proxy.addr())],
                ),
                None => member.tcp(SocketAddr::from((p.ip, p.ports.listen))),
            };
            if let Some(port) = p.ws {
                member = member.listener(&format!("ws://{}:{port}", p.ip), &[]);
            }
            if let Some(port) = p.quic {
                member = member.listener(
                    &format!("quic://{}:{port}", p.ip),
                    &[
                        &format!("tls_cert = \"certs/{name}.pem\""),
                        &format!("tls_key = \"certs/{name}.key\""),
                    ],
                );
            }
            let mut group = topology::Group::new(&g.name).member(member);
            for line in &g.broker {
                group = group.broker(line);
            }
            t = t.group(group);
        }
        t = t.connectors(config.connectors.iter().cloned());
        for s in &config.sections {
            t = t.section(s);
        }
        t
    }

    /// The member of `group`.
    pub fn member(&self, group: &str) -> &Broker {
        self.members
            .iter()
            .find(|(g, _)| g == group)
            .map(|(_, b)| b)
            .unwrap_or_else(|| panic!("no group {group} in this mesh"))
    }

    pub fn member_mut(&mut self, group: &str) -> &mut Broker {
        self.members
            .iter_mut()
            .find(|(g, _)| g == group)
            .map(|(_, b)| b)
            .unwrap_or_else(|| panic!("no group {group} in this mesh"))
    }

    pub fn members(&self) -> impl Iterator<Item = &Broker> {
        self.members.iter().map(|(_, b)| b)
    }

    /// A client-individual consumer of `dest` on group `edge`, recording into `history` as
    /// "edge" until `stop`, once the hub knows of it over connector `hub-edge`. The returned
    /// client must be kept for as long as it should consume.
    pub async fn edge_consumer(
        &self,
        dest: &str,
        history: &history::History,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Client {
        let client = self.member("edge").client().await;
        let sub = client
            .subscribe(
                dest,
                SubscribeOptions {
                    ack: AckMode::ClientIndividual,
                    ..SubscribeOptions::default()
                },
            )
            .await
            .expect("subscribe");
        history::consume(sub, history, "edge", stop.clone());
        let hub = self.member("hub");
        wait_until("the hub knows the edge consumer", || {
            hub.connector("hub-edge").remote_demand == 1
        });
        client
    }

    /// The proxy in front of `group`.
    pub fn proxy(&self, group: &str) -> &Proxy {
        self.proxies
            .iter()
            .find(|(g, _)| g == group)
            .map(|(_, p)| p)
            .unwrap_or_else(|| panic!("group {group} is not behind a proxy"))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn topology(&self) -> &Path {
        &self.topology
    }

    /// The topology it was started from, for a test to write a variant of.
    pub fn written(&self) -> &Topology {
        &self.written
    }

    /// The address of the group's `ws://` listener.
    pub fn ws_addr(&self, group: &str) -> SocketAddr {
        let status = self.member(group).status();
        let bound = &status
            .listeners
            .iter()
            .find(|l| l.url.starts_with("ws://"))
            .unwrap_or_else(|| panic!("group {group} has no ws listener"))
            .bound;
        bound
            .parse()
            .unwrap_or_else(|e| panic!("the ws listener's address {bound:?}: {e}"))
    }

    /// `quic://IP:PORT` of the group's QUIC listener.
    pub fn quic_url(&self, group: &str) -> String {
        let status = self.member(group).status();
        let bound = status
            .listeners
            .iter()
            .find(|l| l.url.starts_with("quic://"))
            .unwrap_or_else(|| panic!("group {group} has no quic listener"))
            .bound
            .clone();
        format!("quic://{bound}")
    }

    /// Waits until every connector of every member reports its bridge up.
    pub fn wait_connected(&self) {
        wait_until("every connector's bridge is up", || {
            self.members()
                .all(|m| m.status().connectors.iter().all(|c| c.up))
        });
    }

    /// The sum of a metric over every member of the mesh.
    pub fn metric_sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.members()
            .map(|m| metric_sum(&m.metrics(), name, labels))
            .sum()
    }

    /// Every member's log, for failure messages.
    pub fn logs(&self) -> String {
        self.members()
            .map(|m| format!("==== {} ====\n{}", m.member(), m.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Broker {
    /// The named connector in `/status`.
    pub fn connector(&self, name: &str) -> ConnectorStatus {
        let status = self.status();
        status
            .connectors
            .iter()
            .find(|c| c.name == name)
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "{} has no connector {name}: {:?}",
                    self.member, status.connectors
                )
            })
    }
}

/// `GET /status` at `admin`, parsed; `None` unless it answers 200 within `timeout` (a
/// member starting, stopped or gone).
pub fn status_within(admin: SocketAddr, timeout: Duration) -> Option<MemberStatus> {
    match http_get_within(admin, "/status", timeout) {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// `/readyz` at `admin` answers 200 within `timeout`: the member serves clients.
pub fn ready_within(admin: SocketAddr, timeout: Duration) -> bool {
    matches!(http_get_within(admin, "/readyz", timeout), Ok((200, _)))
}

/// [`status_within`] [`HTTP_TIMEOUT`].
pub fn try_status(admin: SocketAddr) -> Option<MemberStatus> {
    status_within(admin, HTTP_TIMEOUT)
}

/// [`ready_within`] [`HTTP_TIMEOUT`].
pub fn is_ready(admin: SocketAddr) -> bool {
    ready_within(admin, HTTP_TIMEOUT)
}

/// `GET /status` of the admin port at `admin`, parsed.
pub fn member_status(admin: SocketAddr) -> MemberStatus {
    let (code, body) = http_get(admin, "/status").expect("GET /status");
    assert_eq!(code, 200, "/status answered {code}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("bad /status ({e}): {body}"))
}

/// One destination's counters from the `/status` at `admin` (all zero when it does not exist).
pub fn destination_at(admin: SocketAddr, name: &str) -> DestinationStats {
    member_status(admin)
        .destinations
        .into_iter()
        .find(|d| d.destination == name)
        .unwrap_or_default()
}

/// Polls `cond` every 20 ms until it holds; fails the test after [`GUARD`] (see [`wait`] for
/// other paces, bounds and async tests).
pub fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait::poll().until(what, cond);
}

/// A minimal HTTP/1.1 GET: the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    http_get_within(addr, path, HTTP_TIMEOUT)
}

/// How long [`http_get`] waits to connect, write and read.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// [`http_get`] that gives up after `timeout` per connect, read and write (a stopped process
/// accepts the connection in the kernel and then never answers).
pub fn http_get_within(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("bad response: {text}"));
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok((code, dechunk(body).ok_or_else(bad)?));
    }
    Ok((code, body.to_string()))
}

/// POSTs an empty body to `path` (with `Authorization: Bearer TOKEN` when given); returns the
/// status code and the body. Panics when the member does not answer.
pub fn http_post(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let post = || -> io::Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok((code, text))
    };
    post().unwrap_or_else(|e| panic!("POST http://{addr}{path}: {e}"))
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size + 2..)?;
    }
}

/// The sum of every sample of `name` whose labels contain each of `labels` (`key="value"`).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, r)) => (m, r),
                None => (series, ""),
            };
            (metric == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// True when nothing accepts connections on `addr` (connect is refused).
pub fn refuses_connections(addr: SocketAddr) -> bool {
    matches!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
    )
}

/// A raw socket speaking (or abusing) the wire protocol.
pub struct RawConn {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl RawConn {
    pub fn open(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).expect("raw connect");
        stream.set_read_timeout(Some(GUARD)).expect("timeout");
        stream.set_write_timeout(Some(GUARD)).expect("timeout");
        RawConn {
            stream,
            buf: BytesMut::new(),
        }
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("raw write");
    }

    pub fn send(&mut self, body: Body) {
        self.try_send(body).expect("raw write");
    }

    /// Sends a frame the broker may already have stopped reading (it may close at any time).
    pub fn try_send(&mut self, body: Body) -> io::Result<()> {
        let mut out = BytesMut::new();
        wire::encode(&wire::frame(body), &mut out);
        self.stream.write_all(&out)
    }

    /// Sends `Connect` (with this heartbeat promise) and returns the broker's `Connected`.
    pub fn handshake(&mut self, heartbeat_ms: u32) -> proto::Connected {
        self.send(Body::Connect(proto::Connect {
            protocol_version: wire::PROTOCOL_VERSION,
            heartbeat_ms,
            client_name: "raw test socket".into(),
            ..Default::default()
        }));
        match self.next() {
            Some(Frame {
                body: Some(Body::Connected(c)),
            }) => c,
            other => panic!("expected Connected, got {other:?}"),
        }
    }

    /// The next frame, or `None` at a clean end of the stream (FIN). Fails the test on a reset,
    /// a timeout or bytes that are not a frame.
    pub fn next(&mut self) -> Option<Frame> {
        loop {
            match wire::decode(&mut self.buf, wire::DEFAULT_MAX_FRAME_SIZE) {
                Ok(Decoded::Frame(f)) => return Some(f),
                Ok(Decoded::NeedMore(_)) => {}
                Err(e) => panic!("the broker sent something that is not a frame: {e}"),
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    assert!(
                        self.buf.is_empty(),
                        "the stream ended inside a frame ({} bytes)",
                        self.buf.len()
                    );
                    return None;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => {
                    panic!("reading from the broker failed (want frames, then a clean EOF): {e}")
                }
            }
        }
    }

    /// Reads past heartbeats to the first Error frame, then requires the end of the stream.
    pub fn expect_error_then_eof(&mut self) -> proto::Error {
        let error = loop {
            match self.next() {
                Some(Frame {
                    body: Some(Body::Heartbeat(_)),
                }) => {}
                Some(Frame {
                    body: Some(Body::Error(e)),
                }) => break e,
                other => panic!("expected an Error frame, got {other:?}"),
            }
        };
        match self.next() {
            None => error,
            other => panic!("expected the broker to close after {error:?}, got {other:?}"),
        }
    }
}

/// A running `meshmq up`. Dropped (a failed test), it kills the members too: `up` itself is
/// killed with SIGKILL and could not stop them.
pub struct Up(pub CliChild);

impl Up {
    /// Starts `meshmq up TOPOLOGY` and waits until it reports the mesh ready.
    pub fn start(topology: &Path) -> Up {
        let mut up = CliChild::spawn(meshmq().arg("up").arg(topology));
        wait_until("`up` reports the mesh ready", || {
            assert!(
                up.proc.try_wait().is_none(),
                "up exited early:\n{}\n{}",
                up.stdout(),
                up.stderr()
            );
            up.stdout().contains("press Ctrl-C to stop every member")
        });
        Up(up)
    }

    /// The pid of member `name` among `up`'s children (from its command line).
    pub fn pid_of(&self, name: &str) -> i32 {
        children_of(self.0.proc.pid())
            .into_iter()
            .find(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                args.windows(2)
                    .any(|w| w[0] == b"--member" && w[1] == name.as_bytes())
            })
            .unwrap_or_else(|| panic!("no child of `up` runs member {name}"))
    }

    /// Ctrl-C: `up` stops every member and exits successfully.
    pub fn stop(mut self) {
        self.0.proc.signal(libc::SIGINT);
        let status = self
            .0
            .proc
            .wait_timeout(GUARD)
            .expect("`up` stops on SIGINT");
        assert!(status.success(), "{status}:\n{}", self.0.stdout());
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        for pid in children_of(self.0.proc.pid()) {
            // SAFETY: signalling the members this test's `up` started, by the pids it reports
            // as its children.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Every pid that is a child of `pid` (any of its threads may have forked it).
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
    }
    out
}

/// What a fault test saw, message by message (a message is named by its unique body, or by
/// the part of it before the first `|`): what was sent, what the broker receipted, and every
/// delivery with its redelivery count. [`History::check`] is the invariant of every fault
/// test: each receipted message delivered, nothing invented, a message delivered again only
/// flagged as a redelivery.
#[derive(Debug, Default)]
pub struct History {
    sent: HashSet<String>,
    receipted: HashSet<String>,
    deliveries: HashMap<String, Vec<u32>>,
    total: usize,
}

/// A history shared between a test's producer and consumer tasks (never locked across an
/// `.await`).
pub type SharedHistory = Arc<Mutex<History>>;
/// A producer for the crash tests: sends persistent messages to `queue` one receipt at a time,
/// recording each as sent and then receipted in `history`, until the connection breaks.
pub async fn produce_until_broken(
    url: String,
    queue: &'static str,
    name: String,
    history: SharedHistory,
    receipts: Arc<std::sync::atomic::AtomicUsize>,
) {
    let Ok(client) = Client::connect(&url, ClientOptions::default()).await else {
        return;
    };
    for i in 0.. {
        let body = format!("{name}-{i:06}");
        history.lock().unwrap().sent(&body);
        let msg = meshmq::client::Outgoing::new(body.clone()).persistent(true);
        if client.send_with_receipt(queue, &msg).await.is_err() {
            return;
        }
        history.lock().unwrap().receipted(&body);
        receipts.fetch_add(1, Ordering::Relaxed);
    }
}

/// A consumer for the crash tests: records and acknowledges (without waiting) every delivery
/// from `queue` until the connection breaks.
pub async fn consume_until_broken(
    url: String,
    queue: &'static str,
    history: SharedHistory,
    delivered: Arc<std::sync::atomic::AtomicUsize>,
) {
    let Ok(client) = Client::connect(&url, ClientOptions::default()).await else {
        return;
    };
    let options = SubscribeOptions {
        ack: AckMode::ClientIndividual,
        prefetch: 50,
        ..SubscribeOptions::default()
    };
    let Ok(mut sub) = client.subscribe(queue, options).await else {
        return;
    };
    while let Some(d) = sub.next().await {
        history
            .lock()
            .unwrap()
            .delivered(&message_name(&d.body), d.redelivery_count);
        delivered.fetch_add(1, Ordering::Relaxed);
        if sub.ack(&d).await.is_err() {
            return;
        }
    }
}

/// One round of a crash-under-load test: `producers` receipted producers (named
/// `c<round>-p<N>`, see [`produce_until_broken`]) and one acknowledging consumer on `broker`'s
/// `queue`, recording into `history`, until `receipts` sends were receipted and half as many
/// delivered; then `crash` (which must leave the broker dead), and a wait until every client
/// has noticed. Fails the test if the broker dies before the crash.
pub async fn load_then_crash(
    broker: &mut Broker,
    queue: &'static str,
    round: usize,
    (producers, receipts): (usize, usize),
    history: &SharedHistory,
    crash: impl FnOnce(&mut Broker),
) {
    let receipted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let delivered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for p in 0..producers {
        tasks.push(tokio::spawn(produce_until_broken(
            broker.url(),
            queue,
            format!("c{round}-p{p}"),
            history.clone(),
            receipted.clone(),
        )));
    }
    tasks.push(tokio::spawn(consume_until_broken(
        broker.url(),
        queue,
        history.clone(),
        delivered.clone(),
    )));
    wait_until("producers are receipted and the consumer is busy", || {
        assert!(
            broker.exited().is_none(),
            "the broker died:\n{}",
            broker.log()
        );
        receipted.load(Ordering::Relaxed) >= receipts
            && delivered.load(Ordering::Relaxed) >= receipts / 2
    });
    crash(broker);
    for t in tasks {
        tokio::time::timeout(GUARD, t)
            .await
            .expect("clients notice the broker died")
            .expect("client task");
    }
}

/// The name of a message in a [`History`]: its body up to the first `|`.
pub fn message_name(body: &[u8]) -> String {
    let end = body.iter().position(|b| *b == b'|').unwrap_or(body.len());
    String::from_utf8_lossy(&body[..end]).into_owned()
}

impl History {
    pub fn shared() -> SharedHistory {
        Arc::new(Mutex::new(History::default()))
    }

    /// Called before the message is handed to the client.
    pub fn sent(&mut self, name: &str) {
        self.sent.insert(name.to_string());
    }

    pub fn receipted(&mut self, name: &str) {
        assert!(self.sent.contains(name), "{name} receipted but never sent");
        self.receipted.insert(name.to_string());
    }

    pub fn delivered(&mut self, name: &str, redelivery_count: u32) {
        self.deliveries
            .entry(name.to_string())
            .or_default()
            .push(redelivery_count);
        self.total += 1;
    }

    pub fn sent_count(&self) -> usize {
        self.sent.len()
    }

    pub fn receipted_count(&self) -> usize {
        self.receipted.len()
    }

    /// Distinct messages delivered.
    pub fn delivered_count(&self) -> usize {
        self.deliveries.len()
    }

    /// Deliveries, counting repeats.
    pub fn deliveries(&self) -> usize {
        self.total
    }

    /// Deliveries flagged as redeliveries.
    pub fn redeliveries(&self) -> usize {
        self.deliveries
            .values()
            .flatten()
            .filter(|count| **count > 0)
            .count()
    }

    pub fn was_delivered(&self, name: &str) -> bool {
        self.deliveries.contains_key(name)
    }

    /// This history in the one checker's words: receipted = accepted, a redelivery count
    /// above 0 = flagged redelivered.
    pub fn ledger(&self) -> history::Ledger<String> {
        let mut ledger = history::Ledger::default();
        for name in &self.sent {
            ledger.sent(name.clone());
        }
        for name in &self.receipted {
            ledger.accepted(name.clone());
        }
        for (name, counts) in &self.deliveries {
            for count in counts {
                ledger.delivered(name.clone(), *count > 0);
            }
        }
        ledger
    }

    /// Receipted messages not delivered (yet).
    pub fn lost(&self) -> Vec<String> {
        self.ledger().judge().lost
    }

    /// Fails the test unless every receipted message was delivered, every delivered message
    /// was sent, and every repeated delivery was flagged as a redelivery.
    pub fn check(&self) {
        let judged = self.ledger().judge();
        let (lost, invented) = (&judged.lost, &judged.invented);
        let unflagged_after_the_first = judged.unflagged_after_the_first();
        let unflagged: Vec<(&String, &Vec<u32>)> = unflagged_after_the_first
            .iter()
            .map(|m| (m, &self.deliveries[m]))
            .collect();
        assert!(
            lost.is_empty() && invented.is_empty() && unflagged.is_empty(),
            "history: {} sent, {} receipted, {} delivered ({} deliveries)\n{} lost: {:?}\n{} invented: {:?}\n{} delivered again unflagged (redelivery counts): {:?}",
            self.sent.len(),
            self.receipted.len(),
            self.deliveries.len(),
            self.total,
            lost.len(),
            &lost[..lost.len().min(20)],
            invented.len(),
            &invented[..invented.len().min(20)],
            unflagged.len(),
            &unflagged[..unflagged.len().min(20)],
        );
    }
}

/// Consumes `dest` on a new connection, acknowledging each delivery and recording it in
/// `history`, until every receipted message has arrived and the broker holds nothing more for
/// the queue. Fails when nothing arrives within [`GUARD`] while something is still missing.
pub async fn drain(broker: &Broker, dest: &str, history: &SharedHistory) {
    drain_at(&broker.url(), broker.admin(), dest, history).await
}

/// [`drain`] for a broker this harness did not start: its client URL and admin address.
pub async fn drain_at(url: &str, admin: SocketAddr, dest: &str, history: &SharedHistory) {
    let client = Client::connect(url, ClientOptions::default())
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    let mut sub = client
        .subscribe(
            dest,
            SubscribeOptions {
                ack: AckMode::ClientIndividual,
                prefetch: 200,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe to drain");
    let mut progress = Instant::now();
    loop {
        match sub.next_timeout(Duration::from_millis(200)).await {
            Some(d) => {
                history
                    .lock()
                    .unwrap()
                    .delivered(&message_name(&d.body), d.redelivery_count);
                sub.ack(&d).await.expect("ack");
                progress = Instant::now();
            }
            None => {
                let missing = history.lock().unwrap().lost().len();
                let held = destination_at(admin, dest);
                if missing == 0 && held.depth == 0 {
                    break;
                }
                assert!(
                    progress.elapsed() < GUARD,
                    "draining {dest}: nothing arrived for {GUARD:?}; {missing} receipted messages missing, broker holds {held:?}"
                );
            }
        }
    }
    client.close().await.expect("close the draining client");
}

/// One frame of a journal segment: `u32 len | u32 crc32c | u64 index | payload`, `len`
/// counting the index and the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalFrame {
    /// Where the frame starts in its segment.
    pub offset: usize,
    /// The whole frame's length, header included.
    pub len: usize,
    pub index: u64,
}

impl JournalFrame {
    pub fn end(&self) -> usize {
        self.offset + self.len
    }

    pub fn payload<'a>(&self, segment: &'a [u8]) -> &'a [u8] {
        &segment[self.offset + 16..self.end()]
    }
}

/// The segment files of a journal directory (`<first index>.log`), oldest first.
pub fn segment_files(journal: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(journal)
        .unwrap_or_else(|e| panic!("list {}: {e}", journal.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    files
}

/// The frames of a segment, up to its zero padding (segments are preallocated). Reads only
/// frames with a plausible length; checksums are the broker's business.
pub fn journal_frames(segment: &[u8]) -> Vec<JournalFrame> {
    let mut frames = Vec::new();
    let mut at = 0usize;
    while at + 16 <= segment.len() {
        let len = u32::from_be_bytes(segment[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len < 8 || at + 8 + len > segment.len() {
            break;
        }
        let index = u64::from_be_bytes(segment[at + 8..at + 16].try_into().expect("8 bytes"));
        frames.push(JournalFrame {
            offset: at,
            len: 8 + len,
            index,
        });
        at += 8 + len;
    }
    frames
}

/// The bytes of every file in `dir` (not recursive).
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
