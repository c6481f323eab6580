//! The exporting role of a bridge: advertising this broker's demand — its consumers, and the
//! remote consumers it relays within `consumer_ttl` — to the peer, and withdrawing it.
//!
//! Owns: which demand was advertised (the bridge's `exported` set). Must not touch: network
//! consumers or forwards (`forward.rs`). Invariant: demand is advertised only when the
//! connector's rules allow it (permitted destination, path without the peer, within the TTL).

use crate::broker::{Demand, DestinationPattern};
use crate::wire::{proto, Body};

use super::Bridge;

impl Bridge {
    /// Advertises a local consumer (or relayed demand) to the peer when the rules allow.
    pub(super) fn export_added(&mut self, d: &Demand) {
        if self.draining.is_some()
            || self.exported.contains_key(&d.id)
            || d.path.contains(&self.cfg.peer)
        {
            return;
        }
        let mut path: Vec<String> = d.path.iter().map(|g| g.to_string()).collect();
        path.push(self.cfg.local.to_string());
        if path.len() > self.cfg.consumer_ttl as usize {
            return;
        }
        let Ok(pattern) = DestinationPattern::parse(&d.destination) else {
            return;
        };
        if !self.cfg.permits(&pattern) {
            return;
        }
        let consumer_id = d.id.to_string();
        let origin = match &d.origin {
            Some(o) => o.to_string(),
            None => format!("{}/{}", self.cfg.local, d.id),
        };
        self.exported.insert(d.id, consumer_id.clone());
        self.send_frame(Body::DemandAdd(proto::DemandAdd {
            destination: d.destination.clone(),
            broker_path: path,
            consumer_id,
            priority: d.priority,
            origin,
            selector: d.selector.as_deref().unwrap_or("").to_string(),
        }));
    }

    pub(super) fn export_removed(&mut self, id: u64) {
        if let Some(consumer_id) = self.exported.remove(&id) {
            self.send_frame(Body::DemandRemove(proto::DemandRemove {
                destination: String::new(),
                consumer_id,
            }));
        }
    }

    /// Demand events were lost (too many too fast): compare with the current demand.
    pub(super) fn resync_exports(&mut self) {
        let (_, snapshot) = self.session.broker().demand();
        let live: std::collections::HashSet<u64> = snapshot.iter().map(|d| d.id).collect();
        let gone: Vec<u64> = self
            .exported
            .keys()
            .filter(|id| !live.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.export_removed(id);
        }
        for d in &snapshot {
            self.export_added(d);
        }
    }
}
