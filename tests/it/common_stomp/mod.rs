//! What the STOMP and security integration tests share: a real `meshmq broker` process on
//! loopback ports the test picked, a small blocking STOMP client built on meshmq's own codec
//! (for frames no well-behaved client would send), the stomp.py scripts under
//! `tests/stomp_py/`, and readings of the broker's `/metrics`.
//!
//! Every wait has a generous deadline that only turns a hang into a failure: nothing here
//! measures time.

// Each test binary includes this module and uses a different part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use meshmq::stomp::{Command as Cmd, Decoded, Decoder, Frame, Limits, Version};

use crate::common::script::Script;
use crate::common::{self, spawn_broker, wait, ChildGuard};

/// How long any single wait may take before the test fails as hung.
pub const GUARD: Duration = Duration::from_secs(30);

/// The only member of every test topology.
pub const MEMBER: &str = "m1";

/// A loopback port that was free a moment ago, never handed out before in this test process.
fn free_port() -> u16 {
    common::free_ports(1)[0]
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

struct ListenerDef {
    name: String,
    scheme: String,
    port: u16,
    extra: String,
}

/// A one-member topology written into its own temporary directory.
pub struct Topology {
    dir: tempfile::TempDir,
    admin: u16,
    broker_keys: String,
    /// Top-level tables after `[broker]` (`[security]`, `[[policy]]`, …).
    tables: String,
    listeners: Vec<ListenerDef>,
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

impl Topology {
    pub fn new() -> Topology {
        Topology {
            dir: tempfile::tempdir().expect("temporary directory"),
            admin: free_port(),
            broker_keys: String::new(),
            tables: String::new(),
            listeners: Vec::new(),
        }
    }

    /// Extra `[broker]` keys, one per line.
    pub fn broker(mut self, keys: &str) -> Topology {
        self.broker_keys.push_str(keys);
        self.broker_keys.push('\n');
        self
    }

    /// A `[security]` section and its `[[security.*]]` tables, as TOML text.
    pub fn security(self, text: &str) -> Topology {
        self.section(text)
    }

    /// Further top-level tables (e.g. a `[[policy]]`), as TOML text.
    pub fn section(mut self, text: &str) -> Topology {
        self.tables.push_str(text);
        self.tables.push('\n');
        self
    }

    /// A listener on a fresh port; `extra` holds further keys of its table (TOML lines).
    pub fn listener(mut self, name: &str, scheme: &str, extra: &str) -> Topology {
        self.listeners.push(ListenerDef {
            name: name.into(),
            scheme: scheme.into(),
            port: free_port(),
            extra: extra.into(),
        });
        self
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self) -> PathBuf {
        self.dir.path().join("mesh.toml")
    }

    /// Writes the topology file (through the harness's one topology writer).
    pub fn write(&mut self) -> PathBuf {
        let mut member = common::topology::Member::new(MEMBER, local(self.admin)).data_dir("data");
        for l in &self.listeners {
            member = member.listener(&format!("{}://{}", l.scheme, local(l.port)), &[&l.extra]);
        }
        let mut t = common::Topology::without_secret("test")
            .table("broker", &[&self.broker_keys])
            .group(common::topology::Group::new("g").member(member));
        if !self.tables.is_empty() {
            t = t.section(&self.tables);
        }
        t.write(self.dir.path(), "mesh.toml")
    }

    /// Starts `meshmq broker` on this topology and waits until its `/readyz` answers 200.
    pub fn start(mut self) -> Broker {
        let file = self.write();
        let log_path = self.dir.path().join("broker.log");
        let child = launch(&file, &log_path);
        let admin: SocketAddr = format!("127.0.0.1:{}", self.admin)
            .parse()
            .expect("admin address");
        let mut broker = Broker {
            child,
            admin,
            topology: self,
            log_path,
        };
        broker.wait_ready();
        broker
    }
}

/// Starts `meshmq broker` on topology `file`, its output appended to `log_path`.
fn launch(file: &Path, log_path: &Path) -> ChildGuard {
    spawn_broker(file, MEMBER, log_path, &[("MESHMQ_LOG", "info")])
}

/// A running broker process; killed and reaped on drop (its log is printed if the test failed).
pub struct Broker {
    child: ChildGuard,
    pub admin: SocketAddr,
    topology: Topology,
    log_path: PathBuf,
}

impl Broker {
    fn wait_ready(&mut self) {
        let admin = self.admin;
        let ready = || {
            if let Some(status) = self.child.try_wait() {
                panic!(
                    "the broker exited ({status}) before it was ready:\n{}",
                    std::fs::read_to_string(&self.log_path).unwrap_or_default()
                );
            }
            http_get(admin, "/readyz").is_some_and(|(code, _)| code == 200)
        };
        let log = self.log_path.clone();
        wait::poll()
            .every(Duration::from_millis(25))
            .within(GUARD)
            .until_or("the broker is ready", ready, || {
                std::fs::read_to_string(&log).unwrap_or_default()
            });
    }

    pub fn dir(&self) -> &Path {
        self.topology.dir()
    }

    /// `kill -9`s the broker, then starts it again on the same topology and data (its log
    /// goes on in the same file) and waits until it is ready.
    pub fn kill9_and_restart(&mut self) {
        self.child.kill9(MEMBER);
        self.child = launch(&self.topology.file(), &self.log_path);
        self.wait_ready();
    }

    /// The broker process's id.
    pub fn pid(&self) -> u32 {
        self.child.child.id()
    }

    fn listener(&self, name: &str) -> &ListenerDef {
        self.topology
            .listeners
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("the test topology has no listener named {name:?}"))
    }

    pub fn port(&self, name: &str) -> u16 {
        self.listener(name).port
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port(name)))
    }

    /// The listener's URL as written in the topology (the label of its metrics).
    pub fn url(&self, name: &str) -> String {
        let l = self.listener(name);
        format!("{}://127.0.0.1:{}", l.scheme, l.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `/metrics` as text.
    pub fn metrics(&self) -> String {
        match http_get(self.admin, "/metrics") {
            Some((200, body)) => body,
            other => panic!("GET /metrics failed: {other:?}"),
        }
    }

    /// The sum of every series of `name` whose labels include all of `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics(), name, labels)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // The guard kills and reaps the process.
        if std::thread::panicking() {
            eprintln!("----- broker log -----\n{}\n----- end -----", self.log());
        }
    }
}

