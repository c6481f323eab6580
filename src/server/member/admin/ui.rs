//! The admin port's operator side: the live mesh view (`/` and `/ui`: one page for the whole
//! mesh, fed by `/mesh`, which this member assembles from every member's `/status`) and the
//! admin writes (`POST /drain`, authenticated by the topology's `[admin]` token).
//!
//! Owns: those routes and the page's assets (plain HTML, CSS and a small script embedded with
//! `include_str!`; nothing loaded from elsewhere). Must not touch: what a member reports (the
//! `/status` document is `status.rs`'s) or how a drain proceeds (`drain.rs`'s). Invariants: a read of
//! another member never takes longer than `PEER_TIMEOUT` and its failure shows as that
//! member's error, never as a failed page; a write without the right token changes nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

use super::super::state::MemberState;
use super::auth::authenticate;
use super::drain::{self, timeout_param, Refused};
use super::status::{member_status, MemberStatus};

/// How long the mesh view waits for one member's `/status`.
const PEER_TIMEOUT: Duration = Duration::from_millis(1500);
/// A drain's deadline when the request names none.
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

const PAGE: &str = include_str!("ui/index.html");
const STYLE: &str = include_str!("ui/mesh.css");
const SCRIPT: &str = include_str!("ui/mesh.js");

/// `/mesh`: every member of the topology, with its `/status` or why it has none.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MeshView {
    /// The member that answered.
    pub from: String,
    pub members: Vec<MeshMember>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MeshMember {
    pub group: String,
    pub member: String,
    pub admin: String,
    pub status: Option<MemberStatus>,
    /// Why `status` is missing (unreachable, a bad answer).
    pub error: Option<String>,
}

/// The routes this module adds to the admin port.
pub(crate) fn routes() -> Router<Arc<MemberState>> {
    Router::new()
        .route("/", get(page))
        .route("/ui", get(page))
        .route("/ui/mesh.css", get(|| async { asset("text/css", STYLE) }))
        .route(
            "/ui/mesh.js",
            get(|| async { asset("text/javascript", SCRIPT) }),
        )
        .route("/mesh", get(mesh))
        .route("/drain", post(start_drain))
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

async fn page() -> impl IntoResponse {
    asset("text/html; charset=utf-8", PAGE)
}

async fn mesh(State(state): State<Arc<MemberState>>) -> Json<MeshView> {
    let own = member_status(&state);
    let reads = state.operations.mesh.iter().cloned().map(|m| {
        let own = (m.member == own.member).then(|| own.clone());
        async move {
            let (status, error) = match own {
                Some(s) => (Some(s), None),
                None => match read_status(m.admin).await {
                    Ok(s) => (Some(s), None),
                    Err(e) => (None, Some(e)),
                },
            };
            MeshMember {
                admin: m.admin.to_string(),
                group: m.group,
                member: m.member,
                status,
                error,
            }
        }
    });
    let members = join_all(reads.collect()).await;
    Json(MeshView {
        from: own.member.clone(),
        members,
    })
}

/// Runs the futures concurrently and returns their outputs in order.
async fn join_all<F: std::future::Future + Send + 'static>(futures: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(v) => out.push(v),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    out
}

/// Another member's `/status`, within `PEER_TIMEOUT`.
async fn read_status(addr: SocketAddr) -> Result<MemberStatus, String> {
    let read = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("unreachable: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::get("/status")
            .header(header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("/status answered {}", resp.status()));
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("a /status that does not parse: {e}"))
    };
    tokio::time::timeout(PEER_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {PEER_TIMEOUT:?}")))
}

async fn start_drain(
    State(state): State<Arc<MemberState>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    if let Some(refused) = authenticate(&state, &headers) {
        return refused;
    }
    let param = timeout_param(&uri);
    let timeout = match param.as_deref().map(humantime::parse_duration) {
        None => DEFAULT_DRAIN_TIMEOUT,
        Some(Ok(t)) if !t.is_zero() => t,
        Some(_) => {
            return (
                StatusCode::BAD_REQUEST,
                format!(
                    "timeout={:?} is not a duration; write e.g. timeout=90s\n",
                    param.unwrap_or_default()
                ),
            )
                .into_response()
        }
    };
    match drain::start(&state, timeout, drain::Purpose::Exit) {
        Ok(()) => (
            StatusCode::ACCEPTED,
            format!(
                "draining {} (exits when empty, at most {})\n",
                state.identity.member,
                humantime::format_duration(timeout)
            ),
        )
            .into_response(),
        Err(refused) => refusal(refused).into_response(),
    }
}

fn refusal(refused: Refused) -> (StatusCode, String) {
    match refused {
        Refused::AlreadyDraining => (
            StatusCode::CONFLICT,
            "this member is already draining; see /status\n".into(),
        ),
    }
}
