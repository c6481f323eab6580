//! Partitions on loopback with iptables, for the tests that cut one link between real
//! processes. Every loopback packet is sent by a local socket, so rules in the OUTPUT chain see
//! them all; each rule names only addresses of the test's own `127.a.b.0/24` range (or a process
//! owner), so tests running in parallel are untouched. A [`Partition`] removes its rules when
//! healed or dropped — also when the test panics — and, its rules tagged with the test's name,
//! clears those a killed earlier run left behind.
//!
//! Only root may change iptables: [`unusable`] says so when the tests do not run as root (the
//! caller then skips, printing why); as root, a missing `iptables` is a failure (`make
//! test-deps` installs it).

use std::net::Ipv4Addr;
use std::process::Command;

/// Why partitions cannot be made here (not root), or `None`. Panics when root lacks iptables.
pub fn unusable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: only root may add iptables rules".into());
    }
    match Command::new("iptables")
        .args(["-w", "-S", "OUTPUT"])
        .output()
    {
        Ok(o) if o.status.success() => None,
        Ok(o) => panic!(
            "iptables -S OUTPUT failed as root: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("iptables cannot run ({e}): `make test-deps` installs it"),
    }
}

/// Rules of one test, each dropping packets on `lo`.
pub struct Partition {
    range: [u8; 3],
    tag: String,
    rules: Vec<Vec<String>>,
}

impl Partition {
    /// A partition of the addresses `127.a.b.0/24` (`range` = `[127, a, b]`) for test `name`;
    /// removes any rule an earlier run of that test left.
    pub fn new(range: [u8; 3], name: &str) -> Partition {
        assert_eq!(range[0], 127, "loopback only");
        let p = Partition {
            range,
            tag: format!("meshmq-test-{name}"),
            rules: Vec::new(),
        };
        p.clear_leftovers();
        p
    }

    /// An address of the range.
    pub fn ip(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.range[0], self.range[1], self.range[2], last)
    }

    fn in_range(&self, ip: &str) -> bool {
        ip.parse::<Ipv4Addr>()
            .is_ok_and(|a| a.octets()[..3] == self.range)
    }

    /// Drops the packets `matches` selects (iptables match arguments, e.g. `-d 127.0.40.1 -p
    /// tcp --dport 5000`). Every `-s`/`-d` must name an address of the range.
    pub fn drop_packets(&mut self, matches: &[&str]) {
        for w in matches.windows(2) {
            if w[0] == "-s" || w[0] == "-d" {
                assert!(
                    self.in_range(w[1]),
                    "{} is outside this test's range {}.{}.{}.0/24",
                    w[1],
                    self.range[0],
                    self.range[1],
                    self.range[2]
                );
            }
        }
        let mut rule: Vec<String> = vec!["OUTPUT".into(), "-o".into(), "lo".into()];
        rule.extend(matches.iter().map(|s| s.to_string()));
        rule.extend(
            ["-m", "comment", "--comment", &self.tag, "-j", "DROP"]
                .iter()
                .map(|s| s.to_string()),
        );
        iptables("-I", &rule);
        self.rules.push(rule);
    }

    /// Removes every rule: the links work again.
    pub fn heal(&mut self) {
        for rule in self.rules.drain(..) {
            iptables("-D", &rule);
        }
    }

    fn clear_leftovers(&self) {
        let out = Command::new("iptables")
            .args(["-w", "-S", "OUTPUT"])
            .output()
            .expect("iptables -S");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(spec) = line.strip_prefix("-A ") {
                if spec.contains(&self.tag) {
                    let args: Vec<String> = spec.split_whitespace().map(str::to_string).collect();
                    iptables("-D", &args);
                }
            }
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.heal();
    }
}

fn iptables(op: &str, rule: &[String]) {
    let out = Command::new("iptables")
        .arg("-w")
        .arg(op)
        .args(rule)
        .output()
        .expect("run iptables");
    if !out.status.success() && !std::thread::panicking() {
        panic!(
            "iptables {op} {}: {}",
            rule.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
