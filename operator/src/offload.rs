//! Tier 0: CloudNativePG volume-snapshot backups of a Server's clusters, offloaded into
//! the Klio Server as base backups, and pruned.
//!
//! For each cluster with `snapshotOffload`, one pass of the reconciler (after the
//! server's status was read, before the status is written) does, in this order:
//! 1. read the CloudNativePG `Cluster` of the cluster's name: without
//!    `spec.backup.volumeSnapshot` it cannot snapshot, which is reported
//!    (`NoSnapshotSupport`) and nothing else is done for the cluster;
//! 2. list this Server's and cluster's CloudNativePG `Backup`s and offload `Job`s (by
//!    the labels [`SERVER_LABEL`] and [`CLUSTER_LABEL`]);
//! 3. advance the newest Backup not yet recorded in `status.snapshotOffloads`: once it
//!    is `completed`, restore its PG_DATA and tablespace `VolumeSnapshot`s into claims
//!    and start the Job `<backup>-offload`, which runs `klio offload --upload` in the
//!    server's image with the claims mounted read-only where CloudNativePG mounts them;
//!    once the Job succeeded or failed, delete the claims and record the result;
//! 4. when nothing is in flight and the schedule is due (or the Server's annotation
//!    [`OFFLOAD_NOW_ANNOTATION`] has a value this cluster has not acted on), create a
//!    `Backup` (`method: volumeSnapshot`, `online: true`);
//! 5. prune: keep the newest `keep` completed Backups, drop older than `maxAge` ones
//!    except the newest completed, and failed ones older than the newest completed;
//!    never one whose Job runs. A pruned Backup's VolumeSnapshots are deleted first.
//!
//! Nothing is kept in memory: the Backups, Jobs and the Server's status are the state,
//! so a restarted operator resumes. Every field read from those objects (annotations,
//! snapshot status) is checked before use, and every name built from them is a valid
//! Kubernetes name (hashed when too long).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, KeyToPath, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec,
    PodTemplateSpec, SeccompProfile, SecretVolumeSource, SecurityContext,
    TypedLocalObjectReference, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams,
};
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::info;

use crate::cron::{parse_age, Cron};
use crate::reconcile::{publish, Context};
use crate::{ClusterSpec, Server, SnapshotOffloadSpec, SnapshotOffloadStatus};
#[cfg(test)]
use job::{decode_backup_label, valid_tablespace};
use job::{offload_job, plan, PlannedClaim, SnapshotView};

/// A value on the Server not yet acted on starts one offload of every cluster with
/// `snapshotOffload` (each cluster remembers the value it acted on in its status).
pub const OFFLOAD_NOW_ANNOTATION: &str = "klio.io/offload-now";
/// The Server a Backup, claim or Job belongs to.
pub const SERVER_LABEL: &str = "klio.io/server";
/// The cluster a Backup, claim or Job belongs to.
pub const CLUSTER_LABEL: &str = "klio.io/cluster";
/// The CloudNativePG Backup a claim or Job belongs to.
pub const BACKUP_LABEL: &str = "klio.io/backup";
/// On a Job: the claims it mounts (comma-separated), deleted once it finishes.
pub const CLAIMS_ANNOTATION: &str = "klio.io/claims";
/// Completed snapshot backups kept when `keep` is not set.
pub const DEFAULT_KEEP: u32 = 3;
/// CloudNativePG's `postgres` user, the owner of PGDATA.
pub const DEFAULT_RUN_AS_USER: i64 = 26;
/// How soon to look again while a Backup or Job is in flight.
pub const IN_FLIGHT_REQUEUE: Duration = Duration::from_secs(15);
/// Where CloudNativePG mounts PGDATA's volume (PGDATA is `pgdata` inside).
pub const PGDATA_MOUNT: &str = "/var/lib/postgresql/data";
/// Where CloudNativePG mounts tablespace `<name>`'s volume.
pub const TABLESPACES_MOUNT: &str = "/var/lib/postgresql/tablespaces";
/// Where the Job finds the cluster's token (file `token`).
pub const TOKEN_DIR: &str = "/etc/klio/token";
/// Where the Job finds the CA of the server's certificate (file `ca.crt`).
pub const CA_DIR: &str = "/etc/klio/ca";
const JOB_TTL_SECONDS: i32 = 86_400;
const JOB_BACKOFF_LIMIT: i32 = 2;
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "klio-operator");

