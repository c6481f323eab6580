//! Every Prometheus metric meshmq exports: names, help texts, the exporter, and the
//! scrape-time collectors.
//!
//! Owns: metric names (all `meshmq_*`, only here), their descriptions, the recorder install and
//! `/metrics` rendering. Must not touch: broker internals beyond the read-only stats they
//! publish. Invariants: every metric is described before use (so `promtool check metrics` finds
//! HELP for each); histograms have explicit buckets (so they render as histograms); per-
//! destination series are collected at scrape time from the broker's counters — the message
//! path never touches a labelled metric — and at most `max_destinations` destinations get their
//! own label, the rest being summed under `destination="_other"`. Per-destination families and
//! the per-message latency histograms are rendered by this module at scrape time, beside the
//! recorder's output, so a destination that drops out of the top `max_destinations` loses its
//! own series at once instead of being counted twice (in its stale series and in `_other`).
//! The message path records latencies into a local `LatencyBatch` and adds it to the shared
//! atomic buckets once per write batch; it never allocates for a metric.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics::{describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub mod commit_profile;
mod destination_stats;

pub use destination_stats::DestinationStats;

pub const CONNECTIONS: &str = "meshmq_connections";
pub const PRODUCERS: &str = "meshmq_producers";
pub const CONSUMERS: &str = "meshmq_consumers";
pub const SLOW_CONSUMERS: &str = "meshmq_slow_consumers";
pub const DISPATCH_LATENCY: &str = "meshmq_dispatch_latency_seconds";
pub const END_TO_END_LATENCY: &str = "meshmq_end_to_end_latency_seconds";
pub const JOURNAL_FSYNC_SECONDS: &str = "meshmq_journal_fsync_seconds";
pub const CONNECTIONS_ACCEPTED: &str = "meshmq_connections_accepted_total";
pub const CONNECTIONS_REFUSED: &str = "meshmq_connections_refused_total";
pub const BAD_FRAMES: &str = "meshmq_bad_frames_total";
pub const AUTH_FAILURES: &str = "meshmq_auth_failures_total";
pub const BRIDGES_REFUSED: &str = "meshmq_bridges_refused_total";
pub const CREATIONS_REFUSED: &str = "meshmq_creations_refused_total";
pub const ACCESS_DENIED: &str = "meshmq_access_denied_total";
pub const BAD_SELECTORS: &str = "meshmq_bad_selectors_total";
pub const MESSAGES_RECEIVED: &str = "meshmq_messages_received_total";
pub const MESSAGES_DELIVERED: &str = "meshmq_messages_delivered_total";
pub const SENDS_REFUSED: &str = "meshmq_sends_refused_total";
pub const PRODUCER_BLOCKS: &str = "meshmq_producer_flow_control_waits_total";
pub const MEMORY_USED: &str = "meshmq_memory_used_bytes";
pub const MEMORY_LIMIT: &str = "meshmq_memory_limit_bytes";
pub const DEST_DEPTH: &str = "meshmq_destination_depth";
pub const DEST_INFLIGHT: &str = "meshmq_destination_inflight";
pub const DEST_CONSUMERS: &str = "meshmq_destination_consumers";
pub const DEST_MEMORY: &str = "meshmq_destination_memory_bytes";
pub const DEST_ENQUEUED: &str = "meshmq_destination_enqueued_total";
pub const DEST_DEQUEUED: &str = "meshmq_destination_dequeued_total";
pub const DEST_EXPIRED: &str = "meshmq_destination_expired_total";
pub const DEST_DEAD_LETTERED: &str = "meshmq_destination_dead_lettered_total";
pub const DEST_DROPPED: &str = "meshmq_destination_dropped_total";
pub const DEST_REDELIVERED: &str = "meshmq_destination_redelivered_total";
pub const DESTINATIONS: &str = "meshmq_destinations";
pub const DISPATCH_BATCH: &str = "meshmq_connection_write_batch_messages";
pub const JOURNAL_WRITE_SECONDS: &str = "meshmq_journal_write_seconds";
pub const JOURNAL_BATCH_RECORDS: &str = "meshmq_journal_batch_records";
pub const JOURNAL_COMMIT_WAIT_SECONDS: &str = "meshmq_journal_commit_wait_seconds";
pub const JOURNAL_SYNCS: &str = "meshmq_journal_syncs_total";
pub const JOURNAL_BYTES: &str = "meshmq_journal_bytes_total";
pub const JOURNAL_SEGMENTS: &str = "meshmq_journal_segments";
pub const JOURNAL_DISK_BYTES: &str = "meshmq_journal_disk_bytes";
pub const JOURNAL_FULL: &str = "meshmq_journal_full";
pub const JOURNAL_FAILURES: &str = "meshmq_journal_failures_total";
pub const CONNECTOR_UP: &str = "meshmq_connector_up";
pub const CONNECTOR_RECONNECTS: &str = "meshmq_connector_reconnects_total";
pub const CONNECTOR_FORWARDED: &str = "meshmq_connector_forwarded_total";
pub const CONNECTOR_ACKED: &str = "meshmq_connector_acked_total";
pub const CONNECTOR_REPLAYED: &str = "meshmq_connector_replayed_total";
pub const CONNECTOR_DUPLICATES: &str = "meshmq_connector_duplicates_dropped_total";
pub const CONNECTOR_FULL: &str = "meshmq_connector_refused_full_total";
pub const CONNECTOR_INFLIGHT: &str = "meshmq_connector_inflight";
pub const CONNECTOR_REMOTE_DEMAND: &str = "meshmq_connector_remote_demand";
pub const REMOTE_DEMAND: &str = "meshmq_remote_demand";
pub const CLUSTER_GROUPS: &str = "meshmq_cluster_groups";
pub const CLUSTER_CLIENTS: &str = "meshmq_cluster_clients";
pub const CLUSTER_PUSHES: &str = "meshmq_cluster_pushes_total";
pub const FAILOVER_RECONNECTS: &str = "meshmq_failover_reconnects_total";
pub const REBALANCE_ROUNDS: &str = "meshmq_rebalance_rounds_total";
pub const REBALANCE_MOVES: &str = "meshmq_rebalance_moves_total";
pub const TERMS: &str = "meshmq_master_terms_total";
pub const HA_ROLE: &str = "meshmq_ha_role";
pub const HA_EPOCH: &str = "meshmq_ha_epoch";
pub const HA_ELECTIONS: &str = "meshmq_ha_elections_total";
pub const ZOOKEEPER_SESSION: &str = "meshmq_zookeeper_session_connected";
pub const REPLICATION_LAG: &str = "meshmq_replication_lag_records";
pub const REPLICATION_ACKS: &str = "meshmq_replication_acks_total";
pub const REPLICATION_REFUSED: &str = "meshmq_replication_refused_total";
pub const UPTIME: &str = "meshmq_uptime_seconds";
pub const ADMIN_WRITES_REFUSED: &str = "meshmq_admin_writes_refused_total";
pub const TOPOLOGY_APPLIES: &str = "meshmq_topology_applies_total";
pub const UP: &str = "meshmq_up";
pub const PROCESS_RSS: &str = "meshmq_process_resident_memory_bytes";
pub const PROCESS_OPEN_FDS: &str = "meshmq_process_open_fds";
pub const PROCESS_CPU: &str = "meshmq_process_cpu_seconds_total";

