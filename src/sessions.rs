//! Session records: who reached which target when, through which grant,
//! what they ran (gate verdicts), how it ended, and where the recording is
//! with its size and SHA-256. Live sessions are also in a registry so
//! auditors can watch them and admins can kill them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

use crate::app::App;
use crate::ca::now_secs;
use crate::recording::{Recorder, Summary};
use crate::server::GrantLogin;
use crate::store::SESSIONS;

/// One gate command and its verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GateCommand {
    pub at: u64,
    pub line: String,
    pub allowed: bool,
    /// The rule that matched (allowed) or why it was refused.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    /// `shell`, `exec`, `gate`, `prompt` or `forward`.
    pub kind: String,
    pub user: String,
    pub login: String,
    pub key_id: String,
    pub grant: String,
    pub request: String,
    pub role: String,
    pub target: String,
    pub client: Option<String>,
    pub start: u64,
    pub end: Option<u64>,
    /// `live`, `ended` or `interrupted`.
    pub state: String,
    pub end_reason: Option<String>,
    pub exit_status: Option<u32>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub recording: Option<String>,
    pub size: u64,
    /// BLAKE3 of the recording file, hex (check with `b3sum`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// SHA-256 of the recording, in records written before recordings
    /// were hashed with BLAKE3; never set now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub commands: Vec<GateCommand>,
}

/// Gate commands kept in one session record.
const MAX_COMMANDS: usize = 1000;
/// Characters of a command line kept in the record.
const MAX_COMMAND_CHARS: usize = 1024;

/// A live session as others can reach it.
pub struct Live {
    pub user: String,
    /// The grant the session runs under.
    pub grant: String,
    /// Written recording lines, for watchers.
    pub lines: crate::recording::Fanout,
    /// Recording file, for the replay part of a watch (`None` for forwards).
    pub path: Option<std::path::PathBuf>,
    /// Set to `Some(why)` to end the session.
    pub kill: watch::Sender<Option<String>>,
}

/// Registry of live sessions; owned by [`App`].
#[derive(Default)]
pub struct Registry {
    inner: Mutex<HashMap<String, Arc<Live>>>,
}

impl Registry {
    pub fn get(&self, id: &str) -> Option<Arc<Live>> {
        self.lock().get(id).cloned()
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Live>>> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
    pub fn count(&self) -> usize {
        self.lock().len()
    }
    /// Live sessions under one grant.
    pub fn for_grant(&self, grant: &str) -> usize {
        self.lock().values().filter(|l| l.grant == grant).count()
    }
}

/// Byte counters shared by a session's two directions.
#[derive(Default)]
pub struct Counters {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Unix seconds of the last byte either way (for `idle_timeout`).
    pub last_activity: AtomicU64,
}

impl Counters {
    pub fn touch(&self) {
        self.last_activity.store(now_secs(), Ordering::Relaxed);
    }
}

/// The session side of a record: updates the store and the recording.
pub struct SessionLog {
    app: Arc<App>,
    pub rec: SessionRecord,
    /// The recording, when this kind of session has one.
    pub recorder: Option<Recorder>,
    writer: Option<tokio::task::JoinHandle<Summary>>,
    /// Fires with a reason when an admin kills the session.
    pub kill: watch::Receiver<Option<String>>,
    pub counters: Arc<Counters>,
}

/// Terminal size for the recording header.
pub struct Size {
    pub cols: u32,
    pub rows: u32,
}

/// What a session records besides its metadata.
pub enum Recording {
    /// An asciicast of a terminal of this size.
    Terminal(Size),
    /// Every byte of a port-forward, both ways.
    ForwardBytes,
    /// Metadata only.
    None,
}

impl SessionLog {
    /// Create the record (state `live`), the recording (unless `size` is
    /// `None`, for port-forwards) and the registry entry.
    pub async fn start(
        app: &Arc<App>,
        login: &GrantLogin,
        target: &str,
        kind: &str,
        client: Option<String>,
        recording: Recording,
    ) -> Result<SessionLog, String> {
        let id = app.store.new_id(SESSIONS, "s").map_err(|e| e.to_string())?;
        // The session/forward span the caller runs in (see server.rs).
        tracing::Span::current()
            .record("session", id.as_str())
            .record("target", target);
        let mut rec = SessionRecord {
            id: id.clone(),
            kind: kind.to_string(),
            user: login.grant.user.clone(),
            login: login.login.clone(),
            key_id: login.key_id.clone(),
            grant: login.grant.id.clone(),
            request: login.grant.request.clone(),
            role: login.grant.role.clone(),
            target: target.to_string(),
            client,
            start: now_secs(),
            end: None,
            state: "live".into(),
            end_reason: None,
            exit_status: None,
            bytes_in: 0,
            bytes_out: 0,
            recording: None,
            size: 0,
            blake3: None,
            sha256: None,
            commands: Vec::new(),
        };
        let started = match recording {
            Recording::Terminal(s) => {
                let title = format!(
                    "{} as {} on {} ({})",
                    rec.user, rec.login, rec.target, rec.kind
                );
                Some(Recorder::start(&app.config.recordings_dir, &id, s.cols, s.rows, title).await)
            }
            Recording::ForwardBytes => {
                Some(Recorder::start_forward(&app.config.recordings_dir, &id, target).await)
            }
            Recording::None => None,
        };
        let (recorder, writer) = match started {
            Some(Ok((r, w))) => {
                rec.recording = Some(r.path.display().to_string());
                (Some(r), Some(w))
            }
            Some(Err(e)) => return Err(format!("cannot start the recording: {e}")),
            None => (None, None),
        };
        save(&app.store, &rec, true).map_err(|e| e.to_string())?;
        app.audit.note(
            "session.started",
            &rec.user,
            json!({ "session": id, "kind": kind, "grant": rec.grant, "target": target, "login": rec.login, "client": rec.client }),
        );
        crate::metrics::global()
            .sessions_total
            .fetch_add(1, Ordering::Relaxed);
        let (kill_tx, kill_rx) = watch::channel(None);
        let (lines, path) = match &recorder {
            Some(r) => (r.live.clone(), Some(r.path.clone())),
            None => (Default::default(), None),
        };
        app.live.lock().insert(
            id.clone(),
            Arc::new(Live {
                user: rec.user.clone(),
                grant: rec.grant.clone(),
                lines,
                path,
                kill: kill_tx,
            }),
        );
        Ok(SessionLog {
            app: app.clone(),
            rec,
            recorder,
            writer,
            kill: kill_rx,
            counters: {
                let c = Arc::new(Counters::default());
                c.touch();
                c
            },
        })
    }

