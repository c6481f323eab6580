//! A login flood costs the broker bounded memory and leaves logged-in clients served: four
//! processes of 50 threads (200 source addresses) send thousands of STOMP CONNECTs with a real
//! user's name and wrong passcodes, for 15 s, against a broker with the default settings and a
//! `meshmq passwd` hash (argon2 at 19 MiB per verification). Meanwhile the broker's resident
//! memory stays within `RSS_GROWTH` of where it started, a logged-in STOMP client's round
//! trips (SEND to a queue it subscribes to, until the MESSAGE) stay under `RTT_P99` at the
//! 99th percentile, and the refusals are counted: bad passwords as auth failures, logins
//! turned away unverified (busy slots, backed-off addresses) as refused connections.

use crate::common_stomp;

use common_stomp::{hash, python, Topology};

const USER: &str = "good";
const PASSWORD: &str = "the-good-password";
/// How far the broker's RSS may grow over its size before the flood.
const RSS_GROWTH: u64 = 256 << 20;
/// The 99th percentile of the good client's round trips.
const RTT_P99: f64 = 0.5;

#[test]
fn a_login_flood_keeps_rss_and_a_good_clients_round_trips_bounded() {
    let broker = Topology::new()
        .security(&format!(
            "[security]\nallow_anonymous = false\n\n[[security.user]]\nname = \"{USER}\"\npassword_hash = \"{}\"\n",
            hash(PASSWORD)
        ))
        .listener("stomp", "stomp", "")
        .start();
    let addr = broker.addr("stomp");
    let result = python(
        "login_flood.py",
        &[
            addr.ip().to_string(),
            addr.port().to_string(),
            broker.pid().to_string(),
            USER.into(),
            PASSWORD.into(),
            "4".into(),
            "50".into(),
            "15".into(),
        ],
    );
    println!("login flood: {result}");
    let flood = &result["flood"];
    let attempts = flood["attempts"].as_u64().expect("attempts");
    assert!(attempts >= 2000, "a flood of thousands: {result}");
    assert_eq!(flood["connected"], 0, "no wrong password got in: {result}");
    let (start, max) = (
        result["rss_start"].as_u64().expect("rss_start"),
        result["rss_max"].as_u64().expect("rss_max"),
    );
    assert!(
        max <= start + RSS_GROWTH,
        "RSS grew from {} MiB to {} MiB (bound: +{} MiB): {result}",
        start >> 20,
        max >> 20,
        RSS_GROWTH >> 20
    );
    let p99 = result["rtt_p99"].as_f64().expect("rtt_p99");
    assert!(
        p99 <= RTT_P99,
        "the good client's p99 round trip was {p99:.3}s (bound {RTT_P99}s): {result}"
    );
    assert!(result["round_trips"].as_u64().expect("round_trips") >= 100);

    let failed = broker.metric("meshmq_auth_failures_total", &[("protocol", "stomp")]);
    let turned_away = broker.metric(
        "meshmq_connections_refused_total",
        &[("reason", "login_backoff")],
    ) + broker.metric(
        "meshmq_connections_refused_total",
        &[("reason", "login_busy")],
    );
    assert!(failed > 0.0, "{result}");
    assert!(
        turned_away > 0.0,
        "logins were turned away without verifying: {result}"
    );
}
