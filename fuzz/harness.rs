//! What each fuzz target feeds to postern and what it checks afterwards.
//!
//! Shared, through `#[path]`, by the cargo-fuzz targets in
//! `fuzz/fuzz_targets/` (nightly, libFuzzer) and by `tests/fuzz_corpus.rs`
//! (stable `cargo test`), which replays the committed corpora through the
//! very same checks. Every check panics on failure, which libFuzzer reports
//! as a crash and `cargo test` as a failed test.
//!
//! No `unwrap()` on anything the input decides: only on what postern
//! promised (the invariant under test) or on fixed text.
#![allow(dead_code)]

use std::path::Path;
use std::sync::OnceLock;

use postern::config::Config;
use postern::gate::{self, lex, CommandPattern, Token};
use postern::policy::{self, Mode, Policy, RecordForwards, Role};

/// The text every target reads: lossy UTF-8, so every mutation counts.
fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// An error that starts (after the file's name) with `line N` must name a
/// line of `text`, or the one past its end where a parser wanted more.
/// Only the leading `line N` counts: the rest of a message may quote the
/// input, which can say anything.
fn named_line_exists(after_name: &str, text: &str) {
    let Some(rest) = after_name.strip_prefix("line ") else {
        return;
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let lines = text.split('\n').count();
    let n = digits.parse::<usize>().unwrap_or(0);
    assert!(
        n >= 1 && n <= lines + 1,
        "error names line {digits:?} of {lines}: {after_name}"
    );
}

// ---------------------------------------------------------------- config

/// `postern.toml`: any text parses or is refused with the file's path first;
/// every path of a loaded config is absolute (the file's folder is).
pub fn config(data: &[u8]) {
    let text = text(data);
    let path = Path::new("/etc/postern/postern.toml");
    match Config::parse(&text, path) {
        Ok(c) => {
            for p in [
                &c.data_dir,
                &c.recordings_dir,
                &c.policies_dir,
                &c.host_key,
                &c.user_ca,
                &c.target_key,
                &c.control_socket,
            ] {
                assert!(p.is_absolute(), "{} is not absolute", p.display());
            }
        }
        Err(e) => {
            let msg = e.to_string();
            let Some(rest) = msg.strip_prefix("/etc/postern/postern.toml: ") else {
                panic!("error does not name the file: {msg}");
            };
            named_line_exists(rest, &text);
        }
    }
}

// ---------------------------------------------------------------- policy

/// Two users, two targets with labels: what the fuzzed file is checked
/// against (duplicates, selectors) and looked up in.
const BASE_POLICY: &str = r#"
[[user]]
name = "alice"
groups = ["qa"]
keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGjFwwxa53qDkMknfTGDkejpmTMAdeJgrMAh7TboT3tf alice@laptop"]

[[user]]
name = "root-admin"
groups = ["admin", "qa-lead"]

[[target]]
name = "web-1"
address = "10.0.0.5:22"
login = "qa-ro"
host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGjFwwxa53qDkMknfTGDkejpmTMAdeJgrMAh7TboT3tf"
labels = { env = "prod", tier = "web" }

[[target]]
name = "db-replica.internal.example"
address = "[::1]:2222"
login = "qa"
host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGjFwwxa53qDkMknfTGDkejpmTMAdeJgrMAh7TboT3tf"
labels = { env = "staging", tier = "db" }
"#;

/// A policy file: loads or is refused naming the file; what loads obeys the
/// rules `add_file` promises, and every lookup agrees with the lists.
pub fn policy(data: &[u8]) {
    let text = text(data);
    static BASE: OnceLock<Policy> = OnceLock::new();
    let mut p = BASE
        .get_or_init(|| {
            let mut p = Policy::default();
            if let Err(e) = p.add_file(Path::new("base.toml"), BASE_POLICY) {
                panic!("the fixed base policy must load: {e}");
            }
            p
        })
        .clone();
    let before = (p.users.len(), p.targets.len(), p.roles.len());
    let result = p.add_file(Path::new("fuzz.toml"), &text);
    if let Err(e) = &result {
        let msg = e.to_string();
        let Some(rest) = msg.strip_prefix("fuzz.toml: ") else {
            panic!("error does not name the file: {msg}");
        };
        named_line_exists(rest, &text);
    }
    if result.is_ok() {
        assert!(p.users.len() >= before.0 && p.targets.len() >= before.1);
        assert!(p.roles.len() >= before.2);
    }
    // Whatever was added (all of it, or the part before an error) is used.
    for u in &p.users {
        assert!(policy::valid_name(&u.name), "user {:?}", u.name);
        let found = p.user(&u.name).map(|x| x.name.as_str());
        assert_eq!(found, Some(u.name.as_str()), "user lookup");
        for k in &u.keys {
            assert!(p.user_by_key(k).is_some(), "key of {:?} not found", u.name);
        }
        if u.is_admin() {
            assert!(u.is_auditor());
        }
    }
    for t in &p.targets {
        assert!(policy::valid_name(&t.name), "target {:?}", t.name);
        assert!(
            policy::split_host_port(&t.address).is_some(),
            "{:?}",
            t.address
        );
        assert_eq!(
            p.target(&t.name).map(|x| x.name.as_str()),
            Some(t.name.as_str())
        );
    }
    for role in p.roles.values() {
        assert!(role.default_ttl <= role.max_ttl, "role {:?} ttl", role.name);
        assert!(!role.logins.is_empty() && role.logins.iter().all(|l| policy::valid_name(l)));
        assert!(role.approvals_required == 0 || !role.approvals_from.is_empty());
        for f in &role.port_forwards {
            assert!(policy::split_host_port(f).is_some(), "{f:?}");
        }
        let all = p.targets_for(role, &[]);
        for t in &all {
            assert!(role.targets.iter().any(|s| policy::selects(s, t)));
        }
        // A requester's `--targets` narrows; it never widens. The role's
        // own strings and the users' groups stand in for what users type.
        let narrows: Vec<Vec<String>> = vec![
            role.targets.clone(),
            role.requestable_by.clone(),
            role.approvals_from.clone(),
            role.logins.clone(),
        ];
        for narrow in &narrows {
            for t in p.targets_for(role, narrow) {
                assert!(all.iter().any(|x| x.name == t.name), "narrowing widened");
            }
        }
        let help = gate::help(role);
        for c in role.commands.iter().chain(&role.filters) {
            assert!(help.contains(c.source()));
        }
        if role.mode == Mode::ReadOnly {
            for c in &role.commands {
                // A pattern's own text, as a line, is at worst refused.
                let _ = gate_allowed(role, c.source());
            }
        }
    }
}

// ---------------------------------------------------------------- gate

/// A realistic read-only role (the example policy's, with the gate tests'
/// pagers and tools that need the danger table).
const GATE_ROLE: &str = r#"[role.ro]
requestable_by = ["qa"]
logins = ["qa"]
targets = ["env=prod"]
mode = "read-only"
commands = [
  "journalctl -u <word> --no-pager -n <int>",
  "tail -n <int> /var/log/**",
  "cat /var/log/app/**",
  "grep <arg> /var/log/**",
  "grep -i <arg> /var/log/**",
  "find /var/log -name <arg>",
  "sed -n <arg> /var/log/app/**",
  "awk <arg> /var/log/app/**",
  "less /var/log/app/**",
  "ls -l /var/log/*/*.log",
  "printf <arg> <arg> <arg>",
  "env",
  "id",
]
filters = ["grep <arg>", "grep -v <arg>", "head -n <int>", "wc -l", "sort", "uniq -c"]
approvals = { required = 1, from = ["qa-lead"] }
"#;

fn gate_role() -> &'static Role {
    static ROLE: OnceLock<Role> = OnceLock::new();
    ROLE.get_or_init(|| {
        let mut p = Policy::default();
        if let Err(e) = p.add_file(Path::new("gate.toml"), GATE_ROLE) {
            panic!("the fixed gate role must load: {e}");
        }
        match p.roles.remove("ro") {
            Some(r) => r,
            None => panic!("the fixed gate role is named ro"),
        }
    })
}

