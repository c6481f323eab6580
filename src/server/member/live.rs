//! The topology a running member runs now, and taking a new one without restarting
//! (`meshmq apply`, through the admin port's authenticated `PUT /topology`).
//!
//! Owns: the member's current topology, its live security rules, the connector plans, broker
//! settings (destination policies, memory limit) and listener connection limits the next master
//! term starts with, and the rule for what a new file may change in place. Must not touch:
//! listener addresses, the journal or the election (those keys are reported as needing a
//! restart, never half-applied). Invariants: a file that does not validate, names another
//! mesh, or no longer names this member changes nothing; applies are serialized; applying the
//! file a member already runs changes nothing (idempotent); a master term and an apply never
//! miss each other (the term's network is reconfigured under the same lock an apply takes).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::broker::BrokerSettings;
use crate::config::{self, diff, Topology};
use crate::network::NetworkOptions;
use crate::security::LiveSecurity;

use crate::server::options::broker_settings;

use super::term_view::TermView;

/// What `GET /topology` answers: the file this member runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunningTopology {
    pub mesh: String,
    pub group: String,
    pub member: String,
    /// The file as the member (or the last apply) named it; relative paths in `text` resolve
    /// against its directory.
    pub file: String,
    pub text: String,
    /// 0 for the file it started with, then one more per apply that changed something.
    pub version: u64,
    /// Changes this member took from an apply that apply only at its restart.
    pub restart_pending: Vec<String>,
}

/// What a member answers to an apply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApplyOutcome {
    pub member: String,
    /// Each change taken in place, as `heading: what`.
    pub applied: Vec<String>,
    /// Changes for this member that apply only at its restart (cumulative since it started).
    pub restart_pending: Vec<String>,
    pub version: u64,
}

/// Why a member refused a new topology (nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
}

struct Current {
    topology: Arc<Topology>,
    network: Option<NetworkOptions>,
    /// The broker settings of this member's group in `topology`.
    broker: BrokerSettings,
    /// `max_connections` of each of this member's listeners in `topology`, by URL.
    max_connections: Vec<(String, usize)>,
    version: u64,
}

impl Current {
    fn new(topology: Arc<Topology>, member: &str, network: Option<NetworkOptions>) -> Current {
        let (broker, max_connections) = match topology.member(member) {
            Some((group, m)) => (broker_settings(&topology, group), listener_limits(m)),
            None => (BrokerSettings::default(), Vec::new()),
        };
        Current {
            topology,
            network,
            broker,
            max_connections,
            version: 0,
        }
    }

    /// Makes a serving term run with these settings and limits (a broker whose settings are
    /// the same re-resolves them: cheap, and idempotent).
    fn impose(&self, term: &TermView, memory_limit: &AtomicU64) {
        term.broker.update_settings(self.broker.clone());
        memory_limit.store(
            self.broker.memory_limit,
            std::sync::atomic::Ordering::Relaxed,
        );
        metrics::gauge!(crate::metrics::MEMORY_LIMIT).set(self.broker.memory_limit as f64);
        for (spec, _, count) in &term.listeners {
            if let Some((_, max)) = self
                .max_connections
                .iter()
                .find(|(url, _)| *url == spec.url)
            {
                count.set_max(*max);
            }
        }
    }
}

/// Each listener's `max_connections` as a running member applies it: the topology's, or the
/// default the open-file limit leaves.
fn listener_limits(m: &crate::config::Member) -> Vec<(String, usize)> {
    let default_max = crate::transport::files::default_max_connections(
        crate::transport::files::open_file_limit(),
    );
    m.listeners
        .iter()
        .map(|l| {
            (
                l.url.to_string(),
                l.max_connections.unwrap_or(default_max) as usize,
            )
        })
        .collect()
}

/// A member's running topology.
pub(crate) struct LiveTopology {
    member: String,
    started: Arc<Topology>,
    current: RwLock<Current>,
    pub security: Arc<LiveSecurity>,
    /// The broker-wide memory limit the member runs with now (an apply changes it).
    memory_limit: AtomicU64,
    /// One apply at a time.
    applying: tokio::sync::Mutex<()>,
}

impl LiveTopology {
    /// `login_memory`: bytes the password verifications running at once may use;
    /// `memory_limit`: the broker-wide memory limit the member starts with.
    pub fn new(
        topology: Arc<Topology>,
        member: &str,
        network: Option<NetworkOptions>,
        login_memory: u64,
        memory_limit: u64,
    ) -> Self {
        LiveTopology {
            member: member.to_string(),
            memory_limit: AtomicU64::new(memory_limit),
            security: LiveSecurity::new(&topology.security, login_memory),
            started: topology.clone(),
            current: RwLock::new(Current::new(topology, member, network)),
            applying: tokio::sync::Mutex::new(()),
        }
    }

    pub fn topology(&self) -> Arc<Topology> {
        self.current.read().topology.clone()
    }

    /// The connectors a master term starts with now, and the version they belong to.
    pub fn network(&self) -> (u64, Option<NetworkOptions>) {
        let c = self.current.read();
        (c.version, c.network.clone())
    }

    pub fn version(&self) -> u64 {
        self.current.read().version
    }

    /// The broker-wide memory limit the member runs with now.
    pub fn memory_limit(&self) -> u64 {
        self.memory_limit.load(Ordering::Relaxed)
    }

    /// Makes a term that starts serving run with the current broker settings and listener
    /// limits (an apply may have changed them since the member started). Called under the
    /// term's publication lock, so an apply either sees the term or is seen here.
    pub(crate) fn impose_on(&self, term: &TermView) {
        self.current.read().impose(term, &self.memory_limit);
    }

