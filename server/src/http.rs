//! The HTTP API: routes, authentication (bearer token, client certificate), error mapping.
//!
//! ```text
//! GET /healthz                               no auth   "ok"
//! GET /v1/openapi.json                       no auth   this API as OpenAPI 3.0 (api/openapi.json)
//! GET /metrics                               metrics   Prometheus text 0.0.4 (see below)
//! GET /v1/status                             token     StatusList (clusters the token may see)
//! GET /v1/clusters/{cluster}/status          token     ClusterStatusView
//! GET /v1/clusters/{cluster}/wal             token     WalList
//! GET /v1/clusters/{cluster}/wal/{walfile}   token     the plaintext file (octet-stream)
//! GET /v1/clusters/{cluster}/backups         token     BackupList
//! POST /v1/clusters/{cluster}/backups        token     BackupRequest (optional) → 202 BackupView, 409 if one runs
//! GET /v1/clusters/{cluster}/backups/{id}    token     BackupView
//! GET /v1/clusters/{cluster}/backups/{id}/manifest          token  Klio's manifest (JSON)
//! GET /v1/clusters/{cluster}/backups/{id}/backup_manifest   token  PostgreSQL's backup_manifest
//! GET /v1/clusters/{cluster}/chunks/{chunk}  token     one chunk's plaintext (octet-stream)
//! POST /v1/clusters/{cluster}/offloads       token     OffloadRequest → 202 BackupView, 409 if one runs,
//!                                                      403 without offload_roots or outside them
//! POST /v1/clusters/{cluster}/offloads/upload token   ?label&end_lsn&total_bytes, body: the copy in
//!                                                      klio_core::upload frames → 202 BackupView once
//!                                                      the body is in; 403 without offload_uploads
//! POST /v1/clusters/{cluster}/verify         token     VerifyRequest (optional) → VerifyReport
//! POST /v1/clusters/{cluster}/tier2/retry    token     Tier2RetryRequest (optional) → Tier2RetryReport,
//!                                                      409 without [tier2] or on a read-only server
//! POST /v1/clusters/{cluster}/tier2/rescan   token     → Tier2RescanReport (read-only servers; 409 otherwise)
//! GET /v1/clusters/{cluster}/retention       token     ?tier=1|2 → RetentionReport (what would go; removes nothing)
//! POST /v1/clusters/{cluster}/retention      token     RetentionRequest (optional) → RetentionReport,
//!                                                      409 while a backup runs or on a read-only server
//! ```
//! A read-only server (`mode = "read-only"`) answers every request that would write
//! (backups, offloads, Tier 2 retries) with 409 and a message naming its mode.
//! "metrics" means the `metrics_token_file` token (`Authorization: Bearer`); with
//! `metrics_listen` instead, `/metrics` is served only on that address, without
//! credentials ([`metrics_router`]), and the API answers 404; with neither, 401.
//! "token" means a bearer token or, over TLS with `client_ca_file`, a verified client
//! certificate naming the cluster (`CN=user@cluster` or a DNS SAN; see [`crate::tls`]).
//! Checks run in this order: credentials (401), cluster known (404), credentials are the
//! cluster's (403), WAL name valid (400); only then is the [`Registry`] asked. Errors are JSON
//! `{"error": "...", "permanent": bool}` (`permanent`: retrying the same request cannot
//! succeed); internal details are logged with their sources, never sent. Reads nothing from disk
//! itself: everything comes through the registry.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Path, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use klio_core::manifest::ChunkId;
use klio_core::{BackupId, ClusterName, WalFileName};
use tower_http::trace::TraceLayer;

use crate::auth::TokenSet;
use crate::client_cert::ClientCert;
use crate::config::MetricsAccess;
use crate::metrics;
use crate::registry::{BoxError, ErrorKind, Registry, RegistryError, SourceChain, WalStream};
use klio_api::ClusterStatusView;
use klio_api::OPENAPI;
use klio_api::{
    BackupList, BackupRequest, BackupView, ErrorBody, OffloadRequest, StatusList, UploadRequest,
    VerifyReport, VerifyRequest, WalList, CREDENTIALS_FORBIDDEN,
};

