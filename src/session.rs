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
use russh::{Channel, ChannelId, ChannelMsg, ChannelWriteHalf, Pty};

use crate::access::{Caller, Grant};
use crate::app::App;
use crate::ca::now_secs;
use crate::policy::{valid_name, Mode};
use crate::server::{GrantLogin, Identity};
use crate::store::GRANTS;
use crate::upstream;

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

/// Longest command line accepted from a client.
const MAX_COMMAND: usize = 64 * 1024;

pub async fn serve(mut ch: Channel<Msg>, ctx: Context) {
    let id = ch.id();
    let mut pty: Option<PtyRequest> = None;
    let start = loop {
        let Some(msg) = ch.wait().await else { return };
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
                let (_, w) = ch.split();
                let msg = format!(
                    "postern: subsystem {} is not allowed\r\n",
                    crate::control::escape(&name)
                );
                let _ = w.extended_data_bytes(1, Bytes::from(msg)).await;
                let _ = ctx.handle.channel_failure(id).await;
                let _ = w.close().await;
                return;
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
async fn finish(w: &ChannelWriteHalf<Msg>, stdout: &str, stderr: &str, status: u32, pty: bool) {
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
    // Keep draining the client side so the connection never stalls.
    let drain = tokio::spawn(async move { while r.wait().await.is_some() {} });
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
    finish(&w, &reply.stdout, &reply.stderr, reply.status, pty).await;
    drain.abort();
}

async fn grant_channel(
    ch: Channel<Msg>,
    ctx: &Context,
    login: &GrantLogin,
    command: &str,
    pty: Option<PtyRequest>,
) {
    let policy = ctx.app.policy();
    let grant = &login.grant;
    let is_pty = pty.is_some();
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
    match role.mode {
        Mode::Shell => {
            let command = if rest.is_empty() {
                None
            } else {
                Some(rest.to_string())
            };
            proxy(ch, ctx, grant, &target, pty, command).await
        }
        Mode::ReadOnly => {
            let (_, w) = ch.split();
            let msg = "postern: read-only roles run commands only through the gate, which refused this command\n";
            finish(&w, "", msg, 1, is_pty).await
        }
    }
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::ReadOnly => "read-only",
        Mode::Shell => "shell",
    }
}

/// Proxy the channel to a fresh session on `target`, both ways, until one
/// side closes or the grant stops being live.
async fn proxy(
    ch: Channel<Msg>,
    ctx: &Context,
    grant: &Grant,
    target: &crate::policy::Target,
    pty: Option<PtyRequest>,
    command: Option<String>,
) {
    let id = ch.id();
    let is_pty = pty.is_some();
    let up = match upstream::connect(
        target,
        ctx.app.target_key.clone(),
        ctx.app.config.connect_timeout,
    )
    .await
    {
        Ok(u) => u,
        Err(e) => {
            tracing::info!(target = %target.name, "upstream failed: {e}");
            let (_, w) = ch.split();
            return finish(&w, "", &format!("postern: {e}\n"), 255, is_pty).await;
        }
    };
    let uch = match up.open_session(&target.name).await {
        Ok(c) => c,
        Err(e) => {
            let (_, w) = ch.split();
            return finish(&w, "", &format!("postern: {e}\n"), 255, is_pty).await;
        }
    };
    if let Some(p) = &pty {
        let _ = uch
            .request_pty(
                false,
                &p.term,
                p.cols,
                p.rows,
                p.pix_width,
                p.pix_height,
                &p.modes,
            )
            .await;
    }
    let started = match &command {
        Some(c) => uch.exec(true, c.as_bytes()).await,
        None => uch.request_shell(true).await,
    };
    if let Err(e) = started {
        let (_, w) = ch.split();
        return finish(
            &w,
            "",
            &format!("postern: target {}: {e}\n", target.name),
            255,
            is_pty,
        )
        .await;
    }
    tracing::info!(grant = %grant.id, target = %target.name, pty = is_pty, exec = command.is_some(), "session started");
    let (mut cr, cw) = ch.split();
    let (mut ur, uw) = uch.split();

    // Client → target.
    let to_target = tokio::spawn(async move {
        while let Some(msg) = cr.wait().await {
            let sent = match msg {
                ChannelMsg::Data { data } => uw.data_bytes(data).await,
                ChannelMsg::Eof => uw.eof().await,
                ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                } => {
                    uw.window_change(col_width, row_height, pix_width, pix_height)
                        .await
                }
                ChannelMsg::Signal { signal } => uw.signal(signal).await,
                ChannelMsg::Close => break,
                _ => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
        let _ = uw.close().await;
    });

    // Target → client.
    let handle = ctx.handle.clone();
    let to_client = async {
        while let Some(msg) = ur.wait().await {
            let sent = match msg {
                ChannelMsg::Data { data } => cw.data_bytes(data).await,
                ChannelMsg::ExtendedData { data, ext } => cw.extended_data_bytes(ext, data).await,
                ChannelMsg::Eof => cw.eof().await,
                ChannelMsg::ExitStatus { exit_status } => cw.exit_status(exit_status).await,
                ChannelMsg::ExitSignal {
                    signal_name,
                    core_dumped,
                    error_message,
                    lang_tag,
                } => handle
                    .exit_signal_request(id, signal_name, core_dumped, error_message, lang_tag)
                    .await
                    .map_err(|_| russh::Error::SendError),
                ChannelMsg::Failure => {
                    let _ = cw
                        .extended_data_bytes(
                            1,
                            Bytes::from_static(b"postern: the target refused the request\n"),
                        )
                        .await;
                    let _ = cw.exit_status(255).await;
                    break;
                }
                ChannelMsg::Close => break,
                _ => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
    };

    let ended = tokio::select! {
        _ = to_client => None,
        why = watch_grant(&ctx.app, &grant.id, &ctx.handle, id, is_pty) => Some(why),
    };
    to_target.abort();
    if let Some(why) = &ended {
        tracing::info!(grant = %grant.id, target = %target.name, %why, "session cut");
        let _ = ctx.handle.exit_status_request(id, 255).await;
    }
    let _ = ctx.handle.eof(id).await;
    let _ = ctx.handle.close(id).await;
    drop(up);
}

/// Resolve when the grant stops being live (revoked, shortened, window
/// over), telling the user why; warn at five and one minute before.
async fn watch_grant(
    app: &App,
    grant_id: &str,
    handle: &Handle,
    id: ChannelId,
    pty: bool,
) -> String {
    let nl = if pty { "\r\n" } else { "\n" };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut warned = [false, false];
    loop {
        tick.tick().await;
        let now = now_secs();
        let grant: Option<Grant> = app.store.get(GRANTS, grant_id).ok().flatten();
        let Some(grant) = grant else {
            return say(handle, id, nl, "grant no longer exists; closing").await;
        };
        if let Some(d) = &grant.revoked {
            let why = crate::control::escape(d.text.as_deref().unwrap_or(""));
            return say(
                handle,
                id,
                nl,
                &format!("access revoked by {} ({why}); closing", d.by),
            )
            .await;
        }
        if now >= grant.end {
            return say(handle, id, nl, "access window ended; closing").await;
        }
        let left = grant.end - now;
        for (i, (limit, text)) in [(300, "5m"), (60, "1m")].iter().enumerate() {
            if left <= *limit && !warned[i] {
                warned[i] = true;
                // A window shorter than the warning gets the exact time left.
                let when = if left + 2 >= *limit {
                    text.to_string()
                } else {
                    humantime::format_duration(Duration::from_secs(left)).to_string()
                };
                let msg = format!("{nl}postern: access ends in {when}{nl}");
                let _ = handle.extended_data(id, 1, Bytes::from(msg)).await;
            }
        }
    }
}

async fn say(handle: &Handle, id: ChannelId, nl: &str, text: &str) -> String {
    let msg = format!("{nl}postern: {text}{nl}");
    let _ = handle.extended_data(id, 1, Bytes::from(msg)).await;
    text.to_string()
}
