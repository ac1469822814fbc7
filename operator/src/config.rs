//! The server's `klio.toml`, generated from a [`ServerSpec`], and where the pod finds
//! the files it names.
//!
//! Every secret the configuration names comes from one projected volume mounted at
//! [`SECRETS_DIR`] (root-owned, mode 0440, readable through the pod's `fsGroup`, which
//! the server's secret-file check accepts for root-owned files); [`secret_files`] lists them
//! and is the single source for the configuration, the volume and the rollout hash.
//!
//! The keys written are exactly those `server/src/config.rs` (and the `[tier2]` and
//! `[retention]` tables of `klio-tiering`) accept; the server refuses unknown keys.
//! `tests/golden/` holds the expected output, checked against those parsers by hand, and
//! the tests here parse the output with mirrors of their key sets (`deny_unknown_fields`).
//!
//! A cluster's password (`spec.clusters[].password`) never enters the ConfigMap: the pod
//! gets it as an environment variable from its Secret, and `KLIO_CLUSTER_<NAME>_CONNINFO`
//! (the server's own override) repeats the connection string with
//! `password='$(KLIO_CLUSTER_PASSWORD_<i>)'`, which the kubelet expands. The password
//! must not contain `'` or `\`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{ClusterSpec, RetentionRules, ServerMode, ServerSpec};

/// The API port (the server's `listen`).
pub const API_PORT: u16 = 7070;
/// The server's plain-HTTP `/metrics` address (`metrics_listen`).
pub const METRICS_PORT: u16 = 9187;
/// Where the ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/etc/klio/config";
/// The configuration file's name in the ConfigMap.
pub const CONFIG_FILE: &str = "klio.toml";
/// Where the projected volume of secrets is mounted.
pub const SECRETS_DIR: &str = "/etc/klio/secrets";
/// Where the data volume (Tier 1, or an emptyDir on a read-only server) is mounted.
pub const DATA_MOUNT: &str = "/var/lib/klio";
/// `data_dir`: a directory on the volume (its root may hold `lost+found`).
pub const DATA_DIR: &str = "/var/lib/klio/data";

/// A spec the operator cannot turn into a configuration the server accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

fn spec_error(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.into(),
    }
}

/// One key of a Secret, projected to `path` under [`SECRETS_DIR`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecretFile {
    pub secret: String,
    pub key: String,
    pub path: String,
}

fn secret_path(rel: &str) -> String {
    format!("{SECRETS_DIR}/{rel}")
}

/// Every Secret key the pod mounts, in a fixed order.
pub fn secret_files(spec: &ServerSpec) -> Vec<SecretFile> {
    let mut out = Vec::new();
    let mut add = |secret: &str, key: &str, path: String| {
        out.push(SecretFile {
            secret: secret.to_string(),
            key: key.to_string(),
            path,
        })
    };
    add(
        &spec.master_key.name,
        &spec.master_key.key,
        "master.key".into(),
    );
    if let Some(tls) = &spec.tls {
        add(&tls.secret_name, "tls.crt", "tls/tls.crt".into());
        add(&tls.secret_name, "tls.key", "tls/tls.key".into());
        if let Some(ca) = &tls.client_ca {
            add(&ca.name, &ca.key, "tls/client-ca.crt".into());
        }
    }
    if let Some(t2) = &spec.tier2 {
        if let Some(c) = &t2.credentials {
            let id = c.access_key_id_key.as_deref().unwrap_or("ACCESS_KEY_ID");
            let secret = c
                .secret_access_key_key
                .as_deref()
                .unwrap_or("SECRET_ACCESS_KEY");
            add(&c.secret_name, id, "tier2/access-key-id".into());
            add(&c.secret_name, secret, "tier2/secret-access-key".into());
        }
        if let Some(ca) = &t2.ca {
            add(&ca.name, &ca.key, "tier2/ca.crt".into());
        }
    }
    for c in &spec.clusters {
        let dir = format!("clusters/{}", c.name);
        add(&c.token.name, &c.token.key, format!("{dir}/token"));
        if let Some(r) = &c.replication_secret {
            add(r, "tls.crt", format!("{dir}/tls.crt"));
            add(r, "tls.key", format!("{dir}/tls.key"));
        }
        if let Some(ca) = &c.ca_secret {
            add(ca, "ca.crt", format!("{dir}/ca.crt"));
        }
    }
    out
}

