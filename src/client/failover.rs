//! The failover transport's supervisor: it owns the connection task of a `failover:(…)` client
//! and replaces it when it ends — after a broken link (reconnect by the failover options), a
//! broker's request to move (`reconnect_to`), or a priority broker coming back
//! (`priorityBackup`), or a broker's notice that it is stopping (`leave`: a drain). A new
//! connection is restored before senders are let in (see `Shared::restore`). Moves are polite:
//! the new broker is connected first (after a `leave`, the failover URL is followed once the
//! old connection has ended), then the old connection sends `Disconnect` after everything
//! queued and leaves when its receipt — the last of all its receipts — arrives, so a move never
//! leaves a send in doubt; a leave the broker never confirms is reported (see
//! `run_connection`).
//!
//! The reconnect loop follows ActiveMQ's `doReconnect`: the connect list is the broker-pushed
//! URIs, then the `updateURIsURL` file's, then the static ones (never dropped), shuffled when
//! `randomize` — weighted by the room each pushed group had when the broker last told the
//! client (its capacity less its clients), so the clients of a dead broker land on the
//! emptier survivors — the broker that just failed last; a failed round backs off
//! (`initialReconnectDelay` × `reconnectDelayExponent`, up to `maxReconnectDelay`); past
//! `maxReconnectAttempts` rounds (`startupMaxReconnectAttempts` before the first connection)
//! the client ends with the last error. With `backup` it keeps `backupPoolSize` warm standby
//! connections to other brokers and fails over onto one without dialling.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::transport::{IoEvent, Pump};
use crate::wire::{self, proto, Body, Decoded};

use super::{
    open, run_connection, server_info, BrokerUrl, Client, ClientError, ClientOptions, End,
    ErrorCode, Hello, SendTracker, Shared,
};
use crate::url::{parse_uri_list, FailoverOptions, FailoverUrl};

/// What happened to a failover client, in order. Read them with [`Client::events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The connection to `url` broke; the client is reconnecting. Sends wait (at most the
    /// failover `timeout`), deliveries not yet acknowledged will be redelivered.
    Interrupted { url: String, reason: String },
    /// Connected again (or moved) to `url`: subscriptions restored with their ids, sends
    /// that had no receipt re-sent (the broker drops what it already had).
    Resumed {
        url: String,
        group: String,
        member: String,
        subscriptions: usize,
        resent: usize,
        /// True when the client moved on purpose (rebalance, priority broker), false after a
        /// broken connection.
        moved: bool,
    },
    /// The client is moving to `to` on purpose; `reason` says why.
    Moving {
        from: String,
        to: String,
        reason: String,
    },
    /// A broker pushed the mesh: the URIs this client now knows besides its static ones.
    ClusterUpdated { uris: Vec<String> },
    /// A subscription could not be restored on the new broker; its stream has ended.
    SubscriptionLost { subscription: u64, reason: String },
    /// The client gave up (`maxReconnectAttempts`) or was refused for good.
    Failed { reason: String },
}

/// The reconnect delay: `initialReconnectDelay`, multiplied by `reconnectDelayExponent` after
/// each failed round when `useExponentialBackOff`, never above `maxReconnectDelay`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    factor: f64,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(o: &FailoverOptions) -> Backoff {
        let initial = o.initial_reconnect_delay.min(o.max_reconnect_delay);
        Backoff {
            initial,
            max: o.max_reconnect_delay,
            factor: if o.use_exponential_backoff {
                o.reconnect_delay_exponent
            } else {
                1.0
            },
            next: initial,
        }
    }

    /// The delay to wait now; the one after it grows.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let now = self.next;
        self.next = self.next.mul_f64(self.factor).min(self.max);
        now
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Errors no other broker would answer differently: the client stops instead of retrying.
fn is_final(e: &ClientError) -> bool {
    match e {
        ClientError::Refused { code, .. } => matches!(
            code,
            ErrorCode::Unauthenticated | ErrorCode::Forbidden | ErrorCode::ProtocolVersion
        ),
        ClientError::InvalidArgument(_) | ClientError::Url(_) => true,
        _ => false,
    }
}

/// A connected, handshaken broker connection not yet running.
pub(crate) struct Conn {
    url: BrokerUrl,
    pump: Pump,
    connected: proto::Connected,
}