/// The label under which destinations beyond `max_destinations` are summed.
pub const OTHER_DESTINATIONS: &str = "_other";

fn describe_all() {
    describe_counter!(
        ADMIN_WRITES_REFUSED,
        "Writes to the admin port refused, by reason (no_admin_token, unauthenticated, wrong_token)."
    );
    describe_counter!(
        TOPOLOGY_APPLIES,
        "New topologies this member took while running (meshmq apply), each once authenticated and valid."
    );
    describe_gauge!(
        CONNECTIONS,
        "Open client connections, by listener and protocol."
    );
    describe_gauge!(
        PRODUCERS,
        "Client connections that have sent at least one message, by listener and protocol."
    );
    describe_gauge!(
        CONSUMERS,
        "Client subscriptions (consumers) open on this member, by listener and protocol."
    );
    describe_gauge!(
        SLOW_CONSUMERS,
        "Non-durable topic subscribers holding topic_pending_limit messages (they lose their oldest)."
    );
    describe_histogram!(
        JOURNAL_FSYNC_SECONDS,
        Unit::Seconds,
        "Time of one journal fdatasync (local_disk and stronger sync modes)."
    );
    describe_counter!(
        CONNECTIONS_ACCEPTED,
        "Connections accepted, by listener and protocol."
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections refused, by listener and reason (max_connections, shutting_down, ...)."
    );
    describe_counter!(
        BAD_FRAMES,
        "Malformed or oversized frames; each closed its connection."
    );
    describe_counter!(
        AUTH_FAILURES,
        "Failed logins (wrong user or password, anonymous refused)."
    );
    describe_counter!(
        BRIDGES_REFUSED,
        "Bridge handshakes refused, by reason (bad_secret, anonymous, bad_credentials, unknown_connector, other_mesh, own_group)."
    );
    describe_counter!(
        CREATIONS_REFUSED,
        "Subscriptions and new destinations refused for coming faster than a connection's creation rate."
    );
    describe_counter!(ACCESS_DENIED, "Sends and subscriptions refused by an ACL.");
    describe_counter!(
        BAD_SELECTORS,
        "Subscriptions refused because their selector does not parse."
    );
    describe_counter!(MESSAGES_RECEIVED, "Messages accepted from producers.");
    describe_counter!(
        MESSAGES_DELIVERED,
        "Deliveries written to consumer connections."
    );
    describe_counter!(
        SENDS_REFUSED,
        "Sends refused, by reason (full, invalid, not_found, ...)."
    );
    describe_counter!(
        PRODUCER_BLOCKS,
        "Sends that waited for memory room (producer flow control, on_full = block)."
    );
    describe_gauge!(
        MEMORY_USED,
        Unit::Bytes,
        "Message memory in use, broker-wide."
    );
    describe_gauge!(
        MEMORY_LIMIT,
        Unit::Bytes,
        "The broker-wide message memory limit."
    );
    describe_gauge!(DESTINATIONS, "Destinations on this broker.");
    describe_histogram!(
        DISPATCH_BATCH,
        "Messages written to a connection per socket write (dispatch batching)."
    );
    describe_histogram!(
        JOURNAL_WRITE_SECONDS,
        Unit::Seconds,
        "Time to write (and sync, with local_disk) one group-commit batch of journal records."
    );
    describe_histogram!(
        JOURNAL_BATCH_RECORDS,
        "Records in one group-commit batch (written and synced together)."
    );
    describe_histogram!(
        JOURNAL_COMMIT_WAIT_SECONDS,
        Unit::Seconds,
        "Time the oldest record of a group-commit batch waited before the batch's write began."
    );
    describe_counter!(
        JOURNAL_SYNCS,
        "Journal fdatasync calls (one per group-commit batch)."
    );
    describe_counter!(JOURNAL_BYTES, Unit::Bytes, "Bytes appended to the journal.");
    describe_gauge!(JOURNAL_SEGMENTS, "Journal segment files on disk.");
    describe_gauge!(
        JOURNAL_DISK_BYTES,
        Unit::Bytes,
        "Disk space held by journal segments."
    );
    describe_gauge!(
        JOURNAL_FULL,
        "1 while the journal is at store_limit or the disk is full (persistent sends wait or fail)."
    );
    describe_counter!(
        JOURNAL_FAILURES,
        "Journal write or sync failures (EIO): each ended the master term, and nothing it covered was receipted."
    );
    describe_gauge!(
        CLUSTER_GROUPS,
        "Groups in the mesh view pushed to failover clients (this group and those with a live bridge)."
    );
    describe_gauge!(
        CLUSTER_CLIENTS,
        "Client connections on this member, as shared with other groups for rebalancing."
    );
    describe_counter!(
        CLUSTER_PUSHES,
        "Cluster views sent to failover clients (on connect and on every change)."
    );
    describe_counter!(
        FAILOVER_RECONNECTS,
        "Client connections that replaced one a failover client lost or left."
    );
    describe_counter!(
        REBALANCE_ROUNDS,
        "Times the rebalancer compared the groups' loads."
    );
    describe_counter!(
        REBALANCE_MOVES,
        "Clients asked to reconnect to a less-loaded group."
    );
    describe_gauge!(CONNECTOR_UP, "1 while the connector's bridge is up.");
    describe_counter!(
        CONNECTOR_RECONNECTS,
        "Bridge connections lost or failed and dialled again."
    );
    describe_counter!(
        CONNECTOR_FORWARDED,
        "Messages sent to the peer over the connector."
    );
    describe_counter!(
        CONNECTOR_ACKED,
        "Forwarded messages the peer accepted (and stored)."
    );
    describe_counter!(
        CONNECTOR_REPLAYED,
        "Queue messages sent back toward a group they came from (no consumer left here)."
    );
    describe_counter!(
        CONNECTOR_DUPLICATES,
        "Re-sent forwards received and dropped as duplicates."
    );
    describe_counter!(
        CONNECTOR_FULL,
        "Forwards refused here because the destination was full (sent again later)."
    );
    describe_gauge!(
        CONNECTOR_INFLIGHT,
        "Forwarded messages not yet accepted by the peer."
    );
    describe_gauge!(
        CONNECTOR_REMOTE_DEMAND,
        "Remote consumers the connector's live bridge holds network demand for (all the peer advertised, less those suppressed for a better route)."
    );
    describe_gauge!(
        REMOTE_DEMAND,
        "Remote consumers known here, by destination."
    );
    describe_counter!(
        TERMS,
        "Terms this member served as master (each time it opened its client listeners)."
    );
    describe_gauge!(
        HA_ROLE,
        "1 for this member's current role in its group, 0 for the others: master (serving \
         clients), slave (following the master, or waiting for a file lock), candidate \
         (between masters: starting, electing, stepping down)."
    );
    describe_gauge!(
        HA_EPOCH,
        "The newest epoch of its group this member knows (one epoch per master term)."
    );
    describe_counter!(
        HA_ELECTIONS,
        "Elections this member stood in, by result: won or lost. ZooKeeper groups: each claim \
         of a new epoch it made (a conditional write that only one member can win). File-lock \
         groups: each time it took the lock (always won)."
    );
    describe_gauge!(
        ZOOKEEPER_SESSION,
        "1 while this member's ZooKeeper session is connected, 0 otherwise. Exported only by \
         members of groups elected through ZooKeeper."
    );
    describe_counter!(
        REPLICATION_ACKS,
        "On a master: acknowledgements received from a slave, each saying it holds every \
         record up to an index."
    );
    describe_counter!(
        REPLICATION_REFUSED,
        "On a master: replication peers refused or cut off, by reason (no_hello, no_token, \
         wrong_token, unknown_member, old_epoch, ack_beyond_sent). An ack_beyond_sent link \
         acknowledged records it was never sent: it is closed and the ack never counts."
    );
    describe_gauge!(UPTIME, Unit::Seconds, "Seconds since this member started.");
    describe_gauge!(UP, "1 while this member runs.");
    describe_gauge!(
        PROCESS_RSS,
        Unit::Bytes,
        "Resident memory of the broker process."
    );
    describe_gauge!(
        PROCESS_OPEN_FDS,
        "Open file descriptors of the broker process."
    );
    describe_counter!(
        PROCESS_CPU,
        Unit::Seconds,
        "CPU time used by the broker process."
    );
}

