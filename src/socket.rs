//! The local control socket behind `postern ctl`. One request per
//! connection: a JSON array of words in, a JSON object
//! `{stdout, stderr, status}` out. The socket is mode 0600, so only the
//! bastion's own account (the admin on this host) can use it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::access::Caller;
use crate::app::App;

/// Longest request line accepted on the socket.
const MAX_REQUEST: u64 = 1024 * 1024;

#[derive(Serialize, Deserialize)]
pub struct SocketReply {
    pub stdout: String,
    pub stderr: String,
    pub status: u32,
    /// JSON lines follow until the connection closes (`audit --follow`).
    #[serde(default)]
    pub streaming: bool,
}

/// Bind the control socket, replacing a stale one, with mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve(app: Arc<App>, listener: UnixListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(&app, stream).await {
                tracing::debug!("control socket: {e}");
            }
        });
    }
}

async fn answer(app: &App, stream: UnixStream) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(MAX_REQUEST));
    reader.read_line(&mut line).await?;
    let reply = match serde_json::from_str::<Vec<String>>(&line) {
        Ok(args) => {
            let r = crate::control::run(app, &Caller::local_admin(), &args);
            match r.stream {
                Some(crate::replay::Stream::AuditFollow) => return follow_audit(app, w).await,
                Some(_) => SocketReply {
                    stdout: String::new(),
                    stderr: "postern: replay and watch need a terminal: use ssh access@bastion\n"
                        .into(),
                    status: 2,
                    streaming: false,
                },
                None => SocketReply {
                    stdout: r.stdout,
                    stderr: r.stderr,
                    status: r.status,
                    streaming: false,
                },
            }
        }
        Err(e) => SocketReply {
            stdout: String::new(),
            stderr: format!("postern: bad control request: {e}\n"),
            status: 2,
            streaming: false,
        },
    };
    let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    out.push(b'\n');
    w.write_all(&out).await?;
    w.shutdown().await
}

/// Stream audit events as JSON lines until the client goes away.
async fn follow_audit(app: &App, mut w: tokio::net::unix::OwnedWriteHalf) -> std::io::Result<()> {
    let mut feed = app.audit.feed.subscribe();
    let head = SocketReply {
        stdout: String::new(),
        stderr: String::new(),
        status: 0,
        streaming: true,
    };
    let mut out = serde_json::to_vec(&head).map_err(std::io::Error::other)?;
    out.push(b'\n');
    w.write_all(&out).await?;
    loop {
        match feed.recv().await {
            Ok(e) => {
                w.write_all(crate::replay::audit_line(&e).as_bytes())
                    .await?
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                return Err(std::io::Error::other(format!(
                    "follower fell {n} events behind"
                )));
            }
            Err(_) => return Ok(()),
        }
    }
}

/// The client side: send `args`, return the reply.
pub async fn call(path: &Path, args: &[String]) -> std::io::Result<SocketReply> {
    let stream = UnixStream::connect(path).await?;
    let (r, mut w) = stream.into_split();
    let mut req = serde_json::to_vec(args).map_err(std::io::Error::other)?;
    req.push(b'\n');
    w.write_all(&req).await?;
    let mut reader = BufReader::new(r);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let reply: SocketReply = serde_json::from_str(&line).map_err(std::io::Error::other)?;
    if reply.streaming {
        let mut out = tokio::io::stdout();
        loop {
            line.clear();
            if reader.read_line(&mut line).await? == 0 {
                break;
            }
            out.write_all(line.as_bytes()).await?;
            out.flush().await?;
        }
    }
    Ok(reply)
}
