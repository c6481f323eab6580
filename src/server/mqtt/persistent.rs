//! A persistent session on the connection: its durable subscriptions are named
//! `mqtt:<qos>:<filter>` under the client id (journaled and replicated as any, so they survive
//! restarts and follow the client to the group's master), a reconnect attaches them again
//! without a SUBACK or a retained replay and takes up the packet ids its last connection had
//! in flight (`mqtt_session.rs`), and [`SessionEnd`] deletes them once the session's expiry
//! interval has passed. The interval and when it began are journaled with the session (the
//! broker's `kept_sessions.rs`), so a session whose interval ran out while the group was down
//! ends when it starts again ([`expire_kept_sessions`]). A `$share/NAME/filter` subscription
//! reads its group's queue and is not a durable subscription: the kept session holds its name
//! (the same `mqtt:<qos>:<filter>`, [`SessionShares`]), which keeps the group's queue fed on
//! this member while the client is away (`mqtt_share.rs`), and a reconnect reads the queue
//! again. Owns: the naming of the session's subscriptions, the resume and the expiry timers.
//! Must not touch: the socket.

use std::num::NonZeroU16;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rmqtt_codec::types::QoS;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, DestinationPattern, SubscribeSpec};
use crate::security::Principal;

use super::super::conn::ConnCtx;
use super::super::mqtt_session::KeptInflight;
use super::super::request::Request;
use super::topic::share_queue;
use super::will::{DelayedWills, WillSlot};
use super::{Mqtt, Outgoing, Receipt, Sub};

/// The durable subscriptions of a persistent session are named `mqtt:<qos>:<filter>` under
/// the client's id.
pub(super) const SESSION_PREFIX: &str = "mqtt:";

/// A session expiry interval that never ends (MQTT 5 3.1.2.11.2; MQTT 3's persistent session).
pub(super) use crate::broker::NEVER_EXPIRES;

/// The longest a timer sleeps before the session's state is looked at again (tokio's timers
/// do not take the 136 years of `u32::MAX - 1` seconds).
const LONGEST_WAIT: Duration = Duration::from_secs(24 * 3600);

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

/// The filter of a kept session's shared subscription named `name` (`None` when it is not
/// one).
pub(crate) fn kept_share_filter(name: &str) -> Option<String> {
    parse_session_sub_name(name)
        .map(|(_, filter)| filter)
        .filter(|f| share_queue(f).is_some())
}

/// Where a persistent session keeps its shared subscriptions (the broker's kept session of
/// the client).
#[derive(Debug, Clone)]
pub(super) struct SessionShares {
    pub(super) broker: Broker,
    pub(super) client_id: String,
}

/// What outlives one connection of a client with a client id: how long its session is kept
/// once the connection ends (seconds; `NEVER_EXPIRES`, or 0 for at once). An MQTT 5
/// DISCONNECT may change it.
#[derive(Debug, Clone)]
pub(crate) struct SessionEnd {
    pub(super) client_id: String,
    pub(super) expiry: Arc<AtomicU32>,
    /// An MQTT 5 will that waits for its delay (seconds) once the connection ends: the codec
    /// leaves it in the slot.
    pub(super) will: Option<(WillSlot, u32)>,
}

impl SessionEnd {
    /// Connection `session_id` ended: its session's expiry interval runs from now (journaled,
    /// so a restart or a failover keeps counting), and once it has run out the session's
    /// durable subscriptions go with the messages they kept — unless a later connection of the
    /// client took the session over first (then its end is that connection's to start). A
    /// will left waiting for its delay is parked until the delay or the session ends, whichever
    /// is first; a taken-over session's is dropped (a new connection came first).
    pub(super) fn schedule(
        self,
        ctx: &Arc<ConnCtx>,
        session_id: u64,
        principal: Principal,
        shutdown: &CancellationToken,
    ) {
        let secs = self.expiry.load(Ordering::Relaxed);
        let now = crate::broker::now_ms();
        if !ctx
            .broker
            .session_left(&self.client_id, secs, session_id, now)
        {
            return;
        }
        if let Some((will, delay)) = self
            .will
            .and_then(|(slot, delay)| slot.lock().take().map(|w| (w, delay)))
        {
            let wait = Duration::from_secs(u64::from(delay.min(secs)));
            DelayedWills::park(ctx, self.client_id.clone(), will, principal, wait, shutdown);
        }
        watch_expiry(ctx.broker.clone(), self.client_id, shutdown.clone());
    }
}