    /// Record one gate command with its verdict (store, audit, marker).
    pub async fn command(
        &mut self,
        line: &str,
        verdict: Result<&crate::gate::Allowed, &crate::gate::Refusal>,
    ) {
        let (allowed, detail) = match verdict {
            Ok(a) => (true, a.rules.join(" | ")),
            Err(r) => (false, r.0.clone()),
        };
        let m = crate::metrics::global();
        if allowed {
            &m.gate_allowed
        } else {
            &m.gate_refused
        }
        .fetch_add(1, Ordering::Relaxed);
        let shown = crate::control::escape(line);
        if allowed {
            tracing::info!(session = %self.rec.id, command = %shown, rule = %detail, "gate allowed");
        } else {
            tracing::info!(session = %self.rec.id, command = %shown, why = %detail, "gate refused");
        }
        // The record keeps the first MAX_COMMANDS; every verdict is still
        // audited and marked in the recording.
        if self.rec.commands.len() < MAX_COMMANDS {
            self.rec.commands.push(GateCommand {
                at: now_secs(),
                line: line.chars().take(MAX_COMMAND_CHARS).collect(),
                allowed,
                detail: detail.clone(),
            });
            if let Err(e) = save(&self.app.store, &self.rec, true) {
                tracing::error!("session record: {e}");
            }
        }
        self.app.audit.note(
            if allowed { "gate.allowed" } else { "gate.refused" },
            &self.rec.user,
            json!({ "session": self.rec.id, "target": self.rec.target, "command": line, "detail": detail }),
        );
        if let Some(r) = &self.recorder {
            let verdict = if allowed { "allowed" } else { "refused" };
            r.marker(format!("{verdict}: {line}")).await;
        }
    }

