//! Subscriptions: how a session subscribes to a queue, a topic or a topic pattern — durable or
//! not, local or a network consumer standing for remote ones — and unsubscribes; and the
//! broker's side of topic subscriptions and durable subscriptions.
//!
//! Owns: [`SubscribeSpec`], a session's subscription handles, the durable subscription records
//! journaled as they are added and removed. Must not touch: protocol state. Invariant: a topic
//! subscription is attached to every topic its pattern matches, those created later included,
//! and each subscription's demand is registered while it lives.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::demand::SubDemand;
use super::queue::{self, Queue};
use super::{
    Broker, BrokerError, Destination, DestinationLimits, DestinationPattern, Effects, Kind,
    NetworkFilter, NetworkSpec, Record, RecordKind, Selector, Session, Target, Topic, TopicSub,
};

/// What a subscription is attached to.
#[derive(Debug)]
pub(super) enum SubHandle {
    Queue { queue: Arc<Queue>, slot: usize },
    Topic { sub: Arc<TopicSub> },
}

/// A subscription request, in broker terms.
#[derive(Debug, Clone)]
pub struct SubscribeSpec {
    pub subscription: u64,
    pub destination: DestinationPattern,
    pub selector: String,
    /// 0 = the destination's default.
    pub prefetch: u32,
    pub priority: i32,
    pub durable_name: Option<String>,
    pub no_local: bool,
}

impl SubscribeSpec {
    /// The subscription's selector, parsed; `None` when it has none (an empty or blank
    /// selector is none, as in JMS).
    fn parse_selector(&self) -> Result<Option<Arc<Selector>>, BrokerError> {
        if self.selector.trim().is_empty() {
            return Ok(None);
        }
        Selector::parse(&self.selector)
            .map(|s| Some(Arc::new(s)))
            .map_err(|error| BrokerError::BadSelector {
                destination: self.destination.to_string(),
                selector: self.selector.clone(),
                error,
            })
    }
}

impl Session {
    pub fn subscribe(&mut self, spec: SubscribeSpec) -> Result<(), BrokerError> {
        self.subscribe_with(spec, None)
    }

    /// A network consumer: a subscription that forwards to another group.
    pub fn subscribe_network(
        &mut self,
        spec: SubscribeSpec,
        net: NetworkSpec,
    ) -> Result<(), BrokerError> {
        self.subscribe_with(spec, Some(net))
    }

    fn subscribe_with(
        &mut self,
        spec: SubscribeSpec,
        net: Option<NetworkSpec>,
    ) -> Result<(), BrokerError> {
        if self.subs.contains_key(&spec.subscription) {
            return Err(BrokerError::SubscriptionExists(spec.subscription));
        }
        let max = self
            .broker
            .inner
            .settings
            .read()
            .max_subscriptions_per_connection;
        if self.subs.len() >= max {
            return Err(BrokerError::TooManySubscriptions(max));
        }
        let selector = spec.parse_selector()?;
        let selector_text = selector.as_ref().map(|s| Arc::<str>::from(s.text()));
        let pattern = spec.destination.clone();
        let kind = pattern.kind();
        if kind.is_queue() && spec.durable_name.is_some() {
            return Err(BrokerError::DurableOnQueue(spec.destination.to_string()));
        }
        let broker = self.broker.clone();
        let _gate = broker.gate();
        let mut dead = Effects::default();
        let handle = if kind.is_queue() {
            let Some(dest) = pattern.as_destination() else {
                return Err(BrokerError::WildcardQueue(spec.destination.to_string()));
            };
            let queue = self.queue_for_consumer(&dest, spec.subscription, net.is_some())?;
            let prefetch = if spec.prefetch == 0 {
                queue.limits().prefetch
            } else {
                spec.prefetch
            };
            let slot = queue.add_consumer(
                self.outbox.clone(),
                spec.subscription,
                prefetch,
                spec.priority,
                queue::Takes {
                    filter: net.as_ref().map(|n| n.filter.clone()),
                    selectors: selector.into_iter().collect(),
                },
                &mut dead,
            );
            SubHandle::Queue { queue, slot }
        } else {
            self.subscribe_topic(
                &spec,
                pattern,
                net.as_ref().map(|n| n.filter.clone()),
                selector,
                &mut dead,
            )?
        };
        self.subs.insert(spec.subscription, handle);
        let ids = if net.is_none() {
            vec![self.broker.add_demand(
                spec.destination.to_string(),
                Vec::new(),
                spec.priority,
                None,
                selector_text,
            )]
        } else {
            Vec::new()
        };
        self.demand_ids.insert(
            spec.subscription,
            SubDemand {
                destination: spec.destination.to_string(),
                priority: spec.priority,
                ids,
            },
        );
        self.broker.apply(dead);
        Ok(())
    }

