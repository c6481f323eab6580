//! What this build cannot serve yet. Each feature is one small check naming the keys that use
//! it; when the feature lands, delete its check and its line in `CHECKS`. Every key of the
//! format is served today, so the list is empty; `meshmq check` and `meshmq broker` still
//! refuse a topology whose list is not.
//! [`Topology::unsupported`] is defined here, so the checks and their list stay in one file.

use super::topology::Topology;

type Check = fn(&Topology, &mut Vec<String>);

const CHECKS: &[Check] = &[];

impl Topology {
    /// Every key the topology sets that this build cannot serve yet, as key paths.
    pub fn unsupported(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for check in CHECKS {
            check(self, &mut keys);
        }
        keys
    }
}
