//! Klio's Kubernetes operator: the `Server` custom resource (`klio.io/v1alpha1`) that
//! declares a Klio Server next to CloudNativePG clusters, with the CEL rules that refuse
//! invalid combinations at admission; [`crd_yaml`], which `crdgen` writes to
//! `deploy/crds/`; and the reconciler the `klio-operator` binary runs. It uses the lean
//! `klio-api` client for the server's status, never RocksDB.
//!
//! Secrets are referenced, never inlined: the master key, the API's TLS pair and client
//! CA, the clusters' replication credentials (CloudNativePG's `<cluster>-replication` and
//! `<cluster>-ca` Secrets work as they are), their API tokens, Tier 2's keys and CA.
//!
//! # What the operator owns
//!
//! For each Server `<name>` in its namespace, all owned by the Server (owner references)
//! and written by server-side apply with the field manager `klio-operator`:
//! - ConfigMap `<name>-config`: the generated `klio.toml` ([`config`]);
//! - Service `<name>`: ports `api` (7070) and `metrics` (9187, the server's plain-HTTP
//!   `/metrics`); also the StatefulSet's governing service;
//! - StatefulSet `<name>`: one replica, non-root, read-only root filesystem, probes on
//!   `/healthz`, every Secret in one read-only projected volume, Tier 1 from the claim
//!   template `data` (none on a read-only server, which gets an emptyDir for its
//!   catalog), `spec.template` merged into the pod template ([`merge`]), and the pod
//!   annotation `klio.io/config-hash` over the configuration and the referenced Secrets'
//!   content ([`resources`]).
//!
//! For clusters with `wire` it edits their CloudNativePG Clusters so Klio can stream
//! from them, and be their synchronous standby ([`wire`]).
//! For clusters with `snapshotOffload` it creates CloudNativePG volume-snapshot
//! `Backup`s, claims restored from their snapshots and offload `Job`s ([`offload`]).
//!
//! It also patches the claim `data-<name>-0` when `spec.storage.size` grows (never
//! shrinks it, never deletes it), writes the Server's status from the server's
//! `/v1/status` ([`status`]), records Events, and keeps the finalizer `klio.io/cleanup`.
//! The reconciliation's steps and error handling are in [`reconcile`]; leader election
//! in [`lease`]; the operator's own metrics in [`metrics`].
//!
//! # What it may do (RBAC)
//!
//! Exactly [`RBAC_WATCHED_NAMESPACES`] in the watched namespaces (all, or
//! `KLIO_OPERATOR_WATCH_NAMESPACE`), and [`RBAC_OWN_NAMESPACE`] in its own; the
//! manifests under `deploy/` grant these and nothing else (`operator/tests/deploy.rs`
//! checks it):
//! - `klio.io` `servers`: get, list, watch, patch (the finalizer); `servers/status`: patch;
//! - `apps` `statefulsets`; core `services`, `configmaps`: list, watch (owned objects, by
//!   the label `app.kubernetes.io/managed-by=klio-operator`), create and patch (server-side
//!   apply creates); statefulsets also get (the existing claim template);
//! - core `secrets`: get (only those a Server references; none are listed or watched);
//! - core `persistentvolumeclaims`: get, patch (growing Tier 1; get also reads a
//!   snapshot's source claim for its storage class), create, delete (the claims a
//!   volume snapshot is restored into for its offload);
//! - Tier 0 ([`offload`]): `postgresql.cnpg.io` `backups`: list, create, delete (by the
//!   labels `klio.io/server`, `klio.io/cluster`); `clusters`: get (has it
//!   `spec.backup.volumeSnapshot`?); `snapshot.storage.k8s.io` `volumesnapshots`: list,
//!   delete (retention); `batch` `jobs`: list, create (finished Jobs go by their TTL);
//! - wiring ([`wire`]): `postgresql.cnpg.io` `clusters`: patch (a merge patch of the
//!   replication role, `pg_hba` and synchronous standby of a cluster with `wire`);
//! - `events.k8s.io` `events`: create, patch (repeated events become a series).
//!
//! In its own namespace: `coordination.k8s.io` `leases`: get, create, update.

