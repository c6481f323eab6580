//! Journal replication: a master streams its journal's frames to each follower over TCP, the
//! followers append them verbatim and acknowledge what they hold, and the master commits
//! (lets receipts go) once `replicas/2` followers hold a record and its lease holds.
//!
//! Owns: the replication listener of a master term, one session per follower, and the
//! follower's client. Must not touch: elections (the driver decides who masters and follows) or
//! the broker. Invariants: a follower's journal is always a prefix of its master's — a follower
//! whose tail diverges (records the master does not have at that index and epoch) discards its
//! journal and copies the master's from its oldest retained record, with the checkpoint that
//! covers what came before; a follower refuses a master of an epoch older than the newest it
//! has seen, when the stream starts and before each append (its member may see a newer epoch
//! in the middle of a stream); the master commits an index only if it is at least its own
//! epoch's first record (so older records are committed through the new epoch, never on their
//! own).
//!
//! Trust: a master admits a follower only with the group's replication token (compared in
//! constant time) and a member name of the group other than its own, one link per member (a
//! second replaces the first). Only what the master can vouch for counts toward a quorum: an
//! acknowledgement above the last index sent on its link is a protocol violation that closes
//! the link uncounted, and a follower's claim (in its hello) to hold records of this term counts
//! only as far as that member acknowledged them on an earlier link — the rest is sent again.
//! Every refusal is logged with the peer and counted with a `reason`.
//!
//! Layout: `machine` holds the protocol as two state machines with no I/O (`MasterMachine`,
//! `FollowerMachine`; the group simulation `ha/sim/` drives them too), `master` and
//! `follower` are the drivers that feed them from sockets and the journal; this file holds the
//! wire (one length-prefixed protobuf message at a time) and what both ends share.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::store::StoreError;

mod follower;
pub mod machine;
mod master;
#[cfg(test)]
mod tests;

pub use follower::{follow, FollowOptions};
pub(crate) use machine::{epochs_from_proto, plan_start, StartPlan};
pub use master::Master;

pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/meshmq.replication.rs"));
}

/// The largest replication message accepted.
pub(crate) const MAX_MESSAGE: usize = 256 << 20;
/// The largest hello accepted: a stranger's first message costs at most this much memory
/// (room for thousands of terms of epoch history).
pub(crate) const MAX_HELLO: usize = 256 << 10;
/// Connections that may be waiting for their hello at once: a group has a handful of members,
/// so more than this is a stranger's flood, turned away at once (`reason="busy"`). With
/// `MAX_HELLO` this bounds what strangers on the replication port cost to 4 MiB.
pub(super) const HANDSHAKES: usize = 16;
/// Records sent per message, about.
pub(super) const BATCH_BYTES: usize = 512 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    #[error("replication link {peer}: {source}")]
    Io {
        peer: String,
        source: std::io::Error,
    },
    #[error("replication link {peer}: {detail}")]
    Protocol { peer: String, detail: String },
    #[error("refused by the master: {0}")]
    Refused(String),
    #[error("the journal is not a prefix of the master's; it was discarded to be copied again")]
    Resync,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What both ends agree on.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// The group's replication token; a master without one admits no follower.
    pub token: Option<String>,
    /// A link silent for three of these is dead.
    pub heartbeat: Duration,
}

/// The bytes of one message on the link: its length (u32, big-endian), then its encoding.
pub(crate) fn frame_msg(msg: &impl prost::Message) -> Vec<u8> {
    let len = msg.encoded_len();
    let mut buf = Vec::with_capacity(4 + len);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    msg.encode(&mut buf)
        .expect("a Vec grows to hold any message");
    buf
}

/// Writes one message with a single write: with `TCP_NODELAY` a separate length would go out
/// as a packet of its own and wake the peer twice.
pub(super) async fn write_msg(
    s: &mut (impl AsyncWriteExt + Unpin),
    msg: &impl prost::Message,
) -> std::io::Result<()> {
    s.write_all(&frame_msg(msg)).await
}

/// Read buffer of each end of a link: a batch of records usually arrives in one read.
pub(super) const READ_BUFFER: usize = 256 << 10;

pub(super) async fn read_msg<M: prost::Message + Default>(
    s: &mut (impl AsyncReadExt + Unpin),
    peer: &str,
) -> Result<M, ReplError> {
    read_msg_within(s, peer, MAX_MESSAGE).await
}

/// Reads one message of at most `max` bytes; a longer one is refused from its length, before
/// anything is allocated for it.
pub(crate) async fn read_msg_within<M: prost::Message + Default>(
    s: &mut (impl AsyncReadExt + Unpin),
    peer: &str,
    max: usize,
) -> Result<M, ReplError> {
    let io = |source| ReplError::Io {
        peer: peer.to_string(),
        source,
    };
    let len = s.read_u32().await.map_err(io)? as usize;
    if len > max {
        return Err(ReplError::Protocol {
            peer: peer.to_string(),
            detail: format!("a message of {len} bytes is over the limit"),
        });
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await.map_err(io)?;
    M::decode(bytes::Bytes::from(buf)).map_err(|e| ReplError::Protocol {
        peer: peer.to_string(),
        detail: format!("undecodable message: {e}"),
    })
}

/// One follower as the master sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FollowerStatus {
    pub member: String,
    /// Every record up to it is held by the follower.
    pub acked: u64,
    /// Records the follower lacks.
    pub lag: u64,
}

/// Decides whether the master may commit now (its lease holds).
pub type LeaseCheck = Arc<dyn Fn() -> bool + Send + Sync>;
