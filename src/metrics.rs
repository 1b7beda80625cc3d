//! Prometheus text metrics on a separate listener (loopback by default):
//! sessions live and total, logins accepted and refused by reason, gate
//! verdicts, bytes proxied, recording write latency.
//!
//! The listener answers every request on the connection with the metrics
//! page and closes: a few lines by hand rather than an HTTP framework for
//! one read-only page that never parses a body.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::app::App;

/// Counters; one set per process, all monotonic except where noted.
#[derive(Default)]
pub struct Metrics {
    pub sessions_total: AtomicU64,
    pub logins_accepted: AtomicU64,
    /// Refusals by reason class.
    refused: Mutex<BTreeMap<String, u64>>,
    pub gate_allowed: AtomicU64,
    pub gate_refused: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub record_writes: AtomicU64,
    pub record_write_micros: AtomicU64,
    pub record_write_max_micros: AtomicU64,
    /// Time sessions waited for their recordings to take their bytes.
    pub record_wait_micros: AtomicU64,
}

/// The metrics of this process.
pub fn global() -> &'static Metrics {
    static M: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
    M.get_or_init(Metrics::default)
}

impl Metrics {
    pub fn refused(&self, why: &str) {
        // Keep the label set small: the reason up to its first detail.
        let class: String = why
            .split([':', '(', '"'])
            .next()
            .unwrap_or("other")
            .trim()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(48)
            .collect();
        let mut m = match self.refused.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if m.len() < 64 || m.contains_key(&class) {
            *m.entry(class).or_default() += 1;
        } else {
            *m.entry("other".into()).or_default() += 1;
        }
    }

    pub fn record_write(&self, micros: u64) {
        self.record_writes.fetch_add(1, Ordering::Relaxed);
        self.record_write_micros
            .fetch_add(micros, Ordering::Relaxed);
        self.record_write_max_micros
            .fetch_max(micros, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, live: usize) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<(String, u64)>| {
            s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, v) in lines {
                s.push_str(&format!("{name}{labels} {v}\n"));
            }
        };
        metric(
            "postern_sessions_live",
            "gauge",
            "Sessions open now.",
            vec![(String::new(), live as u64)],
        );
        metric(
            "postern_sessions_total",
            "counter",
            "Sessions started.",
            vec![(String::new(), g(&self.sessions_total))],
        );
        metric(
            "postern_logins_accepted_total",
            "counter",
            "Successful logins.",
            vec![(String::new(), g(&self.logins_accepted))],
        );
        let refused: Vec<(String, u64)> = match self.refused.lock() {
            Ok(m) => m
                .iter()
                .map(|(k, v)| (format!("{{reason=\"{k}\"}}"), *v))
                .collect(),
            Err(_) => Vec::new(),
        };
        metric(
            "postern_logins_refused_total",
            "counter",
            "Refused logins by reason.",
            refused,
        );
        metric(
            "postern_gate_commands_total",
            "counter",
            "Read-only gate verdicts.",
            vec![
                ("{verdict=\"allowed\"}".into(), g(&self.gate_allowed)),
                ("{verdict=\"refused\"}".into(), g(&self.gate_refused)),
            ],
        );
        metric(
            "postern_bytes_total",
            "counter",
            "Bytes proxied for ended sessions.",
            vec![
                ("{direction=\"in\"}".into(), g(&self.bytes_in)),
                ("{direction=\"out\"}".into(), g(&self.bytes_out)),
            ],
        );
        metric(
            "postern_recording_writes_total",
            "counter",
            "Recording batches written.",
            vec![(String::new(), g(&self.record_writes))],
        );
        metric(
            "postern_recording_write_seconds_sum",
            "counter",
            "Time spent writing recording batches.",
            vec![(String::new(), 0)],
        );
        // The sum is kept in microseconds; print it in seconds.
        let sum = g(&self.record_write_micros) as f64 / 1e6;
        s = s.replace(
            "postern_recording_write_seconds_sum 0\n",
            &format!("postern_recording_write_seconds_sum {sum}\n"),
        );
        let max = g(&self.record_write_max_micros) as f64 / 1e6;
        s.push_str(&format!(
            "# HELP postern_recording_write_seconds_max Slowest recording batch write.\n# TYPE postern_recording_write_seconds_max gauge\npostern_recording_write_seconds_max {max}\n"
        ));
        let wait = g(&self.record_wait_micros) as f64 / 1e6;
        s.push_str(&format!(
            "# HELP postern_recording_wait_seconds_total Time sessions waited for their recordings to take their bytes (a recording slower than its session).\n# TYPE postern_recording_wait_seconds_total counter\npostern_recording_wait_seconds_total {wait}\n"
        ));
        s
    }
}

/// Serve the metrics page on `listener` until the process ends.
pub async fn serve(app: Arc<App>, listener: TcpListener) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            // Read (and ignore) the request head; never more than 1 KiB.
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(2), sock.read(&mut buf)).await;
            let body = global().render(app.live.count());
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}