pub mod config;
pub mod cron;
pub mod lease;
pub mod merge;
pub mod metrics;
pub mod offload;
pub mod reconcile;
pub mod resources;
pub mod status;
pub mod wire;

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One RBAC rule: an API group (`""` is the core group), its resources and the verbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RbacRule {
    pub api_group: &'static str,
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

/// What the operator may do in the namespaces it watches (a ClusterRole, or a Role per
/// namespace with `KLIO_OPERATOR_WATCH_NAMESPACE`).
pub const RBAC_WATCHED_NAMESPACES: &[RbacRule] = &[
    RbacRule {
        api_group: "klio.io",
        resources: &["servers"],
        verbs: &["get", "list", "watch", "patch"],
    },
    RbacRule {
        api_group: "klio.io",
        resources: &["servers/status"],
        verbs: &["patch"],
    },
    RbacRule {
        api_group: "apps",
        resources: &["statefulsets"],
        verbs: &["get", "list", "watch", "create", "patch"],
    },
    RbacRule {
        api_group: "",
        resources: &["services", "configmaps"],
        verbs: &["list", "watch", "create", "patch"],
    },
    RbacRule {
        api_group: "",
        resources: &["secrets"],
        verbs: &["get"],
    },
    RbacRule {
        api_group: "",
        resources: &["persistentvolumeclaims"],
        verbs: &["get", "patch", "create", "delete"],
    },
    RbacRule {
        api_group: "postgresql.cnpg.io",
        resources: &["backups"],
        verbs: &["list", "create", "delete"],
    },
    RbacRule {
        api_group: "postgresql.cnpg.io",
        resources: &["clusters"],
        verbs: &["get", "patch"],
    },
    RbacRule {
        api_group: "snapshot.storage.k8s.io",
        resources: &["volumesnapshots"],
        verbs: &["list", "delete"],
    },
    RbacRule {
        api_group: "batch",
        resources: &["jobs"],
        verbs: &["list", "create"],
    },
    RbacRule {
        api_group: "events.k8s.io",
        resources: &["events"],
        verbs: &["create", "patch"],
    },
];

/// What the operator may do in its own namespace: its leader-election Lease.
pub const RBAC_OWN_NAMESPACE: &[RbacRule] = &[RbacRule {
    api_group: "coordination.k8s.io",
    resources: &["leases"],
    verbs: &["get", "create", "update"],
}];

/// A Klio Server: one StatefulSet (one replica) with its volume, configuration and keys.
///
/// Admission refuses (CEL): a read-only server without `tier2`, or with `storage`, or
/// with a cluster that has a `host` or a `backupSchedule`; a standard server without
/// `storage` or with a cluster without `host`; two clusters of one name; a
/// `snapshotOffload` on a read-only server, on a cluster without `host`, or on a cluster
/// whose name is not a Kubernetes name (it names the CloudNativePG Cluster).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "klio.io",
    version = "v1alpha1",
    kind = "Server",
    namespaced,
    status = "ServerStatus",
    shortname = "klio",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Last backup","type":"date","jsonPath":".status.lastBackupTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = r#"!(has(self.spec.mode) && self.spec.mode == 'read-only') || has(self.spec.tier2)"#,
    validation = r#"!(has(self.spec.mode) && self.spec.mode == 'read-only') || !has(self.spec.storage)"#,
    validation = r#"(has(self.spec.mode) && self.spec.mode == 'read-only') || has(self.spec.storage)"#,
    validation = r#"!(has(self.spec.mode) && self.spec.mode == 'read-only') || self.spec.clusters.all(c, !has(c.host) && !has(c.backupSchedule))"#,
    validation = r#"(has(self.spec.mode) && self.spec.mode == 'read-only') || self.spec.clusters.all(c, has(c.host))"#,
    validation = r#"self.spec.clusters.all(c, self.spec.clusters.exists_one(d, d.name == c.name))"#,
    validation = r#"self.spec.clusters.all(c, !has(c.snapshotOffload) || ((!has(self.spec.mode) || self.spec.mode == 'standard') && has(c.host)))"#,
    validation = r#"self.spec.clusters.all(c, !has(c.snapshotOffload) || c.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))"#
)]
#[serde(rename_all = "camelCase")]
pub struct ServerSpec {
    /// The Klio image (default: the operator's own version of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `standard` (stream and back up) or `read-only` (restore from Tier 2 alone; needs
    /// `tier2`, has no Tier 1 volume).
    #[serde(default)]
    pub mode: ServerMode,
    /// Tier 1: the server's volume (standard servers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// Tier 2: object storage the server relays to (or, read-only, restores from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier2: Option<Tier2Spec>,
    /// The master key (64 hex characters) that wraps every cluster's data key.
    pub master_key: SecretKeyRef,
    /// HTTPS for the API, and client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// The PostgreSQL clusters this server protects.
    #[schemars(length(min = 1))]
    pub clusters: Vec<ClusterSpec>,
    /// What each tier keeps (absent: everything).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,
    /// A pod template merged into the generated one (tolerations, nodeSelector,
    /// resources, affinity...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_fields")]
    pub template: Option<serde_json::Value>,
}

