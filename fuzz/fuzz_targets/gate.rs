//! The read-only gate: `lex::split`, `CommandPattern::parse`/`matches`, `gate::check`, `remote_command`. Input: `patterns NUL line`.
//! The checks live in `fuzz/harness.rs`, shared with `tests/fuzz_corpus.rs`.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = harness::gate(data);
});
