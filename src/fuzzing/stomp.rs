//! Fuzz target `stomp`: the STOMP decoder, and its seeds.

use bytes::{BufMut, BytesMut};

use crate::stomp::{self, Command, Version};

use super::measure::{proportional, within};

/// What a decoder made of a stream, up to where it stopped.
#[derive(Debug, PartialEq)]
enum Stop {
    /// The bytes ran out inside a frame or between frames.
    NeedMore,
    Error,
}

/// The STOMP decoder. The first byte picks the version, the limits (ActiveMQ's defaults or
/// tight ones) and the size of the pieces the rest arrives in. Properties: the frames and
/// heart-beats decoded from the whole stream at once are exactly those decoded from it
/// arriving in pieces through one kept decoder, up to where the whole stream stops, which the
/// pieces stop at too; a SEND read in place is the frame decoding takes off the same bytes;
/// each frame re-encodes to bytes that decode to the same frame (headers
/// as the version can carry them, `content-length` as the encoder writes it) and re-encode to
/// the same bytes.
pub fn stomp(data: &[u8]) {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let version = Version::ALL[first as usize % 3];
    let limits = if first & 0x08 != 0 {
        stomp::Limits {
            max_frame_size: 256,
            max_headers: 4,
            max_header_length: 48,
        }
    } else {
        stomp::Limits::default()
    };
    let chunk = (first >> 4) as usize + 1;
    let (whole, stopped) = {
        let mut decoder = stomp::Decoder::new(version, limits);
        let mut buf = BytesMut::from(stream);
        let mut out = Vec::new();
        loop {
            let before = buf.len();
            // A SEND read in place must be the frame decoding takes off the same bytes.
            let in_place = decoder.in_place_send(&buf).map(|send| {
                let mut rest = buf.clone();
                let (headers, body) = send.take(&mut rest, |headers, body| {
                    let headers: Vec<_> = headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                    (headers, body)
                });
                (headers, body, rest)
            });
            let decoded = within("stomp::Decoder", proportional(data.len()), || {
                decoder.decode(&mut buf)
            });
            if let Some((headers, body, rest)) = in_place {
                match &decoded {
                    Ok(stomp::Decoded::Frame(f)) => {
                        assert_eq!(f.command, Command::Send, "read in place as a SEND");
                        assert_eq!(headers, f.headers.to_vec(), "headers read in place");
                        assert_eq!(body, f.body, "body read in place");
                        assert_eq!(&rest[..], &buf[..], "bytes left after reading in place");
                    }
                    other => panic!("a SEND read in place where decoding gives {other:?}"),
                }
            }
            match decoded {
                Ok(stomp::Decoded::NeedMore) => break (out, Stop::NeedMore),
                Ok(d) => {
                    assert!(
                        buf.len() < before,
                        "a frame or heart-beat consumed no bytes"
                    );
                    out.push(d);
                }
                Err(_) => break (out, Stop::Error),
            }
        }
    };
    let mut decoder = stomp::Decoder::new(version, limits);
    let mut buf = BytesMut::new();
    let mut pieces = Vec::new();
    let mut pieces_stopped = Stop::NeedMore;
    'feed: for piece in stream.chunks(chunk) {
        buf.put_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(stomp::Decoded::NeedMore) => break,
                Ok(d) => pieces.push(d),
                Err(_) => {
                    pieces_stopped = Stop::Error;
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(
        pieces, whole,
        "decoding in pieces of {chunk} gave other frames than decoding at once"
    );
    assert_eq!(
        pieces_stopped, stopped,
        "decoding in pieces of {chunk} stopped otherwise than decoding at once"
    );
    for d in whole {
        if let stomp::Decoded::Frame(f) = d {
            stomp_round_trip(&f, version);
        }
    }
}

fn stomp_round_trip(f: &stomp::Frame, version: Version) {
    let mut first = BytesMut::new();
    stomp::encode(f, version, &mut first);
    let mut again = first.clone();
    let back = match stomp::decode(&mut again, version, &stomp::Limits::default()) {
        Ok(stomp::Decoded::Frame(back)) if again.is_empty() => back,
        other => panic!(
            "an encoded {} frame did not decode whole: {other:?}",
            f.command
        ),
    };
    assert_eq!(back.command, f.command, "the command changed");
    assert_eq!(back.body, f.body, "the body changed");
    // A raw CR inside a header line is decoded as it came, but only STOMP 1.2 (outside the
    // handshake) can carry one: elsewhere the encoder writes U+FFFD, by design.
    let carries_cr = version == Version::V1_2 && f.command.escapes_headers();
    let carried = |t: &str| {
        if carries_cr {
            t.to_string()
        } else {
            t.replace('\r', "\u{fffd}")
        }
    };
    let not_length = |h: &(&str, &str)| h.0 != "content-length";
    let sent: Vec<(String, String)> = f
        .headers
        .iter()
        .filter(not_length)
        .map(|(k, v)| (carried(k), carried(v)))
        .collect();
    let got: Vec<(String, String)> = back
        .headers
        .iter()
        .filter(not_length)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(got, sent, "the headers changed");
    let wants_length = !f.body.is_empty() || matches!(f.command, Command::Message | Command::Error);
    let length = wants_length.then(|| f.body.len().to_string());
    assert_eq!(
        back.header("content-length"),
        length.as_deref(),
        "content-length is not the body's"
    );
    let mut second = BytesMut::new();
    stomp::encode(&back, version, &mut second);
    assert_eq!(
        second, first,
        "re-encoding a decoded frame changed its bytes"
    );
}

pub(super) fn stomp_seeds() -> Vec<Vec<u8>> {
    let connect = stomp::Frame::new(Command::Connect)
        .with_header("accept-version", "1.0,1.1,1.2")
        .with_header("host", "/")
        .with_header("heart-beat", "10000,10000");
    let send = stomp::Frame::new(Command::Send)
        .with_header("destination", "/queue/a:b")
        .with_header("receipt", "r-1")
        .with_header("x-odd", "line\nbreak\\back")
        .with_body(&b"hello\0world"[..]);
    let subscribe = stomp::Frame::new(Command::Subscribe)
        .with_header("id", "0")
        .with_header("destination", "/topic/prices.>")
        .with_header("ack", "client-individual");
    let mut seeds = Vec::new();
    for (n, version) in Version::ALL.into_iter().enumerate() {
        let mut b = BytesMut::new();
        b.put_u8(n as u8 | 0x30);
        for f in [&connect, &send, &subscribe] {
            stomp::encode(f, version, &mut b);
        }
        b.put_slice(b"\r\n\n");
        seeds.push(b.to_vec());
    }
    // A frame without content-length, its body ended by the NUL, with CRLF lines.
    seeds.push(b"\x02SEND\r\ndestination:/queue/x\r\n\r\nno length\0\n".to_vec());
    seeds
}