/// The names of every Secret the pod depends on (files and environment), sorted, once
/// each.
pub fn referenced_secrets(spec: &ServerSpec) -> Vec<String> {
    let mut names: Vec<String> = secret_files(spec).into_iter().map(|f| f.secret).collect();
    names.extend(
        spec.clusters
            .iter()
            .filter_map(|c| c.password.as_ref().map(|p| p.name.clone())),
    );
    names.sort();
    names.dedup();
    names
}

#[derive(Serialize)]
struct File {
    data_dir: String,
    mode: &'static str,
    listen: String,
    master_key_file: String,
    log_format: &'static str,
    metrics_listen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<Tls>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tier2: Option<Tier2>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retention: Option<Retention>,
    cluster: Vec<Cluster>,
}

#[derive(Serialize)]
struct Tls {
    cert_file: String,
    key_file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_ca_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_ca_shared: Option<bool>,
    require_client_cert: bool,
}

#[derive(Serialize)]
struct Tier2 {
    url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_key_id_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_access_key_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_file: Option<String>,
    allow_http: bool,
}

#[derive(Serialize, Default)]
struct Rules {
    #[serde(skip_serializing_if = "Option::is_none")]
    recovery_window: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    latest: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    daily: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    weekly: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    monthly: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    yearly: Option<u32>,
}

impl From<&RetentionRules> for Rules {
    fn from(r: &RetentionRules) -> Rules {
        Rules {
            recovery_window: r.recovery_window.clone(),
            latest: r.latest,
            daily: r.daily,
            weekly: r.weekly,
            monthly: r.monthly,
            yearly: r.yearly,
        }
    }
}

#[derive(Serialize)]
struct Retention {
    #[serde(flatten)]
    both: Rules,
    #[serde(skip_serializing_if = "Option::is_none")]
    tier1: Option<Rules>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tier2: Option<Rules>,
}

#[derive(Serialize)]
struct Cluster {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    conninfo: Option<String>,
    token_file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    backup_schedule: Option<String>,
    /// Accept `klio offload --upload` for this cluster (its Tier 0 offload Jobs).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    offload_uploads: bool,
}

/// libpq's quoting of a `key=value` connection string value.
fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The cluster's connection string without its password.
pub fn conninfo(c: &ClusterSpec) -> Option<String> {
    let host = c.host.as_deref()?;
    let dir = format!("{SECRETS_DIR}/clusters/{}", c.name);
    let mut parts = vec![
        format!("host={}", quote(host)),
        format!("port={}", c.port.unwrap_or(5432)),
        format!(
            "user={}",
            quote(c.user.as_deref().unwrap_or("streaming_replica"))
        ),
    ];
    if c.ca_secret.is_some() {
        parts.push("sslmode=verify-full".into());
        parts.push(format!("sslrootcert={}", quote(&format!("{dir}/ca.crt"))));
    }
    if c.replication_secret.is_some() {
        parts.push(format!("sslcert={}", quote(&format!("{dir}/tls.crt"))));
        parts.push(format!("sslkey={}", quote(&format!("{dir}/tls.key"))));
    }
    Some(parts.join(" "))
}

/// The server's override variable for a cluster's connection string.
pub fn conninfo_env(cluster: &str) -> String {
    format!(
        "KLIO_CLUSTER_{}_CONNINFO",
        cluster.to_ascii_uppercase().replace('-', "_")
    )
}

/// The variable holding the `i`th cluster's password.
pub fn password_env(i: usize) -> String {
    format!("KLIO_CLUSTER_PASSWORD_{i}")
}

