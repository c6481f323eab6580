//! Raw structs → [`Topology`]: gives every value its meaning and checks every rule, recording
//! all problems (not just the first) with the key path they are about.
//!
//! Key paths show a list element by its name when that name is valid and unique
//! (`group[hub].member[hub-1]`), otherwise by its 0-based index (`group[1]`). A value that is
//! refused is replaced by its default so later checks still run; the partial topology is
//! dropped whenever anything was refused.
//!
//! The checks follow the file's sections, one file each: `broker` (`[broker]`, `[[policy]]`,
//! `[store]`, `[metrics]`, `[admin]`, `[rebalance]`), `security`, `groups` (`[zookeeper]`,
//! `[[group]]` with members and listeners) and `connectors`; this file holds the checker's
//! shared helpers and the order the sections are read in.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::destination::{DestinationError, DestinationPattern};

use super::error::{ConfigError, Refusal};
use super::names::{
    is_valid_name, name_labels, ConnectorName, GroupName, InvalidName, MemberName, MeshName,
    NAME_FIX,
};
use super::raw::{
    RawAcl, RawAdmin, RawBroker, RawConnector, RawGroup, RawListener, RawMember, RawMesh,
    RawMetrics, RawPolicy, RawRebalance, RawSecurity, RawStore, RawTopology, RawUser, RawZooKeeper,
};
use super::topology::{
    Acl, AdminOptions, BridgeAuth, BrokerPolicy, Connector, ConnectorTransport, DestinationPolicy,
    Election, Group, Listener, Member, MetricsOptions, OnFull, RebalanceOptions, Secret, Security,
    Source, StoreOptions, SyncMode, Topology, User, ZooKeeperOptions,
};
use super::units::{
    parse_bind_ip, parse_client_url, parse_duration, parse_group_filter, parse_host_port,
    parse_listener_url, parse_size, parse_socket_addr, Scheme,
};
use crate::transport::tls::TlsFiles;

mod broker;
mod connectors;
mod groups;
mod security;

const U32_MAX: i64 = u32::MAX as i64;
/// The shortest replication token accepted (`meshmq token` makes 64 characters).
pub const MIN_REPLICATION_TOKEN: usize = 16;
const PATTERN_FIX: &str =
    "write a destination pattern such as \"queue://orders.>\" or \"topic://prices.*\"";
const PASSWD_FIX: &str = "run `meshmq passwd` and paste the argon2 hash it prints";
const ADDRESS_FIX: &str = "give every listener, admin and replication address its own port";

/// Whether a zero duration or size means something for a key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Zero {
    Allowed,
    Refused,
}

/// An admin token shorter than this is refused (a guessable token would open every write).
const MIN_ADMIN_TOKEN: usize = 16;

pub(super) fn validate(
    raw: &RawTopology,
    source: &str,
    file: &Path,
    base_dir: &Path,
) -> Result<Topology, Vec<ConfigError>> {
    let mut c = Checker {
        file,
        base_dir,
        errors: Vec::new(),
    };
    let mesh = c.mesh(raw);
    let broker = c.broker("broker", raw.broker.as_ref(), &BrokerPolicy::default());
    let policies: Vec<Option<DestinationPolicy>> = raw
        .policy
        .iter()
        .enumerate()
        .map(|(i, p)| c.policy(&format!("policy[{i}]"), p))
        .collect();
    let store = c.store(raw.store.as_ref());
    let metrics = c.metrics(raw.metrics.as_ref());
    let rebalance = c.rebalance(raw.rebalance.as_ref());
    let security = c.security(raw.security.as_ref());
    let groups = c.groups(&raw.group, &broker);
    c.cluster_filters(&groups);
    let zookeeper = c.zookeeper(raw.zookeeper.as_ref(), &raw.group);
    let connectors = c.connectors(&raw.connector, &raw.group, &groups, &security);
    let bridges = c.bridges(raw.mesh.as_ref());
    let admin = c.admin(raw.admin.as_ref());

    let (Some(mesh), true) = (mesh, c.errors.is_empty()) else {
        return Err(c.errors);
    };
    Ok(Topology {
        file: file.to_path_buf(),
        mesh,
        broker,
        policies: policies.into_iter().flatten().collect(),
        store,
        metrics,
        rebalance,
        security,
        bridges,
        zookeeper,
        groups: groups.into_iter().flatten().collect(),
        connectors: connectors.into_iter().flatten().collect(),
        admin,
        source: Source::new(source),
    })
}

/// Labels of list elements in key paths, by index: `hub` or `1`.
fn labels(names: &[Option<&str>]) -> Vec<String> {
    name_labels(names)
        .into_iter()
        .enumerate()
        .map(|(i, label)| label.unwrap_or_else(|| i.to_string()))
        .collect()
}

/// Lexical normalisation (no file system access): drops `.`, resolves `..` against the path.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

struct Checker<'a> {
    file: &'a Path,
    base_dir: &'a Path,
    errors: Vec<ConfigError>,
}

/// An address claimed by a key, cross-checked after every member is read.
struct Claim {
    key: String,
    /// Position of the claiming member in the mesh.
    member: usize,
}

/// A journal directory (absolute, normalised) as written, with the key that names it.
struct Directory {
    path: PathBuf,
    text: String,
    key: String,
}

