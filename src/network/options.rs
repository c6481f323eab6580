//! What a member's connectors are, resolved from the topology before anything starts: whom each
//! dials (a failover list of the target group's members, as another machine reaches them), how
//! it proves itself, and what the bridge over it forwards.
//!
//! Owns: [`NetworkOptions`], [`ConnectorPlan`], [`DialPlan`] and [`NetworkError`]. Must not
//! touch: sockets or bridges (`mod.rs` runs them). Invariant: a bad topology, unreadable secret
//! or TLS file is an error here, before any bridge starts.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::client::{BrokerUrl, FailoverOptions, FailoverUrl};
use crate::config::{ConnectorTransport, Scheme, Topology};

use super::bridge::BridgeConfig;

/// A member's listener as another machine dials it, as one URI of a connector's failover
/// list: its address — unless it binds every address (0.0.0.0, ::), which names no machine:
/// then the address it advertises, or, with none, this machine's loopback (where
/// `meshmq certs` also vouches for it).
pub fn member_url(listener: &crate::config::Listener, scheme: Scheme) -> BrokerUrl {
    let addr = listener.url.addr;
    let (host, port) = if !addr.ip().is_unspecified() {
        (addr.ip().to_string(), addr.port())
    } else if let Some(adv) = &listener.advertise {
        (adv.target.host.clone(), adv.target.port)
    } else {
        let loopback = match addr.ip() {
            IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.to_string(),
            IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.to_string(),
        };
        (loopback, addr.port())
    };
    BrokerUrl {
        scheme: scheme.to_string(),
        host,
        port,
        connect_timeout: None,
        local_addr: None,
    }
}

/// How to reach the group a connector dials.
#[derive(Debug, Clone)]
pub struct DialPlan {
    /// The target group's members, or the connector's `uri`: failover over them, in order
    /// (shuffled per round with `randomize`), backing off by the URL's options.
    pub target: FailoverUrl,
    pub local: Option<IpAddr>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub handshake_timeout: Duration,
    /// `Some` for ssl and quic connectors: how to trust the target's certificates.
    pub tls: Option<(ConnectorTransport, Arc<rustls::ClientConfig>)>,
}

