//! The interactive read-only gate (`ssh -t qa@bastion web-1` on a
//! read-only role): a small line editor on the bastion — history, tab
//! completion of allowed command names, `help`, time left — where every
//! line goes through the gate and runs on the target as its own exec,
//! without a PTY, so no pager or shell ever sees a keystroke.

use std::time::Duration;

use bytes::Bytes;
use russh::server::Msg;
use russh::{Channel, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};

use crate::access::Grant;
use crate::ca::now_secs;
use crate::control::escape;
use crate::policy::{Role, Target};
use crate::recording::Recorder;
use crate::relay::{killed, to_crlf, Ending, Watch};
use crate::session::{Context, PtyRequest, GATE_REFUSED};
use crate::sessions::SessionLog;
use crate::upstream::{self, Upstream};

/// Lines kept in history.
const HISTORY: usize = 200;
/// Longest line the editor accepts.
const MAX_LINE: usize = 4096;
/// Longest incomplete escape or UTF-8 sequence carried between packets.
const MAX_PENDING: usize = 64;

/// Editor state for one prompt session.
struct Editor {
    /// The line being edited.
    line: Vec<char>,
    /// Cursor position in `line`.
    cursor: usize,
    /// Earlier lines, oldest first.
    history: Vec<String>,
    /// Position while browsing history (`history.len()` = the new line).
    browse: usize,
    /// Incomplete UTF-8 or escape sequence bytes carried between packets.
    pending: Vec<u8>,
}

/// What a key press produced.
enum Key {
    Char(char),
    Enter,
    Backspace,
    Delete,
    Left,
    Right,
    Home,
    End,
    Up,
    Down,
    Tab,
    CtrlC,
    CtrlD,
    CtrlU,
    Ignored,
}

impl Editor {
    fn new() -> Editor {
        Editor {
            line: Vec::new(),
            cursor: 0,
            history: Vec::new(),
            browse: 0,
            pending: Vec::new(),
        }
    }

    /// Decode input bytes into keys; incomplete sequences wait for more.
    fn keys(&mut self, data: &[u8]) -> Vec<Key> {
        self.pending.extend_from_slice(data);
        // No key sequence is longer than this: a runaway one is dropped.
        if self.pending.len() > MAX_PENDING + data.len() {
            self.pending = data.to_vec();
        }
        let mut keys = Vec::new();
        let buf = std::mem::take(&mut self.pending);
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            let (key, used) = match b {
                b'\r' | b'\n' => (Key::Enter, 1),
                0x7f | 0x08 => (Key::Backspace, 1),
                b'\t' => (Key::Tab, 1),
                0x03 => (Key::CtrlC, 1),
                0x04 => (Key::CtrlD, 1),
                0x15 => (Key::CtrlU, 1),
                0x01 => (Key::Home, 1),
                0x05 => (Key::End, 1),
                0x1b => {
                    if i + 2 >= buf.len()
                        && buf.len() - i < 3
                        && buf.get(i + 1).is_none_or(|c| *c == b'[' || *c == b'O')
                    {
                        self.pending = buf[i..].to_vec();
                        break;
                    }
                    match (buf.get(i + 1), buf.get(i + 2)) {
                        (Some(b'[' | b'O'), Some(b'A')) => (Key::Up, 3),
                        (Some(b'[' | b'O'), Some(b'B')) => (Key::Down, 3),
                        (Some(b'[' | b'O'), Some(b'C')) => (Key::Right, 3),
                        (Some(b'[' | b'O'), Some(b'D')) => (Key::Left, 3),
                        (Some(b'[' | b'O'), Some(b'H')) => (Key::Home, 3),
                        (Some(b'[' | b'O'), Some(b'F')) => (Key::End, 3),
                        (Some(b'['), Some(b'3')) if buf.get(i + 3) == Some(&b'~') => {
                            (Key::Delete, 4)
                        }
                        (Some(b'['), Some(_)) => {
                            // Skip any other CSI sequence up to its final byte.
                            let end = buf[i + 2..].iter().position(|c| (0x40..=0x7e).contains(c));
                            match end {
                                Some(e) => (Key::Ignored, e + 3),
                                None => {
                                    self.pending = buf[i..].to_vec();
                                    break;
                                }
                            }
                        }
                        _ => (Key::Ignored, 1),
                    }
                }
                b if b < 0x20 => (Key::Ignored, 1),
                _ => {
                    let len = match b {
                        0xc0..=0xdf => 2,
                        0xe0..=0xef => 3,
                        0xf0..=0xf7 => 4,
                        0x80..=0xbf | 0xf8..=0xff => {
                            i += 1;
                            continue;
                        }
                        _ => 1,
                    };
                    if i + len > buf.len() {
                        self.pending = buf[i..].to_vec();
                        break;
                    }
                    match std::str::from_utf8(&buf[i..i + len])
                        .ok()
                        .and_then(|s| s.chars().next())
                    {
                        Some(c) if !c.is_control() => (Key::Char(c), len),
                        _ => (Key::Ignored, len),
                    }
                }
            };
            keys.push(key);
            i += used;
        }
        keys
    }

    fn text(&self) -> String {
        self.line.iter().collect()
    }

    fn set(&mut self, s: &str) {
        self.line = s.chars().collect();
        self.cursor = self.line.len();
    }
}

