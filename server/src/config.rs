//! The Klio Server's configuration: a TOML file, overridden by `KLIO_*` environment
//! variables, validated once into [`Config`].
//!
//! ```toml
//! data_dir = "/var/lib/klio"
//! mode = "standard"                          # or "read-only": restore from [tier2] alone
//! rescan_interval = "5m"                     # read-only: how often to rescan Tier 2 (default 5m)
//! listen = "127.0.0.1:7070"                  # HTTP API (default)
//! master_key_file = "/etc/klio/master.key"
//! log_format = "text"                        # or "json" (default "text")
//! [[cluster]]
//! name = "pg-main"
//! conninfo = "host=127.0.0.1 port=5432 user=streaming_replica sslmode=disable"
//! slot = "klio"                              # default "klio"
//! token_file = "/etc/klio/pg-main.token"     # bearer token of this cluster's clients
//! application_name = "klio"                  # default "klio"
//! backup_schedule = "0 3 * * *"              # cron (UTC) for base backups; default none
//! backup_checkpoint = "fast"                 # or "spread" (default "fast")
//! client_ca_file = "/etc/klio/pg-main-ca.crt" # optional: client certificates of this cluster
//! client_cert_dns_names = ["klio-client.pg.svc"] # DNS SANs that name it (besides its name)
//! offload_roots = ["/snapshots/pg-main"]     # where `klio offload --from` may read; default none
//! offload_uploads = true                     # accept `klio offload --upload` (a copy sent by a
//!                                            #   client, e.g. the operator's snapshot Job); default false
//! [tls]                                      # optional: the API speaks HTTPS only
//! cert_file = "/etc/klio/tls/tls.crt"        # PEM chain, server certificate first
//! key_file = "/etc/klio/tls/tls.key"         # its PEM private key (mode 0600)
//! client_ca_file = "/etc/klio/tls/ca.crt"    # optional: one CA for every cluster, which
//! client_ca_shared = true                    #   must be said explicitly
//! require_client_cert = false                # default false: bearer tokens keep working
//! [tier2]                                    # optional: relay WAL and backups to object storage
//! url = "s3://bucket/prefix"                 # or gs://bucket/prefix, az://container/prefix, file:///dir
//! endpoint = "https://minio.example:9000"    # S3-compatible server (path-style requests)
//! region = "eu-west-1"                       # default us-east-1
//! access_key_id_file = "/etc/klio/s3.id"     # static keys (0600); without them, the AWS chain
//! secret_access_key_file = "/etc/klio/s3.secret"
//! ca_file = "/etc/klio/s3-ca.pem"            # extra CA for the endpoint
//! allow_http = false                         # plain http:// endpoints only when true
//! [retention]                                # optional: what each tier keeps (default: all)
//! recovery_window = "7d"                     # and/or latest, daily, weekly, monthly, yearly
//! latest = 2
//! [retention.tier2]                          # replaces [retention]'s rules for Tier 2
//! recovery_window = "30d"
//! ```
//! Top level also: `metrics_token_file` (bearer token Prometheus sends for `/metrics`)
//! or `metrics_listen` (a separate plain-HTTP address serving only `/metrics`);
//! `api_max_connections` (default 1024) and `api_header_timeout_secs` (default 10).
//!
//! A read-only server (`mode = "read-only"`) streams nothing and takes no backups: it
//! rebuilds its catalog from `[tier2]` (required) and serves restores. Its clusters need
//! only `name` and `token_file`; `conninfo`, `backup_schedule`, `offload_roots` and `offload_uploads` are
//! refused, as they would have it write.
//!
//! Overrides: `KLIO_DATA_DIR`, `KLIO_MODE`, `KLIO_LISTEN`, `KLIO_MASTER_KEY_FILE`, `KLIO_LOG_FORMAT`,
//! `KLIO_METRICS_LISTEN`, `KLIO_METRICS_TOKEN_FILE`,
//! `KLIO_TLS_CERT_FILE`, `KLIO_TLS_KEY_FILE`, `KLIO_TLS_CLIENT_CA_FILE`, `KLIO_TIER2_URL`
//! (alone it configures Tier 2), `KLIO_TIER2_ENDPOINT`, `KLIO_TIER2_REGION`,
//! `KLIO_TIER2_ACCESS_KEY_ID_FILE`, `KLIO_TIER2_SECRET_ACCESS_KEY_FILE`,
//! `KLIO_TIER2_CA_FILE`, `KLIO_TIER2_ALLOW_HTTP` and, per cluster,
//! `KLIO_CLUSTER_<NAME>_CONNINFO` (name upper-cased, `-` → `_`).
//! An empty variable counts as unset. Relative paths are resolved against the config
//! file's directory. Token files and TLS files are read here (secrets come by file path)
//! and must be readable by their owner only ([`klio_core::secret_file`]). Every error
//! names the file and the offending key. Nothing here writes to disk.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use klio_core::{secret_file, ClusterName, MasterKey};
use serde::Deserialize;

