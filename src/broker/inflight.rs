//! Deliveries handed to one consumer and not yet acknowledged, ordered by tag.
//!
//! Tags only grow, so the list stays sorted: cumulative acks pop from the front, in-order
//! individual acks hit the front too, and out-of-order ones are a binary search.

use std::collections::VecDeque;

use super::message::{prefetch, Entry, PREFETCH_AHEAD};

#[derive(Debug, Default)]
pub(crate) struct Inflight {
    items: VecDeque<(u64, Entry)>,
    next_tag: u64,
}

impl Inflight {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Records a delivery and returns its tag.
    pub fn push(&mut self, entry: Entry) -> u64 {
        self.next_tag += 1;
        self.items.push_back((self.next_tag, entry));
        self.next_tag
    }

    /// Removes every delivery with tag <= `up_to` and each of `tags`; calls `f` on each.
    /// Returns how many of `tags` were not in flight. A cumulative ack's run starts loading
    /// each message a few entries before `f` gets it (acked messages are mostly dropped
    /// here, long after they were delivered: out of cache).
    pub fn remove(&mut self, up_to: u64, tags: &[u64], mut f: impl FnMut(Entry)) -> usize {
        if up_to != 0 {
            for (_, e) in self.items.iter().take(PREFETCH_AHEAD) {
                prefetch(&e.msg);
            }
        }
        while self.items.front().is_some_and(|(t, _)| *t <= up_to) {
            if let Some((_, ahead)) = self.items.get(PREFETCH_AHEAD) {
                prefetch(&ahead.msg);
            }
            if let Some((_, e)) = self.items.pop_front() {
                f(e);
            }
        }
        let mut missing = 0;
        for &tag in tags {
            if self.items.front().is_some_and(|(t, _)| *t == tag) {
                if let Some((_, e)) = self.items.pop_front() {
                    f(e);
                }
                continue;
            }
            match self.items.binary_search_by_key(&tag, |(t, _)| *t) {
                Ok(i) => {
                    if let Some((_, e)) = self.items.remove(i) {
                        f(e);
                    }
                }
                Err(_) => missing += 1,
            }
        }
        missing
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.items.iter().map(|(_, e)| e)
    }

    /// Empties the list (consumer gone), oldest first.
    pub fn drain(&mut self) -> impl Iterator<Item = Entry> + '_ {
        self.items.drain(..).map(|(_, e)| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::message::Message;
    use std::sync::Arc;

    fn entry(seq: u64) -> Entry {
        Entry {
            msg: Arc::new(Message::default()),
            seq,
            redeliveries: 0,
            arrived_ms: 0,
        }
    }

    #[test]
    fn cumulative_and_individual_acks() {
        let mut f = Inflight::default();
        let tags: Vec<u64> = (0..6).map(|i| f.push(entry(i))).collect();
        assert_eq!(tags, vec![1, 2, 3, 4, 5, 6]);
        let mut got = vec![];
        assert_eq!(f.remove(2, &[], |e| got.push(e.seq)), 0);
        assert_eq!(got, vec![0, 1]);
        got.clear();
        assert_eq!(f.remove(0, &[5, 3, 99], |e| got.push(e.seq)), 1);
        assert_eq!(got, vec![4, 2]);
        let rest: Vec<u64> = f.drain().map(|e| e.seq).collect();
        assert_eq!(rest, vec![3, 5]);
        assert_eq!(f.len(), 0);
        assert_eq!(f.push(entry(9)), 7, "tags keep growing after a drain");
    }
}