/// The client's terminal: every byte written is also recorded.
struct Term<'a> {
    w: &'a ChannelWriteHalf<Msg>,
    rec: Option<Recorder>,
    /// Output counts as activity for `idle_timeout`.
    counters: std::sync::Arc<crate::sessions::Counters>,
}

impl Term<'_> {
    async fn write(&self, data: Bytes) -> Result<(), russh::Error> {
        self.counters.touch();
        if let Some(r) = &self.rec {
            r.output(&data).await;
        }
        self.w.data_bytes(data).await
    }
}

/// Run the prompt until `exit`, Ctrl-D, the client leaving or the grant
/// ending.
pub async fn run(
    ch: Channel<Msg>,
    ctx: &Context,
    grant: &Grant,
    role: &Role,
    target: &Target,
    _pty: PtyRequest,
    log: &mut SessionLog,
) -> Ending {
    let id = ch.id();
    let up = match upstream::connect(
        target,
        ctx.app.target_key.clone(),
        ctx.app.config.connect_timeout,
    )
    .await
    {
        Ok(u) => u,
        Err(e) => return crate::relay::fail(ch, log, true, e.to_string()).await,
    };
    let (mut r, w) = ch.split();
    let term = Term {
        w: &w,
        rec: log.recorder.clone(),
        counters: log.counters.clone(),
    };
    let watch = Watch {
        app: &ctx.app,
        target: &target.name,
        grant_id: &grant.id,
        handle: &ctx.handle,
        channel: id,
        pty: true,
        recorder: log.recorder.clone(),
        idle: role.idle_timeout.map(|d| (d, log.counters.clone())),
    };
    let watchdog = watch.run();
    tokio::pin!(watchdog);
    let kill = killed(log.kill.clone());
    tokio::pin!(kill);
    let mut reason = "closed".to_string();
    let mut ed = Editor::new();
    let left = |g: &Grant| {
        humantime::format_duration(Duration::from_secs(g.end.saturating_sub(now_secs())))
            .to_string()
    };
    let banner = format!(
        "postern read-only gate on {} (grant {}, {} left). Type `help` for the allowed commands, `exit` to leave.\r\n",
        target.name,
        grant.id,
        left(grant)
    );
    let _ = term.write(Bytes::from(banner)).await;
    let prompt = format!("{}> ", target.name);
    redraw(&term, &prompt, &ed).await;
    let mut status = 0u32;
    // Keys typed while a command ran, replayed once it is done.
    let mut typeahead: Vec<u8> = Vec::new();
    'session: loop {
        let data = if !typeahead.is_empty() {
            Bytes::from(std::mem::take(&mut typeahead))
        } else {
            let msg = tokio::select! {
                m = r.wait() => m,
                why = &mut watchdog => { status = 255; reason = why; break 'session; }
                why = &mut kill => {
                    status = 255;
                    reason = crate::relay::say(&ctx.handle, id, "\r\n", &why).await;
                    break 'session;
                }
            };
            match msg {
                Some(ChannelMsg::Data { data }) => {
                    log.counters.touch();
                    if let Some(rec) = &log.recorder {
                        rec.input(&data).await;
                    }
                    data
                }
                Some(ChannelMsg::Eof) | Some(ChannelMsg::Close) | None => break,
                Some(_) => continue,
            }
        };
        let keys = ed.keys(&data);
        let mut keys = keys.into_iter();
        while let Some(key) = keys.next() {
            match key {
                Key::Char(c) if ed.line.len() < MAX_LINE => {
                    ed.line.insert(ed.cursor, c);
                    ed.cursor += 1;
                }
                Key::Char(_) | Key::Ignored => {}
                Key::Backspace if ed.cursor > 0 => {
                    ed.cursor -= 1;
                    ed.line.remove(ed.cursor);
                }
                Key::Delete if ed.cursor < ed.line.len() => {
                    ed.line.remove(ed.cursor);
                }
                Key::Backspace | Key::Delete => {}
                Key::Left => ed.cursor = ed.cursor.saturating_sub(1),
                Key::Right => ed.cursor = (ed.cursor + 1).min(ed.line.len()),
                Key::Home => ed.cursor = 0,
                Key::End => ed.cursor = ed.line.len(),
                Key::Up if ed.browse > 0 => {
                    ed.browse -= 1;
                    let h = ed.history[ed.browse].clone();
                    ed.set(&h);
                }
                Key::Down if ed.browse < ed.history.len() => {
                    ed.browse += 1;
                    let h = ed.history.get(ed.browse).cloned().unwrap_or_default();
                    ed.set(&h);
                }
                Key::Up | Key::Down => {}
                Key::CtrlU => {
                    ed.line.drain(..ed.cursor);
                    ed.cursor = 0;
                }
                Key::CtrlC => {
                    let _ = term.write(Bytes::from_static(b"^C\r\n")).await;
                    ed.set("");
                }
                Key::CtrlD if ed.line.is_empty() => {
                    let _ = term.write(Bytes::from_static(b"\r\n")).await;
                    break 'session;
                }
                Key::CtrlD => {}
                Key::Tab => complete(&term, &mut ed, role).await,
                Key::Enter => {
                    let line = ed.text();
                    let _ = term.write(Bytes::from_static(b"\r\n")).await;
                    ed.set("");
                    let trimmed = line.trim();
                    if !trimmed.is_empty() && ed.history.last().map(String::as_str) != Some(trimmed)
                    {
                        ed.history.push(trimmed.to_string());
                        if ed.history.len() > HISTORY {
                            ed.history.remove(0);
                        }
                    }
                    ed.browse = ed.history.len();
                    match trimmed {
                        "" => {}
                        "exit" | "logout" | "quit" => break 'session,
                        "help" => {
                            let fresh: Option<Grant> = ctx
                                .app
                                .store
                                .get(crate::store::GRANTS, &grant.id)
                                .ok()
                                .flatten();
                            let text = format!(
                                "{}time left on grant {}: {}\n",
                                crate::gate::help(role),
                                grant.id,
                                left(fresh.as_ref().unwrap_or(grant))
                            );
                            let _ = term.write(to_crlf(Bytes::from(text), true)).await;
                        }
                        _ => {
                            status = run_line(
                                &term,
                                &mut r,
                                &up,
                                log,
                                role,
                                target,
                                trimmed,
                                &mut typeahead,
                            )
                            .await;
                            if status == LEFT {
                                status = 255;
                                break 'session;
                            }
                            // Keys already decoded from this packet come
                            // after the ones typed while the command ran.
                            let rest: Vec<Key> = keys.by_ref().collect();
                            if !rest.is_empty() {
                                let mut replay = encode(&rest);
                                replay.extend_from_slice(&typeahead);
                                typeahead = replay;
                            }
                        }
                    }
                }
            }
        }
        redraw(&term, &prompt, &ed).await;
    }
    let _ = w.exit_status(status).await;
    let _ = w.eof().await;
    let _ = w.close().await;
    up.close().await;
    (reason, Some(status))
}

