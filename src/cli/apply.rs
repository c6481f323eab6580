//! `meshmq plan T` and `meshmq apply T`: change a running mesh to a new topology file without
//! restarting it; `meshmq apply --rolling T` also restarts, one at a time, the members a change
//! needs restarted.
//!
//! Owns: asking the members (every member `T` lists, and every member the running members'
//! topologies list) what they run, printing the difference group by group, sending `T` to each
//! member of `T`, and the order and pacing of a rolling restart. Must not touch: the members'
//! processes (it never starts, stops or signals one: a member restarts itself when asked on its
//! authenticated admin port, so the roll works for members on other machines). Invariants: an
//! invalid `T` is refused before any member is asked to change (the checker's errors are
//! printed); each member answers for itself, so a partial apply reports exactly which members
//! took the file, and running it again is safe (a member already running the file changes
//! nothing); a roll restarts one member at a time — standbys before their master, so a master
//! hands over to a member that already runs `T` — and asks for the next only once the last is
//! back with `T` and its group serves; a member that does not come back stops the roll.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail};

use meshmq::config::{self, diff, Member, Topology};
use meshmq::server::admin::MemberStatus;
use meshmq::server::live::{ApplyOutcome, RunningTopology};

use super::http;

/// How long each member has to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The exit status when some member did not take the file (unreachable or refused).
pub const PARTIAL_EXIT: u8 = 4;

#[derive(clap::Args)]
pub struct PlanArgs {
    /// The new topology file.
    pub topology: PathBuf,
}

#[derive(clap::Args)]
#[command(
    after_help = "The admin token sent is MESHMQ_ADMIN_TOKEN when set, otherwise the \
[admin] token of the file. Exit status: 0 when every member of the file took it (and, with \
--rolling, every member to restart is back with it); 4 when some did not (the output says which; \
run it again once they are reachable) or a member did not come back from its restart (the roll \
stops there); 1 when the file is invalid (nothing was changed)."
)]
pub struct ApplyArgs {
    /// The new topology file.
    pub topology: PathBuf,
    /// Then restart, one at a time, the members a change needs restarted (each drains — its
    /// clients move, a master hands its group to a standby — and runs itself again with the
    /// new file), waiting for each to be back before the next.
    #[arg(long)]
    pub rolling: bool,
    /// With --rolling: how long a restarting member has to drain, run again and serve or
    /// stand by with the new file (and its group to have a master) before the roll stops.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub member_timeout: Duration,
    /// With --rolling: how long a member waits for its clients to move before it restarts
    /// anyway (those left reconnect through their failover URLs).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
}

fn load(path: &Path) -> anyhow::Result<Topology> {
    config::load(path).map_err(|e| {
        anyhow!(
            "{} is not a valid topology; nothing was changed:\n{e}",
            path.display()
        )
    })
}

/// What one member answered to `GET /topology`.
enum Report {
    Runs(RunningTopology),
    Unreachable(String),
}

async fn ask(addr: SocketAddr) -> Report {
    match http::get(addr, "/topology", ANSWER_TIMEOUT).await {
        Ok((200, body)) => match serde_json::from_str(&body) {
            Ok(r) => Report::Runs(r),
            Err(e) => Report::Unreachable(format!("answered something else than a topology: {e}")),
        },
        Ok((code, body)) => Report::Unreachable(format!("answered {code}: {}", body.trim())),
        Err(e) => Report::Unreachable(format!("{e:#}")),
    }
}

/// Every member of `new`, and every member the running ones name that `new` does not, with
/// what each runs. Members are asked concurrently.
async fn survey(new: &Topology) -> BTreeMap<String, (SocketAddr, Report)> {
    let mut asked: BTreeMap<String, (SocketAddr, Report)> = BTreeMap::new();
    let mut queue: Vec<(String, SocketAddr)> = new
        .members()
        .map(|(_, m)| (m.name.to_string(), m.admin))
        .collect();
    while !queue.is_empty() {
        let round: Vec<_> = queue
            .drain(..)
            .filter(|(name, _)| !asked.contains_key(name))
            .map(|(name, addr)| async move { (name, addr, ask(addr).await) })
            .collect();
        let answers = futures_join(round).await;
        for (name, addr, report) in answers {
            if let Report::Runs(r) = &report {
                if let Ok(t) = config::parse_str(&r.text, Path::new(&r.file)) {
                    for (_, m) in t.members() {
                        if !asked.contains_key(m.name.as_str())
                            && !queue.iter().any(|(n, _)| n == m.name.as_str())
                        {
                            queue.push((m.name.to_string(), m.admin));
                        }
                    }
                }
            }
            asked.insert(name, (addr, report));
        }
    }
    asked
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join<F: std::future::Future + Send + 'static>(futures: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("a member query panicked"));
    }
    out
}

