//! The walking skeleton end to end: real ssh client → postern → real sshd.

mod support;

use std::process::Command;
use std::time::Duration;
use support::*;

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)))
}

#[test]
fn init_creates_private_keys_and_never_overwrites() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new(POSTERN)
        .args(["init", "--dir"])
        .arg(tmp.path())
        .output()
        .expect("init");
    assert!(out.status.success());
    use std::os::unix::fs::PermissionsExt;
    for f in [
        "hostkeys/ssh_host_ed25519_key",
        "hostkeys/user_ca",
        "hostkeys/target_ed25519",
    ] {
        let p = tmp.path().join(f);
        let mode = std::fs::metadata(&p)
            .expect("key exists")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f} mode");
        // ssh-keygen reads it as a real key.
        let st = Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&p)
            .output()
            .expect("ssh-keygen");
        assert!(st.status.success(), "{f}: {}", text(&st.stderr));
    }
    let before = std::fs::read(tmp.path().join("hostkeys/user_ca")).expect("ca");
    let out = Command::new(POSTERN)
        .args(["init", "--dir"])
        .arg(tmp.path())
        .output()
        .expect("init again");
    assert!(out.status.success());
    assert_eq!(
        before,
        std::fs::read(tmp.path().join("hostkeys/user_ca")).expect("ca")
    );
}

