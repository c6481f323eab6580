//! Codec properties: round trips for every command and version, truncation at every byte,
//! limits checked before the body arrives, every error with its message, heart-beats, NUL
//! bodies, stomp.py's own bytes, a SEND read in place found exactly as decoded, and property
//! tests.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use super::decode::Escaping;
use super::*;

fn limits() -> Limits {
    Limits::default()
}

fn small_limits() -> Limits {
    Limits {
        max_frame_size: 1000,
        max_headers: 3,
        max_header_length: 40,
    }
}

/// Decodes exactly one frame from `bytes` (which must hold nothing else).
fn decode_one(bytes: &[u8], version: Version) -> Frame {
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf, version, &limits()) {
        Ok(Decoded::Frame(f)) => {
            assert!(buf.is_empty(), "left over: {:?}", &buf[..]);
            f
        }
        other => panic!("expected a frame from {bytes:?}, got {other:?}"),
    }
}

fn decode_err(bytes: &[u8], version: Version, limits: &Limits) -> StompError {
    let mut decoder = Decoder::new(version, *limits);
    let mut buf = BytesMut::from(bytes);
    loop {
        match decoder.decode(&mut buf) {
            Err(e) => return e,
            Ok(Decoded::NeedMore) => panic!("{bytes:?}: incomplete, expected an error"),
            Ok(_) => {}
        }
    }
}

fn encoded(frame: &Frame, version: Version) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(frame, version, &mut buf);
    buf
}

/// What decoding `encode(frame)` must give: the headers without any `content-length`, then
/// the one the encoder writes.
fn as_sent(frame: &Frame) -> Frame {
    let mut expected = frame.clone();
    expected.headers.retain(|k, _| k != "content-length");
    if !frame.body.is_empty() || matches!(frame.command, Command::Message | Command::Error) {
        expected
            .headers
            .push("content-length", &frame.body.len().to_string());
    }
    expected
}

/// Header text with every special character this version can carry for this command.
fn tricky(version: Version, command: Command) -> (String, String) {
    match Escaping::of(version, command) {
        Escaping::None => ("x-plain\\key".into(), "a:b\\c é".into()),
        Escaping::V1_1 => ("x:odd\\key\nline".into(), "a:b\\n\nc:é".into()),
        Escaping::V1_2 => ("x:odd\\key\r\n".into(), "a:b\\r\r\nc:é\\c".into()),
    }
}

fn sample(command: Command, version: Version) -> Frame {
    let (key, value) = tricky(version, command);
    let frame = Frame::new(command)
        .with_header("destination", "/queue/orders.eu")
        .with_header(key, value)
        .with_header("repeated", "first")
        .with_header("repeated", "second")
        .with_header("empty", "");
    match command {
        Command::Send | Command::Message | Command::Error => {
            frame.with_body(Bytes::from_static(b"body\x00with\x00nuls\n\r\n"))
        }
        _ => frame,
    }
}

fn all_samples() -> Vec<(Frame, Version)> {
    let mut out = Vec::new();
    for version in Version::ALL {
        for command in Command::ALL {
            out.push((sample(command, version), version));
            out.push((Frame::new(command), version));
        }
    }
    out
}

// ---- round trips ---------------------------------------------------------------------------

#[test]
fn every_command_round_trips_in_every_version() {
    for (frame, version) in all_samples() {
        let mut buf = encoded(&frame, version);
        encode(&frame, version, &mut buf);
        let mut decoder = Decoder::new(version, limits());
        for _ in 0..2 {
            match decoder.decode(&mut buf) {
                Ok(Decoded::Frame(got)) => assert_eq!(got, as_sent(&frame), "{version}"),
                other => panic!("{version} {}: {other:?}", frame.command),
            }
        }
        assert!(buf.is_empty());
    }
}

#[test]
fn escapes_are_written_as_the_spec_shows() {
    let frame = Frame::new(Command::Message).with_header("k:\\", "a:b\\c\nd\re");
    assert_eq!(
        &encoded(&frame, Version::V1_2)[..],
        b"MESSAGE\nk\\c\\\\:a\\cb\\\\c\\nd\\re\ncontent-length:0\n\n\x00"
    );
    // 1.1 has no \r escape: the CR becomes U+FFFD rather than a raw CR.
    assert_eq!(
        &encoded(&frame, Version::V1_1)[..],
        "MESSAGE\nk\\c\\\\:a\\cb\\\\c\\nd\u{fffd}e\ncontent-length:0\n\n\0".as_bytes()
    );
    // 1.0 escapes nothing: a ':' in a name, CR and LF cannot be carried.
    assert_eq!(
        &encoded(&frame, Version::V1_0)[..],
        "MESSAGE\nk\u{fffd}\\:a:b\\c\u{fffd}d\u{fffd}e\ncontent-length:0\n\n\0".as_bytes()
    );
}

