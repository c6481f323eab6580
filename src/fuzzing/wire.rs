//! Fuzz target `wire`: the native frame decoder, and its seeds (frames the encoders write).

use bytes::{BufMut, Bytes, BytesMut};

use crate::wire::{self, Body, Frame};

use super::measure::{proportional, within};

/// The native frame decoder: every frame it takes off a stream re-encodes (with prost and,
/// for `Send`, `Deliver` and `Forward`, with the borrowed hot-path encoders) to bytes that
/// decode back to the same frame; a partial frame is left whole and named by the bytes it
/// still needs; a `Send` read in place (the broker's fast path) is the frame decoding takes
/// off the same bytes.
pub fn wire(data: &[u8]) {
    const MAX: usize = 64 << 10;
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        let in_place = wire::read_send(&buf, MAX, usize::MAX).map(|s| (s.to_proto(), s.frame_len));
        let decoded = within("wire::decode", proportional(data.len()), || {
            wire::decode(&mut buf, MAX)
        });
        if let Some((send, len)) = in_place {
            match &decoded {
                Ok(wire::Decoded::Frame(Frame {
                    body: Some(Body::Send(s)),
                })) => {
                    assert_eq!(s, &send, "a Send read in place");
                    assert_eq!(
                        before - buf.len(),
                        len,
                        "bytes taken by a Send read in place"
                    );
                }
                other => panic!("a Send read in place where decoding gives {other:?}"),
            }
        }
        match decoded {
            Ok(wire::Decoded::Frame(f)) => {
                assert!(buf.len() < before, "a frame consumed no bytes");
                wire_round_trip(&f);
            }
            Ok(wire::Decoded::NeedMore(n)) => {
                assert_eq!(buf.len(), before, "need-more consumed bytes");
                assert!(n >= 1, "need-more of 0 bytes");
                if before >= wire::LENGTH_PREFIX {
                    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                    assert_eq!(
                        before + n,
                        wire::LENGTH_PREFIX + len,
                        "need-more miscounted"
                    );
                }
                return;
            }
            Err(_) => return,
        }
    }
}

fn decode_one_frame(bytes: &[u8]) -> Frame {
    let mut buf = BytesMut::from(bytes);
    match wire::decode(&mut buf, wire::DEFAULT_MAX_FRAME_SIZE) {
        Ok(wire::Decoded::Frame(f)) if buf.is_empty() => f,
        other => panic!("an encoded frame did not decode whole: {other:?}"),
    }
}

fn wire_round_trip(f: &Frame) {
    let mut bytes = BytesMut::new();
    wire::encode(f, &mut bytes);
    assert_eq!(
        &decode_one_frame(&bytes),
        f,
        "decode(encode(frame)) changed it"
    );
    let headers = |h: &[wire::proto::Header]| wire::headers_from_wire(h.to_vec());
    match &f.body {
        Some(Body::Send(s)) => {
            let h = headers(&s.headers);
            let mut own = BytesMut::new();
            wire::encode_send(&send_ref(s, &h), s.receipt, &mut own);
            let mut expected = s.clone();
            expected.transaction = 0;
            assert_eq!(
                decode_one_frame(&own),
                wire::frame(Body::Send(expected)),
                "encode_send wrote another Send"
            );
        }
        Some(Body::Deliver(d)) => {
            let h = headers(&d.headers);
            let m = wire::MessageRef {
                destination: &d.destination,
                body: &d.body,
                headers: &h,
                persistent: d.persistent,
                priority: d.priority,
                expires_at_ms: d.expires_at_ms,
                producer_id: &d.producer_id,
                sequence: d.sequence,
                reply_to: &d.reply_to,
                correlation_id: &d.correlation_id,
                content_type: &d.content_type,
                timestamp_ms: d.timestamp_ms,
            };
            let mut own = BytesMut::new();
            wire::encode_deliver(d.subscription, d.tag, d.redelivery_count, &m, &mut own);
            assert_eq!(
                &decode_one_frame(&own),
                f,
                "encode_deliver wrote another Deliver"
            );
        }
        Some(Body::Forward(fw)) => {
            let s = fw.message.clone().unwrap_or_default();
            let h = headers(&s.headers);
            let path: Vec<&str> = fw.broker_path.iter().map(String::as_str).collect();
            let targets: Vec<&str> = fw.targets.iter().map(String::as_str).collect();
            let mut own = BytesMut::new();
            wire::encode_forward(
                fw.forward_id,
                &send_ref(&s, &h),
                &path,
                fw.redelivery_count,
                &targets,
                fw.unacknowledged,
                &mut own,
            );
            let mut expected = fw.clone();
            expected.message = Some(wire::proto::Send {
                receipt: 0,
                transaction: 0,
                ..s
            });
            assert_eq!(
                decode_one_frame(&own),
                wire::frame(Body::Forward(expected)),
                "encode_forward wrote another Forward"
            );
        }
        _ => {}
    }
}

