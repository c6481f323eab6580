//! What the journal-repair tests share: a lone broker with small (8 KiB) segments that
//! receipted [`COUNT`] numbered persistent messages on [`QUEUE`] and was then killed, the
//! number of the message a journal record holds, the check that a start on a damaged journal
//! is refused naming the file, the offset and `--repair`, and the check that a repaired broker
//! delivers exactly the records before the damage. It damages nothing itself: each test does
//! its own damage.

use std::path::Path;

use meshmq::client::Outgoing;
use meshmq::store::proto::{record, Record};
use prost::Message as _;

use super::{drain, message_name, Broker, Config, History, JournalFrame};

pub const QUEUE: &str = "queue://ledger";
pub const COUNT: usize = 100;

/// The body of message `i`: its name (`entry-NNN`) and 200 filler bytes.
pub fn body(i: usize) -> String {
    format!("entry-{i:03}|{}", "x".repeat(200))
}

/// The number of the message a record holds; fails the test on any other record.
pub fn entry(segment: &[u8], frame: &JournalFrame) -> usize {
    match Record::decode(frame.payload(segment)) {
        Ok(Record {
            kind: Some(record::Kind::Added(m)),
            ..
        }) => message_name(&m.body)
            .strip_prefix("entry-")
            .and_then(|n| n.parse::<usize>().ok())
            .expect("a message of this test"),
        other => panic!("expected a message record: {other:?}"),
    }
}

/// A broker with 8 KiB segments (several of them, and a checkpoint written when one fills)
/// that receipted messages `0..COUNT` and was then killed with SIGKILL.
pub async fn filled_then_killed() -> Broker {
    let mut broker = Broker::start(&Config::new().store("segment_size = \"8KiB\""));
    let producer = broker.client().await;
    for i in 0..COUNT {
        producer
            .send_with_receipt(QUEUE, &Outgoing::new(body(i)).persistent(true))
            .await
            .expect("send");
    }
    broker.kill9();
    broker
}

/// Starts the broker again and requires it to refuse (non-zero exit), naming `file`, `offset`
/// and `--repair`; `what` prefixes each failure message.
pub fn assert_refused_naming(broker: &mut Broker, file: &Path, offset: usize, what: &str) {
    let (status, log) = broker.restart_refused(&[]);
    assert!(!status.success(), "{what}{status}:\n{log}");
    for part in [
        file.display().to_string(),
        format!("offset {offset}"),
        "--repair".to_string(),
    ] {
        assert!(
            log.contains(&part),
            "{what}the refusal does not name {part:?}:\n{log}"
        );
    }
}

/// Drains [`QUEUE`] and requires exactly messages `0..kept` (each receipted send before the
/// damage delivered, nothing invented, a repeat only flagged); `what` prefixes the failure.
pub async fn assert_delivers_the_first(broker: &Broker, kept: usize, what: &str) {
    let history = History::shared();
    for i in 0..COUNT {
        let name = message_name(body(i).as_bytes());
        history.lock().unwrap().sent(&name);
        if i < kept {
            history.lock().unwrap().receipted(&name);
        }
    }
    drain(broker, QUEUE, &history).await;
    let h = history.lock().unwrap();
    h.check();
    assert_eq!(
        h.deliveries(),
        kept,
        "{what}exactly the records before the damage: {h:?}"
    );
}
