//! Failover URLs are accepted everywhere a URL is: `meshmq produce` and `meshmq consume` take
//! `failover:(…)?options` and skip a dead first URI; `meshmq bench queue --url failover:(…)`
//! runs; a connector whose `uri` lists a dead address before the target reaches the target and
//! forwards; and an unknown failover option is an error that names it (in the CLI, before
//! anything connects).

use crate::common;

use common::mesh::MeshBuilder;
use common::{free_ports, meshmq, run, CliChild};

#[test]
fn cli_bench_and_connectors_take_failover_urls() {
    let dead = format!("tcp://127.0.0.1:{}", free_ports(1)[0]);
    let mut mesh = MeshBuilder::new()
        .group("hub", 1, "")
        .group("edge", 1, "")
        .section(&format!(
            "[[connector]]\nfrom = \"hub\"\nto = \"edge\"\nuri = \"failover:({dead},{{url:edge}})?randomize=false&initialReconnectDelay=50&maxReconnectDelay=200\"\n"
        ))
        .build();
    mesh.start_all();
    mesh.wait_until("the hub's connector to the edge is up", |m| {
        m.member("hub")
            .status()
            .is_some_and(|s| s.connectors.iter().any(|c| c.up))
    });
    let hub = mesh.member("hub").url();
    let edge = mesh.member("edge").url();

    // A consumer on the edge, a producer on the hub: the connector carries the messages.
    let consumer = CliChild::spawn(
        meshmq()
            .arg("consume")
            .arg(format!("failover:({dead},{edge})?randomize=false"))
            .args(["--dest", "queue://cli.failover", "--count", "3", "--json"]),
    );
    mesh.wait_until("the hub learned the edge's consumer", |m| {
        m.member("hub")
            .status()
            .is_some_and(|s| s.connectors.iter().any(|c| c.remote_demand > 0))
    });
    let produced = run(meshmq()
        .arg("produce")
        .arg(format!(
            "failover:({dead},{hub})?randomize=false&maxReconnectAttempts=3"
        ))
        .args([
            "--dest",
            "queue://cli.failover",
            "--count",
            "3",
            "--receipts",
        ]));
    assert!(produced.status.success(), "{produced:?}");
    let consumed = consumer.finish();
    assert!(consumed.status.success(), "{consumed:?}");
    assert_eq!(
        consumed
            .stdout
            .lines()
            .filter(|l| l.contains("\"body\""))
            .count(),
        3,
        "{consumed:?}"
    );

    let bench = run(meshmq().args([
        "bench",
        "queue",
        "--url",
        &format!("failover:({dead},{hub})?randomize=false"),
        "--count",
        "2000",
        "--destination",
        "queue://bench.failover.url",
    ]));
    assert!(bench.status.success(), "{bench:?}");
    let report: serde_json::Value =
        serde_json::from_str(bench.stdout.trim()).expect("one JSON line");
    assert_eq!(report["received"], 2000, "{report}");

    let refused = run(meshmq()
        .arg("produce")
        .arg(format!("failover:({hub})?randomise=false&jitter=1"))
        .args(["--dest", "queue://x"]));
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("unknown failover option(s) randomise, jitter"),
        "{refused:?}"
    );
}
