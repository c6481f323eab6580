//! Properties the decoders keep on any bytes, one function per fuzz target: the native frame
//! decoder, the STOMP decoder, the MQTT path a connection reads, journal recovery over a
//! directory built from the bytes, and the replication messages. The coverage-guided fuzzers
//! under `fuzz/` call these on every input they make, and `tests/fuzz_corpus_replays.rs` calls
//! them on every committed corpus file (the seeds and each crash found), so every `cargo test`
//! checks the corpus even where the fuzzers are not built.
//!
//! Owns: nothing but the scratch directory of one journal input. Must not touch: the network.
//! A function returns when the properties hold and panics, naming the property, when one
//! breaks: no panic inside a decoder, decode→encode→decode round trips where an encoder
//! exists, and no single allocation out of proportion to the input (measured only where the
//! program installs [`CountingAlloc`] as its global allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;

use crate::ha::replication::{self, proto as repl, StartPlan};
use crate::stomp::{self, Command, Version};
use crate::store::frame;
use crate::store::proto::{record, Record};
use crate::store::recovery::{self, Recovered};
use crate::store::{EpochHistory, RawFrames, StoreError};
use crate::wire::{self, Body, Frame};

/// The targets, by the names of their corpus directories.
pub const TARGETS: [&str; 5] = ["wire", "stomp", "mqtt", "journal", "replication"];

/// Runs the target named `name` (one of [`TARGETS`]) on `data`.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "wire" => wire(data),
        "stomp" => stomp(data),
        "mqtt" => mqtt(data),
        "journal" => journal(data),
        "replication" => replication(data),
        other => panic!("no fuzz target {other:?}; the targets are {TARGETS:?}"),
    }
}

// ---- allocation measuring ------------------------------------------------------------------

/// The system allocator, noting the largest single allocation each thread asks for. Install it
/// with `#[global_allocator]` to have the targets check their allocation bounds.
pub struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    if !COUNTING.load(Ordering::Relaxed) {
        COUNTING.store(true, Ordering::Relaxed);
    }
    let _ = LARGEST.try_with(|l| {
        if size > l.get() {
            l.set(size)
        }
    });
}

// SAFETY: every call goes straight to `System` with the caller's arguments.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

/// Runs `f`, then checks that no single allocation it made passed `bound` bytes.
fn within<R>(what: &str, bound: usize, f: impl FnOnce() -> R) -> R {
    let _ = LARGEST.try_with(|l| l.set(0));
    let out = f();
    let largest = LARGEST.try_with(Cell::get).unwrap_or(0);
    if COUNTING.load(Ordering::Relaxed) {
        assert!(
            largest <= bound,
            "{what}: an allocation of {largest} bytes, over the bound of {bound}"
        );
    }
    out
}

/// What a decoder may allocate at once for `len` bytes of input beside the limit in force:
/// 16 bytes per input byte (a packed varint of one byte becomes a `u64`, and a `Vec` doubles)
/// plus 64 KiB.
fn proportional(len: usize) -> usize {
    len.saturating_mul(16) + (64 << 10)
}

// ---- native wire ---------------------------------------------------------------------------

