//! Changing a running member's topology is safe: a file that does not validate changes
//! nothing (`meshmq apply` prints the checker's errors and sends nothing); a write without the
//! admin token — or to a member whose topology has none — is refused and counted, and changes
//! nothing; and a user removed by an apply loses access at once: its open connection is
//! closed and it cannot log in again, while other users' connections carry on.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::{meshmq, metric_sum, run, Broker, Config, GUARD};
use meshmq::client::{AckMode, Client, ClientOptions, Outgoing, SubscribeOptions};

const TOKEN: &str = "refuse-test-admin-token-0123456789";

/// A blocking HTTP/1.1 PUT of a JSON body: the status code and the body.
fn http_put(addr: SocketAddr, path: &str, bearer: Option<&str>, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, GUARD).expect("connect to the admin port");
    s.set_read_timeout(Some(GUARD)).expect("timeout");
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write the request");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read the answer");
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

fn running_topology(b: &Broker) -> serde_json::Value {
    let (code, body) = common::http_get(b.admin(), "/topology").expect("GET /topology");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

fn write_body(file: &Path, text: &str) -> String {
    serde_json::json!({"file": file.display().to_string(), "text": text}).to_string()
}

#[test]
fn an_invalid_file_or_a_stranger_changes_nothing() {
    let broker = Broker::start(&Config::new().section(&format!("[admin]\ntoken = \"{TOKEN}\"\n")));
    let original = std::fs::read_to_string(broker.topology()).expect("topology");
    let dir = broker.topology().parent().expect("dir").to_path_buf();

    // A file the checker refuses: nothing is sent, the errors are printed.
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        format!("{original}\n[[connector]]\nfrom = \"hub\"\nto = \"nowhere\"\n"),
    )
    .expect("write");
    let out = run(meshmq().arg("apply").arg(&bad));
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("nothing was changed") && out.stderr.contains("nowhere"),
        "the checker's errors are not printed:\n{}",
        out.stderr
    );
    // Sent anyway, past the CLI, the member refuses it too.
    let bad_text = std::fs::read_to_string(&bad).expect("read");
    let (code, body) = http_put(
        broker.admin(),
        "/topology",
        Some(TOKEN),
        &write_body(&bad, &bad_text),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("nowhere"), "{body}");

    // A valid change, but without the token, with a wrong one, or through the CLI with a
    // wrong one.
    let changed = dir.join("changed.toml");
    let changed_text =
        format!("{original}\n[[policy]]\ndestination = \"queue://x.>\"\nprefetch = 5\n");
    std::fs::write(&changed, &changed_text).expect("write");
    let (code, body) = http_put(
        broker.admin(),
        "/topology",
        None,
        &write_body(&changed, &changed_text),
    );
    assert_eq!(code, 401, "{body}");
    let (code, body) = http_put(
        broker.admin(),
        "/topology",
        Some("not-the-admin-token-at-all"),
        &write_body(&changed, &changed_text),
    );
    assert_eq!(code, 401, "{body}");
    let out = run(meshmq()
        .arg("apply")
        .arg(&changed)
        .env("MESHMQ_ADMIN_TOKEN", "another-wrong-token-0000"));
    assert_eq!(out.status.code(), Some(4), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("hub-1: REFUSED (401)"),
        "{}",
        out.stdout
    );
    let metrics = broker.metrics();
    assert_eq!(
        metric_sum(
            &metrics,
            "meshmq_admin_writes_refused_total",
            &["reason=\"unauthenticated\""]
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "meshmq_admin_writes_refused_total",
            &["reason=\"wrong_token\""]
        ),
        2.0,
        "{metrics}"
    );
    // A file for another mesh, with the right token: refused, nothing changed.
    let other_mesh = original.replace("name = \"test\"", "name = \"other\"");
    let (code, body) = http_put(
        broker.admin(),
        "/topology",
        Some(TOKEN),
        &write_body(&changed, &other_mesh),
    );
    assert_eq!(code, 409, "{body}");

    let running = running_topology(&broker);
    assert_eq!(running["version"], 0, "something changed: {running}");
    assert_eq!(running["text"], original.as_str());

    // With the token, the same change is taken.
    let out = run(meshmq().arg("apply").arg(&changed));
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(running_topology(&broker)["version"], 1);

    // A member whose topology has no admin token takes no write at all.
    let open = Broker::start(&Config::new());
    let text = std::fs::read_to_string(open.topology()).expect("topology");
    let (code, body) = http_put(
        open.admin(),
        "/topology",
        Some(TOKEN),
        &write_body(open.topology(), &text),
    );
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        metric_sum(
            &open.metrics(),
            "meshmq_admin_writes_refused_total",
            &["reason=\"no_admin_token\""]
        ),
        1.0
    );
    assert_eq!(running_topology(&open)["version"], 0);
}

