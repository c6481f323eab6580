//! Who may write through the admin port: every write — a topology, a restart, a drain — must
//! carry `Authorization: Bearer <token>` matching `[admin] token` of the topology the member
//! runs now (compared in constant time). With no token configured every write is refused
//! (403), a missing or wrong one is refused (401); each refusal is counted in
//! `meshmq_admin_writes_refused_total`, logged, and changes nothing.

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::metrics as m;

use super::super::state::MemberState;

/// An error answer: `{"error": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminError {
    pub error: String,
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
pub(crate) fn authenticate(state: &MemberState, headers: &HeaderMap) -> Option<Response> {
    let topology = state.live.topology();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    check_token(topology.admin.token.as_ref(), authorization)
        .err()
        .map(|(status, reason, error)| refuse(status, reason, error.into()))
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
