//! OperatorLifecycle (operator side): the JSON patches that put Klio's sidecar into the
//! Pods and Jobs CloudNativePG creates.
//!
//! - Instance Pods of a Cluster that enables the plugin in `spec.plugins` get the
//!   instance sidecar (`klio-cnpg-plugin instance`);
//! - the `full-recovery` Job of a Cluster whose recovery source is served by the
//!   plugin gets the restore sidecar (`klio-cnpg-plugin restore`).
//!
//! The sidecar is a native sidecar (an init container with `restartPolicy: Always`,
//! started before PostgreSQL and kept running), with the main container's volume
//! mounts (PGDATA, `/controller`, the `/plugins` socket directory) and environment, and
//! the plugin Secret mounted read-only at [`CREDENTIALS_DIR`]. The patch is a function
//! of the Cluster and the object alone: EVALUATE on a freshly built Pod yields the spec
//! CREATE gave, and a Pod that already has the sidecar in that shape gets an empty
//! patch, so CloudNativePG does not roll Pods for nothing. Writes nothing.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use tonic::{Request, Response, Status};

use crate::cluster::Cluster;
use crate::params::KlioParams;
use crate::proto::lifecycle::operator_lifecycle_server::OperatorLifecycle;
use crate::proto::lifecycle::operator_operation_type::Type as OpType;
use crate::proto::lifecycle::{
    OperatorLifecycleCapabilities, OperatorLifecycleCapabilitiesRequest,
    OperatorLifecycleCapabilitiesResponse, OperatorLifecycleRequest, OperatorLifecycleResponse,
    OperatorOperationType,
};

/// The sidecar container's name.
pub const SIDECAR_NAME: &str = "klio-plugin";
/// Where the plugin Secrets are mounted in the sidecar: `<dir>/<secret>/token`.
pub const CREDENTIALS_DIR: &str = "/etc/klio/credentials";
/// The volume holding them.
pub const CREDENTIALS_VOLUME: &str = "klio-credentials";
/// The plugin binary in the sidecar image (the startup probe runs it).
pub const SIDECAR_BINARY: &str = "/usr/local/bin/klio-cnpg-plugin";
/// The volume CloudNativePG shares between PostgreSQL and the plugins' sidecars.
const PLUGINS_VOLUME: &str = "plugins";
const PLUGINS_DIR: &str = "/plugins";
/// The main container's volumes the sidecar mounts too: PGDATA, a separate WAL volume,
/// the instance manager's scratch space (`/controller`, `/run`) and `/plugins`.
const SHARED_VOLUMES: [&str; 4] = ["pgdata", "pg-wal", "scratch-data", PLUGINS_VOLUME];
/// The restore Job's role (label `cnpg.io/jobRole`) and main container.
pub const FULL_RECOVERY: &str = "full-recovery";
/// The instance Pod's main container.
const POSTGRES_CONTAINER: &str = "postgres";

/// What the operator-side process knows about the sidecar to inject.
#[derive(Debug, Clone)]
pub struct SidecarSettings {
    /// The image holding `klio-cnpg-plugin` (`KLIO_CNPG_SIDECAR_IMAGE`).
    pub image: String,
}

/// The OperatorLifecycle service.
#[derive(Debug, Clone)]
pub struct LifecycleService {
    settings: SidecarSettings,
}

impl LifecycleService {
    pub fn new(settings: SidecarSettings) -> LifecycleService {
        LifecycleService { settings }
    }
}

