//! Subscriptions as streams of deliveries, with their acknowledgements, and the router that
//! hands request/reply answers to the waiting requests.

use super::*;

/// A message received on a subscription.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub subscription: u64,
    pub tag: u64,
    pub destination: String,
    pub body: Bytes,
    pub headers: Vec<(String, String)>,
    pub persistent: bool,
    pub priority: u8,
    pub expires_at_ms: u64,
    pub producer_id: Bytes,
    pub sequence: u64,
    /// Earlier deliveries of this message (0 = first delivery).
    pub redelivery_count: u32,
    pub reply_to: String,
    pub correlation_id: String,
    pub content_type: String,
    pub timestamp_ms: u64,
    /// The connection (counted from 0 by a failover client) it arrived on.
    pub(super) epoch: u64,
}

impl Delivery {
    pub fn redelivered(&self) -> bool {
        self.redelivery_count > 0
    }

    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn from_wire(d: proto::Deliver, epoch: u64) -> Delivery {
        Delivery {
            epoch,
            subscription: d.subscription,
            tag: d.tag,
            destination: d.destination,
            body: d.body,
            headers: wire::headers_from_wire(d.headers),
            persistent: d.persistent,
            priority: d.priority.min(u8::MAX as u32) as u8,
            expires_at_ms: d.expires_at_ms,
            producer_id: d.producer_id,
            sequence: d.sequence,
            redelivery_count: d.redelivery_count,
            reply_to: d.reply_to,
            correlation_id: d.correlation_id,
            content_type: d.content_type,
            timestamp_ms: d.timestamp_ms,
        }
    }
}

/// A subscription: a stream of deliveries. Dropping it does not unsubscribe (call
/// `unsubscribe`); the broker ends it when the connection closes. A failover client restores
/// it on every new connection, with the same id.
pub struct Subscription {
    pub(super) client: Client,
    pub(super) id: u64,
    pub(super) destination: String,
    pub(super) ack: AckMode,
    /// Boxed deliveries: the channel's blocks then hold 32 pointers, not 32 deliveries (an
    /// idle subscription would otherwise reserve ~8 KiB, and its first delivery fault in a
    /// fresh page).
    pub(super) rx: mpsc::UnboundedReceiver<Box<Delivery>>,
    pub(super) auto_batch: u32,
    pub(super) auto_pending: u32,
    pub(super) auto_last: u64,
    pub(super) auto_epoch: u64,
    pub(super) open: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("destination", &self.destination)
            .finish()
    }
}

impl Subscription {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn destination(&self) -> &str {
        &self.destination
    }

    pub(super) fn current(&self, d: &Delivery) -> bool {
        d.epoch == self.client.shared.epoch()
    }

