//! A file-lock group of two real `meshmq broker` processes on one shared directory, as the
//! failover tests run it: the topology (group `g`, members `g-1` and `g-2`, one client
//! listener each), each member started and `kill -9`ed on its own, and a wait that shows both
//! members' logs when it gives up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use meshmq::server::admin::MemberStatus;

use super::topology::{self, Group, Topology};
use super::{free_ports, http_get, spawn_broker, ChildGuard, GUARD};

/// One member of the pair.
pub struct Member {
    pub name: String,
    /// Its client listener (of the scheme the pair was written with).
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    proc: Option<ChildGuard>,
    log: PathBuf,
}

impl Member {
    pub fn start(&mut self, topology: &Path) {
        self.proc = Some(spawn_broker(topology, &self.name, &self.log, &[]));
    }

    /// Sends `sig` to the running member (e.g. SIGSTOP, SIGCONT).
    pub fn signal(&self, sig: i32) {
        self.proc.as_ref().expect("running").signal(sig);
    }

    pub fn kill9(&mut self) {
        let mut p = self.proc.take().expect("running");
        p.signal(libc::SIGKILL);
        p.wait_timeout(GUARD).expect("SIGKILL ends the member");
    }

    /// SIGTERM (a graceful stop); waits until it has exited.
    pub fn stop(&mut self) {
        let mut p = self.proc.take().expect("running");
        p.signal(libc::SIGTERM);
        p.wait_timeout(GUARD).expect("SIGTERM ends the member");
    }

    pub fn status(&self) -> Option<MemberStatus> {
        match http_get(self.admin, "/status") {
            Ok((200, body)) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    /// Its role as `/status` reports it (`None` while it does not answer).
    pub fn role(&self) -> Option<String> {
        match http_get(self.admin, "/status") {
            Ok((200, body)) => serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|s| s["role"].as_str().map(str::to_string)),
            _ => None,
        }
    }

    pub fn ready(&self) -> bool {
        matches!(http_get(self.admin, "/readyz"), Ok((200, _)))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Writes `DIR/topology.toml`: mesh `mesh`, a file-lock group `g` sharing `DIR/shared` and
/// trying the lock every `lock_poll`, and its members `g-1` and `g-2`, each with an admin port
/// and a `scheme` listener on 127.0.0.1 and a log in `DIR`. Nothing is started.
pub fn file_lock_pair(
    dir: &Path,
    mesh: &str,
    scheme: &str,
    lock_poll: &str,
) -> (PathBuf, [Member; 2]) {
    let (group, members) = file_lock_group("g", "shared", lock_poll, scheme, dir);
    let topology = Topology::without_secret(mesh)
        .group(group)
        .write(dir, "topology.toml");
    (topology, members)
}

/// A file-lock group `name` for a topology (its members `NAME-1` and `NAME-2` sharing
/// `shared_dir`, each with an admin port and a `scheme` listener on 127.0.0.1), and the two
/// members to start from it, logging into `log_dir`.
pub fn file_lock_group(
    name: &str,
    shared_dir: &str,
    lock_poll: &str,
    scheme: &str,
    log_dir: &Path,
) -> (Group, [Member; 2]) {
    let p = free_ports(4);
    let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let member = |n: usize| {
        let name = format!("{name}-{n}");
        let (admin, listen) = (addr(p[2 * n - 2]), addr(p[2 * n - 1]));
        (
            topology::Member::new(&name, admin).listener(&format!("{scheme}://{listen}"), &[]),
            Member {
                log: log_dir.join(format!("{name}.log")),
                name,
                listen,
                admin,
                proc: None,
            },
        )
    };
    let ((w1, m1), (w2, m2)) = (member(1), member(2));
    (
        Group::file_lock(name, shared_dir, lock_poll).members([w1, w2]),
        [m1, m2],
    )
}

/// Waits (within the guard) until `cond` holds; on giving up, fails with every member's log.
pub fn wait_for(what: &str, members: &[Member], cond: impl FnMut() -> bool) {
    super::wait::poll().until_or(what, cond, || {
        let logs: Vec<String> = members
            .iter()
            .map(|m| format!("--- {} ---\n{}", m.name, m.log()))
            .collect();
        logs.join("\n")
    });
}
