//! A small STOMP 1.2 client for the load generator, built on meshmq's own codec
//! (`meshmq::stomp`) and I/O pump (`meshmq::transport`).
//!
//! It is made for throughput, not for applications: a producer pipelines SENDs without
//! receipts and asks for one receipt on its last frame (which the broker answers after every
//! earlier frame); a consumer subscribes with `ack:client` and a prefetch window
//! (`activemq.prefetchSize`) and acknowledges cumulatively every half window. An ERROR frame
//! from the broker ends the run with its message.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::task::Poll;

use anyhow::bail;
use meshmq::stomp::{self, Command, Decoded, Decoder, Frame, Limits, Version};
use meshmq::transport::{self, IoEvent, Pump};

const VERSION: Version = Version::V1_2;

/// One STOMP connection: a socket with its buffers, the frames read but not taken yet.
pub struct StompConn {
    pump: Pump,
    decoder: Decoder,
    inbox: VecDeque<Frame>,
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
