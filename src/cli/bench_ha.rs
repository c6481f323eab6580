//! `meshmq bench ha`: what replication costs and how fast a group fails over. It starts a
//! ZooKeeper (Debian's, through java) unless given one, a three-member `quorum_mem` group and a
//! single `local_mem` member; loads both with the same persistent receipted queue scenario;
//! then kills the group's master again and again under a receipted load and times each kill
//! to the first receipt from the new master.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use hdrhistogram::Histogram;
use tokio::process::{Child, Command};

use super::bench::{run_queue_at, QueueArgs, Report, Target};
use super::http;
use super::spawn::free_port;
use meshmq::client::{Client, ClientOptions, Outgoing};
use meshmq::server::admin::MemberStatus;

#[derive(Debug, clap::Args)]
pub struct HaArgs {
    /// A ZooKeeper to use (HOST:PORT,...); without it the bench starts one.
    #[arg(long)]
    pub zookeeper: Option<String>,
    /// Persistent 1 KiB messages per throughput run.
    #[arg(long, default_value_t = 40_000)]
    pub count: u64,
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Master kills to time.
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    #[arg(long, default_value = "2s")]
    pub session_timeout: humantime::Duration,
}

struct ZooKeeper {
    _child: Child,
    connect: String,
}

impl ZooKeeper {
    async fn start(dir: &Path) -> anyhow::Result<ZooKeeper> {
        let port = free_port()?;
        let data = dir.join("zk");
        std::fs::create_dir_all(&data)?;
        let cfg = dir.join("zoo.cfg");
        std::fs::write(
            &cfg,
            format!(
                "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={port}\n\
                 clientPortAddress=127.0.0.1\nmaxClientCnxns=0\nadmin.enableServer=false\n\
                 4lw.commands.whitelist=srvr\n",
                data.display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("zookeeper.log"))?;
        let child = Command::new("java")
            .args([
                "-Xmx256m",
                "-cp",
                "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar",
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            ])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start ZooKeeper (java and Debian's zookeeper package are needed; `make test` installs them)")?;
        let connect = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(&connect).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let _ = s.write_all(b"srvr").await;
                let mut out = String::new();
                let _ = s.read_to_string(&mut out).await;
                if out.contains("Mode:") {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "ZooKeeper did not come up within 30 s (see {})",
                    dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(ZooKeeper {
            _child: child,
            connect,
        })
    }
}

struct Member {
    name: String,
    url: String,
    admin: SocketAddr,
    child: Option<Child>,
}

struct Group {
    topology: std::path::PathBuf,
    dir: std::path::PathBuf,
    members: Vec<Member>,
}

impl Group {
    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", m.name)))?;
        m.child = Some(
            Command::new(std::env::current_exe()?)
                .args(["broker", "--topology"])
                .arg(&self.topology)
                .args(["--member", &m.name])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start member {}", m.name))?,
        );
        Ok(())
    }

    async fn status(&self, i: usize) -> Option<MemberStatus> {
        let (code, body) = http::get(self.members[i].admin, "/status", Duration::from_millis(500))
            .await
            .ok()?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// The member serving clients, waiting up to `timeout`.
    async fn master(&self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            for i in 0..self.members.len() {
                if self.members[i].child.is_some() {
                    if let Some(s) = self.status(i).await {
                        if s.ready {
                            return Ok(i);
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "no master within {timeout:?} (logs in {})",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the master lists every other running member as a slave with no lag.
    async fn settled(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let master = self.master(timeout).await?;
            if let Some(s) = self.status(master).await {
                let running = self.members.iter().filter(|m| m.child.is_some()).count();
                if s.slaves.len() + 1 == running && s.slaves.iter().all(|f| f.lag == 0) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("the group did not settle within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn write_topology(
    dir: &Path,
    zookeeper: &str,
    session: Duration,
) -> anyhow::Result<(std::path::PathBuf, Vec<Member>, Member)> {
    let mut members = Vec::new();
    let mut text = format!(
        "[mesh]\nname = \"bench-ha\"\n\n[zookeeper]\nconnect = \"{zookeeper}\"\n\
         session_timeout = \"{}ms\"\nroot = \"/meshmq-bench-{}\"\n\n\
         [[group]]\nname = \"ha\"\nelection = \"zookeeper\"\nreplicas = 3\nsync = \"quorum_mem\"\n\
         quorum_timeout = \"5s\"\nreplication_token = \"{}\"\n",
        session.as_millis(),
        std::process::id(),
        meshmq::security::generate_token()
    );
    for i in 1..=3 {
        let (port, admin, repl) = (free_port()?, free_port()?, free_port()?);
        text.push_str(&format!(
            "[[group.member]]\nname = \"ha-{i}\"\nadmin = \"127.0.0.1:{admin}\"\n\
             data_dir = \"ha-{i}\"\nreplication = \"127.0.0.1:{repl}\"\n\
             [[group.member.listener]]\nurl = \"tcp://127.0.0.1:{port}\"\n"
        ));
        members.push(Member {
            name: format!("ha-{i}"),
            url: format!("tcp://127.0.0.1:{port}"),
            admin: format!("127.0.0.1:{admin}").parse()?,
            child: None,
        });
    }
    let (port, admin) = (free_port()?, free_port()?);
    text.push_str(&format!(
        "\n[[group]]\nname = \"single\"\nsync = \"local_mem\"\n[[group.member]]\nname = \"single-1\"\n\
         admin = \"127.0.0.1:{admin}\"\ndata_dir = \"single-1\"\n\
         [[group.member.listener]]\nurl = \"tcp://127.0.0.1:{port}\"\n"
    ));
    let single = Member {
        name: "single-1".into(),
        url: format!("tcp://127.0.0.1:{port}"),
        admin: format!("127.0.0.1:{admin}").parse()?,
        child: None,
    };
    let path = dir.join("topology.toml");
    std::fs::write(&path, text)?;
    Ok((path, members, single))
}

fn load(args: &HaArgs, url: &str) -> QueueArgs {
    QueueArgs {
        target: Target {
            url: Some(url.to_string()),
            admin: None,
        },
        producers: args.producers,
        consumers: 1,
        count: args.count,
        size: 1024,
        persistent: true,
        receipts: true,
        ack: super::bench::AckArg::Auto,
        prefetch: 1000,
        rate: None,
        destination: "queue://bench.ha".into(),
        idle_timeout: 30,
        protocol: super::bench::ProtocolArg::Native,
    }
}

/// Runs the scenario; returns the two throughput reports and the failover report.
pub async fn ha(args: &HaArgs) -> anyhow::Result<Vec<Report>> {
    let dir = tempfile::tempdir()?;
    let _zk;
    let connect = match &args.zookeeper {
        Some(c) => c.clone(),
        None => {
            let zk = ZooKeeper::start(dir.path()).await?;
            let c = zk.connect.clone();
            _zk = zk;
            c
        }
    };
    let session: Duration = args.session_timeout.into();
    let (topology, members, single) = write_topology(dir.path(), &connect, session)?;
    let mut group = Group {
        topology,
        dir: dir.path().to_path_buf(),
        members,
    };
    for i in 0..3 {
        group.spawn(i)?;
    }
    let mut single_group = Group {
        topology: group.topology.clone(),
        dir: group.dir.clone(),
        members: vec![single],
    };
    single_group.spawn(0)?;
    single_group.master(Duration::from_secs(30)).await?;
    group.settled(Duration::from_secs(60)).await?;

    let mut reports = Vec::new();
    let master = group.master(Duration::from_secs(10)).await?;
    let url = group.members[master].url.clone();
    let mut quorum = run_queue_at(
        &load(args, &url),
        std::slice::from_ref(&url),
        std::slice::from_ref(&url),
    )
    .await?;
    quorum.scenario = "ha-quorum_mem".into();
    quorum.params = format!(
        "3 replicas, {}P/1C 1KiB persistent receipts",
        args.producers
    );
    let single_url = single_group.members[0].url.clone();
    let mut local = run_queue_at(
        &load(args, &single_url),
        std::slice::from_ref(&single_url),
        std::slice::from_ref(&single_url),
    )
    .await?;
    local.scenario = "ha-local_mem".into();
    local.params = format!("1 member, {}P/1C 1KiB persistent receipts", args.producers);
    let ratio = quorum.rate / local.rate;
    quorum.extra = Some(serde_json::json!({ "ratio_to_local_mem": ratio }));
    reports.push(quorum);
    reports.push(local);
    drop(single_group);

    reports.push(failovers(args, &mut group, session).await?);
    Ok(reports)
}

/// Kills the master `args.kills` times under a receipted load; times kill → first receipt.
async fn failovers(args: &HaArgs, group: &mut Group, session: Duration) -> anyhow::Result<Report> {
    let mut hist = Histogram::<u64>::new(3)?;
    let mut sent = 0u64;
    for round in 0..args.kills {
        group.settled(Duration::from_secs(60)).await?;
        let master = group.master(Duration::from_secs(10)).await?;
        let client = Client::connect(&group.members[master].url, ClientOptions::default()).await?;
        for _ in 0..100 {
            client
                .send_with_receipt("queue://bench.ha.failover", &persistent(sent))
                .await?;
            sent += 1;
        }
        let killed_at = Instant::now();
        if let Some(mut c) = group.members[master].child.take() {
            c.start_kill()?;
            let _ = c.wait().await;
        }
        drop(client);
        // The first receipt from whoever serves next.
        let took = loop {
            if killed_at.elapsed() > session * 10 + Duration::from_secs(30) {
                return Err(anyhow!("round {round}: no new master receipted in time"));
            }
            let Ok(next) = group.master(Duration::from_millis(200)).await else {
                continue;
            };
            let Ok(c) = Client::connect(&group.members[next].url, ClientOptions::default()).await
            else {
                continue;
            };
            if c.send_with_receipt("queue://bench.ha.failover", &persistent(sent))
                .await
                .is_ok()
            {
                sent += 1;
                break killed_at.elapsed();
            }
        };
        hist.record(took.as_millis() as u64)?;
        group.spawn(master)?;
    }
    Ok(Report {
        scenario: "ha-failover".into(),
        params: format!(
            "{} kill -9 of the master, session timeout {session:?}",
            args.kills
        ),
        rate: hist.value_at_quantile(0.5) as f64,
        unit: "ms to first receipt (p50)".into(),
        sent,
        received: 0,
        seconds: 0.0,
        latency_us_p50: hist.value_at_quantile(0.5) * 1000,
        latency_us_p99: hist.value_at_quantile(0.99) * 1000,
        latency_us_p999: hist.max() * 1000,
        extra: Some(serde_json::json!({
            "failover_ms_p50": hist.value_at_quantile(0.5),
            "failover_ms_p99": hist.value_at_quantile(0.99),
            "failover_ms_max": hist.max(),
        })),
        ..Report::default()
    })
}

fn persistent(i: u64) -> Outgoing {
    Outgoing::new(format!("failover {i}").into_bytes()).persistent(true)
}
