//! The read-only gate through the real ssh client against a real sshd:
//! every refused line leaves no trace on the target, legitimate read-only
//! work keeps working. The cases extend `shared/corpus/readonly-escapes.txt`
//! class by class.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use support::*;

struct Gate {
    b: Bastion,
    cert: PathBuf,
    logs: String,
    canary: PathBuf,
}

/// A bastion with one read-only role, `ro`, of these command and filter
/// patterns (`{l}` in them stands for `dir`), and alice's certificate for it.
fn read_only(commands: &[&str], filters: &[&str], dir: &str) -> (Bastion, PathBuf) {
    let list = |ps: &[&str]| {
        ps.iter()
            .map(|p| format!("{:?}", p.replace("{l}", dir)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let role = format!(
        r#"[role.ro]
requestable_by = ["qa"]
logins = ["qa"]
targets = ["env=prod"]
mode = "read-only"
commands = [{}]
filters = [{}]
approvals = {{ required = 1, from = ["qa-lead"] }}
"#,
        list(commands),
        list(filters)
    );
    let b = Bastion::start_with(&role);
    let (_id, cert) = b.granted("alice", "ro", "1h", &["bob"]);
    (b, cert)
}

/// A bastion with a read-only role over a log folder in the test dir.
fn gate() -> Gate {
    let tmp_logs = tempfile::tempdir().expect("tmp").keep();
    let logs = tmp_logs.join("log/app");
    std::fs::create_dir_all(logs.join("sub")).expect("logs");
    std::fs::write(
        logs.join("app.log"),
        "alpha one\nerror two words\ngamma three\nerror four\n",
    )
    .expect("log");
    std::fs::write(logs.join("sub/deep.log"), "deep\n").expect("log");
    let l = logs.display().to_string();
    let (b, cert) = read_only(
        &[
            "cat {l}/**",
            "tail -n <int> {l}/**",
            "grep <arg> {l}/**",
            "grep -i <arg> {l}/**",
            "find {l} -name <arg>",
            "sed -n <arg> {l}/**",
            "awk <arg> {l}/**",
            "less {l}/**",
            "env",
            "id",
            "ls {l}/**",
            "wc -l {l}/**",
        ],
        &["grep <arg>", "head -n <int>", "wc -l", "sort"],
        &l,
    );
    let canary = tmp_logs.join("canary");
    Gate {
        b,
        cert,
        logs: l,
        canary,
    }
}

impl Gate {
    fn run(&self, line: &str) -> std::process::Output {
        self.b.login("alice", &self.cert, "qa", &["web-1", line])
    }
    fn expand(&self, line: &str) -> String {
        line.replace("/var/log/app", &self.logs)
            .replace("/tmp/x", &self.canary.display().to_string())
    }
}

fn refused_cases() -> Vec<&'static str> {
    vec![
        // chaining and shell syntax
        "cat /var/log/app/app.log; touch /tmp/x",
        "cat /var/log/app/app.log;touch /tmp/x",
        "id && touch /tmp/x",
        "id || touch /tmp/x",
        "id & touch /tmp/x",
        "id\ntouch /tmp/x",
        "id\rtouch /tmp/x",
        "id #; touch /tmp/x",
        "(touch /tmp/x)",
        "{ touch /tmp/x; }",
        "cat /var/log/app/$(touch /tmp/x)",
        "cat \"/var/log/app/$(touch /tmp/x)\"",
        "cat /var/log/app/`touch /tmp/x`",
        "cat ${HOME}/.ssh/id_rsa",
        "cat /var/log/app/app.log > /tmp/x",
        "cat /var/log/app/app.log >> /tmp/x",
        "cat < /etc/passwd",
        "cat /var/log/app/app.log <<EOF",
        "tail -n 5 /var/log/app/app.log | sh",
        "tail -n 5 /var/log/app/app.log | bash -c 'touch /tmp/x'",
        "tail -n 5 /var/log/app/app.log | xargs touch",
        "tail -n 5 /var/log/app/app.log | tee /tmp/x",
        "tail -n 5 /var/log/app/app.log |& sh",
        "tail -n 5 /var/log/app/app.log | ",
        "cat /var/log/app/*.log",
        // a parsed argument re-joined without quoting
        "cat '/var/log/app/a;touch /tmp/x'",
        "cat \"/var/log/app/a && touch /tmp/x\"",
        "cat '/var/log/app/a|touch /tmp/x'",
        "cat '/var/log/app/a$(touch /tmp/x)'",
        "cat '/var/log/app/a`touch /tmp/x`'",
        "cat '/var/log/app/a\ntouch /tmp/x'",
        "tail -n '5;touch /tmp/x' /var/log/app/app.log",
        // path scope
        "cat /var/log/app/../../../etc/passwd",
        "cat /var/log/app/./../../../../etc/passwd",
        "cat /var/log/app//../../../../etc/passwd",
        "cat /var/log/app/sub/../../../../../etc/passwd",
        "cat /etc/passwd",
        "cat /var/log/app/app.log /etc/passwd",
        "tail -n 5 /etc/passwd",
        "cat /var/log/app2/app.log",
        "cat ~/.ssh/authorized_keys",
        "cat etc/passwd",
        "find / -name passwd",
        "find /var/log/app/.. -name passwd",
        "ls /var/log/app/../../..",
        // environment prefixes
        "PAGER=sh less /var/log/app/app.log",
        "LESSOPEN='|touch /tmp/x' less /var/log/app/app.log",
        "SYSTEMD_PAGER=sh id",
        "LD_PRELOAD=/tmp/x.so id",
        "env PAGER=sh less /var/log/app/app.log",
        "env sh -c 'touch /tmp/x'",
        "env -i sh",
        // options that run code, write files or read other files
        "find /var/log/app -name app.log -exec touch /tmp/x \\;",
        "find /var/log/app -name app.log -execdir touch /tmp/x ;",
        "find /var/log/app -name app.log -ok touch /tmp/x",
        "find /var/log/app -name app.log -delete",
        "find /var/log/app -name app.log -fprint /tmp/x",
        "find /var/log/app -fls /tmp/x",
        "grep -f /etc/passwd /var/log/app/app.log",
        "grep --file=/etc/passwd /var/log/app/app.log",
        "grep -if /etc/passwd /var/log/app/app.log",
        "grep -r root /etc",
        "sed -n '1e touch /tmp/x' /var/log/app/app.log",
        "sed -n 's/a/b/e' /var/log/app/app.log",
        "sed -n 'w /tmp/x' /var/log/app/app.log",
        "sed -n '1r /etc/passwd' /var/log/app/app.log",
        "sed -n '1R /etc/passwd' /var/log/app/app.log",
        "sed -i 's/a/b/' /var/log/app/app.log",
        "awk 'BEGIN{system(\"touch /tmp/x\")}' /var/log/app/app.log",
        "awk '{print > \"/tmp/x\"}' /var/log/app/app.log",
        "awk 'BEGIN{\"touch /tmp/x\" | getline}' /var/log/app/app.log",
        "awk 'BEGIN{while((getline l < \"/etc/passwd\")>0) print l}' /var/log/app/app.log",
        "awk -f /tmp/x /var/log/app/app.log",
        "awk 'BEGIN{ARGV[1]=\"/etc/passwd\"} {print}' /var/log/app/app.log",
        "awk 'BEGIN{ARGV[ARGC++]=\"/etc/passwd\"} {print}' /var/log/app/app.log",
        "awk '{print SYMTAB[\"ENV\" \"IRON\"][\"HOME\"]}' /var/log/app/app.log",
        "awk 'BEGIN{@f()}' /var/log/app/app.log",
        "id\u{202e}",
        "python3.11 -c 'open(\"/tmp/x\",\"w\")'",
        "vim.basic /var/log/app/app.log",
        "cat /var/log/app/app.log | sort | sort | sort | sort | sort | sort | sort | sort | sort",
        "vi /var/log/app/app.log",
        "man ls",
        "sh -c 'touch /tmp/x'",
        "python3 -c 'open(\"/tmp/x\",\"w\")'",
        "scp -t /tmp",
        "rsync --server -e.Lsfx . /tmp/x",
        "touch /tmp/x",
    ]
}

#[test]
fn refuses_every_escape_class_without_effect() {
    let g = gate();
    for case in refused_cases() {
        let line = g.expand(case);
        let out = g.run(&line);
        let err = text(&out.stderr);
        let stdout = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(126),
            "{case:?} must be refused; stdout={stdout:?} stderr={err:?}"
        );
        assert!(err.contains("postern: refused:"), "{case:?}: {err:?}");
        assert!(
            !err.chars().any(|c| c.is_control() && c != '\n'),
            "{case:?}: raw control char echoed: {err:?}"
        );
        assert!(!stdout.contains("root:"), "{case:?} leaked /etc/passwd");
        assert!(!g.canary.exists(), "{case:?} created the canary");
    }
    // Every verdict was logged.
    let log = g.b.log_text();
    assert!(
        log.matches("gate refused").count() >= refused_cases().len(),
        "each refusal is recorded"
    );
}

#[test]
fn legitimate_read_only_work_keeps_working() {
    let g = gate();
    let cases: &[(&str, &str)] = &[
        ("tail -n 1 /var/log/app/app.log", "error four\n"),
        ("grep 'two words' /var/log/app/app.log", "error two words\n"),
        ("grep -i ERROR /var/log/app/app.log | wc -l", "2\n"),
        ("cat /var/log/app/sub/deep.log", "deep\n"),
        ("cat /var/log/app//sub/./deep.log", "deep\n"),
        (
            "find /var/log/app -name deep.log",
            "/var/log/app/sub/deep.log\n",
        ),
        ("ls /var/log/app/sub", "deep.log\n"),
        (
            "sed -n 2,3p /var/log/app/app.log",
            "error two words\ngamma three\n",
        ),
        (
            "awk '{print $2}' /var/log/app/app.log | sort | head -n 2",
            "four\none\n",
        ),
        ("less /var/log/app/sub/deep.log", "deep\n"),
        ("grep 'x;touch /tmp/x' /var/log/app/app.log", ""),
    ];
    for (case, want) in cases {
        let out = g.run(&g.expand(case));
        let want = g.expand(want);
        assert_eq!(
            text(&out.stdout),
            want,
            "{case}: stderr={}",
            text(&out.stderr)
        );
    }
    let out = g.run("id");
    assert!(
        text(&out.stdout).starts_with("uid="),
        "{}",
        text(&out.stderr)
    );
    // The fixed environment: no pager, nothing from the client.
    let out = g.run("env");
    let env = text(&out.stdout);
    assert!(
        env.contains("PAGER=cat") && env.contains("LESSSECURE=1"),
        "{env}"
    );
    assert!(!env.contains("SSH_CLIENT") || !env.contains("LC_"), "{env}");
    // A failing allowed command keeps its exit status.
    let out = g.run(&g.expand("cat /var/log/app/missing.log"));
    assert_eq!(out.status.code(), Some(1));
    assert!(!g.canary.exists());
}

/// sed scripts that GNU sed reads differently from a plain reading (a
/// delimiter inside a bracket expression) once put the `e` flag, or a `w`
/// file, where the checker took it for part of an address: the shapes an
/// adversarial review found, each refused and without effect on the
/// target. The canary's path is written with `\/`, as the script needs.
#[test]
fn sed_scripts_sed_reads_otherwise_are_refused_without_effect() {
    let g = gate();
    let canary = g.canary.display().to_string();
    let escaped = canary.replace('/', "\\/");
    // (`%`, which no temporary path holds, ends the `\%...%` address the
    // old reading saw in the `w` line.)
    let written = format!("{canary}%p");
    let lines = [
        format!("sed -n 's/.*[/]*/ \\`touch {escaped}`p/e;s/p/p/p' /var/log/app/app.log"),
        "sed -n 's/.*[/]*/ \\`id 1>\\&2`p/e;s/p/p/p' /var/log/app/app.log".to_string(),
        format!("sed -n 's/[/]/;\\%/w {written}' /var/log/app/app.log"),
    ];
    for line in &lines {
        let out = g.run(&g.expand(line));
        let err = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(126),
            "{line:?} must be refused: {err:?}"
        );
        assert!(err.contains("sed: script refused"), "{line:?}: {err:?}");
        assert!(!text(&out.stdout).contains("uid="), "{line:?} ran id");
        assert!(!g.canary.exists(), "{line:?} created the canary");
        assert!(!Path::new(&written).exists(), "{line:?} wrote a file");
    }
    // The checker is the first wall; sed itself runs sandboxed behind it,
    // and the sandbox does not get in the way of reading.
    let out = g.run(&g.expand("sed -n 's/[0-9]*error/E/p' /var/log/app/app.log"));
    assert_eq!(
        text(&out.stdout),
        "E two words\nE four\n",
        "{}",
        text(&out.stderr)
    );
}

