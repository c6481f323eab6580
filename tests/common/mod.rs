//! The integration-test harness: real `meshmq` processes on loopback ports the test picks, a
//! topology written into a temporary directory, a tiny HTTP GET for the admin port, and a raw
//! wire-protocol connection for tests that misbehave on purpose.
//!
//! Everything here is blocking (std sockets, std processes) so it can be called from plain
//! tests and from multi-threaded tokio tests alike; waits are bounded by [`GUARD`], which is a
//! failure guard, never a measurement.

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use meshmq::broker::DestinationStats;
use meshmq::client::{Client, ClientOptions};
use meshmq::server::admin::MemberStatus;
use meshmq::wire::{self, proto, Body, Decoded, Frame};
use tempfile::TempDir;

pub mod mesh;
pub mod proxy;

/// How long any wait may take before the test fails. Generous: tests run two at a time on a
/// loaded two-core machine.
pub const GUARD: Duration = Duration::from_secs(60);

/// The `meshmq` binary under test.
pub fn meshmq() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshmq"))
}

/// `n` distinct loopback ports that were free a moment ago (bound to port 0, read, released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("local_addr").port())
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
        let mut t = String::from("[mesh]\nname = \"test\"\n\n[broker]\n");
        for line in &self.broker {
            t.push_str(line);
            t.push('\n');
        }
        t.push_str(&format!(
            "\n[[group]]\nname = \"hub\"\n\n[[group.member]]\nname = \"hub-1\"\nadmin = \"127.0.0.1:{}\"\n\n[[group.member.listener]]\nurl = \"tcp://127.0.0.1:{}\"\n",
            ports.admin, ports.listen
        ));
        for line in &self.listener {
            t.push_str(line);
            t.push('\n');
        }
        for s in &self.sections {
            t.push('\n');
            t.push_str(s);
            t.push('\n');
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

    /// Waits for the process to exit; `None` when it is still running after `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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

/// One `meshmq broker` process, killed and reaped on drop.
pub struct Broker {
    proc: ChildGuard,
    ports: Ports,
    dir: TempDir,
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
        let dir = tempfile::tempdir().expect("tempdir");
        let topology = write_file(dir.path(), "topology.toml", &config.topology(ports));
        let log = File::create(dir.path().join("broker.log")).expect("log file");
        let child = meshmq()
            .args(["broker", "--topology"])
            .arg(&topology)
            .args(["--member", "hub-1"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn meshmq broker");
        let mut broker = Broker {
            proc: ChildGuard::new(child),
            ports,
            dir,
        };
        let deadline = Instant::now() + GUARD;
        loop {
            if let Some(status) = broker.proc.try_wait() {
                let log = format!("exited with {status}:\n{}", broker.log());
                return Err(if log.contains("Address already in use") {
                    StartError::PortTaken(log)
                } else {
                    StartError::Other(log)
                });
            }
            if matches!(http_get(ports.admin_addr(), "/readyz"), Ok((200, _))) {
                return Ok(broker);
            }
            if Instant::now() >= deadline {
                return Err(StartError::Other(format!(
                    "not ready within {GUARD:?}:\n{}",
                    broker.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// `tcp://127.0.0.1:PORT` of the native listener.
    pub fn url(&self) -> String {
        self.ports.url()
    }

    pub fn admin(&self) -> SocketAddr {
        self.ports.admin_addr()
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// The broker's stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }

    /// `GET /status`, parsed.
    pub fn status(&self) -> MemberStatus {
        let (code, body) = http_get(self.admin(), "/status").expect("GET /status");
        assert_eq!(code, 200, "/status answered {code}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("bad /status ({e}): {body}"))
    }

    /// One destination's counters from `/status` (all zero when it does not exist).
    pub fn destination(&self, name: &str) -> DestinationStats {
        self.status()
            .destinations
            .into_iter()
            .find(|d| d.destination == name)
            .unwrap_or_default()
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
        self.proc.signal(libc::SIGKILL);
        self.proc
            .wait_timeout(GUARD)
            .expect("SIGKILL ends the broker");
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

/// Polls `cond` every 20 ms until it holds; fails the test after [`GUARD`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + GUARD;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "gave up after {GUARD:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A minimal HTTP/1.1 GET: the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
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
