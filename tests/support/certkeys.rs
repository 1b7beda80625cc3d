//! A hand encoder for `ssh-ed25519-cert-v01@openssh.com` certificates, per
//! OpenSSH's PROTOCOL.certkeys, for certificates that ssh-keygen and
//! ssh-key's builder refuse to make: duplicate critical options, a NUL in
//! a principal, a certificate as the signature key. Shared by
//! `tests/certs.rs` and the unit tests in `src/ca.rs`.

#![allow(dead_code)]

use base64::Engine;
use russh::keys::signature::Signer;
use russh::keys::ssh_key::public::KeyData;
use russh::keys::ssh_key::Signature;
use russh::keys::{Certificate, PrivateKey};

pub const ED25519_CERT: &str = "ssh-ed25519-cert-v01@openssh.com";

/// Every field of a certificate, as raw as the wire has them: options are
/// kept in the given order (duplicates allowed), principals are bytes.
#[derive(Clone, Debug)]
pub struct RawCert {
    pub nonce: Vec<u8>,
    /// The certified Ed25519 public key.
    pub public_key: [u8; 32],
    pub serial: u64,
    /// 1 = user, 2 = host.
    pub cert_type: u32,
    pub key_id: String,
    pub principals: Vec<Vec<u8>>,
    pub valid_after: u64,
    pub valid_before: u64,
    pub critical_options: Vec<(String, String)>,
    pub extensions: Vec<(String, String)>,
    /// The encoded signing key: normally the CA's public key blob.
    pub signature_key: Vec<u8>,
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_u32(out, u32::try_from(s.len()).expect("short string"));
    out.extend_from_slice(s);
}

/// Name/value pairs: each value is itself a string inside a string (empty
/// values are an empty string), the whole list one string.
fn put_options(out: &mut Vec<u8>, options: &[(String, String)]) {
    let mut list = Vec::new();
    for (name, value) in options {
        put_string(&mut list, name.as_bytes());
        if value.is_empty() {
            put_string(&mut list, b"");
        } else {
            let mut inner = Vec::new();
            put_string(&mut inner, value.as_bytes());
            put_string(&mut list, &inner);
        }
    }
    put_string(out, &list);
}

impl RawCert {
    /// The fields of a parsed certificate, signed by `ca` again on
    /// [`RawCert::sign`].
    pub fn from_cert(cert: &Certificate, ca: &PrivateKey) -> RawCert {
        let KeyData::Ed25519(pk) = cert.public_key() else {
            panic!("an Ed25519 certificate");
        };
        RawCert {
            nonce: cert.nonce().to_vec(),
            public_key: pk.0,
            serial: cert.serial(),
            cert_type: u32::from(cert.cert_type()),
            key_id: cert.key_id().to_string(),
            principals: cert
                .valid_principals()
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect(),
            valid_after: cert.valid_after(),
            valid_before: cert.valid_before(),
            critical_options: cert
                .critical_options()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            extensions: cert
                .extensions()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            signature_key: ca.public_key().to_bytes().expect("CA public key blob"),
        }
    }

    /// Everything up to and including the signature key: what the CA signs.
    pub fn to_be_signed(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_string(&mut out, ED25519_CERT.as_bytes());
        put_string(&mut out, &self.nonce);
        put_string(&mut out, &self.public_key);
        out.extend_from_slice(&self.serial.to_be_bytes());
        put_u32(&mut out, self.cert_type);
        put_string(&mut out, self.key_id.as_bytes());
        let mut principals = Vec::new();
        for p in &self.principals {
            put_string(&mut principals, p);
        }
        put_string(&mut out, &principals);
        out.extend_from_slice(&self.valid_after.to_be_bytes());
        out.extend_from_slice(&self.valid_before.to_be_bytes());
        put_options(&mut out, &self.critical_options);
        put_options(&mut out, &self.extensions);
        put_string(&mut out, b""); // reserved
        put_string(&mut out, &self.signature_key);
        out
    }

    /// The whole certificate blob, signed with `signer`.
    pub fn sign(&self, signer: &PrivateKey) -> Vec<u8> {
        let mut out = self.to_be_signed();
        let sig: Signature = signer.try_sign(&out).expect("sign");
        let mut sig_blob = Vec::new();
        put_string(&mut sig_blob, sig.algorithm().as_str().as_bytes());
        put_string(&mut sig_blob, sig.as_bytes());
        put_string(&mut out, &sig_blob);
        out
    }
}

/// A certificate blob as a `-cert.pub` line.
pub fn openssh_line(blob: &[u8], comment: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(blob);
    format!("{ED25519_CERT} {b64} {comment}\n")
}
