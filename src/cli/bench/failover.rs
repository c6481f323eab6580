//! `meshmq bench failover`: many failover consumer connections over a mesh of edge groups, a
//! kill schedule, and what the clients went through: how long after each kill its clients were
//! connected again, how often each client moved, and whether any receipted message was lost or
//! delivered twice.
//!
//! The clients run in worker processes (`meshmq bench failover-worker`, one source address
//! each), so no process holds more descriptors than the machine allows and the brokers see
//! many peers. Every worker's clients are given their home edge's URIs only and learn the rest
//! from cluster pushes, so each edge starts with the same number of clients. A producer sends
//! persistent, receipted messages to one queue all along; every consumer takes from it.
//! Times are wall-clock milliseconds, comparable across the processes of one machine.
//!
//! With `--hub` the mesh is `topologies/edges.toml`'s shape: a producer-facing hub dialling
//! every edge (the edges never dial each other), the edges' listeners filtering `edge-.*` with
//! the default `max_connections` (what the open-file limit allows); the producer is on the hub, and the report adds each edge's share
//! of the clients after each phase and the most connections each edge held against its limit.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

use meshmq::client::{Client, ClientEvent, ClientOptions, Outgoing, SubscribeOptions};

use super::Report;
use crate::cli::http;
use crate::cli::spawn::{free_port, Spawned};

const QUEUE: &str = "queue://bench.failover";

#[derive(Debug, Clone, clap::Args)]
pub struct FailoverArgs {
    /// Edge groups.
    #[arg(long, default_value_t = 3)]
    pub edges: usize,
    /// Consumer connections per edge.
    #[arg(long, default_value_t = 3000)]
    pub clients_per_edge: usize,
    /// Client processes per edge (each with its own source address).
    #[arg(long, default_value_t = 2)]
    pub processes_per_edge: usize,
    /// The first source address; each worker process takes the next one.
    #[arg(long, default_value = "127.0.3.1")]
    pub first_source: std::net::Ipv4Addr,
    /// The kill schedule: the edges (1-based) killed in turn with `kill -9`, each once the
    /// clients settled after the previous one.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub kill: Vec<usize>,
    /// Wait this long with everyone connected before each kill.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub before_kill: Duration,
    /// A killed edge is started again this long after its clients are all back elsewhere, so
    /// the messages its journal holds are delivered (with `--ha` its standby took over at once
    /// and the killed member comes back as the standby).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub restart_after: Duration,
    /// Each edge a file-lock pair (the standby takes over the killed master's journal).
    #[arg(long)]
    pub ha: bool,
    /// Turn on `rebalance_cluster_clients` (load-aware moves after each change).
    #[arg(long)]
    pub rebalance: bool,
    /// Persistent, receipted messages per second during the run.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Failover options added to every client's URL (e.g. `maxReconnectDelay=1000`).
    #[arg(long, default_value = "")]
    pub options: String,
    /// `topologies/edges.toml`'s shape: a hub for the producer dialling every edge, the edges
    /// filtering `edge-.*` (no edge-to-edge connectors).
    #[arg(long)]
    pub hub: bool,
}

/// One worker process's share (hidden subcommand).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub url: String,
    #[arg(long)]
    pub clients: usize,
    #[arg(long)]
    pub source: IpAddr,
}

