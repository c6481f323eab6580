//! A flipped byte in a record that valid records follow is corruption, not a torn write: the
//! broker refuses to start (non-zero exit) with an error naming the segment file, the offset
//! and `--repair`, and leaves the journal untouched; started with `--repair` it cuts the journal
//! there and delivers every record before the damage.

use crate::common;

use common::{Broker, Config, History};
use meshmq::client::Outgoing;
use meshmq::store::proto::{record, Record};
use prost::Message as _;

const QUEUE: &str = "queue://ledger";
const COUNT: usize = 100;

fn body(i: usize) -> String {
    format!("entry-{i:03}|{}", "x".repeat(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flipped_byte_in_an_earlier_record_is_refused_then_repaired() {
    // Small segments: the damage is in a segment that later segments follow.
    let mut broker = Broker::start(&Config::new().store("segment_size = \"8KiB\""));
    let producer = broker.client().await;
    for i in 0..COUNT {
        producer
            .send_with_receipt(QUEUE, &Outgoing::new(body(i)).persistent(true))
            .await
            .expect("send");
    }
    broker.kill9();

    let segments = common::segment_files(&broker.journal_dir());
    assert!(segments.len() >= 3, "{segments:?}");
    let segment = segments[1].clone();
    let mut bytes = std::fs::read(&segment).expect("read the segment");
    let frames = common::journal_frames(&bytes);
    let damaged = frames[frames.len() / 2];
    let kept = match Record::decode(damaged.payload(&bytes)) {
        Ok(Record {
            kind: Some(record::Kind::Added(m)),
            ..
        }) => common::message_name(&m.body)
            .strip_prefix("entry-")
            .and_then(|n| n.parse::<usize>().ok())
            .expect("a message of this test"),
        other => panic!("expected a message record: {other:?}"),
    };
    bytes[damaged.offset + 16 + (damaged.len - 16) / 2] ^= 0x20;
    std::fs::write(&segment, &bytes).expect("write the damaged segment");
    let before = common::segment_files(&broker.journal_dir())
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect::<Vec<_>>();

    let (status, log) = broker.restart_refused(&[]);
    assert!(!status.success(), "{status}:\n{log}");
    for part in [
        segment.display().to_string(),
        format!("offset {}", damaged.offset),
        "--repair".to_string(),
    ] {
        assert!(
            log.contains(&part),
            "the refusal does not name {part:?}:\n{log}"
        );
    }
    let after = common::segment_files(&broker.journal_dir())
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect::<Vec<_>>();
    assert!(before == after, "a refused start changed the journal");

    broker.restart_with(&["--repair"]);
    let log = broker.log();
    assert!(
        log.contains(&format!(
            "repair: cut corrupt data in {} at offset {}",
            segment.display(),
            damaged.offset
        )),
        "{log}"
    );
    let history = History::shared();
    for i in 0..COUNT {
        let name = common::message_name(body(i).as_bytes());
        history.lock().unwrap().sent(&name);
        if i < kept {
            history.lock().unwrap().receipted(&name);
        }
    }
    common::drain(&broker, QUEUE, &history).await;
    let h = history.lock().unwrap();
    h.check();
    assert_eq!(
        h.deliveries(),
        kept,
        "exactly the records before the damage: {h:?}"
    );
}
