//! The read-only gate. A command line is split on the bastion with POSIX
//! word rules ([`lex`]), every stage is matched against the role's patterns
//! ([`pattern`]) and the built-in table of dangerous tools ([`danger`]),
//! and only then is a command string built — by postern, with every word
//! single-quoted — to run on the target as an exec without a PTY and with
//! a fixed, minimal environment.

pub mod danger;
pub mod lex;
pub mod pattern;

pub use pattern::{CommandPattern, PatternError, Token};

use crate::policy::Role;
use pattern::Mismatch;

/// What the gate decided to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// Each pipeline stage's argument vector, paths normalised, pagers
    /// replaced by `cat`.
    pub stages: Vec<Vec<String>>,
    /// The pattern each stage matched.
    pub rules: Vec<String>,
    /// Each path argument, with the directory its pattern's glob keeps it
    /// in: checked on the target once links are followed ([`posix_script`]).
    pub paths: Vec<(String, String)>,
}

/// Why the gate refused; shown to the user (escaped) and audited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// The environment every gated command runs with: no pager, no colours,
/// nothing from the client.
///
/// For git: no optional index writes (`git status` refreshes the index
/// otherwise), and the repository's own config cannot make `status` or
/// `diff` run its `core.fsmonitor` program, or hooks run: `GIT_CONFIG_*`
/// entries outrank the repository's (a second review ran a program from
/// a repository's `.git/config`). `diff.external` cannot be unset this way
/// (an empty value makes every diff fail), so diffs get `--no-ext-diff`
/// instead ([`danger::hardened`]).
const ENV_PREFIX: &str =
    "env -i PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 TERM=dumb PAGER=cat \
SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 LESSSECURE=1 GIT_PAGER=cat MANPAGER=cat \
GIT_OPTIONAL_LOCKS=0 GIT_CONFIG_COUNT=2 GIT_CONFIG_KEY_0=core.fsmonitor GIT_CONFIG_VALUE_0=false \
GIT_CONFIG_KEY_1=core.hooksPath GIT_CONFIG_VALUE_1=/dev/null";

/// Limits every gated command runs under, per process: CPU seconds, KiB
/// of data (heap and other private memory; file mappings, which journalctl
/// and git make large, do not count), and no regular file may grow (`-f
/// 0`: a third wall against writes; pipes and the channel are not files).
/// Read-only tools can still
/// loop or grow without end (`sed -n 'G;D'` never stops, `sed -n 'H;G;D'`
/// doubles its memory every line, `awk 'BEGIN{while(1);}'`), and a
/// command that writes nothing runs on after its session has gone, since
/// only a write to the closed channel would stop it. Five minutes of CPU
/// is generous for reading: on the benchmark machine grep went through
/// 256 MiB of log in 0.25 CPU s and awk in 0.4, so 300 s is a grep
/// through some 300 GiB. GNU sort sizes its buffer to the data limit; a
/// sort larger than that fails instead of filling `/tmp` with its spill.
/// `ulimit` can only lower a limit: where the target's own is lower, it
/// stands (the error is dropped).
pub const LIMITS: &str =
    "ulimit -t 300 2>/dev/null; ulimit -d 1048576 2>/dev/null; ulimit -f 0 2>/dev/null;";

/// Longest pipeline the gate runs.
const MAX_STAGES: usize = 8;

/// Characters refused in path arguments: nothing a log path needs, and
/// each one is a way to smuggle shell syntax past a careless join.
const PATH_FORBIDDEN: &str = ";&|<>()$`\\\"'*?[]{}!# \t";

/// Check `line` against `role`; `Ok` says exactly what will run.
pub fn check(role: &Role, line: &str) -> Result<Allowed, Refusal> {
    let stages = lex::split(line).map_err(|e| Refusal(e.to_string()))?;
    if stages.len() > MAX_STAGES {
        return Err(Refusal(format!("at most {MAX_STAGES} pipeline stages")));
    }
    let mut out = Allowed {
        stages: Vec::new(),
        rules: Vec::new(),
        paths: Vec::new(),
    };
    for (i, argv) in stages.iter().enumerate() {
        let cmd = argv.first().map(String::as_str).unwrap_or("");
        if is_assignment(cmd) {
            return Err(Refusal(format!(
                "environment assignment {} is not allowed",
                crate::control::escape(cmd.split('=').next().unwrap_or(""))
            )));
        }
        danger::check(argv).map_err(Refusal)?;
        let (patterns, kind) = if i == 0 {
            (&role.commands, "command")
        } else {
            (&role.filters, "filter")
        };
        let mut same_command = Vec::new();
        let mut bad_path = None;
        let mut matched = None;
        for p in patterns {
            match p.matches(argv) {
                Ok(norm) => {
                    matched = Some((p, norm));
                    break;
                }
                Err(Mismatch::Command) => {}
                Err(Mismatch::Arguments) => same_command.push(p.source()),
                Err(Mismatch::BadPath(why)) => {
                    same_command.push(p.source());
                    bad_path = Some(why);
                }
            }
        }
        let Some((pattern, norm)) = matched else {
            let shown = crate::control::escape(cmd);
            return Err(Refusal(if let Some(why) = bad_path {
                format!("{shown}: {why}")
            } else if same_command.is_empty() {
                format!("{shown} is not an allowed {kind} for this role (type `help` at the prompt for the allowed forms)")
            } else {
                format!(
                    "{shown}: these arguments match no allowed form (allowed: {})",
                    same_command.join(" | ")
                )
            }));
        };
        for (tok, arg) in pattern.tokens().iter().zip(&norm) {
            let Token::Path(glob) = tok else { continue };
            if arg.chars().any(|c| PATH_FORBIDDEN.contains(c)) {
                return Err(Refusal(format!(
                    "{}: path holds a shell metacharacter or space",
                    crate::control::escape(cmd)
                )));
            }
            if let Some(dir) = literal_dir(glob) {
                out.paths.push((arg.clone(), dir));
            }
        }
        danger::check(&norm).map_err(Refusal)?;
        let runs = if danger::is_paged_as_cat(cmd) {
            // The pager's job is done by the user's own terminal; the target
            // only reads the (already checked) files.
            let files = pattern
                .tokens()
                .iter()
                .zip(&norm)
                .filter(|(t, _)| matches!(t, Token::Path(_)))
                .map(|(_, a)| a.clone());
            std::iter::once("cat".to_string())
                .chain(std::iter::once("--".to_string()))
                .chain(files)
                .collect()
        } else {
            danger::hardened(norm)
        };
        out.stages.push(runs);
        out.rules.push(pattern.source().to_string());
    }
    Ok(out)
}

