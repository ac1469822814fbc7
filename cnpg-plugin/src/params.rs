//! The plugin's parameters, as a Cluster sets them in `spec.plugins[].parameters` (the
//! cluster's own backups and WAL) or `spec.externalClusters[].plugin.parameters` (a
//! recovery source), parsed once into [`KlioParams`]. An unknown or malformed
//! parameter is an error naming it. Reads nothing from disk.

use std::collections::BTreeMap;
use std::time::Duration;

use klio_core::ClusterName;

/// How long a Backup waits for the Klio Server's base backup by default.
pub const DEFAULT_BACKUP_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The parameters every configuration of the plugin knows.
pub const KNOWN: [&str; 5] = [
    "server",
    "cluster",
    "secret",
    "backupTimeout",
    "insecureHttp",
];

/// A Kubernetes Secret name (RFC 1123 subdomain): also safe as one path component.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecretName(String);

impl SecretName {
    pub fn parse(s: &str) -> Result<SecretName, String> {
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric());
        if ok {
            Ok(SecretName(s.to_string()))
        } else {
            Err(format!(
                "{s:?} is not a Kubernetes Secret name (lower-case letters, digits, '-' and '.', starting and ending with a letter or digit)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where the plugin reaches the Klio Server, and as which cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KlioParams {
    /// The Klio Server's API base URL (`http://` or `https://`).
    pub server: String,
    /// The cluster's name on the Klio Server.
    pub cluster: ClusterName,
    /// The Secret (in the Cluster's namespace) holding `token` and, for an https://
    /// server with a private CA, `ca.crt`.
    pub secret: SecretName,
    pub backup_timeout: Duration,
    /// The token may be sent over plain http:// inside the Kubernetes network.
    pub insecure_http: bool,
}

/// A parameter problem; Display names the parameter, where it was set and the fix.
#[derive(Debug, thiserror::Error)]
#[error("plugin {plugin} parameter {name:?} in {origin}: {problem}")]
pub struct ParamError {
    pub plugin: &'static str,
    pub name: String,
    pub origin: String,
    pub problem: String,
}

impl From<ParamError> for tonic::Status {
    fn from(e: ParamError) -> tonic::Status {
        tonic::Status::invalid_argument(e.to_string())
    }
}

/// Parses a duration such as `90s`, `45m`, `6h`, `1h30m` or a number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return None,
        };
        let n: u64 = num.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        num.clear();
    }
    (num.is_empty() && total > 0).then(|| Duration::from_secs(total))
}

impl KlioParams {
    /// Parses `map`, set in `origin` (named in errors, e.g. `spec.plugins`).
    pub fn parse(map: &BTreeMap<String, String>, origin: &str) -> Result<KlioParams, ParamError> {
        let err = |name: &str, problem: String| ParamError {
            plugin: crate::PLUGIN_NAME,
            name: name.to_string(),
            origin: origin.to_string(),
            problem,
        };
        if let Some(unknown) = map.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(err(
                unknown,
                format!("unknown parameter; the known ones are {}", KNOWN.join(", ")),
            ));
        }
        let required = |name: &str| {
            map.get(name)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| err(name, "missing; it is required".into()))
        };
        let server = required("server")?;
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            return Err(err(
                "server",
                format!("{server:?} is not an http:// or https:// URL of the Klio Server's API"),
            ));
        }
        let cluster: ClusterName = required("cluster")?
            .parse()
            .map_err(|e| err("cluster", format!("{e}")))?;
        let secret = SecretName::parse(required("secret")?).map_err(|e| err("secret", e))?;
        let backup_timeout = match map.get("backupTimeout") {
            None => DEFAULT_BACKUP_TIMEOUT,
            Some(v) => parse_duration(v.trim()).ok_or_else(|| {
                err(
                    "backupTimeout",
                    format!("{v:?} is not a duration such as 90m, 6h or 3600"),
                )
            })?,
        };
        let insecure_http = match map.get("insecureHttp").map(|v| v.trim()) {
            None | Some("false") => false,
            Some("true") => true,
            Some(v) => return Err(err("insecureHttp", format!("{v:?}: use true or false"))),
        };
        Ok(KlioParams {
            server: server.to_string(),
            cluster,
            secret,
            backup_timeout,
            insecure_http,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parameters_parse_and_unknown_ones_are_named() {
        let p = KlioParams::parse(
            &map(&[
                ("server", "https://klio.backup:7070"),
                ("cluster", "pg-main"),
                ("secret", "pg-main-klio"),
                ("backupTimeout", "1h30m"),
            ]),
            "spec.plugins",
        )
        .unwrap();
        assert_eq!(p.cluster.as_str(), "pg-main");
        assert_eq!(p.backup_timeout, Duration::from_secs(5400));
        assert!(!p.insecure_http);
        let e = KlioParams::parse(
            &map(&[
                ("server", "https://k"),
                ("cluster", "a"),
                ("secret", "s"),
                ("barmanObjectName", "x"),
            ]),
            "spec.plugins",
        )
        .unwrap_err();
        assert!(e.to_string().contains("\"barmanObjectName\""), "{e}");
        assert!(e.to_string().contains("unknown parameter"), "{e}");
        let e =
            KlioParams::parse(&map(&[("server", "https://k"), ("cluster", "a")]), "x").unwrap_err();
        assert!(e.to_string().contains("\"secret\""), "{e}");
        let e = KlioParams::parse(
            &map(&[
                ("server", "https://k"),
                ("cluster", "a"),
                ("secret", "../etc"),
            ]),
            "x",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("not a Kubernetes Secret name"),
            "{e}"
        );
        let e = KlioParams::parse(
            &map(&[("server", "ftp://k"), ("cluster", "a"), ("secret", "s")]),
            "x",
        )
        .unwrap_err();
        assert!(e.to_string().contains("\"server\""), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("6h"), Some(Duration::from_secs(21600)));
        assert_eq!(parse_duration("1d2m"), Some(Duration::from_secs(86520)));
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration("5m3"), None);
    }
}
