//! Local port-forwards (`ssh -L`): only destinations the role lists, only
//! with a certificate that permits forwarding, never a target's own sshd
//! (ProxyJump would bypass the gate and the recording).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use russh::server::Msg;
use russh::Channel;
use tokio::net::TcpStream;

use crate::app::App;
use crate::policy::{split_host_port, Policy, RecordForwards};
use crate::server::GrantLogin;
use crate::sessions::{Recording, SessionLog};

/// Decide whether `host:port` may be forwarded; returns the address to dial.
pub fn check(policy: &Policy, login: &GrantLogin, host: &str, port: u32) -> Result<String, String> {
    if !login.port_forwards_permitted {
        return Err("certificate does not permit port forwarding".into());
    }
    let role = policy
        .roles
        .get(&login.grant.role)
        .ok_or_else(|| format!("role {:?} is no longer in policy", login.grant.role))?;
    let port = u16::try_from(port).map_err(|_| "port out of range".to_string())?;
    let wanted = format!("{host}:{port}");
    if !role.port_forwards.iter().any(|f| f == &wanted) {
        return Err(format!("{wanted} is not in the role's port_forwards"));
    }
    // Targets outside the grant (a request narrowed with --targets) are
    // out of reach by name and by address.
    let granted = policy.targets_for(role, &login.grant.targets);
    let outside = |name: &str| !granted.iter().any(|t| t.name == name);
    if policy.target(host).is_some_and(|t| outside(&t.name)) {
        return Err(format!("{host} is not in your grant"));
    }
    for t in &policy.targets {
        if outside(&t.name) && split_host_port(&t.address).is_some_and(|(h, _)| h == host) {
            return Err(format!(
                "{host} is target {}'s host, which is not in your grant",
                t.name
            ));
        }
    }
    // A name that is a target resolves to that target's host.
    let dest = match policy.target(host) {
        Some(t) => {
            let (thost, tport) =
                split_host_port(&t.address).ok_or("target address is not host:port")?;
            if tport == port {
                return Err(format!(
                    "{wanted} is target {}'s sshd; use the bastion, not a jump",
                    t.name
                ));
            }
            if thost.contains(':') {
                format!("[{thost}]:{port}")
            } else {
                format!("{thost}:{port}")
            }
        }
        None => wanted.clone(),
    };
    if policy.targets.iter().any(|t| t.address == dest) {
        return Err(format!(
            "{wanted} is a target's sshd; use the bastion, not a jump"
        ));
    }
    Ok(dest)
}

/// Resolve when the grant stops being live or policy stops allowing this
/// forward (checked twice a second).
async fn grant_ends(app: &App, login: &GrantLogin, host: &str, port: u32) -> String {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tick.tick().await;
        let g: Option<crate::access::Grant> = app
            .store
            .get(crate::store::GRANTS, &login.grant.id)
            .ok()
            .flatten();
        match g {
            Some(g) if g.live_at(crate::ca::now_secs()) => {}
            Some(g) => return format!("grant {} is {}", g.id, g.state(crate::ca::now_secs())),
            None => return "grant no longer exists".into(),
        }
        if let Err(why) = check(&app.policy(), login, host, port) {
            return format!("policy no longer allows this forward: {why}");
        }
    }
}

/// Copy bytes both ways between the channel and `dest` until either ends;
/// the session record keeps destination, timing and byte counts.
pub async fn run(
    app: Arc<App>,
    login: GrantLogin,
    channel: Channel<Msg>,
    (host, port, dest): (String, u32, String),
    client: Option<String>,
) {
    let full = app
        .policy()
        .roles
        .get(&login.grant.role)
        .is_some_and(|r| r.record_forwards == RecordForwards::Full);
    let recording = if full {
        Recording::ForwardBytes
    } else {
        Recording::None
    };
    let log = match SessionLog::start(&app, &login, &dest, "forward", client, recording).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%dest, "forward refused: {e}");
            let _ = channel.close().await;
            return;
        }
    };
    let timeout = app.config.connect_timeout;
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(&dest)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let _ = channel.close().await;
            return log
                .finish(&format!("connect to {dest} failed: {e}"), None)
                .await;
        }
        Err(_) => {
            let _ = channel.close().await;
            return log
                .finish(&format!("connect to {dest} timed out"), None)
                .await;
        }
    };
    let _ = tcp.set_nodelay(true);
    let (mut tcp_r, mut tcp_w) = tcp.into_split();
    let (mut ch_r, mut ch_w) = tokio::io::split(channel.into_stream());
    let (rec, counters) = (log.recorder.clone(), log.counters.clone());
    let up = pump(
        &mut ch_r,
        &mut tcp_w,
        rec.as_ref(),
        true,
        &counters.bytes_in,
    );
    let down = pump(
        &mut tcp_r,
        &mut ch_w,
        rec.as_ref(),
        false,
        &counters.bytes_out,
    );
    let copied = tokio::select! {
        r = async { tokio::try_join!(up, down) } => r.map(|_| ()),
        why = crate::relay::killed(log.kill.clone()) => return log.finish(&why, None).await,
        why = grant_ends(&app, &login, &host, port) => return log.finish(&why, None).await,
    };
    drop(rec);
    let reason = match copied {
        Ok(()) => "closed".to_string(),
        Err(e) => format!("ended: {e}"),
    };
    log.finish(&reason, None).await;
}