    /// The next delivery; `None` once the client has ended. Deliveries that arrived on a
    /// connection a failover client has since lost, or is leaving, are skipped: the broker
    /// redelivers them.
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            let d = match self.rx.try_recv() {
                Ok(d) => d,
                Err(_) => {
                    // About to wait: acknowledge what the application already took.
                    self.flush_auto_ack().await;
                    self.rx.recv().await?
                }
            };
            // A delivery of a connection that ended, or of one leaving its broker (which takes
            // it back: an ack could not reach it any more).
            if !self.current(&d) || self.client.shared.leaving.load(Ordering::Acquire) {
                continue;
            }
            self.note(&d).await;
            return Some(*d);
        }
    }

    /// Like `next`, giving up after `timeout`.
    pub async fn next_timeout(&mut self, timeout: Duration) -> Option<Delivery> {
        tokio::time::timeout(timeout, self.next())
            .await
            .ok()
            .flatten()
    }

    async fn note(&mut self, d: &Delivery) {
        if self.ack == AckMode::Auto {
            if d.epoch != self.auto_epoch {
                self.auto_pending = 0;
                self.auto_epoch = d.epoch;
            }
            self.auto_pending += 1;
            self.auto_last = d.tag;
            if self.auto_pending >= self.auto_batch {
                self.flush_auto_ack().await;
            }
        }
    }

    async fn flush_auto_ack(&mut self) {
        if self.auto_pending > 0 && self.open {
            self.auto_pending = 0;
            if self.auto_epoch != self.client.shared.epoch() {
                return;
            }
            let frame = wire::frame(Body::Ack(proto::Ack {
                subscription: self.id,
                up_to: self.auto_last,
                tags: Vec::new(),
                receipt: 0,
                transaction: 0,
            }));
            let _ = self.client.send_frame_of(&frame, self.auto_epoch).await;
        }
    }

    fn ack_frame(&self, d: &Delivery) -> Frame {
        let cumulative = self.ack == AckMode::Client;
        wire::frame(Body::Ack(proto::Ack {
            subscription: self.id,
            up_to: if cumulative { d.tag } else { 0 },
            tags: if cumulative { Vec::new() } else { vec![d.tag] },
            receipt: 0,
            transaction: 0,
        }))
    }

    pub(super) fn stale(&self) -> ClientError {
        ClientError::Interrupted(
            "the delivery came on a connection that has since failed over; the broker redelivers it"
                .into(),
        )
    }

    /// Acknowledges `d` (and, in `Client` mode, every earlier delivery). A delivery from a
    /// connection lost since is not acknowledged (its tag means nothing to the new one).
    pub async fn ack(&self, d: &Delivery) -> Result<(), ClientError> {
        if !self.current(d) {
            return Ok(());
        }
        self.client
            .send_frame_of(&self.ack_frame(d), d.epoch)
            .await
            .map(|_| ())
    }

    /// Acknowledges and waits for the broker to confirm.
    pub async fn ack_with_receipt(&self, d: &Delivery) -> Result<(), ClientError> {
        if !self.current(d) {
            return Err(self.stale());
        }
        self.client
            .send_frame_of_with_receipt(self.ack_frame(d), d.epoch)
            .await
    }

    /// Returns `d` to the broker for redelivery.
    pub async fn nack(&self, d: &Delivery) -> Result<(), ClientError> {
        if !self.current(d) {
            // The lost connection already returned it.
            return Ok(());
        }
        let nack = wire::frame(Body::Nack(proto::Nack {
            subscription: self.id,
            tags: vec![d.tag],
            receipt: 0,
        }));
        self.client.send_frame_of_with_receipt(nack, d.epoch).await
    }

    /// Ends the subscription; with `remove_durable`, a durable subscription is deleted too.
    pub async fn unsubscribe(mut self, remove_durable: bool) -> Result<(), ClientError> {
        self.flush_auto_ack().await;
        self.open = false;
        self.client.shared.subs.lock().remove(&self.id);
        self.client
            .send_frame_with_receipt(wire::frame(Body::Unsubscribe(proto::Unsubscribe {
                subscription: self.id,
                receipt: 0,
                remove_durable,
            })))
            .await
    }
}

impl futures_core::Stream for Subscription {
    type Item = Delivery;

    /// Raw stream access: no automatic acknowledgement (use `next` for `AckMode::Auto`), and
    /// deliveries of a lost connection are not filtered out.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.rx.poll_recv(cx).map(|d| d.map(|d| *d))
    }
}

/// Routes replies arriving on this client's reply queue to the waiting requests.
pub(crate) struct ReplyRouter {
    pub(super) queue: String,
    pub(super) pending: Arc<Mutex<HashMap<String, oneshot::Sender<Delivery>>>>,
}

impl ReplyRouter {
    pub(super) async fn start(client: &Client) -> Result<ReplyRouter, ClientError> {
        let background = Client {
            shared: client.shared.clone(),
            _guard: None,
        };
        let queue = background.temp_queue_name();
        let mut sub = background
            .subscribe(&queue, SubscribeOptions::default())
            .await?;
        let pending: Arc<Mutex<HashMap<String, oneshot::Sender<Delivery>>>> = Arc::default();
        let routes = pending.clone();
        tokio::spawn(async move {
            while let Some(d) = sub.next().await {
                if let Some(tx) = routes.lock().remove(&d.correlation_id) {
                    let _ = tx.send(d);
                }
            }
        });
        Ok(ReplyRouter { queue, pending })
    }
}
