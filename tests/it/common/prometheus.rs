//! Debian's real Prometheus for the metrics tests: a `prometheus` server (a child of the test,
//! bound to 127.0.0.1 on a port the test picked, its TSDB in a temporary directory) queried
//! through its HTTP API. It comes from the `prometheus` package that `make test-deps` installs;
//! without it a test fails, it never skips. Dropping the [`Prometheus`] kills the server.

use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::{free_ports, http_get, ChildGuard};

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A running Prometheus server.
pub struct Prometheus {
    pub addr: SocketAddr,
    dir: TempDir,
    _proc: ChildGuard,
}

impl Prometheus {
    /// Starts Prometheus with `config` (a prometheus.yml) and waits until it is ready.
    pub fn start(config: &str) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: it comes from Debian's `prometheus` package; \
             `make test-deps` installs it"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write prometheus.yml");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_ports(1)[0]));
        let log = File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let prometheus = Prometheus {
            addr,
            dir,
            _proc: ChildGuard::new(child),
        };
        super::wait::poll()
            .every(Duration::from_millis(100))
            .until_or(
                "Prometheus is ready",
                || matches!(http_get(addr, "/-/ready"), Ok((200, _))),
                || prometheus.log(),
            );
        prometheus
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GETs an API path; the `data` member of a successful answer, or why there is none.
    fn api(&self, path: &str) -> Result<serde_json::Value, String> {
        let (code, body) = http_get(self.addr, path).map_err(|e| format!("GET {path}: {e}"))?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("GET {path}: {e}: {body}"))?;
        if code != 200 || v["status"] != "success" {
            return Err(format!("GET {path}: HTTP {code}: {body}"));
        }
        Ok(v["data"].clone())
    }

    /// Evaluates an instant query now: the result vector (an error names the query).
    pub fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(promql)))?;
        match data["result"].as_array() {
            Some(r) => Ok(r.clone()),
            None => Err(format!("{promql}: not a vector: {data}")),
        }
    }

    /// The values of `label` on the series `selector` matches.
    pub fn label_values(&self, label: &str, selector: &str) -> Result<Vec<String>, String> {
        let data = self.api(&format!(
            "/api/v1/label/{label}/values?match[]={}",
            encode(selector)
        ))?;
        Ok(data
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// Percent-encodes a query-string value.
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
