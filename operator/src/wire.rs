//! Wiring a CloudNativePG Cluster to its Klio Server, on request (a cluster's `wire`).
//!
//! For each cluster of a standard Server with `wire`, the operator edits the CloudNativePG
//! Cluster of the same name in the Server's namespace so that Klio can stream from it:
//! - **Replication role.** With a certificate (`replicationSecret`), Klio connects as
//!   CloudNativePG's own `streaming_replica`, which CloudNativePG's default `pg_hba`
//!   already admits (`hostssl replication streaming_replica all cert`): nothing to add.
//!   With a password (`password`), the user becomes a managed role (`spec.managed.roles`:
//!   `login`, `replication`, `passwordSecret` = the password's Secret, which CloudNativePG
//!   reads as a `kubernetes.io/basic-auth` Secret: keys `username` and `password`) and
//!   `spec.postgresql.pg_hba` gets `hostssl replication <user> all scram-sha-256`.
//! - **Synchronous standby** (`wire.synchronous`), once Klio streams from the cluster
//!   (so that a primary never waits for a standby that never connected):
//!   `spec.postgresql.synchronous` gets `method: first` with Klio's `application_name`
//!   first in `standbyNamesPre`; CloudNativePG appends its replicas, so `FIRST 1 (klio,
//!   replicas…)` waits for Klio and falls back to a replica while Klio is away (with
//!   one instance and no replica, commits wait for Klio).
//!
//! It only adds: a role, an `pg_hba` line or a `standbyNamesPre` entry already there is
//! left as it is, nothing is removed when `wire` goes, and a setting that contradicts
//! the request (a role of that name without `replication`, `method: any`, the older
//! `minSyncReplicas`/`maxSyncReplicas`) is reported, never overwritten. Each edit is a
//! JSON merge patch carrying the Cluster's `resourceVersion`, so an edit racing another
//! writer fails (409) and is planned again on the next pass.

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{json, Value};

use crate::reconcile::{publish, Context, FIELD_MANAGER};
use crate::{ClusterSpec, Server, ServerMode, WireSpec};
use kube::runtime::events::EventType;
use kube::ResourceExt;

/// Klio's `application_name` (the server's default; the operator does not change it).
pub const APPLICATION_NAME: &str = "klio";

/// CloudNativePG's replication user, the one its certificates are issued for.
const CNPG_REPLICATION_USER: &str = "streaming_replica";

