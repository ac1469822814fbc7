//! What a completed CloudNativePG volume-snapshot Backup becomes: the plan of claims to
//! restore from its VolumeSnapshots (PG_DATA and tablespaces, never PG_WAL) with its
//! `backup_label`, checked from the snapshots' annotations and status; and the offload
//! Job that mounts those claims. Pure functions: the caller creates the objects.

use super::*;

/// What a VolumeSnapshot is to the offload.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Role {
    Data,
    Wal,
    Tablespace(String),
    Other(String),
}

#[derive(Debug, Clone)]
pub(super) struct SnapshotView {
    name: String,
    role: Role,
    /// `cnpg.io/backupLabelFile`, as written (base64).
    backup_label: Option<String>,
    restore_size: Option<String>,
    ready: bool,
    source_claim: Option<String>,
}

impl SnapshotView {
    pub(super) fn of(obj: &DynamicObject) -> Option<SnapshotView> {
        let annotation = |k: &str| obj.metadata.annotations.as_ref()?.get(k).cloned();
        let label = |k: &str| obj.metadata.labels.as_ref()?.get(k).cloned();
        let role = match annotation(CNPG_PVC_ROLE)
            .or_else(|| label(CNPG_PVC_ROLE))
            .as_deref()
        {
            Some("PG_DATA") => Role::Data,
            Some("PG_WAL") => Role::Wal,
            // Without a name it is refused (offloading without it would be incomplete).
            Some("PG_TABLESPACE") => Role::Tablespace(
                label(CNPG_TABLESPACE)
                    .or_else(|| annotation(CNPG_TABLESPACE))
                    .unwrap_or_default(),
            ),
            other => Role::Other(other.unwrap_or("(none)").to_string()),
        };
        let status = &obj.data["status"];
        Some(SnapshotView {
            name: obj.metadata.name.clone()?,
            role,
            backup_label: annotation(CNPG_BACKUP_LABEL_FILE),
            restore_size: status["restoreSize"].as_str().map(str::to_string),
            ready: status["readyToUse"].as_bool() == Some(true),
            source_claim: obj.data["spec"]["source"]["persistentVolumeClaimName"]
                .as_str()
                .map(str::to_string),
        })
    }
}

/// A tablespace name fit for a path component under [`TABLESPACES_MOUNT`]
/// (CloudNativePG's own rule is stricter).
pub(super) fn valid_tablespace(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The `backup_label` text of `cnpg.io/backupLabelFile` (base64 of what
/// `pg_backup_stop` returned), checked to look like one.
pub(super) fn decode_backup_label(b64: &str) -> Option<String> {
    let bytes: ByteString = serde_json::from_value(Value::String(b64.trim().to_string())).ok()?;
    let text = String::from_utf8(bytes.0).ok()?;
    text.starts_with("START WAL LOCATION:").then_some(text)
}

/// A claim to restore from one VolumeSnapshot.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PlannedClaim {
    pub(super) name: String,
    pub(super) backup: String,
    pub(super) snapshot: String,
    pub(super) size: String,
    /// The snapshot's source claim (for its storage class); empty when unknown.
    pub(super) source_claim: String,
    /// `None`: PGDATA; else the tablespace's name.
    pub(super) tablespace: Option<String>,
}

/// What the Job of a Backup gets: its claims (PGDATA first) and the backup label.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Plan {
    pub(super) claims: Vec<PlannedClaim>,
    pub(super) backup_label: String,
}

/// The claims and label of a completed Backup's snapshots; `Ok(None)` while a snapshot
/// is not ready; `Err((reason, message))` when they cannot be offloaded.
pub(super) fn plan(
    backup: &str,
    snapshots: &[SnapshotView],
) -> Result<Option<Plan>, (&'static str, String)> {
    let data: Vec<&SnapshotView> = snapshots.iter().filter(|s| s.role == Role::Data).collect();
    let [data] = data[..] else {
        return Err((
            "OffloadFailed",
            format!(
                "Backup {backup} has {} VolumeSnapshot(s) labelled {CNPG_BACKUP_NAME}={backup} with annotation {CNPG_PVC_ROLE}=PG_DATA, not one: it cannot be offloaded; take another (annotate the Server with {OFFLOAD_NOW_ANNOTATION})",
                data.len()
            ),
        ));
    };
    let Some(backup_label) = data.backup_label.as_deref().and_then(decode_backup_label) else {
        return Err((
            "NoBackupLabel",
            format!(
                "VolumeSnapshot {} of Backup {backup} has no valid annotation {CNPG_BACKUP_LABEL_FILE} (the base64 backup_label of an online backup), so its copy cannot be restored consistently; CloudNativePG writes it for online volume-snapshot backups: check that the Backup is online and CloudNativePG is recent enough",
                data.name
            ),
        ));
    };
    let mut claims = Vec::new();
    for s in snapshots {
        let tablespace = match &s.role {
            Role::Data => None,
            Role::Tablespace(t) if valid_tablespace(t) => Some(t.clone()),
            Role::Tablespace(t) => {
                return Err((
                    "OffloadFailed",
                    format!(
                        "VolumeSnapshot {} names tablespace {t:?}, which is not a plain name (letters, digits, _ and -, at most 63): refusing to mount it",
                        s.name
                    ),
                ))
            }
            Role::Wal | Role::Other(_) => continue,
        };
        let (Some(size), true) = (&s.restore_size, s.ready) else {
            return Ok(None);
        };
        if crate::resources::quantity_bytes(size).is_none_or(|b| b == 0) {
            return Err((
                "OffloadFailed",
                format!(
                    "VolumeSnapshot {} has status.restoreSize {size:?}, which is not a size",
                    s.name
                ),
            ));
        }
        let suffix = match &tablespace {
            None => "pgdata".to_string(),
            Some(t) => format!("tbs-{}", dns_label(t, 63)),
        };
        claims.push(PlannedClaim {
            name: format!("{backup}-{suffix}"),
            backup: backup.to_string(),
            snapshot: s.name.clone(),
            size: size.clone(),
            source_claim: s.source_claim.clone().unwrap_or_default(),
            tablespace,
        });
    }
    claims.sort_by(|a, b| a.tablespace.cmp(&b.tablespace));
    Ok(Some(Plan {
        claims,
        backup_label,
    }))
}

