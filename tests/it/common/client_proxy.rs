//! A TCP proxy the test controls, between failover clients and one broker: it can swallow what either
//! side says (a request or a reply lost on the way), cut every connection it carries, and
//! refuse new ones (a broker out of reach).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use parking_lot::Mutex;

#[derive(Default)]
struct State {
    mute_replies: AtomicBool,
    mute_requests: AtomicBool,
    refuse: AtomicBool,
    stopped: AtomicBool,
    /// Both sockets of every connection carried, to cut them.
    sockets: Mutex<Vec<TcpStream>>,
}

pub struct Proxy {
    addr: SocketAddr,
    state: Arc<State>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards each connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let state = Arc::new(State::default());
        let st = state.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                if st.stopped.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = client else { continue };
                if st.refuse.load(Ordering::Acquire) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut socks = st.sockets.lock();
                    socks.push(client.try_clone().expect("clone"));
                    socks.push(server.try_clone().expect("clone"));
                }
                let (c2, s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let up_state = st.clone();
                thread::spawn(move || pipe(client, server, &up_state, false));
                let down_state = st.clone();
                thread::spawn(move || pipe(s2, c2, &down_state, true));
            }
        });
        Proxy { addr, state }
    }

    pub fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// While on, bytes from the broker are read and dropped.
    pub fn mute_replies(&self, on: bool) {
        self.state.mute_replies.store(on, Ordering::Release);
    }

    /// While on, bytes from the client are read and dropped.
    pub fn mute_requests(&self, on: bool) {
        self.state.mute_requests.store(on, Ordering::Release);
    }

    /// While on, a new connection is closed as soon as it is accepted.
    pub fn refuse_new(&self, on: bool) {
        self.state.refuse.store(on, Ordering::Release);
    }

    /// Resets every connection carried so far (both ends see the link die).
    pub fn cut(&self) {
        for s in self.state.sockets.lock().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::Release);
        self.cut();
        // Wake the accept loop so it sees `stopped`.
        let _ = TcpStream::connect(self.addr);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, state: &State, replies: bool) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let muted = if replies {
            &state.mute_replies
        } else {
            &state.mute_requests
        };
        if muted.load(Ordering::Acquire) {
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