use crate::auth::{ClusterToken, TokenSet};
use crate::schedule::Schedule;
pub use klio_core::log_format::LogFormat;

use crate::tls::{ApiTls, ClientCas, ClusterCa};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
pub const DEFAULT_SLOT: &str = "klio";
pub const DEFAULT_APPLICATION_NAME: &str = "klio";
pub const DEFAULT_API_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_API_HEADER_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_RESCAN_INTERVAL_SECS: u64 = 300;

/// How `/metrics` is protected.
#[derive(Clone, Debug, Default)]
pub enum MetricsAccess {
    /// Not configured: `/metrics` on the API answers 401 naming the settings.
    #[default]
    Disabled,
    /// On the API address, with this bearer token (`metrics_token_file`).
    Token(ClusterToken),
    /// On its own plain-HTTP address, without credentials (`metrics_listen`).
    Listen(SocketAddr),
}

/// What a server does: stream and back up its clusters, or only serve what Tier 2 holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerMode {
    /// Streams WAL, takes backups, relays to Tier 2 when configured.
    #[default]
    Standard,
    /// Rebuilds its catalog from Tier 2 and serves restores; writes nowhere but its own
    /// catalog (`mode = "read-only"`).
    ReadOnly,
}

impl ServerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerMode::Standard => "standard",
            ServerMode::ReadOnly => "read-only",
        }
    }
}

/// The answer a read-only server gives to every request that would write.
pub const READ_ONLY_REFUSAL: &str = "this Klio Server is read-only (mode = \"read-only\"): it restores from Tier 2 and takes no backups, offloads or retries; send the request to the server that streams this cluster";

/// The validated server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    pub data_dir: PathBuf,
    pub mode: ServerMode,
    /// A read-only server rescans Tier 2 this often (`rescan_interval`, default 5 min).
    pub rescan_interval: std::time::Duration,
    pub listen: SocketAddr,
    pub master_key_file: PathBuf,
    pub log_format: LogFormat,
    /// `[tls]`: HTTPS (and client certificates) for the API; `None`: plain HTTP.
    pub tls: Option<ApiTls>,
    pub metrics: MetricsAccess,
    /// Most API connections open at once (`api_max_connections`).
    pub api_max_connections: usize,
    /// A client must send a request's headers within this (`api_header_timeout_secs`);
    /// also how long an idle keep-alive connection stays open.
    pub api_header_timeout: std::time::Duration,
    /// `[tier2]`: object storage every cluster's WAL and backups are relayed to.
    pub tier2: Option<klio_tiering::Tier2Settings>,
    /// `[retention]`: what each tier keeps (no rules: everything).
    pub retention: klio_tiering::retention::Retention,
    /// In file order; names are unique.
    pub clusters: Vec<ClusterConfig>,
}

/// One protected PostgreSQL cluster.
#[derive(Clone)]
pub struct ClusterConfig {
    pub name: ClusterName,
    /// libpq-style connection string of the primary (may hold a password); empty on a
    /// read-only server.
    pub conninfo: String,
    /// Physical replication slot name.
    pub slot: String,
    pub application_name: String,
    pub token_file: PathBuf,
    /// The token read from `token_file`.
    pub token: ClusterToken,
    /// When to take base backups (UTC); `None`: only on request.
    pub backup_schedule: Option<Schedule>,
    /// Ask PostgreSQL for an immediate checkpoint at backup start (`false`: spread).
    pub backup_fast_checkpoint: bool,
    /// Directories an offload may read from (absolute, symbolic links resolved); empty:
    /// offload over the API is disabled.
    pub offload_roots: Vec<PathBuf>,
    /// Accept offload uploads (a PGDATA copy a client reads and sends).
    pub offload_uploads: bool,
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("name", &self.name)
            .field("conninfo", &"<hidden>")
            .field("slot", &self.slot)
            .field("application_name", &self.application_name)
            .field("token_file", &self.token_file)
            .field("backup_schedule", &self.backup_schedule)
            .field("backup_fast_checkpoint", &self.backup_fast_checkpoint)
            .field("offload_roots", &self.offload_roots)
            .field("offload_uploads", &self.offload_uploads)
            .finish()
    }
}