// CloudNativePG's names.
const CNPG_BACKUP_NAME: &str = "cnpg.io/backupName";
const CNPG_PVC_ROLE: &str = "cnpg.io/pvcRole";
const CNPG_TABLESPACE: &str = "cnpg.io/tablespaceName";
const CNPG_BACKUP_LABEL_FILE: &str = "cnpg.io/backupLabelFile";

/// The longest Backup name: `<backup>-offload` is a Job's name, which must fit a label
/// value (63 characters) because the Job controller labels its pods with it.
const MAX_BACKUP_NAME: usize = 63 - "-offload".len();

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn cnpg_backups() -> ApiResource {
    resource("postgresql.cnpg.io", "v1", "Backup", "backups")
}

fn cnpg_clusters() -> ApiResource {
    resource("postgresql.cnpg.io", "v1", "Cluster", "clusters")
}

fn volume_snapshots() -> ApiResource {
    resource(
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshot",
        "volumesnapshots",
    )
}

/// `s` as a DNS label: lowercase, `.` and `_` as `-`, anything else dropped, at most
/// `max` characters (hashed when longer or changed).
fn dns_label(s: &str, max: usize) -> String {
    let cleaned: String = s
        .chars()
        .filter_map(|c| match c {
            'a'..='z' | '0'..='9' | '-' => Some(c),
            'A'..='Z' => Some(c.to_ascii_lowercase()),
            '.' | '_' => Some('-'),
            _ => None,
        })
        .collect();
    let cleaned = cleaned.trim_matches('-');
    if cleaned == s && s.len() <= max {
        return s.to_string();
    }
    // Changed: hash the original so distinct inputs stay distinct.
    let hash = hex::encode(&Sha256::digest(s.as_bytes())[..4]);
    let keep = max.saturating_sub(hash.len() + 1).min(cleaned.len());
    let prefix = cleaned[..keep].trim_end_matches('-');
    if prefix.is_empty() {
        hash
    } else {
        format!("{prefix}-{hash}")
    }
}

/// The label value naming a Server or cluster (≤ 63 characters).
pub fn label_value(name: &str) -> String {
    dns_label(name, 63)
}

/// `klio-<server>-<cluster>-<YYYYMMDDhhmmss>` (UTC), shortened to fit
/// [`MAX_BACKUP_NAME`].
pub fn backup_name(server: &str, cluster: &str, unix: i64) -> String {
    let stamp =
        klio_core::clock::utc_compact(u64::try_from(unix).unwrap_or(0)).replace(['T', 'Z'], "");
    let prefix = dns_label(
        &format!("klio-{server}-{cluster}"),
        MAX_BACKUP_NAME - stamp.len() - 1,
    );
    format!("{prefix}-{stamp}")
}

/// The offload Job of a Backup.
pub fn job_name(backup: &str) -> String {
    format!("{backup}-offload")
}

fn selector(server: &Server, cluster: &str) -> String {
    format!(
        "{SERVER_LABEL}={},{CLUSTER_LABEL}={}",
        label_value(&server.name_any()),
        label_value(cluster)
    )
}

fn labels(server: &Server, cluster: &str, backup: Option<&str>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (SERVER_LABEL.to_string(), label_value(&server.name_any())),
        (CLUSTER_LABEL.to_string(), label_value(cluster)),
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
    ]);
    if let Some(b) = backup {
        l.insert(BACKUP_LABEL.into(), b.to_string());
    }
    l
}

/// A CloudNativePG Backup as far as the offload cares.
#[derive(Debug, Clone, PartialEq)]
struct BackupView {
    name: String,
    /// `metadata.creationTimestamp` (Unix seconds).
    created: i64,
    phase: Phase,
    error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    InProgress,
    Completed,
    Failed,
}

