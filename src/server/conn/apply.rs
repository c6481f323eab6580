//! [`Connection::apply`], the one place a request takes effect, for every protocol:
//! authorize → resolve the destination (once; the codec parsed it) → creation rate → flow
//! control (plain and transactional sends alike) → publish or stage → receipt.

use std::sync::Arc;

use tokio::time::Instant;

use crate::broker::{
    Admission, BrokerError, Destination, DestinationPattern, NewMessage, Published, Target,
};
use crate::security::Action;
use crate::server::request::{Refusal, Request, SendRequest, TxName};
use crate::wire::proto::ErrorCode;

use super::codec::Codec;
use super::transaction::{no_transaction, Tx};
use super::{Accepted, Connection};

impl<C: Codec> Connection<C> {
    /// Checks an ACL action on a destination or pattern; creating a destination that does
    /// not exist yet also needs `Admin`.
    fn authorize(&self, action: Action, pattern: &DestinationPattern) -> Result<(), String> {
        let Some(concrete) = pattern.as_destination() else {
            return self.authorize_pattern(action, pattern);
        };
        self.authorize_destination(action, &concrete)
    }

    fn authorize_pattern(
        &self,
        action: Action,
        pattern: &DestinationPattern,
    ) -> Result<(), String> {
        self.rules
            .authorizer
            .check_pattern(&self.principal, action, pattern)
            .map_err(|d| d.to_string())
    }

    fn authorize_destination(&self, action: Action, dest: &Destination) -> Result<(), String> {
        let authz = &self.rules.authorizer;
        authz
            .check(&self.principal, action, dest)
            .map_err(|d| d.to_string())?;
        if !dest.kind().is_temp() && !self.exists(dest) {
            authz
                .check(&self.principal, Action::Admin, dest)
                .map_err(|d| d.to_string())?;
        }
        Ok(())
    }

    /// Whether `dest` exists; the destination a producer keeps sending to is known to.
    fn exists(&self, dest: &Destination) -> bool {
        self.session.sends_to(dest) || self.session.broker().destination_exists(dest)
    }

