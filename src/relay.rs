//! The relay: a client channel joined to a fresh channel on a target,
//! bytes both ways (recorded and counted), until either side closes, an
//! admin kills the session, the recording fails, or the grant stops being
//! live (revoked, shortened, window over) — checked twice a second.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelId, ChannelMsg};

use crate::access::Grant;
use crate::app::App;
use crate::ca::now_secs;
use crate::recording::Recorder;
use crate::session::{finish, Context, PtyRequest};
use crate::sessions::SessionLog;
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

/// How a relayed session ended: (reason, exit status).
pub type Ending = (String, Option<u32>);

/// Proxy the channel to a fresh session on `target` until it ends.
pub async fn proxy(
    ch: Channel<Msg>,
    ctx: &Context,
    grant: &Grant,
    target: &crate::policy::Target,
    plan: Plan,
    log: &mut SessionLog,
) -> Ending {
    let id = ch.id();
    let Plan {
        command,
        pty,
        stdin,
        crlf,
    } = plan;
    let is_pty = pty.is_some() || crlf;
    let idle_timeout = ctx
        .app
        .policy()
        .roles
        .get(&grant.role)
        .and_then(|r| r.idle_timeout);
    let up = match upstream::connect(
        target,
        ctx.app.target_key.clone(),
        ctx.app.config.connect_timeout,
    )
    .await
    {
        Ok(u) => u,
        Err(e) => return fail(ch, log, is_pty, e.to_string()).await,
    };
    let uch = match up.open_session(&target.name).await {
        Ok(c) => c,
        Err(e) => return fail(ch, log, is_pty, e.to_string()).await,
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
        return fail(ch, log, is_pty, format!("target {}: {e}", target.name)).await;
    }
    tracing::info!(session = %log.rec.id, grant = %grant.id, target = %target.name, pty = is_pty, exec = command.is_some(), "session started");
    let (mut cr, cw) = ch.split();
    let (mut ur, uw) = uch.split();
    let counters = log.counters.clone();

    // Client → target.
    let rec_in = log.recorder.clone();
    let counters_in = counters.clone();
    let to_target = tokio::spawn(async move {
        if !stdin {
            let _ = uw.eof().await;
        }
        while let Some(msg) = cr.wait().await {
            let sent = match msg {
                ChannelMsg::Data { data } if stdin => {
                    counters_in
                        .bytes_in
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    counters_in.touch();
                    if let Some(r) = &rec_in {
                        r.input(&data).await;
                    }
                    uw.data_bytes(data).await
                }
                ChannelMsg::Data { .. } => Ok(()),
                ChannelMsg::Eof if !stdin => Ok(()),
                ChannelMsg::Eof => uw.eof().await,
                ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                } => {
                    if let Some(r) = &rec_in {
                        r.resize(col_width, row_height).await;
                    }
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
    let rec_out = log.recorder.clone();
    let to_client = async {
        let mut status = None;
        while let Some(msg) = ur.wait().await {
            let sent = match msg {
                ChannelMsg::Data { data } => {
                    let data = seen_output(data, crlf, &counters, rec_out.as_ref()).await;
                    cw.data_bytes(data).await
                }
                ChannelMsg::ExtendedData { data, ext } => {
                    let data = seen_output(data, crlf, &counters, rec_out.as_ref()).await;
                    cw.extended_data_bytes(ext, data).await
                }
                ChannelMsg::Eof => cw.eof().await,
                ChannelMsg::ExitStatus { exit_status } => {
                    status = Some(exit_status);
                    cw.exit_status(exit_status).await
                }
                ChannelMsg::ExitSignal {
                    signal_name,
                    core_dumped,
                    error_message,
                    lang_tag,
                } => {
                    status = Some(255);
                    handle
                        .exit_signal_request(id, signal_name, core_dumped, error_message, lang_tag)
                        .await
                        .map_err(|_| russh::Error::SendError)
                }
                ChannelMsg::Failure => {
                    let _ = cw
                        .extended_data_bytes(
                            1,
                            Bytes::from_static(b"postern: the target refused the request\n"),
                        )
                        .await;
                    let _ = cw.exit_status(255).await;
                    status = Some(255);
                    break;
                }
                ChannelMsg::Close => break,
                _ => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
        status
    };

    let watch = Watch {
        app: &ctx.app,
        target: &target.name,
        grant_id: &grant.id,
        handle: &ctx.handle,
        channel: id,
        pty: is_pty,
        recorder: log.recorder.clone(),
        idle: idle_timeout.map(|d| (d, log.counters.clone())),
    };
    let mut to_target = to_target;
    let ended: Ending = tokio::select! {
        status = to_client => ("closed".into(), status),
        // The client went away (closed the channel or the connection):
        // nothing is left to serve, whatever the target is still doing.
        _ = &mut to_target => ("client closed the session".into(), None),
        why = watch.run() => (why, Some(255)),
        why = killed(log.kill.clone()) => {
            let nl = if is_pty { "\r\n" } else { "\n" };
            (say(&ctx.handle, id, nl, &why).await, Some(255))
        }
    };
    to_target.abort();
    if ended.0 != "closed" && ended.1.is_some() {
        tracing::info!(session = %log.rec.id, grant = %grant.id, target = %target.name, why = %ended.0, "session cut");
        let _ = ctx.handle.exit_status_request(id, 255).await;
    }
    let _ = ctx.handle.eof(id).await;
    let _ = ctx.handle.close(id).await;
    up.close().await;
    ended
}

/// Output on its way to the client: line endings fixed, counted, recorded.
async fn seen_output(
    data: Bytes,
    crlf: bool,
    counters: &crate::sessions::Counters,
    rec: Option<&Recorder>,
) -> Bytes {
    let data = to_crlf(data, crlf);
    counters
        .bytes_out
        .fetch_add(data.len() as u64, Ordering::Relaxed);
    counters.touch();
    if let Some(r) = rec {
        r.output(&data).await;
    }
    data
}

/// The target could not be reached: tell the user (and the recording).
pub async fn fail(ch: Channel<Msg>, log: &SessionLog, is_pty: bool, e: String) -> Ending {
    tracing::info!(session = %log.rec.id, "upstream failed: {e}");
    if let Some(r) = &log.recorder {
        r.output(&Bytes::from(format!("postern: {e}\r\n"))).await;
    }
    let (_, w) = ch.split();
    finish(&w, "", &format!("postern: {e}\n"), 255, is_pty).await;
    (format!("target failed: {e}"), Some(255))
}

/// Resolve with the reason once an admin kills the session; never, for a
/// session nobody can reach.
pub async fn killed(mut kill: tokio::sync::watch::Receiver<Option<String>>) -> String {
    let why = match kill.wait_for(|k| k.is_some()).await {
        Ok(v) => v.clone(),
        Err(_) => None,
    };
    match why {
        Some(w) => w,
        None => std::future::pending().await,
    }
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

/// What a live session is watched for, besides its own end.
pub struct Watch<'a> {
    pub app: &'a App,
    /// The target the session is on; a reload may take it away.
    pub target: &'a str,
    pub grant_id: &'a str,
    pub handle: &'a Handle,
    pub channel: ChannelId,
    pub pty: bool,
    pub recorder: Option<Recorder>,
    /// The role's `idle_timeout` and the session's activity clock.
    pub idle: Option<(Duration, Arc<crate::sessions::Counters>)>,
}

impl Watch<'_> {
    /// Resolve when the grant stops being live or the recording fails
    /// (with `on_record_failure = "terminate"`), telling the user why; warn
    /// at five and one minute before the window ends.
    pub async fn run(self) -> String {
        let nl = if self.pty { "\r\n" } else { "\n" };
        let (handle, id) = (self.handle, self.channel);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut warned = [false, false];
        let mut idle_warned = false;
        loop {
            tick.tick().await;
            if let Some((limit, counters)) = &self.idle {
                let idle =
                    now_secs().saturating_sub(counters.last_activity.load(Ordering::Relaxed));
                if idle >= limit.as_secs() {
                    let d = humantime::format_duration(*limit);
                    return say(handle, id, nl, &format!("idle for {d}; closing")).await;
                }
                let notice = limit.as_secs().min(60);
                if idle + notice >= limit.as_secs() && !idle_warned {
                    idle_warned = true;
                    let msg = format!(
                        "{nl}postern: idle; closing in {notice}s unless there is activity{nl}"
                    );
                    let _ = handle.extended_data(id, 1, Bytes::from(msg)).await;
                } else if idle + notice < limit.as_secs() {
                    idle_warned = false;
                }
            }
            if self.recorder.as_ref().is_some_and(|r| r.has_failed())
                && self.app.config.terminate_on_record_failure
            {
                return say(
                    handle,
                    id,
                    nl,
                    "recording failed; the session cannot continue unrecorded",
                )
                .await;
            }
            let now = now_secs();
            let grant: Option<Grant> = self.app.store.get(GRANTS, self.grant_id).ok().flatten();
            let Some(grant) = grant else {
                return say(handle, id, nl, "grant no longer exists; closing").await;
            };
            let policy = self.app.policy();
            let still_allowed = policy.roles.get(&grant.role).is_some_and(|role| {
                policy
                    .targets_for(role, &grant.targets)
                    .iter()
                    .any(|t| t.name == self.target)
            });
            if !still_allowed {
                return say(
                    handle,
                    id,
                    nl,
                    "policy no longer allows this target for your role; closing",
                )
                .await;
            }
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
}

pub async fn say(handle: &Handle, id: ChannelId, nl: &str, text: &str) -> String {
    let msg = format!("{nl}postern: {text}{nl}");
    let _ = handle.extended_data(id, 1, Bytes::from(msg)).await;
    text.to_string()
}