/// The value of [`conninfo_env`] for a cluster with a password: its connection string
/// with the password the kubelet substitutes.
pub fn conninfo_with_password(c: &ClusterSpec, i: usize) -> Option<String> {
    c.password.as_ref()?;
    Some(format!(
        "{} password='$({})'",
        conninfo(c)?,
        password_env(i)
    ))
}

/// Checks what the CRD's schema and CEL rules cannot express (or what a server
/// refuses), so a bad spec is reported on the Server instead of crash-looping the pod.
pub fn validate(spec: &ServerSpec) -> Result<(), SpecError> {
    let read_only = spec.mode == ServerMode::ReadOnly;
    if read_only {
        if spec.tier2.is_none() {
            return Err(spec_error(
                "spec.tier2",
                "a read-only server restores from Tier 2 alone: set spec.tier2",
            ));
        }
        if spec.storage.is_some() {
            return Err(spec_error(
                "spec.storage",
                "a read-only server has no Tier 1 volume: remove spec.storage",
            ));
        }
        if spec.retention.is_some() {
            return Err(spec_error(
                "spec.retention",
                "a read-only server removes nothing: remove spec.retention (the writing server applies it)",
            ));
        }
    } else if spec.storage.is_none() {
        return Err(spec_error(
            "spec.storage",
            "a standard server needs its Tier 1 volume: set spec.storage.size",
        ));
    }
    if spec.clusters.is_empty() {
        return Err(spec_error("spec.clusters", "name at least one cluster"));
    }
    for (i, c) in spec.clusters.iter().enumerate() {
        let field = |f: &str| format!("spec.clusters[{i}].{f}");
        if spec.clusters[..i].iter().any(|d| d.name == c.name) {
            return Err(spec_error(
                field("name"),
                format!("duplicate cluster {:?}", c.name),
            ));
        }
        if read_only {
            for (f, set) in [
                ("host", c.host.is_some()),
                ("backupSchedule", c.backup_schedule.is_some()),
                ("password", c.password.is_some()),
                ("replicationSecret", c.replication_secret.is_some()),
                ("caSecret", c.ca_secret.is_some()),
            ] {
                if set {
                    return Err(spec_error(
                        field(f),
                        "a read-only server does not connect to PostgreSQL: remove it",
                    ));
                }
            }
        } else if c.host.is_none() {
            return Err(spec_error(
                field("host"),
                "a standard server streams from the primary: set its host (CloudNativePG: <cluster>-rw)",
            ));
        }
        if let Some(o) = &c.snapshot_offload {
            validate_offload(o, &c.name, read_only, &field)?;
        }
    }
    if let Some(tls) = &spec.tls {
        if tls.require_client_cert && tls.client_ca.is_none() {
            return Err(spec_error(
                "spec.tls.requireClientCert",
                "client certificates need a CA: set spec.tls.clientCa",
            ));
        }
    }
    if let Some(t2) = &spec.tier2 {
        if !t2.url.starts_with("s3://") {
            for (f, set) in [
                ("endpoint", t2.endpoint.is_some()),
                ("region", t2.region.is_some()),
                ("credentials", t2.credentials.is_some()),
                ("ca", t2.ca.is_some()),
            ] {
                if set {
                    return Err(spec_error(
                        format!("spec.tier2.{f}"),
                        "applies to s3:// URLs only (GCS and Azure take their credentials from the environment)",
                    ));
                }
            }
        }
    }
    if spec.template.as_ref().is_some_and(|t| !t.is_object()) {
        return Err(spec_error(
            "spec.template",
            "must be a pod template (an object)",
        ));
    }
    Ok(())
}

