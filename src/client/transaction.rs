//! Transactions: sends and acks staged on the broker until commit, never outliving the
//! connection they began on.

use super::*;

/// An open transaction (see [`Client::begin`]).
pub struct Transaction {
    pub(super) client: Client,
    pub(super) id: u64,
    /// The connection it was begun on: it cannot outlive it.
    pub(super) epoch: u64,
    pub(super) done: bool,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction").field("id", &self.id).finish()
    }
}

impl Transaction {
    fn rolled_back() -> ClientError {
        ClientError::RolledBack(
            "the connection failed over while the transaction was open; the broker rolled it back"
                .into(),
        )
    }

    /// Writes a frame of this transaction, unless the connection it began on is gone.
    pub(super) async fn enqueue(&self, kind: FrameKind, frame: &Frame) -> Result<(), ClientError> {
        let (shared, epoch) = (&self.client.shared, self.epoch);
        self.client
            .shared
            .enqueue(kind, |out| {
                if shared.epoch() != epoch {
                    return Err(Transaction::rolled_back());
                }
                wire::encode(frame, &mut out.buf);
                Ok(())
            })
            .await?
    }

    pub(super) async fn control(
        &self,
        action: proto::TransactionAction,
        wait: WaitKind,
    ) -> Result<(), ClientError> {
        let shared = &self.client.shared;
        let (receipt, rx) = shared.register_receipt(wait);
        let frame = wire::frame(Body::Transaction(proto::Transaction {
            transaction: self.id,
            action: action as i32,
            receipt,
        }));
        if let Err(e) = self.enqueue(FrameKind::Other, &frame).await {
            shared.forget_receipt(receipt);
            return Err(e);
        }
        shared.await_receipt(receipt, rx).await
    }

    /// Sends `msg` as part of the transaction (the broker holds it until the commit).
    pub async fn send(&self, destination: &str, msg: &Outgoing) -> Result<(), ClientError> {
        let shared = &self.client.shared;
        let (producer_id, epoch) = (&shared.producer_id, self.epoch);
        let id = self.id;
        self.client
            .shared
            .enqueue(FrameKind::Send, |out| {
                if shared.epoch() != epoch {
                    return Err(Transaction::rolled_back());
                }
                let sequence = out.next_sequence;
                out.next_sequence += 1;
                let send = proto::Send {
                    destination: destination.to_string(),
                    body: msg.body.clone(),
                    headers: wire::headers_to_wire(&msg.headers),
                    persistent: msg.persistent,
                    priority: msg.priority as u32,
                    expires_at_ms: msg.expires_at_ms,
                    producer_id: producer_id.clone(),
                    sequence,
                    receipt: 0,
                    reply_to: msg.reply_to.clone(),
                    correlation_id: msg.correlation_id.clone(),
                    content_type: msg.content_type.clone(),
                    timestamp_ms: now_ms(),
                    transaction: id,
                };
                wire::encode(&wire::frame(Body::Send(send)), &mut out.buf);
                Ok(())
            })
            .await?
    }

    /// Acknowledges `d` as part of the transaction (it counts when the transaction commits).
    /// Use a `Client` or `ClientIndividual` subscription: `Auto` acknowledges by itself.
    pub async fn ack(&self, d: &Delivery) -> Result<(), ClientError> {
        if d.epoch != self.epoch {
            return Err(Transaction::rolled_back());
        }
        let frame = wire::frame(Body::Ack(proto::Ack {
            subscription: d.subscription,
            up_to: 0,
            tags: vec![d.tag],
            receipt: 0,
            transaction: self.id,
        }));
        self.enqueue(FrameKind::Other, &frame).await
    }

    /// Commits: `Ok` once the broker applied (and stored) everything. `RolledBack` when the
    /// transaction did not survive a failover, or the commit's answer was lost in one.
    pub async fn commit(mut self) -> Result<(), ClientError> {
        self.done = true;
        self.control(proto::TransactionAction::Commit, WaitKind::Commit)
            .await
    }

    /// Rolls back: its sends vanish, what it acknowledged is redelivered.
    pub async fn rollback(mut self) -> Result<(), ClientError> {
        self.done = true;
        match self
            .control(proto::TransactionAction::Rollback, WaitKind::Other)
            .await
        {
            // Whatever ended the connection rolled the transaction back already.
            Err(ClientError::RolledBack(_) | ClientError::Interrupted(_)) => Ok(()),
            other => other,
        }
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let shared = &self.client.shared;
        let mut out = shared.out.lock();
        if out.connected && out.closed.is_none() && shared.epoch() == self.epoch {
            let frame = wire::frame(Body::Transaction(proto::Transaction {
                transaction: self.id,
                action: proto::TransactionAction::Rollback as i32,
                receipt: 0,
            }));
            wire::encode(&frame, &mut out.buf);
            drop(out);
            shared.out_ready.wake();
        }
    }
}
