//! A TCP proxy the test controls, for links whose *silence* is the fault: while stalled it
//! keeps every connection open and accepts new ones, but forwards no byte in either direction;
//! when the stall ends everything held back flows on in order. (A stall is what an overloaded
//! network or a long GC pause looks like to the peers; a cut would be a different fault.)
//!
//! Blocking threads, so it works under any test runtime; dropping the proxy closes its
//! listener and every connection.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

struct Shared {
    upstream: SocketAddr,
    stalled: AtomicBool,
    stop: AtomicBool,
    accepted: AtomicU64,
    /// One clone of each side of every connection, to close them on drop.
    sockets: Mutex<Vec<TcpStream>>,
}

pub struct StallProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl StallProxy {
    /// A proxy on a fresh 127.0.0.1 port forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> StallProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        // Non-blocking accept so the acceptor notices `stop` without a wake-up connection.
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let shared = Arc::new(Shared {
            upstream,
            stalled: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            sockets: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::spawn(move || accept_loop(listener, shared))
        };
        StallProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Where clients connect instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Acquire)
    }

    /// Stops forwarding (connections stay open, new ones are accepted and held too).
    pub fn pause(&self) {
        self.shared.stalled.store(true, Ordering::Release);
    }

    /// Forwards again, starting with what was held back.
    pub fn resume(&self) {
        self.shared.stalled.store(false, Ordering::Release);
    }

    /// Forwards nothing for `d`, then resumes.
    pub fn stall_for(&self, d: Duration) {
        self.pause();
        std::thread::sleep(d);
        self.resume();
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.stalled.store(false, Ordering::Release);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for s in self.shared.sockets.lock().expect("sockets").drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Acquire) {
        let client = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => continue,
        };
        shared.accepted.fetch_add(1, Ordering::AcqRel);
        let _ = client.set_nonblocking(false);
        let Ok(server) = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(5))
        else {
            // The upstream is down: the client sees its connection end, as it would directly.
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let clones = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        );
        let (Ok(c_read), Ok(s_write), Ok(c_keep), Ok(s_keep)) = clones else {
            continue;
        };
        shared
            .sockets
            .lock()
            .expect("sockets")
            .extend([c_keep, s_keep]);
        let up = shared.clone();
        std::thread::spawn(move || pump(c_read, s_write, up));
        let down = shared.clone();
        std::thread::spawn(move || pump(server, client, down));
    }
}

/// Copies `from` to `to`, holding each chunk — and the end of the stream — while the proxy
/// is stalled, so nothing is lost, reordered or closed early.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = from.read(&mut buf);
        while shared.stalled.load(Ordering::Acquire) && !shared.stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(2));
        }
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if shared.stop.load(Ordering::Acquire) || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    // A FIN becomes a FIN; an error ends this direction the same way.
    let _ = to.shutdown(Shutdown::Write);
}
