//! The certificate authority: key files, issuing user certificates and
//! deciding whether a presented certificate counts.
//!
//! russh checks a certificate's signature and validity window, not *who*
//! signed it; [`check_certificate`] is where postern decides the rest.

use std::net::IpAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;
use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, Certificate, HashAlg, PrivateKey, PublicKey};

/// Critical options postern understands; any other refuses the certificate.
pub const KNOWN_CRITICAL_OPTIONS: &[&str] = &["source-address", "force-command"];

/// OpenSSH refuses certificates with more principals than this.
pub const MAX_PRINCIPALS: usize = 256;

/// How far `valid_after` is backdated for clocks that run behind.
pub const CLOCK_SKEW_SECS: u64 = 300;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

/// A fresh Ed25519 key.
pub fn generate_key(comment: &str) -> PrivateKey {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment(comment);
    key
}

/// Write `key` to `path` (mode 0600) unless a file is already there.
/// Returns whether it wrote.
pub fn write_key_if_absent(path: &Path, comment: &str) -> Result<bool, KeyError> {
    let fail = |message: String| KeyError::File {
        path: path.display().to_string(),
        message,
    };
    if path.exists() {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    }
    let key = generate_key(comment);
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| fail(e.to_string()))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| fail(e.to_string()))?;
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| fail(e.to_string()))?;
        f.write_all(pem.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let pub_path = path.with_extension(match path.extension() {
        Some(x) => format!("{}.pub", x.to_string_lossy()),
        None => "pub".into(),
    });
    if !pub_path.exists() {
        std::fs::write(&pub_path, format!("{public}\n")).map_err(|e| fail(e.to_string()))?;
    }
    Ok(true)
}

/// Read a private key file, naming the file on failure. A certificate or
/// a public key where a private key belongs gets said so plainly: a CA key
/// that is itself a certificate is a configuration mistake, never a chain
/// postern follows.
pub fn read_key(path: &Path) -> Result<PrivateKey, KeyError> {
    let fail = |message: String| KeyError::File {
        path: path.display().to_string(),
        message,
    };
    let key = PrivateKey::read_openssh_file(path).map_err(|e| {
        // Not a private key: say what it is instead, if it is a known thing.
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let text = text.trim();
        fail(if Certificate::from_openssh(text).is_ok() {
            "is an OpenSSH certificate, not a private key (name the key file, not its -cert.pub)"
                .to_string()
        } else if PublicKey::from_openssh(text).is_ok() {
            "is a public key, not a private key".to_string()
        } else {
            format!("not an OpenSSH private key: {e}")
        })
    })?;
    if key.public_key().key_data().is_certificate() {
        return Err(fail(
            "holds a certificate, not a plain private key".to_string(),
        ));
    }
    if let Algorithm::Other(name) = key.algorithm() {
        return Err(fail(format!("unsupported key type {}", name.as_str())));
    }
    Ok(key)
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What a certificate is issued for.
pub struct CertRequest<'a> {
    pub key: &'a PublicKey,
    pub serial: u64,
    pub key_id: String,
    pub principals: &'a [String],
    pub valid_after: u64,
    pub valid_before: u64,
    pub permit_port_forwarding: bool,
}

/// Sign a user certificate with the CA key.
pub fn issue(ca: &PrivateKey, req: &CertRequest<'_>) -> Result<Certificate, String> {
    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let e = |e: russh::keys::ssh_key::Error| format!("cannot build certificate: {e}");
    let mut b = Builder::new(
        nonce.to_vec(),
        req.key.key_data().clone(),
        req.valid_after.saturating_sub(CLOCK_SKEW_SECS),
        req.valid_before,
    )
    .map_err(e)?;
    b.serial(req.serial).map_err(e)?;
    b.cert_type(CertType::User).map_err(e)?;
    b.key_id(req.key_id.clone()).map_err(e)?;
    for p in req.principals {
        b.valid_principal(p.clone()).map_err(e)?;
    }
    b.extension("permit-pty", "").map_err(e)?;
    if req.permit_port_forwarding {
        b.extension("permit-port-forwarding", "").map_err(e)?;
    }
    b.sign(ca).map_err(e)
}