impl BackupView {
    fn of(obj: &DynamicObject) -> Option<BackupView> {
        let status = &obj.data["status"];
        Some(BackupView {
            name: obj.metadata.name.clone()?,
            created: obj
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(0, |t| t.0.as_second()),
            phase: match status["phase"].as_str() {
                Some("completed") => Phase::Completed,
                Some("failed") => Phase::Failed,
                _ => Phase::InProgress,
            },
            error: status["error"].as_str().map(str::to_string),
        })
    }
}

/// How an offload Job ended, if it did.
#[derive(Debug, Clone, PartialEq)]
enum JobState {
    Running,
    Succeeded,
    Failed(String),
}

fn job_state(job: &Job) -> JobState {
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let holds = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t && c.status == "True")
    };
    if holds("Complete").is_some() {
        JobState::Succeeded
    } else if let Some(c) = holds("Failed") {
        JobState::Failed(
            c.message
                .clone()
                .or_else(|| c.reason.clone())
                .unwrap_or_else(|| "the Job failed".into()),
        )
    } else {
        JobState::Running
    }
}

/// Why a cluster's offload stopped, for the `SnapshotOffload` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub cluster: String,
    pub reason: String,
    pub message: String,
}

/// What the offload step reports for the status and the requeue.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// One record per cluster with `snapshotOffload`, in spec order.
    pub records: Vec<SnapshotOffloadStatus>,
    /// Problems found this pass that no Backup records (e.g. no snapshot support).
    pub problems: Vec<Problem>,
    /// Some Backup or Job is in flight.
    pub in_flight: bool,
    /// The next scheduled Backup (Unix seconds), when none is in flight.
    pub next_run: Option<i64>,
}

impl Report {
    /// The `SnapshotOffload` condition: `(status, reason, message)`.
    pub fn condition(&self) -> (&'static str, String, String) {
        if let Some(p) = self.problems.first() {
            let all: Vec<String> = self
                .problems
                .iter()
                .map(|p| format!("{}: {}", p.cluster, p.message))
                .collect();
            return ("False", p.reason.clone(), all.join("; "));
        }
        let failed: Vec<&SnapshotOffloadStatus> = self
            .records
            .iter()
            .filter(|r| r.last_error.is_some())
            .collect();
        if let Some(first) = failed.first() {
            let all: Vec<String> = failed
                .iter()
                .map(|r| {
                    format!(
                        "{}: {}",
                        r.cluster,
                        r.last_error.as_deref().unwrap_or_default()
                    )
                })
                .collect();
            let reason = first
                .last_error_reason
                .clone()
                .unwrap_or_else(|| "OffloadFailed".into());
            return ("False", reason, all.join("; "));
        }
        let pending: Vec<&str> = self
            .records
            .iter()
            .filter(|r| r.last_success_time.is_none())
            .map(|r| r.cluster.as_str())
            .collect();
        if pending.is_empty() {
            let last: Vec<String> = self
                .records
                .iter()
                .map(|r| {
                    format!(
                        "{}: {}",
                        r.cluster,
                        r.last_backup.as_deref().unwrap_or_default()
                    )
                })
                .collect();
            (
                "True",
                "Offloaded".into(),
                format!("last offloaded: {}", last.join(", ")),
            )
        } else {
            (
                "Unknown",
                "NoOffloadYet".into(),
                format!(
                    "no snapshot offloaded yet for {} (it runs on snapshotOffload.schedule, or annotate the Server with {OFFLOAD_NOW_ANNOTATION}=<any new value>)",
                    pending.join(", ")
                ),
            )
        }
    }

    /// How soon to reconcile again (at most `idle`).
    pub fn requeue(&self, now: i64, idle: Duration) -> Duration {
        if self.in_flight {
            return IN_FLIGHT_REQUEUE.min(idle);
        }
        match self.next_run {
            Some(t) => Duration::from_secs(u64::try_from(t - now).unwrap_or(0).max(1)).min(idle),
            None => idle,
        }
    }
}

/// Inputs of one pass besides the Server.
pub struct Pass<'a> {
    pub ctx: &'a Context,
    /// The image of the server (and of the Job).
    pub image: &'a str,
    /// The server's TLS Secret has a `ca.crt` the Job must trust.
    pub tls_ca: bool,
    pub now: Timestamp,
}

