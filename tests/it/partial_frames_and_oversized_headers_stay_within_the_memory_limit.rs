//! Frames still being received count against the broker's memory limit (beyond the first
//! 64 KiB a connection holds), and frames that could never fit are refused from their header:
//! with `memory_limit = 64MiB` (and the default 100 MiB `max_frame_size`), twenty logged-in
//! connections that each announce a 16 MiB frame and send it without end hold no more than the
//! limit plus 128 KiB each — the broker's RSS
//! grows by less than `RSS_SLACK` over the limit while 320 MiB are pushed at it, the charge is
//! visible in `memory_used_bytes`, and it is all released when they go. A native length or a
//! STOMP `content-length` above the memory limit is refused before any of the body is sent,
//! and before a login no frame may exceed 64 KiB.

use crate::common;
use crate::common_stomp;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use common_stomp::{http_get, Broker, RawStomp, Topology, GUARD};
use meshmq::wire::proto::{self, ErrorCode};
use meshmq::wire::{self, Body, Decoded};

const MEMORY_LIMIT: u64 = 64 << 20;
const ABUSERS: usize = 20;
const FRAME: usize = 16 << 20;
/// What the broker's RSS may grow by beyond the memory limit while the abusers push.
const RSS_SLACK: u64 = 64 << 20;

fn rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

fn broker() -> Broker {
    Topology::new()
        .broker(&format!("memory_limit = \"{MEMORY_LIMIT}\""))
        .listener("native", "tcp", "")
        .listener("stomp", "stomp", "")
        .start()
}

fn memory_used(broker: &Broker) -> u64 {
    let (_, body) = http_get(broker.admin, "/status").expect("GET /status");
    let status: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    status["memory_used_bytes"]
        .as_u64()
        .expect("memory_used_bytes")
}

/// A native connection, logged in (heartbeats off: nothing times it out) unless `login` is
/// false.
fn native(addr: SocketAddr, login: bool) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(GUARD)).expect("timeout");
    if login {
        let mut out = BytesMut::new();
        wire::encode(
            &wire::frame(Body::Connect(proto::Connect {
                protocol_version: wire::PROTOCOL_VERSION,
                ..Default::default()
            })),
            &mut out,
        );
        stream.write_all(&out).expect("Connect");
        match next_frame(&mut stream, &mut BytesMut::new()) {
            Some(Body::Connected(_)) => {}
            other => panic!("expected Connected, got {other:?}"),
        }
    }
    stream
}

fn next_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<Body> {
    loop {
        match wire::decode(buf, wire::DEFAULT_MAX_FRAME_SIZE) {
            Ok(Decoded::Frame(f)) => return f.body,
            Ok(Decoded::NeedMore(_)) => {}
            Err(e) => panic!("not a frame: {e}"),
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The error the broker answers with, then its close.
fn refused(stream: &mut TcpStream) -> proto::Error {
    let mut buf = BytesMut::new();
    let error = match next_frame(stream, &mut buf) {
        Some(Body::Error(e)) => e,
        other => panic!("expected an Error, got {other:?}"),
    };
    assert!(
        next_frame(stream, &mut buf).is_none(),
        "closed after the error"
    );
    error
}

/// Starts a frame of `FRAME` bytes whose body never ends (one byte short), pushing until the
/// broker stops reading; returns how much it pushed.
fn abuser(addr: SocketAddr) -> std::thread::JoinHandle<usize> {
    let mut stream = native(addr, true);
    stream
        .set_write_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    std::thread::spawn(move || {
        let mut sent = 0;
        if stream.write_all(&(FRAME as u32).to_be_bytes()).is_err() {
            return sent;
        }
        let chunk = vec![0x55u8; 64 << 10];
        while sent + chunk.len() < FRAME {
            match stream.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        // Held open a while longer, then closed.
        std::thread::sleep(Duration::from_secs(2));
        sent
    })
}

#[test]
fn partial_frames_are_charged_and_bounded_by_the_memory_limit() {
    let broker = broker();
    let pid = broker.pid() as i32;
    let start = rss(pid);
    let writers: Vec<_> = (0..ABUSERS)
        .map(|_| abuser(broker.addr("native")))
        .collect();
    let mut peak = 0;
    let mut charged = 0;
    for _ in 0..40 {
        peak = peak.max(rss(pid));
        charged = charged.max(memory_used(&broker));
        std::thread::sleep(Duration::from_millis(100));
    }
    let pushed: usize = writers.into_iter().map(|w| w.join().expect("writer")).sum();
    println!(
        "pushed {} MiB; charged at most {} MiB; RSS {} -> {} MiB",
        pushed >> 20,
        charged >> 20,
        start >> 20,
        peak >> 20
    );
    assert!(
        charged >= MEMORY_LIMIT,
        "the partial frames are charged to the memory limit: {charged}"
    );
    assert!(
        charged <= MEMORY_LIMIT + (ABUSERS as u64) * (128 << 10),
        "connections stop reading at the limit: {charged}"
    );
    assert!(
        peak <= start + MEMORY_LIMIT + RSS_SLACK,
        "RSS grew from {} to {} MiB",
        start >> 20,
        peak >> 20
    );
    common::wait::poll()
        .every(Duration::from_millis(50))
        .within(GUARD)
        .until("the abusers' bytes are released", || {
            memory_used(&broker) == 0
        });
}

#[test]
fn frames_that_could_never_fit_are_refused_from_their_header() {
    let broker = broker();
    // Native, logged in: a length between the memory limit and max_frame_size.
    let mut logged_in = native(broker.addr("native"), true);
    logged_in
        .write_all(&((MEMORY_LIMIT + 1) as u32).to_be_bytes())
        .expect("length");
    let error = refused(&mut logged_in);
    assert_eq!(error.code, ErrorCode::FrameTooLarge as i32, "{error:?}");

    // Native, before the login: more than 64 KiB.
    let mut stranger = native(broker.addr("native"), false);
    stranger
        .write_all(&(100u32 << 10).to_be_bytes())
        .expect("length");
    let error = refused(&mut stranger);
    assert_eq!(error.code, ErrorCode::FrameTooLarge as i32, "{error:?}");

    // STOMP, logged in: a content-length over the memory limit, no body sent.
    let mut stomp = RawStomp::connect(broker.addr("stomp"), &[]);
    stomp.write_raw(
        format!(
            "SEND\ndestination:/queue/big\ncontent-length:{}\n\n",
            MEMORY_LIMIT + 1
        )
        .as_bytes(),
    );
    let message = stomp.expect_error_and_close();
    assert!(
        message.ends_with(&format!("exceeds the limit of {MEMORY_LIMIT} bytes")),
        "{message}"
    );
    // STOMP, before the login: a CONNECT of more than 64 KiB.
    let mut stranger = RawStomp::open(broker.addr("stomp"));
    stranger.write_raw(
        format!(
            "CONNECT\naccept-version:1.2\ncontent-length:{}\n\n",
            100 << 10
        )
        .as_bytes(),
    );
    let message = stranger.expect_error_and_close();
    assert!(
        message.contains("exceeds the limit of 65536 bytes"),
        "{message}"
    );
}
