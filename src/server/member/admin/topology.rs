//! The admin port's topology endpoints: `GET /topology` (the file this member runs, open like
//! `/status`), `PUT /topology` (take a new file without restarting — what `meshmq apply`
//! calls) and `POST /restart` (run again with the file it runs now, for the keys only a
//! restart applies — what `meshmq apply --rolling` calls). Both writes pass `auth.rs` first;
//! the new file is taken by the live topology (`../live.rs`), a restart drains first
//! (`drain.rs`).

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::metrics as m;

use super::super::live::{ApplyError, RunningTopology};
use super::super::state::MemberState;
use super::auth::{authenticate, AdminError};
use super::drain;

/// The body of `PUT /topology`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopologyWrite {
    /// The file's path as the writer names it (errors name it; relative paths in `text`
    /// resolve against its directory).
    pub file: String,
    pub text: String,
}

pub(super) fn routes() -> Router<Arc<MemberState>> {
    Router::new()
        .route("/topology", get(running).put(write))
        .route("/restart", axum::routing::post(restart))
}

async fn running(State(state): State<Arc<MemberState>>) -> Json<RunningTopology> {
    Json(state.live.running())
}

async fn write(
    State(state): State<Arc<MemberState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(refusal) = authenticate(&state, &headers) {
        return refusal;
    }
    let request: TopologyWrite = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(AdminError {
                    error: format!("the body must be JSON {{\"file\": ..., \"text\": ...}}: {e}"),
                }),
            )
                .into_response()
        }
    };
    match state
        .live
        .apply(&state.term, &request.text, &PathBuf::from(&request.file))
        .await
    {
        Ok(outcome) => {
            metrics::counter!(m::TOPOLOGY_APPLIES).increment(1);
            Json(outcome).into_response()
        }
        Err(e) => {
            let status = match e {
                ApplyError::Invalid(_) => StatusCode::BAD_REQUEST,
                ApplyError::Conflict(_) => StatusCode::CONFLICT,
            };
            (
                status,
                Json(AdminError {
                    error: e.to_string(),
                }),
            )
                .into_response()
        }
    }
}

/// A restart's drain deadline when the request names none.
const DEFAULT_RESTART_DRAIN: std::time::Duration = std::time::Duration::from_secs(30);

/// `POST /restart?timeout=30s`: the member saves the topology it runs now where it reads it
/// at start (its `--topology` file, unless that already holds it), drains (its clients move;
/// a master hands its group to a standby) and runs its own binary again with its original
/// arguments. Refused, changing nothing, without the admin token, when the file cannot be
/// written, or while a drain runs.
async fn restart(
    State(state): State<Arc<MemberState>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    if let Some(refusal) = authenticate(&state, &headers) {
        return refusal;
    }
    let param = drain::timeout_param(&uri);
    let timeout = match param.as_deref().map(humantime::parse_duration) {
        None => DEFAULT_RESTART_DRAIN,
        Some(Ok(t)) if !t.is_zero() => t,
        Some(_) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(AdminError {
                    error: format!(
                        "timeout={:?} is not a duration; write e.g. timeout=30s",
                        param.unwrap_or_default()
                    ),
                }),
            )
                .into_response()
        }
    };
    let saved = match state.live.save_for_restart() {
        Ok(saved) => saved,
        Err(error) => {
            tracing::error!(%error, "restart refused");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(AdminError { error }),
            )
                .into_response();
        }
    };
    match drain::start(&state, timeout, drain::Purpose::Restart) {
        Ok(()) => (
            StatusCode::ACCEPTED,
            format!(
                "restarting {} with {} (drains first, at most {})\n",
                state.identity.member,
                saved.display(),
                humantime::format_duration(timeout)
            ),
        )
            .into_response(),
        Err(drain::Refused::AlreadyDraining) => (
            StatusCode::CONFLICT,
            Json(AdminError {
                error: "this member is already draining; see /status".into(),
            }),
        )
            .into_response(),
    }
}
