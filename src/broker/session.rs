//! A session: one connection's view of the broker — publishing (one at a time or staged in a
//! transaction), acknowledging, and closing, which returns what the connection held.
//!
//! Owns: [`Session`], its subscriptions' handles, its temporary destinations and its client id
//! claim. Must not touch: sockets or protocol state (a connection drives it). Subscribing lives
//! in `subscription.rs`. Invariant: a closed session holds nothing — its unacknowledged queue
//! deliveries are back in their queues, its temporary destinations and client id are gone.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::demand::SubDemand;
use super::{
    now_ms, AckOutcome, Admission, Broker, BrokerError, Destination, Effects, Kind, Message,
    NewMessage, OnFull, Outbox, Published, SubHandle, Target, MAX_PRIORITY,
};

/// One connection's view of the broker. Dropping it closes it.
#[derive(Debug)]
pub struct Session {
    pub(super) broker: Broker,
    pub(super) id: u64,
    pub(super) connection_id: String,
    /// Who logged in (`None`: anonymous): whose claims this session's names are.
    pub(super) user: Option<String>,
    pub(super) client_id: Option<String>,
    pub(super) outbox: Arc<Outbox>,
    pub(super) subs: HashMap<u64, SubHandle>,
    /// The demand each subscription registered.
    pub(super) demand_ids: HashMap<u64, SubDemand>,
    pub(super) temps: Vec<Target>,
    /// Stand-ins for temporary queues and topics of other groups, by the network subscription
    /// that made each (see `queue_for_consumer`): deleted when it ends.
    pub(super) stand_ins: HashMap<u64, Target>,
    /// Connection ids of a failover client's earlier connections: it keeps naming its
    /// temporary destinations after the first, and may re-create them here.
    pub(super) temp_prefixes: Vec<String>,
    pub(super) last_target: Option<Target>,
    /// The high-water mark of the producer this session last published for.
    pub(super) producer_mark: super::persist::CachedMark,
    /// A failover client's sends below this producer sequence are re-sends of sends another
    /// group may hold already: accepted flagged redelivered (0 = none).
    pub(super) resends_below: u64,
    /// Index of the last journal record this session's operations appended (0 = none).
    pub(super) last_record: u64,
    pub(super) closed: bool,
}

impl Session {
    /// The last journal record this session appended: a receipt for the operation that
    /// appended it waits until the journal has synced it.
    pub fn last_record(&self) -> u64 {
        self.last_record
    }

