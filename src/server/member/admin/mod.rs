//! The admin HTTP port: `/metrics`, `/status`, `/healthz`, `/readyz` here; `/topology` and
//! its writes are `topology.rs`'s, the mesh view and `POST /drain` `ui.rs`'s. Beside them:
//! `status.rs` (the `/status` document), `auth.rs` (who may write) and `drain.rs` (a drain,
//! which both `POST /drain` and `POST /restart` start). Everything here sits on the member's
//! state (`../state.rs`) and is reached only through the routes.

pub(crate) mod auth;
pub mod drain;
mod status;
pub mod topology;
pub mod ui;

pub use status::{ListenerStatus, MemberStatus, ProcessStatus};

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use crate::metrics as m;

use super::state::{MemberState, Role};
use status::member_status;

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<MemberState>,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .merge(topology::routes())
        .merge(ui::routes())
        .with_state(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "admin server failed");
    }
}

async fn metrics(State(state): State<Arc<MemberState>>) -> impl IntoResponse {
    m::publish_process(state.started);
    // A standby has no broker: it reports its role and process only.
    let term = state.term.read().clone();
    let mut scrape = m::Scrape {
        destinations: None,
        max_destinations: state.max_destinations,
        slow_consumers: 0,
    };
    if let Some(term) = term {
        scrape.destinations = Some(term.broker.destination_stats());
        scrape.slow_consumers = term.broker.slow_consumers();
        metrics::gauge!(m::MEMORY_USED).set(term.broker.memory().used() as f64);
        if let Some(n) = &term.network {
            n.publish_demand_metrics();
        }
    }
    let mut text = m::render(&state.prometheus, scrape);
    let lags: Vec<(String, u64)> = state
        .replication
        .read()
        .as_ref()
        .map(|r| {
            r.followers()
                .into_iter()
                .map(|f| (f.member, f.lag))
                .collect()
        })
        .unwrap_or_default();
    m::render_replication_lag(
        &mut text,
        &state.identity.group,
        &state.identity.member,
        &lags,
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

async fn status(State(state): State<Arc<MemberState>>) -> Json<MemberStatus> {
    Json(member_status(&state))
}

async fn ready(State(state): State<Arc<MemberState>>) -> impl IntoResponse {
    if *state.role.lock() == Role::Master && state.term.read().is_some() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
