//! An MQTT 5 subscription selects with a JMS selector carried as the SUBSCRIBE's `selector`
//! user property, through the same pipeline as STOMP's `selector` header: a paho subscriber
//! gets only the matching messages of STOMP (header) and MQTT 5 (user property) producers, on
//! a topic and as a member of a `$share` group (whose queue it takes only matches from); on an
//! edge, its demand carries the selector to the hub, which forwards only what matches (the
//! connector's `forwarded` count shows it); a selector that does not parse is a SUBACK 0x83
//! with the parser's reason, counted in `meshmq_bad_selectors_total`, and subscribes nothing;
//! and a persistent session's subscription keeps its selector across `kill -9` restarts.

use crate::common_mqtt;
use crate::common_stomp;

use std::collections::BTreeSet;

use common_mqtt::{paho_session, received_payloads, remote_demand, status, TwoGroups};
use common_stomp::{python_in, Topology};
use serde_json::{json, Value};

/// Six STOMP sends to `/topic/sensors.a.temp` and six MQTT 5 publishes to `sensors/b/temp`,
/// each half `hot` and half `cold`: the plan's `stomp` and `mqtt` parts.
fn producers(stomp_port: u16, mqtt_port: u16) -> (Value, Value) {
    let kind = |i: usize| if i % 2 == 0 { "hot" } else { "cold" };
    let stomp: Vec<Value> = (0..6)
        .map(|i| json!(["/topic/sensors.a.temp", format!("s{i}"), kind(i)]))
        .collect();
    let mqtt: Vec<Value> = (0..6)
        .map(|i| json!(["sensors/b/temp", format!("m{i}"), kind(i)]))
        .collect();
    (
        json!({"port": stomp_port, "messages": stomp}),
        json!({"port": mqtt_port, "messages": mqtt}),
    )
}