    /// End the session: close the recording, store the summary, audit.
    pub async fn finish(mut self, reason: &str, exit_status: Option<u32>) {
        self.app.live.lock().remove(&self.rec.id);
        drop(self.recorder.take());
        if let Some(w) = self.writer.take() {
            match w.await {
                Ok(s) => {
                    if !s.waited.is_zero() {
                        tracing::info!(session = %self.rec.id, "the recording slowed the session: it waited {} ms in all for the recording to take its bytes", s.waited.as_millis());
                    }
                    self.rec.size = s.size;
                    self.rec.blake3 = s.blake3;
                    if let Some(e) = s.error {
                        self.rec.end_reason = Some(format!("recording failed: {e}"));
                    }
                }
                Err(e) => tracing::error!("recording writer: {e}"),
            }
        }
        self.rec.end = Some(now_secs());
        self.rec.state = "ended".into();
        if self.rec.end_reason.is_none() {
            self.rec.end_reason = Some(reason.to_string());
        }
        self.rec.exit_status = exit_status;
        self.rec.bytes_in = self.counters.bytes_in.load(Ordering::Relaxed);
        self.rec.bytes_out = self.counters.bytes_out.load(Ordering::Relaxed);
        let m = crate::metrics::global();
        m.bytes_in.fetch_add(self.rec.bytes_in, Ordering::Relaxed);
        m.bytes_out.fetch_add(self.rec.bytes_out, Ordering::Relaxed);
        if let Err(e) = save(&self.app.store, &self.rec, true) {
            tracing::error!("session record: {e}");
        }
        self.app.audit.note(
            "session.ended",
            &self.rec.user,
            json!({
                "session": self.rec.id, "reason": self.rec.end_reason, "exit_status": exit_status,
                "bytes_in": self.rec.bytes_in, "bytes_out": self.rec.bytes_out, "blake3": self.rec.blake3,
            }),
        );
    }
}

/// Secondary indexes over session records, so listings stay fast with
/// millions of them: by start time, by user and by target (keys end with
/// the big-endian start and the id), and the set of live sessions.
pub const BY_START: &str = "sessions.by_start";
pub const BY_USER: &str = "sessions.by_user";
pub const BY_TARGET: &str = "sessions.by_target";
pub const LIVE: &str = "sessions.live";

/// `prefix \0 start id` (an empty prefix has no separator).
pub fn index_key(prefix: &str, start: u64, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 9 + id.len());
    if !prefix.is_empty() {
        k.extend_from_slice(prefix.as_bytes());
        k.push(0);
    }
    k.extend_from_slice(&start.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

/// Store a session record with its index entries.
pub fn save(
    store: &crate::store::Store,
    rec: &SessionRecord,
    flush: bool,
) -> Result<(), crate::store::StoreError> {
    let mut index = vec![
        (BY_START, index_key("", rec.start, &rec.id)),
        (BY_USER, index_key(&rec.user, rec.start, &rec.id)),
        (BY_TARGET, index_key(&rec.target, rec.start, &rec.id)),
    ];
    if rec.state == "live" {
        index.push((LIVE, rec.id.as_bytes().to_vec()));
    } else {
        store.index_remove(LIVE, rec.id.as_bytes())?;
    }
    store.put_indexed(SESSIONS, &rec.id, rec, &index, flush)
}

/// At start-up: sessions a crash cut off are marked `interrupted`.
pub fn mark_interrupted(app: &App) -> Result<usize, crate::store::StoreError> {
    let mut n = 0;
    for id in app.store.index_all(LIVE)? {
        let Some(mut s) = app.store.get::<SessionRecord>(SESSIONS, &id)? else {
            app.store.index_remove(LIVE, id.as_bytes())?;
            continue;
        };
        if s.state == "live" {
            s.state = "interrupted".into();
            s.end_reason = Some("the bastion stopped while the session was live".into());
            if let Some(path) = &s.recording {
                // Streamed: a recording can be larger than memory.
                let mut hash = blake3::Hasher::new();
                if let Ok(size) =
                    std::fs::File::open(path).and_then(|mut f| std::io::copy(&mut f, &mut hash))
                {
                    s.size = size;
                    s.blake3 = Some(hash.finalize().to_hex().to_string());
                }
            }
            save(&app.store, &s, true)?;
            app.audit
                .note("session.interrupted", "-", json!({ "session": s.id }));
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_and_ended_sessions_are_listed_through_the_indexes() {
        let dir = tempfile::tempdir().expect("tmp");
        crate::app::init(dir.path()).expect("init");
        let config = crate::config::Config::load(&dir.path().join("postern.toml")).expect("config");
        let app = App::open(config).expect("app");
        let mut rec = SessionRecord {
            id: "s-1".into(),
            kind: "exec".into(),
            user: "alice".into(),
            login: "qa".into(),
            key_id: String::new(),
            grant: "g".into(),
            request: "r".into(),
            role: "x".into(),
            target: "web-1".into(),
            client: None,
            start: now_secs(),
            end: None,
            state: "live".into(),
            end_reason: None,
            exit_status: None,
            bytes_in: 0,
            bytes_out: 0,
            recording: None,
            size: 0,
            blake3: None,
            sha256: None,
            commands: Vec::new(),
        };
        save(&app.store, &rec, true).expect("save");
        let admin = crate::access::Caller::local_admin();
        let all =
            |f: crate::auditing::Filter| crate::auditing::list(&app, &admin, &f).expect("list");
        assert_eq!(all(crate::auditing::Filter::default()).len(), 1);
        assert_eq!(
            app.store.index_all(LIVE).expect("live"),
            vec!["s-1".to_string()]
        );
        rec.state = "ended".into();
        save(&app.store, &rec, true).expect("save");
        assert!(app.store.index_all(LIVE).expect("live").is_empty());
        let f = crate::auditing::Filter {
            user: Some("alice".into()),
            ..Default::default()
        };
        assert_eq!(all(f).len(), 1);
        let f = crate::auditing::Filter {
            user: Some("bob".into()),
            ..Default::default()
        };
        assert!(all(f).is_empty());
    }
}
