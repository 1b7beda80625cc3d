//! `postern.toml`: every key has a default; relative paths resolve against
//! the folder that holds the file. A bad file is refused with its path and
//! the line that is wrong, before anything binds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    recordings_dir: Option<PathBuf>,
    policies_dir: Option<PathBuf>,
    host_key: Option<PathBuf>,
    user_ca: Option<PathBuf>,
    target_key: Option<PathBuf>,
    control_socket: Option<PathBuf>,
    request_ttl: Option<String>,
    connect_timeout: Option<String>,
    on_record_failure: Option<String>,
    max_startups: Option<usize>,
    max_startups_per_source: Option<usize>,
    max_auth_failures_per_source: Option<usize>,
    login_grace_time: Option<String>,
    metrics_listen: Option<String>,
}

/// The resolved configuration of one bastion.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the SSH server binds.
    pub listen: SocketAddr,
    /// sled database folder; only the running server opens it.
    pub data_dir: PathBuf,
    /// Where session recordings are written.
    pub recordings_dir: PathBuf,
    /// Folder of `*.toml` policy files.
    pub policies_dir: PathBuf,
    /// The bastion's own host key (what users pin).
    pub host_key: PathBuf,
    /// Private key of the user certificate authority.
    pub user_ca: PathBuf,
    /// The bastion's identity towards targets.
    pub target_key: PathBuf,
    /// Unix socket for `postern ctl`.
    pub control_socket: PathBuf,
    /// How long a request may wait for approval before it expires.
    pub request_ttl: Duration,
    /// How long to wait for a target to answer.
    pub connect_timeout: Duration,
    /// End a session whose recording fails (`on_record_failure = "terminate"`,
    /// the default) rather than let it go on unrecorded (`"continue"`).
    pub terminate_on_record_failure: bool,
    /// Pre-authentication limits.
    pub limits: crate::limits::Limits,
    /// Where the Prometheus metrics page is served; `None` = off.
    pub metrics_listen: Option<SocketAddr>,
}

pub const DEFAULT_FILE: &str = "postern.toml";

/// The file `postern init` writes: every key spelled out at its default.
pub const DEFAULT_TEXT: &str = r#"# postern configuration; relative paths resolve against this file's folder.
listen = "127.0.0.1:2222"
data_dir = "data"
recordings_dir = "recordings"
policies_dir = "policies"
host_key = "hostkeys/ssh_host_ed25519_key"
user_ca = "hostkeys/user_ca"
target_key = "hostkeys/target_ed25519"
control_socket = "data/postern.sock"
# request_ttl = "24h"      # unattended requests expire after this
# connect_timeout = "10s"  # how long to wait for a target
# on_record_failure = "terminate"  # or "continue": go on unrecorded
# max_startups = 256               # unauthenticated connections, overall
# max_startups_per_source = 16     # ... and per source address
# max_auth_failures_per_source = 60  # failed logins per minute before a source is refused
# login_grace_time = "30s"         # time to authenticate
# metrics_listen = "127.0.0.1:9722"  # Prometheus text; "" turns it off
"#;

impl Config {
    /// Load and resolve `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parse `text` as if read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| err(crate::policy::toml_error(text, &e)))?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let resolve = |p: Option<PathBuf>, default: &str| {
            let p = p.unwrap_or_else(|| PathBuf::from(default));
            if p.is_absolute() {
                p
            } else {
                base.join(p)
            }
        };
        let listen_text = raw.listen.unwrap_or_else(|| "127.0.0.1:2222".into());
        let listen = listen_text
            .parse()
            .map_err(|e| err(format!("listen = {listen_text:?}: {e} (want host:port)")))?;
        let duration =
            |key: &str, v: Option<String>, default: Duration| -> Result<Duration, ConfigError> {
                match v {
                    None => Ok(default),
                    Some(s) => humantime::parse_duration(&s)
                        .map_err(|e| err(format!("{key} = {s:?}: {e}"))),
                }
            };
        let terminate_on_record_failure = match raw.on_record_failure.as_deref() {
            None | Some("terminate") => true,
            Some("continue") => false,
            Some(other) => {
                return Err(err(format!(
                    "on_record_failure = {other:?}: want \"terminate\" or \"continue\""
                )))
            }
        };
        let d = crate::limits::Limits::default();
        let limits = crate::limits::Limits {
            max_startups: raw.max_startups.unwrap_or(d.max_startups),
            max_startups_per_source: raw
                .max_startups_per_source
                .unwrap_or(d.max_startups_per_source),
            max_auth_failures_per_source: raw
                .max_auth_failures_per_source
                .unwrap_or(d.max_auth_failures_per_source),
            failure_window: d.failure_window,
            login_grace_time: duration(
                "login_grace_time",
                raw.login_grace_time,
                d.login_grace_time,
            )?,
        };
        let metrics_listen = match raw.metrics_listen.as_deref() {
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9722))),
            Some("") => None,
            Some(s) => Some(s.parse().map_err(|e| {
                err(format!(
                    "metrics_listen = {s:?}: {e} (want host:port, or \"\" for off)"
                ))
            })?),
        };
        Ok(Config {
            metrics_listen,
            limits,
            terminate_on_record_failure,
            listen,
            data_dir: resolve(raw.data_dir, "data"),
            recordings_dir: resolve(raw.recordings_dir, "recordings"),
            policies_dir: resolve(raw.policies_dir, "policies"),
            host_key: resolve(raw.host_key, "hostkeys/ssh_host_ed25519_key"),
            user_ca: resolve(raw.user_ca, "hostkeys/user_ca"),
            target_key: resolve(raw.target_key, "hostkeys/target_ed25519"),
            control_socket: resolve(raw.control_socket, "data/postern.sock"),
            request_ttl: duration(
                "request_ttl",
                raw.request_ttl,
                Duration::from_secs(24 * 3600),
            )?,
            connect_timeout: duration(
                "connect_timeout",
                raw.connect_timeout,
                Duration::from_secs(10),
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_resolve_against_the_file_folder() {
        let c = Config::parse("", Path::new("/etc/postern/postern.toml"))
            .expect("empty config is valid");
        assert_eq!(c.data_dir, Path::new("/etc/postern/data"));
        assert_eq!(c.listen.port(), 2222);
        assert_eq!(c.request_ttl, Duration::from_secs(86400));
    }

    #[test]
    fn bad_key_names_file_and_line() {
        let e = Config::parse("listen = \"127.0.0.1:1\"\nlisen = 3\n", Path::new("p.toml"))
            .expect_err("unknown key must be refused");
        let s = e.to_string();
        assert!(s.starts_with("p.toml:"), "{s}");
        assert!(s.contains("line 2"), "{s}");
    }

    #[test]
    fn bad_listen_is_named() {
        let e =
            Config::parse("listen = \"nowhere\"", Path::new("p.toml")).expect_err("bad address");
        assert!(e.to_string().contains("listen"), "{e}");
    }
}
