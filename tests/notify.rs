//! systemd readiness: `postern serve` under a `NOTIFY_SOCKET` says READY=1
//! only once it accepts connections and control calls, RELOADING=1 then
//! READY=1 around a SIGHUP reload, and STOPPING=1 on SIGTERM.

mod support;

use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;
use support::*;

/// The next notification, as its `KEY=value` lines.
fn next(sock: &UnixDatagram) -> Vec<String> {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("a notification within the timeout");
    text(&buf[..n]).lines().map(str::to_string).collect()
}

fn signal(b: &Bastion, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &b.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(st.success());
}

#[test]
fn ready_reloading_and_stopping_reach_systemd() {
    let mut b = Bastion::start();
    b.stop();
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    b.spawn_serve(&[("NOTIFY_SOCKET", path.as_os_str())]);

    // READY=1, and by then the port and the control socket answer at once.
    let m = next(&sock);
    assert!(m.contains(&"READY=1".to_string()), "{m:?}");
    let status = format!("STATUS=listening on 127.0.0.1:{}", b.port);
    assert!(m.contains(&status), "{m:?}");
    TcpStream::connect(("127.0.0.1", b.port)).expect("listening when READY=1 arrives");
    let out = b.ctl(&["grants"]);
    assert!(out.status.success(), "ctl: {}", text(&out.stderr));

    // SIGHUP: RELOADING=1 with the monotonic time, then READY=1.
    signal(&b, "-HUP");
    let m = next(&sock);
    assert!(m.contains(&"RELOADING=1".to_string()), "{m:?}");
    assert!(
        m.iter().any(|l| l
            .strip_prefix("MONOTONIC_USEC=")
            .is_some_and(|v| v.parse::<u64>().is_ok_and(|v| v > 0))),
        "{m:?}"
    );
    let m = next(&sock);
    assert!(m.contains(&"READY=1".to_string()), "{m:?}");
    assert!(
        m.iter()
            .any(|l| l.starts_with(&status) && l.contains("policy reloaded")),
        "{m:?}"
    );
    // Still serving after the reload.
    let out = b.access("alice", &["requests"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A bad policy: still RELOADING=1 then READY=1, saying the old one stays.
    std::fs::write(b.dir.join("policies/zz-bad.toml"), "[[role]]\nname = 3\n").expect("write");
    signal(&b, "-HUP");
    assert!(next(&sock).contains(&"RELOADING=1".to_string()));
    let m = next(&sock);
    assert!(m.contains(&"READY=1".to_string()), "{m:?}");
    assert!(m.iter().any(|l| l.contains("old policy kept")), "{m:?}");

    // SIGTERM: STOPPING=1, then a clean exit.
    signal(&b, "-TERM");
    let m = next(&sock);
    assert!(m.contains(&"STOPPING=1".to_string()), "{m:?}");
    let st = b.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "{st:?}");
}
