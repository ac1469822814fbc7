//! The `[tier2]` configuration table: where Tier 2 lives and how to reach it, its
//! `KLIO_TIER2_*` environment overrides, and its validation into [`Tier2Settings`] (the
//! only form [`crate::store::Tier2`] is built from). Reads the credential and CA files it
//! names; writes nothing.
//!
//! Secrets (the static keys) are read from files that must satisfy
//! [`klio_core::secret_file`] (0600, like the master key); they are held in
//! [`zeroize::Zeroizing`] buffers and never appear in `Debug` output. The configuration
//! itself holds only paths.

use std::fmt;
use std::path::{Path, PathBuf};

use klio_core::secret_file;
use serde::Deserialize;
use url::Url;
use zeroize::Zeroizing;

/// The `[tier2]` table as written in `klio.toml`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Tier2Config {
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` or
    /// `file:///absolute/path`.
    pub url: String,
    /// An S3-compatible endpoint (`https://host:port`); path-style addressing is used.
    pub endpoint: Option<String>,
    /// The S3 region (default `us-east-1`).
    pub region: Option<String>,
    /// A file holding the S3 access key id (mode 0600).
    pub access_key_id_file: Option<PathBuf>,
    /// A file holding the S3 secret access key (mode 0600).
    pub secret_access_key_file: Option<PathBuf>,
    /// PEM certificates to trust for the endpoint, in addition to the system's.
    pub ca_file: Option<PathBuf>,
    /// Allow a plain `http://` endpoint (tests, a local gateway).
    #[serde(default)]
    pub allow_http: bool,
}

/// Where the objects go, parsed from [`Tier2Config::url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tier2Location {
    /// Amazon S3 or an S3-compatible server.
    S3 { bucket: String, prefix: String },
    /// Google Cloud Storage.
    Gcs { bucket: String, prefix: String },
    /// Azure Blob Storage.
    Azure { container: String, prefix: String },
    /// A directory on this machine (tests, a mounted network volume).
    File { root: PathBuf },
}

impl Tier2Location {
    /// The key prefix applied to every object ("" for none; never for `File`).
    pub fn prefix(&self) -> &str {
        match self {
            Tier2Location::S3 { prefix, .. }
            | Tier2Location::Gcs { prefix, .. }
            | Tier2Location::Azure { prefix, .. } => prefix,
            Tier2Location::File { .. } => "",
        }
    }
}

/// Static S3 keys read from their files. `Debug` shows neither.
#[derive(Clone)]
pub struct StaticKeys {
    pub(crate) access_key_id: Zeroizing<String>,
    pub(crate) secret_access_key: Zeroizing<String>,
}

impl fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticKeys { access_key_id: <redacted>, secret_access_key: <redacted> }")
    }
}

/// A validated `[tier2]` table: every file read, every value checked.
#[derive(Debug, Clone)]
pub struct Tier2Settings {
    pub location: Tier2Location,
    pub endpoint: Option<Url>,
    pub region: String,
    /// `None`: the usual credential chain of the provider (environment, profile, IMDS...).
    pub keys: Option<StaticKeys>,
    /// PEM text of `ca_file` (certificates only; public, so not redacted).
    pub ca_pem: Option<Vec<u8>>,
    pub allow_http: bool,
}

/// A `[tier2]` table that cannot be used. Display names the field, the cause and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("tier2.url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("tier2.endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error(
        "tier2.endpoint {endpoint:?} is plain http, which sends data and request signatures \
         unencrypted: use an https:// endpoint, or set tier2.allow_http = true \
         (KLIO_TIER2_ALLOW_HTTP=true) for a test server"
    )]
    HttpNotAllowed { endpoint: String },
    #[error(
        "tier2.{given} is set but tier2.{missing} is not: static S3 keys need both files \
         (or neither, to use the usual AWS credential chain)"
    )]
    HalfKeys {
        given: &'static str,
        missing: &'static str,
    },
    #[error("tier2.{field}: {source}")]
    SecretFile {
        field: &'static str,
        source: secret_file::SecretFileError,
    },
    #[error("tier2.{field} {path}: cannot be read: {source}")]
    Read {
        field: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("tier2.{field} {path} is empty: write the value into the file")]
    Empty { field: &'static str, path: String },
    #[error(
        "tier2.ca_file {path} holds no PEM certificate ({detail}): give a file with one or more \
         `-----BEGIN CERTIFICATE-----` blocks"
    )]
    CaNotPem { path: String, detail: String },
    #[error("tier2.{field} applies to s3:// only; {scheme}:// uses {instead}")]
    NotForScheme {
        field: &'static str,
        scheme: &'static str,
        instead: &'static str,
    },
    #[error("{var}={value:?}: expected true or false")]
    EnvBool { var: &'static str, value: String },
}

