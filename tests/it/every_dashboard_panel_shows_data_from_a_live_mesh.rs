//! Every Grafana dashboard in `grafana/dashboards` is valid JSON with unique panel ids whose
//! panels all use the `datasource` variable; and every query of every panel returns data from
//! a live mesh — a ZooKeeper-replicated hub and two edges joined by connectors — scraped by
//! Debian's real Prometheus with the configuration `meshmq prometheus-config` prints, after
//! traffic through every feature the dashboards show (queue and topic forwarding, a replay
//! back to the hub, a rebalance, a slow topic subscriber, dead letters, expiry, a refused connection). Prometheus
//! scrapes every member (`up == 1`, labelled with its group and member, no `exported_*`
//! duplicates), and every member's `/metrics` passes `promtool check metrics`.

use crate::common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mesh::{connect_clients, Mesh, MeshBuilder};
use common::prometheus::Prometheus;
use common::zk::ZooKeeper;
use common::{meshmq, promtool_check, run, GUARD};
use meshmq::client::{AckMode, Client, ClientOptions, Outgoing, SubscribeOptions};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// What the test puts for Grafana's `$__rate_interval` (Prometheus scrapes every second).
const RATE_INTERVAL: &str = "1m";
/// The destination the drill-down dashboard is evaluated for.
const DESTINATION: &str = "queue://orders";

fn dashboards() -> Vec<(PathBuf, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read dashboard");
            let json: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", p.display()));
            (p, json)
        })
        .collect()
}

fn panels(dashboard: &Value) -> &Vec<Value> {
    dashboard["panels"].as_array().expect("a panels array")
}

/// (panel title, expr) of every target of every panel.
fn targets(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                p["title"].as_str().unwrap_or("").to_string(),
                t["expr"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    out
}

/// Puts in the values Grafana would: every group, one destination, a rate window.
fn substitute(expr: &str) -> String {
    let out = expr
        .replace("$__rate_interval", RATE_INTERVAL)
        .replace("$group", ".+")
        .replace("$destination", DESTINATION);
    assert!(
        !out.contains('$'),
        "{expr}: a template variable this test does not know"
    );
    out
}

#[test]
fn every_dashboard_is_valid_json_with_unique_panel_ids_and_the_datasource_variable() {
    let all = dashboards();
    assert_eq!(all.len(), 4, "the four dashboards");
    let mut uids = HashSet::new();
    for (path, d) in &all {
        let name = path.display();
        assert!(
            uids.insert(d["uid"].as_str().expect("uid").to_string()),
            "{name}: uid reused"
        );
        assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
        let vars = d["templating"]["list"].as_array().expect("templating");
        let ds = vars
            .iter()
            .find(|v| v["name"] == "datasource")
            .unwrap_or_else(|| panic!("{name}: no datasource variable"));
        assert_eq!(ds["type"], "datasource", "{name}");
        assert_eq!(ds["query"], "prometheus", "{name}");
        for v in vars.iter().filter(|v| v["type"] == "query") {
            assert_eq!(v["datasource"]["uid"], "${datasource}", "{name}: {v}");
        }
        let mut ids = HashSet::new();
        assert!(!panels(d).is_empty(), "{name}: no panels");
        for p in panels(d) {
            let title = p["title"].as_str().unwrap_or("");
            let id = p["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{name}: {title}: no id"));
            assert!(
                ids.insert(id),
                "{name}: panel id {id} ({title}) is not unique"
            );
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{name}: {title} uses the datasource variable"
            );
            let ts = p["targets"].as_array().expect("targets");
            assert!(!ts.is_empty(), "{name}: {title} has no query");
            for t in ts {
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{name}: {title}");
                assert!(
                    t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                    "{name}: {title}: empty expr"
                );
            }
        }
    }
}

/// Moves asked by every edge so far.
fn rebalance_moves(mesh: &Mesh) -> u64 {
    ["edge-1", "edge-2"]
        .iter()
        .filter_map(|e| mesh.member(e).status())
        .filter_map(|s| s.cluster)
        .map(|c| c.rebalance_moves)
        .sum()
}

fn destination(mesh: &Mesh, member: &str, dest: &str) -> meshmq::broker::DestinationStats {
    mesh.member(member)
        .status()
        .and_then(|s| s.destinations.into_iter().find(|d| d.destination == dest))
        .unwrap_or_default()
}

fn connector_sum(
    mesh: &Mesh,
    member: &str,
    f: fn(&meshmq::network::ConnectorStatus) -> u64,
) -> u64 {
    mesh.member(member)
        .status()
        .map(|s| s.connectors.iter().map(f).sum())
        .unwrap_or(0)
}

