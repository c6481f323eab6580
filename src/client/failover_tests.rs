use super::*;

#[test]
fn backoff_grows_to_its_cap_and_resets() {
    let o = FailoverOptions {
        initial_reconnect_delay: Duration::from_millis(10),
        max_reconnect_delay: Duration::from_millis(50),
        ..FailoverOptions::default()
    };
    let mut b = Backoff::new(&o);
    let got: Vec<u64> = (0..5).map(|_| b.next_delay().as_millis() as u64).collect();
    assert_eq!(got, vec![10, 20, 40, 50, 50]);
    b.reset();
    assert_eq!(b.next_delay(), Duration::from_millis(10));
    let flat = FailoverOptions {
        use_exponential_backoff: false,
        ..o
    };
    let mut b = Backoff::new(&flat);
    assert_eq!(b.next_delay(), b.next_delay());
}

fn sup(text: &str) -> Supervisor {
    let url = FailoverUrl::parse(text).unwrap();
    let options = ClientOptions::default();
    let shared = Arc::new(Shared::new(
        Default::default(),
        String::new(),
        &options,
        None,
        None,
    ));
    Supervisor::new(url, options, shared)
}

fn names(list: &[BrokerUrl]) -> Vec<String> {
    list.iter().map(|u| u.to_string()).collect()
}

#[test]
fn the_connect_list_puts_pushed_uris_first_keeps_static_ones_and_the_failed_one_last() {
    let mut s = sup("failover:(tcp://h:1,tcp://h:2)?randomize=false");
    s.apply_view(&proto::ClusterView {
        groups: vec![proto::ClusterGroup {
            name: "g".into(),
            uris: vec!["tcp://h:3".into(), "tcp://h:1".into(), "ssl://h:9".into()],
            clients: 0,
            capacity: 0,
        }],
    });
    let failed = BrokerUrl::parse("tcp://h:3").unwrap();
    assert_eq!(
        names(&s.connect_list(Some(&failed))),
        ["tcp://h:1", "tcp://h:2", "tcp://h:3"],
        "another scheme is ignored, duplicates folded, the failed broker last"
    );
    // A push without the static URIs never drops them.
    s.apply_view(&proto::ClusterView::default());
    assert_eq!(names(&s.connect_list(None)), ["tcp://h:1", "tcp://h:2"]);
}

#[test]
fn priority_brokers_come_first_and_reconnect_to_is_obeyed_unless_pinned() {
    let mut s =
        sup("failover:(tcp://h:1,tcp://h:2,tcp://h:3)?priorityBackup=true&priorityURIs=tcp://h:3");
    assert_eq!(s.connect_list(None)[0].to_string(), "tcp://h:3");
    let control = |to: &str| proto::ConnectionControl {
        cluster: None,
        rebalance: true,
        reconnect_to: to.into(),
        leave: false,
    };
    let on_3 = BrokerUrl::parse("tcp://h:3").unwrap();
    let on_1 = BrokerUrl::parse("tcp://h:1").unwrap();
    assert_eq!(
        s.on_control(control("tcp://h:2"), &on_3),
        None,
        "pinned to its priority broker"
    );
    assert_eq!(
        names(&s.on_control(control("tcp://h:2"), &on_1).unwrap()),
        ["tcp://h:2"]
    );
    assert_eq!(
        s.on_control(control("tcp://h:1"), &on_1),
        None,
        "already there"
    );
    let mut s = sup("failover:(tcp://h:1)?reconnectSupported=false");
    assert_eq!(s.on_control(control("tcp://h:2"), &on_1), None);
}

#[test]
fn a_failover_prefers_the_group_with_the_most_room() {
    let mut s = sup("failover:(tcp://h:1)");
    let group = |name: &str, uri: &str, clients: u64| proto::ClusterGroup {
        name: name.into(),
        uris: vec![uri.into()],
        clients,
        capacity: 1000,
    };
    s.apply_view(&proto::ClusterView {
        groups: vec![
            group("dead", "tcp://h:1", 500),
            group("full", "tcp://h:2", 900),
            group("empty", "tcp://h:3", 0),
        ],
    });
    let dead = BrokerUrl::parse("tcp://h:1").unwrap();
    let mut first = std::collections::HashMap::new();
    for _ in 0..2000 {
        let list = s.connect_list(Some(&dead));
        assert_eq!(list.last().unwrap().to_string(), "tcp://h:1");
        *first.entry(list[0].to_string()).or_insert(0) += 1;
    }
    // Room 100 against 1000: about 1 in 11 goes to the fuller group first.
    let to_full = first.get("tcp://h:2").copied().unwrap_or(0);
    assert!(
        (60..=300).contains(&to_full),
        "{to_full} of 2000 went to the fuller group first: {first:?}"
    );
}

#[test]
fn update_uris_supported_false_ignores_pushes() {
    let mut s = sup("failover:(tcp://h:1)?updateURIsSupported=false&randomize=false");
    s.apply_view(&proto::ClusterView {
        groups: vec![proto::ClusterGroup {
            name: "g".into(),
            uris: vec!["tcp://h:3".into()],
            clients: 0,
            capacity: 0,
        }],
    });
    assert_eq!(names(&s.connect_list(None)), ["tcp://h:1"]);
}

#[test]
fn the_uris_file_is_read_and_only_a_change_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("uris");
    std::fs::write(&path, "tcp://h:7, tcp://h:8\n").unwrap();
    let mut s = sup(&format!(
        "failover:(tcp://h:1)?randomize=false&updateURIsURL=file://{}",
        path.display()
    ));
    assert!(s.read_uris_file());
    assert!(!s.read_uris_file(), "unchanged");
    assert_eq!(
        names(&s.connect_list(None)),
        ["tcp://h:7", "tcp://h:8", "tcp://h:1"]
    );
}
