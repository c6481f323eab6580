//! A message as the broker holds it, the memory it is charged for, and the one way a message
//! from outside becomes one: [`MessageBuilder::build`] from a [`Draft`], for producers of every
//! protocol and for peer groups' forwards alike.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};

use super::memory::MemoryCharge;
use super::{now_ms, BrokerError};
use crate::destination::{Destination, Kind};
use crate::selector::MessageView;

/// Bytes charged for a message beyond its body and headers (struct, Arc, queue slots).
pub const MESSAGE_OVERHEAD: u64 = 256;

/// Highest message priority (JMS: 0..=9, 4 by default).
pub const MAX_PRIORITY: u8 = 9;
pub const DEFAULT_PRIORITY: u8 = 4;
/// A message header `true` asks its topic to retain it (MQTT's retain flag; ActiveMQ's
/// property of the same name), so it travels the mesh with the message.
pub const RETAIN_HEADER: &str = "ActiveMQ.Retain";

/// Bodies smaller than this are copied out of the buffer they arrived in, so a message that
/// lives long never pins a whole read chunk; larger ones share it (a copy would cost more than
/// the chunk they keep alive).
pub const COPY_BODY_BELOW: usize = 16 * 1024;

/// A message as it arrives from outside (a producer, or a peer group's forward), before the
/// broker takes it. Only [`MessageBuilder::build`] turns it into a [`Message`].
#[derive(Debug, Default)]
pub struct Draft {
    pub body: Bytes,
    pub headers: Vec<(String, String)>,
    pub persistent: bool,
    /// As asked; JMS priorities are 0..=9 and anything else is refused.
    pub priority: u32,
    /// Milliseconds since the Unix epoch; 0 = never.
    pub expires_at_ms: u64,
    pub producer_id: Bytes,
    pub sequence: u64,
    pub reply_to: String,
    pub correlation_id: String,
    pub content_type: String,
    /// When the producer sent it (ms since the epoch); 0 = now.
    pub timestamp_ms: u64,
    /// Groups a forwarded message came through, oldest first (empty from a producer).
    pub broker_path: Vec<Arc<str>>,
    /// For a forwarded topic message: the groups it is still meant to reach.
    pub targets: Option<Arc<[Arc<str>]>>,
    /// Deliveries before it arrived here (a forwarded message keeps its history).
    pub redeliveries: u32,
    /// The body is a copy of its own, not a slice of a read buffer (its decoder copied it
    /// out): the builder keeps it as it is instead of copying it again.
    pub body_is_own: bool,
}

/// Builds the messages of one connection or bridge. It remembers the last producer id it
/// copied, so a producer's id is copied out of the read buffer once, not once per message;
/// and inside a run of frames ([`MessageBuilder::begin_run`]) it reads the clock once for the
/// run, not once per message.
#[derive(Debug, Default)]
pub struct MessageBuilder {
    last_producer: Bytes,
    clock: RunClock,
}

/// When the messages a builder makes were received.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum RunClock {
    /// Outside a run: each message reads the clock.
    #[default]
    PerMessage,
    /// In a run whose first message is still to come.
    RunStarted,
    /// In a run whose first message was received at this time (ms since the epoch).
    Run(u64),
}

impl MessageBuilder {
    /// Starts a run of frames that all arrived before it began (one read's worth): every
    /// message built until [`MessageBuilder::end_run`] is stamped received at the time the
    /// first of them was built. That time is after each of them arrived and within the run's
    /// few microseconds of when each is taken, and a clock read per message was 2 % of the
    /// broker's CPU on a queue load.
    pub fn begin_run(&mut self) {
        self.clock = RunClock::RunStarted;
    }

    /// Ends the run [`MessageBuilder::begin_run`] started: the next message reads the clock.
    pub fn end_run(&mut self) {
        self.clock = RunClock::PerMessage;
    }

    /// Now, as this builder stamps messages (see [`MessageBuilder::begin_run`]).
    fn now_ms(&mut self) -> u64 {
        match self.clock {
            RunClock::PerMessage => now_ms(),
            RunClock::RunStarted => {
                let now = now_ms();
                self.clock = RunClock::Run(now);
                now
            }
            RunClock::Run(now) => now,
        }
    }

