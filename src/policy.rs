//! Policy: users, targets and roles from `policies/*.toml`. Everything is
//! validated at load; a file that does not load names itself, the line and
//! what is wrong, and the caller keeps whatever policy it had before.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use russh::keys::PublicKey;
use serde::Deserialize;

use crate::gate::CommandPattern;

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PolicyError {
    pub path: PathBuf,
    pub message: String,
}

/// Render a TOML error as `line L, column C: message`.
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {col}: {}", e.message())
        }
        None => e.message().to_string(),
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    user: Vec<RawUser>,
    #[serde(default)]
    target: Vec<RawTarget>,
    #[serde(default)]
    role: BTreeMap<String, RawRole>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    keys: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: String,
    address: String,
    login: String,
    host_key: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    ReadOnly,
    Shell,
}

/// How much of a port-forward is recorded.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RecordForwards {
    /// Destination, timing and byte counts.
    #[default]
    Metadata,
    /// That, and every byte both ways.
    Full,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprovals {
    #[serde(default = "one")]
    required: usize,
    #[serde(default)]
    from: Vec<String>,
}

fn one() -> usize {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    #[serde(default)]
    requestable_by: Vec<String>,
    logins: Vec<String>,
    #[serde(default)]
    targets: Vec<String>,
    mode: Mode,
    #[serde(default)]
    commands: Vec<String>,
    #[serde(default)]
    filters: Vec<String>,
    #[serde(default)]
    port_forwards: Vec<String>,
    #[serde(default)]
    record_forwards: RecordForwards,
    idle_timeout: Option<String>,
    default_ttl: Option<String>,
    max_ttl: Option<String>,
    approvals: Option<RawApprovals>,
}

/// One enrolled person.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    pub keys: Vec<PublicKey>,
}

/// One production host postern proxies to.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub address: String,
    pub login: String,
    pub host_key: PublicKey,
    pub labels: BTreeMap<String, String>,
}

/// A role: what a grant of it lets its holder do.
#[derive(Debug, Clone)]
pub struct Role {
    pub name: String,
    pub requestable_by: Vec<String>,
    pub logins: Vec<String>,
    pub targets: Vec<String>,
    pub mode: Mode,
    pub commands: Vec<CommandPattern>,
    pub filters: Vec<CommandPattern>,
    pub port_forwards: Vec<String>,
    pub record_forwards: RecordForwards,
    /// Sessions with no input or output for this long are closed.
    pub idle_timeout: Option<Duration>,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    pub approvals_required: usize,
    pub approvals_from: Vec<String>,
}

/// The whole loaded policy, immutable once built; reloads swap it whole.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub users: Vec<User>,
    pub targets: Vec<Target>,
    pub roles: HashMap<String, Role>,
    /// Things a policy author should know (dangerous tools admitted, …).
    pub warnings: Vec<String>,
}

/// Group whose members may run every verb.
pub const ADMIN_GROUP: &str = "admin";
/// Group whose members may list, replay and watch every session.
pub const AUDITOR_GROUP: &str = "auditor";

impl Policy {
    /// Load every `*.toml` in `dir`, in name order.
    pub fn load_dir(dir: &Path) -> Result<Policy, PolicyError> {
        let err = |message: String| PolicyError {
            path: dir.to_path_buf(),
            message,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| err(e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        let mut policy = Policy::default();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| PolicyError {
                path: f.clone(),
                message: e.to_string(),
            })?;
            policy.add_file(&f, &text)?;
        }
        Ok(policy)
    }

