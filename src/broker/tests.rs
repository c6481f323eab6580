//! Broker core tests: sessions driven directly, deliveries read from their outboxes.

use std::collections::VecDeque;

use bytes::Bytes;

use super::*;

pub(super) fn to_dest(text: &str) -> Destination {
    Destination::parse(text).expect("a valid destination")
}

pub(super) fn pattern(text: &str) -> DestinationPattern {
    DestinationPattern::parse(text).expect("a valid pattern")
}

fn broker() -> Broker {
    Broker::new(BrokerSettings::default())
}

fn broker_with(f: impl FnOnce(&mut BrokerSettings)) -> Broker {
    let mut s = BrokerSettings::default();
    f(&mut s);
    Broker::new(s)
}

fn msg(body: &str) -> Message {
    Message {
        body: Bytes::copy_from_slice(body.as_bytes()),
        priority: DEFAULT_PRIORITY,
        ..Message::default()
    }
}

fn send(s: &mut Session, dest: &str, m: Message) {
    let t = s.target(&to_dest(dest)).unwrap();
    s.publish(&t, m).unwrap();
}

fn sub(s: &mut Session, id: u64, dest: &str, prefetch: u32) {
    s.subscribe(SubscribeSpec {
        subscription: id,
        destination: pattern(dest),
        selector: String::new(),
        prefetch,
        priority: 0,
        durable_name: None,
        no_local: false,
    })
    .unwrap();
}

fn drain(s: &Session) -> Vec<Delivery> {
    let mut out = VecDeque::new();
    s.outbox().drain_into(&mut out);
    out.into()
}

fn bodies(d: &[Delivery]) -> Vec<String> {
    d.iter()
        .map(|d| String::from_utf8_lossy(&d.message.body).into_owned())
        .collect()
}

#[test]
fn competing_consumers_share_a_queue_round_robin() {
    let b = broker();
    let mut p = b.open_session(None).unwrap();
    let mut c1 = b.open_session(None).unwrap();
    let mut c2 = b.open_session(None).unwrap();
    sub(&mut c1, 1, "queue://q", 100);
    sub(&mut c2, 1, "queue://q", 100);
    for i in 0..10 {
        send(&mut p, "queue://q", msg(&i.to_string()));
    }
    let d1 = drain(&c1);
    let d2 = drain(&c2);
    assert_eq!(d1.len(), 5);
    assert_eq!(d2.len(), 5);
    assert_eq!(bodies(&d1), vec!["0", "2", "4", "6", "8"]);
}

#[test]
fn prefetch_credit_gives_a_fast_consumer_more() {
    let b = broker();
    let mut p = b.open_session(None).unwrap();
    let mut fast = b.open_session(None).unwrap();
    let mut slow = b.open_session(None).unwrap();
    sub(&mut fast, 1, "queue://work", 10);
    sub(&mut slow, 1, "queue://work", 10);
    for i in 0..5000 {
        send(&mut p, "queue://work", msg(&i.to_string()));
    }
    let (mut fast_total, mut slow_total) = (0usize, 0usize);
    let mut fast_q: VecDeque<u64> = VecDeque::new();
    let mut slow_q: VecDeque<u64> = VecDeque::new();
    for _tick in 0..400 {
        fast_q.extend(drain(&fast).iter().map(|d| d.tag));
        slow_q.extend(drain(&slow).iter().map(|d| d.tag));
        // The fast consumer acks ten per tick; the slow one one every tick.
        for _ in 0..10 {
            if let Some(t) = fast_q.pop_front() {
                fast.ack(1, 0, &[t]).unwrap();
                fast_total += 1;
            }
        }
        if let Some(t) = slow_q.pop_front() {
            slow.ack(1, 0, &[t]).unwrap();
            slow_total += 1;
        }
    }
    assert!(
        fast_total >= 3 * slow_total,
        "fast {fast_total} vs slow {slow_total}"
    );
}

#[test]
fn higher_priority_consumers_are_served_first() {
    let b = broker();
    let mut p = b.open_session(None).unwrap();
    let mut low = b.open_session(None).unwrap();
    let mut high = b.open_session(None).unwrap();
    sub(&mut low, 1, "queue://q", 100);
    high.subscribe(SubscribeSpec {
        subscription: 1,
        destination: pattern("queue://q"),
        selector: String::new(),
        prefetch: 3,
        priority: 5,
        durable_name: None,
        no_local: false,
    })
    .unwrap();
    for i in 0..5 {
        send(&mut p, "queue://q", msg(&i.to_string()));
    }
    assert_eq!(
        bodies(&drain(&high)),
        vec!["0", "1", "2"],
        "high fills its prefetch first"
    );
    assert_eq!(
        bodies(&drain(&low)),
        vec!["3", "4"],
        "low gets the overflow"
    );
}

