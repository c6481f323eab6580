//! The `meshmq` CLI works end to end as real processes: `produce`/`consume` move bodies intact
//! through a `broker`, `up` serves until SIGINT and then stops its member cleanly, and `check`'s
//! exit code tells a valid topology from an invalid one; a client that cannot connect says why
//! once (the URL and the cause, each a single time, for a plain and a failover URL).

use crate::common;

use common::topology::{Group, Member};
use common::{meshmq, run, write_file, Broker, CliChild, Config, Ports, GUARD};
use meshmq::client::{Outgoing, SubscribeOptions};

#[derive(serde::Deserialize)]
struct Consumed {
    destination: String,
    body: String,
    redelivery_count: u32,
    headers: Vec<(String, String)>,
}

/// Runs `meshmq consume URL --dest DEST --count N --json` and returns the messages it printed.
fn consume_json(url: &str, dest: &str, count: usize) -> Vec<Consumed> {
    let done = run(meshmq().args([
        "consume",
        url,
        "--dest",
        dest,
        "--count",
        &count.to_string(),
        "--timeout",
        "60",
        "--json",
    ]));
    assert!(done.status.success(), "consume failed: {done:?}");
    let lines: Vec<&str> = done.stdout.lines().collect();
    assert_eq!(lines.len(), count + 1, "N messages and a summary: {done:?}");
    let summary: serde_json::Value = serde_json::from_str(lines[count]).expect("summary line");
    assert_eq!(summary["received"], count as u64);
    lines[..count]
        .iter()
        .map(|l| serde_json::from_str(l).expect("a message line"))
        .collect()
}

#[test]
fn produce_and_consume_processes_move_bodies_intact_through_a_broker() {
    let broker = Broker::start(&Config::new());
    let url = broker.url();
    let text = "héllo wörld — body with spaces, ünïcode and = signs";

    let sent = run(meshmq().args([
        "produce",
        &url,
        "--dest",
        "queue://cli.text",
        "--body",
        text,
        "--count",
        "25",
        "--receipts",
        "--header",
        "trace=abc=1",
    ]));
    assert!(sent.status.success(), "produce failed: {sent:?}");
    assert!(
        sent.stdout
            .starts_with("sent 25 messages to queue://cli.text"),
        "{sent:?}"
    );

    let got = consume_json(&url, "queue://cli.text", 25);
    for m in &got {
        assert_eq!(m.destination, "queue://cli.text");
        assert_eq!(m.body, text);
        assert_eq!(m.redelivery_count, 0);
        assert_eq!(m.headers, vec![("trace".to_string(), "abc=1".to_string())]);
    }

    // A body far larger than a socket read, filler bytes.
    let big = run(meshmq().args([
        "produce",
        &url,
        "--dest",
        "queue://cli.big",
        "--size",
        "300000",
        "--count",
        "3",
        "--receipts",
    ]));
    assert!(big.status.success(), "produce failed: {big:?}");
    let got = consume_json(&url, "queue://cli.big", 3);
    for m in &got {
        assert_eq!(m.body.len(), 300_000);
        assert!(m.body.bytes().all(|b| b == b'x'));
    }

    let depth =
        broker.destination("queue://cli.text").depth + broker.destination("queue://cli.big").depth;
    assert_eq!(depth, 0, "everything consumed and acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn up_serves_a_one_member_topology_until_sigint_then_stops_it_cleanly() {
    let ports = Ports::pick();
    let dir = tempfile::tempdir().expect("tempdir");
    let topology = write_file(dir.path(), "mesh.toml", &Config::new().topology(ports));
    let mut up = CliChild::spawn(meshmq().arg("up").arg(&topology));

    common::wait_until("`up` reports the mesh ready", || {
        assert!(
            up.proc.try_wait().is_none(),
            "up exited early:\n{}\n{}",
            up.stdout(),
            up.stderr()
        );
        up.stdout().contains("press Ctrl-C to stop every member")
    });
    let (code, _) = common::http_get(ports.admin_addr(), "/readyz").expect("readyz");
    assert_eq!(code, 200);
    let members = common::children_of(up.proc.pid());
    assert_eq!(members.len(), 1, "one member process: {members:?}");

    let client = meshmq::client::Client::connect(&ports.url(), Default::default())
        .await
        .expect("connect to the member `up` started");
    let mut sub = client
        .subscribe("queue://up.q", SubscribeOptions::default())
        .await
        .expect("subscribe");
    for i in 0..10 {
        client
            .send_with_receipt("queue://up.q", &Outgoing::new(format!("m{i}")))
            .await
            .expect("send");
    }
    for i in 0..10 {
        let d = tokio::time::timeout(GUARD, sub.next())
            .await
            .expect("delivery within the guard")
            .expect("subscription open");
        assert_eq!(&d.body[..], format!("m{i}").as_bytes());
    }
    client.close().await.expect("close");

    up.proc.signal(libc::SIGINT);
    let status = up
        .proc
        .wait_timeout(GUARD)
        .expect("`up` exits after SIGINT");
    let stdout = up.stdout();
    assert!(
        status.success(),
        "up exited with {status}:\n{stdout}\n{}",
        up.stderr()
    );
    assert!(
        stdout.contains("member hub-1 stopped (exit status: 0)"),
        "the member exited 0:\n{stdout}"
    );
    for pid in members {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "member process {pid} is gone"
        );
    }
    assert!(common::refuses_connections(ports.listen_addr()));
    assert!(common::refuses_connections(ports.admin_addr()));
}

