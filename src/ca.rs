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
use russh::keys::{Certificate, HashAlg, PrivateKey, PublicKey};

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

/// Read a private key file, naming the file on failure.
pub fn read_key(path: &Path) -> Result<PrivateKey, KeyError> {
    PrivateKey::read_openssh_file(path).map_err(|e| KeyError::File {
        path: path.display().to_string(),
        message: format!("not an OpenSSH private key: {e}"),
    })
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

#[cfg(test)]
mod tests {
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
        let ca = generate_key("ca");
        let other_ca = generate_key("other");
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
            user.public_key().key_data().clone(),
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
            user.public_key().key_data().clone(),
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
}