    /// Add the contents of one file, checking it against what is loaded.
    pub fn add_file(&mut self, path: &Path, text: &str) -> Result<(), PolicyError> {
        let err = |message: String| PolicyError {
            path: path.to_path_buf(),
            message,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| err(toml_error(text, &e)))?;
        for u in raw.user {
            if !valid_name(&u.name) {
                return Err(err(format!(
                    "user {:?}: name must be letters, digits, '.', '_' or '-'",
                    u.name
                )));
            }
            if self.users.iter().any(|x| x.name == u.name) {
                return Err(err(format!("user {:?} is defined twice", u.name)));
            }
            let mut keys = Vec::new();
            for (i, k) in u.keys.iter().enumerate() {
                let key = PublicKey::from_openssh(k.trim()).map_err(|e| {
                    err(format!(
                        "user {:?}: keys[{i}]: not an OpenSSH public key: {e}",
                        u.name
                    ))
                })?;
                keys.push(key);
            }
            self.users.push(User {
                name: u.name,
                groups: u.groups,
                keys,
            });
        }
        for t in raw.target {
            if !valid_name(&t.name) {
                return Err(err(format!(
                    "target {:?}: name must be letters, digits, '.', '_' or '-'",
                    t.name
                )));
            }
            if self.targets.iter().any(|x| x.name == t.name) {
                return Err(err(format!("target {:?} is defined twice", t.name)));
            }
            if split_host_port(&t.address).is_none() {
                return Err(err(format!(
                    "target {:?}: address {:?} is not host:port",
                    t.name, t.address
                )));
            }
            let host_key = PublicKey::from_openssh(t.host_key.trim()).map_err(|e| {
                err(format!(
                    "target {:?}: host_key: not an OpenSSH public key: {e}",
                    t.name
                ))
            })?;
            self.targets.push(Target {
                name: t.name,
                address: t.address,
                login: t.login,
                host_key,
                labels: t.labels,
            });
        }
        for (name, r) in raw.role {
            if self.roles.contains_key(&name) {
                return Err(err(format!("role {name:?} is defined twice")));
            }
            let ttl =
                |key: &str, v: &Option<String>, d: Duration| -> Result<Duration, PolicyError> {
                    match v {
                        None => Ok(d),
                        Some(s) => humantime::parse_duration(s)
                            .map_err(|e| err(format!("role {name:?}: {key} = {s:?}: {e}"))),
                    }
                };
            let default_ttl = ttl("default_ttl", &r.default_ttl, Duration::from_secs(3600))?;
            let max_ttl = ttl("max_ttl", &r.max_ttl, Duration::from_secs(4 * 3600))?;
            if default_ttl > max_ttl {
                return Err(err(format!(
                    "role {name:?}: default_ttl is longer than max_ttl"
                )));
            }
            if r.logins.is_empty() || r.logins.iter().any(|l| !valid_name(l)) {
                return Err(err(format!(
                    "role {name:?}: logins must be a non-empty list of plain names"
                )));
            }
            let parse_all = |key: &str,
                             list: &[String]|
             -> Result<Vec<CommandPattern>, PolicyError> {
                list.iter()
                    .map(|p| {
                        CommandPattern::parse(p)
                            .map_err(|e| err(format!("role {name:?}: {key} pattern {p:?}: {e}")))
                    })
                    .collect()
            };
            let commands = parse_all("commands", &r.commands)?;
            let filters = parse_all("filters", &r.filters)?;
            for p in commands.iter().chain(filters.iter()) {
                if let Some(why) = p.danger() {
                    self.warnings.push(format!(
                        "{}: role {name:?}: pattern {:?} {why}",
                        path.display(),
                        p.source()
                    ));
                }
            }
            for f in &r.port_forwards {
                if split_host_port(f).is_none() {
                    return Err(err(format!(
                        "role {name:?}: port_forwards entry {f:?} is not host:port"
                    )));
                }
            }
            let idle_timeout = r
                .idle_timeout
                .as_deref()
                .map(|s| {
                    humantime::parse_duration(s)
                        .map_err(|e| err(format!("role {name:?}: idle_timeout = {s:?}: {e}")))
                })
                .transpose()?;
            let approvals = r.approvals.unwrap_or(RawApprovals {
                required: 1,
                from: Vec::new(),
            });
            if approvals.required > 0 && approvals.from.is_empty() {
                return Err(err(format!("role {name:?}: approvals.from names no group")));
            }
            self.roles.insert(
                name.clone(),
                Role {
                    name,
                    requestable_by: r.requestable_by,
                    logins: r.logins,
                    targets: r.targets,
                    mode: r.mode,
                    commands,
                    filters,
                    port_forwards: r.port_forwards,
                    record_forwards: r.record_forwards,
                    idle_timeout,
                    default_ttl,
                    max_ttl,
                    approvals_required: approvals.required,
                    approvals_from: approvals.from,
                },
            );
        }
        Ok(())
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// The enrolled user who owns `key`, if any.
    pub fn user_by_key(&self, key: &PublicKey) -> Option<&User> {
        self.users
            .iter()
            .find(|u| u.keys.iter().any(|k| k.key_data() == key.key_data()))
    }

    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }

