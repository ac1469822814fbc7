//! TLS for the HTTP API: the server's certificate and key, and the client CAs whose
//! certificates are credentials (mTLS): one per cluster (`[[cluster]] client_ca_file`)
//! and, only when explicitly shared, a server-wide one (`[tls] client_ca_file` with
//! `client_ca_shared = true`). Which clusters a certificate speaks for is decided in
//! [`crate::client_cert`]. Reads the PEM files it is given; writes nothing to disk.
//!
//! The files are watched: when any of them changes (a renewed certificate, a Kubernetes
//! Secret update), the next connection after at most [`RELOAD_CHECK`] is served with
//! the new set. A set that does not load (a key that does not match, a half-written
//! file) is logged and the previous one stays in use until the files change again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use klio_core::ClusterName;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::client_cert::{ClientCertPolicy, ClusterTrust};

/// How often (at most) the accept loop looks at the TLS files for changes.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// Where client certificates may come from.
#[derive(Clone, Debug, Default)]
pub struct ClientCas {
    /// `[tls] client_ca_file` with `client_ca_shared = true`: trusted for every cluster.
    pub shared: Option<PathBuf>,
    /// Per cluster: its own CA (`client_ca_file`) and the DNS names that name it
    /// (`client_cert_dns_names`). Every configured cluster is listed.
    pub clusters: Vec<ClusterCa>,
}

/// One cluster's client-certificate settings.
#[derive(Clone, Debug)]
pub struct ClusterCa {
    pub cluster: ClusterName,
    pub ca_file: Option<PathBuf>,
    pub dns_names: Vec<String>,
}

impl ClientCas {
    fn any(&self) -> bool {
        self.shared.is_some() || self.clusters.iter().any(|c| c.ca_file.is_some())
    }

    fn files(&self) -> impl Iterator<Item = &PathBuf> {
        self.shared
            .iter()
            .chain(self.clusters.iter().filter_map(|c| c.ca_file.as_ref()))
    }
}

/// The API's TLS settings (`[tls]`), with the files already loaded.
#[derive(Clone)]
pub struct ApiTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_cas: ClientCas,
    /// Refuse handshakes without a client certificate (needs a client CA).
    pub require_client_cert: bool,
    server_config: Arc<ServerConfig>,
    policy: Arc<ClientCertPolicy>,
}

impl std::fmt::Debug for ApiTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTls")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("client_cas", &self.client_cas)
            .field("require_client_cert", &self.require_client_cert)
            .finish()
    }
}

/// A TLS file that cannot be used. `setting` is the key that named it (`cert_file`,
/// `key_file`, `client_ca_file`, `require_client_cert`) and `cluster` the cluster whose
/// table holds it, if any; Display names the file and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct TlsError {
    pub setting: &'static str,
    pub cluster: Option<ClusterName>,
    pub path: String,
    pub message: String,
}

