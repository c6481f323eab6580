//! A burst that healthy topic subscribers will absorb is delivered whole on a broker with
//! default settings: one producer sends 10,000 messages of 256 B as fast as it can to 50
//! subscribers, over STOMP and over the native protocol, and every subscriber gets every
//! message once — none is dropped as "slow" for merely being behind during the burst (the
//! slow-subscriber limit is in bytes, 64 MiB by default). Driven by `meshmq bench fanout`,
//! the load generator users run.

use crate::common;

use common::{Broker, Config};

const SUBSCRIBERS: u64 = 50;
const COUNT: u64 = 10_000;

/// Runs `meshmq bench fanout` against `url`; returns its JSON report.
fn fanout(url: &str, protocol: &str) -> serde_json::Value {
    common::bench_report(&[
        "fanout",
        "--url",
        url,
        "--protocol",
        protocol,
        "--subscribers",
        &SUBSCRIBERS.to_string(),
        "--count",
        &COUNT.to_string(),
        "--size",
        "256",
    ])
}

#[test]
fn a_burst_reaches_every_healthy_subscriber_over_stomp_and_native() {
    let stomp_port = common::free_ports(1)[0];
    let broker = Broker::start(&Config::new().section(&format!(
        "[[group.member.listener]]\nurl = \"stomp://127.0.0.1:{stomp_port}\""
    )));
    let mut dropped_before = 0;
    for (url, protocol) in [
        (format!("stomp://127.0.0.1:{stomp_port}"), "stomp"),
        (broker.url(), "native"),
    ] {
        let report = fanout(&url, protocol);
        assert_eq!(
            report["received"].as_u64(),
            Some(SUBSCRIBERS * COUNT),
            "{protocol}: every subscriber gets every message: {report}"
        );
        assert_eq!(report["lost"].as_u64(), Some(0), "{protocol}: {report}");
        assert_eq!(
            report["duplicates"].as_u64(),
            Some(0),
            "{protocol}: {report}"
        );
        let dropped = broker.destination("topic://bench.fanout").dropped;
        assert_eq!(
            dropped, dropped_before,
            "{protocol}: the broker dropped none as slow"
        );
        dropped_before = dropped;
    }
}