/// One connector as this member sees it.
#[derive(Debug, Clone)]
pub struct ConnectorPlan {
    pub bridge: BridgeConfig,
    pub duplex: bool,
    /// `Some` on the dialling side.
    pub dial: Option<DialPlan>,
    /// Accepting side: the user the dialling side must log in as (`None`: no login needed).
    pub username: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NetworkOptions {
    pub mesh: String,
    pub group: Arc<str>,
    pub member: String,
    pub connectors: Vec<ConnectorPlan>,
    /// The mesh secret every bridge must present (`[mesh]` `secret` or `secret_file`).
    pub secret: Option<crate::config::Secret>,
    /// Let in a bridge that proves nothing: no mesh secret is configured and its connector
    /// has no credentials (`[mesh] allow_anonymous_bridges = true`).
    pub allow_anonymous_bridges: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{file}: connector[{connector}].tls_ca: {source}")]
    Tls {
        file: String,
        connector: String,
        source: crate::transport::tls::TlsError,
    },
    #[error("{file}: mesh.secret_file {path}: {source}; make one with `meshmq secret {path}`")]
    SecretFile {
        file: String,
        path: String,
        source: std::io::Error,
    },
    #[error("{file}: mesh.secret_file {path} holds fewer than {min} characters; make a new one with `meshmq secret {path}`")]
    ShortSecret {
        file: String,
        path: String,
        min: usize,
    },
    #[error("{file}: connector[{connector}].password_file {path}: {source}")]
    PasswordFile {
        file: String,
        connector: String,
        path: String,
        source: std::io::Error,
    },
}

impl NetworkOptions {
    /// The connectors of `member`'s group in `topo`.
    pub fn from_topology(topo: &Topology, member: &str) -> Result<NetworkOptions, NetworkError> {
        let (group, m) = topo
            .member(member)
            .expect("the member was checked by the caller");
        let mut connectors = Vec::new();
        for c in &topo.connectors {
            let dialling = c.from == group.name;
            if !dialling && c.to != group.name {
                continue;
            }
            let peer = if dialling { &c.to } else { &c.from };
            let bridge = BridgeConfig {
                connector: c.name.to_string(),
                local: Arc::from(group.name.as_str()),
                peer: Arc::from(peer.as_str()),
                forward: dialling || c.duplex,
                export: !dialling || c.duplex,
                message_ttl: c.message_ttl,
                consumer_ttl: c.consumer_ttl,
                conduit: c.conduit_subscriptions,
                decrease_priority: c.decrease_network_consumer_priority,
                priority_base: c.consumer_priority_base,
                prefetch: c.prefetch,
                dynamically_included: c.dynamically_included.clone(),
                statically_included: c.statically_included.clone(),
                excluded: c.excluded.clone(),
                static_bridge: c.static_bridge,
                bridge_temp: c.bridge_temp_destinations,
                replay: c.replay_when_no_consumers.then_some(c.replay_delay),
                heartbeat: c.heartbeat,
                max_frame_size: group.broker.max_frame_size as usize,
                always_sync_send: c.always_sync_send,
                suppress_duplicate_queues: c.suppress_duplicate_queue_subscriptions,
            };
            let dial = if dialling {
                let scheme = match c.transport {
                    ConnectorTransport::Tcp => Scheme::Tcp,
                    ConnectorTransport::Ssl => Scheme::Ssl,
                    ConnectorTransport::Quic => Scheme::Quic,
                };
                let target = topo
                    .group(c.to.as_str())
                    .expect("validated connector target");
                let target = match &c.uri {
                    Some(uri) => uri.clone(),
                    None => FailoverUrl {
                        uris: target
                            .members
                            .iter()
                            .flat_map(|tm| tm.listeners.iter().filter(|l| l.url.scheme == scheme))
                            .map(|l| member_url(l, scheme))
                            .collect(),
                        options: FailoverOptions {
                            initial_reconnect_delay: c.reconnect_initial_delay,
                            max_reconnect_delay: c.reconnect_max_delay,
                            reconnect_delay_exponent: c.reconnect_multiplier,
                            randomize: false,
                            ..FailoverOptions::default()
                        },
                        nested: Vec::new(),
                    },
                };
                let password = match &c.password_file {
                    Some(path) => Some(
                        std::fs::read_to_string(path)
                            .map_err(|source| NetworkError::PasswordFile {
                                file: topo.file.display().to_string(),
                                connector: c.name.to_string(),
                                path: path.display().to_string(),
                                source,
                            })?
                            .trim_end()
                            .to_string(),
                    ),
                    None => None,
                };
                let tls = match (&c.transport, &c.tls_ca) {
                    (ConnectorTransport::Tcp, _) | (_, None) => None,
                    (t, Some(ca)) => Some((
                        *t,
                        Arc::new(crate::transport::tls::client_config(ca).map_err(|source| {
                            NetworkError::Tls {
                                file: topo.file.display().to_string(),
                                connector: c.name.to_string(),
                                source,
                            }
                        })?),
                    )),
                };
                Some(DialPlan {
                    tls,
                    target,
                    local: m.bind,
                    username: c.username.clone(),
                    password,
                    handshake_timeout: c.handshake_timeout,
                })
            } else {
                None
            };
            connectors.push(ConnectorPlan {
                bridge,
                duplex: c.duplex,
                dial,
                username: if dialling { None } else { c.username.clone() },
            });
        }
        Ok(NetworkOptions {
            mesh: topo.mesh.to_string(),
            group: Arc::from(group.name.as_str()),
            member: m.name.to_string(),
            connectors,
            secret: mesh_secret(topo)?,
            allow_anonymous_bridges: topo.bridges.allow_anonymous,
        })
    }
}

/// The mesh secret of `topo`, read from its `secret_file`.
fn mesh_secret(topo: &Topology) -> Result<Option<crate::config::Secret>, NetworkError> {
    let Some(path) = &topo.bridges.secret_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|source| NetworkError::SecretFile {
        file: topo.file.display().to_string(),
        path: path.display().to_string(),
        source,
    })?;
    let text = text.trim();
    if text.len() < crate::config::MIN_MESH_SECRET {
        return Err(NetworkError::ShortSecret {
            file: topo.file.display().to_string(),
            path: path.display().to_string(),
            min: crate::config::MIN_MESH_SECRET,
        });
    }
    Ok(Some(crate::config::Secret::new(text.to_string())))
}