    /// Registers one remote consumer a network consumer stands for, by the path its demand
    /// came (first element: the consumer's group) and its selector (relayed with it); returns
    /// the demand's id.
    pub fn add_network_demand(
        &mut self,
        subscription: u64,
        path: Vec<Arc<str>>,
        origin: Option<Arc<str>>,
        selector: Option<Arc<str>>,
    ) -> Result<u64, BrokerError> {
        let sd = self
            .demand_ids
            .get_mut(&subscription)
            .ok_or(BrokerError::NoSuchSubscription(subscription))?;
        let id =
            self.broker
                .add_demand(sd.destination.clone(), path, sd.priority, origin, selector);
        sd.ids.push(id);
        Ok(id)
    }

    /// What a network consumer takes: the messages any of `selectors` matches, or every
    /// message when the list is empty (some consumer it stands for has no selector). Called
    /// as its remote consumers come and go; a queue then dispatches again.
    pub fn set_network_selectors(&mut self, subscription: u64, selectors: Vec<Arc<Selector>>) {
        let _gate = self.broker.gate();
        let mut effects = Effects::default();
        match self.subs.get(&subscription) {
            Some(SubHandle::Queue { queue, slot }) => {
                queue.set_selectors(*slot, selectors, &mut effects)
            }
            Some(SubHandle::Topic { sub }) => sub.set_selectors(selectors),
            None => {}
        }
        self.broker.apply(effects);
    }

    /// Withdraws one remote consumer's demand (the network consumer itself stays).
    pub fn remove_network_demand(&mut self, subscription: u64, demand: u64) {
        if let Some(sd) = self.demand_ids.get_mut(&subscription) {
            if let Some(i) = sd.ids.iter().position(|d| *d == demand) {
                sd.ids.swap_remove(i);
                self.broker.remove_demand(demand);
            }
        }
    }

    /// How many deliveries in a row a queue network consumer gets when its turn comes: the
    /// number of consumers it stands for, so a queue's split follows the consumers.
    pub fn set_network_weight(&mut self, subscription: u64, weight: u32) {
        if let Some(SubHandle::Queue { queue, slot }) = self.subs.get(&subscription) {
            queue.set_weight(*slot, weight);
        }
    }

    /// The queue a consumer (a network one when `network`) of `dest` reads. A temporary queue
    /// is read by its owner alone — and by network consumers, which forward to the group its
    /// owner is on: there a temporary queue of another group gets a stand-in, so that a
    /// responder here can send to it (request/reply across groups); the stand-in lives as long
    /// as the network `subscription` that made it. Temporary topics follow the same rule
    /// (`temp_topic_for_consumer`).
    fn queue_for_consumer(
        &mut self,
        dest: &Destination,
        subscription: u64,
        network: bool,
    ) -> Result<Arc<Queue>, BrokerError> {
        if dest.kind() != Kind::TempQueue {
            return Ok(self.broker.queue(dest, 0));
        }
        if let Some(q) = self.broker.inner.queues.get(dest.as_str()) {
            if q.owner != self.id && !network {
                return Err(BrokerError::NotOwner(dest.to_string()));
            }
            return Ok(q.clone());
        }
        if network {
            let q = self.broker.queue(dest, self.id);
            self.stand_ins
                .insert(subscription, Target::Queue(q.clone()));
            return Ok(q);
        }
        if !self.owns_temp_name(dest) {
            return Err(BrokerError::NotOwner(dest.to_string()));
        }
        let q = self.broker.queue(dest, self.id);
        self.temps.push(Target::Queue(q.clone()));
        Ok(q)
    }