/// Why a certificate does not count.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertRefusal {
    #[error("not signed by this bastion's user CA")]
    WrongCa,
    #[error("a host certificate, not a user certificate")]
    NotUserCert,
    #[error("names no principals")]
    NoPrincipals,
    #[error("login {0:?} is not among its principals")]
    WrongPrincipal(String),
    #[error("outside its validity window")]
    OutsideWindow,
    #[error("unknown critical option {0:?}")]
    UnknownCriticalOption(String),
    #[error("source-address {0:?} does not allow client {1}")]
    SourceAddress(String, String),
    #[error("bad signature")]
    BadSignature,
    #[error("names {0} principals (at most 256)")]
    TooManyPrincipals(usize),
    #[error("principal {0:?} contains a NUL or control character")]
    ControlCharInPrincipal(String),
    #[error("signed by a certificate, not by a CA key")]
    SignedByCertificate,
}

/// Decide whether `cert`, presented for `login` from `client`, is one this
/// CA issued and still counts. The grant lookup comes after this.
pub fn check_certificate(
    cert: &Certificate,
    ca: &PublicKey,
    login: &str,
    client: Option<IpAddr>,
    now: u64,
) -> Result<(), CertRefusal> {
    // OpenSSH refuses a certificate as a CA key outright; so does postern,
    // whatever the key inside it, rather than count on it never matching.
    if cert.signature_key().is_certificate() {
        return Err(CertRefusal::SignedByCertificate);
    }
    if cert.signature_key() != ca.key_data() {
        return Err(CertRefusal::WrongCa);
    }
    let ca_fp = ca.fingerprint(HashAlg::Sha256);
    if cert.validate_at(now, [&ca_fp]).is_err() {
        return Err(if cert.verify_signature().is_err() {
            CertRefusal::BadSignature
        } else {
            CertRefusal::OutsideWindow
        });
    }
    if cert.cert_type() != CertType::User {
        return Err(CertRefusal::NotUserCert);
    }
    if cert.valid_principals().is_empty() {
        return Err(CertRefusal::NoPrincipals);
    }
    if cert.valid_principals().len() > MAX_PRINCIPALS {
        return Err(CertRefusal::TooManyPrincipals(
            cert.valid_principals().len(),
        ));
    }
    // OpenSSH will not even load a certificate with a NUL in a principal
    // (C strings would cut it short); refuse it rather than compare it.
    if let Some(p) = cert
        .valid_principals()
        .iter()
        .find(|p| p.chars().any(char::is_control))
    {
        return Err(CertRefusal::ControlCharInPrincipal(p.clone()));
    }
    if !cert.valid_principals().iter().any(|p| p == login) {
        return Err(CertRefusal::WrongPrincipal(login.to_string()));
    }
    for (name, value) in cert.critical_options().iter() {
        match name.as_str() {
            // Honoured by the session: only that command may run.
            "force-command" => {}
            "source-address" => {
                let ok = client.is_some_and(|ip| source_address_allows(value, ip));
                if !ok {
                    let who = client.map_or("unknown".to_string(), |ip| ip.to_string());
                    return Err(CertRefusal::SourceAddress(value.clone(), who));
                }
            }
            other => return Err(CertRefusal::UnknownCriticalOption(other.to_string())),
        }
    }
    Ok(())
}

/// `source-address` is a comma-separated list of addresses or CIDR blocks.
pub fn source_address_allows(list: &str, ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    list.split(',').any(|entry| {
        let entry = entry.trim();
        let (addr, bits) = match entry.split_once('/') {
            Some((a, b)) => (a, b.parse::<u32>().ok()),
            None => (entry, None),
        };
        let Ok(net) = addr.parse::<IpAddr>() else {
            return false;
        };
        match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                let bits = bits.unwrap_or(32);
                bits <= 32 && mask_eq(u32::from(n).into(), u32::from(i).into(), bits, 32)
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                let bits = bits.unwrap_or(128);
                bits <= 128 && mask_eq(u128::from(n), u128::from(i), bits, 128)
            }
            _ => false,
        }
    })
}