#[test]
fn message_priority_orders_pending_messages() {
    let b = broker();
    let mut p = b.open_session(None).unwrap();
    for (body, prio) in [("low", 1), ("high", 9), ("mid", 4), ("high2", 9)] {
        let mut m = msg(body);
        m.priority = prio;
        send(&mut p, "queue://q", m);
    }
    let mut c = b.open_session(None).unwrap();
    sub(&mut c, 1, "queue://q", 100);
    assert_eq!(bodies(&drain(&c)), vec!["high", "high2", "mid", "low"]);
}

#[test]
fn unacked_messages_of_a_closed_consumer_are_redelivered_to_another() {
    let b = broker();
    let mut p = b.open_session(None).unwrap();
    let mut c1 = b.open_session(None).unwrap();
    sub(&mut c1, 1, "queue://q", 10);
    for i in 0..3 {
        send(&mut p, "queue://q", msg(&i.to_string()));
    }
    let first = drain(&c1);
    assert_eq!(first.len(), 3);
    c1.ack(1, 0, &[first[0].tag]).unwrap();
    drop(c1);
    let mut c2 = b.open_session(None).unwrap();
    sub(&mut c2, 7, "queue://q", 10);
    let again = drain(&c2);
    assert_eq!(bodies(&again), vec!["1", "2"]);
    assert!(again
        .iter()
        .all(|d| d.redelivery_count == 1 && d.subscription == 7));
    assert_eq!(b.queue_depth("queue://q"), Some(2));
}

/// One dispatch round that serves several consumers (messages returned by a consumer that
/// left) hands each of the others its own deliveries, round robin, in queue order, and no
/// more than its prefetch; one connection's two subscriptions share its outbox in that order.
#[test]
fn a_dispatch_round_gives_each_consumer_its_own_messages_in_order_within_prefetch() {
    let b = broker();
    let mut p = b.open_session(None).unwrap();
    let mut leaving = b.open_session(None).unwrap();
    sub(&mut leaving, 1, "queue://q", 100);
    for i in 0..7 {
        send(&mut p, "queue://q", msg(&i.to_string()));
    }
    assert_eq!(drain(&leaving).len(), 7);
    let mut c1 = b.open_session(None).unwrap();
    let mut c2 = b.open_session(None).unwrap();
    sub(&mut c1, 1, "queue://q", 2);
    sub(&mut c2, 1, "queue://q", 2);
    sub(&mut c2, 2, "queue://q", 2);
    drop(leaving);
    let d1 = drain(&c1);
    let d2 = drain(&c2);
    assert_eq!(bodies(&d1), vec!["0", "3"]);
    assert_eq!(bodies(&d2), vec!["1", "2", "4", "5"]);
    let subs: Vec<u64> = d2.iter().map(|d| d.subscription).collect();
    assert_eq!(subs, vec![1, 2, 1, 2]);
    assert!(d1.iter().chain(&d2).all(|d| d.redelivery_count == 1));
    assert_eq!(b.queue_depth("queue://q"), Some(7));
    // The one left goes to whoever acknowledges first.
    c1.ack(1, d1[1].tag, &[]).unwrap();
    assert_eq!(bodies(&drain(&c1)), vec!["6"]);
    assert!(drain(&c2).is_empty());
}

/// A producer's run of plain sends goes into a queue under one lock with one dispatch round
/// (`Session::publish_run`): the consumers must get exactly what the same sends published one
/// by one give them — each message once, in the producer's order, round-robin within each
/// consumer's prefetch — and the rest must wait in order.
#[test]
fn a_run_of_sends_to_a_queue_is_dispatched_as_the_sends_one_by_one_would_be() {
    let outcome = |as_run: bool| {
        let b = broker();
        let mut p = b.open_session(None).unwrap();
        let mut c1 = b.open_session(None).unwrap();
        let mut c2 = b.open_session(None).unwrap();
        sub(&mut c1, 1, "queue://q", 3);
        sub(&mut c2, 1, "queue://q", 2);
        let t = p.target(&to_dest("queue://q")).unwrap();
        let mut run = Vec::new();
        for i in 0..12 {
            let mut m = msg(&i.to_string());
            m.producer_id = Bytes::from_static(b"producer");
            m.sequence = i + 1;
            if as_run {
                run.extend(p.stage(&t, m).unwrap().map(|(_, m)| m));
            } else {
                p.publish(&t, m).unwrap();
            }
        }
        p.publish_run(&t, &mut run);
        assert!(run.is_empty(), "the run is published whole");
        let (d1, d2) = (drain(&c1), drain(&c2));
        let first = (bodies(&d1), bodies(&d2), b.queue_depth("queue://q"));
        c1.ack(1, d1.last().unwrap().tag, &[]).unwrap();
        c2.ack(1, d2.last().unwrap().tag, &[]).unwrap();
        (first, bodies(&drain(&c1)), bodies(&drain(&c2)))
    };
    let one_by_one = outcome(false);
    assert_eq!(
        one_by_one.0,
        (
            vec!["0".into(), "2".into(), "4".into()],
            vec!["1".into(), "3".into()],
            Some(12)
        )
    );
    assert_eq!(outcome(true), one_by_one);
}

