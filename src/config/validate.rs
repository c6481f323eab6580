//! Raw structs → [`Topology`]: gives every value its meaning and checks every rule, recording
//! all problems (not just the first) with the key path they are about.
//!
//! Key paths show a list element by its name when that name is valid and unique
//! (`group[hub].member[hub-1]`), otherwise by its 0-based index (`group[1]`). A value that is
//! refused is replaced by its default so later checks still run; the partial topology is
//! dropped whenever anything was refused.

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

    fn broker(&mut self, at: &str, raw: Option<&RawBroker>, base: &BrokerPolicy) -> BrokerPolicy {
        let Some(raw) = raw else {
            return base.clone();
        };
        let key = |k: &str| format!("{at}.{k}");
        BrokerPolicy {
            memory_limit: self
                .size(
                    &key("memory_limit"),
                    raw.memory_limit.as_deref(),
                    Zero::Refused,
                )
                .unwrap_or(base.memory_limit),
            on_full: self
                .keyword(
                    &key("on_full"),
                    raw.on_full.as_deref(),
                    OnFull::parse,
                    OnFull::choices(),
                    "block",
                )
                .unwrap_or(base.on_full),
            max_redeliveries: self
                .whole(&key("max_redeliveries"), raw.max_redeliveries, 0, U32_MAX)
                .unwrap_or(base.max_redeliveries),
            topic_pending_limit: self
                .whole(
                    &key("topic_pending_limit"),
                    raw.topic_pending_limit,
                    1,
                    U32_MAX,
                )
                .unwrap_or(base.topic_pending_limit),
            topic_pending_size: self
                .size(
                    &key("topic_pending_size"),
                    raw.topic_pending_size.as_deref(),
                    Zero::Refused,
                )
                .or(base.topic_pending_size),
            prefetch: self
                .whole(&key("prefetch"), raw.prefetch, 1, U32_MAX)
                .unwrap_or(base.prefetch),
            max_frame_size: self
                .frame_size(&key("max_frame_size"), raw.max_frame_size.as_deref())
                .unwrap_or(base.max_frame_size),
            heartbeat: self
                .duration(&key("heartbeat"), raw.heartbeat.as_deref(), Zero::Allowed)
                .unwrap_or(base.heartbeat),
            connect_timeout: self
                .duration(
                    &key("connect_timeout"),
                    raw.connect_timeout.as_deref(),
                    Zero::Refused,
                )
                .unwrap_or(base.connect_timeout),
            max_subscriptions_per_connection: self
                .whole(
                    &key("max_subscriptions_per_connection"),
                    raw.max_subscriptions_per_connection,
                    1,
                    U32_MAX,
                )
                .unwrap_or(base.max_subscriptions_per_connection),
            stomp_max_headers: self
                .whole(&key("stomp_max_headers"), raw.stomp_max_headers, 1, U32_MAX)
                .unwrap_or(base.stomp_max_headers),
            stomp_max_header_length: self
                .size(
                    &key("stomp_max_header_length"),
                    raw.stomp_max_header_length.as_deref(),
                    Zero::Refused,
                )
                .unwrap_or(base.stomp_max_header_length),
            expiry_check_interval: self
                .duration(
                    &key("expiry_check_interval"),
                    raw.expiry_check_interval.as_deref(),
                    Zero::Refused,
                )
                .unwrap_or(base.expiry_check_interval),
            shutdown_timeout: self
                .duration(
                    &key("shutdown_timeout"),
                    raw.shutdown_timeout.as_deref(),
                    Zero::Refused,
                )
                .unwrap_or(base.shutdown_timeout),
        }
    }

    /// A frame's length travels as a u32, so the limit must fit one.
    fn frame_size(&mut self, key: &str, text: Option<&str>) -> Option<u32> {
        let bytes = self.size(key, text, Zero::Refused)?;
        let fits = u32::try_from(bytes).ok();
        if fits.is_none() {
            self.refuse(
                key,
                format!(
                    "is {:?}, but a frame's length is a 32-bit number, so at most 4294967295 bytes",
                    text.unwrap_or_default()
                ),
                "write at most \"4095MiB\", e.g. \"100MiB\"",
            );
        }
        fits
    }

    fn policy(&mut self, at: &str, raw: &RawPolicy) -> Option<DestinationPolicy> {
        let key = |k: &str| format!("{at}.{k}");
        let destination = self
            .required(
                &key("destination"),
                raw.destination.as_deref(),
                "write the destinations it applies to, e.g. destination = \"queue://orders.>\"",
            )
            .and_then(|text| self.pattern(&key("destination"), text));
        let topic_pending_limit = self.whole(
            &key("topic_pending_limit"),
            raw.topic_pending_limit,
            1,
            U32_MAX,
        );
        let topic_pending_size = self.size(
            &key("topic_pending_size"),
            raw.topic_pending_size.as_deref(),
            Zero::Refused,
        );
        for (name, set) in [
            ("topic_pending_limit", topic_pending_limit.is_some()),
            ("topic_pending_size", topic_pending_size.is_some()),
        ] {
            match &destination {
                Some(pattern) if set && pattern.kind().is_queue() => self.refuse(
                    &key(name),
                    format!(
                        "only applies to topics, and {:?} is a queue pattern",
                        pattern.as_str()
                    ),
                    "remove it, or move it to a policy for topic:// destinations",
                ),
                _ => {}
            }
        }
        let policy = DestinationPolicy {
            destination: destination?,
            memory_limit: self.size(
                &key("memory_limit"),
                raw.memory_limit.as_deref(),
                Zero::Refused,
            ),
            max_redeliveries: self.whole(
                &key("max_redeliveries"),
                raw.max_redeliveries,
                0,
                U32_MAX,
            ),
            topic_pending_limit,
            topic_pending_size,
            prefetch: self.whole(&key("prefetch"), raw.prefetch, 1, U32_MAX),
            on_full: self.keyword(
                &key("on_full"),
                raw.on_full.as_deref(),
                OnFull::parse,
                OnFull::choices(),
                "block",
            ),
        };
        Some(policy)
    }

    fn store(&mut self, raw: Option<&RawStore>) -> StoreOptions {
        let defaults = StoreOptions::default();
        let Some(raw) = raw else {
            return defaults;
        };
        let segment_size = self
            .size(
                "store.segment_size",
                raw.segment_size.as_deref(),
                Zero::Refused,
            )
            .unwrap_or(defaults.segment_size);
        let store_limit = self.size(
            "store.store_limit",
            raw.store_limit.as_deref(),
            Zero::Refused,
        );
        if store_limit.is_some_and(|limit| limit < segment_size) {
            self.refuse(
                "store.store_limit",
                format!(
                    "is {:?}, less than one segment (segment_size {:?})",
                    raw.store_limit.as_deref().unwrap_or_default(),
                    raw.segment_size.as_deref().unwrap_or("64MiB")
                ),
                "make store_limit at least segment_size, or remove it for no limit",
            );
        }
        let options = StoreOptions {
            segment_size,
            store_limit,
            checkpoint_interval: self
                .duration(
                    "store.checkpoint_interval",
                    raw.checkpoint_interval.as_deref(),
                    Zero::Refused,
                )
                .unwrap_or(defaults.checkpoint_interval),
            group_commit_window: self
                .duration(
                    "store.group_commit_window",
                    raw.group_commit_window.as_deref(),
                    Zero::Allowed,
                )
                .unwrap_or(defaults.group_commit_window),
        };
        options
    }

    fn metrics(&mut self, raw: Option<&RawMetrics>) -> MetricsOptions {
        let defaults = MetricsOptions::default();
        MetricsOptions {
            max_destinations: raw
                .and_then(|m| {
                    self.whole("metrics.max_destinations", m.max_destinations, 1, U32_MAX)
                })
                .unwrap_or(defaults.max_destinations),
        }
    }

    /// `[admin]`: the credential that running members require of topology writes.
    fn admin(&mut self, raw: Option<&RawAdmin>) -> AdminOptions {
        let Some(token) = raw.and_then(|a| a.token.as_deref()) else {
            return AdminOptions::default();
        };
        if token.chars().count() < MIN_ADMIN_TOKEN || token.chars().any(char::is_whitespace) {
            self.refuse(
                "admin.token",
                format!(
                    "is {} characters long{}; an admin token must be at least {MIN_ADMIN_TOKEN} characters without spaces",
                    token.chars().count(),
                    if token.chars().any(char::is_whitespace) { " and holds whitespace" } else { "" }
                ),
                "run `meshmq token` and paste the secret it prints".to_string(),
            );
            return AdminOptions::default();
        }
        AdminOptions {
            token: Some(Secret::new(token.to_string())),
        }
    }

    fn rebalance(&mut self, raw: Option<&RawRebalance>) -> RebalanceOptions {
        let defaults = RebalanceOptions::default();
        let Some(raw) = raw else {
            return defaults;
        };
        let mut fraction = |key: &str, value: Option<f64>, min: f64, max: f64, example: &str| {
            let value = value?;
            if value.is_finite() && value >= min && value <= max {
                return Some(value);
            }
            self.refuse(
                key,
                format!("is {value}, but must be from {min} to {max}"),
                format!("write a number in that range, e.g. {example}"),
            );
            None
        };
        let threshold = fraction(
            "rebalance.threshold",
            raw.threshold,
            0.01,
            10.0,
            "threshold = 0.1 (10 % above the fair share)",
        );
        let rate = fraction(
            "rebalance.max_moves_per_second",
            raw.max_moves_per_second,
            0.1,
            1_000_000.0,
            "max_moves_per_second = 100.0",
        );
        RebalanceOptions {
            threshold: threshold.unwrap_or(defaults.threshold),
            max_moves_per_second: rate.unwrap_or(defaults.max_moves_per_second),
            window: self
                .duration("rebalance.window", raw.window.as_deref(), Zero::Allowed)
                .unwrap_or(defaults.window),
            failover_grace: self
                .duration(
                    "rebalance.failover_grace",
                    raw.failover_grace.as_deref(),
                    Zero::Allowed,
                )
                .unwrap_or(defaults.failover_grace),
            join_settle: self
                .duration(
                    "rebalance.join_settle",
                    raw.join_settle.as_deref(),
                    Zero::Allowed,
                )
                .unwrap_or(defaults.join_settle),
        }
    }

    fn security(&mut self, raw: Option<&RawSecurity>) -> Security {
        let Some(raw) = raw else {
            return Security {
                allow_anonymous: true,
                users: Vec::new(),
                acls: Vec::new(),
            };
        };
        let names: Vec<Option<&str>> = raw.user.iter().map(|u| u.name.as_deref()).collect();
        let user_labels = labels(&names);
        let mut users = Vec::new();
        for (i, u) in raw.user.iter().enumerate() {
            let at = format!("security.user[{}]", user_labels[i]);
            let first = names[..i]
                .iter()
                .position(|n| n.is_some() && *n == names[i]);
            if let (Some(first), Some(name)) = (first, names[i]) {
                self.refuse(
                    &format!("{at}.name"),
                    format!(
                        "{name:?} is also the name of security.user[{}]",
                        user_labels[first]
                    ),
                    "give each user a different name",
                );
            }
            users.extend(self.user(&at, u));
        }
        let held: BTreeSet<&str> = raw
            .user
            .iter()
            .flat_map(|u| u.groups.iter().map(String::as_str))
            .collect();
        let acls = raw
            .acl
            .iter()
            .enumerate()
            .filter_map(|(i, acl)| self.acl(&format!("security.acl[{i}]"), acl, &held))
            .collect();
        Security {
            allow_anonymous: raw.allow_anonymous.unwrap_or(raw.user.is_empty()),
            users,
            acls,
        }
    }

    fn user(&mut self, at: &str, raw: &RawUser) -> Option<User> {
        let name = self.required(
            &format!("{at}.name"),
            raw.name.as_deref(),
            "name the user, e.g. name = \"alice\"",
        );
        if let Some(name) = name {
            if name.is_empty()
                || name.len() > 128
                || name
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == ':')
            {
                self.refuse(
                    &format!("{at}.name"),
                    format!("{name:?} is not a valid user name"),
                    "use 1 to 128 characters without spaces or ':', e.g. \"alice\"",
                );
            }
        }
        for (i, group) in raw.groups.iter().enumerate() {
            if !is_valid_name(group) {
                self.refuse(
                    &format!("{at}.groups[{i}]"),
                    format!("{group:?} is not a valid security group name"),
                    NAME_FIX,
                );
            }
        }
        let hash_key = format!("{at}.password_hash");
        let hash = self.required(&hash_key, raw.password_hash.as_deref(), PASSWD_FIX);
        let hash_ok = hash.is_some_and(|h| match check_password_hash(h) {
            Ok(()) => true,
            Err(problem) => {
                self.refuse(&hash_key, problem, PASSWD_FIX);
                false
            }
        });
        if !hash_ok {
            return None;
        }
        Some(User {
            name: name?.to_string(),
            password_hash: hash?.to_string(),
            groups: raw.groups.clone(),
        })
    }

    fn acl(&mut self, at: &str, raw: &RawAcl, held: &BTreeSet<&str>) -> Option<Acl> {
        let destination = self
            .required(
                &format!("{at}.destination"),
                raw.destination.as_deref(),
                "write the destinations it guards, e.g. destination = \"queue://orders.>\"",
            )
            .and_then(|text| self.pattern(&format!("{at}.destination"), text));
        for (list, groups) in [
            ("read", &raw.read),
            ("write", &raw.write),
            ("admin", &raw.admin),
        ] {
            for (i, group) in groups.iter().enumerate() {
                if held.contains(group.as_str()) {
                    continue;
                }
                let fix = if held.is_empty() {
                    format!("no user is defined: add a [[security.user]] with groups = [{group:?}]")
                } else {
                    let in_use: Vec<&str> = held.iter().copied().collect();
                    format!(
                        "add {group:?} to some user's groups, or fix the name (groups in use: {})",
                        in_use.join(", ")
                    )
                };
                self.refuse(
                    &format!("{at}.{list}[{i}]"),
                    format!("names security group {group:?}, which no user belongs to"),
                    fix,
                );
            }
        }
        Some(Acl {
            destination: destination?,
            read: raw.read.clone(),
            write: raw.write.clone(),
            admin: raw.admin.clone(),
        })
    }

    fn zookeeper(
        &mut self,
        raw: Option<&RawZooKeeper>,
        groups: &[RawGroup],
    ) -> Option<ZooKeeperOptions> {
        let group_names: Vec<Option<&str>> = groups.iter().map(|g| g.name.as_deref()).collect();
        let group_labels = labels(&group_names);
        let zookeeper_group = groups
            .iter()
            .position(|g| g.election.as_deref() == Some(Election::ZooKeeper.as_str()));
        let Some(raw) = raw else {
            if let Some(i) = zookeeper_group {
                self.refuse(
                    "zookeeper",
                    format!(
                        "is missing, but group[{}] has election = \"zookeeper\"",
                        group_labels[i]
                    ),
                    "add a [zookeeper] section with connect = \"127.0.0.1:2181\"",
                );
            }
            return None;
        };
        if zookeeper_group.is_none() {
            self.refuse(
                "zookeeper",
                "is set, but no group has election = \"zookeeper\"",
                "remove the [zookeeper] section, or set election = \"zookeeper\" on a replicated group",
            );
        }
        let connect_fix =
            "list the ZooKeeper servers, e.g. connect = \"127.0.0.1:2181,127.0.0.1:2182\"";
        let connect = self
            .required("zookeeper.connect", raw.connect.as_deref(), connect_fix)
            .map(|text| {
                let mut servers = Vec::new();
                for entry in text.split(',').map(str::trim) {
                    if entry.is_empty() {
                        self.refuse(
                            "zookeeper.connect",
                            format!("{text:?} has an empty entry"),
                            connect_fix,
                        );
                        continue;
                    }
                    servers.extend(self.parsed(
                        "zookeeper.connect",
                        parse_host_port(entry, "127.0.0.1:2181"),
                    ));
                }
                servers
            });
        let root = raw.root.clone().unwrap_or_else(|| "/meshmq".to_string());
        if !root.starts_with('/')
            || (root.len() > 1 && root.ends_with('/'))
            || root == "/"
            || root.contains("//")
        {
            self.refuse(
                "zookeeper.root",
                format!("{root:?} is not a znode path"),
                "write an absolute path without a trailing '/', e.g. root = \"/meshmq\"",
            );
        }
        let digest = raw.digest.as_deref().and_then(|d| match d.split_once(':') {
            Some((user, _)) if !user.is_empty() => Some(Secret::new(d.to_string())),
            _ => {
                // The value is a credential: name the shape, never echo it.
                self.refuse(
                    "zookeeper.digest",
                    "is not written user:password",
                    "write digest = \"USER:PASSWORD\"",
                );
                None
            }
        });
        let session_timeout = self
            .duration(
                "zookeeper.session_timeout",
                raw.session_timeout.as_deref(),
                Zero::Refused,
            )
            .unwrap_or(Duration::from_secs(2));
        Some(ZooKeeperOptions {
            connect: connect?,
            session_timeout,
            root,
            digest,
        })
    }

    fn groups(&mut self, raw: &[RawGroup], broker: &BrokerPolicy) -> Vec<Option<Group>> {
        let names: Vec<Option<&str>> = raw.iter().map(|g| g.name.as_deref()).collect();
        let group_labels = labels(&names);
        if raw.is_empty() {
            self.refuse(
                "group",
                "is missing: a mesh needs at least one group",
                "add a [[group]] with a [[group.member]] and its [[group.member.listener]]",
            );
        }
        // Member names are unique across the mesh, so their labels are computed mesh-wide.
        let member_names: Vec<Option<&str>> = raw
            .iter()
            .flat_map(|g| g.member.iter().map(|m| m.name.as_deref()))
            .collect();
        let member_labels = name_labels(&member_names);
        let cluster_updates_on = raw
            .iter()
            .flat_map(|g| &g.member)
            .flat_map(|m| &m.listener)
            .any(|l| {
                l.update_cluster_clients == Some(true) || l.rebalance_cluster_clients == Some(true)
            });

        let mut addresses: Vec<(SocketAddr, Claim)> = Vec::new();
        let mut directories: Vec<Directory> = Vec::new();
        let mut groups = Vec::new();
        let mut member_index = 0;
        for (gi, g) in raw.iter().enumerate() {
            let at = format!("group[{}]", group_labels[gi]);
            if let Some(first) = names[..gi]
                .iter()
                .position(|n| n.is_some() && *n == names[gi])
            {
                self.refuse(
                    &format!("{at}.name"),
                    format!(
                        "{:?} is also the name of group[{}]",
                        names[gi].unwrap_or_default(),
                        group_labels[first]
                    ),
                    "give each group a different name",
                );
            }
            let name = self
                .required(
                    &format!("{at}.name"),
                    g.name.as_deref(),
                    "name the group, e.g. name = \"hub\"",
                )
                .and_then(|n| self.name(&format!("{at}.name"), n, GroupName::parse));
            let election = self
                .keyword(
                    &format!("{at}.election"),
                    g.election.as_deref(),
                    Election::parse,
                    Election::choices(),
                    "none",
                )
                .unwrap_or(Election::None);
            let mut members = Vec::new();
            let mut all_members_ok = true;
            for (mi, m) in g.member.iter().enumerate() {
                let name_unique = member_labels[member_index].is_some();
                let label = member_labels[member_index]
                    .clone()
                    .unwrap_or_else(|| mi.to_string());
                let member_at = format!("{at}.member[{label}]");
                if let Some(first) = member_names[..member_index]
                    .iter()
                    .position(|n| n.is_some() && *n == member_names[member_index])
                {
                    let (first_group, first_index) = locate(raw, first);
                    self.refuse(
                        &format!("{member_at}.name"),
                        format!(
                            "{:?} is also the name of group[{}].member[{first_index}]",
                            m.name.as_deref().unwrap_or_default(),
                            group_labels[first_group]
                        ),
                        "give each member of the mesh a different name",
                    );
                }
                let context = MemberContext {
                    at: &member_at,
                    index: member_index,
                    election,
                    name_unique,
                    cluster_updates_on,
                };
                let member = self.member(&context, m, &mut addresses, &mut directories);
                all_members_ok &= member.is_some();
                members.extend(member);
                member_index += 1;
            }
            let parts = GroupParts {
                name,
                election,
                members,
            };
            let group = self.group(&at, g, parts, broker, &mut directories);
            groups.push(group.filter(|_| all_members_ok));
        }
        self.address_clashes(&addresses);
        self.directory_clashes(&directories);
        groups
    }

    /// Every `update_cluster_filter` must admit the listener's own group and some group whose
    /// clients it could be told about (one with a native client listener): a filter that admits
    /// nothing of the kind would leave its clients nowhere to be sent or fail over to.
    fn cluster_filters(&mut self, groups: &[Option<Group>]) {
        let groups: Vec<&Group> = groups.iter().flatten().collect();
        let with_clients: Vec<&str> = groups
            .iter()
            .filter(|g| {
                g.members
                    .iter()
                    .flat_map(|m| &m.listeners)
                    .any(|l| l.url.scheme.is_native())
            })
            .map(|g| g.name.as_str())
            .collect();
        for g in &groups {
            for m in &g.members {
                for (li, l) in m.listeners.iter().enumerate() {
                    if l.update_cluster_filter.is_empty() {
                        continue;
                    }
                    let admits =
                        |name: &str| l.update_cluster_filter.iter().any(|re| re.is_match(name));
                    let key = format!(
                        "group[{}].member[{}].listener[{li}].update_cluster_filter",
                        g.name.as_str(),
                        m.name.as_str()
                    );
                    let patterns: Vec<&str> = l
                        .update_cluster_filter
                        .iter()
                        .map(|re| {
                            let p = re.as_str();
                            p.strip_prefix("^(?:")
                                .and_then(|p| p.strip_suffix(")$"))
                                .unwrap_or(p)
                        })
                        .collect();
                    if !with_clients.iter().any(|n| admits(n)) {
                        self.refuse(
                            &key,
                            format!(
                                "{patterns:?} matches no group with a client listener (those are: {})",
                                with_clients.join(", ")
                            ),
                            "write regexes that match whole group names, e.g. [\"edge-.*\"]",
                        );
                    } else if !admits(g.name.as_str()) {
                        self.refuse(
                            &key,
                            format!(
                                "{patterns:?} leaves out this listener's own group \"{}\"",
                                g.name.as_str()
                            ),
                            format!(
                                "add a regex matching \"{}\": its clients are always told of their own group",
                                g.name.as_str()
                            ),
                        );
                    }
                }
            }
        }
    }

    fn group(
        &mut self,
        at: &str,
        g: &RawGroup,
        parts: GroupParts,
        broker: &BrokerPolicy,
        directories: &mut Vec<Directory>,
    ) -> Option<Group> {
        let GroupParts {
            name,
            election,
            members,
        } = parts;
        let key = |k: &str| format!("{at}.{k}");
        let count = g.member.len();
        if count == 0 {
            self.refuse(
                at,
                "has no members",
                "add a [[group.member]] with name, admin and a [[group.member.listener]]",
            );
        }
        let election_fix = "set election = \"file-lock\" (members share a store on one machine) or \"zookeeper\" (replicated), or give each member its own group";
        if election == Election::None && count > 1 {
            if g.election.is_some() {
                self.refuse(
                    &key("election"),
                    format!("\"none\" allows exactly one member, but the group has {count}"),
                    election_fix,
                );
            } else {
                self.refuse(at, format!("has {count} members, but election \"none\" (the default) allows exactly one"), election_fix);
            }
        }
        let max_replicas = i64::try_from(count.max(1)).unwrap_or(i64::MAX);
        let replicas = match g.replicas {
            Some(r) if r > max_replicas => {
                self.refuse(
                    &key("replicas"),
                    format!(
                        "is {r}, but the group has {count} member{}",
                        if count == 1 { "" } else { "s" }
                    ),
                    format!("set replicas to at most {count}, or add members"),
                );
                None
            }
            other => self.whole(&key("replicas"), other, 1, U32_MAX),
        }
        .unwrap_or(u32::try_from(count.max(1)).unwrap_or(u32::MAX));
        let default_sync = if election == Election::ZooKeeper {
            SyncMode::QuorumMem
        } else {
            SyncMode::LocalDisk
        };
        let sync = self
            .keyword(
                &key("sync"),
                g.sync.as_deref(),
                SyncMode::parse,
                SyncMode::choices(),
                "local_disk",
            )
            .unwrap_or(default_sync);
        if sync.needs_replicas() && election != Election::ZooKeeper {
            self.refuse(
                &key("sync"),
                format!("is \"{sync}\", which waits for replicas, and only election = \"zookeeper\" groups have them"),
                "use local_disk or local_mem, or set election = \"zookeeper\"",
            );
        }
        let quorum_timeout = self.duration(
            &key("quorum_timeout"),
            g.quorum_timeout.as_deref(),
            Zero::Refused,
        );
        if g.quorum_timeout.is_some() && election != Election::ZooKeeper {
            self.only_for(&key("quorum_timeout"), Election::ZooKeeper, election);
        }
        let lock_poll = self.duration(&key("lock_poll"), g.lock_poll.as_deref(), Zero::Refused);
        if g.lock_poll.is_some() && election != Election::FileLock {
            self.only_for(&key("lock_poll"), Election::FileLock, election);
        }
        let shared_dir = self.path(&key("shared_dir"), g.shared_dir.as_deref());
        match (&shared_dir, election) {
            (Some(dir), Election::FileLock) => directories.push(Directory {
                path: dir.clone(),
                text: g.shared_dir.clone().unwrap_or_default(),
                key: key("shared_dir"),
            }),
            (None, Election::FileLock) if g.shared_dir.is_none() => self.refuse(
                &key("shared_dir"),
                "is required for election = \"file-lock\"",
                "set the directory every member of the group locks and shares, e.g. shared_dir = \"data/hub\"",
            ),
            (_, other) if g.shared_dir.is_some() && other != Election::FileLock => {
                self.only_for(&key("shared_dir"), Election::FileLock, other)
            }
            _ => {}
        }
        if g.replication_token.is_some() && election != Election::ZooKeeper {
            self.only_for(&key("replication_token"), Election::ZooKeeper, election);
        }
        if election == Election::ZooKeeper {
            self.replication_token(&key("replication_token"), g, count);
        }
        let group_broker = self.broker(&key("broker"), g.broker.as_ref(), broker);
        if count == 0 {
            return None;
        }
        Some(Group {
            name: name?,
            election,
            replicas,
            sync,
            quorum_timeout: quorum_timeout.unwrap_or(Duration::from_secs(5)),
            lock_poll: lock_poll.unwrap_or(Duration::from_secs(1)),
            shared_dir: shared_dir.filter(|_| election == Election::FileLock),
            replication_token: g.replication_token.clone().map(Secret::new),
            broker: group_broker,
            members,
        })
    }

    /// A replicated group with more than one member authenticates its followers: without a
    /// token, anyone who reaches a replication port could follow the master and acknowledge
    /// writes toward its quorum.
    fn replication_token(&mut self, key: &str, g: &RawGroup, count: usize) {
        let make = "make one with `meshmq token` and set replication_token = \"THAT TOKEN\" in this [[group]] (every member reads the same file)";
        match g.replication_token.as_deref() {
            None if count > 1 => self.refuse(
                key,
                format!("is missing, and the group's {count} members replicate its journal to each other: without it anyone who reaches a replication port could follow the master and acknowledge writes"),
                make,
            ),
            // The value is a credential: name its length, never echo it.
            Some(t) if t.chars().count() < MIN_REPLICATION_TOKEN => self.refuse(
                key,
                format!(
                    "is {} characters long, shorter than {MIN_REPLICATION_TOKEN}: it could be guessed",
                    t.chars().count()
                ),
                make,
            ),
            _ => {}
        }
    }

    fn member(
        &mut self,
        context: &MemberContext<'_>,
        raw: &RawMember,
        addresses: &mut Vec<(SocketAddr, Claim)>,
        directories: &mut Vec<Directory>,
    ) -> Option<Member> {
        let at = context.at;
        let key = |k: &str| format!("{at}.{k}");
        let claim = |key: String| Claim {
            key,
            member: context.index,
        };
        let name = self
            .required(
                &key("name"),
                raw.name.as_deref(),
                "name the member, e.g. name = \"hub-1\"",
            )
            .and_then(|n| self.name(&key("name"), n, MemberName::parse));
        let admin = self
            .required(
                &key("admin"),
                raw.admin.as_deref(),
                "set the admin HTTP address, e.g. admin = \"127.0.0.1:8161\"",
            )
            .and_then(|text| self.parsed(&key("admin"), parse_socket_addr(text, "127.0.0.1:8161")));
        if let Some(addr) = admin {
            addresses.push((addr, claim(key("admin"))));
        }
        // A duplicate name is refused already; its default data_dir would only repeat that.
        let data_dir_text = match (&raw.data_dir, &name) {
            (Some(dir), _) => Some(dir.clone()),
            (None, Some(name)) if context.name_unique => Some(format!("data/{name}")),
            _ => None,
        };
        let data_dir = self.path(&key("data_dir"), data_dir_text.as_deref());
        if let (Some(dir), Some(text)) = (&data_dir, data_dir_text) {
            directories.push(Directory {
                path: dir.clone(),
                text,
                key: key("data_dir"),
            });
        }
        let bind = raw
            .bind
            .as_deref()
            .and_then(|b| self.parsed(&key("bind"), parse_bind_ip(b)));
        let weight = self
            .whole(&key("weight"), raw.weight, 0, U32_MAX)
            .unwrap_or(1);
        let replication = raw.replication.as_deref().and_then(|text| {
            self.parsed(
                &key("replication"),
                parse_socket_addr(text, "127.0.0.1:61619"),
            )
        });
        match (&raw.replication, context.election) {
            (None, Election::ZooKeeper) => self.refuse(
                &key("replication"),
                "is required for election = \"zookeeper\"",
                "set the address followers replicate the journal from, e.g. replication = \"127.0.0.1:61619\"",
            ),
            (Some(_), other) if other != Election::ZooKeeper => self.only_for(&key("replication"), Election::ZooKeeper, other),
            _ => {}
        }
        if let Some(addr) = replication {
            addresses.push((addr, claim(key("replication"))));
        }
        if raw.listener.is_empty() {
            self.refuse(
                at,
                "has no listener",
                "add a [[group.member.listener]] with url = \"tcp://127.0.0.1:61616\"",
            );
        }
        let mut listeners = Vec::new();
        let mut listeners_ok = true;
        for (i, l) in raw.listener.iter().enumerate() {
            let listener_at = format!("{at}.listener[{i}]");
            let listener = self.listener(&listener_at, l, context.cluster_updates_on);
            if let Some(listener) = &listener {
                addresses.push((listener.url.addr, claim(format!("{listener_at}.url"))));
            }
            listeners_ok &= listener.is_some();
            listeners.extend(listener);
        }
        if !listeners_ok || listeners.is_empty() {
            return None;
        }
        Some(Member {
            name: name?,
            admin: admin?,
            data_dir: data_dir?,
            bind,
            weight,
            replication: replication.filter(|_| context.election == Election::ZooKeeper),
            listeners,
        })
    }

    fn listener(
        &mut self,
        at: &str,
        raw: &RawListener,
        cluster_updates_on: bool,
    ) -> Option<Listener> {
        let key = |k: &str| format!("{at}.{k}");
        let url = self
            .required(
                &key("url"),
                raw.url.as_deref(),
                "write the address to listen on, e.g. url = \"tcp://127.0.0.1:61616\"",
            )
            .and_then(|text| self.parsed(&key("url"), parse_listener_url(text)));
        let advertise = raw
            .advertise
            .as_deref()
            .and_then(|text| self.parsed(&key("advertise"), parse_client_url(text)));
        if let (Some(url), Some(adv)) = (&url, &advertise) {
            if adv.scheme != url.scheme {
                self.refuse(
                    &key("advertise"),
                    format!(
                        "has scheme \"{}\", but the listener's url is \"{}\"",
                        adv.scheme, url.scheme
                    ),
                    format!(
                        "advertise the same scheme, e.g. advertise = \"{}://{}\"",
                        url.scheme, adv.target
                    ),
                );
            }
        }
        if let (Some(url), None, true) = (&url, &advertise, cluster_updates_on) {
            if url.addr.ip().is_unspecified() {
                self.refuse(
                    &key("advertise"),
                    format!("is required: {url} listens on every address and cluster updates are on, so clients need an address to dial"),
                    format!("set advertise = \"{}://HOST:{}\" with the host name clients use", url.scheme, url.addr.port()),
                );
            }
        }
        let max_connections = self.whole(&key("max_connections"), raw.max_connections, 1, U32_MAX);
        let update = raw.update_cluster_clients.unwrap_or(false);
        let on_remove = raw.update_cluster_clients_on_remove.unwrap_or(false);
        if on_remove && !update {
            self.refuse(
                &key("update_cluster_clients_on_remove"),
                "is true, but update_cluster_clients is not",
                "set update_cluster_clients = true too, or remove this key",
            );
        }
        let mut filters = Vec::new();
        let mut filters_ok = true;
        for (i, pattern) in raw.update_cluster_filter.iter().enumerate() {
            let filter = self.parsed(
                &format!("{at}.update_cluster_filter[{i}]"),
                parse_group_filter(pattern),
            );
            filters_ok &= filter.is_some();
            filters.extend(filter);
        }
        let tls = url
            .as_ref()
            .and_then(|url| self.tls(at, raw, url.scheme))
            .flatten();
        let url = url?;
        if !filters_ok || (url.scheme.is_tls() && tls.is_none()) {
            return None;
        }
        Some(Listener {
            url,
            advertise,
            max_connections,
            update_cluster_clients: update,
            rebalance_cluster_clients: raw.rebalance_cluster_clients.unwrap_or(false),
            update_cluster_clients_on_remove: on_remove,
            update_cluster_filter: filters,
            tls,
        })
    }

    /// `Some(files)` for a TLS scheme with its files, `Some(None)` for a plain one; `None` after
    /// a refusal.
    fn tls(&mut self, at: &str, raw: &RawListener, scheme: Scheme) -> Option<Option<TlsFiles>> {
        let keys = [
            ("tls_cert", raw.tls_cert.as_deref()),
            ("tls_key", raw.tls_key.as_deref()),
            ("tls_client_ca", raw.tls_client_ca.as_deref()),
        ];
        if !scheme.is_tls() {
            let mut ok = true;
            for (k, value) in keys {
                if value.is_some() {
                    ok = false;
                    self.refuse(
                        &format!("{at}.{k}"),
                        format!("is only used by ssl, stomp+ssl, mqtt+ssl, quic and wss listeners, and this one is \"{scheme}\""),
                        "remove it, or change the url's scheme to ssl, stomp+ssl, mqtt+ssl, quic or wss",
                    );
                }
            }
            return ok.then_some(None);
        }
        let required = [
            (
                "tls_cert",
                raw.tls_cert.as_deref(),
                "set the PEM certificate chain file, e.g. tls_cert = \"certs/hub-1.pem\"",
            ),
            (
                "tls_key",
                raw.tls_key.as_deref(),
                "set the PEM private key file, e.g. tls_key = \"certs/hub-1.key\"",
            ),
        ];
        for (k, value, fix) in required {
            if value.is_none() {
                self.refuse(
                    &format!("{at}.{k}"),
                    format!("is required because the url's scheme is \"{scheme}\""),
                    fix,
                );
            }
        }
        let cert = self.path(&format!("{at}.tls_cert"), raw.tls_cert.as_deref());
        let key = self.path(&format!("{at}.tls_key"), raw.tls_key.as_deref());
        let client_ca = self.path(&format!("{at}.tls_client_ca"), raw.tls_client_ca.as_deref());
        if raw.tls_client_ca.is_some() && client_ca.is_none() {
            return None;
        }
        Some(Some(TlsFiles {
            cert: cert?,
            key: key?,
            client_ca,
        }))
    }

    fn address_clashes(&mut self, addresses: &[(SocketAddr, Claim)]) {
        for (i, (addr, claim)) in addresses.iter().enumerate() {
            let clash = addresses[..i].iter().find(|(other, other_claim)| {
                other == addr || (other_claim.member == claim.member && overlaps(*addr, *other))
            });
            if let Some((other, other_claim)) = clash {
                let problem = if other == addr {
                    format!("{addr} is also used by {}", other_claim.key)
                } else {
                    format!("{addr} overlaps {other} of {} (same port, and one listens on every address)", other_claim.key)
                };
                self.refuse(&claim.key, problem, ADDRESS_FIX);
            }
        }
    }

    fn directory_clashes(&mut self, directories: &[Directory]) {
        // A file-lock group's members share its shared_dir on purpose: it is listed once.
        for (i, dir) in directories.iter().enumerate() {
            if let Some(other) = directories[..i].iter().find(|d| d.path == dir.path) {
                self.refuse(
                    &dir.key,
                    format!("{:?} is also the directory of {}", dir.text, other.key),
                    "give each member its own data_dir and each file-lock group its own shared_dir; two brokers must never share a journal by accident",
                );
            }
        }
    }

    fn connectors(
        &mut self,
        raw: &[RawConnector],
        raw_groups: &[RawGroup],
        groups: &[Option<Group>],
        security: &Security,
    ) -> Vec<Option<Connector>> {
        let effective: Vec<Option<String>> = raw.iter().map(RawConnector::effective_name).collect();
        let names: Vec<Option<&str>> = effective.iter().map(Option::as_deref).collect();
        let connector_labels = labels(&names);
        let group_names: Vec<&str> = raw_groups
            .iter()
            .filter_map(|g| g.name.as_deref())
            .collect();
        let mut connectors = Vec::new();
        for (i, c) in raw.iter().enumerate() {
            let at = format!("connector[{}]", connector_labels[i]);
            if let Some(first) = names[..i]
                .iter()
                .position(|n| n.is_some() && *n == names[i])
            {
                self.refuse(
                    &format!("{at}.name"),
                    format!(
                        "{:?} is also the name of connector[{}]",
                        names[i].unwrap_or_default(),
                        connector_labels[first]
                    ),
                    "give each connector a different name (the default is \"<from>-<to>\")",
                );
            }
            let pair = self.endpoints(&at, c, &group_names);
            if let Some((from, to)) = pair {
                self.duplicate_link(&at, c, from, to, &raw[..i], &connector_labels);
                if let Some(target) = groups.iter().flatten().find(|g| g.name.as_str() == to) {
                    self.transport_reaches(&at, c, target);
                }
            }
            connectors.push(self.connector(&at, c, security));
        }
        connectors
    }

    /// Checks `from`/`to`; answers them when both name groups of the file and differ.
    fn endpoints<'r>(
        &mut self,
        at: &str,
        c: &'r RawConnector,
        group_names: &[&str],
    ) -> Option<(&'r str, &'r str)> {
        let mut ends = Vec::new();
        for (k, value, example) in [
            ("from", c.from.as_deref(), "hub"),
            ("to", c.to.as_deref(), "edge-1"),
        ] {
            let key = format!("{at}.{k}");
            let Some(value) = self.required(
                &key,
                value,
                &format!("name a group, e.g. {k} = \"{example}\""),
            ) else {
                continue;
            };
            if group_names.contains(&value) {
                ends.push(value);
            } else {
                self.refuse(
                    &key,
                    format!("no group is named {value:?}"),
                    format!("use one of: {}", group_names.join(", ")),
                );
            }
        }
        let [from, to] = ends[..] else {
            return None;
        };
        if from == to {
            self.refuse(
                &format!("{at}.to"),
                format!("is {to:?}, the same group as from: a connector from a group to itself forwards nothing"),
                "set to to another group, or remove the connector",
            );
            return None;
        }
        Some((from, to))
    }

    fn duplicate_link(
        &mut self,
        at: &str,
        c: &RawConnector,
        from: &str,
        to: &str,
        earlier: &[RawConnector],
        labels: &[String],
    ) {
        let duplex = c.duplex.unwrap_or(false);
        for (j, other) in earlier.iter().enumerate() {
            let (Some(other_from), Some(other_to)) = (other.from.as_deref(), other.to.as_deref())
            else {
                continue;
            };
            let other_duplex = other.duplex.unwrap_or(false);
            if other_from == from && other_to == to {
                self.refuse(
                    at,
                    format!("links {from} to {to}, like connector[{}]", labels[j]),
                    "keep one connector per pair of groups and merge their options",
                );
                return;
            }
            if other_from == to && other_to == from && (duplex || other_duplex) {
                self.refuse(
                    at,
                    format!(
                        "links {from} to {to}, but connector[{}] links {to} to {from} and a duplex connector already forwards both ways",
                        labels[j]
                    ),
                    "remove one of them, or set duplex = false on both",
                );
                return;
            }
        }
    }

    fn transport_reaches(&mut self, at: &str, c: &RawConnector, target: &Group) {
        let Some(transport) = c
            .transport
            .as_deref()
            .map_or(Some(ConnectorTransport::Tcp), ConnectorTransport::parse)
        else {
            return; // refused in `connector`
        };
        let scheme = transport.scheme();
        let missing: Vec<&str> = target
            .members
            .iter()
            .filter(|m| !m.listeners.iter().any(|l| l.url.scheme == scheme))
            .map(|m| m.name.as_str())
            .collect();
        if missing.is_empty() {
            return;
        }
        self.refuse(
            &format!("{at}.transport"),
            format!(
                "is \"{transport}\"{}, but {} {} of group {} {} no {scheme} listener",
                if c.transport.is_none() { " (the default)" } else { "" },
                if missing.len() == 1 { "member" } else { "members" },
                missing.join(", "),
                target.name,
                if missing.len() == 1 { "has" } else { "have" },
            ),
            format!("give every member of {} a listener with scheme {scheme}, or set transport to a scheme they all listen on", target.name),
        );
    }

    /// A connector's `uri`: a failover (or single broker) URL of the transport's scheme whose
    /// options a connector can honour, not set twice with the reconnect_* keys.
    fn connector_uri(
        &mut self,
        key: &str,
        text: &str,
        c: &RawConnector,
        transport: ConnectorTransport,
    ) -> Option<crate::url::FailoverUrl> {
        const FIX: &str = "write failover:(tcp://HOST:PORT,tcp://HOST:PORT)?option=value with ActiveMQ failover options (initialReconnectDelay, maxReconnectDelay, useExponentialBackOff, reconnectDelayExponent, randomize, nested.*)";
        let url = match crate::url::ConnectUrl::parse(text) {
            Ok(u) => u.into_failover(),
            Err(e) => {
                self.refuse(key, e.to_string(), FIX);
                return None;
            }
        };
        let client_only = url.options.client_only_changes();
        if !client_only.is_empty() {
            self.refuse(
                key,
                format!("sets {} (only clients honour them)", client_only.join(", ")),
                FIX,
            );
        }
        let scheme = transport.scheme().to_string();
        if let Some(other) = url.uris.iter().find(|u| u.scheme != scheme) {
            self.refuse(
                key,
                format!("names {other}, but the connector's transport is {transport}"),
                format!("write {scheme}:// URIs, or set transport to their scheme"),
            );
        }
        let both: Vec<&str> = [
            (
                "reconnect_initial_delay",
                c.reconnect_initial_delay.is_some(),
            ),
            ("reconnect_max_delay", c.reconnect_max_delay.is_some()),
            ("reconnect_multiplier", c.reconnect_multiplier.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| *k)
        .collect();
        if !both.is_empty() {
            self.refuse(
                key,
                format!("is set together with {}", both.join(", ")),
                "set the reconnect delays in one place: the uri's failover options or the reconnect_* keys",
            );
        }
        Some(url)
    }

    fn connector(&mut self, at: &str, c: &RawConnector, security: &Security) -> Option<Connector> {
        let key = |k: &str| format!("{at}.{k}");
        let name = c
            .effective_name()
            .and_then(|n| match ConnectorName::parse(&n) {
                Ok(name) => Some(name),
                Err(e) if c.name.is_none() => {
                    self.refuse(
                        &key("name"),
                        format!("the default name {n:?} is not valid ({})", e.reason),
                        format!("set name explicitly; {NAME_FIX}"),
                    );
                    None
                }
                Err(e) => {
                    self.refuse(&key("name"), e.to_string(), NAME_FIX);
                    None
                }
            });
        let network_ttl = self
            .whole(&key("network_ttl"), c.network_ttl, 1, U32_MAX)
            .unwrap_or(1);
        let message_ttl = self
            .whole(&key("message_ttl"), c.message_ttl, 1, U32_MAX)
            .unwrap_or(network_ttl);
        let consumer_ttl = self
            .whole(&key("consumer_ttl"), c.consumer_ttl, 1, U32_MAX)
            .unwrap_or(network_ttl);
        let consumer_priority_base = self
            .whole(
                &key("consumer_priority_base"),
                c.consumer_priority_base,
                i64::from(i32::MIN),
                i64::from(i32::MAX),
            )
            .unwrap_or(-5);
        let prefetch = self
            .whole(&key("prefetch"), c.prefetch, 1, U32_MAX)
            .unwrap_or(1000);
        let mut patterns_ok = true;
        let mut patterns =
            |checker: &mut Self, list: &str, texts: &[String]| -> Vec<DestinationPattern> {
                let mut out = Vec::new();
                for (i, text) in texts.iter().enumerate() {
                    let p = checker.pattern(&format!("{at}.{list}[{i}]"), text);
                    patterns_ok &= p.is_some();
                    out.extend(p);
                }
                out
            };
        let dynamically_included = patterns(self, "dynamically_included", &c.dynamically_included);
        let statically_included = patterns(self, "statically_included", &c.statically_included);
        let excluded = patterns(self, "excluded", &c.excluded);
        if c.suppress_duplicate_topic_subscriptions == Some(false) {
            self.refuse(
                &key("suppress_duplicate_topic_subscriptions"),
                "is false, which would give every network topic subscription its own copy, so a \
                 topic message would reach a group once per route in a cyclic mesh; meshmq always \
                 sends each topic message to each subscribing group once, over its shortest route",
                "remove the key or set it to true",
            );
        }
        let static_bridge = c.static_bridge.unwrap_or(false);
        if static_bridge && c.statically_included.is_empty() {
            self.refuse(
                &key("static_bridge"),
                "is true, but statically_included is empty, so the bridge would forward nothing",
                "list the destinations to forward in statically_included, or set static_bridge = false",
            );
        }
        let replay_delay = self
            .duration(
                &key("replay_delay"),
                c.replay_delay.as_deref(),
                Zero::Allowed,
            )
            .unwrap_or(Duration::from_secs(1));
        let transport = self
            .keyword(
                &key("transport"),
                c.transport.as_deref(),
                ConnectorTransport::parse,
                ConnectorTransport::choices(),
                "tcp",
            )
            .unwrap_or(ConnectorTransport::Tcp);
        let initial = self
            .duration(
                &key("reconnect_initial_delay"),
                c.reconnect_initial_delay.as_deref(),
                Zero::Refused,
            )
            .unwrap_or(Duration::from_secs(1));
        let max = self
            .duration(
                &key("reconnect_max_delay"),
                c.reconnect_max_delay.as_deref(),
                Zero::Refused,
            )
            .unwrap_or(Duration::from_secs(30));
        if max < initial {
            self.refuse(
                &key("reconnect_max_delay"),
                format!(
                    "is {}{}, shorter than reconnect_initial_delay ({})",
                    humantime::format_duration(max),
                    if c.reconnect_max_delay.is_none() {
                        " (the default)"
                    } else {
                        ""
                    },
                    humantime::format_duration(initial)
                ),
                "make reconnect_max_delay at least reconnect_initial_delay",
            );
        }
        let multiplier = c.reconnect_multiplier.unwrap_or(2.0);
        if !(multiplier.is_finite() && multiplier >= 1.0) {
            self.refuse(
                &key("reconnect_multiplier"),
                format!("is {multiplier}, but must be at least 1.0"),
                "write 1.0 to retry at a constant delay, or more to back off, e.g. reconnect_multiplier = 2.0",
            );
        }
        let uri = c
            .uri
            .as_deref()
            .and_then(|text| self.connector_uri(&key("uri"), text, c, transport));
        let heartbeat = self
            .duration(&key("heartbeat"), c.heartbeat.as_deref(), Zero::Refused)
            .unwrap_or(Duration::from_secs(1));
        let handshake_timeout = self
            .duration(
                &key("handshake_timeout"),
                c.handshake_timeout.as_deref(),
                Zero::Refused,
            )
            .unwrap_or(Duration::from_secs(10));
        if let Some(username) = &c.username {
            if !security.users.is_empty() && !security.users.iter().any(|u| &u.name == username) {
                self.refuse(
                    &key("username"),
                    format!("{username:?} is not a user in [security]"),
                    format!("add a [[security.user]] named {username:?}, or fix the name"),
                );
            }
        }
        if c.password_file.is_some() && c.username.is_none() {
            self.refuse(
                &key("password_file"),
                "is set, but username is not",
                "set username too, or remove password_file",
            );
        }
        let password_file = self.path(&key("password_file"), c.password_file.as_deref());
        let tls_ca = self.path(&key("tls_ca"), c.tls_ca.as_deref());
        match (&transport, &tls_ca) {
            (ConnectorTransport::Tcp, Some(_)) => self.refuse(
                &key("tls_ca"),
                "is set, but the transport is tcp (no TLS)",
                "remove tls_ca, or set transport = \"ssl\" or \"quic\"",
            ),
            (ConnectorTransport::Ssl | ConnectorTransport::Quic, None) => self.refuse(
                &key("tls_ca"),
                "is missing: ssl and quic connectors verify the target's certificate",
                "set tls_ca to the CA file that signed the target members' certificates, e.g. the ca.pem of `meshmq certs`",
            ),
            _ => {}
        }
        if !patterns_ok {
            return None;
        }
        Some(Connector {
            name: name?,
            from: GroupName::parse(c.from.as_deref()?).ok()?,
            to: GroupName::parse(c.to.as_deref()?).ok()?,
            duplex: c.duplex.unwrap_or(false),
            message_ttl,
            consumer_ttl,
            conduit_subscriptions: c.conduit_subscriptions.unwrap_or(true),
            decrease_network_consumer_priority: c
                .decrease_network_consumer_priority
                .unwrap_or(true),
            consumer_priority_base,
            prefetch,
            dynamically_included,
            statically_included,
            excluded,
            static_bridge,
            bridge_temp_destinations: c.bridge_temp_destinations.unwrap_or(true),
            always_sync_send: c.always_sync_send.unwrap_or(true),
            suppress_duplicate_queue_subscriptions: c
                .suppress_duplicate_queue_subscriptions
                .unwrap_or(false),
            replay_when_no_consumers: c.replay_when_no_consumers.unwrap_or(true),
            replay_delay,
            transport,
            uri,
            reconnect_initial_delay: initial,
            reconnect_max_delay: max,
            reconnect_multiplier: multiplier,
            heartbeat,
            handshake_timeout,
            username: c.username.clone(),
            password_file,
            tls_ca,
        })
    }
}

