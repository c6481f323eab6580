//! A real ZooKeeper for the HA tests: a standalone server or a three-server ensemble on
//! 127.0.0.1, each server a `java … QuorumPeerMain zoo.cfg` child of the test (Debian's
//! `zookeeper` package, installed by `make test-deps`), with `tickTime=500` so 1–2 s sessions
//! are allowed. Servers can be killed, stopped and restarted on their own data directories;
//! dropping the [`ZooKeeper`] kills every server it started.
//!
//! Readiness and roles come from the `srvr` four-letter word (`ruok` answers `imok` even on a
//! server that has lost its quorum, so it is never trusted).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::{free_ports, ChildGuard};

const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";
const SLF4J_SIMPLE_JAR: &str = "/usr/share/java/slf4j-simple.jar";

/// What `srvr` says a server is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Standalone,
    Leader,
    Follower,
}

struct Server {
    client_port: u16,
    dir: PathBuf,
    proc: Option<ChildGuard>,
}

/// One ZooKeeper deployment owned by a test.
pub struct ZooKeeper {
    servers: Vec<Server>,
    /// The loopback address every server binds.
    ip: std::net::Ipv4Addr,
    _dir: TempDir,
}

impl ZooKeeper {
    /// One standalone server, serving when this returns.
    pub fn standalone() -> ZooKeeper {
        ZooKeeper::start(1, std::net::Ipv4Addr::LOCALHOST)
    }

    /// One standalone server bound to `ip` (a test's own loopback address, so iptables rules
    /// can name it), serving when this returns.
    pub fn standalone_on(ip: std::net::Ipv4Addr) -> ZooKeeper {
        ZooKeeper::start(1, ip)
    }

    /// A three-server ensemble with a leader and two followers serving when this returns.
    pub fn ensemble() -> ZooKeeper {
        ZooKeeper::start(3, std::net::Ipv4Addr::LOCALHOST)
    }

