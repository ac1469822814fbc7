//! The HTTP client behind `klio wal-restore`, `klio status` and `klio list`.
//!
//! GET requests retry a few times, briefly, on connection errors and on 5xx answers the
//! server does not call permanent (the `permanent` flag of its JSON error body; without
//! it, every 5xx); never on 4xx answers or POSTs.
//! `wal-restore` writes its destination atomically: a temporary file in the same
//! directory, written, fsync'ed, renamed over the destination, directory fsync'ed; a
//! failure at any point leaves no partial destination behind.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use klio_core::{BackupId, ClusterName, WalFileName};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use crate::token::ClusterToken;
use crate::{
    BackupList, BackupRequest, BackupView, ErrorBody, OffloadRequest, StatusList, UploadRequest,
    VerifyReport, VerifyRequest, WalList,
};

/// The server URL when neither `--server` nor `KLIO_SERVER` is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How many times a request is tried (connection errors and 5xx answers only).
pub const ATTEMPTS: u32 = 3;
const BACKOFF: [Duration; 2] = [Duration::from_millis(250), Duration::from_millis(1000)];

/// A client command's failure. Display is one line naming the cause and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server does not have it (exit 1: normal when PostgreSQL probes for WAL).
    #[error("{0}")]
    NotFound(String),
    /// Bad command-line input, detected before any request.
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the Klio server at {server}: {detail}; check --server / KLIO_SERVER and that the server is running")]
    Connect { server: String, detail: String },
    #[error(
        "the server rejected the {origin} (401); check --token-file / KLIO_TOKEN_FILE or --cert / KLIO_CERT"
    )]
    Unauthorized { origin: String },
    #[error("the {origin} is not valid for cluster {cluster} (403); use that cluster's token file or client certificate, or fix --cluster / KLIO_CLUSTER")]
    Forbidden { cluster: String, origin: String },
    /// What was asked for ran and failed (a backup, a verification): exit 1.
    #[error("{0}")]
    Failed(String),
    /// 409: e.g. a backup of the cluster is already running.
    #[error("{0}")]
    Conflict(String),
    #[error("the server answered {status}: {message}")]
    Server {
        status: u16,
        message: String,
        /// Whether the same request cannot succeed later (see [`ClientError::is_permanent`]).
        permanent: bool,
    },
    #[error("{0}")]
    Io(String),
    /// The WAL file is another database system's than the data directory being recovered.
    #[error("{0}")]
    WrongSystem(String),
    /// A failure during archive recovery that must stop it (see `EXIT_ABORT_RECOVERY`).
    #[error("{0}")]
    AbortRecovery(String),
    /// What the server sent is refused before anything is written (e.g. a backup
    /// manifest with a path out of PGDATA).
    #[error("{0}")]
    BadManifest(String),
}

impl ClientError {
    /// 1 when the thing asked for does not exist, 2 for most other failures, and
    /// [`EXIT_ABORT_RECOVERY`] when restore_command must stop recovery.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::NotFound(_) | ClientError::Failed(_) => 1,
            ClientError::WrongSystem(_) | ClientError::AbortRecovery(_) => EXIT_ABORT_RECOVERY,
            _ => 2,
        }
    }

    /// True when retrying the same request cannot succeed: the server said so (the
    /// `permanent` flag of its error body, or by default any answer but a 5xx), or the
    /// failure is in the request, the credentials or the data. False for connection
    /// errors, local I/O and failures the server expects to clear (503, most 500s).
    pub fn is_permanent(&self) -> bool {
        match self {
            ClientError::Server { permanent, .. } => *permanent,
            ClientError::Connect { .. } | ClientError::Io(_) | ClientError::Failed(_) => false,
            ClientError::NotFound(_)
            | ClientError::Usage(_)
            | ClientError::Unauthorized { .. }
            | ClientError::Forbidden { .. }
            | ClientError::Conflict(_)
            | ClientError::WrongSystem(_)
            | ClientError::AbortRecovery(_)
            | ClientError::BadManifest(_) => true,
        }
    }
}

