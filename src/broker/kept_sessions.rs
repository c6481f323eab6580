//! When a client's kept session ends: a session that outlives its connections (an MQTT
//! persistent session, whose subscriptions are durable subscriptions under the client id) has
//! an expiry interval that runs from the moment its last connection ended. That state is
//! journaled (`SessionExpiry` records, and the checkpoint's `sessions`), so it survives a
//! restart and follows the group's master: a session whose interval ran out while the broker
//! was down is ended when the broker starts again, with its durable subscriptions and what
//! they kept.
//!
//! A kept session may also hold subscriptions that are not durable subscriptions: an MQTT
//! `$share/NAME/filter` reads its share group's queue, so what the session keeps of it is the
//! name alone ([`Broker::keep_share`]), journaled with the session's state; while it is kept,
//! the protocol layer keeps the group's queue fed on this member ([`Broker::kept_shares`]), so
//! what is published while the client is away waits in the queue for it.
//!
//! A kept session's QoS 2 deliveries that its client received (PUBREC) but has not completed
//! (PUBCOMP) are journaled with it by packet id ([`Broker::session_released`]): the message
//! itself is acknowledged by then, and only its PUBREL, sent again when the client comes back
//! — also after a restart or on a new master — lets a client that hands a QoS 2 message to
//! its application on PUBREL do so.
//!
//! Owns: the expiry state, the shared subscriptions and the released QoS 2 packet ids of each
//! kept session, and the
//! connection holding it now (in memory: after a restart nobody holds one). Must not touch:
//! protocols, timers (the protocol layer asks [`Broker::expire_session_if_due`] when the time
//! comes). Invariants: the last connection to end is the only one whose end starts the
//! interval (an older connection taken over ends without touching it); a session held by a
//! connection never expires; every journaled state of a session names all its shared
//! subscriptions, and a change to them is announced after it is made.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::store::proto::{record::Kind as RecordKind, Record, SessionExpiry};

use super::Broker;

/// An expiry interval that never runs out.
pub const NEVER_EXPIRES: u32 = u32::MAX;

/// The state of one kept session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeptSession {
    /// Seconds after its last connection ended ([`NEVER_EXPIRES`]: never).
    interval_secs: u32,
    /// When its last connection ended (ms since the Unix epoch); 0 while one holds it.
    idle_since_ms: u64,
    /// The broker session (connection) holding it; 0: none since the broker started.
    holder: u64,
    /// Its shared subscriptions, by the protocol's name for them.
    shares: BTreeSet<String>,
    /// Packet ids of QoS 2 deliveries received by the client and not completed yet.
    released: BTreeSet<u16>,
}

impl KeptSession {
    /// When it expires (ms since the Unix epoch), if it is idle and expires at all.
    fn deadline_ms(&self) -> Option<u64> {
        (self.idle_since_ms != 0 && self.interval_secs != NEVER_EXPIRES)
            .then(|| self.idle_since_ms + u64::from(self.interval_secs) * 1000)
    }
}

impl KeptSession {
    fn state(&self, client_id: &str) -> SessionExpiry {
        SessionExpiry {
            client_id: client_id.to_string(),
            interval_secs: self.interval_secs,
            idle_since_ms: self.idle_since_ms,
            ended: false,
            shares: self.shares.iter().cloned().collect(),
            released: self.released.iter().map(|&id| u32::from(id)).collect(),
        }
    }
}

fn record(state: SessionExpiry) -> Record {
    Record {
        kind: Some(RecordKind::SessionExpiry(state)),
        tx: 0,
    }
}

fn ended(client_id: &str) -> Record {
    record(SessionExpiry {
        client_id: client_id.to_string(),
        ended: true,
        ..SessionExpiry::default()
    })
}

impl Broker {
    /// Connection `holder` now holds the kept session of `client_id`, whose interval is
    /// `interval_secs` once it ends. Journaled when that changes what a restart would find.
    pub fn session_taken(&self, client_id: &str, interval_secs: u32, holder: u64) {
        let _gate = self.gate();
        let mut new = false;
        let mut kept = self
            .inner
            .kept_sessions
            .entry(client_id.to_string())
            .or_insert_with(|| {
                new = true;
                KeptSession {
                    interval_secs,
                    idle_since_ms: 0,
                    holder,
                    shares: BTreeSet::new(),
                    released: BTreeSet::new(),
                }
            });
        let changed = new || (kept.interval_secs, kept.idle_since_ms) != (interval_secs, 0);
        kept.interval_secs = interval_secs;
        kept.idle_since_ms = 0;
        kept.holder = holder;
        let state = kept.state(client_id);
        drop(kept);
        if changed {
            self.journal_record(record(state));
        }
    }

