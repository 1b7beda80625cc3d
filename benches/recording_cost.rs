//! What recording costs per GiB of session output, step by step, on the
//! bench's bulk text (`bench/run.py`: `yes "some log line with words
//! 1234567890"`): UTF-8 check, asciicast JSON escaping, BLAKE3 (SHA-256 beside it for reference), and the
//! write to disk, plain and as recordings are written (1 MiB batches
//! through the page cache, synced and dropped from it behind them). Run: `cargo bench --bench recording_cost`
//! (`POSTERN_BENCH_MIB=N` for the buffer size, default 256;
//! `POSTERN_BENCH_DIR=D` for where the write test puts its file, default the
//! system temp folder).

use std::io::Write;
use std::time::Instant;

use sha2::{Digest, Sha256};

const CHUNK: usize = 32 * 1024; // about what one SSH data message carries

/// CPU time of this thread so far, in seconds (kernel time included, which
/// is most of what a write costs), from `/proc/thread-self/schedstat`.
fn thread_cpu() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |ns| ns / 1e9)
}

/// Best of three: CPU seconds per GiB of session output, and throughput.
fn per_gib(what: &str, bytes: usize, mut f: impl FnMut()) {
    let (mut cpu, mut wall) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        let (c, t) = (thread_cpu(), Instant::now());
        f();
        wall = wall.min(t.elapsed().as_secs_f64());
        cpu = cpu.min(thread_cpu() - c);
    }
    let gib = bytes as f64 / (1u64 << 30) as f64;
    println!(
        "{what:<44} {:>7.3} CPU s/GiB {:>7.0} MiB/s",
        cpu / gib,
        gib * 1024.0 / wall
    );
}

fn main() {
    let mib: usize = std::env::var("POSTERN_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let line = b"some log line with words 1234567890\n";
    let text: Vec<u8> = line.iter().copied().cycle().take(mib << 20).collect();
    let chunks: Vec<&str> = text
        .chunks(CHUNK)
        .map(|c| std::str::from_utf8(c).expect("ASCII"))
        .collect();
    println!("{mib} MiB of text in {} KiB chunks", CHUNK / 1024);

    per_gib("UTF-8 check (str::from_utf8)", text.len(), || {
        for c in text.chunks(CHUNK) {
            std::hint::black_box(std::str::from_utf8(c).is_ok());
        }
    });
    let mut json = Vec::with_capacity(text.len() * 2);
    per_gib("JSON escape (recording::push_json_str)", text.len(), || {
        json.clear();
        for c in &chunks {
            postern::recording::push_json_str(&mut json, c);
        }
    });
    println!(
        "  escaped size: {:.3}x the output",
        json.len() as f64 / text.len() as f64
    );
    per_gib(
        "JSON escape (serde_json, for reference)",
        text.len(),
        || {
            let mut out = Vec::with_capacity(text.len() * 2);
            for c in &chunks {
                serde_json::to_writer(&mut out, c).expect("in memory");
            }
            std::hint::black_box(out.len());
        },
    );
    per_gib("BLAKE3 of the escaped lines (blake3)", text.len(), || {
        let mut h = blake3::Hasher::new();
        for c in json.chunks(512 * 1024) {
            h.update(c);
        }
        std::hint::black_box(h.finalize());
    });
    per_gib(
        "SHA-256 of the same (sha2, for reference)",
        text.len(),
        || {
            let mut h = Sha256::new();
            for c in json.chunks(512 * 1024) {
                h.update(c);
            }
            std::hint::black_box(h.finalize());
        },
    );
    let dir = std::env::var_os("POSTERN_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("postern-recording-cost-{}", std::process::id()));
    per_gib(
        "write(2) 512 KiB batches + one fdatasync",
        text.len(),
        || {
            let mut f = std::fs::File::create(&path).expect("create the test file");
            for c in json.chunks(512 * 1024) {
                f.write_all(c).expect("write the test file");
            }
            f.sync_data().expect("fdatasync the test file");
        },
    );
    per_gib(
        "write(2) 1 MiB batches, synced + dropped",
        text.len(),
        || {
            let mut f = std::fs::File::create(&path).expect("create the test file");
            for c in json.chunks(1 << 20) {
                f.write_all(c).expect("write the test file");
            }
            f.sync_data().expect("fdatasync the test file");
            postern::recording::drop_cached(&f, 0, json.len() as u64);
        },
    );
    let _ = std::fs::remove_file(&path);
}
