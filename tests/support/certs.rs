//! Certificates made at test time (never committed): a CA, a server
//! certificate for 127.0.0.1 signed by it, a client certificate signed by it,
//! and a client certificate from an unrelated CA. Written as PEM files into
//! a temporary directory, as an operator would have them. Included with
//! `#[path]` by each test binary that needs it.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// PEM files in a temporary directory that lives as long as this value.
pub(crate) struct TestCerts {
    dir: tempfile::TempDir,
}

impl TestCerts {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = Self { dir };
        let ca = certs.ca("clerk-sync test CA", "ca");
        certs.leaf(&ca, "server", vec!["127.0.0.1".into(), "localhost".into()]);
        certs.leaf(&ca, "client", vec!["gateway.internal".into()]);
        let other_ca = certs.ca("some other CA", "other-ca");
        certs.leaf(&other_ca, "other-client", vec!["gateway.internal".into()]);
        certs
    }

    /// `<name>.pem` (a certificate) or `<name>-key.pem` (its key).
    pub(crate) fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn write(&self, file: &str, pem: &str) {
        std::fs::write(self.path(file), pem).unwrap();
    }

    fn ca(&self, common_name: &str, name: &str) -> Issuer<'static, KeyPair> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let cert = params.self_signed(&key).unwrap();
        self.write(&format!("{name}.pem"), &cert.pem());
        Issuer::new(params, key)
    }

    fn leaf(&self, issuer: &Issuer<'static, KeyPair>, name: &str, names: Vec<String>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, issuer).unwrap();
        self.write(&format!("{name}.pem"), &cert.pem());
        self.write(&format!("{name}-key.pem"), &key.serialize_pem());
    }
}