/// What one cluster's wiring needs now.
#[derive(Debug, Clone, PartialEq)]
pub enum Planned {
    /// The Cluster is wired as asked.
    Wired,
    /// Wired as far as it can be now; the rest waits (`reason`, `message`).
    Waiting(&'static str, String),
    /// A merge patch and what it changes (for the event).
    Patch(Value, Vec<String>),
    /// Cannot be wired as asked (`reason`, `message` naming the cause and the fix).
    Refused(&'static str, String),
}

/// Plans the wiring of `cnpg` (the CloudNativePG Cluster, as read) for `cluster`;
/// `streaming`: Klio streams from it now.
pub fn plan(cnpg: &Value, cluster: &ClusterSpec, wire: &WireSpec, streaming: bool) -> Planned {
    let name = &cluster.name;
    let user = cluster.user.as_deref().unwrap_or(CNPG_REPLICATION_USER);
    let spec = &cnpg["spec"];
    let mut patch = json!({});
    let mut changes = Vec::new();

    // 1. The replication role and its pg_hba line.
    match &cluster.password {
        Some(password) => {
            if password.key != "password" {
                return Planned::Refused(
                    "PasswordKey",
                    format!(
                        "{name}: the password is the key {:?} of Secret {}, but CloudNativePG reads a managed role's password from the key \"password\" of a kubernetes.io/basic-auth Secret (with \"username\": {user}); use key: password",
                        password.key, password.name
                    ),
                );
            }
            let roles = array(&spec["managed"]["roles"]);
            match roles.iter().find(|r| r["name"].as_str() == Some(user)) {
                Some(r) => {
                    if r["replication"] != json!(true) || r["login"] != json!(true) {
                        return Planned::Refused(
                            "RoleConflict",
                            format!(
                                "{name}: spec.managed.roles already has {user} without login and replication: Klio cannot replicate as it; give that role login: true and replication: true, or another user to the Klio cluster"
                            ),
                        );
                    }
                }
                None => {
                    let mut roles = roles.clone();
                    roles.push(json!({
                        "name": user,
                        "ensure": "present",
                        "login": true,
                        "replication": true,
                        "passwordSecret": {"name": password.name},
                        "comment": "Klio Server (klio-operator)",
                    }));
                    patch["spec"]["managed"]["roles"] = Value::Array(roles);
                    changes.push(format!("managed role {user} (replication)"));
                }
            }
            let hba = array(&spec["postgresql"]["pg_hba"]);
            if !hba
                .iter()
                .any(|l| l.as_str().is_some_and(|l| admits(l, user)))
            {
                let mut hba = hba.clone();
                let line = format!("hostssl replication {user} all scram-sha-256");
                hba.push(json!(line));
                patch["spec"]["postgresql"]["pg_hba"] = Value::Array(hba);
                changes.push(format!("pg_hba {line:?}"));
            }
        }
        None => {
            if cluster.replication_secret.is_none() {
                return Planned::Refused(
                    "NoCredentials",
                    format!(
                        "{name}: neither replicationSecret nor password is set: set replicationSecret to CloudNativePG's {name}-replication Secret (a streaming_replica certificate), or a password"
                    ),
                );
            }
            if user != CNPG_REPLICATION_USER {
                return Planned::Refused(
                    "CertificateUser",
                    format!(
                        "{name}: user {user} with a certificate: CloudNativePG issues replication certificates for {CNPG_REPLICATION_USER} only; use user {CNPG_REPLICATION_USER} (the default) or a password"
                    ),
                );
            }
        }
    }

    // 2. Klio as the preferred synchronous standby.
    let mut waiting = None;
    if wire.synchronous == Some(true) {
        let sync = &spec["postgresql"]["synchronous"];
        if !sync.is_object() {
            let legacy = ["minSyncReplicas", "maxSyncReplicas"]
                .iter()
                .any(|k| spec[k].as_i64().is_some_and(|n| n > 0));
            if legacy {
                return Planned::Refused(
                    "LegacySynchronous",
                    format!(
                        "{name}: the Cluster uses minSyncReplicas/maxSyncReplicas, which cannot name Klio as a standby; move to spec.postgresql.synchronous (method: first, standbyNamesPre: [{APPLICATION_NAME}]) or drop wire.synchronous"
                    ),
                );
            }
        } else if sync["method"].as_str() != Some("first") {
            return Planned::Refused(
                "SynchronousMethod",
                format!(
                    "{name}: spec.postgresql.synchronous.method is {}: with it any standby may acknowledge a commit, so Klio holding every commit is not guaranteed; set method: first or drop wire.synchronous",
                    sync["method"]
                ),
            );
        }
        let pre = array(&sync["standbyNamesPre"]);
        let first = pre.first().and_then(Value::as_str) == Some(APPLICATION_NAME);
        if !first && !streaming {
            waiting = Some((
                "WaitingForStreaming",
                format!(
                    "{name}: Klio becomes the synchronous standby once it streams from the cluster (a primary would otherwise wait for a standby that never connected)"
                ),
            ));
        } else if !first {
            let mut names = vec![json!(APPLICATION_NAME)];
            names.extend(
                pre.iter()
                    .filter(|n| n.as_str() != Some(APPLICATION_NAME))
                    .cloned(),
            );
            let target = &mut patch["spec"]["postgresql"]["synchronous"];
            if !sync.is_object() {
                *target = json!({"method": "first", "number": 1});
            }
            target["standbyNamesPre"] = Value::Array(names);
            // With one instance no other standby can take over from Klio.
            let alone = spec["instances"].as_i64().unwrap_or(1) <= 1;
            changes.push(format!(
                "synchronous standby {APPLICATION_NAME} (method first, first in standbyNamesPre){}",
                if alone {
                    "; the Cluster has a single instance, so every commit waits for Klio and writes stop while Klio is unavailable (add instances for a standby that takes over)"
                } else {
                    ""
                }
            ));
        }
    }

    if !changes.is_empty() {
        if let Some(rv) = cnpg["metadata"]["resourceVersion"].as_str() {
            patch["metadata"]["resourceVersion"] = json!(rv);
        }
        return Planned::Patch(patch, changes);
    }
    match waiting {
        Some((reason, message)) => Planned::Waiting(reason, message),
        None => Planned::Wired,
    }
}

/// The items of a JSON array (none for anything else).
fn array(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

/// Whether a `pg_hba` line admits `user` to replicate with a password over TCP.
fn admits(line: &str, user: &str) -> bool {
    let f: Vec<&str> = line.split_whitespace().collect();
    f.len() >= 5
        && matches!(f[0], "host" | "hostssl")
        && f[1].split(',').any(|d| d == "replication")
        && f[2].split(',').any(|u| u == user || u == "all")
        && matches!(f.last().copied(), Some("scram-sha-256" | "md5"))
}

/// One cluster's outcome this pass.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterWiring {
    pub cluster: String,
    /// `Some(true)` wired, `Some(false)` refused or failed, `None` waiting.
    pub ok: Option<bool>,
    pub reason: String,
    pub message: String,
}

/// Every wired cluster's outcome, for the `CloudNativePGWired` condition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub clusters: Vec<ClusterWiring>,
}

impl Report {
    /// `(status, reason, message)` of the condition: False if any cluster is refused,
    /// else Unknown if any waits, else True.
    pub fn condition(&self) -> (&'static str, String, String) {
        let not: Vec<&ClusterWiring> = self
            .clusters
            .iter()
            .filter(|c| c.ok == Some(false))
            .collect();
        let waiting: Vec<&ClusterWiring> =
            self.clusters.iter().filter(|c| c.ok.is_none()).collect();
        let join = |cs: &[&ClusterWiring]| {
            cs.iter()
                .map(|c| c.message.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        };
        if let Some(first) = not.first() {
            ("False", first.reason.clone(), join(&not))
        } else if let Some(first) = waiting.first() {
            ("Unknown", first.reason.clone(), join(&waiting))
        } else {
            (
                "True",
                "Wired".into(),
                format!(
                    "wired: {}",
                    self.clusters
                        .iter()
                        .map(|c| c.cluster.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        }
    }
}

fn cnpg_clusters() -> kube::discovery::ApiResource {
    kube::discovery::ApiResource {
        group: "postgresql.cnpg.io".into(),
        version: "v1".into(),
        api_version: "postgresql.cnpg.io/v1".into(),
        kind: "Cluster".into(),
        plural: "clusters".into(),
    }
}

/// Wires every cluster with `wire` (see the module documentation); `None` when no
/// cluster asks for it. `streaming(cluster)`: Klio streams from it now.
pub async fn reconcile(
    server: &Server,
    ctx: &Context,
    streaming: impl Fn(&str) -> bool,
) -> Result<Option<Report>, kube::Error> {
    let wired: Vec<(&ClusterSpec, &WireSpec)> = server
        .spec
        .clusters
        .iter()
        .filter_map(|c| c.wire.as_ref().map(|w| (c, w)))
        .collect();
    if wired.is_empty() {
        return Ok(None);
    }
    let ns = server.namespace().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &cnpg_clusters());
    let mut report = Report::default();
    for (cluster, wire) in wired {
        let name = cluster.name.clone();
        let outcome = |ok, reason: &str, message: String| ClusterWiring {
            cluster: name.clone(),
            ok,
            reason: reason.into(),
            message,
        };
        if server.spec.mode == ServerMode::ReadOnly {
            report.clusters.push(outcome(
                Some(false),
                "ReadOnlyServer",
                format!("{name}: a read-only server does not stream, so there is nothing to wire; drop wire"),
            ));
            continue;
        }
        let Some(cnpg) = api.get_opt(&name).await? else {
            report.clusters.push(outcome(
                Some(false),
                "ClusterNotFound",
                format!("{name}: there is no CloudNativePG Cluster {name} in namespace {ns}: wire edits the CloudNativePG Cluster named like the Klio cluster, in the Server's namespace"),
            ));
            continue;
        };
        let as_json = serde_json::to_value(&cnpg).unwrap_or_default();
        let result = match plan(&as_json, cluster, wire, streaming(&name)) {
            Planned::Wired => outcome(Some(true), "Wired", format!("{name}: wired")),
            Planned::Waiting(reason, message) => outcome(None, reason, message),
            Planned::Refused(reason, message) => {
                publish(ctx, server, EventType::Warning, reason, message.clone()).await;
                outcome(Some(false), reason, message)
            }
            Planned::Patch(patch, changes) => {
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PatchParams::default()
                };
                match api.patch(&name, &params, &Patch::Merge(&patch)).await {
                    Ok(_) => {
                        let note = format!("{name}: added {}", changes.join(", "));
                        tracing::info!(server = %server.name_any(), note, "wired a CloudNativePG Cluster");
                        publish(
                            ctx,
                            server,
                            EventType::Normal,
                            "WiredCloudNativePG",
                            note.clone(),
                        )
                        .await;
                        // Checked again on the next pass (and waiting parts done then).
                        outcome(None, "Wiring", note)
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => outcome(
                        None,
                        "Conflict",
                        format!(
                            "{name}: the Cluster changed while it was being wired; trying again"
                        ),
                    ),
                    Err(e) => return Err(e),
                }
            }
        };
        report.clusters.push(result);
    }
    Ok(Some(report))
}

#[cfg(test)]
mod tests;
