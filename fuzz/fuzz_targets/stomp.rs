//! Fuzz target: `meshmq::fuzzing::stomp` (its doc names the properties) on every input.
#![no_main]

#[global_allocator]
static ALLOC: meshmq::fuzzing::CountingAlloc = meshmq::fuzzing::CountingAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshmq::fuzzing::stomp(data));
