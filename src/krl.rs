//! OpenSSH key revocation lists (PROTOCOL.krl), so targets that trust the
//! user CA directly can refuse revoked certificates too.
//!
//! Written by hand: no maintained Rust crate writes KRLs, and the subset
//! needed (one CA, a serial list) is a few fixed fields.

use russh::keys::ssh_encoding::Encode;
use russh::keys::PublicKey;

const MAGIC: &[u8] = b"SSHKRL\n\0";
const FORMAT_VERSION: u32 = 1;
const SECTION_CERTIFICATES: u8 = 1;
const CERT_SERIAL_LIST: u8 = 0x20;

/// Encode a KRL revoking `serials` of certificates signed by `ca`.
pub fn encode(ca: &PublicKey, serials: &[u64]) -> Result<Vec<u8>, String> {
    let mut ca_blob = Vec::new();
    ca.key_data()
        .encode(&mut ca_blob)
        .map_err(|e| e.to_string())?;
    let now = crate::ca::now_secs();

    let mut list = Vec::new();
    for s in serials {
        list.extend_from_slice(&s.to_be_bytes());
    }
    let mut certs = Vec::new();
    put_string(&mut certs, &ca_blob);
    put_string(&mut certs, b""); // reserved
    if !serials.is_empty() {
        certs.push(CERT_SERIAL_LIST);
        put_string(&mut certs, &list);
    }

    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&now.to_be_bytes()); // krl_version: increases over time
    out.extend_from_slice(&now.to_be_bytes()); // generated_date
    out.extend_from_slice(&0u64.to_be_bytes()); // flags
    put_string(&mut out, b""); // reserved
    put_string(&mut out, b"postern revoked grants");
    out.push(SECTION_CERTIFICATES);
    put_string(&mut out, &certs);
    Ok(out)
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}
