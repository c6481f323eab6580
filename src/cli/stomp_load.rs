//! A small STOMP 1.2 client for the load generator, built on meshmq's own codec
//! (`meshmq::stomp`) and I/O pump (`meshmq::transport`).
//!
//! It is made for throughput, not for applications: a producer pipelines SENDs without
//! receipts and asks for one receipt on its last frame (which the broker answers after every
//! earlier frame); a consumer subscribes with `ack:client` and a prefetch window
//! (`activemq.prefetchSize`) and acknowledges cumulatively every half window. An ERROR frame
//! from the broker ends the run with its message.
//!
//! A consumer (queue and fanout) reads MESSAGE frames with [`StompConn::take_messages`]: a
//! frame is located by its `content-length`, `ack` and `redelivered` lines and handed over in
//! place, without decoding (copying, unescaping, checking) the headers it does not read; any
//! other frame goes through the full decoder. Both read the same stream, so a frame is either
//! wholly one's or wholly the other's: which one is decided by its first bytes, the same way at
//! every call. A producer writes each SEND from lines encoded once ([`SendLines`]) into the
//! connection's write buffer: nothing is allocated per message.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::task::Poll;
use std::time::Duration;

use anyhow::bail;
use bytes::{Buf, BufMut, BytesMut};
use meshmq::stomp::{self, Command, Decoded, Decoder, Frame, Limits, Version};
use meshmq::transport::{self, IoEvent, Pump};

const VERSION: Version = Version::V1_2;

/// One STOMP connection: a socket with its buffers, the frames read but not taken yet.
pub struct StompConn {
    pump: Pump,
    decoder: Decoder,
    inbox: VecDeque<Frame>,
    /// The `ack` id (escaped as on the wire) of the last message [`StompConn::take_messages`]
    /// handed over without acknowledging it; empty when there is none.
    unacked: BytesMut,
}

/// One MESSAGE as [`StompConn::take_messages`] hands it over.
pub struct Delivery<'a> {
    pub body: &'a [u8],
    /// It carries a `redelivered` header (the broker delivered it before).
    pub redelivered: bool,
}

/// The lines every SEND of one producer shares (command, destination, `persistent`), encoded
/// and escaped once.
pub struct SendLines {
    head: BytesMut,
}

impl SendLines {
    pub fn new(destination: &str, persistent: bool) -> SendLines {
        let mut head = BytesMut::new();
        head.put_slice(b"SEND\n");
        stomp::put_message_header(VERSION, "destination", destination.as_bytes(), &mut head);
        if persistent {
            head.put_slice(b"persistent:true\n");
        }
        SendLines { head }
    }
}

impl StompConn {
    /// Connects and logs in (anonymously, without heart-beats).
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<StompConn> {
        StompConn::connect_from(addr, None).await
    }

    /// Connects from `source` (any local address when `None`) and logs in.
    pub async fn connect_from(
        addr: SocketAddr,
        source: Option<IpAddr>,
    ) -> anyhow::Result<StompConn> {
        let stream = transport::dial(addr, source).await?;
        let mut conn = StompConn {
            pump: Pump::new(Box::new(stream)),
            decoder: Decoder::new(VERSION, Limits::default()),
            inbox: VecDeque::new(),
            unacked: BytesMut::new(),
        };
        conn.frame(
            Command::Connect,
            &[
                ("accept-version", "1.2"),
                ("host", "localhost"),
                ("heart-beat", "0,0"),
            ],
            &[],
        );
        let answer = conn.next_frame().await?;
        if answer.command != Command::Connected {
            bail!("stomp://{addr}: expected CONNECTED, got {}", answer.command);
        }
        Ok(conn)
    }

    /// Buffers a frame for sending (it goes out at the next `flush_to` or `next_frame`).
    pub fn frame(&mut self, command: Command, headers: &[(&str, &str)], body: &[u8]) {
        stomp::encode_parts(
            command,
            VERSION,
            headers.iter().copied(),
            body,
            &mut self.pump.wbuf,
        );
    }

