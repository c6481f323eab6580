//! A journal whose last record was torn by a crash before its sync (the file cut short, or the
//! end of the record never written over the preallocated zeros; the synced mark before it)
//! recovers on a real broker: it starts, logs the cut with the segment file and the record's
//! offset, and delivers every record before it.

use crate::common;

use std::path::Path;

use common::repair::{restore, snapshot};
use common::{Broker, Config, History, JournalFrame};
use meshmq::client::Outgoing;
use meshmq::store::proto::{record, Record};
use prost::Message as _;

const QUEUE: &str = "queue://ledger";
const COUNT: usize = 40;

fn name(i: usize) -> String {
    format!("entry-{i:03}")
}

#[derive(Debug, Clone, Copy)]
enum Tear {
    /// The file ends at the cut.
    Truncated,
    /// The file keeps its preallocated size; the bytes from the cut on are still zeros.
    Unwritten,
}

fn tear(segment: &Path, pristine: &[u8], at: usize, how: Tear) {
    match how {
        Tear::Truncated => std::fs::write(segment, &pristine[..at]),
        Tear::Unwritten => {
            let mut bytes = pristine.to_vec();
            bytes[at..].fill(0);
            std::fs::write(segment, bytes)
        }
    }
    .expect("tear the segment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_torn_last_record_is_cut_at_each_offset_and_the_records_before_it_delivered() {
    let mut broker = Broker::start(&Config::new());
    let producer = broker.client().await;
    for i in 0..COUNT {
        producer
            .send_with_receipt(QUEUE, &Outgoing::new(name(i)).persistent(true))
            .await
            .expect("send");
    }
    broker.kill9();

    let journal = broker.journal_dir();
    let segment = common::segment_files(&journal)
        .pop()
        .expect("a segment file");
    let pristine = std::fs::read(&segment).expect("read the last segment");
    let last: JournalFrame = *common::journal_frames(&pristine)
        .last()
        .expect("records in the last segment");
    match Record::decode(last.payload(&pristine)) {
        Ok(Record {
            kind: Some(record::Kind::Added(m)),
            ..
        }) => assert_eq!(&m.body[..], name(COUNT - 1).as_bytes()),
        other => panic!("the last record is not the last message: {other:?}"),
    }
    let files = snapshot(&journal);

    let payload = last.len - 16;
    // Inside the length, the checksum, the index, at the payload's start, middle and last byte.
    let cuts = [4, 6, 8, 12, 16, 16 + payload / 2, last.len - 1];
    for (n, cut) in cuts.into_iter().enumerate() {
        let how = if n % 2 == 0 {
            Tear::Truncated
        } else {
            Tear::Unwritten
        };
        restore(&journal, &files);
        tear(&segment, &pristine, last.offset + cut, how);
        // A torn write is one whose sync never completed (a crash in between): the journal's
        // synced mark is still at the record before it. With the mark at the torn record
        // itself, the damage is corruption instead (see
        // a_damaged_synced_journal_is_refused_until_repaired.rs).
        meshmq::store::write_mark(&journal, last.index - 1).expect("set the synced mark");

        broker.restart();
        let log = broker.log();
        let expected = format!(
            "cut a torn tail in {} at offset {}",
            segment.display(),
            last.offset
        );
        assert!(
            log.contains(&expected),
            "{how:?} at +{cut}: the log does not say {expected:?}:\n{log}"
        );

        let history = History::shared();
        for i in 0..COUNT {
            history.lock().unwrap().sent(&name(i));
        }
        for i in 0..COUNT - 1 {
            history.lock().unwrap().receipted(&name(i));
        }
        common::drain(&broker, QUEUE, &history).await;
        let h = history.lock().unwrap();
        h.check();
        assert!(
            !h.was_delivered(&name(COUNT - 1)),
            "{how:?} at +{cut}: the torn record was delivered"
        );
        assert_eq!(h.deliveries(), COUNT - 1, "{how:?} at +{cut}: {h:?}");
        drop(h);
        broker.kill9();
    }
}