/// A minimal HTTP/1.0 GET; `None` when the port does not answer.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// Sums the Prometheus text series of `name` whose labels include `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
            None => (series, HashMap::new()),
        };
        if series_name != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| series_labels.get(*k).map(String::as_str) == Some(*v))
        {
            sum += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

fn parse_labels(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(e);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    out
}

/// Runs `tests/stomp_py/<script> args…` with python3 and returns the JSON object it prints
/// last. Fails the test (with the script's output) when it exits non-zero or hangs, and when
/// a process it started outlives it or it leaves a file in its scratch `TMPDIR` (see
/// [`Script`]).
pub fn python(script: &str, args: &[String]) -> serde_json::Value {
    python_in("stomp_py", script, args)
}

/// [`python`] for a script of another folder under `tests/` (e.g. the paho-mqtt scripts).
pub fn python_in(folder: &str, script: &str, args: &[String]) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("temporary directory");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(folder)
        .join(script);
    // Its own process group and scratch TMPDIR: whatever it starts (chromedriver, Chromium)
    // ends with it, on every path.
    let mut child = Script::spawn(
        Command::new("python3")
            .arg(&path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).expect("stdout file"))
            .stderr(std::fs::File::create(&err_path).expect("stderr file")),
    )
    .expect(
        "python3 is needed for the stomp.py and paho-mqtt tests (make test-deps installs them)",
    );
    let limit = Duration::from_secs(120);
    let status = child.wait_timeout(limit);
    let left = child.end();
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    match status {
        None => {
            panic!("{script} {args:?} hung for {limit:?}\nstdout:\n{stdout}\nstderr:\n{stderr}")
        }
        Some(s) if !s.success() => {
            panic!("{script} {args:?} failed ({s})\nstdout:\n{stdout}\nstderr:\n{stderr}")
        }
        Some(_) => {}
    }
    if !stderr.trim().is_empty() {
        // A thread's traceback in a script that still exited 0: shown if the test fails.
        eprintln!("{script} wrote to stderr:\n{stderr}");
    }
    assert!(
        left.is_empty(),
        "{script} {args:?} left behind {left:?}: a script that ends must have ended every \
         process it started (chromedriver, Chromium) and removed its browser profile"
    );
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|e| {
        panic!("{script} printed no JSON result ({e})\nstdout:\n{stdout}\nstderr:\n{stderr}")
    })
}

/// Anything a STOMP client can talk through (TCP here; TLS streams in the TLS test).
pub trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

/// A blocking STOMP client that sends exactly what the test tells it to.
pub struct RawStomp {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    decoder: Decoder,
    pub version: Version,
}

