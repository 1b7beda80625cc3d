//! One session channel from open to close: collect its requests (pty,
//! env, exec/shell/subsystem), then serve it as the control plane, the
//! grant's target listing, the read-only gate, or a proxied target session.
//! The task owns the channel and always drains it (russh stalls the whole
//! connection when a kept channel is never read).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelMsg, ChannelWriteHalf, Pty};

use crate::access::Caller;
use crate::app::App;
use crate::ca::now_secs;
use crate::policy::{valid_name, Mode};
use crate::relay::{self, Plan};
use crate::replay::Stream;
use crate::server::{GrantLogin, Identity};
use crate::sessions::{Recording, SessionLog, Size};

/// What a channel task needs from its connection.
pub struct Context {
    pub app: Arc<App>,
    pub identity: Identity,
    pub peer: Option<SocketAddr>,
    /// Connection handle, for replies and for closing from the watchdog.
    pub handle: Handle,
}

/// The client's terminal, as asked for in `pty-req`.
#[derive(Debug, Clone)]
pub struct PtyRequest {
    pub term: String,
    pub cols: u32,
    pub rows: u32,
    pub pix_width: u32,
    pub pix_height: u32,
    pub modes: Vec<(Pty, u32)>,
}

enum Start {
    Shell,
    Exec(Vec<u8>),
}

/// How long a session channel may wait before asking for exec or shell.
const REQUEST_DEADLINE: Duration = Duration::from_secs(60);

/// Longest command line accepted from a client.
const MAX_COMMAND: usize = 64 * 1024;

pub async fn serve(mut ch: Channel<Msg>, ctx: Context) {
    let id = ch.id();
    let mut pty: Option<PtyRequest> = None;
    // A channel must say what it wants (exec/shell) promptly; one held open
    // unused must not wait out a revocation.
    let deadline = tokio::time::sleep(REQUEST_DEADLINE);
    tokio::pin!(deadline);
    let start = loop {
        let msg = tokio::select! {
            m = ch.wait() => m,
            _ = &mut deadline => {
                tracing::info!("channel closed: no exec or shell request in time");
                let _ = ch.close().await;
                return;
            }
        };
        let Some(msg) = msg else { return };
        match msg {
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                terminal_modes,
                ..
            } => {
                pty = Some(PtyRequest {
                    term,
                    cols: col_width,
                    rows: row_height,
                    pix_width,
                    pix_height,
                    modes: terminal_modes,
                });
                let _ = ctx.handle.channel_success(id).await;
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            } => {
                if let Some(p) = pty.as_mut() {
                    p.cols = col_width;
                    p.rows = row_height;
                }
            }
            ChannelMsg::RequestShell { .. } => {
                let _ = ctx.handle.channel_success(id).await;
                break Start::Shell;
            }
            ChannelMsg::Exec { command, .. } => {
                let _ = ctx.handle.channel_success(id).await;
                break Start::Exec(command);
            }
            ChannelMsg::RequestSubsystem { name, .. } => {
                tracing::info!(subsystem = %name, "subsystem refused");
                // The answer is the message, an exit status and the close,
                // not CHANNEL_FAILURE: OpenSSH's client exits at once on a
                // failed subsystem request, before it writes out stderr it
                // has already read, so the message would be lost whenever
                // both arrive in one read. The close ends the request.
                let (_, w) = ch.split();
                let msg = format!(
                    "postern: subsystem {} is not allowed\n",
                    crate::control::escape(&name)
                );
                return finish(&w, "", &msg, 1, pty.is_some()).await;
            }
            ChannelMsg::RequestX11 { .. } => {
                tracing::info!("x11 forwarding refused");
                let _ = ctx.handle.channel_failure(id).await;
            }
            // Client environment never reaches a target.
            ChannelMsg::SetEnv { .. } => {}
            ChannelMsg::Close => return,
            _ => {}
        }
    };
    // A certificate's force-command replaces whatever the client asked.
    let forced = match &ctx.identity {
        Identity::Grant(g) => g.force_command.clone(),
        Identity::Access(_) => None,
    };
    let start = match forced {
        Some(f) => Start::Exec(f.into_bytes()),
        None => start,
    };
    let command = match start {
        Start::Shell => String::new(),
        Start::Exec(bytes) if bytes.len() > MAX_COMMAND => {
            let (_, w) = ch.split();
            return finish(&w, "", "postern: command line too long\n", 2, pty.is_some()).await;
        }
        Start::Exec(bytes) => match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(_) => {
                let (_, w) = ch.split();
                return finish(
                    &w,
                    "",
                    "postern: command line is not UTF-8\n",
                    2,
                    pty.is_some(),
                )
                .await;
            }
        },
    };
    match ctx.identity.clone() {
        Identity::Access(caller) => {
            control_channel(ch, &ctx, &caller, &command, pty.is_some()).await
        }
        Identity::Grant(login) => grant_channel(ch, &ctx, &login, &command, pty).await,
    }
}

