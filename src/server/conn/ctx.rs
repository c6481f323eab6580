//! What every connection of a listener shares ([`ConnCtx`]): the broker, the connection
//! settings, the member's live security rules, the mesh view, and the listener's metric
//! handles ([`ListenerMetrics`]); and the login every protocol's handshake goes through.

use std::net::SocketAddr;
use std::sync::Arc;

use metrics::{counter, gauge, Counter, Gauge};
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, BrokerError};
use crate::cluster::{Cluster, ClusterPolicy};
use crate::metrics as m;
use crate::security::{LiveSecurity, LoginError, Principal};
use crate::server::mqtt_session::MqttSessions;
use crate::server::options::{ConnSettings, Identity, Protocol, StompLimits};

/// What every connection of a listener shares.
pub(crate) struct ConnCtx {
    pub broker: Broker,
    pub settings: ConnSettings,
    pub identity: Arc<Identity>,
    pub metrics: ListenerMetrics,
    /// The member's current login and ACL rules (replaced in place by `meshmq apply`).
    pub security: Arc<LiveSecurity>,
    pub stomp: StompLimits,
    /// Bridges from other groups arrive on client listeners.
    pub network: Option<Arc<crate::network::Network>>,
    /// The mesh view and client registry of this term.
    pub cluster: Arc<Cluster>,
    /// This listener's cluster options.
    pub cluster_policy: Arc<ClusterPolicy>,
    /// Cancelled when the member stops taking new connections (a drain): the accept loop
    /// ends and its socket closes, while the connections it admitted go on.
    pub accepting: CancellationToken,
    /// What MQTT persistent sessions keep in flight between connections (one per term,
    /// shared by the term's listeners).
    pub mqtt_sessions: Arc<MqttSessions>,
}

impl ConnCtx {
    /// Logs a client from `peer` in. Password verification is slow and memory-hungry by
    /// design, so it runs on the authenticator's bounded slots, off the async threads; a
    /// refusal is counted (a failed login as an auth failure, a login turned away unverified
    /// as a refused connection) and takes as long whether or not the user exists.
    pub(crate) async fn login(
        &self,
        peer: SocketAddr,
        user: Option<String>,
        password: Option<String>,
    ) -> Result<Principal, String> {
        let authn = self.security.current().authenticator.clone();
        authn.login(peer.ip(), user, password).await.map_err(|e| {
            match &e {
                LoginError::Refused(_) => self.metrics.auth_failed(),
                LoginError::Gate(g) => {
                    self.metrics.refused(g.reason());
                    tracing::debug!(%peer, error = %g, "login turned away");
                }
            }
            e.to_string()
        })
    }
}

/// The largest frame a connection may send before it has logged in (a `Connect`, a STOMP
/// `CONNECT` or a bridge's `BrokerInfo`): a stranger who never logs in holds no more.
pub(crate) const HANDSHAKE_MAX_FRAME: usize = 64 * 1024;

pub(crate) fn handshake_frame_limit(ctx: &ConnCtx) -> usize {
    HANDSHAKE_MAX_FRAME.min(ctx.settings.max_frame_size)
}

/// Metric handles of one listener, created once and shared by its connections.
pub(crate) struct ListenerMetrics {
    listener: String,
    protocol: &'static str,
    /// Count each message (see `metrics::message_metrics_enabled`).
    pub(crate) per_message: bool,
    open: Gauge,
    producers: Gauge,
    consumers: Gauge,
    accepted: Counter,
    bad_frames: Counter,
    received: Counter,
    delivered: Counter,
    blocked: Counter,
    write_batch: metrics::Histogram,
}

impl ListenerMetrics {
    pub(crate) fn new(listener: &str, protocol: Protocol) -> ListenerMetrics {
        let l = listener.to_string();
        let p = protocol.as_str();
        ListenerMetrics {
            listener: l.clone(),
            protocol: p,
            per_message: m::message_metrics_enabled(),
            open: gauge!(m::CONNECTIONS, "listener" => l.clone(), "protocol" => p),
            producers: gauge!(m::PRODUCERS, "listener" => l.clone(), "protocol" => p),
            consumers: gauge!(m::CONSUMERS, "listener" => l.clone(), "protocol" => p),
            accepted: counter!(m::CONNECTIONS_ACCEPTED, "listener" => l.clone(), "protocol" => p),
            bad_frames: counter!(m::BAD_FRAMES, "listener" => l.clone(), "protocol" => p),
            received: counter!(m::MESSAGES_RECEIVED, "listener" => l.clone(), "protocol" => p),
            delivered: counter!(m::MESSAGES_DELIVERED, "listener" => l.clone(), "protocol" => p),
            blocked: counter!(m::PRODUCER_BLOCKS, "listener" => l.clone(), "protocol" => p),
            write_batch: metrics::histogram!(m::DISPATCH_BATCH, "listener" => l, "protocol" => p),
        }
    }

    pub(crate) fn connection_opened(&self) {
        self.open.increment(1.0);
        self.accepted.increment(1);
    }

    pub(crate) fn connection_closed(&self) {
        self.open.decrement(1.0);
    }

    pub(crate) fn producer_started(&self) {
        self.producers.increment(1.0);
    }

    pub(crate) fn producer_gone(&self) {
        self.producers.decrement(1.0);
    }

    /// Subscriptions opened (positive) or closed (negative) on one connection.
    pub(crate) fn consumers(&self, change: f64) {
        self.consumers.increment(change);
    }

    pub(crate) fn bad_frame(&self) {
        self.bad_frames.increment(1);
    }

    pub(crate) fn received(&self, n: u64) {
        if self.per_message && n > 0 {
            self.received.increment(n);
        }
    }

    pub(crate) fn delivered(&self, n: u64) {
        if self.per_message {
            self.delivered.increment(n);
        }
    }

    pub(crate) fn write_batch(&self, n: u64) {
        if self.per_message {
            self.write_batch.record(n as f64);
        }
    }

    pub(crate) fn producer_blocked(&self) {
        self.blocked.increment(1);
    }

    pub(crate) fn bad_selector(&self) {
        counter!(m::BAD_SELECTORS, "listener" => self.listener.clone(), "protocol" => self.protocol)
            .increment(1);
    }

    pub(crate) fn creation_refused(&self) {
        counter!(m::CREATIONS_REFUSED, "listener" => self.listener.clone(), "protocol" => self.protocol)
            .increment(1);
    }

    pub(crate) fn denied(&self) {
        counter!(m::ACCESS_DENIED, "listener" => self.listener.clone(), "protocol" => self.protocol)
            .increment(1);
    }

    pub(crate) fn auth_failed(&self) {
        counter!(m::AUTH_FAILURES, "listener" => self.listener.clone(), "protocol" => self.protocol)
            .increment(1);
    }

    pub(crate) fn refused(&self, reason: &'static str) {
        counter!(m::CONNECTIONS_REFUSED, "listener" => self.listener.clone(), "reason" => reason)
            .increment(1);
    }

    pub(crate) fn send_refused(&self, e: &BrokerError) {
        let reason = match e {
            BrokerError::Full { .. } | BrokerError::JournalFull { .. } => "full",
            BrokerError::NotFound(_) => "not_found",
            BrokerError::NotOwner(_) => "forbidden",
            _ => "invalid",
        };
        counter!(m::SENDS_REFUSED, "protocol" => self.protocol, "reason" => reason).increment(1);
    }
}
