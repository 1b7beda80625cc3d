//! The fuzz corpora on stable: every committed input of every cargo-fuzz
//! target (`fuzz/corpus/<target>/`) and every crash the fuzzers found and
//! we fixed (`fuzz/regressions/<target>/`) goes through the same entry
//! points with the same checks as under libFuzzer (`fuzz/harness.rs`), so
//! CI keeps them meaningful without nightly. See docs/SECURITY.md.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn gate(data: &[u8]) {
    let _ = harness::gate(data);
}

/// A target's name and its checks.
type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 5] = [
    ("config", harness::config),
    ("policy", harness::policy),
    ("gate", gate),
    ("asciicast", harness::asciicast),
    ("control", harness::control),
];

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

fn replay(kind: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind);
    let mut n = 0;
    for (name, check) in TARGETS {
        for f in inputs(&root.join(name)) {
            let data = std::fs::read(&f).expect("corpus file reads");
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(
                outcome.is_ok(),
                "{name}: {} fails its checks (input {:?})",
                f.display(),
                String::from_utf8_lossy(&data)
            );
            n += 1;
        }
    }
    n
}

#[test]
fn every_corpus_input_passes_its_target_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, _) in TARGETS {
        let n = inputs(&root.join(name)).len();
        assert!(
            n >= 5,
            "fuzz/corpus/{name} holds {n} inputs; it should not be empty"
        );
    }
    assert!(replay("corpus") > 0);
}

/// The gate corpus reaches what it is there for: lines the gate lets
/// through, whose remote command the harness then checks.
#[test]
fn the_gate_corpus_holds_allowed_lines() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/gate");
    let files = inputs(&dir);
    let allowed = files
        .iter()
        .filter(|f| harness::gate(&std::fs::read(f).expect("corpus file reads")) > 0)
        .count();
    assert!(
        allowed >= 10,
        "{allowed} of {} gate inputs are allowed",
        files.len()
    );
}

#[test]
fn fixed_fuzzer_findings_stay_fixed() {
    replay("regressions");
}

/// `recording::read` (what replay calls, through a file) says exactly what
/// `parse_text` says of the same text, with the file's path in errors.
#[test]
fn read_agrees_with_parse_text_on_the_corpus() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let files: Vec<PathBuf> = ["corpus", "regressions"]
        .iter()
        .flat_map(|k| inputs(&root.join(k).join("asciicast")))
        .collect();
    assert!(!files.is_empty());
    let mut loaded = 0;
    for f in &files {
        let data = std::fs::read(f).expect("corpus file reads");
        let text = String::from_utf8_lossy(&data).into_owned();
        let path = dir.path().join("x.cast");
        std::fs::write(&path, &text).expect("write");
        let name = path.display().to_string();
        let from_file = postern::recording::read(&path);
        loaded += usize::from(from_file.is_ok());
        let from_text = postern::recording::parse_text(&text, &name);
        assert_eq!(
            format!("{from_file:?}"),
            format!("{from_text:?}"),
            "{}",
            f.display()
        );
        harness::asciicast_checked(&text, from_file, &name);
    }
    assert!(
        loaded > 0 && loaded < files.len(),
        "{loaded} of {} recordings load: the corpus should hold both kinds",
        files.len()
    );
}

/// The checks can fail: inputs that break each promise are caught.
#[test]
fn the_checks_catch_broken_promises() {
    let bad = std::panic::catch_unwind(|| {
        harness::asciicast_checked(
            "{\"version\": 2}\n[1, \"o\", \"x\"]\n",
            Err("elsewhere.cast: line 2: nope".into()),
            "fuzz.cast",
        )
    });
    assert!(bad.is_err(), "an error that names another file must fail");
    let bad = std::panic::catch_unwind(|| {
        harness::asciicast_checked("{}\n", Err("fuzz.cast: line 9: nope".into()), "fuzz.cast")
    });
    assert!(
        bad.is_err(),
        "an error naming a line past the end must fail"
    );
}
