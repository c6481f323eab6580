//! Sockets: TCP listeners and dialers, connection limits, and the per-connection I/O pump.
//!
//! Owns: every socket in meshmq (TLS and QUIC streams join here as further `Stream` kinds).
//! Must not touch: frame meaning — it moves bytes between a socket and two buffers and tells
//! its caller what happened. Invariants: a listener never holds more than `max_connections`
//! admitted connections (one more is accepted only to be refused with a message and closed);
//! the pump never blocks reading on writing or writing on reading, so a peer that does not read
//! cannot stop us from reading its acks, and one that does not write cannot stop its deliveries.

use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::io::poll_read_buf;

pub mod files;
pub mod liveness;
pub mod quic;
pub mod tls;

pub use liveness::{Due, Liveness};

/// Anything that carries a byte stream both ways.
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncStream for T {}

pub type Stream = Box<dyn AsyncStream>;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("cannot bind the local address {addr} for an outgoing connection: {source}")]
    LocalBind { addr: IpAddr, source: io::Error },
}

/// Read room of a connection that is not busy, read on the stack (it holds no read buffer
/// between frames); it doubles each time a read fills it, up to `MAX_READ_CHUNK`, in a heap
/// buffer, so busy connections read in large batches and idle ones hold nothing.
const MIN_READ_CHUNK: usize = 512;
const MAX_READ_CHUNK: usize = 64 * 1024;
/// A write buffer no larger than this is given back as soon as it drains (a receipt, a
/// heartbeat, a few deliveries: cheap to allocate again); a larger one, a busy connection's,
/// goes to the thread's next fill (`SPARE_WRITE_BUFFER`).
const SMALL_WRITE_BUFFER: usize = 1024;

thread_local! {
    /// The large write buffer a connection of this thread drained last, for the next one that
    /// fills: a burst to many connections (a topic fanout) cycles a buffer that is still in
    /// cache, where each connection writing into its own would write into memory that the
    /// others' writes pushed out of cache meanwhile. At most one per thread.
    static SPARE_WRITE_BUFFER: std::cell::RefCell<Option<BytesMut>> =
        const { std::cell::RefCell::new(None) };
}

/// Counts a listener's admitted connections; a `Permit` gives its slot back on drop.
#[derive(Debug)]
pub struct ConnectionCount {
    open: AtomicUsize,
    /// The listener's `max_connections`, changed in place by `meshmq apply`.
    max: AtomicUsize,
}

impl ConnectionCount {
    pub fn new(max: usize) -> ConnectionCount {
        ConnectionCount {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Takes a new limit: it applies to the next connection accepted; connections already
    /// admitted stay (a lowered limit only refuses newcomers until enough have left).
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    pub(crate) fn try_admit(self: &Arc<Self>) -> Option<Permit> {
        let max = self.max();
        let mut cur = self.open.load(Ordering::Relaxed);
        loop {
            if cur >= max {
                return None;
            }
            match self
                .open
                .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Some(Permit(self.clone())),
                Err(now) => cur = now,
            }
        }
    }
}

#[derive(Debug)]
pub struct Permit(Arc<ConnectionCount>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A bound TCP listener with a connection limit.
pub struct Listener {
    listener: TcpListener,
    count: Arc<ConnectionCount>,
}

/// What `accept` produced.
pub enum Incoming {
    /// Within the limit: serve it; the permit holds its slot.
    Admitted {
        stream: TcpStream,
        peer: SocketAddr,
        permit: Permit,
    },
    /// Over the limit: tell the peer and close.
    OverLimit { stream: TcpStream, peer: SocketAddr },
}

impl Listener {
    pub async fn bind(
        addr: SocketAddr,
        max_connections: usize,
    ) -> Result<Listener, TransportError> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(addr)?;
            Ok(s)
        })
        .map_err(|source| TransportError::Bind { addr, source })?;
        let listener = socket
            .listen(4096)
            .map_err(|source| TransportError::Bind { addr, source })?;
        Ok(Listener {
            listener,
            count: Arc::new(ConnectionCount::new(max_connections)),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn count(&self) -> Arc<ConnectionCount> {
        self.count.clone()
    }

    /// Waits for the next connection. Accept errors (e.g. out of file descriptors) are returned
    /// so the caller can log them and back off; they do not end the listener.
    pub async fn accept(&self) -> io::Result<Incoming> {
        let (stream, peer) = self.listener.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok(match self.count.try_admit() {
            Some(permit) => Incoming::Admitted {
                stream,
                peer,
                permit,
            },
            None => Incoming::OverLimit { stream, peer },
        })
    }
}

/// Dials `addr`, from `local` when given (a per-broker 127.0.0.x, or a chosen interface).
pub async fn dial(addr: SocketAddr, local: Option<IpAddr>) -> Result<TcpStream, TransportError> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|source| TransportError::Connect { addr, source })?;
    if let Some(ip) = local {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|source| TransportError::LocalBind { addr: ip, source })?;
    }
    let stream = socket
        .connect(addr)
        .await
        .map_err(|source| TransportError::Connect { addr, source })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// What the pump saw.
