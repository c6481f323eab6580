//! `meshmq prometheus-config T`: a Prometheus scrape configuration for every member of a
//! topology.
//!
//! Owns: the generated YAML. Must not touch: anything running (it only reads the topology).
//! Invariants: one target per member (its admin address), labelled `mesh`, `group`, `member`;
//! the job keeps the labels the exporter sets itself (`honor_labels`), which carry the same
//! `group` and `member` values, so Prometheus stores neither twice nor as `exported_*`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::Args;

use meshmq::config::{self, Topology};

#[derive(Args, Debug)]
pub struct PrometheusConfigArgs {
    /// The topology whose members to scrape.
    pub topology: PathBuf,
    /// How often Prometheus scrapes each member (e.g. 15s, 1s, 500ms).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub scrape_interval: Duration,
    /// The job's name (the `job` label of every series).
    #[arg(long, default_value = "meshmq")]
    pub job_name: String,
}

pub fn prometheus_config(args: &PrometheusConfigArgs) -> anyhow::Result<()> {
    let topo = config::load(&args.topology).map_err(|e| anyhow!("{e}"))?;
    print!(
        "{}",
        scrape_config(&topo, args.scrape_interval, &args.job_name)?
    );
    Ok(())
}

/// A Prometheus duration: whole seconds as `Ns`, anything finer as `Nms`.
fn prometheus_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A YAML double-quoted scalar (JSON strings are valid YAML).
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The scrape configuration for `topo`, or an error naming a member Prometheus could not reach.
pub fn scrape_config(topo: &Topology, interval: Duration, job: &str) -> anyhow::Result<String> {
    if interval < Duration::from_millis(1) {
        bail!("--scrape-interval must be at least 1ms (e.g. 15s)");
    }
    if job.trim().is_empty() {
        bail!("--job-name must not be empty (e.g. meshmq)");
    }
    // Prometheus refuses a timeout longer than the interval.
    let timeout = interval.min(Duration::from_secs(10));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Prometheus scrape configuration for mesh {} ({}), from `meshmq prometheus-config`.",
        topo.mesh,
        topo.file.display()
    );
    let _ = writeln!(out, "global:");
    let _ = writeln!(out, "  scrape_interval: {}", prometheus_duration(interval));
    let _ = writeln!(
        out,
        "  evaluation_interval: {}",
        prometheus_duration(interval)
    );
    let _ = writeln!(out, "scrape_configs:");
    let _ = writeln!(out, "  - job_name: {}", quoted(job));
    let _ = writeln!(out, "    metrics_path: /metrics");
    let _ = writeln!(
        out,
        "    scrape_interval: {}",
        prometheus_duration(interval)
    );
    let _ = writeln!(out, "    scrape_timeout: {}", prometheus_duration(timeout));
    let _ = writeln!(
        out,
        "    # Each member labels its own series with group and member (the same values as below)."
    );
    let _ = writeln!(out, "    honor_labels: true");
    let _ = writeln!(out, "    static_configs:");
    for (group, member) in topo.members() {
        let admin = member.admin;
        if admin.ip().is_unspecified() {
            bail!(
                "{}: member {}'s admin address {admin} listens on every interface; Prometheus needs the address to reach it: give admin a specific address (e.g. 127.0.0.1:{})",
                topo.file.display(),
                member.name,
                admin.port()
            );
        }
        let _ = writeln!(out, "      - targets: [{}]", quoted(&admin.to_string()));
        let _ = writeln!(out, "        labels:");
        let _ = writeln!(out, "          mesh: {}", quoted(topo.mesh.as_str()));
        let _ = writeln!(out, "          group: {}", quoted(group.name.as_str()));
        let _ = writeln!(out, "          member: {}", quoted(member.name.as_str()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Topology {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            text.replace("DIR", &dir.path().display().to_string()),
        )
        .unwrap();
        config::load(&path).unwrap()
    }

    const TWO_GROUPS: &str = r#"
[mesh]
name = "m1"

[[group]]
name = "hub"
[[group.member]]
name = "hub-1"
admin = "127.0.0.1:19101"
data_dir = "DIR/hub-1"
[[group.member.listener]]
url = "tcp://127.0.0.1:19201"

[[group]]
name = "edge"
[[group.member]]
name = "edge-1"
admin = "127.0.0.2:19102"
data_dir = "DIR/edge-1"
[[group.member.listener]]
url = "tcp://127.0.0.1:19202"
"#;

    #[test]
    fn every_member_is_a_target_labelled_with_its_group_and_member() {
        let topo = load(TWO_GROUPS);
        let yaml = scrape_config(&topo, Duration::from_secs(1), "meshmq").unwrap();
        for (target, group, member) in [
            ("127.0.0.1:19101", "hub", "hub-1"),
            ("127.0.0.2:19102", "edge", "edge-1"),
        ] {
            let block = format!(
                "      - targets: [\"{target}\"]\n        labels:\n          mesh: \"m1\"\n          group: \"{group}\"\n          member: \"{member}\"\n"
            );
            assert!(yaml.contains(&block), "{block} missing from\n{yaml}");
        }
        assert_eq!(yaml.matches("- targets:").count(), 2);
        assert!(yaml.contains("  - job_name: \"meshmq\"\n"));
        assert!(yaml.contains("    honor_labels: true\n"));
        assert!(yaml.contains("    scrape_interval: 1s\n"));
        assert!(yaml.contains("    scrape_timeout: 1s\n"));
    }

    #[test]
    fn intervals_are_written_as_prometheus_durations() {
        let topo = load(TWO_GROUPS);
        let yaml = scrape_config(&topo, Duration::from_millis(1500), "j").unwrap();
        assert!(yaml.contains("    scrape_interval: 1500ms\n"), "{yaml}");
        let yaml = scrape_config(&topo, Duration::from_secs(60), "j").unwrap();
        assert!(yaml.contains("    scrape_interval: 60s\n"), "{yaml}");
        // The timeout never exceeds the interval, nor 10s.
        assert!(yaml.contains("    scrape_timeout: 10s\n"), "{yaml}");
        assert!(scrape_config(&topo, Duration::ZERO, "j").is_err());
        assert!(scrape_config(&topo, Duration::from_secs(1), " ").is_err());
    }

    #[test]
    fn a_member_listening_on_every_interface_is_named() {
        let topo = load(&TWO_GROUPS.replace("127.0.0.2:19102", "0.0.0.0:19102"));
        let err = scrape_config(&topo, Duration::from_secs(1), "meshmq")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("edge-1") && err.contains("every interface"),
            "{err}"
        );
    }
}