    /// Connection `holder`'s hold on the session of `client_id` ended at `now_ms`, with
    /// `interval_secs` (which an MQTT 5 DISCONNECT may have changed) to run from then. False
    /// when another connection has taken the session over since: its end is not this one's.
    pub fn session_left(
        &self,
        client_id: &str,
        interval_secs: u32,
        holder: u64,
        now_ms: u64,
    ) -> bool {
        let _gate = self.gate();
        let Some(mut kept) = self.inner.kept_sessions.get_mut(client_id) else {
            return false;
        };
        if kept.holder != holder || kept.idle_since_ms != 0 {
            return false;
        }
        kept.interval_secs = interval_secs;
        kept.idle_since_ms = now_ms.max(1);
        let state = kept.state(client_id);
        drop(kept);
        self.journal_record(record(state));
        true
    }

    /// Keeps (or, `keep` false, drops) the shared subscription `name` in the kept session of
    /// `client_id`, journaled. False when the client has no kept session (nothing is kept).
    pub fn keep_share(&self, client_id: &str, name: &str, keep: bool) -> bool {
        let _gate = self.gate();
        let Some(mut kept) = self.inner.kept_sessions.get_mut(client_id) else {
            return false;
        };
        let changed = if keep {
            kept.shares.insert(name.to_string())
        } else {
            kept.shares.remove(name)
        };
        let state = kept.state(client_id);
        drop(kept);
        if changed {
            self.journal_record(record(state));
            self.inner.kept_shares_changed.send_modify(|v| *v += 1);
        }
        true
    }

    /// The client of the kept session of `client_id` received its QoS 2 delivery `packet_id`
    /// (PUBREC; `released`) or completed it (PUBCOMP; not `released`): journaled when that
    /// changes the session's released ids — the PUBREC's record before the acknowledgement of
    /// the message, so once that is durable, so is this. False when there is no kept session.
    pub fn session_released(&self, client_id: &str, packet_id: u16, released: bool) -> bool {
        let _gate = self.gate();
        let Some(mut kept) = self.inner.kept_sessions.get_mut(client_id) else {
            return false;
        };
        let changed = if released {
            kept.released.insert(packet_id)
        } else {
            kept.released.remove(&packet_id)
        };
        let state = kept.state(client_id);
        drop(kept);
        if changed {
            self.journal_record(record(state));
        }
        true
    }

