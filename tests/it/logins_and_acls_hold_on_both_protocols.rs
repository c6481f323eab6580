//! Logins and destination rights hold the same way on the native protocol and on STOMP:
//! allowed and denied reads and writes on exact and wildcard ACL entries, a wildcard
//! subscription only with one grant covering all of it, creating a destination only with
//! `admin`, one error text for a wrong password and an unknown user, anonymous access only when
//! the topology allows it — and every refusal counted.

use crate::common_stomp;

use common_stomp::{hash, native_url, runtime, send, subscribe, Broker, RawStomp, Topology, GUARD};
use meshmq::client::{
    Client, ClientError, ClientOptions, Outgoing, SubscribeOptions, Subscription,
};
use meshmq::stomp::Command;
use tokio::runtime::Runtime;

const USERS: [(&str, &[&str]); 6] = [
    ("alice", &["producers"]),
    ("bob", &["consumers"]),
    ("carol", &["admins", "producers", "consumers"]),
    ("dave", &["watchers"]),
    ("erin", &["eurogold"]),
    ("frank", &["auditors"]),
];

fn password(user: &str) -> String {
    format!("{user}-secret")
}

fn security(allow_anonymous: bool, with_acls: bool) -> String {
    let mut s = format!("[security]\nallow_anonymous = {allow_anonymous}\n");
    for (user, groups) in USERS {
        s.push_str(&format!(
            "\n[[security.user]]\nname = \"{user}\"\npassword_hash = \"{}\"\ngroups = {:?}\n",
            hash(&password(user)),
            groups
        ));
    }
    if with_acls {
        s.push_str(
            r#"
[[security.acl]]
destination = "queue://orders.>"
read = ["consumers"]
write = ["producers"]
admin = ["admins"]

[[security.acl]]
destination = "queue://audit.native"
read = ["auditors"]
write = ["producers"]
admin = ["admins"]

[[security.acl]]
destination = "queue://audit.stomp"
read = ["auditors"]
write = ["producers"]
admin = ["admins"]

[[security.acl]]
destination = "topic://prices.>"
read = ["watchers"]
write = ["producers"]
admin = ["admins"]

[[security.acl]]
destination = "topic://prices.native.eu.gold"
read = ["eurogold"]

[[security.acl]]
destination = "topic://prices.stomp.eu.gold"
read = ["eurogold"]
"#,
        );
    }
    s
}

fn broker(allow_anonymous: bool, with_acls: bool) -> Broker {
    Topology::new()
        .security(&security(allow_anonymous, with_acls))
        .listener("native", "tcp", "")
        .listener("stomp", "stomp", "")
        .start()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Proto {
    Native,
    Stomp,
}

/// A consumer that got its subscription (a native one keeps its connection open).
enum Reader {
    Native(Subscription),
    Stomp(RawStomp),
}

impl Reader {
    fn next_body(&mut self, rt: &Runtime) -> String {
        let body = match self {
            Reader::Native(sub) => {
                rt.block_on(sub.next_timeout(GUARD))
                    .expect("a message for the reader")
                    .body
            }
            Reader::Stomp(c) => c.expect(Command::Message).body,
        };
        String::from_utf8_lossy(&body).into_owned()
    }
}

/// One protocol's view of the broker, as a given user (`None`: anonymous).
struct Side<'a> {
    proto: Proto,
    broker: &'a Broker,
    rt: &'a Runtime,
}

fn refusal(e: ClientError) -> String {
    match e {
        ClientError::Refused { message, .. } => message,
        other => panic!("expected a refusal from the broker, got {other}"),
    }
}