/// A session remembers the destination its producer last sent to (`Session::sends_to`,
/// `Session::target`: a producer's every send need not look it up among the broker's) —
/// which must never capture a send to another destination: a different name is resolved
/// anew, an equal name in another allocation is the same destination, and every message
/// carries the destination of the queue it went to.
#[test]
fn the_last_destination_a_session_resolved_never_captures_a_send_to_another() {
    let b = broker();
    let mut p = b.open_session(None).unwrap();
    let (mut ca, mut cb) = (b.open_session(None).unwrap(), b.open_session(None).unwrap());
    sub(&mut ca, 1, "queue://a", 100);
    sub(&mut cb, 1, "queue://b", 100);
    let (a1, a2, bq) = (
        to_dest("queue://a"),
        to_dest("queue://a"),
        to_dest("queue://b"),
    );
    for (dest, body) in [(&a1, "1"), (&bq, "2"), (&a2, "3"), (&a1, "4"), (&bq, "5")] {
        let t = p.target(dest).unwrap();
        assert_eq!(t.destination(), dest);
        assert!(p.sends_to(dest), "the destination just resolved is known");
        let other = if dest.name() == "a" { &bq } else { &a1 };
        assert!(
            !p.sends_to(other),
            "another destination is not the last one"
        );
        p.publish(&t, msg(body)).unwrap();
    }
    p.target(&a1).unwrap();
    assert!(
        p.sends_to(&a2),
        "an equal name in another allocation is the same"
    );
    let (da, db) = (drain(&ca), drain(&cb));
    assert_eq!(
        (bodies(&da), bodies(&db)),
        (
            vec!["1".into(), "3".into(), "4".into()],
            vec!["2".into(), "5".into()]
        )
    );
    assert!(da.iter().all(|d| d.message.dest() == &a1));
    assert!(db.iter().all(|d| d.message.dest() == &bq));
}

#[test]
fn cumulative_ack_acknowledges_everything_up_to_the_tag() {
    let b = broker();
    let mut p = b.open_session(None).unwrap();
    let mut c = b.open_session(None).unwrap();
    sub(&mut c, 1, "queue://q", 100);
    for i in 0..5 {
        send(&mut p, "queue://q", msg(&i.to_string()));
    }
    let d = drain(&c);
    let out = c.ack(1, d[3].tag, &[]).unwrap();
    assert_eq!(out.acked, 4);
    assert_eq!(b.queue_depth("queue://q"), Some(1));
    assert_eq!(
        c.ack(1, 0, &[d[0].tag]),
        Err(BrokerError::UnknownDelivery {
            subscription: 1,
            unknown: 1
        }),
        "acking twice is reported"
    );
}

#[test]
fn a_message_goes_to_the_dlq_after_max_redeliveries() {
    let b = broker_with(|s| s.defaults.max_redeliveries = 2);
    let mut p = b.open_session(None).unwrap();
    let mut c = b.open_session(None).unwrap();
    sub(&mut c, 1, "queue://orders", 10);
    send(&mut p, "queue://orders", msg("poison"));
    let mut deliveries = 0;
    loop {
        let d = drain(&c);
        if d.is_empty() {
            break;
        }
        assert_eq!(d[0].redelivery_count, deliveries);
        deliveries += 1;
        c.nack(1, &[d[0].tag]).unwrap();
    }
    assert_eq!(
        deliveries, 3,
        "one delivery + max_redeliveries redeliveries"
    );
    assert_eq!(b.queue_depth("queue://orders"), Some(0));
    let mut dlq = b.open_session(None).unwrap();
    sub(&mut dlq, 1, "queue://DLQ.orders", 10);
    let d = drain(&dlq);
    assert_eq!(bodies(&d), vec!["poison"]);
    let h = &d[0].message.headers;
    assert!(h.contains(&(
        "meshmq.original_destination".into(),
        "queue://orders".into()
    )));
    let stats = b.destination_stats();
    let orders = stats
        .iter()
        .find(|s| s.destination == "queue://orders")
        .unwrap();
    assert_eq!(orders.dead_lettered, 1);
}

#[test]
fn expired_messages_are_not_delivered_and_persistent_ones_are_dead_lettered() {
    let b = broker();
    let mut p = b.open_session(None).unwrap();
    let mut gone = msg("gone");
    gone.expires_at_ms = 1;
    let mut kept = msg("kept");
    kept.expires_at_ms = now_ms() + 60_000;
    let mut dead = msg("dead");
    dead.expires_at_ms = 1;
    dead.persistent = true;
    for m in [gone, kept, dead] {
        send(&mut p, "queue://q", m);
    }
    b.sweep_expired();
    let mut c = b.open_session(None).unwrap();
    sub(&mut c, 1, "queue://q", 10);
    assert_eq!(bodies(&drain(&c)), vec!["kept"]);
    let s = b.destination_stats();
    let q = s.iter().find(|s| s.destination == "queue://q").unwrap();
    assert_eq!(q.expired, 2);
    assert_eq!(b.queue_depth("queue://DLQ.q"), Some(1));
}

