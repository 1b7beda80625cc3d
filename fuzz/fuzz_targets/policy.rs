//! A policy file: `policy::Policy::add_file` on any text, then every lookup.
//! The checks live in `fuzz/harness.rs`, shared with `tests/fuzz_corpus.rs`.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::policy(data));
