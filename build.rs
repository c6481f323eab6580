//! Compiles `proto/meshmq.proto` with the pure-Rust `protox` compiler (no `protoc` needed).
fn main() {
    println!("cargo:rerun-if-changed=proto/meshmq.proto");
    let descriptors = protox::compile(["proto/meshmq.proto"], ["proto"])
        .unwrap_or_else(|e| panic!("proto/meshmq.proto does not compile: {e}"));
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)
        .unwrap_or_else(|e| panic!("generating Rust for proto/meshmq.proto failed: {e}"));
}
