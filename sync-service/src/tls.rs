//! TLS on the gRPC port: the server certificate and key, and optionally the
//! CA that client certificates must chain to (mutual TLS).

use std::path::PathBuf;

use anyhow::{anyhow, bail};
use clerk_sync_common::tls::{install_crypto_provider, read_certificates, read_private_key};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// Builds the server's TLS settings from the three file settings; `None`
/// when TLS is not configured. Errors name the setting at fault.
pub fn server_config(
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
    client_ca: Option<&PathBuf>,
) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (cert, key) = match (cert, key) {
        (None, None) if client_ca.is_some() => {
            bail!("SYNC_SERVICE_TLS_CLIENT_CA needs SYNC_SERVICE_TLS_CERT and SYNC_SERVICE_TLS_KEY")
        }
        (None, None) => return Ok(None),
        (Some(_), None) => bail!("SYNC_SERVICE_TLS_CERT is set but SYNC_SERVICE_TLS_KEY is not"),
        (None, Some(_)) => bail!("SYNC_SERVICE_TLS_KEY is set but SYNC_SERVICE_TLS_CERT is not"),
        (Some(cert), Some(key)) => (cert, key),
    };
    let cert = read_certificates(cert, "SYNC_SERVICE_TLS_CERT").map_err(|e| anyhow!(e))?;
    let key = read_private_key(key, "SYNC_SERVICE_TLS_KEY").map_err(|e| anyhow!(e))?;
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca) = client_ca {
        let ca = read_certificates(ca, "SYNC_SERVICE_TLS_CLIENT_CA").map_err(|e| anyhow!(e))?;
        config = config.client_ca_root(Certificate::from_pem(ca));
    }
    // Building it once now is what checks that the key fits the certificate.
    install_crypto_provider();
    tonic::transport::Server::builder()
        .tls_config(config.clone())
        .map_err(|error| {
            let cause = std::error::Error::source(&error)
                .map_or_else(|| error.to_string(), ToString::to_string);
            anyhow!("SYNC_SERVICE_TLS_KEY: unusable with SYNC_SERVICE_TLS_CERT: {cause}")
        })?;
    Ok(Some(config))
}
