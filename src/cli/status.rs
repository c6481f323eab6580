//! `meshmq status`: every member of a topology, as one table or one JSON document, once or
//! every few seconds.
//!
//! Owns: the status report (`StatusReport`: its JSON field names are a documented interface,
//! kept stable) and its rendering as a table. Must not touch: the members themselves — it only
//! reads their admin `/status`. Invariants: every member is asked at once, each within the
//! timeout, so one stopped member costs the timeout once, never a hang; a member that does not
//! answer (or answers nonsense) is a `down` row carrying the error, never a failure of the
//! command; the verdict — does every group have a master — comes from the same report that is
//! printed.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::anyhow;
use serde::{Deserialize, Serialize};

use meshmq::config::{self, Topology};
use meshmq::server::admin::MemberStatus;

use super::http;

/// The exit code when some group has no master (other failures exit with 1, and clap's usage
/// errors with 2).
pub const NO_MASTER_EXIT: u8 = 3;

#[derive(clap::Args)]
#[command(
    after_help = "Exit status: 0 when every group has a master; 2 when some group has no \
master (the table names it); 1 when the topology cannot be read. With --watch: that of the last \
refresh before Ctrl-C."
)]
pub struct StatusArgs {
    /// The topology file every member runs from.
    pub topology: PathBuf,
    /// Print the report as JSON (one document per refresh, one line each) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Refresh every SECS seconds (2 when no value is given) until Ctrl-C.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2",
          value_parser = positive_seconds)]
    pub watch: Option<f64>,
    /// How long to wait for each member's answer, in seconds.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = positive_seconds)]
    pub timeout: f64,
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds above 0 and at most 86400 (e.g. 2 or 0.5)"
        )),
    }
}