#[derive(Debug, thiserror::Error)]
#[error("cannot install the Prometheus recorder: {0}")]
pub struct MetricsError(String);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The `group` and `member` labels of every series (the recorder adds them to its own; the
/// families rendered here add them by hand).
static GLOBAL_LABELS: OnceLock<String> = OnceLock::new();

/// How often recorded histogram samples are folded into their buckets when nobody scrapes:
/// the recorder keeps every sample until then, so without this a broker that is never scraped
/// would grow without bound.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the process-wide recorder (once; later calls return the first handle).
pub fn install(group: &str, member: &str) -> Result<PrometheusHandle, MetricsError> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    GLOBAL_LABELS.get_or_init(|| {
        format!(
            "group=\"{}\",member=\"{}\"",
            escape_label(group),
            escape_label(member)
        )
    });
    let err = |e: metrics_exporter_prometheus::BuildError| MetricsError(e.to_string());
    let handle = PrometheusBuilder::new()
        .add_global_label("group", group)
        .add_global_label("member", member)
        .set_buckets(&[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0])
        .map_err(err)?
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 0.5, 1.0, 2.5,
            ],
        )
        .map_err(err)?
        .install_recorder()
        .map_err(|e| MetricsError(e.to_string()))?;
    describe_all();
    gauge!(UP).set(1.0);
    // Counters of rare events exist from the start, so a dashboard shows 0 rather than no data.
    for rare in [
        REBALANCE_MOVES,
        REBALANCE_ROUNDS,
        FAILOVER_RECONNECTS,
        CLUSTER_PUSHES,
        TERMS,
    ] {
        metrics::counter!(rare).increment(0);
    }
    let handle = HANDLE.get_or_init(|| handle).clone();
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            upkeep.run_upkeep();
        })
        .map_err(|e| MetricsError(format!("cannot start the metrics upkeep thread: {e}")))?;
    Ok(handle)
}