/// What a server does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServerMode {
    #[default]
    #[serde(rename = "standard")]
    Standard,
    #[serde(rename = "read-only")]
    ReadOnly,
}

/// The Tier 1 volume.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Its size (`100Gi`); growing it resizes the claim.
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"))]
    pub size: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
}

/// `[tier2]` of the server's configuration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tier2Spec {
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`.
    #[schemars(regex(pattern = r"^(s3|gs|az)://[^/]+(/.*)?$"))]
    pub url: String,
    /// An S3-compatible endpoint (path-style requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// A Secret with the S3 keys; absent: the provider's usual credentials (e.g. the
    /// pod's service account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<S3Credentials>,
    /// An extra CA for the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<SecretKeyRef>,
    /// Allow a plain `http://` endpoint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_http: bool,
}

/// Static S3 keys in one Secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Credentials {
    pub secret_name: String,
    /// Default `ACCESS_KEY_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id_key: Option<String>,
    /// Default `SECRET_ACCESS_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key_key: Option<String>,
}

/// One key of a Secret in the Server's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// The API's TLS.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`).
    pub secret_name: String,
    /// One CA for every cluster's client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<SecretKeyRef>,
    /// Refuse requests without a client certificate (bearer tokens stop working).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_client_cert: bool,
}

/// One protected PostgreSQL cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    /// The cluster's name in Klio (a CloudNativePG Cluster's name fits).
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$"))]
    pub name: String,
    /// The primary's host (e.g. CloudNativePG's `<cluster>-rw` Service); absent on a
    /// read-only server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Default 5432.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// The replication user (default `streaming_replica`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A `kubernetes.io/tls` Secret with the user's client certificate
    /// (CloudNativePG's `<cluster>-replication`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_secret: Option<String>,
    /// A Secret whose `ca.crt` verifies the server (CloudNativePG's `<cluster>-ca`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<String>,
    /// A password instead of a certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretKeyRef>,
    /// The bearer token of this cluster's clients (`restore_command`, `klio restore`).
    pub token: SecretKeyRef,
    /// Cron (UTC) for base backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_schedule: Option<String>,
    /// Tier 0: CloudNativePG volume-snapshot backups of this cluster, offloaded into the
    /// server as base backups. The CloudNativePG Cluster must have this cluster's name
    /// and `spec.backup.volumeSnapshot.className`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_offload: Option<SnapshotOffloadSpec>,
    /// The operator edits the CloudNativePG Cluster of this name (in the Server's
    /// namespace) so that Klio can stream from it: the replication role and its `pg_hba`
    /// line, and with `synchronous` Klio as its preferred synchronous standby ([`wire`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wire: Option<WireSpec>,
}

/// What the operator sets up in a cluster's CloudNativePG Cluster ([`wire`]).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WireSpec {
    /// Make Klio the preferred synchronous standby (RPO 0) once it streams:
    /// `spec.postgresql.synchronous` with `method: first` and `klio` first in
    /// `standbyNamesPre`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous: Option<bool>,
}

/// When to take volume-snapshot backups of a cluster, how to offload them, and how many
/// to keep. Without `schedule`, only the Server's annotation `klio.io/offload-now` (a
/// value not acted on yet) starts one.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotOffloadSpec {
    /// Cron (5 fields, UTC, or `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// How many completed snapshot backups to keep (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub keep: Option<u32>,
    /// Snapshot backups older than this (`7d`, `24h`, `2w`) are pruned, except the
    /// newest completed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+[smhdw]$"))]
    pub max_age: Option<String>,
    /// The user the offload Job runs as: the owner of PGDATA in the snapshot (default 26,
    /// CloudNativePG's `postgres`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub run_as_user: Option<i64>,
    /// The storage class of the claims restored from the snapshots (default: the class
    /// of each snapshot's source claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
}

