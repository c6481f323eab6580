//! A malformed frame closes only the connection that sent it, and only after an Error frame
//! saying why: garbage, a length prefix over `max_frame_size` (refused from the prefix alone,
//! before any body is sent) and a first frame that is not Connect each get a fatal Error and
//! then a clean end of stream, while a good client's stream through the same broker is
//! untouched; `meshmq_bad_frames_total` counts each.

use crate::common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::{Broker, Config, RawConn, GUARD};
use meshmq::client::{Outgoing, SubscribeOptions};
use meshmq::wire::{proto, Body};
use proto::ErrorCode;

const TOTAL: u64 = 20_000;
const QUEUE: &str = "queue://steady";
const MAX_FRAME: u32 = 1 << 20;

/// A length prefix announcing 8 bytes, then 8 bytes that are no protobuf message.
const GARBAGE: [u8; 12] = [0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];

fn body(seq: u64) -> Bytes {
    let mut b = vec![b's'; 512];
    b[..8].copy_from_slice(&seq.to_be_bytes());
    Bytes::from(b)
}

/// One abuse: what the raw socket does, and the error code it must get back.
struct Abuse {
    what: &'static str,
    connect_first: bool,
    act: fn(&mut RawConn),
    code: ErrorCode,
}

const ABUSES: &[Abuse] = &[
    Abuse {
        what: "garbage as the first frame",
        connect_first: false,
        act: |raw| raw.write(&GARBAGE),
        code: ErrorCode::BadFrame,
    },
    Abuse {
        what: "garbage after connecting",
        connect_first: true,
        act: |raw| raw.write(&GARBAGE),
        code: ErrorCode::BadFrame,
    },
    Abuse {
        what: "plain text, read as a huge length prefix",
        connect_first: false,
        act: |raw| raw.write(b"hello broker, are you there?\r\n"),
        code: ErrorCode::FrameTooLarge,
    },
    Abuse {
        what: "an oversized length prefix before connecting (no body sent)",
        connect_first: false,
        act: |raw| raw.write(&(MAX_FRAME + 1).to_be_bytes()),
        code: ErrorCode::FrameTooLarge,
    },
    Abuse {
        what: "an oversized length prefix after connecting (no body sent)",
        connect_first: true,
        act: |raw| raw.write(&(2 * MAX_FRAME).to_be_bytes()),
        code: ErrorCode::FrameTooLarge,
    },
    Abuse {
        what: "Subscribe as the first frame",
        connect_first: false,
        act: |raw| {
            raw.send(Body::Subscribe(proto::Subscribe {
                subscription: 1,
                destination: QUEUE.into(),
                ..Default::default()
            }))
        },
        code: ErrorCode::NotConnected,
    },
    Abuse {
        what: "a broker-only frame from a client",
        connect_first: true,
        act: |raw| raw.send(Body::Receipt(proto::Receipt { receipt: 1 })),
        code: ErrorCode::BadFrame,
    },
];

fn abuse(addr: SocketAddr, a: &Abuse) {
    let mut raw = RawConn::open(addr);
    if a.connect_first {
        raw.handshake(0);
    }
    (a.act)(&mut raw);
    let error = raw.expect_error_then_eof();
    assert_eq!(error.code, a.code as i32, "{}: {error:?}", a.what);
    assert!(
        error.fatal,
        "{}: the error says the connection ends",
        a.what
    );
    assert!(!error.message.is_empty(), "{}: the error says why", a.what);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_frames_get_an_error_and_a_close_while_a_good_client_streams_on() {
    let broker = Broker::start(&Config::new().broker("max_frame_size = \"1MiB\""));
    let bad_before = common::metric_sum(&broker.metrics(), "meshmq_bad_frames_total", &[]);

    let producer = broker.client().await;
    let consumer = broker.client().await;
    let mut sub = consumer
        .subscribe(QUEUE, SubscribeOptions::default())
        .await
        .expect("subscribe");
    let receiving = tokio::spawn(async move {
        for i in 0..TOTAL {
            let d = tokio::time::timeout(GUARD, sub.next())
                .await
                .map_err(|_| format!("message {i} did not arrive"))?
                .ok_or_else(|| format!("subscription ended before message {i}"))?;
            if d.body != body(i) {
                return Err(format!("message {i} is not what was sent"));
            }
        }
        Ok::<_, String>(())
    });
    let sending = {
        let producer = producer.clone();
        tokio::spawn(async move {
            for i in 0..TOTAL {
                producer.send(QUEUE, &Outgoing::new(body(i))).await?;
                if i % 1000 == 0 {
                    // Spread the stream over the whole abuse.
                    tokio::task::yield_now().await;
                }
            }
            producer.flush().await
        })
    };

    let addr = broker.ports().listen_addr();
    tokio::task::spawn_blocking(move || {
        for a in ABUSES {
            abuse(addr, a);
        }
    })
    .await
    .expect("every abuse answered with an error, then a close");

    let sent = tokio::time::timeout(GUARD, sending)
        .await
        .expect("sent")
        .expect("join");
    assert!(sent.is_ok(), "{sent:?}");
    let received = tokio::time::timeout(GUARD, receiving)
        .await
        .expect("received")
        .expect("join");
    assert_eq!(received, Ok(()));
    assert!(!producer.is_closed() && !consumer.is_closed());
    assert_eq!(producer.async_error_count(), 0);

    let bad_after = common::metric_sum(&broker.metrics(), "meshmq_bad_frames_total", &[]);
    assert_eq!(bad_after - bad_before, ABUSES.len() as f64);
    common::wait_until("only the good clients stay connected", || {
        broker.status().connections == 2
    });
}
