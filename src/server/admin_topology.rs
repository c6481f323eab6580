//! The admin port's topology endpoints: `GET /topology` (the file this member runs, open like
//! `/status`), `PUT /topology` (take a new file without restarting — what `meshmq apply`
//! calls) and `POST /restart` (run again with the file it runs now, for the keys only a
//! restart applies — what `meshmq apply --rolling` calls).
//!
//! Owns: the write endpoint's authentication. A write must carry `Authorization: Bearer
//! <token>` matching `[admin] token` of the topology the member runs now; with no token
//! configured every write is refused (403), a missing or wrong one is refused (401); each
//! refusal is counted in `meshmq_admin_writes_refused_total` and changes nothing.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::metrics as m;

use super::live::{self, ApplyError, RunningTopology};
use super::member::MemberState;

/// The body of `PUT /topology`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopologyWrite {
    /// The file's path as the writer names it (errors name it; relative paths in `text`
    /// resolve against its directory).
    pub file: String,
    pub text: String,
}

/// An error answer: `{"error": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminError {
    pub error: String,
}

pub(super) fn routes() -> Router<Arc<MemberState>> {
    Router::new()
        .route("/topology", get(running).put(write))
        .route("/restart", axum::routing::post(restart))
}

async fn running(State(state): State<Arc<MemberState>>) -> Json<RunningTopology> {
    Json(state.live.running())
}

fn refuse(status: StatusCode, reason: &'static str, error: String) -> Response {
    metrics::counter!(m::ADMIN_WRITES_REFUSED, "reason" => reason).increment(1);
    tracing::warn!(reason, %error, "admin write refused");
    let mut response = (status, Json(AdminError { error })).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"meshmq admin\""),
        );
    }
    response
}

/// Compares in constant time, so the time taken does not tell how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// Why a write is refused: its status, the `reason` label it is counted by, and what the
/// caller is told.
type WriteRefusal = (StatusCode, &'static str, &'static str);

/// Checks an `Authorization` header against the `[admin]` token (in constant time): every admin
/// write — a topology, a drain — passes here.
fn check_token(token: Option<&Secret>, authorization: Option<&str>) -> Result<(), WriteRefusal> {
    let Some(token) = token else {
        return Err((
            StatusCode::FORBIDDEN,
            "no_admin_token",
            "this member's topology has no [admin] token, so its admin port takes no writes: add `[admin] token = \"...\"` to the file and restart the members once",
        ));
    };
    match authorization.and_then(|v| v.strip_prefix("Bearer ")) {
        None => Err((
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "an admin write needs `Authorization: Bearer <[admin] token>`",
        )),
        Some(p) if !same_secret(p.trim().as_bytes(), token.expose().as_bytes()) => Err((
            StatusCode::UNAUTHORIZED,
            "wrong_token",
            "wrong admin token: it must be the [admin] token of the topology this member runs now",
        )),
        Some(_) => Ok(()),
    }
}

/// `None` when the request may write; otherwise the refusal (counted and logged).
pub(super) fn authenticate(state: &MemberState, headers: &HeaderMap) -> Option<Response> {
    let topology = state.live.topology();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    check_token(topology.admin.token.as_ref(), authorization)
        .err()
        .map(|(status, reason, error)| refuse(status, reason, error.into()))
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
    match live::apply(&state, &request.text, &PathBuf::from(&request.file)).await {
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
    let param = super::admin_ui::timeout_param(&uri);
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
    match super::drain::start(&state, timeout, super::drain::Purpose::Restart) {
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
        Err(super::drain::Refused::AlreadyDraining) => (
            StatusCode::CONFLICT,
            Json(AdminError {
                error: "this member is already draining; see /status".into(),
            }),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::{check_token, same_secret};
    use crate::config::Secret;
    use axum::http::StatusCode;

    #[test]
    fn admin_writes_need_the_configured_token() {
        let refused =
            |r: Result<(), super::WriteRefusal>| r.map_err(|(status, reason, _)| (status, reason));
        assert_eq!(
            refused(check_token(None, Some("Bearer anything-at-all-1234"))),
            Err((StatusCode::FORBIDDEN, "no_admin_token"))
        );
        let token = Secret::new("0123456789abcdef".to_string());
        assert_eq!(
            check_token(Some(&token), Some("Bearer 0123456789abcdef")),
            Ok(())
        );
        for bad in [
            None,
            Some("0123456789abcdef"),
            Some("Basic 0123456789abcdef"),
        ] {
            assert_eq!(
                refused(check_token(Some(&token), bad)),
                Err((StatusCode::UNAUTHORIZED, "unauthenticated")),
                "{bad:?}"
            );
        }
        for bad in [
            "Bearer ",
            "Bearer 0123456789abcde",
            "Bearer 0123456789abcdefX",
            "Bearer 0123456789abcdeF",
        ] {
            assert_eq!(
                refused(check_token(Some(&token), Some(bad))),
                Err((StatusCode::UNAUTHORIZED, "wrong_token")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(same_secret(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcdef", b"0123456789abcdeg"));
        assert!(!same_secret(b"0123456789abcdef", b"0123456789abcde"));
        assert!(!same_secret(b"", b"x"));
    }
}