/// A topic subscriber without credit keeps messages pending; the sweep drops the expired ones
/// among them (and only those) and counts them, and what is left still reaches it in order.
#[test]
fn the_sweep_drops_expired_messages_pending_for_a_topic_subscriber() {
    let b = broker();
    let mut p = b.open_session(None).unwrap();
    let mut s = b.open_session(None).unwrap();
    sub(&mut s, 1, "topic://t", 1);
    send(&mut p, "topic://t", msg("first"));
    let mut soon = msg("soon");
    soon.expires_at_ms = now_ms() + 60_000;
    send(&mut p, "topic://t", soon);
    send(&mut p, "topic://t", msg("plain"));
    let mut gone = msg("gone");
    gone.expires_at_ms = 1;
    send(&mut p, "topic://t", gone);
    send(&mut p, "topic://t", msg("last"));
    let first = drain(&s);
    assert_eq!(bodies(&first), vec!["first"]);
    b.sweep_expired();
    let stats = b.destination_stats();
    let t = stats.iter().find(|s| s.destination == "topic://t").unwrap();
    assert_eq!(t.expired, 1);
    let mut got = Vec::new();
    let mut last = first[0].tag;
    for _ in 0..3 {
        s.ack(1, last, &[]).unwrap();
        let d = drain(&s);
        assert_eq!(d.len(), 1);
        last = d[0].tag;
        got.extend(bodies(&d));
    }
    assert_eq!(got, vec!["soon", "plain", "last"]);
}

#[test]
fn topic_subscribers_each_get_every_message_and_wildcards_match() {
    let b = broker();
    let mut p = b.open_session(None).unwrap();
    let mut exact = b.open_session(None).unwrap();
    let mut star = b.open_session(None).unwrap();
    let mut rest = b.open_session(None).unwrap();
    sub(&mut exact, 1, "topic://prices.eu.fx", 100);
    sub(&mut star, 1, "topic://prices.*.fx", 100);
    sub(&mut rest, 1, "topic://prices.>", 100);
    send(&mut p, "topic://prices.eu.fx", msg("a"));
    send(&mut p, "topic://prices.us.fx", msg("b"));
    send(&mut p, "topic://prices.us.bonds.long", msg("c"));
    send(&mut p, "topic://other", msg("d"));
    assert_eq!(bodies(&drain(&exact)), vec!["a"]);
    assert_eq!(bodies(&drain(&star)), vec!["a", "b"]);
    assert_eq!(bodies(&drain(&rest)), vec!["a", "b", "c"]);
}

#[test]
fn a_wildcard_subscription_sees_topics_created_later_once() {
    let b = broker();
    let mut s = b.open_session(None).unwrap();
    sub(&mut s, 1, "topic://a.>", 100);
    sub(&mut s, 2, "topic://a.*", 100);
    let mut p = b.open_session(None).unwrap();
    send(&mut p, "topic://a.new", msg("x"));
    let d = drain(&s);
    let mut subs: Vec<u64> = d.iter().map(|d| d.subscription).collect();
    subs.sort();
    assert_eq!(subs, vec![1, 2], "each subscription once");
    s.unsubscribe(1, false).unwrap();
    send(&mut p, "topic://a.new", msg("y"));
    assert_eq!(drain(&s).len(), 1);
}

#[test]
fn a_stalled_topic_subscriber_loses_its_oldest_and_never_blocks_others() {
    let b = broker_with(|s| s.defaults.topic_pending_limit = 5);
    let mut p = b.open_session(None).unwrap();
    let mut stalled = b.open_session(None).unwrap();
    let mut live = b.open_session(None).unwrap();
    sub(&mut stalled, 1, "topic://t", 2);
    sub(&mut live, 1, "topic://t", 1000);
    for i in 0..100 {
        send(&mut p, "topic://t", msg(&i.to_string()));
    }
    assert_eq!(
        drain(&live).len(),
        100,
        "the live subscriber gets everything"
    );
    let first = drain(&stalled);
    assert_eq!(bodies(&first), vec!["0", "1"], "its prefetch");
    stalled.ack(1, first[1].tag, &[]).unwrap();
    assert_eq!(
        bodies(&drain(&stalled)),
        vec!["95", "96"],
        "it kept only its newest five"
    );
    let t = b
        .destination_stats()
        .into_iter()
        .find(|s| s.destination == "topic://t")
        .unwrap();
    assert_eq!(t.dropped, 93);
}

#[test]
fn a_burst_a_subscriber_will_absorb_is_held_not_dropped_at_default_settings() {
    let b = broker();
    let mut p = b.open_session(None).unwrap();
    let mut behind = b.open_session(None).unwrap();
    sub(&mut behind, 1, "topic://t", 2);
    // 10,000 x 256 B: the burst that lost deliveries under a 1,000-message default.
    let body = "x".repeat(256);
    for _ in 0..10_000 {
        send(&mut p, "topic://t", msg(&body));
    }
    let t = b
        .destination_stats()
        .into_iter()
        .find(|s| s.destination == "topic://t")
        .unwrap();
    assert_eq!(t.dropped, 0, "a burst within the byte limit is kept");
    assert_eq!(t.pending, 10_000 - 2, "all but its prefetch wait for it");
}