/// A read-only tool that loops or grows without end is stopped on the
/// target by the limits every gated command runs under, not left running
/// after its session: `H;G;D` doubles sed's memory every cycle.
#[test]
fn a_runaway_read_only_command_is_stopped_on_the_target() {
    let g = gate();
    let started = std::time::Instant::now();
    let out = g.run(&g.expand("sed -n 'H;G;D' /var/log/app/app.log"));
    let err = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("memory exhausted"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

/// git's subcommands are an allowlist: a pattern `git -C REPO <word>`
/// reads the repository and cannot change it (`stash` took an uncommitted
/// change out of the working tree before, in an adversarial review), a
/// path outside it does not turn `diff` into `diff --no-index` of any two
/// files, and the repository's own config runs nothing (`core.fsmonitor`
/// and `diff.external` did, in a second review).
#[test]
fn git_through_the_gate_reads_and_changes_nothing() {
    let repo = tempfile::tempdir().expect("tmp").keep().join("app");
    std::fs::create_dir_all(&repo).expect("repo");
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
    };
    git(&["init", "-q"]);
    std::fs::write(repo.join("f"), "one\n").expect("f");
    git(&["add", "f"]);
    git(&["commit", "-q", "-m", "first"]);
    std::fs::write(repo.join("f"), "one\nuncommitted\n").expect("f");
    let canary = repo.with_file_name("canary");
    let hook = format!("touch {}; false", canary.display());
    git(&["config", "core.fsmonitor", &hook]);
    git(&["config", "diff.external", &hook]);
    let r = repo.display().to_string();
    let (b, cert) = read_only(
        &[
            "git -C {l} <word>",
            "git -C {l} <word> <arg>",
            "git -C {l} <word> <arg> <arg>",
        ],
        &[],
        &r,
    );
    for line in [
        "stash",
        "stash clear",
        "reset HEAD",
        "checkout f",
        "restore f",
        "lg",
    ] {
        let out = b.login(
            "alice",
            &cert,
            "qa",
            &["web-1", &format!("git -C {r} {line}")],
        );
        assert_eq!(
            out.status.code(),
            Some(126),
            "{line}: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stderr).contains("not a read-only one"), "{line}");
    }
    for line in ["diff /dev/null /etc/passwd", "diff f ../../../etc/passwd"] {
        let out = b.login(
            "alice",
            &cert,
            "qa",
            &["web-1", &format!("git -C {r} {line}")],
        );
        assert_eq!(
            out.status.code(),
            Some(126),
            "{line}: {}",
            text(&out.stderr)
        );
        assert!(
            !text(&out.stdout).contains("root:"),
            "{line} read /etc/passwd"
        );
    }
    let out = b.login(
        "alice",
        &cert,
        "qa",
        &["web-1", &format!("git -C {r} status")],
    );
    assert!(
        text(&out.stdout).contains("modified:"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("f")).expect("f"),
        "one\nuncommitted\n",
        "the working tree changed"
    );
    let out = b.login(
        "alice",
        &cert,
        "qa",
        &["web-1", &format!("git -C {r} diff")],
    );
    assert!(
        text(&out.stdout).contains("+uncommitted"),
        "{}",
        text(&out.stderr)
    );
    assert!(!canary.exists(), "the repository's config ran a program");
}

/// Paths are matched as text on the bastion; on the target a symlink
/// inside an allowed folder may lead out of it (Debian's `/var/log/README`
/// leads into `/usr/share/doc`). Such a path is refused there, before
/// anything runs; links that stay inside, and an allowed folder that is
/// itself a link, still read.
#[test]
fn a_symlink_out_of_an_allowed_folder_is_refused_on_the_target() {
    let root = tempfile::tempdir().expect("tmp").keep();
    let real = root.join("real/app");
    std::fs::create_dir_all(real.join("sub")).expect("dirs");
    std::fs::write(real.join("sub/deep.log"), "deep\n").expect("log");
    std::fs::write(root.join("secret"), "secret-content\n").expect("secret");
    std::fs::create_dir_all(root.join("elsewhere")).expect("dir");
    std::fs::write(root.join("elsewhere/x.log"), "elsewhere-content\n").expect("x");
    let link = |to: &Path, at: &Path| std::os::unix::fs::symlink(to, at).expect("symlink");
    link(&root.join("secret"), &real.join("escape.log"));
    link(&root.join("elsewhere"), &real.join("subdir"));
    link(&real.join("sub/deep.log"), &real.join("inside.log"));
    // The allowed folder, reached through a link.
    link(&root.join("real"), &root.join("linked"));
    let l = root.join("linked/app").display().to_string();
    let (b, cert) = read_only(
        &["cat {l}/**", "tail -n <int> {l}/**", "less {l}/**"],
        &["wc -l"],
        &l,
    );
    let run = |line: String| b.login("alice", &cert, "qa", &["web-1", &line]);
    for line in [
        format!("cat {l}/escape.log"),
        format!("tail -n 1 {l}/escape.log"),
        format!("less {l}/escape.log"),
        format!("cat {l}/subdir/x.log"),
        format!("cat {l}/escape.log | wc -l"),
    ] {
        let out = run(line.clone());
        let (stdout, err) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(126), "{line}: {stdout:?} {err:?}");
        assert!(
            err.contains("postern: refused: a path leads outside"),
            "{line}: {err:?}"
        );
        assert!(
            !stdout.contains("content") && !stdout.contains("deep"),
            "{line}: {stdout:?}"
        );
    }
    for (line, want) in [
        (format!("cat {l}/inside.log"), "deep\n"),
        (format!("cat {l}/sub/deep.log"), "deep\n"),
        (format!("less {l}/inside.log"), "deep\n"),
    ] {
        let out = run(line.clone());
        assert_eq!(text(&out.stdout), want, "{line}: {}", text(&out.stderr));
    }
}

#[test]
fn a_pty_less_is_no_pager_and_bang_does_nothing() {
    let g = gate();
    let mut c = g.b.ssh_cmd(g.b.user("alice"), Some(&g.cert), "qa");
    c.args(["-tt", "web-1", &g.expand("less /var/log/app/app.log")]);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("ssh -tt");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        let _ = stdin.write_all(g.expand("!touch /tmp/x\n:!touch /tmp/x\nq\n").as_bytes());
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = child.wait_with_output().expect("wait");
    assert!(
        text(&out.stdout).contains("gamma three"),
        "{}",
        text(&out.stdout)
    );
    assert!(!g.canary.exists(), "a pager ran the command");
}

#[test]
fn the_prompt_checks_every_line() {
    let g = gate();
    let mut c = g.b.ssh_cmd(g.b.user("alice"), Some(&g.cert), "qa");
    c.args(["-tt", "web-1"]);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("ssh -tt");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = g.expand(
        "help\rid\rcat /etc/passwd\rtouch /tmp/x\rta\t-n 1 /var/log/app/app.log\r\x1b[A\rexit\r",
    );
    for chunk in input.as_bytes().chunks(7) {
        stdin.write_all(chunk).expect("type");
        std::thread::sleep(Duration::from_millis(30));
    }
    let out = child.wait_with_output().expect("wait");
    let s = text(&out.stdout);
    assert!(s.contains("read-only gate on web-1"), "{s}");
    assert!(s.contains("allowed commands:"), "help lists the forms: {s}");
    assert!(s.contains("time left on grant"), "{s}");
    assert!(s.contains("uid="), "id ran: {s}");
    assert!(s.contains("refused"), "{s}");
    assert!(!s.contains("root:x:"), "{s}");
    // Tab completed `ta` to `tail`, and history (up arrow) ran it again.
    assert_eq!(s.matches("error four").count(), 2, "{s}");
    assert!(!g.canary.exists());
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn read_only_roles_get_no_forwarding_subsystem_or_shell() {
    let g = gate();
    let out = g.b.login("alice", &g.cert, "qa", &["web-1"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "no command and no pty: {}",
        text(&out.stderr)
    );
    let mut c = g.b.ssh_cmd(g.b.user("alice"), Some(&g.cert), "qa");
    c.args(["-s", "sftp"]);
    let out = c.output().expect("ssh -s");
    assert_ne!(out.status.code(), Some(0));
    let mut c = g.b.ssh_cmd(g.b.user("alice"), Some(&g.cert), "qa");
    c.args([
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        "0:127.0.0.1:9",
    ]);
    let out = c.output().expect("ssh -R");
    assert_eq!(out.status.code(), Some(255));
    let _ = Path::new("/");
}
