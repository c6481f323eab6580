//! `meshmq status` and the HA metrics tell the truth about a live mesh: a ZooKeeper-elected
//! group of three (real ZooKeeper, real processes) under a receipted load, and a file-lock pair
//! whose master bridges to it. The table and `--json` show the one master of each group with
//! the epoch it serves, the ZooKeeper slaves with the lag their master reports, the queue
//! depth and the connector up; `--watch` redraws until SIGINT. On `/metrics` the master and the
//! slaves report their role, the epoch, the ZooKeeper session, the master each slave's lag and
//! acks that keep rising under load, the file-lock pair its role and epoch — and every
//! member's exposition passes `promtool check metrics`. A killed member becomes a `down` row, a
//! stopped one (it accepts and never answers) too, and the command still ends; a group left
//! without a master makes it exit 3, and 0 again once a master is back.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::ha::{GroupSpec, HaGroup, Load};
use common::pair::file_lock_group;
use common::topology::Connector;
use common::zk::ZooKeeper;
use common::{
    http_get, http_get_within, meshmq, metric_sum, promtool_check, run, CliChild, Finished,
};
use serde_json::Value;

/// `meshmq status TOPOLOGY ARGS…`, run to its end (within the guard: a hang fails the test).
fn status(group: &HaGroup, args: &[&str]) -> Finished {
    run(meshmq()
        .arg("status")
        .arg(group.topology())
        .args(["--timeout", "1"])
        .args(args))
}

fn status_json(group: &HaGroup) -> (Finished, Value) {
    let done = status(group, &["--json"]);
    let report: Value = serde_json::from_str(done.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "`meshmq status --json` printed no JSON document ({e}):\n{}\n{}",
            done.stdout, done.stderr
        )
    });
    (done, report)
}

fn member<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["member"] == name)
        .unwrap_or_else(|| panic!("no row for {name}: {report:#}"))
}

fn group_of<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["group"] == name)
        .unwrap_or_else(|| panic!("no group {name}: {report:#}"))
}

/// The cells of member `name`'s table line, cut at the header's column starts (a cell may
/// hold spaces, as `1/1 up` does).
fn table_row(table: &str, name: &str) -> Vec<String> {
    let mut lines = table.lines();
    let header = lines.next().expect("a header line");
    let starts: Vec<usize> = header
        .split_whitespace()
        .map(|h| header.find(h).expect("a header cell"))
        .collect();
    let cells = |line: &str| -> Vec<String> {
        starts
            .iter()
            .enumerate()
            .map(|(i, &from)| {
                let to = starts.get(i + 1).copied().unwrap_or(line.len());
                line.get(from..to.min(line.len()))
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
            .collect()
    };
    lines
        .map(cells)
        .find(|c| c.get(1).map(String::as_str) == Some(name))
        .unwrap_or_else(|| panic!("no table row for {name}:\n{table}"))
}

fn metrics_of(admin: SocketAddr) -> String {
    match http_get(admin, "/metrics") {
        Ok((200, body)) => body,
        other => panic!("GET http://{admin}/metrics: {other:?}"),
    }
}

fn assert_promtool_clean(who: &str, text: &str) {
    let checked = promtool_check(text);
    let lint = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        checked.status.success() && lint.is_empty(),
        "promtool on {who}'s /metrics: {lint}\n{text}"
    );
}

fn role_of(text: &str) -> Vec<&'static str> {
    ["master", "slave", "candidate"]
        .into_iter()
        .filter(|r| metric_sum(text, "meshmq_ha_role", &[&format!("role=\"{r}\"")]) == 1.0)
        .collect()
}