/// Ends the kept session of `client_id` when its interval runs out (at once if it has): a
/// timer in memory over the journaled state, which it reads again when it fires, so a timer
/// for a session taken over, or kept longer since, ends nothing.
fn watch_expiry(broker: Broker, client_id: String, shutdown: CancellationToken) {
    let Some(mut wait) =
        broker.expire_session_if_due(&client_id, SESSION_PREFIX, crate::broker::now_ms())
    else {
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait.min(LONGEST_WAIT)) => {}
                _ = shutdown.cancelled() => return,
            }
            match broker.expire_session_if_due(&client_id, SESSION_PREFIX, crate::broker::now_ms())
            {
                Some(left) => wait = left,
                None => return,
            }
        }
    });
}

/// At the start of a member's term (after a restart or a failover): ends the persistent
/// sessions whose expiry interval ran out while no broker of the group served them, and
/// watches the others — a session a connection held when the last term ended counts as idle
/// from now.
pub(crate) fn expire_kept_sessions(broker: Broker, shutdown: CancellationToken) {
    let deadlines = broker.idle_session_deadlines(crate::broker::now_ms());
    if !deadlines.is_empty() {
        tracing::info!(
            sessions = deadlines.len(),
            "MQTT sessions with an expiry interval are kept from the last term"
        );
    }
    for (client_id, _) in deadlines {
        watch_expiry(broker.clone(), client_id, shutdown.clone());
    }
}

impl Mqtt {
    /// Keeps (or drops) subscription `num` in the persistent session when it is a shared one.
    pub(super) fn keep_share(&self, num: u64, keep: bool) {
        let (Some(shares), Some(sub)) = (&self.shares, self.subs.get(&num)) else {
            return;
        };
        if share_queue(&sub.filter).is_some() {
            let name = session_sub_name(sub.qos, &sub.filter);
            shares.broker.keep_share(&shares.client_id, &name, keep);
        }
    }

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
    /// A kept shared subscription (named alone) reads its group's queue again.
    pub(super) fn resume(
        &mut self,
        kept: Vec<(String, DestinationPattern, String)>,
        shares: Vec<String>,
    ) {
        let shares = shares.into_iter().filter_map(|name| {
            let queue = share_queue(&kept_share_filter(&name)?)?.ok()?;
            let pattern = DestinationPattern::parse(queue.as_str()).ok()?;
            Some((name, pattern, String::new(), false))
        });
        let kept = kept
            .into_iter()
            .map(|(name, pattern, selector)| (name, pattern, selector, true));
        for (name, pattern, selector, durable) in kept.chain(shares) {
            let Some((qos, filter)) = parse_session_sub_name(&name) else {
                continue;
            };
            let durable_name = durable.then_some(name);
            let num = self.next_sub;
            self.next_sub += 1;
            self.subs.insert(
                num,
                Sub {
                    filter: filter.clone(),
                    qos,
                    durable: durable_name.clone(),
                    resumed: true,
                },
            );
            self.by_filter.insert(filter, num);
            self.pending.push_back(Request::Subscribe {
                spec: SubscribeSpec {
                    subscription: num,
                    destination: pattern,
                    // The durable's own: the same selector attaches to it, another would
                    // replace it.
                    selector,
                    prefetch: self.prefetch,
                    priority: 0,
                    durable_name,
                    no_local: false,
                },
                receipt: Some(Receipt::Resumed(num)),
            });
        }
    }
}