/// The whole mesh at one moment: what `--json` prints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    pub mesh: String,
    /// One entry per group of the topology, in file order.
    pub groups: Vec<GroupReport>,
    /// One entry per member of the topology, in file order.
    pub members: Vec<MemberReport>,
    /// Groups where no member answered as master (the command then exits with 3).
    pub groups_without_master: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupReport {
    pub group: String,
    /// `none`, `file-lock` or `zookeeper`.
    pub election: String,
    /// The members answering as master: one when healthy, none during a failover.
    pub masters: Vec<String>,
    /// The highest epoch its members report (`null` when none answered).
    pub epoch: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberReport {
    pub group: String,
    pub member: String,
    /// Its admin address, as the topology gives it.
    pub admin: String,
    /// `master`, `slave`, `candidate`, `starting`, `stopping` — or `down` when it did not
    /// answer.
    pub role: String,
    /// The fields below are `null` (or empty) for a member that is down.
    pub epoch: Option<u64>,
    /// Open connections on its client listeners (clients and bridges from other groups).
    pub clients: Option<u64>,
    /// Messages held by all its destinations (pending plus in flight).
    pub queue_depth: Option<u64>,
    pub connectors_up: usize,
    pub connectors_total: usize,
    pub connectors: Vec<ConnectorReport>,
    /// On a master of a ZooKeeper group: each connected slave and how far behind it is.
    pub slaves: Vec<SlaveReport>,
    /// Replication lag in records: on a master the largest of its slaves'; on a slave its own,
    /// as its group's master reports it (`null` when the master does not list it).
    pub lag: Option<u64>,
    /// Why the member counts as down.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnectorReport {
    pub name: String,
    pub peer: String,
    pub up: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SlaveReport {
    pub member: String,
    /// Every record up to this journal index is held by the slave.
    pub acked: u64,
    pub lag: u64,
}

/// A member as the topology names it.
#[derive(Debug, Clone)]
pub struct MemberRef {
    pub group: String,
    pub election: String,
    pub member: String,
    pub admin: SocketAddr,
}

impl StatusReport {
    /// Builds the report from each target's answer (`answers[i]` belongs to `targets[i]`).
    pub fn build(
        mesh: &str,
        targets: &[MemberRef],
        answers: Vec<Result<MemberStatus, String>>,
    ) -> StatusReport {
        let mut members: Vec<MemberReport> = targets
            .iter()
            .zip(answers)
            .map(|(t, answer)| member_report(t, answer))
            .collect();
        // A slave's lag is what its group's master reports for it.
        for i in 0..members.len() {
            if members[i].role == "slave" {
                let lag = members
                    .iter()
                    .filter(|m| m.group == members[i].group && m.role == "master")
                    .flat_map(|m| m.slaves.iter())
                    .filter(|s| s.member == members[i].member)
                    .map(|s| s.lag)
                    .max();
                members[i].lag = lag;
            }
        }
        let mut groups: Vec<GroupReport> = Vec::new();
        for t in targets {
            if groups.iter().any(|g| g.group == t.group) {
                continue;
            }
            let of_group = || members.iter().filter(|m| m.group == t.group);
            groups.push(GroupReport {
                group: t.group.clone(),
                election: t.election.clone(),
                masters: of_group()
                    .filter(|m| m.role == "master")
                    .map(|m| m.member.clone())
                    .collect(),
                epoch: of_group().filter_map(|m| m.epoch).max(),
            });
        }
        let groups_without_master = groups
            .iter()
            .filter(|g| g.masters.is_empty())
            .map(|g| g.group.clone())
            .collect();
        StatusReport {
            mesh: mesh.to_string(),
            groups,
            members,
            groups_without_master,
        }
    }

    /// True when every group has a master.
    pub fn every_group_has_a_master(&self) -> bool {
        self.groups_without_master.is_empty()
    }

    /// The report as a table: one line per member, then one line per group without a master
    /// (or with more than one).
    pub fn table(&self) -> String {
        let header = [
            "GROUP",
            "MEMBER",
            "ROLE",
            "EPOCH",
            "CLIENTS",
            "DEPTH",
            "CONNECTORS",
            "LAG",
            "ADMIN",
        ];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
        let dash = || "-".to_string();
        for m in &self.members {
            let opt = |v: Option<u64>| v.map_or_else(dash, |v| v.to_string());
            let connectors = if m.connectors_total == 0 {
                dash()
            } else {
                format!("{}/{} up", m.connectors_up, m.connectors_total)
            };
            let lag = match (m.role.as_str(), m.lag) {
                ("master", Some(max)) => {
                    let each: Vec<String> = m
                        .slaves
                        .iter()
                        .map(|s| format!("{} {}", s.member, s.lag))
                        .collect();
                    format!("max {max} ({})", each.join(", "))
                }
                ("master", None)
                    if self
                        .group(&m.group)
                        .is_some_and(|g| g.election == "zookeeper") =>
                {
                    "no slaves".to_string()
                }
                (_, lag) => opt(lag),
            };
            let mut admin = m.admin.clone();
            if let Some(e) = &m.error {
                admin = format!("{admin}  {e}");
            }
            rows.push(vec![
                m.group.clone(),
                m.member.clone(),
                m.role.clone(),
                opt(m.epoch),
                opt(m.clients),
                opt(m.queue_depth),
                connectors,
                lag,
                admin,
            ]);
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in &rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        for g in &self.groups {
            match g.masters.len() {
                0 => out.push_str(&format!("group {}: NO MASTER\n", g.group)),
                1 => {}
                _ => out.push_str(&format!(
                    "group {}: {} members answer as master: {}\n",
                    g.group,
                    g.masters.len(),
                    g.masters.join(", ")
                )),
            }
        }
        out
    }

    fn group(&self, name: &str) -> Option<&GroupReport> {
        self.groups.iter().find(|g| g.group == name)
    }
}

fn member_report(t: &MemberRef, answer: Result<MemberStatus, String>) -> MemberReport {
    let mut r = MemberReport {
        group: t.group.clone(),
        member: t.member.clone(),
        admin: t.admin.to_string(),
        role: "down".to_string(),
        epoch: None,
        clients: None,
        queue_depth: None,
        connectors_up: 0,
        connectors_total: 0,
        connectors: Vec::new(),
        slaves: Vec::new(),
        lag: None,
        error: None,
    };
    let s = match answer {
        Ok(s) if s.group == t.group && s.member == t.member => s,
        Ok(s) => {
            r.error = Some(format!(
                "{} answers as member {} of group {}, not as {} of {}: the topology does not \
                 match what runs there",
                t.admin, s.member, s.group, t.member, t.group
            ));
            return r;
        }
        Err(e) => {
            r.error = Some(e);
            return r;
        }
    };
    r.role = s.role;
    r.epoch = Some(s.epoch);
    r.clients = Some(s.connections);
    r.queue_depth = Some(s.destinations.iter().map(|d| d.depth).sum());
    r.connectors = s
        .connectors
        .iter()
        .map(|c| ConnectorReport {
            name: c.name.clone(),
            peer: c.peer.clone(),
            up: c.up,
        })
        .collect();
    r.connectors_total = r.connectors.len();
    r.connectors_up = r.connectors.iter().filter(|c| c.up).count();
    r.slaves = s
        .slaves
        .iter()
        .map(|f| SlaveReport {
            member: f.member.clone(),
            acked: f.acked,
            lag: f.lag,
        })
        .collect();
    if r.role == "master" {
        r.lag = r.slaves.iter().map(|s| s.lag).max();
    }
    r
}

pub(super) fn targets(topo: &Topology) -> Vec<MemberRef> {
    topo.members()
        .map(|(g, m)| MemberRef {
            group: g.name.to_string(),
            election: g.election.as_str().to_string(),
            member: m.name.to_string(),
            admin: m.admin,
        })
        .collect()
}

/// Asks every target at once; each answer within `timeout`.
pub(super) async fn ask_all(
    targets: &[MemberRef],
    timeout: Duration,
) -> Vec<Result<MemberStatus, String>> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, t) in targets.iter().enumerate() {
        let admin = t.admin;
        tasks.spawn(async move { (i, ask(admin, timeout).await) });
    }
    let mut answers: Vec<Result<MemberStatus, String>> =
        vec![Err("no answer".to_string()); targets.len()];
    while let Some(done) = tasks.join_next().await {
        if let Ok((i, answer)) = done {
            answers[i] = answer;
        }
    }
    answers
}

async fn ask(admin: SocketAddr, timeout: Duration) -> Result<MemberStatus, String> {
    match http::get(admin, "/status", timeout).await {
        Ok((200, body)) => serde_json::from_str::<MemberStatus>(&body)
            .map_err(|e| format!("http://{admin}/status is not a meshmq status: {e}")),
        Ok((code, _)) => Err(format!("http://{admin}/status answered HTTP {code}")),
        Err(e) => Err(format!("{e:#}")),
    }
}

fn load(path: &Path) -> anyhow::Result<Topology> {
    config::load(path).map_err(|e| anyhow!("{e}"))
}

/// `meshmq status`: prints the report (once, or on every refresh until Ctrl-C); returns
/// whether every group had a master in the last one.
pub async fn status(args: &StatusArgs) -> anyhow::Result<bool> {
    let topo = load(&args.topology)?;
    let targets = targets(&topo);
    let timeout = Duration::from_secs_f64(args.timeout);
    let tty = std::io::stdout().is_terminal();
    let mut stdout = std::io::stdout();
    // Registered before the first refresh, so a Ctrl-C that comes while members are being
    // asked is kept for the wait below rather than killing the process mid-line.
    let mut interrupt = match args.watch {
        Some(_) => Some(tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::interrupt(),
        )?),
        None => None,
    };
    loop {
        let answers = ask_all(&targets, timeout).await;
        let report = StatusReport::build(topo.mesh.as_str(), &targets, answers);
        let mut text = if args.json {
            format!("{}\n", serde_json::to_string(&report)?)
        } else {
            report.table()
        };
        if args.watch.is_some() && !args.json {
            let stamp = humantime_now();
            text = if tty {
                // Clear the screen and go home, then draw.
                format!("\x1b[2J\x1b[H{stamp}\n\n{text}")
            } else {
                format!("{stamp}\n{text}\n")
            };
        }
        stdout.write_all(text.as_bytes())?;
        stdout.flush()?;
        let ok = report.every_group_has_a_master();
        let (Some(every), Some(interrupt)) = (args.watch, interrupt.as_mut()) else {
            return Ok(ok);
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs_f64(every)) => {}
            _ = interrupt.recv() => return Ok(ok),
        }
    }
}