/// The native frame decoder: every frame it takes off a stream re-encodes (with prost and,
/// for `Send`, `Deliver` and `Forward`, with the borrowed hot-path encoders) to bytes that
/// decode back to the same frame; a partial frame is left whole and named by the bytes it
/// still needs.
pub fn wire(data: &[u8]) {
    const MAX: usize = 64 << 10;
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        let decoded = within("wire::decode", proportional(data.len()), || {
            wire::decode(&mut buf, MAX)
        });
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

// ---- STOMP ---------------------------------------------------------------------------------

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
/// pieces stop at too; each frame re-encodes to bytes that decode to the same frame (headers
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
            let decoded = within("stomp::Decoder", proportional(data.len()), || {
                decoder.decode(&mut buf)
            });
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
    let not_length = |h: &&(String, String)| h.0 != "content-length";
    let sent: Vec<(String, String)> = f
        .headers
        .iter()
        .filter(not_length)
        .map(|(k, v)| (carried(k), carried(v)))
        .collect();
    let got: Vec<(String, String)> = back.headers.iter().filter(not_length).cloned().collect();
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

// ---- MQTT ----------------------------------------------------------------------------------

/// The MQTT path of a client connection: version detection, the CONNECT (at the 64 KiB a
/// client may send before logging in), then packets at a 256 KiB `max_frame_size`, through
/// the parsers and the error mapping the connection uses. Properties: no panic, and no
/// allocation past the limit in force plus what the input itself explains.
pub fn mqtt(data: &[u8]) {
    const HANDSHAKE: u32 = 64 << 10;
    const MAX: u32 = 256 << 10;
    within(
        "mqtt::read_client_bytes",
        MAX as usize + proportional(data.len()),
        || {
            let mut buf = BytesMut::from(data);
            let _ = crate::server::read_mqtt_client_bytes(&mut buf, HANDSHAKE, MAX);
        },
    );
}

// ---- journal recovery ----------------------------------------------------------------------

/// Largest record payload the journal target's recovery accepts.
const JOURNAL_MAX_RECORD: usize = 1 << 16;

/// The file layout a journal input describes (see [`journal`]).
struct JournalInput {
    repair: bool,
    segments: Vec<(u64, Vec<u8>)>,
    checkpoint: Option<Vec<u8>>,
    mark: Option<Vec<u8>>,
}

fn parse_journal_input(data: &[u8]) -> JournalInput {
    let flags = data.first().copied().unwrap_or(0);
    let (fix_checksums, renumber) = (flags & 0x02 != 0, flags & 0x04 != 0);
    let mut input = JournalInput {
        repair: flags & 0x01 != 0,
        segments: Vec::new(),
        checkpoint: None,
        mark: None,
    };
    let mut rest = data.get(1..).unwrap_or_default();
    while rest.len() >= 3 {
        let tag = rest[0];
        let len = (u16::from_be_bytes([rest[1], rest[2]]) as usize).min(rest.len() - 3);
        let mut bytes = rest[3..3 + len].to_vec();
        rest = &rest[3 + len..];
        match tag % 4 {
            0 if bytes.len() >= 4 && input.segments.len() < 4 => {
                let first = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as u64;
                let mut file = bytes.split_off(4);
                if fix_checksums || renumber {
                    reframe(&mut file, first, fix_checksums, renumber);
                }
                input.segments.push((first, file));
            }
            1 => {
                if fix_checksums && bytes.len() >= 4 {
                    let body = bytes.len() - 4;
                    let crc = crc32c::crc32c(&bytes[..body]);
                    bytes[body..].copy_from_slice(&crc.to_be_bytes());
                }
                input.checkpoint = Some(bytes);
            }
            2 => {
                if fix_checksums && bytes.len() >= 12 {
                    let crc = crc32c::crc32c(&bytes[..8]);
                    bytes[8..12].copy_from_slice(&crc.to_be_bytes());
                }
                input.mark = Some(bytes);
            }
            _ => {}
        }
    }
    input
}

/// Walks the frames of a segment from its start, giving each a consecutive index from
/// `first` and/or its right checksum: mutations then reach the records' contents, where a
/// fuzzer could otherwise never get past the checksum.
fn reframe(file: &mut [u8], first: u64, fix_checksums: bool, renumber: bool) {
    let mut at = 0;
    let mut index = first;
    while at + frame::FRAME_HEADER <= file.len() {
        let len = u32::from_be_bytes(file[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len < 8 || at + 8 + len > file.len() {
            break;
        }
        if renumber {
            file[at + 8..at + 16].copy_from_slice(&index.to_be_bytes());
        }
        if fix_checksums {
            let crc = crc32c::crc32c(&file[at + 8..at + 8 + len]);
            file[at + 4..at + 8].copy_from_slice(&crc.to_be_bytes());
        }
        at += 8 + len;
        index += 1;
    }
}

/// The records a reader may trust in a segment: its frames from the start, each whole, of
/// consecutive indexes from `first` and passing its checksum, up to the first that is not.
/// (Written apart from `frame::scan`, to check it.) The second value: the frames end cleanly
/// (a zero length or the end of the file).
fn trusted_records(file: &[u8], first: u64) -> (Vec<(u64, &[u8])>, bool) {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        if file.len() - at < 4 {
            return (out, file[at..].iter().all(|b| *b == 0));
        }
        let len = u32::from_be_bytes(file[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len == 0 {
            return (out, true);
        }
        if !(8..=JOURNAL_MAX_RECORD + 8).contains(&len) || file.len() - at < len + 8 {
            return (out, false);
        }
        let crc = u32::from_be_bytes(file[at + 4..at + 8].try_into().expect("4 bytes"));
        let body = &file[at + 8..at + 8 + len];
        let index = u64::from_be_bytes(body[..8].try_into().expect("8 bytes"));
        if crc32c::crc32c(body) != crc || Some(index) != first.checked_add(out.len() as u64) {
            return (out, false);
        }
        out.push((index, &body[8..]));
        at += 8 + len;
    }
}

/// Journal recovery over a directory the input describes: byte 0 holds flags (bit 0: start
/// with `--repair`; bit 1: give every frame, the checkpoint and the mark their right
/// checksums; bit 2: number the frames of each segment consecutively), then entries of
/// `tag u8 | len u16 | bytes`: tag 0 a segment (its first index as a u32, then the file),
/// tag 1 the checkpoint file, tag 2 the synced mark. Properties: recovery never panics; it
/// either refuses (a corruption named with a file of the directory and an offset inside it)
/// or recovers only messages whose records are in the files, whole and passing their
/// checksums, never past them; a directory of one whole segment from record 1 whose records
/// all decode recovers every record; and a second start over what the first left recovers
/// the same state.
pub fn journal(data: &[u8]) {
    let input = parse_journal_input(data);
    let scratch = scratch_dir();
    let dir = scratch.path();
    for (first, file) in &input.segments {
        std::fs::write(dir.join(format!("{first:020}.log")), file).expect("write a segment");
    }
    if let Some(c) = &input.checkpoint {
        std::fs::write(dir.join("checkpoint"), c).expect("write the checkpoint");
    }
    if let Some(m) = &input.mark {
        std::fs::write(dir.join("synced"), m).expect("write the mark");
    }
    let mut trusted: HashMap<u64, Vec<&[u8]>> = HashMap::new();
    let mut every_record_whole = input.segments.len() == 1
        && input.segments[0].0 == 1
        && input.checkpoint.is_none()
        && input.mark.is_none();
    let mut last_trusted = 0;
    for (first, file) in &input.segments {
        let (records, clean) = trusted_records(file, *first);
        every_record_whole &= clean;
        for (index, payload) in records {
            every_record_whole &= Record::decode(payload).is_ok();
            last_trusted = last_trusted.max(index);
            trusted.entry(index).or_default().push(payload);
        }
    }
    let first_start = within(
        "journal recovery",
        JOURNAL_MAX_RECORD * 2 + proportional(data.len()),
        || recovery::recover(dir, JOURNAL_MAX_RECORD, u64::MAX, input.repair),
    );
    let recovered = match first_start {
        Ok((_, r)) => r,
        Err(e) => {
            assert!(!every_record_whole, "a whole journal was refused: {e}");
            if let StoreError::Corrupt { path, offset, .. } = &e {
                let path = Path::new(path);
                assert!(
                    path.starts_with(dir),
                    "the refusal names {path:?}, outside the journal"
                );
                if let Some(meta) = std::fs::metadata(path).ok().filter(|m| m.is_file()) {
                    assert!(
                        offset <= &meta.len(),
                        "the refusal names offset {offset} past the end of {path:?}"
                    );
                }
            }
            return;
        }
    };
    let checked = check_recovered(&recovered, &trusted, last_trusted);
    if every_record_whole {
        assert_eq!(
            recovered.next_index,
            last_trusted + 1,
            "a whole journal did not recover every record"
        );
    }
    let again = match recovery::recover(dir, JOURNAL_MAX_RECORD, u64::MAX, input.repair) {
        Ok((_, r)) => r,
        Err(e) => panic!("the journal recovered once, then was refused: {e}"),
    };
    assert_eq!(
        check_recovered(&again, &trusted, last_trusted),
        checked,
        "a second start recovered another state"
    );
    assert_eq!(
        again.next_index, recovered.next_index,
        "a second start moved the end"
    );
}

/// Checks that every message recovered with its record has a trusted record of that index
/// holding it; answers the recovered messages' indexes by destination.
fn check_recovered(
    r: &Recovered,
    trusted: &HashMap<u64, Vec<&[u8]>>,
    last_trusted: u64,
) -> Vec<(String, Vec<u64>)> {
    let holds = |index: u64, added: &crate::store::proto::MessageAdded| {
        trusted.get(&index).is_some_and(|payloads| {
            payloads.iter().any(|p| {
                matches!(Record::decode(*p), Ok(Record { kind: Some(record::Kind::Added(m)), .. }) if &m == added)
            })
        })
    };
    let mut state = Vec::new();
    for (dest, messages) in &r.queues {
        for m in messages {
            if let Some(added) = &m.record {
                assert!(
                    holds(m.index, added),
                    "message {} of {dest} was recovered, but no whole record with a right checksum holds it",
                    m.index
                );
            }
        }
        state.push((dest.clone(), messages.iter().map(|m| m.index).collect()));
    }
    for (index, added) in &r.topic_messages {
        assert!(
            holds(*index, added),
            "topic message {index} was recovered, but no whole record with a right checksum holds it"
        );
    }
    if r.checkpoint_next.is_none() {
        assert!(
            r.next_index <= last_trusted + 1,
            "recovery goes on at record {} but the files hold trusted records only up to {last_trusted}",
            r.next_index
        );
    }
    state.sort();
    state
}

/// A fresh directory for one input: in memory (`/dev/shm`) where there is one, as a fuzzer
/// makes thousands a second.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let made = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("meshmq-fuzz-")
            .tempdir_in(shm)
    } else {
        Err(std::io::Error::other("no /dev/shm"))
    };
    made.or_else(|_| tempfile::Builder::new().prefix("meshmq-fuzz-").tempdir())
        .expect("a scratch directory")
}

// ---- replication ---------------------------------------------------------------------------

/// Runs a future that never waits (it reads from a slice) to its end.
fn at_once<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => panic!("a read from memory waited"),
    }
}

