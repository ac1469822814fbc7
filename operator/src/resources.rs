//! The objects a Server owns, built as pure functions of the Server (and, for the
//! rollout hash, of the Secrets it references): a ConfigMap with `klio.toml`, a Service,
//! and a StatefulSet of one replica.
//!
//! The pod runs as a non-root user (65532) with a read-only root filesystem, no
//! privilege escalation, every capability dropped and the runtime's seccomp profile;
//! the projected secrets are root-owned files of mode 0440 whose group is the pod's
//! `fsGroup`, so the server reads them through its group, and its secret-file check
//! (root-owned: at most 0640) accepts them. 0440 rather than 0400: the kubelet adds the
//! group's read bit to read-only volumes when `fsGroup` is set, but asking for it does
//! not depend on that. The annotation [`HASH_ANNOTATION`] of the pod template
//! changes with the configuration or the content of any referenced Secret, which rolls
//! the pod.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, SeccompProfile, SecretKeySelector, SecretProjection, SecurityContext,
    Service, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount, VolumeProjection,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::config::{
    self, SpecError, API_PORT, CONFIG_DIR, CONFIG_FILE, DATA_MOUNT, METRICS_PORT, SECRETS_DIR,
};
use crate::{Server, ServerMode};

/// The pod-template annotation holding [`rollout_hash`].
pub const HASH_ANNOTATION: &str = "klio.io/config-hash";
/// The volume claim template of Tier 1 (the claim is `data-<server>-0`).
pub const DATA_VOLUME: &str = "data";
/// The server container's name (what `spec.template` merges into).
pub const CONTAINER: &str = "klio";
/// The user and group the server runs as.
pub const RUN_AS: i64 = 65532;
/// Used when `spec.image` is absent and the operator was given no default.
pub const FALLBACK_IMAGE: &str = concat!("klio:", env!("CARGO_PKG_VERSION"));

/// The labels selecting a server's pod.
pub fn selector_labels(server: &Server) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "klio".to_string()),
        ("app.kubernetes.io/instance".to_string(), server.name_any()),
    ])
}

fn labels(server: &Server) -> BTreeMap<String, String> {
    let mut l = selector_labels(server);
    l.insert("app.kubernetes.io/component".into(), "server".into());
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        "klio-operator".into(),
    );
    l
}

