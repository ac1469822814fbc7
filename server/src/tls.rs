//! TLS for the HTTP API: the server's certificate and key, optional verification of
//! client certificates (mTLS), the listener that completes handshakes before axum sees a
//! connection, and the mapping from a verified client certificate to the clusters it
//! speaks for.
//!
//! A client certificate names a cluster the way CloudNativePG issues them: subject
//! `CN=user@cluster` (e.g. `streaming_replica@pg-main`), or a DNS subject alternative
//! name whose first label is the cluster (`pg-main`, `pg-main.klio.svc`). A CN without
//! `@` names no cluster. Whether the named cluster exists is decided by the caller
//! (`http.rs`). Reads the PEM files named in `[tls]`; writes nothing to disk.
//!
//! The files are watched: when any of them changes (a renewed certificate, a Kubernetes
//! Secret update), the next connection after at most [`RELOAD_CHECK`] is served with
//! the new set. A set that does not load (a key that does not match, a half-written
//! file) is logged and the previous one stays in use until the files change again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use klio_core::ClusterName;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often (at most) the accept loop looks at the TLS files for changes.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// The API's TLS settings (`[tls]`), with the files already loaded.
#[derive(Clone)]
pub struct ApiTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA whose client certificates are accepted as credentials (mTLS).
    pub client_ca_file: Option<PathBuf>,
    /// Refuse handshakes without a client certificate (needs `client_ca_file`).
    pub require_client_cert: bool,
    server_config: Arc<ServerConfig>,
}

impl std::fmt::Debug for ApiTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTls")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("client_ca_file", &self.client_ca_file)
            .field("require_client_cert", &self.require_client_cert)
            .finish()
    }
}

/// A TLS file that cannot be used. `setting` is the `[tls]` key that named it;
/// Display names the file and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct TlsError {
    pub setting: &'static str,
    pub path: String,
    pub message: String,
}

impl ApiTls {
    /// Reads and checks the files: the certificate chain, its private key (which must
    /// match it) and, if given, the client CA.
    pub fn load(
        cert_file: PathBuf,
        key_file: PathBuf,
        client_ca_file: Option<PathBuf>,
        require_client_cert: bool,
    ) -> Result<ApiTls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = read_certs(&cert_file, "cert_file")?;
        let key = read_key(&key_file)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| error("cert_file", &cert_file, e.to_string()))?;
        let builder = match &client_ca_file {
            None if require_client_cert => {
                return Err(TlsError {
                    setting: "require_client_cert",
                    path: String::new(),
                    message: "require_client_cert = true needs client_ca_file: set the CA that signs the client certificates".into(),
                })
            }
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in read_certs(ca, "client_ca_file")? {
                    roots
                        .add(c)
                        .map_err(|e| error("client_ca_file", ca, format!("not a usable CA certificate: {e}")))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if require_client_cert {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| error("client_ca_file", ca, e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            error(
                "key_file",
                &key_file,
                format!(
                    "does not go with the certificate in {} ({e}); use the key the certificate was issued for",
                    cert_file.display()
                ),
            )
        })?;
        // The router speaks HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ApiTls {
            cert_file,
            key_file,
            client_ca_file,
            require_client_cert,
            server_config: Arc::new(config),
        })
    }

    /// Accepts TLS connections on `tcp`.
    pub fn listener(&self, tcp: TcpListener) -> std::io::Result<TlsListener> {
        TlsListener::new(tcp, self.clone())
    }

    /// What identifies the current contents of the files (size, modification time and
    /// inode of each, following symlinks); a file that cannot be read counts as absent.
    fn fingerprint(&self) -> Vec<Option<(u64, std::time::SystemTime, u64)>> {
        use std::os::unix::fs::MetadataExt;
        [
            Some(&self.cert_file),
            Some(&self.key_file),
            self.client_ca_file.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?, m.ino())))
        })
        .collect()
    }

    /// The same settings read again from the files.
    fn reload(&self) -> Result<ApiTls, TlsError> {
        ApiTls::load(
            self.cert_file.clone(),
            self.key_file.clone(),
            self.client_ca_file.clone(),
            self.require_client_cert,
        )
    }
}

/// The acceptor in use and the files it came from; reloads when they change.
struct Reloading {
    tls: ApiTls,
    acceptor: TlsAcceptor,
    seen: Vec<Option<(u64, std::time::SystemTime, u64)>>,
    checked: tokio::time::Instant,
}