/// Write the whole answer, the exit status, EOF and close.
pub async fn finish(w: &ChannelWriteHalf<Msg>, stdout: &str, stderr: &str, status: u32, pty: bool) {
    let fix = |s: &str| {
        if pty {
            s.replace('\n', "\r\n")
        } else {
            s.to_string()
        }
    };
    if !stdout.is_empty() {
        let _ = w.data_bytes(Bytes::from(fix(stdout))).await;
    }
    if !stderr.is_empty() {
        let _ = w.extended_data_bytes(1, Bytes::from(fix(stderr))).await;
    }
    let _ = w.exit_status(status).await;
    let _ = w.eof().await;
    let _ = w.close().await;
}

async fn control_channel(
    ch: Channel<Msg>,
    ctx: &Context,
    caller: &Caller,
    command: &str,
    pty: bool,
) {
    let (mut r, w) = ch.split();
    let reply = if command.trim().is_empty() {
        crate::control::run(&ctx.app, caller, &["--help".to_string()])
    } else {
        match shell_words::split(command) {
            Ok(args) => crate::control::run(&ctx.app, caller, &args),
            Err(e) => crate::control::Reply {
                stderr: format!("postern: cannot parse command line: {e}\n"),
                status: 2,
                ..Default::default()
            },
        }
    };
    let Some(stream) = reply.stream else {
        // Keep draining the client side so the connection never stalls.
        let drain = tokio::spawn(async move { while r.wait().await.is_some() {} });
        finish(&w, &reply.stdout, &reply.stderr, reply.status, pty).await;
        drain.abort();
        return;
    };
    let played = match stream {
        Stream::Replay {
            path,
            speed,
            idle_limit,
        } => crate::replay::replay(&w, &mut r, &path, speed, idle_limit).await,
        Stream::Watch { session } => match ctx.app.live.get(&session) {
            Some(live) => {
                ctx.app.audit.note(
                    "session.watched",
                    &caller.name,
                    serde_json::json!({ "session": session }),
                );
                crate::replay::watch(&w, &mut r, live).await
            }
            None => Err(format!("session {session} is not live")),
        },
        Stream::AuditFollow => {
            let mut feed = ctx.app.audit.feed.subscribe();
            loop {
                tokio::select! {
                    e = feed.recv() => match e {
                        Ok(e) => {
                            if w.data_bytes(Bytes::from(crate::replay::audit_line(&e))).await.is_err() {
                                break Ok(());
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            break Err(format!("audit follower fell {n} events behind; reconnect with --since"));
                        }
                        Err(_) => break Ok(()),
                    },
                    m = r.wait() => if matches!(m, None | Some(ChannelMsg::Close)) { break Ok(()) },
                }
            }
        }
    };
    match played {
        Ok(()) => finish(&w, "", "", 0, pty).await,
        Err(e) => {
            finish(
                &w,
                "",
                &format!("postern: {}\n", crate::control::escape(&e)),
                1,
                pty,
            )
            .await
        }
    }
}

async fn grant_channel(
    ch: Channel<Msg>,
    ctx: &Context,
    login: &GrantLogin,
    command: &str,
    pty: Option<PtyRequest>,
) {
    let policy = ctx.app.policy();
    let is_pty = pty.is_some();
    // The grant as it is now, not as it was at login.
    let fresh: Option<crate::access::Grant> = ctx
        .app
        .store
        .get(crate::store::GRANTS, &login.grant.id)
        .ok()
        .flatten();
    let grant = match fresh {
        Some(g) if g.live_at(now_secs()) => g,
        other => {
            let state = other.map_or("gone".to_string(), |g| g.state(now_secs()).to_string());
            let (_, w) = ch.split();
            let msg = format!("postern: grant {} is {state}\n", login.grant.id);
            return finish(&w, "", &msg, 1, is_pty).await;
        }
    };
    let grant = &grant;
    let Some(role) = policy.roles.get(&grant.role) else {
        let (_, w) = ch.split();
        let msg = format!("postern: role {:?} is no longer in policy\n", grant.role);
        return finish(&w, "", &msg, 1, is_pty).await;
    };
    let allowed: Vec<_> = policy.targets_for(role, &grant.targets);
    let trimmed = command.trim_start();
    let (target_name, rest) = match trimmed.split_once(|c: char| c.is_ascii_whitespace()) {
        Some((t, r)) => (t, r.trim_start()),
        None => (trimmed, ""),
    };
    if target_name.is_empty() {
        let left = grant.end.saturating_sub(now_secs());
        let mut s = format!(
            "postern: grant {} (role {}, {}), {} left\ntargets:\n",
            grant.id,
            role.name,
            mode_name(role.mode),
            humantime::format_duration(Duration::from_secs(left))
        );
        for t in &allowed {
            let labels: Vec<String> = t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("  {}  {}\n", t.name, labels.join(" ")));
        }
        s.push_str(&format!(
            "usage: ssh -t {0}@bastion TARGET  |  ssh {0}@bastion TARGET COMMAND\n",
            login.login
        ));
        let (_, w) = ch.split();
        return finish(&w, &s, "", 0, is_pty).await;
    }
    let target = match allowed.iter().find(|t| t.name == target_name) {
        Some(t) => (*t).clone(),
        None => {
            let shown = if valid_name(target_name) {
                target_name.to_string()
            } else {
                crate::control::escape(target_name)
            };
            let names: Vec<&str> = allowed.iter().map(|t| t.name.as_str()).collect();
            let msg = format!(
                "postern: target {shown} is not in your grant (allowed: {})\n",
                names.join(", ")
            );
            let (_, w) = ch.split();
            return finish(&w, "", &msg, 1, is_pty).await;
        }
    };
    if role.mode == Mode::ReadOnly && rest.is_empty() && pty.is_none() {
        let (_, w) = ch.split();
        let msg = format!(
            "postern: {} is read-only: give a command, or use ssh -t for the gate prompt\n",
            target.name
        );
        return finish(&w, "", &msg, 2, false).await;
    }
    let kind = match (role.mode, rest.is_empty()) {
        (Mode::Shell, true) => "shell",
        (Mode::Shell, false) => "exec",
        (Mode::ReadOnly, true) => "prompt",
        (Mode::ReadOnly, false) => "gate",
    };
    let size = pty.as_ref().map_or(Size { cols: 80, rows: 24 }, |p| Size {
        cols: p.cols,
        rows: p.rows,
    });
    let client = ctx.peer.map(|p| p.to_string());
    let mut log = match SessionLog::start(
        &ctx.app,
        login,
        &target.name,
        kind,
        client,
        Recording::Terminal(size),
    )
    .await
    {
        Ok(l) => l,
        Err(e) => {
            // Nothing reaches a target unrecorded.
            tracing::error!(grant = %grant.id, "session refused: {e}");
            let (_, w) = ch.split();
            let msg = format!("postern: {e}; refusing to open an unrecorded session\n");
            return finish(&w, "", &msg, 255, is_pty).await;
        }
    };
    let (reason, status) = match role.mode {
        Mode::Shell => {
            let plan = Plan {
                command: if rest.is_empty() {
                    None
                } else {
                    Some(rest.to_string())
                },
                pty,
                stdin: true,
                crlf: false,
            };
            relay::proxy(ch, ctx, grant, &target, plan, &mut log).await
        }
        Mode::ReadOnly => match pty {
            Some(p) if rest.is_empty() => {
                crate::prompt::run(ch, ctx, grant, role, &target, p, &mut log).await
            }
            _ => match crate::gate::check(role, rest) {
                Err(refusal) => {
                    log.command(rest, Err(&refusal)).await;
                    let msg = format!("postern: refused: {}\n", crate::control::escape(&refusal.0));
                    if let Some(r) = &log.recorder {
                        r.output(&Bytes::from(msg.replace('\n', "\r\n"))).await;
                    }
                    let (_, w) = ch.split();
                    finish(&w, "", &msg, GATE_REFUSED, is_pty).await;
                    ("refused by the gate".to_string(), Some(GATE_REFUSED))
                }
                Ok(allowed) => {
                    log.command(rest, Ok(&allowed)).await;
                    let plan = Plan {
                        command: Some(crate::gate::remote_command(&allowed)),
                        pty: None,
                        stdin: false,
                        crlf: is_pty,
                    };
                    relay::proxy(ch, ctx, grant, &target, plan, &mut log).await
                }
            },
        },
    };
    log.finish(&reason, status).await;
}

/// Exit status of a command the gate refused.
pub const GATE_REFUSED: u32 = 126;

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::ReadOnly => "read-only",
        Mode::Shell => "shell",
    }
}
