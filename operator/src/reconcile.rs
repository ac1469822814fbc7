//! The reconciler of `Server`s, run by kube-runtime's [`Controller`].
//!
//! For each Server, in this order (tests rely on it):
//! 1. the finalizer [`FINALIZER`] is added first (kube-runtime's `finalizer` helper);
//! 2. `klio.toml` is generated ([`crate::config`]); a spec the server would refuse stops
//!    here with `Ready=False/InvalidSpec`, a Warning event, and a requeue;
//! 3. every referenced Secret is read (`get`); a missing one stops here with
//!    `Ready=False/SecretMissing`; their content and the configuration give the rollout
//!    hash;
//! 4. the existing StatefulSet is read: one this Server does not control stops here
//!    (`NotOwned`: nothing else's StatefulSet is taken over); its claim template is kept
//!    as it is (claim templates are immutable); a Server whose mode changed since stops here with
//!    `Ready=False/ModeChange` (its StatefulSet must be deleted to be recreated);
//! 5. the ConfigMap, the Service and the StatefulSet are server-side applied with the
//!    field manager [`FIELD_MANAGER`], all owned by the Server (owner references, so the
//!    garbage collector removes them with it);
//! 6. when the StatefulSet already existed, Tier 1's claim `data-<server>-0` is read and,
//!    if `spec.storage.size` grew, patched (volume expansion, which the storage class
//!    must allow); a smaller size is refused with `StorageResized=False/ShrinkRefused`
//!    and a Warning event, another storage class with `StorageClassImmutable`;
//! 7. when the pod is ready, each cluster's status is read from the server
//!    ([`crate::status`]);
//! 8. when the pod is ready, the Tier 0 volume-snapshot offloads of the clusters with
//!    `snapshotOffload` advance ([`crate::offload`]), and the status subresource is
//!    server-side applied (with their records).
//!
//! Success requeues after [`Context::requeue_after`] (status refresh; Secrets are not
//! watched, so a changed Secret rolls the pod at the latest then), sooner while an
//! offload is in flight or the next one is due. Errors of the
//! Kubernetes API go to [`error_policy`]: exponential backoff per Server ([`Backoff`]),
//! reset by the next success. Deletion runs the finalizer's cleanup: an event, then the
//! finalizer is removed; owned objects go by garbage collection, and the Tier 1 claim is
//! kept (the StatefulSet's claim retention policy is `Retain`): deleting a Server never
//! deletes backups.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn};

use crate::config::{self, SecretFile};
use crate::metrics::Metrics;
use crate::offload;
use crate::resources::{self, ClaimTemplate};
use crate::status::{self, Observed, StatusSource, StatusTarget};
use crate::{Server, ServerMode};

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "klio-operator";
/// The Server's finalizer.
pub const FINALIZER: &str = "klio.io/cleanup";

/// What a reconciliation can fail with (each is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Finalizer(Box<kube::runtime::finalizer::Error<Error>>),
    #[error("the Server has no namespace")]
    NoNamespace,
}

/// Per-Server exponential backoff: `base`, doubling per consecutive failure, at most
/// `max`.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            failures: Mutex::default(),
        }
    }

    /// Counts a failure of `key` and returns how long to wait before the next try.
    pub fn failed(&self, key: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let factor = 2u32.saturating_pow(n.saturating_sub(1).min(20));
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Forgets `key`'s failures.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// What every reconciliation shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub status: Box<dyn StatusSource>,
    pub metrics: Arc<Metrics>,
    /// The image of Servers without `spec.image`.
    pub default_image: String,
    /// Requeue after a success (status refresh).
    pub requeue_after: Duration,
    pub backoff: Backoff,
    /// The clock (tests set it): schedules and Backup names follow it.
    pub now: fn() -> Timestamp,
}

impl Context {
    pub fn new(client: Client, status: Box<dyn StatusSource>, metrics: Arc<Metrics>) -> Context {
        let reporter = kube::runtime::events::Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            status,
            metrics,
            default_image: resources::FALLBACK_IMAGE.into(),
            requeue_after: Duration::from_secs(60),
            backoff: Backoff::new(Duration::from_secs(5), Duration::from_secs(300)),
            now: Timestamp::now,
        }
    }
}