impl RawStomp {
    /// Opens a TCP connection without saying anything.
    pub fn open(addr: SocketAddr) -> RawStomp {
        let s = TcpStream::connect_timeout(&addr, GUARD)
            .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        s.set_read_timeout(Some(GUARD)).expect("read timeout");
        s.set_nodelay(true).expect("nodelay");
        RawStomp::over(Box::new(s))
    }

    pub fn over(io: Box<dyn Io>) -> RawStomp {
        RawStomp {
            io,
            rbuf: BytesMut::new(),
            decoder: Decoder::new(Version::V1_2, Limits::default()),
            version: Version::V1_2,
        }
    }

    /// Sends CONNECT (1.2 unless `headers` name another accept-version) and returns the
    /// broker's answer: CONNECTED, or ERROR.
    pub fn handshake(&mut self, headers: &[(&str, &str)]) -> Frame {
        let mut f = Frame::new(Cmd::Connect);
        if !headers.iter().any(|(k, _)| *k == "accept-version") {
            f = f.with_header("accept-version", "1.2");
        }
        f = f.with_header("host", "localhost");
        for (k, v) in headers {
            f = f.with_header(*k, *v);
        }
        self.send(&f);
        let answer = self.recv().expect("an answer to CONNECT");
        if let Some(v) = answer.header("version") {
            self.version = match v {
                "1.0" => Version::V1_0,
                "1.1" => Version::V1_1,
                _ => Version::V1_2,
            };
            self.decoder.set_version(self.version);
        }
        answer
    }

    /// Connects and logs in; fails the test unless the broker answers CONNECTED.
    pub fn connect(addr: SocketAddr, headers: &[(&str, &str)]) -> RawStomp {
        let mut c = RawStomp::open(addr);
        let answer = c.handshake(headers);
        assert_eq!(
            answer.command,
            Cmd::Connected,
            "CONNECT to {addr} was refused: {:?}",
            answer.header("message")
        );
        c
    }

    pub fn send(&mut self, frame: &Frame) {
        let mut out = BytesMut::new();
        meshmq::stomp::encode(frame, self.version, &mut out);
        self.write_raw(&out);
    }

    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).expect("write to the broker");
        self.io.flush().expect("flush to the broker");
    }

    /// The next frame (heart-beats skipped); `None` once the broker closed the connection.
    pub fn recv(&mut self) -> Option<Frame> {
        loop {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Decoded::Frame(f)) => return Some(f),
                Ok(Decoded::Heartbeat) => continue,
                Ok(Decoded::NeedMore) => {}
                Err(e) => panic!("the broker sent a bad frame: {e}"),
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.io.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.rbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("nothing from the broker within {GUARD:?}")
                }
                Err(e) => panic!("read from the broker failed: {e}"),
            }
        }
    }

    /// The next frame, which must be a `command`.
    pub fn expect(&mut self, command: Cmd) -> Frame {
        match self.recv() {
            Some(f) if f.command == command => f,
            Some(f) => panic!(
                "expected {command}, got {} {:?} (message: {:?})",
                f.command,
                f.headers,
                f.header("message")
            ),
            None => panic!("expected {command}, the broker closed the connection"),
        }
    }

    /// Sends `frame` with a receipt and waits for it; MESSAGEs that arrive first are kept.
    pub fn request(&mut self, frame: Frame, receipt: &str, messages: &mut Vec<Frame>) {
        self.send(&frame.with_header("receipt", receipt));
        loop {
            let f = self
                .recv()
                .unwrap_or_else(|| panic!("connection closed before receipt {receipt}"));
            match f.command {
                Cmd::Receipt if f.header("receipt-id") == Some(receipt) => return,
                Cmd::Message => messages.push(f),
                _ => panic!(
                    "waiting for receipt {receipt}, got {} {:?}",
                    f.command, f.headers
                ),
            }
        }
    }

    /// Sends `frame` with a receipt and waits for it (no MESSAGE may come first).
    pub fn call(&mut self, frame: Frame, receipt: &str) {
        let mut messages = Vec::new();
        self.request(frame, receipt, &mut messages);
        assert!(
            messages.is_empty(),
            "unexpected MESSAGE before receipt {receipt}"
        );
    }

    /// Reads until the broker closes: the connection must end with one ERROR; returns its
    /// `message` header.
    pub fn expect_error_and_close(&mut self) -> String {
        let mut error = None;
        while let Some(f) = self.recv() {
            match f.command {
                Cmd::Error if error.is_none() => {
                    error = Some(f.header("message").unwrap_or("").to_string())
                }
                _ => panic!(
                    "expected ERROR then a close, got {} {:?}",
                    f.command, f.headers
                ),
            }
        }
        error.expect("the broker closed without an ERROR frame")
    }
}

