//! A serving master term as the rest of the member sees it: its broker, its bound listeners
//! with their connection counts, its connectors, its cluster registry, and the switch that
//! stops it taking connections. The term (`term.rs`) publishes one in the member's state while
//! it serves; the admin endpoints, the drain and an apply read it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::cluster::Cluster;
use crate::server::options::ListenerSpec;
use crate::transport::ConnectionCount;

/// What the admin endpoints see of the running term.
#[derive(Clone)]
pub(crate) struct TermView {
    pub broker: Broker,
    pub listeners: Vec<(ListenerSpec, SocketAddr, Arc<ConnectionCount>)>,
    pub network: Option<Arc<crate::network::Network>>,
    pub cluster: Arc<Cluster>,
    /// Cancel to stop taking new connections (see `ConnCtx::accepting`).
    pub accepting: CancellationToken,
}
