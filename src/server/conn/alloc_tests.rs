//! Heap allocations per message on the broker's hot path, counted: a STOMP producer's SENDs
//! read from its connection's buffer, built into messages, queued, dispatched to a STOMP
//! consumer, written and acknowledged (auto), then dropped — all on one thread, so a counting
//! global allocator (this test binary's) sees every allocation the path makes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{BufMut, BytesMut};

use super::tests::ctx;
use super::*;
use crate::broker::{Broker, BrokerSettings};
use crate::server::stomp::Stomp;
use crate::stomp::{Decoder, Limits, Version};

/// The system allocator, counting the allocations (and reallocations) of each thread.
struct CountingAlloc;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: every call goes straight to `System` with the caller's arguments.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn stomp_connection(broker: &Broker) -> (Connection<Stomp>, tokio::io::DuplexStream) {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let session = broker.open_session(None).expect("session");
    let mut decoder = Decoder::new(Version::V1_0, Limits::default());
    decoder.set_version(Version::V1_2);
    let conn = Connection::new(
        Stomp::new(decoder, session.connection_id()),
        Pump::new(Box::new(ours)),
        session,
        ctx(broker, Vec::new()),
        Principal::anonymous(),
        None,
        None,
    );
    (conn, theirs)
}

/// `n` SENDs of 256-byte bodies to `queue`, as `meshmq bench queue --protocol stomp` writes
/// them.
fn sends(queue: &str, n: usize) -> BytesMut {
    let mut out = BytesMut::new();
    for i in 0..n {
        out.put_slice(
            format!("SEND\ndestination:/queue/{queue}\ncontent-length:256\n\n").as_bytes(),
        );
        out.put_slice(&[b'a' + (i % 26) as u8; 256]);
        out.put_u8(0);
    }
    out
}

/// Sends a wave of messages through (`frames`, put in the producer's read buffer) and takes
/// every delivery off the consumer; returns how many it wrote and the allocations that took
/// (not counting the test's own putting of the frames into the buffer).
fn wave(
    producer: &mut Connection<Stomp>,
    consumer: &mut Connection<Stomp>,
    frames: &[u8],
) -> (usize, u64) {
    producer.pump.rbuf.extend_from_slice(frames);
    let before = allocations();
    producer.process_frames();
    let mut delivered = 0;
    loop {
        consumer.fill();
        if consumer.pump.wbuf.is_empty() {
            break;
        }
        delivered += consumer.pump.wbuf.iter().filter(|&&b| b == 0).count();
        consumer.pump.wbuf.clear();
    }
    (delivered, allocations() - before)
}

/// At most two heap allocations per message (and a couple per read for all its messages), counted over a steady stream (after a warm-up
/// that grows every buffer and queue to its working size): the `Arc` the message lives in,
/// and its body's copy out of the read buffer (a small body that shared the buffer would pin
/// the whole read chunk for as long as the message lives, uncharged: see
/// `broker::COPY_BODY_BELOW`). Its destination, producer id and memory charge are shared
/// handles; building, stamping, queueing, delivering and acknowledging it allocate nothing
/// of their own.
#[tokio::test]
async fn a_stomp_message_costs_two_allocations_from_send_to_acknowledgement() {
    const WAVE: usize = 500;
    const WAVES: usize = 10;
    let broker = Broker::new(BrokerSettings::default());
    let (mut producer, _p) = stomp_connection(&broker);
    let (mut consumer, _c) = stomp_connection(&broker);
    consumer
        .pump
        .rbuf
        .extend_from_slice(b"SUBSCRIBE\nid:1\ndestination:/queue/alloc\nack:auto\n\n\0");
    consumer.process_frames();
    consumer.pump.wbuf.clear();
    let frames = sends("alloc", WAVE);
    for _ in 0..WAVES {
        assert_eq!(wave(&mut producer, &mut consumer, &frames).0, WAVE);
    }
    let (mut delivered, mut made) = (0, 0);
    for _ in 0..WAVES {
        let (n, allocs) = wave(&mut producer, &mut consumer, &frames);
        delivered += n;
        made += allocs;
    }
    assert_eq!(delivered, WAVE * WAVES, "every message is delivered once");
    assert_eq!(
        broker.queue_depth("queue://alloc"),
        Some(0),
        "and acknowledged"
    );
    // A run of frames (one read) may allocate once or twice for all its messages.
    let per_message = made as f64 / delivered as f64;
    assert!(
        made <= 2 * delivered as u64 + 2 * WAVES as u64,
        "{made} allocations for {delivered} messages in {WAVES} reads: {per_message:.3} each"
    );
}