/// `meshmq plan T`: prints what applying `T` would change, group by group.
pub async fn plan(args: &PlanArgs) -> anyhow::Result<()> {
    let new = load(&args.topology)?;
    let members = survey(&new).await;
    print!("{}", render_plan(&new, &members));
    Ok(())
}

fn render_plan(new: &Topology, members: &BTreeMap<String, (SocketAddr, Report)>) -> String {
    let mut out = String::new();
    // Members grouped by the file they run (a partial apply leaves two versions running).
    let mut versions: Vec<(String, Vec<&str>, &RunningTopology)> = Vec::new();
    let mut down: Vec<String> = Vec::new();
    for (name, (addr, report)) in members {
        match report {
            Report::Runs(r) => match versions.iter_mut().find(|(t, _, _)| *t == r.text) {
                Some((_, names, _)) => names.push(name),
                None => versions.push((r.text.clone(), vec![name.as_str()], r)),
            },
            Report::Unreachable(e) => {
                let listed = if new.member(name).is_some() {
                    ""
                } else {
                    " (not in the new file)"
                };
                down.push(format!("  {name} (admin {addr}){listed}: {e}"));
            }
        }
    }
    if versions.is_empty() {
        out.push_str("no member of the mesh answered: nothing runs to compare with\n");
    }
    for (_, names, running) in &versions {
        out.push_str(&format!(
            "{} run{} {} (version {}):\n",
            names.join(", "),
            if names.len() == 1 { "s" } else { "" },
            running.file,
            running.version
        ));
        match config::parse_str(&running.text, Path::new(&running.file)) {
            Ok(old) => {
                let changes = diff::diff(&old, new);
                if changes.is_empty() {
                    out.push_str("  no difference\n");
                } else {
                    for line in diff::render(&changes).lines() {
                        out.push_str("  ");
                        out.push_str(line);
                        out.push('\n');
                    }
                }
            }
            Err(e) => out.push_str(&format!("  its file no longer parses here: {e}\n")),
        }
    }
    let pending: Vec<String> = members
        .iter()
        .filter_map(|(name, (_, r))| match r {
            Report::Runs(r) if !r.restart_pending.is_empty() => {
                Some(format!("  {name}: {}", r.restart_pending.join("; ")))
            }
            _ => None,
        })
        .collect();
    if !pending.is_empty() {
        out.push_str("already taken, waiting for a restart:\n");
        out.push_str(&pending.join("\n"));
        out.push('\n');
    }
    if !down.is_empty() {
        out.push_str("not answering (not compared):\n");
        out.push_str(&down.join("\n"));
        out.push('\n');
    }
    out
}

/// `meshmq apply T`: every member of `T` takes it without restarting; with `--rolling`, the
/// members a change needs restarted are then restarted one at a time. Returns whether every
/// member took it (and came back, when rolling).
pub async fn apply(args: &ApplyArgs) -> anyhow::Result<bool> {
    let new = load(&args.topology)?;
    let Some(token) = admin_token(&new) else {
        bail!(
            "{} has no [admin] token and MESHMQ_ADMIN_TOKEN is not set: members take a new topology only from a writer that presents their admin token",
            args.topology.display()
        )
    };
    let sent = send(&new, &args.topology, &token).await?;
    if sent.restart.is_empty() {
        return Ok(sent.all_took);
    }
    if !args.rolling {
        println!(
            "still to restart for the changes above: {}; `meshmq apply --rolling {}` restarts them one at a time",
            sent.restart.join(", "),
            args.topology.display()
        );
        return Ok(sent.all_took);
    }
    if !sent.all_took {
        println!(
            "not rolling: not every member took the file (restarting some would leave the group running two versions); run it again once they are reachable"
        );
        return Ok(false);
    }
    roll(&new, &sent.restart, &token, args).await
}

