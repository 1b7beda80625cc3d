//! The user-facing leg: the russh server. Callbacks stay thin: they decide
//! authentication and hand each accepted channel to its own task
//! ([`crate::session`], [`crate::forward`]), which owns and drains it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::Certificate;
use russh::server::{
    self, Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::limits::{Gatekeeper, PreAuth};

use crate::access::{Caller, Grant};
use crate::app::App;
use crate::ca::{self, now_secs};
use crate::store::GRANTS;

/// The login used for the control plane (`ssh access@bastion VERB`).
pub const ACCESS_LOGIN: &str = "access";

/// Who a connection authenticated as.
#[derive(Debug, Clone)]
pub enum Identity {
    /// A policy user on the control plane.
    Access(Caller),
    /// A certificate holder using a grant.
    Grant(GrantLogin),
}

/// A certificate login bound to its grant.
#[derive(Debug, Clone)]
pub struct GrantLogin {
    pub grant: Grant,
    pub login: String,
    pub key_id: String,
    pub port_forwards_permitted: bool,
    /// The certificate's `force-command`: the only command it may run.
    pub force_command: Option<String>,
}

/// Server settings that matter, in one commented place.
pub fn server_config(app: &App) -> server::Config {
    server::Config {
        // Only public keys and certificates; no passwords, ever.
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        // Constant-time rejections, but the client's first "none" probe
        // is answered at once so logins stay fast.
        auth_rejection_time: Duration::from_millis(500),
        auth_rejection_time_initial: Some(Duration::from_millis(0)),
        keys: vec![app.host_key.clone()],
        // Interactive keystrokes must not wait for Nagle.
        nodelay: true,
        window_size: 8 * 1024 * 1024,
        maximum_packet_size: 32768,
        max_auth_attempts: 6,
        // With AES instructions, AES-GCM costs a fraction of ChaCha20-Poly1305
        // (which OpenSSH clients pick first if offered), so offer only GCM.
        preferred: if crate::upstream::has_aes() {
            russh::Preferred {
                cipher: std::borrow::Cow::Borrowed(crate::upstream::GCM_ONLY),
                ..russh::Preferred::DEFAULT
            }
        } else {
            russh::Preferred::DEFAULT
        },
        inactivity_timeout: Some(Duration::from_secs(3600)),
        keepalive_interval: Some(Duration::from_secs(30)),
        ..server::Config::default()
    }
}

/// Accept connections on `listener` until the process ends. Each new
/// connection must pass the [`Gatekeeper`] and authenticate within the
/// grace time.
pub async fn run(app: Arc<App>, listener: TcpListener) -> std::io::Result<()> {
    let config = Arc::new(server_config(&app));
    let gate = Gatekeeper::new(app.config.limits.clone());
    let trimmer = Arc::new(crate::memory::Trimmer::default());
    tokio::spawn(trimmer.clone().run());
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let preauth = match gate.admit(peer.ip()) {
            Ok(p) => p,
            Err(why) => {
                tracing::debug!(%peer, ?why, "connection refused before authentication");
                drop(socket);
                continue;
            }
        };
        let app = app.clone();
        let config = config.clone();
        let gate = gate.clone();
        // russh's `run_stream` leaves Nagle on whatever the config says.
        if let Err(e) = socket.set_nodelay(config.nodelay) {
            tracing::debug!(%peer, "set_nodelay: {e}");
        }
        let socket = crate::gulp::Gulp::new(socket);
        // Every log line about this connection carries its peer and, once
        // known, its user; channel spans below add session and target.
        let span = tracing::info_span!("conn", %peer, user = tracing::field::Empty);
        let conn_span = span.clone();
        let open = trimmer.opened();
        tokio::spawn(async move {
            let _open = open;
            let grace = app.config.limits.login_grace_time;
            let authed = Arc::new(AtomicBool::new(false));
            let handler = Connection::new(
                app.clone(),
                Some(peer),
                preauth,
                gate.clone(),
                authed.clone(),
                conn_span,
            );
            let running = match tokio::time::timeout(
                grace,
                server::run_stream(config, socket, handler),
            )
            .await
            {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return tracing::debug!(%peer, "handshake failed: {e}"),
                Err(_) => return tracing::debug!(%peer, "no SSH handshake within the grace time"),
            };
            let handle = running.handle();
            tokio::pin!(running);
            let grace_over = tokio::time::sleep(grace);
            tokio::select! {
                r = &mut running => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, "connection ended: {e}");
                        // A key or certificate russh cannot even parse (a
                        // duplicate critical option, say) ends the connection
                        // before any handler runs: it is still a failed login.
                        if !authed.load(Ordering::SeqCst)
                            && matches!(e, russh::Error::SshKey(_) | russh::Error::SshEncoding(_) | russh::Error::Keys(_))
                        {
                            refused(&app, &gate, Some(peer), "-", &format!("malformed key or certificate: {e}"));
                        }
                    }
                }
                _ = async {
                    grace_over.await;
                    if authed.load(Ordering::SeqCst) {
                        // Logged in: the connection runs until it ends.
                        std::future::pending::<()>().await;
                    }
                } => {
                    tracing::info!(%peer, "not authenticated within the grace time; disconnecting");
                    let _ = handle
                        .disconnect(russh::Disconnect::ByApplication, "login grace time over".into(), "en".into())
                        .await;
                }
            }
        }.instrument(span));
    }
}