/// The replication messages, as each end reads them. Byte 0 picks the end: even, a master
/// reading a follower (a hello of at most `MAX_HELLO`, then acknowledgements); odd, a
/// follower reading its master (starts, records, checkpoints, heart-beats). Properties: no
/// panic; the hello costs no allocation past its limit; every message re-frames to bytes that
/// read back as the same message; a hello's epochs become a history of strictly increasing
/// epochs and first indexes, whose match point with the master's lies within both journals;
/// replicated records pass the follower's check only when they are whole, consecutive from
/// `first` and `count` in number.
pub fn replication(data: &[u8]) {
    let Some((&end, mut stream)) = data.split_first() else {
        return;
    };
    if end % 2 == 0 {
        let hello = within(
            "the master's read of a hello",
            replication::MAX_HELLO + proportional(data.len()),
            || {
                at_once(replication::read_msg_within::<repl::ToMaster>(
                    &mut stream,
                    "fuzz",
                    replication::MAX_HELLO,
                ))
            },
        );
        let Ok(hello) = hello else { return };
        master_reads(&hello);
        while let Ok(m) = at_once(replication::read_msg_within::<repl::ToMaster>(
            &mut stream,
            "fuzz",
            replication::MAX_MESSAGE,
        )) {
            master_reads(&m);
        }
    } else {
        while let Ok(m) = within(
            "a follower's read",
            replication::MAX_MESSAGE + proportional(data.len()),
            || {
                at_once(replication::read_msg_within::<repl::ToFollower>(
                    &mut stream,
                    "fuzz",
                    replication::MAX_MESSAGE,
                ))
            },
        ) {
            follower_reads(&m);
        }
    }
}