/// The offload Job: `klio offload --upload` in the server's image, as the owner of
/// PGDATA, with the restored claims mounted read-only where CloudNativePG mounts them.
pub(super) fn offload_job(
    server: &Server,
    pass: &Pass<'_>,
    cluster: &ClusterSpec,
    spec: &SnapshotOffloadSpec,
    backup: &str,
    plan: &Plan,
) -> Job {
    let user = spec.run_as_user.unwrap_or(DEFAULT_RUN_AS_USER);
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..Default::default()
    };
    let secret = |name: &str, secret: &str, key: &str, path: &str| Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: Some(vec![KeyToPath {
                key: key.into(),
                path: path.into(),
                ..Default::default()
            }]),
            // Root-owned: the Job's user (not root, no fsGroup) reads them as "other".
            // Nothing else runs in the pod.
            default_mode: Some(0o444),
            optional: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    for (i, c) in plan.claims.iter().enumerate() {
        let (vol, path) = match &c.tablespace {
            None => ("pgdata".to_string(), PGDATA_MOUNT.to_string()),
            Some(t) => (
                format!("tablespace-{i}"),
                format!("{TABLESPACES_MOUNT}/{t}"),
            ),
        };
        volumes.push(Volume {
            name: vol.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: c.name.clone(),
                read_only: Some(true),
            }),
            ..Default::default()
        });
        mounts.push(mount(&vol, &path));
    }
    volumes.push(secret(
        "token",
        &cluster.token.name,
        &cluster.token.key,
        "token",
    ));
    mounts.push(mount("token", TOKEN_DIR));
    let env_var = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    };
    let mut env = vec![
        env_var("KLIO_CLUSTER", cluster.name.clone()),
        env_var("KLIO_SERVER", crate::resources::api_url(server)),
        env_var("KLIO_TOKEN_FILE", format!("{TOKEN_DIR}/token")),
    ];
    if let (Some(tls), true) = (&server.spec.tls, pass.tls_ca) {
        volumes.push(secret("ca", &tls.secret_name, "ca.crt", "ca.crt"));
        mounts.push(mount("ca", CA_DIR));
        env.push(env_var("KLIO_CACERT", format!("{CA_DIR}/ca.crt")));
    }
    env.push(env_var("KLIO_BACKUP_LABEL", plan.backup_label.clone()));
    volumes.push(Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    });
    mounts.push(VolumeMount {
        read_only: Some(false),
        ..mount("tmp", "/tmp")
    });
    let labels = labels(server, &cluster.name, Some(backup));
    let claims: Vec<&str> = plan.claims.iter().map(|c| c.name.as_str()).collect();
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(backup)),
            namespace: server.namespace(),
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([(
                CLAIMS_ANNOTATION.to_string(),
                claims.join(","),
            )])),
            owner_references: server.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(JOB_BACKOFF_LIMIT),
            ttl_seconds_after_finished: Some(JOB_TTL_SECONDS),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(user),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..Default::default()
                    }),
                    containers: vec![Container {
                        name: "offload".into(),
                        image: Some(pass.image.into()),
                        command: Some(
                            [
                                "klio",
                                "offload",
                                "--upload",
                                "--from",
                                "/var/lib/postgresql/data/pgdata",
                                "--root",
                                "/var/lib/postgresql",
                                "--wait",
                            ]
                            .map(String::from)
                            .to_vec(),
                        ),
                        env: Some(env),
                        volume_mounts: Some(mounts),
                        security_context: Some(SecurityContext {
                            run_as_non_root: Some(true),
                            run_as_user: Some(user),
                            read_only_root_filesystem: Some(true),
                            allow_privilege_escalation: Some(false),
                            capabilities: Some(Capabilities {
                                add: None,
                                drop: Some(vec!["ALL".into()]),
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}
