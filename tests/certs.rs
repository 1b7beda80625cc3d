//! Certificate verification, one case each, with certificates made by the
//! real `ssh-keygen` and presented by the real `ssh` client.

#[path = "support/certkeys.rs"]
mod certkeys;
mod support;

use certkeys::{openssh_line, RawCert};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
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

/// Write a hand-encoded certificate as `forged/NAME-cert.pub`.
fn forge(b: &Bastion, name: &str, blob: &[u8]) -> PathBuf {
    let dir = b.dir.join("forged");
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join(format!("{name}-cert.pub"));
    std::fs::write(&path, openssh_line(blob, name)).expect("write cert");
    path
}

/// The real ssh client, verbose, as alice with `cert`, running `echo in`
/// on web-1. Returns (stdout, stderr, exit status) and where postern's log
/// stood before.
fn ssh_with(b: &Bastion, cert: &Path) -> (String, String, Option<i32>, usize) {
    let before = b.log_text().len();
    let out = b
        .ssh_cmd_logging(b.user("alice"), Some(cert), "qa", "DEBUG1")
        .args(["web-1", "echo in"])
        .output()
        .expect("ssh runs");
    (
        text(&out.stdout),
        text(&out.stderr),
        out.status.code(),
        before,
    )
}

/// Wait for `want` in what postern logged after `before`; returns that log.
fn logged_since(b: &Bastion, before: usize, want: &str) -> String {
    let log = || b.log_text().get(before..).unwrap_or_default().to_string();
    eventually(
        std::time::Duration::from_secs(5),
        &format!("{want:?} in the log"),
        || log().contains(want).then_some(()),
    );
    log()
}

struct AnyHostKey;

impl russh::client::Handler for AnyHostKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// Present `blob` for `login` with alice's key through a russh client,
/// which sends what OpenSSH's client will not load. Returns whether
/// authentication succeeded and where postern's log stood before.
fn present_raw(b: &Bastion, blob: &[u8], login: &str) -> (bool, usize) {
    let before = b.log_text().len();
    let key = russh::keys::PrivateKey::read_openssh_file(&b.user("alice").key).expect("key");
    let cert = russh::keys::Certificate::from_bytes(blob).expect("ssh-key parses it");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let ok = rt.block_on(async {
        let cfg = Arc::new(russh::client::Config::default());
        let mut h = russh::client::connect(cfg, ("127.0.0.1", b.port), AnyHostKey)
            .await
            .expect("connect");
        let r = h
            .authenticate_openssh_cert(login, Arc::new(key), cert)
            .await
            .expect("authentication runs");
        r.success()
    });
    (ok, before)
}

