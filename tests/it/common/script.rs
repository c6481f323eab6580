//! Helper scripts the tests run (python with stomp.py, paho-mqtt, or selenium driving headless
//! Chromium through chromedriver) as a [`Script`]: the script leads a process group of its own,
//! gets a scratch `TMPDIR` of its own (where Python's `tempfile`, so the browser profile, and
//! Chromium's own scratch directories land) and a run token in its environment. A process the
//! script started is one in its group (Chromium's zygotes and renderers, which overwrite their
//! environment with their title) or one that carries the token (Chromium's crash handlers, which
//! leave the group with `setsid`). Ending a script, on every path (finished, hung past its limit,
//! or its guard dropped by a panicking test), kills the whole group, waits until no live process
//! it started is left, and removes the scratch directory; [`Script::end`] reports whatever
//! outlived that so a test can fail on it.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tempfile::TempDir;

use super::{wait, GUARD};

/// The environment variable that carries a script's run token to all its descendants.
pub const TOKEN_VAR: &str = "MESHMQ_TEST_SCRIPT_RUN";

/// What outlived a script's end: live processes that carry its token (pid and command line)
/// and files left in its scratch `TMPDIR` (a browser profile, Chromium's scratch directories).
#[derive(Debug, Default)]
pub struct Leftovers {
    pub processes: Vec<(i32, String)>,
    pub files: Vec<PathBuf>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty() && self.files.is_empty()
    }
}

/// A running helper script and everything it started; see the module doc.
pub struct Script {
    pub child: Child,
    exited: Option<ExitStatus>,
    token: String,
    scratch: Option<TempDir>,
}

impl Script {
    /// Starts `cmd` (whose stdio the caller has set) as the leader of a new process group,
    /// with a scratch `TMPDIR` and a fresh run token.
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Script> {
        static RUN: AtomicU32 = AtomicU32::new(0);
        let scratch = tempfile::Builder::new()
            .prefix("meshmq-script-")
            .tempdir()
            .expect("scratch TMPDIR for a script");
        let token = format!(
            "{}-{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        );
        let child = std::os::unix::process::CommandExt::process_group(cmd, 0)
            .env("TMPDIR", scratch.path())
            .env(TOKEN_VAR, &token)
            .spawn()?;
        Ok(Script {
            child,
            exited: None,
            token,
            scratch: Some(scratch),
        })
    }

    /// The run token every process this script started carries in [`TOKEN_VAR`].
    pub fn token(&self) -> String {
        self.token.clone()
    }

    /// The scratch `TMPDIR` the script and its descendants use.
    pub fn scratch(&self) -> PathBuf {
        self.scratch
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .expect("the script has not ended")
    }

    /// The id of the process group the script leads.
    pub fn group(&self) -> i32 {
        self.child.id() as i32
    }

    /// Live processes, other than zombies, the script started: in its group or carrying its
    /// token.
    pub fn carriers(&self) -> Vec<(i32, String)> {
        carriers(&self.token, self.group())
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited
    }

    /// Waits for the script itself to exit; `None` when it still runs after `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait::poll()
            .within(timeout)
            .settle(|| self.try_wait(), Option::is_some)
    }

    /// Kills the script's process group, reaps the script, waits (within the guard) until no
    /// live process carries its token, and removes its scratch directory; returns what
    /// outlived that. Stragglers are killed by pid afterwards so that even a failing test
    /// leaves nothing running, but they are reported first.
    pub fn end(&mut self) -> Leftovers {
        self.kill_group();
        let processes = wait::poll()
            .within(GUARD)
            .settle(|| self.carriers(), Vec::is_empty);
        let files = match &self.scratch {
            Some(dir) => std::fs::read_dir(dir.path())
                .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        for (pid, _) in &processes {
            // SAFETY: a process that carries this script's token is one the script started.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        if let Some(dir) = self.scratch.take() {
            let _ = dir.close();
        }
        Leftovers { processes, files }
    }

    /// SIGKILL to every process still in the script's group, then reaps the script.
    fn kill_group(&mut self) {
        // The group keeps the leader's pid as its id while any member lives, even after the
        // leader has exited and been reaped; once the leader is reaped and nothing carries the
        // token the group is gone and its id could belong to a stranger.
        if self.exited.is_none() || !self.carriers().is_empty() {
            // SAFETY: signals the process group this script leads.
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        }
        if self.exited.is_none() {
            let _ = self.child.wait().map(|s| self.exited = Some(s));
        }
    }
}

impl Drop for Script {
    /// Ends a script nobody ended (a hung script whose test panicked, a guard dropped while
    /// unwinding); processes that outlived the group kill are recorded for [`left_behind`].
    fn drop(&mut self) {
        if self.scratch.is_some() {
            let left = self.end();
            if !left.processes.is_empty() {
                eprintln!("a helper script left {left:?} behind (now killed)");
                LEFT_BEHIND
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((self.token.clone(), left.processes));
            }
        }
    }
}

/// Processes that outlived the group kill of dropped scripts, by run token.
static LEFT_BEHIND: Mutex<Vec<(String, Processes)>> = Mutex::new(Vec::new());

/// Processes by pid and command line.
type Processes = Vec<(i32, String)>;

/// The processes that outlived the group kill when the script with run `token` was dropped.
pub fn left_behind(token: &str) -> Vec<(i32, String)> {
    LEFT_BEHIND
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(t, _)| t == token)
        .flat_map(|(_, p)| p.clone())
        .collect()
}

/// Live, non-zombie processes in process group `group` or whose environment holds
/// `TOKEN_VAR=token`.
pub fn carriers(token: &str, group: i32) -> Vec<(i32, String)> {
    let needle = format!("{TOKEN_VAR}={token}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // After the parenthesised command name: "PID (comm) STATE PPID PGRP ...".
        let mut fields = stat
            .rsplit_once(") ")
            .map(|(_, rest)| rest.split(' '))
            .into_iter()
            .flatten();
        let state = fields.next().and_then(|s| s.chars().next());
        let pgrp = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
        if matches!(state, Some('Z') | Some('X') | None) {
            continue;
        }
        let in_group = pgrp == Some(group);
        let carries = std::fs::read(entry.path().join("environ"))
            .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()));
        if !in_group && !carries {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        found.push((pid, cmdline.trim().chars().take(160).collect()));
    }
    found
}