impl ApiTls {
    /// Reads and checks the files: the certificate chain, its private key (which must
    /// match it and be readable by its owner only) and the client CAs.
    pub fn load(
        cert_file: PathBuf,
        key_file: PathBuf,
        client_cas: ClientCas,
        require_client_cert: bool,
    ) -> Result<ApiTls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = read_certs(&cert_file, "cert_file", None)?;
        let key = read_key(&key_file)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| error("cert_file", None, &cert_file, e.to_string()))?;
        if require_client_cert && !client_cas.any() {
            return Err(TlsError {
                setting: "require_client_cert",
                cluster: None,
                path: String::new(),
                message: "require_client_cert = true needs a client CA: set client_ca_file in each [[cluster]] (or a shared one in [tls])".into(),
            });
        }
        // One verifier per CA, to tell afterwards which CA a certificate chains to, and
        // one over all of them for the handshake.
        let mut all_roots = RootCertStore::empty();
        let mut verifier_of = |path: &Path, cluster: Option<&ClusterName>| {
            let mut roots = RootCertStore::empty();
            for c in read_certs(path, "client_ca_file", cluster)? {
                let usable = |e: rustls::Error| {
                    error(
                        "client_ca_file",
                        cluster,
                        path,
                        format!("not a usable CA certificate: {e}"),
                    )
                };
                roots.add(c.clone()).map_err(usable)?;
                all_roots.add(c).map_err(usable)?;
            }
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| error("client_ca_file", cluster, path, e.to_string()))
        };
        let shared = match &client_cas.shared {
            Some(p) => Some(verifier_of(p, None)?),
            None => None,
        };
        let mut clusters = Vec::with_capacity(client_cas.clusters.len());
        for c in &client_cas.clusters {
            let verifier: Option<Arc<dyn ClientCertVerifier>> = match &c.ca_file {
                Some(p) => Some(verifier_of(p, Some(&c.cluster))?),
                None => None,
            };
            clusters.push(ClusterTrust {
                cluster: c.cluster.clone(),
                verifier,
                dns_names: c.dns_names.clone(),
            });
        }
        let builder = if client_cas.any() {
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(all_roots), provider);
            let v = if require_client_cert {
                v
            } else {
                v.allow_unauthenticated()
            };
            let v = v.build().map_err(|e| TlsError {
                setting: "client_ca_file",
                cluster: None,
                path: String::new(),
                message: e.to_string(),
            })?;
            builder.with_client_cert_verifier(v)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            error(
                "key_file",
                None,
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
            client_cas,
            require_client_cert,
            server_config: Arc::new(config),
            policy: Arc::new(ClientCertPolicy { shared, clusters }),
        })
    }

    /// Which clusters client certificates speak for, with the CAs loaded now.
    pub(crate) fn policy(&self) -> Arc<ClientCertPolicy> {
        self.policy.clone()
    }

    /// What identifies the current contents of the files (size, modification time and
    /// inode of each, following symlinks); a file that cannot be read counts as absent.
    fn fingerprint(&self) -> Vec<Option<(u64, std::time::SystemTime, u64)>> {
        use std::os::unix::fs::MetadataExt;
        [&self.cert_file, &self.key_file]
            .into_iter()
            .chain(self.client_cas.files())
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
            self.client_cas.clone(),
            self.require_client_cert,
        )
    }
}

/// The acceptor in use and the files it came from; reloads when they change.
pub(crate) struct Reloading {
    tls: ApiTls,
    acceptor: TlsAcceptor,
    seen: Vec<Option<(u64, std::time::SystemTime, u64)>>,
    checked: tokio::time::Instant,
}

impl Reloading {
    pub(crate) fn new(tls: ApiTls) -> Reloading {
        Reloading {
            acceptor: TlsAcceptor::from(tls.server_config.clone()),
            seen: tls.fingerprint(),
            tls,
            checked: tokio::time::Instant::now(),
        }
    }

    /// The acceptor and certificate policy for the next connection, after reloading
    /// the files if they changed.
    pub(crate) fn current(&mut self) -> (TlsAcceptor, Arc<ClientCertPolicy>) {
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
        (self.acceptor.clone(), self.tls.policy())
    }
}

fn error(
    setting: &'static str,
    cluster: Option<&ClusterName>,
    path: &Path,
    message: String,
) -> TlsError {
    TlsError {
        setting,
        cluster: cluster.cloned(),
        path: path.display().to_string(),
        message,
    }
}

fn read_pem(
    path: &Path,
    setting: &'static str,
    cluster: Option<&ClusterName>,
) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| error(setting, cluster, path, format!("cannot read it: {e}")))
}

fn read_certs(
    path: &Path,
    setting: &'static str,
    cluster: Option<&ClusterName>,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path, setting, cluster)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(setting, cluster, path, format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(error(
            setting,
            cluster,
            path,
            "holds no certificate: expected PEM (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certs)
}

/// The private key, which only its owner may read (see [`klio_core::secret_file`]).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    klio_core::secret_file::check(path).map_err(|e| TlsError {
        setting: "key_file",
        cluster: None,
        path: String::new(),
        message: e.to_string(),
    })?;
    let pem = read_pem(path, "key_file", None)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        error(
            "key_file",
            None,
            path,
            format!("holds no usable private key ({e}): expected PEM (-----BEGIN PRIVATE KEY-----, RSA or EC PRIVATE KEY)"),
        )
    })
}