impl ConfigError {
    /// The `[tier2]` field the error is about (`url`, `endpoint`...).
    pub fn field(&self) -> &'static str {
        match self {
            ConfigError::Url { .. } => "url",
            ConfigError::Endpoint { .. } | ConfigError::HttpNotAllowed { .. } => "endpoint",
            ConfigError::HalfKeys { given, .. } => given,
            ConfigError::SecretFile { field, .. }
            | ConfigError::Read { field, .. }
            | ConfigError::Empty { field, .. }
            | ConfigError::NotForScheme { field, .. } => field,
            ConfigError::CaNotPem { .. } => "ca_file",
            ConfigError::EnvBool { .. } => "allow_http",
        }
    }
}

/// The environment variables that override the table, one per field.
pub const ENV_URL: &str = "KLIO_TIER2_URL";
pub const ENV_ENDPOINT: &str = "KLIO_TIER2_ENDPOINT";
pub const ENV_REGION: &str = "KLIO_TIER2_REGION";
pub const ENV_ACCESS_KEY_ID_FILE: &str = "KLIO_TIER2_ACCESS_KEY_ID_FILE";
pub const ENV_SECRET_ACCESS_KEY_FILE: &str = "KLIO_TIER2_SECRET_ACCESS_KEY_FILE";
pub const ENV_CA_FILE: &str = "KLIO_TIER2_CA_FILE";
pub const ENV_ALLOW_HTTP: &str = "KLIO_TIER2_ALLOW_HTTP";

impl Tier2Config {
    /// Applies the `KLIO_TIER2_*` variables that are set (a set variable wins over the
    /// file; an empty one clears an optional field).
    pub fn apply_env_overrides(&mut self) -> Result<(), ConfigError> {
        self.apply_overrides_from(|name| std::env::var(name).ok())
    }

    /// [`Tier2Config::apply_env_overrides`] with the variables looked up through `get`.
    pub fn apply_overrides_from(
        &mut self,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let opt = |v: String| (!v.is_empty()).then_some(v);
        if let Some(v) = get(ENV_URL) {
            self.url = v;
        }
        if let Some(v) = get(ENV_ENDPOINT) {
            self.endpoint = opt(v);
        }
        if let Some(v) = get(ENV_REGION) {
            self.region = opt(v);
        }
        if let Some(v) = get(ENV_ACCESS_KEY_ID_FILE) {
            self.access_key_id_file = opt(v).map(PathBuf::from);
        }
        if let Some(v) = get(ENV_SECRET_ACCESS_KEY_FILE) {
            self.secret_access_key_file = opt(v).map(PathBuf::from);
        }
        if let Some(v) = get(ENV_CA_FILE) {
            self.ca_file = opt(v).map(PathBuf::from);
        }
        if let Some(v) = get(ENV_ALLOW_HTTP) {
            self.allow_http = match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => {
                    return Err(ConfigError::EnvBool {
                        var: ENV_ALLOW_HTTP,
                        value: v,
                    })
                }
            };
        }
        Ok(())
    }

    /// Checks every field and reads the files it names.
    pub fn validate(&self) -> Result<Tier2Settings, ConfigError> {
        let location = parse_location(&self.url)?;
        let scheme = match location {
            Tier2Location::S3 { .. } => None,
            Tier2Location::Gcs { .. } => Some((
                "gs",
                "GOOGLE_APPLICATION_CREDENTIALS / GOOGLE_SERVICE_ACCOUNT",
            )),
            Tier2Location::Azure { .. } => Some((
                "az",
                "AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_ACCOUNT_KEY",
            )),
            Tier2Location::File { .. } => {
                Some(("file", "the local filesystem and needs no credentials"))
            }
        };
        if let Some((scheme, instead)) = scheme {
            for (field, set) in [
                ("endpoint", self.endpoint.is_some()),
                ("region", self.region.is_some()),
                ("access_key_id_file", self.access_key_id_file.is_some()),
                (
                    "secret_access_key_file",
                    self.secret_access_key_file.is_some(),
                ),
                ("ca_file", self.ca_file.is_some()),
            ] {
                if set {
                    return Err(ConfigError::NotForScheme {
                        field,
                        scheme,
                        instead,
                    });
                }
            }
        }
        let endpoint = self
            .endpoint
            .as_deref()
            .map(|e| parse_endpoint(e, self.allow_http))
            .transpose()?;
        let keys = match (&self.access_key_id_file, &self.secret_access_key_file) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::HalfKeys {
                    given: "access_key_id_file",
                    missing: "secret_access_key_file",
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError::HalfKeys {
                    given: "secret_access_key_file",
                    missing: "access_key_id_file",
                })
            }
            (Some(id), Some(secret)) => Some(StaticKeys {
                access_key_id: read_secret("access_key_id_file", id)?,
                secret_access_key: read_secret("secret_access_key_file", secret)?,
            }),
        };
        let ca_pem = self.ca_file.as_deref().map(read_ca).transpose()?;
        Ok(Tier2Settings {
            location,
            endpoint,
            region: self
                .region
                .clone()
                .unwrap_or_else(|| "us-east-1".to_string()),
            keys,
            ca_pem,
            allow_http: self.allow_http,
        })
    }
}

