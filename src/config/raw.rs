//! TOML text → raw structs that mirror the file, through the `config` crate.
//!
//! The raw structs hold what the user wrote: every scalar is optional, durations, sizes,
//! addresses and keywords stay strings, integers stay `i64`. All meaning is given in
//! `validate`, which can then report every problem at once with its own wording; serde only
//! refuses what has the wrong shape (an unknown key, a string where a number goes).
//!
//! `config` 0.15 keeps keys' case and passes `deny_unknown_fields` through, but its
//! deserializer converts between scalar types (`"yes"`, `1` and `"1"` become `true`, `2.6`
//! becomes the integer 3, `5` becomes the string `"5"`), which would let typos through
//! silently. So the `config::Config` is first turned into a `serde_json::Value`, which keeps
//! each value's TOML type exactly, and the raw structs are read from that with
//! `serde_path_to_error` for the key path of a refusal. The one loss in that bridge, `nan` and
//! `inf` becoming JSON null (which an optional key would read as "not set"), is refused first.

use std::path::Path;

use serde::Deserialize;

use super::error::ConfigError;
use super::names::name_labels;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTopology {
    pub mesh: Option<RawMesh>,
    pub broker: Option<RawBroker>,
    #[serde(default)]
    pub policy: Vec<RawPolicy>,
    pub store: Option<RawStore>,
    pub metrics: Option<RawMetrics>,
    pub security: Option<RawSecurity>,
    pub zookeeper: Option<RawZooKeeper>,
    pub rebalance: Option<RawRebalance>,
    #[serde(default)]
    pub group: Vec<RawGroup>,
    #[serde(default)]
    pub connector: Vec<RawConnector>,
    pub admin: Option<RawAdmin>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMesh {
    pub name: Option<String>,
    pub secret_file: Option<String>,
    pub allow_anonymous_bridges: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBroker {
    pub memory_limit: Option<String>,
    pub on_full: Option<String>,
    pub max_redeliveries: Option<i64>,
    pub topic_pending_limit: Option<i64>,
    pub topic_pending_size: Option<String>,
    pub prefetch: Option<i64>,
    pub max_frame_size: Option<String>,
    pub heartbeat: Option<String>,
    pub connect_timeout: Option<String>,
    pub max_subscriptions_per_connection: Option<i64>,
    pub stomp_max_headers: Option<i64>,
    pub stomp_max_header_length: Option<String>,
    pub expiry_check_interval: Option<String>,
    pub shutdown_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub destination: Option<String>,
    pub memory_limit: Option<String>,
    pub max_redeliveries: Option<i64>,
    pub topic_pending_limit: Option<i64>,
    pub topic_pending_size: Option<String>,
    pub prefetch: Option<i64>,
    pub on_full: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub segment_size: Option<String>,
    pub store_limit: Option<String>,
    pub checkpoint_interval: Option<String>,
    pub group_commit_window: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub max_destinations: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRebalance {
    pub threshold: Option<f64>,
    pub window: Option<String>,
    pub max_moves_per_second: Option<f64>,
    pub failover_grace: Option<String>,
    pub join_settle: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecurity {
    pub allow_anonymous: Option<bool>,
    #[serde(default)]
    pub user: Vec<RawUser>,
    #[serde(default)]
    pub acl: Vec<RawAcl>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    pub name: Option<String>,
    pub password_hash: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcl {
    pub destination: Option<String>,
    #[serde(default)]
    pub read: Vec<String>,
    #[serde(default)]
    pub write: Vec<String>,
    #[serde(default)]
    pub admin: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawZooKeeper {
    pub connect: Option<String>,
    pub session_timeout: Option<String>,
    pub root: Option<String>,
    pub digest: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGroup {
    pub name: Option<String>,
    pub election: Option<String>,
    pub replicas: Option<i64>,
    pub sync: Option<String>,
    pub quorum_timeout: Option<String>,
    pub lock_poll: Option<String>,
    pub shared_dir: Option<String>,
    pub replication_token: Option<String>,
    pub broker: Option<RawBroker>,
    #[serde(default)]
    pub member: Vec<RawMember>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMember {
    pub name: Option<String>,
    pub admin: Option<String>,
    pub data_dir: Option<String>,
    pub bind: Option<String>,
    pub weight: Option<i64>,
    pub replication: Option<String>,
    #[serde(default)]
    pub listener: Vec<RawListener>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub url: Option<String>,
    pub advertise: Option<String>,
    pub max_connections: Option<i64>,
    pub update_cluster_clients: Option<bool>,
    pub rebalance_cluster_clients: Option<bool>,
    pub update_cluster_clients_on_remove: Option<bool>,
    #[serde(default)]
    pub update_cluster_filter: Vec<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub tls_client_ca: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConnector {
    pub name: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub duplex: Option<bool>,
    pub network_ttl: Option<i64>,
    pub message_ttl: Option<i64>,
    pub consumer_ttl: Option<i64>,
    pub conduit_subscriptions: Option<bool>,
    pub decrease_network_consumer_priority: Option<bool>,
    pub consumer_priority_base: Option<i64>,
    pub prefetch: Option<i64>,
    #[serde(default)]
    pub dynamically_included: Vec<String>,
    #[serde(default)]
    pub statically_included: Vec<String>,
    #[serde(default)]
    pub excluded: Vec<String>,
    pub static_bridge: Option<bool>,
    pub bridge_temp_destinations: Option<bool>,
    pub always_sync_send: Option<bool>,
    pub suppress_duplicate_queue_subscriptions: Option<bool>,
    pub suppress_duplicate_topic_subscriptions: Option<bool>,
    pub replay_when_no_consumers: Option<bool>,
    pub replay_delay: Option<String>,
    pub transport: Option<String>,
    pub uri: Option<String>,
    pub reconnect_initial_delay: Option<String>,
    pub reconnect_max_delay: Option<String>,
    pub reconnect_multiplier: Option<f64>,
    pub heartbeat: Option<String>,
    pub handshake_timeout: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<String>,
    pub tls_ca: Option<String>,
}

impl RawConnector {
    /// The name the connector is known by: explicit, or `<from>-<to>`.
    pub fn effective_name(&self) -> Option<String> {
        match (&self.name, &self.from, &self.to) {
            (Some(name), _, _) => Some(name.clone()),
            (None, Some(from), Some(to)) => Some(format!("{from}-{to}")),
            _ => None,
        }
    }
}

/// Reads topology text into raw structs, or the first shape error (serde stops at it).
pub(super) fn read(text: &str, file: &Path) -> Result<RawTopology, ConfigError> {
    let parsed = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .map_err(|e| syntax_error(file, &e))?;
    // Cannot fail for TOML input (every TOML value has a JSON counterpart); mapped anyway.
    let tree: serde_json::Value = parsed.try_deserialize().map_err(|e| ConfigError {
        file: file.to_path_buf(),
        key: String::new(),
        problem: format!("cannot be read as a table of keys ({e})"),
        fix: "write a TOML table such as [mesh] with name = \"demo\"".to_string(),
    })?;
    if let Some(path) = first_null(&tree) {
        return Err(not_finite(file, &tree, &path));
    }
    serde_path_to_error::deserialize(&tree).map_err(|e| shape_error(file, &tree, &e))
}

/// One step of a key path: a table key or a list index.
enum Step {
    Key(String),
    Index(usize),
}

/// TOML has no null, but `nan` and `inf` floats become JSON nulls, which an `Option` field
/// would silently read as "not set"; so any null is refused before deserializing.
fn first_null(tree: &serde_json::Value) -> Option<Vec<Step>> {
    match tree {
        serde_json::Value::Null => Some(Vec::new()),
        serde_json::Value::Object(table) => table.iter().find_map(|(k, v)| {
            let mut path = first_null(v)?;
            path.insert(0, Step::Key(k.clone()));
            Some(path)
        }),
        serde_json::Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| {
            let mut path = first_null(v)?;
            path.insert(0, Step::Index(i));
            Some(path)
        }),
        _ => None,
    }
}

fn not_finite(file: &Path, tree: &serde_json::Value, path: &[Step]) -> ConfigError {
    let (key, schema_path, leaf) = describe_steps(tree, path);
    let fix = match example(&schema_path) {
        Some(Example::Value(v)) => format!("write it like {leaf} = {v}"),
        _ => "write a finite number".to_string(),
    };
    ConfigError {
        file: file.to_path_buf(),
        key,
        problem: "is nan or inf, which no key accepts".to_string(),
        fix,
    }
}

fn syntax_error(file: &Path, e: &config::ConfigError) -> ConfigError {
    let text = match e {
        config::ConfigError::FileParse { cause, .. } => cause.to_string(),
        other => other.to_string(),
    };
    let (problem, fix) = describe_toml_error(&text);
    ConfigError {
        file: file.to_path_buf(),
        key: String::new(),
        problem,
        fix,
    }
}

/// Folds the `toml` crate's multi-line report (location, source line, caret, reason) into one
/// problem and fix.
fn describe_toml_error(text: &str) -> (String, String) {
    let lines: Vec<&str> = text.lines().collect();
    let location = lines
        .first()
        .and_then(|l| l.strip_prefix("TOML parse error at "));
    let source = lines.iter().find_map(|l| {
        let (number, code) = l.split_once(" | ")?;
        number.trim().parse::<u32>().ok().map(|_| code.trim())
    });
    let caret = lines
        .iter()
        .position(|l| l.trim_start().starts_with('|') && l.contains('^'));
    let reason = caret
        .map(|i| lines[i + 1..].join(" ").trim().to_string())
        .filter(|r| !r.is_empty());
    match (location, source, reason) {
        (Some(location), Some(source), Some(reason)) => {
            let line = location
                .split(',')
                .next()
                .unwrap_or(location)
                .trim()
                .to_string();
            (
                format!("TOML syntax error at {location} ({source}): {reason}"),
                format!("fix the TOML at {line}"),
            )
        }
        _ => (
            format!(
                "is not valid TOML: {}",
                text.split_whitespace().collect::<Vec<_>>().join(" ")
            ),
            "fix the TOML syntax".to_string(),
        ),
    }
}

fn shape_error(
    file: &Path,
    tree: &serde_json::Value,
    e: &serde_path_to_error::Error<serde_json::Error>,
) -> ConfigError {
    let (key, schema_path, leaf) = describe_path(tree, e.path());
    let message = e.inner().to_string();
    let (problem, fix) = if let Some(rest) = message.strip_prefix("unknown field `") {
        unknown_key(rest)
    } else if let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
    {
        wrong_type(rest, &schema_path, &leaf)
    } else {
        (
            message,
            "see topologies/reference.toml for every key and its type".to_string(),
        )
    };
    ConfigError {
        file: file.to_path_buf(),
        key,
        problem,
        fix,
    }
}

/// Turns serde's index path into ours (`group[0]` → `group[hub]` when the element has a valid,
/// unique name). Also answers the path without indices (`group.member.name`, to look up an
/// example) and the last key.
fn describe_path(
    tree: &serde_json::Value,
    path: &serde_path_to_error::Path,
) -> (String, String, String) {
    use serde_path_to_error::Segment;
    let steps: Vec<Step> = path
        .iter()
        .map(|segment| match segment {
            Segment::Seq { index } => Step::Index(*index),
            Segment::Map { key } => Step::Key(key.clone()),
            Segment::Enum { variant } => Step::Key(variant.clone()),
            Segment::Unknown => Step::Key("?".to_string()),
        })
        .collect();
    describe_steps(tree, &steps)
}

fn describe_steps(tree: &serde_json::Value, steps: &[Step]) -> (String, String, String) {
    let mut key = String::new();
    let mut schema = Vec::new();
    let mut node = Some(tree);
    let mut parent_key = String::new();
    for step in steps {
        match step {
            Step::Index(index) => {
                let elements = node.and_then(|n| n.as_array());
                let label = elements
                    .and_then(|els| {
                        let names: Vec<Option<String>> =
                            els.iter().map(|el| element_name(&parent_key, el)).collect();
                        let names: Vec<Option<&str>> = names.iter().map(Option::as_deref).collect();
                        name_labels(&names).get(*index).cloned().flatten()
                    })
                    .unwrap_or_else(|| index.to_string());
                key.push_str(&format!("[{label}]"));
                node = elements.and_then(|els| els.get(*index));
            }
            Step::Key(name) => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(name);
                schema.push(name.as_str());
                parent_key = name.clone();
                node = node.and_then(|n| n.get(name));
            }
        }
    }
    let leaf = schema.last().map(|s| s.to_string()).unwrap_or_default();
    (key, schema.join("."), leaf)
}

fn element_name(list_key: &str, element: &serde_json::Value) -> Option<String> {
    let field = |k: &str| element.get(k).and_then(|v| v.as_str());
    match (field("name"), list_key) {
        (Some(name), _) => Some(name.to_string()),
        (None, "connector") => Some(format!("{}-{}", field("from")?, field("to")?)),
        _ => None,
    }
}

/// `rest` is serde's message after "unknown field `": "colour`, expected one of `a`, `b`".
fn unknown_key(rest: &str) -> (String, String) {
    let (unknown, expected) = rest.split_once('`').unwrap_or((rest, ""));
    let valid: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    if valid.is_empty() {
        return ("unknown key".to_string(), "remove it".to_string());
    }
    let suggestion = valid
        .iter()
        .copied()
        .filter(|v| edit_distance(v, unknown) <= 2 || v.eq_ignore_ascii_case(unknown))
        .min_by_key(|v| edit_distance(v, unknown));
    let list = valid.join(", ");
    let fix = match suggestion {
        Some(s) => format!("did you mean {s:?}? valid keys here are: {list}"),
        None => format!("valid keys here are: {list}"),
    };
    ("unknown key".to_string(), fix)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// `rest` is serde's "FOUND, expected EXPECTED".
fn wrong_type(rest: &str, schema_path: &str, leaf: &str) -> (String, String) {
    let (found, expected) = rest
        .split_once(", expected ")
        .unwrap_or((rest, "another type"));
    let found = match found {
        "map" => "a table".to_string(),
        "sequence" => "a list".to_string(),
        other => other
            .trim_start_matches("integer ")
            .trim_start_matches("floating point ")
            .trim_start_matches("boolean ")
            .trim_start_matches("string ")
            .trim_matches('`')
            .to_string(),
    };
    let expected = match expected {
        "a boolean" => "true or false",
        "i64" => "a whole number",
        "f64" => "a number",
        "a sequence" => "a list",
        other if other.starts_with("struct ") => "a table",
        other => other,
    };
    let problem = format!("is {found}, but must be {expected}");
    let fix = match example(schema_path) {
        Some(Example::Value(v)) => format!("write it like {leaf} = {v}"),
        Some(Example::Table) => format!("write it as a [{schema_path}] table"),
        Some(Example::Tables) => {
            format!("write a [[{schema_path}]] table (double brackets) for each entry")
        }
        None => "see topologies/reference.toml for the type of each key".to_string(),
    };
    (problem, fix)
}

/// How a key is written, for fixes; `Table`/`Tables` are `[x]` and `[[x]]` sections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Example {
    Value(&'static str),
    Table,
    Tables,
}

const BROKER_EXAMPLES: &[(&str, Example)] = &[
    ("memory_limit", Example::Value("\"1GiB\"")),
    ("on_full", Example::Value("\"block\"")),
    ("max_redeliveries", Example::Value("6")),
    ("topic_pending_limit", Example::Value("100000")),
    ("topic_pending_size", Example::Value("\"64MiB\"")),
    ("prefetch", Example::Value("1000")),
    ("max_frame_size", Example::Value("\"100MiB\"")),
    ("heartbeat", Example::Value("\"10s\"")),
    ("connect_timeout", Example::Value("\"10s\"")),
    ("max_subscriptions_per_connection", Example::Value("10000")),
    ("stomp_max_headers", Example::Value("1000")),
    ("stomp_max_header_length", Example::Value("\"10KiB\"")),
    ("expiry_check_interval", Example::Value("\"1s\"")),
    ("shutdown_timeout", Example::Value("\"5s\"")),
];

/// Every key of the file format with an example, by path without indices. `[group.broker]`
/// takes the `[broker]` keys, looked up under `broker`.
pub(super) const EXAMPLES: &[(&str, Example)] = &[
    ("mesh", Example::Table),
    ("mesh.name", Example::Value("\"demo\"")),
    (
        "mesh.secret_file",
        Example::Value("\"../data/demo/mesh.secret\""),
    ),
    ("mesh.allow_anonymous_bridges", Example::Value("false")),
    ("broker", Example::Table),
    ("policy", Example::Tables),
    ("policy.destination", Example::Value("\"queue://orders.>\"")),
    ("policy.memory_limit", Example::Value("\"64MiB\"")),
    ("policy.max_redeliveries", Example::Value("3")),
    ("policy.topic_pending_limit", Example::Value("500")),
    ("policy.topic_pending_size", Example::Value("\"8MiB\"")),
    ("policy.prefetch", Example::Value("10")),
    ("policy.on_full", Example::Value("\"fail\"")),
    ("store", Example::Table),
    ("store.segment_size", Example::Value("\"64MiB\"")),
    ("store.store_limit", Example::Value("\"10GiB\"")),
    ("store.checkpoint_interval", Example::Value("\"30s\"")),
    ("store.group_commit_window", Example::Value("\"2ms\"")),
    ("metrics", Example::Table),
    ("metrics.max_destinations", Example::Value("100")),
    ("rebalance", Example::Table),
    ("rebalance.threshold", Example::Value("0.1")),
    ("rebalance.window", Example::Value("\"10s\"")),
    ("rebalance.max_moves_per_second", Example::Value("100.0")),
    ("rebalance.failover_grace", Example::Value("\"30s\"")),
    ("rebalance.join_settle", Example::Value("\"3s\"")),
    ("security", Example::Table),
    ("security.allow_anonymous", Example::Value("false")),
    ("security.user", Example::Tables),
    ("security.user.name", Example::Value("\"alice\"")),
    (
        "security.user.password_hash",
        Example::Value("\"$argon2id$v=19$...\" (the output of `meshmq passwd`)"),
    ),
    ("security.user.groups", Example::Value("[\"producers\"]")),
    ("security.acl", Example::Tables),
    (
        "security.acl.destination",
        Example::Value("\"queue://orders.>\""),
    ),
    ("security.acl.read", Example::Value("[\"consumers\"]")),
    ("security.acl.write", Example::Value("[\"producers\"]")),
    ("security.acl.admin", Example::Value("[\"admins\"]")),
    ("zookeeper", Example::Table),
    ("zookeeper.connect", Example::Value("\"127.0.0.1:2181\"")),
    ("zookeeper.session_timeout", Example::Value("\"2s\"")),
    ("zookeeper.root", Example::Value("\"/meshmq\"")),
    ("zookeeper.digest", Example::Value("\"user:password\"")),
    ("group", Example::Tables),
    ("group.name", Example::Value("\"hub\"")),
    ("group.election", Example::Value("\"none\"")),
    ("group.replicas", Example::Value("3")),
    ("group.sync", Example::Value("\"quorum_mem\"")),
    ("group.quorum_timeout", Example::Value("\"5s\"")),
    ("group.lock_poll", Example::Value("\"1s\"")),
    ("group.shared_dir", Example::Value("\"data/hub\"")),
    ("group.replication_token", Example::Value("\"secret\"")),
    ("group.broker", Example::Table),
    ("group.member", Example::Tables),
    ("group.member.name", Example::Value("\"hub-1\"")),
    ("group.member.admin", Example::Value("\"127.0.0.1:8161\"")),
    ("group.member.data_dir", Example::Value("\"data/hub-1\"")),
    ("group.member.bind", Example::Value("\"127.0.0.1\"")),
    ("group.member.weight", Example::Value("1")),
    (
        "group.member.replication",
        Example::Value("\"127.0.0.1:61619\""),
    ),
    ("group.member.listener", Example::Tables),
    (
        "group.member.listener.url",
        Example::Value("\"tcp://127.0.0.1:61616\""),
    ),
    (
        "group.member.listener.advertise",
        Example::Value("\"tcp://broker1.example.com:61616\""),
    ),
    (
        "group.member.listener.max_connections",
        Example::Value("10000"),
    ),
    (
        "group.member.listener.update_cluster_clients",
        Example::Value("true"),
    ),
    (
        "group.member.listener.rebalance_cluster_clients",
        Example::Value("true"),
    ),
    (
        "group.member.listener.update_cluster_clients_on_remove",
        Example::Value("true"),
    ),
    (
        "group.member.listener.update_cluster_filter",
        Example::Value("[\"edge-.*\"]"),
    ),
    (
        "group.member.listener.tls_cert",
        Example::Value("\"certs/hub-1.pem\""),
    ),
    (
        "group.member.listener.tls_key",
        Example::Value("\"certs/hub-1.key\""),
    ),
    (
        "group.member.listener.tls_client_ca",
        Example::Value("\"certs/ca.pem\""),
    ),
    ("admin", Example::Table),
    (
        "admin.token",
        Example::Value("\"...\" (the output of `meshmq token`)"),
    ),
    ("connector", Example::Tables),
    ("connector.name", Example::Value("\"hub-edge-1\"")),
    ("connector.from", Example::Value("\"hub\"")),
    ("connector.to", Example::Value("\"edge-1\"")),
    ("connector.duplex", Example::Value("false")),
    ("connector.network_ttl", Example::Value("1")),
    ("connector.message_ttl", Example::Value("1")),
    ("connector.consumer_ttl", Example::Value("1")),
    ("connector.conduit_subscriptions", Example::Value("true")),
    (
        "connector.decrease_network_consumer_priority",
        Example::Value("true"),
    ),
    ("connector.consumer_priority_base", Example::Value("-5")),
    ("connector.prefetch", Example::Value("1000")),
    (
        "connector.dynamically_included",
        Example::Value("[\"queue://orders.>\"]"),
    ),
    (
        "connector.statically_included",
        Example::Value("[\"queue://audit\"]"),
    ),
    (
        "connector.excluded",
        Example::Value("[\"topic://internal.>\"]"),
    ),
    ("connector.static_bridge", Example::Value("false")),
    ("connector.bridge_temp_destinations", Example::Value("true")),
    ("connector.always_sync_send", Example::Value("true")),
    (
        "connector.suppress_duplicate_queue_subscriptions",
        Example::Value("false"),
    ),
    (
        "connector.suppress_duplicate_topic_subscriptions",
        Example::Value("true"),
    ),
    ("connector.replay_when_no_consumers", Example::Value("true")),
    ("connector.replay_delay", Example::Value("\"1s\"")),
    ("connector.transport", Example::Value("\"tcp\"")),
    (
        "connector.uri",
        Example::Value(
            "\"failover:(ssl://127.0.0.1:61617,ssl://127.0.0.1:61627)?randomize=false\"",
        ),
    ),
    (
        "connector.reconnect_initial_delay",
        Example::Value("\"1s\""),
    ),
    ("connector.reconnect_max_delay", Example::Value("\"30s\"")),
    ("connector.reconnect_multiplier", Example::Value("2.0")),
    ("connector.heartbeat", Example::Value("\"1s\"")),
    ("connector.handshake_timeout", Example::Value("\"10s\"")),
    ("connector.username", Example::Value("\"bridge\"")),
    (
        "connector.password_file",
        Example::Value("\"secrets/bridge\""),
    ),
    ("connector.tls_ca", Example::Value("\"certs/ca.pem\"")),
];

pub(super) fn example(schema_path: &str) -> Option<Example> {
    let broker_key = schema_path
        .strip_prefix("broker.")
        .or_else(|| schema_path.strip_prefix("group.broker."));
    let (table, key) = match broker_key {
        Some(key) => (BROKER_EXAMPLES, key),
        None => (EXAMPLES, schema_path),
    };
    table.iter().find(|(k, _)| *k == key).map(|(_, e)| *e)
}

/// Every key path (without indices) that `example` knows, for the documentation test.
#[cfg(test)]
pub(super) fn documented_keys() -> Vec<String> {
    let mut keys: Vec<String> = EXAMPLES.iter().map(|(k, _)| k.to_string()).collect();
    for (k, _) in BROKER_EXAMPLES {
        keys.push(format!("broker.{k}"));
        keys.push(format!("group.broker.{k}"));
    }
    keys.sort();
    keys
}

#[cfg(test)]
#[path = "raw_tests.rs"]
mod tests;
