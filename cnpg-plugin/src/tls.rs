//! mTLS for the operator-side listener, as CloudNativePG's own plugins do it: TLS 1.3
//! only, the client must present a certificate, and each side trusts the other's
//! self-signed leaf (the `cnpg.io/pluginClientSecret` and `cnpg.io/pluginServerSecret`
//! Secrets, e.g. issued by a cert-manager self-signed Issuer). The files are read again
//! for every connection, so a renewed certificate is used without a restart. Reads the
//! three files; writes nothing.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// Where the operator-side listener finds its certificate and the client's.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// This server's certificate (PEM, `tls.crt` of the server Secret).
    pub server_cert: PathBuf,
    /// Its private key (PEM, `tls.key`).
    pub server_key: PathBuf,
    /// The certificate(s) a client must present (PEM, `tls.crt` of the client Secret).
    pub client_cert: PathBuf,
}

/// A TLS set-up failure: names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}; check the --server-cert/--server-key/--client-cert paths and the mounted Secrets")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} holds no {what} in PEM form; mount the `tls.crt`/`tls.key` of the plugin's Secrets"
    )]
    Empty { path: String, what: &'static str },
    #[error("the TLS configuration is refused: {0}")]
    Config(String),
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The certificates in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut BufReader::new(&pem[..]))
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.display().to_string(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem(path)?;
    rustls_pemfile::private_key(&mut BufReader::new(&pem[..]))
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::Empty {
            path: path.display().to_string(),
            what: "private key",
        })
}

impl TlsFiles {
    /// A server configuration from the files as they are now: TLS 1.3 only, client
    /// certificate required and checked against the client's certificate, ALPN `h2`.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for c in load_certs(&self.client_cert)? {
            roots
                .add(c)
                .map_err(|e| TlsError::Config(format!("{}: {e}", self.client_cert.display())))?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(load_certs(&self.server_cert)?, load_key(&self.server_key)?)
            .map_err(|e| {
                TlsError::Config(format!(
                    "{} and {} are not a certificate and its key: {e}",
                    self.server_cert.display(),
                    self.server_key.display()
                ))
            })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_wrong_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            server_cert: dir.path().join("server.crt"),
            server_key: dir.path().join("server.key"),
            client_cert: dir.path().join("client.crt"),
        };
        let e = files.server_config().unwrap_err().to_string();
        assert!(
            e.contains("client.crt") && e.contains("--client-cert"),
            "{e}"
        );
        std::fs::write(&files.client_cert, "not a certificate").unwrap();
        let e = files.server_config().unwrap_err().to_string();
        assert!(
            e.contains("client.crt") && e.contains("no certificate"),
            "{e}"
        );
    }
}
