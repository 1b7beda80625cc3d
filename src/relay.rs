//! The relay: a client channel joined to a fresh channel on a target,
//! bytes both ways, until either side closes or the grant stops being live
//! (revoked, shortened, window over) — checked twice a second.

use std::time::Duration;

use bytes::Bytes;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelId, ChannelMsg};

use crate::access::Grant;
use crate::app::App;
use crate::ca::now_secs;
use crate::session::{finish, Context, PtyRequest};
use crate::store::GRANTS;
use crate::upstream;

/// How to run the target side.
pub struct Plan {
    /// `exec` this string, or start the login shell when `None`.
    pub command: Option<String>,
    /// Ask the target for a PTY like the client's.
    pub pty: Option<PtyRequest>,
    /// Forward the client's input (read-only gate commands get none).
    pub stdin: bool,
    /// Turn `\n` into `\r\n` towards a client whose terminal is raw but
    /// whose target side has no PTY.
    pub crlf: bool,
}

/// Proxy the channel to a fresh session on `target`, both ways, until one
/// side closes or the grant stops being live.
pub async fn proxy(
    ch: Channel<Msg>,
    ctx: &Context,
    grant: &Grant,
    target: &crate::policy::Target,
    plan: Plan,
) {
    let id = ch.id();
    let Plan {
        command,
        pty,
        stdin,
        crlf,
    } = plan;
    let is_pty = pty.is_some() || crlf;
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
        if !stdin {
            let _ = uw.eof().await;
        }
        while let Some(msg) = cr.wait().await {
            let sent = match msg {
                ChannelMsg::Data { data } if stdin => uw.data_bytes(data).await,
                ChannelMsg::Data { .. } => Ok(()),
                ChannelMsg::Eof if !stdin => Ok(()),
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
                ChannelMsg::Data { data } => cw.data_bytes(to_crlf(data, crlf)).await,
                ChannelMsg::ExtendedData { data, ext } => {
                    cw.extended_data_bytes(ext, to_crlf(data, crlf)).await
                }
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

/// `\n` → `\r\n` when `on`.
pub fn to_crlf(data: Bytes, on: bool) -> Bytes {
    if !on || !data.contains(&b'\n') {
        return data;
    }
    let mut out = Vec::with_capacity(data.len() + data.len() / 16);
    for &b in data.iter() {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    Bytes::from(out)
}

/// Resolve when the grant stops being live (revoked, shortened, window
/// over), telling the user why; warn at five and one minute before.
pub async fn watch_grant(
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