    /// Does what one request asks: the only place requests take effect, for every protocol.
    pub(super) fn apply(&mut self, request: Request<C::Receipt>) {
        // Rules replaced while frames were being read apply from the next frame on.
        if self.rules_changed.has_changed().unwrap_or(false) {
            self.ack_held();
            self.recheck_rules();
            if self.closing.is_some() {
                return;
            }
        }
        // Held with the run's other plain acknowledgements of the subscription (see
        // `Connection::held_acks`). Not a cumulative one: applied with individual ones, it
        // could take a delivery they name first, which would then be reported unknown. Matched
        // by reference: every request passes here, and a send is large to move.
        if let Request::Ack {
            subscription,
            up_to: 0,
            tags,
            transaction: None,
            receipt: None,
        } = &request
        {
            if self.in_run && (self.held_acks.is_empty() || self.held_acks_for == *subscription) {
                self.held_acks_for = *subscription;
                self.held_acks.extend_from_slice(tags);
                return;
            }
        }
        // The acknowledgements this run made take effect before anything else it asks.
        self.ack_held();
        if !matches!(request, Request::Send(_)) {
            // What this run sent takes effect before anything else it asks.
            self.publish_held();
        }
        match request {
            Request::Send(send) => self.on_send(send),
            Request::Subscribe { spec, receipt } => {
                if let Err(denied) = self.authorize(Action::Read, &spec.destination) {
                    self.ctx.metrics.denied();
                    return self.error(ErrorCode::Forbidden, &denied, receipt.as_ref(), false);
                }
                if !self.creations.take(Instant::now()) {
                    return self.creation_refused(receipt);
                }
                let before = self.session.last_record();
                let (sub, pattern) = (spec.subscription, spec.destination.clone());
                match self.session.subscribe(spec) {
                    Ok(()) => {
                        self.receipt_after(self.session.record_since(before), receipt);
                        if self.codec.replays_retained() {
                            let retained = self.session.broker().retained_matching(&pattern);
                            if !retained.is_empty() {
                                self.codec
                                    .encode_retained(sub, &retained, &mut self.pump.wbuf);
                            }
                        }
                        self.subscribed.insert(sub, pattern);
                    }
                    Err(e) => {
                        if matches!(e, BrokerError::BadSelector { .. }) {
                            self.ctx.metrics.bad_selector();
                        }
                        self.refuse(&e, receipt)
                    }
                }
            }
            Request::Unsubscribe {
                subscription,
                remove_durable,
                receipt,
            } => {
                let before = self.session.last_record();
                match self.session.unsubscribe(subscription, remove_durable) {
                    Ok(()) => {
                        self.subscribed.remove(&subscription);
                        self.receipt_after(self.session.record_since(before), receipt)
                    }
                    Err(e) => self.refuse(&e, receipt),
                }
            }
            Request::Ack {
                subscription,
                up_to,
                tags,
                transaction: Some(name),
                receipt,
            } => {
                let Some(tx) = self.txs.get_mut(&name) else {
                    return self.error(
                        ErrorCode::NotFound,
                        &no_transaction(&name),
                        receipt.as_ref(),
                        false,
                    );
                };
                if up_to != 0 {
                    return self.error(
                        ErrorCode::Invalid,
                        "inside a transaction, acknowledge deliveries by their tags (not up_to)",
                        receipt.as_ref(),
                        false,
                    );
                }
                tx.acks.extend(tags.iter().map(|tag| (subscription, *tag)));
                self.receipt_after(0, receipt);
            }
            Request::Ack {
                subscription,
                up_to,
                tags,
                transaction: None,
                receipt,
            } => {
                // An acknowledgement's receipt says it took effect: after a crash its messages
                // do not come back. So it waits for the removals' sync, like a send's receipt.
                let before = self.session.last_record();
                match self.session.ack(subscription, up_to, &tags) {
                    Ok(_) => self.receipt_after(self.session.record_since(before), receipt),
                    Err(e) => self.refuse(&e, receipt),
                }
            }
            Request::Nack {
                subscription,
                tags,
                transaction: Some(name),
                receipt,
            } => {
                let Some(tx) = self.txs.get_mut(&name) else {
                    return self.error(
                        ErrorCode::NotFound,
                        &no_transaction(&name),
                        receipt.as_ref(),
                        false,
                    );
                };
                tx.nacks.extend(tags.iter().map(|tag| (subscription, *tag)));
                self.receipt_after(0, receipt);
            }
            Request::Nack {
                subscription,
                tags,
                transaction: None,
                receipt,
            } => match self.session.nack(subscription, &tags) {
                Ok(_) => self.receipt_after(0, receipt),
                Err(e) => self.refuse(&e, receipt),
            },
            Request::Begin {
                transaction,
                receipt,
            } => {
                if self.txs.contains_key(&transaction) {
                    return self.error(
                        ErrorCode::Invalid,
                        &format!("transaction {transaction} is already open"),
                        receipt.as_ref(),
                        false,
                    );
                }
                self.txs.insert(transaction, Tx::default());
                self.receipt_after(0, receipt);
            }
            Request::Commit {
                transaction,
                receipt,
            } => match self.txs.remove(&transaction) {
                Some(tx) => {
                    self.codec.committed_acks(&tx.acks);
                    let index = tx.commit(&mut self.session);
                    self.receipt_after(index, receipt);
                }
                None => self.error(
                    ErrorCode::NotFound,
                    &no_transaction(&transaction),
                    receipt.as_ref(),
                    false,
                ),
            },
            Request::Abort {
                transaction,
                receipt,
            } => match self.txs.remove(&transaction) {
                Some(tx) => {
                    tx.abort(&mut self.session);
                    self.receipt_after(0, receipt);
                }
                None => self.error(
                    ErrorCode::NotFound,
                    &no_transaction(&transaction),
                    receipt.as_ref(),
                    false,
                ),
            },
            Request::Ping { receipt } => self.receipt_after(0, Some(receipt)),
            Request::Disconnect { receipt } => {
                self.receipt_after(0, receipt);
                // A client may reconnect (with the same client id, to the same durable
                // subscriptions) the moment it reads its DISCONNECT receipt, which is written
                // after this: the session ends now, not once the socket has closed.
                self.end_session();
                self.disconnecting = true;
            }
            Request::Refuse { refusal, receipt } => match refusal {
                Refusal::BadFrame {
                    code,
                    message,
                    fatal,
                } => {
                    self.ctx.metrics.bad_frame();
                    self.error(code, &message, receipt.as_ref(), fatal);
                }
                Refusal::Invalid { code, message } => {
                    self.error(code, &message, receipt.as_ref(), false)
                }
                Refusal::Send(e) => {
                    self.ctx.metrics.send_refused(&e);
                    self.refuse(&e, receipt);
                }
            },
        }
    }

