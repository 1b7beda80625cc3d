//! The control command parser `control::parse` on a shell-split line, and `control::escape`.
//! The checks live in `fuzz/harness.rs`, shared with `tests/fuzz_corpus.rs`.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::control(data));