/// The roles `meshmq_ha_role` has a series for.
pub const HA_ROLES: [&str; 3] = ["master", "slave", "candidate"];

/// Sets `meshmq_ha_role`: 1 for `role` (one of [`HA_ROLES`]), 0 for the others.
pub fn publish_ha_role(role: &str) {
    for r in HA_ROLES {
        gauge!(HA_ROLE, "role" => r).set(if r == role { 1.0 } else { 0.0 });
    }
}

/// Help for `meshmq_replication_lag_records`, which [`render_replication_lag`] writes itself.
const REPLICATION_LAG_HELP: &str =
    "On a master: records a connected slave lacks (the journal's last index minus the slave's \
     last acknowledged index).";

/// Appends `meshmq_replication_lag_records{slave}` for each `(slave, lag)` to a rendered
/// exposition. The exporter cannot drop a series, and a lag must vanish when its slave
/// disconnects or this member stops being master (a frozen last value would lie), so this
/// family is written at scrape time from the live follower list instead of through the
/// recorder. Nothing is written when there is no slave.
pub fn render_replication_lag(out: &mut String, group: &str, member: &str, lags: &[(String, u64)]) {
    use std::fmt::Write;
    if lags.is_empty() {
        return;
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let _ = writeln!(out, "# HELP {REPLICATION_LAG} {REPLICATION_LAG_HELP}");
    let _ = writeln!(out, "# TYPE {REPLICATION_LAG} gauge");
    for (slave, lag) in lags {
        let _ = writeln!(
            out,
            "{REPLICATION_LAG}{{slave=\"{}\",group=\"{}\",member=\"{}\"}} {lag}",
            escape_label(slave),
            escape_label(group),
            escape_label(member)
        );
    }
}

/// What a scrape adds to the recorder's output: the member's destinations (when it serves).
pub struct Scrape {
    pub destinations: Option<Vec<DestinationStats>>,
    pub max_destinations: usize,
    pub slow_consumers: u64,
}

/// Renders `/metrics`: the recorder's families, then the per-destination families (capped)
/// and the latency histograms.
pub fn render(handle: &PrometheusHandle, scrape: Scrape) -> String {
    if let Some(stats) = &scrape.destinations {
        gauge!(SLOW_CONSUMERS).set(scrape.slow_consumers as f64);
        gauge!(DESTINATIONS).set(stats.len() as f64);
    }
    handle.run_upkeep();
    let mut out = handle.render();
    let labels = GLOBAL_LABELS.get().map(String::as_str).unwrap_or("");
    if let Some(stats) = scrape.destinations {
        render_destinations(&mut out, labels, stats, scrape.max_destinations);
    }
    DISPATCH_LATENCY_HISTOGRAM.render(&mut out, labels);
    END_TO_END_LATENCY_HISTOGRAM.render(&mut out, labels);
    out
}

/// Whether connections count each message (received and delivered counters, write batches,
/// latency histograms): on unless `MESHMQ_MESSAGE_METRICS=off`, a switch that exists to
/// measure what that work costs (see the README's benchmarks).
pub fn message_metrics_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("MESHMQ_MESSAGE_METRICS").map_or(true, |v| v != "off"))
}

