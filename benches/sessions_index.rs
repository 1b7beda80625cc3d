//! `sessions` listing with a million stored sessions: the secondary indexes
//! against a full scan. Run: `cargo bench --bench sessions_index`
//! (`POSTERN_BENCH_SESSIONS=N` to change the count).

use std::time::{Duration, Instant};

use postern::access::Caller;
use postern::app::App;
use postern::auditing::{list, Filter};
use postern::config::Config;
use postern::sessions::{save, SessionRecord};

fn record(i: u64, start: u64) -> SessionRecord {
    SessionRecord {
        id: format!("s-{i:08x}"),
        kind: "exec".into(),
        user: format!("user{}", i % 1000),
        login: "qa".into(),
        key_id: format!("user{}/req/grant", i % 1000),
        grant: format!("grant-{:08x}", i / 10),
        request: format!("req-{:08x}", i / 10),
        role: "qa-shell".into(),
        target: format!("web-{}", i % 100),
        client: Some("127.0.0.1:40000".into()),
        start,
        end: Some(start + 60),
        state: "ended".into(),
        end_reason: Some("closed".into()),
        exit_status: Some(0),
        bytes_in: 10,
        bytes_out: 1000,
        recording: None,
        size: 0,
        blake3: None,
        sha256: None,
        commands: Vec::new(),
    }
}

fn time<T>(what: &str, runs: u32, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        last = Some(f());
        best = best.min(t.elapsed());
    }
    println!("{what:<58} {:>10.3} ms", best.as_secs_f64() * 1000.0);
    (best, last.expect("ran"))
}

fn main() {
    let n: u64 = std::env::var("POSTERN_BENCH_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    postern::app::init(dir.path()).expect("init");
    let config = Config::load(&dir.path().join("postern.toml")).expect("config");
    let app = App::open(config).expect("app");
    let now = postern::ca::now_secs();
    let t = Instant::now();
    for i in 0..n {
        // One session every 3 seconds, ending now.
        save(&app.store, &record(i, now - (n - i) * 3), false).expect("save");
    }
    app.store.flush().expect("flush");
    println!(
        "inserted {n} sessions (+3 index entries each) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let admin = Caller::local_admin();
    let q = |f: Filter| list(&app, &admin, &f).expect("list").len();
    println!("{:<58} {:>13}", "query (best of 5)", "time");
    time(
        "sessions                 (newest 100, by_start index)",
        5,
        || {
            q(Filter {
                limit: 100,
                ..Filter::default()
            })
        },
    );
    time(
        "sessions --user user7    (newest 100, by_user index)",
        5,
        || {
            q(Filter {
                user: Some("user7".into()),
                limit: 100,
                ..Filter::default()
            })
        },
    );
    let (_, k) = time(
        "sessions --target web-3 --since 1h  (all, by_target)",
        5,
        || {
            q(Filter {
                target: Some("web-3".into()),
                since: Some(now - 3600),
                limit: 0,
                ..Filter::default()
            })
        },
    );
    println!("  ({k} sessions matched)");
    let (_, k) = time("sessions --since 10m    (all, by_start index)", 5, || {
        q(Filter {
            since: Some(now - 600),
            limit: 0,
            ..Filter::default()
        })
    });
    println!("  ({k} sessions matched)");
    let (_, all) = time("baseline: full scan of every record (no index)", 1, || {
        app.store
            .all::<SessionRecord>(postern::store::SESSIONS)
            .expect("all")
            .len()
    });
    println!("  ({all} records scanned)");
}
