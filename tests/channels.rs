//! What a grant's channels may and may not do: forwards, jumps, remote
//! forwards, agent forwarding, subsystems, pinned target host keys.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::time::Duration;
use support::*;

/// A TCP echo server on loopback for forwarding tests.
fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

fn forward_role(echo: u16) -> String {
    format!(
        "[role.qa-forward]\nrequestable_by = [\"qa\"]\nlogins = [\"qa\"]\ntargets = [\"env=prod\"]\nmode = \"shell\"\n\
         port_forwards = [\"127.0.0.1:{echo}\"]\napprovals = {{ required = 1, from = [\"qa-lead\"] }}\n"
    )
}

/// Start `ssh -N -L` and return the child and the local port.
fn start_forward(b: &Bastion, cert: &std::path::Path, dest: &str) -> (Proc, u16) {
    let lport = free_port();
    let mut c = b.ssh_cmd(b.user("alice"), Some(cert), "qa");
    c.args([
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-L",
        &format!("{lport}:{dest}"),
    ]);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let p = Proc(c.spawn().expect("ssh -L"));
    eventually(Duration::from_secs(10), "the -L listener", || {
        TcpStream::connect(("127.0.0.1", lport)).ok()
    });
    (p, lport)
}

fn echo_through(lport: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", lport)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"ping\n").ok()?;
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn forwards_only_where_the_role_allows() {
    let echo = echo_server();
    let other = echo_server();
    let b = Bastion::start_with(&forward_role(echo));
    let (_id, cert) = b.granted("alice", "qa-forward", "1h", &["bob"]);
    let listing = std::process::Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(&cert)
        .output()
        .expect("ssh-keygen");
    assert!(text(&listing.stdout).contains("permit-port-forwarding"));

    // The allowed destination works.
    let (_p, lport) = start_forward(&b, &cert, &format!("127.0.0.1:{echo}"));
    assert_eq!(echo_through(lport).as_deref(), Some("ping\n"));

    // Another port is refused (the local listener exists, the channel does not).
    let (_p2, lport2) = start_forward(&b, &cert, &format!("127.0.0.1:{other}"));
    assert_eq!(echo_through(lport2).filter(|s| !s.is_empty()), None);
    assert!(b.log_text().contains("forward refused"));

    // ProxyJump to the target's sshd is refused.
    let mut c = b.ssh_cmd(b.user("alice"), Some(&cert), "qa");
    c.args(["-W", &format!("127.0.0.1:{}", b.target.port)]);
    let out = c.output().expect("ssh -W");
    assert_ne!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(
        err.contains("administratively prohibited") || err.contains("stdio forwarding failed"),
        "{err}"
    );
    assert!(
        b.log_text()
            .contains(&format!("port={} why=", b.target.port)),
        "the -W was refused and logged"
    );

    // -R is refused.
    let mut c = b.ssh_cmd(b.user("alice"), Some(&cert), "qa");
    c.args([
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        &format!("0:127.0.0.1:{echo}"),
    ]);
    let out = c.output().expect("ssh -R");
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("forwarding failed"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn no_forwarding_without_the_extension() {
    let echo = echo_server();
    let b = Bastion::start_with("");
    let (_id, cert) = b.granted("alice", "qa-shell", "1h", &["bob"]);
    let (_p, lport) = start_forward(&b, &cert, &format!("127.0.0.1:{echo}"));
    assert_eq!(echo_through(lport).filter(|s| !s.is_empty()), None);
    assert!(b
        .log_text()
        .contains("certificate does not permit port forwarding"));
}

#[test]
fn agent_subsystem_and_env_never_reach_the_target() {
    let b = Bastion::start();
    let (_id, cert) = b.granted("alice", "qa-shell", "1h", &["bob"]);
    // An agent on the client side; -A must not expose it on the target.
    let sock = b.dir.join("agent.sock");
    let agent = std::process::Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(Stdio::null())
        .spawn()
        .expect("ssh-agent");
    let _agent = Proc(agent);
    eventually(Duration::from_secs(5), "agent socket", || {
        sock.exists().then_some(())
    });
    let mut c = b.ssh_cmd(b.user("alice"), Some(&cert), "qa");
    c.env("SSH_AUTH_SOCK", &sock).env("LANG", "C.leak");
    c.args([
        "-A",
        "-o",
        "SendEnv=LANG",
        "web-1",
        "echo agent=${SSH_AUTH_SOCK:-none} lang=${LANG:-none}",
    ]);
    let out = c.output().expect("ssh -A");
    let s = text(&out.stdout);
    assert!(s.contains("agent=none"), "{s} {}", text(&out.stderr));
    assert!(!s.contains("C.leak"), "client env reached the target: {s}");
    assert!(b.log_text().contains("agent forwarding refused"));

    // Subsystems (sftp) are refused with a message that always reaches the
    // user. (Answered with CHANNEL_FAILURE, the client exited before writing
    // the message out whenever both came in one read; a few tries showed it.)
    for _ in 0..5 {
        let mut c = b.ssh_cmd(b.user("alice"), Some(&cert), "qa");
        c.args(["-s", "sftp"]);
        let out = c.output().expect("ssh -s");
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("subsystem sftp is not allowed"),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn a_changed_target_host_key_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let wrong = keygen(&tmp.path().join("wrong"), "wrong");
    // Same sshd as web-1, but policy pins another key for it.
    let b0 = Bastion::start();
    let extra = format!(
        "[[target]]\nname = \"web-2\"\naddress = \"127.0.0.1:{}\"\nlogin = \"{}\"\nhost_key = \"{wrong}\"\nlabels = {{ env = \"prod\" }}\n",
        b0.target.port,
        whoami()
    );
    drop(b0);
    let b = Bastion::start_with(&extra);
    // web-2 points at web-1's sshd port of a bastion that is gone, so point
    // it at this bastion's sshd instead.
    let inv = std::fs::read_to_string(b.dir.join("policies/zz-extra.toml")).expect("extra");
    let fixed: String = inv
        .lines()
        .map(|l| {
            if l.starts_with("address") {
                format!("address = \"127.0.0.1:{}\"", b.target.port)
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(b.dir.join("policies/zz-extra.toml"), fixed).expect("write");
    let out = b.ctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (_id, cert) = b.granted("alice", "qa-shell", "1h", &["bob"]);
    let out = b.login("alice", &cert, "qa", &["web-2", "echo reached"]);
    assert!(!text(&out.stdout).contains("reached"));
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("does not match its pinned key"),
        "{}",
        text(&out.stderr)
    );
    // web-1, pinned right, still works.
    let out = b.login("alice", &cert, "qa", &["web-1", "echo reached"]);
    assert_eq!(text(&out.stdout).trim(), "reached");
}

#[test]
fn forwards_are_session_records_and_full_ones_keep_the_bytes() {
    let echo = echo_server();
    let role = forward_role(echo) + "record_forwards = \"full\"\n";
    let b = Bastion::start_with(&role);
    let (_id, cert) = b.granted("alice", "qa-forward", "1h", &["bob"]);
    let (_p, lport) = start_forward(&b, &cert, &format!("127.0.0.1:{echo}"));
    assert_eq!(echo_through(lport).as_deref(), Some("ping\n"));
    let s = eventually(Duration::from_secs(5), "the forward session to end", || {
        let out = b.access("dave", &["sessions", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        // (start_forward's readiness probe is a forward session too, with no bytes.)
        v.as_array()?
            .iter()
            .find(|s| s["kind"] == "forward" && s["state"] == "ended" && s["bytes_in"] != 0)
            .cloned()
    });
    assert_eq!(s["target"], format!("127.0.0.1:{echo}"));
    assert_eq!(s["bytes_in"], 5);
    assert_eq!(s["bytes_out"], 5);
    let path = s["recording"]
        .as_str()
        .expect("full forwards have a recording");
    let text = std::fs::read_to_string(path).expect("recording");
    let mut lines = text.lines();
    let header: serde_json::Value =
        serde_json::from_str(lines.next().expect("header")).expect("json");
    assert_eq!(header["kind"], "port-forward");
    let events: Vec<serde_json::Value> = lines
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert!(
        events.iter().any(|e| e[1] == "c" && e[2] == "cGluZwo="),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e[1] == "s" && e[2] == "cGluZwo="),
        "{events:?}"
    );
}

#[test]
fn logs_name_connection_user_session_and_target_but_never_session_bytes() {
    let b = Bastion::start();
    let (_id, cert) = b.granted("alice", "qa-shell", "1h", &["bob"]);
    let out = b.login(
        "alice",
        &cert,
        "qa",
        &["web-1", "echo $((6*7))-marker-$((3*3))"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "42-marker-9\n");
    let line = eventually(Duration::from_secs(5), "a session log line", || {
        b.log_text()
            .lines()
            .find(|l| l.contains("session started"))
            .map(String::from)
    });
    // The connection span (peer, user) and the channel span (session,
    // target) frame the event, as `conn{…}:session{…}`.
    let conn = line.find("conn{peer=127.0.0.1:").expect(&line);
    let session = line.find("}:session{").expect(&line);
    assert!(conn < session, "{line}");
    assert!(line[conn..session].contains("user=\"alice\""), "{line}");
    assert!(line[session..].contains("target=\"web-1\""), "{line}");
    assert!(line[session..].contains("session=\"s-"), "{line}");
    // What the target printed never reaches the log.
    assert!(!b.log_text().contains("42-marker-9"));
}
