//! `read_send` finds a frame only where `decode` takes the same bytes off as a `Send` with the
//! same fields — on every frame the encoders write, and on random frames built from a `Send`'s
//! own fields with prost's corner cases (repeats, odd varints, bad strings, wrong wire types,
//! unknown fields, truncations) and on random bytes.

use bytes::{BufMut, BytesMut};

use super::*;
use crate::wire::proto;
use crate::wire::{self, Body, Decoded, MessageRef, DEFAULT_MAX_FRAME_SIZE};

const BODY_BELOW: usize = 16 * 1024;

/// Reads `bytes` in place and, when that finds a frame, checks it against `decode` of the same
/// bytes. Returns whether it found one.
fn agrees(bytes: &[u8], max: usize) -> bool {
    let Some(view) = read_send(bytes, max, BODY_BELOW) else {
        return false;
    };
    let mut buf = BytesMut::from(bytes);
    let decoded = wire::decode(&mut buf, max);
    match decoded {
        Ok(Decoded::Frame(wire::Frame {
            body: Some(Body::Send(s)),
        })) => {
            assert_eq!(view.to_proto(), s, "fields read in place from {bytes:?}");
            assert_eq!(
                view.frame_len,
                bytes.len() - buf.len(),
                "bytes taken from {bytes:?}"
            );
        }
        other => panic!("read in place {view:?}, but decode gives {other:?} for {bytes:?}"),
    }
    true
}

#[test]
fn every_send_the_encoders_write_is_read_in_place_as_decoded() {
    let headers = vec![
        ("x-trace".to_string(), "abc".to_string()),
        ("empty".to_string(), String::new()),
        (String::new(), "no name".to_string()),
    ];
    let big = vec![9u8; BODY_BELOW - 1];
    let full = wire::tests::sample_ref(&headers);
    let cases = [
        full,
        MessageRef::default(),
        MessageRef {
            headers: &[],
            ..full
        },
        MessageRef {
            body: &big,
            priority: u32::MAX,
            sequence: u64::MAX,
            ..full
        },
    ];
    for m in cases {
        for receipt in [0, 1, u64::MAX] {
            let mut buf = BytesMut::new();
            wire::encode_send(&m, receipt, &mut buf);
            // Two frames back to back: the first is read, and only its bytes are counted.
            let one = buf.len();
            wire::encode_send(&m, receipt, &mut buf);
            assert!(
                agrees(&buf, DEFAULT_MAX_FRAME_SIZE),
                "not read in place: {m:?}"
            );
            assert_eq!(
                read_send(&buf, DEFAULT_MAX_FRAME_SIZE, BODY_BELOW)
                    .unwrap()
                    .frame_len,
                one
            );
        }
    }
    // prost's own encoding, a transaction included.
    let mut s = read_send(&encoded(&full), usize::MAX, BODY_BELOW)
        .unwrap()
        .to_proto();
    s.transaction = 7;
    let mut buf = BytesMut::new();
    wire::encode(&wire::frame(Body::Send(s)), &mut buf);
    assert!(agrees(&buf, DEFAULT_MAX_FRAME_SIZE));
}

fn encoded(m: &MessageRef<'_>) -> BytesMut {
    let mut buf = BytesMut::new();
    wire::encode_send(m, 5, &mut buf);
    buf
}

#[test]
fn what_decode_must_answer_is_left_to_it() {
    let headers = vec![("k".to_string(), "v".to_string())];
    let whole = encoded(&wire::tests::sample_ref(&headers));
    // Arriving: every cut of a frame is left whole.
    for cut in 0..whole.len() {
        assert!(read_send(&whole[..cut], DEFAULT_MAX_FRAME_SIZE, BODY_BELOW).is_none());
    }
    // Over the frame limit, or a body the broker would share rather than copy.
    assert!(read_send(&whole, whole.len() - LENGTH_PREFIX - 1, BODY_BELOW).is_none());
    assert!(read_send(&whole, whole.len() - LENGTH_PREFIX, BODY_BELOW).is_some());
    let large = vec![1u8; BODY_BELOW];
    let large = encoded(&MessageRef {
        body: &large,
        ..MessageRef::default()
    });
    assert!(read_send(&large, DEFAULT_MAX_FRAME_SIZE, BODY_BELOW).is_none());
    // Another kind of frame.
    let mut ack = BytesMut::new();
    wire::encode(
        &wire::frame(Body::Ack(proto::Ack {
            subscription: 1,
            up_to: 2,
            ..proto::Ack::default()
        })),
        &mut ack,
    );
    assert!(read_send(&ack, DEFAULT_MAX_FRAME_SIZE, BODY_BELOW).is_none());
}

/// A deterministic xorshift stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

/// A varint of `v`, sometimes in one of the longer forms prost also reads (padded with
/// continuation bytes), and rarely one it refuses (eleven bytes, or a tenth byte over 1).
fn put_varint(rng: &mut Rng, v: u64, out: &mut Vec<u8>) {
    let mut bytes = Vec::new();
    let mut x = v;
    loop {
        if x < 0x80 {
            bytes.push(x as u8);
            break;
        }
        bytes.push((x as u8) | 0x80);
        x >>= 7;
    }
    if rng.chance(8) {
        let pad = rng.below(12) as usize;
        let last = bytes.len() - 1;
        bytes[last] |= 0x80;
        bytes.extend(std::iter::repeat_n(0x80, pad));
        bytes.push(if rng.chance(4) { rng.next() as u8 } else { 0 });
    }
    out.extend_from_slice(&bytes);
}

