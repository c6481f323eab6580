//! Once the broker has confirmed a DISCONNECT, the client id is free: a client that reconnects
//! the moment it reads the receipt (to pick up its durable subscriptions) gets in, on STOMP and
//! on the native protocol alike.

use crate::common_stomp;

use common_stomp::{native_url, runtime, RawStomp, Topology};
use meshmq::client::{Client, ClientOptions};
use meshmq::stomp::{Command, Frame};

/// Each round races the reconnect against the broker's cleanup; enough rounds that a broker
/// which frees the id only after the socket closes cannot pass by luck.
const ROUNDS: usize = 50;

#[test]
fn a_stomp_client_reconnects_with_its_client_id_right_after_the_disconnect_receipt() {
    let b = Topology::new().listener("stomp", "stomp", "").start();
    for round in 0..ROUNDS {
        let mut c = RawStomp::open(b.addr("stomp"));
        let answer = c.handshake(&[("client-id", "returning")]);
        assert_eq!(
            answer.command,
            Command::Connected,
            "round {round}: {:?}",
            answer.header("message")
        );
        c.call(Frame::new(Command::Disconnect), "bye");
    }
}

#[test]
fn a_native_client_reconnects_with_its_client_id_right_after_close() {
    let b = Topology::new().listener("native", "tcp", "").start();
    let rt = runtime();
    let options = ClientOptions {
        client_id: Some("returning".into()),
        ..ClientOptions::default()
    };
    for round in 0..ROUNDS {
        let c = rt
            .block_on(Client::connect(&native_url(&b, "native"), options.clone()))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        rt.block_on(c.close()).expect("close");
    }
}