    /// The message `draft` describes. The rules are the same for every protocol: a priority
    /// outside JMS's 0..=9 is refused (naming what was asked); small bodies and producer ids
    /// are copied out of the read buffer (see [`COPY_BODY_BELOW`]) unless the decoder already
    /// did ([`Draft::body_is_own`]); a missing timestamp is now.
    pub fn build(&mut self, draft: Draft) -> Result<NewMessage, BrokerError> {
        if draft.priority > MAX_PRIORITY as u32 {
            return Err(BrokerError::BadPriority(draft.priority));
        }
        let body = if draft.body.len() < COPY_BODY_BELOW && !draft.body_is_own {
            Bytes::copy_from_slice(&draft.body)
        } else {
            draft.body
        };
        if draft.producer_id != self.last_producer {
            self.last_producer = Bytes::copy_from_slice(&draft.producer_id);
        }
        // When this broker received it (which `Session::stamp` and the queue reuse), and the
        // timestamp of a message its producer did not stamp: the run's one clock read, for a
        // stamped message too (else `Session::stamp` read the clock for each of those).
        let now = self.now_ms();
        let timestamp_ms = if draft.timestamp_ms == 0 {
            now
        } else {
            draft.timestamp_ms
        };
        // Written straight into its allocation: `Arc::new` of a message built on the stack
        // copied it there, twice.
        let mut slot = Arc::<Message>::new_uninit();
        Arc::get_mut(&mut slot)
            .expect("a new Arc is held by nobody else")
            .write(Message {
                destination: None,
                body,
                headers: draft.headers,
                persistent: draft.persistent,
                priority: draft.priority as u8,
                expires_at_ms: draft.expires_at_ms,
                producer_id: self.last_producer.clone(),
                sequence: draft.sequence,
                reply_to: draft.reply_to,
                correlation_id: draft.correlation_id,
                content_type: draft.content_type,
                timestamp_ms,
                received_ms: now,
                broker_path: draft.broker_path,
                targets: draft.targets,
                redeliveries: draft.redeliveries,
                sequence_checked: false,
                origin: 0,
                store_index: 0,
                retain_index: 0,
                durable_refs: AtomicU32::new(0),
                charge: MemoryCharge::none(),
                encoded: OnceLock::new(),
            });
        // SAFETY: written just above.
        Ok(NewMessage(unsafe { slot.assume_init() }))
    }
}

/// A message not accepted yet, already in the `Arc` the broker will share it in: built there
/// by [`MessageBuilder::build`], stamped there by the session and handed to its queue or topic
/// as it is. A `Message` of some 350 bytes moved by value from the builder through publish
/// into its `Arc` was copied at each step (6–7 % of the broker's CPU on a queue load); this
/// moves a pointer. Nothing else holds the `Arc` until [`NewMessage::into_shared`], so the
/// message can still be changed in place.
#[derive(Debug)]
pub struct NewMessage(Arc<Message>);

impl NewMessage {
    /// Gives the message up to be shared: from here on it is immutable.
    pub(crate) fn into_shared(self) -> Arc<Message> {
        self.0
    }
}

impl From<Message> for NewMessage {
    fn from(msg: Message) -> NewMessage {
        NewMessage(Arc::new(msg))
    }
}

impl Deref for NewMessage {
    type Target = Message;

    fn deref(&self) -> &Message {
        &self.0
    }
}

impl DerefMut for NewMessage {
    fn deref_mut(&mut self) -> &mut Message {
        Arc::get_mut(&mut self.0).expect("a new message's Arc is shared only once it is accepted")
    }
}