#[test]
fn a_subscriber_past_its_byte_limit_keeps_only_its_newest() {
    let limit = 20_000;
    let b = broker_with(|s| s.defaults.topic_pending_size = limit);
    let mut p = b.open_session(None).unwrap();
    let mut stalled = b.open_session(None).unwrap();
    sub(&mut stalled, 1, "topic://t", 1);
    let body = "x".repeat(1000);
    for i in 0..100 {
        send(&mut p, "topic://t", msg(&format!("{i:03}{body}")));
    }
    let t = b
        .destination_stats()
        .into_iter()
        .find(|s| s.destination == "topic://t")
        .unwrap();
    let kept = t.pending;
    assert!(
        (1..=limit / 1000).contains(&kept),
        "held within {limit} bytes: {kept} messages of 1 KB kept"
    );
    assert_eq!(
        t.dropped,
        100 - 1 - kept,
        "the rest was dropped and counted"
    );
    let first = drain(&stalled);
    stalled.ack(1, first[0].tag, &[]).unwrap();
    let next = bodies(&drain(&stalled));
    assert_eq!(
        next[0][..3].parse::<u64>().unwrap(),
        100 - kept,
        "what it kept is the newest"
    );
}

#[test]
fn a_durable_subscription_keeps_messages_while_offline() {
    let b = broker();
    let mut p = b.open_session(None).unwrap();
    let durable = |id| SubscribeSpec {
        subscription: id,
        destination: pattern("topic://news"),
        selector: String::new(),
        prefetch: 100,
        priority: 0,
        durable_name: Some("reader".into()),
        no_local: false,
    };
    let mut c = b.open_session(Some("client-1".into())).unwrap();
    c.subscribe(durable(1)).unwrap();
    send(&mut p, "topic://news", msg("1"));
    let d = drain(&c);
    assert_eq!(bodies(&d), vec!["1"]);
    drop(c);
    send(&mut p, "topic://news", msg("2"));
    send(&mut p, "topic://news", msg("3"));
    assert_eq!(
        b.open_session(None).unwrap().subscribe(SubscribeSpec {
            durable_name: Some("x".into()),
            ..durable(1)
        }),
        Err(BrokerError::DurableNeedsClientId)
    );
    let mut c = b.open_session(Some("client-1".into())).unwrap();
    assert_eq!(
        b.open_session(Some("client-1".into())).unwrap_err(),
        BrokerError::ClientIdInUse("client-1".into())
    );
    c.subscribe(durable(9)).unwrap();
    let d = drain(&c);
    assert_eq!(
        bodies(&d),
        vec!["1", "2", "3"],
        "the unacked one comes back first"
    );
    assert_eq!(d[0].redelivery_count, 1);
    c.unsubscribe(9, true).unwrap();
    assert_eq!(b.durable_subscriptions(), 0);
}

#[test]
fn temporary_queues_belong_to_their_connection_and_die_with_it() {
    let b = broker();
    let mut owner = b.open_session(None).unwrap();
    let name = format!("temp-queue://{}.1", owner.connection_id());
    sub(&mut owner, 1, &name, 10);
    let mut other = b.open_session(None).unwrap();
    assert!(matches!(
        other.subscribe(SubscribeSpec {
            subscription: 1,
            destination: pattern(&name),
            selector: String::new(),
            prefetch: 0,
            priority: 0,
            durable_name: None,
            no_local: false,
        }),
        Err(BrokerError::NotOwner(_))
    ));
    send(&mut other, &name, msg("reply"));
    assert_eq!(bodies(&drain(&owner)), vec!["reply"]);
    drop(owner);
    assert!(matches!(
        other.target(&to_dest(&name)),
        Err(BrokerError::NotFound(_))
    ));
    assert!(matches!(
        other.target(&to_dest("temp-queue://never.made")),
        Err(BrokerError::NotFound(_))
    ));
}

#[test]
fn memory_limits_refuse_room_until_consumers_make_it() {
    let b = broker_with(|s| {
        s.policies.push((
            DestinationPattern::parse("queue://small").unwrap(),
            DestinationLimits {
                memory_limit: Some(4096),
                ..DestinationLimits::default()
            },
        ))
    });
    let mut p = b.open_session(None).unwrap();
    let t = p.target(&to_dest("queue://small")).unwrap();
    let mut sent = 0;
    while p.has_room(&t, false) {
        p.publish(&t, msg(&"x".repeat(500))).unwrap();
        sent += 1;
    }
    assert!(
        (4..=6).contains(&sent),
        "about 4 KiB of 750-byte messages: {sent}"
    );
    let other = p.target(&to_dest("queue://other")).unwrap();
    assert!(
        p.has_room(&other, false),
        "only the full destination is refused"
    );
    let mut c = b.open_session(None).unwrap();
    sub(&mut c, 1, "queue://small", 100);
    let d = drain(&c);
    assert!(
        !p.has_room(&t, false),
        "delivered but unacked still holds memory"
    );
    let last = d.last().unwrap().tag;
    drop(d);
    c.ack(1, last, &[]).unwrap();
    assert!(p.has_room(&t, false));
    assert_eq!(b.memory().used(), 0);
}