/// A SEND frame with a text body.
pub fn send(destination: &str, body: &str) -> Frame {
    Frame::new(Cmd::Send)
        .with_header("destination", destination)
        .with_body(bytes::Bytes::copy_from_slice(body.as_bytes()))
}

/// A SUBSCRIBE frame.
pub fn subscribe(destination: &str, id: &str, ack: &str) -> Frame {
    Frame::new(Cmd::Subscribe)
        .with_header("destination", destination)
        .with_header("id", id)
        .with_header("ack", ack)
}

/// A client that keeps exchanging messages with itself through a queue on its own thread, to
/// show that what other connections do never disturbs it.
pub struct GoodClient {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    done: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GoodClient {
    pub fn start(addr: SocketAddr, queue: &str) -> GoodClient {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let mut c = RawStomp::connect(addr, &[]);
        c.call(subscribe(queue, "good", "client-individual"), "sub");
        let (stop2, done2, queue) = (stop.clone(), done.clone(), queue.to_string());
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                n += 1;
                let body = format!("good-{n}");
                let mut got = Vec::new();
                c.request(send(&queue, &body), &format!("r{n}"), &mut got);
                let m = match got.pop() {
                    Some(m) => m,
                    None => c.expect(Cmd::Message),
                };
                assert_eq!(
                    &m.body[..],
                    body.as_bytes(),
                    "the good client's own message"
                );
                let ack = m.header("ack").expect("ack header").to_string();
                c.send(&Frame::new(Cmd::Ack).with_header("id", ack));
                done2.store(n, Ordering::Relaxed);
            }
            c.call(Frame::new(Cmd::Disconnect), "bye");
        });
        let good = GoodClient {
            stop,
            done,
            thread: Some(thread),
        };
        good.progress();
        good
    }

    /// Waits until the client completes a few more round trips from now.
    pub fn progress(&self) {
        use std::sync::atomic::Ordering;
        let from = self.done.load(Ordering::Relaxed);
        let moved_on = || {
            assert!(
                !self.thread.as_ref().is_some_and(|t| t.is_finished()),
                "the good client's connection failed"
            );
            self.done.load(Ordering::Relaxed) >= from + 3
        };
        wait::poll()
            .every(Duration::from_millis(5))
            .within(GUARD)
            .until("the good client completes a few round trips", moved_on);
    }

    /// Stops it; fails the test if its connection failed at any point.
    pub fn finish(mut self) {
        self.progress();
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("the good client failed");
        }
    }
}

impl Drop for GoodClient {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The argon2 hash `meshmq passwd` would print for `password`.
pub fn hash(password: &str) -> String {
    meshmq::security::hash_password(password)
}

/// A multi-threaded runtime for the native client parts of a test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// `tcp://127.0.0.1:port` of a native listener.
pub fn native_url(broker: &Broker, name: &str) -> String {
    format!("tcp://{}", broker.addr(name))
}

/// A STOMP subscriber on its own thread: every MESSAGE body it gets, until a body `stop`;
/// `broken` is set if its connection ever ends or reports an error.
pub struct StompSubscriber {
    pub bodies: Arc<Mutex<Vec<String>>>,
    pub broken: Arc<AtomicBool>,
    pub thread: std::thread::JoinHandle<()>,
}

impl StompSubscriber {
    pub fn start(addr: std::net::SocketAddr, destination: &str) -> StompSubscriber {
        let mut c = RawStomp::connect(addr, &[]);
        c.call(
            Frame::new(Cmd::Subscribe)
                .with_header("id", "1")
                .with_header("destination", destination)
                .with_header("ack", "auto"),
            "subscribed",
        );
        let (bodies, broken) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(AtomicBool::new(false)),
        );
        let thread = {
            let (bodies, broken) = (bodies.clone(), broken.clone());
            std::thread::spawn(move || loop {
                match c.recv() {
                    Some(f) if f.command == Cmd::Message => {
                        let body = String::from_utf8_lossy(&f.body).into_owned();
                        if body == "stop" {
                            return;
                        }
                        bodies.lock().unwrap().push(body);
                    }
                    other => {
                        eprintln!("the STOMP subscriber's connection ended: {other:?}");
                        broken.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            })
        };
        StompSubscriber {
            bodies,
            broken,
            thread,
        }
    }

    pub fn count(&self) -> usize {
        self.bodies.lock().unwrap().len()
    }

    /// Whether it got a message with this body.
    pub fn got(&self, body: &str) -> bool {
        self.bodies.lock().unwrap().iter().any(|b| b == body)
    }
}
