//! A file-lock group of two real `meshmq broker` processes on one shared directory, as the
//! failover tests run it: the topology (group `g`, members `g-1` and `g-2`, one client
//! listener each), each member started and `kill -9`ed on its own, and a wait that shows both
//! members' logs when it gives up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use meshmq::server::admin::MemberStatus;

use super::{free_ports, http_get, spawn_broker, ChildGuard, GUARD};

/// One member of the pair.
pub struct Member {
    pub name: &'static str,
    /// Its client listener (of the scheme the pair was written with).
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    proc: Option<ChildGuard>,
    log: PathBuf,
}

impl Member {
    pub fn start(&mut self, topology: &Path) {
        self.proc = Some(spawn_broker(topology, self.name, &self.log, &[]));
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
    let p = free_ports(4);
    let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let topology = dir.join("topology.toml");
    std::fs::write(
        &topology,
        format!(
            r#"[mesh]
name = "{mesh}"

[[group]]
name = "g"
election = "file-lock"
shared_dir = "shared"
lock_poll = "{lock_poll}"

[[group.member]]
name = "g-1"
admin = "127.0.0.1:{}"
[[group.member.listener]]
url = "{scheme}://127.0.0.1:{}"

[[group.member]]
name = "g-2"
admin = "127.0.0.1:{}"
[[group.member.listener]]
url = "{scheme}://127.0.0.1:{}"
"#,
            p[0], p[1], p[2], p[3]
        ),
    )
    .expect("write topology");
    let member = |name: &'static str, admin: u16, listen: u16| Member {
        name,
        listen: addr(listen),
        admin: addr(admin),
        proc: None,
        log: dir.join(format!("{name}.log")),
    };
    (
        topology,
        [member("g-1", p[0], p[1]), member("g-2", p[2], p[3])],
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
