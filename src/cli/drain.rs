//! `meshmq drain TOPOLOGY MEMBER`: asks a member to drain (its admin port's `POST /drain`,
//! with the topology's `[admin]` token), follows its progress on `/status` until the process
//! has exited and, when its group has standbys, until one of them serves.
//!
//! Owns: the command's output and exit status. Must not touch: the drain itself (the member
//! runs it). Invariant: the command ends — every wait is bounded by the drain's timeout plus
//! the member's shutdown time.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail};

use meshmq::config;
use meshmq::server::admin::MemberStatus;

use super::http;

#[derive(clap::Args)]
pub struct DrainArgs {
    /// The topology file every member runs from (it names the member's admin port and holds
    /// the `[admin]` token).
    pub topology: PathBuf,
    /// The member to drain.
    pub member: String,
    /// How long the member waits for its clients to leave and its queues to empty before it
    /// exits anyway (e.g. 90s, 5m).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

pub async fn drain(args: &DrainArgs) -> anyhow::Result<()> {
    let topo = config::load(&args.topology).map_err(|e| anyhow!("{e}"))?;
    let Some((group, member)) = topo.member(&args.member) else {
        let known: Vec<String> = topo.members().map(|(_, m)| m.name.to_string()).collect();
        bail!(
            "{}: no member named {:?}; the members are: {}",
            topo.file.display(),
            args.member,
            known.join(", ")
        );
    };
    let Some(token) = &topo.admin.token else {
        bail!(
            "{}: no [admin] token, so the members refuse admin writes; add\n  [admin]\n  token = \"a long random string\"\nand restart the members",
            topo.file.display()
        );
    };
    let admin = member.admin;
    let path = format!("/drain?timeout={}ms", args.timeout.as_millis());
    let (code, body) =
        http::post_bearer(admin, &path, token.expose(), Duration::from_secs(5)).await?;
    if code != 202 {
        bail!(
            "{} refused the drain ({code}): {}",
            args.member,
            body.trim()
        );
    }
    println!("{}", body.trim());
    let deadline = tokio::time::Instant::now()
        + args.timeout
        + group.broker.shutdown_timeout * 2
        + Duration::from_secs(15);
    let mut last = String::new();
    loop {
        match http::get(admin, "/status", Duration::from_secs(2)).await {
            Ok((200, body)) => {
                if let Ok(s) = serde_json::from_str::<MemberStatus>(&body) {
                    let line = progress(&s);
                    if line != last {
                        println!("{line}");
                        last = line;
                    }
                }
            }
            Ok(_) => {}
            // The admin port is gone: the process has exited.
            Err(_) => break,
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{} still answers on {admin} after the drain's deadline; see its log",
                args.member
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!("{} has stopped", args.member);
    let others: Vec<_> = group
        .members
        .iter()
        .filter(|m| m.name.as_str() != args.member)
        .map(|m| m.admin)
        .collect();
    if !others.is_empty() {
        let wait = group.lock_poll + Duration::from_secs(60);
        let serving = http::wait_any_ready(&others, wait).await.map_err(|e| {
            anyhow!(
                "group {}: no member took over after the drain: {e}",
                group.name
            )
        })?;
        let name = group
            .members
            .iter()
            .find(|m| m.admin == serving)
            .map_or_else(|| serving.to_string(), |m| m.name.to_string());
        println!("group {}: {name} serves now", group.name);
    }
    Ok(())
}

fn progress(s: &MemberStatus) -> String {
    match &s.drain {
        Some(d) => format!(
            "{}: {} — {} clients, {} queued, {} moves asked",
            s.member, d.phase, d.clients, d.queued, d.moves_asked
        ),
        None => format!("{}: {}", s.member, s.role),
    }
}