fn parse_location(text: &str) -> Result<Tier2Location, ConfigError> {
    let err = |reason: &str| ConfigError::Url {
        url: redact_userinfo(text),
        reason: reason.to_string(),
    };
    if text.is_empty() {
        return Err(err(
            "is empty: give s3://bucket/prefix, gs://bucket/prefix, az://container/prefix \
             or file:///absolute/path",
        ));
    }
    let url = Url::parse(text).map_err(|e| {
        err(&format!(
            "is not a URL ({e}): give s3://bucket/prefix, gs://bucket/prefix, \
             az://container/prefix or file:///absolute/path"
        ))
    })?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(err(
            "has a query or fragment: remove everything after `?` or `#`",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(err(
            "holds credentials: remove them and use tier2.access_key_id_file and \
             tier2.secret_access_key_file",
        ));
    }
    if url.scheme() == "file" {
        if url.host_str().is_some_and(|h| !h.is_empty()) {
            return Err(err(
                "names a host: use file:///absolute/path (three slashes)",
            ));
        }
        let root = url
            .to_file_path()
            .map_err(|()| err("is not an absolute path: use file:///absolute/path"))?;
        if !root.is_dir() {
            return Err(err(&format!(
                "{} is not an existing directory: create it first",
                root.display()
            )));
        }
        return Ok(Tier2Location::File { root });
    }
    let bucket = url.host_str().unwrap_or_default().to_string();
    if bucket.is_empty() {
        return Err(err(
            "names no bucket: write it after the scheme, as in s3://bucket/prefix",
        ));
    }
    if url.port().is_some() {
        return Err(err(
            "has a port: the URL names a bucket; put the server in tier2.endpoint",
        ));
    }
    // The URL parser resolves `..` itself, so look at the text as written.
    let written = text
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map_or("", |(_, path)| path);
    if written.split('/').any(|s| s == "." || s == "..") {
        return Err(err(
            "has `.` or `..` in its prefix: name the prefix plainly",
        ));
    }
    let prefix = url.path().trim_matches('/');
    if prefix.split('/').any(|s| s == "." || s == "..") {
        return Err(err(
            "has `.` or `..` in its prefix: name the prefix plainly",
        ));
    }
    if prefix.contains("//") {
        return Err(err("has an empty segment (`//`) in its prefix: remove it"));
    }
    let prefix = percent_encoding::percent_decode_str(prefix)
        .decode_utf8()
        .map_err(|_| err("has a %-escape in its prefix that is not UTF-8"))?
        .into_owned();
    match url.scheme() {
        "s3" => Ok(Tier2Location::S3 { bucket, prefix }),
        "gs" => Ok(Tier2Location::Gcs { bucket, prefix }),
        "az" => Ok(Tier2Location::Azure {
            container: bucket,
            prefix,
        }),
        other => Err(err(&format!(
            "has the unknown scheme {other:?}: use s3://, gs://, az:// or file://"
        ))),
    }
}

fn parse_endpoint(text: &str, allow_http: bool) -> Result<Url, ConfigError> {
    let err = |reason: &str| ConfigError::Endpoint {
        endpoint: redact_userinfo(text),
        reason: reason.to_string(),
    };
    let url = Url::parse(text)
        .map_err(|e| err(&format!("is not a URL ({e}): give https://host[:port]")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(err(
            "holds credentials: remove them and use tier2.access_key_id_file and \
             tier2.secret_access_key_file",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(err("names no host: give https://host[:port]"));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if allow_http => Ok(url),
        "http" => Err(ConfigError::HttpNotAllowed {
            endpoint: text.to_string(),
        }),
        other => Err(err(&format!(
            "has the scheme {other:?}: use https:// (or http:// with tier2.allow_http)"
        ))),
    }
}

/// `text` with any `user:password@` before the host replaced, for error messages.
fn redact_userinfo(text: &str) -> String {
    if let Some((scheme, rest)) = text.split_once("://") {
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        if let Some(at) = authority.rfind('@') {
            return format!("{scheme}://<redacted>@{}", &rest[at + 1..]);
        }
    }
    text.to_string()
}

fn read_secret(field: &'static str, path: &Path) -> Result<Zeroizing<String>, ConfigError> {
    secret_file::check(path).map_err(|source| ConfigError::SecretFile { field, source })?;
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        field,
        path: path.display().to_string(),
        source,
    })?;
    let text = Zeroizing::new(text);
    let value = text.trim();
    if value.is_empty() {
        return Err(ConfigError::Empty {
            field,
            path: path.display().to_string(),
        });
    }
    Ok(Zeroizing::new(value.to_string()))
}

fn read_ca(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let pem = std::fs::read(path).map_err(|source| ConfigError::Read {
        field: "ca_file",
        path: path.display().to_string(),
        source,
    })?;
    let not_pem = |detail: String| ConfigError::CaNotPem {
        path: path.display().to_string(),
        detail,
    };
    let mut count = 0;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        cert.map_err(|e| not_pem(e.to_string()))?;
        count += 1;
    }
    if count == 0 {
        return Err(not_pem("no certificate block found".to_string()));
    }
    Ok(pem)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