    fn subscribe_topic(
        &mut self,
        spec: &SubscribeSpec,
        pattern: DestinationPattern,
        filter: Option<NetworkFilter>,
        selector: Option<Arc<Selector>>,
        dead: &mut Effects,
    ) -> Result<SubHandle, BrokerError> {
        let broker = self.broker.clone();
        let limits = broker.limits_for_pattern(&pattern);
        let prefetch = if spec.prefetch == 0 {
            limits.prefetch
        } else {
            spec.prefetch
        };
        if let Some(name) = &spec.durable_name {
            let client_id = self
                .client_id
                .clone()
                .ok_or(BrokerError::DurableNeedsClientId)?;
            let key = (client_id.clone(), name.clone());
            let selector_text = selector.as_ref().map(|s| s.text().to_string());
            if let Some(existing) = broker.inner.durables.get(&key).map(|d| d.clone()) {
                let same_selector =
                    existing.selector().map(|s| s.text().to_string()) == selector_text;
                if existing.pattern == pattern && same_selector {
                    if !existing.attach_consumer(
                        self.outbox.clone(),
                        spec.subscription,
                        prefetch,
                        self.id,
                        dead,
                    ) {
                        return Err(BrokerError::DurableInUse {
                            client_id,
                            name: name.clone(),
                        });
                    }
                    return Ok(SubHandle::Topic { sub: existing });
                }
                // Subscribing under the same name to another topic, or with another selector,
                // replaces the subscription (JMS 1.1 §6.11.1).
                if existing.is_active() {
                    return Err(BrokerError::DurableInUse {
                        client_id,
                        name: name.clone(),
                    });
                }
                broker.remove_topic_sub(&existing, dead);
                broker.inner.durables.remove(&key);
                self.last_record = broker.journal_record(durable_removed(&key));
            }
            let sub = self.new_topic_sub(
                pattern.clone(),
                Some(key.clone()),
                spec,
                &limits,
                None,
                selector,
            )?;
            broker.inner.durables.insert(key.clone(), sub.clone());
            self.last_record = broker.journal_record(Record {
                kind: Some(RecordKind::DurableAdded(
                    crate::store::proto::DurableAdded {
                        client_id: key.0,
                        name: key.1,
                        pattern: pattern.as_str().to_string(),
                        no_local: spec.no_local,
                        selector: selector_text.unwrap_or_default(),
                    },
                )),
                tx: 0,
            });
            sub.attach_consumer(
                self.outbox.clone(),
                spec.subscription,
                prefetch,
                self.id,
                dead,
            );
            return Ok(SubHandle::Topic { sub });
        }
        let sub = self.new_topic_sub(pattern, None, spec, &limits, filter, selector)?;
        sub.attach_consumer(
            self.outbox.clone(),
            spec.subscription,
            prefetch,
            self.id,
            dead,
        );
        Ok(SubHandle::Topic { sub })
    }

    fn new_topic_sub(
        &mut self,
        pattern: DestinationPattern,
        durable: Option<(String, String)>,
        spec: &SubscribeSpec,
        limits: &DestinationLimits,
        filter: Option<NetworkFilter>,
        selector: Option<Arc<Selector>>,
    ) -> Result<Arc<TopicSub>, BrokerError> {
        if let Some(dest) = pattern
            .as_destination()
            .filter(|d| d.kind() == Kind::TempTopic)
        {
            let topic = self.temp_topic_for_consumer(&dest, spec.subscription, filter.is_some())?;
            let id = self
                .broker
                .inner
                .next_topic_sub
                .fetch_add(1, Ordering::Relaxed);
            let sub = Arc::new(TopicSub::new(
                id,
                pattern,
                durable,
                spec.no_local,
                limits,
                filter,
                selector,
            ));
            topic.attach(&sub);
            return Ok(sub);
        }
        Ok(self
            .broker
            .create_topic_sub(pattern, durable, spec.no_local, limits, filter, selector))
    }

    fn temp_topic_for_consumer(
        &mut self,
        dest: &Destination,
        subscription: u64,
        network: bool,
    ) -> Result<Arc<Topic>, BrokerError> {
        if let Some(t) = self.broker.inner.topics.get(dest.as_str()) {
            if t.owner != self.id && !network {
                return Err(BrokerError::NotOwner(dest.to_string()));
            }
            return Ok(t.clone());
        }
        if network {
            let t = self.broker.topic(dest, self.id);
            self.stand_ins
                .insert(subscription, Target::Topic(t.clone()));
            return Ok(t);
        }
        if !self.owns_temp_name(dest) {
            return Err(BrokerError::NotOwner(dest.to_string()));
        }
        let t = self.broker.topic(dest, self.id);
        self.temps.push(Target::Topic(t.clone()));
        Ok(t)
    }

    /// Ends a subscription. Unacknowledged queue deliveries go back to the queue; a durable
    /// subscription keeps collecting messages unless `remove_durable`.
    pub fn unsubscribe(
        &mut self,
        subscription: u64,
        remove_durable: bool,
    ) -> Result<(), BrokerError> {
        let handle = self
            .subs
            .remove(&subscription)
            .ok_or(BrokerError::NoSuchSubscription(subscription))?;
        if let Some(sd) = self.demand_ids.remove(&subscription) {
            for d in sd.ids {
                self.broker.remove_demand(d);
            }
        }
        self.release(handle, remove_durable);
        if let Some(stand_in) = self.stand_ins.remove(&subscription) {
            self.delete_temp(stand_in);
        }
        Ok(())
    }