/// What every handler needs: the engine's view and the clusters' token digests.
#[derive(Clone)]
pub struct AppState {
    registry: Arc<dyn Registry>,
    tokens: Arc<TokenSet>,
    metrics: Arc<MetricsAccess>,
    /// Clusters with a `verify` running (at most one each).
    verifying: Arc<std::sync::Mutex<std::collections::HashSet<ClusterName>>>,
}

impl AppState {
    /// `tokens` also defines which clusters exist for the API (see
    /// [`crate::config::Config::tokens`]).
    pub fn new(registry: Arc<dyn Registry>, tokens: TokenSet) -> AppState {
        AppState {
            registry,
            tokens: Arc::new(tokens),
            metrics: Arc::new(MetricsAccess::Disabled),
            verifying: Arc::default(),
        }
    }

    /// How `/metrics` is protected (default: not served).
    pub fn with_metrics(mut self, metrics: MetricsAccess) -> AppState {
        self.metrics = Arc::new(metrics);
        self
    }
}

/// A router serving only `/metrics`, without credentials, for `metrics_listen`.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_open))
        .fallback(|| async { ApiError::NotFound("only /metrics is served here".into()) })
        .with_state(state)
}

/// The API's router, with one tracing span per request.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/status", get(status_all))
        .route("/v1/clusters/{cluster}/status", get(cluster_status))
        .route("/v1/clusters/{cluster}/wal", get(list_wal))
        .route("/v1/clusters/{cluster}/wal/{walfile}", get(read_wal))
        .route(
            "/v1/clusters/{cluster}/backups",
            get(list_backups).post(start_backup),
        )
        .route("/v1/clusters/{cluster}/backups/{id}", get(get_backup))
        .route(
            "/v1/clusters/{cluster}/backups/{id}/manifest",
            get(get_manifest),
        )
        .route(
            "/v1/clusters/{cluster}/backups/{id}/backup_manifest",
            get(get_pg_manifest),
        )
        .route("/v1/clusters/{cluster}/chunks/{chunk}", get(get_chunk))
        .route("/v1/clusters/{cluster}/offloads", post(start_offload))
        .route(
            "/v1/clusters/{cluster}/offloads/upload",
            post(start_upload).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/v1/clusters/{cluster}/verify", post(verify))
        .route("/v1/clusters/{cluster}/tier2/retry", post(tier2_retry))
        .route("/v1/clusters/{cluster}/tier2/rescan", post(tier2_rescan))
        .route(
            "/v1/clusters/{cluster}/retention",
            get(retention_show).post(retention_apply),
        )
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            tracing::info_span!("http", method = %req.method(), route = %route, uri = %req.uri())
        }))
        .with_state(state)
}

