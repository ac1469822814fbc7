//! A minimal blocking HTTP/1.1 client for the tests (no client library needed): GET over
//! plain TCP or TLS (rustls), POST over plain TCP, and the certificate a TLS server
//! presents. Writes nothing.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use anyhow::{Context, Result};

/// Minimal blocking HTTP/1.1 GET over a TCP socket (no client library needed in tests).
pub fn http_get(url: &str, bearer: Option<&str>) -> Result<(u16, Vec<u8>)> {
    let rest = url.strip_prefix("http://").context("only http:// URLs")?;
    let (hostport, path) = split_url(rest);
    let mut s = std::net::TcpStream::connect(hostport)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    exchange(&mut s, hostport, path, bearer)
}

/// [`http_get`] over TLS with rustls, trusting `ca`, presenting `client_cert`
/// (certificate, key) if given.
pub fn https_get(
    url: &str,
    ca: &Path,
    client_cert: Option<(&Path, &Path)>,
    bearer: Option<&str>,
) -> Result<(u16, Vec<u8>)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{PrivateKeyDer, ServerName};
    let rest = url.strip_prefix("https://").context("only https:// URLs")?;
    let (hostport, path) = split_url(rest);
    let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let config = match client_cert {
        Some((cert, key)) => config.with_client_auth_cert(
            CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?,
            PrivateKeyDer::from_pem_file(key)?,
        )?,
        None => config.with_no_client_auth(),
    };
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from(host.to_string())?)?;
    let tcp = std::net::TcpStream::connect(hostport)?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    exchange(&mut s, hostport, path, bearer)
}

/// The end-entity certificate (DER) the TLS server at `hostport` presents to a new
/// connection, read without trusting it: which certificate is served, whoever signed it.
pub fn served_certificate(hostport: &str) -> Result<Vec<u8>> {
    use rustls::pki_types::ServerName;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let seen = Arc::new(Mutex::new(None));
    let verifier = RecordingVerifier {
        provider: provider.clone(),
        seen: seen.clone(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from(host.to_string())?)?;
    let mut tcp = std::net::TcpStream::connect(hostport)?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .with_context(|| format!("TLS handshake with {hostport}"))?;
    }
    let der = seen
        .lock()
        .map_err(|_| anyhow::anyhow!("certificate recorder poisoned"))?
        .take()
        .context("the server presented no certificate")?;
    Ok(der)
}

/// Accepts any server certificate and records the end entity; signatures are still
/// checked against it, so the server must hold the certificate's key.
#[derive(Debug)]
struct RecordingVerifier {
    provider: Arc<CryptoProvider>,
    seen: Arc<Mutex<Option<Vec<u8>>>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(end_entity.to_vec());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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

fn split_url(rest: &str) -> (&str, &str) {
    match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    }
}

/// Sends one GET on `s` and reads the answer until the server closes.
fn exchange(
    s: &mut (impl std::io::Read + std::io::Write),
    hostport: &str,
    path: &str,
    bearer: Option<&str>,
) -> Result<(u16, Vec<u8>)> {
    exchange_with(s, "GET", hostport, path, bearer, None)
}

/// Minimal blocking HTTP/1.1 POST of a JSON body over a TCP socket.
pub fn http_post_json(url: &str, bearer: Option<&str>, body: &str) -> Result<(u16, Vec<u8>)> {
    let rest = url.strip_prefix("http://").context("only http:// URLs")?;
    let (hostport, path) = split_url(rest);
    let mut s = std::net::TcpStream::connect(hostport)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    exchange_with(&mut s, "POST", hostport, path, bearer, Some(body))
}

fn exchange_with(
    s: &mut (impl std::io::Read + std::io::Write),
    method: &str,
    hostport: &str,
    path: &str,
    bearer: Option<&str>,
    json: Option<&str>,
) -> Result<(u16, Vec<u8>)> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n");
    if let Some(t) = bearer {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(body) = json {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(body) = json {
        req.push_str(body);
    }
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    match s.read_to_end(&mut buf) {
        Ok(_) => {}
        // A TLS peer that closes without close_notify, after a complete answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no HTTP header end")?;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .context("no status code")?
        .parse()?;
    let mut body = buf[head_end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body)?;
    }
    Ok((code, body))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let size_txt = String::from_utf8_lossy(&b[..line_end]);
        let size = usize::from_str_radix(size_txt.split(';').next().unwrap_or("0").trim(), 16)?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}