/// Checks a cluster's `snapshotOffload`.
fn validate_offload(
    o: &crate::SnapshotOffloadSpec,
    name: &str,
    read_only: bool,
    field: &dyn Fn(&str) -> String,
) -> Result<(), SpecError> {
    if read_only {
        return Err(spec_error(
            field("snapshotOffload"),
            "a read-only server takes no backups: remove it",
        ));
    }
    let dns_label = !name.is_empty()
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !dns_label {
        return Err(spec_error(
            field("name"),
            format!(
                "{name:?} must name the CloudNativePG Cluster to snapshot (lowercase letters, digits and -) to use snapshotOffload"
            ),
        ));
    }
    if let Some(s) = &o.schedule {
        s.parse::<crate::cron::Cron>()
            .map_err(|e| spec_error(field("snapshotOffload.schedule"), e))?;
    }
    if let Some(a) = &o.max_age {
        crate::cron::parse_age(a).map_err(|e| spec_error(field("snapshotOffload.maxAge"), e))?;
    }
    if o.keep == Some(0) {
        return Err(spec_error(
            field("snapshotOffload.keep"),
            "keep at least 1 snapshot backup (the newest one is the one being offloaded)",
        ));
    }
    if o.run_as_user.is_some_and(|u| u < 1) {
        return Err(spec_error(
            field("snapshotOffload.runAsUser"),
            "the offload Job runs as a non-root user: set the owner of PGDATA (CloudNativePG: 26)",
        ));
    }
    Ok(())
}

/// The `klio.toml` of a server.
pub fn klio_toml(spec: &ServerSpec) -> Result<String, SpecError> {
    validate(spec)?;
    let read_only = spec.mode == ServerMode::ReadOnly;
    let tls = spec.tls.as_ref().map(|t| Tls {
        cert_file: secret_path("tls/tls.crt"),
        key_file: secret_path("tls/tls.key"),
        client_ca_file: t
            .client_ca
            .as_ref()
            .map(|_| secret_path("tls/client-ca.crt")),
        client_ca_shared: t.client_ca.as_ref().map(|_| true),
        require_client_cert: t.require_client_cert,
    });
    let tier2 = spec.tier2.as_ref().map(|t| Tier2 {
        url: t.url.clone(),
        endpoint: t.endpoint.clone(),
        region: t.region.clone(),
        access_key_id_file: t
            .credentials
            .as_ref()
            .map(|_| secret_path("tier2/access-key-id")),
        secret_access_key_file: t
            .credentials
            .as_ref()
            .map(|_| secret_path("tier2/secret-access-key")),
        ca_file: t.ca.as_ref().map(|_| secret_path("tier2/ca.crt")),
        allow_http: t.allow_http,
    });
    let retention = spec.retention.as_ref().map(|r| Retention {
        both: (&r.rules).into(),
        tier1: r.tier1.as_ref().map(Into::into),
        tier2: r.tier2.as_ref().map(Into::into),
    });
    let cluster = spec
        .clusters
        .iter()
        .map(|c| Cluster {
            name: c.name.clone(),
            conninfo: if read_only { None } else { conninfo(c) },
            token_file: secret_path(&format!("clusters/{}/token", c.name)),
            backup_schedule: c.backup_schedule.clone(),
            offload_uploads: c.snapshot_offload.is_some(),
        })
        .collect();
    let file = File {
        data_dir: DATA_DIR.into(),
        mode: if read_only { "read-only" } else { "standard" },
        listen: format!("0.0.0.0:{API_PORT}"),
        master_key_file: secret_path("master.key"),
        log_format: "json",
        metrics_listen: format!("0.0.0.0:{METRICS_PORT}"),
        tls,
        tier2,
        retention,
        cluster,
    };
    let body = toml::to_string(&file).map_err(|e| spec_error("spec", e.to_string()))?;
    Ok(format!(
        "# Generated by klio-operator from the Server resource; edits are overwritten.\n{body}"
    ))
}

/// The ConfigMap's data.
pub fn config_map_data(spec: &ServerSpec) -> Result<BTreeMap<String, String>, SpecError> {
    Ok(BTreeMap::from([(
        CONFIG_FILE.to_string(),
        klio_toml(spec)?,
    )]))
}

#[cfg(test)]
pub(crate) mod tests;
