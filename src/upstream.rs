//! The target-facing leg: a russh client that logs in to a target as the
//! bastion's own identity, with the target's host key pinned from policy.
//! Users never hold target credentials. The target may not open any
//! channel towards the bastion (agent, X11, forwarded ports): all refused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use russh::client::{self, ChannelOpenHandle, Handle, Msg, Session};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{Channel, ChannelOpenFailure};

use crate::policy::Target;

/// Why the bastion could not reach a target; shown to the user in one line.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach target {0}: {1}")]
    Connect(String, String),
    #[error(
        "target {0} presented a host key that does not match its pinned key; refusing to connect"
    )]
    HostKeyMismatch(String),
    #[error("target {0} refused the bastion's key for login {1:?}")]
    AuthRefused(String, String),
    #[error("target {0} did not answer within {1}s")]
    Timeout(String, u64),
    #[error("target {0}: {1}")]
    Protocol(String, String),
}

/// Client handler for one target connection.
pub struct TargetHandler {
    /// The host key policy pins for this target.
    pinned: PublicKey,
    /// Set when the target presented another key, so the error can say so.
    mismatch: Arc<AtomicBool>,
}

impl client::Handler for TargetHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let ok = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.key_data() == self.pinned.key_data()
            }
            PublicKeyOrCertificate::Certificate(_) => false,
        };
        if !ok {
            self.mismatch.store(true, Ordering::SeqCst);
        }
        Ok(ok)
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        _channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _connected_address: &str,
        _connected_port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn server_channel_open_forwarded_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn server_channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn server_channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn server_channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn server_channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }
}

/// AES-GCM only, for a server leg on a CPU with AES instructions.
pub const GCM_ONLY: &[russh::cipher::Name] =
    &[russh::cipher::AES_256_GCM, russh::cipher::AES_128_GCM];

/// Towards targets the bastion is the client, so its order decides:
/// AES-GCM first where the CPU has AES instructions, then the defaults.
const GCM_FIRST: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::AES_128_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_128_CTR,
];

/// Does this CPU have AES instructions?
pub fn has_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Client settings for every target connection, in one place.
fn client_config() -> client::Config {
    client::Config {
        preferred: if has_aes() {
            russh::Preferred {
                cipher: std::borrow::Cow::Borrowed(GCM_FIRST),
                ..russh::Preferred::DEFAULT
            }
        } else {
            russh::Preferred::DEFAULT
        },
        // Interactive keystrokes must not wait for Nagle.
        nodelay: true,
        // Large windows and packets keep bulk output flowing on one RTT.
        window_size: 8 * 1024 * 1024,
        maximum_packet_size: 32768,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        ..client::Config::default()
    }
}

/// An authenticated connection to a target.
pub struct Upstream {
    /// The russh client handle; dropping it closes the connection.
    pub handle: Handle<TargetHandler>,
}

/// Connect and authenticate to `target` with the bastion's target key.
pub async fn connect(
    target: &Target,
    key: Arc<PrivateKey>,
    timeout: Duration,
) -> Result<Upstream, UpstreamError> {
    // The handshake's state (russh's session before it is spawned, about
    // 4.5 KB) is needed only while connecting. Boxed, it is freed when the
    // handshake ends; inline, it would size every session task that awaits
    // this for as long as the session lasts.
    Box::pin(handshake(target, key, timeout)).await
}

async fn handshake(
    target: &Target,
    key: Arc<PrivateKey>,
    timeout: Duration,
) -> Result<Upstream, UpstreamError> {
    let name = target.name.clone();
    let mismatch = Arc::new(AtomicBool::new(false));
    let handler = TargetHandler {
        pinned: target.host_key.clone(),
        mismatch: mismatch.clone(),
    };
    let config = Arc::new(client_config());
    let address = target.address.as_str();
    let connecting = async {
        let socket = tokio::net::TcpStream::connect(address).await?;
        if let Err(e) = socket.set_nodelay(config.nodelay) {
            tracing::debug!("set_nodelay: {e}");
        }
        let socket = crate::gulp::Gulp::new(socket);
        client::connect_stream(config, socket, handler).await
    };
    let mut handle = match tokio::time::timeout(timeout, connecting).await {
        Err(_) => return Err(UpstreamError::Timeout(name, timeout.as_secs())),
        Ok(Err(_)) if mismatch.load(Ordering::SeqCst) => {
            return Err(UpstreamError::HostKeyMismatch(name))
        }
        Ok(Err(e)) => return Err(UpstreamError::Connect(name, e.to_string())),
        Ok(Ok(h)) => h,
    };
    let hash = handle
        .best_supported_rsa_hash()
        .await
        .ok()
        .flatten()
        .flatten();
    let auth = tokio::time::timeout(
        timeout,
        handle.authenticate_publickey(target.login.clone(), PrivateKeyWithHashAlg::new(key, hash)),
    )
    .await
    .map_err(|_| UpstreamError::Timeout(name.clone(), timeout.as_secs()))?
    .map_err(|e| UpstreamError::Protocol(name.clone(), e.to_string()))?;
    if !auth.success() {
        return Err(UpstreamError::AuthRefused(name, target.login.clone()));
    }
    Ok(Upstream { handle })
}

impl Upstream {
    /// Disconnect from the target now (dropping the handle alone leaves
    /// the connection to russh's own timing).
    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "session over", "en")
            .await;
    }

    pub async fn open_session(&self, target: &str) -> Result<Channel<Msg>, UpstreamError> {
        self.handle
            .channel_open_session()
            .await
            .map_err(|e| UpstreamError::Protocol(target.to_string(), e.to_string()))
    }
}
