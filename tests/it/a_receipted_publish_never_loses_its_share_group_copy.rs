//! A publish whose receipt went out never loses its copy in an MQTT share group: with a
//! `$share/g/sensors/#` subscriber connected to one journaled broker, a burst of QoS 1 PUBLISHes
//! (and then of persistent STOMP SENDs with receipts) to topics under `sensors` is followed by
//! `kill -9` of the broker the moment the burst's last PUBACK (RECEIPT) arrives; after the
//! restart, the share group's subscriber gets every acknowledged message. The copy into the
//! group's queue must be journaled with the publish, not after its receipt went out.

use crate::common_mqtt;
use crate::common_stomp;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common_mqtt::{RawMqtt, Reply, GUARD};
use common_stomp::{send, RawStomp, Topology};
use meshmq::stomp::Command as Cmd;
use rmqtt_codec::types::QoS;

/// Messages per burst: enough that the last ones' copies are still on their way to the disk
/// when their PUBACKs are out, if the copy is made after the publish.
const BURST: u16 = 100;
/// Bursts, each ended by a `kill -9`, per protocol.
const ROUNDS: usize = 2;
const FILTER: &str = "$share/g/sensors/#";

/// A clean MQTT 3.1.1 session subscribed to the share group at QoS 1.
fn share_subscriber(addr: SocketAddr) -> RawMqtt {
    let (mut sub, code) = RawMqtt::connect(addr, false, 0, None);
    assert_eq!(code, 0, "the subscriber's CONNECT was refused");
    sub.subscribe(FILTER, QoS::AtLeastOnce, 1);
    match sub.next() {
        Some(Reply::SubAck(1, codes)) => assert_eq!(codes, [1], "{FILTER} granted at QoS 1"),
        other => panic!("expected the SUBACK of {FILTER}, got {other:?}"),
    }
    sub
}

/// Publishes QoS 0 probes until one reaches `sub` through the share group: the group's queue
/// is then fed (its feed follows the subscriber's demand).
fn wait_until_fed(addr: SocketAddr, sub: &mut RawMqtt) {
    let (mut probe, code) = RawMqtt::connect(addr, false, 0, None);
    assert_eq!(code, 0, "the prober's CONNECT was refused");
    let deadline = Instant::now() + GUARD;
    for i in 0.. {
        assert!(
            Instant::now() < deadline,
            "no probe reached the share group"
        );
        probe.publish(
            "sensors/probe",
            &format!("probe-{i}"),
            QoS::AtMostOnce,
            None,
        );
        while let Some(reply) = sub.next_within(Duration::from_millis(200)) {
            if matches!(&reply, Reply::Publish { payload, .. } if payload.starts_with("probe-")) {
                return;
            }
        }
    }
}

/// A new share-group subscriber after the restart: the payloads of `expected` it never got.
fn missing_after_restart(addr: SocketAddr, expected: &BTreeSet<String>) -> Vec<String> {
    let mut sub = share_subscriber(addr);
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + GUARD;
    while !expected.is_subset(&got) && Instant::now() < deadline {
        if let Some(Reply::Publish {
            payload, packet_id, ..
        }) = sub.next_within(Duration::from_millis(500))
        {
            if let Some(id) = packet_id {
                sub.write(&[0x40, 2, (id >> 8) as u8, id as u8]);
            }
            got.insert(payload);
        }
    }
    expected.difference(&got).cloned().collect()
}

fn broker() -> common_stomp::Broker {
    Topology::new()
        .listener("mqtt", "mqtt", "")
        .listener("stomp", "stomp", "")
        .start()
}

#[test]
fn qos1_publishes_acknowledged_before_a_kill9_reach_the_share_group_after_restart() {
    let mut broker = broker();
    let addr = broker.addr("mqtt");
    for round in 0..ROUNDS {
        let mut sub = share_subscriber(addr);
        wait_until_fed(addr, &mut sub);
        let (mut publisher, code) = RawMqtt::connect(addr, false, 0, None);
        assert_eq!(code, 0, "the publisher's CONNECT was refused");
        let expected: BTreeSet<String> = (1..=BURST).map(|i| format!("r{round}-m{i}")).collect();
        for i in 1..=BURST {
            let topic = format!("sensors/s{}/temp", i % 5);
            publisher.publish(&topic, &format!("r{round}-m{i}"), QoS::AtLeastOnce, Some(i));
        }
        let mut acked = BTreeSet::new();
        while acked.len() < usize::from(BURST) {
            match publisher.next() {
                Some(Reply::PubAck(id, 0)) => {
                    acked.insert(id);
                }
                other => panic!("round {round}: expected PUBACKs, got {other:?}"),
            }
        }
        broker.kill9_and_restart();
        let missing = missing_after_restart(addr, &expected);
        assert!(
            missing.is_empty(),
            "round {round}: {} of {BURST} PUBACKed messages never reached the share group \
             after kill -9: {missing:?}",
            missing.len()
        );
    }
}

#[test]
fn receipted_stomp_sends_before_a_kill9_reach_the_share_group_after_restart() {
    let mut broker = broker();
    let (mqtt, stomp) = (broker.addr("mqtt"), broker.addr("stomp"));
    for round in 0..ROUNDS {
        let mut sub = share_subscriber(mqtt);
        wait_until_fed(mqtt, &mut sub);
        let mut producer = RawStomp::connect(stomp, &[]);
        let expected: BTreeSet<String> = (1..=BURST).map(|i| format!("r{round}-s{i}")).collect();
        for i in 1..=BURST {
            producer.send(
                &send("/topic/sensors.stomp", &format!("r{round}-s{i}"))
                    .with_header("persistent", "true")
                    .with_header("receipt", format!("r{i}")),
            );
        }
        let mut receipts = 0;
        while receipts < BURST {
            match producer.recv() {
                Some(f) if f.command == Cmd::Receipt => receipts += 1,
                other => panic!("round {round}: expected RECEIPTs, got {other:?}"),
            }
        }
        broker.kill9_and_restart();
        let missing = missing_after_restart(mqtt, &expected);
        assert!(
            missing.is_empty(),
            "round {round}: {} of {BURST} receipted sends never reached the share group after \
             kill -9: {missing:?}",
            missing.len()
        );
    }
}
