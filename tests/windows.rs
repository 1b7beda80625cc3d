//! Validity windows, revocation, the KRL, policy reload and the audit
//! chain, against live sessions through the real ssh client and sshd.

mod support;

use std::io::{BufReader, Read};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

fn grant_id(b: &Bastion) -> String {
    let out = b.ctl(&["grants", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v[0]["id"].as_str().expect("grant id").to_string()
}

/// A session that prints a line every 100 ms, like `tail -f`.
fn live_session(
    b: &Bastion,
    cert: &std::path::Path,
) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut c = b.ssh_cmd(b.user("alice"), Some(cert), "qa");
    c.args(["web-1", "while :; do echo tick; sleep 0.1; done"]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("ssh");
    let mut r = BufReader::new(child.stdout.take().expect("stdout"));
    read_until(&mut r, "tick");
    (child, r)
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

#[test]
fn revoke_cuts_a_live_session_within_a_second() {
    let b = Bastion::start();
    let (_id, cert) = b.granted("alice", "qa-shell", "1h", &["bob"]);
    let (mut child, _r) = live_session(&b, &cert);
    let gid = grant_id(&b);
    let grants: serde_json::Value =
        serde_json::from_slice(&b.ctl(&["grants", "--json"]).stdout).expect("json");
    assert_eq!(grants[0]["live_sessions"], 1, "{grants}");
    assert_eq!(grants[0]["state"], "live");
    // The control socket is the admin's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(b.dir.join("data/postern.sock"))
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let out = b.ctl(&["revoke", &gid, "--reason", "incident over"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let revoked_at = Instant::now();
    let status = child.wait().expect("ssh ends");
    let took = revoked_at.elapsed();
    assert!(took < Duration::from_millis(1500), "cut after {took:?}");
    assert!(!status.success());
    let err = stderr_of(&mut child);
    assert!(
        err.contains("access revoked by ctl (incident over)"),
        "{err}"
    );
    // The serial is refused from then on.
    let out = b.login("alice", &cert, "qa", &["web-1", "echo in"]);
    assert_eq!(out.status.code(), Some(255));
    // And the KRL says so to ssh-keygen.
    let krl = b.dir.join("revoked.krl");
    let out = b.ctl(&["krl", "--out", krl.to_str().expect("path")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let q = Command::new("ssh-keygen")
        .arg("-Q")
        .arg("-f")
        .arg(&krl)
        .arg(&cert)
        .output()
        .expect("ssh-keygen -Q");
    assert!(
        text(&q.stdout).contains("REVOKED"),
        "{} {}",
        text(&q.stdout),
        text(&q.stderr)
    );
    // Over ssh an admin cannot choose where the bastion writes.
    let out = b.access("dave", &["krl", "--out", "/tmp/elsewhere.krl"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--out is for postern ctl"),
        "{}",
        text(&out.stderr)
    );
    // A live grant's certificate is not in it.
    let (_id2, cert2) = b.granted("eve", "qa-shell", "1h", &["bob"]);
    let q = Command::new("ssh-keygen")
        .arg("-Q")
        .arg("-f")
        .arg(&krl)
        .arg(&cert2)
        .output()
        .expect("ssh-keygen -Q");
    assert!(text(&q.stdout).contains(": ok"), "{}", text(&q.stdout));
    assert!(q.status.success());
}

#[test]
fn shorten_warns_then_ends_the_window() {
    let b = Bastion::start();
    let (_id, cert) = b.granted("alice", "qa-shell", "1h", &["bob"]);
    let (mut child, _r) = live_session(&b, &cert);
    let gid = grant_id(&b);
    let out = b.ctl(&["shorten", &gid, "--to", "5m"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::thread::sleep(Duration::from_millis(1200));
    let out = b.ctl(&["shorten", &gid, "--to", "2s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let at = Instant::now();
    let _ = child.wait().expect("ssh ends");
    let took = at.elapsed();
    assert!(
        took < Duration::from_millis(3600) && took > Duration::from_millis(900),
        "ended after {took:?}"
    );
    let err = stderr_of(&mut child);
    assert!(err.contains("postern: access ends in 5m"), "{err}");
    assert!(err.contains("access window ended"), "{err}");
}

#[test]
fn extend_needs_max_ttl_or_force_and_reissues_the_certificate() {
    let b = Bastion::start();
    let (id, _cert) = b.granted("alice", "qa-shell", "30m", &["bob"]);
    let gid = grant_id(&b);
    let out = b.ctl(&["extend", &gid, "--by", "2h"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("max_ttl"),
        "{}",
        text(&out.stderr)
    );
    let out = b.ctl(&["extend", &gid, "--by", "2h", "--force"]);
    assert!(!out.status.success(), "--force needs a reason");
    let out = b.ctl(&["extend", &gid, "--by", "1h"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("cert {id}")),
        "tells how to fetch: {}",
        text(&out.stdout)
    );
    let out = b.access("alice", &["extend", &gid, "--by", "1m"]);
    assert!(!out.status.success(), "only admins extend");
    let cert = b.save_cert("alice", &id);
    let l = Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(&cert)
        .output()
        .expect("ssh-keygen");
    let v: serde_json::Value =
        serde_json::from_slice(&b.ctl(&["grants", "--json"]).stdout).expect("json");
    let (start, end) = (
        v[0]["start"].as_u64().expect("start"),
        v[0]["end"].as_u64().expect("end"),
    );
    assert_eq!(end - start, 90 * 60, "30m + 1h");
    assert!(text(&l.stdout).contains("Valid:"), "{}", text(&l.stdout));
    let out = b.ctl(&[
        "extend",
        &gid,
        "--by",
        "4h",
        "--force",
        "--reason",
        "release slipped",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_future_window_cannot_log_in_before_its_start() {
    let b = Bastion::start();
    let out = b.access(
        "alice",
        &[
            "request", "qa-shell", "--for", "30m", "--reason", "planned", "--start", "+1h",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v = serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json");
    let id = v["id"].as_str().expect("id").to_string();
    assert!(
        v["start"].as_u64().is_some(),
        "approvers see the planned start: {v}"
    );
    let listing = b.access("bob", &["requests", "--pending"]);
    assert!(
        text(&listing.stdout).contains("starts="),
        "{}",
        text(&listing.stdout)
    );
    let out = b.access(
        "alice",
        &[
            "request", "qa-shell", "--for", "30m", "--reason", "x", "--start", "+400d",
        ],
    );
    assert!(!out.status.success(), "too far ahead");
    let out = b.access("bob", &["approve", &id]);
    assert!(out.status.success());
    let cert = b.save_cert("alice", &id);
    let out = b.login("alice", &cert, "qa", &["web-1", "echo in"]);
    assert_eq!(out.status.code(), Some(255));
    let log = b.log_text();
    assert!(
        log.contains("is future") || log.contains("not yet valid"),
        "refused because the window has not started: {log}"
    );
}

#[test]
fn reload_keeps_old_policy_on_error_and_ends_sessions_it_no_longer_allows() {
    let b = Bastion::start();
    let (_id, cert) = b.granted("alice", "qa-shell", "1h", &["bob"]);
    let (mut child, _r) = live_session(&b, &cert);
    // A broken file: reload fails with file and line, sessions go on.
    let bad = b.dir.join("policies/broken.toml");
    std::fs::write(&bad, "[role.x]\nmode = \n").expect("write");
    let out = b.ctl(&["reload"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("broken.toml: line 2"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_file(&bad).expect("rm");
    assert!(child.try_wait().expect("try_wait").is_none(), "still live");
    // SIGHUP reloads too.
    let roles = std::fs::read_to_string(b.dir.join("policies/roles.toml")).expect("roles");
    std::fs::write(
        b.dir.join("policies/roles.toml"),
        roles.replace(
            "targets = [\"env=prod\"]\nmode = \"shell\"",
            "targets = [\"db-*\"]\nmode = \"shell\"",
        ),
    )
    .expect("write");
    let pid = b.pid();
    Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill -HUP");
    let at = Instant::now();
    let _ = child.wait();
    assert!(at.elapsed() < Duration::from_secs(3), "{:?}", at.elapsed());
    let err = stderr_of(&mut child);
    assert!(err.contains("policy no longer allows this target"), "{err}");
}

#[test]
fn audit_chain_records_decisions_and_detects_tampering() {
    let mut b = Bastion::start();
    // A reason carrying terminal escape sequences.
    let evil = "\u{1b}]0;pwned\u{7}\u{1b}[2J fix";
    let out = b.access(
        "alice",
        &[
            "request",
            "qa-readonly",
            "--for",
            "1h",
            "--reason",
            evil,
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let listing = b.access("bob", &["requests"]);
    assert!(
        !listing.stdout.contains(&0x1b) && !listing.stdout.contains(&0x07),
        "raw escapes reached the approver"
    );
    assert!(
        text(&listing.stdout).contains("\\u{1b}"),
        "{}",
        text(&listing.stdout)
    );
    b.access("bob", &["approve", &id]);
    let cert = b.save_cert("alice", &id);
    b.login("alice", &cert, "qa", &["web-1", "cat /etc/shadow"]);
    b.login("alice", &cert, "qa", &["web-1", "uptime"]);
    b.access("alice", &["approve", "nope"]);

    let out = b.ctl(&["audit", "--json"]);
    let events: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or(""))
        .collect();
    for k in [
        "request.created",
        "request.approved_by",
        "grant.created",
        "cert.issued",
        "login.accepted",
        "session.started",
        "gate.refused",
        "gate.allowed",
        "session.ended",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let text_listing = b.ctl(&["audit"]);
    assert!(!text_listing.stdout.contains(&0x1b));
    let out = b.ctl(&["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Tamper with one stored event while the server is down.
    let n = events.len() as u64;
    let victim = n / 2;
    b.stop();
    {
        let store = postern::store::Store::open(&b.dir.join("data")).expect("store");
        let all = store.audit_scan(victim).expect("scan");
        let mut e: serde_json::Value = serde_json::from_slice(&all[0].1).expect("event");
        e["actor"] = serde_json::json!("mallory");
        store
            .audit_overwrite(victim, &serde_json::to_vec(&e).expect("json"))
            .expect("overwrite");
    }
    b.serve();
    let out = b.ctl(&["audit", "verify"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&format!("event {victim}:")),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn ctl_audit_follow_streams_json_lines() {
    let b = Bastion::start();
    let mut c = Command::new(POSTERN);
    c.args(["ctl", "--config"])
        .arg(b.dir.join("postern.toml"))
        .args(["audit", "--follow", "--json"]);
    c.stdout(Stdio::piped());
    let mut follower = Proc(c.spawn().expect("ctl audit --follow"));
    let mut r = BufReader::new(follower.0.stdout.take().expect("stdout"));
    std::thread::sleep(Duration::from_millis(300));
    let out = b.access(
        "alice",
        &["request", "qa-shell", "--for", "1h", "--reason", "siem"],
    );
    assert!(out.status.success());
    let got = read_until(&mut r, "request.created");
    let line = got
        .lines()
        .find(|l| l.contains("request.created"))
        .expect("an event line");
    let v: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
    assert_eq!(v["actor"], "alice");
    assert_eq!(v["data"]["reason"], "siem");
    assert!(v["hash"].as_str().is_some_and(|h| h.len() == 64));
}

#[test]
fn revocation_reaches_forwards_and_multiplexed_connections() {
    use std::io::Write;
    // An echo server to forward to.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let echo = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let role = format!(
        "[role.fwd]\nrequestable_by = [\"qa\"]\nlogins = [\"qa\"]\ntargets = [\"env=prod\"]\nmode = \"shell\"\n\
         port_forwards = [\"127.0.0.1:{echo}\"]\napprovals = {{ required = 1, from = [\"qa-lead\"] }}\n"
    );
    let b = Bastion::start_with(&role);
    let (_id, cert) = b.granted("alice", "fwd", "1h", &["bob"]);
    // One multiplexing master carrying a forward.
    let cm = b.dir.join("cm");
    let lport = free_port();
    let mut m = b.ssh_cmd(b.user("alice"), Some(&cert), "qa");
    m.args([
        "-N",
        "-o",
        "ControlMaster=yes",
        "-o",
        &format!("ControlPath={}", cm.display()),
    ]);
    m.args(["-L", &format!("{lport}:127.0.0.1:{echo}")]);
    m.stdout(Stdio::null()).stderr(Stdio::null());
    let _master = Proc(m.spawn().expect("master"));
    let mut conn = eventually(Duration::from_secs(10), "the forward", || {
        TcpStream::connect(("127.0.0.1", lport)).ok()
    });
    conn.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).expect("echo");
    assert_eq!(&buf, b"ping");
    let via_master = |b: &Bastion| {
        let mut c = b.ssh_cmd(b.user("alice"), Some(&cert), "qa");
        c.args([
            "-o",
            &format!("ControlPath={}", cm.display()),
            "web-1",
            "echo reached",
        ]);
        c.output().expect("ssh via master")
    };
    assert_eq!(text(&via_master(&b).stdout).trim(), "reached");

    let gid = grant_id(&b);
    assert!(b
        .ctl(&["revoke", &gid, "--reason", "done"])
        .status
        .success());
    // The open forward is cut...
    conn.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let t = Instant::now();
    let n = conn.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "forward still open");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    // ...and the still-open master cannot open new channels.
    let out = via_master(&b);
    assert!(
        !text(&out.stdout).contains("reached"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_client_that_vanishes_ends_its_session_and_target_connection() {
    let b = Bastion::start();
    let (_id, cert) = b.granted("alice", "qa-shell", "1h", &["bob"]);
    let (mut child, _r) = live_session(&b, &cert);
    let target_conns = || {
        // Established TCP connections to the target's sshd port.
        let port = format!("{:04X}", b.target.port);
        std::fs::read_to_string("/proc/net/tcp")
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[3] == "01" && f[2].ends_with(&format!(":{port}"))
            })
            .count()
    };
    assert_eq!(target_conns(), 1, "one upstream connection while live");
    child.kill().expect("kill ssh");
    let _ = child.wait();
    let s = eventually(Duration::from_secs(5), "the session to end", || {
        let out = b.ctl(&["sessions", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v.as_array()?
            .first()
            .filter(|s| s["state"] == "ended")
            .cloned()
    });
    assert_eq!(s["end_reason"], "client closed the session");
    eventually(
        Duration::from_secs(5),
        "the upstream connection to close",
        || (target_conns() == 0).then_some(()),
    );
}

#[test]
fn idle_sessions_are_warned_then_closed() {
    let role = "[role.idle]\nrequestable_by = [\"qa\"]\nlogins = [\"qa\"]\ntargets = [\"env=prod\"]\nmode = \"shell\"\n\
                idle_timeout = \"3s\"\napprovals = { required = 1, from = [\"qa-lead\"] }\n";
    let b = Bastion::start_with(role);
    let (_id, cert) = b.granted("alice", "idle", "1h", &["bob"]);
    // Busy for longer than the timeout: not idle.
    let t = Instant::now();
    let out = b.login(
        "alice",
        &cert,
        "qa",
        &[
            "web-1",
            "for i in 1 2 3 4 5 6 7 8; do echo busy; sleep 0.5; done",
        ],
    );
    assert_eq!(
        text(&out.stdout).matches("busy").count(),
        8,
        "{}",
        text(&out.stderr)
    );
    assert!(t.elapsed() > Duration::from_secs(4));
    // Silent: warned, then closed.
    let t = Instant::now();
    let out = b.login("alice", &cert, "qa", &["web-1", "sleep 30"]);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(6), "closed after {took:?}");
    let err = text(&out.stderr);
    assert!(err.contains("idle; closing in 3s"), "{err}");
    assert!(err.contains("idle for 3s; closing"), "{err}");
}