#[derive(Debug, PartialEq, Eq)]
pub enum IoEvent {
    /// New bytes are in the read buffer.
    Read,
    /// The write buffer drained; the caller may refill it.
    Drained,
    /// The caller's wake-up source is ready (e.g. an outbox has deliveries).
    Wake,
    /// The peer closed its side.
    Closed,
}

/// A socket with its read and write buffers.
pub struct Pump {
    stream: Stream,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    read_chunk: usize,
}

impl Pump {
    pub fn new(stream: Stream) -> Pump {
        Pump {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            read_chunk: MIN_READ_CHUNK,
        }
    }

    /// Writes what it can, then waits for the first of: bytes to read (if `reading`), the write
    /// buffer draining, or `wake` becoming ready (only polled while the write buffer is below
    /// `refill_below`, since the caller could not take more anyway).
    pub async fn next_event(
        &mut self,
        reading: bool,
        refill_below: usize,
        mut wake: impl FnMut(&mut Context<'_>) -> Poll<()>,
    ) -> io::Result<IoEvent> {
        poll_fn(|cx| {
            if !self.wbuf.is_empty() {
                loop {
                    match Pin::new(&mut self.stream).poll_write(cx, &self.wbuf) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Ok(IoEvent::Closed)),
                        Poll::Ready(Ok(n)) => {
                            self.wbuf.advance(n);
                            if self.wbuf.is_empty() {
                                self.reclaim_drained();
                                return Poll::Ready(Ok(IoEvent::Drained));
                            }
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => break,
                    }
                }
            }
            if reading && self.rbuf.is_empty() && self.read_chunk == MIN_READ_CHUNK {
                // Nothing pending and the connection is not busy: read into the stack, so
                // a connection waiting for its next frame holds no read buffer at all.
                if self.rbuf.capacity() != 0 {
                    self.rbuf = BytesMut::new();
                }
                let mut room = [0u8; MIN_READ_CHUNK];
                let mut buf = ReadBuf::new(&mut room);
                match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                        return Poll::Ready(Ok(IoEvent::Closed))
                    }
                    Poll::Ready(Ok(())) => {
                        let n = buf.filled().len();
                        self.rbuf.extend_from_slice(buf.filled());
                        if n == MIN_READ_CHUNK {
                            self.read_chunk = MIN_READ_CHUNK * 2;
                        }
                        return Poll::Ready(Ok(IoEvent::Read));
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            } else if reading {
                if self.rbuf.capacity() - self.rbuf.len() < self.read_chunk / 2 {
                    self.rbuf.reserve(self.read_chunk);
                }
                let room = (self.rbuf.capacity() - self.rbuf.len()).min(self.read_chunk);
                // At most one chunk per read, whatever spare capacity a grown buffer has: the
                // caller decides between reads whether to take more (memory limit).
                let mut limited = (&mut self.rbuf).limit(self.read_chunk);
                match poll_read_buf(Pin::new(&mut self.stream), cx, &mut limited) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Ok(IoEvent::Closed)),
                    Poll::Ready(Ok(n)) => {
                        if n >= room {
                            self.read_chunk = (self.read_chunk * 2).min(MAX_READ_CHUNK);
                        }
                        return Poll::Ready(Ok(IoEvent::Read));
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            if self.wbuf.len() < refill_below && wake(cx).is_ready() {
                return Poll::Ready(Ok(IoEvent::Wake));
            }
            Poll::Pending
        })
        .await
    }

    /// The write buffer has just drained. `advance` left its start at the end of what was
    /// written, so `capacity()` is only the allocation's unwritten tail: the whole allocation is
    /// taken back (nothing to move, it is empty), so the next fill writes from its start instead
    /// of regrowing a busy connection's buffer from nothing or moving a burst's tail back to
    /// the front later. A small allocation (a receipt, a heartbeat) is given back instead; a
    /// large one is handed to this thread ([`SPARE_WRITE_BUFFER`]) for the next fill.
    fn reclaim_drained(&mut self) {
        // Asking for one byte more than the tail holds makes `bytes` reuse the space before
        // the start when it can (always, here) and never allocates.
        let _ = self.wbuf.try_reclaim(self.wbuf.capacity() + 1);
        let drained = std::mem::take(&mut self.wbuf);
        if drained.capacity() > SMALL_WRITE_BUFFER {
            SPARE_WRITE_BUFFER.with(|spare| {
                let mut spare = spare.borrow_mut();
                if spare
                    .as_ref()
                    .is_none_or(|s| s.capacity() < drained.capacity())
                {
                    *spare = Some(drained);
                }
            });
        }
    }

    /// Readies an empty write buffer for a fill of many deliveries: it takes the large buffer
    /// a connection of this thread drained last, if there is one.
    pub fn ready_to_fill(&mut self) {
        if self.wbuf.is_empty() && self.wbuf.capacity() <= SMALL_WRITE_BUFFER {
            if let Some(spare) = SPARE_WRITE_BUFFER.with(|s| s.borrow_mut().take()) {
                self.wbuf = spare;
            }
        }
    }

    /// Gives back the buffers a burst grew once they are empty, and starts reading small
    /// again (called now and then, not after every write: a busy connection would otherwise
    /// drop and regrow them all the time).
    pub fn shrink_idle(&mut self) {
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
            self.read_chunk = MIN_READ_CHUNK;
        }
        if self.wbuf.is_empty() {
            self.wbuf = BytesMut::new();
        }
    }

