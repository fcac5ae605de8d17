//! Reading the PEM files TLS settings name, shared by the sync-service (its
//! certificate, key and client CA) and the gateway (the CA it trusts and its
//! client certificate). Files are read and parsed at start-up, so a missing,
//! unreadable or malformed file stops a program with one line naming its
//! setting rather than failing on the first connection.

use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

/// Reads a PEM file that must hold at least one certificate. Errors start
/// with `setting`.
pub fn read_certificates(path: &Path, setting: &str) -> Result<Vec<u8>, String> {
    let pem = read(path, setting)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("{setting}: {} is not valid PEM", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "{setting}: {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(pem)
}

/// Reads a PEM file that must hold a private key. Errors start with
/// `setting` and never show the key.
pub fn read_private_key(path: &Path, setting: &str) -> Result<Vec<u8>, String> {
    let pem = read(path, setting)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|_| format!("{setting}: {} holds no PEM private key", path.display()))?;
    Ok(pem)
}

/// Makes ring the process's TLS provider: rustls will not pick one itself
/// when a build links more than one. Call before building a TLS config;
/// calling it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read(path: &Path, setting: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path)
        .map_err(|error| format!("{setting}: cannot read {}: {error}", path.display()))
}