/// The wall-clock time as `HH:MM:SS UTC`, the header of a `--watch` refresh.
fn humantime_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let day = secs % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        day / 3600,
        (day % 3600) / 60,
        day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshmq::broker::DestinationStats;
    use meshmq::ha::replication::FollowerStatus;
    use meshmq::network::ConnectorStatus;
    use meshmq::server::admin::ProcessStatus;

    fn target(group: &str, election: &str, member: &str, port: u16) -> MemberRef {
        MemberRef {
            group: group.into(),
            election: election.into(),
            member: member.into(),
            admin: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn answer(t: &MemberRef, role: &str, epoch: u64) -> MemberStatus {
        MemberStatus {
            mesh: "m".into(),
            group: t.group.clone(),
            member: t.member.clone(),
            role: role.into(),
            epoch,
            ready: role == "master",
            uptime_seconds: 1.0,
            version: "0".into(),
            connections: 0,
            listeners: Vec::new(),
            memory_used_bytes: 0,
            memory_limit_bytes: 0,
            process: ProcessStatus::default(),
            destinations: Vec::new(),
            connectors: Vec::new(),
            cluster: None,
            slaves: Vec::new(),
            drain: None,
        }
    }

    fn connector(name: &str, up: bool) -> ConnectorStatus {
        ConnectorStatus {
            name: name.into(),
            peer: "hub".into(),
            up,
            forwarded: 0,
            acked: 0,
            replayed: 0,
            reconnects: 0,
            inflight: 0,
            remote_demand: 0,
        }
    }

    /// A three-member ZooKeeper group with one slave down, and a one-member edge.
    fn mesh() -> StatusReport {
        let t = vec![
            target("g", "zookeeper", "g-1", 9001),
            target("g", "zookeeper", "g-2", 9002),
            target("g", "zookeeper", "g-3", 9003),
            target("edge", "none", "edge-1", 9004),
        ];
        let mut master = answer(&t[0], "master", 7);
        master.connections = 12;
        master.destinations = vec![
            DestinationStats {
                destination: "queue://a".into(),
                depth: 5,
                ..Default::default()
            },
            DestinationStats {
                destination: "queue://b".into(),
                depth: 3,
                ..Default::default()
            },
        ];
        master.connectors = vec![connector("g->edge", true), connector("g->x", false)];
        master.slaves = vec![
            FollowerStatus {
                member: "g-2".into(),
                acked: 90,
                lag: 10,
            },
            FollowerStatus {
                member: "g-3".into(),
                acked: 40,
                lag: 60,
            },
        ];
        let slave = answer(&t[1], "slave", 7);
        let edge = answer(&t[3], "master", 0);
        StatusReport::build(
            "m",
            &t,
            vec![
                Ok(master),
                Ok(slave),
                Err("cannot reach the admin port 127.0.0.1:9003".into()),
                Ok(edge),
            ],
        )
    }

    #[test]
    fn rows_carry_role_epoch_depth_connectors_and_lag_and_a_silent_member_is_down() {
        let r = mesh();
        let m = &r.members;
        assert_eq!(m.len(), 4);
        assert_eq!(
            (
                m[0].role.as_str(),
                m[0].epoch,
                m[0].clients,
                m[0].queue_depth
            ),
            ("master", Some(7), Some(12), Some(8))
        );
        assert_eq!((m[0].connectors_up, m[0].connectors_total), (1, 2));
        assert_eq!(m[0].lag, Some(60), "a master's lag is its slowest slave's");
        assert_eq!((m[1].role.as_str(), m[1].lag), ("slave", Some(10)));
        assert_eq!(m[2].role, "down");
        assert_eq!(
            m[2].error.as_deref(),
            Some("cannot reach the admin port 127.0.0.1:9003")
        );
        assert_eq!((m[2].epoch, m[2].clients, m[2].lag), (None, None, None));
        assert_eq!(r.groups[0].masters, vec!["g-1".to_string()]);
        assert_eq!(r.groups[0].epoch, Some(7));
        assert!(r.every_group_has_a_master());
    }

    #[test]
    fn a_group_without_master_is_named_and_fails_the_verdict() {
        let t = vec![
            target("g", "file-lock", "g-1", 9001),
            target("g", "file-lock", "g-2", 9002),
        ];
        let r = StatusReport::build(
            "m",
            &t,
            vec![Ok(answer(&t[0], "slave", 3)), Err("no answer".into())],
        );
        assert_eq!(r.groups_without_master, vec!["g".to_string()]);
        assert!(!r.every_group_has_a_master());
        assert!(r.table().contains("group g: NO MASTER\n"), "{}", r.table());
    }

    #[test]
    fn a_member_answering_for_another_name_is_down_with_the_reason() {
        let t = vec![target("g", "none", "g-1", 9001)];
        let other = target("h", "none", "h-1", 9001);
        let r = StatusReport::build("m", &t, vec![Ok(answer(&other, "master", 1))]);
        assert_eq!(r.members[0].role, "down");
        let e = r.members[0].error.as_deref().unwrap_or("");
        assert!(e.contains("h-1") && e.contains("does not match"), "{e}");
        assert_eq!(r.groups_without_master, vec!["g".to_string()]);
    }

    #[test]
    fn the_table_aligns_columns_and_shows_every_member() {
        let table = mesh().table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines,
            vec![
                "GROUP  MEMBER  ROLE    EPOCH  CLIENTS  DEPTH  CONNECTORS  LAG                      ADMIN",
                "g      g-1     master  7      12       8      1/2 up      max 60 (g-2 10, g-3 60)  127.0.0.1:9001",
                "g      g-2     slave   7      0        0      -           10                       127.0.0.1:9002",
                "g      g-3     down    -      -        -      -           -                        127.0.0.1:9003  cannot reach the admin port 127.0.0.1:9003",
                "edge   edge-1  master  0      0        0      -           -                        127.0.0.1:9004",
            ]
        );
    }

    #[test]
    fn the_json_field_names_are_the_documented_ones() {
        let v = serde_json::to_value(mesh()).expect("serialize");
        let keys = |v: &serde_json::Value| -> Vec<String> {
            let mut k: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(
            keys(&v),
            ["groups", "groups_without_master", "members", "mesh"]
        );
        assert_eq!(
            keys(&v["groups"][0]),
            ["election", "epoch", "group", "masters"]
        );
        assert_eq!(
            keys(&v["members"][0]),
            [
                "admin",
                "clients",
                "connectors",
                "connectors_total",
                "connectors_up",
                "epoch",
                "error",
                "group",
                "lag",
                "member",
                "queue_depth",
                "role",
                "slaves",
            ]
        );
        assert_eq!(
            keys(&v["members"][0]["connectors"][0]),
            ["name", "peer", "up"]
        );
        assert_eq!(
            keys(&v["members"][0]["slaves"][0]),
            ["acked", "lag", "member"]
        );
        assert_eq!(v["members"][2]["role"], "down");
        assert!(v["members"][2]["epoch"].is_null());
        let back: StatusReport = serde_json::from_value(v).expect("round trip");
        assert_eq!(back, mesh());
    }

    #[test]
    fn watch_and_timeout_refuse_what_is_not_a_positive_number_of_seconds() {
        assert_eq!(positive_seconds("2"), Ok(2.0));
        assert_eq!(positive_seconds("0.5"), Ok(0.5));
        for bad in ["0", "-1", "x", "NaN", "inf"] {
            let e = positive_seconds(bad).unwrap_err();
            assert!(e.contains("seconds"), "{bad}: {e}");
        }
    }
}
