//! High availability for ZooKeeper-elected groups: who is master, and the journal replication
//! that lets a follower take over without losing an acknowledged write.
//!
//! Owns: the role state machine (`machine`, no I/O), the ZooKeeper session and znode layout
//! (`zk`), and journal replication between a master and its followers (`replication`: its
//! protocol is `replication::machine`, no I/O, and drivers for sockets and the journal). The
//! group simulation (`sim`) drives the real role and replication machines. Must not touch: the
//! broker, listeners or connectors — the server's driver (`server::member::replicated`) starts and
//! stops a master term when the machine says so. The file-lock election needs no replication
//! and lives in `server::member::election`.
//!
//! Invariants: a member acknowledges a write only as master of an epoch whose lease holds, and
//! (in `remote_*`/`quorum_*` modes) only after `replicas/2` followers hold it; a follower never
//! appends records of an epoch older than the newest it has seen; a published candidate
//! position is final (nothing is appended after it), so the highest position of any quorum
//! holds every acknowledged write.

pub mod machine;
pub mod replication;
#[cfg(test)]
mod sim;
pub mod zk;