    fn start(n: usize, ip: std::net::Ipv4Addr) -> ZooKeeper {
        assert!(
            Path::new(ZOOKEEPER_JAR).exists(),
            "{ZOOKEEPER_JAR} is missing: install Debian's zookeeper package (`make test-deps`)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        // Three ports per server: clients, followers to the leader, leader election.
        let ports = free_ports(3 * n);
        let peers: String = (0..n)
            .map(|i| {
                format!(
                    "server.{}={ip}:{}:{}\n",
                    i + 1,
                    ports[3 * i + 1],
                    ports[3 * i + 2]
                )
            })
            .collect();
        let servers = (0..n)
            .map(|i| {
                let sdir = dir.path().join(format!("zk-{}", i + 1));
                let data = sdir.join("data");
                std::fs::create_dir_all(&data).expect("zookeeper data dir");
                let mut cfg = format!(
                    "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={}\n\
                     clientPortAddress={ip}\nmaxClientCnxns=0\nadmin.enableServer=false\n\
                     4lw.commands.whitelist=ruok,srvr,stat,mntr\n",
                    data.display(),
                    ports[3 * i]
                );
                if n > 1 {
                    cfg.push_str(&peers);
                    std::fs::write(data.join("myid"), format!("{}\n", i + 1)).expect("myid");
                }
                std::fs::write(sdir.join("zoo.cfg"), cfg).expect("zoo.cfg");
                Server {
                    client_port: ports[3 * i],
                    dir: sdir,
                    proc: None,
                }
            })
            .collect();
        let mut zk = ZooKeeper {
            servers,
            ip,
            _dir: dir,
        };
        for i in 0..n {
            zk.restart(i);
        }
        zk.wait_serving();
        zk
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// `127.0.0.1:P1,127.0.0.1:P2,…` for the topology's `[zookeeper] connect`.
    pub fn connect_string(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("{}:{}", self.ip, s.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn client_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from((self.ip, self.servers[i].client_port))
    }

    /// Starts server `i` (again) on its configuration and data; does not wait.
    pub fn restart(&mut self, i: usize) {
        let server = &mut self.servers[i];
        assert!(server.proc.is_none(), "zookeeper {} is running", i + 1);
        let log = File::options()
            .create(true)
            .append(true)
            .open(server.dir.join("zookeeper.log"))
            .expect("zookeeper log");
        let child = Command::new("java")
            // A small, quickly started JVM: the tests run on two loaded cores.
            .args([
                "-Xmx256m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-cp",
                &format!("{ZOOKEEPER_JAR}:{SLF4J_SIMPLE_JAR}"),
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            ])
            .arg(server.dir.join("zoo.cfg"))
            .current_dir(&server.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn java (is a JRE installed? `make test-deps`)");
        server.proc = Some(ChildGuard::new(child));
    }

    /// `kill -9` server `i` and reap it.
    pub fn kill9(&mut self, i: usize) {
        self.servers[i]
            .proc
            .take()
            .unwrap_or_else(|| panic!("zookeeper {} is not running", i + 1))
            .kill9(&format!("zookeeper {}", i + 1));
    }

    /// `kill -9` every running server.
    pub fn kill_all(&mut self) {
        for i in 0..self.servers.len() {
            if self.servers[i].proc.is_some() {
                self.kill9(i);
            }
        }
    }

    /// Restarts every server that is not running, and waits until the deployment serves.
    pub fn restart_all(&mut self) {
        for i in 0..self.servers.len() {
            if self.servers[i].proc.is_none() {
                self.restart(i);
            }
        }
        self.wait_serving();
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.servers[i].proc.is_some()
    }

    /// The `srvr` answer of server `i`, or `None` when it does not answer.
    pub fn srvr(&self, i: usize) -> Option<String> {
        four_letter_word(self.client_addr(i), "srvr")
    }

    /// What server `i` is doing, or `None` when it does not answer or is not serving.
    pub fn mode(&self, i: usize) -> Option<Mode> {
        let text = self.srvr(i)?;
        let mode = text.lines().find_map(|l| l.strip_prefix("Mode: "))?;
        match mode.trim() {
            "standalone" => Some(Mode::Standalone),
            "leader" => Some(Mode::Leader),
            "follower" => Some(Mode::Follower),
            _ => None,
        }
    }

    /// The index of the ensemble's leader (the standalone server counts as one).
    pub fn leader(&self) -> Option<usize> {
        (0..self.servers.len())
            .filter(|&i| self.is_running(i))
            .find(|&i| matches!(self.mode(i), Some(Mode::Leader | Mode::Standalone)))
    }

    /// Waits (within the guard) until every running server serves: a standalone server, or a
    /// leader and a follower for each other running server.
    pub fn wait_serving(&self) {
        let last = std::cell::RefCell::new(Vec::new());
        let serving = || {
            let running: Vec<usize> = (0..self.servers.len())
                .filter(|&i| self.is_running(i))
                .collect();
            let modes: Vec<Option<Mode>> = running.iter().map(|&i| self.mode(i)).collect();
            let serving = if self.servers.len() == 1 {
                modes == [Some(Mode::Standalone)]
            } else {
                modes.iter().filter(|m| **m == Some(Mode::Leader)).count() == 1
                    && modes.iter().all(|m| m.is_some())
            };
            *last.borrow_mut() = modes;
            serving
        };
        super::wait::poll()
            .every(Duration::from_millis(50))
            .until_or("zookeeper serves", serving, || {
                format!("(modes {:?})\n{}", last.borrow(), self.logs())
            });
    }

    /// Every server's log, for failure messages.
    pub fn logs(&self) -> String {
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let log = std::fs::read_to_string(s.dir.join("zookeeper.log")).unwrap_or_default();
                // The tail is what explains a failure; the head is the JVM starting.
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- zookeeper {} (tail) ---\n{}", i + 1, tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Sends a four-letter word and reads the whole answer; `None` when nobody answers.
pub fn four_letter_word(addr: SocketAddr, word: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(word.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    (!out.is_empty()).then_some(out)
}