    /// The journal record appended since `before` (a [`Session::last_record`] taken before an
    /// operation), which the operation's receipt must wait for; 0 when it appended none.
    pub fn record_since(&self, before: u64) -> u64 {
        if self.last_record != before {
            self.last_record
        } else {
            0
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Broker-assigned id; prefixes this connection's temporary destination names.
    pub fn connection_id(&self) -> &str {
        &self.connection_id
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    pub fn subscription_count(&self) -> usize {
        self.subs.len()
    }

    /// Deletes a temporary destination (or a stand-in for one): it is gone for senders, and
    /// what it held goes with it.
    pub(super) fn delete_temp(&self, temp: Target) {
        match temp {
            Target::Queue(q) => {
                self.broker
                    .inner
                    .queues
                    .remove_if(q.dest.as_str(), |_, held| Arc::ptr_eq(held, &q));
                q.delete();
            }
            Target::Topic(t) => {
                self.broker
                    .inner
                    .topics
                    .remove_if(t.dest.as_str(), |_, held| Arc::ptr_eq(held, &t));
                let mut effects = Effects::default();
                for sub in t.delete() {
                    sub.clear(&mut effects);
                }
                self.broker.apply(effects);
            }
        }
    }

    pub(super) fn owns_temp_name(&self, dest: &Destination) -> bool {
        std::iter::once(&self.connection_id)
            .chain(&self.temp_prefixes)
            .any(|prefix| {
                dest.name()
                    .strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
            })
    }

    /// A failover client reconnected here from another group and starts by re-sending what
    /// that group never receipted (producer sequences below `sequence`): that group may hold
    /// them already, and its producer marks are not ours, so they cannot be dropped as
    /// duplicates here. They are accepted flagged redelivered instead, so a consumer that gets
    /// both copies sees the later one as a possible duplicate (at-least-once, never a second
    /// first delivery).
    pub fn flag_resends_below(&mut self, sequence: u64) {
        self.resends_below = sequence;
    }

    /// The connection ends before it confirmed all its work: the receipts (or a bridge's
    /// acceptances) of what this session journaled after record `confirmed` never went out,
    /// so its peer holds those sends in doubt and sends them again — to another group, where
    /// they are accepted flagged (see [`Session::flag_resends_below`]), or, for a bridge, from
    /// the source's queue, flagged. The originals here may then be delivered after such a
    /// copy, so those not yet delivered are flagged redelivered too, and a copy delivered
    /// after another is never an unflagged first delivery. Delivered ones were the first copy.
    pub fn flag_unconfirmed(&self, confirmed: u64) {
        if self.last_record > confirmed {
            self.broker
                .flag_in_doubt(self.id, confirmed, self.last_record);
        }
    }

    /// Lets this session create (and own) temporary destinations named after a failover
    /// client's earlier connection ids. An empty prefix is ignored. Refused, adopting none,
    /// when another user claimed one of them, or one is a connection id this broker has not
    /// issued yet (claiming it would take a future connection's names).
    pub fn adopt_temp_prefixes(&mut self, prefixes: Vec<String>) -> Result<(), BrokerError> {
        let claims = &self.broker.inner.temp_claims;
        let issued = self.broker.inner.next_connection.load(Ordering::Relaxed);
        let mine = format!("ID-{}-", self.broker.inner.run_id);
        let mut adopted: Vec<String> = Vec::new();
        for prefix in prefixes.into_iter().filter(|p| !p.is_empty()) {
            let future = prefix
                .strip_prefix(&mine)
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n >= issued);
            let taken = !future
                && (adopted.contains(&prefix)
                    || claims.take(&prefix, self.user.as_deref()).is_ok());
            if !taken {
                for p in &adopted {
                    claims.release(p, self.user.as_deref());
                }
                return Err(BrokerError::TempPrefixOwned(prefix));
            }
            if !adopted.contains(&prefix) {
                adopted.push(prefix);
            }
        }
        for p in std::mem::replace(&mut self.temp_prefixes, adopted) {
            claims.release(&p, self.user.as_deref());
        }
        Ok(())
    }

    /// Whether `dest` is the destination this session last resolved with [`Session::target`],
    /// still live: then it exists, and a producer's every send need not look it up among the
    /// broker's destinations again.
    pub fn sends_to(&self, dest: &Destination) -> bool {
        self.last_target
            .as_ref()
            .is_some_and(|t| t.destination() == dest && !t.is_deleted())
    }

    /// Resolves a destination to publish to. Ordinary destinations are created on first use;
    /// a temporary one must exist.
    pub fn target(&mut self, dest: &Destination) -> Result<Target, BrokerError> {
        if let Some(t) = &self.last_target {
            if t.destination() == dest && !t.is_deleted() {
                return Ok(t.clone());
            }
        }
        let target = match dest.kind() {
            Kind::Queue => Target::Queue(self.broker.queue(dest, 0)),
            Kind::Topic => Target::Topic(self.broker.topic(dest, 0)),
            Kind::TempQueue => Target::Queue(
                self.broker
                    .inner
                    .queues
                    .get(dest.as_str())
                    .map(|q| q.clone())
                    .ok_or_else(|| BrokerError::NotFound(dest.to_string()))?,
            ),
            Kind::TempTopic => Target::Topic(
                self.broker
                    .inner
                    .topics
                    .get(dest.as_str())
                    .map(|t| t.clone())
                    .ok_or_else(|| BrokerError::NotFound(dest.to_string()))?,
            ),
        };
        if target.is_deleted() {
            return Err(BrokerError::NotFound(dest.to_string()));
        }
        self.last_target = Some(target.clone());
        Ok(target)
    }

    /// True when there is room for a message: in memory for a message kept in memory; in the
    /// journal for one that is journaled (memory then pages it out as needed).
    pub fn has_room(&self, target: &Target, persistent: bool) -> bool {
        self.broker.has_room(target, persistent)
    }

    /// The one full-destination decision, for every producer and every bridge: take the
    /// message now, wait for room, or refuse it (the destination's `on_full`). A bridge never
    /// waits (its link carries other destinations too): it treats `Wait` as "try again later".
    pub fn admit(&self, target: &Target, persistent: bool) -> Admission {
        if self.has_room(target, persistent) {
            return Admission::Now;
        }
        match target.on_full() {
            OnFull::Block => Admission::Wait,
            OnFull::Fail => Admission::Refuse(self.full_error(target, persistent)),
        }
    }

    /// What refuses a send when `has_room` said no: the journal for a message it would hold,
    /// the memory limit otherwise.
    pub fn full_error(&self, target: &Target, persistent: bool) -> BrokerError {
        let destination = target.destination().to_string();
        if self.broker.needs_journal_room(target, persistent) {
            BrokerError::JournalFull { destination }
        } else {
            BrokerError::Full { destination }
        }
    }

    /// Checks a message and stamps it for `target` as the broker keeps it: its destination,
    /// the connection it came from, when it arrived, and its memory charge. False when it is a
    /// producer re-send (drop it).
    fn stamp(&mut self, target: &Target, msg: &mut Message) -> Result<bool, BrokerError> {
        if msg.priority > MAX_PRIORITY {
            return Err(BrokerError::BadPriority(msg.priority as u32));
        }
        if self.is_resend(msg) {
            return Ok(false);
        }
        if msg.sequence != 0 && msg.sequence < self.resends_below && !msg.sequence_checked {
            msg.redeliveries = msg.redeliveries.max(1);
        }
        msg.origin = self.id;
        if msg.received_ms == 0 {
            msg.received_ms = now_ms();
        }
        msg.destination = Some(target.destination().clone());
        msg.charge = self
            .broker
            .inner
            .memory
            .charge(msg.memory_size(), target.counters());
        Ok(true)
    }

    /// Accepts a message onto a target: charges its memory, then queues or fans it out — or
    /// journals it, to become visible once durable. A re-send (its producer sequence is not
    /// above the producer's mark) is dropped as a duplicate. A topic message published here
    /// that feeds queues (`feed.rs`) is committed with its copies, as one transaction. Flow
    /// control is the caller's: check `has_room` (and wait or refuse) first.
    pub fn publish(
        &mut self,
        target: &Target,
        msg: impl Into<NewMessage>,
    ) -> Result<Published, BrokerError> {
        let mut msg = msg.into();
        if !self.stamp(target, &mut msg)? {
            return Ok(Published::Duplicate);
        }
        Ok(self.publish_stamped(target, msg))
    }

    /// Publishes messages [`Session::stage`]d for `target`, in order, as [`Session::publish`]
    /// would one by one; what each one's receipt would wait for is the session's last record
    /// (the caller holds back only sends that want no receipt). A run of plain messages (not
    /// journaled, not retained, feeding no queue) goes in at once: a topic offers it to each
    /// subscription with one lock, one pump and one wake-up per subscription for the run; a
    /// queue takes it with one lock and one dispatch round — not one each per message.
    /// `msgs` is left empty, its room kept.
    pub fn publish_run(&mut self, target: &Target, msgs: &mut Vec<NewMessage>) {
        // Held over the run, as `publish` holds it over one message (a checkpoint sees each
        // message either journaled or not yet decided).
        let broker = self.broker.clone();
        let _gate = broker.gate();
        let mut plain: Vec<Arc<Message>> = Vec::with_capacity(msgs.len());
        let mut effects = Effects::default();
        let publish_plain = |plain: &mut Vec<Arc<Message>>, effects: &mut Effects| match target {
            Target::Topic(topic) => {
                topic.publish_all(plain, effects);
                plain.clear();
            }
            Target::Queue(queue) => queue.enqueue_all(plain, effects),
        };
        for msg in msgs.drain(..) {
            let is_plain =
                !msg.is_retained() && !broker.journals(target, &msg) && !broker.feeds(target, &msg);
            if is_plain {
                plain.push(msg.into_shared());
                continue;
            }
            publish_plain(&mut plain, &mut effects);
            self.publish_stamped(target, msg);
        }
        publish_plain(&mut plain, &mut effects);
        broker.apply(effects);
    }

    /// `publish` past the stamp: queues, fans out or journals a stamped message.
    fn publish_stamped(&mut self, target: &Target, mut msg: NewMessage) -> Published {
        let copies = self.broker.fed_copies(target, &msg);
        let _gate = self.broker.gate();
        if !copies.is_empty() {
            // Staged with its copies, so its receipt waits for them too (`feed.rs`).
            let sends = std::iter::once((target.clone(), msg))
                .chain(copies)
                .collect();
            let index = self.broker.commit_transaction(sends, |_| {});
            if index == 0 {
                return Published::Accepted;
            }
            self.last_record = index;
            return Published::Pending(index);
        }
        if self.broker.journals(target, &msg) {
            let index = self.broker.journal_publish(target, msg);
            self.last_record = index;
            return Published::Pending(index);
        }
        let mut retained = None;
        if self.broker.journals_retained(target, &msg) {
            // Delivered at once like any topic message; what the topic keeps is journaled,
            // and a persistent publish's receipt waits for that.
            let index = self.broker.journal_retained(&mut msg, 0);
            self.last_record = index;
            retained = msg.persistent.then_some(index);
        }
        let mut effects = Effects::default();
        match target {
            Target::Queue(q) => q.enqueue(msg.into_shared(), &mut effects),
            Target::Topic(t) => t.publish(msg.into_shared(), &mut effects),
        }
        self.broker.apply(effects);
        retained.map_or(Published::Accepted, Published::Pending)
    }

    fn handle(&self, subscription: u64) -> Result<&SubHandle, BrokerError> {
        self.subs
            .get(&subscription)
            .ok_or(BrokerError::NoSuchSubscription(subscription))
    }

    /// Acknowledges every delivery with tag <= `up_to` (cumulative) and each of `tags`.
    pub fn ack(
        &mut self,
        subscription: u64,
        up_to: u64,
        tags: &[u64],
    ) -> Result<AckOutcome, BrokerError> {
        let mut dead = Effects::default();
        let outcome = match self.handle(subscription)? {
            SubHandle::Queue { queue, slot } => queue.ack(*slot, up_to, tags, &mut dead),
            SubHandle::Topic { sub } => sub.ack(up_to, tags, &mut dead),
        };
        // The removals are journaled unwaited (nobody needs their sync unless a receipt
        // does): `last_record` lets an acknowledgement's receipt wait for them.
        let index = self.broker.apply(dead);
        if index != 0 {
            self.last_record = index;
        }
        Self::check_known(subscription, outcome)
    }

    /// Returns deliveries for redelivery (to the DLQ past `max_redeliveries`).
    pub fn nack(&mut self, subscription: u64, tags: &[u64]) -> Result<AckOutcome, BrokerError> {
        let _gate = self.broker.gate();
        let mut dead = Effects::default();
        let outcome = match self.handle(subscription)? {
            SubHandle::Queue { queue, slot } => queue.nack(*slot, tags, &mut dead),
            SubHandle::Topic { sub } => sub.nack(tags, &mut dead),
        };
        self.broker.apply(dead);
        Self::check_known(subscription, outcome)
    }

    fn check_known(subscription: u64, outcome: AckOutcome) -> Result<AckOutcome, BrokerError> {
        if outcome.unknown > 0 {
            return Err(BrokerError::UnknownDelivery {
                subscription,
                unknown: outcome.unknown,
            });
        }
        Ok(outcome)
    }

    /// True when `msg` repeats what its producer already sent here (its sequence is not above
    /// the producer's mark). Forwarded messages are checked by `Broker::first_forward` instead.
    fn is_resend(&mut self, msg: &Message) -> bool {
        msg.sequence != 0
            && !msg.sequence_checked
            && !msg.producer_id.is_empty()
            && !self.broker.inner.producers.advance_cached(
                &mut self.producer_mark,
                &msg.producer_id,
                msg.sequence,
            )
    }

    /// Accepts a message that arrived over a bridge: like `publish`, without the producer's
    /// high-water mark (forwards of one producer may arrive out of order; duplicates are
    /// caught by `Broker::first_forward`).
    pub fn publish_forwarded(
        &mut self,
        target: &Target,
        msg: impl Into<NewMessage>,
    ) -> Result<Published, BrokerError> {
        let mut msg = msg.into();
        msg.sequence_checked = true;
        self.publish(target, msg)
    }

    /// Prepares a message for a transaction: checks and stamps it as `publish` would, without
    /// making it visible. `None` when it is a producer re-send (drop it).
    pub fn stage(
        &mut self,
        target: &Target,
        msg: impl Into<NewMessage>,
    ) -> Result<Option<(Target, NewMessage)>, BrokerError> {
        let mut msg = msg.into();
        if !self.stamp(target, &mut msg)? {
            return Ok(None);
        }
        Ok(Some((target.clone(), msg)))
    }

    /// Commits staged sends and acknowledgements `(subscription, tag)` together. Returns the
    /// journal index the commit's receipt must wait for (0: none).
    pub fn commit(&mut self, sends: Vec<(Target, NewMessage)>, acks: &[(u64, u64)]) -> u64 {
        let broker = self.broker.clone();
        let sends = sends
            .into_iter()
            .flat_map(|(target, msg)| {
                let copies = broker.fed_copies(&target, &msg);
                std::iter::once((target, msg)).chain(copies)
            })
            .collect();
        let _gate = broker.gate();
        let subs = &self.subs;
        let index = broker.commit_transaction(sends, |effects| {
            for (sub, tag) in acks {
                match subs.get(sub) {
                    Some(SubHandle::Queue { queue, slot }) => {
                        queue.ack(*slot, 0, &[*tag], effects);
                    }
                    Some(SubHandle::Topic { sub }) => {
                        sub.ack(0, &[*tag], effects);
                    }
                    None => {}
                }
            }
        });
        if index != 0 {
            self.last_record = index;
        }
        index
    }

    /// Closes the session: subscriptions end (unacknowledged messages return to their queues
    /// as redelivered), temporary destinations are deleted, the client id is freed.
    /// Idempotent; also done on drop.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.outbox.close();
        for d in std::mem::take(&mut self.demand_ids)
            .into_values()
            .flat_map(|sd| sd.ids)
        {
            self.broker.remove_demand(d);
        }
        for (_, handle) in std::mem::take(&mut self.subs) {
            self.release(handle, false);
        }
        drop(self.outbox.take_all());
        let temps = std::mem::take(&mut self.temps);
        let stand_ins = std::mem::take(&mut self.stand_ins).into_values();
        for temp in temps.into_iter().chain(stand_ins) {
            self.delete_temp(temp);
        }
        if let Some(cid) = &self.client_id {
            let inner = &self.broker.inner;
            if inner
                .client_ids
                .remove_if(cid, |_, (id, _)| *id == self.id)
                .is_some()
            {
                inner.client_id_claims.release(cid, self.user.as_deref());
            }
        }
        let user = self.user.as_deref();
        for prefix in std::iter::once(&self.connection_id).chain(&self.temp_prefixes) {
            self.broker.inner.temp_claims.release(prefix, user);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}