#[test]
fn handshake_frames_are_never_escaped() {
    let connected = Frame::new(Command::Connected)
        .with_header("server", "meshmq/0.1.0")
        .with_header("session", "a:b\\c");
    let bytes = encoded(&connected, Version::V1_2);
    assert_eq!(
        &bytes[..],
        b"CONNECTED\nserver:meshmq/0.1.0\nsession:a:b\\c\n\n\x00"
    );
    let connect = decode_one(
        b"CONNECT\naccept-version:1.2\nlogin:bob\npasscode:p\\w:d\n\n\x00",
        Version::V1_2,
    );
    assert_eq!(connect.header("passcode"), Some("p\\w:d"));
}

#[test]
fn stomp_1_0_takes_backslashes_literally() {
    let f = decode_one(b"SEND\nx:a\\nb\\q\n\n\x00", Version::V1_0);
    assert_eq!(f.header("x"), Some("a\\nb\\q"));
}

#[test]
fn nul_in_a_header_is_replaced_not_written() {
    let frame = Frame::new(Command::Send).with_header("x", "a\0b");
    for version in Version::ALL {
        let got = decode_one(&encoded(&frame, version), version);
        assert_eq!(got.header("x"), Some("a\u{fffd}b"));
    }
}

#[test]
fn a_callers_content_length_is_replaced_by_the_real_one() {
    let frame = Frame::new(Command::Send)
        .with_header("content-length", "999")
        .with_body(&b"abc"[..]);
    let got = decode_one(&encoded(&frame, Version::V1_2), Version::V1_2);
    assert_eq!(got.header("content-length"), Some("3"));
    assert_eq!(got.headers.len(), 1);
    assert_eq!(&got.body[..], b"abc");
}

#[test]
fn encode_message_matches_encode() {
    let body = b"\x00\x01binary\x00";
    for version in Version::ALL {
        let frame = Frame::new(Command::Message)
            .with_header("subscription", "1")
            .with_header("message-id", "ID:p-1:42")
            .with_header("destination", "/queue/a")
            .with_header("x-user", "v\nw")
            .with_body(Bytes::copy_from_slice(body));
        let mut fast = BytesMut::new();
        encode_message(version, frame.headers.iter(), body, &mut fast);
        assert_eq!(fast, encoded(&frame, version), "{version}");
    }
}

#[test]
fn first_repeated_header_wins() {
    let f = decode_one(b"SEND\nfoo:1\nfoo:2\n\n\x00", Version::V1_2);
    assert_eq!(f.header("foo"), Some("1"));
    assert_eq!(f.headers.len(), 2);
    assert_eq!(f.header("bar"), None);
}

#[test]
fn crlf_line_endings_are_accepted_in_every_version() {
    for version in Version::ALL {
        let f = decode_one(
            b"SEND\r\ndestination:/queue/a\r\ncontent-length:2\r\n\r\nhi\x00",
            version,
        );
        assert_eq!(f.command, Command::Send);
        assert_eq!(f.header("destination"), Some("/queue/a"));
        assert_eq!(&f.body[..], b"hi");
    }
}

// ---- bodies ---------------------------------------------------------------------------------

#[test]
fn content_length_bodies_may_hold_nuls() {
    let f = decode_one(
        b"SEND\ncontent-length:5\n\n\x00a\x00b\x00\x00",
        Version::V1_2,
    );
    assert_eq!(&f.body[..], b"\x00a\x00b\x00");
}

#[test]
fn bodies_without_content_length_end_at_the_first_nul() {
    let mut buf = BytesMut::from(&b"SEND\ndestination:/queue/a\n\nhello\x00world\x00"[..]);
    let Ok(Decoded::Frame(f)) = decode(&mut buf, Version::V1_2, &limits()) else {
        panic!("no frame")
    };
    assert_eq!(&f.body[..], b"hello");
    assert_eq!(&buf[..], b"world\x00", "the rest stays for the next call");
}

