//! Local port-forwards (`ssh -L`): only destinations the role lists, only
//! with a certificate that permits forwarding, never a target's own sshd
//! (ProxyJump would bypass the gate and the recording).

use std::time::Duration;

use russh::server::Msg;
use russh::Channel;
use tokio::net::TcpStream;

use crate::policy::{split_host_port, Policy};
use crate::server::GrantLogin;

/// Decide whether `host:port` may be forwarded; returns the address to dial.
pub fn check(policy: &Policy, login: &GrantLogin, host: &str, port: u32) -> Result<String, String> {
    if !login.port_forwarding {
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

/// Copy bytes both ways between the channel and `dest` until either ends.
pub async fn run(channel: Channel<Msg>, dest: String, timeout: Duration) {
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(&dest)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(%dest, "forward connect failed: {e}");
            let _ = channel.close().await;
            return;
        }
        Err(_) => {
            tracing::info!(%dest, "forward connect timed out");
            let _ = channel.close().await;
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    let mut tcp = tcp;
    let mut stream = channel.into_stream();
    match tokio::io::copy_bidirectional(&mut stream, &mut tcp).await {
        Ok((up, down)) => tracing::info!(%dest, up, down, "forward closed"),
        Err(e) => tracing::debug!(%dest, "forward ended: {e}"),
    }
}
