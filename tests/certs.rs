//! Certificate verification, one case each, with certificates made by the
//! real `ssh-keygen` and presented by the real `ssh` client.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

/// Sign `user`'s key with `ca` via ssh-keygen; `extra` are ssh-keygen flags.
fn sign(b: &Bastion, ca: &Path, user: &User, name: &str, extra: &[&str]) -> PathBuf {
    let dir = b.dir.join("forged");
    std::fs::create_dir_all(&dir).expect("dir");
    let key = dir.join(name);
    std::fs::copy(user.key.with_extension("pub"), key.with_extension("pub")).expect("copy pub");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(ca)
        .args(["-I", name])
        .args(extra)
        .arg(key.with_extension("pub"))
        .output()
        .expect("ssh-keygen -s");
    assert!(
        out.status.success(),
        "ssh-keygen -s {extra:?}: {}",
        text(&out.stderr)
    );
    dir.join(format!("{name}-cert.pub"))
}

fn serial_of(b: &Bastion) -> String {
    let out = b.ctl(&["grants", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("grants json");
    v[0]["serial"].as_u64().expect("serial").to_string()
}

fn refused(b: &Bastion, user: &str, cert: &Path, login: &str, why: Option<&str>) {
    let out = b.login(user, cert, login, &["web-1", "echo in"]);
    assert_eq!(
        out.status.code(),
        Some(255),
        "must be refused: {}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("Permission denied"),
        "{}",
        text(&out.stderr)
    );
    assert!(!text(&out.stdout).contains("in"));
    if let Some(why) = why {
        let log = b.log_text();
        assert!(log.contains(why), "log should say {why:?}:\n{log}");
    }
}

#[test]
fn certificate_cases() {
    let b = Bastion::start();
    let (_id, good) = b.granted("alice", "qa-shell", "1h", &["bob"]);
    let serial = serial_of(&b);
    let ca = b.dir.join("hostkeys/user_ca");
    let alice = b.user("alice").clone();
    let eve = b.user("eve").clone();

    // Accepted: the issued certificate, for its login, in its window.
    let out = b.login("alice", &good, "qa", &["web-1", "echo in"]);
    assert_eq!(text(&out.stdout).trim(), "in", "{}", text(&out.stderr));
    // And a hand-made one from the real CA with a matching source-address.
    let ok = sign(
        &b,
        &ca,
        &alice,
        "ok",
        &[
            "-n",
            "qa",
            "-z",
            &serial,
            "-V",
            "-5m:+1h",
            "-O",
            "source-address=127.0.0.0/8",
        ],
    );
    let out = b.login("alice", &ok, "qa", &["web-1", "echo in"]);
    assert_eq!(text(&out.stdout).trim(), "in", "{}", text(&out.stderr));

    // Signed by another CA.
    let other = b.dir.join("other_ca");
    keygen(&other, "other");
    let c = sign(&b, &other, &alice, "otherca", &["-n", "qa", "-z", &serial]);
    refused(
        &b,
        "alice",
        &c,
        "qa",
        Some("not signed by this bastion's user CA"),
    );

    // A host certificate (the OpenSSH client may not even offer it; either
    // way it must not log in; ca.rs unit tests cover the check itself).
    let c = sign(&b, &ca, &alice, "host", &["-h", "-n", "qa", "-z", &serial]);
    refused(&b, "alice", &c, "qa", None);

    // A principal other than the login.
    let c = sign(&b, &ca, &alice, "root", &["-n", "root", "-z", &serial]);
    refused(&b, "alice", &c, "qa", Some("is not among its principals"));

    // Empty principals (OpenSSH would take it for any login).
    let c = sign(&b, &ca, &alice, "empty", &["-z", &serial]);
    refused(&b, "alice", &c, "qa", Some("names no principals"));

    // Expired, and not yet valid.
    let c = sign(
        &b,
        &ca,
        &alice,
        "expired",
        &["-n", "qa", "-z", &serial, "-V", "20200101:20200102"],
    );
    refused(&b, "alice", &c, "qa", None);
    let c = sign(
        &b,
        &ca,
        &alice,
        "future",
        &["-n", "qa", "-z", &serial, "-V", "+1d:+2d"],
    );
    refused(&b, "alice", &c, "qa", None);

    // An unknown critical option.
    let c = sign(
        &b,
        &ca,
        &alice,
        "crit",
        &[
            "-n",
            "qa",
            "-z",
            &serial,
            "-O",
            "critical:frobnicate@example.com=1",
        ],
    );
    refused(&b, "alice", &c, "qa", Some("unknown critical option"));

    // source-address that does not match the client.
    let c = sign(
        &b,
        &ca,
        &alice,
        "src",
        &[
            "-n",
            "qa",
            "-z",
            &serial,
            "-O",
            "source-address=10.9.9.9/32",
        ],
    );
    refused(&b, "alice", &c, "qa", Some("source-address"));

    // The real CA, but a serial with no live grant.
    let c = sign(&b, &ca, &alice, "noserial", &["-n", "qa", "-z", "424242"]);
    refused(&b, "alice", &c, "qa", Some("serial maps to no grant"));

    // The grant's serial on another key.
    let c = sign(&b, &ca, &eve, "otherkey", &["-n", "qa", "-z", &serial]);
    refused(&b, "eve", &c, "qa", Some("issued for another key"));

    // A plain enrolled key cannot log in as a grant login.
    let out = b
        .ssh_cmd(&alice, None, "qa")
        .args(["web-1", "id"])
        .output()
        .expect("ssh");
    assert_eq!(out.status.code(), Some(255));

    // A revoked grant's certificate stops working.
    let out = b.ctl(&["revoke", "grant-x", "--reason", "nope"]);
    assert!(!out.status.success());
    let out = b.ctl(&["grants", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let gid = v[0]["id"].as_str().expect("id").to_string();
    let out = b.ctl(&["revoke", &gid, "--reason", "done testing"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    refused(&b, "alice", &good, "qa", Some("is revoked"));
}

#[test]
fn certificate_matrix_beyond_the_skeleton() {
    let b = Bastion::start();
    let (_id, _good) = b.granted("alice", "qa-shell", "1h", &["bob"]);
    let serial = serial_of(&b);
    let ca = b.dir.join("hostkeys/user_ca");
    let alice = b.user("alice").clone();

    // force-command is honoured: only that command runs, whatever is asked.
    let c = sign(
        &b,
        &ca,
        &alice,
        "forced",
        &[
            "-n",
            "qa",
            "-z",
            &serial,
            "-O",
            "force-command=web-1 echo forced-only",
        ],
    );
    let out = b.login("alice", &c, "qa", &["web-1", "echo asked"]);
    assert_eq!(
        text(&out.stdout).trim(),
        "forced-only",
        "{}",
        text(&out.stderr)
    );

    // 257 principals (OpenSSH's limit is 256), the login among them.
    // ssh-keygen will not make one, so build it with the real CA key.
    let c = {
        use russh::keys::ssh_key::certificate::{Builder, CertType};
        let ca_key = postern::ca::read_key(&ca).expect("ca key");
        let user_pub = russh::keys::PublicKey::from_openssh(&alice.public).expect("pub");
        let now = postern::ca::now_secs();
        let mut bld = Builder::new(
            vec![7u8; 32],
            user_pub.key_data().clone(),
            now - 60,
            now + 3600,
        )
        .expect("builder");
        bld.serial(serial.parse().expect("serial")).expect("serial");
        bld.cert_type(CertType::User).expect("type");
        bld.key_id("many").expect("id");
        for i in 0..256 {
            bld.valid_principal(format!("p{i}")).expect("principal");
        }
        bld.valid_principal("qa").expect("principal");
        let cert = bld.sign(&ca_key).expect("sign");
        let path = b.dir.join("forged/many-cert.pub");
        std::fs::write(&path, cert.to_openssh().expect("openssh")).expect("write");
        path
    };
    // (The OpenSSH client itself will not present it; ca.rs unit tests
    // cover postern's own check.)
    refused(&b, "alice", &c, "qa", None);

    // Non-ASCII principals never equal a login.
    let c = sign(&b, &ca, &alice, "unicode", &["-n", "qа", "-z", &serial]);
    refused(&b, "alice", &c, "qa", Some("is not among its principals"));

    // An RSA CA (SHA-1 or SHA-2 signatures alike) is not this CA.
    let rsa = b.dir.join("rsa_ca");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "rsa", "-b", "2048", "-N", "", "-f"])
        .arg(&rsa)
        .status()
        .expect("keygen");
    assert!(st.success());
    for alg in ["ssh-rsa", "rsa-sha2-512"] {
        let c = sign(
            &b,
            &rsa,
            &alice,
            &format!("rsa-{alg}"),
            &["-n", "qa", "-z", &serial, "-t", alg],
        );
        refused(&b, "alice", &c, "qa", None);
    }
}
