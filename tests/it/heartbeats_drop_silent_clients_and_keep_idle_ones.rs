//! Heartbeats keep idle connections and drop dead ones: a client that promises heartbeats and
//! then goes silent is sent a `Timeout` error and closed, while idle Rust clients stay
//! connected across many heartbeat intervals (their heartbeats and the broker's keep both
//! sides satisfied).

use crate::common;

use std::time::Duration;

use common::{Broker, Config, RawConn, GUARD};
use meshmq::client::{ClientOptions, Outgoing, SubscribeOptions};
use meshmq::wire::proto::ErrorCode;

/// The broker's heartbeat. Small, so the test idles across many intervals; not smaller, so a
/// loaded machine never stalls a process for the three intervals that count as silence.
const BROKER_HEARTBEAT: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_promised_heartbeats_and_went_silent_is_timed_out() {
    let broker = Broker::start(&Config::new().broker("heartbeat = \"500ms\""));
    let addr = broker.ports().listen_addr();
    let error = tokio::task::spawn_blocking(move || {
        let mut raw = RawConn::open(addr);
        let connected = raw.handshake(200);
        assert_eq!(connected.heartbeat_ms, 500);
        // ... and now nothing: no heartbeat, no frame.
        raw.expect_error_then_eof()
    })
    .await
    .expect("a Timeout error, then the end of the stream");
    assert_eq!(error.code, ErrorCode::Timeout as i32, "{error:?}");
    assert!(error.fatal);
    common::wait_until("the silent connection is gone", || {
        broker.status().connections == 0
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_clients_stay_connected_across_many_heartbeat_intervals() {
    let broker = Broker::start(&Config::new().broker("heartbeat = \"500ms\""));
    let beating = broker
        .client_with(ClientOptions {
            heartbeat: BROKER_HEARTBEAT,
            ..ClientOptions::default()
        })
        .await;
    assert_eq!(beating.server_info().heartbeat, BROKER_HEARTBEAT);
    // A client that promises no heartbeats is not held to any.
    let quiet = broker
        .client_with(ClientOptions {
            heartbeat: Duration::ZERO,
            ..ClientOptions::default()
        })
        .await;

    // Eight intervals of silence from the application: each side would have given up on the
    // other after three without heartbeats.
    tokio::time::sleep(BROKER_HEARTBEAT * 8).await;

    for (who, c) in [("heartbeating", &beating), ("quiet", &quiet)] {
        assert!(!c.is_closed(), "the {who} client was dropped");
        tokio::time::timeout(GUARD, c.flush())
            .await
            .expect("a round trip within the guard")
            .unwrap_or_else(|e| panic!("the {who} client's round trip failed: {e}"));
    }
    assert_eq!(broker.status().connections, 2);

    let mut sub = quiet
        .subscribe("queue://after.idle", SubscribeOptions::default())
        .await
        .expect("subscribe");
    beating
        .send_with_receipt("queue://after.idle", &Outgoing::new("still here"))
        .await
        .expect("send");
    let d = tokio::time::timeout(GUARD, sub.next())
        .await
        .expect("delivered")
        .expect("open");
    assert_eq!(&d.body[..], b"still here");
}