fn is_assignment(word: &str) -> bool {
    match word.split_once('=') {
        Some((name, _)) => {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit())
        }
        None => false,
    }
}

/// The part of a path glob before its first wildcard, the directory (or
/// file) every path it matches lies in; `None` for one that starts with a
/// wildcard (`/**`: anywhere).
fn literal_dir(glob: &str) -> Option<String> {
    let lit: Vec<&str> = glob
        .split('/')
        .filter(|s| !s.is_empty())
        .take_while(|s| !s.contains('*'))
        .collect();
    (!lit.is_empty()).then(|| format!("/{}", lit.join("/")))
}

/// The check, on the target, that each path argument still lies in its
/// glob's directory once symlinks are followed (paths are matched as text
/// on the bastion, and `/var/log/README` on Debian is a link into
/// `/usr/share/doc`): both are resolved with `realpath -m` and compared
/// there, and the script stops with status 126 before anything runs if one
/// lies outside (or `realpath` fails). The directory is resolved too, so a
/// `/var/log` that is itself a link still works; a path that does not
/// exist resolves to itself and is left to the command, which says so.
/// Symlinks that stay inside the directory are followed as before.
fn path_checks(allowed: &Allowed) -> String {
    allowed
        .paths
        .iter()
        .map(|(arg, dir)| {
            format!(
                "r=$(realpath -m -- {}) && d=$(realpath -m -- {}) && \
                 case \"$r/\" in \"${{d%/}}\"/*) ;; *) false ;; esac || \
                 {{ echo 'postern: refused: a path leads outside the allowed paths once its links are followed (or could not be resolved)' >&2; exit 126; }};",
                lex::quote(arg),
                lex::quote(dir)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The POSIX `sh` script for `allowed`: the [`LIMITS`] first, then the
/// path checks, then the [`pipeline`].
pub fn posix_script(allowed: &Allowed) -> String {
    let checks = path_checks(allowed);
    let stages = pipeline(allowed);
    if checks.is_empty() {
        format!("{LIMITS} {stages}")
    } else {
        format!("{LIMITS} PATH=/usr/local/bin:/usr/bin:/bin; {checks} {stages}")
    }
}

/// The pipeline that runs: every word single-quoted, each stage under the
/// fixed environment, stages joined by `|` (the end of [`posix_script`]).
pub fn pipeline(allowed: &Allowed) -> String {
    allowed
        .stages
        .iter()
        .map(|argv| {
            let words: Vec<String> = argv.iter().map(|w| lex::quote(w)).collect();
            format!("{ENV_PREFIX} {}", words.join(" "))
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The command string sent to the target. sshd hands it to the target
/// login's shell, which may not be POSIX (fish and csh read single quotes
/// differently, tcsh expands `!` inside them), so the POSIX script travels
/// base64-encoded: the string holds only `[A-Za-z0-9+/=]`, spaces and `|`,
/// which every shell reads the same way, and `/bin/sh` runs the script.
pub fn remote_command(allowed: &Allowed) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(posix_script(allowed));
    format!("echo {b64} | base64 -d | /bin/sh")
}

/// Text for `help` at the prompt: the allowed forms.
pub fn help(role: &Role) -> String {
    let mut s = String::from("allowed commands:\n");
    for p in &role.commands {
        s.push_str(&format!("  {}\n", p.source()));
    }
    if !role.filters.is_empty() {
        s.push_str("allowed after | :\n");
        for p in &role.filters {
            s.push_str(&format!("  {}\n", p.source()));
        }
    }
    s.push_str("<int> a number, <word> a plain word, <arg> any one argument not starting with '-', /a/** a path below /a\n");
    s.push_str("also: help, exit\n");
    s
}
