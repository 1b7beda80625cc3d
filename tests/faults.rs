//! Faults on the target side: down, silent, unresolvable. The user gets
//! one clear line, the session is recorded as failed with the reason, and
//! nothing hangs.

mod support;

use std::time::{Duration, Instant};
use support::*;

#[test]
fn target_down_slow_or_unresolvable_fails_clearly() {
    // A listener that accepts and then says nothing: a hung target.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let _keep = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().flatten() {
            held.push(s);
        }
    });
    let closed_port = free_port();
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGjFwwxa53qDkMknfTGDkejpmTMAdeJgrMAh7TboT3tf x";
    let me = whoami();
    let extra = format!(
        "[[target]]\nname = \"down\"\naddress = \"127.0.0.1:{closed_port}\"\nlogin = \"{me}\"\nhost_key = \"{key}\"\nlabels = {{ env = \"prod\" }}\n\n\
         [[target]]\nname = \"slow\"\naddress = \"127.0.0.1:{silent_port}\"\nlogin = \"{me}\"\nhost_key = \"{key}\"\nlabels = {{ env = \"prod\" }}\n\n\
         [[target]]\nname = \"nodns\"\naddress = \"no-such-host.invalid:22\"\nlogin = \"{me}\"\nhost_key = \"{key}\"\nlabels = {{ env = \"prod\" }}\n"
    );
    let mut b = Bastion::start_with(&extra);
    b.reconfigure("connect_timeout = \"2s\"");
    let (_id, cert) = b.granted("alice", "qa-shell", "1h", &["bob"]);
    for (target, want) in [
        ("down", "cannot reach target down"),
        ("slow", "did not answer within 2s"),
        ("nodns", "cannot reach target nodns"),
    ] {
        let t = Instant::now();
        let out = b.login("alice", &cert, "qa", &[target, "echo reached"]);
        let took = t.elapsed();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "{target}: {err}");
        assert!(err.contains(want), "{target}: want {want:?} in {err:?}");
        assert_eq!(err.trim().lines().count(), 1, "{target}: one line: {err:?}");
        assert!(took < Duration::from_secs(8), "{target}: took {took:?}");
    }
    let out = b.access("dave", &["sessions", "--json"]);
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(list.len(), 3);
    for s in &list {
        assert_eq!(s["state"], "ended");
        assert!(
            s["end_reason"]
                .as_str()
                .unwrap_or("")
                .starts_with("target failed"),
            "{s}"
        );
        assert_eq!(s["exit_status"], 255);
    }
}

#[test]
fn kill_9_loses_nothing_that_was_acknowledged() {
    let mut b = Bastion::start();
    let mut ids = Vec::new();
    for i in 0..20 {
        let reason = format!("durability {i}");
        let out = b.access(
            "alice",
            &[
                "request", "qa-shell", "--for", "10m", "--reason", &reason, "--json",
            ],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let id = v["id"].as_str().expect("id").to_string();
        if i % 2 == 0 {
            assert!(b.access("bob", &["approve", &id]).status.success());
        }
        ids.push((id, i % 2 == 0));
    }
    // The last answer is in hand: crash now.
    b.kill9();
    b.serve();
    let out = b.ctl(&["requests", "--json"]);
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    for (id, approved) in &ids {
        let r = list
            .iter()
            .find(|r| r["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} lost"));
        assert_eq!(
            r["state"],
            if *approved { "approved" } else { "pending" },
            "{r}"
        );
    }
    let grants: serde_json::Value =
        serde_json::from_slice(&b.ctl(&["grants", "--json"]).stdout).expect("json");
    assert_eq!(grants.as_array().expect("array").len(), 10);
    let out = b.ctl(&["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events: Vec<serde_json::Value> =
        serde_json::from_slice(&b.ctl(&["audit", "--json"]).stdout).expect("json");
    let created = events
        .iter()
        .filter(|e| e["kind"] == "request.created")
        .count();
    assert_eq!(created, 20);
}