    /// Buffers a SEND of `body` made of `lines`, asking for the receipt `r{receipt}` if given
    /// (the same frame [`StompConn::frame`] writes, without encoding the shared lines again).
    pub fn send(&mut self, lines: &SendLines, receipt: Option<u64>, body: &[u8]) {
        let wbuf = &mut self.pump.wbuf;
        wbuf.reserve(lines.head.len() + 48 + body.len());
        wbuf.put_slice(&lines.head);
        if let Some(r) = receipt {
            wbuf.put_slice(b"receipt:r");
            stomp::put_decimal(r, wbuf);
            wbuf.put_u8(b'\n');
        }
        wbuf.put_slice(b"content-length:");
        stomp::put_decimal(body.len() as u64, wbuf);
        wbuf.put_slice(b"\n\n");
        wbuf.put_slice(body);
        wbuf.put_u8(0);
    }

    /// Bytes buffered and not yet written.
    pub fn buffered(&self) -> usize {
        self.pump.wbuf.len()
    }

    /// Subscribes and waits until the broker confirms.
    pub async fn subscribe(
        &mut self,
        destination: &str,
        id: &str,
        ack: &str,
        prefetch: u32,
    ) -> anyhow::Result<()> {
        let prefetch = prefetch.to_string();
        self.frame(
            Command::Subscribe,
            &[
                ("destination", destination),
                ("id", id),
                ("ack", ack),
                ("activemq.prefetchSize", &prefetch),
                ("receipt", "subscribed"),
            ],
            &[],
        );
        let f = self.next_frame().await?;
        if f.command != Command::Receipt {
            bail!("expected the RECEIPT of SUBSCRIBE, got {}", f.command);
        }
        Ok(())
    }

    /// Writes until fewer than `below` bytes wait to be written (reading meanwhile, so an
    /// ERROR is seen and the broker is never stuck writing to us).
    pub async fn flush_to(&mut self, below: usize) -> anyhow::Result<()> {
        while self.pump.wbuf.len() >= below.max(1) {
            let ev = self
                .pump
                .next_event(true, below, |_| Poll::Ready(()))
                .await?;
            self.on_event(ev)?;
        }
        Ok(())
    }

    /// The next frame from the broker (heart-beats skipped); pending writes go out meanwhile.
    /// Frames are decoded one at a time, as they are asked for, so the headers of one handed
    /// back with [`StompConn::recycle`] hold the next one's.
    pub async fn next_frame(&mut self) -> anyhow::Result<Frame> {
        if let Some(f) = self.inbox.pop_front() {
            return Ok(f);
        }
        loop {
            if let Some(f) = self.decode_one()? {
                return Ok(f);
            }
            match self.pump.next_event(true, 0, |_| Poll::Pending).await? {
                IoEvent::Closed => bail!("the broker closed the connection"),
                IoEvent::Read | IoEvent::Drained | IoEvent::Wake => {}
            }
        }
    }

    /// Hands back a frame taken from [`StompConn::next_frame`]: the next frame's headers are
    /// read into its headers' room.
    pub fn recycle(&mut self, f: Frame) {
        self.decoder.recycle(f.headers);
    }

    /// The next whole frame already read (heart-beats skipped); an ERROR ends the run.
    fn decode_one(&mut self) -> anyhow::Result<Option<Frame>> {
        loop {
            match self.decoder.decode(&mut self.pump.rbuf)? {
                Decoded::Frame(f) if f.command == Command::Error => bail!(
                    "the broker sent ERROR: {}",
                    f.header("message").unwrap_or("(no message)")
                ),
                Decoded::Frame(f) => return Ok(Some(f)),
                Decoded::Heartbeat => {}
                Decoded::NeedMore => return Ok(None),
            }
        }
    }