fn mask_eq(a: u128, b: u128, bits: u32, width: u32) -> bool {
    if bits == 0 {
        return true;
    }
    let shift = width - bits;
    (a >> shift) == (b >> shift)
}

/// The hand encoder the certificate tests share with `tests/certs.rs`.
#[cfg(test)]
#[path = "../tests/support/certkeys.rs"]
mod certkeys;

#[cfg(test)]
mod tests {
    use super::certkeys::RawCert;
    use super::*;

    #[test]
    fn source_address_cidrs() {
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        assert!(source_address_allows("127.0.0.0/8", ip));
        assert!(source_address_allows("10.0.0.1,127.0.0.1", ip));
        assert!(!source_address_allows("10.0.0.0/8", ip));
        assert!(!source_address_allows("garbage", ip));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("ip");
        assert!(source_address_allows("127.0.0.1/32", mapped));
    }

    #[test]
    fn issued_certificate_checks_out_and_others_do_not() {
        let (ca, cert) = qa_cert();
        let other_ca = generate_key("other");
        let now = now_secs();
        assert_eq!(
            check_certificate(&cert, ca.public_key(), "qa", None, now),
            Ok(())
        );
        assert_eq!(
            check_certificate(&cert, ca.public_key(), "root", None, now),
            Err(CertRefusal::WrongPrincipal("root".into()))
        );
        assert_eq!(
            check_certificate(&cert, other_ca.public_key(), "qa", None, now),
            Err(CertRefusal::WrongCa)
        );
        assert_eq!(
            check_certificate(&cert, ca.public_key(), "qa", None, now + 7200),
            Err(CertRefusal::OutsideWindow)
        );
        assert!(cert.extensions().contains_key("permit-pty"));

        // The same fields as a host certificate.
        let mut b = Builder::new(
            vec![0u8; 32],
            cert.public_key().clone(),
            now - 10,
            now + 3600,
        )
        .expect("builder");
        b.serial(7).expect("serial");
        b.cert_type(CertType::Host).expect("type");
        b.key_id("host").expect("id");
        b.valid_principal("qa").expect("principal");
        let host = b.sign(&ca).expect("sign");
        assert_eq!(
            check_certificate(&host, ca.public_key(), "qa", None, now),
            Err(CertRefusal::NotUserCert)
        );
        assert!(!cert.extensions().contains_key("permit-port-forwarding"));

        // 257 principals.
        let mut b = Builder::new(
            vec![0u8; 32],
            cert.public_key().clone(),
            now - 10,
            now + 3600,
        )
        .expect("builder");
        b.cert_type(CertType::User).expect("type");
        for i in 0..257 {
            b.valid_principal(format!("p{i}")).expect("principal");
        }
        let many = b.sign(&ca).expect("sign");
        assert_eq!(
            check_certificate(&many, ca.public_key(), "p1", None, now),
            Err(CertRefusal::TooManyPrincipals(257))
        );
    }

    /// A live-looking user certificate for "qa" and the CA that signed it.
    fn qa_cert() -> (PrivateKey, Certificate) {
        let ca = generate_key("ca");
        let user = generate_key("u");
        let principals = vec!["qa".to_string()];
        let now = now_secs();
        let req = CertRequest {
            key: user.public_key(),
            serial: 7,
            key_id: "alice/req".into(),
            principals: &principals,
            valid_after: now,
            valid_before: now + 3600,
            permit_port_forwarding: false,
        };
        let cert = issue(&ca, &req).expect("issue");
        (ca, cert)
    }

    fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn hand_encoded_certificate_is_the_issued_one() {
        let (ca, cert) = qa_cert();
        let blob = RawCert::from_cert(&cert, &ca).sign(&ca);
        // Ed25519 signatures are deterministic: byte for byte the same.
        assert_eq!(blob, cert.to_bytes().expect("encode"));
        let again = Certificate::from_bytes(&blob).expect("parses");
        assert_eq!(
            check_certificate(&again, ca.public_key(), "qa", None, now_secs()),
            Ok(())
        );
    }

