//! The generated `klio.toml` against golden files and against mirrors of the server's
//! configuration structs (`server/src/config.rs` `RawConfig`/`RawCluster`/`RawTls`,
//! `klio-tiering`'s `Tier2Config`, `RetentionConfig` and `RulesConfig`), which, like the
//! originals, refuse unknown keys. The mirrors cannot depend on `klio-server` (RocksDB);
//! when the server's keys change, these must be updated with them.

use std::path::PathBuf;

use serde::Deserialize;

use super::*;
use crate::{
    ClusterSpec, RetentionSpec, S3Credentials, SecretKeyRef, StorageSpec, Tier2Spec, TlsSpec,
};

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
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
    tier2: Option<Tier2Config>,
    retention: Option<RetentionConfig>,
    #[serde(default, rename = "cluster")]
    clusters: Vec<RawCluster>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
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

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RawTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
    client_ca_shared: Option<bool>,
    require_client_cert: Option<bool>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Tier2Config {
    url: String,
    endpoint: Option<String>,
    region: Option<String>,
    access_key_id_file: Option<PathBuf>,
    secret_access_key_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    allow_http: bool,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RulesConfig {
    recovery_window: Option<String>,
    latest: Option<u32>,
    daily: Option<u32>,
    weekly: Option<u32>,
    monthly: Option<u32>,
    yearly: Option<u32>,
}

/// `flatten` with `deny_unknown_fields` does not refuse unknown keys in serde; the
/// server's `RetentionConfig` has the same shape, so unknown keys are checked by
/// [`retention_keys_are_known`] instead.
#[derive(Deserialize, Debug)]
#[allow(dead_code)]
struct RetentionConfig {
    #[serde(flatten)]
    both: RulesConfig,
    tier1: Option<RulesConfig>,
    tier2: Option<RulesConfig>,
}

const RULE_KEYS: &[&str] = &[
    "recovery_window",
    "latest",
    "daily",
    "weekly",
    "monthly",
    "yearly",
];

fn retention_keys_are_known(text: &str) {
    let v: toml::Value = toml::from_str(text).unwrap();
    let Some(r) = v.get("retention").and_then(|r| r.as_table()) else {
        return;
    };
    for (k, v) in r {
        match k.as_str() {
            "tier1" | "tier2" => {
                for k in v.as_table().expect("a table").keys() {
                    assert!(RULE_KEYS.contains(&k.as_str()), "retention.{k}");
                }
            }
            k => assert!(RULE_KEYS.contains(&k), "retention.{k}"),
        }
    }
}

/// Parses `text` the way the server does, as far as it can be without the server:
/// its keys, and the rules that need no file system.
fn server_would_accept(text: &str) -> RawConfig {
    let raw: RawConfig = toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    retention_keys_are_known(text);
    let read_only = match raw.mode.as_deref() {
        None | Some("standard") => false,
        Some("read-only") => true,
        Some(m) => panic!("mode {m}"),
    };
    assert!(raw.data_dir.as_ref().is_some_and(|p| p.is_absolute()));
    assert!(raw
        .master_key_file
        .as_ref()
        .is_some_and(|p| p.is_absolute()));
    for addr in [&raw.listen, &raw.metrics_listen].into_iter().flatten() {
        addr.parse::<std::net::SocketAddr>().expect("IP:PORT");
    }
    assert!(matches!(
        raw.log_format.as_deref(),
        None | Some("text" | "json")
    ));
    assert!(!(raw.metrics_listen.is_some() && raw.metrics_token_file.is_some()));
    assert!(!raw.clusters.is_empty());
    let mut names = std::collections::BTreeSet::new();
    for c in &raw.clusters {
        let name = c.name.as_deref().expect("name");
        assert!(names.insert(name), "duplicate {name}");
        assert!(c.token_file.as_ref().is_some_and(|p| p.is_absolute()));
        if read_only {
            assert!(
                c.conninfo.is_none()
                    && c.backup_schedule.is_none()
                    && c.offload_roots.is_none()
                    && c.offload_uploads.is_none()
            );
        } else {
            assert!(c.conninfo.as_ref().is_some_and(|s| !s.trim().is_empty()));
        }
    }
    if let Some(t) = &raw.tls {
        assert!(t.cert_file.is_some() && t.key_file.is_some());
        if t.client_ca_file.is_some() {
            assert_eq!(t.client_ca_shared, Some(true), "a shared CA must be said");
        }
        if t.require_client_cert == Some(true) {
            assert!(
                t.client_ca_file.is_some()
                    || raw.clusters.iter().any(|c| c.client_ca_file.is_some())
            );
        }
    }
    if read_only {
        assert!(raw.tier2.is_some(), "read-only needs [tier2]");
        assert!(raw.retention.is_none(), "read-only refuses [retention]");
        assert!(raw.rescan_interval.is_none() || read_only);
    }
    if let Some(t) = &raw.tier2 {
        if !t.url.starts_with("s3://") {
            assert!(t.endpoint.is_none() && t.region.is_none() && t.ca_file.is_none());
            assert!(t.access_key_id_file.is_none() && t.secret_access_key_file.is_none());
        }
        assert_eq!(
            t.access_key_id_file.is_some(),
            t.secret_access_key_file.is_some()
        );
    }
    raw
}

fn key(name: &str, key: &str) -> SecretKeyRef {
    SecretKeyRef {
        name: name.into(),
        key: key.into(),
    }
}

/// A standard server with every option the operator writes.
pub(crate) fn full_standard() -> ServerSpec {
    ServerSpec {
        image: Some("klio:test".into()),
        mode: ServerMode::Standard,
        storage: Some(StorageSpec {
            size: "50Gi".into(),
            storage_class: Some("fast".into()),
        }),
        tier2: Some(Tier2Spec {
            url: "s3://backups/klio".into(),
            endpoint: Some("https://minio.minio:9000".into()),
            region: Some("eu-west-1".into()),
            credentials: Some(S3Credentials {
                secret_name: "s3-keys".into(),
                access_key_id_key: None,
                secret_access_key_key: Some("secret".into()),
            }),
            ca: Some(key("minio-ca", "ca.crt")),
            allow_http: false,
        }),
        master_key: key("klio-keys", "master.key"),
        tls: Some(TlsSpec {
            secret_name: "klio-tls".into(),
            client_ca: Some(key("client-ca", "ca.crt")),
            require_client_cert: false,
        }),
        clusters: vec![
            ClusterSpec {
                name: "pg-main".into(),
                host: Some("pg-main-rw".into()),
                port: None,
                user: None,
                replication_secret: Some("pg-main-replication".into()),
                ca_secret: Some("pg-main-ca".into()),
                password: None,
                token: key("pg-main-token", "token"),
                backup_schedule: Some("0 3 * * *".into()),
                snapshot_offload: None,
                wire: None,
            },
            ClusterSpec {
                name: "pg_other".into(),
                host: Some("db.example".into()),
                port: Some(6432),
                user: Some("klio".into()),
                replication_secret: None,
                ca_secret: None,
                password: Some(key("pg-other-pw", "password")),
                token: key("pg-other-token", "token"),
                backup_schedule: None,
                snapshot_offload: None,
                wire: None,
            },
        ],
        retention: Some(RetentionSpec {
            rules: RetentionRules {
                recovery_window: Some("7d".into()),
                latest: Some(2),
                ..Default::default()
            },
            tier1: None,
            tier2: Some(RetentionRules {
                recovery_window: Some("30d".into()),
                monthly: Some(6),
                ..Default::default()
            }),
        }),
        template: None,
    }
}

pub(crate) fn read_only() -> ServerSpec {
    ServerSpec {
        image: None,
        mode: ServerMode::ReadOnly,
        storage: None,
        tier2: Some(Tier2Spec {
            url: "gs://dr-bucket/klio".into(),
            ..Default::default()
        }),
        master_key: key("klio-keys", "master.key"),
        tls: None,
        clusters: vec![ClusterSpec {
            name: "pg-main".into(),
            token: key("pg-main-token", "token"),
            ..Default::default()
        }],
        retention: None,
        template: None,
    }
}

fn golden(name: &str) -> String {
    let path = klio_harness::manifest_dir(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
        .display()
        .to_string();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn a_full_standard_server_config_is_the_golden_file_and_has_only_known_keys() {
    let text = klio_toml(&full_standard()).unwrap();
    assert_eq!(text, golden("standard.toml"), "generated:\n{text}");
    let raw = server_would_accept(&text);
    assert_eq!(raw.clusters.len(), 2);
    assert_eq!(raw.tls.unwrap().client_ca_shared, Some(true));
}

#[test]
fn a_read_only_server_config_is_the_golden_file_without_conninfo_or_retention() {
    let text = klio_toml(&read_only()).unwrap();
    assert_eq!(text, golden("read-only.toml"), "generated:\n{text}");
    let raw = server_would_accept(&text);
    assert_eq!(raw.mode.as_deref(), Some("read-only"));
    assert!(raw.clusters[0].conninfo.is_none());
}

#[test]
fn a_password_stays_out_of_the_config_and_reaches_the_pod_through_the_override() {
    let spec = full_standard();
    let text = klio_toml(&spec).unwrap();
    assert!(!text.contains("password"), "{text}");
    let other = &spec.clusters[1];
    assert_eq!(conninfo_env(&other.name), "KLIO_CLUSTER_PG_OTHER_CONNINFO");
    assert_eq!(
        conninfo_with_password(other, 1).unwrap(),
        "host='db.example' port=6432 user='klio' password='$(KLIO_CLUSTER_PASSWORD_1)'"
    );
    assert_eq!(conninfo_with_password(&spec.clusters[0], 0), None);
}

#[test]
fn conninfo_values_are_quoted_for_libpq() {
    assert_eq!(quote(r"a b'c\d"), r"'a b\'c\\d'");
}

#[test]
fn every_file_the_config_names_under_the_secrets_dir_is_projected() {
    let spec = full_standard();
    let text = klio_toml(&spec).unwrap();
    let projected: Vec<String> = secret_files(&spec)
        .iter()
        .map(|f| format!("{SECRETS_DIR}/{}", f.path))
        .collect();
    let mut named = 0;
    for word in text.split(['"', '\'']) {
        if word.starts_with(SECRETS_DIR) {
            named += 1;
            assert!(
                projected.contains(&word.to_string()),
                "{word} is not mounted"
            );
        }
    }
    assert_eq!(named, 12, "{text}");
}

#[test]
fn referenced_secrets_include_passwords_once_each() {
    let names = referenced_secrets(&full_standard());
    assert_eq!(
        names,
        [
            "client-ca",
            "klio-keys",
            "klio-tls",
            "minio-ca",
            "pg-main-ca",
            "pg-main-replication",
            "pg-main-token",
            "pg-other-pw",
            "pg-other-token",
            "s3-keys"
        ]
    );
}

#[test]
fn specs_the_server_would_refuse_are_reported_with_their_field() {
    let mut s = read_only();
    s.retention = Some(RetentionSpec::default());
    assert_eq!(klio_toml(&s).unwrap_err().field, "spec.retention");

    let mut s = read_only();
    s.tier2.as_mut().unwrap().region = Some("x".into());
    assert_eq!(klio_toml(&s).unwrap_err().field, "spec.tier2.region");

    let mut s = full_standard();
    s.tls.as_mut().unwrap().client_ca = None;
    s.tls.as_mut().unwrap().require_client_cert = true;
    assert_eq!(
        klio_toml(&s).unwrap_err().field,
        "spec.tls.requireClientCert"
    );

    let mut s = full_standard();
    s.clusters[1].host = None;
    assert_eq!(klio_toml(&s).unwrap_err().field, "spec.clusters[1].host");

    let mut s = full_standard();
    s.storage = None;
    assert_eq!(klio_toml(&s).unwrap_err().field, "spec.storage");

    let mut s = read_only();
    s.clusters[0].backup_schedule = Some("0 3 * * *".into());
    assert_eq!(
        klio_toml(&s).unwrap_err().field,
        "spec.clusters[0].backupSchedule"
    );
}

#[test]
fn snapshot_offload_turns_on_offload_uploads_for_its_cluster_only() {
    let mut s = full_standard();
    s.clusters[0].snapshot_offload = Some(crate::SnapshotOffloadSpec {
        schedule: Some("0 */6 * * *".into()),
        keep: Some(2),
        max_age: Some("7d".into()),
        ..Default::default()
    });
    let text = klio_toml(&s).unwrap();
    let raw = server_would_accept(&text);
    assert_eq!(raw.clusters[0].offload_uploads, Some(true));
    assert_eq!(raw.clusters[1].offload_uploads, None);
    assert_eq!(text.matches("offload_uploads").count(), 1, "{text}");
    assert!(!klio_toml(&full_standard())
        .unwrap()
        .contains("offload_uploads"));
}

#[test]
fn a_bad_snapshot_offload_is_refused_naming_the_field() {
    let with = |f: &dyn Fn(&mut crate::SnapshotOffloadSpec)| {
        let mut s = full_standard();
        let mut o = crate::SnapshotOffloadSpec::default();
        f(&mut o);
        s.clusters[0].snapshot_offload = Some(o);
        klio_toml(&s).map(|_| ()).map_err(|e| e.field)
    };
    assert_eq!(with(&|_| {}), Ok(()));
    assert_eq!(
        with(&|o| o.schedule = Some("0 3 * *".into())),
        Err("spec.clusters[0].snapshotOffload.schedule".into())
    );
    assert_eq!(
        with(&|o| o.max_age = Some("7y".into())),
        Err("spec.clusters[0].snapshotOffload.maxAge".into())
    );
    assert_eq!(
        with(&|o| o.keep = Some(0)),
        Err("spec.clusters[0].snapshotOffload.keep".into())
    );
    assert_eq!(
        with(&|o| o.run_as_user = Some(0)),
        Err("spec.clusters[0].snapshotOffload.runAsUser".into())
    );
    // pg_other is no CloudNativePG Cluster name.
    let mut s = full_standard();
    s.clusters[1].snapshot_offload = Some(Default::default());
    assert_eq!(klio_toml(&s).unwrap_err().field, "spec.clusters[1].name");
}
