//! What an MQTT persistent session keeps of its QoS 1/2 deliveries in flight from one
//! connection of its client to the next (MQTT 3.1.1 §4.4, MQTT 5 §4.4): a delivery the client
//! had not acknowledged goes out again with the packet id it had, and a QoS 2 delivery whose
//! PUBREC was taken (the message is acknowledged here) gets its PUBREL again — not the message
//! — so a client that hands a QoS 2 message to its application on PUBREL does so once.
//!
//! The messages themselves wait in the session's durable subscriptions (journaled); this holds
//! only their packet ids, in memory, for the member's term. A restart or a failover loses
//! nothing the spec needs: a persistent session's delivery of a journaled message has the
//! packet id its journal index gives (`mqtt/publish.rs`), and the released QoS 2 ids are
//! journaled with the broker's kept session. Owns: the kept ids by client id.
//! Must not touch: the broker, sockets. Invariant: a client's ids are taken by at most one
//! connection (the next one of its client id, which follows the end of the last). Beside them,
//! the term's MQTT 5 wills waiting for their delay (`mqtt/will.rs`).

use std::collections::HashMap;

use bytes::Bytes;
use parking_lot::Mutex;

/// Which delivery a kept packet id belongs to: the durable subscription (persistent-session
/// subscription name) and the message's identity (producer id, sequence).
pub(crate) type DeliveryKey = (String, Bytes, u64);

/// The in-flight state of one session between two of its connections.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct KeptInflight {
    /// The packet id of each unacknowledged delivery.
    pub(crate) ids: HashMap<DeliveryKey, u16>,
    /// QoS 2 deliveries released (PUBREC taken) whose PUBCOMP had not come.
    pub(crate) released: Vec<u16>,
}

impl KeptInflight {
    pub(crate) fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.released.is_empty()
    }
}

/// The kept in-flight state of every persistent session of a member term, by client id.
#[derive(Debug, Default)]
pub(crate) struct MqttSessions {
    kept: Mutex<HashMap<String, KeptInflight>>,
    /// MQTT 5 wills waiting for their delay, by client id.
    pub(crate) wills: super::mqtt::will::DelayedWills,
}

impl MqttSessions {
    /// Keeps what the connection of `client_id` that just ended had in flight.
    pub(crate) fn keep(&self, client_id: &str, kept: KeptInflight) {
        let mut all = self.kept.lock();
        if kept.is_empty() {
            all.remove(client_id);
        } else {
            all.insert(client_id.to_string(), kept);
        }
    }

    /// What the last connection of `client_id` had in flight (taken: kept once).
    pub(crate) fn take(&self, client_id: &str) -> KeptInflight {
        self.kept.lock().remove(client_id).unwrap_or_default()
    }

    /// Forgets the session of `client_id` (a clean start, or its session ended).
    pub(crate) fn forget(&self, client_id: &str) {
        self.kept.lock().remove(client_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_ids_are_taken_once_and_an_empty_state_or_a_forgotten_session_keeps_nothing() {
        let sessions = MqttSessions::default();
        let mut kept = KeptInflight::default();
        kept.ids
            .insert(("mqtt:2:a/b".into(), Bytes::from_static(b"p"), 7), 42);
        kept.released.push(9);
        sessions.keep("c1", kept.clone());
        assert_eq!(sessions.take("c1"), kept);
        assert!(sessions.take("c1").is_empty(), "taken once");
        sessions.keep("c1", kept.clone());
        sessions.keep("c1", KeptInflight::default());
        assert!(
            sessions.take("c1").is_empty(),
            "an empty state replaces the last"
        );
        sessions.keep("c2", kept);
        sessions.forget("c2");
        assert!(sessions.take("c2").is_empty());
    }
}
