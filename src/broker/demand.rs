//! Demand: which consumers, local or standing for remote ones, consume what — the broker's
//! record the network layer reads to know what to forward where.
//!
//! Owns: [`Demand`] entries and the stream of [`DemandEvent`]s, [`NetworkSpec`], and the demand
//! each subscription registered. Must not touch: bridges or links (the network layer watches
//! the stream). Invariant: every change to the demand map is sent as an event after it is made,
//! so a watcher that subscribes before reading the snapshot misses nothing.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Broker, NetworkFilter};

/// Demand changes buffered for a slow watcher before it must resynchronise.
pub(super) const DEMAND_EVENTS: usize = 8192;

/// "Someone here consumes this": a consumer, local or standing for a remote one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    pub id: u64,
    /// The destination or pattern consumed.
    pub destination: String,
    /// Groups the demand came through, nearest first... empty for a local consumer.
    pub path: Vec<Arc<str>>,
    pub priority: i32,
    /// The real consumer a network consumer's demand stands for, as its bridge learnt it
    /// (`"<group>/<id there>"`, the same over every route); `None` for a local consumer.
    pub origin: Option<Arc<str>>,
    /// The consumer's selector (as written), `None` when it takes every message: a network
    /// consumer standing for it forwards only what it (or another of its consumers) matches.
    pub selector: Option<Arc<str>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DemandEvent {
    Added(Demand),
    Removed(u64),
}

/// A network consumer's settings: what it may take. The remote demand it stands for is
/// registered apart, one [`Session::add_network_demand`](super::Session::add_network_demand)
/// per remote consumer, so a conduit that folds consumers reached by different paths still
/// advertises each by its own path.
#[derive(Debug, Clone)]
pub struct NetworkSpec {
    pub filter: NetworkFilter,
}

/// The demand one subscription registered: a local consumer's one, or the remote consumers a
/// network consumer stands for.
#[derive(Debug)]
pub(super) struct SubDemand {
    pub(super) destination: String,
    pub(super) priority: i32,
    pub(super) ids: Vec<u64>,
}

impl Broker {
    /// Current demand (every consumer), and a stream of later changes. Subscribe before
    /// reading the snapshot; an event may then repeat what the snapshot shows.
    pub fn demand(&self) -> (tokio::sync::broadcast::Receiver<DemandEvent>, Vec<Demand>) {
        let rx = self.inner.demand_events.subscribe();
        let snapshot = self
            .inner
            .demand
            .iter()
            .map(|d| d.value().clone())
            .collect();
        (rx, snapshot)
    }

    pub(super) fn add_demand(
        &self,
        destination: String,
        path: Vec<Arc<str>>,
        priority: i32,
        origin: Option<Arc<str>>,
        selector: Option<Arc<str>>,
    ) -> u64 {
        let id = self.inner.next_demand.fetch_add(1, Ordering::Relaxed);
        let d = Demand {
            id,
            destination,
            path,
            priority,
            origin,
            selector,
        };
        self.inner.demand.insert(id, d.clone());
        let _ = self.inner.demand_events.send(DemandEvent::Added(d));
        id
    }

    pub(super) fn remove_demand(&self, id: u64) {
        if self.inner.demand.remove(&id).is_some() {
            let _ = self.inner.demand_events.send(DemandEvent::Removed(id));
        }
    }
}