    /// The packet ids of the QoS 2 deliveries the client of the kept session of `client_id`
    /// received and has not completed.
    pub fn released_of(&self, client_id: &str) -> Vec<u16> {
        self.inner
            .kept_sessions
            .get(client_id)
            .map(|k| k.released.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The shared subscriptions the kept session of `client_id` holds.
    pub fn shares_of(&self, client_id: &str) -> Vec<String> {
        self.inner
            .kept_sessions
            .get(client_id)
            .map(|k| k.shares.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every shared subscription some kept session holds (each name once), and a receiver
    /// that is told of every later change (subscribe first, then read: nothing is missed).
    pub fn kept_shares(&self) -> (tokio::sync::watch::Receiver<u64>, BTreeSet<String>) {
        let rx = self.inner.kept_shares_changed.subscribe();
        let all = self
            .inner
            .kept_sessions
            .iter()
            .flat_map(|k| k.shares.iter().cloned().collect::<Vec<_>>())
            .collect();
        (rx, all)
    }

    /// Ends the kept session of `client_id` if its interval has run out by `now_ms`: its
    /// durable subscriptions named with `prefix` that no connection holds are deleted with the
    /// messages they kept, and its state is forgotten (journaled). `Some(wait)` when it is idle
    /// but not due yet; `None` when it ended now, is held, never expires or is unknown.
    pub fn expire_session_if_due(
        &self,
        client_id: &str,
        prefix: &str,
        now_ms: u64,
    ) -> Option<Duration> {
        let _gate = self.gate();
        let deadline = self.inner.kept_sessions.get(client_id)?.deadline_ms()?;
        if deadline > now_ms {
            return Some(Duration::from_millis(deadline - now_ms));
        }
        self.end_session(client_id, prefix);
        None
    }

    /// Ends the kept session of `client_id` now (a clean start discards it, or it expired):
    /// its idle durable subscriptions named with `prefix` go, with what they kept, and its
    /// expiry state is forgotten (journaled if there was one).
    pub fn end_session(&self, client_id: &str, prefix: &str) {
        let _gate = self.gate();
        self.remove_idle_durables(client_id, prefix, None);
        if let Some((_, gone)) = self.inner.kept_sessions.remove(client_id) {
            self.journal_record(ended(client_id));
            if !gone.shares.is_empty() {
                self.inner.kept_shares_changed.send_modify(|v| *v += 1);
            }
        }
    }

    /// Every kept session's client id and when it expires (ms since the Unix epoch) — sessions
    /// that never expire are left out. A session a connection held when the broker stopped is
    /// idle from `now_ms` on (when its connection ended is not known; not before the broker
    /// stopped, and counting from now never ends a session early): journaled so.
    pub fn idle_session_deadlines(&self, now_ms: u64) -> Vec<(String, u64)> {
        let _gate = self.gate();
        let mut found = Vec::new();
        for mut kept in self.inner.kept_sessions.iter_mut() {
            if kept.idle_since_ms == 0 && kept.holder == 0 {
                kept.idle_since_ms = now_ms.max(1);
                let state = kept.state(kept.key());
                self.journal_record(record(state));
            }
            if let Some(deadline) = kept.deadline_ms() {
                found.push((kept.key().clone(), deadline));
            }
        }
        found
    }

    /// The kept sessions' state for a checkpoint.
    pub(crate) fn export_kept_sessions(&self) -> Vec<SessionExpiry> {
        let mut all: Vec<SessionExpiry> = self
            .inner
            .kept_sessions
            .iter()
            .map(|k| k.state(k.key()))
            .collect();
        all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        all
    }

    /// Restores the kept sessions' state a journal held (no connection holds any).
    pub(crate) fn restore_kept_sessions(&self, sessions: Vec<SessionExpiry>) {
        for s in sessions {
            self.inner.kept_sessions.insert(
                s.client_id,
                KeptSession {
                    interval_secs: s.interval_secs,
                    idle_since_ms: s.idle_since_ms,
                    holder: 0,
                    shares: s.shares.into_iter().collect(),
                    released: s
                        .released
                        .into_iter()
                        .filter_map(|id| u16::try_from(id).ok())
                        .filter(|&id| id != 0)
                        .collect(),
                },
            );
        }
        self.inner.kept_shares_changed.send_modify(|v| *v += 1);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::broker::{BrokerSettings, DestinationPattern, SubscribeSpec};
    use crate::store::{Durability, Store, StoreConfig};

    fn open(dir: &Path) -> Broker {
        let config = StoreConfig {
            dir: dir.join("journal"),
            segment_size: 64 << 10,
            store_limit: None,
            durability: Durability::Synced,
            group_commit_window: Duration::ZERO,
            max_record: 1 << 20,
            memory_budget: 1 << 30,
        };
        let (store, recovered) = Store::open(config, false).unwrap();
        Broker::with_store(BrokerSettings::default(), store, recovered)
    }

    /// Waits until everything journaled is synced, then stops without a checkpoint.
    async fn crash(b: Broker) {
        let next = b.store().unwrap().journal().next_index() - 1;
        b.store()
            .unwrap()
            .journal()
            .wait_synced(next)
            .await
            .unwrap();
        b.store().unwrap().close();
    }

    fn deadlines(b: &Broker, now_ms: u64) -> Vec<(String, u64)> {
        let mut all = b.idle_session_deadlines(now_ms);
        all.sort();
        all
    }

    #[tokio::test]
    async fn expiry_state_survives_crashes_and_checkpoints_and_only_the_last_connection_starts_it()
    {
        let dir = tempfile::tempdir().unwrap();
        let b = open(dir.path());
        // "idle" keeps a durable subscription and left at t = 1 s with a minute to go.
        let mut s = b.open_session(Some("idle".into())).unwrap();
        s.subscribe(SubscribeSpec {
            subscription: 1,
            destination: DestinationPattern::parse("topic://a").unwrap(),
            selector: String::new(),
            prefetch: 0,
            priority: 0,
            durable_name: Some("mqtt:1:a".into()),
            no_local: false,
        })
        .unwrap();
        b.session_taken("idle", 60, s.id());
        s.close();
        assert!(b.session_left("idle", 60, s.id(), 1_000));
        // "held" is held by a connection when the broker dies.
        b.session_taken("held", 5, 100);
        // "taken" was taken over: the old connection's end, which comes last, is not its end.
        b.session_taken("taken", 30, 200);
        b.session_taken("taken", 30, 201);
        assert!(!b.session_left("taken", 30, 200, 1_000));
        // "gone" ended (a clean start).
        b.session_taken("gone", 5, 300);
        b.end_session("gone", "mqtt:");
        // "forever" never expires.
        b.session_taken("forever", NEVER_EXPIRES, 400);
        assert!(b.session_left("forever", NEVER_EXPIRES, 400, 1_000));
        crash(b).await;

        let b = open(dir.path());
        assert_eq!(b.durable_subscriptions(), 1);
        assert_eq!(
            deadlines(&b, 10_000),
            vec![
                ("held".to_string(), 15_000),
                ("idle".to_string(), 61_000),
                ("taken".to_string(), 40_000)
            ],
            "sessions held at the crash count from the restart; ended and endless ones are not listed"
        );
        assert_eq!(
            b.expire_session_if_due("idle", "mqtt:", 60_000),
            Some(Duration::from_secs(1))
        );
        assert_eq!(b.durable_subscriptions(), 1, "not due yet");
        assert_eq!(b.expire_session_if_due("idle", "mqtt:", 61_000), None);
        assert_eq!(
            b.durable_subscriptions(),
            0,
            "its subscription went with it"
        );
        assert_eq!(
            b.expire_session_if_due("held", "mqtt:", 11_000),
            Some(Duration::from_secs(4))
        );
        b.checkpoint(false).await.unwrap();
        crash(b).await;

        let b = open(dir.path());
        assert_eq!(b.durable_subscriptions(), 0);
        assert_eq!(
            deadlines(&b, 20_000),
            vec![("held".to_string(), 15_000), ("taken".to_string(), 40_000)],
            "a checkpoint keeps the state, and the idle start journaled at the last restart"
        );
        // A connection takes "held" up before its timer fires: nothing expires.
        b.session_taken("held", 5, 7);
        assert_eq!(b.expire_session_if_due("held", "mqtt:", 20_000), None);
        assert_eq!(deadlines(&b, 20_000), vec![("taken".to_string(), 40_000)]);
    }

    #[tokio::test]
    async fn released_qos2_ids_are_kept_with_the_session_until_completed_or_ended() {
        let dir = tempfile::tempdir().unwrap();
        let b = open(dir.path());
        assert!(!b.session_released("nobody", 1, true), "no session");
        b.session_taken("c", NEVER_EXPIRES, 1);
        b.session_taken("d", 60, 2);
        for id in [7, 3, 9] {
            assert!(b.session_released("c", id, true));
        }
        assert!(b.session_released("c", 9, false), "completed");
        b.session_released("d", 5, true);
        assert!(b.session_left("c", NEVER_EXPIRES, 1, 1_000));
        crash(b).await;

        let b = open(dir.path());
        assert_eq!(b.released_of("c"), vec![3, 7], "the crash kept them");
        assert_eq!(b.released_of("d"), vec![5]);
        b.checkpoint(false).await.unwrap();
        b.session_taken("c", NEVER_EXPIRES, 3);
        b.session_released("c", 3, false);
        b.end_session("d", "mqtt:");
        crash(b).await;

        let b = open(dir.path());
        assert_eq!(
            b.released_of("c"),
            vec![7],
            "the checkpoint kept them, the completion after it too"
        );
        assert!(b.released_of("d").is_empty(), "an ended session keeps none");
    }

    #[tokio::test]
    async fn shared_subscriptions_are_kept_with_the_session_across_crashes_and_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let b = open(dir.path());
        let (mut changes, none) = b.kept_shares();
        assert!(none.is_empty());
        assert!(
            !b.keep_share("nobody", "mqtt:1:$share/g/a", true),
            "no session"
        );
        b.session_taken("c", 60, 1);
        assert!(b.keep_share("c", "mqtt:1:$share/g/a", true));
        assert!(b.keep_share("c", "mqtt:0:$share/h/#", true));
        assert!(changes.has_changed().unwrap(), "a change is announced");
        changes.mark_unchanged();
        // Taking the session again (a reconnect) keeps them; leaving it journals them too.
        b.session_taken("c", 30, 2);
        assert!(b.session_left("c", 30, 2, 1_000));
        b.session_taken("d", 60, 3);
        b.keep_share("d", "mqtt:1:$share/g/a", true);
        b.keep_share("d", "mqtt:1:$share/g/a", false);
        crash(b).await;

        let b = open(dir.path());
        assert_eq!(
            b.shares_of("c"),
            vec![
                "mqtt:0:$share/h/#".to_string(),
                "mqtt:1:$share/g/a".to_string()
            ]
        );
        assert!(b.shares_of("d").is_empty(), "dropped before the crash");
        b.checkpoint(false).await.unwrap();
        crash(b).await;

        let b = open(dir.path());
        let (changes, all) = b.kept_shares();
        assert_eq!(all.len(), 2, "a checkpoint keeps them: {all:?}");
        b.session_taken("c", 30, 4);
        b.end_session("c", "mqtt:");
        assert!(changes.has_changed().unwrap(), "their end is announced");
        assert!(b.kept_shares().1.is_empty());
        crash(b).await;
        let b = open(dir.path());
        assert!(
            b.shares_of("c").is_empty(),
            "an ended session keeps nothing"
        );
    }
}