/// One message. Immutable once accepted: the broker shares it (`Arc`) between every queue
/// slot and subscriber that holds it, so a message fanned out to a thousand subscribers is
/// one allocation. Per-delivery facts (redelivery count, tag) live beside it, not in it.
#[derive(Debug, Default)]
pub struct Message {
    pub destination: Option<Destination>,
    pub body: Bytes,
    pub headers: Vec<(String, String)>,
    pub persistent: bool,
    pub priority: u8,
    /// Milliseconds since the Unix epoch; 0 = never.
    pub expires_at_ms: u64,
    /// Identity: (producer id, sequence).
    pub producer_id: Bytes,
    pub sequence: u64,
    pub reply_to: String,
    pub correlation_id: String,
    pub content_type: String,
    pub timestamp_ms: u64,
    /// When this broker received it (ms since the epoch): the builder's clock read when it
    /// stamped the message, else set when accepted (`publish`); 0 = not through `publish`,
    /// e.g. recovered from the journal. For the dispatch latency metric.
    pub received_ms: u64,
    /// Groups this message was forwarded through (network connectors), oldest first.
    pub broker_path: Vec<Arc<str>>,
    /// For a forwarded topic message: the groups it is still meant to reach (the origin chose
    /// one route to each); `None` for a message published here.
    pub targets: Option<Arc<[Arc<str>]>>,
    /// Deliveries before it arrived here (a forwarded message keeps its history).
    pub redeliveries: u32,
    /// Duplicate detection was done elsewhere (forwarded messages).
    pub(crate) sequence_checked: bool,
    /// The broker connection that published it (0 = none), for `no_local` subscriptions.
    pub origin: u64,
    /// Its journal record (0 = not journaled).
    pub(crate) store_index: u64,
    /// The `retained` journal record that makes it its topic's retained message (0: none, or
    /// its own record, `store_index`, does).
    pub(crate) retain_index: u64,
    /// Durable subscriptions holding this (journaled topic) message.
    pub(crate) durable_refs: AtomicU32,
    pub(crate) charge: MemoryCharge,
    /// What one protocol codec encoded of this message once for all its deliveries (a topic
    /// message's subscribers): the codec's key and the bytes. See [`Message::encoded_once`].
    pub(crate) encoded: OnceLock<(u32, Box<[u8]>)>,
}

impl Message {
    /// Bytes this message is charged against memory limits. A topic message's headers count
    /// twice: its subscribers' codec may keep them encoded once more ([`Message::encoded_once`]).
    pub fn memory_size(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 48)
            .sum();
        let fields = (self.producer_id.len()
            + self.reply_to.len()
            + self.correlation_id.len()
            + self.content_type.len()) as u64;
        let mut size = MESSAGE_OVERHEAD + self.body.len() as u64 + headers as u64 + fields;
        if self
            .destination
            .as_ref()
            .is_some_and(|d| matches!(d.kind(), Kind::Topic | Kind::TempTopic))
        {
            size += headers as u64 + fields;
        }
        size
    }

    /// The bytes `encode` writes for this message, encoded by the first delivery that asks and
    /// shared by every later one (a topic message reaching a thousand subscribers is encoded
    /// once, not a thousand times). The cache has one slot: `key` names the codec and the
    /// variant of its encoding (a protocol version), and a caller whose key did not fill the
    /// slot gets `None` and encodes for itself. Only what is the same for every delivery with
    /// that key may go in: nothing that depends on the subscription or the connection.
    pub fn encoded_once(&self, key: u32, encode: impl FnOnce(&mut BytesMut)) -> Option<&[u8]> {
        let (filled_by, bytes) = self.encoded.get_or_init(|| {
            let mut buf = BytesMut::new();
            encode(&mut buf);
            (key, Vec::from(buf).into_boxed_slice())
        });
        (*filled_by == key).then_some(&bytes[..])
    }

    /// Published to be retained by its topic (MQTT retain; ActiveMQ's `ActiveMQ.Retain`).
    pub fn is_retained(&self) -> bool {
        self.headers
            .iter()
            .any(|(k, v)| k == RETAIN_HEADER && v == "true")
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms != 0 && now_ms >= self.expires_at_ms
    }

    /// The destination it was accepted on. Every accepted message has one.
    pub fn dest(&self) -> &Destination {
        self.destination
            .as_ref()
            .expect("accepted messages always carry their destination")
    }

    /// A copy for another destination (dead-lettering), sharing the body.
    pub(crate) fn copy_to(&self, destination: Destination, extra: &[(&str, String)]) -> Message {
        let mut headers = self.headers.clone();
        for (k, v) in extra {
            headers.retain(|(hk, _)| hk != k);
            headers.push((k.to_string(), v.clone()));
        }
        Message {
            destination: Some(destination),
            body: self.body.clone(),
            headers,
            persistent: self.persistent,
            priority: self.priority,
            expires_at_ms: 0,
            producer_id: self.producer_id.clone(),
            sequence: self.sequence,
            reply_to: self.reply_to.clone(),
            correlation_id: self.correlation_id.clone(),
            content_type: self.content_type.clone(),
            timestamp_ms: self.timestamp_ms,
            received_ms: self.received_ms,
            broker_path: self.broker_path.clone(),
            targets: None,
            redeliveries: 0,
            sequence_checked: false,
            origin: 0,
            store_index: 0,
            retain_index: 0,
            durable_refs: AtomicU32::new(0),
            charge: MemoryCharge::none(),
            encoded: OnceLock::new(),
        }
    }
}