#[test]
fn no_local_subscriptions_skip_their_own_messages() {
    let b = broker();
    let mut s = b.open_session(None).unwrap();
    s.subscribe(SubscribeSpec {
        subscription: 1,
        destination: pattern("topic://chat"),
        selector: String::new(),
        prefetch: 10,
        priority: 0,
        durable_name: None,
        no_local: true,
    })
    .unwrap();
    send(&mut s, "topic://chat", msg("mine"));
    let mut other = b.open_session(None).unwrap();
    send(&mut other, "topic://chat", msg("theirs"));
    assert_eq!(bodies(&drain(&s)), vec!["theirs"]);
}

#[test]
fn refusals_are_typed() {
    let b = broker_with(|s| s.max_subscriptions_per_connection = 1);
    let mut s = b.open_session(None).unwrap();
    sub(&mut s, 1, "queue://a", 1);
    let spec = |id: u64, dest: &str| SubscribeSpec {
        subscription: id,
        destination: pattern(dest),
        selector: String::new(),
        prefetch: 0,
        priority: 0,
        durable_name: None,
        no_local: false,
    };
    assert_eq!(
        s.subscribe(spec(1, "queue://b")),
        Err(BrokerError::SubscriptionExists(1))
    );
    assert_eq!(
        s.subscribe(spec(2, "queue://b")),
        Err(BrokerError::TooManySubscriptions(1))
    );
    s.unsubscribe(1, false).unwrap();
    assert_eq!(
        s.subscribe(spec(2, "queue://a.*")),
        Err(BrokerError::WildcardQueue("queue://a.*".into()))
    );
    // A malformed destination is refused where it is parsed, before any subscribe sees it.
    assert!(matches!(
        DestinationPattern::parse("nonsense").map_err(BrokerError::from),
        Err(BrokerError::Destination(_))
    ));
    assert_eq!(
        s.unsubscribe(5, false),
        Err(BrokerError::NoSuchSubscription(5))
    );
    let t = s.target(&to_dest("queue://a")).unwrap();
    let mut m = msg("x");
    m.priority = 10;
    assert_eq!(s.publish(&t, m), Err(BrokerError::BadPriority(10)));
}

fn net_spec(target: &str, ttl: u32, replay_ms: Option<u64>) -> NetworkSpec {
    NetworkSpec {
        filter: NetworkFilter {
            target: std::sync::Arc::from(target),
            message_ttl: ttl,
            replay_after_ms: replay_ms,
        },
    }
}

fn net_sub(s: &mut Session, id: u64, dest: &str, target: &str) {
    s.subscribe_network(
        SubscribeSpec {
            subscription: id,
            destination: pattern(dest),
            selector: String::new(),
            prefetch: 100,
            priority: -5,
            durable_name: None,
            no_local: false,
        },
        net_spec(target, 3, None),
    )
    .unwrap();
}

#[test]
fn a_weighted_consumer_gets_its_weight_in_a_row() {
    let b = broker();
    let mut p = b.open_session(None).unwrap();
    let mut one = b.open_session(None).unwrap();
    let mut three = b.open_session(None).unwrap();
    net_sub(&mut one, 1, "queue://q", "edge-1");
    net_sub(&mut three, 1, "queue://q", "edge-2");
    three.set_network_weight(1, 3);
    for i in 0..40 {
        send(&mut p, "queue://q", msg(&i.to_string()));
    }
    assert_eq!(drain(&one).len(), 10);
    assert_eq!(drain(&three).len(), 30);
    three.set_network_weight(1, 1);
    for i in 0..40 {
        send(&mut p, "queue://q", msg(&i.to_string()));
    }
    assert_eq!(drain(&one).len(), 20, "back to an even split");
    assert_eq!(drain(&three).len(), 20);
}

#[test]
fn a_network_consumer_advertises_each_remote_consumer_by_its_own_path() {
    let b = broker();
    let mut net = b.open_session(None).unwrap();
    net_sub(&mut net, 1, "queue://q", "b");
    let (_, none) = b.demand();
    assert!(none.is_empty(), "no remote consumer yet: {none:?}");
    let g = |s: &str| std::sync::Arc::<str>::from(s);
    let relayed = net
        .add_network_demand(1, vec![g("c"), g("b")], Some(g("c/7")), None)
        .unwrap();
    let direct = net
        .add_network_demand(1, vec![g("b")], Some(g("b/3")), None)
        .unwrap();
    let mut paths: Vec<_> = b.demand().1.into_iter().map(|d| d.path).collect();
    paths.sort();
    assert_eq!(paths, vec![vec![g("b")], vec![g("c"), g("b")]]);
    net.remove_network_demand(1, relayed);
    let (_, left) = b.demand();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, direct);
    net.unsubscribe(1, false).unwrap();
    assert!(b.demand().1.is_empty());
}

