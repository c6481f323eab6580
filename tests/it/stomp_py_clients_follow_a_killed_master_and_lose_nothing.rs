//! stomp.py clients survive `kill -9` of their master (S28, stomp.py #364/#255/#330): a
//! producer and a `client-individual` consumer list both members of a file-lock pair in
//! `host_and_ports`; the master is killed under load; both connect to the standby that took
//! over (the consumer subscribes again), and every receipted message is delivered, none is
//! invented, and no message arrives unflagged after its first copy (a copy delivered again by
//! the new master carries `redelivered`).

use crate::common;
use crate::common_stomp;

use common::history::Ledger;
use common::mesh::MeshBuilder;
use common::{destination_at, wait_until};

const QUEUE: &str = "stomp.failover";
const TOTAL: usize = 1500;

fn strings(v: &serde_json::Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {v}"))
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_py_clients_follow_a_killed_master_and_lose_nothing() {
    let mut mesh = MeshBuilder::new().group("edge", 2, "").stomp().build();
    tokio::task::block_in_place(|| mesh.start_all());
    let (master, standby) = mesh.master_and_standby("edge");
    let port = |name: &str| mesh.member(name).stomp.expect("a stomp listener").port();
    let (master_port, standby_port) = (port(&master), port(&standby));
    let ports = format!("{master_port},{standby_port}");
    let run = tokio::task::spawn_blocking(move || {
        common_stomp::python(
            "failover_resubscribe.py",
            &[ports, format!("/queue/{QUEUE}"), TOTAL.to_string()],
        )
    });

    let admin = mesh.member(&master).admin;
    tokio::task::block_in_place(|| {
        wait_until("the consumer has acknowledged 300 messages", || {
            destination_at(admin, &format!("queue://{QUEUE}")).dequeued >= 300
        })
    });
    tokio::task::block_in_place(|| {
        mesh.kill9(&master);
        mesh.wait_until("the standby serves", |m| m.member(&standby).ready());
    });
    let seen = run.await.expect("the stomp.py clients");

    let mut ledger = Ledger::<String>::default();
    for body in strings(&seen, "in_doubt") {
        ledger.in_doubt(body);
    }
    for body in strings(&seen, "accepted") {
        ledger.accepted(body);
    }
    let deliveries = seen["deliveries"].as_array().expect("deliveries");
    for d in deliveries {
        let body = d[0].as_str().expect("a body").to_string();
        ledger.delivered(body, d[1].as_bool().expect("a flag"));
    }
    let judged = ledger.judge();
    let unflagged = judged.unflagged_after_the_first();
    eprintln!(
        "{} receipted, {} in doubt, {} deliveries ({} flagged copies); consumer connects to {}, \
         producer to {}; lost {}, invented {}, unflagged after the first {}; errors {}",
        ledger.accepted.len(),
        ledger.in_doubt.len(),
        deliveries.len(),
        judged.flagged_duplicates,
        seen["consumer_connects"],
        seen["producer_connects"],
        judged.lost.len(),
        judged.invented.len(),
        unflagged.len(),
        seen["errors"]
    );
    assert!(
        judged.lost.is_empty() && judged.invented.is_empty() && unflagged.is_empty(),
        "lost {:?}, invented {:?}, unflagged after the first copy {:?}",
        judged.lost,
        judged.invented,
        unflagged
    );
    assert_eq!(
        ledger.accepted.len(),
        TOTAL,
        "every message was receipted in the end"
    );
    for side in ["consumer_connects", "producer_connects"] {
        let connects: Vec<u64> = seen[side]
            .as_array()
            .expect("connects")
            .iter()
            .map(|p| p.as_u64().expect("a port"))
            .collect();
        assert_eq!(
            connects,
            [u64::from(master_port), u64::from(standby_port)],
            "{side}: the master, then the standby that took over"
        );
    }
    // The consumer's second subscription took messages: those sent after the failover.
    let last = format!("m-{}", TOTAL - 1);
    assert!(
        deliveries.iter().any(|d| d[0] == last.as_str()),
        "the last message never reached the resubscribed consumer"
    );
}
