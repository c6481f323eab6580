//! A master term: the period a member serves its group. It opens the journal and rebuilds the
//! broker from it, binds the client listeners, starts the connectors and the chores; stopping
//! it tells every connection, waits for them, writes a checkpoint and closes the journal — so a
//! member can step down and later serve again (or another member take over the same journal).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Broker;
use crate::cluster::Cluster;
use crate::metrics as m;
use crate::store::{Store, StoreError};
use crate::transport::quic::QuicListener;
use crate::transport::{Listener, TransportError};

use crate::server::conn::{ConnCtx, ListenerMetrics};
use crate::server::listener::{accept_loop, quic_accept_loop, Bound};
use crate::server::options::{ListenerSpec, ServerError, ServerOptions};

use super::state::{MemberState, Role};
use super::term_view::TermView;

pub(crate) struct Term {
    broker: Broker,
    stop: CancellationToken,
    tracker: TaskTracker,
    pub listen_addrs: Vec<SocketAddr>,
}

async fn bind(spec: &ListenerSpec) -> Result<(Bound, SocketAddr), ServerError> {
    let tls_err = |source| ServerError::Tls {
        listener: spec.url.clone(),
        source,
    };
    let bind_err = |source| TransportError::Bind {
        addr: spec.addr,
        source,
    };
    if spec.quic {
        let files = spec.tls.as_ref().ok_or_else(|| {
            tls_err(crate::transport::tls::TlsError::Rejected {
                path: std::path::PathBuf::from(&spec.url),
                detail: "a QUIC listener needs tls_cert and tls_key".into(),
            })
        })?;
        let config = crate::security::load_server_config(files).map_err(tls_err)?;
        let l = QuicListener::bind(spec.addr, config, spec.max_connections)?;
        let addr = l.local_addr().map_err(bind_err)?;
        Ok((Bound::Quic(l), addr))
    } else {
        let tls = match &spec.tls {
            Some(files) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
                crate::security::load_server_config(files).map_err(tls_err)?,
            ))),
            None => None,
        };
        let l = Listener::bind(spec.addr, spec.max_connections).await?;
        let addr = l.local_addr().map_err(bind_err)?;
        Ok((Bound::Tcp(l, tls), addr))
    }
}

impl Term {
    /// Becomes master: recovers the journal, binds every listener (all or nothing), serves.
    pub async fn start(
        opts: &ServerOptions,
        state: &Arc<MemberState>,
        parent: &CancellationToken,
    ) -> Result<Term, ServerError> {
        let broker = open_broker(opts).await?;
        Term::serve(opts, state, parent, broker).await
    }

    /// Serves `broker` (already rebuilt from its journal): binds every listener (all or
    /// nothing — on failure the journal is closed), starts the connectors and the chores.
    pub async fn serve(
        opts: &ServerOptions,
        state: &Arc<MemberState>,
        parent: &CancellationToken,
        broker: Broker,
    ) -> Result<Term, ServerError> {
        let mut bound = Vec::new();
        for spec in &opts.listeners {
            match bind(spec).await {
                Ok((l, addr)) => bound.push((spec.clone(), addr, l)),
                Err(e) => {
                    close_store(&broker).await;
                    return Err(e);
                }
            }
        }
        let stop = parent.child_token();
        let tracker = TaskTracker::new();
        let identity = state.identity.clone();
        let security = state.live.security.clone();
        let cluster = Cluster::new(opts.cluster.clone());
        // The connectors of the topology the member runs now (an apply may have changed them
        // since it started).
        let (version, network_opts) = state.live.network();
        let network = network_opts.map(|n| {
            crate::network::Network::start(
                n,
                broker.clone(),
                security.clone(),
                cluster.clone(),
                stop.clone(),
                &tracker,
            )
        });
        tracker.spawn(cluster.clone().run_rebalancer(stop.clone()));
        // MQTT persistent sessions kept from the last term expire on their journaled schedule.
        crate::server::mqtt::expire_kept_sessions(broker.clone(), stop.clone());
        // MQTT share groups: copies of what is published here to the queues they read.
        tracker.spawn(crate::server::mqtt_share::feed_share_groups(
            broker.clone(),
            stop.clone(),
        ));
        let accepting = stop.child_token();
        let view = TermView {
            accepting: accepting.clone(),
            broker: broker.clone(),
            listeners: bound
                .iter()
                .map(|(spec, addr, l)| (spec.clone(), *addr, l.count()))
                .collect(),
            network: network.clone(),
            cluster: cluster.clone(),
        };
        let listen_addrs = bound.iter().map(|(_, a, _)| *a).collect();
        let mqtt_sessions = Arc::new(crate::server::mqtt_session::MqttSessions::default());
        for (spec, addr, listener) in bound {
            let ctx = Arc::new(ConnCtx {
                broker: broker.clone(),
                settings: opts.conn.clone(),
                identity: identity.clone(),
                metrics: ListenerMetrics::new(&spec.url, spec.protocol),
                security: security.clone(),
                stomp: opts.stomp,
                network: network.clone(),
                cluster: cluster.clone(),
                cluster_policy: spec.cluster.clone(),
                accepting: accepting.clone(),
                mqtt_sessions: mqtt_sessions.clone(),
            });
            tracing::info!(listener = %spec.url, %addr, "listening");
            match listener {
                Bound::Tcp(listener, tls) => tracker.spawn(accept_loop(
                    listener,
                    spec,
                    tls,
                    ctx,
                    stop.clone(),
                    tracker.clone(),
                )),
                Bound::Quic(listener) => tracker.spawn(quic_accept_loop(
                    listener,
                    spec,
                    ctx,
                    stop.clone(),
                    tracker.clone(),
                )),
            };
        }
        tracker.spawn(stop_on_journal_failure(broker.clone(), stop.clone()));
        tracker.spawn(chores(
            broker.clone(),
            opts.expiry_check_interval,
            opts.checkpoint_interval,
            stop.clone(),
        ));
        {
            let mut published = state.term.write();
            // An apply that came in since the connectors were read found no term to change.
            if let (Some(net), (now, Some(latest))) = (&network, state.live.network()) {
                if now != version {
                    net.reconfigure(latest);
                }
            }
            // The broker was built from the options the member started with.
            state.live.impose_on(&view);
            *published = Some(view);
        }
        state.set_role(Role::Master);
        counter!(m::TERMS).increment(1);
        tracing::info!(member = %opts.identity.member, "serving as master");
        Ok(Term {
            broker,
            stop,
            tracker,
            listen_addrs,
        })
    }