fn hot() -> BTreeSet<String> {
    ["s0", "s2", "s4", "m0", "m2", "m4"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn everything() -> BTreeSet<String> {
    (0..6)
        .flat_map(|i| [format!("s{i}"), format!("m{i}")])
        .collect()
}

/// What subscriber `name` got: its payloads, each checked to carry the kind it was sent with
/// (the header or user property travels as an MQTT 5 user property).
fn payloads(r: &Value, name: &str) -> Vec<String> {
    r["got"][name]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: no messages in {r}"))
        .iter()
        .map(|m| {
            let payload = m[1].as_str().expect("payload").to_string();
            let n: usize = payload[1..].parse().expect("numbered");
            let kind = if n % 2 == 0 { "hot" } else { "cold" };
            assert_eq!(m[2], json!(kind), "{name}: {m} keeps its kind");
            payload
        })
        .collect()
}

fn set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

fn plan(v: Value) -> Value {
    python_in("mqtt_py", "paho_selector.py", &[v.to_string()])
}

#[test]
fn a_paho_selector_takes_only_matches_on_a_topic_and_in_a_share_group() {
    let b = Topology::new()
        .listener("mqtt", "mqtt", "")
        .listener("stomp", "stomp", "")
        .start();
    let mqtt = b.port("mqtt");
    let (stomp, publish) = producers(b.port("stomp"), mqtt);
    let r = plan(json!({
        "subscribers": [
            {"name": "hot", "port": mqtt, "filter": "sensors/#", "selector": "kind = 'hot'"},
            {"name": "all", "port": mqtt, "filter": "sensors/#", "selector": null},
            {"name": "share-hot", "port": mqtt, "filter": "$share/g/sensors/#",
             "selector": "kind = 'hot'"},
            {"name": "share-any", "port": mqtt, "filter": "$share/g/sensors/#",
             "selector": null},
        ],
        "stomp": stomp,
        "mqtt": publish,
        // hot: 6, all: 12, the share group: 12 between its two members.
        "expect": 30,
    }));
    for name in ["hot", "all", "share-hot", "share-any"] {
        assert_eq!(r["granted"][name], json!([1]), "{name}: {r}");
    }
    let got_hot = payloads(&r, "hot");
    assert_eq!(got_hot.len(), 6, "each hot message once: {got_hot:?}");
    assert_eq!(set(&got_hot), hot(), "the topic subscriber with a selector");
    let all = payloads(&r, "all");
    assert_eq!(all.len(), 12);
    assert_eq!(
        set(&all),
        everything(),
        "the subscriber without one gets all"
    );
    let share_hot = payloads(&r, "share-hot");
    assert!(
        set(&share_hot).is_subset(&hot()),
        "the share group's selecting member takes only matches: {share_hot:?}"
    );
    let mut group = share_hot.clone();
    group.extend(payloads(&r, "share-any"));
    assert_eq!(
        group.len(),
        12,
        "the group takes each message once: {group:?}"
    );
    assert_eq!(set(&group), everything());
}

#[test]
fn an_edge_subscribers_selector_limits_what_crosses_the_connector() {
    let mesh = TwoGroups::start();
    let (stomp, publish) = producers(mesh.hub_stomp.port(), mesh.hub_mqtt.port());
    let forwarded = |admin| {
        status(admin)["connectors"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .map(|c| c["forwarded"].as_u64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0u64)
    };
    let before = forwarded(mesh.hub_admin);
    let r = plan(json!({
        "subscribers": [{"name": "hot", "port": mesh.edge_mqtt.port(),
                         "filter": "sensors/#", "selector": "kind = 'hot'"}],
        "demand": {"admin": mesh.hub_admin.port(), "at_least": 1},
        "stomp": stomp,
        "mqtt": publish,
        "expect": 6,
    }));
    assert_eq!(r["granted"]["hot"], json!([1]));
    let got = payloads(&r, "hot");
    assert_eq!(got.len(), 6, "{got:?}");
    assert_eq!(set(&got), hot());
    assert_eq!(
        forwarded(mesh.hub_admin) - before,
        6,
        "only the six hot messages crossed the connector"
    );
    assert_eq!(remote_demand(mesh.hub_admin), 0, "the subscriber left");
}

#[test]
fn a_selector_that_does_not_parse_is_a_suback_0x83_counted_and_subscribes_nothing() {
    let b = Topology::new()
        .listener("mqtt", "mqtt", "")
        .listener("stomp", "stomp", "")
        .start();
    let mqtt = b.port("mqtt");
    let bad = || b.metric("meshmq_bad_selectors_total", &[]);
    assert_eq!(bad(), 0.0);
    let (stomp, publish) = producers(b.port("stomp"), mqtt);
    let r = plan(json!({
        "subscribers": [
            {"name": "bad", "port": mqtt, "filter": "sensors/#", "selector": "kind = = 'hot'"},
            {"name": "good", "port": mqtt, "filter": "sensors/b/#", "selector": "kind <> 'hot'"},
        ],
        "stomp": stomp,
        "mqtt": publish,
        "expect": 3,
    }));
    assert_eq!(r["granted"]["bad"], json!([0x83]), "{r}");
    let why = r["why"]["bad"].as_str().unwrap_or_default();
    assert!(
        why.contains("selector") && why.contains("character"),
        "the reason string names the selector error: {r}"
    );
    assert_eq!(r["got"]["bad"], json!([]), "nothing was subscribed");
    assert_eq!(
        set(&payloads(&r, "good")),
        set(&["m1".into(), "m3".into(), "m5".into()])
    );
    assert_eq!(bad(), 1.0, "counted");
}

#[test]
fn a_persistent_sessions_selector_survives_kill_9_restarts() {
    let mut b = Topology::new()
        .listener("mqtt", "mqtt", "")
        .listener("stomp", "stomp", "")
        .start();
    let session = json!({"name": "dev", "client_id": "sel-dev", "port": b.port("mqtt"),
                         "filter": "sensors/#", "selector": "kind = 'hot'", "session": true});
    let r = plan(json!({"subscribers": [session], "expect": 0}));
    assert_eq!(r["granted"]["dev"], json!([1]));

    // The kept subscription comes back from the journal with its selector: it keeps only the
    // hot ones of what is sent while its client is away.
    b.kill9_and_restart();
    let (stomp, publish) = producers(b.port("stomp"), b.port("mqtt"));
    plan(json!({"subscribers": [], "stomp": stomp, "mqtt": publish, "expect": 0}));
    // And from the journal again, with the messages it kept.
    b.kill9_and_restart();
    let r = paho_session(b.addr("mqtt"), "5", "receive", "sel-dev", &["6"]);
    assert_eq!(r["session_present"], json!(true));
    let mut hot: Vec<String> = hot().into_iter().collect();
    hot.sort();
    assert_eq!(received_payloads(&r), hot, "only the hot ones were kept");

    // Resumed with its selector, the subscription is the same one: what it keeps after the
    // resume is still selected.
    let (stomp, publish) = producers(b.port("stomp"), b.port("mqtt"));
    plan(json!({"subscribers": [], "stomp": stomp, "mqtt": publish, "expect": 0}));
    let r = paho_session(b.addr("mqtt"), "5", "receive", "sel-dev", &["6"]);
    assert_eq!(received_payloads(&r), hot);
}