/// What [`send`] found.
pub struct Sent {
    /// Every member of the file took it.
    pub all_took: bool,
    /// Members that took it with changes only a restart applies, in file order.
    pub restart: Vec<String>,
}

/// The group members' order for a roll: standbys first, the serving master last (it then
/// hands its group over to a member that already runs the new file).
async fn next_to_restart(left: &[&Member]) -> usize {
    for (i, m) in left.iter().enumerate() {
        if !matches!(
            http::get(m.admin, "/readyz", ANSWER_TIMEOUT).await,
            Ok((200, _))
        ) {
            return i;
        }
    }
    0
}

/// Restarts `members` one at a time (group by group, in file order), each back with `new`
/// before the next. Returns false when one did not come back (the roll stops there).
async fn roll(
    new: &Topology,
    members: &[String],
    token: &str,
    args: &ApplyArgs,
) -> anyhow::Result<bool> {
    let mut done: Vec<String> = Vec::new();
    for group in &new.groups {
        let mut left: Vec<&Member> = group
            .members
            .iter()
            .filter(|m| members.iter().any(|n| n == m.name.as_str()))
            .collect();
        while !left.is_empty() {
            let m = left.remove(next_to_restart(&left).await);
            let started = tokio::time::Instant::now();
            println!("restarting {} (group {})", m.name, group.name);
            let path = format!("/restart?timeout={}ms", args.drain_timeout.as_millis());
            let refused = match http::post_bearer(m.admin, &path, token, ANSWER_TIMEOUT).await {
                Ok((202, _)) => None,
                Ok((code, body)) => Some(format!("REFUSED ({code}): {}", body.trim())),
                Err(e) => Some(format!("NOT REACHED: {e:#}")),
            };
            let outcome = match refused {
                Some(r) => Err(r),
                None => back(m, group, new, args.member_timeout).await,
            };
            match outcome {
                Ok(role) => {
                    println!(
                        "  {} is back as {role} with the new file after {:.1}s; group {} serves",
                        m.name,
                        started.elapsed().as_secs_f64(),
                        group.name
                    );
                    done.push(m.name.to_string());
                }
                Err(e) => {
                    println!("  {}: {e}", m.name);
                    let rest: Vec<&str> = members
                        .iter()
                        .map(String::as_str)
                        .filter(|n| *n != m.name.as_str() && !done.iter().any(|d| d == n))
                        .collect();
                    println!(
                        "the roll stopped at {}; restarted: {}; not restarted: {}",
                        m.name,
                        if done.is_empty() {
                            "none".to_string()
                        } else {
                            done.join(", ")
                        },
                        if rest.is_empty() {
                            "none".to_string()
                        } else {
                            rest.join(", ")
                        }
                    );
                    return Ok(false);
                }
            }
        }
    }
    println!(
        "every member to restart runs the new file: {}",
        done.join(", ")
    );
    Ok(true)
}

