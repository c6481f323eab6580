//! Real STOMP clients work against meshmq unchanged: stomp.py (from PyPI) with queues in every
//! acknowledgement mode, topics, transactions, receipts, heart-beats, temporary-queue
//! request/reply, durable subscriptions, and STOMP 1.0, 1.1 and 1.2.

use crate::common_stomp;

use common_stomp::{python, Broker, RawStomp, Topology};
use meshmq::stomp::Command;
use serde_json::{json, Value};

/// Heart-beats this fast keep the heart-beat tests short; they do not bother the others.
const HEARTBEAT_MS: u64 = 500;

fn broker() -> Broker {
    Topology::new()
        .broker(&format!("heartbeat = \"{HEARTBEAT_MS}ms\""))
        .listener("stomp", "stomp", "")
        .start()
}

fn run(broker: &Broker, script: &str, extra: &[&str]) -> Value {
    let mut args = vec![broker.port("stomp").to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    python(script, &args)
}

#[test]
fn queues_acknowledge_individually_cumulatively_and_redeliver_nacked_messages() {
    let b = broker();
    let r = run(&b, "queue_acks.py", &[]);
    assert_eq!(r["individual_first"], json!(["m1", "m2", "m3"]));
    assert_eq!(r["individual_first_redelivered"], json!([null, null, null]));
    assert_eq!(r["nacked"], json!({"body": "m2", "redelivered": "true"}));
    assert_eq!(
        r["individual_left"],
        json!(["marker"]),
        "acknowledged messages must never come back"
    );
    assert_eq!(r["cumulative_first"], json!(["c1", "c2", "c3", "c4", "c5"]));
    assert_eq!(
        r["cumulative_returned"],
        json!([["c4", "true"], ["c5", "true"], ["marker", null]]),
        "an ACK in client mode covers every earlier message, and only those"
    );
}

#[test]
fn a_topic_delivers_everything_in_order_to_each_subscriber() {
    let b = broker();
    let r = run(&b, "topics.py", &[]);
    let expected: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    assert_eq!(r["subscribers"], json!([expected, expected, expected]));
}

#[test]
fn transactions_apply_sends_and_acks_at_commit_and_undo_them_at_abort() {
    let b = broker();
    let r = run(&b, "transactions.py", &[]);
    assert_eq!(
        r["before_commit"],
        json!(["outside-1"]),
        "sends inside an open transaction must stay invisible"
    );
    assert_eq!(r["after_commit"], json!(["in-tx-1", "in-tx-2"]));
    assert_eq!(
        r["after_abort"],
        json!(["outside-2"]),
        "an aborted send must never appear"
    );
    assert_eq!(
        r["ack_aborted"],
        json!({"body": "to-ack", "redelivered": "true"}),
        "an ACK inside an aborted transaction is undone"
    );
    assert_eq!(
        r["left"],
        json!(["marker"]),
        "an ACK inside a committed transaction holds"
    );
}

#[test]
fn every_frame_that_asks_for_a_receipt_gets_it_in_order() {
    let b = broker();
    let r = run(&b, "receipts.py", &[]);
    let every_kind = json!([
        "r-subscribe",
        "r-send-a",
        "r-send-b",
        "r-ack",
        "r-nack",
        "r-begin",
        "r-send-in-tx",
        "r-commit",
        "r-begin-2",
        "r-abort",
        "r-unsubscribe",
        "r-disconnect"
    ]);
    assert_eq!(r["asked"], every_kind);
    assert_eq!(r["received"], r["asked"]);
}

#[test]
fn a_client_that_keeps_beating_stays_connected() {
    let b = broker();
    let interval = (2 * HEARTBEAT_MS).to_string();
    // Idle through three of the silences the broker allows (two of the client's intervals).
    let idle = format!("{}", 3.0 * 2.0 * (2 * HEARTBEAT_MS) as f64 / 1000.0);
    let r = run(&b, "heartbeat_keeps_alive.py", &[&interval, &idle]);
    assert_eq!(r["negotiated"], json!(format!("{interval},{interval}")));
    assert_eq!(r["connected_after_idle"], json!(true));
    assert_eq!(r["errors"], json!([]));
    assert_eq!(r["body"], json!("still-here"));
    assert!(
        r["heartbeats_from_broker"].as_u64().unwrap_or(0) > 0,
        "the broker beats to an idle client that asked for it: {r}"
    );
}

#[test]
fn a_client_that_stops_beating_is_dropped_after_two_of_its_intervals() {
    // stomp.py always keeps its promise, so a raw socket makes one and then falls silent.
    let b = broker();
    let mut c = RawStomp::open(b.addr("stomp"));
    let connected = c.handshake(&[("heart-beat", &format!("{HEARTBEAT_MS},0"))]);
    assert_eq!(connected.command, Command::Connected);
    // The client beats every 500 ms at best; the broker wants one at least every 500 ms.
    assert_eq!(
        connected.header("heart-beat"),
        Some(format!("0,{HEARTBEAT_MS}").as_str())
    );
    let message = c.expect_error_and_close();
    assert_eq!(
        message,
        format!(
            "nothing received from the client for {:?} (heartbeats)",
            std::time::Duration::from_millis(2 * HEARTBEAT_MS)
        ),
        "the broker allows exactly two intervals of silence"
    );
}

#[test]
fn request_reply_goes_through_a_temporary_queue() {
    let b = broker();
    let r = run(&b, "request_reply.py", &[]);
    assert_eq!(r["request_body"], json!("ping"));
    let reply_to = r["responder_saw_reply_to"].as_str().unwrap_or_default();
    assert!(
        reply_to.starts_with("/remote-temp-queue/") && reply_to.ends_with(".replies"),
        "another connection sees a temporary queue as /remote-temp-queue/<connection>.<name>, got {reply_to:?}"
    );
    assert_eq!(r["reply_body"], json!("pong"));
    assert_eq!(r["reply_correlation_id"], json!("corr-1"));
    assert_eq!(
        r["reply_destination"],
        json!("/temp-queue/replies"),
        "its owner sees its temporary queue under the name it gave"
    );
}

#[test]
fn a_durable_topic_subscription_keeps_messages_while_its_client_is_away() {
    let b = broker();
    let r = run(&b, "durable.py", &[]);
    assert_eq!(r["online"], json!(["while-online"]));
    assert_eq!(r["offline"], json!(["offline-1", "offline-2"]));
    assert_eq!(
        r["after_removal_first"],
        json!(["fresh"]),
        "UNSUBSCRIBE with the subscription name deletes the durable subscription"
    );
}

#[test]
fn stomp_1_0_1_1_and_1_2_clients_connect_and_acknowledge_their_way() {
    let b = broker();
    for version in ["1.0", "1.1", "1.2"] {
        let r = run(&b, "versions.py", &[version]);
        assert_eq!(r["version"], json!(version), "{r}");
        assert!(
            r["server"].as_str().unwrap_or("").starts_with("meshmq/"),
            "{r}"
        );
        assert_eq!(r["bodies"], json!(["first", "second"]), "{version}");
        assert_eq!(r["message_ids_present"], json!(true), "{version}");
        if version != "1.0" {
            assert_eq!(
                r["nacked"],
                json!({"body": "to-nack", "redelivered": "true"}),
                "{version}"
            );
        }
        assert_eq!(r["left"], json!(["marker"]), "{version}: acks must hold");
    }
}
