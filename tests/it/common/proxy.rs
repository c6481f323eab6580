//! The one TCP fault proxy of the tests: put between two peers (a group and the group it
//! dials, failover clients and a broker, members and ZooKeeper) to make their link fail for
//! real. It listens on `127.0.0.1:<port>` and forwards every connection it accepts to one
//! target address; each accepted connection gets its own connection to the target and one
//! forwarding thread per direction. Faults apply at once to every open connection and to those
//! accepted later:
//!
//! - [`Proxy::cut`] closes both sides of every open connection (the peers see the stream end).
//! - [`Proxy::pause`] / [`Proxy::resume`] / [`Proxy::stall_for`]: move no byte either way while
//!   keeping every socket open (and accepting new ones) — a silent link, as a dead router, an
//!   overloaded network or a long GC pause makes one. What was held back flows on in order at
//!   `resume`; nothing is lost, reordered or closed early.
//! - [`Proxy::mute_replies`] / [`Proxy::mute_requests`]: read what one side sends and throw it
//!   away (a target's acknowledgements or receipts lost while it still receives what the
//!   source sends, or the other way round). Muting outlasts a `cut`.
//! - [`Proxy::abandon`]: closes the dialler's side of every open connection and leaves the
//!   target's side open and silent — a dialler whose old link the target has not seen die
//!   (a half-open connection) when it dials again. [`Proxy::abandoned`] tells when the target
//!   closed each one, [`Proxy::accepted_at`] when each connection came.
//! - [`ProxyMode::Hang`] ([`Proxy::accept_and_hang`]): later connections are accepted and never
//!   forwarded — a peer that accepts TCP and never completes a handshake. [`Proxy::answer_with`]:
//!   later connections are each answered with the next of some byte strings (garbage, a wrong
//!   handshake) and then held open without forwarding — a peer that is not what the dialler
//!   expects. [`ProxyMode::Refuse`]
//!   ([`Proxy::refuse_new`]): later connections are closed at once — a peer out of reach.
//!   [`Proxy::forward`] goes back to forwarding (and closes the hung connections).
//!
//! Everything is blocking std I/O on plain threads, so tests on any runtime can drive it; the
//! forwarding threads look at the faults between reads (a short read timeout). Dropping the
//! proxy closes its listener and every connection.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How often a forwarding thread looks at the faults while its socket is quiet.
const POLL: Duration = Duration::from_millis(20);

/// What the proxy does with a newly accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward it to the target.
    Forward,
    /// Keep it open and forward nothing.
    Hang,
    /// Write the next of the proxy's answers to it, then keep it open and forward nothing.
    Answer,
    /// Close it at once.
    Refuse,
}

/// One accepted connection: its two sockets (the target's is absent while hanging).
struct Link {
    source: TcpStream,
    target: Option<TcpStream>,
    closed: Arc<AtomicBool>,
    /// Set by [`Proxy::abandon`]: the pumps stop and leave the target's socket open.
    abandoned: Arc<AtomicBool>,
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
    mute_replies: AtomicBool,
    mute_requests: AtomicBool,
    links: Mutex<Vec<Link>>,
    answers: Mutex<Vec<Vec<u8>>>,
    accepted: AtomicUsize,
    /// When each connection was accepted, in order.
    accepted_at: Mutex<Vec<Instant>>,
    /// Each abandoned connection: when, and when its target closed it (if it has).
    abandoned: Mutex<Vec<(Instant, Option<Instant>)>>,
    stopped: AtomicBool,
}