/// Waits until `m` runs again — a new process (its uptime began after the request) that reads
/// `new` and has nothing waiting for a restart — as master or standby, and its group has a
/// master. Returns its role.
async fn back(
    m: &Member,
    group: &config::Group,
    new: &Topology,
    timeout: Duration,
) -> Result<String, String> {
    let asked = tokio::time::Instant::now();
    let deadline = asked + timeout;
    let mut last = "did not answer".to_string();
    loop {
        let status = match http::get(m.admin, "/status", ANSWER_TIMEOUT).await {
            Ok((200, body)) => serde_json::from_str::<MemberStatus>(&body).ok(),
            _ => None,
        };
        let running = match http::get(m.admin, "/topology", ANSWER_TIMEOUT).await {
            Ok((200, body)) => serde_json::from_str::<RunningTopology>(&body).ok(),
            _ => None,
        };
        if let (Some(s), Some(r)) = (status, running) {
            let fresh = s.uptime_seconds < asked.elapsed().as_secs_f64();
            last = format!(
                "runs as {} (up {:.1}s, version {})",
                s.role, s.uptime_seconds, r.version
            );
            if fresh && r.text == new.source.text() && r.restart_pending.is_empty() {
                if s.role == "master" || s.role == "slave" {
                    let mut serving = false;
                    for other in &group.members {
                        if matches!(
                            http::get(other.admin, "/readyz", ANSWER_TIMEOUT).await,
                            Ok((200, _))
                        ) {
                            serving = true;
                        }
                    }
                    if serving {
                        return Ok(if s.role == "slave" {
                            "standby".into()
                        } else {
                            s.role
                        });
                    }
                    last = format!(
                        "is back as {}, but group {} has no master yet",
                        s.role, group.name
                    );
                }
            } else if fresh {
                last = format!("{last}, but not with the new file");
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "DID NOT COME BACK within {}: {last}",
                humantime::format_duration(timeout)
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The admin token a writer presents: `MESHMQ_ADMIN_TOKEN` when set, else the file's.
pub fn admin_token(topo: &Topology) -> Option<String> {
    match std::env::var("MESHMQ_ADMIN_TOKEN") {
        Ok(t) if !t.is_empty() => Some(t),
        _ => topo.admin.token.as_ref().map(|t| t.expose().to_string()),
    }
}

/// Sends `new` (read from `path`) to every member it lists and prints what each did.
pub async fn send(new: &Topology, path: &Path, token: &str) -> anyhow::Result<Sent> {
    let file = std::path::absolute(path)?;
    let body = serde_json::to_string(&meshmq::server::admin::topology::TopologyWrite {
        file: file.display().to_string(),
        text: new.source.text().to_string(),
    })?;
    let members = survey(new).await;
    let targets: Vec<(String, SocketAddr)> = new
        .members()
        .map(|(_, m)| (m.name.to_string(), m.admin))
        .collect();
    let sends: Vec<_> = targets
        .iter()
        .map(|(name, addr)| {
            let (name, addr, body, token) = (name.clone(), *addr, body.clone(), token.to_string());
            async move {
                let r = http::put_json(addr, "/topology", Some(&token), body, ANSWER_TIMEOUT).await;
                (name, addr, r)
            }
        })
        .collect();
    let mut all_took = true;
    let mut restart: Vec<String> = Vec::new();
    let mut lines = Vec::new();
    // Each change once, in the order members reported them.
    let mut changes: Vec<String> = Vec::new();
    for (name, addr, result) in futures_join(sends).await {
        let line = match result {
            Ok((200, body)) => match serde_json::from_str::<ApplyOutcome>(&body) {
                Ok(o) if o.applied.is_empty() && o.restart_pending.is_empty() => {
                    format!(
                        "  {name}: took it (nothing to change; version {})",
                        o.version
                    )
                }
                Ok(o) => {
                    for c in &o.applied {
                        if !changes.contains(c) {
                            changes.push(c.clone());
                        }
                    }
                    let mut l = format!(
                        "  {name}: took it (version {}): {} change{} in place",
                        o.version,
                        o.applied.len(),
                        if o.applied.len() == 1 { "" } else { "s" }
                    );
                    if !o.restart_pending.is_empty() {
                        restart.push(name.clone());
                        l.push_str(&format!(
                            "; at its next restart: {}",
                            o.restart_pending.join("; ")
                        ));
                    }
                    l
                }
                Err(e) => {
                    all_took = false;
                    format!("  {name}: unknown outcome (answered 200 with {e})")
                }
            },
            Ok((code, body)) => {
                all_took = false;
                let error = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                    .unwrap_or(body);
                format!("  {name}: REFUSED ({code}): {}", error.trim())
            }
            Err(e) => {
                all_took = false;
                format!("  {name}: NOT REACHED (admin {addr}): {e:#}")
            }
        };
        lines.push(line);
    }
    println!("apply {}:", file.display());
    if !changes.is_empty() {
        println!("taken in place:");
        for c in &changes {
            println!("  {c}");
        }
    }
    println!("members:");
    for l in &lines {
        println!("{l}");
    }
    let removed: Vec<String> = members
        .iter()
        .filter(|(name, (_, r))| new.member(name).is_none() && matches!(r, Report::Runs(_)))
        .map(|(name, _)| name.clone())
        .collect();
    if !removed.is_empty() {
        println!(
            "still running but no longer in the file (stop them once drained): {}",
            removed.join(", ")
        );
    }
    if !all_took {
        println!(
            "not every member took the file: run `meshmq apply {}` again once they are reachable (members that took it change nothing the second time)",
            path.display()
        );
    }
    // In file order, as the members are listed.
    let restart = targets
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| restart.contains(n))
        .collect();
    Ok(Sent { all_took, restart })
}
