//! The auditor's verbs over session records and recordings: list and
//! search sessions, export, replay with timing, watch live, kill; and the
//! audit log listing and verification.

use std::time::Duration;

use serde_json::{json, Value};

use crate::access::{AccessError, Caller};
use crate::app::App;
use crate::ca::now_secs;
use crate::control::escape;
use crate::sessions::SessionRecord;
use crate::store::SESSIONS;

/// Filters for `sessions`. `since`/`until` bound the start time.
#[derive(Debug, Default)]
pub struct Filter {
    pub user: Option<String>,
    pub target: Option<String>,
    pub since: Option<u64>,
    pub until: Option<u64>,
    pub grep: Option<String>,
    /// At most this many, newest first (0 = no limit).
    pub limit: usize,
}

/// Parse a point in time: unix seconds, RFC 3339, or a duration ago.
pub fn parse_time(s: &str) -> Result<u64, AccessError> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now_secs().saturating_sub(d.as_secs()));
    }
    humantime::parse_rfc3339_weak(s)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .ok_or_else(|| {
            AccessError::BadDuration(
                s.to_string(),
                "want unix seconds, RFC 3339, or a duration ago like 2h".into(),
            )
        })
}

fn may_see(caller: &Caller, s: &SessionRecord) -> bool {
    caller.is_auditor() || s.user == caller.name
}

fn output_contains(s: &SessionRecord, needle: &str) -> bool {
    s.recording.as_ref().is_some_and(|p| {
        crate::recording::read(std::path::Path::new(p))
            .map(|(_, ev)| {
                let text: String = ev
                    .iter()
                    .filter(|e| e.kind == "o")
                    .map(|e| e.data.as_str())
                    .collect();
                text.contains(needle)
            })
            .unwrap_or(false)
    })
}

/// Sessions the caller may see, newest first, filtered. Walks the most
/// selective index (user, target, or start time) over the time range, so
/// the cost follows the answer, not the number of stored sessions.
pub fn list(app: &App, caller: &Caller, f: &Filter) -> Result<Vec<SessionRecord>, AccessError> {
    use crate::sessions::{index_key, BY_START, BY_TARGET, BY_USER};
    // Requesters only ever see their own sessions.
    let user = if caller.is_auditor() {
        f.user.clone()
    } else {
        match &f.user {
            Some(u) if u != &caller.name => return Ok(Vec::new()),
            _ => Some(caller.name.clone()),
        }
    };
    let (index, prefix) = match (&user, &f.target) {
        (Some(u), _) => (BY_USER, u.as_str()),
        (None, Some(t)) => (BY_TARGET, t.as_str()),
        (None, None) => (BY_START, ""),
    };
    let lo = index_key(prefix, f.since.unwrap_or(0), "");
    let hi = index_key(
        prefix,
        f.until.map_or(u64::MAX, |u| u.saturating_add(1)),
        "",
    );
    let mut out = Vec::new();
    for id in app.store.index_rev(index, lo, hi)? {
        let id = id?;
        let Some(s) = app.store.get::<SessionRecord>(SESSIONS, &id)? else {
            continue;
        };
        let keep = may_see(caller, &s)
            && user.as_ref().is_none_or(|u| &s.user == u)
            && f.target.as_ref().is_none_or(|t| &s.target == t)
            && f.grep.as_ref().is_none_or(|g| {
                s.commands.iter().any(|c| c.line.contains(g.as_str())) || output_contains(&s, g)
            });
        if keep {
            out.push(s);
            if f.limit > 0 && out.len() >= f.limit {
                break;
            }
        }
    }
    Ok(out)
}

pub fn session_json(s: &SessionRecord) -> Value {
    serde_json::to_value(s).unwrap_or_else(|_| json!({ "id": s.id }))
}

pub fn render(s: &SessionRecord) -> String {
    let start =
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(s.start));
    format!(
        "{}  {}  {} as {} on {} ({})  {}{}  in={} out={}  commands={}\n",
        s.id,
        start,
        escape(&s.user),
        escape(&s.login),
        escape(&s.target),
        s.kind,
        s.state,
        s.end_reason
            .as_ref()
            .map(|r| format!(" ({})", escape(r)))
            .unwrap_or_default(),
        s.bytes_in,
        s.bytes_out,
        s.commands.len(),
    )
}

/// The record of a session the caller may see.
pub fn get(app: &App, caller: &Caller, id: &str) -> Result<SessionRecord, AccessError> {
    let s: SessionRecord = app
        .store
        .get(SESSIONS, id)?
        .ok_or_else(|| AccessError::UnknownId(id.to_string()))?;
    if !may_see(caller, &s) {
        // Same answer as for a session that does not exist.
        return Err(AccessError::UnknownId(id.to_string()));
    }
    Ok(s)
}

/// The asciicast file of a session, as stored.
pub fn export(app: &App, caller: &Caller, id: &str) -> Result<String, AccessError> {
    let s = get(app, caller, id)?;
    let path = s.recording.ok_or_else(|| {
        AccessError::Internal(format!(
            "session {id} ({}) has no terminal recording",
            s.kind
        ))
    })?;
    std::fs::read_to_string(&path).map_err(|e| AccessError::Internal(format!("{path}: {e}")))
}

/// `kill SESSION --reason`: admins end a live session.
pub fn kill(app: &App, caller: &Caller, id: &str, reason: &str) -> Result<String, AccessError> {
    if !caller.is_admin() {
        return Err(AccessError::AdminOnly);
    }
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(AccessError::NoReason);
    }
    let live = app
        .live
        .get(id)
        .ok_or_else(|| AccessError::Internal(format!("session {id} is not live")))?;
    app.audit.record(
        "session.killed",
        &caller.name,
        json!({ "session": id, "user": live.user, "reason": reason }),
    )?;
    let _ = live.kill.send(Some(format!(
        "session killed by {} ({})",
        caller.name,
        escape(reason)
    )));
    Ok(format!("{id} killed\n"))
}