fn random_value(rng: &mut Rng) -> u64 {
    match rng.below(5) {
        0 => 0,
        1 => rng.below(128),
        2 => rng.below(1 << 20),
        3 => u32::MAX as u64 + rng.below(1 << 20),
        _ => rng.next(),
    }
}

fn random_text(rng: &mut Rng) -> Vec<u8> {
    let len = rng.below(12) as usize;
    let mut t: Vec<u8> = (0..len).map(|_| b'a' + rng.below(26) as u8).collect();
    if rng.chance(10) {
        // Not UTF-8, or a multi-byte character cut short.
        t.push(if rng.chance(2) { 0xff } else { 0xe2 });
    } else if rng.chance(6) {
        t.extend_from_slice("é→".as_bytes());
    }
    t
}

fn put_delimited(rng: &mut Rng, bytes: &[u8], out: &mut Vec<u8>) {
    // Rarely a length past what follows.
    let extra = if rng.chance(40) { 1 + rng.below(3) } else { 0 };
    put_varint(rng, bytes.len() as u64 + extra, out);
    out.extend_from_slice(bytes);
}

fn random_header(rng: &mut Rng) -> Vec<u8> {
    let mut h = Vec::new();
    for _ in 0..rng.below(4) {
        let field = match rng.below(12) {
            0 => 3,
            1..=5 => 1,
            _ => 2,
        };
        let wire_type = if rng.chance(20) { 0 } else { 2 };
        put_varint(rng, (field << 3) | wire_type, &mut h);
        if wire_type == 0 {
            let v = random_value(rng);
            put_varint(rng, v, &mut h);
        } else {
            let t = random_text(rng);
            put_delimited(rng, &t, &mut h);
        }
    }
    h
}

/// Field numbers of `Send` that are length-delimited (the others are varints).
const DELIMITED: [u64; 6] = [1, 2, 7, 10, 11, 12];

/// The fields of a random `Send`: known ones (repeated at times), and now and then a wrong
/// wire type, an unknown field or a header.
fn random_send(rng: &mut Rng) -> Vec<u8> {
    let mut s = Vec::new();
    for _ in 0..rng.below(10) {
        let field = if rng.chance(30) {
            15 + rng.below(3)
        } else {
            1 + rng.below(14)
        };
        let delimited = DELIMITED.contains(&field) || field == 3;
        let wire_type = match (delimited, rng.chance(25)) {
            (true, false) | (false, true) => 2,
            (false, false) | (true, true) => 0,
        };
        put_varint(rng, (field << 3) | wire_type, &mut s);
        match (wire_type, field) {
            (0, _) => {
                let v = random_value(rng);
                put_varint(rng, v, &mut s);
            }
            (_, 3) => {
                let h = random_header(rng);
                put_delimited(rng, &h, &mut s);
            }
            (_, 2 | 7) => {
                let len = rng.below(40) as usize;
                let b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                put_delimited(rng, &b, &mut s);
            }
            _ => {
                let t = random_text(rng);
                put_delimited(rng, &t, &mut s);
            }
        }
    }
    s
}

/// A frame around a random `Send`, rarely with another frame key, trailing bytes or a length
/// prefix that does not match; then a second frame behind it.
fn random_frame(rng: &mut Rng) -> Vec<u8> {
    let send = random_send(rng);
    let mut frame = Vec::new();
    let frame_key = if rng.chance(30) {
        5 << 3 | 2
    } else {
        3 << 3 | 2
    };
    put_varint(rng, frame_key, &mut frame);
    put_delimited(rng, &send, &mut frame);
    if rng.chance(30) {
        frame.extend_from_slice(&[0x08, 0x01]);
    }
    let mut len = frame.len() as u32;
    if rng.chance(40) {
        len = len.wrapping_add(rng.below(3) as u32).wrapping_sub(1);
    }
    let mut out = BytesMut::new();
    out.put_u32(len);
    out.put_slice(&frame);
    out.put_slice(&encoded(&MessageRef::default()));
    out.to_vec()
}

#[test]
fn read_in_place_agrees_with_decode_on_random_frames() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut read = 0;
    const ROUNDS: usize = 200_000;
    for _ in 0..ROUNDS {
        let frame = random_frame(&mut rng);
        if agrees(&frame, DEFAULT_MAX_FRAME_SIZE) {
            read += 1;
        }
        // Cut short, and under a small frame limit.
        let cut = rng.below(frame.len() as u64) as usize;
        agrees(&frame[..cut], DEFAULT_MAX_FRAME_SIZE);
        agrees(&frame, 40);
    }
    // The frames must exercise the reader, not only its refusals.
    assert!(
        read > ROUNDS / 5,
        "only {read} of {ROUNDS} random frames were read in place"
    );
}

#[test]
fn read_in_place_agrees_with_decode_on_random_bytes() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..100_000u64 {
        let len = (round % 64) as usize;
        let mut bytes = vec![0, 0, 0, (round % 60) as u8, 0x1a, (round % 58) as u8];
        bytes.extend((0..len).map(|_| rng.next() as u8));
        agrees(&bytes, 1 << 16);
        agrees(&bytes[4..], 1 << 16);
    }
}