fn key_of(server: &Server) -> String {
    format!(
        "{}/{}",
        server.namespace().unwrap_or_default(),
        server.name_any()
    )
}

/// Reconciles one Server (see the module documentation).
pub async fn reconcile(server: Arc<Server>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let key = key_of(&server);
    let ns = server.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<Server> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, server, |event| async {
        match event {
            FinalizerEvent::Apply(s) => apply(&s, &ctx).await,
            FinalizerEvent::Cleanup(s) => cleanup(&s, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics
        .reconciled(started.elapsed().as_secs_f64(), result.is_ok());
    if result.is_ok() {
        ctx.backoff.succeeded(&key);
    }
    result
}

/// Requeues a failed Server after its backoff.
pub fn error_policy(server: Arc<Server>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = key_of(&server);
    let delay = ctx.backoff.failed(&key);
    warn!(server = %key, error = %error, retry_in_secs = delay.as_secs(), "reconciliation failed");
    Action::requeue(delay)
}

pub(crate) async fn publish(
    ctx: &Context,
    server: &Server,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &server.object_ref(&())).await {
        warn!(server = %key_of(server), error = %e, "cannot publish an event");
    }
}

async fn write_status(server: &Server, ctx: &Context, obs: &Observed) -> Result<(), Error> {
    let status = status::build(obs, server.status.as_ref(), (ctx.now)());
    let api: Api<Server> =
        Api::namespaced(ctx.client.clone(), &server.namespace().unwrap_or_default());
    let body = serde_json::json!({
        "apiVersion": "klio.io/v1alpha1",
        "kind": "Server",
        "status": status,
    });
    api.patch_status(
        &server.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

fn observed(server: &Server) -> Observed {
    Observed {
        generation: server.metadata.generation,
        mode: server.spec.mode,
        tier2: server.spec.tier2.is_some(),
        offload_enabled: server
            .spec
            .clusters
            .iter()
            .any(|c| c.snapshot_offload.is_some()),
        ..Default::default()
    }
}

/// Stops at a problem the user must fix: status, Warning event, requeue.
async fn blocked(
    server: &Server,
    ctx: &Context,
    reason: &str,
    message: String,
) -> Result<Action, Error> {
    warn!(server = %key_of(server), reason, message, "cannot configure the server");
    publish(ctx, server, EventType::Warning, reason, message.clone()).await;
    let obs = Observed {
        blocked: Some((reason.into(), message)),
        ..observed(server)
    };
    write_status(server, ctx, &obs).await?;
    Ok(Action::requeue(ctx.requeue_after))
}

type SecretData = BTreeMap<String, BTreeMap<String, ByteString>>;

fn secret_value(secrets: &SecretData, name: &str, key: &str) -> Option<Vec<u8>> {
    secrets.get(name)?.get(key).map(|v| v.0.clone())
}

async fn apply(server: &Server, ctx: &Context) -> Result<Action, Error> {
    let ns = server.namespace().ok_or(Error::NoNamespace)?;
    let name = server.name_any();
    let client = ctx.client.clone();

    let data = match config::config_map_data(&server.spec) {
        Ok(d) => d,
        Err(e) => return blocked(server, ctx, "InvalidSpec", e.to_string()).await,
    };

    let secrets_api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut secrets = SecretData::new();
    let mut missing = Vec::new();
    for s in config::referenced_secrets(&server.spec) {
        match secrets_api.get_opt(&s).await? {
            Some(secret) => {
                secrets.insert(s, secret.data.unwrap_or_default());
            }
            None => missing.push(s),
        }
    }
    let absent_keys: Vec<String> = config::secret_files(&server.spec)
        .into_iter()
        .filter(|SecretFile { secret, key, .. }| {
            secrets.contains_key(secret) && secret_value(&secrets, secret, key).is_none()
        })
        .map(|f| format!("{}[{}]", f.secret, f.key))
        .collect();
    if !missing.is_empty() || !absent_keys.is_empty() {
        let mut what = Vec::new();
        if !missing.is_empty() {
            what.push(format!("Secret(s) not found: {}", missing.join(", ")));
        }
        if !absent_keys.is_empty() {
            what.push(format!("key(s) not found: {}", absent_keys.join(", ")));
        }
        return blocked(server, ctx, "SecretMissing", what.join("; ")).await;
    }
    let hash = resources::rollout_hash(&data, &secrets);

    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let existing = sts_api.get_opt(&name).await?;
    if let Some(sts) = &existing {
        let ours = sts
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && Some(&o.uid) == server.metadata.uid.as_ref());
        if !ours {
            return blocked(
                server,
                ctx,
                "NotOwned",
                format!(
                    "StatefulSet {name} exists and is not this Server's: rename the Server, or delete that StatefulSet"
                ),
            )
            .await;
        }
    }
    let existing_claim = existing.as_ref().and_then(ClaimTemplate::from_stateful_set);
    if existing.is_some() {
        let was = if existing_claim.is_some() {
            "standard"
        } else {
            "read-only"
        };
        let now = match server.spec.mode {
            ServerMode::Standard => "standard",
            ServerMode::ReadOnly => "read-only",
        };
        if was != now {
            return blocked(
                server,
                ctx,
                "ModeChange",
                format!(
                    "StatefulSet {name} was made for a {was} server and a StatefulSet's volume claims cannot change: \
                     delete StatefulSet {name} to have it recreated as {now} (a Tier 1 claim is kept)"
                ),
            )
            .await;
        }
    }
    let claim = match server.spec.mode {
        ServerMode::ReadOnly => None,
        ServerMode::Standard => existing_claim
            .clone()
            .or_else(|| ClaimTemplate::from_spec(server)),
    };
    let image = server
        .spec
        .image
        .clone()
        .unwrap_or_else(|| ctx.default_image.clone());
    let sts = match resources::stateful_set(server, &image, &hash, claim.as_ref()) {
        Ok(s) => s,
        Err(e) => return blocked(server, ctx, "InvalidSpec", e.to_string()).await,
    };
    let cm = ConfigMap {
        data: Some(data),
        ..resources::config_map_shell(server)
    };

    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    cm_api
        .patch(&resources::config_map_name(server), &pp, &Patch::Apply(&cm))
        .await?;
    let svc_api: Api<Service> = Api::namespaced(client.clone(), &ns);
    svc_api
        .patch(&name, &pp, &Patch::Apply(&resources::service(server)))
        .await?;
    let applied = sts_api.patch(&name, &pp, &Patch::Apply(&sts)).await?;
    if existing.is_none() {
        info!(server = %key_of(server), "created");
        publish(
            ctx,
            server,
            EventType::Normal,
            "Created",
            format!(
                "created StatefulSet {name}, Service {name} and ConfigMap {}",
                resources::config_map_name(server)
            ),
        )
        .await;
    }

    let storage = match (&existing_claim, &server.spec.storage) {
        (Some(have), Some(want))
            if want.storage_class.is_some() && want.storage_class != have.storage_class =>
        {
            let message = format!(
                "the Tier 1 claim was made with storage class {:?}, which cannot change; spec.storage.storageClass {:?} is ignored",
                have.storage_class.as_deref().unwrap_or("(default)"),
                want.storage_class.as_deref().unwrap_or_default()
            );
            publish(
                ctx,
                server,
                EventType::Warning,
                "StorageClassImmutable",
                message.clone(),
            )
            .await;
            Some((false, "StorageClassImmutable".to_string(), message))
        }
        (Some(_), Some(want)) => resize(server, ctx, &want.size).await?,
        _ => None,
    };

    let pod_ready = applied
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
        >= 1;
    let mut obs = Observed {
        pod_ready,
        storage,
        ..observed(server)
    };
    let ca_pem = server
        .spec
        .tls
        .as_ref()
        .and_then(|t| secret_value(&secrets, &t.secret_name, "ca.crt"));
    let client_certs_only = server
        .spec
        .tls
        .as_ref()
        .is_some_and(|t| t.require_client_cert);
    for c in &server.spec.clusters {
        let report = if !pod_ready {
            Err("the server's pod is not ready".to_string())
        } else if client_certs_only {
            Err("the server requires client certificates (spec.tls.requireClientCert): the operator's token cannot read /v1/status".to_string())
        } else {
            let token = secret_value(&secrets, &c.token.name, &c.token.key)
                .map(|t| String::from_utf8_lossy(&t).into_owned())
                .unwrap_or_default();
            let target = StatusTarget {
                url: resources::api_url(server),
                cluster: c.name.clone(),
                token,
                ca_pem: ca_pem.clone(),
            };
            match ctx.status.cluster_status(&target).await {
                Ok(Some(v)) => Ok(v),
                Ok(None) => Err("the server does not list this cluster".into()),
                Err(e) => Err(e),
            }
        };
        obs.clusters.push((c.name.clone(), report));
    }
    // Wiring the CloudNativePG Clusters: the role and pg_hba at once (Klio needs them to
    // connect), the synchronous standby once Klio streams.
    obs.wire = crate::wire::reconcile(server, ctx, |name| {
        obs.clusters.iter().any(|(n, r)| {
            n == name
                && r.as_ref()
                    .is_ok_and(|v| v.state == klio_api::ConnectionState::Streaming)
        })
    })
    .await?;
    // Tier 0 offloads upload into the server: only while its pod is ready.
    let now = (ctx.now)();
    if pod_ready && server.spec.mode == ServerMode::Standard {
        let pass = offload::Pass {
            ctx,
            image: &image,
            tls_ca: ca_pem.is_some(),
            now,
        };
        obs.offload = offload::reconcile(server, &pass).await?;
    }
    write_status(server, ctx, &obs).await?;
    Ok(Action::requeue(
        obs.offload.as_ref().map_or(ctx.requeue_after, |r| {
            r.requeue(now.as_second(), ctx.requeue_after)
        }),
    ))
}

/// Grows Tier 1's claim to `want`, or refuses to shrink it; the `StorageResized`
/// condition to report, if any.
async fn resize(
    server: &Server,
    ctx: &Context,
    want: &str,
) -> Result<Option<(bool, String, String)>, Error> {
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &server.namespace().unwrap_or_default());
    let claim = resources::data_claim_name(server);
    let Some(pvc) = api.get_opt(&claim).await? else {
        return Ok(None);
    };
    let Some(have) = pvc
        .spec
        .as_ref()
        .and_then(resources::requested_storage)
        .map(|q| q.0.clone())
    else {
        return Ok(None);
    };
    let (Some(have_b), Some(want_b)) = (
        resources::quantity_bytes(&have),
        resources::quantity_bytes(want),
    ) else {
        return Ok(None);
    };
    if want_b > have_b {
        let patch = serde_json::json!({"spec": {"resources": {"requests": {"storage": want}}}});
        api.patch(
            &claim,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Merge(&patch),
        )
        .await?;
        let message = format!("{claim}: {have} -> {want}");
        info!(server = %key_of(server), message, "resizing Tier 1");
        publish(ctx, server, EventType::Normal, "Resizing", message.clone()).await;
        Ok(Some((true, "Resizing".into(), message)))
    } else if want_b < have_b {
        let message = format!(
            "{claim} has {have} and volumes cannot shrink: set spec.storage.size to {have} or more"
        );
        publish(
            ctx,
            server,
            EventType::Warning,
            "ShrinkRefused",
            message.clone(),
        )
        .await;
        Ok(Some((false, "ShrinkRefused".into(), message)))
    } else {
        Ok(None)
    }
}

async fn cleanup(server: &Server, ctx: &Context) -> Result<Action, Error> {
    let message = match server.spec.mode {
        ServerMode::Standard => format!(
            "the StatefulSet, Service and ConfigMap go with the Server; the Tier 1 claim {} is kept (delete it to free the volume)",
            resources::data_claim_name(server)
        ),
        ServerMode::ReadOnly => "the StatefulSet, Service and ConfigMap go with the Server".into(),
    };
    info!(server = %key_of(server), "deleting");
    publish(ctx, server, EventType::Normal, "Deleting", message).await;
    Ok(Action::await_change())
}

/// Runs the controller over the Servers of `namespace` (all namespaces: `None`) until
/// `shutdown` completes.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let client = &ctx.client;
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=klio-operator");
    Controller::new(api::<Server>(client, namespace), watcher::Config::default())
        .owns(api::<StatefulSet>(client, namespace), owned.clone())
        .owns(api::<Service>(client, namespace), owned.clone())
        .owns(api::<ConfigMap>(client, namespace), owned)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            match r {
                Ok((obj, _)) => tracing::debug!(server = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "controller"),
            }
        })
        .await;
}

#[cfg(test)]
pub(crate) mod tests;