/// Escapes a label value for the text exposition format.
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// One per-destination family: name, type, help, and how to read it from the stats.
struct DestinationFamily {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&DestinationStats) -> u64,
}

const DESTINATION_FAMILIES: [DestinationFamily; 10] = [
    DestinationFamily {
        name: DEST_DEPTH,
        kind: "gauge",
        help: "Messages held by a destination: pending plus in flight.",
        value: |s| s.depth,
    },
    DestinationFamily {
        name: DEST_INFLIGHT,
        kind: "gauge",
        help: "Messages delivered and not yet acknowledged.",
        value: |s| s.inflight,
    },
    DestinationFamily {
        name: DEST_CONSUMERS,
        kind: "gauge",
        help: "Consumers (subscriptions, network consumers included) attached to a destination.",
        value: |s| s.consumers,
    },
    DestinationFamily {
        name: DEST_MEMORY,
        kind: "gauge",
        help: "Message memory charged to a destination, in bytes.",
        value: |s| s.memory_bytes,
    },
    DestinationFamily {
        name: DEST_ENQUEUED,
        kind: "counter",
        help: "Messages accepted onto a destination.",
        value: |s| s.enqueued,
    },
    DestinationFamily {
        name: DEST_DEQUEUED,
        kind: "counter",
        help: "Messages acknowledged by consumers of a destination.",
        value: |s| s.dequeued,
    },
    DestinationFamily {
        name: DEST_EXPIRED,
        kind: "counter",
        help: "Messages that expired on a destination.",
        value: |s| s.expired,
    },
    DestinationFamily {
        name: DEST_DEAD_LETTERED,
        kind: "counter",
        help: "Messages moved to a destination's DLQ.",
        value: |s| s.dead_lettered,
    },
    DestinationFamily {
        name: DEST_DROPPED,
        kind: "counter",
        help: "Topic messages dropped for slow subscribers (topic_pending_limit).",
        value: |s| s.dropped,
    },
    DestinationFamily {
        name: DEST_REDELIVERED,
        kind: "counter",
        help: "Deliveries returned for redelivery.",
        value: |s| s.redelivered,
    },
];

