//! The `meshmq` command: brokers, the local mesh runner, the CLI client and the benchmarks.

mod cli;

// jemalloc hands freed memory back to the OS (glibc's malloc keeps most of it), so a broker's
// RSS follows its live messages after a burst instead of its peak.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: a background thread hands pages freed for a second
/// back to the OS. By default jemalloc keeps them for ten seconds, and a broker streaming
/// persistent messages through memory to its journal frees hundreds of megabytes in that time —
/// its RSS would follow that churn instead of its live messages.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: Option<&'static std::ffi::c_char> = Some(
    // SAFETY: the first byte of a NUL-terminated string with 'static lifetime, which jemalloc
    // reads as a C string.
    unsafe { &*c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr() },
);

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cli::bench::{ConnectionsArgs, FanoutArgs, QueueArgs, SuiteArgs};
use cli::clients::{ConsumeArgs, ProduceArgs};

#[derive(Parser)]
#[command(name = "meshmq", version, about = "A network-of-brokers message mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one member of a topology (production: one per machine).
    Broker {
        #[arg(long)]
        topology: PathBuf,
        #[arg(long)]
        member: String,
        /// Cut a corrupt journal at the damage and start (records after it are lost).
        #[arg(long)]
        repair: bool,
    },
    /// Run every member of a topology on this machine until Ctrl-C.
    Up { topology: PathBuf },
    /// Validate a topology and print a summary.
    Check {
        topology: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// What applying a topology file would change in the running mesh, group by group (asks
    /// every member the file lists and every member running).
    Plan(cli::apply::PlanArgs),
    /// Make the running members take a topology file without restarting (connectors, users,
    /// ACLs, groups); prints which members took it.
    Apply(cli::apply::ApplyArgs),
    /// Every member of a topology as one table: role, epoch, clients, queue depth, connectors
    /// and replication lag (exit status 3 when some group has no master).
    Status(cli::status::StatusArgs),
    /// Drain a member before an upgrade: it stops accepting clients, moves them to other groups
    /// (or hands its group to a standby), waits until its queues are empty and exits.
    Drain(cli::drain::DrainArgs),
    /// Print a Prometheus scrape configuration (YAML) for every member of a topology.
    PrometheusConfig(cli::prometheus::PrometheusConfigArgs),
    /// Send messages.
    Produce(ProduceArgs),
    /// Receive messages.
    Consume(ConsumeArgs),
    /// Print an argon2 hash of a password for a topology's `password_hash` (reads the
    /// password from standard input, one line).
    Passwd,
    /// Write a new random mesh secret to a file (for `[mesh] secret_file`), unless it exists;
    /// copy the same file to every machine of the mesh.
    Secret { path: PathBuf },
    /// Print a fresh random token for a replicated group's `replication_token`.
    Token,
    /// Generate a development CA and a certificate and key per member of a topology.
    Certs {
        topology: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Load generator scenarios; each prints one JSON line.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Producers and consumers on one queue.
    Queue(QueueArgs),
    /// One producer, many topic subscribers (each its own connection).
    Fanout(FanoutArgs),
    /// Many idle consumer connections, then one message to all.
    Connections(ConnectionsArgs),
    /// A producer on a hub, consumers on two edges, against one broker.
    Mesh(cli::bench_mesh::MeshArgs),
    /// Failover consumers over edge groups, a kill schedule: reconnect times, moves per
    /// client, lost and duplicate messages.
    Failover(cli::bench::failover::FailoverArgs),
    /// One client process of `bench failover` (started by it).
    #[command(hide = true)]
    FailoverWorker(cli::bench::failover::WorkerArgs),
    /// A replicated group: quorum_mem against local_mem, then master kills timed to the first
    /// receipt from the new master (starts its own ZooKeeper).
    Ha(cli::bench_ha::HaArgs),
    /// The standard set, as a table (what `make bench` runs).
    Suite(SuiteArgs),
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESHMQ_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        // A member whose log reader is gone (its `meshmq up` was killed) must go on and stop
        // on SIGTERM: by default a failed log write is reported with `eprintln!`, which panics
        // on the same broken pipe — in whatever task logged, the signal handler's included.
        .log_internal_errors(false)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_broker = matches!(cli.command, Command::Broker { .. });
    init_logging(if is_broker { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meshmq: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli.command));
    if let (Ok(_), Some(&handed_over_at)) = (&outcome, RESTART.get()) {
        // A member that stopped to restart itself runs again once its tasks have ended.
        runtime.shutdown_timeout(std::time::Duration::from_secs(5));
        let e = cli::mesh::restart_self(handed_over_at);
        eprintln!("meshmq: cannot run again to restart: {e}");
        return ExitCode::FAILURE;
    }
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meshmq: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Set when a member stopped to run itself again (`POST /restart`): the epoch in which it
/// handed its group over (0: none).
static RESTART: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Broker {
            topology,
            member,
            repair,
        } => {
            if let Some(handed_over_at) = cli::mesh::broker(&topology, &member, repair).await? {
                let _ = RESTART.set(handed_over_at);
            }
        }
        Command::Up { topology } => cli::mesh::up(&topology).await?,
        Command::Check { topology, json } => cli::mesh::check(&topology, json)?,
        Command::Plan(args) => cli::apply::plan(&args).await?,
        Command::Apply(args) => {
            if !cli::apply::apply(&args).await? {
                return Ok(ExitCode::from(cli::apply::PARTIAL_EXIT));
            }
        }
        Command::Status(args) => {
            if !cli::status::status(&args).await? {
                return Ok(ExitCode::from(cli::status::NO_MASTER_EXIT));
            }
        }
        Command::Passwd => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            let password = line.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                anyhow::bail!("no password on standard input: echo 'the password' | meshmq passwd");
            }
            println!("{}", meshmq::security::hash_password(password));
        }
        Command::Secret { path } => {
            if meshmq::security::ensure_mesh_secret(&path)? {
                println!("{}", path.display());
            } else {
                println!("{} exists; kept it", path.display());
            }
        }
        Command::Token => println!("{}", meshmq::security::generate_token()),
        Command::Certs { topology, out } => {
            let topo = meshmq::config::load(&topology).map_err(|e| anyhow::anyhow!("{e}"))?;
            for path in meshmq::security::generate_dev_pki(&topo, &out)? {
                println!("{}", path.display());
            }
            if let Some(path) = &topo.bridges.secret_file {
                if meshmq::security::ensure_mesh_secret(path)? {
                    println!("{}", path.display());
                }
            }
        }
        Command::Drain(args) => cli::drain::drain(&args).await?,
        Command::PrometheusConfig(args) => cli::prometheus::prometheus_config(&args)?,
        Command::Produce(args) => cli::clients::produce(args).await?,
        Command::Consume(args) => cli::clients::consume(args).await?,
        Command::Bench(b) => {
            let report = match b {
                BenchCommand::Queue(a) => cli::bench::queue(&a).await?,
                BenchCommand::Fanout(a) => cli::bench::fanout(&a).await?,
                BenchCommand::Connections(a) => cli::bench::connections(&a).await?,
                BenchCommand::Mesh(a) => {
                    let (reports, summary) = cli::bench_mesh::mesh(&a).await?;
                    for r in &reports {
                        println!("{}", serde_json::to_string(r)?);
                    }
                    println!("{}", serde_json::to_string(&summary)?);
                    return Ok(ExitCode::SUCCESS);
                }
                BenchCommand::Failover(a) => cli::bench::failover::failover(&a).await?,
                BenchCommand::FailoverWorker(a) => {
                    cli::bench::failover::worker(&a).await?;
                    return Ok(ExitCode::SUCCESS);
                }
                BenchCommand::Ha(a) => {
                    for r in cli::bench_ha::ha(&a).await? {
                        println!("{}", serde_json::to_string(&r)?);
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                BenchCommand::Suite(a) => {
                    cli::bench::suite(&a).await?;
                    return Ok(ExitCode::SUCCESS);
                }
            };
            println!("{}", serde_json::to_string(&report)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