impl Side<'_> {
    /// The protocol's name for `kind://name`.
    fn dest(&self, kind: &str, name: &str) -> String {
        match self.proto {
            Proto::Native => format!("{kind}://{name}"),
            Proto::Stomp => format!("/{kind}/{name}"),
        }
    }

    fn native(&self, user: Option<&str>, pass: Option<&str>) -> Result<Client, String> {
        let opts = ClientOptions {
            username: user.map(String::from),
            password: pass.map(String::from),
            ..ClientOptions::default()
        };
        self.rt
            .block_on(Client::connect(&native_url(self.broker, "native"), opts))
            .map_err(refusal)
    }

    fn stomp(&self, user: Option<&str>, pass: Option<&str>) -> Result<RawStomp, String> {
        let mut headers = Vec::new();
        if let Some(u) = user {
            headers.push(("login", u));
        }
        if let Some(p) = pass {
            headers.push(("passcode", p));
        }
        let mut c = RawStomp::open(self.broker.addr("stomp"));
        let answer = c.handshake(&headers);
        match answer.command {
            Command::Connected => Ok(c),
            Command::Error => {
                let message = answer.header("message").unwrap_or("").to_string();
                assert!(c.recv().is_none(), "a refused login is closed");
                Err(message)
            }
            other => panic!("unexpected answer to CONNECT: {other}"),
        }
    }

    /// Logs in and out; the refusal text when refused.
    fn login(&self, user: Option<&str>, pass: Option<&str>) -> Result<(), String> {
        match self.proto {
            Proto::Native => self.native(user, pass).map(drop),
            Proto::Stomp => self.stomp(user, pass).map(drop),
        }
    }

    fn as_user(&self, user: &str) -> (Option<String>, Option<String>) {
        (Some(user.to_string()), Some(password(user)))
    }

    /// Sends one message as `user` (`None`: anonymous), waiting for the broker's verdict.
    fn write(&self, user: Option<&str>, dest: &str, body: &str) -> Result<(), String> {
        let pass = user.map(password);
        match self.proto {
            Proto::Native => {
                let c = self.native(user, pass.as_deref()).expect("login");
                self.rt
                    .block_on(c.send_with_receipt(dest, &Outgoing::new(body.to_string())))
                    .map_err(refusal)
            }
            Proto::Stomp => {
                let mut c = self.stomp(user, pass.as_deref()).expect("login");
                c.send(&send(dest, body).with_header("receipt", "w"));
                let f = c.recv().expect("an answer to SEND");
                match f.command {
                    Command::Receipt => Ok(()),
                    Command::Error => {
                        assert!(c.recv().is_none(), "a STOMP error closes the connection");
                        Err(f.header("message").unwrap_or("").to_string())
                    }
                    other => panic!("unexpected answer to SEND: {other}"),
                }
            }
        }
    }

    /// Subscribes as `user` (`None`: anonymous), waiting for the broker's verdict.
    fn read(&self, user: Option<&str>, dest: &str) -> Result<Reader, String> {
        let pass = user.map(password);
        match self.proto {
            Proto::Native => {
                let c = self.native(user, pass.as_deref()).expect("login");
                let sub = self
                    .rt
                    .block_on(c.subscribe(dest, SubscribeOptions::default()))
                    .map_err(refusal)?;
                Ok(Reader::Native(sub))
            }
            Proto::Stomp => {
                let mut c = self.stomp(user, pass.as_deref()).expect("login");
                c.send(&subscribe(dest, "r", "auto").with_header("receipt", "r"));
                let f = c.recv().expect("an answer to SUBSCRIBE");
                match f.command {
                    Command::Receipt => Ok(Reader::Stomp(c)),
                    Command::Error => {
                        assert!(c.recv().is_none(), "a STOMP error closes the connection");
                        Err(f.header("message").unwrap_or("").to_string())
                    }
                    other => panic!("unexpected answer to SUBSCRIBE: {other}"),
                }
            }
        }
    }
}

fn denied(result: Result<impl Sized, String>, expected: &str) {
    match result {
        Ok(_) => panic!("allowed, but should be refused with: {expected}"),
        Err(message) => assert_eq!(message, expected),
    }
}

fn allowed<T>(result: Result<T, String>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what} should be allowed, was refused: {e}"))
}