/// Keeps the `max` busiest destinations (by enqueued count, then name) and sums the rest into
/// one `_other` entry.
fn cap_destinations(mut stats: Vec<DestinationStats>, max: usize) -> Vec<DestinationStats> {
    stats.sort_by(|a, b| {
        b.enqueued
            .cmp(&a.enqueued)
            .then_with(|| a.destination.cmp(&b.destination))
    });
    if stats.len() <= max {
        return stats;
    }
    let rest = stats.split_off(max);
    let mut other = DestinationStats {
        destination: OTHER_DESTINATIONS.to_string(),
        ..DestinationStats::default()
    };
    for s in &rest {
        other.depth += s.depth;
        other.pending += s.pending;
        other.inflight += s.inflight;
        other.consumers += s.consumers;
        other.memory_bytes += s.memory_bytes;
        other.enqueued += s.enqueued;
        other.dequeued += s.dequeued;
        other.expired += s.expired;
        other.dead_lettered += s.dead_lettered;
        other.dropped += s.dropped;
        other.redelivered += s.redelivered;
    }
    stats.push(other);
    stats
}

/// Writes the per-destination families: the `max` busiest destinations by their own label,
/// the rest summed under `_other`. Only destinations that exist now appear.
fn render_destinations(out: &mut String, labels: &str, stats: Vec<DestinationStats>, max: usize) {
    let shown = cap_destinations(stats, max);
    let names: Vec<String> = shown.iter().map(|s| escape_label(&s.destination)).collect();
    for f in &DESTINATION_FAMILIES {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for (s, name) in shown.iter().zip(&names) {
            let _ = writeln!(
                out,
                "{}{{{labels},destination=\"{name}\"}} {}",
                f.name,
                (f.value)(s)
            );
        }
    }
}

/// Upper bounds of the latency buckets, in milliseconds (message timestamps have millisecond
/// resolution).
const LATENCY_BOUNDS_MS: [u64; 14] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000,
];
const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// A histogram of millisecond latencies shared by every connection: fixed buckets of relaxed
/// atomics, so recording is a handful of adds and memory stays constant however long nobody
/// scrapes.
pub struct LatencyHistogram {
    name: &'static str,
    help: &'static str,
    buckets: [AtomicU64; LATENCY_BUCKETS],
    sum_ms: AtomicU64,
}

