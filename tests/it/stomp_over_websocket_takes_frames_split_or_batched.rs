//! STOMP over WebSocket takes frames as clients send them: one frame split across several
//! WebSocket messages, several frames in one message, text or binary messages; the broker
//! answers in WebSocket messages of the `v12.stomp` subprotocol it chose. A message that is
//! not STOMP gets an ERROR frame and the close, and is counted in `meshmq_bad_frames_total`.
//! The same port serves MQTT to the `mqtt` subprotocol, a packet split across messages or
//! several in one, where a message that is not MQTT closes the connection and is counted too.

use crate::common_stomp;

use common_stomp::{Broker, Topology, GUARD};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn broker() -> Broker {
    Topology::new().listener("ws", "ws", "").start()
}

async fn open(broker: &Broker) -> Ws {
    let mut request = format!("ws://127.0.0.1:{}/", broker.port("ws"))
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v10.stomp, v12.stomp".parse().expect("header"),
    );
    let (ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade");
    assert_eq!(
        response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap()),
        Some("v12.stomp"),
        "the broker chose its preferred STOMP subprotocol"
    );
    ws
}

/// The payload of the next text or binary message, as text.
async fn next_text(ws: &mut Ws) -> Option<String> {
    loop {
        match tokio::time::timeout(GUARD, ws.next())
            .await
            .expect("no hang")?
        {
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(Message::Binary(b)) => return Some(String::from_utf8_lossy(&b).into_owned()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Reads messages until their text holds `n` whole frames; returns them.
async fn frames(ws: &mut Ws, n: usize) -> Vec<String> {
    let mut text = String::new();
    while text.matches('\0').count() < n {
        let more = next_text(ws)
            .await
            .unwrap_or_else(|| panic!("closed after {text:?}"));
        text.push_str(&more);
    }
    text.split('\0')
        .map(|f| f.trim_start_matches('\n').to_string())
        .filter(|f| !f.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_whole_split_or_batched_all_work() {
    let b = broker();
    let mut ws = open(&b).await;
    // CONNECT split in three messages, one of them binary.
    let connect = "CONNECT\naccept-version:1.2\nhost:meshmq\n\n\0";
    ws.send(Message::text(&connect[..10])).await.expect("send");
    ws.send(Message::binary(connect.as_bytes()[10..20].to_vec()))
        .await
        .expect("send");
    ws.send(Message::text(&connect[20..])).await.expect("send");
    let connected = frames(&mut ws, 1).await;
    assert!(connected[0].starts_with("CONNECTED\n"), "{connected:?}");
    assert!(connected[0].contains("version:1.2"), "{connected:?}");

    // SUBSCRIBE and two SENDs in one message, each asking for a receipt.
    let batch = "SUBSCRIBE\nid:1\ndestination:/queue/ws\nreceipt:s\n\n\0\
                 SEND\ndestination:/queue/ws\nreceipt:a\n\none\0\
                 SEND\ndestination:/queue/ws\nreceipt:b\n\ntwo\0";
    ws.send(Message::text(batch)).await.expect("send");
    let got = frames(&mut ws, 5).await;
    let receipts: Vec<&String> = got.iter().filter(|f| f.starts_with("RECEIPT")).collect();
    assert_eq!(receipts.len(), 3, "{got:?}");
    let bodies: Vec<&str> = got
        .iter()
        .filter(|f| f.starts_with("MESSAGE"))
        .map(|f| f.rsplit("\n\n").next().unwrap_or(""))
        .collect();
    assert_eq!(bodies, vec!["one", "two"], "{got:?}");
    ws.send(Message::text("DISCONNECT\nreceipt:bye\n\n\0"))
        .await
        .expect("send");
    assert!(frames(&mut ws, 1).await[0].starts_with("RECEIPT\nreceipt-id:bye"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_is_not_stomp_gets_an_error_and_the_close() {
    let b = broker();
    let before = b.metric("meshmq_bad_frames_total", &[]);
    let mut ws = open(&b).await;
    ws.send(Message::text("HELLO there\n\n\0"))
        .await
        .expect("send");
    let answer = frames(&mut ws, 1).await;
    assert!(answer[0].starts_with("ERROR\n"), "{answer:?}");
    assert_eq!(
        next_text(&mut ws).await,
        None,
        "the connection closes after the ERROR"
    );
    assert_eq!(b.metric("meshmq_bad_frames_total", &[]), before + 1.0);
}

/// A WebSocket of subprotocol `mqtt` on the STOMP test's listener, past its MQTT 3.1.1
/// CONNECT and CONNACK.
async fn open_mqtt(b: &Broker) -> Ws {
    let mut request = format!("ws://127.0.0.1:{}/", b.port("ws"))
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
    let (mut ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade");
    assert_eq!(
        response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap()),
        Some("mqtt")
    );
    // MQTT 3.1.1 CONNECT, clean session, keep-alive 60 s, client id "ws".
    let connect: Vec<u8> = vec![
        0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 2, b'w', b's',
    ];
    ws.send(Message::binary(connect)).await.expect("send");
    loop {
        match tokio::time::timeout(GUARD, ws.next())
            .await
            .expect("no hang")
        {
            Some(Ok(Message::Binary(b))) => {
                assert_eq!(&b[..], &[0x20, 2, 0, 0], "CONNACK, accepted");
                return ws;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("no CONNACK in a binary message: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt_subprotocol_gets_mqtt_on_the_same_port() {
    let b = broker();
    let mut ws = open_mqtt(&b).await;
    // A PINGREQ split across two messages, then two in one message: three PINGRESPs.
    for part in [&[0xC0][..], &[0x00], &[0xC0, 0x00, 0xC0, 0x00]] {
        ws.send(Message::binary(part.to_vec())).await.expect("send");
    }
    let mut got = Vec::new();
    while got.len() < 6 {
        match tokio::time::timeout(GUARD, ws.next())
            .await
            .expect("no hang")
        {
            Some(Ok(Message::Binary(b))) => got.extend_from_slice(&b),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("PINGRESPs expected, got {other:?} after {got:?}"),
        }
    }
    assert_eq!(got, [0xD0, 0x00, 0xD0, 0x00, 0xD0, 0x00], "three PINGRESPs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_is_not_mqtt_closes_the_mqtt_websocket_and_is_counted() {
    let b = broker();
    let before = b.metric("meshmq_bad_frames_total", &[]);
    let mut ws = open_mqtt(&b).await;
    // Packet type 0 is reserved: no MQTT packet starts so.
    ws.send(Message::binary(vec![0x00, 0x00]))
        .await
        .expect("send");
    assert_eq!(
        next_text(&mut ws).await,
        None,
        "the connection closes with nothing more said (MQTT 3.1.1 has no DISCONNECT from the server)"
    );
    assert_eq!(b.metric("meshmq_bad_frames_total", &[]), before + 1.0);
}
