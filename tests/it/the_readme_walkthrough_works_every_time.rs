//! The README's walkthrough works every time, as written. The demo topology (with its own
//! ports, the ones the README names; only its shared directories moved to a scratch dir) is
//! brought up with `meshmq up` three times, and each time the shell block the README marks as
//! the walkthrough runs unchanged: ten persistent messages sent to the hub reach a consumer on
//! edge-1, and `meshmq status` shows a master in every group. On every start the first member
//! of each group serves and the table `up` prints says so (starting both members of a pair at
//! once let either win the lock, and the README's ports then refused one run in three). In the
//! last round the hub's master is killed first: the same commands work through its standby.
//!
//! The demo's fixed ports must be free: stop a `make run` before running this test.

use crate::common;

use std::path::{Path, PathBuf};

use common::Up;

/// The README's walkthrough block: the commands after the marker, up to the end of the block.
fn walkthrough() -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("read README.md");
    let marker = "<!-- walkthrough:";
    let at = readme
        .find(marker)
        .expect("README.md marks its walkthrough block");
    let block = &readme[at..];
    let start = block.find("```sh\n").expect("a sh block after the marker") + "```sh\n".len();
    let len = block[start..].find("```").expect("the block ends");
    block[start..start + len]
        .lines()
        // The test puts its own build of meshmq first on PATH instead.
        .filter(|l| !l.starts_with("export PATH="))
        .collect::<Vec<_>>()
        .join("\n")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The demo topology with its shared directories under `dir` (ports unchanged).
fn demo_copy(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("topologies/demo.toml")).expect("read demo");
    let shared = "shared_dir = \"../data/demo/";
    assert_eq!(text.matches(shared).count(), 3, "three file-lock groups");
    let copy = text
        .replace(shared, "shared_dir = \"data/")
        .replace("secret_file = \"../data/demo/", "secret_file = \"data/");
    common::write_file(dir, "demo.toml", &copy)
}

/// Runs the walkthrough block with bash from the repository's top directory; returns what it
/// printed (stdout, then stderr, where the CLI reports its counts). A failure shows the
/// members' logs as `up` printed them.
fn run_walkthrough(script: &str, up: &Up, round: u32) -> String {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_meshmq"));
    let path = format!(
        "{}:{}",
        bin.parent().expect("the binary's directory").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut run = common::CliChild::spawn(
        std::process::Command::new("bash")
            .args(["-euo", "pipefail", "-c", script])
            .current_dir(repo())
            .env("PATH", path),
    );
    let status = run.proc.wait_timeout(common::GUARD);
    let printed = format!("{}{}", run.stdout(), run.stderr());
    if !status.is_some_and(|s| s.success()) {
        let logs = up.0.stdout();
        let tail: Vec<&str> = logs.lines().rev().take(150).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "round {round}: the walkthrough failed ({status:?}):\n{script}\nit printed:\n{printed}\nthe members' logs (last lines):\n{}",
            tail.join("\n")
        );
    }
    printed
}

/// The role `up`'s table gives `member`.
fn role_in_table(table: &str, member: &str) -> String {
    table
        .lines()
        .find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() > 2 && cols[1] == member).then(|| cols[2].to_string())
        })
        .unwrap_or_else(|| panic!("`up` prints no row for {member}:\n{table}"))
}

#[test]
fn the_readme_walkthrough_works_every_time_whichever_member_serves() {
    let script = walkthrough();
    assert!(
        script.contains("meshmq produce") && script.contains("meshmq consume"),
        "the walkthrough produces and consumes:\n{script}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let topology = demo_copy(dir.path());
    for round in 1..=3 {
        let up = Up::start(&topology);
        let table = up.0.stdout();
        for (first, second) in [
            ("hub-1", "hub-2"),
            ("edge-1a", "edge-1b"),
            ("edge-2a", "edge-2b"),
        ] {
            assert_eq!(
                role_in_table(&table, first),
                "serves",
                "round {round}:\n{table}"
            );
            assert_eq!(
                role_in_table(&table, second),
                "standby",
                "round {round}:\n{table}"
            );
        }
        let hub_master = if round == 3 {
            // SAFETY: signalling a member `up` started, found among its children.
            unsafe { libc::kill(up.pid_of("hub-1"), libc::SIGKILL) };
            let standby = "127.0.0.1:8171".parse().expect("hub-2's admin address");
            common::wait_until("hub-2 takes over the hub", || {
                matches!(common::http_get(standby, "/readyz"), Ok((200, _)))
            });
            "hub-2"
        } else {
            "hub-1"
        };

        let out = run_walkthrough(&script, &up, round);
        let hellos = out.lines().filter(|l| *l == "hello").count();
        assert_eq!(hellos, 10, "round {round}: the consumer printed:\n{out}");
        assert!(out.contains("sent 10 messages"), "round {round}:\n{out}");
        assert!(
            out.contains("received 10 messages"),
            "round {round}:\n{out}"
        );
        let master_row = out
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(hub_master))
            .unwrap_or_else(|| panic!("round {round}: status shows no {hub_master}:\n{out}"));
        assert!(
            master_row.contains("master"),
            "round {round}: {hub_master} serves the hub:\n{out}"
        );
        up.stop();
    }
}