/// A login refused (counted against the source, audited, logged).
fn refused(app: &App, gate: &Gatekeeper, peer: Option<SocketAddr>, user: &str, why: &str) {
    crate::metrics::global().refused(why);
    if let Some(ip) = peer.map(|p| p.ip()) {
        if gate.failed(ip) {
            tracing::warn!(%ip, "source used up its failed-login budget; refusing it for a while");
            app.audit.note(
                "source.blocked",
                "-",
                serde_json::json!({ "client": ip.to_string(), "failures": gate.limits.max_auth_failures_per_source }),
            );
        }
    }
    tracing::info!(?peer, user, why, "login refused");
    app.audit.note(
        "login.refused",
        "-",
        serde_json::json!({ "login": user, "why": why, "client": peer.map(|p| p.to_string()) }),
    );
}

/// Per-connection handler state.
pub struct Connection {
    /// Shared server state.
    app: Arc<App>,
    /// Client address, for `source-address` and logs.
    peer: Option<SocketAddr>,
    /// Set once authentication succeeds; read by channel tasks.
    identity: Option<Identity>,
    /// This connection's place among the unauthenticated; released on login.
    preauth: Option<PreAuth>,
    /// Admission control, for counting failed logins.
    gate: Arc<Gatekeeper>,
    /// Tells the accept loop the grace timer no longer applies.
    authed: Arc<AtomicBool>,
    /// This connection's span. russh calls the handler from its own task,
    /// so events here name it as their parent explicitly.
    span: tracing::Span,
}

impl Connection {
    pub fn new(
        app: Arc<App>,
        peer: Option<SocketAddr>,
        preauth: PreAuth,
        gate: Arc<Gatekeeper>,
        authed: Arc<AtomicBool>,
        span: tracing::Span,
    ) -> Connection {
        Connection {
            app,
            peer,
            identity: None,
            preauth: Some(preauth),
            gate,
            authed,
            span,
        }
    }

    /// Authentication succeeded with `identity`.
    fn accept(&mut self, identity: Identity) -> Auth {
        crate::metrics::global()
            .logins_accepted
            .fetch_add(1, Ordering::Relaxed);
        let user = match &identity {
            Identity::Grant(g) => g.grant.user.as_str(),
            Identity::Access(c) => c.name.as_str(),
        };
        self.span.record("user", user);
        self.identity = Some(identity);
        self.authed.store(true, Ordering::SeqCst);
        if let Some(p) = self.preauth.take() {
            p.authenticated();
        }
        Auth::Accept
    }

    fn refuse(&self, user: &str, why: &str) -> Auth {
        let _entered = self.span.enter();
        refused(&self.app, &self.gate, self.peer, user, why);
        Auth::reject()
    }

    /// A certificate login's grant is checked again at every channel open:
    /// a connection kept open (ControlMaster) must not outlive revocation.
    fn still_live(&self) -> bool {
        match &self.identity {
            Some(Identity::Grant(g)) => self
                .app
                .store
                .get::<Grant>(GRANTS, &g.grant.id)
                .ok()
                .flatten()
                .is_some_and(|g| g.live_at(now_secs())),
            Some(Identity::Access(_)) => true,
            None => false,
        }
    }

    /// The grant behind a certificate, if it is live and bound to this key.
    fn grant_for(&self, cert: &Certificate) -> Result<Grant, String> {
        let id = self
            .app
            .store
            .grant_for_serial(cert.serial())
            .map_err(|e| e.to_string())?
            .ok_or("serial maps to no grant")?;
        let grant: Grant = self
            .app
            .store
            .get(GRANTS, &id)
            .map_err(|e| e.to_string())?
            .ok_or("serial maps to no grant")?;
        let now = now_secs();
        if !grant.live_at(now) {
            return Err(format!("grant {} is {}", grant.id, grant.state(now)));
        }
        let key = russh::keys::PublicKey::from_openssh(&grant.key).map_err(|e| e.to_string())?;
        if key.key_data() != cert.public_key() {
            return Err(format!("grant {} was issued for another key", grant.id));
        }
        Ok(grant)
    }
}

