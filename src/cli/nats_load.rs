//! A small NATS text-protocol client for the load generator, so one generator drives meshmq
//! and a NATS server side by side (`meshmq bench queue|fanout --url nats://HOST:PORT`).
//!
//! It speaks the client half of core NATS and nothing more: INFO is read, CONNECT (not
//! verbose, no headers) and PING sent, then PUB, SUB (with a queue group for the queue bench),
//! MSG, and PING/PONG both ways. A producer pipelines PUBs and ends with a PING: the server
//! answers PONG only after it has handled every earlier PUB. A server `-ERR` ends the run with
//! its message. The decoder works on a buffer and never touches the socket; a line or a
//! payload over [`MAX_LINE`] / [`MAX_PAYLOAD`] is refused, not buffered.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::task::Poll;

use anyhow::{anyhow, bail};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use meshmq::transport::{self, IoEvent, Pump};

/// Longest protocol line accepted (INFO lines carry the server's JSON description).
pub const MAX_LINE: usize = 64 * 1024;
/// Largest payload accepted (the NATS server's default `max_payload`).
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// One server operation.
#[derive(Debug, PartialEq, Eq)]
pub enum Op {
    Info,
    /// A message for subscription `sid`.
    Msg {
        sid: u64,
        payload: Bytes,
    },
    Ping,
    Pong,
    Ok,
    Err(String),
}

/// Takes one operation off the front of `buf`: `Ok(None)` when it holds no whole one yet.
pub fn decode(buf: &mut BytesMut) -> anyhow::Result<Option<Op>> {
    let Some(end) = memchr::memmem::find(buf, b"\r\n") else {
        if buf.len() > MAX_LINE {
            bail!("a NATS protocol line longer than {MAX_LINE} bytes");
        }
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[..end])
        .map_err(|_| anyhow!("a NATS protocol line that is not UTF-8"))?;
    let (verb, rest) = line.split_once([' ', '\t']).unwrap_or((line, ""));
    let op = match verb.to_ascii_uppercase().as_str() {
        "MSG" => {
            let args: Vec<&str> = rest.split_ascii_whitespace().collect();
            let (sid, size) = match args.as_slice() {
                [_subject, sid, size] | [_subject, sid, _, size] => (*sid, *size),
                _ => bail!("a MSG line without subject, sid and size: {line:?}"),
            };
            let sid = sid
                .parse::<u64>()
                .map_err(|_| anyhow!("a MSG with a bad sid: {line:?}"))?;
            let size = size
                .parse::<usize>()
                .map_err(|_| anyhow!("a MSG with a bad size: {line:?}"))?;
            if size > MAX_PAYLOAD {
                bail!("a MSG of {size} bytes, over {MAX_PAYLOAD}");
            }
            let total = end + 2 + size + 2;
            if buf.len() < total {
                buf.reserve(total - buf.len());
                return Ok(None);
            }
            if &buf[total - 2..total] != b"\r\n" {
                bail!("a MSG payload not followed by CRLF: {line:?}");
            }
            buf.advance(end + 2);
            let payload = buf.split_to(size).freeze();
            buf.advance(2);
            return Ok(Some(Op::Msg { sid, payload }));
        }
        "INFO" => Op::Info,
        "PING" => Op::Ping,
        "PONG" => Op::Pong,
        "+OK" => Op::Ok,
        "-ERR" => Op::Err(rest.trim().trim_matches('\'').to_string()),
        _ => bail!("an unknown NATS operation: {line:?}"),
    };
    buf.advance(end + 2);
    Ok(Some(op))
}

/// `PUB subject size` and the payload, into `out`.
pub fn encode_pub(subject: &str, payload: &[u8], out: &mut BytesMut) {
    out.reserve(subject.len() + payload.len() + 32);
    out.put_slice(b"PUB ");
    out.put_slice(subject.as_bytes());
    out.put_u8(b' ');
    out.put_slice(payload.len().to_string().as_bytes());
    out.put_slice(b"\r\n");
    out.put_slice(payload);
    out.put_slice(b"\r\n");
}

/// One NATS connection: a socket with its buffers, the payloads read but not taken yet.
pub struct NatsConn {
    pump: Pump,
    inbox: VecDeque<Bytes>,
    pongs: u64,
}

impl NatsConn {
    /// Connects, reads the server's INFO, sends CONNECT and waits for the PONG of a PING (a
    /// server that refuses the connection answers -ERR instead).
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<NatsConn> {
        let stream = transport::dial(addr, None).await?;
        let mut conn = NatsConn {
            pump: Pump::new(Box::new(stream)),
            inbox: VecDeque::new(),
            pongs: 0,
        };
        conn.pump.wbuf.put_slice(
            br#"CONNECT {"verbose":false,"pedantic":false,"lang":"rust","name":"meshmq-bench","protocol":1,"headers":false}"#,
        );
        conn.pump.wbuf.put_slice(b"\r\n");
        conn.flush()
            .await
            .map_err(|e| anyhow!("nats://{addr}: {e}"))?;
        Ok(conn)
    }

