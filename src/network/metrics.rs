//! Metric handles of one connector, created once and shared by its successive bridges.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use metrics::{counter, gauge, Counter, Gauge};
use serde::{Deserialize, Serialize};

use crate::metrics as m;

pub struct BridgeMetrics {
    pub connector: String,
    pub peer: String,
    up_flag: AtomicBool,
    up: Gauge,
    reconnects: Counter,
    forwarded: Counter,
    acked: Counter,
    replayed: Counter,
    duplicates: Counter,
    full: Counter,
    inflight: Gauge,
    remote_demand: Gauge,
    counts: [AtomicU64; 6],
}

/// One connector in `/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnectorStatus {
    pub name: String,
    pub peer: String,
    pub up: bool,
    pub forwarded: u64,
    pub acked: u64,
    pub replayed: u64,
    pub reconnects: u64,
    pub inflight: u64,
    pub remote_demand: u64,
}

impl BridgeMetrics {
    pub fn new(connector: &str, peer: &str) -> BridgeMetrics {
        let c = connector.to_string();
        let p = peer.to_string();
        let l = |name: &'static str| counter!(name, "connector" => c.clone(), "peer" => p.clone());
        let g = |name: &'static str| gauge!(name, "connector" => c.clone(), "peer" => p.clone());
        let metrics = BridgeMetrics {
            connector: c.clone(),
            peer: p.clone(),
            up_flag: AtomicBool::new(false),
            up: g(m::CONNECTOR_UP),
            reconnects: l(m::CONNECTOR_RECONNECTS),
            forwarded: l(m::CONNECTOR_FORWARDED),
            acked: l(m::CONNECTOR_ACKED),
            replayed: l(m::CONNECTOR_REPLAYED),
            duplicates: l(m::CONNECTOR_DUPLICATES),
            full: l(m::CONNECTOR_FULL),
            inflight: g(m::CONNECTOR_INFLIGHT),
            remote_demand: g(m::CONNECTOR_REMOTE_DEMAND),
            counts: Default::default(),
        };
        metrics.up.set(0.0);
        metrics
    }

    fn count(&self, i: usize, c: &Counter, n: u64) {
        if n > 0 {
            self.counts[i].fetch_add(n, Ordering::Relaxed);
            c.increment(n);
        }
    }

    pub fn up(&self, up: bool) {
        self.up_flag.store(up, Ordering::Relaxed);
        self.up.set(if up { 1.0 } else { 0.0 });
    }

    pub fn is_up(&self) -> bool {
        self.up_flag.load(Ordering::Relaxed)
    }

    pub fn reconnect(&self) {
        self.count(0, &self.reconnects, 1);
    }

    /// Counted per batch: these run for every forwarded message.
    pub fn forwarded(&self, n: u64) {
        self.count(1, &self.forwarded, n);
    }

    pub fn acked(&self, n: u64) {
        self.count(2, &self.acked, n);
    }

    pub fn replayed(&self) {
        self.count(3, &self.replayed, 1);
    }

    pub fn duplicate(&self) {
        self.duplicates.increment(1);
    }

    pub fn refused_full(&self) {
        self.full.increment(1);
    }

    pub fn inflight(&self, n: usize) {
        self.counts[4].store(n as u64, Ordering::Relaxed);
        self.inflight.set(n as f64);
    }

    pub fn remote_demand(&self, n: usize) {
        self.counts[5].store(n as u64, Ordering::Relaxed);
        self.remote_demand.set(n as f64);
    }

    pub fn status(&self) -> ConnectorStatus {
        let get = |i: usize| self.counts[i].load(Ordering::Relaxed);
        ConnectorStatus {
            name: self.connector.clone(),
            peer: self.peer.clone(),
            up: self.is_up(),
            reconnects: get(0),
            forwarded: get(1),
            acked: get(2),
            replayed: get(3),
            inflight: get(4),
            remote_demand: get(5),
        }
    }
}
