use super::*;

fn stats(name: &str, enqueued: u64, depth: u64) -> DestinationStats {
    DestinationStats {
        destination: name.to_string(),
        enqueued,
        depth,
        ..DestinationStats::default()
    }
}

#[test]
fn destinations_beyond_the_cap_are_summed_under_other() {
    let shown = cap_destinations(
        vec![
            stats("queue://a", 5, 1),
            stats("queue://b", 50, 2),
            stats("queue://c", 7, 4),
            stats("queue://d", 1, 8),
        ],
        2,
    );
    let names: Vec<&str> = shown.iter().map(|s| s.destination.as_str()).collect();
    assert_eq!(names, ["queue://b", "queue://c", "_other"]);
    assert_eq!(shown[2].enqueued, 6);
    assert_eq!(shown[2].depth, 9);
    let under = cap_destinations(vec![stats("queue://a", 1, 1)], 2);
    assert_eq!(under.len(), 1);
}

#[test]
fn a_destination_pushed_out_of_the_cap_loses_its_own_series() {
    let labels = "group=\"g\",member=\"m\"";
    let mut first = String::new();
    render_destinations(&mut first, labels, vec![stats("queue://a", 1, 3)], 1);
    assert!(first.contains(
        "meshmq_destination_depth{group=\"g\",member=\"m\",destination=\"queue://a\"} 3"
    ));
    let mut second = String::new();
    render_destinations(
        &mut second,
        labels,
        vec![stats("queue://a", 1, 3), stats("queue://b", 9, 1)],
        1,
    );
    assert!(!second.contains("destination=\"queue://a\""), "{second}");
    assert!(second
        .contains("meshmq_destination_depth{group=\"g\",member=\"m\",destination=\"_other\"} 3"));
    // Every family once, with help and type.
    assert_eq!(
        second.matches("# HELP ").count(),
        DESTINATION_FAMILIES.len()
    );
    assert_eq!(
        second.matches("# TYPE ").count(),
        DESTINATION_FAMILIES.len()
    );
}

#[test]
fn label_values_are_escaped() {
    assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
}

#[test]
fn latency_histogram_buckets_are_cumulative_and_count_every_sample() {
    let h = LatencyHistogram::new("meshmq_test_latency_seconds", "test");
    let mut batch = LatencyBatch::default();
    for ms in [0, 1, 2, 3, 40, 60_000] {
        batch.record_ms(ms);
    }
    h.add(&mut batch);
    assert_eq!(batch.count, 0);
    let mut out = String::new();
    h.render(&mut out, "group=\"g\"");
    assert!(out.contains("meshmq_test_latency_seconds_bucket{group=\"g\",le=\"0.001\"} 2\n"));
    assert!(out.contains("meshmq_test_latency_seconds_bucket{group=\"g\",le=\"0.002\"} 3\n"));
    assert!(out.contains("meshmq_test_latency_seconds_bucket{group=\"g\",le=\"0.05\"} 5\n"));
    assert!(out.contains("meshmq_test_latency_seconds_bucket{group=\"g\",le=\"30\"} 5\n"));
    assert!(out.contains("meshmq_test_latency_seconds_bucket{group=\"g\",le=\"+Inf\"} 6\n"));
    assert!(out.contains("meshmq_test_latency_seconds_count{group=\"g\"} 6\n"));
    assert!(out.contains("meshmq_test_latency_seconds_sum{group=\"g\"} 60.046\n"));
}

#[test]
fn replication_lag_renders_one_escaped_series_per_slave_and_nothing_without_slaves() {
    let mut out = String::from("meshmq_up{group=\"g\",member=\"g-1\"} 1");
    render_replication_lag(&mut out, "g", "g-1", &[]);
    assert_eq!(out, "meshmq_up{group=\"g\",member=\"g-1\"} 1");
    render_replication_lag(
        &mut out,
        "g",
        "g-1",
        &[("g-2".into(), 0), ("odd\"\\name".into(), 17)],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "meshmq_up{group=\"g\",member=\"g-1\"} 1");
    assert!(lines[1].starts_with("# HELP meshmq_replication_lag_records "));
    assert_eq!(lines[2], "# TYPE meshmq_replication_lag_records gauge");
    assert_eq!(
        lines[3],
        "meshmq_replication_lag_records{slave=\"g-2\",group=\"g\",member=\"g-1\"} 0"
    );
    assert_eq!(
        lines[4],
        "meshmq_replication_lag_records{slave=\"odd\\\"\\\\name\",group=\"g\",member=\"g-1\"} 17"
    );
    assert_eq!(lines.len(), 5);
}

#[test]
fn process_usage_reads_this_process() {
    let p = process_usage();
    assert!(p.rss_bytes > 0);
    assert!(p.open_fds > 0);
}