fn from_path(body: &str, path: &[&str]) -> Message {
    Message {
        broker_path: path.iter().map(|g| std::sync::Arc::from(*g)).collect(),
        ..msg(body)
    }
}

#[test]
fn network_consumers_never_send_a_message_back_nor_past_its_ttl() {
    let b = broker();
    let mut p = b.open_session(None).unwrap();
    let mut net = b.open_session(None).unwrap();
    net.subscribe_network(
        SubscribeSpec {
            subscription: 1,
            destination: pattern("queue://q"),
            selector: String::new(),
            prefetch: 100,
            priority: -5,
            durable_name: None,
            no_local: false,
        },
        net_spec("hub", 2, None),
    )
    .unwrap();
    send(&mut p, "queue://q", from_path("local", &[]));
    send(&mut p, "queue://q", from_path("came from hub", &["hub"]));
    send(&mut p, "queue://q", from_path("one hop", &["x"]));
    send(&mut p, "queue://q", from_path("ttl spent", &["x", "y"]));
    assert_eq!(bodies(&drain(&net)), vec!["local", "one hop"]);
    assert_eq!(
        b.queue_depth("queue://q"),
        Some(4),
        "the others stay for local consumers"
    );
}

#[test]
fn a_parked_message_is_replayed_once_no_local_consumer_is_left() {
    let b = broker();
    let mut p = b.open_session(None).unwrap();
    let mut local = b.open_session(None).unwrap();
    sub(&mut local, 1, "queue://q", 100);
    send(&mut p, "queue://q", from_path("parked", &["hub"]));
    let d = drain(&local);
    assert_eq!(d.len(), 1);
    drop(d);
    let mut net = b.open_session(None).unwrap();
    net.subscribe_network(
        SubscribeSpec {
            subscription: 1,
            destination: pattern("queue://q"),
            selector: String::new(),
            prefetch: 100,
            priority: -8,
            durable_name: None,
            no_local: false,
        },
        net_spec("hub", 3, Some(0)),
    )
    .unwrap();
    drop(local);
    b.redispatch();
    let d = drain(&net);
    assert_eq!(
        bodies(&d),
        vec!["parked"],
        "no local consumer: back toward the hub"
    );
    assert_eq!(d[0].redelivery_count, 1);
}

#[test]
fn a_parked_message_past_its_ttl_is_replayed_toward_demand_wherever_it_is() {
    // At the default message_ttl of 1, a message forwarded here from the hub may go neither
    // back to the hub nor on to edge-3 while a local consumer is left — but once it is parked
    // (none left) it goes toward demand either way.
    let b = broker();
    let mut p = b.open_session(None).unwrap();
    let mut local = b.open_session(None).unwrap();
    sub(&mut local, 1, "queue://q", 1);
    for body in ["taken", "back", "on"] {
        send(&mut p, "queue://q", from_path(body, &["hub"]));
    }
    let d = drain(&local);
    assert_eq!(bodies(&d), vec!["taken"]);
    drop(d);
    let net = |target: &str| {
        let mut s = b.open_session(None).unwrap();
        s.subscribe_network(
            SubscribeSpec {
                subscription: 1,
                destination: pattern("queue://q"),
                selector: String::new(),
                prefetch: 10,
                priority: -5,
                durable_name: None,
                no_local: false,
            },
            net_spec(target, 1, Some(0)),
        )
        .unwrap();
        s
    };
    let (hub, edge3) = (net("hub"), net("edge-3"));
    b.redispatch();
    assert!(
        drain(&hub).is_empty() && drain(&edge3).is_empty(),
        "a local consumer is left: nothing past its ttl moves"
    );
    assert_eq!(b.queue_depth("queue://q"), Some(3));
    drop(local);
    b.redispatch();
    let mut replayed = bodies(&drain(&hub));
    replayed.extend(bodies(&drain(&edge3)));
    replayed.sort();
    assert_eq!(
        replayed,
        vec!["back", "on", "taken"],
        "no local consumer: each goes toward demand, back along its path or on past its ttl"
    );
}