/// Runs the offload of every cluster with `snapshotOffload` (see the module
/// documentation); `None` when no cluster has it.
pub async fn reconcile(server: &Server, pass: &Pass<'_>) -> Result<Option<Report>, kube::Error> {
    let offloaded: Vec<(&ClusterSpec, &SnapshotOffloadSpec)> = server
        .spec
        .clusters
        .iter()
        .filter_map(|c| c.snapshot_offload.as_ref().map(|o| (c, o)))
        .collect();
    if offloaded.is_empty() {
        return Ok(None);
    }
    let previous = server
        .status
        .as_ref()
        .map(|s| s.snapshot_offloads.as_slice())
        .unwrap_or_default();
    let mut report = Report::default();
    for (cluster, spec) in offloaded {
        let mut record = previous
            .iter()
            .find(|r| r.cluster == cluster.name)
            .cloned()
            .unwrap_or_else(|| SnapshotOffloadStatus {
                cluster: cluster.name.clone(),
                ..Default::default()
            });
        let outcome = ClusterPass {
            server,
            pass,
            cluster,
            spec,
            record: &mut record,
        }
        .run()
        .await?;
        report.records.push(record);
        match outcome {
            Outcome::Problem(reason, message) => report.problems.push(Problem {
                cluster: cluster.name.clone(),
                reason,
                message,
            }),
            Outcome::InFlight => report.in_flight = true,
            Outcome::Idle(next) => {
                report.next_run = match (report.next_run, next) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        }
    }
    Ok(Some(report))
}

enum Outcome {
    /// The cluster cannot be offloaded as it is: `(reason, message)`.
    Problem(String, String),
    InFlight,
    /// Nothing in flight; the next scheduled run.
    Idle(Option<i64>),
}

/// How the newest Backup's offload advanced.
enum Advance {
    InFlight,
    Done,
}

struct ClusterPass<'p, 'a> {
    server: &'p Server,
    pass: &'p Pass<'a>,
    cluster: &'p ClusterSpec,
    spec: &'p SnapshotOffloadSpec,
    record: &'p mut SnapshotOffloadStatus,
}

impl ClusterPass<'_, '_> {
    fn ns(&self) -> String {
        self.server.namespace().unwrap_or_default()
    }

    fn dynamic(&self, ar: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.pass.ctx.client.clone(), &self.ns(), ar)
    }

    fn now(&self) -> i64 {
        self.pass.now.as_second()
    }

    async fn event(&self, type_: EventType, reason: &str, note: String) {
        publish(self.pass.ctx, self.server, type_, reason, note).await;
    }

    /// Records a failure of `backup` and publishes it.
    async fn failed(&mut self, backup: &str, reason: &str, message: String) {
        info!(cluster = %self.cluster.name, backup, reason, message, "snapshot offload failed");
        self.event(
            EventType::Warning,
            reason,
            format!("{}: {message}", self.cluster.name),
        )
        .await;
        self.record.last_backup = Some(backup.to_string());
        self.record.last_error = Some(message);
        self.record.last_error_reason = Some(reason.to_string());
    }

    async fn run(mut self) -> Result<Outcome, kube::Error> {
        let name = self.cluster.name.clone();
        let ns = self.ns();
        let on_demand = self
            .server
            .annotations()
            .get(OFFLOAD_NOW_ANNOTATION)
            .filter(|v| self.record.offload_now_handled.as_ref() != Some(*v))
            .cloned();

        // 1. Can CloudNativePG snapshot this cluster?
        let cnpg = self.dynamic(&cnpg_clusters()).get_opt(&name).await?;
        let problem = match &cnpg {
            None => Some((
                "ClusterNotFound",
                format!(
                    "there is no CloudNativePG Cluster {name} in namespace {ns}: snapshotOffload snapshots the CloudNativePG Cluster named like the Klio cluster; create it or rename the Klio cluster"
                ),
            )),
            Some(c) if !c.data["spec"]["backup"]["volumeSnapshot"].is_object() => Some((
                "NoSnapshotSupport",
                format!(
                    "the CloudNativePG Cluster {name} has no spec.backup.volumeSnapshot (className): CloudNativePG cannot take volume snapshots for it; set spec.backup.volumeSnapshot.className to a VolumeSnapshotClass of its storage's CSI driver"
                ),
            )),
            Some(_) => None,
        };
        if let Some((reason, message)) = problem {
            // A request it cannot act on is answered all the same, not kept for later.
            if on_demand.is_some() {
                self.record.offload_now_handled = on_demand;
            }
            return Ok(Outcome::Problem(reason.into(), message));
        }

        // 2. This cluster's Backups (oldest first) and Jobs.
        let lp = ListParams::default().labels(&selector(self.server, &name));
        let mut backups: Vec<BackupView> = self
            .dynamic(&cnpg_backups())
            .list(&lp)
            .await?
            .items
            .iter()
            .filter_map(BackupView::of)
            .collect();
        backups.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
        let jobs_api: Api<Job> = Api::namespaced(self.pass.ctx.client.clone(), &ns);
        let jobs: BTreeMap<String, Job> = jobs_api
            .list(&lp)
            .await?
            .items
            .into_iter()
            .filter_map(|j| Some((j.labels().get(BACKUP_LABEL)?.clone(), j)))
            .collect();

        // 3. The newest Backup's offload.
        let mut in_flight = false;
        if let Some(newest) = backups.last() {
            let recorded = self.record.last_backup.as_deref() == Some(newest.name.as_str());
            in_flight = match (newest.phase, recorded) {
                (Phase::InProgress, _) => true,
                (_, true) => false,
                (Phase::Failed, false) => {
                    let error = newest
                        .error
                        .clone()
                        .unwrap_or_else(|| "no error given".into());
                    let (reason, message) = if error.to_ascii_lowercase().contains("snapshot") {
                        (
                            "NoSnapshotSupport",
                            format!(
                                "CloudNativePG Backup {} failed: {error}; check the Cluster's spec.backup.volumeSnapshot.className and that the CSI driver supports snapshots",
                                newest.name
                            ),
                        )
                    } else {
                        (
                            "BackupFailed",
                            format!(
                                "CloudNativePG Backup {} failed: {error}; see `kubectl describe backup {}` and the CloudNativePG operator's log",
                                newest.name, newest.name
                            ),
                        )
                    };
                    self.failed(&newest.name, reason, message).await;
                    false
                }
                (Phase::Completed, false) => {
                    matches!(
                        self.advance(newest, jobs.get(&newest.name)).await?,
                        Advance::InFlight
                    )
                }
            };
        }

        // 4. A new Backup when due.
        let schedule: Option<Cron> = self.spec.schedule.as_deref().and_then(|s| s.parse().ok());
        let since = backups.last().map(|b| b.created).unwrap_or_else(|| {
            self.server
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(self.now(), |t| t.0.as_second())
        });
        let next_run = schedule.as_ref().and_then(|s| s.next_after(since));
        let due = on_demand.is_some() || next_run.is_some_and(|t| t <= self.now());
        if due && !in_flight {
            self.create_backup().await?;
            if on_demand.is_some() {
                self.record.offload_now_handled = on_demand;
            }
            in_flight = true;
        }

        // 5. Retention.
        self.prune(&backups, &jobs).await?;

        Ok(if in_flight {
            Outcome::InFlight
        } else {
            Outcome::Idle(next_run)
        })
    }

    async fn create_backup(&mut self) -> Result<(), kube::Error> {
        let name = backup_name(&self.server.name_any(), &self.cluster.name, self.now());
        let mut obj = DynamicObject::new(&name, &cnpg_backups())
            .within(&self.ns())
            .data(json!({
                "spec": {
                    "cluster": {"name": self.cluster.name},
                    "method": "volumeSnapshot",
                    "online": true,
                }
            }));
        obj.metadata.labels = Some(labels(self.server, &self.cluster.name, None));
        match self
            .dynamic(&cnpg_backups())
            .create(&PostParams::default(), &obj)
            .await
        {
            Ok(_) => {}
            // Created by a pass that failed later: the same second, the same Backup.
            Err(kube::Error::Api(s)) if s.is_already_exists() => {}
            Err(e) => return Err(e),
        }
        info!(cluster = %self.cluster.name, backup = %name, "volume-snapshot backup requested");
        self.event(
            EventType::Normal,
            "SnapshotBackupStarted",
            format!(
                "{}: requested CloudNativePG volume-snapshot Backup {name}",
                self.cluster.name
            ),
        )
        .await;
        Ok(())
    }

    /// Advances the offload of a completed Backup not yet recorded.
    async fn advance(
        &mut self,
        backup: &BackupView,
        job: Option<&Job>,
    ) -> Result<Advance, kube::Error> {
        let Some(job) = job else {
            return self.start(backup).await;
        };
        let state = job_state(job);
        if state == JobState::Running {
            return Ok(Advance::InFlight);
        }
        // Finished: its claims go, whatever the result.
        let claims: Vec<String> = job
            .annotations()
            .get(CLAIMS_ANNOTATION)
            .map(|c| {
                c.split(',')
                    .filter(|c| c.starts_with(&backup.name))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let pvcs: Api<PersistentVolumeClaim> =
            Api::namespaced(self.pass.ctx.client.clone(), &self.ns());
        for claim in &claims {
            delete_ignoring_absent(pvcs.delete(claim, &DeleteParams::background()).await)?;
        }
        match state {
            JobState::Failed(why) => {
                let message = format!(
                    "offload Job {} of Backup {} failed: {why}; see `kubectl logs job/{}` (its pods are kept for a day)",
                    job.name_any(),
                    backup.name,
                    job.name_any()
                );
                self.failed(&backup.name, "OffloadFailed", message).await;
            }
            _ => {
                info!(cluster = %self.cluster.name, backup = %backup.name, "offloaded");
                self.event(
                    EventType::Normal,
                    "Offloaded",
                    format!(
                        "{}: volume-snapshot Backup {} offloaded into the server",
                        self.cluster.name, backup.name
                    ),
                )
                .await;
                self.record.last_backup = Some(backup.name.clone());
                // When the Job finished, else (not reported) when it was seen finished.
                let finished = job
                    .status
                    .as_ref()
                    .and_then(|s| s.completion_time.as_ref())
                    .map_or(self.pass.now, |t| t.0);
                self.record.last_success_time = Some(finished.to_string());
                self.record.last_error = None;
                self.record.last_error_reason = None;
            }
        }
        Ok(Advance::Done)
    }

    /// Restores a completed Backup's snapshots into claims and starts its Job.
    async fn start(&mut self, backup: &BackupView) -> Result<Advance, kube::Error> {
        let lp = ListParams::default().labels(&format!("{CNPG_BACKUP_NAME}={}", backup.name));
        let snapshots: Vec<SnapshotView> = self
            .dynamic(&volume_snapshots())
            .list(&lp)
            .await?
            .items
            .iter()
            .filter_map(SnapshotView::of)
            .collect();
        let plan = match plan(&backup.name, &snapshots) {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(Advance::InFlight),
            Err((reason, message)) => {
                self.failed(&backup.name, reason, message).await;
                return Ok(Advance::Done);
            }
        };
        let pvcs: Api<PersistentVolumeClaim> =
            Api::namespaced(self.pass.ctx.client.clone(), &self.ns());
        let mut classes: BTreeMap<String, Option<String>> = BTreeMap::new();
        for claim in &plan.claims {
            let class = match &self.spec.storage_class {
                Some(c) => Some(c.clone()),
                None => match classes.get(&claim.source_claim) {
                    Some(c) => c.clone(),
                    None => {
                        let c = match claim.source_claim.as_str() {
                            "" => None,
                            source => pvcs
                                .get_opt(source)
                                .await?
                                .and_then(|p| p.spec?.storage_class_name),
                        };
                        classes.insert(claim.source_claim.clone(), c.clone());
                        c
                    }
                },
            };
            let pvc = self.claim(claim, class);
            match pvcs.create(&PostParams::default(), &pvc).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.is_already_exists() => {}
                Err(e) => return Err(e),
            }
        }
        let job = offload_job(
            self.server,
            self.pass,
            self.cluster,
            self.spec,
            &backup.name,
            &plan,
        );
        let jobs: Api<Job> = Api::namespaced(self.pass.ctx.client.clone(), &self.ns());
        match jobs.create(&PostParams::default(), &job).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_already_exists() => {}
            Err(e) => return Err(e),
        }
        self.event(
            EventType::Normal,
            "OffloadStarted",
            format!(
                "{}: restored Backup {}'s snapshots into {} claim(s); Job {} offloads them",
                self.cluster.name,
                backup.name,
                plan.claims.len(),
                job_name(&backup.name)
            ),
        )
        .await;
        Ok(Advance::InFlight)
    }

    fn claim(&self, c: &PlannedClaim, class: Option<String>) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(c.name.clone()),
                namespace: Some(self.ns()),
                labels: Some(labels(self.server, &self.cluster.name, Some(&c.backup))),
                owner_references: self.server.controller_owner_ref(&()).map(|o| vec![o]),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: class,
                data_source: Some(TypedLocalObjectReference {
                    api_group: Some("snapshot.storage.k8s.io".into()),
                    kind: "VolumeSnapshot".into(),
                    name: c.snapshot.clone(),
                }),
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
        }
    }

    /// Deletes the Backups retention no longer keeps, each after its VolumeSnapshots.
    async fn prune(
        &self,
        backups: &[BackupView],
        jobs: &BTreeMap<String, Job>,
    ) -> Result<(), kube::Error> {
        let keep = self.spec.keep.unwrap_or(DEFAULT_KEEP).max(1) as usize;
        let max_age = self.spec.max_age.as_deref().and_then(|a| parse_age(a).ok());
        let doomed = retention(backups, keep, max_age, self.now(), |b| {
            jobs.get(b)
                .is_some_and(|j| job_state(j) == JobState::Running)
        });
        if doomed.is_empty() {
            return Ok(());
        }
        let snapshots = self.dynamic(&volume_snapshots());
        let cnpg = self.dynamic(&cnpg_backups());
        for b in &doomed {
            let lp = ListParams::default().labels(&format!("{CNPG_BACKUP_NAME}={b}"));
            for s in snapshots.list(&lp).await?.items {
                if let Some(n) = &s.metadata.name {
                    delete_ignoring_absent(snapshots.delete(n, &DeleteParams::default()).await)?;
                }
            }
            delete_ignoring_absent(cnpg.delete(b, &DeleteParams::default()).await)?;
        }
        info!(cluster = %self.cluster.name, pruned = ?doomed, "pruned volume-snapshot backups");
        self.event(
            EventType::Normal,
            "SnapshotsPruned",
            format!(
                "{}: deleted Backup(s) {} and their VolumeSnapshots",
                self.cluster.name,
                doomed.join(", ")
            ),
        )
        .await;
        Ok(())
    }
}