/// What a worker saw, printed as one JSON line when it is told to stop.
#[derive(Debug, Default, Serialize, Deserialize)]
struct WorkerReport {
    /// Per client: (interrupted, resumed) wall-clock ms of each reconnect, and whether it was
    /// a move on purpose (rebalance) rather than a broken link.
    episodes: Vec<Vec<(u64, u64, bool)>>,
    /// Message number → deliveries, and how many of those were flagged redelivered.
    received: Vec<(u64, u32)>,
    redelivered: u64,
    failed: u64,
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `meshmq bench failover-worker`: connects its clients, prints `ready`, records until `stop`
/// on standard input, then prints its report.
pub async fn worker(args: &WorkerArgs) -> anyhow::Result<()> {
    let gate = Arc::new(tokio::sync::Semaphore::new(128));
    let stop = CancellationToken::new();
    let received: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let redelivered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    for _ in 0..args.clients {
        let (url, gate, stop) = (args.url.clone(), gate.clone(), stop.clone());
        let (received, redelivered, ready) =
            (received.clone(), redelivered.clone(), ready_tx.clone());
        let source = args.source;
        tasks.push(tokio::spawn(async move {
            let opened = async {
                let _slot = gate.acquire().await.map_err(|e| e.to_string())?;
                let client = Client::connect(
                    &url,
                    ClientOptions {
                        local_addr: Some(source),
                        ..ClientOptions::default()
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
                let events = client.events();
                let sub = client
                    .subscribe(
                        QUEUE,
                        SubscribeOptions {
                            prefetch: 10,
                            ..SubscribeOptions::default()
                        },
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>((client, events, sub))
            }
            .await;
            let (client, mut events, mut sub) = match opened {
                Ok(x) => {
                    let _ = ready.send(Ok(()));
                    drop(ready);
                    x
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return Vec::new();
                }
            };
            let mut episodes = Vec::new();
            let mut interrupted = None;
            loop {
                tokio::select! {
                    e = events.recv() => match e {
                        Ok(ClientEvent::Interrupted { .. }) => interrupted = Some(wall_ms()),
                        Ok(ClientEvent::Moving { .. }) => interrupted = Some(wall_ms()),
                        Ok(ClientEvent::Resumed { moved, .. }) => {
                            let now = wall_ms();
                            episodes.push((interrupted.take().unwrap_or(now), now, moved));
                        }
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => break,
                    },
                    d = sub.next() => match d {
                        Some(d) => {
                            if let Some(n) = std::str::from_utf8(&d.body).ok().and_then(|t| t.parse::<u64>().ok()) {
                                *received.lock().entry(n).or_insert(0) += 1;
                            }
                            if d.redelivered() {
                                redelivered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                        None => break,
                    },
                    _ = stop.cancelled() => break,
                }
            }
            drop(client);
            episodes
        }));
    }
    drop(ready_tx);
    let mut failed = 0u64;
    let mut first_error = None;
    for _ in 0..args.clients {
        let Some(r) = ready_rx.recv().await else {
            break;
        };
        if let Err(e) = r {
            failed += 1;
            first_error.get_or_insert(e);
        }
    }
    println!(
        "{}",
        serde_json::json!({ "ready": args.clients as u64 - failed, "error": first_error })
    );
    // Standard input is read on a thread of its own (a `stop` line or its end).
    let (told, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            if line.map_or(true, |l| l.trim() == "stop") {
                break;
            }
        }
        let _ = told.send(());
    });
    let _ = stopped.await;
    stop.cancel();
    let mut report = WorkerReport {
        failed,
        ..WorkerReport::default()
    };
    for t in tasks {
        report.episodes.push(t.await.unwrap_or_default());
    }
    report.received = received.lock().iter().map(|(k, v)| (*k, *v)).collect();
    report.redelivered = redelivered.load(std::sync::atomic::Ordering::Relaxed);
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// A running worker process.
struct Worker {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Worker {
    fn spawn(url: &str, clients: usize, source: IpAddr) -> anyhow::Result<Worker> {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["bench", "failover-worker", "--url", url])
            .args(["--clients", &clients.to_string()])
            .args(["--source", &source.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a failover-worker process")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        Ok(Worker {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    async fn line(&mut self) -> anyhow::Result<String> {
        self.lines
            .next_line()
            .await?
            .ok_or_else(|| anyhow!("a worker process ended early"))
    }
}

struct Edge {
    /// Indexes into the spawned members, and each member's client URL.
    members: Vec<(usize, String)>,
}

/// The generated mesh: the topology text, every member (name, admin address), the edges and
/// (with `--hub`) the hub's index and client URL.
struct MeshPlan {
    text: String,
    members: Vec<(String, SocketAddr)>,
    edges: Vec<Edge>,
    hub: Option<(usize, String)>,
}

fn topology(args: &FailoverArgs) -> anyhow::Result<MeshPlan> {
    let mut text =
        String::from("[mesh]\nname = \"bench-failover\"\nsecret_file = \"mesh.secret\"\n");
    let mut members = Vec::new();
    let mut edges = Vec::new();
    let mut listener_extra = String::from("update_cluster_clients = true\n");
    if args.rebalance {
        listener_extra.push_str("rebalance_cluster_clients = true\n");
    }
    if args.hub {
        listener_extra.push_str(
            "update_cluster_clients_on_remove = true\nupdate_cluster_filter = [\"edge-.*\"]\n",
        );
    }
    let mut hub = None;
    if args.hub {
        let (port, admin) = (free_port()?, free_port()?);
        let admin: SocketAddr = format!("127.0.0.1:{admin}").parse()?;
        text.push_str(&format!(
            "\n[[group]]\nname = \"hub\"\n\n[[group.member]]\nname = \"hub\"\nadmin = \"{admin}\"\ndata_dir = \"data-hub\"\n\n[[group.member.listener]]\nurl = \"tcp://127.0.0.1:{port}\"\n"
        ));
        hub = Some((members.len(), format!("tcp://127.0.0.1:{port}")));
        members.push(("hub".to_string(), admin));
    }
    for e in 1..=args.edges {
        text.push_str(&format!("\n[[group]]\nname = \"edge-{e}\"\n"));
        let count = if args.ha { 2 } else { 1 };
        if args.ha {
            text.push_str(&format!(
                "election = \"file-lock\"\nshared_dir = \"shared-edge-{e}\"\nlock_poll = \"250ms\"\n"
            ));
        }
        let mut edge = Edge {
            members: Vec::new(),
        };
        for m in 0..count {
            let name = if args.ha {
                format!("edge-{e}{}", (b'a' + m as u8) as char)
            } else {
                format!("edge-{e}")
            };
            let (port, admin) = (free_port()?, free_port()?);
            let admin: SocketAddr = format!("127.0.0.1:{admin}").parse()?;
            text.push_str(&format!(
                "\n[[group.member]]\nname = \"{name}\"\nadmin = \"{admin}\"\ndata_dir = \"data-{name}\"\n\n[[group.member.listener]]\nurl = \"tcp://127.0.0.1:{port}\"\n{listener_extra}"
            ));
            edge.members
                .push((members.len(), format!("tcp://127.0.0.1:{port}")));
            members.push((name, admin));
        }
        edges.push(edge);
    }
    if args.hub {
        for e in 1..=args.edges {
            text.push_str(&format!(
                "\n[[connector]]\nfrom = \"hub\"\nto = \"edge-{e}\"\nduplex = true\nnetwork_ttl = 3\nreconnect_max_delay = \"2s\"\n"
            ));
        }
    }
    for a in 1..=args.edges {
        for b in (a + 1..=args.edges).filter(|_| !args.hub) {
            text.push_str(&format!(
                "\n[[connector]]\nfrom = \"edge-{a}\"\nto = \"edge-{b}\"\nduplex = true\nnetwork_ttl = {}\nreconnect_initial_delay = \"100ms\"\nreconnect_max_delay = \"1s\"\nheartbeat = \"1s\"\n",
                args.edges
            ));
        }
    }
    Ok(MeshPlan {
        text,
        members,
        edges,
        hub,
    })
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Client connections on each edge's serving member (0 for an edge without one).
async fn shares(spawned: &Spawned, edges: &[Edge]) -> Vec<u64> {
    let mut out = Vec::new();
    for edge in edges {
        let mut n = 0;
        for (i, _) in &edge.members {
            if let Some(s) = spawned.status(*i).await {
                if s.ready {
                    n += s.cluster.map_or(0, |c| c.clients);
                }
            }
        }
        out.push(n);
    }
    out
}

/// Client connections on every edge's serving member.
async fn connected(spawned: &Spawned, edges: &[Edge]) -> u64 {
    shares(spawned, edges).await.iter().sum()
}

/// Moves the edges' rebalancers still have scheduled.
async fn pending_moves(spawned: &Spawned, edges: &[Edge]) -> u64 {
    let mut n = 0;
    for (i, _) in edges.iter().flat_map(|e| &e.members) {
        if let Some(s) = spawned.status(*i).await {
            n += s.cluster.map_or(0, |c| c.rebalance_pending);
        }
    }
    n
}

/// Waits (at most `bound`) until every edge holds its fair share of `total` within 10 % and no
/// move is pending; returns the seconds it took, or `None` past the bound.
async fn settled(spawned: &Spawned, edges: &[Edge], total: u64, bound: Duration) -> Option<f64> {
    let start = Instant::now();
    let share = total as f64 / edges.len() as f64;
    loop {
        let s = shares(spawned, edges).await;
        if s.iter()
            .all(|n| (*n as f64 - share).abs() <= (share * 0.1).max(2.0))
            && pending_moves(spawned, edges).await == 0
        {
            return Some(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > bound {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Samples every edge member's connections (clients and bridges) until `stop`; returns the
/// most each edge held.
fn sample_peaks(
    admins: Vec<Vec<SocketAddr>>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut peaks = vec![0u64; admins.len()];
        while !stop.is_cancelled() {
            for (e, members) in admins.iter().enumerate() {
                for admin in members {
                    if let Ok((200, body)) =
                        http::get(*admin, "/status", Duration::from_secs(2)).await
                    {
                        if let Ok(s) =
                            serde_json::from_str::<meshmq::server::admin::MemberStatus>(&body)
                        {
                            peaks[e] = peaks[e].max(s.connections);
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        peaks
    })
}

pub async fn failover(args: &FailoverArgs) -> anyhow::Result<Report> {
    if args.edges < 2 || args.kill.iter().any(|k| *k == 0 || *k > args.edges) {
        bail!(
            "--kill names edges from 1 to --edges ({}), and a mesh needs at least two",
            args.edges
        );
    }
    let MeshPlan {
        text,
        members,
        edges,
        hub,
    } = topology(args)?;
    eprintln!("bench failover: starting {} members", members.len());
    let refs: Vec<(&str, SocketAddr)> = members.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    let mut spawned = Spawned::launch(&text, &refs)?;
    for edge in &edges {
        let admins: Vec<SocketAddr> = edge.members.iter().map(|(i, _)| members[*i].1).collect();
        http::wait_any_ready(&admins, Duration::from_secs(30)).await?;
    }
    if let Some((i, _)) = &hub {
        http::wait_any_ready(&[members[*i].1], Duration::from_secs(30)).await?;
    }
    let admins: Vec<Vec<SocketAddr>> = edges
        .iter()
        .map(|e| e.members.iter().map(|(i, _)| members[*i].1).collect())
        .collect();
    let result = run(
        args,
        &mut spawned,
        &edges,
        hub.as_ref().map(|(_, u)| u.as_str()),
        admins,
    )
    .await;
    spawned.stop().await;
    result
}

async fn run(
    args: &FailoverArgs,
    spawned: &mut Spawned,
    edges: &[Edge],
    hub: Option<&str>,
    admins: Vec<Vec<SocketAddr>>,
) -> anyhow::Result<Report> {
    let sampling = CancellationToken::new();
    let peaks = sample_peaks(admins, sampling.clone());
    let total = (args.edges * args.clients_per_edge) as u64;
    let extra = if args.options.is_empty() {
        String::new()
    } else {
        format!("?{}", args.options)
    };
    let url_of = |edge: &Edge| {
        let uris: Vec<&str> = edge.members.iter().map(|(_, u)| u.as_str()).collect();
        format!("failover:({}){extra}", uris.join(","))
    };
    // Workers: each edge's clients given that edge's URIs, spread over processes.
    let mut workers = Vec::new();
    let mut source = u32::from(args.first_source);
    let per_process = args
        .clients_per_edge
        .div_ceil(args.processes_per_edge.max(1));
    for edge in edges {
        let mut left = args.clients_per_edge;
        while left > 0 {
            let n = per_process.min(left);
            workers.push(Worker::spawn(
                &url_of(edge),
                n,
                IpAddr::from(std::net::Ipv4Addr::from(source)),
            )?);
            source += 1;
            left -= n;
        }
    }
    eprintln!(
        "bench failover: {} worker processes connecting {total} clients",
        workers.len()
    );
    let connect_started = Instant::now();
    for w in &mut workers {
        let line = w.line().await?;
        let v: serde_json::Value = serde_json::from_str(&line).context("worker ready line")?;
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            bail!("a worker could not connect all its clients: {e}");
        }
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    eprintln!("bench failover: all clients connected in {connect_secs:.1}s");
    let deadline = Instant::now() + Duration::from_secs(60);
    while connected(spawned, edges).await < total {
        if Instant::now() > deadline {
            bail!("the brokers never counted all {total} clients");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The producer: persistent, receipted, numbered messages to the queue all along.
    let all: Vec<String> = edges
        .iter()
        .flat_map(|e| e.members.iter().map(|(_, u)| u.clone()))
        .collect();
    let after_connect = shares(spawned, edges).await;
    eprintln!("bench failover: clients per edge {after_connect:?}");
    let producer_url = match hub {
        Some(hub) => hub.to_string(),
        None => format!("failover:({})", all.join(",")),
    };
    let producer = Client::connect(&producer_url, ClientOptions::default()).await?;
    let receipted: Arc<Mutex<Vec<u64>>> = Arc::default();
    let producing = CancellationToken::new();
    let sender = {
        let (producer, receipted, producing) =
            (producer.clone(), receipted.clone(), producing.clone());
        let every = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut n = 0u64;
            while !producing.is_cancelled() {
                tick.tick().await;
                n += 1;
                let msg = Outgoing::new(n.to_string()).persistent(true);
                if producer.send_with_receipt(QUEUE, &msg).await.is_ok() {
                    receipted.lock().push(n);
                }
            }
        })
    };

    let mut kills = Vec::new();
    for &k in &args.kill {
        tokio::time::sleep(args.before_kill).await;
        let edge = &edges[k - 1];
        let mut victim = None;
        for (i, _) in &edge.members {
            if spawned.status(*i).await.is_some_and(|s| s.ready) {
                victim = Some(*i);
            }
        }
        let victim = victim.ok_or_else(|| anyhow!("edge-{k} has no master to kill"))?;
        eprintln!("bench failover: kill -9 of edge-{k}'s master");
        let killed_at = wall_ms();
        spawned.kill9(victim).await;
        let since = Instant::now();
        while connected(spawned, edges).await < total {
            if since.elapsed() > Duration::from_secs(60) {
                bail!("clients of edge-{k} were not all back within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let brokers_saw_all_back = since.elapsed().as_secs_f64();
        eprintln!(
            "bench failover: the brokers count every client again after {brokers_saw_all_back:.1}s"
        );
        let after_kill = shares(spawned, edges).await;
        eprintln!("bench failover: clients per edge {after_kill:?}");
        tokio::time::sleep(args.restart_after).await;
        spawned.restart(victim)?;
        let mut after_restart = None;
        if args.rebalance {
            let took = settled(spawned, edges, total, Duration::from_secs(120)).await;
            let s = shares(spawned, edges).await;
            eprintln!("bench failover: after the restart and the rebalance ({took:?} s): {s:?}");
            after_restart = Some((took, s));
        }
        kills.push((
            k,
            killed_at,
            brokers_saw_all_back,
            after_kill,
            after_restart,
        ));
    }
    // Let the restarted edges come up and forward what they held, then stop producing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    producing.cancel();
    let _ = sender.await;
    let sent = receipted.lock().len() as u64;
    eprintln!("bench failover: {sent} messages receipted; draining");
    // Drain: until every receipted message arrived somewhere (or nothing moves for 20 s).
    let mut last_depth = u64::MAX;
    let mut still = Instant::now();
    loop {
        let mut depth = 0;
        for i in 0..spawned.admins.len() {
            if let Some(s) = spawned.status(i).await {
                depth += s
                    .destinations
                    .iter()
                    .filter(|d| d.destination == QUEUE)
                    .map(|d| d.depth)
                    .sum::<u64>();
            }
        }
        if depth == 0 {
            break;
        }
        if depth != last_depth {
            last_depth = depth;
            still = Instant::now();
        } else if still.elapsed() > Duration::from_secs(20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    producer.close().await?;

    let mut episodes = Vec::new();
    let mut received: HashMap<u64, u32> = HashMap::new();
    let mut redelivered = 0;
    for w in &mut workers {
        w.stdin.write_all(b"stop\n").await?;
        w.stdin.flush().await?;
        let line = w.line().await?;
        let r: WorkerReport = serde_json::from_str(&line).context("worker report")?;
        episodes.extend(r.episodes);
        for (n, c) in r.received {
            *received.entry(n).or_insert(0) += c;
        }
        redelivered += r.redelivered;
        let _ = w.child.wait().await;
    }

    // Reconnect times after each kill, counted from the kill, for the clients it displaced.
    let mut after_kill: Vec<u64> = Vec::new();
    let mut kill_reports = Vec::new();
    for (i, (k, killed_at, brokers_saw, shares_after_kill, after_restart)) in
        kills.iter().enumerate()
    {
        let until = kills.get(i + 1).map_or(u64::MAX, |next| next.1);
        // Broken-link reconnects only: rebalance moves are counted apart.
        let mut times: Vec<u64> = episodes
            .iter()
            .filter_map(|eps| {
                eps.iter()
                    .find(|(int, _, moved)| !moved && *int >= *killed_at && *int < until)
                    .map(|(_, res, _)| res.saturating_sub(*killed_at))
            })
            .collect();
        times.sort_unstable();
        let within =
            |ms: u64| times.iter().filter(|t| **t <= ms).count() as f64 / times.len().max(1) as f64;
        kill_reports.push(serde_json::json!({
            "edge": k,
            "displaced": times.len(),
            "reconnect_ms_p50": percentile(&times, 0.50),
            "reconnect_ms_p99": percentile(&times, 0.99),
            "reconnect_ms_max": times.last().copied().unwrap_or(0),
            "within_5s": within(5000),
            "within_15s": within(15_000),
            "brokers_counted_all_back_s": brokers_saw,
            "clients_per_edge_after_kill": shares_after_kill,
            "rebalanced_after_restart_s": after_restart.as_ref().map(|(t, _)| *t),
            "clients_per_edge_after_restart": after_restart.as_ref().map(|(_, s)| s.clone()),
        }));
        after_kill.extend(times);
    }
    after_kill.sort_unstable();
    sampling.cancel();
    let peaks = peaks.await.unwrap_or_default();
    let moves: Vec<usize> = episodes.iter().map(Vec::len).collect();
    let rebalance_moves: usize = episodes
        .iter()
        .map(|eps| eps.iter().filter(|(_, _, moved)| *moved).count())
        .sum();
    let receipted = receipted.lock().clone();
    let lost = receipted
        .iter()
        .filter(|n| !received.contains_key(n))
        .count() as u64;
    let duplicates = received.values().filter(|c| **c > 1).count() as u64;
    Ok(Report {
        scenario: "failover".into(),
        params: format!(
            "{}{} edges{} x {} clients, kill {:?}{}",
            if args.hub { "hub + " } else { "" },
            args.edges,
            if args.ha { " (file-lock pairs)" } else { "" },
            args.clients_per_edge,
            args.kill,
            if args.rebalance { ", rebalance" } else { "" }
        ),
        // Reconnect times after the kills: p50, p99 and the maximum in the latency columns.
        rate: after_kill.len() as f64,
        unit: "displaced clients".into(),
        latency_us_p50: percentile(&after_kill, 0.50) * 1000,
        latency_us_p99: percentile(&after_kill, 0.99) * 1000,
        latency_us_p999: after_kill.last().copied().unwrap_or(0) * 1000,
        sent,
        received: received.values().map(|c| *c as u64).sum(),
        seconds: connect_secs,
        lost,
        duplicates,
        redelivered,
        extra: Some(serde_json::json!({
            "clients": total,
            "clients_per_edge_after_connect": after_connect,
            "peak_connections_per_edge": peaks,
            "edge_connection_limit": meshmq::transport::files::default_max_connections(
                meshmq::transport::files::raise_open_file_limit()
            ),
            "connect_all_seconds": connect_secs,
            "kills": kill_reports,
            "rebalance_moves": rebalance_moves,
            "moves_per_client_max": moves.iter().max().copied().unwrap_or(0),
            "moves_per_client_mean": moves.iter().sum::<usize>() as f64 / moves.len().max(1) as f64,
        })),
    })
}