    /// Buffers a PUB (it goes out at the next `flush_to`, `flush` or `next_message`).
    pub fn publish(&mut self, subject: &str, payload: &[u8]) {
        encode_pub(subject, payload, &mut self.pump.wbuf);
    }

    /// Bytes buffered and not yet written.
    pub fn buffered(&self) -> usize {
        self.pump.wbuf.len()
    }

    /// Subscribes (`SUB subject [queue] sid`) and waits until the server has it.
    pub async fn subscribe(
        &mut self,
        subject: &str,
        queue: Option<&str>,
        sid: u64,
    ) -> anyhow::Result<()> {
        let line = match queue {
            Some(q) => format!("SUB {subject} {q} {sid}\r\n"),
            None => format!("SUB {subject} {sid}\r\n"),
        };
        self.pump.wbuf.put_slice(line.as_bytes());
        self.flush().await
    }

    /// Sends a PING and waits for its PONG: the server has then handled everything before it.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        self.pump.wbuf.put_slice(b"PING\r\n");
        let want = self.pongs + 1;
        while self.pongs < want {
            let ev = self.pump.next_event(true, 0, |_| Poll::Pending).await?;
            self.on_event(ev)?;
        }
        Ok(())
    }

    /// Writes until fewer than `below` bytes wait to be written (reading meanwhile, so an
    /// -ERR is seen and the server is never stuck writing to us).
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

    /// The next message's payload; pending writes go out meanwhile.
    pub async fn next_message(&mut self) -> anyhow::Result<Bytes> {
        loop {
            if let Some(m) = self.inbox.pop_front() {
                return Ok(m);
            }
            let ev = self.pump.next_event(true, 0, |_| Poll::Pending).await?;
            self.on_event(ev)?;
        }
    }

    fn on_event(&mut self, ev: IoEvent) -> anyhow::Result<()> {
        match ev {
            IoEvent::Read => loop {
                match decode(&mut self.pump.rbuf)? {
                    Some(Op::Msg { payload, .. }) => self.inbox.push_back(payload),
                    Some(Op::Ping) => self.pump.wbuf.put_slice(b"PONG\r\n"),
                    Some(Op::Pong) => self.pongs += 1,
                    Some(Op::Info | Op::Ok) => {}
                    Some(Op::Err(e)) => bail!("the NATS server sent -ERR: {e}"),
                    None => return Ok(()),
                }
            },
            IoEvent::Closed => bail!("the NATS server closed the connection"),
            IoEvent::Drained | IoEvent::Wake => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(bytes: &[u8]) -> Vec<Op> {
        let mut buf = BytesMut::from(bytes);
        let mut ops = Vec::new();
        while let Some(op) = decode(&mut buf).unwrap() {
            ops.push(op);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        ops
    }

    #[test]
    fn server_operations_decode() {
        let ops = all(
            b"INFO {\"server_id\":\"x\"}\r\nMSG a.b 7 5\r\nhello\r\nMSG a.b 8 r.1 0\r\n\r\nPING\r\nPONG\r\n+OK\r\n-ERR 'Unknown Subject'\r\n",
        );
        assert_eq!(
            ops,
            vec![
                Op::Info,
                Op::Msg {
                    sid: 7,
                    payload: Bytes::from_static(b"hello")
                },
                Op::Msg {
                    sid: 8,
                    payload: Bytes::new()
                },
                Op::Ping,
                Op::Pong,
                Op::Ok,
                Op::Err("Unknown Subject".into()),
            ]
        );
    }

    #[test]
    fn a_payload_with_crlf_inside_is_taken_by_its_size() {
        let ops = all(b"MSG s 1 6\r\na\r\nb\r\n\r\n");
        assert_eq!(
            ops,
            vec![Op::Msg {
                sid: 1,
                payload: Bytes::from_static(b"a\r\nb\r\n")
            }]
        );
    }

    #[test]
    fn a_pub_round_trips_as_the_server_would_deliver_it() {
        let mut out = BytesMut::new();
        encode_pub("bench.q", b"xyz", &mut out);
        assert_eq!(&out[..], b"PUB bench.q 3\r\nxyz\r\n");
        let delivered = [b"MSG bench.q 1".as_slice(), &out[11..]].concat();
        assert_eq!(
            all(&delivered),
            vec![Op::Msg {
                sid: 1,
                payload: Bytes::from_static(b"xyz")
            }]
        );
    }

    #[test]
    fn truncated_at_every_byte_needs_more() {
        let whole = b"MSG subj 3 10\r\n0123456789\r\n";
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            assert_eq!(decode(&mut buf).unwrap(), None, "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing taken at {cut}");
        }
    }

    #[test]
    fn bad_input_is_refused() {
        for bad in [
            b"MSG s x 3\r\nabc\r\n".as_slice(),
            b"MSG s 1 zz\r\n",
            b"MSG s 1 3\r\nabcd\r\n",
            b"MSG s\r\n",
            b"HELLO\r\n",
            b"MSG s 1 99999999999\r\n",
        ] {
            assert!(decode(&mut BytesMut::from(bad)).is_err(), "{bad:?}");
        }
        let long = vec![b'x'; MAX_LINE + 1];
        assert!(decode(&mut BytesMut::from(&long[..])).is_err());
    }
}