async fn redraw(term: &Term<'_>, prompt: &str, ed: &Editor) {
    let mut s = format!("\r\x1b[K{prompt}{}", ed.text());
    let back = ed.line.len() - ed.cursor;
    if back > 0 {
        s.push_str(&format!("\x1b[{back}D"));
    }
    let _ = term.write(Bytes::from(s)).await;
}

/// Complete the command name (first word) from what the role allows.
async fn complete(term: &Term<'_>, ed: &mut Editor, role: &Role) {
    let text = ed.text();
    if text[..].contains(' ') {
        return;
    }
    let mut names: Vec<&str> = role.commands.iter().map(|p| p.command()).collect();
    names.extend(["help", "exit"]);
    names.sort_unstable();
    names.dedup();
    let hits: Vec<&str> = names
        .into_iter()
        .filter(|n| n.starts_with(text.as_str()))
        .collect();
    match hits.as_slice() {
        [] => {}
        [one] => ed.set(&format!("{one} ")),
        many => {
            let common = many.iter().skip(1).fold(many[0].to_string(), |acc, n| {
                acc.chars()
                    .zip(n.chars())
                    .take_while(|(a, b)| a == b)
                    .map(|(a, _)| a)
                    .collect()
            });
            if common.len() > text.len() {
                ed.set(&common);
            } else {
                let _ = term
                    .write(Bytes::from(format!("\r\n{}\r\n", many.join("  "))))
                    .await;
            }
        }
    }
}

