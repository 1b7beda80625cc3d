//! The asciicast reader used by replay: `recording::parse_text` (what `recording::read` calls).
//! The checks live in `fuzz/harness.rs`, shared with `tests/fuzz_corpus.rs`.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::asciicast(data));