/// A running proxy; it stops and closes everything when dropped.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on a fresh `127.0.0.1` port and forwards to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        Proxy::start_in(target, ProxyMode::Forward)
    }

    /// Listens on a fresh `127.0.0.1` port and treats new connections per `mode`.
    pub fn start_in(target: SocketAddr, mode: ProxyMode) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            target,
            mode: Mutex::new(mode),
            paused: AtomicBool::new(false),
            mute_replies: AtomicBool::new(false),
            mute_requests: AtomicBool::new(false),
            links: Mutex::new(Vec::new()),
            answers: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
            accepted_at: Mutex::new(Vec::new()),
            abandoned: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
        });
        let s = shared.clone();
        thread::spawn(move || accept_loop(listener, s));
        Proxy { addr, shared }
    }

    /// Where the proxy listens (what the dialling side is told to dial).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy as a native client URL.
    pub fn url(&self) -> String {
        format!("tcp://{}", self.addr)
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

    /// Closes both sides of every open connection.
    pub fn cut(&self) {
        for link in self.shared.links.lock().unwrap().drain(..) {
            link.close();
        }
    }

    /// Closes the dialler's side of every open connection (it sees the stream end) and leaves
    /// the target's side open, forwarding nothing either way, until the target closes it.
    pub fn abandon(&self) {
        let now = Instant::now();
        for link in self.shared.links.lock().unwrap().drain(..) {
            if link.closed.load(Ordering::SeqCst) {
                continue;
            }
            link.abandoned.store(true, Ordering::SeqCst);
            let _ = link.source.shutdown(Shutdown::Both);
            let Some(target) = link.target else { continue };
            let slot = {
                let mut abandoned = self.shared.abandoned.lock().unwrap();
                abandoned.push((now, None));
                abandoned.len() - 1
            };
            let shared = self.shared.clone();
            thread::spawn(move || watch_abandoned(target, slot, &shared));
        }
    }

    /// Every abandoned connection in order: when it was abandoned, and when its target closed
    /// it (`None` while still open).
    pub fn abandoned(&self) -> Vec<(Instant, Option<Instant>)> {
        self.shared.abandoned.lock().unwrap().clone()
    }

    /// When each connection was accepted, in order.
    pub fn accepted_at(&self) -> Vec<Instant> {
        self.shared.accepted_at.lock().unwrap().clone()
    }

    /// Stops moving bytes in both directions, keeping every socket open.
    pub fn pause(&self) {
        self.shared.paused.store(true, Ordering::SeqCst);
    }

    /// Moves bytes again, starting with what was held back.
    pub fn resume(&self) {
        self.shared.paused.store(false, Ordering::SeqCst);
    }

    /// Forwards nothing for `d`, then resumes.
    pub fn stall_for(&self, d: Duration) {
        self.pause();
        thread::sleep(d);
        self.resume();
    }

    /// While on, what the target sends back is read and dropped.
    pub fn mute_replies(&self, on: bool) {
        self.shared.mute_replies.store(on, Ordering::SeqCst);
    }

    /// While on, what the source sends is read and dropped.
    pub fn mute_requests(&self, on: bool) {
        self.shared.mute_requests.store(on, Ordering::SeqCst);
    }

    /// Later connections are accepted and never forwarded.
    pub fn accept_and_hang(&self) {
        *self.shared.mode.lock().unwrap() = ProxyMode::Hang;
    }

    /// Later connections are answered in turn with one of `answers` (the first connection
    /// with the first) and held open, forwarding nothing.
    pub fn answer_with(&self, answers: Vec<Vec<u8>>) {
        assert!(!answers.is_empty(), "something to answer with");
        *self.shared.answers.lock().unwrap() = answers;
        *self.shared.mode.lock().unwrap() = ProxyMode::Answer;
    }

    /// While on, later connections are closed as soon as they are accepted.
    pub fn refuse_new(&self, on: bool) {
        *self.shared.mode.lock().unwrap() = if on {
            ProxyMode::Refuse
        } else {
            ProxyMode::Forward
        };
    }

    /// Later connections are forwarded; hung (and answered) ones are closed.
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
        self.shared.paused.store(false, Ordering::SeqCst);
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
        let counted = || {
            shared.accepted_at.lock().unwrap().push(Instant::now());
            shared.accepted.fetch_add(1, Ordering::SeqCst)
        };
        let closed = Arc::new(AtomicBool::new(false));
        let abandoned = Arc::new(AtomicBool::new(false));
        let mode = *shared.mode.lock().unwrap();
        match mode {
            ProxyMode::Refuse => {
                let _ = source.shutdown(Shutdown::Both);
                counted();
                continue;
            }
            ProxyMode::Hang | ProxyMode::Answer => {
                if mode == ProxyMode::Answer {
                    let answers = shared.answers.lock().unwrap();
                    let n = shared.accepted.load(Ordering::SeqCst) % answers.len().max(1);
                    if let Some(answer) = answers.get(n) {
                        let mut source = &source;
                        let _ = source.write_all(answer);
                    }
                }
                shared.links.lock().unwrap().push(Link {
                    source,
                    target: None,
                    closed,
                    abandoned,
                });
                counted();
                continue;
            }
            ProxyMode::Forward => {}
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
            abandoned: abandoned.clone(),
        });
        counted();
        for (from, to, back) in pumps {
            let (Ok(from), Ok(to)) = (from, to) else {
                continue;
            };
            let (shared, closed, abandoned) = (shared.clone(), closed.clone(), abandoned.clone());
            thread::spawn(move || pump(from, to, back, &shared, &closed, &abandoned));
        }
    }
}

