//! `meshmq bench connections --protocol stomp` loads a broker's `stomp://` listener with real
//! STOMP 1.2 connections: every idle subscriber (from several source addresses) gets the one
//! message the bench sends, and the report counts them. (A small run: the memory per
//! connection and the timings are for `meshmq bench`, the test checks the counts.)

use crate::common;

#[test]
fn every_idle_stomp_subscriber_gets_the_one_message() {
    let r = common::bench_report(&[
        "connections",
        "--protocol",
        "stomp",
        "--connections",
        "200",
        "--sources",
        "127.0.20.23,127.0.20.24",
    ]);
    assert_eq!(r["params"], "200 idle stomp subscribers", "{r}");
    assert_eq!(
        r["received"], 200,
        "every idle subscriber got the message: {r}"
    );
    assert_eq!(r["lost"], 0, "{r}");
    assert!(
        r["extra"]["fanout_to_all_ms"].is_number(),
        "the message reached all of them: {r}"
    );
}