fn reframed<M: prost::Message + Default + PartialEq + std::fmt::Debug>(m: &M) {
    let bytes = replication::frame_msg(m);
    let back = at_once(replication::read_msg_within::<M>(
        &mut bytes.as_slice(),
        "fuzz",
        replication::MAX_MESSAGE,
    ));
    match back {
        Ok(back) => assert_eq!(&back, m, "a message read back changed"),
        Err(e) => panic!("a framed message did not read back: {e}"),
    }
}

fn master_reads(m: &repl::ToMaster) {
    reframed(m);
    if let Some(repl::to_master::Kind::Hello(h)) = &m.kind {
        let theirs = replication::epochs_from_proto(&h.epochs);
        for pair in theirs.starts().windows(2) {
            assert!(
                pair[0].0 < pair[1].0 && pair[0].1 < pair[1].1,
                "an epoch history out of order: {:?}",
                theirs.starts()
            );
        }
        let mine = EpochHistory::from_starts([(1, 1), (3, 40), (4, 90)]);
        let master_last = 120;
        let matched = mine.match_point(master_last, &theirs, h.last_index);
        assert!(
            matched <= master_last && matched <= h.last_index,
            "match point {matched} past a journal's end ({master_last}, {})",
            h.last_index
        );
    }
}

fn follower_reads(m: &repl::ToFollower) {
    reframed(m);
    match &m.kind {
        Some(repl::to_follower::Kind::Start(s)) => {
            // What the follower does with it, for followers at several journal ends: a cut
            // keeps a prefix of what it holds, an append follows its last record.
            for last in [0, 1, 7, s.from.saturating_sub(1), s.from, u64::MAX] {
                match replication::plan_start(s, last) {
                    Ok(StartPlan::CutAfter { keep }) => assert!(
                        keep < last && keep + 1 == s.from,
                        "a cut to {keep} for a stream from {} after record {last}",
                        s.from
                    ),
                    Ok(StartPlan::Append) => assert_eq!(
                        s.from,
                        last + 1,
                        "an append of a stream that does not follow record {last}"
                    ),
                    Ok(StartPlan::Snapshot) => assert!(s.snapshot && s.from > 0),
                    Err(_) => {}
                }
            }
            let mut covered = replication::epochs_from_proto(&s.epochs);
            covered.truncate_after(s.from.saturating_sub(1));
            if !s.checkpoint.is_empty() {
                let _ = crate::store::proto::Checkpoint::decode(s.checkpoint.as_ref());
            }
        }
        Some(repl::to_follower::Kind::Records(r)) => {
            let frames = RawFrames {
                first: r.first,
                count: r.count,
                bytes: r.frames.to_vec(),
            };
            if let Ok(scan) = frames.check(JOURNAL_MAX_RECORD) {
                let (trusted, clean) = trusted_records(&frames.bytes, r.first);
                assert!(clean, "damaged replicated records passed the check");
                assert_eq!(
                    scan.records.len(),
                    trusted.len(),
                    "records passed uncounted"
                );
                assert_eq!(
                    trusted.len() as u64,
                    r.count,
                    "a wrong count passed the check"
                );
            }
        }
        Some(repl::to_follower::Kind::Checkpoint(c)) => {
            let _ = crate::store::proto::Checkpoint::decode(c.as_ref());
        }
        _ => {}
    }
}

