//! A minimal MQTT 3.1.1 client for `meshmq bench`: CONNECT, SUBSCRIBE, PUBLISH at QoS 0 or 1
//! and the acknowledgements the broker expects, over rmqtt-codec's packets and a plain TCP
//! socket (optionally bound to a source address) — enough to load an `mqtt://` listener with
//! many idle subscribers or a fanout, nothing more. Every read waits at most [`READ_LIMIT`].

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v3;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::{Decoder, Encoder};

/// How long any one read may wait.
const READ_LIMIT: Duration = Duration::from_secs(60);

pub struct MqttConn {
    stream: TcpStream,
    codec: v3::Codec,
    rbuf: BytesMut,
    wbuf: BytesMut,
    next_id: u16,
}

impl MqttConn {
    /// Connects (from `source` when given) with a clean session and no keep-alive.
    pub async fn connect(
        addr: SocketAddr,
        source: Option<IpAddr>,
        client_id: &str,
    ) -> anyhow::Result<MqttConn> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("bind {ip}"))?;
        }
        let stream = socket
            .connect(addr)
            .await
            .with_context(|| format!("connect to mqtt://{addr}"))?;
        stream.set_nodelay(true)?;
        let mut conn = MqttConn {
            stream,
            codec: v3::Codec::new(0),
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            next_id: 0,
        };
        conn.send(v3::Packet::Connect(Box::new(v3::Connect {
            protocol: Default::default(),
            clean_session: true,
            keep_alive: 0,
            last_will: None,
            client_id: ByteString::from(client_id),
            username: None,
            password: None,
            cert: None,
        })))
        .await?;
        match conn.read().await? {
            v3::Packet::ConnectAck(a)
                if a.return_code == v3::ConnectAckReason::ConnectionAccepted =>
            {
                Ok(conn)
            }
            other => bail!("mqtt://{addr}: the CONNECT was answered with {other:?}"),
        }
    }

    fn packet_id(&mut self) -> NonZeroU16 {
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        NonZeroU16::new(self.next_id).unwrap_or(NonZeroU16::MIN)
    }

    async fn send(&mut self, packet: v3::Packet) -> anyhow::Result<()> {
        self.codec
            .encode(packet, &mut self.wbuf)
            .map_err(|e| anyhow!("encode: {e}"))?;
        self.stream.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        Ok(())
    }

    async fn read(&mut self) -> anyhow::Result<v3::Packet> {
        loop {
            if let Some((p, _)) = self
                .codec
                .decode(&mut self.rbuf)
                .map_err(|e| anyhow!("decode: {e}"))?
            {
                return Ok(p);
            }
            let n = tokio::time::timeout(READ_LIMIT, self.stream.read_buf(&mut self.rbuf))
                .await
                .map_err(|_| anyhow!("the broker said nothing for {READ_LIMIT:?}"))??;
            if n == 0 {
                bail!("the broker closed the connection");
            }
        }
    }

    /// Subscribes to `filter` and waits for the SUBACK (which must grant it).
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> anyhow::Result<()> {
        let packet_id = self.packet_id();
        self.send(v3::Packet::Subscribe {
            packet_id,
            topic_filters: vec![(ByteString::from(filter), qos)],
        })
        .await?;
        loop {
            match self.read().await? {
                v3::Packet::SubscribeAck {
                    packet_id: id,
                    status,
                } if id == packet_id => {
                    return match status.first() {
                        Some(v3::SubscribeReturnCode::Success(_)) => Ok(()),
                        other => bail!("SUBSCRIBE {filter} refused: {other:?}"),
                    };
                }
                _ => continue,
            }
        }
    }

    /// Publishes; at QoS 1 waits for the PUBACK.
    pub async fn publish(&mut self, topic: &str, payload: Bytes, qos: QoS) -> anyhow::Result<()> {
        let packet_id = (qos != QoS::AtMostOnce).then(|| self.packet_id());
        self.send(v3::Packet::Publish(Box::new(Publish {
            dup: false,
            retain: false,
            qos,
            topic: ByteString::from(topic),
            packet_id,
            payload,
            properties: None,
        })))
        .await?;
        let Some(id) = packet_id else {
            return Ok(());
        };
        loop {
            match self.read().await? {
                v3::Packet::PublishAck { packet_id } if packet_id == id => return Ok(()),
                _ => continue,
            }
        }
    }

    /// The next message delivered (acknowledged at once when it came at QoS 1).
    pub async fn next_message(&mut self) -> anyhow::Result<Box<Publish>> {
        loop {
            if let v3::Packet::Publish(p) = self.read().await? {
                if let (QoS::AtLeastOnce, Some(packet_id)) = (p.qos, p.packet_id) {
                    self.send(v3::Packet::PublishAck { packet_id }).await?;
                }
                return Ok(p);
            }
        }
    }
}
