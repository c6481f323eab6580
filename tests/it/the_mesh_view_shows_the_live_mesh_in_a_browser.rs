//! The mesh view works in a real browser: headless Chromium (Debian's, driven through
//! chromedriver by selenium) loads `/ui` from one member of a live mesh — not the hub — and
//! shows every member's role and every connector's state for the whole mesh; after the hub's
//! master is killed (`kill -9`) the same page, never reloaded, shows its standby as the new
//! master, the killed member as unreachable and the connector up again from the new master.
//! Closing the page ends chromedriver and Chromium and leaves no browser profile behind.

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::mesh::MeshBuilder;
use common::script::Script;
use serde_json::{json, Value};

/// The browser, kept open for the whole test; each expectation is sent on its stdin and
/// answered on its stdout (see `tests/mesh_view/browse.py`). The script leads a process group
/// of its own, so chromedriver and Chromium end with it even when the test fails.
struct Browser {
    proc: Script,
    answers: BufReader<std::process::ChildStdout>,
}

impl Browser {
    fn open(url: &str) -> Browser {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mesh_view/browse.py");
        let mut proc = Script::spawn(
            Command::new("python3")
                .arg(script)
                .arg(url)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped()),
        )
        .expect("python3 runs (make test-deps installs selenium, chromium and chromium-driver)");
        let answers = BufReader::new(proc.child.stdout.take().expect("stdout"));
        Browser { proc, answers }
    }

    /// Closes the script's stdin (it quits the browser and exits at end of input) and fails
    /// unless it exited cleanly, and chromedriver, Chromium and the browser profile with it.
    fn close(mut self) {
        drop(self.proc.child.stdin.take());
        let status = self.proc.wait_timeout(common::GUARD);
        let left = self.proc.end();
        assert!(
            status.is_some_and(|s| s.success()),
            "the browser script did not exit cleanly at end of input: {status:?}"
        );
        assert!(
            left.is_empty(),
            "the browser script left behind {left:?}: chromedriver and Chromium must end with \
             it and its browser profile must be removed"
        );
    }

    /// Waits until the page shows `want`; panics with what it showed instead.
    fn expect(&mut self, what: &str, want: Value) {
        let stdin = self.proc.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{want}").expect("write to the browser script");
        stdin.flush().expect("flush");
        let mut line = String::new();
        self.answers
            .read_line(&mut line)
            .expect("read the browser script's answer");
        let answer: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!("the browser script answered {line:?} ({e}); see its stderr above")
        });
        assert_eq!(
            answer["ok"],
            json!(true),
            "the page never showed {what}: wanted {want}, it showed {}",
            answer["seen"]
        );
        println!("the page shows {what}: {}", answer["seen"]);
    }
}

#[test]
fn the_page_shows_roles_and_connectors_and_follows_a_failover() {
    let mut mesh = MeshBuilder::new()
        .group("hub", 2, "")
        .group("edge", 1, "")
        .connector("hub", "edge", "")
        .build();
    mesh.start("huba");
    mesh.wait_until("huba serves", |m| m.member("huba").ready());
    mesh.start("hubb");
    mesh.start("edge");
    mesh.wait_until("hubb stands by and the connector is up", |m| {
        m.member("hubb").status().is_some_and(|s| s.role == "slave")
            && m.member("huba")
                .status()
                .is_some_and(|s| s.connectors.iter().all(|c| c.up) && !s.connectors.is_empty())
    });
    let connector = mesh.member("huba").status().unwrap().connectors[0]
        .name
        .clone();

    let mut browser = Browser::open(&format!("http://{}/ui", mesh.member("edge").admin));
    browser.expect(
        "each member's role and the connector up",
        json!({
            "members": {"huba": "master", "hubb": "slave", "edge": "master"},
            "masters": {"hub": "huba", "edge": "edge"},
            "connectors": {format!("huba/{connector}"): "up"},
        }),
    );

    mesh.kill9("huba");
    browser.expect(
        "the standby as the new master",
        json!({
            "members": {"huba": "unreachable", "hubb": "master", "edge": "master"},
            "masters": {"hub": "hubb"},
            "connectors": {format!("hubb/{connector}"): "up"},
        }),
    );
    browser.close();
}