impl Reloading {
    fn new(tls: ApiTls) -> Reloading {
        Reloading {
            acceptor: TlsAcceptor::from(tls.server_config.clone()),
            seen: tls.fingerprint(),
            tls,
            checked: tokio::time::Instant::now(),
        }
    }

    /// The acceptor for the next connection, after reloading the files if they changed.
    fn current(&mut self) -> TlsAcceptor {
        if self.checked.elapsed() >= RELOAD_CHECK {
            self.checked = tokio::time::Instant::now();
            let now = self.tls.fingerprint();
            if now != self.seen {
                self.seen = now;
                match self.tls.reload() {
                    Ok(tls) => {
                        tracing::info!(cert_file = %tls.cert_file.display(), "API TLS files changed: new connections use the reloaded certificate");
                        self.acceptor = TlsAcceptor::from(tls.server_config.clone());
                        self.tls = tls;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "API TLS files changed but cannot be used; still serving the previous certificate until they change again")
                    }
                }
            }
        }
        self.acceptor.clone()
    }
}

fn error(setting: &'static str, path: &Path, message: String) -> TlsError {
    TlsError {
        setting,
        path: path.display().to_string(),
        message,
    }
}

fn read_pem(path: &Path, setting: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| error(setting, path, format!("cannot read it: {e}")))
}

fn read_certs(
    path: &Path,
    setting: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path, setting)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(setting, path, format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(error(
            setting,
            path,
            "holds no certificate: expected PEM (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem(path, "key_file")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        error(
            "key_file",
            path,
            format!("holds no usable private key ({e}): expected PEM (-----BEGIN PRIVATE KEY-----, RSA or EC PRIVATE KEY)"),
        )
    })
}

/// Accepts TCP connections and completes their TLS handshakes in the background, so a
/// slow or silent client never holds up the others. Dropping it stops accepting.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    fn new(tcp: TcpListener, tls: ApiTls) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = tokio::spawn(accept_loop(tcp, Reloading::new(tls), tx));
        Ok(TlsListener {
            ready,
            local,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

async fn accept_loop(
    tcp: TcpListener,
    mut tls: Reloading,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let mut handshakes = JoinSet::new();
    loop {
        while handshakes.try_join_next().is_some() {}
        let (stream, addr) = match tcp.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "cannot accept an API connection");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let (acceptor, tx) = (tls.current(), tx.clone());
        handshakes.spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, addr)).await;
                }
                Ok(Err(e)) => tracing::info!(%addr, error = %e, "TLS handshake failed"),
                Err(_) => tracing::info!(%addr, "TLS handshake timed out"),
            }
        });
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept loop never ends by itself; if it did, accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// What a connection's verified client certificate says (empty without one). Handlers
/// see it as `ConnectInfo<ClientCert>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientCert {
    /// The certificate's subject, for logs (empty without a certificate).
    pub subject: String,
    /// The clusters it names (see the module documentation).
    pub clusters: Vec<ClusterName>,
}

impl ClientCert {
    /// Reads the subject's common names and the DNS subject alternative names of a
    /// certificate (DER). A certificate that cannot be parsed names nothing.
    pub fn from_der(der: &[u8]) -> ClientCert {
        let der = CertificateDer::from(der);
        let Ok(cert) = webpki::EndEntityCert::try_from(&der) else {
            return ClientCert::default();
        };
        let common_names = subject_common_names(cert.subject());
        let mut clusters: Vec<ClusterName> = common_names
            .iter()
            .filter_map(|cn| cluster_of_common_name(cn))
            .chain(cert.valid_dns_names().filter_map(cluster_of_dns_name))
            .collect();
        clusters.sort();
        clusters.dedup();
        ClientCert {
            subject: common_names
                .iter()
                .map(|cn| format!("CN={cn}"))
                .collect::<Vec<_>>()
                .join(","),
            clusters,
        }
    }
}

/// The common names (OID 2.5.4.3) in a DER subject `Name` given without its outer
/// SEQUENCE header (as webpki hands it out). Malformed input yields what was read so far.
fn subject_common_names(mut name: &[u8]) -> Vec<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let mut out = Vec::new();
    // Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value ANY }
    while let Some((0x31, mut set, rest)) = der_tlv(name) {
        name = rest;
        while let Some((0x30, attr, rest)) = der_tlv(set) {
            set = rest;
            let Some((0x06, oid, value)) = der_tlv(attr) else {
                continue;
            };
            // UTF8String, PrintableString, IA5String
            if let Some((0x0c | 0x13 | 0x16, text, _)) = der_tlv(value) {
                if oid == CN {
                    if let Ok(t) = std::str::from_utf8(text) {
                        out.push(t.to_string());
                    }
                }
            }
        }
    }
    out
}