    #[test]
    fn duplicate_critical_options_do_not_parse() {
        let (ca, cert) = qa_cert();
        let local: IpAddr = "127.0.0.1".parse().expect("ip");
        let raw = RawCert::from_cert(&cert, &ca);
        // Control: each option once, as the duplicates below have them.
        for once in [
            opts(&[("source-address", "127.0.0.1/32")]),
            opts(&[("force-command", "web-1 echo a")]),
            opts(&[
                ("force-command", "web-1 echo a"),
                ("source-address", "127.0.0.1/32"),
            ]),
        ] {
            let mut r = raw.clone();
            r.critical_options = once.clone();
            let c = Certificate::from_bytes(&r.sign(&ca)).expect("parses");
            assert_eq!(
                check_certificate(&c, ca.public_key(), "qa", Some(local), now_secs()),
                Ok(()),
                "{once:?}"
            );
        }
        // Twice: ssh-key's decoder, which russh runs on the offered key
        // before postern's handler is called, refuses the certificate, so
        // the connection ends and check_certificate never sees it.
        for twice in [
            opts(&[
                ("source-address", "127.0.0.1/32"),
                ("source-address", "0.0.0.0/0"),
            ]),
            opts(&[
                ("force-command", "web-1 echo a"),
                ("force-command", "web-1 echo b"),
            ]),
        ] {
            let mut r = raw.clone();
            r.critical_options = twice.clone();
            assert!(
                Certificate::from_bytes(&r.sign(&ca)).is_err(),
                "{twice:?} must not parse"
            );
        }
    }

    #[test]
    fn nul_in_a_principal_is_refused() {
        let (ca, cert) = qa_cert();
        let now = now_secs();
        for principals in [vec!["qa\0root"], vec!["qa", "qa\0root"]] {
            let mut r = RawCert::from_cert(&cert, &ca);
            r.principals = principals.iter().map(|p| p.as_bytes().to_vec()).collect();
            let c = Certificate::from_bytes(&r.sign(&ca)).expect("parses");
            assert_eq!(
                check_certificate(&c, ca.public_key(), "qa", None, now),
                Err(CertRefusal::ControlCharInPrincipal("qa\0root".into())),
                "{principals:?}"
            );
        }
    }

    #[test]
    fn a_certificate_as_the_signature_key_is_refused() {
        let (ca, cert) = qa_cert();
        let now = now_secs();
        // The CA's own key, certified by the CA: inside it is the right key.
        let mut b = Builder::new(
            vec![1u8; 32],
            ca.public_key().key_data().clone(),
            now - 10,
            now + 3600,
        )
        .expect("builder");
        b.cert_type(CertType::User).expect("type");
        b.key_id("ca-as-cert").expect("id");
        b.valid_principal("qa").expect("principal");
        let ca_cert = b.sign(&ca).expect("sign");
        let mut r = RawCert::from_cert(&cert, &ca);
        r.signature_key = ca_cert.to_bytes().expect("encode");
        let c = Certificate::from_bytes(&r.sign(&ca)).expect("parses");
        assert!(c.signature_key().is_certificate());
        assert_eq!(
            check_certificate(&c, ca.public_key(), "qa", None, now),
            Err(CertRefusal::SignedByCertificate)
        );
        // russh's own signature check (before the handler) fails too.
        assert!(c.verify_signature().is_err());
    }

    #[test]
    fn read_key_says_what_a_wrong_file_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, cert) = qa_cert();
        let cert_file = dir.path().join("user_ca-cert.pub");
        std::fs::write(&cert_file, cert.to_openssh().expect("openssh")).expect("write");
        let pub_file = dir.path().join("user_ca.pub");
        std::fs::write(&pub_file, ca.public_key().to_openssh().expect("openssh")).expect("write");
        for (file, want) in [
            (&cert_file, "is an OpenSSH certificate, not a private key"),
            (&pub_file, "is a public key, not a private key"),
        ] {
            let e = read_key(file).expect_err("not a private key").to_string();
            assert!(e.contains(want), "{e}");
            assert!(e.starts_with(&file.display().to_string()), "{e}");
        }
    }
}
