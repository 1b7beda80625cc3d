//! The shared state of one running bastion, handed to every connection.

use std::path::Path;
use std::sync::{Arc, RwLock};

use russh::keys::{PrivateKey, PublicKey};

use crate::ca;
use crate::config::Config;
use crate::policy::Policy;
use crate::store::Store;

/// Everything a connection needs; lives as long as the server.
pub struct App {
    /// Resolved configuration; fixed for the life of the process.
    pub config: Config,
    /// The embedded database; only this process opens it.
    pub store: Store,
    /// Current policy; a reload swaps the whole `Arc`.
    policy: RwLock<Arc<Policy>>,
    /// User CA private key: signs user certificates.
    pub ca: PrivateKey,
    /// The bastion's host key, offered to users.
    pub host_key: PrivateKey,
    /// The bastion's identity towards targets.
    pub target_key: Arc<PrivateKey>,
    /// The hash-chained audit log.
    pub audit: crate::audit::Audit,
    /// Live sessions, for watch and kill.
    pub live: crate::sessions::Registry,
    /// Serialises the read-modify-write of requests and grants, so two
    /// approvers, or a `cert` and a `revoke`, cannot interleave.
    pub access_lock: std::sync::Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Key(#[from] ca::KeyError),
    #[error("{0}")]
    Policy(#[from] crate::policy::PolicyError),
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("{path}: {source}")]
    Store {
        path: String,
        source: crate::store::StoreError,
    },
}

impl App {
    /// Read keys and policy and open the store; nothing is bound yet.
    pub fn open(config: Config) -> Result<App, StartError> {
        let ca = ca::read_key(&config.user_ca)?;
        let host_key = ca::read_key(&config.host_key)?;
        let target_key = Arc::new(ca::read_key(&config.target_key)?);
        let policy = Policy::load_dir(&config.policies_dir)?;
        for w in &policy.warnings {
            log_policy_note(w);
        }
        let store = Store::open(&config.data_dir).map_err(|source| StartError::Store {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let audit = crate::audit::Audit::open(store.clone())?;
        Ok(App {
            access_lock: std::sync::Mutex::new(()),
            live: crate::sessions::Registry::default(),
            audit,
            config,
            store,
            policy: RwLock::new(Arc::new(policy)),
            ca,
            host_key,
            target_key,
        })
    }

    pub fn policy(&self) -> Arc<Policy> {
        match self.policy.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn ca_public(&self) -> &PublicKey {
        self.ca.public_key()
    }

    /// Load the policy folder again; on error the old policy stays.
    pub fn reload_policy(&self) -> Result<usize, crate::policy::PolicyError> {
        let p = match Policy::load_dir(&self.config.policies_dir) {
            Ok(p) => p,
            Err(e) => {
                self.audit.note(
                    "policy.reload_failed",
                    "-",
                    serde_json::json!({ "error": e.to_string() }),
                );
                return Err(e);
            }
        };
        for w in &p.warnings {
            log_policy_note(w);
        }
        let roles = p.roles.len();
        self.audit.note(
            "policy.reloaded",
            "-",
            serde_json::json!({ "roles": roles, "users": p.users.len(), "targets": p.targets.len() }),
        );
        match self.policy.write() {
            Ok(mut g) => *g = Arc::new(p),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(p),
        }
        Ok(roles)
    }
}

/// A pattern the gate can never run is a mistake worth a warning; a tool
/// the gate admits with some options refused is worth knowing (info).
fn log_policy_note(w: &str) {
    if w.contains("refuses it always") {
        tracing::warn!("policy: {w}");
    } else {
        tracing::info!("policy: {w}");
    }
}

/// `postern init`: create keys and a config in `dir`, never overwriting.
pub fn init(dir: &Path) -> Result<Vec<String>, ca::KeyError> {
    let mut made = Vec::new();
    for (file, comment) in [
        ("hostkeys/ssh_host_ed25519_key", "postern host key"),
        ("hostkeys/user_ca", "postern user CA"),
        ("hostkeys/target_ed25519", "postern target identity"),
    ] {
        if ca::write_key_if_absent(&dir.join(file), comment)? {
            made.push(file.to_string());
        }
    }
    let cfg = dir.join(crate::config::DEFAULT_FILE);
    if !cfg.exists() {
        std::fs::write(&cfg, crate::config::DEFAULT_TEXT).map_err(|e| ca::KeyError::File {
            path: cfg.display().to_string(),
            message: e.to_string(),
        })?;
        made.push(crate::config::DEFAULT_FILE.to_string());
    }
    for sub in ["policies", "recordings", "data"] {
        let _ = std::fs::create_dir_all(dir.join(sub));
    }
    Ok(made)
}