/// Logs what a member's bridge settings leave open: anonymous bridges allowed, or connectors
/// whose bridges will be refused because neither side can prove anything.
pub(super) fn warn_unproven(opts: &NetworkOptions) {
    if opts.allow_anonymous_bridges {
        tracing::warn!(
            "allow_anonymous_bridges = true: anyone who reaches a client listener can open a bridge without the mesh secret"
        );
    } else if opts.secret.is_none() {
        for c in opts
            .connectors
            .iter()
            .filter(|c| c.dial.is_none() && c.username.is_none())
        {
            tracing::warn!(connector = %c.bridge.connector, "no [mesh] secret and no credentials for this connector: its bridges will be refused");
        }
    }
}

/// What a connector of a running member is, as `reconfigure` compares it: two plans with the
/// same fingerprint dial the same way and forward the same things.
pub(super) fn fingerprint(plan: &ConnectorPlan) -> String {
    let dial = plan.dial.as_ref().map(|d| {
        format!(
            "{:?} local={:?} user={:?} password={:08x} handshake={:?} tls={:?}",
            d.target,
            d.local,
            d.username,
            crc32c::crc32c(d.password.as_deref().unwrap_or("").as_bytes()),
            d.handshake_timeout,
            d.tls.as_ref().map(|(t, _)| *t),
        )
    });
    format!(
        "{:?} duplex={} dial={dial:?} user={:?}",
        plan.bridge, plan.duplex, plan.username
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPOLOGY: &str = r#"
[mesh]
name = "t"

[[group]]
name = "hub"
[[group.member]]
name = "hub-1"
admin = "127.0.0.1:9001"
[[group.member.listener]]
url = "tcp://127.0.0.1:9101"

[[group]]
name = "edge"
election = "file-lock"
shared_dir = "edge"
[[group.member]]
name = "edge-1"
admin = "127.0.0.1:9002"
[[group.member.listener]]
url = "tcp://127.0.0.2:9102"
[[group.member]]
name = "edge-2"
admin = "127.0.0.1:9003"
[[group.member.listener]]
url = "tcp://0.0.0.0:9103"
advertise = "tcp://edge-2.example.com:9203"
[[group.member]]
name = "edge-3"
admin = "127.0.0.1:9004"
[[group.member.listener]]
url = "tcp://0.0.0.0:9104"

[[connector]]
from = "hub"
to = "edge"
"#;

    #[test]
    fn a_connector_dials_each_member_where_another_machine_reaches_it() {
        let topo = crate::config::parse_str(TOPOLOGY, std::path::Path::new("t.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let opts = NetworkOptions::from_topology(&topo, "hub-1").expect("options");
        let dial = opts.connectors[0].dial.as_ref().expect("the hub dials");
        let shown: Vec<String> = dial.target.uris.iter().map(|t| t.to_string()).collect();
        assert_eq!(
            shown,
            [
                "tcp://127.0.0.2:9102",          // a specific address: as it is
                "tcp://edge-2.example.com:9203", // every address: what it advertises
                "tcp://127.0.0.1:9104",          // every address, nothing advertised: loopback
            ]
        );
    }
}
