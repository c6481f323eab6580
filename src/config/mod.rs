//! The topology file: TOML text → a validated [`Topology`] that every process of the mesh
//! reads (a member finds itself in it by name; `meshmq check` prints its summary).
//!
//! It owns the file format: reading it through the `config` crate, the raw serde structs, the
//! meaning of every key and its default, every consistency rule, and the wording of every
//! error. It must not touch sockets, spawn tasks or hold broker state; the only I/O is reading
//! the one file in [`load`] (certificate and password files are only named, never opened).
//!
//! Invariants: a `Topology` exists only if the whole file passed, so nothing half-starts on a
//! bad file; all problems are reported together (a file with the wrong shape — an unknown key,
//! a wrong type, broken TOML — stops at that first one, since nothing after it can be read);
//! every error names the file, the key path and what to write instead; relative paths are
//! resolved against the file's directory, so every path in a `Topology` is absolute.

pub mod diff;
mod error;
mod names;
mod raw;
mod topology;
mod units;
mod unsupported;
mod validate;

use std::path::{Path, PathBuf};

pub use crate::transport::tls::TlsFiles;
pub use error::{ConfigError, TopologyError};
pub use names::{ConnectorName, GroupName, InvalidName, MemberName, MeshName, MAX_NAME_LEN};
pub use topology::{
    Acl, AdminOptions, BridgeAuth, BrokerPolicy, Connector, ConnectorTransport, DestinationLimits,
    DestinationPolicy, Election, Group, Listener, Member, MetricsOptions, OnFull, RebalanceOptions,
    Secret, Security, Source, StoreOptions, SyncMode, Topology, User, ZooKeeperOptions,
    MIN_MESH_SECRET,
};
pub use units::{ClientUrl, HostPort, ListenerUrl, Scheme};

/// Reads, parses and validates the topology file at `path`.
pub fn load(path: &Path) -> Result<Topology, TopologyError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let problem = match e.kind() {
            std::io::ErrorKind::NotFound => "does not exist".to_string(),
            std::io::ErrorKind::InvalidData => "is not UTF-8 text".to_string(),
            _ => format!("cannot be read ({e})"),
        };
        single(
            path,
            problem,
            "check the path given with --topology, e.g. topologies/reference.toml",
        )
    })?;
    parse_str(&text, path)
}

/// Parses and validates topology text; `file_label` names it in errors, and relative paths in
/// it resolve against `file_label`'s directory.
pub fn parse_str(text: &str, file_label: &Path) -> Result<Topology, TopologyError> {
    let dir = match file_label.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base_dir = std::path::absolute(&dir).map_err(|e| {
        single(
            file_label,
            format!("cannot resolve the file's directory ({e})"),
            "run from an existing directory, or give the topology file as an absolute path",
        )
    })?;
    let raw = raw::read(text, file_label).map_err(|e| TopologyError { errors: vec![e] })?;
    validate::validate(&raw, text, file_label, &base_dir).map_err(|errors| TopologyError { errors })
}

fn single(file: &Path, problem: String, fix: &str) -> TopologyError {
    TopologyError {
        errors: vec![ConfigError {
            file: file.to_path_buf(),
            key: String::new(),
            problem,
            fix: fix.to_string(),
        }],
    }
}