fn ops(types: &[OpType]) -> Vec<OperatorOperationType> {
    types
        .iter()
        .map(|t| OperatorOperationType { r#type: *t as i32 })
        .collect()
}

#[tonic::async_trait]
impl OperatorLifecycle for LifecycleService {
    async fn get_capabilities(
        &self,
        _: Request<OperatorLifecycleCapabilitiesRequest>,
    ) -> Result<Response<OperatorLifecycleCapabilitiesResponse>, Status> {
        Ok(Response::new(OperatorLifecycleCapabilitiesResponse {
            lifecycle_capabilities: vec![
                OperatorLifecycleCapabilities {
                    group: String::new(),
                    kind: "Pod".into(),
                    operation_types: ops(&[OpType::Create, OpType::Evaluate]),
                },
                OperatorLifecycleCapabilities {
                    group: "batch".into(),
                    kind: "Job".into(),
                    operation_types: ops(&[OpType::Create]),
                },
            ],
        }))
    }

    async fn lifecycle_hook(
        &self,
        request: Request<OperatorLifecycleRequest>,
    ) -> Result<Response<OperatorLifecycleResponse>, Status> {
        let req = request.into_inner();
        let op = req
            .operation_type
            .and_then(|t| OpType::try_from(t.r#type).ok())
            .unwrap_or(OpType::Unspecified);
        let cluster = Cluster::from_json(&req.cluster_definition)?;
        let object: Value = serde_json::from_slice(&req.object_definition).map_err(|e| {
            Status::invalid_argument(format!("the object definition is not JSON: {e}"))
        })?;
        let patch = lifecycle_patch(&self.settings, op, &cluster, &object)?;
        if let Some(p) = &patch {
            tracing::debug!(
                cluster = %cluster.metadata.name,
                kind = object["kind"].as_str().unwrap_or_default(),
                name = object["metadata"]["name"].as_str().unwrap_or_default(),
                ?op,
                patch = %String::from_utf8_lossy(p),
                "lifecycle patch"
            );
        }
        Ok(Response::new(OperatorLifecycleResponse {
            json_patch: patch.unwrap_or_default(),
        }))
    }
}

/// The JSON patch (RFC 6902, serialised) for `object`, or `None` when it needs none.
pub fn lifecycle_patch(
    settings: &SidecarSettings,
    op: OpType,
    cluster: &Cluster,
    object: &Value,
) -> Result<Option<Vec<u8>>, Status> {
    if !matches!(
        op,
        OpType::Create | OpType::Evaluate | OpType::Patch | OpType::Update
    ) {
        return Ok(None);
    }
    let mutated = match object["kind"].as_str() {
        Some("Pod") => patched_pod(settings, cluster, object)?,
        Some("Job") => patched_job(settings, cluster, object)?,
        _ => None,
    };
    let Some(mutated) = mutated else {
        return Ok(None);
    };
    let patch = json_patch::diff(object, &mutated);
    if patch.0.is_empty() {
        return Ok(None);
    }
    serde_json::to_vec(&patch)
        .map(Some)
        .map_err(|e| Status::internal(format!("cannot encode the JSON patch: {e}")))
}

/// The Pod with the instance sidecar, or `None` when the Cluster does not use the
/// plugin for its backups and WAL.
fn patched_pod(
    settings: &SidecarSettings,
    cluster: &Cluster,
    pod: &Value,
) -> Result<Option<Value>, Status> {
    let Some(params) = cluster.own_params()? else {
        return Ok(None);
    };
    let mut pod = pod.clone();
    let spec = pod
        .get_mut("spec")
        .filter(|s| s.is_object())
        .ok_or_else(|| Status::invalid_argument("the Pod has no spec"))?;
    inject(
        settings,
        cluster,
        spec,
        POSTGRES_CONTAINER,
        "instance",
        &[params],
    )?;
    Ok(Some(pod))
}

/// The Job's role, from the `…/jobRole` label of its Pod template.
fn job_role(job: &Value) -> Option<&str> {
    job["spec"]["template"]["metadata"]["labels"]
        .as_object()?
        .iter()
        .find(|(k, _)| k.ends_with("/jobRole"))
        .and_then(|(_, v)| v.as_str())
}

/// The `full-recovery` Job with the restore sidecar, or `None` for other Jobs and for
/// Clusters that do not recover through the plugin.
fn patched_job(
    settings: &SidecarSettings,
    cluster: &Cluster,
    job: &Value,
) -> Result<Option<Value>, Status> {
    if job_role(job) != Some(FULL_RECOVERY) {
        return Ok(None);
    }
    let Some(params) = cluster.recovery_params()? else {
        return Ok(None);
    };
    if cluster.recovery().is_some_and(|r| r.backup.is_some()) {
        return Err(Status::invalid_argument(format!(
            "cluster {}: spec.bootstrap.recovery.backup names a CloudNativePG Backup object, which plugin {} does not read; choose the backup with spec.bootstrap.recovery.recoveryTarget.backupID (a Klio backup id) or leave it to the recovery target",
            cluster.metadata.name,
            crate::PLUGIN_NAME
        )));
    }
    let mut job = job.clone();
    let spec = job
        .pointer_mut("/spec/template/spec")
        .filter(|s| s.is_object())
        .ok_or_else(|| Status::invalid_argument("the Job has no spec.template.spec"))?;
    inject(settings, cluster, spec, FULL_RECOVERY, "restore", &[params])?;
    Ok(Some(job))
}

fn by_name<'a>(list: &'a [Value], name: &str) -> Option<&'a Value> {
    list.iter().find(|v| v["name"].as_str() == Some(name))
}

/// Puts `item` in the array `list` (created if absent): replaces the element of the
/// same name, or appends.
fn ensure_named(parent: &mut Value, list: &str, item: Value) {
    let name = item["name"].clone();
    let arr = parent
        .as_object_mut()
        .map(|o| o.entry(list).or_insert_with(|| json!([])))
        .and_then(Value::as_array_mut);
    let Some(arr) = arr else { return };
    match arr.iter_mut().find(|v| v["name"] == name) {
        Some(existing) => *existing = item,
        None => arr.push(item),
    }
}

/// Adds the sidecar to a Pod spec whose main container is `main`.
fn inject(
    settings: &SidecarSettings,
    cluster: &Cluster,
    spec: &mut Value,
    main: &str,
    command: &str,
    secrets: &[KlioParams],
) -> Result<(), Status> {
    if settings.image.is_empty() {
        return Err(Status::failed_precondition(
            "no sidecar image configured: start the operator side with --sidecar-image or KLIO_CNPG_SIDECAR_IMAGE",
        ));
    }
    let containers = spec["containers"].as_array().cloned().unwrap_or_default();
    let Some(main_container) = by_name(&containers, main).cloned() else {
        return Err(Status::invalid_argument(format!(
            "the object has no container {main:?} to put Klio's sidecar beside"
        )));
    };
    // The /plugins directory CloudNativePG's instance manager scans for sockets.
    let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
    if by_name(&volumes, PLUGINS_VOLUME).is_none() {
        ensure_named(
            spec,
            "volumes",
            json!({"name": PLUGINS_VOLUME, "emptyDir": {}}),
        );
    }
    let mut main_mounts: Vec<Value> = main_container["volumeMounts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if by_name(&main_mounts, PLUGINS_VOLUME).is_none() {
        let mount = json!({"name": PLUGINS_VOLUME, "mountPath": PLUGINS_DIR});
        main_mounts.push(mount.clone());
        if let Some(c) = spec["containers"]
            .as_array_mut()
            .and_then(|cs| cs.iter_mut().find(|c| c["name"].as_str() == Some(main)))
        {
            ensure_named(c, "volumeMounts", mount);
        }
    }
    // The Secrets, read-only, one directory each; `ca.crt` for an https:// server.
    let mut seen = BTreeSet::new();
    let sources: Vec<Value> = secrets
        .iter()
        .filter(|p| seen.insert(p.secret.as_str()))
        .map(|p| {
            let s = p.secret.as_str();
            let mut items = vec![json!({"key": "token", "path": format!("{s}/token")})];
            if p.server.starts_with("https://") {
                items.push(json!({"key": "ca.crt", "path": format!("{s}/ca.crt")}));
            }
            json!({"secret": {"name": s, "items": items}})
        })
        .collect();
    ensure_named(
        spec,
        "volumes",
        json!({"name": CREDENTIALS_VOLUME, "projected": {"defaultMode": 0o400, "sources": sources}}),
    );

    // The sidecar: the main container's data and socket mounts (not its other Secrets)
    // and environment, then its own.
    let mut mounts: Vec<Value> = main_mounts
        .into_iter()
        .filter(|m| {
            m["name"]
                .as_str()
                .is_some_and(|n| SHARED_VOLUMES.contains(&n))
        })
        .collect();
    mounts
        .push(json!({"name": CREDENTIALS_VOLUME, "mountPath": CREDENTIALS_DIR, "readOnly": true}));
    let mut env: Vec<Value> = main_container["env"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (name, value) in [
        ("NAMESPACE", cluster.metadata.namespace.as_str()),
        ("CLUSTER_NAME", cluster.metadata.name.as_str()),
        ("KLIO_CREDENTIALS_DIR", CREDENTIALS_DIR),
    ] {
        if by_name(&env, name).is_none() {
            env.push(json!({"name": name, "value": value}));
        }
    }
    let socket = format!("{PLUGINS_DIR}/{}", crate::PLUGIN_NAME);
    let mut sidecar = json!({
        "name": SIDECAR_NAME,
        "image": settings.image,
        // The image's entrypoint may be another program (the operator image's is).
        "command": [SIDECAR_BINARY],
        "args": [command],
        "env": env,
        "volumeMounts": mounts,
        "restartPolicy": "Always",
        "startupProbe": {
            "exec": {"command": [SIDECAR_BINARY, "probe", "--socket", socket]},
            "periodSeconds": 1,
            "failureThreshold": 30,
            "timeoutSeconds": 5,
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "seccompProfile": {"type": "RuntimeDefault"},
            "capabilities": {"drop": ["ALL"]},
        },
    });
    if let Some(policy) = &cluster.spec.image_pull_policy {
        sidecar["imagePullPolicy"] = json!(policy);
    }
    ensure_named(spec, "initContainers", sidecar);
    Ok(())
}
