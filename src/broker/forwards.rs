//! Forwarded message ids recently taken, so that a forward sent again after its
//! acknowledgement was lost is dropped, across restarts too.
//!
//! Owns: [`RecentIds`] and how a forward's "reach" tells a re-sent copy from a legitimate
//! return. Must not touch: the journal (the checkpoint and replay in `persist.rs` hand chunks in
//! and out). Invariant: a forgotten id counts as new — a duplicate is possible, a loss never.

use bytes::Bytes;
use rustc_hash::FxHashMap;

use super::{Broker, Message};

/// Chunks of forwarded message ids remembered to drop re-sent forwards: at most 8 MiB, the
/// last 16,384 producers' ids at least, 67 million ids of a busy one.
pub(super) const RECENT_FORWARD_CHUNKS: usize = 16_384;

/// Sequences per chunk of remembered forward ids (a chunk is 512 bytes of bits).
const CHUNK_IDS: u64 = 4096;

/// Chunks of remembered forward ids a checkpoint keeps (the newest; at most 128 KiB). Only a
/// forward in flight unacknowledged when its target restarts needs remembering, and records
/// journaled after the checkpoint are remembered from the journal itself.
const CHECKPOINT_FORWARD_CHUNKS: usize = 256;

/// How a forwarded message is told apart from a later legitimate return: for a queue message,
/// how many times it had left `local` (on its path); topic messages reach a group once.
fn forward_reach<'a>(topic: bool, path: impl Iterator<Item = &'a str>, local: &str) -> u32 {
    if topic {
        u32::MAX
    } else {
        path.filter(|g| *g == local).count() as u32
    }
}

/// A chunk of remembered forward ids: (interned producer, how far the message travelled — or
/// `u32::MAX` for topic messages, which reach a group once whatever their route — and the
/// sequence divided by [`CHUNK_IDS`]).
type ChunkKey = (u32, u32, u64);

/// The forwarded message ids seen lately, to drop a forward sent again after its
/// acknowledgement was lost. It is checked once per forwarded message, so it is built for
/// that: ids are bits in 4096-sequence chunks per (producer, reach), so a check is one lookup
/// in a small map and a bit test, with no per-message allocation and no rehashing churn. The
/// `cap` most recent chunks are kept, oldest forgotten first; an id whose chunk is forgotten
/// counts as new (a duplicate is then possible, a loss never). Producer ids are interned (and
/// copied, so no received frame stays alive for them) and forgotten with their last chunk.
#[derive(Debug)]
pub(super) struct RecentIds {
    chunks: FxHashMap<ChunkKey, Box<[u64; CHUNK_IDS as usize / 64]>>,
    /// Every chunk held, oldest first.
    order: std::collections::VecDeque<ChunkKey>,
    cap: usize,
    /// Interned producer ids by number, with how many chunks use each.
    producers: Vec<Option<(Bytes, usize)>>,
    free: Vec<u32>,
    number_of: FxHashMap<Bytes, u32>,
}

impl RecentIds {
    pub(super) fn new(cap: usize) -> RecentIds {
        RecentIds {
            chunks: Default::default(),
            order: Default::default(),
            cap,
            producers: Vec::new(),
            free: Vec::new(),
            number_of: Default::default(),
        }
    }

    /// True when the id was not seen (and remembers it).
    fn insert(&mut self, producer: &Bytes, sequence: u64, reach: u32) -> bool {
        let p = match self.number_of.get(producer) {
            Some(&p) => p,
            None => self.intern(producer),
        };
        let key = (p, reach, sequence / CHUNK_IDS);
        let bit = sequence % CHUNK_IDS;
        let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
        if let Some(chunk) = self.chunks.get_mut(&key) {
            let seen = chunk[word] & mask != 0;
            chunk[word] |= mask;
            return !seen;
        }
        let mut chunk = Box::new([0u64; CHUNK_IDS as usize / 64]);
        chunk[word] = mask;
        self.chunks.insert(key, chunk);
        self.order.push_back(key);
        if let Some((_, uses)) = &mut self.producers[p as usize] {
            *uses += 1;
        }
        if self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.chunks.remove(&old);
                self.release(old.0);
            }
        }
        true
    }

    /// The newest `max` chunks, oldest first, for a checkpoint.
    fn export(&self, max: usize) -> Vec<crate::store::proto::ForwardChunk> {
        let skip = self.order.len().saturating_sub(max);
        self.order
            .iter()
            .skip(skip)
            .filter_map(|key| {
                let (producer, _) = self.producers[key.0 as usize].as_ref()?;
                Some(crate::store::proto::ForwardChunk {
                    producer_id: producer.clone(),
                    reach: key.1,
                    chunk: key.2,
                    bits: self.chunks.get(key)?.to_vec(),
                })
            })
            .collect()
    }

    /// Remembers every id of a checkpointed chunk (a malformed one is skipped: it can only
    /// cost a duplicate).
    fn import(&mut self, c: &crate::store::proto::ForwardChunk) {
        for (w, word) in c.bits.iter().enumerate().take(CHUNK_IDS as usize / 64) {
            let mut bits = *word;
            while bits != 0 {
                let bit = bits.trailing_zeros() as u64;
                bits &= bits - 1;
                let sequence = c.chunk * CHUNK_IDS + w as u64 * 64 + bit;
                self.insert(&c.producer_id, sequence, c.reach);
            }
        }
    }

    fn intern(&mut self, producer: &Bytes) -> u32 {
        let owned = Bytes::copy_from_slice(producer);
        let p = match self.free.pop() {
            Some(p) => p,
            None => {
                self.producers.push(None);
                (self.producers.len() - 1) as u32
            }
        };
        self.producers[p as usize] = Some((owned.clone(), 0));
        self.number_of.insert(owned, p);
        p
    }

    /// A chunk of producer `p` was forgotten; the producer goes with its last.
    fn release(&mut self, p: u32) {
        let slot = &mut self.producers[p as usize];
        if let Some((id, uses)) = slot {
            *uses -= 1;
            if *uses == 0 {
                self.number_of.remove(id);
                *slot = None;
                self.free.push(p);
            }
        }
    }
}