/// A configuration that cannot be used. Display is one line naming file and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read the config file: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
}

impl ConfigError {
    /// The offending key, e.g. `cluster[1].token_file`.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<PathBuf>,
    mode: Option<String>,
    rescan_interval: Option<String>,
    listen: Option<String>,
    master_key_file: Option<PathBuf>,
    log_format: Option<String>,
    metrics_token_file: Option<PathBuf>,
    metrics_listen: Option<String>,
    api_max_connections: Option<usize>,
    api_header_timeout_secs: Option<u64>,
    tls: Option<RawTls>,
    tier2: Option<klio_tiering::Tier2Config>,
    retention: Option<klio_tiering::retention::RetentionConfig>,
    #[serde(default, rename = "cluster")]
    clusters: Vec<RawCluster>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: Option<String>,
    conninfo: Option<String>,
    slot: Option<String>,
    token_file: Option<PathBuf>,
    application_name: Option<String>,
    backup_schedule: Option<String>,
    backup_checkpoint: Option<String>,
    client_ca_file: Option<PathBuf>,
    client_cert_dns_names: Option<Vec<String>>,
    offload_roots: Option<Vec<PathBuf>>,
    offload_uploads: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
    client_ca_shared: Option<bool>,
    require_client_cert: Option<bool>,
}

/// A value with the key it is reported under (`listen`, or `listen (KLIO_LISTEN)`).
struct Keyed<T> {
    key: String,
    value: Option<T>,
}

