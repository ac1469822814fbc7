//! TLS for the replication connection: the byte stream (TCP, Unix socket or TLS over TCP),
//! the rustls client configuration built from the conninfo's `sslmode`/`sslrootcert`/
//! `sslcert`/`sslkey` with libpq's semantics, and the server-certificate verifier.
//! Reads certificate and key files; writes nothing.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;

use super::PgError;
use crate::conninfo::{home_dir, ConnInfo, SslMode, SYSTEM_ROOTS};

/// The connection's byte stream.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Stream {
    /// The server's certificate (DER), on a TLS stream.
    pub(crate) fn peer_certificate(&self) -> Option<&[u8]> {
        match self {
            Stream::Tls(tls) => tls.get_ref().1.peer_certificates()?.first().map(|c| &c[..]),
            Stream::Tcp(_) | Stream::Unix(_) => None,
        }
    }

    /// The socket under the stream.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
            Stream::Tls(tls) => tls.get_ref().0.as_fd(),
        }
    }
}

/// How the server certificate is checked, after libpq's rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verification {
    /// Encrypt only (`require`, `prefer`, `allow` without a root certificate).
    None,
    /// Chain to `sslrootcert`, no name check (`verify-ca`, or `require` with a root cert).
    Chain,
    /// Chain and host name (`verify-full`, or `require` with `sslrootcert=system`).
    Full,
}

/// Everything needed to start TLS on a connected socket.
pub(crate) struct TlsSetup {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    pub(crate) verification: Verification,
    #[cfg(test)]
    verifier: Arc<PgCertVerifier>,
}

impl TlsSetup {
    /// Builds the rustls configuration for `info`, reading the certificate files.
    pub(crate) fn new(info: &ConnInfo) -> Result<TlsSetup, PgError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = load_roots(info)?;
        let system_roots = info.sslrootcert.as_deref() == Some(Path::new(SYSTEM_ROOTS));
        let verification = match (info.sslmode, &roots) {
            (SslMode::VerifyFull, Some(_)) => Verification::Full,
            (SslMode::VerifyCa, Some(_)) => Verification::Chain,
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(PgError::Config(format!(
                    "sslmode={} needs the CA certificate that signed the server's certificate: \
                     set sslrootcert in the cluster conninfo (~/.postgresql/root.crt does not \
                     exist)",
                    info.sslmode
                )))
            }
            // Any publicly trusted certificate chains to the system roots: only the host
            // name identifies the server (libpq 16 accepts nothing weaker with them).
            (SslMode::Require, Some(_)) if system_roots => Verification::Full,
            // libpq: with a root certificate present, `require` verifies like `verify-ca`.
            (SslMode::Require, Some(_)) => Verification::Chain,
            _ => Verification::None,
        };
        let server_name = match info.tls_server_name() {
            Some(name) => match ServerName::try_from(name.clone()) {
                Ok(sn) => sn,
                Err(_) if verification != Verification::Full => placeholder_name(),
                Err(_) => {
                    return Err(PgError::Config(format!(
                        "sslmode={}: host \"{name}\" is not a valid DNS name or IP address to \
                         check the server certificate against",
                        info.sslmode
                    )))
                }
            },
            None if verification == Verification::Full => {
                return Err(PgError::Config(format!(
                    "sslmode={} checks the host name in the server certificate: set host",
                    info.sslmode
                )))
            }
            None => placeholder_name(),
        };
        let verifier = Arc::new(PgCertVerifier {
            roots: if verification == Verification::None {
                None
            } else {
                roots.map(Arc::new)
            },
            check_name: verification == Verification::Full,
            provider: provider.clone(),
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PgError::Tls(format!("cannot configure TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone());
        let mut config = match load_client_cert(info)? {
            Some((certs, key)) => builder.with_client_auth_cert(certs, key).map_err(|e| {
                PgError::Tls(format!(
                    "client certificate and key do not fit together or are unusable: {e}"
                ))
            })?,
            None => builder.with_no_client_auth(),
        };
        // PostgreSQL 17+ checks ALPN when the client offers it; older servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(TlsSetup {
            config: Arc::new(config),
            server_name,
            verification,
            #[cfg(test)]
            verifier,
        })
    }

    /// Runs the TLS handshake on `tcp` (after the server accepted the SSLRequest).
    pub(crate) async fn handshake(
        &self,
        tcp: TcpStream,
        target: &str,
        sslmode: SslMode,
    ) -> Result<Stream, PgError> {
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        match connector.connect(self.server_name.clone(), tcp).await {
            Ok(tls) => Ok(Stream::Tls(Box::new(tls))),
            Err(e) => {
                let advice = if e.to_string().contains("certificate") {
                    match self.verification {
                        Verification::Full => {
                            ": check that sslrootcert holds the CA that signed the server \
                             certificate and that the certificate names this host"
                        }
                        _ => {
                            ": check that sslrootcert holds the CA that signed the server \
                             certificate, and sslcert/sslkey if the server requires a client \
                             certificate"
                        }
                    }
                } else {
                    ""
                };
                Err(PgError::Tls(format!(
                    "TLS handshake with {target} failed (sslmode={sslmode}): {e}{advice}"
                )))
            }
        }
    }
}

