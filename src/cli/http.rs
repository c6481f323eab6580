//! A minimal HTTP/1.1 client for talking to members' admin ports (GET, and the authenticated
//! PUT of `meshmq apply`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// GETs `path` from `addr`; returns the status code and the body.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    tokio::time::timeout(timeout, get_inner(addr, path))
        .await
        .map_err(|_| anyhow!("http://{addr}{path}: no answer within {timeout:?}"))?
}

async fn get_inner(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot reach the admin port {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// PUTs a JSON `body` to `path` on `addr` with `Authorization: Bearer <bearer>`; returns the
/// status code and the body.
pub async fn put_json(
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
    body: String,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot reach the admin port {addr}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut req = hyper::Request::put(path)
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(token) = bearer {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let resp = sender
            .send_request(req.body(Full::new(Bytes::from(body)))?)
            .await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| anyhow!("http://{addr}{path}: no answer within {timeout:?}"))?
}

/// Waits until `addr`'s `/readyz` answers 200.
pub async fn wait_ready(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    wait_any_ready(&[addr], timeout).await.map(|_| ())
}

/// Waits until one of `addrs` answers 200 on `/readyz` (a group is ready when its master is;
/// standbys answer 503). Returns the one that did.
pub async fn wait_any_ready(addrs: &[SocketAddr], timeout: Duration) -> anyhow::Result<SocketAddr> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        for &addr in addrs {
            if let Ok((200, _)) = get(addr, "/readyz", Duration::from_secs(1)).await {
                return Ok(addr);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            let list: Vec<String> = addrs.iter().map(|a| format!("{a}/readyz")).collect();
            return Err(anyhow!(
                "none of {} answered 200 within {timeout:?}",
                list.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every one of `addrs` answers 200 on `/healthz` (the process is up and serving
/// its admin port, whatever its role).
pub async fn wait_all_answer(addrs: &[SocketAddr], timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    for &addr in addrs {
        loop {
            if let Ok((200, _)) = get(addr, "/healthz", Duration::from_secs(1)).await {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(anyhow!(
                    "http://{addr}/healthz did not answer 200 within {timeout:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// POSTs an empty body to `path` on `addr` with `Authorization: Bearer TOKEN`; returns the
/// status code and the body.
pub async fn post_bearer(
    addr: SocketAddr,
    path: &str,
    token: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let post = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot reach the admin port {addr}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, post)
        .await
        .map_err(|_| anyhow!("http://{addr}{path}: no answer within {timeout:?}"))?
}