fn delete_ignoring_absent<T>(r: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// The Backups retention deletes (oldest first): completed ones beyond the newest
/// `keep`, or older than `max_age` seconds except the newest completed; failed ones
/// older than the newest completed; never one `busy` says is being offloaded, nor one
/// still in progress.
fn retention(
    backups: &[BackupView],
    keep: usize,
    max_age: Option<u64>,
    now: i64,
    busy: impl Fn(&str) -> bool,
) -> Vec<String> {
    let completed: Vec<&BackupView> = backups
        .iter()
        .rev()
        .filter(|b| b.phase == Phase::Completed)
        .collect();
    let Some(newest) = completed.first() else {
        return Vec::new();
    };
    let too_old = |b: &BackupView| {
        max_age.is_some_and(|age| u64::try_from(now.saturating_sub(b.created)).unwrap_or(0) > age)
    };
    let mut doomed: Vec<&BackupView> = completed
        .iter()
        .enumerate()
        .filter(|(i, b)| *i >= keep || (*i > 0 && too_old(b)))
        .map(|(_, b)| *b)
        .collect();
    doomed.extend(backups.iter().filter(|b| {
        b.phase == Phase::Failed && (b.created, &b.name) < (newest.created, &newest.name)
    }));
    doomed.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    doomed
        .into_iter()
        .filter(|b| !busy(&b.name))
        .map(|b| b.name.clone())
        .collect()
}

mod job;

#[cfg(test)]
mod tests;
