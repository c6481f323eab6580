//! The will of a connection: the PUBLISH its CONNECT names, kept as a send and published
//! through the same pipeline as any when the connection ends without a DISCONNECT (or with
//! MQTT 5's "disconnect with will"). An MQTT 5 will with a will delay interval, of a session
//! that outlives its connection, is not published at once: it is parked ([`DelayedWills`])
//! until the delay has passed or the session ends, whichever is first (MQTT 5 §3.1.3.2.2),
//! and a new connection to the session before then cancels it — one that starts clean ends the
//! session, so the will goes out then. A parked will is published as its client would have
//! published it: under the client's login, checked against the ACLs of that moment.
//!
//! Owns: the kept will, the parked ones (in memory, for the member's term: a restart forgets
//! them). Must not touch: the socket.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rmqtt_codec::types::Publish;
use tokio_util::sync::CancellationToken;

use crate::broker::{Admission, MessageBuilder};
use crate::security::{Action, Principal};

use super::super::conn::ConnCtx;
use super::super::request::SendRequest;
use super::{Mqtt, Receipt};

/// How often a parked will whose destination is full looks for room again, and for how long.
const ROOM_POLL: Duration = Duration::from_millis(50);
const ROOM_WAIT: Duration = Duration::from_secs(10);

/// Where a delayed will goes when its connection ends (shared by the codec, which fills it,
/// and whoever parks it).
pub(crate) type WillSlot = Arc<Mutex<Option<SendRequest<Receipt>>>>;

impl Mqtt {
    /// Keeps the will of the CONNECT (its topic was checked before the CONNACK).
    pub(super) fn set_will(&mut self, will: Publish) {
        match self.draft_of(&will) {
            Ok((destination, draft)) => {
                self.will = Some(Box::new(SendRequest {
                    destination,
                    draft,
                    transaction: None,
                    receipt: None,
                }))
            }
            Err((_, e)) => {
                tracing::debug!(connection = %self.connection_id, error = %e, "will refused")
            }
        }
    }

    /// The will as the connection ends: a request to publish it now, or `None` when there is
    /// none or it waits for its delay (then it is in the delayed-will slot).
    pub(super) fn take_will(&mut self) -> Option<SendRequest<Receipt>> {
        let mut will = self.will.take()?;
        will.draft.sequence = self.next_sequence;
        self.next_sequence += 1;
        match &self.delayed_will {
            Some(slot) => {
                *slot.lock() = Some(*will);
                None
            }
            None => Some(*will),
        }
    }
}

/// A will waiting for its delay, and who would have published it.
struct Parked {
    generation: u64,
    will: SendRequest<Receipt>,
    principal: Principal,
}

/// The parked wills of a member's term, by client id (at most one each: the session's last
/// connection's).
#[derive(Default)]
pub(crate) struct DelayedWills {
    parked: Mutex<HashMap<String, Parked>>,
    next_generation: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for DelayedWills {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayedWills")
            .field("parked", &self.parked.lock().len())
            .finish()
    }
}

impl DelayedWills {
    /// Parks the will of `client_id`'s connection that just ended, to be published after
    /// `wait` unless a new connection to the session takes it back first.
    pub(super) fn park(
        ctx: &Arc<ConnCtx>,
        client_id: String,
        will: SendRequest<Receipt>,
        principal: Principal,
        wait: Duration,
        shutdown: &CancellationToken,
    ) {
        let wills = &ctx.mqtt_sessions.wills;
        let generation = wills
            .next_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        wills.parked.lock().insert(
            client_id.clone(),
            Parked {
                generation,
                will,
                principal,
            },
        );
        tracing::debug!(client_id, ?wait, "a will waits for its delay");
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
            let due = {
                let mut parked = ctx.mqtt_sessions.wills.parked.lock();
                match parked.get(&client_id) {
                    Some(p) if p.generation == generation => parked.remove(&client_id),
                    _ => None,
                }
            };
            if let Some(p) = due {
                publish(&ctx, &p.principal, p.will).await;
            }
        });
    }

    /// A new connection of `client_id` took its session up: a parked will is cancelled — or,
    /// when the connection starts clean (the old session ends), published now.
    pub(super) fn reconnected(ctx: &Arc<ConnCtx>, client_id: &str, clean: bool) {
        let Some(p) = ctx.mqtt_sessions.wills.parked.lock().remove(client_id) else {
            return;
        };
        if clean {
            let ctx = ctx.clone();
            tokio::spawn(async move { publish(&ctx, &p.principal, p.will).await });
        } else {
            tracing::debug!(
                client_id,
                "the client is back before its will's delay: no will"
            );
        }
    }
}

/// Publishes a will whose connection is gone, as that connection would have: its user must
/// be allowed to write there (and to create the destination, if it is new), and a full
/// destination is waited for a while. What goes wrong is logged: nobody is left to tell.
async fn publish(ctx: &ConnCtx, principal: &Principal, will: SendRequest<Receipt>) {
    let SendRequest {
        destination, draft, ..
    } = will;
    let rules = ctx.security.current();
    let mut allowed = rules
        .authorizer
        .check(principal, Action::Write, &destination);
    if allowed.is_ok()
        && !destination.kind().is_temp()
        && !ctx.broker.destination_exists(&destination)
    {
        allowed = rules
            .authorizer
            .check(principal, Action::Admin, &destination);
    }
    if let Err(denied) = allowed {
        ctx.metrics.denied();
        tracing::info!(%destination, %denied, "a delayed will is not published");
        return;
    }
    let mut session = match ctx.broker.open_session_as(None, principal.user.clone()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%destination, error = %e, "a delayed will is not published");
            return;
        }
    };
    let result = async {
        let target = session.target(&destination)?;
        let message = MessageBuilder::default().build(draft)?;
        let deadline = tokio::time::Instant::now() + ROOM_WAIT;
        loop {
            match session.admit(&target, message.persistent) {
                Admission::Now => break,
                Admission::Refuse(e) => return Err(e),
                Admission::Wait if tokio::time::Instant::now() >= deadline => {
                    return Err(session.full_error(&target, message.persistent))
                }
                Admission::Wait => tokio::time::sleep(ROOM_POLL).await,
            }
        }
        session.publish(&target, message)
    }
    .await;
    match result {
        Ok(_) => tracing::debug!(%destination, "a delayed will is published"),
        Err(e) => tracing::warn!(%destination, error = %e, "a delayed will is not published"),
    }
    session.close();
}