#[test]
fn empty_body_and_zero_content_length() {
    assert!(decode_one(b"BEGIN\ntransaction:t\n\n\x00", Version::V1_2)
        .body
        .is_empty());
    assert!(decode_one(b"SEND\ncontent-length:0\n\n\x00", Version::V1_2)
        .body
        .is_empty());
}

// ---- heart-beats ----------------------------------------------------------------------------

#[test]
fn bare_eols_are_heartbeats() {
    let mut buf = BytesMut::from(&b"\n\r\n\nDISCONNECT\n\n\x00\n\r\n"[..]);
    let mut decoder = Decoder::new(Version::V1_2, limits());
    let mut seen = Vec::new();
    loop {
        match decoder.decode(&mut buf).unwrap() {
            Decoded::NeedMore => break,
            Decoded::Heartbeat => seen.push("beat"),
            Decoded::Frame(f) => seen.push(f.command.as_str()),
        }
    }
    assert_eq!(seen, ["beat", "beat", "beat", "DISCONNECT", "beat", "beat"]);
    assert!(buf.is_empty());
}

#[test]
fn a_lone_cr_waits_for_its_lf() {
    let mut buf = BytesMut::from(&b"\r"[..]);
    assert_eq!(
        decode(&mut buf, Version::V1_2, &limits()),
        Ok(Decoded::NeedMore)
    );
    assert_eq!(&buf[..], b"\r");
    buf.put_u8(b'\n');
    assert_eq!(
        decode(&mut buf, Version::V1_2, &limits()),
        Ok(Decoded::Heartbeat)
    );
    assert!(buf.is_empty());
}

// ---- truncation -----------------------------------------------------------------------------

fn truncation_cases() -> Vec<(BytesMut, Version)> {
    let mut cases: Vec<(BytesMut, Version)> = all_samples()
        .into_iter()
        .map(|(f, v)| (encoded(&f, v), v))
        .collect();
    for (bytes, v) in stomp_py_frames() {
        cases.push((BytesMut::from(bytes), v));
    }
    // Without content-length, with CRLF.
    cases.push((
        BytesMut::from(&b"SEND\r\ndestination:/queue/a\r\n\r\nno length\x00"[..]),
        Version::V1_2,
    ));
    cases
}

#[test]
fn truncation_at_every_byte_asks_for_more_and_keeps_the_buffer() {
    for (whole, version) in truncation_cases() {
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            let got = decode(&mut part, version, &limits());
            // A cut right after a frame's leading EOL-free prefix can only be NeedMore.
            assert_eq!(got, Ok(Decoded::NeedMore), "cut {cut} of {:?}", &whole[..]);
            assert_eq!(
                &part[..],
                &whole[..cut],
                "a partial frame must stay buffered"
            );
        }
    }
}

#[test]
fn a_kept_decoder_fed_byte_by_byte_gives_the_same_frames() {
    for (whole, version) in truncation_cases() {
        let expected = {
            let mut buf = whole.clone();
            match decode(&mut buf, version, &limits()) {
                Ok(Decoded::Frame(f)) => f,
                other => panic!("{other:?}"),
            }
        };
        let mut decoder = Decoder::new(version, limits());
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for &b in &whole[..] {
            buf.put_u8(b);
            match decoder.decode(&mut buf).unwrap() {
                Decoded::Frame(f) => frames.push(f),
                Decoded::NeedMore => {}
                Decoded::Heartbeat => panic!("no heart-beat in {:?}", &whole[..]),
            }
        }
        assert_eq!(frames, [expected]);
        assert!(buf.is_empty());
    }
}

// ---- limits ---------------------------------------------------------------------------------

