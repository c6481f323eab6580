//! Properties the decoders keep on any bytes, one function per fuzz target: the native frame
//! decoder, the STOMP decoder, the MQTT path a connection reads, journal recovery over a
//! directory built from the bytes, and the replication messages. The coverage-guided fuzzers
//! under `fuzz/` call these on every input they make, and `tests/it/fuzz_corpus_replays.rs` calls
//! them on every committed corpus file (the seeds and each crash found), so every `cargo test`
//! checks the corpus even where the fuzzers are not built.
//!
//! Owns: nothing but the scratch directory of one journal input. Must not touch: the network.
//! A function returns when the properties hold and panics, naming the property, when one
//! breaks: no panic inside a decoder, decode→encode→decode round trips where an encoder
//! exists, and no single allocation out of proportion to the input (measured only where the
//! program installs [`CountingAlloc`] as its global allocator).
//!
//! One file per target, with its seeds; `measure.rs` measures allocations; here, the dispatch by
//! name.

mod journal;
mod measure;
mod mqtt;
mod replication;
mod stomp;
mod wire;

pub use journal::journal;
pub use measure::CountingAlloc;
pub use mqtt::mqtt;
pub use replication::replication;
pub use stomp::stomp;
pub use wire::wire;

/// The targets, by the names of their corpus directories.
pub const TARGETS: [&str; 5] = ["wire", "stomp", "mqtt", "journal", "replication"];

/// Runs the target named `name` (one of [`TARGETS`]) on `data`.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "wire" => wire(data),
        "stomp" => stomp(data),
        "mqtt" => mqtt(data),
        "journal" => journal(data),
        "replication" => replication(data),
        other => panic!("no fuzz target {other:?}; the targets are {TARGETS:?}"),
    }
}

/// Seed inputs for target `name`, made by the code itself (frames its encoders write, a
/// journal its framing and checkpoint writers lay down): what `fuzz/corpus/NAME/` starts from.
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    match name {
        "wire" => wire::wire_seeds(),
        "stomp" => stomp::stomp_seeds(),
        "mqtt" => mqtt::mqtt_seeds(),
        "journal" => journal::journal_seeds(),
        "replication" => replication::replication_seeds(),
        other => panic!("no fuzz target {other:?}; the targets are {TARGETS:?}"),
    }
}
