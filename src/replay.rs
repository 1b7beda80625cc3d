//! Playing recordings to an auditor's terminal over SSH: `replay` with the
//! recorded timing (scaled, idle gaps capped) and `watch`, which replays
//! what a live session has done so far and then follows it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use russh::server::Msg;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::sync::broadcast::error::RecvError;

use crate::sessions::Live;

/// What a verb streams instead of answering at once.
#[derive(Debug, Clone)]
pub enum Stream {
    Replay {
        path: String,
        speed: f64,
        idle_limit: Option<f64>,
    },
    Watch {
        session: String,
    },
    /// New audit events as JSON lines, for a SIEM.
    AuditFollow,
}

/// One audit event as the JSON line `audit --follow` streams.
pub fn audit_line(e: &crate::audit::Event) -> String {
    let mut v = serde_json::to_value(e).unwrap_or_default();
    v["id"] = serde_json::json!(e.seq);
    format!("{v}\n")
}

/// Play `path` with its timing; returns when done or the viewer leaves.
pub async fn replay(
    w: &ChannelWriteHalf<Msg>,
    r: &mut ChannelReadHalf,
    path: &str,
    speed: f64,
    idle_limit: Option<f64>,
) -> Result<(), String> {
    let (header, events) = crate::recording::read(Path::new(path))?;
    let idle = idle_limit.or_else(|| header.get("idle_time_limit").and_then(|v| v.as_f64()));
    let speed = if speed.is_finite() && speed > 0.0 {
        speed
    } else {
        1.0
    };
    let mut prev = 0.0;
    for e in events.iter().filter(|e| e.kind == "o") {
        let mut gap = (e.time - prev).max(0.0) / speed;
        if let Some(cap) = idle {
            gap = gap.min(cap.max(0.0));
        }
        prev = e.time;
        if gap > 0.0 {
            let sleep = tokio::time::sleep(Duration::from_secs_f64(gap.min(3600.0)));
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    m = r.wait() => if viewer_left(m) { return Ok(()) },
                }
            }
        }
        if w.data_bytes(Bytes::from(e.data.clone())).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// The viewer closed the channel or pressed Ctrl-C. (EOF on their input
/// is not leaving: `ssh ... watch ID < /dev/null` is a normal viewer.)
fn viewer_left(m: Option<ChannelMsg>) -> bool {
    matches!(m, None | Some(ChannelMsg::Close))
        || matches!(m, Some(ChannelMsg::Data { data }) if data.contains(&0x03))
}

/// Replay a live session so far, then follow it until it ends. A watcher
/// that falls behind skips ahead; the session never waits for it.
pub async fn watch(
    w: &ChannelWriteHalf<Msg>,
    r: &mut ChannelReadHalf,
    live: Arc<Live>,
) -> Result<(), String> {
    let mut rx = live.lines.subscribe();
    let path = live
        .path
        .clone()
        .ok_or("this session has no terminal recording to watch")?;
    // Holding the registry entry would hold a sender and keep the feed
    // open after the session ends.
    drop(live);
    let (_, so_far) = crate::recording::read(&path)?;
    let seen = so_far.len() as u64;
    for e in so_far.iter().filter(|e| e.kind == "o") {
        if w.data_bytes(Bytes::from(e.data.clone())).await.is_err() {
            return Ok(());
        }
    }
    loop {
        let line = tokio::select! {
            l = rx.recv() => l,
            m = r.wait() => if viewer_left(m) { return Ok(()) } else { continue },
        };
        match line {
            Ok(l) if l.seq < seen => {}
            Ok(l) => {
                if let Ok((_, kind, data)) = serde_json::from_str::<(f64, String, String)>(&l.text)
                {
                    if kind == "o" && w.data_bytes(Bytes::from(data)).await.is_err() {
                        return Ok(());
                    }
                }
            }
            Err(RecvError::Lagged(n)) => {
                let msg =
                    format!("\r\n[postern: this watcher fell behind; {n} events skipped]\r\n");
                let _ = w.data_bytes(Bytes::from(msg)).await;
            }
            Err(RecvError::Closed) => {
                let _ = w
                    .data_bytes(Bytes::from_static(b"\r\n[postern: session ended]\r\n"))
                    .await;
                return Ok(());
            }
        }
    }
}