    /// Hands each MESSAGE already read to `each`, in order; when `each` answers true, the
    /// message is acknowledged (an ACK naming its `ack` id is buffered: cumulative under
    /// `ack:client`), else its id is kept for [`StompConn::ack_last`]. Other frames are decoded
    /// and skipped (an ERROR ends the run). Returns how many messages it handed over; 0 when
    /// none is whole yet (see [`StompConn::wait_read`]).
    pub fn take_messages(
        &mut self,
        mut each: impl FnMut(Delivery<'_>) -> bool,
    ) -> anyhow::Result<usize> {
        let mut taken = 0;
        loop {
            match scan(&self.pump.rbuf) {
                Scan::NeedMore => return Ok(taken),
                Scan::Heartbeat(len) => self.pump.rbuf.advance(len),
                Scan::Message(m) => {
                    let rbuf = &self.pump.rbuf;
                    let delivery = Delivery {
                        body: &rbuf[m.body],
                        redelivered: m.redelivered,
                    };
                    if let Some(ack) = m.ack {
                        // Kept and written as the broker escaped it: ACK escapes its headers
                        // alike.
                        if each(delivery) {
                            put_ack(&rbuf[ack], None, &mut self.pump.wbuf);
                            self.unacked.clear();
                        } else {
                            self.unacked.clear();
                            self.unacked.put_slice(&rbuf[ack]);
                        }
                    } else {
                        each(delivery);
                    }
                    self.pump.rbuf.advance(m.len);
                    taken += 1;
                }
                Scan::Other => match self.decode_one()? {
                    None => return Ok(taken),
                    Some(f) if f.command == Command::Message => {
                        let delivery = Delivery {
                            body: &f.body,
                            redelivered: f.header("redelivered").is_some(),
                        };
                        let due = each(delivery);
                        if let Some(id) = f.header("ack") {
                            self.unacked.clear();
                            stomp::put_message_value(VERSION, id.as_bytes(), &mut self.unacked);
                            if due {
                                put_ack(&self.unacked, None, &mut self.pump.wbuf);
                                self.unacked.clear();
                            }
                        }
                        self.recycle(f);
                        taken += 1;
                    }
                    Some(f) => self.recycle(f),
                },
            }
        }
    }

    /// Acknowledges the last message [`StompConn::take_messages`] handed over without
    /// acknowledging it (under `ack:client` that covers every earlier one too) and waits for
    /// the broker's receipt of that ACK; when there is no such message, writes out the ACKs
    /// still buffered.
    pub async fn ack_last(&mut self) -> anyhow::Result<()> {
        if self.unacked.is_empty() {
            return self.flush_to(1).await;
        }
        put_ack(&self.unacked, Some("last-ack"), &mut self.pump.wbuf);
        self.unacked.clear();
        self.receipt("last-ack").await
    }

    /// Writes what is buffered and waits until more bytes are read; false when nothing came
    /// for `idle`.
    pub async fn wait_read(&mut self, idle: Duration) -> anyhow::Result<bool> {
        loop {
            let event = self.pump.next_event(true, 0, |_| Poll::Pending);
            match tokio::time::timeout(idle, event).await {
                Err(_) => return Ok(false),
                Ok(ev) => match ev? {
                    IoEvent::Closed => bail!("the broker closed the connection"),
                    IoEvent::Read => return Ok(true),
                    IoEvent::Drained | IoEvent::Wake => {}
                },
            }
        }
    }

    /// Waits for the RECEIPT `id`, which the broker sends after handling every earlier frame.
    pub async fn receipt(&mut self, id: &str) -> anyhow::Result<()> {
        loop {
            let f = self.next_frame().await?;
            if f.command == Command::Receipt && f.header("receipt-id") == Some(id) {
                return Ok(());
            }
        }
    }

    /// What a flush does with what it read: frames are decoded at once (an ERROR ends the
    /// run) and kept for `next_frame`.
    fn on_event(&mut self, ev: IoEvent) -> anyhow::Result<()> {
        match ev {
            IoEvent::Read => {
                while let Some(f) = self.decode_one()? {
                    self.inbox.push_back(f);
                }
                Ok(())
            }
            IoEvent::Closed => bail!("the broker closed the connection"),
            IoEvent::Drained | IoEvent::Wake => Ok(()),
        }
    }
}

/// Buffers an ACK of the message whose `ack` id is `id` (escaped as on the wire).
fn put_ack(id: &[u8], receipt: Option<&str>, wbuf: &mut BytesMut) {
    wbuf.put_slice(b"ACK\nid:");
    wbuf.put_slice(id);
    if let Some(r) = receipt {
        wbuf.put_slice(b"\nreceipt:");
        wbuf.put_slice(r.as_bytes());
    }
    wbuf.put_slice(b"\n\n\0");
}

/// What [`scan`] found at the front of the read buffer.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// A whole MESSAGE frame with a `content-length`.
    Message(RawMessage),
    /// A heart-beat (a bare EOL) of this many bytes.
    Heartbeat(usize),
    /// The front may be a MESSAGE still arriving.
    NeedMore,
    /// Anything else, for the full decoder (it also reports what is malformed).
    Other,
}

