//! Pre-authentication abuse: a flood of idle connections and failing
//! logins from one source must not keep an honest user out, and must not
//! grow the bastion's memory without bound. Loopback only, bounded.

mod support;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::*;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .expect("VmRSS")
}

#[test]
fn a_flood_from_one_source_does_not_keep_an_honest_user_out() {
    let b = Bastion::start();
    let pid = b.pid();
    let before = rss_kib(pid);
    // 2,000 idle pre-auth connections from 127.0.0.2.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let target: SocketAddr = format!("127.0.0.1:{}", b.port).parse().expect("addr");
    let idle = rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..2000 {
            let sock = tokio::net::TcpSocket::new_v4().expect("socket");
            sock.bind("127.0.0.2:0".parse().expect("src"))
                .expect("bind 127.0.0.2");
            if let Ok(Ok(s)) =
                tokio::time::timeout(Duration::from_secs(2), sock.connect(target)).await
            {
                held.push(s);
            }
        }
        held
    });
    assert!(idle.len() > 100, "the flood connected: {}", idle.len());
    // And a stream of failing logins from the same source.
    let stranger = b.dir.join("keys/stranger");
    keygen(&stranger, "stranger");
    let mut u = b.user("alice").clone();
    u.key = stranger;
    for _ in 0..5 {
        let mut c = b.ssh_cmd(&u, None, "access");
        c.args(["-o", "BindAddress=127.0.0.2", "requests"]);
        let out = c.output().expect("ssh");
        assert_eq!(out.status.code(), Some(255));
    }
    // The honest user, from another address, still gets in quickly.
    let t = Instant::now();
    let out = b.access("alice", &["requests"]);
    let took = t.elapsed();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(took < Duration::from_secs(1), "honest login took {took:?}");
    let during = rss_kib(pid);
    assert!(
        during < before + 64 * 1024,
        "RSS grew from {before} KiB to {during} KiB"
    );
    drop(idle);
}

#[test]
fn an_idle_connection_is_cut_after_the_grace_time() {
    let mut b = Bastion::start();
    b.reconfigure("login_grace_time = \"1s\"");
    let mut s = TcpStream::connect(("127.0.0.1", b.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let t = Instant::now();
    let mut buf = [0u8; 256];
    // The server's banner, then nothing: it closes on us.
    let mut total = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) => panic!("no close within 5s ({e}) after {total} bytes"),
        }
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
}

#[test]
fn repeated_failures_are_reported_and_refused() {
    let mut b = Bastion::start();
    b.reconfigure("max_auth_failures_per_source = 3");
    let stranger = b.dir.join("keys/stranger");
    keygen(&stranger, "stranger");
    let mut u = b.user("alice").clone();
    u.key = stranger;
    for _ in 0..3 {
        let mut c = b.ssh_cmd(&u, None, "access");
        c.args(["-o", "BindAddress=127.0.0.3", "requests"]);
        let _ = c.output().expect("ssh");
    }
    // Now even a good key from that source is turned away...
    let mut c = b.ssh_cmd(b.user("alice"), None, "access");
    c.args(["-o", "BindAddress=127.0.0.3", "requests"]);
    let out = c.output().expect("ssh");
    assert_eq!(out.status.code(), Some(255));
    // ...while other sources are not, and the audit log says why.
    assert!(b.access("alice", &["requests"]).status.success());
    let out = b.ctl(&["audit", "--json"]);
    assert!(
        text(&out.stdout).contains("source.blocked"),
        "{}",
        text(&out.stdout)
    );
    assert!(text(&out.stdout).contains("127.0.0.3"));
}