    /// Fires when something ended the term from inside (e.g. a fatal journal failure).
    pub fn stopped(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Stops serving: connections are told and closed, then a checkpoint is written (clean
    /// when everything ended in time) and the journal closed.
    pub async fn stop(self, state: &MemberState, timeout: Duration) {
        state.set_role(Role::Stopping);
        self.stop.cancel();
        self.tracker.close();
        let ended = tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_ok();
        if !ended {
            tracing::warn!("some connections did not close within the shutdown timeout");
        }
        if self.broker.store().is_some() {
            if let Err(e) = self.broker.checkpoint(ended).await {
                tracing::warn!(error = %e, "final checkpoint failed; the next start replays the journal");
            }
        }
        close_store(&self.broker).await;
        *state.term.write() = None;
        state.set_role(Role::Slave);
    }
}

/// Recovers the journal (when the member has one) and rebuilds the broker from it.
pub(crate) async fn open_broker(opts: &ServerOptions) -> Result<Broker, ServerError> {
    let Some(cfg) = &opts.store else {
        return Ok(Broker::new(opts.broker.clone()));
    };
    let cfg = cfg.clone();
    let repair = opts.repair;
    let started = Instant::now();
    let (store, recovered) = tokio::task::spawn_blocking(move || Store::open(cfg, repair))
        .await
        .map_err(|e| StoreError::Failed(format!("journal recovery panicked: {e}")))??;
    let messages: usize = recovered.queues.iter().map(|(_, m)| m.len()).sum();
    tracing::info!(
        messages,
        durables = recovered.durables.len(),
        clean = recovered.clean,
        seconds = started.elapsed().as_secs_f64(),
        "journal recovered"
    );
    Ok(Broker::with_store(opts.broker.clone(), store, recovered))
}

pub(crate) async fn close_store(broker: &Broker) {
    if let Some(store) = broker.store() {
        let store = store.clone();
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
    }
}

/// Ends the master term at once when the journal fails (a write or an `fsync` returned an
/// error): the failed records were not receipted and never will be — a receipt after a failed
/// sync would be a lie, and Linux may already have dropped the unsynced pages — so the member
/// stops serving, says why in the log and in `meshmq_journal_failures_total`, and its election
/// driver decides what is next (a standby takes over; a lone member exits for a restart that
/// recovers what is on disk).
async fn stop_on_journal_failure(broker: Broker, stop: CancellationToken) {
    tokio::select! {
        reason = broker.journal_failed() => {
            counter!(m::JOURNAL_FAILURES).increment(1);
            tracing::error!(%reason, "the journal failed: nothing more is receipted; this member stops serving");
            stop.cancel();
        }
        _ = stop.cancelled() => {}
    }
}

/// Periodic broker work: expiry sweeps, checkpoints (on schedule, whenever the journal starts a
/// new segment — so disk use follows traffic, not the clock — and every second while the
/// journal is full, so acknowledged segments are freed promptly), journal gauges.
async fn chores(
    broker: Broker,
    expiry: Duration,
    checkpoint_every: Duration,
    shutdown: CancellationToken,
) {
    let period = expiry.min(checkpoint_every).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_checkpoint = Instant::now();
    let mut last_sweep = Instant::now();
    loop {
        let rolled = tokio::select! {
            _ = tick.tick() => false,
            _ = broker.segment_started() => true,
            _ = shutdown.cancelled() => return,
        };
        if last_sweep.elapsed() >= expiry {
            last_sweep = Instant::now();
            broker.sweep_expired();
            broker.redispatch();
        }
        let Some(j) = broker.journal_stats() else {
            continue;
        };
        gauge!(m::JOURNAL_SEGMENTS).set(j.segments as f64);
        gauge!(m::JOURNAL_DISK_BYTES).set(j.disk_bytes as f64);
        gauge!(m::JOURNAL_FULL).set(if j.full { 1.0 } else { 0.0 });
        metrics::counter!(m::JOURNAL_SYNCS).absolute(j.syncs);
        metrics::counter!(m::JOURNAL_BYTES).absolute(j.bytes);
        let due = rolled
            || last_checkpoint.elapsed() >= checkpoint_every
            || (j.full && last_checkpoint.elapsed() >= Duration::from_secs(1));
        if due {
            last_checkpoint = Instant::now();
            match broker.checkpoint(false).await {
                Ok(deleted) if deleted > 0 => tracing::debug!(deleted, "journal segments deleted"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "checkpoint failed"),
            }
        }
    }
}
