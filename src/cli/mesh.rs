//! The topology commands: `broker`, `up`, `check` (`status` is in `status.rs`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

use meshmq::config::diff::{self, Restart};
use meshmq::config::{self, Election, Scheme, Topology};
use meshmq::server::{self, ServerOptions};

use super::{apply, http, status};

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

/// Set by a member that restarts itself (`POST /restart`) for the process it runs next: the
/// epoch in which it handed its file-lock group over to a standby.
pub const HANDED_OVER_ENV: &str = "MESHMQ_HANDED_OVER_AT";

/// Runs one member until it stops. Returns `Some(epoch)` when it stopped to run itself again
/// (`POST /restart`; see [`restart_self`]).
pub async fn broker(topology: &Path, member: &str, repair: bool) -> anyhow::Result<Option<u64>> {
    let topo = load(topology)?;
    refuse_unsupported(&topo)?;
    let mut opts = ServerOptions::from_topology(&topo, member).map_err(|e| anyhow!("{e}"))?;
    opts.repair = repair;
    opts.handed_over_at = std::env::var(HANDED_OVER_ENV)
        .ok()
        .and_then(|v| v.parse().ok());
    // Before serving: a SIGTERM sent as soon as /readyz answers must stop us gracefully.
    let mut signals = Signals::install()?;
    let running = server::start(opts).await?;
    let fatal = running.fatal();
    let restart = running.restart_request();
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
    if let Some(epoch) = restart.requested() {
        tracing::info!("stopped; running again to take the topology");
        return Ok(Some(epoch));
    }
    tracing::info!("stopped");
    Ok(None)
}