#[test]
fn a_topic_keeps_its_latest_retained_message_until_an_empty_one_clears_it() {
    let b = broker();
    let mut s = b.open_session(None).unwrap();
    let retained = |body: &str| Message {
        headers: vec![(RETAIN_HEADER.to_string(), "true".to_string())],
        ..msg(body)
    };
    send(&mut s, "topic://status.boiler", retained("on"));
    send(&mut s, "topic://status.boiler", retained("hot"));
    send(&mut s, "topic://status.boiler", msg("not retained"));
    send(&mut s, "topic://status.pump", retained("running"));
    send(&mut s, "topic://other.x", retained("elsewhere"));
    let found = |p: &str| -> Vec<String> {
        b.retained_matching(&pattern(p))
            .iter()
            .map(|m| String::from_utf8_lossy(&m.body).into_owned())
            .collect()
    };
    assert_eq!(found("topic://status.>"), vec!["hot", "running"]);
    assert_eq!(found("topic://status.boiler"), vec!["hot"]);
    send(&mut s, "topic://status.pump", retained(""));
    assert_eq!(
        found("topic://status.*"),
        vec!["hot"],
        "an empty one clears"
    );
    let expired = Message {
        expires_at_ms: 1,
        ..retained("stale")
    };
    send(&mut s, "topic://status.boiler", expired);
    assert!(found("topic://status.boiler").is_empty(), "expired: gone");
}

fn sub_selecting(s: &mut Session, id: u64, dest: &str, selector: &str) -> Result<(), BrokerError> {
    s.subscribe(SubscribeSpec {
        subscription: id,
        destination: pattern(dest),
        selector: selector.to_string(),
        prefetch: 100,
        priority: 0,
        durable_name: None,
        no_local: false,
    })
}

fn msg_with(body: &str, color: &str) -> Message {
    Message {
        headers: vec![("color".to_string(), color.to_string())],
        ..msg(body)
    }
}

#[test]
fn a_queue_consumer_with_a_selector_takes_only_matches_and_leaves_the_rest_in_order() {
    let b = broker();
    let mut p = b.open_session(None).unwrap();
    let mut picky = b.open_session(None).unwrap();
    sub_selecting(&mut picky, 1, "queue://q", "color = 'red'").unwrap();
    for i in 0..10 {
        let color = if i % 3 == 0 { "red" } else { "blue" };
        send(&mut p, "queue://q", msg_with(&i.to_string(), color));
    }
    assert_eq!(bodies(&drain(&picky)), vec!["0", "3", "6", "9"]);
    assert_eq!(b.queue_depth("queue://q"), Some(10));
    // The others wait for a consumer that takes them, in the order they were sent.
    let mut plain = b.open_session(None).unwrap();
    sub(&mut plain, 1, "queue://q", 100);
    assert_eq!(bodies(&drain(&plain)), vec!["1", "2", "4", "5", "7", "8"]);
    assert!(drain(&picky).is_empty());
}

#[test]
fn a_selective_consumer_beside_a_plain_one_loses_nothing() {
    let b = broker();
    let mut p = b.open_session(None).unwrap();
    let mut picky = b.open_session(None).unwrap();
    let mut plain = b.open_session(None).unwrap();
    sub_selecting(&mut picky, 1, "queue://q", "color IN ('red')").unwrap();
    sub(&mut plain, 1, "queue://q", 100);
    // Reds fall on both consumers' round-robin turns.
    for i in 0..20 {
        let color = if i % 3 == 0 { "red" } else { "blue" };
        send(&mut p, "queue://q", msg_with(&i.to_string(), color));
    }
    let got_picky = drain(&picky);
    let got_plain = drain(&plain);
    assert!(got_picky.iter().all(|d| d.message.headers[0].1 == "red"));
    assert_eq!(got_picky.len() + got_plain.len(), 20);
    let mut all: Vec<u32> = bodies(&got_picky)
        .iter()
        .chain(bodies(&got_plain).iter())
        .map(|b| b.parse().unwrap())
        .collect();
    all.sort();
    assert_eq!(all, (0..20).collect::<Vec<_>>());
}

#[test]
fn a_topic_subscriber_with_a_selector_gets_only_matches() {
    let b = broker();
    let mut p = b.open_session(None).unwrap();
    let mut picky = b.open_session(None).unwrap();
    let mut plain = b.open_session(None).unwrap();
    sub_selecting(
        &mut picky,
        1,
        "topic://t.>",
        "color <> 'blue' AND JMSPriority > 3",
    )
    .unwrap();
    sub(&mut plain, 1, "topic://t.>", 100);
    for i in 0..6 {
        let color = if i % 2 == 0 { "red" } else { "blue" };
        send(&mut p, "topic://t.a", msg_with(&i.to_string(), color));
    }
    send(&mut p, "topic://t.b", msg("no color"));
    assert_eq!(bodies(&drain(&picky)), vec!["0", "2", "4"]);
    assert_eq!(drain(&plain).len(), 7);
}

#[test]
fn a_selector_that_does_not_parse_is_refused_and_makes_no_subscription() {
    let b = broker();
    let mut c = b.open_session(None).unwrap();
    let err = sub_selecting(&mut c, 1, "queue://q", "color = 'red").unwrap_err();
    assert!(
        matches!(&err, BrokerError::BadSelector { error, .. } if error.position == 13),
        "{err}"
    );
    assert!(err.to_string().contains("does not parse"), "{err}");
    assert_eq!(c.subscription_count(), 0);
    // A blank selector is no selector.
    sub_selecting(&mut c, 1, "queue://q", "  ").unwrap();
    assert_eq!(c.subscription_count(), 1);
}
