//! Every committed fuzz corpus input keeps its target's properties (`meshmq::fuzzing`): the
//! seeds in `fuzz/corpus/TARGET/` and every crash the fuzzers found, kept there as a
//! regression. No decoder panics, round trips hold, no allocation out of proportion to the
//! input, and journal recovery refuses or recovers only whole records that pass their
//! checksums — checked by every `cargo test`, whether the fuzzers are built or not.

use std::path::{Path, PathBuf};

use meshmq::fuzzing::{self, TARGETS};

#[global_allocator]
static ALLOC: fuzzing::CountingAlloc = fuzzing::CountingAlloc;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `target` on each of its corpus files and names every file that broke a property.
fn replay(target: &str) {
    let files = corpus(target);
    assert!(!files.is_empty(), "fuzz/corpus/{target} is empty");
    let failed: Vec<String> = files
        .iter()
        .filter_map(|path| {
            let data = std::fs::read(path).expect("read a corpus file");
            std::panic::catch_unwind(|| fuzzing::run(target, &data))
                .err()
                .map(|_| path.display().to_string())
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} {target} corpus inputs broke a property (see the panics above): {failed:?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn the_wire_corpus_keeps_its_properties() {
    replay("wire");
}

#[test]
fn the_stomp_corpus_keeps_its_properties() {
    replay("stomp");
}

#[test]
fn the_mqtt_corpus_keeps_its_properties() {
    replay("mqtt");
}

#[test]
fn the_journal_corpus_keeps_its_properties() {
    replay("journal");
}

#[test]
fn the_replication_corpus_keeps_its_properties() {
    replay("replication");
}

/// The seeds the code makes today are in the corpus, so the fuzzers start from frames and
/// journals of the current format. After a format change, write them again with
/// `cargo test --profile ci --test it -- --ignored write_seed_corpus`.
#[test]
fn the_corpus_holds_the_current_seeds() {
    for target in TARGETS {
        let held: Vec<Vec<u8>> = corpus(target)
            .iter()
            .map(|p| std::fs::read(p).expect("read a corpus file"))
            .collect();
        for (n, seed) in fuzzing::seeds(target).iter().enumerate() {
            assert!(
                held.contains(seed),
                "seed {n} of {target} is not in fuzz/corpus/{target}: write the seeds again (see this test's doc)"
            );
        }
    }
}

/// Writes each target's seeds into its corpus as `seed-N`.
#[test]
#[ignore = "writes fuzz/corpus; run by hand after a format change"]
fn write_seed_corpus() {
    for target in TARGETS {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("create the corpus directory");
        for (n, seed) in fuzzing::seeds(target).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{n}")), seed).expect("write a seed");
        }
    }
}
