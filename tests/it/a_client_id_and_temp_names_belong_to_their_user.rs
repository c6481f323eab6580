//! A client id belongs to the user who connected with it, and a connection's temporary
//! destination names to that connection's user: another user's failover reconnect with the
//! same client id is refused (`Forbidden`) while the holder keeps its session and goes on
//! receiving, on the native protocol and on STOMP, and the id stays the user's after the
//! holder disconnects; another user cannot adopt a connection id's temporary names, nor one
//! not issued yet. The same user's takeover and re-adoption still work.

use crate::common_stomp;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use common_stomp::{hash, native_url, runtime, Broker, RawStomp, Topology, GUARD};
use meshmq::client::{Client, ClientOptions, Outgoing, SubscribeOptions};
use meshmq::stomp::Command;
use meshmq::wire::proto::{self, ErrorCode};
use meshmq::wire::{self, Body, Decoded, Frame};

const CLIENT_ID: &str = "alice-app";
const DEST: &str = "queue://alice.work";

fn password(user: &str) -> String {
    format!("{user}-password")
}

fn broker() -> Broker {
    let mut security = String::from("[security]\nallow_anonymous = false\n");
    for user in ["alice", "bob"] {
        security.push_str(&format!(
            "\n[[security.user]]\nname = \"{user}\"\npassword_hash = \"{}\"\n",
            hash(&password(user))
        ));
    }
    Topology::new()
        .security(&security)
        .listener("native", "tcp", "")
        .listener("stomp", "stomp", "")
        .start()
}

/// One native Connect as `user` and the broker's answer (`Connected` or `Error`); the socket
/// stays open so a connection let in keeps its session.
fn raw_connect(addr: SocketAddr, user: &str, connect: proto::Connect) -> (Frame, TcpStream) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(GUARD)).expect("timeout");
    let mut out = BytesMut::new();
    wire::encode(
        &wire::frame(Body::Connect(proto::Connect {
            protocol_version: wire::PROTOCOL_VERSION,
            username: user.into(),
            password: password(user),
            ..connect
        })),
        &mut out,
    );
    stream.write_all(&out).expect("write Connect");
    let mut buf = BytesMut::new();
    loop {
        match wire::decode(&mut buf, wire::DEFAULT_MAX_FRAME_SIZE) {
            Ok(Decoded::Frame(f)) => return (f, stream),
            Ok(Decoded::NeedMore(_)) => {}
            Err(e) => panic!("not a frame: {e}"),
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).expect("read the answer");
        assert!(n > 0, "closed without an answer");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn refusal(frame: Frame) -> proto::Error {
    match frame.body {
        Some(Body::Error(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn alice(broker: &Broker) -> Client {
    Client::connect(
        &native_url(broker, "native"),
        ClientOptions {
            client_id: Some(CLIENT_ID.into()),
            username: Some("alice".into()),
            password: Some(password("alice")),
            ..ClientOptions::default()
        },
    )
    .await
    .expect("alice connects")
}

#[test]
fn another_users_takeover_is_refused_and_the_holder_keeps_its_session() {
    let broker = broker();
    let rt = runtime();
    let addr = broker.addr("native");
    rt.block_on(async {
        let holder = alice(&broker).await;
        let mut work = holder
            .subscribe(DEST, SubscribeOptions::default())
            .await
            .expect("alice subscribes");

        let bob = |failover_reconnect| {
            refusal(
                raw_connect(
                    addr,
                    "bob",
                    proto::Connect {
                        client_id: CLIENT_ID.into(),
                        failover_reconnect,
                        ..Default::default()
                    },
                )
                .0,
            )
        };
        for failover_reconnect in [true, false] {
            let e = bob(failover_reconnect);
            assert_eq!(e.code, ErrorCode::Forbidden as i32, "{e:?}");
            assert!(e.message.contains("belongs to another user"), "{e:?}");
        }
        // On STOMP too.
        let mut stomp = RawStomp::open(broker.addr("stomp"));
        let answer = stomp.handshake(&[
            ("login", "bob"),
            ("passcode", &password("bob")),
            ("client-id", CLIENT_ID),
        ]);
        assert_eq!(answer.command, Command::Error, "{answer:?}");
        assert!(
            answer
                .header("message")
                .is_some_and(|m| m.contains("belongs to another user")),
            "{answer:?}"
        );

        // The holder was never interrupted: it still receives.
        holder
            .send_with_receipt(DEST, &Outgoing::new("still mine"))
            .await
            .expect("alice sends");
        let got = work
            .next_timeout(GUARD)
            .await
            .expect("alice still receives");
        assert_eq!(&got.body[..], b"still mine");
        assert!(!holder.is_closed());
        assert_eq!(
            broker.metric(
                "meshmq_connections_refused_total",
                &[("reason", "claimed_by_another_user")]
            ),
            3.0
        );

        // Alice's own failover reconnect takes the id over.
        let (answer, _taken) = raw_connect(
            addr,
            "alice",
            proto::Connect {
                client_id: CLIENT_ID.into(),
                failover_reconnect: true,
                ..Default::default()
            },
        );
        assert!(
            matches!(answer.body, Some(Body::Connected(_))),
            "the same user takes over: {answer:?}"
        );
        drop(_taken);
        drop(work);
        drop(holder);
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Nobody holds the id now; it is still alice's.
        let e = bob(false);
        assert!(e.message.contains("belongs to another user"), "{e:?}");
    });
}

#[test]
fn another_users_connection_cannot_claim_temporary_names() {
    let broker = broker();
    let addr = broker.addr("native");
    let connected = |frame: Frame| match frame.body {
        Some(Body::Connected(c)) => c,
        other => panic!("expected Connected, got {other:?}"),
    };
    let (answer, first) = raw_connect(addr, "alice", proto::Connect::default());
    let alices = connected(answer).connection_id;
    drop(first);
    let (answer, first) = raw_connect(addr, "bob", proto::Connect::default());
    let bobs = connected(answer).connection_id;
    drop(first);
    std::thread::sleep(Duration::from_millis(200));

    let adopt = |user: &str, prefix: &str| {
        raw_connect(
            addr,
            user,
            proto::Connect {
                failover_reconnect: true,
                temp_prefixes: vec![prefix.to_string()],
                ..Default::default()
            },
        )
        .0
    };
    let e = refusal(adopt("bob", &alices));
    assert_eq!(e.code, ErrorCode::Forbidden as i32, "{e:?}");
    assert!(
        e.message.contains("belong to another user's connection"),
        "{e:?}"
    );
    // A connection id this broker has not issued yet cannot be claimed ahead of its owner.
    let (run, _) = alices.rsplit_once('-').expect("ID-<run>-<n>");
    let e = refusal(adopt("bob", &format!("{run}-999999")));
    assert_eq!(e.code, ErrorCode::Forbidden as i32, "{e:?}");

    // Each user's own earlier connection ids are theirs to adopt.
    assert!(matches!(
        adopt("alice", &alices).body,
        Some(Body::Connected(_))
    ));
    assert!(matches!(adopt("bob", &bobs).body, Some(Body::Connected(_))));
}