fn send_ref<'a>(s: &'a wire::proto::Send, headers: &'a [(String, String)]) -> wire::MessageRef<'a> {
    wire::MessageRef {
        destination: &s.destination,
        body: &s.body,
        headers,
        persistent: s.persistent,
        priority: s.priority,
        expires_at_ms: s.expires_at_ms,
        producer_id: &s.producer_id,
        sequence: s.sequence,
        reply_to: &s.reply_to,
        correlation_id: &s.correlation_id,
        content_type: &s.content_type,
        timestamp_ms: s.timestamp_ms,
    }
}

fn sample_send() -> wire::proto::Send {
    wire::proto::Send {
        destination: "queue://orders.eu".into(),
        body: Bytes::from_static(b"\x00binary\xffbody"),
        headers: vec![wire::proto::Header {
            key: "x-trace".into(),
            value: "abc".into(),
        }],
        persistent: true,
        priority: 7,
        expires_at_ms: 1_900_000_000_000,
        producer_id: Bytes::from_static(b"p-1"),
        sequence: 42,
        receipt: 9,
        reply_to: "temp-queue://c1.1".into(),
        correlation_id: "corr-9".into(),
        content_type: "application/octet-stream".into(),
        timestamp_ms: 1_800_000_000_000,
        transaction: 0,
    }
}

pub(super) fn wire_seeds() -> Vec<Vec<u8>> {
    use wire::proto::*;
    let frames = [
        wire::frame(Body::Connect(Connect {
            protocol_version: wire::PROTOCOL_VERSION,
            client_id: "c".into(),
            username: "u".into(),
            password: "p".into(),
            heartbeat_ms: 1000,
            client_name: "n".into(),
            fault_tolerant: true,
            failover_reconnect: true,
            temp_prefixes: vec!["ID-1-2".into()],
            priority_pinned: true,
            resent_from_group: "g0".into(),
            resends_below: 7,
        })),
        wire::frame(Body::Send(sample_send())),
        wire::frame(Body::Subscribe(Subscribe {
            subscription: 1,
            destination: "topic://a.>".into(),
            selector: "color = 'red'".into(),
            prefetch: 10,
            priority: -2,
            ack_mode: AckMode::ClientIndividual as i32,
            durable_name: "d".into(),
            receipt: 4,
            no_local: true,
        })),
        wire::frame(Body::Ack(Ack {
            subscription: 1,
            up_to: 0,
            tags: vec![1, 2, 5],
            receipt: 0,
            transaction: 7,
        })),
        wire::frame(Body::Forward(Forward {
            forward_id: 5,
            message: Some(sample_send()),
            broker_path: vec!["hub".into()],
            redelivery_count: 1,
            targets: vec!["edge".into()],
            unacknowledged: true,
        })),
    ];
    let mut seeds: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| {
            let mut b = BytesMut::new();
            wire::encode(f, &mut b);
            b.to_vec()
        })
        .collect();
    let headers = vec![("a".to_string(), "b".to_string())];
    let mut deliver = BytesMut::new();
    let s = sample_send();
    wire::encode_deliver(3, 1 << 40, 2, &send_ref(&s, &headers), &mut deliver);
    // Two frames in one stream, the second cut short.
    let mut stream = deliver.clone();
    stream.put_slice(&seeds[1][..seeds[1].len() / 2]);
    seeds.push(deliver.to_vec());
    seeds.push(stream.to_vec());
    seeds
}
