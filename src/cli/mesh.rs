//! The topology commands: `broker`, `up`, `check` (`status` is in `status.rs`).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

use meshmq::config::{self, Topology};
use meshmq::server::{self, ServerOptions};

use super::http;

fn load(path: &Path) -> anyhow::Result<Topology> {
    config::load(path).map_err(|e| anyhow!("{e}"))
}

/// Refuses a topology that asks for features this build cannot serve.
fn refuse_unsupported(topo: &Topology) -> anyhow::Result<()> {
    let keys = topo.unsupported();
    if keys.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = keys
        .iter()
        .map(|k| format!("  not supported yet: {k}"))
        .collect();
    bail!(
        "{}: this build of meshmq cannot run this topology yet:\n{}\nremove these keys (or use a build that supports them)",
        topo.file.display(),
        list.join("\n")
    )
}

pub async fn broker(topology: &Path, member: &str, repair: bool) -> anyhow::Result<()> {
    let topo = load(topology)?;
    refuse_unsupported(&topo)?;
    let mut opts = ServerOptions::from_topology(&topo, member).map_err(|e| anyhow!("{e}"))?;
    opts.repair = repair;
    // Before serving: a SIGTERM sent as soon as /readyz answers must stop us gracefully.
    let mut signals = Signals::install()?;
    let running = server::start(opts).await?;
    let fatal = running.fatal();
    let token = running.shutdown_token();
    tokio::spawn(async move {
        signals.recv().await;
        token.cancel();
        tracing::info!("signal received: shutting down");
    });
    if !running.wait().await {
        tracing::warn!("some connections did not close within the shutdown timeout");
    }
    if let Some(cause) = fatal.cause() {
        bail!("member {member} stopped: {cause}");
    }
    tracing::info!("stopped");
    Ok(())
}

/// SIGINT and SIGTERM, caught from `install` on. Until a handler is installed a signal kills
/// the process outright (no graceful shutdown, and `up` would orphan its members), so install
/// before anything can be observed from outside; a signal that arrives while nobody is waiting
/// is kept for the next `recv`.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

fn prefix_lines(member: String, stream: impl tokio::io::AsyncRead + Unpin + Send + 'static) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            println!("[{member}] {line}");
        }
    });
}

/// Watches one child: reports its exit, or on `stop` sends SIGTERM and, after 10 s, SIGKILL.
async fn monitor(
    name: String,
    mut child: Child,
    mut stop: watch::Receiver<bool>,
    exits: mpsc::UnboundedSender<(String, String)>,
) {
    let status = tokio::select! {
        s = child.wait() => s,
        _ = stop.changed() => {
            if let Some(pid) = child.id() {
                // SAFETY: signalling our own child process.
                unsafe { libc::kill(pid as i32, libc::SIGTERM); }
            }
            match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
                Ok(s) => s,
                Err(_) => {
                    println!("member {name} did not stop within 10s: killing it");
                    let _ = child.kill().await;
                    child.wait().await
                }
            }
        }
    };
    let text = status
        .map(|s| s.to_string())
        .unwrap_or_else(|e| e.to_string());
    let _ = exits.send((name, text));
}

/// `meshmq up`: every member of the topology as a child process, logs prefixed, until Ctrl-C.
pub async fn up(topology: &Path) -> anyhow::Result<()> {
    let topo = load(topology)?;
    refuse_unsupported(&topo)?;
    let mut signals = Signals::install()?;
    let exe = std::env::current_exe()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel();
    let mut running = 0usize;
    for (_, member) in topo.members() {
        let spawned = Command::new(&exe)
            .args(["broker", "--topology"])
            .arg(topology)
            .args(["--member", member.name.as_str()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = stop_tx.send(true);
                bail!("cannot start member {}: {e}", member.name);
            }
        };
        if let Some(out) = child.stdout.take() {
            prefix_lines(member.name.to_string(), out);
        }
        if let Some(err) = child.stderr.take() {
            prefix_lines(member.name.to_string(), err);
        }
        tokio::spawn(monitor(
            member.name.to_string(),
            child,
            stop_rx.clone(),
            exit_tx.clone(),
        ));
        running += 1;
    }
    drop(exit_tx);
    // A group is ready when one member serves it (the others of an HA group stand by).
    for group in &topo.groups {
        let admins: Vec<_> = group.members.iter().map(|m| m.admin).collect();
        let ready = http::wait_any_ready(&admins, Duration::from_secs(30));
        tokio::select! {
            r = ready => if let Err(e) = r {
                stop_members(&stop_tx, &mut exit_rx).await;
                bail!("group {} has no master: {e}", group.name);
            },
            Some((name, status)) = exit_rx.recv() => {
                stop_members(&stop_tx, &mut exit_rx).await;
                bail!("member {name} exited before the mesh was ready ({status})");
            }
            _ = signals.recv() => {
                println!("stopping {running} members");
                stop_members(&stop_tx, &mut exit_rx).await;
                return Ok(());
            }
        }
    }
    print_urls(&topo);
    loop {
        tokio::select! {
            _ = signals.recv() => break,
            exit = exit_rx.recv() => match exit {
                Some((name, status)) => {
                    println!("member {name} exited ({status})");
                    running -= 1;
                    if running == 0 {
                        bail!("every member has exited");
                    }
                }
                None => bail!("every member has exited"),
            }
        }
    }
    println!("stopping {running} members");
    stop_members(&stop_tx, &mut exit_rx).await;
    Ok(())
}

async fn stop_members(
    stop: &watch::Sender<bool>,
    exits: &mut mpsc::UnboundedReceiver<(String, String)>,
) {
    let _ = stop.send(true);
    while let Some((name, status)) = exits.recv().await {
        println!("member {name} stopped ({status})");
    }
}

fn print_urls(topo: &Topology) {
    println!();
    println!("mesh {} is up:", topo.mesh);
    println!("{:<14} {:<12} {:<40} admin", "member", "group", "listeners");
    for (group, member) in topo.members() {
        let listeners: Vec<String> = member.listeners.iter().map(|l| l.url.to_string()).collect();
        println!(
            "{:<14} {:<12} {:<40} http://{}/status",
            member.name.as_str(),
            group.name.as_str(),
            listeners.join(" "),
            member.admin
        );
    }
    println!("press Ctrl-C to stop every member");
    println!();
}

/// `meshmq check`: validates and summarises; exit 1 when the topology is invalid or uses
/// features this build cannot serve.
pub fn check(topology: &Path, json: bool) -> anyhow::Result<()> {
    let topo = load(topology)?;
    let unsupported = topo.unsupported();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "file": topo.file.display().to_string(),
                "mesh": topo.mesh.as_str(),
                "groups": topo.groups.len(),
                "members": topo.members().count(),
                "connectors": topo.connectors.len(),
                "valid": true,
                "unsupported": unsupported,
            })
        );
    } else {
        println!("{}", topo.summary());
        println!("{}: valid", topo.file.display());
    }
    refuse_unsupported(&topo)
}