#[test]
fn status_and_ha_metrics_describe_the_live_mesh() {
    let zk = ZooKeeper::standalone();
    let logs = tempfile::tempdir().expect("tempdir");
    let (f_group, mut f) = file_lock_group("f", "f-shared", "200ms", "tcp", logs.path());
    let mut group = HaGroup::start(
        &zk.connect_string(),
        GroupSpec {
            extra_groups: vec![f_group],
            extra_connectors: vec![Connector::new("f", "g", &[])],
            ..GroupSpec::default()
        },
    );
    f[0].start(group.topology());
    group.wait_for("f-1 takes the lock and serves", || f[0].ready());
    f[1].start(group.topology());
    let master = group.wait_master("g has a master");
    let g_master = group.members[master].name.clone();
    let slaves: Vec<usize> = (0..3).filter(|&i| i != master).collect();
    let epoch = group.members[master]
        .status()
        .expect("master /status")
        .epoch;

    let load = Load::start(group.endpoints(), 0, Duration::from_secs(10));
    load.wait_more(&group, 100, "before the first status");
    // The bridge f -> g is up, and both slaves are listed by the master.
    group.wait_for("f-1's connector to g is up", || {
        common::member_status(f[0].admin)
            .connectors
            .iter()
            .all(|c| c.up)
            && !common::member_status(f[0].admin).connectors.is_empty()
    });
    group.wait_for("f-2 stands by as slave", || {
        http_get_within(f[1].admin, "/status", Duration::from_millis(400))
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
            .is_some_and(|s| s["role"] == "slave")
    });
    group.wait_for("the master lists both slaves", || {
        slaves.iter().all(|&s| group.slave_lag(master, s).is_some())
    });

    // --- the JSON report ---
    let (done, report) = status_json(&group);
    assert!(
        done.status.success(),
        "every group has a master, so status exits 0: {done:?}"
    );
    assert_eq!(report["mesh"], "ha");
    assert_eq!(report["groups_without_master"], Value::Array(vec![]));
    let g = group_of(&report, "g");
    assert_eq!(g["election"], "zookeeper");
    assert_eq!(g["masters"], serde_json::json!([g_master]));
    assert_eq!(g["epoch"], epoch);
    let row = member(&report, &g_master);
    assert_eq!(row["role"], "master");
    assert_eq!(row["epoch"], epoch);
    assert!(
        row["queue_depth"].as_u64().is_some_and(|d| d > 0),
        "the master holds the load's unconsumed messages: {row:#}"
    );
    assert!(
        row["clients"].as_u64().is_some_and(|c| c >= 2),
        "the load's producer and f's bridge are connected to the master: {row:#}"
    );
    let listed: Vec<&str> = row["slaves"]
        .as_array()
        .expect("slaves")
        .iter()
        .map(|s| s["member"].as_str().expect("slave name"))
        .collect();
    for &s in &slaves {
        let name = &group.members[s].name;
        assert!(listed.contains(&name.as_str()), "{name} listed: {row:#}");
        let srow = member(&report, name);
        assert_eq!(srow["role"], "slave", "{srow:#}");
        assert_eq!(srow["epoch"], epoch, "{srow:#}");
        assert!(srow["lag"].is_u64(), "a slave's row has its lag: {srow:#}");
        assert!(srow["error"].is_null());
    }
    assert!(
        row["lag"].is_u64(),
        "the master's row has the max lag: {row:#}"
    );
    let fg = group_of(&report, "f");
    assert_eq!(fg["election"], "file-lock");
    assert_eq!(fg["masters"], serde_json::json!(["f-1"]));
    let f_epoch = fg["epoch"].as_u64().expect("f's epoch");
    assert!(f_epoch >= 1, "{fg:#}");
    let f1 = member(&report, "f-1");
    assert_eq!(f1["connectors_up"], 1, "{f1:#}");
    assert_eq!(f1["connectors_total"], 1, "{f1:#}");
    assert_eq!(f1["connectors"][0]["up"], true);
    assert_eq!(member(&report, "f-2")["role"], "slave");
    assert_eq!(
        member(&report, "f-2")["epoch"],
        f_epoch,
        "a file-lock standby knows the group's epoch"
    );

    // --- the table ---
    let done = status(&group, &[]);
    assert!(done.status.success(), "{done:?}");
    let table = done.stdout;
    let header: Vec<&str> = table
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "GROUP",
            "MEMBER",
            "ROLE",
            "EPOCH",
            "CLIENTS",
            "DEPTH",
            "CONNECTORS",
            "LAG",
            "ADMIN"
        ]
    );
    let mrow = table_row(&table, &g_master);
    assert_eq!(
        (mrow[0].as_str(), mrow[2].as_str()),
        ("g", "master"),
        "{table}"
    );
    assert_eq!(mrow[3], epoch.to_string(), "{table}");
    assert!(
        mrow[7].starts_with("max "),
        "the master's lag column: {table}"
    );
    for &s in &slaves {
        let srow = table_row(&table, &group.members[s].name);
        assert_eq!(srow[2], "slave", "{table}");
        assert_eq!(srow[3], epoch.to_string(), "{table}");
        assert!(srow[7].parse::<u64>().is_ok(), "a slave's lag: {table}");
    }
    let frow = table_row(&table, "f-1");
    assert_eq!(
        (frow[2].as_str(), frow[6].as_str()),
        ("master", "1/1 up"),
        "{table}"
    );
    assert!(!table.contains("NO MASTER"), "{table}");

    // --- the HA metrics ---
    let m_text = metrics_of(group.members[master].admin);
    assert_eq!(role_of(&m_text), ["master"], "{m_text}");
    assert_eq!(metric_sum(&m_text, "meshmq_ha_epoch", &[]), epoch as f64);
    assert_eq!(
        metric_sum(&m_text, "meshmq_zookeeper_session_connected", &[]),
        1.0
    );
    assert!(
        metric_sum(&m_text, "meshmq_ha_elections_total", &["result=\"won\""]) >= 1.0,
        "the master won the election it serves in: {m_text}"
    );
    for &s in &slaves {
        let name = &group.members[s].name;
        let slave = format!("slave=\"{name}\"");
        assert!(
            m_text.contains(&format!("meshmq_replication_lag_records{{{slave}")),
            "the master exports {name}'s lag: {m_text}"
        );
        let before = metric_sum(&m_text, "meshmq_replication_acks_total", &[&slave]);
        assert!(before > 0.0, "{name} has acked: {m_text}");
        load.wait_more(&group, 50, &format!("while {name}'s acks are counted"));
        group.wait_for(&format!("{name}'s acks rise under load"), || {
            let now = metrics_of(group.members[master].admin);
            metric_sum(&now, "meshmq_replication_acks_total", &[&slave]) > before
        });
        let s_text = metrics_of(group.members[s].admin);
        assert_eq!(role_of(&s_text), ["slave"], "{s_text}");
        assert_eq!(metric_sum(&s_text, "meshmq_ha_epoch", &[]), epoch as f64);
        assert_eq!(
            metric_sum(&s_text, "meshmq_zookeeper_session_connected", &[]),
            1.0
        );
        assert!(
            !s_text.contains("meshmq_replication_lag_records"),
            "a slave has no slaves to report: {s_text}"
        );
        assert_promtool_clean(name, &s_text);
    }
    assert_promtool_clean(&g_master, &metrics_of(group.members[master].admin));
    for (fm, role) in [(&f[0], "master"), (&f[1], "slave")] {
        let text = metrics_of(fm.admin);
        assert_eq!(role_of(&text), [role], "{}: {text}", fm.name);
        assert_eq!(metric_sum(&text, "meshmq_ha_epoch", &[]), f_epoch as f64);
        assert!(
            !text.contains("meshmq_zookeeper_session_connected"),
            "no ZooKeeper session in a file-lock group: {text}"
        );
        assert_promtool_clean(&fm.name, &text);
    }
    assert!(
        metric_sum(
            &metrics_of(f[0].admin),
            "meshmq_ha_elections_total",
            &["result=\"won\""]
        ) >= 1.0
    );

    // --- --watch redraws until SIGINT ---
    let watch = CliChild::spawn(
        meshmq()
            .arg("status")
            .arg(group.topology())
            .args(["--watch", "0.2"]),
    );
    group.wait_for("`status --watch` drew the table three times", || {
        watch.stdout().matches("GROUP").count() >= 3
    });
    watch.proc.signal(libc::SIGINT);
    let done = watch.finish();
    assert!(
        done.status.success(),
        "--watch ends on SIGINT with the last verdict (every group has a master): {done:?}"
    );
    assert!(
        !done.stdout.contains('\x1b'),
        "no screen control codes when stdout is not a terminal"
    );

    // --- a killed slave is a down row; the command still ends ---
    let dead = slaves[0];
    let dead_name = group.members[dead].name.clone();
    group.kill9(dead);
    let (done, report) = status_json(&group);
    assert!(done.status.success(), "g still has its master: {done:?}");
    let row = member(&report, &dead_name);
    assert_eq!(row["role"], "down", "{row:#}");
    assert!(
        row["error"].is_string() && row["epoch"].is_null(),
        "{row:#}"
    );
    let done = status(&group, &[]);
    let row = table_row(&done.stdout, &dead_name);
    assert_eq!(row[2], "down", "{}", done.stdout);
    assert!(
        row[8].contains("cannot reach") || row[8].contains("no answer"),
        "the error follows the admin address: {}",
        done.stdout
    );

    // --- a stopped member (accepts, never answers) is down too; f without master: exit 3 ---
    f[1].signal(libc::SIGSTOP);
    f[0].kill9();
    let (done, report) = status_json(&group);
    assert_eq!(
        done.status.code(),
        Some(3),
        "f has no master: exit 3: {done:?}"
    );
    assert_eq!(report["groups_without_master"], serde_json::json!(["f"]));
    for name in ["f-1", "f-2"] {
        assert_eq!(member(&report, name)["role"], "down", "{report:#}");
    }
    let done = status(&group, &[]);
    assert_eq!(done.status.code(), Some(3), "{done:?}");
    assert!(
        done.stdout.contains("group f: NO MASTER"),
        "{}",
        done.stdout
    );

    // f-2 goes on, takes the lock, and the verdict is good again.
    f[1].signal(libc::SIGCONT);
    group.wait_for("f-2 takes over", || f[1].ready());
    let f_logs = format!("--- f-1 ---\n{}\n--- f-2 ---\n{}", f[0].log(), f[1].log());
    let (done, report) = status_json(&group);
    assert!(done.status.success(), "{done:?}\n{f_logs}");
    assert_eq!(
        group_of(&report, "f")["masters"],
        serde_json::json!(["f-2"])
    );
    assert!(group_of(&report, "f")["epoch"].as_u64() > Some(f_epoch));
    drop(load);
}
