//! Fuzz target `mqtt`: the path an MQTT connection reads its client's bytes through, and its
//! seeds.

use bytes::BytesMut;

use super::measure::{proportional, within};

/// The MQTT path of a client connection: version detection, the CONNECT (at the 64 KiB a
/// client may send before logging in), then packets at a 256 KiB `max_frame_size`, through
/// the parsers and the error mapping the connection uses. Properties: no panic, and no
/// allocation past the limit in force plus what the input itself explains.
pub fn mqtt(data: &[u8]) {
    const HANDSHAKE: u32 = 64 << 10;
    const MAX: u32 = 256 << 10;
    within(
        "mqtt::read_client_bytes",
        MAX as usize + proportional(data.len()),
        || {
            let mut buf = BytesMut::from(data);
            let _ = crate::server::read_mqtt_client_bytes(&mut buf, HANDSHAKE, MAX);
        },
    );
}

pub(super) fn mqtt_seeds() -> Vec<Vec<u8>> {
    // Written by hand from MQTT 3.1.1 and 5 (meshmq has no client-side MQTT encoder): a
    // CONNECT, a SUBSCRIBE, a QoS 1 PUBLISH, a PUBACK, PINGREQ, DISCONNECT.
    let v3 = [
        &b"\x10\x18\x00\x04MQTT\x04\x02\x00\x3c\x00\x0cmeshmq-fuzz1"[..],
        b"\x82\x0a\x00\x01\x00\x05a/b/#\x01",
        b"\x32\x0b\x00\x03a/b\x00\x02hello",
        b"\x40\x02\x00\x07",
        b"\xc0\x00",
        b"\xe0\x00",
    ]
    .concat();
    let v5 = [
        &b"\x10\x19\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x0cmeshmq-fuzz5"[..],
        b"\x82\x0b\x00\x01\x00\x00\x05a/+/c\x01",
        b"\x32\x0c\x00\x03a/b\x00\x02\x00hello",
        b"\xc0\x00",
        b"\xe0\x01\x04",
    ]
    .concat();
    let v31 = b"\x10\x1a\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x0cmeshmq-fuzz3".to_vec();
    vec![v3, v5, v31]
}
