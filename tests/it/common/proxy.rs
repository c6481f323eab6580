//! A TCP proxy the test controls, put between two groups of a mesh to make their link fail
//! for real: cut it, silence it, lose what flows back, or accept connections and never answer.
//!
//! The proxy listens on `127.0.0.1:<port>` and forwards every connection it accepts to one
//! target address (a member's real listener). Each accepted connection gets its own connection
//! to the target and two forwarding threads (one per direction). Commands apply at once to
//! every open connection and to those accepted later:
//!
//! - [`Proxy::cut`] closes both sides of every open connection (the peers see the stream end);
//!   it also ends a blackhole, so the connections that follow forward both ways again.
//! - [`Proxy::pause`] / [`Proxy::resume`]: stop moving bytes while keeping every socket open —
//!   a silent link, as a dead router or a frozen peer makes one. Bytes wait in the kernel.
//! - [`Proxy::blackhole_to_source`]: keep forwarding towards the target and keep reading what
//!   it sends back, but throw that away (the target's acknowledgements and heartbeats are lost
//!   while it still receives and stores what the source sends).
//! - [`Proxy::accept_and_hang`]: later connections are accepted and never forwarded — no bytes
//!   either way, sockets left open — a peer that accepts TCP and never completes a handshake.
//!   [`Proxy::forward`] goes back to forwarding (and closes the hung connections).
//!
//! Everything is blocking std I/O on plain threads, so tests on any runtime can drive it. The
//! forwarding threads poll their commands between reads (a short read timeout), never while a
//! command is being applied.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How often a forwarding thread looks at the commands while its socket is quiet.
const POLL: Duration = Duration::from_millis(20);

/// What the proxy does with a newly accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    Forward,
    Hang,
}

/// One accepted connection: its two sockets (the target's is absent while hanging).
struct Link {
    source: TcpStream,
    target: Option<TcpStream>,
    closed: Arc<AtomicBool>,
}

impl Link {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.source.shutdown(Shutdown::Both);
        if let Some(t) = &self.target {
            let _ = t.shutdown(Shutdown::Both);
        }
    }
}

struct Shared {
    target: SocketAddr,
    mode: Mutex<ProxyMode>,
    paused: AtomicBool,
    blackhole: AtomicBool,
    links: Mutex<Vec<Link>>,
    accepted: AtomicUsize,
    stopped: AtomicBool,
}

/// A running proxy; it stops and closes everything when dropped.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on a fresh `127.0.0.1` port and forwards (or hangs, per `mode`) to `target`.
    pub fn start(target: SocketAddr, mode: ProxyMode) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            target,
            mode: Mutex::new(mode),
            paused: AtomicBool::new(false),
            blackhole: AtomicBool::new(false),
            links: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
        });
        let s = shared.clone();
        thread::spawn(move || accept_loop(listener, s));
        Proxy { addr, shared }
    }

    /// Where the proxy listens (what the dialling group is told to dial).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far (each dial attempt through the proxy is one).
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now: accepted, and neither side closed yet.
    pub fn live(&self) -> usize {
        let mut links = self.shared.links.lock().unwrap();
        links.retain(|l| !l.closed.load(Ordering::SeqCst));
        links.len()
    }

    /// Closes both sides of every open connection; ends a blackhole.
    pub fn cut(&self) {
        self.shared.blackhole.store(false, Ordering::SeqCst);
        for link in self.shared.links.lock().unwrap().drain(..) {
            link.close();
        }
    }

    /// Stops moving bytes in both directions, keeping every socket open.
    pub fn pause(&self) {
        self.shared.paused.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.shared.paused.store(false, Ordering::SeqCst);
    }

    /// Reads what the target sends back and discards it (until `cut`).
    pub fn blackhole_to_source(&self) {
        self.shared.blackhole.store(true, Ordering::SeqCst);
    }

    /// Later connections are accepted and never forwarded.
    pub fn accept_and_hang(&self) {
        *self.shared.mode.lock().unwrap() = ProxyMode::Hang;
    }

    /// Later connections are forwarded; hung ones are closed.
    pub fn forward(&self) {
        *self.shared.mode.lock().unwrap() = ProxyMode::Forward;
        self.shared.links.lock().unwrap().retain(|l| {
            if l.target.is_none() {
                l.close();
                false
            } else {
                true
            }
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the accept loop so it sees the stop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for source in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(source) = source else { continue };
        // Counted once the connection is registered, so a `cut` that follows a count sees it.
        let counted = || shared.accepted.fetch_add(1, Ordering::SeqCst);
        let closed = Arc::new(AtomicBool::new(false));
        if *shared.mode.lock().unwrap() == ProxyMode::Hang {
            shared.links.lock().unwrap().push(Link {
                source,
                target: None,
                closed,
            });
            counted();
            continue;
        }
        let Ok(target) = TcpStream::connect_timeout(&shared.target, Duration::from_secs(5)) else {
            // The target is down: the source sees its connection end, as with no proxy.
            let _ = source.shutdown(Shutdown::Both);
            counted();
            continue;
        };
        let _ = source.set_nodelay(true);
        let _ = target.set_nodelay(true);
        let pumps = [
            (source.try_clone(), target.try_clone(), false),
            (target.try_clone(), source.try_clone(), true),
        ];
        shared.links.lock().unwrap().push(Link {
            source,
            target: Some(target),
            closed: closed.clone(),
        });
        counted();
        for (from, to, back) in pumps {
            let (Ok(from), Ok(to)) = (from, to) else {
                continue;
            };
            let (shared, closed) = (shared.clone(), closed.clone());
            thread::spawn(move || pump(from, to, back, &shared, &closed));
        }
    }
}

/// Moves bytes `from` → `to` until either side ends or the link is cut; `back` is the
/// target-to-source direction (the one a blackhole swallows).
fn pump(mut from: TcpStream, mut to: TcpStream, back: bool, shared: &Shared, closed: &AtomicBool) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut buf = vec![0u8; 64 * 1024];
    while !closed.load(Ordering::SeqCst) {
        if shared.paused.load(Ordering::SeqCst) {
            thread::sleep(POLL);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if back && shared.blackhole.load(Ordering::SeqCst) {
                    continue;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => break,
        }
    }
    closed.store(true, Ordering::SeqCst);
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