#[test]
fn request_approve_cert_list_exec_and_pty_shell() {
    let b = Bastion::start();
    // 2. request → pending, with an id.
    let out = b.access(
        "alice",
        &[
            "request",
            "qa-shell",
            "--for",
            "1h",
            "--reason",
            "BUG-123 verify fix",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v = json(&out);
    assert_eq!(v["state"], "pending");
    let id = v["id"].as_str().expect("id").to_string();

    // The requester cannot approve their own request.
    let out = b.access("alice", &["approve", &id]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("own request"),
        "{}",
        text(&out.stderr)
    );
    // A non-approver cannot approve.
    let out = b.access("eve", &["approve", &id]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not an approver"),
        "{}",
        text(&out.stderr)
    );
    // No certificate before approval.
    let out = b.access("alice", &["cert", &id]);
    assert!(!out.status.success());

    // 3. An approver sees it and approves.
    let out = b.access("bob", &["requests", "--pending", "--json"]);
    let list = json(&out);
    assert!(list
        .as_array()
        .expect("array")
        .iter()
        .any(|r| r["id"] == id.as_str()));
    let out = b.access("bob", &["approve", &id, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(json(&out)["state"], "approved");

    // 4. The certificate, read by the real ssh-keygen.
    let cert = b.save_cert("alice", &id);
    let out = Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(&cert)
        .output()
        .expect("ssh-keygen -L");
    let listing = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(listing.contains("user certificate"), "{listing}");
    assert!(
        listing.contains(&format!("alice/{id}")),
        "key id names user and request: {listing}"
    );
    assert!(listing.contains("permit-pty"), "{listing}");
    assert!(
        !listing.contains("permit-port-forwarding"),
        "qa-shell has no forwards: {listing}"
    );
    assert!(!listing.contains("permit-agent-forwarding"), "{listing}");
    let principals = listing
        .split("Principals:")
        .nth(1)
        .expect("principals")
        .lines()
        .nth(1)
        .expect("line")
        .trim()
        .to_string();
    assert_eq!(principals, "qa");

    // 5a. The listing.
    let out = b.login("alice", &cert, "qa", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("web-1"), "{s}");
    assert!(s.contains("left"), "{s}");

    // 5b. One command on the target: stdout, stderr, exit status.
    let out = b.login(
        "alice",
        &cert,
        "qa",
        &["web-1", "echo out; echo err >&2; exit 7"],
    );
    assert_eq!(text(&out.stdout), "out\n");
    assert!(text(&out.stderr).contains("err"), "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(7));

    // A target outside the grant.
    let out = b.login("alice", &cert, "qa", &["db-9", "id"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not in your grant"));

    // stdin reaches the target and EOF ends it.
    let mut c = b.ssh_cmd(b.user("alice"), Some(&cert), "qa");
    c.args(["web-1", "wc -c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = c.spawn().expect("ssh");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(&vec![b'x'; 300_000]).expect("write");
    }
    let out = child.wait_with_output().expect("wait");
    assert_eq!(text(&out.stdout).trim(), "300000");

    // 5c. A PTY shell: tty, window size, exit status.
    let mut c = b.ssh_cmd(b.user("alice"), Some(&cert), "qa");
    c.args(["-tt", "web-1", "stty size; tty; exit 3"]);
    let out = c.output().expect("ssh -tt");
    let s = text(&out.stdout);
    assert!(s.contains("/dev/pts/"), "a real pty on the target: {s}");
    assert_eq!(out.status.code(), Some(3), "{s}");
}

#[test]
fn requests_are_checked() {
    let b = Bastion::start();
    let cases: &[(&[&str], &str)] = &[
        (
            &["request", "no-such-role", "--for", "1h", "--reason", "x"],
            "unknown role",
        ),
        (
            &["request", "qa-shell", "--for", "9h", "--reason", "x"],
            "longer than",
        ),
        (
            &["request", "qa-shell", "--for", "1h"],
            "reason is required",
        ),
        (
            &["request", "qa-shell", "--for", "1h", "--reason", "'  '"],
            "reason is required",
        ),
        (
            &["request", "qa-shell", "--for", "soon", "--reason", "x"],
            "bad duration",
        ),
        (&["approve", "req-00000000"], "unknown id"),
        (&["cert", "req-00000000"], "unknown id"),
        (&["frobnicate"], "unrecognized subcommand"),
    ];
    for (args, want) in cases {
        let out = b.access("alice", args);
        assert!(!out.status.success(), "{args:?} must fail");
        let err = text(&out.stderr);
        assert!(err.contains(want), "{args:?}: want {want:?} in {err:?}");
    }
    // A role alice's groups may not request.
    let out = b.access(
        "bob",
        &["request", "qa-shell", "--for", "1h", "--reason", "x"],
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("may not request"));

    // Denial is final and needs a reason.
    let out = b.access(
        "alice",
        &[
            "request", "qa-shell", "--for", "10m", "--reason", "x", "--json",
        ],
    );
    let id = json(&out)["id"].as_str().expect("id").to_string();
    let out = b.access("bob", &["deny", &id]);
    assert!(!out.status.success());
    let out = b.access("bob", &["deny", &id, "--reason", "not during the freeze"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = b.access("bob", &["approve", &id]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("denied"),
        "{}",
        text(&out.stderr)
    );

    // Two approvals from the approval groups for incident-shell.
    let out = b.access(
        "alice",
        &[
            "request",
            "incident-shell",
            "--for",
            "1h",
            "--reason",
            "x",
            "--json",
        ],
    );
    let id = json(&out)["id"].as_str().expect("id").to_string();
    let out = b.access("bob", &["approve", &id, "--json"]);
    assert_eq!(json(&out)["state"], "pending");
    let out = b.access("bob", &["approve", &id]);
    assert!(
        !out.status.success(),
        "the same approver twice does not count"
    );
    let out = b.access("carol", &["approve", &id, "--json"]);
    assert_eq!(json(&out)["state"], "approved");

    // An unenrolled key cannot log in at all.
    let stranger = b.dir.join("keys/stranger");
    keygen(&stranger, "stranger");
    let mut u = b.user("alice").clone();
    u.key = stranger;
    let out = b
        .ssh_cmd(&u, None, "access")
        .arg("requests")
        .output()
        .expect("ssh");
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("Permission denied"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn state_survives_a_restart() {
    let mut b = Bastion::start();
    let (id, cert) = b.granted("alice", "qa-shell", "30m", &["bob"]);
    b.stop();
    b.serve();
    let out = b.access("alice", &["requests", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(v
        .as_array()
        .expect("array")
        .iter()
        .any(|r| r["id"] == id.as_str() && r["state"] == "approved"));
    let out = b.login("alice", &cert, "qa", &["web-1", "echo still-here"]);
    assert_eq!(
        text(&out.stdout).trim(),
        "still-here",
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn ctl_talks_to_the_running_server() {
    let b = Bastion::start();
    let (_id, _cert) = b.granted("alice", "qa-shell", "30m", &["bob"]);
    let out = b.ctl(&["grants", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v.as_array().expect("array").len(), 1);
    assert_eq!(v[0]["user"], "alice");
    let out = b.ctl(&["approve"]);
    assert_eq!(out.status.code(), Some(2));
    let _ = Duration::from_secs(0);
}

#[test]
fn metrics_count_logins_sessions_and_gate_verdicts() {
    let b = Bastion::start();
    let (_id, cert) = b.granted("alice", "qa-readonly", "1h", &["bob"]);
    b.login("alice", &cert, "qa", &["web-1", "uptime"]);
    b.login("alice", &cert, "qa", &["web-1", "cat /etc/shadow"]);
    let stranger = b.dir.join("keys/stranger");
    keygen(&stranger, "stranger");
    let mut u = b.user("alice").clone();
    u.key = stranger;
    let _ = b.ssh_cmd(&u, None, "access").arg("requests").output();
    let m = b.metrics();
    assert!(m.starts_with("HTTP/1.1 200 OK"), "{m}");
    let value = |name: &str| -> u64 {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{m}"))
    };
    assert!(value("postern_logins_accepted_total") >= 5, "{m}");
    assert_eq!(value("postern_sessions_total"), 2);
    assert_eq!(value("postern_sessions_live"), 0);
    assert_eq!(value("postern_gate_commands_total{verdict=\"allowed\"}"), 1);
    assert_eq!(value("postern_gate_commands_total{verdict=\"refused\"}"), 1);
    assert!(
        m.contains("postern_logins_refused_total{reason=\"key_is_not_enrolled\"}"),
        "{m}"
    );
    assert!(value("postern_bytes_total{direction=\"out\"}") > 0);
    assert!(value("postern_recording_writes_total") > 0);
}

#[test]
fn unattended_requests_expire() {
    let mut b = Bastion::start();
    b.reconfigure("request_ttl = \"1s\"");
    let out = b.access(
        "alice",
        &[
            "request", "qa-shell", "--for", "10m", "--reason", "x", "--json",
        ],
    );
    let id = json(&out)["id"].as_str().expect("id").to_string();
    std::thread::sleep(Duration::from_millis(2100));
    let out = b.access("bob", &["approve", &id]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("expired"),
        "{}",
        text(&out.stderr)
    );
    let out = b.ctl(&["audit", "--json"]);
    assert!(text(&out.stdout).contains("request.expired"));
}