    /// A send: authorized, resolved, built, then through flow control — transactional or not.
    fn on_send(&mut self, send: SendRequest<C::Receipt>) {
        let SendRequest {
            destination,
            draft,
            transaction,
            receipt,
        } = send;
        if let Err(denied) = self.authorize_destination(Action::Write, &destination) {
            self.ctx.metrics.denied();
            return self.error(ErrorCode::Forbidden, &denied, receipt.as_ref(), false);
        }
        if !destination.kind().is_temp()
            && !self.exists(&destination)
            && !self.creations.take(Instant::now())
        {
            return self.creation_refused(receipt);
        }
        let target = match self.session.target(&destination) {
            Ok(t) => t,
            Err(e) => {
                self.ctx.metrics.send_refused(&e);
                return self.refuse(&e, receipt);
            }
        };
        let message = match self.builder.build(draft) {
            Ok(m) => m,
            Err(e) => {
                self.ctx.metrics.send_refused(&e);
                return self.refuse(&e, receipt);
            }
        };
        if let Some(name) = &transaction {
            if !self.txs.contains_key(name) {
                let message = no_transaction(name);
                return self.error(ErrorCode::NotFound, &message, receipt.as_ref(), false);
            }
        }
        // An `Accepted` is built only for a send that waits.
        match self.session.admit(&target, message.persistent) {
            Admission::Now => self.take(target, message, transaction, receipt),
            Admission::Wait => {
                self.publish_held();
                self.ctx.metrics.producer_blocked();
                self.blocked = Some(Box::new(Accepted {
                    target,
                    message,
                    transaction,
                    receipt,
                }));
            }
            Admission::Refuse(e) => {
                self.ctx.metrics.send_refused(&e);
                self.refuse(&e, receipt);
            }
        }
    }

    /// Takes a send that has room: stages it in its transaction, or publishes it.
    #[inline(always)]
    fn take(
        &mut self,
        target: Target,
        message: NewMessage,
        transaction: Option<TxName>,
        receipt: Option<C::Receipt>,
    ) {
        if let Some(name) = transaction {
            return match self.session.stage(&target, message) {
                Ok(staged) => {
                    self.received += 1;
                    self.count_producer();
                    if let Some(tx) = self.txs.get_mut(&name) {
                        tx.sends.extend(staged);
                    }
                    self.receipt_after(0, receipt);
                }
                Err(e) => {
                    self.ctx.metrics.send_refused(&e);
                    self.refuse(&e, receipt);
                }
            };
        }
        if receipt.is_none() {
            let same = match (&self.held_for, &target) {
                (Some(Target::Topic(held)), Target::Topic(t)) => Arc::ptr_eq(held, t),
                (Some(Target::Queue(held)), Target::Queue(q)) => Arc::ptr_eq(held, q),
                (Some(_), _) => false,
                (None, _) => self.held.is_empty(),
            };
            if !same {
                self.publish_held();
            }
            match self.session.stage(&target, message) {
                Ok(staged) => {
                    self.received += 1;
                    self.count_producer();
                    if let Some((target, msg)) = staged {
                        self.held.push(msg);
                        self.held_for = Some(target);
                    }
                }
                Err(e) => {
                    self.ctx.metrics.send_refused(&e);
                    self.refuse(&e, receipt);
                }
            }
            return;
        }
        self.publish_held();
        match self.session.publish(&target, message) {
            Ok(published) => {
                self.received += 1;
                self.count_producer();
                let index = match published {
                    Published::Pending(index) => index,
                    Published::Accepted | Published::Duplicate => 0,
                };
                self.receipt_after(index, receipt);
            }
            Err(e) => {
                self.ctx.metrics.send_refused(&e);
                self.refuse(&e, receipt);
            }
        }
    }

    /// Applies the acknowledgements held back from this run (see `Connection::held_acks`),
    /// together. A tag not in flight is refused as one would be alone.
    pub(super) fn ack_held(&mut self) {
        if self.held_acks.is_empty() {
            return;
        }
        let tags = std::mem::take(&mut self.held_acks);
        if let Err(e) = self.session.ack(self.held_acks_for, 0, &tags) {
            self.refuse(&e, None);
        }
        self.held_acks = tags;
        self.held_acks.clear();
    }

    /// Publishes the sends held back from this run (see `Connection::held`), in order.
    pub(super) fn publish_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        if let Some(target) = self.held_for.take() {
            self.session.publish_run(&target, &mut self.held);
        }
        self.held.clear();
    }

    pub(super) fn retry_blocked(&mut self) {
        if let Some(b) = self.blocked.take() {
            if self.session.has_room(&b.target, b.message.persistent) {
                let Accepted {
                    target,
                    message,
                    transaction,
                    receipt,
                } = *b;
                self.take(target, message, transaction, receipt);
            } else {
                self.blocked = Some(b);
            }
        }
    }
}