/// Where a MESSAGE frame's parts lie in the buffer it was scanned in.
#[derive(Debug, PartialEq, Eq)]
struct RawMessage {
    /// Its first `ack` header's value, escaped as it was sent.
    ack: Option<Range<usize>>,
    /// It has a `redelivered` header.
    redelivered: bool,
    body: Range<usize>,
    /// The whole frame's length, its NUL included.
    len: usize,
}

/// Longer header blocks are left to the full decoder, which enforces the limits.
const SCAN_HEADERS_MAX: usize = 64 * 1024;

/// Locates a MESSAGE frame at the front of `buf` by its `content-length`, `ack` and
/// `redelivered` lines (the first of each counts, as in the decoder), reading no other header. A MESSAGE without
/// `content-length`, with a malformed one, or whose body is not followed by its NUL, is
/// `Other`: the full decoder then handles or refuses it.
fn scan(buf: &[u8]) -> Scan {
    const COMMAND: &[u8] = b"MESSAGE\n";
    match buf {
        [] | [b'\r'] => return Scan::NeedMore,
        [b'\n', ..] => return Scan::Heartbeat(1),
        [b'\r', b'\n', ..] => return Scan::Heartbeat(2),
        _ => {}
    }
    if buf.len() < COMMAND.len() {
        return if COMMAND.starts_with(buf) {
            Scan::NeedMore
        } else {
            Scan::Other
        };
    }
    if !buf.starts_with(COMMAND) {
        return Scan::Other;
    }
    let (mut at, mut content_length, mut ack) = (COMMAND.len(), None, None);
    let mut redelivered = false;
    loop {
        let Some(eol) = memchr::memchr(b'\n', &buf[at..]) else {
            return if buf.len() > SCAN_HEADERS_MAX {
                Scan::Other
            } else {
                Scan::NeedMore
            };
        };
        let line_end = at + eol;
        let line = &buf[at..line_end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let value_at = at;
        at = line_end + 1;
        if line.is_empty() {
            break;
        }
        if content_length.is_none() {
            if let Some(digits) = line.strip_prefix(b"content-length:") {
                match parse_length(digits) {
                    Some(n) => content_length = Some(n),
                    None => return Scan::Other,
                }
                continue;
            }
        }
        if ack.is_none() && line.starts_with(b"ack:") {
            ack = Some(value_at + 4..value_at + line.len());
        } else if line.starts_with(b"redelivered:") {
            redelivered = true;
        }
    }
    let Some(length) = content_length else {
        return Scan::Other;
    };
    let Some(end) = at.checked_add(length) else {
        return Scan::Other;
    };
    match buf.get(end) {
        None => Scan::NeedMore,
        Some(0) => Scan::Message(RawMessage {
            ack,
            redelivered,
            body: at..end,
            len: end + 1,
        }),
        Some(_) => Scan::Other,
    }
}

/// A `content-length` value: decimal digits only.
fn parse_length(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    digits.iter().try_fold(0usize, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + (d - b'0') as usize)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshmq::stomp::{Decoded, Decoder, Limits};

    /// A stream as the broker writes it to a consumer: MESSAGEs (one with a NUL in its body,
    /// one with an escaped `ack` id and a repeated header, redelivered ones, bodies holding a
    /// blank line, a NUL and header-like lines), heart-beats, a RECEIPT, MESSAGEs without
    /// `content-length`.
    fn stream() -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"MESSAGE\nsubscription:s1\nack:1\\c7\ndestination:/topic/a\ncontent-length:5\n\nab\0de\0");
        out.extend_from_slice(b"\n\r\n");
        out.extend_from_slice(b"RECEIPT\nreceipt-id:r1\n\n\0");
        out.extend_from_slice(
            b"MESSAGE\r\ncontent-length:3\r\nack:x\r\nack:y\r\ncontent-length:9\r\n\r\nxyz\0",
        );
        out.extend_from_slice(
            b"MESSAGE\nack:p\r\nack:q\ncontent-length:2\r\ncontent-length:7\n\r\nhi\0",
        );
        out.extend_from_slice(b"MESSAGE\nack:z\n\nno length\0");
        out.extend_from_slice(b"MESSAGE\ncontent-length:0\n\n\0");
        out.extend_from_slice(b"MESSAGE\nack:r1\nredelivered:true\nmeshmq.redelivery_count:1\ncontent-length:19\n\n\n\nredelivered:true\0\0");
        out.extend_from_slice(b"MESSAGE\nnote:redelivered:true\nack:f1\ncontent-length:21\n\nx\n\nredelivered:true\n\n\0");
        out.extend_from_slice(b"MESSAGE\nredelivered:true\nack:a\\cb\n\nnone\0");
        out.extend_from_slice(b"MESSAGE\nack:last\ncontent-length:2\n\n\0\0\0");
        out
    }

    /// One MESSAGE as a consumer sees it: body, redelivered, its `ack` id escaped as an ACK
    /// carries it.
    type Seen = (Vec<u8>, bool, Option<Vec<u8>>);

    /// What the full decoder reads from `bytes`, MESSAGE by MESSAGE.
    fn decoded(bytes: &[u8]) -> Vec<Seen> {
        let mut decoder = Decoder::new(VERSION, Limits::default());
        let mut rbuf = BytesMut::from(bytes);
        let mut got = Vec::new();
        loop {
            match decoder.decode(&mut rbuf).expect("well formed") {
                Decoded::NeedMore => break,
                Decoded::Heartbeat => {}
                Decoded::Frame(f) if f.command == Command::Message => {
                    let ack = f.header("ack").map(|id| {
                        let mut escaped = BytesMut::new();
                        stomp::put_message_value(VERSION, id.as_bytes(), &mut escaped);
                        escaped.to_vec()
                    });
                    let again = f.header("redelivered").is_some();
                    got.push((f.body.to_vec(), again, ack));
                }
                Decoded::Frame(_) => {}
            }
        }
        assert!(rbuf.is_empty(), "everything decoded");
        got
    }

    /// What [`StompConn::take_messages`] hands over from `bytes` when no read gets more than
    /// `piece` bytes, acknowledging every `every`-th message and then the rest with
    /// [`StompConn::ack_last`]: each body and whether it was redelivered, and every byte the
    /// consumer wrote back.
    async fn taken(bytes: &[u8], piece: usize, every: usize) -> (Vec<(Vec<u8>, bool)>, Vec<u8>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let messages = decoded(bytes).len();
        let (near, far) = tokio::io::duplex(piece);
        let mut conn = StompConn {
            pump: Pump::new(Box::new(near)),
            decoder: Decoder::new(VERSION, Limits::default()),
            inbox: VecDeque::new(),
            unacked: BytesMut::new(),
        };
        let (mut from_consumer, mut to_consumer) = tokio::io::split(far);
        let (asked, receipt_asked) = tokio::sync::oneshot::channel::<()>();
        let stream = bytes.to_vec();
        let broker_writes = tokio::spawn(async move {
            to_consumer.write_all(&stream).await.expect("written");
            if receipt_asked.await.is_ok() {
                to_consumer
                    .write_all(b"RECEIPT\nreceipt-id:last-ack\n\n\0")
                    .await
                    .expect("written");
            }
        });
        let broker_reads = tokio::spawn(async move {
            let (mut written, mut asked) = (Vec::new(), Some(asked));
            let mut room = [0u8; 64];
            loop {
                let n = from_consumer.read(&mut room).await.expect("read");
                if n == 0 {
                    return written;
                }
                written.extend_from_slice(&room[..n]);
                if written.ends_with(b"receipt:last-ack\n\n\0") {
                    asked.take().map(|a| a.send(()));
                }
            }
        });
        let (mut got, mut n) = (Vec::new(), 0);
        while got.len() < messages {
            conn.take_messages(|m| {
                got.push((m.body.to_vec(), m.redelivered));
                n += 1;
                n % every == 0
            })
            .expect("taken");
            if got.len() < messages {
                assert!(conn.wait_read(Duration::from_secs(5)).await.expect("read"));
            }
        }
        conn.ack_last().await.expect("the last ACK's receipt");
        drop(conn);
        broker_writes.abort();
        (got, broker_reads.await.expect("reader"))
    }

    #[tokio::test]
    async fn taken_messages_are_what_the_decoder_reads_however_the_stream_is_split() {
        let bytes = stream();
        let reference = decoded(&bytes);
        assert_eq!(reference.len(), 9, "{reference:?}");
        assert_eq!(reference[0].0, b"ab\0de");
        assert_eq!(reference[0].2.as_deref(), Some(&b"1\\c7"[..]));
        assert_eq!(reference[1].0, b"xyz", "the first of a repeated header");
        assert_eq!(reference[2].2.as_deref(), Some(&b"p"[..]), "the first");
        assert_eq!(
            reference[5],
            (
                b"\n\nredelivered:true\0".to_vec(),
                true,
                Some(b"r1".to_vec())
            )
        );
        assert_eq!(reference[6].0, b"x\n\nredelivered:true\n\n");
        assert!(
            !reference[6].1,
            "a header's value and the body are not headers"
        );
        assert_eq!(
            reference[7],
            (b"none".to_vec(), true, Some(b"a\\cb".to_vec()))
        );
        for every in [1, 2, 4] {
            // The ACKs a consumer owes: every `every`-th message's, then the last one's if
            // it was not acknowledged yet (cumulative, as under `ack:client`).
            let mut owed = Vec::new();
            let mut last = None;
            for (i, (_, _, id)) in reference.iter().enumerate() {
                match id {
                    Some(id) if (i + 1) % every == 0 => {
                        owed.extend_from_slice(&[b"ACK\nid:", &id[..], b"\n\n\0"].concat());
                        last = None;
                    }
                    Some(id) => last = Some(id.clone()),
                    None => {}
                }
            }
            if let Some(id) = last {
                owed.extend_from_slice(
                    &[b"ACK\nid:", &id[..], b"\nreceipt:last-ack\n\n\0"].concat(),
                );
            }
            let want: Vec<_> = reference.iter().map(|(b, r, _)| (b.clone(), *r)).collect();
            for piece in [1, 2, 3, 5, 8, 13, 64, bytes.len()] {
                let (got, acks) = taken(&bytes, piece, every).await;
                assert_eq!(got, want, "every {every}, in pieces of {piece}");
                assert_eq!(
                    String::from_utf8_lossy(&acks),
                    String::from_utf8_lossy(&owed),
                    "every {every}, in pieces of {piece}"
                );
            }
        }
    }

    #[test]
    fn malformed_messages_are_left_to_the_decoder() {
        for frame in [
            &b"MESSAGE\ncontent-length:3\n\nabcd\0"[..],
            b"MESSAGE\ncontent-length:x\n\nabc\0",
            b"MESSAGE\ncontent-length:\n\n\0",
            b"MESSAGE\ncontent-length:99999999999999999999\n\n\0",
            b"MESSAGX\n\n\0",
            b"ERROR\nmessage:no\n\n\0",
        ] {
            assert_eq!(
                scan(frame),
                Scan::Other,
                "{}",
                String::from_utf8_lossy(frame)
            );
        }
        assert_eq!(scan(b"MESS"), Scan::NeedMore);
        assert_eq!(scan(b"MESSAGE\ncontent-length:3\n\nabc"), Scan::NeedMore);
    }
}