#[test]
fn the_acl_matrix_holds_on_both_protocols_and_every_refusal_is_counted() {
    let b = broker(false, true);
    let rt = runtime();
    for proto in [Proto::Native, Proto::Stomp] {
        let side = Side {
            proto,
            broker: &b,
            rt: &rt,
        };
        let tag = match proto {
            Proto::Native => "native",
            Proto::Stomp => "stomp",
        };
        let orders = side.dest("queue", &format!("orders.{tag}.in"));
        let audit = side.dest("queue", &format!("audit.{tag}"));
        let gold = side.dest("topic", &format!("prices.{tag}.eu.gold"));
        let fresh = side.dest("queue", &format!("orders.{tag}.fresh"));
        let unborn = side.dest("queue", &format!("orders.{tag}.unborn"));
        let n = |d: &str| match proto {
            Proto::Native => d.to_string(),
            Proto::Stomp => meshmq::stomp::from_stomp_pattern(d)
                .expect("a STOMP destination")
                .to_string(),
        };

        // An admin creates what the others use.
        allowed(
            side.write(Some("carol"), &orders, "created"),
            "carol → orders",
        );
        allowed(
            side.write(Some("carol"), &audit, "created"),
            "carol → audit",
        );
        allowed(side.write(Some("carol"), &gold, "created"), "carol → gold");

        // Exact and wildcard entries, read and write.
        allowed(
            side.write(Some("alice"), &orders, "from alice"),
            "alice → orders",
        );
        denied(
            side.write(Some("bob"), &orders, "x"),
            &format!(
                "user \"bob\" may not write {} (allowed groups: producers)",
                n(&orders)
            ),
        );
        let mut bob = allowed(side.read(Some("bob"), &orders), "bob ← orders");
        assert_eq!(bob.next_body(&rt), "created");
        assert_eq!(bob.next_body(&rt), "from alice");
        denied(
            side.read(Some("alice"), &orders),
            &format!(
                "user \"alice\" may not read {} (allowed groups: consumers)",
                n(&orders)
            ),
        );
        allowed(
            side.write(Some("alice"), &audit, "audited"),
            "alice → audit",
        );
        denied(
            side.write(Some("bob"), &audit, "x"),
            &format!(
                "user \"bob\" may not write {} (allowed groups: producers)",
                n(&audit)
            ),
        );
        let mut frank = allowed(side.read(Some("frank"), &audit), "frank ← audit");
        assert_eq!(frank.next_body(&rt), "created");
        assert_eq!(frank.next_body(&rt), "audited");
        denied(
            side.read(Some("bob"), &audit),
            &format!(
                "user \"bob\" may not read {} (allowed groups: auditors)",
                n(&audit)
            ),
        );

        // Creating a destination needs admin, whether by sending or by subscribing.
        denied(
            side.write(Some("alice"), &fresh, "x"),
            &format!(
                "user \"alice\" may not create (admin) {} (allowed groups: admins)",
                n(&fresh)
            ),
        );
        denied(
            side.read(Some("bob"), &unborn),
            &format!(
                "user \"bob\" may not create (admin) {} (allowed groups: admins)",
                n(&unborn)
            ),
        );
        allowed(side.write(Some("carol"), &fresh, "made"), "carol creates");
        allowed(
            side.write(Some("alice"), &fresh, "now it exists"),
            "alice → fresh",
        );

        // A wildcard subscription needs one grant covering all of it.
        let all_prices = side.dest("topic", &format!("prices.{tag}.>"));
        let mut dave = allowed(side.read(Some("dave"), &all_prices), "dave ← prices.>");
        let mut erin = allowed(side.read(Some("erin"), &gold), "erin ← gold");
        let eu_any = side.dest("topic", &format!("prices.{tag}.eu.*"));
        denied(
            side.read(Some("erin"), &eu_any),
            &format!(
                "user \"erin\" may not read {} (allowed groups: watchers)",
                n(&eu_any)
            ),
        );
        let everything = side.dest("topic", ">");
        denied(
            side.read(Some("dave"), &everything),
            &format!(
                "user \"dave\" may not read {} (no ACL entry covers it)",
                n(&everything)
            ),
        );
        allowed(side.write(Some("alice"), &gold, "1 oz"), "alice → gold");
        assert_eq!(dave.next_body(&rt), "1 oz");
        assert_eq!(erin.next_body(&rt), "1 oz");

        // Logins: one text for a wrong password and an unknown user; anonymous refused.
        assert_eq!(side.login(Some("alice"), Some(&password("alice"))), Ok(()));
        let wrong = side.login(Some("alice"), Some("not-her-password"));
        let unknown = side.login(Some("mallory"), Some("whatever"));
        assert_eq!(wrong, Err("wrong user name or password".to_string()));
        assert_eq!(
            unknown, wrong,
            "an unknown user must look like a wrong password"
        );
        assert_eq!(
            side.login(None, None),
            Err("anonymous access is not allowed: log in with a user name and password".into())
        );
    }
    for protocol in ["native", "stomp"] {
        assert_eq!(
            b.metric("meshmq_auth_failures_total", &[("protocol", protocol)]),
            3.0,
            "{protocol}: wrong password, unknown user, anonymous"
        );
        assert_eq!(
            b.metric("meshmq_access_denied_total", &[("protocol", protocol)]),
            8.0,
            "{protocol}: every denied read, write and create"
        );
    }
}

#[test]
fn anonymous_clients_get_in_only_where_the_topology_allows_it() {
    let b = broker(true, false);
    let rt = runtime();
    for proto in [Proto::Native, Proto::Stomp] {
        let side = Side {
            proto,
            broker: &b,
            rt: &rt,
        };
        let queue = side.dest("queue", "open.door");
        let mut reader = allowed(side.read(None, &queue), "anonymous read");
        allowed(side.write(None, &queue, "hello"), "anonymous write");
        assert_eq!(reader.next_body(&rt), "hello");
        // Users still log in with their passwords.
        let (user, pass) = side.as_user("alice");
        assert_eq!(side.login(user.as_deref(), pass.as_deref()), Ok(()));
        assert_eq!(
            side.login(Some("alice"), Some("nope")),
            Err("wrong user name or password".to_string())
        );
    }
}
