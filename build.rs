//! Compiles `proto/*.proto` with the pure-Rust `protox` compiler (no `protoc` needed).
fn main() {
    println!("cargo:rerun-if-changed=proto/meshmq.proto");
    println!("cargo:rerun-if-changed=proto/journal.proto");
    println!("cargo:rerun-if-changed=proto/replication.proto");
    let descriptors = protox::compile(
        [
            "proto/meshmq.proto",
            "proto/journal.proto",
            "proto/replication.proto",
        ],
        ["proto"],
    )
    .unwrap_or_else(|e| panic!("proto/*.proto does not compile: {e}"));
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)
        .unwrap_or_else(|e| panic!("generating Rust for proto/*.proto failed: {e}"));
}
