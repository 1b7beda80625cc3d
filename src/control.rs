//! The command interface shared by `ssh access@bastion CMD` and
//! `postern ctl CMD`: parse an argument vector, run the verb, and render
//! the answer for people or, with `--json`, as one JSON value.

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use crate::access::{self, Caller, Grant, NewRequest, Request};
use crate::app::App;
use crate::auditing;
use crate::ca::now_secs;

/// What a verb answers: text for stdout and stderr and an exit status.
#[derive(Debug, Default)]
pub struct Reply {
    pub stdout: String,
    pub stderr: String,
    pub status: u32,
    /// Output to stream after `stdout` (replay, watch); SSH only.
    pub stream: Option<crate::replay::Stream>,
}

impl Reply {
    fn ok(stdout: String) -> Reply {
        Reply {
            stdout,
            ..Reply::default()
        }
    }
    fn err(status: u32, msg: impl std::fmt::Display) -> Reply {
        Reply {
            stderr: format!("postern: {msg}\n"),
            status,
            ..Reply::default()
        }
    }
}

// A parsed command line (see `parse`). Not a doc comment: clap would show it in --help.
#[derive(Parser, Debug)]
#[command(name = "access", no_binary_name = true, disable_version_flag = true)]
pub struct Cli {
    /// Print one JSON value instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand, Debug)]
enum Verb {
    /// Ask for a role for a while.
    Request {
        role: String,
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        /// Why; the words after --reason are joined, so quoting is optional.
        #[arg(long, num_args = 1..)]
        reason: Option<Vec<String>>,
        #[arg(long, value_name = "SEL")]
        targets: Option<String>,
        /// Start of a planned window: RFC 3339, unix seconds, or `+2h`.
        #[arg(long, value_name = "TIME")]
        start: Option<String>,
    },
    /// List requests you may see.
    Requests {
        #[arg(long)]
        pending: bool,
    },
    /// Approve a request.
    Approve {
        id: String,
        #[arg(long, num_args = 1..)]
        comment: Option<Vec<String>>,
    },
    /// Deny a request (final).
    Deny {
        id: String,
        #[arg(long, num_args = 1..)]
        reason: Vec<String>,
    },
    /// Print the OpenSSH certificate for an approved request.
    Cert { id: String },
    /// List grants.
    Grants,
    /// Lengthen a grant's window (admins).
    Extend {
        id: String,
        #[arg(long, value_name = "DURATION")]
        by: String,
        /// Go past the role's max_ttl (needs --reason).
        #[arg(long)]
        force: bool,
        #[arg(long, num_args = 1..)]
        reason: Option<Vec<String>>,
    },
    /// End a grant's window DURATION from now (admins).
    Shorten {
        id: String,
        #[arg(long, value_name = "DURATION")]
        to: String,
    },
    /// Write an OpenSSH KRL of revoked certificate serials (admins).
    Krl {
        /// Where to write it (default: DATA_DIR/revoked.krl).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Revoke a grant.
    Revoke {
        id: String,
        #[arg(long, num_args = 1..)]
        reason: Vec<String>,
    },
    /// Reload policies (admins).
    Reload,
    /// List sessions you may see.
    Sessions {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        target: Option<String>,
        /// Unix seconds, RFC 3339, or a duration ago (2h).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// Search recorded output and gate commands.
        #[arg(long)]
        grep: Option<String>,
        /// At most this many, newest first (0 = all).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Write a session's asciicast recording to stdout.
    Export { id: String },
    /// Play a session's recording with its timing.
    Replay {
        id: String,
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        #[arg(long = "idle-limit", value_name = "SECONDS")]
        idle_limit: Option<f64>,
    },
    /// Follow a live session, starting with what happened so far.
    Watch { id: String },
    /// End a live session (admins).
    Kill {
        id: String,
        #[arg(long, num_args = 1..)]
        reason: Vec<String>,
    },
    /// List audit events, or `audit verify` the chain.
    Audit {
        #[arg(value_enum)]
        action: Option<AuditAction>,
        #[arg(long)]
        since: Option<String>,
        /// Keep streaming new events (one JSON object per line).
        #[arg(long)]
        follow: bool,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum AuditAction {
    Verify,
}

/// Parse one command line (already split into words, no program name).
/// `Err` is the reply to send as it is: help on stdout, or a usage error.
pub fn parse(args: &[String]) -> Result<Cli, Reply> {
    Cli::try_parse_from(args).map_err(|e| {
        let text = e.render().to_string();
        match e.kind() {
            clap::error::ErrorKind::DisplayHelp
            | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => Reply {
                stdout: text,
                status: if e.kind() == clap::error::ErrorKind::DisplayHelp {
                    0
                } else {
                    2
                },
                ..Reply::default()
            },
            _ => Reply {
                stderr: text,
                status: 2,
                ..Reply::default()
            },
        }
    })
}

/// Run one command line (already split into words) for `caller`.
pub fn run(app: &App, caller: &Caller, args: &[String]) -> Reply {
    let cli = match parse(args) {
        Ok(c) => c,
        Err(reply) => return reply,
    };
    let json = cli.json;
    let mut stream = None;
    let result = match cli.verb {
        Verb::Request {
            role,
            duration,
            reason,
            targets,
            start,
        } => start
            .as_deref()
            .map(parse_start)
            .transpose()
            .and_then(|start| {
                access::request(
                    app,
                    caller,
                    NewRequest {
                        role: &role,
                        duration: duration.as_deref(),
                        reason: reason.map(|r| r.join(" ")).as_deref(),
                        targets: targets.as_deref(),
                        start,
                    },
                )
            })
            .map(|r| render_request(&r, json, true)),
        Verb::Extend {
            id,
            by,
            force,
            reason,
        } => {
            let reason = reason.map(|r| r.join(" "));
            if force && reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
                Err(access::AccessError::NoReason)
            } else {
                access::extend(
                    app,
                    caller,
                    &id,
                    &by,
                    if force { reason.as_deref() } else { None },
                )
                .map(|g| grant_changed(&g, json, "extended"))
            }
        }
        Verb::Shorten { id, to } => {
            access::shorten(app, caller, &id, &to).map(|g| grant_changed(&g, json, "shortened"))
        }
        Verb::Krl { out } => (|| {
            if !caller.is_admin() {
                return Err(access::AccessError::AdminOnly);
            }
            // Over SSH an admin may not pick a path on the bastion's disk.
            if out.is_some() && caller.key.is_some() {
                return Err(access::AccessError::Internal(
                    "--out is for postern ctl on the bastion host; over ssh the KRL goes to DATA_DIR/revoked.krl".into(),
                ));
            }
            let serials = access::revoked_serials(app)?;
            let bytes = crate::krl::encode(app.ca_public(), &serials)
                .map_err(access::AccessError::Internal)?;
            let path = out.unwrap_or_else(|| app.config.data_dir.join("revoked.krl"));
            std::fs::write(&path, bytes)
                .map_err(|e| access::AccessError::Internal(format!("{}: {e}", path.display())))?;
            Ok(if json {
                to_line(
                    &json!({ "id": "krl", "path": path.display().to_string(), "serials": serials }),
                )
            } else {
                format!(
                    "wrote {} ({} revoked serials)\n",
                    path.display(),
                    serials.len()
                )
            })
        })(),
        Verb::Requests { pending } => access::visible_requests(app, caller, pending).map(|rs| {
            if json {
                to_line(&Value::Array(rs.iter().map(request_json).collect()))
            } else if rs.is_empty() {
                "no requests\n".into()
            } else {
                rs.iter().map(|r| render_request(r, false, false)).collect()
            }
        }),
        Verb::Approve { id, comment } => {
            access::approve(app, caller, &id, comment.map(|c| c.join(" ")).as_deref())
                .map(|r| render_request(&r, json, true))
        }
        Verb::Deny { id, reason } => access::deny(app, caller, &id, &reason.join(" "))
            .map(|r| render_request(&r, json, true)),
        Verb::Cert { id } => access::certificate(app, caller, &id).map(|(g, cert)| {
            if json {
                let mut v = grant_json(&g);
                v["certificate"] = Value::String(cert);
                to_line(&v)
            } else {
                format!("{cert}\n")
            }
        }),
        Verb::Grants => access::visible_grants(app, caller).map(|gs| {
            if json {
                let list = gs.iter().map(|g| {
                    let mut v = grant_json(g);
                    v["live_sessions"] = json!(app.live.for_grant(&g.id));
                    v
                });
                to_line(&Value::Array(list.collect()))
            } else if gs.is_empty() {
                "no grants\n".into()
            } else {
                gs.iter()
                    .map(|g| render_grant(g, app.live.for_grant(&g.id)))
                    .collect()
            }
        }),
        Verb::Revoke { id, reason } => {
            access::revoke(app, caller, &id, &reason.join(" ")).map(|g| {
                if json {
                    to_line(&grant_json(&g))
                } else {
                    format!("{} revoked\n", g.id)
                }
            })
        }
        Verb::Sessions {
            user,
            target,
            since,
            until,
            grep,
            limit,
        } => (|| {
            let f = auditing::Filter {
                limit,
                user,
                target,
                since: since.as_deref().map(auditing::parse_time).transpose()?,
                until: until.as_deref().map(auditing::parse_time).transpose()?,
                grep,
            };
            let list = auditing::list(app, caller, &f)?;
            Ok(if json {
                to_line(&Value::Array(
                    list.iter().map(auditing::session_json).collect(),
                ))
            } else if list.is_empty() {
                "no sessions\n".to_string()
            } else {
                list.iter().map(auditing::render).collect()
            })
        })(),
        Verb::Export { id } => auditing::export(app, caller, &id),
        Verb::Replay {
            id,
            speed,
            idle_limit,
        } => auditing::get(app, caller, &id).and_then(|s| {
            let path = s.recording.ok_or_else(|| {
                access::AccessError::Internal(format!("session {id} has no terminal recording"))
            })?;
            stream = Some(crate::replay::Stream::Replay {
                path,
                speed,
                idle_limit,
            });
            Ok(String::new())
        }),
        Verb::Watch { id } => auditing::get(app, caller, &id).and_then(|s| {
            if app.live.get(&s.id).is_none() {
                return Err(access::AccessError::Internal(format!(
                    "session {id} is not live ({}); use replay",
                    s.state
                )));
            }
            stream = Some(crate::replay::Stream::Watch { session: s.id });
            Ok(String::new())
        }),
        Verb::Kill { id, reason } => auditing::kill(app, caller, &id, &reason.join(" ")),
        Verb::Audit {
            action: None,
            follow: true,
            ..
        } if caller.is_auditor() => {
            stream = Some(crate::replay::Stream::AuditFollow);
            Ok(String::new())
        }
        Verb::Audit { action, since, .. } => (|| {
            if !caller.is_auditor() {
                return Err(access::AccessError::Internal(
                    "audit is for auditors and admins".into(),
                ));
            }
            match action {
                Some(AuditAction::Verify) => match app.audit.verify() {
                    Ok(n) => Ok(if json {
                        to_line(&json!({ "id": "audit", "ok": true, "events": n }))
                    } else {
                        format!("audit chain ok: {n} events verified\n")
                    }),
                    Err(e) => Err(access::AccessError::Internal(format!(
                        "audit chain broken: {e}"
                    ))),
                },
                None => {
                    let since = since
                        .as_deref()
                        .map(auditing::parse_time)
                        .transpose()?
                        .unwrap_or(0);
                    let events = app.audit.list(since)?;
                    Ok(if json {
                        to_line(&Value::Array(events.iter().map(audit_json).collect()))
                    } else {
                        events.iter().map(render_event).collect()
                    })
                }
            }
        })(),
        Verb::Reload => {
            if !caller.is_admin() {
                Err(access::AccessError::AdminOnly)
            } else {
                app.reload_policy()
                    .map(|n| format!("policy reloaded: {n} roles\n"))
                    .map_err(|e| access::AccessError::Internal(e.to_string()))
            }
        }
    };
    match result {
        Ok(out) => Reply {
            stream,
            ..Reply::ok(out)
        },
        Err(e) => {
            tracing::info!(caller = %caller.name, error = %e, "command refused");
            Reply::err(1, escape(&e.to_string()))
        }
    }
}

/// `--start`: `+DURATION` from now, unix seconds, or RFC 3339.
fn parse_start(s: &str) -> Result<u64, access::AccessError> {
    if let Some(rel) = s.strip_prefix('+') {
        return humantime::parse_duration(rel)
            .map(|d| now_secs() + d.as_secs())
            .map_err(|e| access::AccessError::BadDuration(s.to_string(), e.to_string()));
    }
    auditing::parse_time(s)
}

fn grant_changed(g: &Grant, json: bool, what: &str) -> String {
    if json {
        return to_line(&grant_json(g));
    }
    let end = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(g.end),
    );
    format!(
        "{} {what}: now ends {end}; the user fetches a new certificate with: ssh access@bastion cert {}\n",
        g.id, g.request
    )
}

fn audit_json(e: &crate::audit::Event) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or_else(|_| json!({}));
    v["id"] = json!(e.seq);
    v
}

fn render_event(e: &crate::audit::Event) -> String {
    let at = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(e.at),
    );
    format!(
        "{:>6}  {at}  {:<20} {:<10} {}\n",
        e.seq,
        e.kind,
        escape(&e.actor),
        escape(&e.data.to_string())
    )
}

fn to_line(v: &Value) -> String {
    format!("{v}\n")
}

fn request_json(r: &Request) -> Value {
    json!({
        "id": r.id,
        "state": r.state,
        "user": r.user,
        "role": r.role,
        "reason": r.reason,
        "duration_secs": r.duration_secs,
        "targets": r.targets,
        "created": r.created,
        "start": r.start,
        "approvals": r.approvals.iter().map(|a| json!({"by": a.by, "at": a.at, "comment": a.text})).collect::<Vec<_>>(),
        "denial": r.denial.as_ref().map(|d| json!({"by": d.by, "at": d.at, "reason": d.text})),
        "grant": r.grant,
    })
}

fn grant_json(g: &Grant) -> Value {
    json!({
        "id": g.id,
        "request": g.request,
        "user": g.user,
        "role": g.role,
        "logins": g.logins,
        "targets": g.targets,
        "start": g.start,
        "end": g.end,
        "serial": g.serial,
        "state": g.state(now_secs()),
        "revoked": g.revoked.as_ref().map(|d| json!({"by": d.by, "at": d.at, "reason": d.text})),
    })
}

fn render_request(r: &Request, json: bool, hint: bool) -> String {
    if json {
        return to_line(&request_json(r));
    }
    let mut s = format!(
        "{}  {}  {}  role={}  for={}  reason=\"{}\"",
        r.id,
        r.state.as_str(),
        escape(&r.user),
        escape(&r.role),
        humantime::format_duration(std::time::Duration::from_secs(r.duration_secs)),
        escape(&r.reason),
    );
    if let Some(start) = r.start {
        let at = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(start),
        );
        s.push_str(&format!("  starts={at}"));
    }
    if !r.approvals.is_empty() {
        let by: Vec<String> = r.approvals.iter().map(|a| escape(&a.by)).collect();
        s.push_str(&format!("  approved-by={}", by.join(",")));
    }
    if let Some(d) = &r.denial {
        s.push_str(&format!(
            "  denied-by={} (\"{}\")",
            escape(&d.by),
            escape(d.text.as_deref().unwrap_or(""))
        ));
    }
    s.push('\n');
    if hint {
        if let Some(g) = &r.grant {
            s.push_str(&format!(
                "approved: grant {g}; fetch the certificate with: ssh access@bastion cert {} > ~/.ssh/id_ed25519-cert.pub\n",
                r.id
            ));
        }
    }
    s
}

fn render_grant(g: &Grant, live: usize) -> String {
    let now = now_secs();
    let left = g.end.saturating_sub(now.max(g.start));
    format!(
        "{}  {}  {}  role={}  request={}  left={}  live_sessions={live}\n",
        g.id,
        g.state(now),
        escape(&g.user),
        escape(&g.role),
        g.request,
        humantime::format_duration(std::time::Duration::from_secs(left)),
    )
}

/// Make user-supplied text safe to print on someone else's terminal:
/// control characters (escape sequences among them) become visible escapes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_terminal_sequences() {
        let e = escape("ok\x1b]0;pwned\x07\r\nnext\u{202e}");
        assert!(!e.chars().any(|c| c.is_control()), "{e:?}");
        assert!(e.contains("\\u{1b}"));
        assert!(e.starts_with("ok"));
    }
}
