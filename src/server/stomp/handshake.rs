//! A STOMP connection's start: the CONNECT (or STOMP) frame within the connect timeout, the
//! version and heart-beats negotiated, the login, the broker session opened; then the
//! connection runs with the [`Stomp`] codec. Any refusal here is an ERROR frame and a close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep_until, Instant as TokioInstant};
use tokio_util::sync::CancellationToken;

use crate::broker::Session;
use crate::security::Principal;
use crate::server::conn::{handshake_frame_limit, ConnCtx, Connection};
use crate::stomp::{self, Command, Decoder, Frame, Limits, Version};
use crate::transport::{IoEvent, Permit, Pump, Stream};

use super::codec::{error, Stomp};

/// A STOMP client is dropped after this many of its heart-beat intervals of silence.
const HEARTBEAT_GRACE: u32 = 2;

fn limits(ctx: &ConnCtx) -> Limits {
    Limits {
        max_frame_size: ctx.settings.max_frame_size,
        max_headers: ctx.stomp.max_headers,
        max_header_length: ctx.stomp.max_header_length,
    }
}

async fn refuse<T>(pump: &mut Pump, message: &str) -> std::io::Result<Option<T>> {
    stomp::encode(&error(message), Version::V1_0, &mut pump.wbuf);
    let _ = tokio::time::timeout(Duration::from_secs(2), pump.flush_and_close()).await;
    Ok(None)
}

/// Writes a refusal to a connection over the listener's limit and closes it.
pub(crate) async fn refuse_over_limit(stream: Stream, max: usize) {
    let mut pump = Pump::new(stream);
    let _: std::io::Result<Option<()>> = refuse(
        &mut pump,
        &format!("this listener already serves its max_connections ({max}); try another broker"),
    )
    .await;
}

/// Serves one STOMP connection: the handshake, then the connection until it ends.
pub(crate) async fn serve(
    stream: Stream,
    peer: SocketAddr,
    ctx: Arc<ConnCtx>,
    shutdown: CancellationToken,
    _permit: Permit,
) {
    ctx.metrics.connection_opened();
    let mut pump = Pump::new(stream);
    // Boxed: its state is freed once it is done, not kept for the connection's life. The
    // connection is built in this statement, so the handshake's result (a second copy of the
    // codec and session, being moved out of) is not kept beside it while it runs.
    let mut connection = match Box::pin(handshake(&mut pump, peer, &ctx, &shutdown)).await {
        Ok(Some((proto, session, principal, send_every, expect_every))) => {
            // Counted in the group's load; STOMP takes no pushes.
            let registration =
                ctx.cluster
                    .register(session.id(), &crate::cluster::ClientHello::default(), None);
            Some(
                Connection::new(
                    proto,
                    pump,
                    session,
                    ctx.clone(),
                    principal,
                    send_every,
                    expect_every.map(|e| e * HEARTBEAT_GRACE),
                )
                .with_registration(registration),
            )
        }
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "stomp connection failed before connecting");
            None
        }
    };
    if let Some(connection) = connection.as_mut() {
        let reason = connection.run(&shutdown).await;
        tracing::debug!(%peer, reason, "stomp connection closed");
    }
    drop(connection);
    ctx.metrics.connection_closed();
}

type Handshake = (
    Stomp,
    Session,
    Principal,
    Option<Duration>,
    Option<Duration>,
);

async fn handshake(
    pump: &mut Pump,
    peer: SocketAddr,
    ctx: &ConnCtx,
    shutdown: &CancellationToken,
) -> std::io::Result<Option<Handshake>> {
    let deadline = TokioInstant::now() + ctx.settings.connect_timeout;
    // Before the login, a frame is a CONNECT: small (a stranger holds little memory).
    let mut decoder = Decoder::new(
        Version::V1_0,
        Limits {
            max_frame_size: handshake_frame_limit(ctx),
            ..limits(ctx)
        },
    );
    let connect = loop {
        match decoder.decode(&mut pump.rbuf) {
            Ok(stomp::Decoded::Frame(f))
                if matches!(f.command, Command::Connect | Command::Stomp) =>
            {
                break f
            }
            Ok(stomp::Decoded::Frame(f)) => {
                ctx.metrics.bad_frame();
                return refuse(
                    pump,
                    &format!(
                        "the first frame must be CONNECT or STOMP, got {}",
                        f.command.as_str()
                    ),
                )
                .await;
            }
            Ok(stomp::Decoded::Heartbeat) => continue,
            Ok(stomp::Decoded::NeedMore) => {}
            Err(e) => {
                ctx.metrics.bad_frame();
                return refuse(pump, &e.to_string()).await;
            }
        }
        tokio::select! {
            ev = pump.next_event(true, 0, |_| std::task::Poll::Pending) => match ev? {
                IoEvent::Closed => return Ok(None),
                _ => continue,
            },
            _ = sleep_until(deadline) => {
                ctx.metrics.refused("connect_timeout");
                return refuse(pump, &format!("no CONNECT frame within the connect timeout ({:?})", ctx.settings.connect_timeout)).await;
            }
            _ = shutdown.cancelled() => return refuse(pump, "the broker is shutting down").await,
        }
    };
    let Some(version) = stomp::negotiate(connect.header("accept-version")) else {
        return refuse(
            pump,
            &format!(
                "no common STOMP version: the client accepts {:?}, this broker speaks 1.0, 1.1 and 1.2",
                connect.header("accept-version").unwrap_or("")
            ),
        )
        .await;
    };
    let client_beats = match connect.header("heart-beat").map(stomp::parse_heartbeat) {
        Some(Ok(b)) => b,
        Some(Err(e)) => return refuse(pump, &e.to_string()).await,
        None => (0, 0),
    };
    let server_ms = ctx.settings.heartbeat.as_millis() as u64;
    let (send_every, expect_every) =
        stomp::negotiate_heartbeat(client_beats, (server_ms, server_ms));
    let principal = match ctx
        .login(
            peer,
            connect.header("login").map(String::from),
            connect.header("passcode").map(String::from),
        )
        .await
    {
        Ok(p) => p,
        Err(message) => return refuse(pump, &message).await,
    };
    let client_id = connect.header("client-id").map(String::from);
    let session = match ctx
        .broker
        .open_session_as(client_id, principal.user.clone())
    {
        Ok(s) => s,
        Err(e) => {
            if matches!(e, crate::broker::BrokerError::ClientIdOwned(_)) {
                ctx.metrics.refused("claimed_by_another_user");
                tracing::warn!(user = ?principal.user, error = %e, "connection refused");
            }
            return refuse(pump, &e.to_string()).await;
        }
    };
    let connected = Frame::new(Command::Connected)
        .with_header("version", version.as_str())
        .with_header("heart-beat", format!("{send_every},{expect_every}"))
        .with_header("server", format!("meshmq/{}", env!("CARGO_PKG_VERSION")))
        .with_header("session", session.connection_id());
    stomp::encode(&connected, version, &mut pump.wbuf);
    // Logged in: frames up to max_frame_size from now on.
    let decoder = Decoder::new(version, limits(ctx));
    let proto = Stomp::new(decoder, session.connection_id());
    let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
    Ok(Some((
        proto,
        session,
        principal,
        ms(send_every),
        ms(expect_every),
    )))
}