impl Config {
    /// Reads `path` with overrides from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_env(path, |k| std::env::var(k).ok())
    }

    /// Reads `path` with overrides looked up through `env`.
    pub fn load_with_env(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, path, env)
    }

    /// Parses and validates config text as if read from `file`.
    pub fn parse(
        text: &str,
        file: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let shown = file.display().to_string();
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|s| line_column(text, s.start))
                .unwrap_or((1, 1));
            ConfigError::Parse {
                file: shown.clone(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        let env = |k: &str| env(k).filter(|v| !v.is_empty());
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: shown.clone(),
            key: key.to_string(),
            message,
        };
        let base = file.parent().filter(|p| !p.as_os_str().is_empty());
        let resolve = |p: PathBuf| match base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p,
        };

        let data_dir = overridden(
            "data_dir",
            raw.data_dir,
            "KLIO_DATA_DIR",
            &env,
            PathBuf::from,
        );
        let data_dir = require(data_dir, "KLIO_DATA_DIR", &invalid)?;
        let mode = overridden("mode", raw.mode, "KLIO_MODE", &env, |s| s);
        let mode = match mode.value.as_deref().map(str::trim) {
            None | Some("standard") => ServerMode::Standard,
            Some("read-only") => ServerMode::ReadOnly,
            Some(other) => {
                return Err(invalid(
                    &mode.key,
                    format!("{other:?} is not a mode: use \"standard\" (stream and back up) or \"read-only\" (restore from Tier 2 alone)"),
                ))
            }
        };
        let read_only = mode == ServerMode::ReadOnly;
        let rescan_interval = match raw.rescan_interval.as_deref() {
            None => std::time::Duration::from_secs(DEFAULT_RESCAN_INTERVAL_SECS),
            Some(_) if !read_only => {
                return Err(invalid(
                    "rescan_interval",
                    "applies to read-only servers only (mode = \"read-only\"); a writing server knows what it uploads".into(),
                ))
            }
            Some(text) => std::time::Duration::from_secs(
                klio_tiering::retention::parse_duration(text)
                    .map_err(|m| invalid("rescan_interval", m))?,
            ),
        };
        let master_key_file = overridden(
            "master_key_file",
            raw.master_key_file,
            "KLIO_MASTER_KEY_FILE",
            &env,
            PathBuf::from,
        );
        let master_key_file = require(master_key_file, "KLIO_MASTER_KEY_FILE", &invalid)?;

        let listen = overridden("listen", raw.listen, "KLIO_LISTEN", &env, |s| s);
        let listen: SocketAddr = match listen.value {
            None => DEFAULT_LISTEN.parse().map_err(|_| invalid("listen", "bad default".into()))?,
            Some(s) => s.trim().parse::<SocketAddr>().map_err(|_| {
                invalid(
                    &listen.key,
                    format!("{s:?} is not a socket address; use IP:PORT such as {DEFAULT_LISTEN} or 0.0.0.0:7070 (host names are not accepted)"),
                )
            })?,
        };

        let log_format = overridden("log_format", raw.log_format, "KLIO_LOG_FORMAT", &env, |s| s);
        let log_format = match &log_format.value {
            None => LogFormat::default(),
            Some(s) => s.parse().map_err(|m| invalid(&log_format.key, m))?,
        };

        let metrics = metrics_access(
            raw.metrics_listen,
            raw.metrics_token_file,
            &env,
            &invalid,
            &resolve,
        )?;
        let api_max_connections = raw
            .api_max_connections
            .unwrap_or(DEFAULT_API_MAX_CONNECTIONS);
        if !(1..=1_000_000).contains(&api_max_connections) {
            return Err(invalid(
                "api_max_connections",
                format!("{api_max_connections} is out of range: use 1 to 1000000 (default {DEFAULT_API_MAX_CONNECTIONS})"),
            ));
        }
        let header_secs = raw
            .api_header_timeout_secs
            .unwrap_or(DEFAULT_API_HEADER_TIMEOUT_SECS);
        if !(1..=600).contains(&header_secs) {
            return Err(invalid(
                "api_header_timeout_secs",
                format!("{header_secs} is out of range: use 1 to 600 seconds (default {DEFAULT_API_HEADER_TIMEOUT_SECS})"),
            ));
        }

        if raw.clusters.is_empty() {
            return Err(invalid(
                "cluster",
                "no cluster configured: add at least one [[cluster]] table with name, conninfo and token_file".into(),
            ));
        }
        let mut clusters: Vec<ClusterConfig> = Vec::with_capacity(raw.clusters.len());
        let mut seen_names: HashMap<ClusterName, usize> = HashMap::new();
        let mut cluster_cas: Vec<ClusterCa> = Vec::with_capacity(raw.clusters.len());
        for (i, rc) in raw.clusters.into_iter().enumerate() {
            let key = |field: &str| format!("cluster[{i}].{field}");
            let name_str = rc.name.ok_or_else(|| {
                invalid(
                    &key("name"),
                    "missing: every [[cluster]] needs a name".into(),
                )
            })?;
            let name: ClusterName = name_str
                .parse()
                .map_err(|e| invalid(&key("name"), format!("{e}")))?;
            if let Some(first) = seen_names.insert(name.clone(), i) {
                return Err(invalid(
                    &key("name"),
                    format!("duplicate cluster name {name:?} (also cluster[{first}].name); names must be unique"),
                ));
            }

            let conninfo_var = format!(
                "KLIO_CLUSTER_{}_CONNINFO",
                name.as_str().to_ascii_uppercase().replace('-', "_")
            );
            let conninfo = overridden(&key("conninfo"), rc.conninfo, &conninfo_var, &env, |s| s);
            let conninfo = if read_only {
                if conninfo.value.is_some() {
                    return Err(invalid(
                        &conninfo.key,
                        "a read-only server does not stream: remove conninfo (or set mode = \"standard\")".into(),
                    ));
                }
                String::new()
            } else {
                require(conninfo, &conninfo_var, &invalid)?
            };
            if !read_only && conninfo.trim().is_empty() {
                return Err(invalid(&key("conninfo"), "must not be empty".into()));
            }
            if read_only {
                for (field, set) in [
                    ("backup_schedule", rc.backup_schedule.is_some()),
                    ("offload_roots", rc.offload_roots.is_some()),
                    ("offload_uploads", rc.offload_uploads.is_some()),
                ] {
                    if set {
                        return Err(invalid(
                            &key(field),
                            format!("a read-only server takes no backups: remove {field} (the server that streams the cluster takes them)"),
                        ));
                    }
                }
            }

            let slot = rc.slot.unwrap_or_else(|| DEFAULT_SLOT.to_string());
            if !valid_slot_name(&slot) {
                return Err(invalid(
                    &key("slot"),
                    format!("invalid replication slot name {slot:?}: use 1 to 63 characters from a-z, 0-9 and '_'"),
                ));
            }

            let application_name = rc
                .application_name
                .unwrap_or_else(|| DEFAULT_APPLICATION_NAME.to_string());
            if application_name.is_empty()
                || application_name.len() > 63
                || !application_name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() || b == b' ')
            {
                return Err(invalid(
                    &key("application_name"),
                    format!("invalid application_name {application_name:?}: use 1 to 63 printable ASCII characters"),
                ));
            }

            let token_file = rc.token_file.map(&resolve).ok_or_else(|| {
                invalid(
                    &key("token_file"),
                    "missing: every cluster needs a file holding its clients' bearer token".into(),
                )
            })?;
            let token = ClusterToken::from_file(&token_file)
                .map_err(|e| invalid(&key("token_file"), e.to_string()))?;
            secret_file::check(&token_file)
                .map_err(|e| invalid(&key("token_file"), e.to_string()))?;
            if let Some(other) = clusters.iter().find(|c| c.token == token) {
                return Err(invalid(
                    &key("token_file"),
                    format!(
                        "holds the same token as cluster {:?} ({}); each cluster needs its own token",
                        other.name.as_str(),
                        other.token_file.display()
                    ),
                ));
            }

            let backup_schedule = match rc.backup_schedule.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(text) => Some(text.parse::<Schedule>().map_err(|m| {
                    invalid(
                        &key("backup_schedule"),
                        format!("{m} (example: \"0 3 * * *\" for 03:00 UTC daily)"),
                    )
                })?),
            };
            let backup_fast_checkpoint = match rc.backup_checkpoint.as_deref() {
                None | Some("fast") => true,
                Some("spread") => false,
                Some(other) => {
                    return Err(invalid(
                        &key("backup_checkpoint"),
                        format!("{other:?} is not a checkpoint mode: use \"fast\" or \"spread\""),
                    ))
                }
            };

            let mut dns_names = rc.client_cert_dns_names.unwrap_or_default();
            for n in &mut dns_names {
                *n = n.trim().to_ascii_lowercase();
                if n.is_empty()
                    || n.len() > 253
                    || !n
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                {
                    return Err(invalid(
                        &key("client_cert_dns_names"),
                        format!("{n:?} is not a DNS name: list full names such as \"klio-client.pg.svc\" (no wildcards)"),
                    ));
                }
            }
            cluster_cas.push(ClusterCa {
                cluster: name.clone(),
                ca_file: rc.client_ca_file.map(&resolve),
                dns_names,
            });
            let offload_roots = offload_roots(
                rc.offload_roots.unwrap_or_default(),
                &key("offload_roots"),
                &[&data_dir, &master_key_file].map(|p| resolve(p.clone())),
                &invalid,
            )?;

            clusters.push(ClusterConfig {
                name,
                conninfo,
                slot,
                application_name,
                token_file,
                token,
                backup_schedule,
                backup_fast_checkpoint,
                offload_roots,
                offload_uploads: rc.offload_uploads.unwrap_or(false),
            });
        }

        let tls = api_tls(raw.tls, cluster_cas, &env, &invalid, &resolve)?;
        let tier2 = tier2(raw.tier2, &env, &invalid, &resolve)?;
        let retention = match &raw.retention {
            None => klio_tiering::retention::Retention::default(),
            Some(_) if read_only => {
                return Err(invalid(
                    "retention",
                    "a read-only server removes nothing: remove [retention] (the writing server applies it)".into(),
                ))
            }
            Some(r) => r
                .validate()
                .map_err(|e| invalid(&format!("retention.{}", e.field), e.message))?,
        };
        if read_only && tier2.is_none() {
            return Err(invalid(
                "tier2",
                "mode = \"read-only\" restores from Tier 2 alone: add a [tier2] table (url = \"s3://bucket/prefix\"...) naming the bucket the writing server fills".into(),
            ));
        }

        Ok(Config {
            file: file.to_path_buf(),
            data_dir: resolve(data_dir),
            mode,
            rescan_interval,
            listen,
            master_key_file: resolve(master_key_file),
            log_format,
            tls,
            metrics,
            api_max_connections,
            api_header_timeout: std::time::Duration::from_secs(header_secs),
            tier2,
            retention,
            clusters,
        })
    }

    /// The clusters' token digests, for [`crate::http::AppState`].
    pub fn tokens(&self) -> TokenSet {
        TokenSet::new(
            self.clusters
                .iter()
                .map(|c| (c.name.clone(), c.token.clone())),
        )
    }

    /// Reads the master key, which must be readable by its owner only; the error names
    /// `master_key_file`.
    pub fn load_master_key(&self) -> Result<MasterKey, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            file: self.file.display().to_string(),
            key: "master_key_file".into(),
            message,
        };
        let key = MasterKey::from_file(&self.master_key_file).map_err(|e| {
            invalid(format!(
                "{e}; generate one with `klio keys generate --output FILE`"
            ))
        })?;
        secret_file::check(&self.master_key_file).map_err(|e| invalid(e.to_string()))?;
        Ok(key)
    }
}

