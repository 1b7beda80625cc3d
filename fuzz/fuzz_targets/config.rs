//! `postern.toml`: `config::Config::parse` on any text.
//! The checks live in `fuzz/harness.rs`, shared with `tests/fuzz_corpus.rs`.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::config(data));