fn meta(server: &Server, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: server.namespace(),
        labels: Some(labels(server)),
        owner_references: server.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

/// The ConfigMap's name.
pub fn config_map_name(server: &Server) -> String {
    format!("{}-config", server.name_any())
}

/// The name of Tier 1's claim as the StatefulSet controller creates it.
pub fn data_claim_name(server: &Server) -> String {
    format!("{DATA_VOLUME}-{}-0", server.name_any())
}

/// The ConfigMap without its data.
pub fn config_map_shell(server: &Server) -> ConfigMap {
    ConfigMap {
        metadata: meta(server, config_map_name(server)),
        ..Default::default()
    }
}

/// The ConfigMap with `klio.toml`.
pub fn config_map(server: &Server) -> Result<ConfigMap, SpecError> {
    Ok(ConfigMap {
        data: Some(config::config_map_data(&server.spec)?),
        ..config_map_shell(server)
    })
}

/// The Service in front of the API (and the server's `/metrics`); also the
/// StatefulSet's governing service.
pub fn service(server: &Server) -> Service {
    let port = |name: &str, port: u16| ServicePort {
        name: Some(name.into()),
        port: port.into(),
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    Service {
        metadata: meta(server, server.name_any()),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(server)),
            ports: Some(vec![port("api", API_PORT), port("metrics", METRICS_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The URL of the server's API inside the cluster.
pub fn api_url(server: &Server) -> String {
    let scheme = if server.spec.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!(
        "{scheme}://{}.{}.svc:{API_PORT}",
        server.name_any(),
        server.namespace().unwrap_or_default()
    )
}

/// A hash of the configuration and of the referenced Secrets' content (every key of
/// each, in name order); `secrets` maps a Secret's name to its data.
pub fn rollout_hash(
    config: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, BTreeMap<String, ByteString>>,
) -> String {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    for (k, v) in config {
        field(b"config");
        field(k.as_bytes());
        field(v.as_bytes());
    }
    for (name, data) in secrets {
        field(b"secret");
        field(name.as_bytes());
        for (k, v) in data {
            field(k.as_bytes());
            field(&v.0);
        }
    }
    hex::encode(&h.finalize()[..16])
}

/// What the StatefulSet's claim template asks for; once the StatefulSet exists its
/// template cannot change, so the reconciler passes the existing one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimTemplate {
    pub size: String,
    pub storage_class: Option<String>,
}

impl ClaimTemplate {
    /// From the spec (standard servers).
    pub fn from_spec(server: &Server) -> Option<ClaimTemplate> {
        server.spec.storage.as_ref().map(|s| ClaimTemplate {
            size: s.size.clone(),
            storage_class: s.storage_class.clone(),
        })
    }

    /// From an existing StatefulSet's `data` template.
    pub fn from_stateful_set(sts: &StatefulSet) -> Option<ClaimTemplate> {
        let pvc = sts
            .spec
            .volume_claim_templates
            .as_ref()?
            .iter()
            .find(|t| t.metadata.name.as_deref() == Some(DATA_VOLUME))?;
        let spec = pvc.spec.as_ref()?;
        Some(ClaimTemplate {
            size: requested_storage(spec)?.0.clone(),
            storage_class: spec.storage_class_name.clone(),
        })
    }
}

/// `spec.resources.requests.storage` of a claim.
pub fn requested_storage(spec: &PersistentVolumeClaimSpec) -> Option<&Quantity> {
    spec.resources.as_ref()?.requests.as_ref()?.get("storage")
}

fn secret_volume(server: &Server) -> Volume {
    let mut by_secret: BTreeMap<String, Vec<KeyToPath>> = BTreeMap::new();
    for f in config::secret_files(&server.spec) {
        by_secret.entry(f.secret).or_default().push(KeyToPath {
            key: f.key,
            path: f.path,
            ..Default::default()
        });
    }
    Volume {
        name: "secrets".into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o440),
            sources: Some(
                by_secret
                    .into_iter()
                    .map(|(name, items)| VolumeProjection {
                        secret: Some(SecretProjection {
                            name,
                            items: Some(items),
                            optional: Some(false),
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn probe(server: &Server, initial_delay: i32, failures: i32) -> Probe {
    let tls = server.spec.tls.as_ref();
    let mut p = Probe {
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(10),
        timeout_seconds: Some(3),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    if tls.is_some_and(|t| t.require_client_cert) {
        // The kubelet has no client certificate: the TLS handshake itself would fail.
        p.tcp_socket = Some(TCPSocketAction {
            port: IntOrString::String("api".into()),
            host: None,
        });
    } else {
        p.http_get = Some(HTTPGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::String("api".into()),
            scheme: Some(if tls.is_some() { "HTTPS" } else { "HTTP" }.into()),
            ..Default::default()
        });
    }
    p
}

fn env(server: &Server) -> Vec<EnvVar> {
    let mut env = Vec::new();
    for (i, c) in server.spec.clusters.iter().enumerate() {
        let (Some(pw), Some(conninfo)) = (&c.password, config::conninfo_with_password(c, i)) else {
            continue;
        };
        env.push(EnvVar {
            name: config::password_env(i),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: pw.name.clone(),
                    key: pw.key.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        env.push(EnvVar {
            name: config::conninfo_env(&c.name),
            value: Some(conninfo),
            ..Default::default()
        });
    }
    env
}

/// The generated pod template, before `spec.template` is merged in.
fn base_pod_template(server: &Server, image: &str, hash: &str) -> PodTemplateSpec {
    let read_only = server.spec.mode == ServerMode::ReadOnly;
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..Default::default()
    };
    let port = |name: &str, port: u16| ContainerPort {
        name: Some(name.into()),
        container_port: port.into(),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let empty_dir = |name: &str| Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    };
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(server),
                default_mode: Some(0o444),
                ..Default::default()
            }),
            ..Default::default()
        },
        secret_volume(server),
        empty_dir("tmp"),
    ];
    if read_only {
        // The catalog a read-only server rebuilds from Tier 2: no Tier 1 volume.
        volumes.push(empty_dir(DATA_VOLUME));
    }
    let container = Container {
        name: CONTAINER.into(),
        image: Some(image.into()),
        args: Some(vec![
            "server".into(),
            "--config".into(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        ]),
        env: Some(env(server)).filter(|e| !e.is_empty()),
        ports: Some(vec![port("api", API_PORT), port("metrics", METRICS_PORT)]),
        volume_mounts: Some(vec![
            mount("config", CONFIG_DIR, true),
            mount("secrets", SECRETS_DIR, true),
            mount("tmp", "/tmp", false),
            mount(DATA_VOLUME, DATA_MOUNT, false),
        ]),
        readiness_probe: Some(probe(server, 5, 3)),
        liveness_probe: Some(probe(server, 30, 6)),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(server)),
            annotations: Some(BTreeMap::from([(HASH_ANNOTATION.into(), hash.into())])),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUN_AS),
                run_as_group: Some(RUN_AS),
                fs_group: Some(RUN_AS),
                fs_group_change_policy: Some("OnRootMismatch".into()),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..Default::default()
            }),
            enable_service_links: Some(false),
            ..Default::default()
        }),
    }
}

/// The pod template: the generated one with `spec.template` merged in
/// ([`crate::merge`]); the selector labels and the hash annotation are set again after
/// the merge, so a template cannot detach the pod from its StatefulSet.
pub fn pod_template(
    server: &Server,
    image: &str,
    hash: &str,
) -> Result<PodTemplateSpec, SpecError> {
    let base = base_pod_template(server, image, hash);
    let Some(overlay) = &server.spec.template else {
        return Ok(base);
    };
    let mut value = serde_json::to_value(&base).expect("a pod template serialises");
    crate::merge::merge(&mut value, overlay);
    let mut merged: PodTemplateSpec = serde_json::from_value(value).map_err(|e| SpecError {
        field: "spec.template".into(),
        message: format!("is not a valid pod template once merged: {e}"),
    })?;
    let meta = merged.metadata.get_or_insert_with(Default::default);
    meta.labels
        .get_or_insert_with(Default::default)
        .extend(selector_labels(server));
    meta.annotations
        .get_or_insert_with(Default::default)
        .insert(HASH_ANNOTATION.into(), hash.into());
    Ok(merged)
}

/// The StatefulSet; `claim` is Tier 1's claim template (`None` on a read-only server).
pub fn stateful_set(
    server: &Server,
    image: &str,
    hash: &str,
    claim: Option<&ClaimTemplate>,
) -> Result<StatefulSet, SpecError> {
    let claims = claim.map(|c| {
        vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(DATA_VOLUME.into()),
                labels: Some(labels(server)),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: c.storage_class.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_string(),
                        Quantity(c.size.clone()),
                    )])),
                    limits: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]
    });
    Ok(StatefulSet {
        metadata: meta(server, server.name_any()),
        spec: StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(server.name_any()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(server)),
                match_expressions: None,
            },
            template: pod_template(server, image, hash)?,
            volume_claim_templates: claims,
            // Deleting the Server (or scaling) never deletes Tier 1.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            ..Default::default()
        },
        ..Default::default()
    })
}

/// A Kubernetes quantity in bytes (`50Gi`, `1.5T`, `1000`); `None` for what this does
/// not parse (exponents, milli-units), which the reconciler then does not resize.
pub fn quantity_bytes(q: &str) -> Option<u128> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let multiplier: u128 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        _ => return None,
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut bytes = int.checked_mul(multiplier)?;
    if !frac.is_empty() {
        let digits: u32 = frac.len().try_into().ok()?;
        let scale = 10u128.checked_pow(digits)?;
        let f: u128 = frac.parse().ok()?;
        bytes = bytes.checked_add(f.checked_mul(multiplier)?.div_ceil(scale))?;
    }
    Some(bytes)
}

#[cfg(test)]
pub(crate) mod tests;