impl Checker<'_> {
    fn refuse(&mut self, key: &str, problem: impl Into<String>, fix: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            key: key.to_string(),
            problem: problem.into(),
            fix: fix.into(),
        });
    }

    fn parsed<T>(&mut self, key: &str, result: Result<T, Refusal>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(r) => {
                self.refuse(key, r.problem, r.fix);
                None
            }
        }
    }

    fn required<'t>(&mut self, key: &str, value: Option<&'t str>, fix: &str) -> Option<&'t str> {
        if value.is_none() {
            self.refuse(key, "is required", fix);
        }
        value
    }

    fn name<N>(
        &mut self,
        key: &str,
        text: &str,
        parse: fn(&str) -> Result<N, InvalidName>,
    ) -> Option<N> {
        match parse(text) {
            Ok(n) => Some(n),
            Err(e) => {
                self.refuse(key, e.to_string(), NAME_FIX);
                None
            }
        }
    }

    fn size(&mut self, key: &str, text: Option<&str>, zero: Zero) -> Option<u64> {
        let bytes = self.parsed(key, parse_size(text?))?;
        if bytes == 0 && zero == Zero::Refused {
            self.refuse(
                key,
                format!(
                    "is {:?}, but must be more than zero",
                    text.unwrap_or_default()
                ),
                "write a positive size such as \"64MiB\"",
            );
            return None;
        }
        Some(bytes)
    }

    fn duration(&mut self, key: &str, text: Option<&str>, zero: Zero) -> Option<Duration> {
        let duration = self.parsed(key, parse_duration(text?))?;
        if duration.is_zero() && zero == Zero::Refused {
            self.refuse(
                key,
                format!(
                    "is {:?}, but must be longer than zero",
                    text.unwrap_or_default()
                ),
                "write a positive duration such as \"1s\"",
            );
            return None;
        }
        Some(duration)
    }

    fn whole<T: TryFrom<i64>>(
        &mut self,
        key: &str,
        value: Option<i64>,
        min: i64,
        max: i64,
    ) -> Option<T> {
        let value = value?;
        let bound = if value < min {
            format!("at least {min}")
        } else if value > max {
            format!("at most {max}")
        } else {
            return T::try_from(value).ok();
        };
        self.refuse(
            key,
            format!("is {value}, but must be {bound}"),
            format!("write a whole number from {min} to {max}"),
        );
        None
    }

    fn keyword<E>(
        &mut self,
        key: &str,
        text: Option<&str>,
        parse: fn(&str) -> Option<E>,
        choices: String,
        example: &str,
    ) -> Option<E> {
        let text = text?;
        let parsed = parse(text);
        if parsed.is_none() {
            let leaf = key.rsplit('.').next().unwrap_or(key);
            self.refuse(
                key,
                format!("is {text:?}, but must be one of: {choices}"),
                format!("write one of them in quotes, e.g. {leaf} = \"{example}\""),
            );
        }
        parsed
    }

    fn path(&mut self, key: &str, text: Option<&str>) -> Option<PathBuf> {
        let text = text?;
        if text.trim().is_empty() {
            self.refuse(
                key,
                "is empty",
                "write a path, relative to the topology file's directory or absolute",
            );
            return None;
        }
        Some(normalize(&self.base_dir.join(text)))
    }

    fn pattern(&mut self, key: &str, text: &str) -> Option<DestinationPattern> {
        match DestinationPattern::parse(text) {
            Ok(p) => Some(p),
            Err(e) => {
                let (problem, fix) = match e {
                    DestinationError::NoScheme(t) => (
                        format!("{t:?} is not a destination pattern"),
                        PATTERN_FIX.to_string(),
                    ),
                    DestinationError::UnknownKind(t, kind) => (
                        format!("{t:?} has an unknown destination kind {kind:?}"),
                        format!(
                            "use queue://, topic://, temp-queue:// or temp-topic://; {PATTERN_FIX}"
                        ),
                    ),
                    other => (other.to_string(), PATTERN_FIX.to_string()),
                };
                self.refuse(key, problem, fix);
                None
            }
        }
    }

    /// Refuses a key that only means something under another election.
    fn only_for(&mut self, key: &str, needed: Election, actual: Election) {
        self.refuse(
            key,
            format!("is only used by election = \"{needed}\" groups, and this group's election is \"{actual}\""),
            format!("remove it, or set election = \"{needed}\""),
        );
    }

    fn mesh(&mut self, raw: &RawTopology) -> Option<MeshName> {
        let Some(mesh) = &raw.mesh else {
            self.refuse(
                "mesh",
                "is missing",
                "add a [mesh] section with name = \"demo\" at the top of the file",
            );
            return None;
        };
        let name = self.required(
            "mesh.name",
            mesh.name.as_deref(),
            "name the mesh, e.g. name = \"demo\"",
        )?;
        self.name("mesh.name", name, MeshName::parse)
    }

    fn bridges(&mut self, raw: Option<&RawMesh>) -> BridgeAuth {
        let Some(raw) = raw else {
            return BridgeAuth::default();
        };
        BridgeAuth {
            secret_file: self.path("mesh.secret_file", raw.secret_file.as_deref()),
            allow_anonymous: raw.allow_anonymous_bridges.unwrap_or(false),
        }
    }
}

#[cfg(test)]
mod tests;