type Attempt = Pin<Box<dyn Future<Output = Option<Conn>> + Send>>;

/// A warm standby connection (`backup`): connected and logged in to another broker, kept
/// alive with heartbeats (what the broker pushes to it is read and dropped), and handed over
/// when the live connection breaks — a failover without a dial.
struct Standby {
    url: BrokerUrl,
    give: Option<oneshot::Sender<()>>,
    task: JoinHandle<Option<Conn>>,
}

impl Standby {
    fn open(url: BrokerUrl, options: ClientOptions, hello: Hello) -> Standby {
        let (give, take) = oneshot::channel::<()>();
        let target = url.clone();
        let task = tokio::spawn(async move {
            let (mut pump, connected) = open(&target, &options, &hello).await.ok()?;
            let mut take = take;
            let every = if options.heartbeat.is_zero() {
                Duration::from_secs(10)
            } else {
                options.heartbeat
            };
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    given = &mut take => {
                        return given.ok().map(|()| Conn { url: target, pump, connected });
                    }
                    ev = pump.next_event(true, 0, |_| std::task::Poll::Pending) => match ev {
                        Ok(IoEvent::Read) => loop {
                            match wire::decode(&mut pump.rbuf, options.max_frame_size) {
                                Ok(Decoded::Frame(_)) => {}
                                Ok(Decoded::NeedMore(_)) => break,
                                Err(_) => return None,
                            }
                        },
                        Ok(IoEvent::Closed) | Err(_) => return None,
                        Ok(_) => {}
                    },
                    _ = tick.tick() => {
                        if !options.heartbeat.is_zero() {
                            wire::encode(&wire::frame(Body::Heartbeat(proto::Heartbeat { receipt: 0 })), &mut pump.wbuf);
                        }
                    }
                }
            }
        });
        Standby {
            url,
            give: Some(give),
            task,
        }
    }

    /// The standby's connection, if it is still alive.
    async fn take(mut self) -> Option<Conn> {
        if let Some(give) = self.give.take() {
            let _ = give.send(());
        }
        self.task.await.ok().flatten()
    }
}

/// How often the `backup` pool is topped up.
const BACKUP_REFILL: Duration = Duration::from_secs(1);

/// Tries `urls` in order; the first that connects wins.
async fn first_of(urls: Vec<BrokerUrl>, options: ClientOptions, hello: Hello) -> Option<Conn> {
    for url in urls {
        let mut hello = hello.clone();
        hello.priority_pinned &= hello.priority.iter().any(|p| p.same_broker(&url));
        if let Ok((pump, connected)) = open(&url, &options, &hello).await {
            return Some(Conn {
                url,
                pump,
                connected,
            });
        }
    }
    None
}

/// How often a `priorityBackup` client off its priority broker tries to get back (jittered).
const PRIORITY_PROBE: Duration = Duration::from_secs(1);
/// How often an `updateURIsURL` file is re-read while connected.
const URIS_FILE_POLL: Duration = Duration::from_secs(1);

struct Supervisor {
    url: FailoverUrl,
    options: ClientOptions,
    shared: Arc<Shared>,
    /// URIs from the brokers' cluster pushes (only the scheme(s) of the static URIs), each
    /// with its share of its group's room (`None`: the group's capacity is unknown).
    pushed: Vec<BrokerUrl>,
    room: Vec<Option<f64>>,
    /// URIs from the `updateURIsURL` file, and its text when last read.
    from_file: Vec<BrokerUrl>,
    file_text: Option<String>,
    /// Successful connections so far.
    connects: u64,
}

impl Supervisor {
    fn new(url: FailoverUrl, options: ClientOptions, shared: Arc<Shared>) -> Supervisor {
        Supervisor {
            url,
            options,
            shared,
            pushed: Vec::new(),
            room: Vec::new(),
            from_file: Vec::new(),
            file_text: None,
            connects: 0,
        }
    }

    fn o(&self) -> &FailoverOptions {
        &self.url.options
    }

    fn hello(&self) -> Hello {
        let reconnect = self.connects > 0;
        let (resent_from_group, resends_below) = if reconnect {
            self.shared.resends()
        } else {
            (String::new(), 0)
        };
        Hello {
            fault_tolerant: true,
            failover_reconnect: reconnect,
            temp_prefixes: if reconnect {
                vec![self.shared.temp_prefix.clone()]
            } else {
                Vec::new()
            },
            priority_pinned: self.o().priority_backup,
            resent_from_group,
            resends_below,
            priority: self.priority_uris(),
        }
    }