#[test]
fn check_exits_zero_on_a_valid_topology_and_non_zero_with_the_error_otherwise() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = Ports::pick();

    let valid = write_file(dir.path(), "valid.toml", &Config::new().topology(ports));
    let ok = run(meshmq().arg("check").arg(&valid));
    assert!(ok.status.success(), "{ok:?}");
    assert!(
        ok.stdout
            .ends_with(&format!("{}: valid\n", valid.display())),
        "{ok:?}"
    );
    assert_eq!(ok.stderr, "");

    let invalid = write_file(
        dir.path(),
        "invalid.toml",
        &Config::new()
            .broker("max_redeliveries = -1")
            .topology(ports),
    );
    let bad = run(meshmq().arg("check").arg(&invalid));
    assert!(!bad.status.success(), "{bad:?}");
    assert_eq!(bad.stdout, "");
    assert_eq!(
        bad.stderr,
        format!(
            "meshmq: {}: broker.max_redeliveries: is -1, but must be at least 0; write a whole number from 0 to 4294967295\n",
            invalid.display()
        )
    );

    let edge = Ports::pick();
    let connector = write_file(
        dir.path(),
        "connector.toml",
        &Config::new()
            .topology_of(ports)
            .group(
                Group::new("edge")
                    .member(Member::new("edge-1", edge.admin_addr()).tcp(edge.listen_addr())),
            )
            .connector("hub", "edge", &[])
            .text(),
    );
    // A mesh of two groups and a connector is valid and served.
    let accepted = run(meshmq().arg("check").arg(&connector));
    assert!(accepted.status.success(), "{accepted:?}");
    assert!(accepted.stdout.contains("connector"), "{accepted:?}");
    // Checking starts nothing.
    assert!(common::refuses_connections(ports.listen_addr()));
}

#[test]
fn a_client_that_cannot_connect_names_the_url_and_the_cause_once() {
    let port = common::free_ports(2);
    let plain = format!("tcp://127.0.0.1:{}", port[0]);
    let failover = format!(
        "failover:(tcp://127.0.0.1:{},tcp://127.0.0.1:{})?maxReconnectAttempts=0&initialReconnectDelay=10",
        port[0], port[1]
    );
    for url in [&plain, &failover] {
        let done = run(meshmq().args(["produce", url, "--dest", "queue://q", "--count", "1"]));
        assert!(!done.status.success(), "nothing listens on {url}");
        let last = done.stderr.lines().last().unwrap_or_default().to_string();
        assert_eq!(last.matches("Connection refused").count(), 1, "{last}");
        let named = url.split('?').next().unwrap_or_default();
        assert_eq!(last.matches(named).count(), 1, "the URL once: {last}");
        assert_eq!(
            last.matches("cannot connect").count(),
            1,
            "one 'cannot connect': {last}"
        );
    }
}
