//! The importing role of a bridge: taking what the peer forwards onto the local broker, and
//! acknowledging each forward once it is accepted (after its journal synced, for a persistent
//! message).
//!
//! Owns: the accepted forwards waiting for their acknowledgement. Must not touch: network
//! consumers (`forward.rs`). Invariant: a forward already taken (a re-send after a lost
//! acknowledgement) is acknowledged again and not published twice.

use std::sync::Arc;

use crate::broker::{Admission, Destination, Draft, Published};
use crate::wire::{proto, Body};

use super::Bridge;

impl Bridge {
    pub(super) fn on_forward(&mut self, f: proto::Forward) {
        let id = f.forward_id;
        let unacknowledged = f.unacknowledged;
        let refuse = |this: &mut Bridge, error: String, retry: bool| {
            if unacknowledged {
                // The sender let it go when it wrote it: it is lost, as its connector allows.
                tracing::debug!(connector = %this.cfg.connector, %error, "an unacknowledged forward is dropped");
                return;
            }
            this.send_frame(Body::ForwardAck(proto::ForwardAck {
                forward_id: id,
                accepted: false,
                error,
                retry,
                more: Vec::new(),
            }));
        };
        if self.stopping.is_some() {
            // Not taken: the source keeps it and sends it again (flagged) elsewhere or later.
            return refuse(self, "the broker is stopping".into(), true);
        }
        let Some(send) = f.message else {
            return refuse(self, "a forward without a message".into(), false);
        };
        let destination = match Destination::parse(&send.destination) {
            Ok(d) => d,
            Err(e) => return refuse(self, e.to_string(), false),
        };
        let target = match self.session.target(&destination) {
            Ok(t) => t,
            Err(e) => return refuse(self, e.to_string(), false),
        };
        let mut draft = Draft::from(send);
        draft.broker_path = f.broker_path.into_iter().map(Arc::from).collect();
        draft.targets =
            (!f.targets.is_empty()).then(|| f.targets.into_iter().map(Arc::from).collect());
        draft.redeliveries = f.redelivery_count;
        let msg = match self.builder.build(draft) {
            Ok(m) => m,
            Err(e) => return refuse(self, e.to_string(), false),
        };
        // Full, whatever the destination's policy: a bridge never waits (its link carries
        // other destinations too) and never drops; the sender tries again later.
        if !matches!(self.session.admit(&target, msg.persistent), Admission::Now) {
            self.metrics.refused_full();
            return refuse(self, format!("{} is full here", target.destination()), true);
        }
        let topic = !target.destination().kind().is_queue();
        if !self
            .session
            .broker()
            .first_forward(&msg, topic, &self.cfg.local)
        {
            self.metrics.duplicate();
            if !unacknowledged {
                self.accept(id, 0);
            }
            return;
        }
        match self.session.publish_forwarded(&target, msg) {
            Ok(_) if unacknowledged => {}
            Ok(Published::Pending(index)) => self.accept(id, index),
            Ok(_) => self.accept(id, 0),
            Err(e) => refuse(self, e.to_string(), false),
        }
    }

    /// Acknowledges a forward now, or once the journal has synced `index`.
    fn accept(&mut self, forward_id: u64, index: u64) {
        let broker = self.session.broker();
        if let Some(now) = self.acceptances.push(broker, index, forward_id) {
            self.accepted.push(now);
        }
    }

    pub(super) fn release_acks(&mut self) {
        let broker = self.session.broker().clone();
        self.accepted.extend(self.acceptances.release(&broker));
        self.flush_accepted();
    }

    /// Sends the acceptances gathered since the last flush as one frame.
    pub(super) fn flush_accepted(&mut self) {
        let Some((&first, rest)) = self.accepted.split_first() else {
            return;
        };
        let frame = Body::ForwardAck(proto::ForwardAck {
            forward_id: first,
            accepted: true,
            error: String::new(),
            retry: false,
            more: rest.to_vec(),
        });
        self.accepted.clear();
        self.send_frame(frame);
    }
}