/// `[retention]`: shared rules, and per-tier rules that replace them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    #[serde(flatten)]
    pub rules: RetentionRules,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier1: Option<RetentionRules>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier2: Option<RetentionRules>,
}

/// One tier's keep rules (see the server's `[retention]`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionRules {
    /// `7d`, `36h`, `2w`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+[smhdw]$"))]
    pub recovery_window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub latest: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub daily: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub weekly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub monthly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub yearly: Option<u32>,
}

/// What the operator last saw of the server (filled from its `/v1/status`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Streaming-<cluster>`, `Tier2Reachable`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    /// When the newest complete backup of any cluster finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_time: Option<String>,
    /// Bytes each cluster's WAL intake is behind its primary.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub wal_lag_bytes: BTreeMap<String, u64>,
    /// The last volume-snapshot offload of each cluster with `snapshotOffload`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshot_offloads: Vec<SnapshotOffloadStatus>,
}

/// One cluster's last volume-snapshot offload.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotOffloadStatus {
    pub cluster: String,
    /// The CloudNativePG Backup last offloaded (or that failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<String>,
    /// When the last successful offload finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_time: Option<String>,
    /// Why the last attempt failed (absent after a success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The `SnapshotOffload` condition's reason for `lastError`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_reason: Option<String>,
    /// The last value of the Server's annotation `klio.io/offload-now` acted on for
    /// this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload_now_handled: Option<String>,
}

/// An object of any shape, kept as given (`x-kubernetes-preserve-unknown-fields`).
fn preserve_unknown_fields(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// The CRDs as the YAML `deploy/crds/` holds (one document per CRD).
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = serde_yaml::to_string(&Server::crd()).expect("CRDs serialise");
    format!("# Generated by `cargo run -p klio-operator --bin crdgen`; do not edit.\n{crd}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_crds_are_what_the_types_generate() {
        let path = klio_harness::manifest_dir(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/crds/klio.io_servers.yaml")
            .display()
            .to_string();
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == crd_yaml(),
            "{path} is stale: run `cargo run -p klio-operator --bin crdgen` and commit it"
        );
    }

    /// `kubernetes-validate`: `$KLIO_KUBERNETES_VALIDATE`, else the virtualenv
    /// `scripts/setup.sh` fills, else `PATH`.
    fn kubernetes_validate() -> std::path::PathBuf {
        if let Some(p) = std::env::var_os("KLIO_KUBERNETES_VALIDATE") {
            return p.into();
        }
        let venv = std::env::var_os("HOME")
            .map(|h| std::path::Path::new(&h).join(".cache/klio-venv/bin/kubernetes-validate"));
        match venv {
            Some(p) if p.is_file() => p,
            _ => "kubernetes-validate".into(),
        }
    }

    #[test]
    fn the_crds_validate_against_the_kubernetes_schemas() {
        let path = klio_harness::manifest_dir(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/crds/klio.io_servers.yaml")
            .display()
            .to_string();
        let path = path.as_str();
        let tool = kubernetes_validate();
        let out = std::process::Command::new(&tool)
            .args(["--strict", path])
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}): install it with `bash scripts/setup.sh` (or pip install kubernetes-validate)",
                    tool.display()
                )
            });
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success() && text.contains("passed"), "{text}");
    }

    #[test]
    fn a_server_reads_from_yaml_with_defaults_and_refuses_unknown_modes() {
        let s: ServerSpec = serde_yaml::from_str(
            "masterKey: {name: klio-keys, key: master.key}\n\
             storage: {size: 50Gi}\n\
             clusters:\n- name: pg-main\n  host: pg-main-rw\n  token: {name: pg-main-token, key: token}\n",
        )
        .unwrap();
        assert_eq!(s.mode, ServerMode::Standard);
        assert_eq!(s.clusters[0].port, None);
        assert!(serde_yaml::from_str::<ServerMode>("standby").is_err());
        assert_eq!(
            serde_yaml::from_str::<ServerMode>("read-only").unwrap(),
            ServerMode::ReadOnly
        );
    }
}
