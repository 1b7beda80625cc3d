//! Properties of the gate's parser and matcher on generated input: nothing
//! panics, and whatever it accepts, once quoted and run by a real `sh`,
//! reaches the program as exactly the argument vector that matched.

use std::path::Path;
use std::process::Command;

use postern::gate;
use postern::policy::Policy;
use proptest::prelude::*;

fn role() -> postern::policy::Role {
    let mut p = Policy::default();
    p.add_file(
        Path::new("props.toml"),
        r#"[role.r]
logins = ["qa"]
mode = "read-only"
commands = ["printf <arg> <arg> <arg>", "tail -n <int> /var/log/**", "grep <arg> /var/log/**", "id"]
filters = ["grep <arg>", "wc -l"]
approvals = { required = 1, from = ["lead"] }
"#,
    )
    .expect("policy");
    p.roles.remove("r").expect("role")
}

/// Characters shells care about, and some they do not.
fn line() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "printf",
        "tail",
        "grep",
        "id",
        "-n",
        "5",
        "/var/log/a",
        "/var/log/../etc/passwd",
        " ",
        " ",
        " ",
        "'",
        "\"",
        "\\",
        "$",
        "(",
        ")",
        "`",
        ";",
        "&",
        "|",
        "<",
        ">",
        "*",
        "?",
        "[",
        "#",
        "~",
        "=",
        "\n",
        "\t",
        "\0",
        "a",
        "b c",
        "%s",
        "{",
        "}",
        "!",
        "é",
        "\u{1b}",
        "-",
        "--",
        ".",
        "..",
        "/",
    ]);
    prop::collection::vec(atoms, 0..14).prop_map(|v| v.concat())
}

/// The encoded command decodes, through the real base64 and sh, to exactly
/// the POSIX script.
#[test]
fn remote_command_carries_the_script_intact() {
    let r = role();
    let allowed = gate::check(&r, "printf 'it'\\''s' '$x\"' '!#:1'").expect("allowed");
    let remote = gate::remote_command(&allowed);
    let decoded = Command::new("sh")
        .arg("-c")
        .arg(remote.replace("| /bin/sh", ""))
        .output()
        .expect("sh");
    assert_eq!(
        String::from_utf8_lossy(&decoded.stdout),
        gate::posix_script(&allowed)
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn never_panics(s in ".{0,64}") {
        let _ = gate::check(&role(), &s);
        let _ = gate::lex::split(&s);
    }

    #[test]
    fn accepted_lines_run_exactly_the_matched_argv(s in line()) {
        let r = role();
        if let Ok(allowed) = gate::check(&r, &s) {
            for argv in &allowed.stages {
                // Swap the program for one that prints its argv, keep the
                // quoting postern produces for the words.
                let quoted: Vec<String> = argv.iter().skip(1).map(|w| gate::lex::quote(w)).collect();
                let script = format!("printf '%s\\0' MARK {}", quoted.join(" "));
                let out = Command::new("sh").arg("-c").arg(&script).output().expect("sh");
                let printed = String::from_utf8_lossy(&out.stdout).into_owned();
                let mut got: Vec<String> = printed.split('\0').map(String::from).collect();
                // printf ends every word with NUL: drop the empty tail and MARK.
                got.pop();
                prop_assert_eq!(got.first().map(String::as_str), Some("MARK"));
                prop_assert_eq!(&got[1..], &argv[1..], "line {:?}", s);
                // What reaches the target's login shell holds nothing any
                // shell (sh, bash, fish, csh, tcsh) would interpret.
                let remote = gate::remote_command(&allowed);
                prop_assert!(remote.chars().all(|c| c.is_ascii_alphanumeric() || " +/=|-".contains(c)), "{}", remote);
            }
        }
    }
}

/// sed runs in its own sandbox behind the gate's checker: were the checker
/// to pass an `e` or `w` script (as it once did, reading a bracket
/// expression unlike GNU sed), the real sed refuses it. The script the
/// gate builds is run by the real `sh` and `sed`, with the accepted script
/// swapped for one the checker refuses.
#[test]
fn sed_runs_sandboxed_behind_the_checker() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("a.log");
    std::fs::write(&log, "one\ntwo\n").expect("log");
    let canary = dir.path().join("canary");
    let mut p = Policy::default();
    p.add_file(
        Path::new("sed.toml"),
        &format!(
            "[role.r]\nlogins = [\"qa\"]\nmode = \"read-only\"\n\
             commands = [\"sed -n <arg> {}/**\"]\napprovals = {{ required = 1, from = [\"lead\"] }}\n",
            dir.path().display()
        ),
    )
    .expect("policy");
    let role = p.roles.remove("r").expect("role");
    let mut allowed = gate::check(&role, &format!("sed -n 2p {}", log.display())).expect("allowed");
    let run = |allowed: &gate::Allowed| {
        Command::new("sh")
            .arg("-c")
            .arg(gate::posix_script(allowed))
            .output()
            .expect("sh")
    };
    let out = run(&allowed);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "two\n");
    for script in [
        format!("1e touch {}", canary.display()),
        format!("s/o/x/w {}", canary.display()),
    ] {
        let stage = &mut allowed.stages[0];
        let at = stage
            .iter()
            .position(|w| w == "2p" || w.contains("canary"))
            .expect("script");
        stage[at] = script.clone();
        let out = run(&allowed);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("sandbox"), "{script}: {err}");
        assert!(!canary.exists(), "{script} ran");
    }
}

/// Every gated command runs under CPU and memory limits.
#[test]
fn gated_commands_run_under_limits() {
    let r = role();
    let allowed = gate::check(&r, "id").expect("allowed");
    let script =
        gate::posix_script(&allowed).replace("'id'", "sh -c 'ulimit -t; ulimit -d; ulimit -f'");
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("sh");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "300\n1048576\n0\n",
        "{script}"
    );
}
