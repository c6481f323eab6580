//! A connection's open transaction: the sends it staged and the acknowledgements it holds,
//! applied together at commit or undone at abort.

use crate::broker::{NewMessage, Session, Target};
use crate::server::request::TxName;

/// A transaction's staged work, native and STOMP alike.
#[derive(Debug, Default)]
pub(super) struct Tx {
    pub sends: Vec<(Target, NewMessage)>,
    pub acks: Vec<(u64, u64)>,
    pub nacks: Vec<(u64, u64)>,
}

impl Tx {
    /// Applies the transaction: its sends and acknowledgements take effect together, its
    /// nacks after. Returns the journal index a receipt must wait for (0: none).
    pub(super) fn commit(self, session: &mut Session) -> u64 {
        let index = session.commit(self.sends, &self.acks);
        for (sub, tag) in self.nacks {
            let _ = session.nack(sub, &[tag]);
        }
        index
    }

    /// Undoes the transaction: its sends vanish; what it acknowledged is redelivered.
    pub(super) fn abort(self, session: &mut Session) {
        for (sub, tag) in self.acks.into_iter().chain(self.nacks) {
            let _ = session.nack(sub, &[tag]);
        }
    }
}

pub(super) fn no_transaction(name: &TxName) -> String {
    format!("no open transaction {name} on this connection: begin it first")
}