/// Replaces this process with a new run of the same command (`argv[0]`, found as the shell
/// would, so an upgraded binary installed in its place is the one that runs; the same
/// arguments, so the same `--topology` file, which the member saved first). The PID, the
/// parent and the standard streams stay, so a supervisor or `meshmq up` sees no exit. Every
/// other descriptor (sockets, the journal, the file lock) is close-on-exec. Returns only if
/// the exec failed.
pub fn restart_self(handed_over_at: u64) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let program = args.next().unwrap_or_else(|| "meshmq".into());
    let mut command = std::process::Command::new(&program);
    command.args(args);
    if handed_over_at > 0 {
        command.env(HANDED_OVER_ENV, handed_over_at.to_string());
    } else {
        command.env_remove(HANDED_OVER_ENV);
    }
    command.exec()
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
    mut stop_this: watch::Receiver<bool>,
    exits: mpsc::UnboundedSender<(String, String)>,
) {
    let status = tokio::select! {
        s = child.wait() => s,
        _ = async { tokio::select! { _ = stop.changed() => {}, _ = stop_this.changed() => {} } } => {
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

/// A member `up` started: its stdout and stderr prefixed with its name, watched by `monitor`.
/// Returns what stops this member alone (`stop` stops them all).
fn spawn_member(
    exe: &Path,
    topology: &Path,
    member: &str,
    stop: &watch::Receiver<bool>,
    exits: &mpsc::UnboundedSender<(String, String)>,
) -> anyhow::Result<watch::Sender<bool>> {
    let mut child = Command::new(exe)
        .args(["broker", "--topology"])
        .arg(topology)
        .args(["--member", member])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow!("cannot start member {member}: {e}"))?;
    if let Some(out) = child.stdout.take() {
        prefix_lines(member.to_string(), out);
    }
    if let Some(err) = child.stderr.take() {
        prefix_lines(member.to_string(), err);
    }
    let (stop_this, stop_this_rx) = watch::channel(false);
    tokio::spawn(monitor(
        member.to_string(),
        child,
        stop.clone(),
        stop_this_rx,
        exits.clone(),
    ));
    Ok(stop_this)
}

/// How `up` ended a wait: the wait finished, or a signal asks the mesh to stop.
enum Waited {
    Done,
    Interrupted,
}

/// `meshmq up`: every member of the topology as a child process, logs prefixed, until Ctrl-C,
/// following the file: a saved change is taken as `meshmq apply` takes it, and members that a
/// change needs restarted (or that were added or removed) are restarted one at a time.
///
/// The first member of each file-lock group starts alone and `up` waits until it serves before
/// starting the rest of its group: whichever member takes the lock first serves, so starting
/// them together made a different member master from one run to the next. The first member
/// listed is therefore the master every time (until it dies and a standby takes over). Members
/// of ZooKeeper groups start together, since their election needs a quorum of them.
pub async fn up(topology: &Path) -> anyhow::Result<()> {
    let topo = load(topology)?;
    refuse_unsupported(&topo)?;
    // Every member runs on this machine, so they share one secret file: make it if missing.
    if let Some(path) = &topo.bridges.secret_file {
        if meshmq::security::ensure_mesh_secret(path)? {
            println!("wrote a new mesh secret to {}", path.display());
        }
    }
    let mut signals = Signals::install()?;
    let exe = std::env::current_exe()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel();
    let (first, standby): (Vec<_>, Vec<_>) = topo.members().partition(|(g, m)| {
        g.election != Election::FileLock || g.members.first().map(|f| &f.name) == Some(&m.name)
    });
    let mut running = 0usize;
    let mut members: BTreeMap<String, watch::Sender<bool>> = BTreeMap::new();
    for (_, member) in &first {
        match spawn_member(&exe, topology, member.name.as_str(), &stop_rx, &exit_tx) {
            Ok(stop) => members.insert(member.name.to_string(), stop),
            Err(e) => {
                stop_members(&stop_tx, &mut exit_rx, running).await;
                return Err(e);
            }
        };
        running += 1;
    }
    // A group is ready when one member serves it (the others of an HA group stand by).
    for group in &topo.groups {
        let admins: Vec<_> = group.members.iter().map(|m| m.admin).collect();
        let ready = async {
            http::wait_any_ready(&admins, Duration::from_secs(30))
                .await
                .map(|_| ())
        };
        let what = format!("group {}", group.name);
        if let Waited::Interrupted =
            wait_or_stop(ready, &what, &mut signals, &stop_tx, &mut exit_rx, running).await?
        {
            println!("stopping {running} members");
            stop_members(&stop_tx, &mut exit_rx, running).await;
            return Ok(());
        }
    }
    for (_, member) in &standby {
        match spawn_member(&exe, topology, member.name.as_str(), &stop_rx, &exit_tx) {
            Ok(stop) => members.insert(member.name.to_string(), stop),
            Err(e) => {
                stop_members(&stop_tx, &mut exit_rx, running).await;
                return Err(e);
            }
        };
        running += 1;
    }
    // Standbys answer their admin port once they wait for the lock: the table shows them so.
    let standbys: Vec<_> = standby.iter().map(|(_, m)| m.admin).collect();
    let answering = http::wait_all_answer(&standbys, Duration::from_secs(30));
    let what = "the standby members";
    if let Waited::Interrupted = wait_or_stop(
        answering,
        what,
        &mut signals,
        &stop_tx,
        &mut exit_rx,
        running,
    )
    .await?
    {
        println!("stopping {running} members");
        stop_members(&stop_tx, &mut exit_rx, running).await;
        return Ok(());
    }
    print!("{}", up_table(&topo).await);
    println!(
        "following {}: saving a change applies it (in place where members can take it, else by restarting the members it concerns one at a time)",
        topology.display()
    );
    let mut up = Up {
        exe,
        file: topology.to_path_buf(),
        topo,
        text: std::fs::read_to_string(topology).unwrap_or_default(),
        members,
        running,
        stop: stop_rx,
        exits: exit_tx,
    };
    let mut look = tokio::time::interval(FOLLOW_INTERVAL);
    loop {
        tokio::select! {
            _ = signals.recv() => break,
            exit = exit_rx.recv() => match exit {
                Some((name, status)) => {
                    println!("member {name} exited ({status})");
                    up.exited(&name);
                    if up.running == 0 {
                        bail!("every member has exited");
                    }
                }
                None => bail!("every member has exited"),
            },
            _ = look.tick() => {
                if let Some(new) = up.file_changed() {
                    up.follow(new, &mut exit_rx).await;
                }
            }
        }
    }
    let running = up.running;
    println!("stopping {running} members");
    drop(up);
    stop_members(&stop_tx, &mut exit_rx, running).await;
    Ok(())
}

/// How often `up` looks at its file.
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// How long a member `up` (re)starts has to answer on its admin port.
const MEMBER_START: Duration = Duration::from_secs(30);

/// The mesh `up` runs, and the file it follows.
struct Up {
    exe: std::path::PathBuf,
    file: std::path::PathBuf,
    /// The topology the members run (the last valid version of the file taken).
    topo: Topology,
    /// The file's text last looked at (valid or not), so that one bad save is reported once.
    text: String,
    /// Each running member, with what stops it alone.
    members: BTreeMap<String, watch::Sender<bool>>,
    running: usize,
    stop: watch::Receiver<bool>,
    exits: mpsc::UnboundedSender<(String, String)>,
}

impl Up {
    fn exited(&mut self, name: &str) {
        if self.members.remove(name).is_some() {
            self.running -= 1;
        }
    }

    /// The file's new topology, when its text changed and it is valid (an invalid one is
    /// reported once and the mesh keeps running the last valid one).
    fn file_changed(&mut self) -> Option<Topology> {
        let text = std::fs::read_to_string(&self.file).ok()?;
        if text == self.text {
            return None;
        }
        self.text = text;
        match load(&self.file).and_then(|t| refuse_unsupported(&t).map(|()| t)) {
            Ok(t) => Some(t),
            Err(e) => {
                println!(
                    "{} changed but cannot be taken; the mesh keeps running the previous version:\n{e:#}",
                    self.file.display()
                );
                None
            }
        }
    }

    /// Takes `new`: members no longer in it stop, new ones start, running ones take what they
    /// can in place (with the file's `[admin]` token), and those a change needs restarted
    /// restart one at a time, each waited for before the next.
    async fn follow(
        &mut self,
        new: Topology,
        exits: &mut mpsc::UnboundedReceiver<(String, String)>,
    ) {
        let changes = diff::diff(&self.topo, &new);
        if changes.is_empty() {
            self.topo = new;
            return;
        }
        println!("{} changed:", self.file.display());
        for c in &changes {
            println!("  {}: {}", c.heading, c.what);
        }
        if let Some(path) = &new.bridges.secret_file {
            if let Err(e) = meshmq::security::ensure_mesh_secret(path) {
                println!(
                    "cannot write the mesh secret {}: {e}; not taken",
                    path.display()
                );
                return;
            }
        }
        let wanted: Vec<String> = new.members().map(|(_, m)| m.name.to_string()).collect();
        let gone: Vec<String> = self
            .members
            .keys()
            .filter(|m| !wanted.contains(m))
            .cloned()
            .collect();
        for name in gone {
            println!("stopping {name} (no longer in the file)");
            self.stop_one(&name, exits).await;
        }
        let mut restart: Vec<String> = Vec::new();
        for c in &changes {
            if let Restart::Members(names) = &c.restart {
                for n in names {
                    if self.members.contains_key(n) && !restart.contains(n) {
                        restart.push(n.clone());
                    }
                }
            }
        }
        let added: Vec<String> = wanted
            .iter()
            .filter(|m| !self.members.contains_key(*m))
            .cloned()
            .collect();
        for name in &added {
            println!("starting {name} (new in the file)");
            self.start_one(&new, name).await;
        }
        if changes.iter().any(|c| c.restart == Restart::No) {
            match apply::admin_token(&new) {
                Some(token) => {
                    if let Err(e) = apply::send(&new, &self.file, &token).await {
                        println!("could not send the new file to the members: {e:#}");
                    }
                }
                None => println!(
                    "changes members take in place need an [admin] token in the file (or MESHMQ_ADMIN_TOKEN): add one, or restart `meshmq up`"
                ),
            }
        }
        for name in restart {
            println!("restarting {name} to take the change");
            self.stop_one(&name, exits).await;
            self.start_one(&new, &name).await;
        }
        self.topo = new;
        print!("{}", up_table(&self.topo).await);
    }

    /// Stops one member and waits for it to exit (other members' exits are reported too).
    async fn stop_one(
        &mut self,
        name: &str,
        exits: &mut mpsc::UnboundedReceiver<(String, String)>,
    ) {
        let Some(stop) = self.members.get(name) else {
            return;
        };
        let _ = stop.send(true);
        while let Some((who, status)) = exits.recv().await {
            println!("member {who} stopped ({status})");
            self.exited(&who);
            if who == name {
                return;
            }
        }
    }

    /// Starts one member of `new` and waits until its admin port answers.
    async fn start_one(&mut self, new: &Topology, name: &str) {
        match spawn_member(&self.exe, &self.file, name, &self.stop, &self.exits) {
            Ok(stop) => {
                self.members.insert(name.to_string(), stop);
                self.running += 1;
            }
            Err(e) => {
                println!("{e:#}");
                return;
            }
        }
        if let Some((_, m)) = new.member(name) {
            if let Err(e) = http::wait_all_answer(&[m.admin], MEMBER_START).await {
                println!("member {name} does not answer yet: {e:#}");
            }
        }
    }
}

/// Waits for `wait`, unless a member exits first (the mesh stops and `up` fails) or a signal
/// comes (the caller stops the mesh).
async fn wait_or_stop(
    wait: impl std::future::Future<Output = anyhow::Result<()>>,
    what: &str,
    signals: &mut Signals,
    stop: &watch::Sender<bool>,
    exits: &mut mpsc::UnboundedReceiver<(String, String)>,
    running: usize,
) -> anyhow::Result<Waited> {
    tokio::select! {
        r = wait => match r {
            Ok(()) => Ok(Waited::Done),
            Err(e) => {
                stop_members(stop, exits, running).await;
                bail!("{what} is not up: {e}");
            }
        },
        Some((name, status)) = exits.recv() => {
            stop_members(stop, exits, running - 1).await;
            bail!("member {name} exited before the mesh was ready ({status})");
        }
        _ = signals.recv() => Ok(Waited::Interrupted),
    }
}

/// Stops every member and waits for the `running` ones to exit.
async fn stop_members(
    stop: &watch::Sender<bool>,
    exits: &mut mpsc::UnboundedReceiver<(String, String)>,
    mut running: usize,
) {
    let _ = stop.send(true);
    while running > 0 {
        let Some((name, status)) = exits.recv().await else {
            break;
        };
        println!("member {name} stopped ({status})");
        running -= 1;
    }
}

/// The table `up` prints once the mesh serves: every member with its role as its admin port
/// reports it (the master serves its listeners; a standby opens them only when it takes
/// over), and for each group the failover URL that reaches whichever member serves.
async fn up_table(topo: &Topology) -> String {
    let targets = status::targets(topo);
    let answers = status::ask_all(&targets, Duration::from_secs(2)).await;
    let mut out = format!("\nmesh {} is up:\n", topo.mesh);
    out += &format!(
        "{:<10} {:<10} {:<9} {:<44} admin\n",
        "group", "member", "role", "listeners"
    );
    for ((group, member), answer) in topo.members().zip(answers) {
        let role = match answer {
            Ok(s) if s.role == "master" => "serves".to_string(),
            Ok(s) if s.role == "slave" => "standby".to_string(),
            Ok(s) => s.role,
            Err(_) => "down".to_string(),
        };
        let listeners: Vec<String> = member.listeners.iter().map(|l| l.url.to_string()).collect();
        out += &format!(
            "{:<10} {:<10} {:<9} {:<44} http://{}/status\n",
            group.name.as_str(),
            member.name.as_str(),
            role,
            listeners.join(" "),
            member.admin
        );
    }
    out += "\nclients reach whichever member of a group serves through a failover URL:\n";
    for group in &topo.groups {
        for scheme in [Scheme::Tcp, Scheme::Stomp, Scheme::Mqtt] {
            let urls: Vec<String> = group
                .members
                .iter()
                .flat_map(|m| m.listeners.iter())
                .filter(|l| l.url.scheme == scheme)
                .map(|l| l.url.to_string())
                .collect();
            let url = match (scheme, urls.len()) {
                (_, 0) => continue,
                (_, 1) => urls[0].clone(),
                (Scheme::Tcp, _) => format!("failover:({})", urls.join(",")),
                // STOMP clients take a list of hosts themselves (stomp.py `host_and_ports`).
                _ => urls.join(" or "),
            };
            out += &format!("  {:<10} {url}\n", group.name.as_str());
        }
    }
    out += "press Ctrl-C to stop every member\n\n";
    out
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