/// `run_line`'s answer when the client went away mid-command.
const LEFT: u32 = u32::MAX;

/// Turn decoded keys back into the bytes that produce them.
fn encode(keys: &[Key]) -> Vec<u8> {
    let mut out = Vec::new();
    for k in keys {
        match k {
            Key::Char(c) => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
            Key::Enter => out.push(b'\r'),
            Key::Backspace => out.push(0x7f),
            Key::Delete => out.extend_from_slice(b"\x1b[3~"),
            Key::Left => out.extend_from_slice(b"\x1b[D"),
            Key::Right => out.extend_from_slice(b"\x1b[C"),
            Key::Home => out.push(0x01),
            Key::End => out.push(0x05),
            Key::Up => out.extend_from_slice(b"\x1b[A"),
            Key::Down => out.extend_from_slice(b"\x1b[B"),
            Key::Tab => out.push(b'\t'),
            Key::CtrlC => out.push(0x03),
            Key::CtrlD => out.push(0x04),
            Key::CtrlU => out.push(0x15),
            Key::Ignored => {}
        }
    }
    out
}

/// Check and run one line; returns its exit status. Keys typed while it
/// runs go to `typeahead` (Ctrl-C stops the command instead).
#[allow(clippy::too_many_arguments)]
async fn run_line(
    term: &Term<'_>,
    r: &mut ChannelReadHalf,
    up: &Upstream,
    log: &mut SessionLog,
    role: &Role,
    target: &Target,
    line: &str,
    typeahead: &mut Vec<u8>,
) -> u32 {
    let allowed = match crate::gate::check(role, line) {
        Ok(a) => a,
        Err(refusal) => {
            log.command(line, Err(&refusal)).await;
            let msg = format!("postern: refused: {}\r\n", escape(&refusal.0));
            let _ = term.write(Bytes::from(msg)).await;
            return GATE_REFUSED;
        }
    };
    log.command(line, Ok(&allowed)).await;
    let mut uch = match up.open_session(&target.name).await {
        Ok(c) => c,
        Err(e) => {
            let _ = term.write(Bytes::from(format!("postern: {e}\r\n"))).await;
            return 255;
        }
    };
    if uch
        .exec(true, crate::gate::remote_command(&allowed).as_bytes())
        .await
        .is_err()
    {
        return 255;
    }
    let _ = uch.eof().await;
    let mut status = 0;
    loop {
        tokio::select! {
            m = uch.wait() => match m {
                Some(ChannelMsg::Data { data }) | Some(ChannelMsg::ExtendedData { data, .. }) => {
                    let _ = term.write(to_crlf(data, true)).await;
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => status = exit_status,
                Some(ChannelMsg::ExitSignal { .. }) => status = 255,
                Some(ChannelMsg::Close) | None => break,
                Some(_) => {}
            },
            m = r.wait() => match m {
                // Ctrl-C stops the running command; other keys wait.
                // Both are recorded as they arrive.
                Some(ChannelMsg::Data { data }) if data.contains(&0x03) => {
                    if let Some(rec) = &log.recorder {
                        rec.input(&data).await;
                    }
                    let _ = uch.close().await;
                    let _ = term.write(Bytes::from_static(b"^C\r\n")).await;
                    return 130;
                }
                Some(ChannelMsg::Data { data }) => {
                    log.counters.touch();
                    if let Some(rec) = &log.recorder {
                        rec.input(&data).await;
                    }
                    if typeahead.len() < MAX_LINE * 4 {
                        typeahead.extend_from_slice(&data);
                    }
                }
                Some(ChannelMsg::Eof) | Some(ChannelMsg::Close) | None => {
                    let _ = uch.close().await;
                    return LEFT;
                }
                Some(_) => {}
            },
        }
    }
    if status != 0 {
        let _ = term
            .write(Bytes::from(format!("[exit {status}]\r\n")))
            .await;
    }
    status
}