/// One DER tag-length-value (single-byte tags, definite lengths): tag, value, rest.
fn der_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let (digits, rest) = b.split_at(n);
        b = rest;
        digits
            .iter()
            .fold(0usize, |acc, &d| (acc << 8) | usize::from(d))
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

impl Connected<IncomingStream<'_, TlsListener>> for ClientCert {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> ClientCert {
        // With client authentication on, rustls only completes handshakes whose
        // certificate verified, so any certificate here is trusted.
        let (_, conn) = stream.io().get_ref();
        conn.peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| ClientCert::from_der(leaf))
            .unwrap_or_default()
    }
}

/// `user@cluster` → `cluster` (CloudNativePG's client certificates).
pub fn cluster_of_common_name(cn: &str) -> Option<ClusterName> {
    let (user, cluster) = cn.rsplit_once('@')?;
    if user.is_empty() {
        return None;
    }
    cluster.parse().ok()
}

/// `pg-main` or `pg-main.klio.svc` → `pg-main`.
pub fn cluster_of_dns_name(name: &str) -> Option<ClusterName> {
    name.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ClusterName {
        s.parse().unwrap()
    }

    #[test]
    fn common_names_map_user_at_cluster() {
        assert_eq!(
            cluster_of_common_name("streaming_replica@pg-main"),
            Some(name("pg-main"))
        );
        assert_eq!(cluster_of_common_name("a@b@pg-main"), Some(name("pg-main")));
        assert_eq!(cluster_of_common_name("streaming_replica"), None);
        assert_eq!(cluster_of_common_name("@pg-main"), None);
        assert_eq!(cluster_of_common_name("x@"), None);
        assert_eq!(cluster_of_common_name("x@Bad/Name"), None);
    }

    #[test]
    fn dns_names_map_by_first_label() {
        assert_eq!(cluster_of_dns_name("pg-main"), Some(name("pg-main")));
        assert_eq!(
            cluster_of_dns_name("pg-main.klio.svc.cluster.local"),
            Some(name("pg-main"))
        );
        assert_eq!(cluster_of_dns_name("*.klio.svc"), None);
        assert_eq!(cluster_of_dns_name(""), None);
    }

    fn cert(cn: &str, dns: &[&str]) -> Vec<u8> {
        let key = rcgen_key();
        let mut p =
            rcgen::CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.self_signed(&key).unwrap().der().to_vec()
    }

    fn rcgen_key() -> rcgen::KeyPair {
        rcgen::KeyPair::generate().unwrap()
    }

    #[test]
    fn certificates_name_clusters_by_cn_and_san() {
        let c = ClientCert::from_der(&cert("streaming_replica@pg-a", &[]));
        assert_eq!(c.clusters, vec![name("pg-a")]);
        assert!(
            c.subject.contains("streaming_replica@pg-a"),
            "{}",
            c.subject
        );
        let c = ClientCert::from_der(&cert("klio", &["pg-b.ns.svc", "pg-a"]));
        assert_eq!(c.clusters, vec![name("pg-a"), name("pg-b")]);
        let c = ClientCert::from_der(&cert("streaming_replica", &["*.ns.svc"]));
        assert!(c.clusters.is_empty());
        assert_eq!(ClientCert::from_der(b"not DER"), ClientCert::default());
    }

    #[test]
    fn der_reader_survives_any_bytes() {
        let der = cert("x@pg-a", &["pg-b"]);
        // Every truncation and every single-byte corruption: no panic, nothing invented.
        for n in 0..der.len() {
            let c = ClientCert::from_der(&der[..n]);
            assert!(c.clusters.is_empty() || n == der.len());
            let mut bad = der.clone();
            bad[n] ^= 0xff;
            let c = ClientCert::from_der(&bad);
            assert!(c
                .clusters
                .iter()
                .all(|n| n.as_str() == "pg-a" || n.as_str() == "pg-b"));
        }
        for n in 0..64 {
            let _ = subject_common_names(&der[n..]);
        }
    }
}
