//! Journal positions and epoch history: which HA epoch wrote each record.
//!
//! Every master of a replicated group writes an `Epoch` record before anything else of its
//! epoch, so a journal is a sequence of epoch runs. Two journals hold the same record at an
//! index exactly when they hold the same epoch's run there with the same first index (a run is
//! only ever copied from its master, in order, after the copy was cut back to agree): that is
//! what [`EpochHistory::match_point`] uses to find where a follower's journal departs from its
//! master's. Records written before any `Epoch` record (a journal that predates its group's
//! replication) belong to epoch 0, which starts at index 1.

use super::proto;

/// Where a journal ends: the epoch of its last record, then that record's index. Ordered the
/// way elections compare members (newer epoch first, then longer journal).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Position {
    pub epoch: u64,
    pub index: u64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.epoch, self.index)
    }
}

/// The first index of each epoch in a journal, oldest first, epochs strictly increasing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochHistory {
    starts: Vec<(u64, u64)>,
}

impl EpochHistory {
    pub fn from_starts(starts: impl IntoIterator<Item = (u64, u64)>) -> EpochHistory {
        let mut h = EpochHistory::default();
        for (epoch, first) in starts {
            h.begin(epoch, first);
        }
        h
    }

    pub fn from_proto(list: &[proto::EpochStart]) -> EpochHistory {
        EpochHistory::from_starts(list.iter().map(|e| (e.epoch, e.first)))
    }

    pub fn to_proto(&self) -> Vec<proto::EpochStart> {
        self.starts
            .iter()
            .map(|&(epoch, first)| proto::EpochStart { epoch, first })
            .collect()
    }

    /// (epoch, first index) pairs, oldest first.
    pub fn starts(&self) -> &[(u64, u64)] {
        &self.starts
    }

    /// Records that epoch `epoch` begins at `first`. An epoch not newer than the last one, or
    /// starting before it, is ignored (replaying a record twice changes nothing).
    pub fn begin(&mut self, epoch: u64, first: u64) {
        match self.starts.last() {
            Some(&(e, f)) if epoch <= e || first <= f => {}
            _ => self.starts.push((epoch, first)),
        }
    }

    /// Forgets epochs that begin after `index` (the records after it were cut).
    pub fn truncate_after(&mut self, index: u64) {
        self.starts.retain(|&(_, first)| first <= index);
    }

    /// The epoch that wrote record `index` (0 before any epoch began).
    pub fn epoch_at(&self, index: u64) -> u64 {
        self.starts
            .iter()
            .rev()
            .find(|&&(_, first)| first <= index)
            .map_or(0, |&(e, _)| e)
    }

    /// The newest epoch known.
    pub fn last_epoch(&self) -> u64 {
        self.starts.last().map_or(0, |&(e, _)| e)
    }

    /// The position of a journal whose last record is `last_index` (0: empty).
    pub fn position(&self, last_index: u64) -> Position {
        Position {
            epoch: if last_index == 0 {
                0
            } else {
                self.epoch_at(last_index)
            },
            index: last_index,
        }
    }

    /// Runs of this journal: (epoch, first, last) for a journal ending at `last_index`; epoch 0
    /// covers the records before the first epoch.
    fn runs(&self, last_index: u64) -> Vec<(u64, u64, u64)> {
        let mut runs = Vec::new();
        let mut bounds: Vec<(u64, u64)> = Vec::with_capacity(self.starts.len() + 1);
        if self.starts.first().is_none_or(|&(_, f)| f > 1) {
            bounds.push((0, 1));
        }
        bounds.extend(self.starts.iter().copied());
        for (i, &(epoch, first)) in bounds.iter().enumerate() {
            let end = bounds
                .get(i + 1)
                .map_or(last_index, |&(_, next)| next - 1)
                .min(last_index);
            if end >= first {
                runs.push((epoch, first, end));
            }
        }
        runs
    }

    /// The last index at which this journal (ending at `last`) and `other` (ending at
    /// `other_last`) hold the same record; 0 when they share none. Everything up to it agrees.
    pub fn match_point(&self, last: u64, other: &EpochHistory, other_last: u64) -> u64 {
        let mine = self.runs(last);
        for &(epoch, first, end) in other.runs(other_last).iter().rev() {
            if let Some(&(_, _, my_end)) = mine.iter().find(|&&(e, f, _)| e == epoch && f == first)
            {
                return end.min(my_end);
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(starts: &[(u64, u64)]) -> EpochHistory {
        EpochHistory::from_starts(starts.iter().copied())
    }

    #[test]
    fn positions_name_the_epoch_of_the_last_record() {
        let hist = h(&[(1, 1), (3, 10)]);
        assert_eq!(hist.position(0), Position { epoch: 0, index: 0 });
        assert_eq!(hist.position(9), Position { epoch: 1, index: 9 });
        assert_eq!(
            hist.position(10),
            Position {
                epoch: 3,
                index: 10
            }
        );
        assert!(
            Position {
                epoch: 3,
                index: 10
            } > Position {
                epoch: 1,
                index: 500
            }
        );
    }

    #[test]
    fn a_follower_behind_on_the_same_epoch_matches_at_its_end() {
        let master = h(&[(1, 1), (2, 50)]);
        assert_eq!(master.match_point(80, &h(&[(1, 1), (2, 50)]), 60), 60);
        assert_eq!(master.match_point(80, &h(&[(1, 1)]), 30), 30);
        assert_eq!(master.match_point(80, &EpochHistory::default(), 0), 0);
    }

    #[test]
    fn a_divergent_tail_from_an_old_epoch_is_cut_where_the_epochs_part() {
        // The follower was master of epoch 2 and wrote 50..=70 that nobody else got; epoch 3's
        // master continued from 49.
        let master = h(&[(1, 1), (3, 50)]);
        let follower = h(&[(1, 1), (2, 50)]);
        assert_eq!(master.match_point(90, &follower, 70), 49);
        // A follower that is ahead on a shared epoch is cut back to the master's end of it.
        assert_eq!(h(&[(1, 1), (4, 60)]).match_point(70, &h(&[(1, 1)]), 65), 59);
    }

    #[test]
    fn epochs_with_different_starts_do_not_match() {
        let master = h(&[(1, 1), (2, 40)]);
        let follower = h(&[(1, 1), (2, 45)]);
        assert_eq!(master.match_point(60, &follower, 60), 39);
    }

    #[test]
    fn replaying_and_cutting_keep_the_history_consistent() {
        let mut hist = h(&[(1, 1), (2, 20)]);
        hist.begin(2, 20);
        hist.begin(1, 30);
        assert_eq!(hist.starts(), &[(1, 1), (2, 20)]);
        hist.truncate_after(19);
        assert_eq!(hist.starts(), &[(1, 1)]);
        assert_eq!(hist.epoch_at(25), 1);
        assert_eq!(EpochHistory::from_proto(&hist.to_proto()), hist);
    }
}