/// Latencies gathered by one connection over one write batch, added to a `LatencyHistogram`
/// at once.
#[derive(Default)]
pub struct LatencyBatch {
    buckets: [u64; LATENCY_BUCKETS],
    sum_ms: u64,
    count: u64,
}

impl LatencyBatch {
    pub fn record_ms(&mut self, ms: u64) {
        let i = LATENCY_BOUNDS_MS.partition_point(|&b| b < ms);
        self.buckets[i] += 1;
        self.sum_ms += ms;
        self.count += 1;
    }
}

impl LatencyHistogram {
    const fn new(name: &'static str, help: &'static str) -> LatencyHistogram {
        LatencyHistogram {
            name,
            help,
            buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKETS],
            sum_ms: AtomicU64::new(0),
        }
    }

    /// Adds a batch (and empties it).
    pub fn add(&self, batch: &mut LatencyBatch) {
        if batch.count == 0 {
            return;
        }
        for (shared, n) in self.buckets.iter().zip(batch.buckets.iter_mut()) {
            if *n > 0 {
                shared.fetch_add(*n, Ordering::Relaxed);
                *n = 0;
            }
        }
        self.sum_ms.fetch_add(batch.sum_ms, Ordering::Relaxed);
        batch.sum_ms = 0;
        batch.count = 0;
    }

    fn render(&self, out: &mut String, labels: &str) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} histogram", self.name);
        let mut cumulative = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let le = match LATENCY_BOUNDS_MS.get(i) {
                Some(ms) => format!("{}", *ms as f64 / 1000.0),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(
                out,
                "{}_bucket{{{labels},le=\"{le}\"}} {cumulative}",
                self.name
            );
        }
        let sum = self.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        let _ = writeln!(out, "{}_sum{{{labels}}} {sum}", self.name);
        let _ = writeln!(out, "{}_count{{{labels}}} {cumulative}", self.name);
    }
}

/// From a message's arrival on this member to its delivery being written to a consumer's
/// connection (queueing plus dispatch).
pub static DISPATCH_LATENCY_HISTOGRAM: LatencyHistogram = LatencyHistogram::new(
    DISPATCH_LATENCY,
    "Time from a message's arrival on this member to its delivery being written to a consumer connection (millisecond resolution).",
);

/// From a message's timestamp (its producer's send, or the first broker's receipt) to its
/// delivery being written here: the whole trip, across the mesh.
pub static END_TO_END_LATENCY_HISTOGRAM: LatencyHistogram = LatencyHistogram::new(
    END_TO_END_LATENCY,
    "Time from a message's timestamp (set by its producer or first broker) to its delivery being written to a consumer connection, across every hop (millisecond resolution).",
);

/// Publishes process-level gauges read from `/proc/self`.
pub fn publish_process(started: Instant) {
    gauge!(UPTIME).set(started.elapsed().as_secs_f64());
    let p = process_usage();
    gauge!(PROCESS_RSS).set(p.rss_bytes as f64);
    gauge!(PROCESS_OPEN_FDS).set(p.open_fds as f64);
    metrics::counter!(PROCESS_CPU).absolute(p.cpu_seconds as u64);
}

/// Resource use of this process.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ProcessUsage {
    pub rss_bytes: u64,
    pub open_fds: u64,
    pub cpu_seconds: f64,
}

/// Reads this process's RSS, open descriptors and CPU time (zeros where /proc is unreadable).
pub fn process_usage() -> ProcessUsage {
    process_usage_of("self")
}

/// Reads RSS, open descriptors and CPU time of `pid` ("self" or a number) from /proc.
pub fn process_usage_of(pid: &str) -> ProcessUsage {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    // SAFETY: as above.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let rss_bytes = std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * page)
        .unwrap_or(0);
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    // Fields 14 and 15 (utime, stime) come after the parenthesised command name.
    let cpu_seconds = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .unwrap_or(0.0);
    ProcessUsage {
        rss_bytes,
        open_fds,
        cpu_seconds,
    }
}

#[cfg(test)]
mod tests;