    fn priority_uris(&self) -> Vec<BrokerUrl> {
        if self.o().priority_uris.is_empty() {
            self.url.uris.iter().take(1).cloned().collect()
        } else {
            self.o().priority_uris.clone()
        }
    }

    fn on_priority(&self, url: &BrokerUrl) -> bool {
        self.o().priority_backup && self.url.is_priority(url)
    }

    /// Pushed and file URIs first, then the static ones; shuffled when `randomize`; `last`
    /// (the broker that just failed) at the end.
    fn connect_list(&self, last: Option<&BrokerUrl>) -> Vec<BrokerUrl> {
        let mut list: Vec<BrokerUrl> = Vec::new();
        for u in self
            .pushed
            .iter()
            .chain(&self.from_file)
            .chain(&self.url.uris)
        {
            if !list.iter().any(|x| x.same_broker(u)) {
                list.push(u.clone());
            }
        }
        if self.o().randomize {
            self.shuffle_by_room(&mut list);
        }
        if self.o().priority_backup {
            // A priority broker is tried first whenever it may be up.
            list.sort_by_key(|u| !self.url.is_priority(u));
        }
        if let Some(last) = last {
            if let Some(i) = list.iter().position(|u| u.same_broker(last)) {
                let failed = list.remove(i);
                list.push(failed);
            }
        }
        list
    }

    /// A random order in which a URI comes early in proportion to its group's room (weighted
    /// sampling without replacement: each key is u^(1/weight), largest first). URIs without a
    /// known room weigh as much as the roomiest known one.
    fn shuffle_by_room(&self, list: &mut Vec<BrokerUrl>) {
        let room_of = |u: &BrokerUrl| {
            self.pushed
                .iter()
                .position(|p| p.same_broker(u))
                .and_then(|i| self.room[i])
        };
        let known = list.iter().filter_map(room_of).fold(0.0_f64, f64::max);
        let fallback = if known > 0.0 { known } else { 1.0 };
        let mut keyed: Vec<(f64, BrokerUrl)> = list
            .drain(..)
            .map(|u| {
                let weight = room_of(&u).unwrap_or(fallback);
                let r: f64 = rand::random::<f64>().max(f64::MIN_POSITIVE);
                (r.powf(1.0 / weight), u)
            })
            .collect();
        keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
        list.extend(keyed.into_iter().map(|(_, u)| u));
    }

