//! `meshmq bench mesh`: a producer on a hub, consumers on two edges linked to it by
//! connectors — against one broker with the same producers and consumers, in the same run,
//! at full speed and at half of it (for the latency forwarding adds).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use serde::Serialize;

use super::bench::{queue, run_queue_at, AckArg, ProtocolArg, QueueArgs, Report, Target};
use super::spawn::{free_port, Spawned};

#[derive(Debug, Clone, clap::Args)]
pub struct MeshArgs {
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Consumers on each of the two edges.
    #[arg(long, default_value_t = 4)]
    pub consumers_per_edge: usize,
}

/// The comparison printed after the scenario lines.
#[derive(Debug, Serialize)]
pub struct MeshSummary {
    pub scenario: &'static str,
    pub single_rate: f64,
    pub mesh_rate: f64,
    /// mesh_rate / single_rate.
    pub ratio: f64,
    pub half_rate: u64,
    pub single_p99_us_at_half: u64,
    pub mesh_p99_us_at_half: u64,
    /// What forwarding adds to p99 at half load.
    pub added_p99_us: i64,
}

/// A hub and two edge groups on loopback, each one member, linked by duplex connectors.
async fn start_mesh() -> anyhow::Result<(Spawned, String, Vec<String>)> {
    let names = ["hub", "edge-1", "edge-2"];
    let mut ports = Vec::new();
    let mut admins: Vec<SocketAddr> = Vec::new();
    for _ in names {
        ports.push(free_port()?);
        admins.push(format!("127.0.0.1:{}", free_port()?).parse()?);
    }
    let mut topology =
        String::from("[mesh]\nname = \"bench-mesh\"\nsecret_file = \"mesh.secret\"\n");
    for (i, name) in names.iter().enumerate() {
        topology.push_str(&format!(
            "\n[[group]]\nname = \"{name}\"\n[[group.member]]\nname = \"{name}-m\"\nadmin = \"{}\"\ndata_dir = \"data/{name}\"\n[[group.member.listener]]\nurl = \"tcp://127.0.0.1:{}\"\n",
            admins[i], ports[i]
        ));
    }
    for edge in &names[1..] {
        topology.push_str(&format!(
            "\n[[connector]]\nfrom = \"hub\"\nto = \"{edge}\"\nduplex = true\nnetwork_ttl = 3\n"
        ));
    }
    let members: Vec<(String, SocketAddr)> = names
        .iter()
        .zip(&admins)
        .map(|(n, a)| (format!("{n}-m"), *a))
        .collect();
    let refs: Vec<(&str, SocketAddr)> = members.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    let spawned = Spawned::start(&topology, &refs).await?;
    // Wait until both bridges are up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let up = spawned
            .status(0)
            .await
            .map(|s| s.connectors.iter().filter(|c| c.up).count())
            .unwrap_or(0);
        if up == 2 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            spawned.stop().await;
            bail!("the mesh's connectors did not come up within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = |i: usize| format!("tcp://127.0.0.1:{}", ports[i]);
    Ok((spawned, url(0), vec![url(1), url(2)]))
}

fn queue_args(args: &MeshArgs, rate: Option<u64>, count: u64) -> QueueArgs {
    QueueArgs {
        target: Target {
            url: None,
            admin: None,
        },
        producers: args.producers,
        consumers: 2 * args.consumers_per_edge,
        count,
        size: args.size,
        persistent: false,
        receipts: false,
        ack: AckArg::Auto,
        prefetch: 1000,
        rate,
        destination: "queue://bench.mesh".into(),
        idle_timeout: 30,
        protocol: ProtocolArg::Native,
    }
}

async fn on_mesh(args: &QueueArgs) -> anyhow::Result<Report> {
    let (mesh, hub, edges) = start_mesh().await?;
    let result = run_queue_at(args, &[hub], &edges).await;
    mesh.stop().await;
    let mut r = result?;
    r.scenario = "mesh".into();
    r.params = format!("{} hub -> 2 edges", r.params);
    Ok(r)
}

pub async fn mesh(args: &MeshArgs) -> anyhow::Result<(Vec<Report>, MeshSummary)> {
    let full = queue_args(args, None, args.count);
    let single = queue(&full).await?;
    let meshed = on_mesh(&full).await?;
    let half = ((meshed.rate / 2.0) as u64).max(1);
    // Half load runs long enough for stable percentiles: ~5 seconds.
    let half_count = (half * 5).min(args.count);
    let single_half = queue(&queue_args(args, Some(half), half_count)).await?;
    let mesh_half = on_mesh(&queue_args(args, Some(half), half_count)).await?;
    let summary = MeshSummary {
        scenario: "mesh-summary",
        single_rate: single.rate,
        mesh_rate: meshed.rate,
        ratio: meshed.rate / single.rate,
        half_rate: half,
        single_p99_us_at_half: single_half.latency_us_p99,
        mesh_p99_us_at_half: mesh_half.latency_us_p99,
        added_p99_us: mesh_half.latency_us_p99 as i64 - single_half.latency_us_p99 as i64,
    };
    Ok((vec![single, meshed, single_half, mesh_half], summary))
}
