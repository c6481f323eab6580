//! The snapshot row of one destination's counters that the broker fills and the admin endpoints
//! and the `/metrics` renderer read. It lives here, not in the broker, so that metrics depends on
//! nothing else of meshmq.

use serde::Serialize;

/// A point-in-time copy of a destination's counters.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct DestinationStats {
    pub destination: String,
    /// Messages held: pending + in flight (delivered, not yet acknowledged).
    pub depth: u64,
    pub pending: u64,
    pub inflight: u64,
    pub consumers: u64,
    /// Messages accepted onto the destination.
    pub enqueued: u64,
    /// Messages acknowledged by consumers (queues) or delivered and acknowledged (topics).
    pub dequeued: u64,
    pub expired: u64,
    pub dead_lettered: u64,
    /// Topic messages discarded for slow subscribers (`topic_pending_limit`).
    pub dropped: u64,
    pub redelivered: u64,
    pub memory_bytes: u64,
}
