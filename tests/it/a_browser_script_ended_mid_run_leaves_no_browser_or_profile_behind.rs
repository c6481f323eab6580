//! Property: a browser test that ends while its headless Chromium still runs — a script that
//! hangs and is ended by its test, or one whose guard is dropped by a test that panics — leaves
//! no chromedriver, Chromium or Chromium crash handler running and no browser profile directory
//! behind. The scripts are the browser tests' own (`tests/ws_browser/browser.py`), held on a page
//! function that never answers; the harness runs them as a [`Script`] (a process group of their
//! own, a scratch `TMPDIR`, a run token in the environment), and this test finds the browser's
//! processes by their group or that token before and after.

use crate::common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::script::{self, Script};
use common::{wait, GUARD};

/// browser.py's `run` on a page function that never calls back: Chromium stays up, the script
/// hangs in `execute_async_script`, as a browser test does when the page never finishes.
const HANG: &str = r#"
import sys
sys.path.insert(0, sys.argv[1])
from browser import run
run("page.html", "(function () {})")
"#;

fn start_hung_browser() -> Script {
    Script::spawn(
        Command::new("python3")
            .args([
                "-c",
                HANG,
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ws_browser"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    )
    .expect("python3 runs (make test-deps installs selenium, chromium and chromium-driver)")
}

/// Waits until chromedriver and a Chromium renderer (the page is loaded) run for `script` and
/// its profile directory exists; returns the profile directory.
fn wait_for_the_browser(script: &Script) -> PathBuf {
    wait::poll().within(GUARD).until_or(
        "chromedriver and a Chromium renderer run for the script",
        || {
            let running = script.carriers();
            running.iter().any(|(_, c)| c.contains("chromedriver"))
                && running.iter().any(|(_, c)| c.contains("--type=renderer"))
        },
        || format!("running: {:?}", script.carriers()),
    );
    std::fs::read_dir(script.scratch())
        .expect("the script's TMPDIR")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("meshmq-chromium-"))
        })
        .expect("browser.py made its profile directory in the script's TMPDIR")
}

#[test]
fn a_hung_browser_script_ended_by_its_test_leaves_nothing_behind() {
    let mut script = start_hung_browser();
    let profile = wait_for_the_browser(&script);
    let before = script.carriers();
    assert!(script.try_wait().is_none(), "the script hangs on the page");

    let left = script.end();
    assert!(
        left.processes.is_empty(),
        "still running after the script was ended: {:?} (of {before:?})",
        left.processes
    );
    assert!(
        !profile.exists(),
        "the browser profile {} is left behind",
        profile.display()
    );
}

#[test]
fn a_browser_scripts_guard_dropped_by_a_panicking_test_leaves_nothing_behind() {
    let (tx, rx) = std::sync::mpsc::channel();
    let test = std::thread::spawn(move || {
        let script = start_hung_browser();
        let profile = wait_for_the_browser(&script);
        tx.send((script.token(), script.group(), profile, script.carriers()))
            .expect("send");
        panic!("a browser test fails while its browser runs");
    });
    assert!(test.join().is_err(), "the failing test panicked");
    let (token, group, profile, before) = rx.recv().expect("the browser had started");

    assert_eq!(
        script::left_behind(&token),
        vec![],
        "outlived the dropped script's process group (of {before:?})"
    );
    assert_eq!(script::carriers(&token, group), vec![], "still running");
    assert!(
        !profile.exists(),
        "the browser profile {} is left behind",
        profile.display()
    );
}