impl Broker {
    /// For a message arriving over a bridge at group `local`: true the first time it is seen.
    /// A queue message is known by how many times it has already left `local` (the times
    /// `local` is on its path): a copy re-sent after a lost acknowledgement — over the same
    /// bridge or rerouted through another group when that bridge died — has left `local` as
    /// often as the copy already here and is dropped; one that legitimately comes back (a
    /// replay after it was forwarded away from here) has left once more. A topic message is
    /// taken once whatever its route.
    /// What was seen is journaled with the message and checkpointed, so it holds across a
    /// restart (see [`Broker::restore_forwards`]).
    pub fn first_forward(&self, msg: &Message, topic: bool, local: &str) -> bool {
        if msg.producer_id.is_empty() || msg.sequence == 0 {
            return true;
        }
        let reach = forward_reach(topic, msg.broker_path.iter().map(|g| &**g), local);
        self.inner
            .recent_forwards
            .lock()
            .insert(&msg.producer_id, msg.sequence, reach)
    }

    /// Remembers the forwards a restarted broker had taken: the checkpoint's chunks, then the
    /// messages journaled after it.
    pub(super) fn restore_forwards(
        &self,
        chunks: &[crate::store::proto::ForwardChunk],
        forwarded: &[crate::store::ForwardedId],
    ) {
        let settings = self.inner.settings.read();
        let local = settings.group.as_str();
        let mut recent = self.inner.recent_forwards.lock();
        for c in chunks {
            recent.import(c);
        }
        for f in forwarded {
            let reach = forward_reach(f.topic, f.broker_path.iter().map(|g| g.as_str()), local);
            recent.insert(&f.producer_id, f.sequence, reach);
        }
    }

    /// The newest remembered forward ids, for a checkpoint.
    pub(super) fn export_forwards(&self) -> Vec<crate::store::proto::ForwardChunk> {
        self.inner
            .recent_forwards
            .lock()
            .export(CHECKPOINT_FORWARD_CHUNKS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_forward_ids_drop_repeats_and_forget_the_oldest_chunk_with_its_producer() {
        let mut r = RecentIds::new(3);
        let (a, b) = (
            Bytes::from_static(b"producer-a"),
            Bytes::from_static(b"producer-b"),
        );
        assert!(r.insert(&a, 1, 1));
        assert!(!r.insert(&a, 1, 1), "a repeat is dropped");
        assert!(r.insert(&a, 2, 1));
        assert!(!r.insert(&a, 2, 1));
        assert!(
            r.insert(&a, 1, 2),
            "the same message having travelled further is new"
        );
        assert!(r.insert(&b, 1, 1));
        assert_eq!(r.number_of.len(), 2);
        // A fourth chunk (a's sequences from 4096 on) forgets the oldest, a's first.
        assert!(r.insert(&a, CHUNK_IDS, 1));
        assert!(r.insert(&a, 1, 1), "forgotten, so taken as new");
        assert!(!r.insert(&a, CHUNK_IDS, 1));
        // Only b's chunks left once a's age out: a is forgotten too, its number reused.
        for n in 1..=3 {
            assert!(r.insert(&b, n * CHUNK_IDS, 1));
        }
        assert_eq!(r.number_of.len(), 1, "{:?}", r.number_of);
        assert!(r.insert(&a, 9, 1));
        assert_eq!(r.producers.len(), 2, "a's number was reused");
    }
}
