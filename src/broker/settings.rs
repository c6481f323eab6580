//! A broker's settings: the broker-wide memory limit, the destination limits and the
//! per-destination policies that override them, and how they are replaced while the broker
//! runs (`meshmq apply`).
//!
//! Owns: [`BrokerSettings`] and the resolution of a destination's (or a topic subscription's)
//! limits from them. Must not touch: configuration files (the server builds the settings from
//! the topology). Invariant: a destination's limits are those of the first policy whose pattern
//! matches it, else the defaults, both when it is created and after every update.

use super::{Broker, Destination, DestinationLimits, DestinationPattern, TopicSub};
use std::sync::Arc;

/// How a broker is configured (built by the server from the topology).
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Broker-wide cap on message memory, in bytes.
    pub memory_limit: u64,
    pub defaults: DestinationLimits,
    /// Per-destination limits; the first matching pattern wins.
    pub policies: Vec<(DestinationPattern, DestinationLimits)>,
    pub max_subscriptions_per_connection: usize,
    /// The group this broker serves: messages that arrived over bridges are known again at
    /// start-up by how often they had left it.
    pub group: String,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            memory_limit: 1 << 30,
            defaults: DestinationLimits::default(),
            policies: Vec::new(),
            max_subscriptions_per_connection: 10_000,
            group: String::new(),
        }
    }
}

impl BrokerSettings {
    pub fn limits_for(&self, dest: &Destination) -> DestinationLimits {
        self.policies
            .iter()
            .find(|(p, _)| p.matches(dest))
            .map(|(_, l)| *l)
            .unwrap_or(self.defaults)
    }
}

impl Broker {
    pub fn settings(&self) -> BrokerSettings {
        self.inner.settings.read().clone()
    }

    /// The limits of `dest` now (the first matching policy, else the defaults).
    pub(super) fn limits_for(&self, dest: &Destination) -> DestinationLimits {
        self.inner.settings.read().limits_for(dest)
    }

    /// The limits a topic subscription on `pattern` takes: its topic's when it names one, the
    /// defaults for a wildcard.
    pub(super) fn limits_for_pattern(&self, pattern: &DestinationPattern) -> DestinationLimits {
        match pattern.as_destination() {
            Some(d) => self.limits_for(&d),
            None => self.inner.settings.read().defaults,
        }
    }

    /// Takes new settings while running (`meshmq apply`): the broker-wide memory limit, and
    /// each existing destination's and topic subscription's policy, re-resolved the way they
    /// were at creation (the first matching entry wins); destinations created from now on use
    /// the new ones. Producers waiting for room check again at once. The group name is kept:
    /// a broker never changes group.
    pub fn update_settings(&self, mut settings: BrokerSettings) {
        settings.group = self.inner.settings.read().group.clone();
        let memory_limit = settings.memory_limit;
        *self.inner.settings.write() = settings;
        // Queues are created under their map shard's lock after reading the settings, and
        // topics re-read them once published: either sees the new settings or is seen here.
        for q in self.inner.queues.iter() {
            q.set_limits(self.limits_for(&q.dest));
        }
        let mut subs: Vec<Arc<TopicSub>> = self.inner.wildcard_subs.read().clone();
        for t in self.inner.topics.iter() {
            t.set_limits(self.limits_for(&t.dest));
            subs.extend(t.subscriptions());
        }
        subs.extend(self.inner.durables.iter().map(|d| d.value().clone()));
        for sub in subs {
            sub.set_limits(&self.limits_for_pattern(&sub.pattern));
        }
        self.inner.memory.set_limit(memory_limit);
    }
}