impl server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if user == ACCESS_LOGIN && self.app.policy().user_by_key(offer.public_key).is_none() {
            return Ok(self.refuse(user, "key is not enrolled"));
        }
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if user != ACCESS_LOGIN {
            return Ok(self.refuse(
                user,
                "plain keys only log in as access; use your certificate",
            ));
        }
        let policy = self.app.policy();
        let Some(u) = policy.user_by_key(key.public_key) else {
            return Ok(self.refuse(user, "key is not enrolled"));
        };
        tracing::info!(parent: &self.span, peer = ?self.peer, user = %u.name, "control-plane login");
        self.app.audit.note(
            "login.accepted",
            &u.name,
            serde_json::json!({ "login": user, "client": self.peer.map(|p| p.to_string()) }),
        );
        let identity = Identity::Access(Caller {
            name: u.name.clone(),
            groups: u.groups.clone(),
            key: Some(key.public_key.clone()),
        });
        Ok(self.accept(identity))
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        cert: &Certificate,
    ) -> Result<Auth, Self::Error> {
        if user == ACCESS_LOGIN {
            return Ok(self.refuse(
                user,
                "the control plane takes enrolled keys, not certificates",
            ));
        }
        let client_ip = self.peer.map(|p| p.ip());
        if let Err(why) =
            ca::check_certificate(cert, self.app.ca_public(), user, client_ip, now_secs())
        {
            return Ok(self.refuse(user, &format!("certificate {why}")));
        }
        let grant = match self.grant_for(cert) {
            Ok(g) => g,
            Err(why) => return Ok(self.refuse(user, &why)),
        };
        if !grant.logins.iter().any(|l| l == user) {
            return Ok(self.refuse(user, "login is not one of the grant's logins"));
        }
        tracing::info!(parent: &self.span, peer = ?self.peer, user = %grant.user, login = user, grant = %grant.id, "certificate login");
        self.app.audit.note(
            "login.accepted",
            &grant.user,
            serde_json::json!({ "login": user, "grant": grant.id, "serial": cert.serial(), "key_id": cert.key_id(), "client": self.peer.map(|p| p.to_string()) }),
        );
        let identity = Identity::Grant(GrantLogin {
            login: user.to_string(),
            key_id: cert.key_id().to_string(),
            port_forwards_permitted: cert.extensions().contains_key("permit-port-forwarding"),
            force_command: cert.critical_options().get("force-command").cloned(),
            grant,
        });
        Ok(self.accept(identity))
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(identity) = self.identity.clone() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        if !self.still_live() {
            tracing::info!(parent: &self.span, peer = ?self.peer, "channel refused: the grant is no longer live");
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        reply.accept().await;
        let ctx = crate::session::Context {
            app: self.app.clone(),
            identity,
            peer: self.peer,
            handle: session.handle(),
        };
        let span = tracing::info_span!(parent: &self.span, "session", channel = %channel.id(), session = tracing::field::Empty, target = tracing::field::Empty);
        tokio::spawn(crate::session::serve(channel, ctx).instrument(span));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if !self.still_live() {
            tracing::info!(parent: &self.span, peer = ?self.peer, "forward refused: the grant is no longer live");
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let Some(Identity::Grant(login)) = &self.identity else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let policy = self.app.policy();
        match crate::forward::check(&policy, login, host_to_connect, port_to_connect) {
            Ok(dest) => {
                tracing::info!(parent: &self.span, grant = %login.grant.id, %dest, "forward opened");
                self.app.audit.note(
                    "forward.opened",
                    &login.grant.user,
                    serde_json::json!({ "grant": login.grant.id, "host": host_to_connect, "port": port_to_connect, "dest": dest }),
                );
                reply.accept().await;
                let span = tracing::info_span!(parent: &self.span, "forward", %dest, session = tracing::field::Empty, target = tracing::field::Empty);
                tokio::spawn(
                    crate::forward::run(
                        self.app.clone(),
                        login.clone(),
                        channel,
                        (host_to_connect.to_string(), port_to_connect, dest),
                        self.peer.map(|p| p.to_string()),
                    )
                    .instrument(span),
                );
            }
            Err(why) => {
                tracing::info!(parent: &self.span, grant = %login.grant.id, host = host_to_connect, port = port_to_connect, %why, "forward refused");
                self.app.audit.note(
                    "forward.refused",
                    &login.grant.user,
                    serde_json::json!({ "grant": login.grant.id, "host": host_to_connect, "port": port_to_connect, "why": why }),
                );
                reply
                    .reject(ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
            }
        }
        Ok(())
    }

    async fn channel_open_x11(
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

    async fn channel_open_direct_streamlocal(
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

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        tracing::info!(parent: &self.span, address, port = *port, "remote forward (-R) refused");
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        tracing::info!(parent: &self.span, socket_path, "remote streamlocal forward refused");
        Ok(false)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        tracing::info!(parent: &self.span, "agent forwarding refused");
        Ok(false)
    }
}