/// What `groups` reads before the group's own keys: its name, election and members.
struct GroupParts {
    name: Option<GroupName>,
    election: Election,
    members: Vec<Member>,
}

/// What a member's checks need to know about where it sits.
struct MemberContext<'a> {
    at: &'a str,
    /// Position among all members of the mesh, in file order.
    index: usize,
    election: Election,
    /// Whether no other member of the mesh has this member's name.
    name_unique: bool,
    /// Whether any listener of the mesh sends cluster updates.
    cluster_updates_on: bool,
}

/// (group index, member index in its group) of the `n`th member of the mesh.
fn locate(groups: &[RawGroup], mut n: usize) -> (usize, usize) {
    for (gi, g) in groups.iter().enumerate() {
        if n < g.member.len() {
            return (gi, n);
        }
        n -= g.member.len();
    }
    (0, n)
}

/// Two addresses of one member that cannot both be bound: same port, and one of them is the
/// unspecified address of the other's family (or `[::]`, which Linux binds dual-stack).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() {
        return false;
    }
    let covers = |wide: SocketAddr, other: SocketAddr| {
        wide.ip().is_unspecified() && (wide.is_ipv6() || wide.is_ipv4() == other.is_ipv4())
    };
    covers(a, b) || covers(b, a)
}

/// Accepts an argon2 PHC string; the error never repeats the value (it may be a password).
fn check_password_hash(text: &str) -> Result<(), String> {
    if !text.starts_with('$') {
        return Err("is not a password hash (it looks like a plaintext password, which must never be stored)".to_string());
    }
    let hash = argon2::PasswordHash::new(text)
        .map_err(|e| format!("is not a valid PHC hash string ({e})"))?;
    let algorithm = hash.algorithm.as_str();
    if !matches!(algorithm, "argon2id" | "argon2i" | "argon2d") {
        return Err(format!("uses algorithm {algorithm:?}, but only argon2 hashes (argon2id, argon2i, argon2d) are accepted"));
    }
    argon2::Params::try_from(&hash).map_err(|e| format!("has invalid argon2 parameters ({e})"))?;
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err("has no salt or no hash part".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::{parse_str, OnFull, RebalanceOptions, SyncMode, Topology};
    use crate::destination::Destination;

    const BASE: &str = r#"
[mesh]
name = "demo"

[[group]]
name = "hub"

[[group.member]]
name = "hub-1"
admin = "127.0.0.1:8161"

[[group.member.listener]]
url = "tcp://127.0.0.1:61616"
"#;

    const EDGE: &str = r#"
[[group]]
name = "edge"

[[group.member]]
name = "edge-1"
admin = "127.0.0.1:8171"

[[group.member.listener]]
url = "tcp://127.0.0.1:61716"
"#;

    const HASH: &str =
        "$argon2id$v=19$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4";

    fn parse(text: &str) -> Topology {
        match parse_str(text, Path::new("/etc/meshmq/t.toml")) {
            Ok(t) => t,
            Err(e) => panic!("must parse:\n{e}"),
        }
    }

    /// The key paths of every error, in order.
    fn refused_keys(text: &str) -> Vec<String> {
        match parse_str(text, Path::new("t.toml")) {
            Ok(_) => Vec::new(),
            Err(e) => e.errors.into_iter().map(|e| e.key).collect(),
        }
    }

    #[test]
    fn broker_policy_resolves_group_over_top_level_over_defaults() {
        let text = format!(
            "[broker]\nprefetch = 50\nmemory_limit = \"2GiB\"\n{BASE}[group.broker]\nprefetch = 7\n{EDGE}"
        );
        let topo = parse(&text);
        let (Some(hub), Some(edge)) = (topo.group("hub"), topo.group("edge")) else {
            panic!("both groups exist");
        };
        assert_eq!(hub.broker.prefetch, 7, "group override");
        assert_eq!(
            hub.broker.memory_limit,
            2 << 30,
            "top level under the override"
        );
        assert_eq!(edge.broker.prefetch, 50, "top level");
        assert_eq!(edge.broker.max_redeliveries, 6, "built-in default");
        assert_eq!(topo.broker.heartbeat, std::time::Duration::from_secs(10));
    }

    #[test]
    fn defaults_of_a_minimal_topology() {
        let topo = parse(BASE);
        let Some((hub, member)) = topo.member("hub-1") else {
            panic!("hub-1 exists");
        };
        assert_eq!(hub.sync, SyncMode::LocalDisk);
        assert_eq!(hub.replicas, 1);
        assert_eq!(member.data_dir, Path::new("/etc/meshmq/data/hub-1"));
        assert_eq!(member.weight, 1);
        assert_eq!(member.listeners[0].max_connections, None);
        assert!(topo.security.allow_anonymous);
        assert_eq!(topo.store.segment_size, 64 << 20);
        assert_eq!(topo.metrics.max_destinations, 100);
        assert_eq!(topo.rebalance, RebalanceOptions::default());
        let tuned = parse(&format!(
            "[rebalance]\nthreshold = 0.25\nwindow = \"30s\"\nmax_moves_per_second = 20.0\nfailover_grace = \"1m\"\njoin_settle = \"0s\"\n{BASE}"
        ));
        assert_eq!(
            tuned.rebalance,
            RebalanceOptions {
                threshold: 0.25,
                window: Duration::from_secs(30),
                max_moves_per_second: 20.0,
                failover_grace: Duration::from_secs(60),
                join_settle: Duration::ZERO,
            }
        );
        assert!(topo.zookeeper.is_none());
        assert!(topo.unsupported().is_empty());
    }

    #[test]
    fn zookeeper_groups_default_to_quorum_mem_and_their_member_count() {
        let text = r#"
[mesh]
name = "demo"
[zookeeper]
connect = "zk1:2181, 127.0.0.1:2182"
[[group]]
name = "hub"
election = "zookeeper"
replication_token = "a-token-of-24-characters"
[[group.member]]
name = "hub-1"
admin = "127.0.0.1:8161"
replication = "127.0.0.1:61619"
[[group.member.listener]]
url = "tcp://127.0.0.1:61616"
[[group.member]]
name = "hub-2"
admin = "127.0.0.1:8162"
replication = "127.0.0.1:61629"
[[group.member.listener]]
url = "tcp://127.0.0.1:61626"
"#;
        let topo = parse(text);
        let Some(hub) = topo.group("hub") else {
            panic!("hub exists");
        };
        assert_eq!((hub.sync, hub.replicas), (SyncMode::QuorumMem, 2));
        let zk = topo
            .zookeeper
            .as_ref()
            .map(|z| (z.connect.len(), z.root.as_str()));
        assert_eq!(zk, Some((2, "/meshmq")));
    }

    #[test]
    fn a_replicated_group_of_several_members_needs_a_token_of_16_characters() {
        let group = |token: &str| {
            format!(
                "[mesh]\nname = \"demo\"\n[zookeeper]\nconnect = \"127.0.0.1:2181\"\n\
                 [[group]]\nname = \"hub\"\nelection = \"zookeeper\"\n{token}\n\
                 [[group.member]]\nname = \"hub-1\"\nadmin = \"127.0.0.1:8161\"\n\
                 replication = \"127.0.0.1:61619\"\n\
                 [[group.member.listener]]\nurl = \"tcp://127.0.0.1:61616\"\n\
                 [[group.member]]\nname = \"hub-2\"\nadmin = \"127.0.0.1:8162\"\n\
                 replication = \"127.0.0.1:61629\"\n\
                 [[group.member.listener]]\nurl = \"tcp://127.0.0.1:61626\"\n"
            )
        };
        let missing = match parse_str(&group(""), Path::new("t.toml")) {
            Ok(_) => panic!("a two-member group without a replication token was accepted"),
            Err(e) => e.to_string(),
        };
        for words in ["group[hub].replication_token", "is missing", "meshmq token"] {
            assert!(missing.contains(words), "{words:?} not in: {missing}");
        }
        let short = match parse_str(
            &group("replication_token = \"fifteen-chars-x\""),
            Path::new("t.toml"),
        ) {
            Ok(_) => panic!("a 15-character replication token was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(short.contains("15 characters"), "{short}");
        assert!(
            !short.contains("fifteen-chars-x"),
            "the token is echoed: {short}"
        );
        assert!(refused_keys(&group("replication_token = \"sixteen-chars-xx\"")).is_empty());
    }

    #[test]
    fn policy_for_takes_the_first_matching_entry_key_by_key() {
        let text = format!(
            r#"
[broker]
max_redeliveries = 4
[[policy]]
destination = "queue://orders.eu"
prefetch = 1
[[policy]]
destination = "queue://orders.>"
prefetch = 10
memory_limit = "64MiB"
on_full = "fail"
{BASE}"#
        );
        let topo = parse(&text);
        let Some(hub) = topo.group("hub") else {
            panic!("hub exists");
        };
        let limits = |d: &str| match Destination::parse(d) {
            Ok(dest) => hub.policy_for(&topo, &dest),
            Err(e) => panic!("{e}"),
        };
        let eu = limits("queue://orders.eu");
        assert_eq!(
            (eu.prefetch, eu.memory_limit, eu.on_full),
            (1, None, OnFull::Block)
        );
        assert_eq!(
            eu.max_redeliveries, 4,
            "unset keys come from the group's broker policy"
        );
        let us = limits("queue://orders.us");
        assert_eq!(
            (us.prefetch, us.memory_limit, us.on_full),
            (10, Some(64 << 20), OnFull::Fail)
        );
        let other = limits("topic://orders.us");
        assert_eq!((other.prefetch, other.memory_limit), (1000, None));
    }

    #[test]
    fn relative_paths_resolve_against_the_file_and_are_normalised() {
        let text = BASE.replace(
            "admin = \"127.0.0.1:8161\"",
            "admin = \"127.0.0.1:8161\"\ndata_dir = \"../var/./hub-1\"",
        );
        let topo = parse(&text);
        let dir = topo.member("hub-1").map(|(_, m)| m.data_dir.clone());
        assert_eq!(dir, Some("/etc/var/hub-1".into()));
    }

    #[test]
    fn network_ttl_sets_both_ttls_unless_given() {
        let text = format!(
            "{BASE}{EDGE}[[connector]]\nfrom = \"hub\"\nto = \"edge\"\nnetwork_ttl = 3\nconsumer_ttl = 2\n"
        );
        let topo = parse(&text);
        let ttls = topo
            .connectors
            .first()
            .map(|c| (c.message_ttl, c.consumer_ttl, c.name.to_string()));
        assert_eq!(ttls, Some((3, 2, "hub-edge".to_string())));
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let text = r#"
[mesh]
name = "demo"
[zookeeper]
connect = "127.0.0.1:2181"
digest = "meshmq:topsecret"
[[group]]
name = "hub"
election = "zookeeper"
replication_token = "topsecret-topsecret"
[[group.member]]
name = "hub-1"
admin = "127.0.0.1:8161"
replication = "127.0.0.1:61619"
[[group.member.listener]]
url = "tcp://127.0.0.1:61616"
"#;
        let topo = parse(text);
        assert!(!format!("{topo:?}").contains("topsecret"));
        let digest = topo
            .zookeeper
            .as_ref()
            .and_then(|z| z.digest.as_ref())
            .map(|d| d.expose());
        assert_eq!(digest, Some("meshmq:topsecret"));
    }

    #[test]
    fn every_semantic_check_names_its_key_and_all_are_collected() {
        let user = format!(
            "[[security.user]]\nname = \"alice\"\npassword_hash = \"{HASH}\"\ngroups = [\"p\"]\n"
        );
        let cases: Vec<(String, Vec<&str>)> = vec![
            ("".into(), vec!["mesh", "group"]),
            ("[mesh]\nname = \"a b\"\n".into(), vec!["mesh.name", "group"]),
            (format!("{BASE}{}", EDGE.replace("edge", "hub")), vec!["group[1].name", "group[1].member[0].name"]),
            (format!("{BASE}\n[[group]]\nname = \"e\"\n"), vec!["group[e]"]),
            (format!("{BASE}\n[[group]]\nname = \"e\"\n[[group.member]]\nname = \"e1\"\nadmin = \"127.0.0.1:1\"\n"), vec!["group[e].member[e1]"]),
            (format!("{BASE}\n[[group.member.listener]]\nurl = \"stomp://0.0.0.0:61616\"\n"), vec!["group[hub].member[hub-1].listener[1].url"]),
            (format!("{BASE}\n[[group.member.listener]]\nurl = \"stomp://[::]:8161\"\n"), vec!["group[hub].member[hub-1].listener[1].url"]),
            (format!("{BASE}\n[[group.member.listener]]\nurl = \"stomp://[::1]:61616\"\n"), vec![]),
            (format!("{BASE}{}", EDGE.replace("8171", "8161")), vec!["group[edge].member[edge-1].admin"]),
            (format!("{BASE}\n[[group.member]]\nname = \"hub-2\"\nadmin = \"127.0.0.1:2\"\n[[group.member.listener]]\nurl = \"tcp://127.0.0.1:3\"\n"), vec!["group[hub]"]),
            (BASE.replace("name = \"hub\"", "name = \"hub\"\nreplicas = 0"), vec!["group[hub].replicas"]),
            (BASE.replace("name = \"hub\"", "name = \"hub\"\nsync = \"quorum_disk\""), vec!["group[hub].sync"]),
            (BASE.replace("name = \"hub\"", "name = \"hub\"\nquorum_timeout = \"1s\""), vec!["group[hub].quorum_timeout"]),
            (BASE.replace("name = \"hub\"", "name = \"hub\"\nelection = \"file-lock\"\nshared_dir = \"data/hub-1\""), vec!["group[hub].shared_dir"]),
            (BASE.replace("name = \"hub\"", "name = \"hub\"\nelection = \"zookeeper\""), vec!["group[hub].member[hub-1].replication", "zookeeper"]),
            (format!("{BASE}tls_client_ca = \"ca.pem\"\n"), vec!["group[hub].member[hub-1].listener[0].tls_client_ca"]),
            (format!("{BASE}\n[[group.member.listener]]\nurl = \"quic://127.0.0.1:9\"\ntls_cert = \"c\"\n"), vec!["group[hub].member[hub-1].listener[1].tls_key"]),
            (format!("{BASE}{EDGE}[[connector]]\nfrom = \"hub\"\nto = \"nope\"\n"), vec!["connector[hub-nope].to"]),
            (format!("{BASE}{EDGE}[[connector]]\nfrom = \"edge\"\nto = \"edge\"\n"), vec!["connector[edge-edge].to"]),
            (format!("{BASE}{EDGE}[[connector]]\nfrom = \"hub\"\nto = \"edge\"\n[[connector]]\nfrom = \"edge\"\nto = \"hub\"\nduplex = true\n"), vec!["connector[edge-hub]"]),
            (format!("{BASE}{EDGE}[[connector]]\nfrom = \"hub\"\nto = \"edge\"\n[[connector]]\nfrom = \"edge\"\nto = \"hub\"\n"), vec![]),
            (format!("{BASE}{EDGE}[[connector]]\nfrom = \"hub\"\nto = \"edge\"\ntransport = \"quic\"\ntls_ca = \"ca.pem\"\n"), vec!["connector[hub-edge].transport"]),
            (format!("{BASE}{EDGE}[[connector]]\nfrom = \"hub\"\nto = \"edge\"\ntls_ca = \"ca.pem\"\n"), vec!["connector[hub-edge].tls_ca"]),
            (format!("{BASE}{EDGE}[[connector]]\nfrom = \"hub\"\nto = \"edge\"\nstatic_bridge = true\n"), vec!["connector[hub-edge].static_bridge"]),
            (format!("{BASE}{EDGE}[[connector]]\nfrom = \"hub\"\nto = \"edge\"\nreconnect_multiplier = 0.99\nprefetch = 0\nheartbeat = \"0s\"\n"), vec!["connector[hub-edge].prefetch", "connector[hub-edge].reconnect_multiplier", "connector[hub-edge].heartbeat"]),
            (format!("{BASE}{EDGE}[[connector]]\nfrom = \"hub\"\nto = \"edge\"\nusername = \"bob\"\n{user}"), vec!["connector[hub-edge].username"]),
            (format!("{user}[[security.acl]]\ndestination = \"queue://a\"\nread = [\"p\", \"q\"]\nadmin = [\"r\"]\n{BASE}"), vec!["security.acl[0].read[1]", "security.acl[0].admin[0]"]),
            (format!("[[security.user]]\nname = \"alice\"\npassword_hash = \"$argon2id$v=19$m=1,t=1,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4\"\n{BASE}"), vec!["security.user[alice].password_hash"]),
            (format!("[[security.user]]\nname = \"al:ice\"\npassword_hash = \"{HASH}\"\n{BASE}"), vec!["security.user[0].name"]),
            (format!("{BASE}update_cluster_clients = true\nupdate_cluster_filter = [\"ok\", \"(\"]\n"), vec!["group[hub].member[hub-1].listener[0].update_cluster_filter[1]"]),
            (format!("[store]\ncheckpoint_interval = \"0s\"\ngroup_commit_window = \"0s\"\n[metrics]\nmax_destinations = 0\n{BASE}"), vec!["store.checkpoint_interval", "metrics.max_destinations"]),
            (format!("[broker]\nmax_redeliveries = -1\nheartbeat = \"0s\"\n{BASE}"), vec!["broker.max_redeliveries"]),
            (format!("[rebalance]\nthreshold = 0.0\nmax_moves_per_second = 0.0\nwindow = \"soon\"\n{BASE}"), vec!["rebalance.threshold", "rebalance.max_moves_per_second", "rebalance.window"]),
            (format!("{BASE}\n[admin]\ntoken = \"short\"\n"), vec!["admin.token"]),
            (format!("{BASE}\n[admin]\ntoken = \"sixteen chars ok\"\n"), vec!["admin.token"]),
            (format!("{BASE}\n[admin]\ntoken = \"0123456789abcdef\"\n"), vec![]),
        ];
        for (text, keys) in cases {
            assert_eq!(refused_keys(&text), keys, "{text}");
        }
    }

    #[test]
    fn password_hashes_must_be_argon2_phc_strings() {
        use super::check_password_hash;
        assert_eq!(check_password_hash(HASH), Ok(()));
        let refused = |h: &str| check_password_hash(h).is_err();
        assert!(refused("hunter2"));
        assert!(refused("$argon2id$v=19$m=256,t=2,p=1"));
        assert!(refused("$argon2id$garbage"));
        assert!(!check_password_hash("secret").is_err_and(|e| e.contains("secret")));
    }

    #[test]
    fn wildcard_binds_overlap_only_what_they_cover() {
        use super::overlaps;
        let addr = |s: &str| match s.parse() {
            Ok(a) => a,
            Err(e) => panic!("{s}: {e}"),
        };
        assert!(overlaps(addr("0.0.0.0:1"), addr("127.0.0.1:1")));
        assert!(overlaps(addr("[::1]:1"), addr("[::]:1")));
        assert!(
            overlaps(addr("127.0.0.1:1"), addr("[::]:1")),
            "[::] binds dual-stack"
        );
        assert!(!overlaps(addr("0.0.0.0:1"), addr("[::1]:1")));
        assert!(!overlaps(addr("0.0.0.0:1"), addr("127.0.0.1:2")));
        assert!(!overlaps(addr("127.0.0.1:1"), addr("127.0.0.2:1")));
    }
}
