//! QUIC (quinn): one bidirectional stream per connection carries the same framed protocol as
//! a TCP connection, under the same connection limit. TLS comes from the listener's files.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{ConnectionCount, Permit, Stream, TransportError};

/// The ALPN protocol meshmq speaks over QUIC.
pub const ALPN: &[u8] = b"meshmq/1";

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // One stream per connection; liveness is the protocol's heartbeats, with a generous idle
    // limit as a backstop.
    t.max_concurrent_bidi_streams(1u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.max_idle_timeout(Some(Duration::from_secs(60).try_into().expect("60 s fits")));
    Arc::new(t)
}

/// A QUIC listener with a connection limit.
pub struct QuicListener {
    endpoint: quinn::Endpoint,
    count: Arc<ConnectionCount>,
}

/// What `accept` produced: a connection still to be completed (its handshake runs in the
/// connection's own task, so a slow peer never holds up the accept loop).
pub enum QuicIncoming {
    Admitted {
        incoming: quinn::Incoming,
        permit: Permit,
    },
    OverLimit(quinn::Incoming),
}

impl QuicListener {
    pub fn bind(
        addr: SocketAddr,
        mut tls: rustls::ServerConfig,
        max_connections: usize,
    ) -> Result<QuicListener, TransportError> {
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| {
            TransportError::Bind {
                addr,
                source: io::Error::other(format!("TLS configuration unusable for QUIC: {e}")),
            }
        })?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(transport_config());
        let endpoint = quinn::Endpoint::server(config, addr)
            .map_err(|source| TransportError::Bind { addr, source })?;
        Ok(QuicListener {
            endpoint,
            count: Arc::new(ConnectionCount::new(max_connections)),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    pub fn count(&self) -> Arc<ConnectionCount> {
        self.count.clone()
    }

    /// The next incoming connection; `None` once the endpoint is closed.
    pub async fn accept(&self) -> Option<QuicIncoming> {
        let incoming = self.endpoint.accept().await?;
        Some(match self.count.try_admit() {
            Some(permit) => QuicIncoming::Admitted { incoming, permit },
            None => QuicIncoming::OverLimit(incoming),
        })
    }

    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutting down");
    }
}

/// A QUIC connection's stream as one byte stream (it also keeps the endpoint and connection
/// alive as long as it lives).
struct QuicStream {
    recv: quinn::RecvStream,
    send: quinn::SendStream,
    _connection: quinn::Connection,
    _endpoint: Option<quinn::Endpoint>,
}

impl AsyncRead for QuicStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf).map_err(io::Error::other)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx).map_err(io::Error::other)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.send), cx).map_err(io::Error::other)
    }
}

/// Completes an incoming connection and takes the stream the client opens (within `timeout`).
pub async fn accept_stream(
    incoming: quinn::Incoming,
    timeout: Duration,
) -> Result<(Stream, SocketAddr), String> {
    let peer = incoming.remote_address();
    let accept = async {
        let connection = incoming.await.map_err(|e| e.to_string())?;
        let (send, recv) = connection.accept_bi().await.map_err(|e| e.to_string())?;
        Ok::<Stream, String>(Box::new(QuicStream {
            recv,
            send,
            _connection: connection,
            _endpoint: None,
        }))
    };
    let stream = tokio::time::timeout(timeout, accept)
        .await
        .map_err(|_| format!("no QUIC stream within {timeout:?}"))??;
    Ok((stream, peer))
}

/// Dials `addr` over QUIC and opens the connection's stream.
pub async fn dial(
    addr: SocketAddr,
    server_name: &str,
    mut tls: rustls::ClientConfig,
    local: Option<IpAddr>,
) -> Result<Stream, TransportError> {
    let fail = |e: String| TransportError::Connect {
        addr,
        source: io::Error::other(e),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| fail(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config());
    let bind_ip = local.unwrap_or(if addr.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    });
    let mut endpoint =
        quinn::Endpoint::client(SocketAddr::new(bind_ip, 0)).map_err(|e| match local {
            Some(ip) => TransportError::LocalBind {
                addr: ip,
                source: e,
            },
            None => fail(e.to_string()),
        })?;
    endpoint.set_default_client_config(config);
    let connection = endpoint
        .connect(addr, server_name)
        .map_err(|e| fail(e.to_string()))?
        .await
        .map_err(|e| fail(e.to_string()))?;
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(|e| fail(e.to_string()))?;
    Ok(Box::new(QuicStream {
        recv,
        send,
        _connection: connection,
        _endpoint: Some(endpoint),
    }))
}
