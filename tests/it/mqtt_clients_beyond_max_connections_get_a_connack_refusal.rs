//! An MQTT listener serves at most `max_connections` clients: one more gets a CONNACK refusal
//! of its own version — MQTT 3.1.1 return code 3 (server unavailable), MQTT 5 reason 0x97
//! (quota exceeded) — and then the close, is counted in
//! `meshmq_connections_refused_total{reason="max_connections"}`, and the admitted clients keep
//! publishing and receiving; a slot freed by a leaving client admits a new one.

use crate::common_mqtt;
use crate::common_stomp;

use common_mqtt::{status, wait_for, RawMqtt};
use common_stomp::{python_in, Topology};
use serde_json::json;

const MAX: usize = 4;

#[test]
fn one_more_mqtt_client_than_max_connections_gets_a_connack_refusal_and_the_close() {
    let b = Topology::new()
        .listener("mqtt", "mqtt", &format!("max_connections = {MAX}"))
        .start();
    let addr = b.addr("mqtt");
    let connections = || status(b.admin)["connections"].as_u64().unwrap_or(u64::MAX);
    let refused = || {
        b.metric(
            "meshmq_connections_refused_total",
            &[("reason", "max_connections")],
        )
    };

    // Byte for byte: the refusal is the CONNACK's code, then the broker closes the socket.
    let mut held: Vec<RawMqtt> = (0..MAX)
        .map(|i| {
            let (c, code) = RawMqtt::connect(addr, i % 2 == 1, 30, None);
            assert_eq!(code, 0, "client {i} is admitted");
            c
        })
        .collect();
    for (v5, code) in [(false, 3), (true, 0x97)] {
        let (mut extra, got) = RawMqtt::connect(addr, v5, 30, None);
        assert_eq!(
            got,
            code,
            "MQTT {}: the refusal's code",
            if v5 { 5 } else { 3 }
        );
        assert_eq!(extra.next(), None, "and then the close");
    }
    assert_eq!(refused(), 2.0);
    assert_eq!(
        connections(),
        MAX as u64,
        "the refused ones were never served"
    );
    for (i, c) in held.iter_mut().enumerate() {
        c.ping();
        assert_eq!(
            c.next(),
            Some(common_mqtt::Reply::PingResp),
            "client {i} is still served"
        );
    }
    held.clear();
    wait_for("the held slots are free", || connections() == 0);

    // paho, both versions: the admitted clients (half of each version) keep working.
    let r = python_in(
        "mqtt_py",
        "paho_limit.py",
        &[addr.port().to_string(), MAX.to_string()],
    );
    assert_eq!(
        r["refused"],
        json!({"3.1.1": ["Server unavailable", 136], "5": ["Quota exceeded", 151]}),
        "paho reads MQTT 3's return code 3 as the reason of that name: {r}"
    );
    assert_eq!(
        r["echoed"],
        json!((0..MAX).map(|i| format!("held-{i}")).collect::<Vec<_>>()),
        "every admitted client still gets its own message"
    );
    assert_eq!(refused(), 4.0);
}