/// Moves bytes `from` → `to` until either side ends or the link is cut; `back` is the
/// target-to-source direction (the replies). A chunk read while paused is held until the
/// pause ends, so nothing moves while paused and nothing is lost by it. An abandoned link's
/// pumps stop without closing anything (the proxy closed the source's side itself).
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    back: bool,
    shared: &Shared,
    closed: &AtomicBool,
    abandoned: &AtomicBool,
) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut buf = vec![0u8; 64 * 1024];
    let muted = if back {
        &shared.mute_replies
    } else {
        &shared.mute_requests
    };
    while !closed.load(Ordering::SeqCst) && !abandoned.load(Ordering::SeqCst) {
        if shared.paused.load(Ordering::SeqCst) {
            thread::sleep(POLL);
            continue;
        }
        let read = from.read(&mut buf);
        while shared.paused.load(Ordering::SeqCst) && !closed.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(2));
        }
        match read {
            Ok(0) => break,
            Ok(n) => {
                if muted.load(Ordering::SeqCst) {
                    continue;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if quiet(&e) => {}
            Err(_) => break,
        }
    }
    if abandoned.load(Ordering::SeqCst) {
        return;
    }
    closed.store(true, Ordering::SeqCst);
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// A read that timed out or was interrupted: the socket is quiet, not ended.
fn quiet(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Reads and drops whatever the target of abandoned connection `slot` sends, until it closes
/// its side (recorded) or the proxy stops.
fn watch_abandoned(mut target: TcpStream, slot: usize, shared: &Shared) {
    let _ = target.set_read_timeout(Some(POLL));
    let mut buf = vec![0u8; 64 * 1024];
    while !shared.stopped.load(Ordering::SeqCst) {
        match target.read(&mut buf) {
            Ok(n) if n > 0 => {}
            Err(e) if quiet(&e) => {}
            _ => {
                shared.abandoned.lock().unwrap()[slot].1 = Some(Instant::now());
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Proxy;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    /// An echo server on a fresh port: each connection gets back what it sends.
    fn echo() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo");
        let addr = listener.local_addr().expect("echo address");
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut s = s;
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn read_some(s: &mut TcpStream, within: Duration) -> Vec<u8> {
        s.set_read_timeout(Some(within)).expect("timeout");
        let mut buf = [0u8; 1024];
        match s.read(&mut buf) {
            Ok(n) => buf[..n].to_vec(),
            Err(_) => Vec::new(),
        }
    }

    /// The faults do what they say: bytes flow, a pause holds them (and lets them through
    /// in order at resume), muted replies are dropped, a cut ends the stream.
    #[test]
    fn pause_holds_mute_drops_and_cut_ends() {
        let proxy = Proxy::start(echo());
        let mut s = TcpStream::connect(proxy.addr()).expect("connect through the proxy");
        s.write_all(b"one").expect("write");
        assert_eq!(read_some(&mut s, Duration::from_secs(5)), b"one");
        assert_eq!(proxy.accepted(), 1);

        proxy.pause();
        s.write_all(b"two").expect("write");
        assert!(
            read_some(&mut s, Duration::from_millis(300)).is_empty(),
            "paused"
        );
        proxy.resume();
        assert_eq!(read_some(&mut s, Duration::from_secs(5)), b"two");

        proxy.mute_replies(true);
        s.write_all(b"three").expect("write");
        assert!(
            read_some(&mut s, Duration::from_millis(300)).is_empty(),
            "muted"
        );
        proxy.mute_replies(false);
        s.write_all(b"four").expect("write");
        assert_eq!(read_some(&mut s, Duration::from_secs(5)), b"four");

        proxy.cut();
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 16];
        assert!(
            matches!(s.read(&mut buf), Ok(0) | Err(_)),
            "the stream ends at a cut"
        );
    }
}