/// PostgreSQL treats a restore_command exit status above 125 as fatal and stops recovery,
/// where any lower non-zero status means "not available" (and may end recovery early).
pub const EXIT_ABORT_RECOVERY: u8 = 128;

/// The files a client command authenticates with and trusts, as given by
/// `--token-file`, `--cacert`, `--cert` and `--key` (or their `KLIO_*` variables).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub token_file: Option<PathBuf>,
    /// CA that signed the server's certificate (instead of the built-in roots).
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) and its key, for servers with `client_ca_file`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// `--insecure-http`: the token may travel over plain `http://` to another machine.
    pub insecure_http: bool,
}

impl Credentials {
    /// The same files with absolute paths (for a restore_command run elsewhere).
    pub fn absolute(&self) -> Result<Credentials, ClientError> {
        let abs = |p: &Option<PathBuf>, flag: &str| -> Result<Option<PathBuf>, ClientError> {
            p.as_deref()
                .map(|p| {
                    std::path::absolute(p)
                        .map_err(|e| ClientError::Usage(format!("{flag} {}: {e}", p.display())))
                })
                .transpose()
        };
        Ok(Credentials {
            token_file: abs(&self.token_file, "--token-file")?,
            cacert: abs(&self.cacert, "--cacert")?,
            cert: abs(&self.cert, "--cert")?,
            key: abs(&self.key, "--key")?,
            insecure_http: self.insecure_http,
        })
    }

    /// The command-line flags that pass these files on, in a fixed order (without
    /// `--insecure-http`, a flag of its own).
    pub fn args(&self) -> Vec<(&'static str, &Path)> {
        [
            ("--token-file", &self.token_file),
            ("--cacert", &self.cacert),
            ("--cert", &self.cert),
            ("--key", &self.key),
        ]
        .into_iter()
        .filter_map(|(flag, p)| p.as_deref().map(|p| (flag, p)))
        .collect()
    }
}

/// A connection to one Klio server with one cluster's credentials.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<ClusterToken>,
    /// What authenticates this client, named in 401/403 errors.
    origin: String,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

impl Client {
    /// `token_origin` (e.g. the token file's path) is named in authentication errors.
    pub fn new(
        server: &str,
        token: ClusterToken,
        token_origin: &str,
    ) -> Result<Client, ClientError> {
        Client::build(
            server,
            Some(token),
            &format!("token from {token_origin}"),
            reqwest::Client::builder(),
            false,
        )
    }