/// A role whose commands and filters are `patterns`.
fn role_of(patterns: Vec<CommandPattern>) -> Role {
    Role {
        name: "fuzz".into(),
        requestable_by: vec![],
        logins: vec!["qa".into()],
        targets: vec!["*".into()],
        mode: Mode::ReadOnly,
        commands: patterns.clone(),
        filters: patterns,
        port_forwards: vec![],
        record_forwards: RecordForwards::Metadata,
        idle_timeout: None,
        default_ttl: std::time::Duration::from_secs(3600),
        max_ttl: std::time::Duration::from_secs(3600),
        approvals_required: 1,
        approvals_from: vec!["lead".into()],
    }
}

/// The fixed wrapper of [`gate::remote_command`].
const REMOTE_HEAD: &str = "echo ";
const REMOTE_TAIL: &str = " | base64 -d | /bin/sh";

/// The gate's parser and matcher. The input is `patterns NUL line`: the
/// part before the first NUL is one allowlist pattern per line, the rest is
/// the command line a user typed (no NUL: all of it is the line). Returns
/// how many of the two roles let the line through.
pub fn gate(data: &[u8]) -> usize {
    let text = text(data);
    let (patterns, line) = match text.split_once('\0') {
        Some((p, l)) => (p, l),
        None => ("", text.as_str()),
    };

    // The lexer: what it accepts re-quotes to exactly the same words.
    let lexed = lex::split(line);
    if let Ok(stages) = &lexed {
        assert!(!stages.is_empty() && stages.iter().all(|s| !s.is_empty()));
        let requoted = stages
            .iter()
            .map(|s| {
                s.iter()
                    .map(|w| lex::quote(w))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join(" | ");
        assert_eq!(
            lex::split(&requoted).as_ref(),
            Ok(stages),
            "quoting {line:?} as {requoted:?} changed its words"
        );
    }

    // The patterns, and each against each stage of the line.
    let mut parsed = Vec::new();
    for src in patterns.split('\n') {
        let Ok(p) = CommandPattern::parse(src) else {
            continue;
        };
        assert_eq!(p.source(), src);
        assert!(matches!(p.tokens().first(), Some(Token::Literal(c)) if c == p.command()));
        assert!(gate::pattern::is_command_name(p.command()));
        let _ = p.danger();
        if let Ok(stages) = &lexed {
            for argv in stages {
                if let Ok(norm) = p.matches(argv) {
                    assert_eq!(norm.len(), argv.len());
                    assert_eq!(norm.first(), argv.first());
                    for ((tok, arg), out) in p.tokens().iter().zip(argv).zip(&norm) {
                        match tok {
                            Token::Path(glob) => {
                                assert!(out.starts_with('/'), "{out:?}");
                                assert!(!out.split('/').any(|s| s == ".." || s == "."));
                                assert!(!out.contains("//"), "{out:?}");
                                assert!(gate::pattern::glob_match(glob, out));
                            }
                            Token::Literal(l) => assert_eq!(l, out),
                            _ => assert_eq!(arg, out),
                        }
                    }
                }
            }
        }
        parsed.push(p);
    }

    // The whole gate, with the fixed role and with the fuzzed patterns.
    let mut allowed = usize::from(gate_allowed(gate_role(), line));
    if !parsed.is_empty() {
        allowed += usize::from(gate_allowed(&role_of(parsed), line));
    }
    allowed
}

/// `gate::check`, and the invariants of what it lets through; whether it
/// did.
fn gate_allowed(role: &Role, line: &str) -> bool {
    let Ok(allowed) = gate::check(role, line) else {
        return false;
    };
    let Ok(stages) = lex::split(line) else {
        panic!("{line:?} was allowed but does not lex");
    };
    assert_eq!(allowed.stages.len(), stages.len());
    assert_eq!(allowed.rules.len(), allowed.stages.len());
    assert!(allowed.stages.len() <= 8);
    for (i, argv) in allowed.stages.iter().enumerate() {
        assert!(!argv.is_empty());
        assert!(
            argv.iter().all(|w| !w.chars().any(char::is_control)),
            "{argv:?}"
        );
        assert!(
            gate::danger::check(argv).is_ok(),
            "dangerous {argv:?} allowed"
        );
        let list = if i == 0 {
            &role.commands
        } else {
            &role.filters
        };
        assert!(list.iter().any(|p| p.source() == allowed.rules[i]));
    }

    // The POSIX script is the limits, the path checks, then a pipeline
    // that lexes back to the stages, each under `env -i …`.
    let script = gate::posix_script(&allowed);
    let body = gate::pipeline(&allowed);
    assert!(
        script.starts_with(gate::LIMITS) && script.ends_with(&body),
        "{script:?}"
    );
    assert_eq!(
        script.matches("realpath -m -- ").count(),
        2 * allowed.paths.len(),
        "{script:?}"
    );
    let Ok(back) = lex::split(&body) else {
        panic!("the script for {line:?} does not lex: {script:?}");
    };
    assert_eq!(back.len(), allowed.stages.len(), "{script:?}");
    for (got, want) in back.iter().zip(&allowed.stages) {
        assert!(got.len() > want.len(), "{script:?}");
        assert_eq!(&got[..2], ["env", "-i"], "{script:?}");
        assert_eq!(&got[got.len() - want.len()..], &want[..], "{script:?}");
    }

    // What reaches the target's login shell: the fixed wrapper around
    // base64 of the script, nothing any shell (sh, bash, fish, csh, tcsh)
    // would interpret — the invariant tests/gate_props.rs asserts.
    let remote = gate::remote_command(&allowed);
    assert!(
        remote
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " +/=|-".contains(c)),
        "{remote}"
    );
    let Some(b64) = remote
        .strip_prefix(REMOTE_HEAD)
        .and_then(|r| r.strip_suffix(REMOTE_TAIL))
    else {
        panic!("not the fixed wrapper: {remote}");
    };
    assert!(!b64.contains([' ', '|']), "{remote}");
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD.decode(b64);
    assert_eq!(decoded.ok().as_deref(), Some(script.as_bytes()), "{remote}");
    true
}

// ---------------------------------------------------------------- asciicast

/// The asciicast reader used by replay, export and search: never panics; a
/// refusal names the recording and a line of it; what loads is usable.
pub fn asciicast(data: &[u8]) {
    let text = text(data);
    asciicast_checked(
        &text,
        postern::recording::parse_text(&text, "fuzz.cast"),
        "fuzz.cast",
    );
}

/// The checks on what `recording::parse_text` or `recording::read` said
/// about `text` read as `name`.
pub fn asciicast_checked(
    text: &str,
    result: Result<(serde_json::Value, Vec<postern::recording::Event>), String>,
    name: &str,
) {
    match result {
        Ok((header, events)) => {
            assert_eq!(header.get("version").and_then(|v| v.as_u64()), Some(2));
            let lines = text.split('\n').skip(1).filter(|l| !l.is_empty()).count();
            assert!(
                events.len() <= lines,
                "{} events from {lines} lines",
                events.len()
            );
            for e in &events {
                assert!(e.time.is_finite() && e.time >= 0.0, "time {}", e.time);
            }
        }
        Err(msg) => {
            let rest = msg.strip_prefix(name).and_then(|r| r.strip_prefix(": "));
            let Some(rest) = rest.filter(|r| r.starts_with("line ") || *r == "empty recording")
            else {
                panic!("error does not name the file and a line: {msg}");
            };
            named_line_exists(rest, text);
        }
    }
}

// ---------------------------------------------------------------- control

/// The control command parser, fed the way `ssh access@bastion CMD` feeds
/// it (src/session.rs: an empty command asks for help, the rest is split
/// with shell word rules; no program name: the parser has none), plus the
/// escaping every reply goes through.
pub fn control(data: &[u8]) {
    let text = text(data);
    let args: Vec<String> = if text.trim().is_empty() {
        vec!["--help".to_string()]
    } else {
        match shell_words::split(&text) {
            Ok(a) => a,
            Err(_) => text.split_whitespace().map(String::from).collect(),
        }
    };
    match postern::control::parse(&args) {
        Ok(cli) => assert!(!format!("{cli:?}").is_empty()),
        Err(reply) => {
            assert!(
                reply.status == 0 || reply.status == 2,
                "status {}",
                reply.status
            );
            assert!(reply.stream.is_none());
            if reply.status == 0 {
                assert!(!reply.stdout.is_empty() && reply.stderr.is_empty());
            } else {
                assert!(reply.stdout.is_empty() != reply.stderr.is_empty());
            }
        }
    }
    escaped(&text);
    for a in &args {
        escaped(a);
    }
}

/// `control::escape`: nothing that moves a cursor or reorders text
/// survives, escaping is idempotent, and harmless text is left as it is.
fn escaped(s: &str) {
    let e = postern::control::escape(s);
    let harmful = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    assert!(!e.chars().any(harmful), "{e:?}");
    assert_eq!(postern::control::escape(&e), e);
    if !s.chars().any(harmful) {
        assert_eq!(e, s);
    }
}