    /// Changes between the file this member started with and `now` that it applies only at
    /// its restart.
    fn restart_pending(&self, now: &Topology) -> Vec<String> {
        diff::diff(&self.started, now)
            .into_iter()
            .filter(|c| c.restarts(&self.member))
            .map(|c| format!("{}: {}", c.heading, c.what))
            .collect()
    }

    /// Writes the topology this member runs now to the file it started from — where its next
    /// start reads it — unless that file holds it already. The write is atomic (a synced
    /// temporary file beside it, renamed over it), so a crash leaves the old file or the new
    /// one. Returns the file.
    pub(crate) fn save_for_restart(&self) -> Result<std::path::PathBuf, String> {
        let path = self.started.file.clone();
        let text = self.topology().source.text().to_string();
        if std::fs::read_to_string(&path).is_ok_and(|on_disk| on_disk == text) {
            return Ok(path);
        }
        let fail = |what: &str, e: std::io::Error| {
            format!(
                "cannot save the running topology to {} for the restart ({what}: {e}); nothing was changed: make the file writable by this member, or restart it yourself",
                path.display()
            )
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let mut tmp =
            tempfile::NamedTempFile::new_in(&dir).map_err(|e| fail("temporary file", e))?;
        if let Ok(meta) = std::fs::metadata(&path) {
            // The file keeps who may read it (a topology holds password hashes and tokens).
            tmp.as_file()
                .set_permissions(meta.permissions())
                .map_err(|e| fail("permissions", e))?;
        }
        std::io::Write::write_all(&mut tmp, text.as_bytes()).map_err(|e| fail("write", e))?;
        tmp.as_file().sync_all().map_err(|e| fail("sync", e))?;
        tmp.persist(&path).map_err(|e| fail("rename", e.error))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        tracing::info!(file = %path.display(), "saved the running topology for the restart");
        Ok(path)
    }

    pub fn running(&self) -> RunningTopology {
        let c = self.current.read();
        let t = &c.topology;
        let group = t
            .member(&self.member)
            .map(|(g, _)| g.name.to_string())
            .unwrap_or_default();
        RunningTopology {
            mesh: t.mesh.to_string(),
            group,
            member: self.member.clone(),
            file: t.file.display().to_string(),
            text: t.source.text().to_string(),
            version: c.version,
            restart_pending: self.restart_pending(t),
        }
    }
}

impl LiveTopology {
    /// Takes the topology `text` (named `file`) while running: validates it, checks it is this
    /// mesh and still names this member, then replaces the security rules, the connectors, the
    /// broker settings (destination policies, memory limit) and the listeners' connection limits
    /// in place — on the term published in `term`, if one serves — and records it as the running
    /// topology. Keys that need a restart are taken into the record but reported in
    /// `restart_pending`.
    pub(crate) async fn apply(
        &self,
        term: &RwLock<Option<TermView>>,
        text: &str,
        file: &Path,
    ) -> Result<ApplyOutcome, ApplyError> {
        let live = self;
        let _one_at_a_time = live.applying.lock().await;
        let new = config::parse_str(text, file).map_err(|e| ApplyError::Invalid(e.to_string()))?;
        let unsupported = new.unsupported();
        if !unsupported.is_empty() {
            return Err(ApplyError::Invalid(format!(
                "{}: this build of meshmq cannot run: {}",
                file.display(),
                unsupported.join(", ")
            )));
        }
        let old = live.topology();
        if new.mesh != old.mesh {
            return Err(ApplyError::Conflict(format!(
                "{} is mesh {:?}, but this member runs mesh {:?}: a member never changes mesh",
                file.display(),
                new.mesh.as_str(),
                old.mesh.as_str()
            )));
        }
        let (old_group, _) = old
            .member(&live.member)
            .ok_or_else(|| ApplyError::Conflict("this member is not in its own topology".into()))?;
        let Some((new_group, _)) = new.member(&live.member) else {
            return Err(ApplyError::Conflict(format!(
            "{} has no member {:?}: a member removed from the topology is stopped, not reconfigured",
            file.display(),
            live.member
        )));
        };
        if new_group.name != old_group.name {
            return Err(ApplyError::Conflict(format!(
            "{} moves member {:?} from group {} to group {}: stop it and start it with the new file",
            file.display(),
            live.member,
            old_group.name,
            new_group.name
        )));
        }
        let network = NetworkOptions::from_topology(&new, &live.member)
            .map_err(|e| ApplyError::Invalid(e.to_string()))?;
        let changes = diff::diff(&old, &new);
        let applied: Vec<String> = changes
            .iter()
            .filter(|c| !c.needs_restart())
            .map(|c| format!("{}: {}", c.heading, c.what))
            .collect();
        if changes.is_empty() {
            // The same file again: nothing to do (the text may differ in comments only).
            return Ok(ApplyOutcome {
                member: live.member.clone(),
                applied: Vec::new(),
                restart_pending: live.restart_pending(&old),
                version: live.version(),
            });
        }
        if new.security != old.security {
            live.security.replace(&new.security);
        }
        let new = Arc::new(new);
        let version = {
            // Under the term's lock: a term starting now either sees the new connectors when it
            // publishes itself, or is published already and reconfigured here.
            let term = term.read();
            let version = {
                let mut c = live.current.write();
                let version = c.version + 1;
                *c = Current::new(new.clone(), &live.member, Some(network.clone()));
                c.version = version;
                if let Some(t) = term.as_ref() {
                    c.impose(t, &live.memory_limit);
                }
                version
            };
            if let Some(net) = term.as_ref().and_then(|t| t.network.as_ref()) {
                net.reconfigure(network);
            }
            version
        };
        tracing::info!(version, changes = applied.len(), file = %file.display(), "took a new topology");
        Ok(ApplyOutcome {
            member: live.member.clone(),
            applied,
            restart_pending: live.restart_pending(&new),
            version,
        })
    }
}