    /// Re-reads the `updateURIsURL` file; true when its list changed.
    fn read_uris_file(&mut self) -> bool {
        let Some(path) = self.o().update_uris_url.clone() else {
            return false;
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot read updateURIsURL");
                return false;
            }
        };
        if self.file_text.as_deref() == Some(text.as_str()) {
            return false;
        }
        match parse_uri_list(text.trim(), &self.url.nested) {
            Ok(uris) => {
                self.from_file = uris;
                self.file_text = Some(text);
                true
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "updateURIsURL holds a bad URI list; ignored");
                false
            }
        }
    }

    /// Applies a broker's cluster view (when `updateURIsSupported`).
    fn apply_view(&mut self, view: &proto::ClusterView) {
        if !self.o().update_uris_supported {
            return;
        }
        let schemes: Vec<&str> = self.url.uris.iter().map(|u| u.scheme.as_str()).collect();
        let mut pushed = Vec::new();
        let mut room = Vec::new();
        for g in &view.groups {
            // The group's room (at least one client), shared by its members' URIs: only its
            // master answers.
            let share = (g.capacity > 0).then(|| {
                g.capacity.saturating_sub(g.clients).max(1) as f64 / g.uris.len().max(1) as f64
            });
            for text in &g.uris {
                match BrokerUrl::parse_with(text, &self.url.nested) {
                    Ok(u) if schemes.contains(&u.scheme.as_str()) => {
                        if !pushed.iter().any(|x: &BrokerUrl| x.same_broker(&u)) {
                            pushed.push(u);
                            room.push(share);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(uri = %text, error = %e, "ignored a pushed URI"),
                }
            }
        }
        let changed = pushed.len() != self.pushed.len()
            || pushed
                .iter()
                .any(|u| !self.pushed.iter().any(|p| p.same_broker(u)));
        self.pushed = pushed;
        self.room = room;
        if changed {
            let uris: Vec<String> = self.pushed.iter().map(|u| u.to_string()).collect();
            *self.shared.cluster_uris.write() = uris.clone();
            self.shared.emit(ClientEvent::ClusterUpdated { uris });
        }
    }

    /// The reconnect loop after a connection is lost (or before the first one). `None` when
    /// the client was closed meanwhile.
    async fn reconnect(&mut self, failed: Option<&BrokerUrl>) -> Result<Conn, ClientError> {
        let first = self.connects == 0;
        let limit = if first && self.o().startup_max_reconnect_attempts >= 0 {
            self.o().startup_max_reconnect_attempts
        } else {
            self.o().max_reconnect_attempts
        };
        let mut backoff = Backoff::new(self.o());
        let mut failures: i64 = 0;
        if !first {
            self.sleep(backoff.next_delay()).await?;
        }
        loop {
            self.read_uris_file();
            let hello = self.hello();
            let mut last_error = None;
            for url in self.connect_list(failed) {
                if self.shared.stop.is_cancelled() {
                    return Err(ClientError::Closed("closed by the client".into()));
                }
                let mut hello = hello.clone();
                hello.priority_pinned &= self.url.is_priority(&url);
                let attempt = tokio::select! {
                    r = open(&url, &self.options, &hello) => r,
                    _ = self.shared.stop.cancelled() => return Err(ClientError::Closed("closed by the client".into())),
                };
                match attempt {
                    Ok((pump, connected)) => {
                        return Ok(Conn {
                            url,
                            pump,
                            connected,
                        })
                    }
                    Err(e) if is_final(&e) => return Err(e),
                    Err(e) => last_error = Some(e),
                }
            }
            failures += 1;
            // Before the first connection the first round is the connect itself; after a loss
            // every round is a reconnect attempt.
            let allowed = if first { limit + 1 } else { limit };
            if limit >= 0 && failures >= allowed.max(1) {
                return Err(match last_error {
                    // Name the failover URL once, and the last member's cause once.
                    Some(ClientError::Connect { url, reason }) if self.url.uris.len() > 1 => {
                        ClientError::Connect {
                            url: self.url_text(),
                            reason: format!(
                                "no member answered in {failures} round(s); the last, {url}: {reason}"
                            ),
                        }
                    }
                    Some(e) => e,
                    None => ClientError::Connect {
                        url: self.url_text(),
                        reason: "no broker URI to try".into(),
                    },
                });
            }
            let warn_every = self.o().warn_after_reconnect_attempts;
            if warn_every > 0 && (failures == 1 || failures % warn_every == 0) {
                tracing::warn!(
                    attempts = failures,
                    error = %last_error.as_ref().map(|e| e.to_string()).unwrap_or_default(),
                    "failover: no broker reachable yet; still trying"
                );
            }
            self.sleep(backoff.next_delay()).await?;
        }
    }

    fn url_text(&self) -> String {
        let list: Vec<String> = self.url.uris.iter().map(|u| u.to_string()).collect();
        format!("failover:({})", list.join(","))
    }

    async fn sleep(&self, d: Duration) -> Result<(), ClientError> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.shared.stop.cancelled() => Err(ClientError::Closed("closed by the client".into())),
        }
    }

    /// Makes `c` the live connection: server info, URL, cluster view.
    fn adopt(&mut self, c: &mut Conn) {
        self.connects += 1;
        *self.shared.info.write() = server_info(&c.connected);
        *self.shared.current_url.write() = c.url.to_string();
        if let Some(view) = c.connected.cluster.take() {
            self.apply_view(&view);
        }
    }

    /// Handles a broker's `ConnectionControl`; returns where to move, if anywhere.
    fn on_control(
        &mut self,
        c: proto::ConnectionControl,
        current: &BrokerUrl,
    ) -> Option<Vec<BrokerUrl>> {
        if let Some(view) = &c.cluster {
            self.apply_view(view);
        }
        if c.reconnect_to.is_empty() || !self.o().reconnect_supported || self.on_priority(current) {
            return None;
        }
        match parse_uri_list(&c.reconnect_to, &self.url.nested) {
            Ok(target) if !target.iter().any(|u| u.same_broker(current)) && !target.is_empty() => {
                Some(target)
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(reconnect_to = %c.reconnect_to, error = %e, "ignored a bad reconnect_to");
                None
            }
        }
    }

    /// Tops the `backup` pool up to `backupPoolSize` standbys on brokers other than `current`,
    /// dropping the ones that died.
    fn refill(&self, standbys: &mut Vec<Standby>, current: &BrokerUrl) {
        standbys.retain(|s| !s.task.is_finished() && !s.url.same_broker(current));
        for url in self.connect_list(Some(current)) {
            if standbys.len() >= self.o().backup_pool_size {
                break;
            }
            if url.same_broker(current) || standbys.iter().any(|s| s.url.same_broker(&url)) {
                continue;
            }
            let mut hello = self.moving_hello();
            hello.priority_pinned &= self.url.is_priority(&url);
            standbys.push(Standby::open(url, self.options.clone(), hello));
        }
    }

    /// The first standby still alive, if any.
    async fn from_standbys(standbys: &mut Vec<Standby>) -> Option<Conn> {
        while !standbys.is_empty() {
            if let Some(c) = standbys.remove(0).take().await {
                return Some(c);
            }
        }
        None
    }

    /// Runs connections until the client ends.
    async fn run(mut self, mut conn: Conn) {
        let mut standbys: Vec<Standby> = Vec::new();
        loop {
            let current = conn.url.clone();
            let on_priority = self.on_priority(&current);
            let (controls_tx, mut controls) = mpsc::unbounded_channel();
            let leave = CancellationToken::new();
            let running = run_connection(
                conn.pump,
                self.shared.clone(),
                self.options.heartbeat,
                self.options.max_frame_size,
                controls_tx,
                leave.clone(),
            );
            tokio::pin!(running);
            let mut attempt: Option<Attempt> = None;
            let mut switch_to: Option<Conn> = None;
            let mut move_reason = String::new();
            let mut probe = tokio::time::interval_at(
                tokio::time::Instant::now() + PRIORITY_PROBE.mul_f64(0.5 + rand::random::<f64>()),
                PRIORITY_PROBE,
            );
            let mut file_poll = tokio::time::interval(URIS_FILE_POLL);
            let mut backup_refill = tokio::time::interval(BACKUP_REFILL);
            let backup = self.o().backup && self.o().backup_pool_size > 0;
            let probing = self.o().priority_backup && !on_priority;
            let polling_file = self.o().update_uris_url.is_some() && self.o().rebalance_update_uris;
            let end = loop {
                let idle = attempt.is_none() && switch_to.is_none();
                let attempt_done = async {
                    match attempt.as_mut() {
                        Some(a) => a.await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    end = &mut running => break end,
                    Some(c) = controls.recv() => {
                        if c.leave {
                            // The broker is stopping: leave now (a move under way is given
                            // up) and reconnect by the failover URL. Leaving politely, not
                            // waiting to be cut off, is what keeps the frames already written.
                            if !leave.is_cancelled() {
                                tracing::info!(url = %current, "failover: the broker is stopping; leaving it");
                                attempt = None;
                                leave.cancel();
                            }
                        } else if let Some(target) = self.on_control(c, &current) {
                            if idle {
                                move_reason = format!("the broker asked this client to move to {}", target[0]);
                                attempt = Some(Box::pin(first_of(target, self.options.clone(), self.moving_hello())));
                            }
                        }
                    }
                    found = attempt_done => {
                        attempt = None;
                        if let Some(c) = found {
                            self.shared.emit(ClientEvent::Moving {
                                from: current.to_string(),
                                to: c.url.to_string(),
                                reason: std::mem::take(&mut move_reason),
                            });
                            switch_to = Some(c);
                            leave.cancel();
                        }
                    }
                    _ = probe.tick(), if probing && idle => {
                        move_reason = "back to a priority broker".into();
                        attempt = Some(Box::pin(first_of(self.priority_uris(), self.options.clone(), self.moving_hello())));
                    }
                    _ = backup_refill.tick(), if backup => self.refill(&mut standbys, &current),
                    _ = file_poll.tick(), if polling_file && idle => {
                        if self.read_uris_file()
                            && !self.from_file.iter().chain(&self.url.uris).any(|u| u.same_broker(&current))
                        {
                            move_reason = "this broker left the updateURIsURL list".into();
                            let list = self.connect_list(Some(&current));
                            attempt = Some(Box::pin(first_of(list, self.options.clone(), self.moving_hello())));
                        }
                    }
                }
            };
            let next = match end {
                End::Stopped(e) => {
                    self.shared.finish(e);
                    return;
                }
                End::Left => {
                    self.shared.interrupt(&ClientError::Closed("moved".into()));
                    match switch_to.take() {
                        Some(c) => Ok((c, true)),
                        None => self.reconnect(Some(&current)).await.map(|c| (c, false)),
                    }
                }
                End::Lost(e) => {
                    tracing::info!(url = %current, error = %e, "failover: connection lost; reconnecting");
                    if let Some((first, last)) = self.shared.take_unconfirmed() {
                        tracing::warn!(url = %current, first, last, "failover: the connection broke before the broker confirmed the fire-and-forget sends among these producer sequences; not tracked (trackMessages=false), they are not re-sent and may be lost");
                    }
                    // Interrupted before it is announced: whoever reacts to the event must find
                    // sends waiting for the next connection, not going into this one's buffer
                    // (which `interrupt` clears).
                    self.shared.interrupt(&e);
                    self.shared.emit(ClientEvent::Interrupted {
                        url: current.to_string(),
                        reason: e.to_string(),
                    });
                    if let Some(c) = switch_to.take() {
                        // A move whose leave went unconfirmed: its target is connected already.
                        Ok((c, true))
                    } else if self.o().max_reconnect_attempts == 0 {
                        Err(e)
                    } else if let Some(c) = Self::from_standbys(&mut standbys).await {
                        Ok((c, false))
                    } else {
                        self.reconnect(Some(&current)).await.map(|c| (c, false))
                    }
                }
            };
            match next {
                Ok((mut c, moved)) => {
                    self.adopt(&mut c);
                    let (subscriptions, resent) = self.shared.restore(&mut c.pump.wbuf);
                    self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                    if moved {
                        self.shared.moves.fetch_add(1, Ordering::Relaxed);
                    }
                    let info = self.shared.info.read().clone();
                    tracing::info!(url = %c.url, group = %info.group, subscriptions, resent, moved, "failover: resumed");
                    self.shared.emit(ClientEvent::Resumed {
                        url: c.url.to_string(),
                        group: info.group,
                        member: info.member,
                        subscriptions,
                        resent,
                        moved,
                    });
                    conn = c;
                }
                Err(e) => {
                    self.shared.emit(ClientEvent::Failed {
                        reason: e.to_string(),
                    });
                    self.shared.finish(e);
                    return;
                }
            }
        }
    }

    /// The hello of a connection opened while the current one still runs.
    fn moving_hello(&self) -> Hello {
        let mut h = self.hello();
        h.failover_reconnect = true;
        h.temp_prefixes = vec![self.shared.temp_prefix.clone()];
        (h.resent_from_group, h.resends_below) = self.shared.resends();
        h
    }
}

/// Connects a failover client: the first broker of the connect list that answers (retrying
/// by the options), then a supervisor that keeps it connected.
pub(crate) async fn connect(
    url: FailoverUrl,
    options: ClientOptions,
) -> Result<Client, ClientError> {
    let placeholder = Arc::new(Shared::new(
        Default::default(),
        String::new(),
        &options,
        None,
        None,
    ));
    let mut sup = Supervisor::new(url, options, placeholder);
    let mut conn = match sup.reconnect(None).await {
        Ok(c) => c,
        Err(e) => return Err(e),
    };
    let o = sup.o().clone();
    let shared = Arc::new(Shared::new(
        server_info(&conn.connected),
        conn.url.to_string(),
        &sup.options,
        Some(SendTracker::new(o.track_messages, o.max_cache_size)),
        o.timeout,
    ));
    sup.shared = shared.clone();
    sup.adopt(&mut conn);
    tokio::spawn(sup.run(conn));
    Ok(Client::with_guard(shared))
}

#[cfg(test)]
#[path = "failover_tests.rs"]
mod tests;