/// Copy one direction, counting (and recording, for `record_forwards =
/// "full"`) every byte; EOF is passed on as a write shutdown.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    rec: Option<&crate::recording::Recorder>,
    to_dest: bool,
    count: &std::sync::atomic::AtomicU64,
) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        if let Some(r) = rec {
            r.bytes(to_dest, &buf[..n]).await;
        }
        to.write_all(&buf[..n]).await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Grant;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGjFwwxa53qDkMknfTGDkejpmTMAdeJgrMAh7TboT3tf x";

    fn setup(forwards: &str) -> (Policy, GrantLogin) {
        let mut p = Policy::default();
        let text = format!(
            "[[target]]\nname = \"web-1\"\naddress = \"10.0.0.5:22\"\nlogin = \"qa\"\nhost_key = \"{KEY}\"\n\
             [role.r]\nlogins = [\"qa\"]\ntargets = [\"*\"]\nmode = \"shell\"\nport_forwards = [{forwards}]\n\
             approvals = {{ required = 1, from = [\"lead\"] }}\n"
        );
        p.add_file(std::path::Path::new("t.toml"), &text)
            .expect("policy");
        let g = GrantLogin {
            grant: Grant {
                id: "g".into(),
                request: "r".into(),
                user: "u".into(),
                role: "r".into(),
                logins: vec!["qa".into()],
                targets: vec![],
                start: 0,
                end: u64::MAX,
                serial: 1,
                key: String::new(),
                cert: None,
                revoked: None,
            },
            login: "qa".into(),
            key_id: "k".into(),
            port_forwards_permitted: true,
            force_command: None,
        };
        (p, g)
    }

    #[test]
    fn a_listed_target_sshd_is_still_refused() {
        let (p, g) = setup("\"web-1:22\", \"10.0.0.5:22\", \"web-1:5432\"");
        assert!(check(&p, &g, "web-1", 22)
            .unwrap_err()
            .contains("not a jump"));
        assert!(check(&p, &g, "10.0.0.5", 22)
            .unwrap_err()
            .contains("not a jump"));
        assert_eq!(
            check(&p, &g, "web-1", 5432),
            Ok("10.0.0.5:5432".to_string())
        );
        assert!(check(&p, &g, "web-1", 5433).is_err());
    }

    #[test]
    fn a_narrowed_grant_cannot_forward_to_other_targets() {
        let (mut p, mut g) = setup("\"web-1:5432\", \"db-2:5432\", \"10.0.0.9:5432\"");
        let extra = format!(
            "[[target]]\nname = \"db-2\"\naddress = \"10.0.0.9:22\"\nlogin = \"qa\"\nhost_key = \"{KEY}\"\n"
        );
        p.add_file(std::path::Path::new("t2.toml"), &extra)
            .expect("policy");
        g.grant.targets = vec!["web-1".into()];
        assert!(check(&p, &g, "web-1", 5432).is_ok());
        assert!(check(&p, &g, "db-2", 5432)
            .unwrap_err()
            .contains("not in your grant"));
        assert!(check(&p, &g, "10.0.0.9", 5432)
            .unwrap_err()
            .contains("not in your grant"));
        g.grant.targets = vec![];
        assert!(check(&p, &g, "db-2", 5432).is_ok());
    }

    #[test]
    fn no_extension_no_forward() {
        let (p, mut g) = setup("\"web-1:5432\"");
        g.port_forwards_permitted = false;
        assert!(check(&p, &g, "web-1", 5432).is_err());
    }
}
