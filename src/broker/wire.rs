//! The native wire's view of a message, both ways: a `Send` (from a client, or inside a peer's
//! `Forward`) becomes a [`Draft`], and a [`Message`] is lent to the wire's encoders as a
//! [`MessageRef`]. Kept here so the client connection and the bridge share one conversion each
//! way; `wire` depends on nothing of ours, so this edge makes no cycle.

use crate::wire::{self, proto, MessageRef};

use super::message::{Draft, Message};

impl From<proto::Send> for Draft {
    fn from(s: proto::Send) -> Draft {
        Draft {
            body: s.body,
            headers: wire::headers_from_wire(s.headers),
            persistent: s.persistent,
            priority: s.priority,
            expires_at_ms: s.expires_at_ms,
            producer_id: s.producer_id,
            sequence: s.sequence,
            reply_to: s.reply_to,
            correlation_id: s.correlation_id,
            content_type: s.content_type,
            timestamp_ms: s.timestamp_ms,
            ..Draft::default()
        }
    }
}

impl<'a> From<&'a Message> for MessageRef<'a> {
    fn from(m: &'a Message) -> MessageRef<'a> {
        MessageRef {
            destination: m.destination.as_ref().map(|d| d.as_str()).unwrap_or(""),
            body: &m.body,
            headers: &m.headers,
            persistent: m.persistent,
            priority: m.priority as u32,
            expires_at_ms: m.expires_at_ms,
            producer_id: &m.producer_id,
            sequence: m.sequence,
            reply_to: &m.reply_to,
            correlation_id: &m.correlation_id,
            content_type: &m.content_type,
            timestamp_ms: m.timestamp_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::broker::{BrokerError, Destination, MessageBuilder};

    fn send() -> proto::Send {
        proto::Send {
            destination: "queue://a".into(),
            body: Bytes::from_static(b"hello"),
            headers: vec![proto::Header {
                key: "k".into(),
                value: "v".into(),
            }],
            persistent: true,
            priority: 7,
            expires_at_ms: 99,
            producer_id: Bytes::from_static(b"p1"),
            sequence: 5,
            reply_to: "queue://r".into(),
            correlation_id: "c".into(),
            content_type: "text/plain".into(),
            timestamp_ms: 1234,
            ..proto::Send::default()
        }
    }

    #[test]
    fn a_send_round_trips_through_the_builder_and_back_to_the_wire() {
        let mut m = MessageBuilder::default()
            .build(Draft::from(send()))
            .expect("a valid send");
        m.destination = Some(Destination::parse("queue://a").unwrap());
        let r = MessageRef::from(&*m);
        let s = send();
        assert_eq!(r.destination, s.destination);
        assert_eq!(r.body, &s.body[..]);
        assert_eq!(r.headers, &[("k".to_string(), "v".to_string())]);
        assert!(r.persistent);
        assert_eq!(r.priority, 7);
        assert_eq!(r.expires_at_ms, 99);
        assert_eq!(r.producer_id, b"p1");
        assert_eq!(r.sequence, 5);
        assert_eq!(r.reply_to, "queue://r");
        assert_eq!(r.correlation_id, "c");
        assert_eq!(r.content_type, "text/plain");
        assert_eq!(r.timestamp_ms, 1234);
    }

    #[test]
    fn the_builder_refuses_priorities_past_nine_naming_what_was_asked() {
        let mut s = send();
        s.priority = 300;
        assert_eq!(
            MessageBuilder::default().build(Draft::from(s)).err(),
            Some(BrokerError::BadPriority(300))
        );
        let mut s = send();
        s.priority = 9;
        assert!(MessageBuilder::default().build(Draft::from(s)).is_ok());
    }

    #[test]
    fn small_bodies_are_copied_out_of_the_read_buffer_and_large_ones_shared() {
        let chunk = Bytes::from(vec![7u8; 64 * 1024]);
        let mut b = MessageBuilder::default();
        let small = b
            .build(Draft {
                body: chunk.slice(0..100),
                ..Draft::default()
            })
            .unwrap();
        assert_ne!(
            small.body.as_ptr(),
            chunk.as_ptr(),
            "a small body pins the chunk"
        );
        let large = b
            .build(Draft {
                body: chunk.slice(0..32 * 1024),
                ..Draft::default()
            })
            .unwrap();
        assert_eq!(
            large.body.as_ptr(),
            chunk.as_ptr(),
            "a large body is copied"
        );
    }

    #[test]
    fn a_missing_timestamp_is_now_and_a_given_one_is_kept() {
        let before = crate::broker::now_ms();
        let m = MessageBuilder::default().build(Draft::default()).unwrap();
        assert!(m.timestamp_ms >= before);
        let mut s = send();
        s.timestamp_ms = 42;
        let m = MessageBuilder::default().build(Draft::from(s)).unwrap();
        assert_eq!(m.timestamp_ms, 42);
    }
}
