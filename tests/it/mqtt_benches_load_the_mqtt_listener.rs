//! `meshmq bench connections --protocol mqtt` and `meshmq bench fanout --protocol mqtt` load a
//! broker's `mqtt://` listener with real MQTT 3.1.1 connections: every idle subscriber gets the
//! one message, and a QoS 0 and a QoS 1 fanout reach every subscriber with nothing lost or
//! duplicated. (Small runs: the numbers are for `meshmq bench`, the test checks the counts.)

use crate::common;

#[test]
fn the_connections_and_fanout_benches_speak_mqtt() {
    let r = common::bench_report(&[
        "connections",
        "--protocol",
        "mqtt",
        "--connections",
        "200",
        "--sources",
        "127.0.20.21,127.0.20.22",
    ]);
    assert_eq!(r["params"], "200 idle mqtt subscribers", "{r}");
    assert_eq!(
        r["received"], 200,
        "every idle subscriber got the message: {r}"
    );
    assert_eq!(r["lost"], 0, "{r}");
    for qos in ["0", "1"] {
        let r = common::bench_report(&[
            "fanout",
            "--protocol",
            "mqtt",
            "--qos",
            qos,
            "--subscribers",
            "5",
            "--count",
            "200",
        ]);
        assert_eq!(
            r["params"],
            format!("1P -> 5 subscribers 256B mqtt qos {qos}"),
            "{r}"
        );
        assert_eq!(
            r["received"], 1000,
            "QoS {qos}: each message to each subscriber: {r}"
        );
        assert_eq!(
            (r["lost"].as_u64(), r["duplicates"].as_u64()),
            (Some(0), Some(0)),
            "{r}"
        );
    }
    // The queue bench has no MQTT clients: a clear error, not a run.
    let out = common::run(common::meshmq().args([
        "bench",
        "queue",
        "--protocol",
        "mqtt",
        "--count",
        "10",
    ]));
    assert!(!out.status.success());
    assert!(out.stderr.contains("MQTT has no queues"), "{}", out.stderr);
}
