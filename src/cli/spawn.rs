//! Brokers the CLI starts as child processes from a generated topology (benchmarks).

use std::net::SocketAddr;
use std::path::PathBuf;
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
    dir: tempfile::TempDir,
    topology: PathBuf,
    names: Vec<String>,
    children: Vec<Option<Child>>,
    pub admins: Vec<SocketAddr>,
}

impl Spawned {
    /// Writes `topology` and starts each `(member, admin address)`; waits until all are ready.
    pub async fn start(topology: &str, members: &[(&str, SocketAddr)]) -> anyhow::Result<Spawned> {
        let spawned = Spawned::launch(topology, members)?;
        for admin in &spawned.admins {
            http::wait_ready(*admin, Duration::from_secs(20)).await?;
        }
        Ok(spawned)
    }

    /// Writes `topology` and starts each member without waiting (standbys never get ready).
    pub fn launch(topology: &str, members: &[(&str, SocketAddr)]) -> anyhow::Result<Spawned> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("topology.toml");
        std::fs::write(&path, topology)?;
        // What a generated topology's `secret_file = "mesh.secret"` names.
        meshmq::security::ensure_mesh_secret(&dir.path().join("mesh.secret"))?;
        let mut spawned = Spawned {
            dir,
            topology: path,
            names: members.iter().map(|(m, _)| m.to_string()).collect(),
            children: Vec::new(),
            admins: members.iter().map(|(_, a)| *a).collect(),
        };
        for i in 0..members.len() {
            let child = spawned.spawn(i)?;
            spawned.children.push(Some(child));
        }
        Ok(spawned)
    }

    fn spawn(&self, i: usize) -> anyhow::Result<Child> {
        let member = &self.names[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{member}.log")))?;
        tokio::process::Command::new(std::env::current_exe()?)
            .args(["broker", "--topology"])
            .arg(&self.topology)
            .args(["--member", member])
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start member {member}"))
    }

    /// `kill -9` of member `i`; waits until it is gone.
    pub async fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.children.get_mut(i).and_then(Option::take) {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Starts member `i` again (after `kill9`).
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let child = self.spawn(i)?;
        self.children[i] = Some(child);
        Ok(())
    }

    pub async fn status(&self, member: usize) -> Option<MemberStatus> {
        let (code, body) = http::get(*self.admins.get(member)?, "/status", Duration::from_secs(5))
            .await
            .ok()?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// SIGTERM to every member, then waits for them.
    pub async fn stop(mut self) {
        for child in self.children.iter().flatten() {
            if let Some(pid) = child.id() {
                // SAFETY: sending a signal to our own child process.
                unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                }
            }
        }
        for child in self.children.iter_mut().flatten() {
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }
}
