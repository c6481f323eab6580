//! A persistent MQTT session resumes its QoS 2 deliveries in flight as the spec asks (MQTT
//! 3.1.1 and 5 §4.4): a paho-mqtt subscriber whose connection is cut in the middle of a QoS 2
//! delivery and which reconnects with its session gets the message handed to its application
//! exactly once — when the cut came after the broker took its PUBREC, the PUBREL comes again on
//! the new connection (the message is not lost); when the cut came before, the PUBLISH comes
//! again with the packet id it had.

use crate::common_stomp;

use common_stomp::{python_in, Topology};
use serde_json::Value;

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("a list: {v}"))
        .iter()
        .map(|s| s.to_string().trim_matches('"').to_string())
        .collect()
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("a list: {v}"))
        .iter()
        .map(|i| i.as_u64().expect("a packet id"))
        .collect()
}

#[test]
fn a_qos2_delivery_cut_mid_handshake_reaches_the_application_once_after_a_reconnect() {
    let broker = Topology::new().listener("mqtt", "mqtt", "").start();
    let port = broker.port("mqtt").to_string();
    for version in ["3.1.1", "5"] {
        for cut in ["pubrec", "publish"] {
            let r = python_in(
                "mqtt_py",
                "paho_qos2_resume.py",
                &[port.clone(), version.to_string(), cut.to_string()],
            );
            let what = format!("MQTT {version}, cut after the {cut}: {r}");
            assert_eq!(r["cuts"], 1, "{what}");
            assert_eq!(
                r["connects"].as_array().map(|c| c.last().cloned()),
                Some(Some(Value::Bool(true))),
                "the reconnect resumed the session: {what}"
            );
            assert_eq!(
                strings(&r["got"]),
                ["warm-up-0", "warm-up-1", "warm-up-2", "first", "marker"],
                "each message handed to the application once, in order: {what}"
            );
            let first = ids(&r["first_ids"]);
            match cut {
                "pubrec" => {
                    assert_eq!(first.len(), 1, "the message is not sent again: {what}");
                    assert!(
                        ids(&r["pubrel_ids"]).contains(&first[0]),
                        "its PUBREL came on the new connection: {what}"
                    );
                }
                _ => assert!(
                    first.len() == 2 && first[0] == first[1],
                    "sent again with the packet id it had: {what}"
                ),
            }
        }
    }
}