    /// A client with a token held in memory rather than read from a file (the Kubernetes
    /// operator reads it from a Secret). `ca_pem`: the CA bundle that signed the server's
    /// certificate, trusted instead of the built-in roots. `insecure_http`: the token may
    /// go over plain `http://` to another machine, as `--insecure-http` allows.
    pub fn with_token(
        server: &str,
        token: ClusterToken,
        token_origin: &str,
        ca_pem: Option<&[u8]>,
        insecure_http: bool,
    ) -> Result<Client, ClientError> {
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    ClientError::Usage(format!("the CA for {server} holds no PEM certificate"))
                })?;
            builder = builder.tls_built_in_root_certs(false);
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        Client::build(
            server,
            Some(token),
            &format!("token from {token_origin}"),
            builder,
            insecure_http,
        )
    }

    /// A client authenticating with the files in `creds`: a token, a client
    /// certificate, or both. Every file is read here; errors name the flag.
    pub fn connect(server: &str, creds: &Credentials) -> Result<Client, ClientError> {
        let read = |p: &Path, flag: &str| {
            std::fs::read(p).map_err(|e| {
                ClientError::Usage(format!("{flag}: cannot read {}: {e}", p.display()))
            })
        };
        let tls_flag = [("--cacert", &creds.cacert), ("--cert", &creds.cert)]
            .into_iter()
            .find(|(_, p)| p.is_some());
        if let Some((flag, _)) = tls_flag {
            if !server.starts_with("https://") {
                return Err(ClientError::Usage(format!(
                    "{flag} needs an https:// server URL (--server / KLIO_SERVER is {server:?})"
                )));
            }
        }
        let mut builder = reqwest::Client::builder();
        if let Some(ca) = &creds.cacert {
            let certs = reqwest::Certificate::from_pem_bundle(&read(ca, "--cacert / KLIO_CACERT")?)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    ClientError::Usage(format!(
                        "--cacert / KLIO_CACERT: {} holds no PEM certificate",
                        ca.display()
                    ))
                })?;
            builder = builder.tls_built_in_root_certs(false);
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let mut origins = Vec::new();
        match (&creds.cert, &creds.key) {
            (Some(cert), Some(key)) => {
                let mut pem = read(cert, "--cert / KLIO_CERT")?;
                pem.push(b'\n');
                pem.extend(read(key, "--key / KLIO_KEY")?);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    ClientError::Usage(format!(
                        "--cert / --key: {} and {} are not a PEM certificate and its private key: {}",
                        cert.display(),
                        key.display(),
                        chain(&e)
                    ))
                })?;
                builder = builder.identity(identity);
                origins.push(format!("client certificate {}", cert.display()));
            }
            (None, None) => {}
            _ => {
                return Err(ClientError::Usage(
                    "--cert and --key (KLIO_CERT, KLIO_KEY) go together: pass both".into(),
                ))
            }
        }
        let token = match &creds.token_file {
            Some(path) => {
                let token = ClusterToken::from_file(path).map_err(|e| {
                    ClientError::Usage(format!("--token-file / KLIO_TOKEN_FILE: {e}"))
                })?;
                origins.insert(0, format!("token from {}", path.display()));
                Some(token)
            }
            None if origins.is_empty() => {
                return Err(ClientError::Usage(
                    "no credentials given: pass --token-file PATH (KLIO_TOKEN_FILE) or --cert and --key (KLIO_CERT, KLIO_KEY)".into(),
                ))
            }
            None => None,
        };
        Client::build(
            server,
            token,
            &origins.join(" and "),
            builder,
            creds.insecure_http,
        )
    }

    fn build(
        server: &str,
        token: Option<ClusterToken>,
        origin: &str,
        builder: reqwest::ClientBuilder,
        insecure_http: bool,
    ) -> Result<Client, ClientError> {
        let url = reqwest::Url::parse(server).map_err(|e| {
            ClientError::Usage(format!(
                "invalid server URL {server:?} ({e}); use e.g. {DEFAULT_SERVER} via --server or KLIO_SERVER"
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.query().is_some() {
            return Err(ClientError::Usage(format!(
                "invalid server URL {server:?}: use http:// or https:// without a query, e.g. {DEFAULT_SERVER}"
            )));
        }
        // Checked before any connection: a token sent in clear is a token given away.
        if token.is_some() && url.scheme() == "http" && !insecure_http && !is_loopback(&url) {
            return Err(ClientError::Usage(format!(
                "refusing to send the {origin} over plain http:// to {}, which is not this machine: anyone on the network path could read it; use an https:// server URL (the server's [tls] settings), or pass --insecure-http (KLIO_INSECURE_HTTP=true) if this network is trusted",
                url.host_str().unwrap_or_default()
            )));
        }
        let http = builder
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("klio/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                ClientError::Io(format!("cannot set up the HTTP client: {}", chain(&e)))
            })?;
        Ok(Client {
            http,
            base: url.as_str().trim_end_matches('/').to_string(),
            token,
            origin: origin.to_string(),
        })
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<StatusList, ClientError> {
        self.get_json("/v1/status", None).await
    }

    /// `GET /v1/clusters/{cluster}/wal`.
    pub async fn list_wal(&self, cluster: &ClusterName) -> Result<WalList, ClientError> {
        self.get_json(&format!("/v1/clusters/{cluster}/wal"), Some(cluster))
            .await
    }

    /// `GET /v1/clusters/{cluster}/wal/{name}`: the file's plaintext.
    pub async fn fetch_wal(
        &self,
        cluster: &ClusterName,
        name: &WalFileName,
    ) -> Result<Vec<u8>, ClientError> {
        let path = format!("/v1/clusters/{cluster}/wal/{name}");
        self.get_bytes(&path, Some(cluster)).await
    }

    /// `GET /v1/clusters/{cluster}/backups`.
    pub async fn list_backups(&self, cluster: &ClusterName) -> Result<BackupList, ClientError> {
        self.get_json(&format!("/v1/clusters/{cluster}/backups"), Some(cluster))
            .await
    }

    /// `GET /v1/clusters/{cluster}/backups/{id}`.
    pub async fn backup(
        &self,
        cluster: &ClusterName,
        id: &BackupId,
    ) -> Result<BackupView, ClientError> {
        self.get_json(
            &format!("/v1/clusters/{cluster}/backups/{id}"),
            Some(cluster),
        )
        .await
    }

    /// `GET /v1/clusters/{cluster}/backups/{id}/manifest`: Klio's manifest.
    pub async fn backup_manifest(
        &self,
        cluster: &ClusterName,
        id: &BackupId,
    ) -> Result<klio_core::manifest::BackupManifest, ClientError> {
        self.get_json(
            &format!("/v1/clusters/{cluster}/backups/{id}/manifest"),
            Some(cluster),
        )
        .await
    }

    /// `GET /v1/clusters/{cluster}/backups/{id}/backup_manifest`: PostgreSQL's manifest.
    pub async fn pg_backup_manifest(
        &self,
        cluster: &ClusterName,
        id: &BackupId,
    ) -> Result<Vec<u8>, ClientError> {
        self.get_bytes(
            &format!("/v1/clusters/{cluster}/backups/{id}/backup_manifest"),
            Some(cluster),
        )
        .await
    }

    /// `GET /v1/clusters/{cluster}/chunks/{chunk}`: one chunk's plaintext.
    pub async fn chunk(
        &self,
        cluster: &ClusterName,
        chunk: &klio_core::manifest::ChunkId,
    ) -> Result<Vec<u8>, ClientError> {
        self.get_bytes(
            &format!("/v1/clusters/{cluster}/chunks/{chunk}"),
            Some(cluster),
        )
        .await
    }

    /// The server URL (for the restore_command a restore writes).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `POST /v1/clusters/{cluster}/backups`.
    pub async fn start_backup(
        &self,
        cluster: &ClusterName,
        req: &BackupRequest,
    ) -> Result<BackupView, ClientError> {
        self.post_json(
            &format!("/v1/clusters/{cluster}/backups"),
            cluster,
            req,
            None,
        )
        .await
    }

    /// `POST /v1/clusters/{cluster}/offloads`.
    pub async fn start_offload(
        &self,
        cluster: &ClusterName,
        req: &OffloadRequest,
    ) -> Result<BackupView, ClientError> {
        self.post_json(
            &format!("/v1/clusters/{cluster}/offloads"),
            cluster,
            req,
            None,
        )
        .await
    }

    /// `POST /v1/clusters/{cluster}/offloads/upload`: streams `body` (the copy in
    /// `klio_core::upload` frames); the server answers with the running backup once it
    /// has the whole body, or with why it refused the copy.
    pub async fn upload_offload(
        &self,
        cluster: &ClusterName,
        req: &UploadRequest,
        body: reqwest::Body,
    ) -> Result<BackupView, ClientError> {
        let path = format!("/v1/clusters/{cluster}/offloads/upload");
        let url = format!("{}{path}", self.base);
        let req = self
            .authorized(self.http.post(&url))
            .query(req)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            // A copy of terabytes takes hours; the transfer itself is the timeout.
            .timeout(Duration::from_secs(30 * 24 * 3600));
        self.send_post(&path, cluster, req).await
    }

    /// `POST /v1/clusters/{cluster}/verify` (reads every chunk: no request timeout).
    pub async fn verify(
        &self,
        cluster: &ClusterName,
        req: &VerifyRequest,
    ) -> Result<VerifyReport, ClientError> {
        self.post_json(
            &format!("/v1/clusters/{cluster}/verify"),
            cluster,
            req,
            Some(Duration::from_secs(24 * 3600)),
        )
        .await
    }

    /// `POST /v1/clusters/{cluster}/tier2/retry`.
    pub async fn tier2_retry(
        &self,
        cluster: &ClusterName,
        req: &crate::Tier2RetryRequest,
    ) -> Result<crate::Tier2RetryReport, ClientError> {
        self.post_json(
            &format!("/v1/clusters/{cluster}/tier2/retry"),
            cluster,
            req,
            None,
        )
        .await
    }

    /// `POST /v1/clusters/{cluster}/tier2/rescan` (read-only servers); may take long on
    /// a large bucket.
    pub async fn tier2_rescan(
        &self,
        cluster: &ClusterName,
    ) -> Result<crate::Tier2RescanReport, ClientError> {
        self.post_json(
            &format!("/v1/clusters/{cluster}/tier2/rescan"),
            cluster,
            &serde_json::json!({}),
            Some(Duration::from_secs(3600)),
        )
        .await
    }

    /// `GET /v1/clusters/{cluster}/retention[?tier=N]`: what retention would remove.
    pub async fn retention_show(
        &self,
        cluster: &ClusterName,
        tier: Option<u8>,
    ) -> Result<crate::RetentionReport, ClientError> {
        let query = tier.map(|t| format!("?tier={t}")).unwrap_or_default();
        self.get_json(
            &format!("/v1/clusters/{cluster}/retention{query}"),
            Some(cluster),
        )
        .await
    }

    /// `POST /v1/clusters/{cluster}/retention`.
    pub async fn retention_apply(
        &self,
        cluster: &ClusterName,
        req: &crate::RetentionRequest,
    ) -> Result<crate::RetentionReport, ClientError> {
        self.post_json(
            &format!("/v1/clusters/{cluster}/retention"),
            cluster,
            req,
            Some(Duration::from_secs(3600)),
        )
        .await
    }

    /// POSTs a JSON body once (no retries: the server may have acted on it).
    async fn post_json<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        cluster: &ClusterName,
        body: &B,
        timeout: Option<Duration>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.authorized(self.http.post(&url)).json(body);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        self.send_post(path, cluster, req).await
    }

    /// Sends a prepared POST and decodes its JSON answer (no retry: a POST starts work).
    async fn send_post<T: DeserializeOwned>(
        &self,
        path: &str,
        cluster: &ClusterName,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let outcome = async {
            let resp = req.send().await.map_err(Failure::Transport)?;
            let status = resp.status();
            let bytes = resp.bytes().await.map_err(Failure::Transport)?;
            if status.is_success() {
                Ok(bytes.to_vec())
            } else {
                Err(Failure::status(status, &bytes))
            }
        }
        .await;
        let bytes = outcome.map_err(|f| self.classify(f, Some(cluster)))?;
        serde_json::from_slice(&bytes).map_err(|e| self.unexpected(path, e))
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        cluster: Option<&ClusterName>,
    ) -> Result<T, ClientError> {
        let body = self.get_bytes(path, cluster).await?;
        serde_json::from_slice(&body).map_err(|e| self.unexpected(path, e))
    }

    /// GETs `path` and reads the whole body, retrying connection errors and 5xx.
    async fn get_bytes(
        &self,
        path: &str,
        cluster: Option<&ClusterName>,
    ) -> Result<Vec<u8>, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut attempt = 0;
        loop {
            let outcome = self.get_once(&url).await;
            let retry = match &outcome {
                Err(Failure::Transport(_)) => true,
                Err(Failure::Status { permanent, .. }) => !permanent,
                Ok(_) => false,
            };
            if retry && attempt + 1 < ATTEMPTS {
                tracing::debug!(attempt, %url, "request failed, retrying");
                tokio::time::sleep(BACKOFF[attempt as usize]).await;
                attempt += 1;
                continue;
            }
            return outcome.map_err(|f| self.classify(f, cluster));
        }
    }

    async fn get_once(&self, url: &str) -> Result<Vec<u8>, Failure> {
        let resp = self
            .authorized(self.http.get(url))
            .send()
            .await
            .map_err(Failure::Transport)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(Failure::Transport)?;
        if status.is_success() {
            // Without a copy when the body is one buffer (reqwest collects it so).
            Ok(Vec::from(body))
        } else {
            Err(Failure::status(status, &body))
        }
    }

    /// A success answer whose body is not what this client expects: another program
    /// or another version answers (asking again gets the same).
    fn unexpected(&self, path: &str, e: serde_json::Error) -> ClientError {
        ClientError::Server {
            status: 200,
            message: format!(
                "unexpected response to {path} ({e}); is {} a Klio server of this version?",
                self.base
            ),
            permanent: true,
        }
    }

    /// Adds the bearer token, if this client has one.
    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t.expose()),
            None => req,
        }
    }

    fn classify(&self, f: Failure, cluster: Option<&ClusterName>) -> ClientError {
        match f {
            Failure::Transport(e) => ClientError::Connect {
                server: self.base.clone(),
                detail: chain(&e),
            },
            Failure::Status {
                status,
                message,
                permanent,
            } => match status {
                StatusCode::UNAUTHORIZED => ClientError::Unauthorized {
                    origin: self.origin.clone(),
                },
                // A 403 the server's configuration causes (an offload outside
                // offload_roots) says why; one for another cluster's credentials, or
                // without a JSON body, gets the credentials hint.
                StatusCode::FORBIDDEN
                    if !message.starts_with(crate::CREDENTIALS_FORBIDDEN)
                        && Some(message.as_str()) != StatusCode::FORBIDDEN.canonical_reason() =>
                {
                    ClientError::Server {
                        status: 403,
                        message,
                        permanent,
                    }
                }
                StatusCode::FORBIDDEN => ClientError::Forbidden {
                    cluster: cluster.map(|c| c.to_string()).unwrap_or_default(),
                    origin: self.origin.clone(),
                },
                StatusCode::NOT_FOUND => ClientError::NotFound(message),
                StatusCode::CONFLICT => ClientError::Conflict(message),
                _ => ClientError::Server {
                    status: status.as_u16(),
                    message,
                    permanent,
                },
            },
        }
    }
}

/// Whether `url` names this machine: `localhost` or a loopback address.
fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => a.is_loopback(),
        Ok(std::net::IpAddr::V6(a)) => {
            a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v| v.is_loopback())
        }
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

enum Failure {
    Transport(reqwest::Error),
    Status {
        status: StatusCode,
        message: String,
        permanent: bool,
    },
}

impl Failure {
    /// An error answer: the `error` and `permanent` of its JSON body; without one, the
    /// status's reason phrase, and permanent unless it is a 5xx.
    fn status(status: StatusCode, body: &[u8]) -> Failure {
        let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
        let permanent = parsed
            .as_ref()
            .and_then(|b| b.permanent)
            .unwrap_or(!status.is_server_error());
        let message = parsed
            .map(|b| b.error)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
        Failure::Status {
            status,
            message,
            permanent,
        }
    }
}

/// An error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let next = c.to_string();
        if !s.contains(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests;