    /// Writes everything buffered and shuts the write side down.
    pub async fn flush_and_close(&mut self) -> io::Result<()> {
        while !self.wbuf.is_empty() {
            let n = self.stream.write(&self.wbuf).await?;
            if n == 0 {
                break;
            }
            self.wbuf.advance(n);
        }
        self.stream.flush().await?;
        self.stream.shutdown().await
    }

    pub fn into_stream(self) -> Stream {
        self.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_listener_refuses_past_its_limit_and_frees_slots() {
        let l = Listener::bind("127.0.0.1:0".parse().unwrap(), 1)
            .await
            .unwrap();
        let addr = l.local_addr().unwrap();
        let _c1 = dial(addr, None).await.unwrap();
        let first = l.accept().await.unwrap();
        assert!(matches!(first, Incoming::Admitted { .. }));
        let _c2 = dial(addr, Some("127.0.0.1".parse().unwrap()))
            .await
            .unwrap();
        assert!(matches!(
            l.accept().await.unwrap(),
            Incoming::OverLimit { .. }
        ));
        drop(first);
        let _c3 = dial(addr, None).await.unwrap();
        let third = l.accept().await.unwrap();
        assert!(matches!(third, Incoming::Admitted { .. }));
        assert_eq!(l.count().open(), 1);
    }

    /// A pump and the peer socket it talks to.
    async fn pumped() -> (Pump, TcpStream) {
        let l = Listener::bind("127.0.0.1:0".parse().unwrap(), 10)
            .await
            .unwrap();
        let peer = dial(l.local_addr().unwrap(), None).await.unwrap();
        let Incoming::Admitted { stream, .. } = l.accept().await.unwrap() else {
            panic!("refused")
        };
        (Pump::new(Box::new(stream)), peer)
    }

    /// Waits briefly for an event that should not come (the connection is idle).
    async fn idle(pump: &mut Pump) {
        let waited = tokio::time::timeout(
            Duration::from_millis(100),
            pump.next_event(true, 0, |_| Poll::Pending),
        )
        .await;
        assert!(
            waited.is_err(),
            "an event on an idle connection: {waited:?}"
        );
    }

    #[tokio::test]
    async fn a_connection_waiting_for_its_next_frame_holds_no_buffer() {
        let (mut pump, mut peer) = pumped().await;
        peer.write_all(b"SUBSCRIBE").await.unwrap();
        let ev = pump.next_event(true, 0, |_| Poll::Pending).await.unwrap();
        assert_eq!(ev, IoEvent::Read);
        assert_eq!(&pump.rbuf[..], b"SUBSCRIBE");
        // The codec takes the frame; the connection answers it.
        drop(pump.rbuf.split());
        pump.wbuf.extend_from_slice(b"RECEIPT");
        let ev = pump.next_event(true, 0, |_| Poll::Pending).await.unwrap();
        assert_eq!(ev, IoEvent::Drained);
        idle(&mut pump).await;
        assert_eq!(
            (pump.rbuf.capacity(), pump.wbuf.capacity()),
            (0, 0),
            "an idle connection holds no read or write buffer"
        );
        // And it still reads what comes next.
        peer.write_all(b"ACK").await.unwrap();
        let ev = pump.next_event(true, 0, |_| Poll::Pending).await.unwrap();
        assert_eq!(ev, IoEvent::Read);
        assert_eq!(&pump.rbuf[..], b"ACK");
    }

    #[tokio::test]
    async fn buffers_a_burst_grew_are_given_back_once_idle() {
        let (mut pump, mut peer) = pumped().await;
        let burst = vec![1u8; 256 * 1024];
        let writer = tokio::spawn(async move {
            peer.write_all(&burst).await.unwrap();
            peer
        });
        let mut got = 0;
        while got < 256 * 1024 {
            let ev = pump.next_event(true, 0, |_| Poll::Pending).await.unwrap();
            assert_eq!(ev, IoEvent::Read);
            got += pump.rbuf.len();
            drop(pump.rbuf.split());
        }
        let _peer = writer.await.unwrap();
        assert!(pump.read_chunk > MIN_READ_CHUNK, "the burst grew the reads");
        pump.wbuf.extend_from_slice(&vec![2u8; 32 * 1024]);
        pump.wbuf.clear();
        pump.shrink_idle();
        idle(&mut pump).await;
        assert_eq!((pump.rbuf.capacity(), pump.wbuf.capacity()), (0, 0));
        assert_eq!(pump.read_chunk, MIN_READ_CHUNK);
    }

    #[tokio::test]
    async fn a_busy_connection_refills_its_drained_write_buffer_from_its_start() {
        let (mut pump, mut peer) = pumped().await;
        let reader = tokio::spawn(async move {
            let mut sink = vec![0u8; 64 * 1024];
            while peer.read(&mut sink).await.unwrap_or(0) > 0 {}
        });
        // Two fills of a busy connection: each drains, the second must reuse the first's
        // allocation whole (no regrowth from nothing, no data moved back to its start).
        let fill = 256 * 1024;
        for round in 0..2 {
            pump.wbuf.extend_from_slice(&vec![round as u8; fill]);
            let grown = pump.wbuf.capacity();
            let grown_at = pump.wbuf.as_ptr();
            while !pump.wbuf.is_empty() {
                pump.next_event(false, 0, |_| Poll::Pending).await.unwrap();
            }
            pump.ready_to_fill();
            assert!(
                pump.wbuf.capacity() >= grown && pump.wbuf.as_ptr() == grown_at,
                "round {round}: a drained {grown}-byte write buffer offers {} bytes at {:?} (was {:?}): its allocation was not taken back whole",
                pump.wbuf.capacity(),
                pump.wbuf.as_ptr(),
                grown_at,
            );
        }
        // The next fill fits without growing or moving anything.
        let before = pump.wbuf.as_ptr();
        pump.wbuf.extend_from_slice(&vec![9u8; fill]);
        assert_eq!(pump.wbuf.as_ptr(), before, "the refill reallocated");
        pump.wbuf.clear();
        // Idle, it is still given back (as a small one is at once).
        pump.shrink_idle();
        assert_eq!(pump.wbuf.capacity(), 0);
        drop(pump);
        reader.await.unwrap();
    }

    #[tokio::test]
    async fn the_next_connection_to_fill_writes_into_the_buffer_another_drained() {
        let (mut first, first_peer) = pumped().await;
        let (mut second, second_peer) = pumped().await;
        let readers = [first_peer, second_peer].map(|mut peer| {
            tokio::spawn(async move {
                let mut sink = vec![0u8; 64 * 1024];
                while peer.read(&mut sink).await.unwrap_or(0) > 0 {}
            })
        });
        let fill = 256 * 1024;
        first.wbuf.extend_from_slice(&vec![1u8; fill]);
        let (grown, grown_at) = (first.wbuf.capacity(), first.wbuf.as_ptr());
        while !first.wbuf.is_empty() {
            first.next_event(false, 0, |_| Poll::Pending).await.unwrap();
        }
        assert_eq!(
            first.wbuf.capacity(),
            0,
            "a drained connection keeps no large buffer"
        );
        // The second connection's fill takes it whole, the first's next one gets none.
        second.ready_to_fill();
        assert!(
            second.wbuf.capacity() >= grown && second.wbuf.as_ptr() == grown_at,
            "the next fill got {} bytes at {:?}, not the {grown} bytes at {grown_at:?} drained",
            second.wbuf.capacity(),
            second.wbuf.as_ptr(),
        );
        first.ready_to_fill();
        assert_eq!(
            first.wbuf.capacity(),
            0,
            "one buffer went to two connections"
        );
        drop((first, second));
        for r in readers {
            r.await.unwrap();
        }
    }

    #[tokio::test]
    async fn the_pump_reads_while_the_peer_does_not_read() {
        let l = Listener::bind("127.0.0.1:0".parse().unwrap(), 10)
            .await
            .unwrap();
        let addr = l.local_addr().unwrap();
        let mut peer = dial(addr, None).await.unwrap();
        let Incoming::Admitted { stream, .. } = l.accept().await.unwrap() else {
            panic!("refused")
        };
        let mut pump = Pump::new(Box::new(stream));
        // 64 MiB queued for a peer that never reads: the writes stall, reads must not.
        pump.wbuf.extend_from_slice(&vec![7u8; 64 << 20]);
        peer.write_all(b"ack").await.unwrap();
        let ev = tokio::time::timeout(
            Duration::from_secs(5),
            pump.next_event(true, 0, |_| Poll::Pending),
        )
        .await
        .expect("reading is not blocked by a full socket")
        .unwrap();
        assert_eq!(ev, IoEvent::Read);
        assert_eq!(&pump.rbuf[..], b"ack");
        let mut buf = vec![0u8; 1024];
        assert!(peer.read(&mut buf).await.unwrap() > 0);
    }
}