// ---- seeds ---------------------------------------------------------------------------------

/// Seed inputs for target `name`, made by the code itself (frames its encoders write, a
/// journal its framing and checkpoint writers lay down): what `fuzz/corpus/NAME/` starts from.
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    match name {
        "wire" => wire_seeds(),
        "stomp" => stomp_seeds(),
        "mqtt" => mqtt_seeds(),
        "journal" => journal_seeds(),
        "replication" => replication_seeds(),
        other => panic!("no fuzz target {other:?}; the targets are {TARGETS:?}"),
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

fn wire_seeds() -> Vec<Vec<u8>> {
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

fn stomp_seeds() -> Vec<Vec<u8>> {
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

fn mqtt_seeds() -> Vec<Vec<u8>> {
    // Written by hand from MQTT 3.1.1 and 5 (meshmq has no client-side MQTT encoder): a
    // CONNECT, a SUBSCRIBE, a QoS 1 PUBLISH, a PUBACK, PINGREQ, DISCONNECT.
    let v3 = [
        &b"\x10\x18\x00\x04MQTT\x04\x02\x00\x3c\x00\x0cmeshmq-fuzz1"[..],
        b"\x82\x0a\x00\x01\x00\x05a/b/#\x01",
        b"\x32\x0b\x00\x03a/b\x00\x02hello",
        b"\x40\x02\x00\x07",
        b"\xc0\x00",
        b"\xe0\x00",
    ]
    .concat();
    let v5 = [
        &b"\x10\x19\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x0cmeshmq-fuzz5"[..],
        b"\x82\x0b\x00\x01\x00\x00\x05a/+/c\x01",
        b"\x32\x0c\x00\x03a/b\x00\x02\x00hello",
        b"\xc0\x00",
        b"\xe0\x01\x04",
    ]
    .concat();
    let v31 = b"\x10\x1a\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x0cmeshmq-fuzz3".to_vec();
    vec![v3, v5, v31]
}

fn journal_seeds() -> Vec<Vec<u8>> {
    use crate::store::proto::*;
    let added = |dest: &str, body: &str, seq: u64| Record {
        kind: Some(record::Kind::Added(MessageAdded {
            destination: dest.into(),
            body: Bytes::copy_from_slice(body.as_bytes()),
            producer_id: Bytes::from_static(b"p"),
            sequence: seq,
            priority: 4,
            ..MessageAdded::default()
        })),
        tx: 0,
    };
    let records = [
        Record {
            kind: Some(record::Kind::Epoch(Epoch { epoch: 1 })),
            tx: 0,
        },
        added("queue://a", "one", 1),
        added("queue://a", "two", 2),
        Record {
            kind: Some(record::Kind::DurableAdded(DurableAdded {
                client_id: "c".into(),
                name: "d".into(),
                pattern: "topic://t.>".into(),
                no_local: false,
            })),
            tx: 0,
        },
        added("topic://t.x", "three", 3),
        Record {
            kind: Some(record::Kind::Removed(MessageRemoved {
                message: 2,
                ..MessageRemoved::default()
            })),
            tx: 0,
        },
        Record {
            kind: Some(record::Kind::Added(MessageAdded {
                destination: "queue://tx".into(),
                body: Bytes::from_static(b"in a transaction"),
                ..MessageAdded::default()
            })),
            tx: 9,
        },
        Record {
            kind: Some(record::Kind::TxEnd(TxEnd { commit: true })),
            tx: 9,
        },
    ];
    let segment = |from: usize, to: usize, zeros: usize| {
        let mut b = Vec::new();
        for (i, r) in records.iter().enumerate().take(to).skip(from) {
            frame::put_frame(i as u64 + 1, &r.encode_to_vec(), &mut b);
        }
        b.resize(b.len() + zeros, 0);
        b
    };
    let entry = |tag: u8, bytes: &[u8], out: &mut Vec<u8>| {
        out.push(tag);
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    let seg_entry = |first: u32, file: &[u8], out: &mut Vec<u8>| {
        let mut b = first.to_be_bytes().to_vec();
        b.extend_from_slice(file);
        entry(0, &b, out);
    };
    let mark = |index: u64| {
        let mut b = index.to_be_bytes().to_vec();
        b.extend_from_slice(&crc32c::crc32c(&index.to_be_bytes()).to_be_bytes());
        b
    };
    let checkpoint = {
        let dir = scratch_dir();
        let c = Checkpoint {
            next_index: 4,
            epoch: 1,
            queues: vec![QueueState {
                destination: "queue://a".into(),
                messages: vec![LiveMessage {
                    index: 2,
                    redelivery_count: 0,
                }],
            }],
            ..Checkpoint::default()
        };
        recovery::write_checkpoint(dir.path(), &c).expect("write a checkpoint");
        std::fs::read(dir.path().join(recovery::CHECKPOINT_FILE)).expect("read it back")
    };
    let mut one = vec![0x00];
    seg_entry(1, &segment(0, records.len(), 64), &mut one);
    entry(2, &mark(8), &mut one);
    let mut two = vec![0x06];
    seg_entry(1, &segment(0, 4, 0), &mut two);
    seg_entry(5, &segment(4, records.len(), 32), &mut two);
    entry(1, &checkpoint, &mut two);
    entry(2, &mark(6), &mut two);
    let mut torn = vec![0x01];
    let mut cut = segment(0, records.len(), 0);
    cut.truncate(cut.len() - 5);
    seg_entry(1, &cut, &mut torn);
    vec![one, two, torn]
}

fn replication_seeds() -> Vec<Vec<u8>> {
    let mut master = vec![0u8];
    master.extend(replication::frame_msg(&repl::ToMaster {
        kind: Some(repl::to_master::Kind::Hello(repl::Hello {
            token: "secret".into(),
            member: "b".into(),
            seen_epoch: 3,
            epochs: vec![
                repl::EpochStart { epoch: 1, first: 1 },
                repl::EpochStart {
                    epoch: 3,
                    first: 40,
                },
            ],
            last_index: 77,
        })),
    }));
    master.extend(replication::frame_msg(&repl::ToMaster {
        kind: Some(repl::to_master::Kind::Ack(60)),
    }));
    let mut frames = Vec::new();
    for i in 5..8u64 {
        frame::put_frame(i, format!("record {i}").as_bytes(), &mut frames);
    }
    let mut follower = vec![1u8];
    for m in [
        repl::to_follower::Kind::Start(repl::Start {
            epoch: 4,
            from: 5,
            snapshot: false,
            checkpoint: Bytes::new(),
            epochs: vec![repl::EpochStart { epoch: 4, first: 2 }],
        }),
        repl::to_follower::Kind::Records(repl::Records {
            first: 5,
            count: 3,
            frames: frames.into(),
        }),
        repl::to_follower::Kind::Heartbeat(8),
        repl::to_follower::Kind::Refused("no".into()),
    ] {
        follower.extend(replication::frame_msg(&repl::ToFollower { kind: Some(m) }));
    }
    vec![master, follower]
}