fn user(name: &str, password: &str, groups: &str) -> String {
    format!(
        "[[security.user]]\nname = \"{name}\"\npassword_hash = \"{}\"\ngroups = {groups}\n",
        meshmq::security::hash_password(password)
    )
}

fn login(name: &str, password: &str) -> ClientOptions {
    ClientOptions {
        username: Some(name.into()),
        password: Some(password.into()),
        ..ClientOptions::default()
    }
}

fn acl(read: &str) -> String {
    format!("[[security.acl]]\ndestination = \"queue://apply.>\"\nread = {read}\nwrite = [\"users\"]\nadmin = [\"users\"]\n")
}

async fn subscribe(client: &Client, dest: &str) -> meshmq::client::Subscription {
    client
        .subscribe(
            dest,
            SubscribeOptions {
                ack: AckMode::ClientIndividual,
                ..SubscribeOptions::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("subscribe to {dest}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_user_or_a_revoked_right_is_lost_at_once() {
    let alice = user("alice", "alice-pw", "[\"users\"]");
    let bob = user("bob", "bob-pw", "[\"users\"]");
    let carol = user("carol", "carol-pw", "[\"users\", \"readers\"]");
    let admin = format!("[admin]\ntoken = \"{TOKEN}\"\n");
    let (all_read, readers_read) = (acl("[\"users\"]"), acl("[\"readers\"]"));
    let broker = Broker::start(
        &Config::new()
            .section(&admin)
            .section("[security]\nallow_anonymous = false\n")
            .section(&alice)
            .section(&bob)
            .section(&carol)
            .section(&all_read),
    );
    let original = std::fs::read_to_string(broker.topology()).expect("topology");
    let changed = broker
        .topology()
        .parent()
        .expect("dir")
        .join("changed.toml");
    std::fs::write(
        &changed,
        original
            .replace(&alice, "")
            .replace(&all_read, &readers_read),
    )
    .expect("write");

    let alice_client = broker.client_with(login("alice", "alice-pw")).await;
    let _alice_sub = subscribe(&alice_client, "queue://apply.alice").await;
    let bob_client = broker.client_with(login("bob", "bob-pw")).await;
    let _bob_sub = subscribe(&bob_client, "queue://apply.shared").await;
    let carol_client = broker.client_with(login("carol", "carol-pw")).await;
    let mut carol_sub = subscribe(&carol_client, "queue://apply.shared").await;

    let out = run(meshmq().arg("apply").arg(&changed));
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("security: user alice: removed"),
        "{}",
        out.stdout
    );

    // Alice's open connection is closed at once, with the reason, and she cannot log in.
    let closed = tokio::time::timeout(GUARD, alice_client.closed())
        .await
        .expect("alice's connection stays open after her user was removed");
    assert!(
        closed.to_string().contains("revoked"),
        "alice's connection ended for another reason: {closed}"
    );
    let again = Client::connect(&broker.url(), login("alice", "alice-pw")).await;
    assert!(again.is_err(), "alice logged in after her removal");

    // Bob lost the read right: his subscription is closed with an error, his connection
    // stays and may still send; carol, who kept it, gets what he sends.
    common::wait_until("bob is told his subscription was closed", || {
        !bob_client.take_errors().is_empty()
    });
    bob_client
        .send_with_receipt("queue://apply.shared", &Outgoing::new("after"))
        .await
        .expect("bob still sends after the apply");
    let d = tokio::time::timeout(GUARD, carol_sub.next())
        .await
        .expect("carol receives")
        .expect("carol's subscription is open");
    assert_eq!(&d.body[..], b"after");
    carol_sub.ack(&d).await.expect("ack");
    assert_eq!(
        broker.destination("queue://apply.shared").consumers,
        1,
        "bob's subscription still counts as a consumer"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(carol_client.take_errors().is_empty());
}
