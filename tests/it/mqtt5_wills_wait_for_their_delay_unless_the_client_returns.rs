//! An MQTT 5 will with a will delay interval waits for it (MQTT 5 §3.1.3.2.2): paho-mqtt
//! clients whose sessions outlive their connections vanish, and a watcher sees each will only
//! after its delay — never, when the client reconnected to its session first; as soon as the
//! session ends, when it ends before the delay (its expiry interval is shorter, or the client
//! came back with a clean start).

use crate::common_stomp;

use common_stomp::{python_in, Topology};
use serde_json::json;

#[test]
fn delayed_wills_come_after_their_delay_or_the_sessions_end_and_never_after_a_return() {
    let b = Topology::new().listener("mqtt", "mqtt", "").start();
    let r = python_in(
        "mqtt_py",
        "paho_will_delay.py",
        &[b.port("mqtt").to_string()],
    );
    let after = |name: &str| {
        r["arrived"][name]
            .as_f64()
            .unwrap_or_else(|| panic!("{name}: no arrival in {r}"))
    };
    assert!(
        after("late") >= 1.5,
        "the will waited for its 2 s delay: {r}"
    );
    assert_eq!(
        r["back_seen"],
        json!(false),
        "no will for a client that returned to its session within the delay: {r}"
    );
    assert!(
        after("brief") < 20.0,
        "the session's 1 s expiry ended it before the 30 s delay, and its will came then: {r}"
    );
    assert!(
        after("restart") < 20.0,
        "a clean start ended the session before the 30 s delay, and its will came then: {r}"
    );
}