/// `metrics_listen` or `metrics_token_file` (with their overrides); at most one.
fn metrics_access(
    listen: Option<String>,
    token_file: Option<PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
    invalid: &dyn Fn(&str, String) -> ConfigError,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<MetricsAccess, ConfigError> {
    let listen = overridden("metrics_listen", listen, "KLIO_METRICS_LISTEN", env, |s| s);
    let token = overridden(
        "metrics_token_file",
        token_file,
        "KLIO_METRICS_TOKEN_FILE",
        env,
        PathBuf::from,
    );
    match (listen.value, token.value) {
        (Some(_), Some(_)) => Err(invalid(
            &listen.key,
            "set either metrics_listen (a separate address for /metrics) or metrics_token_file (a token on the API address), not both".into(),
        )),
        (Some(addr), None) => addr
            .trim()
            .parse::<SocketAddr>()
            .map(MetricsAccess::Listen)
            .map_err(|_| {
                invalid(
                    &listen.key,
                    format!("{addr:?} is not a socket address; use IP:PORT such as 10.0.0.5:9187"),
                )
            }),
        (None, Some(path)) => {
            let path = resolve(path);
            let t = ClusterToken::from_file(&path).map_err(|e| invalid(&token.key, e.to_string()))?;
            secret_file::check(&path).map_err(|e| invalid(&token.key, e.to_string()))?;
            Ok(MetricsAccess::Token(t))
        }
        (None, None) => Ok(MetricsAccess::Disabled),
    }
}

/// `[tier2]` with its `KLIO_TIER2_*` overrides (`KLIO_TIER2_URL` alone configures Tier 2
/// without a table); the credential and CA files are read and checked here.
fn tier2(
    raw: Option<klio_tiering::Tier2Config>,
    env: &dyn Fn(&str) -> Option<String>,
    invalid: &dyn Fn(&str, String) -> ConfigError,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<Option<klio_tiering::Tier2Settings>, ConfigError> {
    let from_env = env(klio_tiering::config::ENV_URL).is_some();
    let Some(mut t) = raw.or_else(|| from_env.then(Default::default)) else {
        return Ok(None);
    };
    let tiering_invalid = |e: klio_tiering::config::ConfigError| {
        invalid(&format!("tier2.{}", e.field()), e.to_string())
    };
    t.apply_overrides_from(env).map_err(tiering_invalid)?;
    for f in [
        &mut t.access_key_id_file,
        &mut t.secret_access_key_file,
        &mut t.ca_file,
    ] {
        *f = f.take().map(resolve);
    }
    if t.url.trim().is_empty() {
        return Err(invalid(
            "tier2.url",
            "missing: [tier2] needs url = \"s3://bucket/prefix\" (or gs://, az://, file:///) or KLIO_TIER2_URL".into(),
        ));
    }
    t.validate().map(Some).map_err(tiering_invalid)
}

/// `[tls]` with its `KLIO_TLS_*` overrides and the clusters' client CAs; the files are
/// read and checked here.
fn api_tls(
    raw: Option<RawTls>,
    cluster_cas: Vec<ClusterCa>,
    env: &dyn Fn(&str) -> Option<String>,
    invalid: &dyn Fn(&str, String) -> ConfigError,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<Option<ApiTls>, ConfigError> {
    let raw = raw.unwrap_or_default();
    let file = |name: &str, value: Option<PathBuf>| {
        let var = format!("KLIO_TLS_{}", name.to_ascii_uppercase());
        overridden(&format!("tls.{name}"), value, &var, env, PathBuf::from)
    };
    let cert = file("cert_file", raw.cert_file);
    let key = file("key_file", raw.key_file);
    let ca = file("client_ca_file", raw.client_ca_file);
    let per_cluster_ca = cluster_cas.iter().any(|c| c.ca_file.is_some());
    let (cert_file, key_file) = match (cert.value, key.value) {
        (None, None) => {
            if ca.value.is_some() || per_cluster_ca || raw.require_client_cert == Some(true) {
                return Err(invalid(
                    &cert.key,
                    "missing: client certificates need TLS; set cert_file and key_file in [tls]"
                        .into(),
                ));
            }
            return Ok(None);
        }
        (Some(_), None) => {
            return Err(invalid(
                &key.key,
                "missing: with cert_file set, key_file must name the certificate's private key"
                    .into(),
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                &cert.key,
                "missing: with key_file set, cert_file must name the server certificate".into(),
            ))
        }
        (Some(c), Some(k)) => (resolve(c), resolve(k)),
    };
    if ca.value.is_some() && raw.client_ca_shared != Some(true) {
        return Err(invalid(
            &ca.key,
            "a server-wide client CA lets every certificate it signs act for every cluster; \
             set client_ca_file in each [[cluster]] table instead (CloudNativePG: the \
             <cluster>-ca Secret), or add client_ca_shared = true to [tls] to keep one CA \
             for all clusters"
                .into(),
        ));
    }
    let cluster_keys: Vec<(ClusterName, String)> = cluster_cas
        .iter()
        .enumerate()
        .map(|(i, c)| (c.cluster.clone(), format!("cluster[{i}].client_ca_file")))
        .collect();
    let keys = [
        ("cert_file", cert.key),
        ("key_file", key.key),
        ("client_ca_file", ca.key),
    ];
    let cas = ClientCas {
        shared: ca.value.map(resolve),
        clusters: cluster_cas,
    };
    ApiTls::load(
        cert_file,
        key_file,
        cas,
        raw.require_client_cert.unwrap_or(false),
    )
    .map(Some)
    .map_err(|e| {
        let key = match &e.cluster {
            Some(c) => cluster_keys
                .iter()
                .find(|(name, _)| name == c)
                .map(|(_, k)| k.clone()),
            None => keys
                .iter()
                .find(|(setting, _)| *setting == e.setting)
                .map(|(_, key)| key.clone()),
        }
        .unwrap_or_else(|| format!("tls.{}", e.setting));
        invalid(&key, e.to_string())
    })
}

/// The file's value, replaced by the environment variable `var` when that is set.
fn overridden<T>(
    key: &str,
    file_value: Option<T>,
    var: &str,
    env: &dyn Fn(&str) -> Option<String>,
    from_env: impl Fn(String) -> T,
) -> Keyed<T> {
    match env(var) {
        Some(v) => Keyed {
            key: format!("{key} ({var})"),
            value: Some(from_env(v)),
        },
        None => Keyed {
            key: key.to_string(),
            value: file_value,
        },
    }
}

fn require<T>(
    v: Keyed<T>,
    var: &str,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<T, ConfigError> {
    v.value.ok_or_else(|| {
        invalid(
            &v.key,
            format!("missing: set it in the config file or with {var}"),
        )
    })
}

/// `offload_roots`: absolute directories that exist, symbolic links resolved; none may
/// hold Klio's own files (`own`: the data directory and the master key file).
fn offload_roots(
    raw: Vec<PathBuf>,
    key: &str,
    own: &[PathBuf],
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Vec<PathBuf>, ConfigError> {
    let real = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
    let mut roots = Vec::with_capacity(raw.len());
    for (j, p) in raw.into_iter().enumerate() {
        let k = format!("{key}[{j}]");
        if !p.is_absolute() {
            return Err(invalid(
                &k,
                format!("{} is not an absolute path", p.display()),
            ));
        }
        let root = std::fs::canonicalize(&p)
            .ok()
            .filter(|r| r.is_dir())
            .ok_or_else(|| invalid(&k, format!("{} is not an existing directory", p.display())))?;
        if let Some(mine) = own.iter().find(|o| real(o).starts_with(&root)) {
            return Err(invalid(
                &k,
                format!(
                    "{} holds Klio's own {}; name the directory where snapshots are mounted",
                    p.display(),
                    mine.display()
                ),
            ));
        }
        roots.push(root);
    }
    Ok(roots)
}

fn valid_slot_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests;