#[test]
fn oversize_content_length_is_refused_before_the_body_arrives() {
    // Not even the blank line has arrived: the header alone is enough.
    let err = decode_err(
        b"SEND\ndestination:/queue/a\ncontent-length:5000\n",
        Version::V1_2,
        &small_limits(),
    );
    assert!(
        matches!(err, StompError::FrameTooLarge { max: 1000, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("exceeds the limit of 1000 bytes"),
        "{err}"
    );
    // A content-length too big for any integer is too large, not a parse error.
    let err = decode_err(
        b"SEND\ncontent-length:99999999999999999999999999\n",
        Version::V1_2,
        &Limits {
            max_frame_size: 1000,
            ..limits()
        },
    );
    assert!(matches!(err, StompError::FrameTooLarge { .. }), "{err}");
}

#[test]
fn a_body_without_content_length_is_cut_at_the_limit() {
    let limits = small_limits();
    let mut decoder = Decoder::new(Version::V1_2, limits);
    let mut buf = BytesMut::from(&b"SEND\n\n"[..]);
    let mut result = decoder.decode(&mut buf);
    while result == Ok(Decoded::NeedMore) {
        assert!(
            buf.len() <= limits.max_frame_size,
            "buffered past the limit"
        );
        buf.put_slice(&[b'x'; 100]);
        result = decoder.decode(&mut buf);
    }
    assert!(
        matches!(result, Err(StompError::FrameTooLarge { max: 1000, .. })),
        "{result:?}"
    );
}

#[test]
fn a_frame_exactly_at_the_limit_is_accepted() {
    let limits = small_limits();
    let head = b"SEND\n\n";
    let mut bytes = head.to_vec();
    bytes.resize(limits.max_frame_size - 1, b'x');
    bytes.push(0);
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(matches!(
        decode(&mut buf, Version::V1_2, &limits),
        Ok(Decoded::Frame(_))
    ));
    bytes.insert(head.len(), b'x');
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(matches!(
        decode(&mut buf, Version::V1_2, &limits),
        Err(StompError::FrameTooLarge { .. })
    ));
}

#[test]
fn a_header_flood_is_refused_before_the_blank_line() {
    let err = decode_err(
        b"SEND\na:1\nb:2\nc:3\nd:4\n",
        Version::V1_2,
        &small_limits(),
    );
    assert_eq!(
        err,
        StompError::TooManyHeaders {
            command: Command::Send,
            max: 3
        }
    );
    assert_eq!(err.to_string(), "SEND frame has more than 3 headers");
    // Exactly the limit is fine.
    let mut buf = BytesMut::from(&b"SEND\na:1\nb:2\nc:3\n\n\x00"[..]);
    assert!(matches!(
        decode(&mut buf, Version::V1_2, &small_limits()),
        Ok(Decoded::Frame(_))
    ));
}

#[test]
fn a_long_header_line_is_refused_before_its_end() {
    let mut bytes = b"SEND\nx:".to_vec();
    bytes.resize(bytes.len() + 60, b'y');
    let err = decode_err(&bytes, Version::V1_2, &small_limits());
    assert_eq!(
        err.to_string(),
        "SEND frame: a header line is longer than 40 bytes"
    );
    // A complete line one byte over is refused; at the limit it is accepted.
    let at_limit = format!("SEND\nx:{}\n\n\0", "y".repeat(38));
    assert!(matches!(
        decode(
            &mut BytesMut::from(at_limit.as_bytes()),
            Version::V1_2,
            &small_limits()
        ),
        Ok(Decoded::Frame(_))
    ));
    let over = format!("SEND\nx:{}\n\n\0", "y".repeat(39));
    assert!(matches!(
        decode(
            &mut BytesMut::from(over.as_bytes()),
            Version::V1_2,
            &small_limits()
        ),
        Err(StompError::HeaderTooLong { .. })
    ));
}

#[test]
fn headers_alone_can_make_a_frame_too_large() {
    let limits = Limits {
        max_frame_size: 64,
        max_headers: 1000,
        max_header_length: 1000,
    };
    let mut bytes = b"SEND\n".to_vec();
    for i in 0..20 {
        bytes.extend_from_slice(format!("h{i}:v\n").as_bytes());
    }
    let err = decode_err(&bytes, Version::V1_2, &limits);
    assert!(
        matches!(err, StompError::FrameTooLarge { max: 64, .. }),
        "{err}"
    );
}

// ---- errors ---------------------------------------------------------------------------------

#[test]
fn every_malformed_frame_gets_a_message_for_the_peer() {
    let v12 = Version::V1_2;
    let cases: &[(&[u8], Version, &str)] = &[
        (b"FOO\n\n\x00", v12, "unknown command \"FOO\": expected one of CONNECT, STOMP, SEND, SUBSCRIBE, UNSUBSCRIBE, ACK, NACK, BEGIN, COMMIT, ABORT, DISCONNECT"),
        (b"send\n\n\x00", v12, "unknown command \"send\""),
        (b"GET / HTTP/1.1\r\n", v12, "unknown command \"GET / HTTP/1.1\""),
        (b"GET / HTTP/1.1", v12, "unknown command \"GET / HTTP/1.1\""),
        (b"\rX\n", v12, "unknown command \"\\rX\""),
        (b"SEND\ncontent-length:2\n\nabc", v12, "SEND frame: expected the NUL octet that ends the frame after its 2-byte body (content-length), found byte 0x63"),
        (b"SEND\nx:1\x00\n", v12, "SEND frame: a NUL octet ended the frame inside its headers; headers end with a blank line"),
        (b"SEND\nx:a\\tb\n\n\x00", v12, r#"SEND frame: header "x:a\tb" has the undefined escape "\t" (STOMP 1.2 defines only \\ \n \r \c)"#),
        (b"SEND\nx:a\\rb\n\n\x00", Version::V1_1, r#"SEND frame: header "x:a\rb" has the undefined escape "\r" (STOMP 1.1 defines only \\ \n \c)"#),
        (b"SEND\nx:ab\\\n\n\x00", v12, r#"SEND frame: header "x:ab\" has the undefined escape "\" (STOMP 1.2 defines only \\ \n \r \c)"#),
        (b"SEND\nno colon here\n\n\x00", v12, "SEND frame: header line \"no colon here\" has no ':' between name and value"),
        (b"SEND\nx:\xff\xfe\n\n\x00", v12, "SEND frame: header line \"x:\u{fffd}\u{fffd}\" is not UTF-8"),
        (b"SEND\ncontent-length:12a\n\n\x00", v12, "SEND frame: content-length \"12a\" is not a number of bytes"),
        (b"SEND\ncontent-length:-1\n\n\x00", v12, "SEND frame: content-length \"-1\" is not a number of bytes"),
        (b"SEND\ncontent-length:\n\n\x00", v12, "SEND frame: content-length \"\" is not a number of bytes"),
    ];
    for (bytes, version, message) in cases {
        let err = decode_err(bytes, *version, &limits());
        let text = err.to_string();
        assert!(
            text.starts_with(message),
            "{bytes:?}:\n got  {text}\n want {message}"
        );
        assert!(!text.contains('\n'), "one line for an ERROR header: {text}");
    }
}

#[test]
fn a_long_garbage_first_line_is_refused_without_its_end() {
    let err = decode_err(&[b'A'; 13], Version::V1_2, &limits());
    assert!(matches!(err, StompError::UnknownCommand(_)));
    let mut buf = BytesMut::from(&b"UNSUBSCRIBE\r"[..]);
    assert_eq!(
        decode(&mut buf, Version::V1_2, &limits()),
        Ok(Decoded::NeedMore)
    );
}

#[test]
fn the_first_content_length_decides() {
    let f = decode_one(
        b"SEND\ncontent-length:1\ncontent-length:zzz\n\nx\x00",
        Version::V1_2,
    );
    assert_eq!(&f.body[..], b"x");
}

#[test]
fn errors_quote_at_most_a_little_of_the_input() {
    let mut bytes = b"SEND\n".to_vec();
    bytes.extend(std::iter::repeat_n(b'z', 5000));
    bytes.extend_from_slice(b"\n\n\x00");
    let err = decode_err(&bytes, Version::V1_2, &limits());
    assert!(err.to_string().len() < 200, "{err}");
}

// ---- stomp.py -------------------------------------------------------------------------------

/// Frames byte for byte as stomp.py 8.1.2 writes them (captured by running its
/// `Protocol10/11/12` against a recording transport): command, headers sorted by name, `\n`
/// line ends, `content-length` added when the body is not empty, values escaped in 1.1/1.2
/// except in CONNECT/STOMP, and a bare `\n` as its heart-beat.
fn stomp_py_frames() -> Vec<(&'static [u8], Version)> {
    vec![
        (
            b"STOMP\naccept-version:1.2\nheart-beat:10000,10000\nhost:127.0.0.1\nlogin:alice\npasscode:s3:cr\\t\n\n\x00",
            Version::V1_2,
        ),
        (
            b"CONNECT\naccept-version:1.0\nlogin:alice\npasscode:pw\n\n\x00",
            Version::V1_0,
        ),
        (
            b"SEND\ncontent-length:4\ndestination:/queue/a\n\nx:y\n\x00",
            Version::V1_0,
        ),
        (
            b"STOMP\naccept-version:1.1\nheart-beat:10000,10000\nlogin:alice\npasscode:s3:cr\\t\n\n\x00",
            Version::V1_1,
        ),
        (
            b"SEND\ncontent-length:5\ncontent-type:text/plain\ndestination:/queue/test\nx-note:a\\cb\n\nhello\x00",
            Version::V1_2,
        ),
        (
            b"SEND\ncontent-length:3\ndestination:/queue/bin\n\na\x00b\x00",
            Version::V1_2,
        ),
        (
            b"SUBSCRIBE\nack:client-individual\ndestination:/queue/test\nid:1\n\n\x00",
            Version::V1_2,
        ),
        (b"ACK\nid:ID\\chost-1\\c1\\c1\\c1\\c1\n\n\x00", Version::V1_2),
        (
            b"NACK\nmessage-id:m1\nsubscription:1\n\n\x00",
            Version::V1_1,
        ),
        (b"BEGIN\ntransaction:tx1\n\n\x00", Version::V1_2),
        (b"COMMIT\ntransaction:tx1\n\n\x00", Version::V1_2),
        (b"ABORT\ntransaction:tx1\n\n\x00", Version::V1_2),
        (b"UNSUBSCRIBE\nid:1\n\n\x00", Version::V1_2),
        (b"DISCONNECT\nreceipt:r-1\n\n\x00", Version::V1_2),
    ]
}

#[test]
fn stomp_py_frames_decode_as_meant() {
    let frames: Vec<Frame> = stomp_py_frames()
        .into_iter()
        .map(|(bytes, v)| decode_one(bytes, v))
        .collect();
    let connect = &frames[0];
    assert_eq!(connect.command, Command::Stomp);
    assert_eq!(connect.header("passcode"), Some("s3:cr\\t"));
    assert_eq!(
        negotiate(connect.header("accept-version")),
        Some(Version::V1_2)
    );
    assert_eq!(
        parse_heartbeat(connect.header("heart-beat").unwrap()),
        Ok((10_000, 10_000))
    );
    assert_eq!(
        negotiate(frames[1].header("accept-version")),
        Some(Version::V1_0)
    );
    assert_eq!(&frames[2].body[..], b"x:y\n");
    assert_eq!(
        negotiate(frames[3].header("accept-version")),
        Some(Version::V1_1)
    );
    assert_eq!(frames[3].header("passcode"), Some("s3:cr\\t"));
    assert_eq!(frames[4].header("x-note"), Some("a:b"));
    assert_eq!(&frames[4].body[..], b"hello");
    assert_eq!(&frames[5].body[..], b"a\x00b");
    assert_eq!(frames[6].header("ack"), Some("client-individual"));
    assert_eq!(frames[7].header("id"), Some("ID:host-1:1:1:1:1"));
    assert_eq!(frames[8].header("subscription"), Some("1"));
    assert_eq!(frames[13].header("receipt"), Some("r-1"));
}

#[test]
fn a_stomp_py_session_decodes_from_one_stream() {
    let mut stream = BytesMut::new();
    for (bytes, _) in stomp_py_frames()
        .into_iter()
        .filter(|(_, v)| *v == Version::V1_2)
    {
        stream.put_slice(bytes);
        stream.put_u8(b'\n'); // a heart-beat between frames
    }
    let mut decoder = Decoder::new(Version::V1_2, limits());
    let (mut frames, mut beats) = (0, 0);
    loop {
        match decoder.decode(&mut stream).unwrap() {
            Decoded::Frame(_) => frames += 1,
            Decoded::Heartbeat => beats += 1,
            Decoded::NeedMore => break,
        }
    }
    assert_eq!((frames, beats), (10, 10));
}

/// Reads a SEND in place off `buf` if the decoder finds one there, and checks it is exactly
/// the frame [`Decoder::decode`] takes off the same bytes: same headers, same body, same bytes
/// left. Returns whether it found one.
fn in_place_agrees_with_decode(decoder: &Decoder, buf: &mut BytesMut) -> bool {
    let Some(send) = decoder.in_place_send(buf) else {
        return false;
    };
    let mut decoded_from = buf.clone();
    // As the decoder itself would decode it (the tests copy every body or none).
    let mut fresh = Decoder::new(decoder.version(), decoder.limits());
    fresh.copy_bodies_below(if decoder.copies_body(0) {
        usize::MAX
    } else {
        0
    });
    let expected = match fresh.decode(&mut decoded_from) {
        Ok(Decoded::Frame(f)) => f,
        other => panic!(
            "read in place {send:?}, but decode gives {other:?} for {:?}",
            &buf[..]
        ),
    };
    let (headers, body) = send.take(buf, |headers, body| {
        (
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>(),
            body,
        )
    });
    assert_eq!(expected.command, Command::Send);
    assert_eq!(
        headers,
        expected.headers.to_vec(),
        "headers of {:?}",
        &decoded_from[..]
    );
    assert_eq!(body, expected.body);
    assert_eq!(&buf[..], &decoded_from[..], "the bytes left");
    true
}

#[test]
fn a_producers_plain_send_is_read_in_place_as_decoded() {
    let cases: [&[u8]; 4] = [
        b"SEND\ndestination:/queue/a\ncontent-length:4\n\nbody\0",
        b"SEND\r\ndestination:/queue/a\r\nx:a:b\r\nx:second\r\n\r\nbody\0SEND\n",
        b"SEND\ndestination:/queue/a\nempty:\n:no name\n\nno length\0\n",
        b"SEND\n\n\0",
    ];
    for bytes in cases {
        for version in Version::ALL {
            for copy_below in [0, usize::MAX] {
                let mut d = Decoder::new(version, limits());
                d.copy_bodies_below(copy_below);
                let mut buf = BytesMut::from(bytes);
                assert!(
                    in_place_agrees_with_decode(&d, &mut buf),
                    "{:?} is read in place",
                    std::str::from_utf8(bytes)
                );
            }
        }
    }
}

#[test]
fn what_decode_must_judge_is_left_to_it() {
    let cases: [(&[u8], Limits); 11] = [
        (b"SEND\ndestination:/queue/a\n\nhalf", limits()),
        (b"SEND\ndestination:/queue/a\n", limits()),
        (b"SEND\ndestination:/queue/a\\c\n\n\0", limits()),
        (b"SEND\ndestination:/queue/\xc3\xa9\n\n\0", limits()),
        (b"SEND\nno colon\n\n\0", limits()),
        (b"SEND\ncontent-length:x\n\n\0", limits()),
        (b"SEND\ncontent-length:1\n\nab\0", limits()),
        (b"SEND\na:1\nb:2\nc:3\nd:4\n\n\0", small_limits()),
        (
            b"SEND\na:01234567890123456789012345678901234567890\n\n\0",
            small_limits(),
        ),
        (b"SUBSCRIBE\ndestination:/queue/a\n\n\0", limits()),
        (b"\nSEND\n\n\0", limits()),
    ];
    for (bytes, limits) in cases {
        let d = Decoder::new(Version::V1_2, limits);
        assert!(
            d.in_place_send(bytes).is_none(),
            "{:?} is left to decode",
            String::from_utf8_lossy(bytes)
        );
    }
    let mut too_large = b"SEND\n\n".to_vec();
    too_large.resize(1000, b'x');
    too_large.push(0);
    assert!(Decoder::new(Version::V1_2, small_limits())
        .in_place_send(&too_large)
        .is_none());
    // A frame half read by `decode` is finished by it.
    let mut d = Decoder::new(Version::V1_2, limits());
    let mut buf = BytesMut::from(&b"SEND\ndestination:/queue/a\n"[..]);
    assert_eq!(d.decode(&mut buf), Ok(Decoded::NeedMore));
    buf.put_slice(b"\nbody\0");
    assert!(d.in_place_send(&buf).is_none());
}

// ---- properties -----------------------------------------------------------------------------

/// Removes what `escaping` cannot carry, so the generated frame must round-trip exactly.
fn representable(text: &str, escaping: Escaping, is_name: bool) -> String {
    text.chars()
        .filter(|&c| match (escaping, c) {
            (_, '\0') => false,
            (Escaping::None, '\n' | '\r') => false,
            (Escaping::None, ':') => !is_name,
            (Escaping::V1_1, '\r') => false,
            _ => true,
        })
        .collect()
}

fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just('\\'),
            Just(':'),
            Just('\n'),
            Just('\r'),
            Just('\0'),
            Just('é'),
            Just('c'),
            Just('n'),
            Just(' '),
            proptest::char::range('a', 'z'),
        ],
        0..12,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

fn frame_and_version() -> impl Strategy<Value = (Frame, Version)> {
    (
        proptest::sample::select(Command::ALL.to_vec()),
        proptest::sample::select(Version::ALL.to_vec()),
        proptest::collection::vec((text(), text()), 0..8),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(command, version, headers, body)| {
            let escaping = Escaping::of(version, command);
            let headers = headers
                .into_iter()
                .map(|(k, v)| {
                    (
                        representable(&k, escaping, true),
                        representable(&v, escaping, false),
                    )
                })
                .filter(|(k, _)| k != "content-length")
                .collect();
            let frame = Frame {
                command,
                headers,
                body: Bytes::from(body),
            };
            (frame, version)
        })
}

fn garbage() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"SEND\n".to_vec()),
        Just(b"MESSAGE\r\n".to_vec()),
        Just(b"content-length:".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\0".to_vec()),
        Just(b":".to_vec()),
        Just(b"\\".to_vec()),
        Just(b"7".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..8),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|p| p.concat())
}

proptest! {
    #[test]
    fn a_send_read_in_place_is_the_frame_decode_finds(
        start in proptest::sample::select(vec![&b""[..], b"SEND\n", b"SEND\ndestination:/queue/a\n", b"SEND\r\ncontent-length:3\r\n"]),
        (frame, version) in frame_and_version(),
        bytes in garbage(),
        strict in any::<bool>(),
        copy in any::<bool>(),
    ) {
        let limits = if strict {
            Limits { max_frame_size: 48, max_headers: 2, max_header_length: 12 }
        } else {
            limits()
        };
        let mut decoder = Decoder::new(version, limits);
        decoder.copy_bodies_below(if copy { usize::MAX } else { 0 });
        // A well-formed SEND (escapes and all), then bytes that may or may not make frames.
        let send = encoded(&Frame { command: Command::Send, ..frame }, version);
        let mut buf = BytesMut::from(&[&send[..], start, &bytes[..]].concat()[..]);
        // Frame after frame, as a connection reads them: in place where it can, else decoded.
        loop {
            if in_place_agrees_with_decode(&decoder, &mut buf) {
                continue;
            }
            match decoder.decode(&mut buf) {
                Ok(Decoded::NeedMore) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    #[test]
    fn random_frames_round_trip((frame, version) in frame_and_version(), chunk in 1usize..17) {
        let bytes = encoded(&frame, version);
        let mut whole = bytes.clone();
        prop_assert_eq!(
            decode(&mut whole, version, &limits()),
            Ok(Decoded::Frame(as_sent(&frame)))
        );
        prop_assert!(whole.is_empty());

        // The same frame arriving in pieces through a kept decoder.
        let mut decoder = Decoder::new(version, limits());
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in bytes.chunks(chunk) {
            buf.put_slice(piece);
            if let Decoded::Frame(f) = decoder.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        prop_assert_eq!(got, vec![as_sent(&frame)]);
    }

    #[test]
    fn random_bytes_never_panic(bytes in garbage(), chunk in 1usize..33, strict in any::<bool>()) {
        let limits = if strict {
            Limits { max_frame_size: 48, max_headers: 2, max_header_length: 12 }
        } else {
            limits()
        };
        for version in Version::ALL {
            let mut decoder = Decoder::new(version, limits);
            let mut buf = BytesMut::new();
            'feed: for piece in bytes.chunks(chunk) {
                buf.put_slice(piece);
                loop {
                    let before = buf.len();
                    match decoder.decode(&mut buf) {
                        Ok(Decoded::NeedMore) => break,
                        Ok(_) => prop_assert!(buf.len() < before, "progress"),
                        Err(_) => break 'feed,
                    }
                }
            }
        }
    }
}

#[test]
fn put_decimal_writes_every_number_as_format_does() {
    let mut numbers = vec![0u64, u64::MAX];
    let mut p = 1u64;
    while let Some(next) = p.checked_mul(10) {
        numbers.extend([p - 1, p, p + 1]);
        p = next;
    }
    numbers.extend([p - 1, p, p + 1]);
    let mut out = BytesMut::from(&b"x:"[..]);
    let mut expected = String::from("x:");
    for n in numbers {
        put_decimal(n, &mut out);
        out.put_u8(b',');
        expected.push_str(&format!("{n},"));
    }
    assert_eq!(std::str::from_utf8(&out).unwrap(), expected);
}

#[test]
fn a_frame_decoded_into_recycled_headers_holds_none_of_the_frame_before() {
    let mut d = Decoder::new(Version::V1_2, limits());
    let mut buf = BytesMut::from(
        &b"SEND\ndestination:/queue/a\nx:1\n\nbody\0SEND\ndestination:/queue/b\n\n\0"[..],
    );
    let Ok(Decoded::Frame(first)) = d.decode(&mut buf) else {
        panic!("the first frame is whole")
    };
    assert_eq!(first.header("x"), Some("1"));
    d.recycle(first.headers);
    let Ok(Decoded::Frame(second)) = d.decode(&mut buf) else {
        panic!("the second frame is whole")
    };
    assert_eq!(
        second.headers.iter().collect::<Vec<_>>(),
        [("destination", "/queue/b")]
    );
    assert!(buf.is_empty());
}
