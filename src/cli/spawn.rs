//! Brokers the CLI starts as child processes from a generated topology (benchmarks).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::process::Child;

use meshmq::server::admin::MemberStatus;

use super::http;

/// A free TCP port on 127.0.0.1 (the listener is released at once).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Members of one topology running as children of this process.
pub struct Spawned {
    _dir: tempfile::TempDir,
    children: Vec<Child>,
    pub admins: Vec<SocketAddr>,
}

impl Spawned {
    /// Writes `topology` and starts each `(member, admin address)`; waits until all are ready.
    pub async fn start(topology: &str, members: &[(&str, SocketAddr)]) -> anyhow::Result<Spawned> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("topology.toml");
        std::fs::write(&path, topology)?;
        let mut children = Vec::new();
        for (member, _) in members {
            let log = std::fs::File::create(dir.path().join(format!("{member}.log")))?;
            let child = tokio::process::Command::new(std::env::current_exe()?)
                .args(["broker", "--topology"])
                .arg(&path)
                .args(["--member", member])
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start member {member}"))?;
            children.push(child);
        }
        let spawned = Spawned {
            _dir: dir,
            children,
            admins: members.iter().map(|(_, a)| *a).collect(),
        };
        for admin in &spawned.admins {
            http::wait_ready(*admin, Duration::from_secs(20)).await?;
        }
        Ok(spawned)
    }

    pub async fn status(&self, member: usize) -> Option<MemberStatus> {
        let (code, body) = http::get(*self.admins.get(member)?, "/status", Duration::from_secs(5))
            .await
            .ok()?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// SIGTERM to every member, then waits for them.
    pub async fn stop(mut self) {
        for child in &self.children {
            if let Some(pid) = child.id() {
                // SAFETY: sending a signal to our own child process.
                unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                }
            }
        }
        for child in &mut self.children {
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }
}