/// Consumes `dest` on `url` (auto-ack) until cancelled, counting deliveries.
async fn consume(url: String, dest: &str, count: Arc<AtomicU64>, stop: CancellationToken) {
    let client = Client::connect(&url, ClientOptions::default())
        .await
        .expect("consumer connects");
    let mut sub = client
        .subscribe(dest, SubscribeOptions::default())
        .await
        .expect("subscribe");
    let dest = dest.to_string();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                d = sub.next() => match d {
                    Some(_) => { count.fetch_add(1, Ordering::Relaxed); }
                    None => panic!("{dest}: subscription closed"),
                },
                _ = stop.cancelled() => break,
            }
        }
        drop(client);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_panel_query_returns_data_from_a_live_mesh() {
    let zk = ZooKeeper::standalone();
    let rebalancing = "update_cluster_clients = true\nrebalance_cluster_clients = true";
    let mut mesh = MeshBuilder::new()
        .broker("max_redeliveries = 1")
        .broker("topic_pending_limit = 5")
        .replicated_group("hub", 3, "max_connections = 100", &zk.connect_string())
        .group("edge-1", 1, rebalancing)
        .group_lines("edge-1", "sync = \"local_disk\"")
        .group("edge-2", 1, rebalancing)
        // A replay takes a message a second hop (back where it came from); between the edges
        // only one hop, so a message from the hub parked on edge-1 can go back to the hub only.
        .connector("hub", "edge-1", "network_ttl = 3")
        .connector("hub", "edge-2", "network_ttl = 3")
        .connector("edge-1", "edge-2", "network_ttl = 1")
        .build();

    // Prometheus, configured by the real CLI, scrapes from the start.
    let printed = run(meshmq()
        .args(["prometheus-config", "--scrape-interval", "1s"])
        .arg(&mesh.topology));
    assert!(
        printed.status.success(),
        "prometheus-config failed: {}",
        printed.stderr
    );
    let prometheus = Prometheus::start(&printed.stdout);

    for m in ["huba", "hubb", "hubc", "edge-1"] {
        mesh.start(m);
    }
    mesh.wait_until("the hub has a master and edge-1 serves", |m| {
        m.master("hub").is_some() && m.member("edge-1").ready()
    });
    mesh.wait_for_view(&["hub", "edge-1"]);

    // Failover clients on edge-1 alone; edge-2 joins and edge-1 moves some of them there.
    let url = mesh.failover_url(
        &["edge-1"],
        "initialReconnectDelay=50&maxReconnectDelay=1000",
    );
    let movers = connect_clients(&[(url, 40)]).await;
    mesh.start("edge-2");
    mesh.wait_until("edge-2 serves", |m| m.member("edge-2").ready());
    mesh.wait_for_view(&["hub", "edge-1", "edge-2"]);
    mesh.wait_until("edge-1 moved clients to edge-2 (rebalance)", |m| {
        rebalance_moves(m) > 0
    });
    // The round is over before other clients connect (a move would take them away).
    mesh.wait_until("the rebalancing round is over", |m| {
        ["edge-1", "edge-2"].iter().all(|e| {
            m.member(e)
                .status()
                .and_then(|s| s.cluster)
                .is_some_and(|c| c.rebalance_pending == 0)
        })
    });

    let hub_url = mesh.master("hub").expect("hub master").url();
    let (edge1_url, edge2_url) = (mesh.member("edge-1").url(), mesh.member("edge-2").url());
    let stop = CancellationToken::new();

    // Queue and topic traffic from the hub to consumers on both edges.
    let orders = Arc::new(AtomicU64::new(0));
    let prices = Arc::new(AtomicU64::new(0));
    consume(edge1_url.clone(), DESTINATION, orders.clone(), stop.clone()).await;
    consume(edge2_url.clone(), DESTINATION, orders.clone(), stop.clone()).await;
    consume(
        edge2_url.clone(),
        "topic://prices",
        prices.clone(),
        stop.clone(),
    )
    .await;
    mesh.wait_until("the hub sees demand from both edges", |m| {
        let hub = m.master("hub").expect("hub master").name.clone();
        let s = m.member(&hub).status().expect("hub status");
        s.connectors.len() == 2 && s.connectors.iter().all(|c| c.remote_demand > 0)
    });
    let producer = Client::connect(&hub_url, ClientOptions::default())
        .await
        .expect("producer connects");
    for i in 0..200 {
        producer
            .send_with_receipt(
                DESTINATION,
                &Outgoing::new(format!("o{i}")).persistent(true),
            )
            .await
            .expect("persistent send");
        producer
            .send("topic://prices", &Outgoing::new(format!("p{i}")))
            .await
            .expect("topic send");
    }
    producer.flush().await.expect("flush");
    mesh.wait_until("both edges consumed every order and price", |_| {
        orders.load(Ordering::Relaxed) >= 200 && prices.load(Ordering::Relaxed) >= 200
    });

    // Persistent sends straight to edge-1, whose group syncs to disk (journal fsyncs).
    let edge1 = Client::connect(&edge1_url, ClientOptions::default())
        .await
        .expect("edge-1 client");
    for i in 0..20 {
        edge1
            .send_with_receipt(
                DESTINATION,
                &Outgoing::new(format!("e{i}")).persistent(true),
            )
            .await
            .expect("persistent send on edge-1");
    }

    // A slow topic subscriber on edge-2: prefetch 1, never reads; its pending list fills.
    let slow_client = Client::connect(&edge2_url, ClientOptions::default())
        .await
        .expect("slow subscriber connects");
    let _slow = slow_client
        .subscribe(
            "topic://ticks",
            SubscribeOptions {
                prefetch: 1,
                ack: AckMode::ClientIndividual,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe ticks");
    mesh.wait_until("the hub sees the ticks subscriber", |m| {
        let hub = m.master("hub").expect("hub master").name.clone();
        m.member(&hub)
            .status()
            .is_some_and(|s| s.connectors.iter().map(|c| c.remote_demand).sum::<u64>() >= 3)
    });
    for i in 0..50 {
        producer
            .send("topic://ticks", &Outgoing::new(format!("t{i}")))
            .await
            .expect("publish ticks");
    }
    producer.flush().await.expect("flush");
    mesh.wait_until("edge-2 drops ticks for its slow subscriber", |m| {
        destination(m, "edge-2", "topic://ticks").dropped > 0
    });

    // Dead letters on edge-1: each message refused twice (max_redeliveries = 1).
    let mut retry = edge1
        .subscribe(
            "queue://retry",
            SubscribeOptions {
                ack: AckMode::ClientIndividual,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe retry");
    for i in 0..2 {
        edge1
            .send_with_receipt("queue://retry", &Outgoing::new(format!("r{i}")))
            .await
            .expect("send retry");
    }
    let mut refused_twice = 0;
    while refused_twice < 2 {
        let d = retry.next_timeout(GUARD).await.expect("a retry delivery");
        retry.nack(&d).await.expect("nack");
        refused_twice += usize::from(d.redelivery_count == 1);
    }
    mesh.wait_until("edge-1 dead-lettered both", |m| {
        destination(m, "edge-1", "queue://retry").dead_lettered == 2
    });

    // Expiry on edge-2: messages nobody consumes, with a short time to live.
    let edge2 = Client::connect(&edge2_url, ClientOptions::default())
        .await
        .expect("edge-2 client");
    for i in 0..5 {
        edge2
            .send_with_receipt(
                "queue://stale",
                &Outgoing::new(format!("s{i}")).ttl(Duration::from_millis(100)),
            )
            .await
            .expect("send stale");
    }
    mesh.wait_until("edge-2 expired the stale messages", |m| {
        destination(m, "edge-2", "queue://stale").expired == 5
    });

    // A refused connection: the hub's listener takes 100.
    let mut extra = Vec::new();
    loop {
        match Client::connect(&hub_url, ClientOptions::default()).await {
            Ok(c) => extra.push(c),
            Err(_) => break,
        }
        assert!(extra.len() <= 100, "the hub never refused a connection");
    }
    drop(extra);

    // Every member scraped, labelled with its group and member, and nothing renamed.
    let members: BTreeMap<String, String> = mesh
        .members
        .iter()
        .map(|m| (m.name.clone(), m.group.clone()))
        .collect();
    let last = std::cell::RefCell::new(String::new());
    let every_member_scraped = || {
        let up = prometheus.query("up{job=\"meshmq\"}").expect("query up");
        let seen: BTreeMap<String, (String, String)> = up
            .iter()
            .map(|s| {
                (
                    s["metric"]["member"].as_str().unwrap_or("").to_string(),
                    (
                        s["metric"]["group"].as_str().unwrap_or("").to_string(),
                        s["value"][1].as_str().unwrap_or("").to_string(),
                    ),
                )
            })
            .collect();
        let want: BTreeMap<String, (String, String)> = members
            .iter()
            .map(|(m, g)| (m.clone(), (g.clone(), "1".to_string())))
            .collect();
        *last.borrow_mut() = format!("up = {seen:?}, want {want:?}");
        seen == want
    };
    common::wait::poll()
        .every(Duration::from_millis(200))
        .until_or(
            "Prometheus scrapes every member",
            every_member_scraped,
            || format!("{}\n{}", last.borrow(), prometheus.log()),
        );
    for label in ["exported_group", "exported_member", "exported_job"] {
        let renamed = prometheus
            .query(&format!("count({{job=\"meshmq\",{label}!=\"\"}})"))
            .expect("query");
        assert!(renamed.is_empty(), "series carry {label}: {renamed:?}");
    }
    let named = prometheus
        .query("count by (group, member) ({job=\"meshmq\",__name__=~\"meshmq_.+\"})")
        .expect("query");
    assert_eq!(
        named.len(),
        members.len(),
        "every member's meshmq_* series carry its group and member: {named:?}"
    );

    // promtool on every member's exposition.
    for m in &mesh.members {
        let (code, text) = common::http_get(m.admin, "/metrics").expect("GET /metrics");
        assert_eq!(code, 200);
        let checked = promtool_check(&text);
        let lint = format!(
            "{}{}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
        assert!(
            checked.status.success() && lint.is_empty(),
            "{}: promtool: {lint}",
            m.name
        );
    }

    // Every template variable has values, and every panel's every query returns data.
    let all = dashboards();
    for (_, d) in &all {
        for v in d["templating"]["list"]
            .as_array()
            .expect("templating")
            .iter()
            .filter(|v| v["type"] == "query")
        {
            let def = v["definition"].as_str().expect("definition");
            let args = def
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|r| r.rsplit_once(','))
                .unwrap_or_else(|| panic!("{def}: not label_values(selector, label)"));
            let (selector, label) = (substitute(args.0.trim()), args.1.trim().to_string());
            // Prometheus answers from what it has scraped so far: wait for a scrape that
            // carries the series, up to the guard.
            let values = common::wait::poll()
                .every(Duration::from_millis(200))
                .settle(
                    || {
                        prometheus
                            .label_values(&label, &selector)
                            .expect("label values")
                    },
                    |values| !values.is_empty(),
                );
            assert!(
                !values.is_empty(),
                "{}: variable {}: {def} has no values after {GUARD:?}",
                d["title"],
                v["name"]
            );
            if v["name"] == "destination" {
                assert!(values.iter().any(|x| x == DESTINATION), "{values:?}");
            }
        }
    }
    let deadline = Instant::now() + GUARD;
    loop {
        let mut empty = Vec::new();
        for (_, d) in &all {
            let title = d["title"].as_str().unwrap_or("");
            for (panel, expr) in targets(d) {
                let promql = substitute(&expr);
                match prometheus.query(&promql) {
                    Ok(r) if !r.is_empty() => {}
                    Ok(_) => empty.push(format!("{title} / {panel}: {promql} (no data)")),
                    Err(e) => empty.push(format!("{title} / {panel}: {e}")),
                }
            }
        }
        if empty.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            stop.cancel();
            panic!(
                "{} panel queries return no data from the live mesh:\n{}",
                empty.len(),
                empty.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Last, a replay: messages parked on edge-1 after its consumer left go back to a consumer
    // on the hub (the replayed-messages panels exist from the start, at zero).
    let parked_client = Client::connect(&edge1_url, ClientOptions::default())
        .await
        .expect("parked consumer connects");
    let mut parked = parked_client
        .subscribe(
            "queue://parked",
            SubscribeOptions {
                ack: AckMode::ClientIndividual,
                prefetch: 5,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe parked");
    mesh.wait_until("the hub sees the parked consumer", |m| {
        let hub = m.master("hub").expect("hub master");
        common::http_get(hub.admin, "/metrics").is_ok_and(|(_, text)| {
            common::metric_sum(
                &text,
                "meshmq_remote_demand",
                &["destination=\"queue://parked\""],
            ) > 0.0
        })
    });
    for i in 0..40 {
        producer
            .send_with_receipt("queue://parked", &Outgoing::new(format!("k{i}")))
            .await
            .expect("send parked");
    }
    let d = parked.next_timeout(GUARD).await.expect("a parked delivery");
    parked.ack_with_receipt(&d).await.expect("ack");
    mesh.wait_until("every parked message reached edge-1", |m| {
        destination(m, "edge-1", "queue://parked").enqueued == 40
    });
    parked_client.close().await.expect("close parked consumer");
    let replayed = Arc::new(AtomicU64::new(0));
    let polls = AtomicU64::new(0);
    // The hub is on their path: only a replay takes them back there.
    consume(
        hub_url.clone(),
        "queue://parked",
        replayed.clone(),
        stop.clone(),
    )
    .await;
    mesh.wait_until(
        "edge-1 replayed the parked messages to the hub's consumer",
        |m| {
            let done = connector_sum(m, "edge-1", |c| c.replayed) > 0
                && replayed.load(Ordering::Relaxed) >= 39;
            if !done && polls.fetch_add(1, Ordering::Relaxed) % 100 == 0 {
                eprintln!(
                    "replay so far: edge-1 {:?}, hub consumer got {}, edge-1 connectors {:?}",
                    destination(m, "edge-1", "queue://parked"),
                    replayed.load(Ordering::Relaxed),
                    m.member("edge-1").status().map(|s| s.connectors)
                );
            }
            done
        },
    );
    stop.cancel();
    drop(movers);
}