    /// Targets the role's selectors pick, narrowed by `narrow` when given.
    pub fn targets_for(&self, role: &Role, narrow: &[String]) -> Vec<&Target> {
        self.targets
            .iter()
            .filter(|t| role.targets.iter().any(|s| selects(s, t)))
            .filter(|t| narrow.is_empty() || narrow.iter().any(|s| selects(s, t)))
            .collect()
    }
}

impl User {
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
    pub fn is_admin(&self) -> bool {
        self.in_group(ADMIN_GROUP)
    }
    pub fn is_auditor(&self) -> bool {
        self.is_admin() || self.in_group(AUDITOR_GROUP)
    }
}

/// Names are plain words so they are safe in listings, key ids and paths.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && !s.starts_with('-')
}

/// Split `host:port` (IPv6 in brackets).
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some((host, port.parse().ok()?))
}

/// Does selector `sel` pick `t`? A selector is `key=value` (a label), a
/// name with `*` globs, or a plain name.
pub fn selects(sel: &str, t: &Target) -> bool {
    if let Some((k, v)) = sel.split_once('=') {
        return t.labels.get(k.trim()).is_some_and(|x| glob(v.trim(), x));
    }
    glob(sel, &t.name)
}

/// `*` matches any run of characters; everything else is literal.
fn glob(pattern: &str, s: &str) -> bool {
    crate::gate::pattern::match_segment(pattern, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGjFwwxa53qDkMknfTGDkejpmTMAdeJgrMAh7TboT3tf x";

    #[test]
    fn selectors_pick_by_label_glob_and_name() {
        let t = Target {
            name: "web-1".into(),
            address: "127.0.0.1:22".into(),
            login: "qa".into(),
            host_key: PublicKey::from_openssh(KEY).expect("test key parses"),
            labels: [("env".to_string(), "prod".to_string())]
                .into_iter()
                .collect(),
        };
        assert!(selects("env=prod", &t));
        assert!(!selects("env=staging", &t));
        assert!(selects("web-*", &t));
        assert!(selects("web-1", &t));
        assert!(!selects("db-*", &t));
    }

    #[test]
    fn errors_name_file_and_line() {
        let mut p = Policy::default();
        let e = p
            .add_file(
                Path::new("policies/x.toml"),
                "[role.r]\nlogins = [\"qa\"]\nmode = \"sudo\"\n",
            )
            .expect_err("bad mode");
        let s = e.to_string();
        assert!(s.starts_with("policies/x.toml: line 3"), "{s}");
    }

    #[test]
    fn bad_key_is_named() {
        let mut p = Policy::default();
        let e = p
            .add_file(
                Path::new("u.toml"),
                "[[user]]\nname = \"a\"\nkeys = [\"ssh-ed25519 nope\"]\n",
            )
            .expect_err("bad key");
        assert!(e.to_string().contains("user \"a\": keys[0]"), "{e}");
    }

    #[test]
    fn host_port_split() {
        assert_eq!(split_host_port("db:5432"), Some(("db", 5432)));
        assert_eq!(split_host_port("[::1]:22"), Some(("::1", 22)));
        assert_eq!(split_host_port("db"), None);
    }
}
