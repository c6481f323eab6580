//! A persistent session on the connection: its durable subscriptions are named
//! `mqtt:<qos>:<filter>` under the client id (journaled and replicated as any, so they survive
//! restarts and follow the client to the group's master), a reconnect attaches them again
//! without a SUBACK or a retained replay and takes up the packet ids its last connection had
//! in flight (`mqtt_session.rs`), and [`SessionEnd`] deletes them once the session's expiry
//! interval has passed. Owns: the naming of the session's subscriptions, the resume and the
//! expiry timer. Must not touch: the socket.

use std::num::NonZeroU16;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rmqtt_codec::types::QoS;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, DestinationPattern, SubscribeSpec};

use super::super::mqtt_session::KeptInflight;
use super::super::request::Request;
use super::{Mqtt, Outgoing, Receipt, Sub};

/// The durable subscriptions of a persistent session are named `mqtt:<qos>:<filter>` under
/// the client's id.
pub(super) const SESSION_PREFIX: &str = "mqtt:";

/// A session expiry interval that never ends (MQTT 5 3.1.2.11.2; MQTT 3's persistent session).
pub(super) const NEVER_EXPIRES: u32 = u32::MAX;

/// The name of the durable subscription that keeps `filter` at `qos` for a persistent session.
pub(super) fn session_sub_name(qos: QoS, filter: &str) -> String {
    format!("{SESSION_PREFIX}{}:{filter}", u8::from(qos))
}

/// The QoS and filter a persistent session's durable subscription was named after.
pub(super) fn parse_session_sub_name(name: &str) -> Option<(QoS, String)> {
    let rest = name.strip_prefix(SESSION_PREFIX)?;
    let (qos, filter) = rest.split_once(':')?;
    let qos = QoS::try_from(qos.parse::<u8>().ok()?).ok()?;
    Some((qos, filter.to_string()))
}

/// What outlives one connection of a client with a client id: how long its session is kept
/// once the connection ends (seconds; `NEVER_EXPIRES`, or 0 for at once). An MQTT 5
/// DISCONNECT may change it.
#[derive(Debug, Clone)]
pub(crate) struct SessionEnd {
    pub(super) client_id: String,
    pub(super) expiry: Arc<AtomicU32>,
}

impl SessionEnd {
    /// Ends the session of connection `session_id` after its expiry interval: its durable
    /// subscriptions (and the messages they kept) are deleted unless a later connection of the
    /// client took them over. The timer lives in memory: a broker that stops first keeps the
    /// session until its client returns.
    pub(super) fn schedule(self, broker: &Broker, session_id: u64, shutdown: &CancellationToken) {
        let secs = self.expiry.load(Ordering::Relaxed);
        if secs == NEVER_EXPIRES {
            return;
        }
        let expire = move |broker: &Broker| {
            broker.remove_idle_durables(&self.client_id, SESSION_PREFIX, Some(session_id));
        };
        if secs == 0 {
            expire(broker);
            return;
        }
        let (broker, shutdown) = (broker.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(u64::from(secs))) => expire(&broker),
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

impl Mqtt {
    /// Takes up what the session's last connection had in flight: its released QoS 2
    /// deliveries get their PUBREL again (first of all), its unacknowledged deliveries keep
    /// their packet ids when they go out again.
    pub(super) fn resume_inflight(&mut self, kept: KeptInflight) {
        for id in kept.released {
            let Some(id) = NonZeroU16::new(id) else {
                continue;
            };
            self.inflight.insert(
                id.get(),
                Outgoing {
                    subscription: 0,
                    tag: 0,
                    qos: QoS::AtMostOnce,
                },
            );
            self.pending.push_back(Request::Ping {
                receipt: Receipt::PubRel(id),
            });
        }
        self.resumed_ids = kept.ids;
    }

    /// What is in flight now, for the session's next connection.
    pub(super) fn inflight_to_keep(&mut self) -> KeptInflight {
        let mut kept = KeptInflight::default();
        for (id, o) in &self.inflight {
            if o.qos == QoS::AtMostOnce {
                kept.released.push(*id);
            } else if let Some(key) = self.keys.get(id) {
                kept.ids.insert(key.clone(), *id);
            }
        }
        // Deliveries not sent again on this connection keep the ids they had.
        for (key, id) in self.resumed_ids.drain() {
            if !self.inflight.contains_key(&id) {
                kept.ids.entry(key).or_insert(id);
            }
        }
        kept
    }

    /// Attaches the client again to the subscriptions its persistent session kept (the
    /// durable subscriptions named after its filters), as if it had just subscribed, but
    /// without a SUBACK or a retained replay (MQTT 3.1.2.4): what they kept is delivered.
    pub(super) fn resume(&mut self, kept: Vec<(String, DestinationPattern)>) {
        for (name, pattern) in kept {
            let Some((qos, filter)) = parse_session_sub_name(&name) else {
                continue;
            };
            let num = self.next_sub;
            self.next_sub += 1;
            self.subs.insert(
                num,
                Sub {
                    filter: filter.clone(),
                    qos,
                    durable: Some(name.clone()),
                    resumed: true,
                },
            );
            self.by_filter.insert(filter, num);
            self.pending.push_back(Request::Subscribe {
                spec: SubscribeSpec {
                    subscription: num,
                    destination: pattern,
                    selector: String::new(),
                    prefetch: self.prefetch,
                    priority: 0,
                    durable_name: Some(name),
                    no_local: false,
                },
                receipt: Some(Receipt::Resumed(num)),
            });
        }
    }
}