/// How far ahead of the one being handled a run over queued messages (dispatch, acks) asks the
/// CPU for the next ones: far enough that each message's first cache line arrives while the
/// ones before it are handled, near enough that it is still there when its turn comes.
pub(crate) const PREFETCH_AHEAD: usize = 4;

/// Asks the CPU to start loading `msg`'s cache lines (its `Arc` counts and every field: an ack
/// drops it whole) without waiting for them. A backlogged queue's messages were written long
/// before they are dispatched or acknowledged and are no longer in cache: one miss per message,
/// taken one at a time, was the costliest load of the dispatch round and of the ack. A hint
/// only: it changes no state.
#[inline]
pub(crate) fn prefetch(msg: &Arc<Message>) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let start = Arc::as_ptr(msg).cast::<i8>();
        for offset in (0..std::mem::size_of::<Message>()).step_by(64) {
            // SAFETY: a prefetch reads nothing the program sees and never faults; the address
            // lies inside a live `Arc`'s message anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset)) }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = msg;
}

/// A message in a queue (or a subscriber's private queue) with its delivery history.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub msg: Arc<Message>,
    /// Arrival order in its queue; redelivered entries go back in this order.
    pub seq: u64,
    pub redeliveries: u32,
    /// When it arrived on this broker (ms since the epoch), for replay delays.
    pub arrived_ms: u64,
}

/// What a connection receives from the broker: one delivery of a message to one of its
/// subscriptions.
#[derive(Debug)]
pub struct Delivery {
    /// The subscription id the client chose.
    pub subscription: u64,
    /// Increasing per subscription; acks name it.
    pub tag: u64,
    pub redelivery_count: u32,
    pub message: Arc<Message>,
}

/// What a selector sees of a message: its user headers (STOMP's `type` header is `JMSType`),
/// and the JMS header fields meshmq keeps.
impl MessageView for Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn priority(&self) -> u8 {
        self.priority
    }

    fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }

    fn persistent(&self) -> bool {
        self.persistent
    }

    fn jms_type(&self) -> Option<&str> {
        self.header("type")
    }

    fn correlation_id(&self) -> Option<&str> {
        (!self.correlation_id.is_empty()).then_some(self.correlation_id.as_str())
    }

    /// The id consumers see (`message-id` in STOMP): `ID:` producer id `:` sequence.
    fn message_id(&self) -> Option<String> {
        (!self.producer_id.is_empty() && self.sequence != 0).then(|| {
            format!(
                "ID:{}:{}",
                String::from_utf8_lossy(&self.producer_id),
                self.sequence
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(builder: &mut MessageBuilder) -> u64 {
        builder.build(Draft::default()).unwrap().received_ms
    }

    fn later_than(ms: u64) {
        while now_ms() <= ms {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn a_run_stamps_its_messages_with_one_clock_read_and_the_clock_is_read_again_after_it() {
        let mut builder = MessageBuilder::default();
        let before = now_ms();
        builder.begin_run();
        let first = received(&mut builder);
        assert!(
            first >= before,
            "the run's clock is read when its first message comes"
        );
        later_than(first);
        assert_eq!(received(&mut builder), first, "one read for the whole run");
        builder.end_run();
        assert!(
            received(&mut builder) > first,
            "outside a run each message reads the clock"
        );
        let outside = received(&mut builder);
        later_than(outside);
        builder.begin_run();
        assert!(
            received(&mut builder) > outside,
            "a new run reads the clock anew"
        );
    }
}