/// Certificates ssh-keygen will not make, hand-encoded per PROTOCOL.certkeys
/// from the fields of a real granted certificate and re-signed with the
/// real CA key, so that the one malformed field is the only difference.
#[test]
fn hand_encoded_certificates() {
    let b = Bastion::start();
    let (_id, good) = b.granted("alice", "qa-shell", "1h", &["bob"]);
    let ca_path = b.dir.join("hostkeys/user_ca");
    let ca = postern::ca::read_key(&ca_path).expect("ca key");
    let issued = russh::keys::Certificate::read_file(&good).expect("granted cert");
    let base = RawCert::from_cert(&issued, &ca);
    let opts = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };

    // Controls: the encoder re-makes the granted certificate exactly, and
    // the same path with each option once is accepted by the real client
    // and postern alike.
    assert_eq!(base.sign(&ca), issued.to_bytes().expect("encode"));
    for (name, options, want) in [
        ("control", opts(&[]), "in"),
        (
            "control-src",
            opts(&[("source-address", "127.0.0.1/32")]),
            "in",
        ),
        (
            "control-fc",
            opts(&[("force-command", "web-1 echo forced-a")]),
            "forced-a",
        ),
    ] {
        let mut raw = base.clone();
        raw.critical_options = options;
        let c = forge(&b, name, &raw.sign(&ca));
        let (out, err, code, _) = ssh_with(&b, &c);
        assert_eq!((out.trim(), code), (want, Some(0)), "{name}: {err}");
    }

    // Duplicate critical options. The OpenSSH client loads and offers the
    // certificate; russh's parser (ssh-key) refuses it before postern's
    // handler runs, so the connection is closed.
    for (name, options) in [
        (
            "dup-src",
            opts(&[
                ("source-address", "127.0.0.1/32"),
                ("source-address", "0.0.0.0/0"),
            ]),
        ),
        (
            "dup-fc",
            opts(&[
                ("force-command", "web-1 echo forced-a"),
                ("force-command", "web-1 echo forced-b"),
            ]),
        ),
    ] {
        let mut raw = base.clone();
        raw.critical_options = options;
        let c = forge(&b, name, &raw.sign(&ca));
        let (out, err, code, before) = ssh_with(&b, &c);
        assert_eq!(code, Some(255), "{name} must be refused: {out}");
        assert!(
            !out.contains("in") && !out.contains("forced"),
            "{name}: {out}"
        );
        assert!(
            err.contains(&format!("Offering public key: {}", c.display())),
            "{name}: the client offers it:\n{err}"
        );
        let log = logged_since(
            &b,
            before,
            "connection ended: SshKey: format encoding error",
        );
        assert!(!log.contains("certificate login"), "{name}:\n{log}");
        // ... and it is still a refused login: logged, audited, counted.
        logged_since(&b, before, "malformed key or certificate");
    }
    let audit = b.ctl(&["audit", "--json"]);
    let events: serde_json::Value = serde_json::from_slice(&audit.stdout).expect("audit json");
    let refusals = events
        .as_array()
        .expect("array")
        .iter()
        .filter(|e| {
            e["kind"] == "login.refused"
                && e["data"]["why"]
                    .as_str()
                    .is_some_and(|w| w.starts_with("malformed key or certificate"))
        })
        .count();
    assert_eq!(refusals, 2, "{events}");

    // A certificate the OpenSSH client will not load: it says so, offers
    // the plain key instead, and postern refuses that. The russh client
    // does send it; what refuses it then is `want` in postern's log.
    let cases = [
        (
            "nul",
            {
                let mut raw = base.clone();
                raw.principals = vec![b"qa\0root".to_vec()];
                raw
            },
            "contains a NUL or control character",
        ),
        (
            "nul-and-qa",
            {
                let mut raw = base.clone();
                raw.principals = vec![b"qa".to_vec(), b"qa\0root".to_vec()];
                raw
            },
            "contains a NUL or control character",
        ),
        (
            // Signed by the real CA key, but its signature key field holds
            // a certificate of that very key (made by the CA itself).
            "ca-is-cert",
            {
                let mut b2 = russh::keys::ssh_key::certificate::Builder::new(
                    vec![1u8; 32],
                    ca.public_key().key_data().clone(),
                    issued.valid_after(),
                    issued.valid_before(),
                )
                .expect("builder");
                b2.cert_type(russh::keys::ssh_key::certificate::CertType::User)
                    .expect("type");
                b2.key_id("ca-as-cert").expect("id");
                b2.valid_principal("qa").expect("principal");
                let ca_cert = b2.sign(&ca).expect("sign");
                let mut raw = base.clone();
                raw.signature_key = ca_cert.to_bytes().expect("encode");
                raw
            },
            // russh's own signature check, before postern's handler (the
            // unit test covers check_certificate's SignedByCertificate).
            "Certificate signature is invalid",
        ),
    ];
    for (name, raw, want) in cases {
        let blob = raw.sign(&ca);
        let c = forge(&b, name, &blob);
        let (out, err, code, before) = ssh_with(&b, &c);
        assert_eq!(code, Some(255), "{name} must be refused: {out}");
        assert!(!out.contains("in"), "{name}: {out}");
        assert!(
            err.contains(&format!("certificate file {} type -1", c.display())),
            "{name}: the client cannot load it:\n{err}"
        );
        assert!(
            !err.contains(&format!("Offering public key: {}", c.display())),
            "{name}: {err}"
        );
        assert!(err.contains("Permission denied"), "{name}: {err}");
        logged_since(&b, before, "plain keys only log in as access");
        let (ok, before) = present_raw(&b, &blob, "qa");
        assert!(!ok, "{name}: the russh client must be refused");
        let log = logged_since(&b, before, want);
        assert!(!log.contains("certificate login"), "{name}:\n{log}");
    }
    // The russh client path itself logs in with a good certificate.
    let (ok, before) = present_raw(&b, &base.sign(&ca), "qa");
    assert!(ok, "control through russh");
    logged_since(&b, before, "certificate login");
}

/// A CA key file that is a certificate is a configuration error: exit 64,
/// naming the file and saying what it is.
#[test]
fn ca_key_that_is_a_certificate_is_a_config_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let out = Command::new(POSTERN)
        .args(["init", "--dir"])
        .arg(dir)
        .output()
        .expect("init");
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The CA's own public key, certified by the CA: user_ca-cert.pub.
    let ca = dir.join("hostkeys/user_ca");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(&ca)
        .args(["-I", "ca-as-cert", "-n", "qa"])
        .arg(ca.with_extension("pub"))
        .output()
        .expect("ssh-keygen -s");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cert = dir.join("hostkeys/user_ca-cert.pub");
    assert!(cert.exists());
    let cfg_path = dir.join("postern.toml");
    let cfg = std::fs::read_to_string(&cfg_path).expect("config");
    assert!(cfg.contains("user_ca = \"hostkeys/user_ca\""));
    let port = free_port();
    let cfg = cfg
        .replace(
            "user_ca = \"hostkeys/user_ca\"",
            "user_ca = \"hostkeys/user_ca-cert.pub\"",
        )
        .replace("127.0.0.1:2222", &format!("127.0.0.1:{port}"))
        + "metrics_listen = \"\"\n";
    std::fs::write(&cfg_path, cfg).expect("config");
    let out = Command::new(POSTERN)
        .args(["serve", "--config"])
        .arg(&cfg_path)
        .output()
        .expect("serve");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains(&cert.display().to_string()), "{err}");
    assert!(
        err.contains("is an OpenSSH certificate, not a private key"),
        "{err}"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}