/// Every way a request can fail. Its [`ErrorKind`] decides the status code
/// ([`ApiError::status`]) and the `permanent` flag of the JSON body.
#[derive(Debug)]
pub enum ApiError {
    /// 401: no usable `Authorization: Bearer` header and no client certificate of a cluster.
    MissingToken,
    /// 401: a bearer token that belongs to no cluster.
    InvalidToken,
    /// 401 on `/metrics`, with what to send.
    MetricsUnauthorized(&'static str),
    /// 403: valid credentials of another cluster.
    Forbidden(ClusterName),
    /// 404 with this message.
    NotFound(String),
    /// 400 with this message.
    BadRequest(String),
    /// 409 with this message.
    Conflict(String),
    /// The registry's answer for this cluster (its kind decides the status).
    Registry {
        cluster: ClusterName,
        error: RegistryError,
    },
    /// 500 in the API layer itself (detail logged only).
    Internal(BoxError),
}

impl ApiError {
    fn from_registry(error: RegistryError, cluster: &ClusterName) -> ApiError {
        ApiError::Registry {
            cluster: cluster.clone(),
            error,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            ApiError::MissingToken | ApiError::InvalidToken | ApiError::MetricsUnauthorized(_) => {
                ErrorKind::Unauthorized
            }
            ApiError::Forbidden(_) => ErrorKind::Forbidden,
            ApiError::NotFound(_) => ErrorKind::NotFound,
            ApiError::BadRequest(_) => ErrorKind::BadRequest,
            ApiError::Conflict(_) => ErrorKind::Conflict,
            ApiError::Registry { error, .. } => error.kind(),
            ApiError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// The status code: the only place one is chosen for an error.
    pub fn status(&self) -> StatusCode {
        match self.kind() {
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Corrupt | ErrorKind::Unsettled | ErrorKind::Internal => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// True when retrying the same request cannot succeed (see [`ErrorKind::is_permanent`]).
    pub fn is_permanent(&self) -> bool {
        self.kind().is_permanent()
    }

    /// The message sent to the client: never the detail of a 500.
    fn public_message(&self) -> String {
        match self.kind() {
            ErrorKind::Corrupt | ErrorKind::Unsettled => {
                return "stored data failed verification".into()
            }
            ErrorKind::Internal => return "internal server error".into(),
            _ => {}
        }
        match self {
            ApiError::MissingToken => {
                "missing or malformed Authorization header: send 'Authorization: Bearer <token>' or a client certificate of the cluster"
                    .into()
            }
            ApiError::InvalidToken => "invalid token".into(),
            ApiError::MetricsUnauthorized(m) => (*m).into(),
            ApiError::Forbidden(c) => format!("{CREDENTIALS_FORBIDDEN} {c}"),
            ApiError::NotFound(m) | ApiError::BadRequest(m) | ApiError::Conflict(m) => m.clone(),
            ApiError::Registry {
                cluster,
                error: RegistryError::NotReady,
            } => format!("cluster {cluster} has not connected to its primary yet; retry later"),
            ApiError::Registry { error, .. } => error.to_string(),
            ApiError::Internal(_) => "internal server error".into(),
        }
    }

    /// Logs a 500's detail with its full source chain (sent to nobody).
    fn log_detail(&self) {
        let (cluster, detail): (Option<&ClusterName>, &(dyn std::error::Error + 'static)) =
            match self {
                ApiError::Registry { cluster, error } => (Some(cluster), error),
                ApiError::Internal(e) => (None, e.as_ref()),
                _ => return,
            };
        match self.kind() {
            ErrorKind::Corrupt | ErrorKind::Unsettled => tracing::error!(
                cluster = cluster.map(|c| c.as_str()),
                detail = %SourceChain(detail),
                permanent = self.is_permanent(),
                "stored data failed verification"
            ),
            ErrorKind::Internal => tracing::error!(
                cluster = cluster.map(|c| c.as_str()),
                detail = %SourceChain(detail),
                "internal error"
            ),
            _ => {}
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log_detail();
        let body = Json(ErrorBody {
            error: self.public_message(),
            permanent: Some(self.is_permanent()),
        });
        let mut resp = (self.status(), body).into_response();
        let headers = resp.headers_mut();
        match &self {
            ApiError::MissingToken | ApiError::MetricsUnauthorized(_) => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::InvalidToken => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            _ if self.kind() == ErrorKind::NotReady => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        resp
    }
}

/// An authenticated caller: the clusters its credentials grant (never empty).
///
/// Credentials are the bearer token and, on a TLS listener with `client_ca_file`, the
/// connection's verified client certificate (see [`crate::tls`]). Every credential
/// presented must be valid; the caller may use the clusters any of them grants.
struct Caller {
    clusters: Vec<ClusterName>,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let mut clusters: Vec<ClusterName> = Vec::new();
        if let Some(ConnectInfo(cert)) = parts.extensions.get::<ConnectInfo<ClientCert>>() {
            clusters.extend(
                cert.clusters
                    .iter()
                    .filter(|c| state.tokens.is_configured(c))
                    .cloned(),
            );
            if clusters.is_empty() && !cert.subject.is_empty() {
                tracing::warn!(subject = %cert.subject, "client certificate names no configured cluster");
            }
        }
        let Some(header) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
            return match clusters.is_empty() {
                true => Err(ApiError::MissingToken),
                false => Ok(Caller { clusters }),
            };
        };
        let value = header.to_str().map_err(|_| ApiError::MissingToken)?;
        let (scheme, token) = value.split_once(' ').ok_or(ApiError::MissingToken)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(ApiError::MissingToken);
        }
        let granted = state.tokens.authorize(token);
        if granted.is_empty() {
            tracing::warn!("request with an invalid bearer token");
            return Err(ApiError::InvalidToken);
        }
        for c in granted {
            if !clusters.contains(&c) {
                clusters.push(c);
            }
        }
        Ok(Caller { clusters })
    }
}

impl Caller {
    /// The cluster named in the path, if it exists and this caller may use it.
    fn cluster(&self, state: &AppState, raw: &str) -> Result<ClusterName, ApiError> {
        let unknown = || ApiError::NotFound(format!("unknown cluster {:?}", shorten(raw)));
        let cluster: ClusterName = raw.parse().map_err(|_| unknown())?;
        if !state.tokens.is_configured(&cluster) {
            return Err(unknown());
        }
        if !self.clusters.contains(&cluster) {
            tracing::warn!(%cluster, "credentials of another cluster refused");
            return Err(ApiError::Forbidden(cluster));
        }
        Ok(cluster)
    }
}

fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
}

fn bad_path(e: PathRejection) -> ApiError {
    ApiError::BadRequest(format!("invalid path: {}", e.body_text()))
}

/// Runs a registry call on the blocking pool (it may read disk).
async fn blocking<T: Send + 'static>(
    cluster: &ClusterName,
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?
        .map_err(|e| ApiError::from_registry(e, cluster))
}

fn status_of(state: &AppState, cluster: &ClusterName) -> Result<ClusterStatusView, ApiError> {
    state
        .registry
        .status(cluster)
        .ok_or_else(|| ApiError::NotFound(format!("unknown cluster {:?}", cluster.as_str())))
}

async fn healthz() -> &'static str {
    "ok"
}

/// Every route the router serves (the OpenAPI document must describe exactly these).
pub const ROUTES: &[&str] = &[
    "/healthz",
    "/metrics",
    "/v1/openapi.json",
    "/v1/status",
    "/v1/clusters/{cluster}/status",
    "/v1/clusters/{cluster}/wal",
    "/v1/clusters/{cluster}/wal/{walfile}",
    "/v1/clusters/{cluster}/backups",
    "/v1/clusters/{cluster}/backups/{id}",
    "/v1/clusters/{cluster}/backups/{id}/manifest",
    "/v1/clusters/{cluster}/backups/{id}/backup_manifest",
    "/v1/clusters/{cluster}/chunks/{chunk}",
    "/v1/clusters/{cluster}/offloads",
    "/v1/clusters/{cluster}/offloads/upload",
    "/v1/clusters/{cluster}/verify",
    "/v1/clusters/{cluster}/tier2/retry",
    "/v1/clusters/{cluster}/tier2/rescan",
    "/v1/clusters/{cluster}/retention",
];

async fn openapi() -> Response {
    ([(CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// `/metrics` on the API address: only with the metrics token.
async fn metrics_text(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    match state.metrics.as_ref() {
        MetricsAccess::Token(want) => {
            let presented = headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim());
            match presented {
                None => ApiError::MetricsUnauthorized(
                    "send the metrics token (metrics_token_file) as 'Authorization: Bearer <token>'",
                )
                .into_response(),
                Some(t) if !want.matches(t) => ApiError::InvalidToken.into_response(),
                Some(_) => metrics_open(State(state)).await,
            }
        }
        MetricsAccess::Listen(addr) => {
            ApiError::NotFound(format!("metrics are served on {addr} (metrics_listen)")).into_response()
        }
        MetricsAccess::Disabled => ApiError::MetricsUnauthorized(
            "metrics are not enabled: set metrics_token_file (a token Prometheus sends) or metrics_listen (a separate address) in the server config",
        )
        .into_response(),
    }
}

async fn metrics_open(State(state): State<AppState>) -> Response {
    let statuses: Vec<_> = state
        .tokens
        .clusters()
        .filter_map(|c| state.registry.status(c))
        .collect();
    (
        [(CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(&statuses),
    )
        .into_response()
}

async fn status_all(State(state): State<AppState>, caller: Caller) -> Json<StatusList> {
    let clusters = caller
        .clusters
        .iter()
        .filter_map(|c| state.registry.status(c))
        .collect();
    Json(StatusList { clusters })
}

async fn cluster_status(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ClusterStatusView>, ApiError> {
    let Path(raw) = path.map_err(bad_path)?;
    let cluster = caller.cluster(&state, &raw)?;
    status_of(&state, &cluster).map(Json)
}

async fn list_wal(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<WalList>, ApiError> {
    let Path(raw) = path.map_err(bad_path)?;
    let cluster = caller.cluster(&state, &raw)?;
    let (registry, c) = (state.registry.clone(), cluster.clone());
    let files = blocking(&cluster, move || registry.list_wal(&c)).await?;
    Ok(Json(WalList { cluster, files }))
}

async fn read_wal(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((raw_cluster, raw_name)) = path.map_err(bad_path)?;
    let cluster = caller.cluster(&state, &raw_cluster)?;
    let name: WalFileName = raw_name
        .parse()
        .map_err(|e| ApiError::BadRequest(format!("{e}")))?;
    let (registry, c, n) = (state.registry.clone(), cluster.clone(), name);
    // Opened, and its first piece read, before answering: an error there (the file
    // cannot be decrypted) is still a proper 500.
    let opened = blocking(&cluster, move || {
        let Some(mut stream) = registry.open_wal(&c, &n)? else {
            return Ok(None);
        };
        let first = stream.pieces.next().transpose()?;
        Ok(Some((stream, first)))
    })
    .await?;
    let Some((stream, first)) = opened else {
        return Err(ApiError::NotFound(format!(
            "{name} is not stored for cluster {cluster}"
        )));
    };
    tracing::debug!(%cluster, %name, bytes = ?stream.len, "serving WAL file");
    let stream_len = stream.len;
    let mut resp = Response::new(wal_body(cluster, name, stream, first));
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(len) = stream_len {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    Ok(resp)
}

/// The response body of a WAL file: pieces are read on the blocking pool and handed
/// over through a small channel (at most two pieces in flight), so a slow client holds
/// a few frames, never a whole segment. A read error cuts the response short (the
/// client sees an incomplete body and discards it) and is logged here.
fn wal_body(
    cluster: ClusterName,
    name: WalFileName,
    mut stream: WalStream,
    first: Option<Vec<u8>>,
) -> axum::body::Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(2);
    tokio::task::spawn_blocking(move || {
        let mut next = first.map(Ok);
        loop {
            let piece = match next.take().or_else(|| stream.pieces.next()) {
                None => return,
                Some(Ok(p)) => Ok(axum::body::Bytes::from(p)),
                Some(Err(e)) => {
                    tracing::error!(%cluster, %name, error = %SourceChain(&e), "serving a WAL file failed part-way; the response is cut short");
                    Err(std::io::Error::other("stored WAL failed verification"))
                }
            };
            let failed = piece.is_err();
            if tx.blocking_send(piece).is_err() || failed {
                return;
            }
        }
    });
    let pieces =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|p| (p, rx)) });
    axum::body::Body::from_stream(pieces)
}

/// A JSON request body; an empty body means `T::default()`.
fn json_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON request body: {e}")))
}

/// A backup id from the request, by [`BackupId`]'s rule.
fn backup_id(raw: &str) -> Result<BackupId, ApiError> {
    raw.parse::<BackupId>().map_err(|_| {
        ApiError::BadRequest(format!(
            "invalid backup id {:?}: ids are letters, digits and '-', e.g. 20261124T193000Z",
            shorten(raw)
        ))
    })
}

async fn list_backups(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<BackupList>, ApiError> {
    let Path(raw) = path.map_err(bad_path)?;
    let cluster = caller.cluster(&state, &raw)?;
    let (registry, c) = (state.registry.clone(), cluster.clone());
    let backups = blocking(&cluster, move || registry.list_backups(&c)).await?;
    Ok(Json(BackupList { cluster, backups }))
}

async fn get_backup(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<BackupView>, ApiError> {
    let Path((raw_cluster, raw_id)) = path.map_err(bad_path)?;
    let cluster = caller.cluster(&state, &raw_cluster)?;
    let id = backup_id(&raw_id)?;
    let (registry, c, i) = (state.registry.clone(), cluster.clone(), id.clone());
    match blocking(&cluster, move || registry.backup(&c, &i)).await? {
        Some(b) => Ok(Json(b)),
        None => Err(ApiError::NotFound(format!(
            "cluster {cluster} has no backup {id}"
        ))),
    }
}

async fn get_manifest(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((raw_cluster, raw_id)) = path.map_err(bad_path)?;
    let cluster = caller.cluster(&state, &raw_cluster)?;
    let id = backup_id(&raw_id)?;
    let (registry, c, i) = (state.registry.clone(), cluster.clone(), id.clone());
    match blocking(&cluster, move || registry.backup_manifest(&c, &i)).await? {
        Some(bytes) => Ok(([(CONTENT_TYPE, "application/json")], bytes).into_response()),
        None => Err(ApiError::NotFound(format!(
            "cluster {cluster} has no complete backup {id}"
        ))),
    }
}

async fn get_pg_manifest(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((raw_cluster, raw_id)) = path.map_err(bad_path)?;
    let cluster = caller.cluster(&state, &raw_cluster)?;
    let id = backup_id(&raw_id)?;
    let (registry, c, i) = (state.registry.clone(), cluster.clone(), id.clone());
    match blocking(&cluster, move || registry.pg_backup_manifest(&c, &i)).await? {
        Some(bytes) => Ok(([(CONTENT_TYPE, "application/json")], bytes).into_response()),
        None => Err(ApiError::NotFound(format!(
            "cluster {cluster} has no backup_manifest for backup {id}"
        ))),
    }
}

async fn get_chunk(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((raw_cluster, raw_chunk)) = path.map_err(bad_path)?;
    let cluster = caller.cluster(&state, &raw_cluster)?;
    let id: ChunkId = raw_chunk.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "invalid chunk id {:?}: 64 hex digits expected",
            shorten(&raw_chunk)
        ))
    })?;
    let (registry, c) = (state.registry.clone(), cluster.clone());
    match blocking(&cluster, move || registry.read_chunk(&c, &id)).await? {
        Some(bytes) => Ok(([(CONTENT_TYPE, "application/octet-stream")], bytes).into_response()),
        None => Err(ApiError::NotFound(format!(
            "cluster {cluster} has no chunk {raw_chunk}"
        ))),
    }
}

async fn start_backup(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<BackupView>), ApiError> {
    let Path(raw) = path.map_err(bad_path)?;
    let cluster = caller.cluster(&state, &raw)?;
    let req: BackupRequest = json_body(&body)?;
    let (registry, c) = (state.registry.clone(), cluster.clone());
    let view = blocking(&cluster, move || registry.start_backup(&c, req)).await?;
    tracing::info!(%cluster, backup = %view.id, "base backup requested");
    Ok((StatusCode::ACCEPTED, Json(view)))
}

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OffloadBody {
    from: Option<String>,
    label: Option<String>,
    end_lsn: Option<klio_core::Lsn>,
}

async fn start_offload(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<BackupView>), ApiError> {
    let Path(raw) = path.map_err(bad_path)?;
    let cluster = caller.cluster(&state, &raw)?;
    let b: OffloadBody = json_body(&body)?;
    let from = b.from.ok_or_else(|| {
        ApiError::BadRequest("missing \"from\": the directory on the server to offload".into())
    })?;
    let req = OffloadRequest {
        from,
        label: b.label,
        end_lsn: b.end_lsn,
    };
    let (registry, c) = (state.registry.clone(), cluster.clone());
    let view = blocking(&cluster, move || registry.start_offload(&c, req)).await?;
    tracing::info!(%cluster, backup = %view.id, "offload requested");
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// An upload that sends nothing for this long is cut off (it holds the cluster's one
/// backup slot).
const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(300);

/// Streams the request body into the upload job as it arrives (bounded: a slow store
/// slows the client down). Answers once the body is in; a job that stops early (a
/// refused copy) answers with its reason, without reading the rest.
async fn start_upload(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    query: Result<axum::extract::Query<UploadRequest>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<BackupView>), ApiError> {
    use futures_util::StreamExt;
    let Path(raw) = path.map_err(bad_path)?;
    let cluster = caller.cluster(&state, &raw)?;
    let axum::extract::Query(req) = query.map_err(|e| {
        ApiError::BadRequest(format!(
            "{}; the query takes label, end_lsn and total_bytes",
            e.body_text()
        ))
    })?;
    let (tx, rx) = tokio::sync::mpsc::channel::<axum::body::Bytes>(16);
    let (registry, c) = (state.registry.clone(), cluster.clone());
    let mut stream = body.into_data_stream();
    let view = match blocking(&cluster, move || registry.start_upload(&c, req, rx)).await {
        Ok(view) => view,
        Err(e) => {
            // Refused before reading anything: the client is still sending; read what
            // it sends (within limits) so that it gets this answer, not a broken pipe.
            drain_refused(&mut stream).await;
            return Err(e);
        }
    };
    tracing::info!(%cluster, backup = %view.id, "offload upload started");
    let mut stopped = false;
    loop {
        let piece = match tokio::time::timeout(UPLOAD_IDLE, stream.next()).await {
            Ok(Some(piece)) => piece,
            Ok(None) => break,
            Err(_) => Err(axum::Error::new(format!(
                "no data for {} s",
                UPLOAD_IDLE.as_secs()
            ))),
        };
        match piece {
            Ok(b) => {
                if tx.send(b).await.is_err() {
                    stopped = true;
                    break;
                }
            }
            Err(e) => {
                // The job sees the body end without its end frame and fails.
                drop(tx);
                tracing::warn!(%cluster, backup = %view.id, "offload upload cut off: {e}");
                return Err(ApiError::BadRequest(format!(
                    "the upload body was cut off ({e}); backup {} is aborted, nothing of it is kept",
                    view.id
                )));
            }
        }
    }
    drop(tx);
    if stopped {
        drain_refused(&mut stream).await;
        let why = state
            .registry
            .job_outcome(&cluster, &view.id)
            .await
            .unwrap_or_else(|| "the job stopped reading".into());
        return Err(ApiError::BadRequest(format!(
            "upload refused, backup {} failed: {why}",
            view.id
        )));
    }
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// Most of a refused upload's body read (and dropped) so that its client gets the
/// refusal: beyond it, or after [`REFUSED_BODY_IDLE`] without data, the connection is
/// closed and the client sees it cut.
const REFUSED_BODY_DRAIN: u64 = 1 << 30;
const REFUSED_BODY_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads and drops what is left of a refused upload's body, up to
/// [`REFUSED_BODY_DRAIN`] bytes: a client still sending when the answer comes would
/// otherwise see a broken pipe instead of the reason.
async fn drain_refused<S>(stream: &mut S)
where
    S: futures_util::Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin,
{
    use futures_util::StreamExt;
    let mut read = 0u64;
    while read < REFUSED_BODY_DRAIN {
        match tokio::time::timeout(REFUSED_BODY_IDLE, stream.next()).await {
            Ok(Some(Ok(b))) => read += b.len() as u64,
            _ => break,
        }
    }
}

async fn verify(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<Json<VerifyReport>, ApiError> {
    let Path(raw) = path.map_err(bad_path)?;
    let cluster = caller.cluster(&state, &raw)?;
    // The backup id, if any, is checked by `BackupId`'s rule as the body is parsed.
    let req: VerifyRequest = json_body(&body)?;
    let running = VerifyGuard::take(&state, &cluster)?;
    let (registry, c) = (state.registry.clone(), cluster.clone());
    let report = blocking(&cluster, move || {
        let _running = running;
        registry.verify(&c, req)
    })
    .await?;
    Ok(Json(report))
}

/// `POST /v1/clusters/{cluster}/tier2/retry`: queues dead letters again.
async fn tier2_retry(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<Json<klio_api::Tier2RetryReport>, ApiError> {
    let Path(raw) = path.map_err(bad_path)?;
    let cluster = caller.cluster(&state, &raw)?;
    let req: klio_api::Tier2RetryRequest = if body.is_empty() {
        klio_api::Tier2RetryRequest::default()
    } else {
        json_body(&body)?
    };
    let (registry, c) = (state.registry.clone(), cluster.clone());
    let report = blocking(&cluster, move || registry.tier2_retry(&c, req)).await?;
    Ok(Json(report))
}

/// `POST /v1/clusters/{cluster}/tier2/rescan`: a read-only server scans Tier 2 for what
/// the writing server added.
async fn tier2_rescan(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<klio_api::Tier2RescanReport>, ApiError> {
    let Path(raw) = path.map_err(bad_path)?;
    let cluster = caller.cluster(&state, &raw)?;
    let (registry, c) = (state.registry.clone(), cluster.clone());
    let report = blocking(&cluster, move || registry.tier2_rescan(&c)).await?;
    Ok(Json(report))
}

/// `?tier=` of `GET /v1/clusters/{cluster}/retention`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TierQuery {
    tier: Option<u8>,
}

/// `GET /v1/clusters/{cluster}/retention`: what retention would remove now.
async fn retention_show(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    query: Result<axum::extract::Query<TierQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<klio_api::RetentionReport>, ApiError> {
    let Path(raw) = path.map_err(bad_path)?;
    let cluster = caller.cluster(&state, &raw)?;
    let axum::extract::Query(q) = query
        .map_err(|e| ApiError::BadRequest(format!("bad query ({e}): use ?tier=1 or ?tier=2")))?;
    let req = klio_api::RetentionRequest {
        dry_run: true,
        tier: q.tier,
    };
    let (registry, c) = (state.registry.clone(), cluster.clone());
    let report = blocking(&cluster, move || registry.retention(&c, req)).await?;
    Ok(Json(report))
}

/// `POST /v1/clusters/{cluster}/retention`: applies retention now (or a dry run).
async fn retention_apply(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<Json<klio_api::RetentionReport>, ApiError> {
    let Path(raw) = path.map_err(bad_path)?;
    let cluster = caller.cluster(&state, &raw)?;
    let req: klio_api::RetentionRequest = if body.is_empty() {
        klio_api::RetentionRequest::default()
    } else {
        json_body(&body)?
    };
    let (registry, c) = (state.registry.clone(), cluster.clone());
    let report = blocking(&cluster, move || registry.retention(&c, req)).await?;
    Ok(Json(report))
}

/// Marks a cluster's `verify` as running until dropped; it is dropped by the blocking
/// work itself, so a client that goes away does not free the slot early.
struct VerifyGuard {
    verifying: Arc<std::sync::Mutex<std::collections::HashSet<ClusterName>>>,
    cluster: ClusterName,
}

impl VerifyGuard {
    fn take(state: &AppState, cluster: &ClusterName) -> Result<VerifyGuard, ApiError> {
        let mut running = state
            .verifying
            .lock()
            .map_err(|_| ApiError::Internal("the lock of running verifies is poisoned".into()))?;
        if !running.insert(cluster.clone()) {
            return Err(ApiError::Conflict(format!(
                "a verify of cluster {cluster} is already running; wait for it to finish"
            )));
        }
        Ok(VerifyGuard {
            verifying: state.verifying.clone(),
            cluster: cluster.clone(),
        })
    }
}

impl Drop for VerifyGuard {
    fn drop(&mut self) {
        if let Ok(mut running) = self.verifying.lock() {
            running.remove(&self.cluster);
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(any(test, feature = "testing"))]
pub mod fixture;