    pub(super) fn release(&mut self, handle: SubHandle, remove_durable: bool) {
        let broker = self.broker.clone();
        let _gate = broker.gate();
        let mut dead = Effects::default();
        match handle {
            SubHandle::Queue { queue, slot } => queue.remove_consumer(slot, &mut dead),
            SubHandle::Topic { sub } => match (&sub.durable, remove_durable) {
                (Some(_), false) => sub.detach_consumer(&mut dead),
                (Some(key), true) => {
                    broker.inner.durables.remove(key);
                    broker.remove_topic_sub(&sub, &mut dead);
                    self.last_record = broker.journal_record(durable_removed(key));
                }
                (None, _) => broker.remove_topic_sub(&sub, &mut dead),
            },
        }
        broker.apply(dead);
    }
}

fn durable_removed(key: &(String, String)) -> Record {
    Record {
        kind: Some(RecordKind::DurableRemoved(
            crate::store::proto::DurableRemoved {
                client_id: key.0.clone(),
                name: key.1.clone(),
            },
        )),
        tx: 0,
    }
}

impl Broker {
    pub fn durable_subscriptions(&self) -> usize {
        self.inner.durables.len()
    }

    /// The durable subscriptions of `client_id` whose names start with `prefix`: (name,
    /// pattern, selector — empty when none), by name.
    pub fn durables_of(
        &self,
        client_id: &str,
        prefix: &str,
    ) -> Vec<(String, DestinationPattern, String)> {
        let mut found: Vec<(String, DestinationPattern, String)> = self
            .inner
            .durables
            .iter()
            .filter(|d| d.key().0 == client_id && d.key().1.starts_with(prefix))
            .map(|d| {
                let selector = d
                    .value()
                    .selector()
                    .map_or_else(String::new, |s| s.text().to_string());
                (d.key().1.clone(), d.value().pattern.clone(), selector)
            })
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }

    /// Deletes the durable subscriptions of `client_id` named with `prefix` that no connection
    /// is attached to — when `last` is given, only those session `last` attached to last (a
    /// session that ended ends its own, not a later one's) — with the messages they kept, each
    /// removal journaled. Returns the journal record of the last removal (0: none).
    pub fn remove_idle_durables(&self, client_id: &str, prefix: &str, last: Option<u64>) -> u64 {
        if self.inner.durables.is_empty() {
            return 0;
        }
        let _gate = self.gate();
        let mut dead = Effects::default();
        let mut record = 0;
        let keys: Vec<(String, String)> = self
            .inner
            .durables
            .iter()
            .filter(|d| d.key().0 == client_id && d.key().1.starts_with(prefix))
            .filter(|d| !d.value().is_active())
            .filter(|d| last.is_none_or(|s| d.value().last_connection() == s))
            .map(|d| d.key().clone())
            .collect();
        for key in keys {
            // Checked again under the map's lock: a client may have attached meanwhile.
            let Some((_, sub)) = self.inner.durables.remove_if(&key, |_, s| !s.is_active()) else {
                continue;
            };
            self.remove_topic_sub(&sub, &mut dead);
            record = self.journal_record(durable_removed(&key));
        }
        self.apply(dead);
        record
    }

    /// A new (non-temporary) topic subscription, attached to every topic its pattern matches
    /// now or later.
    pub(crate) fn create_topic_sub(
        &self,
        pattern: DestinationPattern,
        durable: Option<(String, String)>,
        no_local: bool,
        limits: &DestinationLimits,
        filter: Option<NetworkFilter>,
        selector: Option<Arc<Selector>>,
    ) -> Arc<TopicSub> {
        let id = self.inner.next_topic_sub.fetch_add(1, Ordering::Relaxed);
        let sub = Arc::new(TopicSub::new(
            id,
            pattern.clone(),
            durable,
            no_local,
            limits,
            filter,
            selector,
        ));
        match pattern.as_destination() {
            Some(dest) => self.topic(&dest, 0).attach(&sub),
            None => {
                let _registry = self.inner.topic_registry.lock();
                self.inner.wildcard_subs.write().push(sub.clone());
                for t in self.inner.topics.iter() {
                    if pattern.matches(&t.dest) {
                        t.attach(&sub);
                    }
                }
            }
        }
        // Settings replaced since `limits` was resolved are either seen now or see this
        // subscription attached.
        sub.set_limits(&self.limits_for_pattern(&sub.pattern));
        sub
    }

    /// Detaches a topic subscription from every topic and forgets its messages.
    pub(super) fn remove_topic_sub(&self, sub: &Arc<TopicSub>, effects: &mut Effects) {
        match sub.pattern.as_destination() {
            Some(dest) => {
                if let Some(t) = self.inner.topics.get(dest.as_str()) {
                    t.detach(sub.id);
                }
            }
            None => {
                let _registry = self.inner.topic_registry.lock();
                self.inner.wildcard_subs.write().retain(|s| s.id != sub.id);
                for t in self.inner.topics.iter() {
                    if sub.pattern.matches(&t.dest) {
                        t.detach(sub.id);
                    }
                }
            }
        }
        sub.clear(effects);
    }
}