fn placeholder_name() -> ServerName<'static> {
    ServerName::try_from("localhost").expect("static name is valid")
}

fn default_file(name: &str) -> Option<PathBuf> {
    home_dir()
        .map(|h| h.join(".postgresql").join(name))
        .filter(|p| p.exists())
}

/// `sslrootcert` (or `system`), else libpq's default `~/.postgresql/root.crt` if it exists.
fn load_roots(info: &ConnInfo) -> Result<Option<RootCertStore>, PgError> {
    if info.sslrootcert.as_deref() == Some(Path::new(SYSTEM_ROOTS)) {
        let mut store = RootCertStore::empty();
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(Some(store));
    }
    let path = match &info.sslrootcert {
        Some(p) => p.clone(),
        None => match default_file("root.crt") {
            Some(p) => p,
            None => return Ok(None),
        },
    };
    let certs = read_certs(&path, "sslrootcert")?;
    let mut store = RootCertStore::empty();
    let (added, ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(PgError::Tls(format!(
            "sslrootcert {}: no usable CA certificate ({ignored} unparsable)",
            path.display()
        )));
    }
    Ok(Some(store))
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, PgError> {
    let pem = std::fs::read(path)
        .map_err(|e| PgError::Tls(format!("cannot read {what} {}: {e}", path.display())))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PgError::Tls(format!("{what} {}: invalid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(PgError::Tls(format!(
            "{what} {}: no PEM certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

type ClientCert = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// `sslcert` + `sslkey`, else libpq's defaults `~/.postgresql/postgresql.{crt,key}` if they
/// exist. An explicitly named file that is missing is an error (libpq would skip it silently).
fn load_client_cert(info: &ConnInfo) -> Result<Option<ClientCert>, PgError> {
    let cert_path = match &info.sslcert {
        Some(p) => p.clone(),
        None => match default_file("postgresql.crt") {
            Some(p) => p,
            None => return Ok(None),
        },
    };
    let key_path = match &info.sslkey {
        Some(p) => p.clone(),
        None => cert_path
            .parent()
            .map(|d| d.join("postgresql.key"))
            .filter(|_| info.sslcert.is_none())
            .ok_or_else(|| {
                PgError::Config(format!(
                    "sslcert {} is set but sslkey is not: set sslkey to its private key",
                    cert_path.display()
                ))
            })?,
    };
    let certs = read_certs(&cert_path, "sslcert")?;
    warn_on_key_permissions(&key_path);
    let pem = std::fs::read(&key_path)
        .map_err(|e| PgError::Tls(format!("cannot read sslkey {}: {e}", key_path.display())))?;
    let key = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| PgError::Tls(format!("sslkey {}: invalid PEM: {e}", key_path.display())))?
        .ok_or_else(|| {
            PgError::Tls(format!(
                "sslkey {}: no unencrypted PKCS#8, PKCS#1 (RSA) or SEC1 (EC) private key found",
                key_path.display()
            ))
        })?;
    Ok(Some((certs, key)))
}

/// libpq refuses keys readable by others; Klio warns (Kubernetes secret mounts vary).
fn warn_on_key_permissions(path: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode();
    let too_open = if meta.uid() == 0 {
        mode & 0o037 != 0
    } else {
        mode & 0o077 != 0
    };
    if too_open {
        tracing::warn!(
            sslkey = %path.display(),
            mode = format!("{:o}", mode & 0o777),
            "private key file has group or world access; permissions should be u=rw (0600) or \
             less (libpq would refuse it)"
        );
    }
}

/// Verifies the server certificate as libpq's sslmode says: not at all (but the handshake
/// signature is still checked, so the peer holds the key of the certificate it sent), against
/// the root store, or against the root store and the host name (DNS or IP SANs).
#[derive(Debug)]
struct PgCertVerifier {
    roots: Option<Arc<RootCertStore>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PgCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if self.check_name {
            verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(conninfo: &str) -> TlsSetup {
        let info = ConnInfo::parse(conninfo).unwrap();
        TlsSetup::new(&info).unwrap_or_else(|e| panic!("{conninfo}: {e}"))
    }

    #[test]
    fn system_roots_check_the_host_name_even_with_sslmode_require() {
        for conninfo in [
            "host=db.example user=u sslrootcert=system sslmode=require",
            "host=db.example user=u sslrootcert=system sslmode=verify-full",
            "host=db.example user=u sslrootcert=system",
        ] {
            let tls = setup(conninfo);
            assert_eq!(tls.verification, Verification::Full, "{conninfo}");
            assert!(
                tls.verifier.check_name && tls.verifier.roots.is_some(),
                "{conninfo}: the verifier checks chain and host name"
            );
            assert_eq!(
                tls.server_name,
                ServerName::try_from("db.example").unwrap(),
                "{conninfo}: checked against the conninfo's host"
            );
        }
    }
}
