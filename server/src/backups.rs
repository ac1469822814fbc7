//! Base backups on the server: one job at a time per cluster (requested through the
//! API or by the cluster's cron schedule), their live progress, listing, verification
//! and the crash recovery of backups a previous run left `running`. The jobs themselves
//! run behind [`runner::JobRunner`] (in production [`klio_basebackup::job`], which
//! writes them to the cluster's chunk store); this module writes nothing itself except
//! through the chunk store's recovery.

mod runner;
#[cfg(test)]
mod tests;
mod view;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use klio_basebackup::job::{JobError, JobProgress, WalWaiter};
use klio_basebackup::offload::{self, OffloadPolicy};
use klio_basebackup::protocol::BaseBackupOptions;
use klio_basebackup::store::{BackupRecord, BackupState, ChunkStore, ObjectSource};
use klio_basebackup::walchain;
use klio_core::clock::unix_now;
use klio_core::manifest::ChunkId;
use klio_core::{BackupId, ClusterName, Lsn, TimelineId};
use klio_pgwire::conninfo::ConnInfo;
use klio_receiver::cluster::{ClusterHandle, ServerContext};
use tokio::sync::watch;
use tracing::{error, info, warn, Instrument};

use crate::registry::{RegistryError, SourceChain};
use crate::retention::Retainer;
use crate::schedule::Schedule;
use klio_api::BackupStatus;
use klio_api::{
    BackupKindView, BackupRequest, BackupStateView, BackupVerification, BackupView, OffloadRequest,
    UploadRequest, VerifyReport, VerifyRequest, WalChainView, WalGapView,
};
use klio_api::{RetentionReport, RetentionRequest};
use runner::{BaseBackupRunner, Job, JobContext, JobRunner};
use view::{failed_view, progress_view, record_view, running_view, state_view};

/// How long a finished backup waits for its WAL to become durable in Tier 1.
const WAL_WAIT: Duration = Duration::from_secs(600);

/// Backup settings of one cluster (from the configuration).
#[derive(Clone)]
pub struct BackupSettings {
    /// Replication connection for `BASE_BACKUP` (its own application_name).
    pub conninfo: ConnInfo,
    pub fast_checkpoint: bool,
    pub schedule: Option<Schedule>,
    /// Where offloads may read (resolved directories); empty: offload is disabled.
    pub offload_roots: Vec<std::path::PathBuf>,
    /// Accept offload uploads (`offload_uploads`).
    pub offload_uploads: bool,
    /// Where restores read the packs and manifests Tier 1 no longer holds (Tier 2).
    pub fallback: Option<Arc<dyn ObjectSource>>,
}

impl std::fmt::Debug for BackupSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupSettings")
            .field("conninfo", &self.conninfo)
            .field("fast_checkpoint", &self.fast_checkpoint)
            .field("schedule", &self.schedule)
            .field("offload_roots", &self.offload_roots)
            .field("offload_uploads", &self.offload_uploads)
            .field("fallback", &self.fallback.as_ref().map(|f| f.describe()))
            .finish()
    }
}

/// A job the manager started: what the API shows of it.
#[derive(Clone)]
struct Running {
    id: BackupId,
    label: String,
    kind: BackupKindView,
    started_at: u64,
    progress: Arc<JobProgress>,
}

/// A job of this run that failed.
struct Failure {
    job: Running,
    error: JobError,
}

#[derive(Default, Clone, Copy)]
struct VerifyState {
    ok: Option<bool>,
    at: Option<u64>,
}

struct ClusterBackups {
    handle: ClusterHandle,
    settings: BackupSettings,
    store: OnceLock<ChunkStore>,
    running: Mutex<Option<Running>>,
    /// Retention is running: no backup may start (it would reference chunks retention
    /// may be removing). Taken with `running` held.
    retaining: Mutex<bool>,
    /// How jobs of this run failed, by backup id: the record may still say `running`
    /// when the failure itself could not be recorded (a full volume fails that write
    /// too; the next start marks such records failed), and a job that failed before it
    /// stored anything (e.g. it could not connect) has no record at all.
    failures: Mutex<HashMap<BackupId, Failure>>,
    /// Notified each time a job of the cluster has ended and freed the slot.
    ended: tokio::sync::Notify,
    verify: Mutex<VerifyState>,
}

/// Every cluster's backups.
pub struct BackupManager {
    ctx: Arc<ServerContext>,
    runtime: tokio::runtime::Handle,
    runner: Arc<dyn JobRunner>,
    clusters: HashMap<ClusterName, Arc<ClusterBackups>>,
    /// Retention, run after each backup, on a timer and on request.
    retainer: OnceLock<Arc<Retainer>>,
}

/// How often retention runs besides after each backup.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

impl BackupManager {
    /// Opens the chunk store of every cluster already in the catalog and recovers
    /// backups a previous run left running (their new chunks are deleted).
    pub fn open(
        ctx: Arc<ServerContext>,
        runtime: tokio::runtime::Handle,
        clusters: Vec<(ClusterHandle, BackupSettings)>,
    ) -> anyhow::Result<BackupManager> {
        BackupManager::with_runner(ctx, runtime, clusters, Arc::new(BaseBackupRunner))
    }

    /// [`BackupManager::open`] with the jobs run by `runner`.
    fn with_runner(
        ctx: Arc<ServerContext>,
        runtime: tokio::runtime::Handle,
        clusters: Vec<(ClusterHandle, BackupSettings)>,
        runner: Arc<dyn JobRunner>,
    ) -> anyhow::Result<BackupManager> {
        let mut map = HashMap::new();
        for (handle, settings) in clusters {
            let cb = Arc::new(ClusterBackups {
                handle,
                settings,
                store: OnceLock::new(),
                running: Mutex::new(None),
                retaining: Mutex::new(false),
                failures: Mutex::new(HashMap::new()),
                ended: tokio::sync::Notify::new(),
                verify: Mutex::new(VerifyState::default()),
            });
            map.insert(cb.handle.spec.name.clone(), cb);
        }
        let m = BackupManager {
            ctx,
            runtime,
            runner,
            clusters: map,
            retainer: OnceLock::new(),
        };
        for cb in m.clusters.values() {
            match m.store(cb) {
                Ok(_) | Err(RegistryError::NotReady) => {}
                Err(e) => anyhow::bail!(
                    "cluster {}: backups: {}",
                    cb.handle.spec.name,
                    SourceChain(&e)
                ),
            }
        }
        Ok(m)
    }

    /// The cluster's chunk store, opened (and recovered) on first use; NotReady until
    /// the cluster's primary was first contacted (its key does not exist before).
    fn store(&self, cb: &ClusterBackups) -> Result<ChunkStore, RegistryError> {
        if let Some(s) = cb.store.get() {
            return Ok(s.clone());
        }
        let name = &cb.handle.spec.name;
        let rec = self
            .ctx
            .catalog
            .cluster(name)?
            .ok_or(RegistryError::NotReady)?;
        let key = self
            .ctx
            .data_key(&rec)
            .map_err(|e| RegistryError::internal("unwrapping the cluster's data key", e))?;
        let store = ChunkStore::open(
            &self.ctx.data_dir,
            name.clone(),
            key,
            self.ctx.catalog.clone(),
        )?;
        store.set_relay(self.ctx.relay_to_tier2);
        if let Some(source) = &cb.settings.fallback {
            store.set_fallback(Arc::clone(source));
        }
        let report = store.recover()?;
        if report.failed_backups > 0 {
            warn!(cluster = %name, backups = report.failed_backups, packs = report.deleted_packs,
                "backups interrupted by the last shutdown were marked failed and their data removed");
        }
        Ok(cb.store.get_or_init(|| store).clone())
    }

    fn cluster(&self, name: &ClusterName) -> Result<&Arc<ClusterBackups>, RegistryError> {
        self.clusters
            .get(name)
            .ok_or_else(|| RegistryError::NotFound(format!("unknown cluster {name}")))
    }

    /// Starts a `BASE_BACKUP` job.
    pub fn start_backup(
        &self,
        cluster: &ClusterName,
        req: BackupRequest,
    ) -> Result<BackupView, RegistryError> {
        let cb = self.cluster(cluster)?.clone();
        let store = self.store(&cb)?;
        let label = req
            .label
            .unwrap_or_else(|| format!("klio backup {}", klio_core::clock::utc_time(unix_now())));
        validate_label(&label)?;
        let opts = BaseBackupOptions {
            label: label.clone(),
            fast_checkpoint: req.fast_checkpoint.unwrap_or(cb.settings.fast_checkpoint),
            max_rate_kbps: req.max_rate_kbps,
        };
        if let Some(r) = req.max_rate_kbps {
            if !(32..=1_048_576).contains(&r) {
                return Err(RegistryError::BadRequest(format!(
                    "max_rate_kbps {r} is out of range (32 to 1048576 kB/s)"
                )));
            }
        }
        let job = Job::Stream {
            conninfo: Box::new(cb.settings.conninfo.clone()),
            opts,
        };
        self.start(cb, store, &label, BackupKindView::Stream, job)
    }

    /// Starts an offload job from a directory on this server, inside one of the
    /// cluster's `offload_roots` (see [`klio_basebackup::offload`]).
    pub fn start_offload(
        &self,
        cluster: &ClusterName,
        req: OffloadRequest,
    ) -> Result<BackupView, RegistryError> {
        let cb = self.cluster(cluster)?.clone();
        if cb.settings.offload_roots.is_empty() {
            return Err(RegistryError::Forbidden(format!(
                "offload is disabled for cluster {cluster}: its configuration sets no offload_roots; add offload_roots = [\"/dir/where/snapshots/are/mounted\"] to its [[cluster]] table and restart the server"
            )));
        }
        let store = self.store(&cb)?;
        let from = std::path::PathBuf::from(&req.from);
        if !from.is_absolute() {
            return Err(RegistryError::BadRequest(format!(
                "offload source {:?} is not an absolute path",
                req.from
            )));
        }
        let system_id = self.system_id(cluster)?;
        let policy = OffloadPolicy {
            roots: &cb.settings.offload_roots,
            system_id: Some(system_id),
            label: None,
        };
        let source = offload::scan(&from, &policy)?;
        let label = req
            .label
            .or_else(|| source.label.label.clone())
            .unwrap_or_else(|| format!("offload of {}", from.display()));
        validate_label(&label)?;
        let end = offload_end(&cb, req.end_lsn)?;
        if end.1 < source.label.start_lsn {
            return Err(RegistryError::BadRequest(format!(
                "end LSN {} is before the backup_label's start {}",
                end.1, source.label.start_lsn
            )));
        }
        let job = Job::Offload {
            source: Box::new(source),
            label: label.clone(),
            end,
        };
        self.start(cb, store, &label, BackupKindView::Offload, job)
    }

    /// Starts storing an upload (a PGDATA copy a client reads and sends, see
    /// [`klio_basebackup::job::upload_backup`]) whose body arrives on `body`; refused
    /// unless the cluster's configuration sets `offload_uploads = true`.
    pub fn start_upload(
        &self,
        cluster: &ClusterName,
        req: UploadRequest,
        body: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    ) -> Result<BackupView, RegistryError> {
        let cb = self.cluster(cluster)?.clone();
        if !cb.settings.offload_uploads {
            return Err(RegistryError::Forbidden(format!(
                "uploads are disabled for cluster {cluster}: set offload_uploads = true in its [[cluster]] table and restart the server (the Kubernetes operator does this for clusters with snapshotOffload)"
            )));
        }
        let store = self.store(&cb)?;
        let system_id = self.system_id(cluster)?;
        let label = req.label.unwrap_or_else(|| {
            format!("offload upload {}", klio_core::clock::utc_time(unix_now()))
        });
        validate_label(&label)?;
        let end = offload_end(&cb, req.end_lsn)?;
        let job = Job::Upload {
            body,
            label: label.clone(),
            end,
            system_id,
        };
        let view = self.start(cb.clone(), store, &label, BackupKindView::Offload, job)?;
        if let Some(total) = req.total_bytes {
            if let Some(r) = cb
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                r.progress.set_total(total);
            }
        }
        Ok(view)
    }

    /// The cluster's database system identifier (known once it was first streamed).
    fn system_id(&self, cluster: &ClusterName) -> Result<klio_core::SystemId, RegistryError> {
        Ok(self
            .ctx
            .catalog
            .cluster(cluster)?
            .ok_or(RegistryError::NotReady)?
            .system_id)
    }

    /// Waits until job `id` of `cluster` has ended; its error if it failed.
    pub async fn job_outcome(&self, cluster: &ClusterName, id: &BackupId) -> Option<String> {
        let cb = self.cluster(cluster).ok()?.clone();
        loop {
            let ended = cb.ended.notified();
            let running = cb
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .is_some_and(|r| &r.id == id);
            if !running {
                break;
            }
            // `ended` wakes one waiter: re-check at least every 100 ms.
            let _ = tokio::time::timeout(Duration::from_millis(100), ended).await;
        }
        let failures = cb.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.get(id).map(|f| f.error.to_string())
    }

    /// Claims the cluster's one backup slot and runs `job` in the background; the
    /// slot is freed when the job ends. A second start while one runs is a conflict.
    fn start(
        &self,
        cb: Arc<ClusterBackups>,
        store: ChunkStore,
        label: &str,
        kind: BackupKindView,
        job: Job,
    ) -> Result<BackupView, RegistryError> {
        let running = {
            let mut slot = cb.running.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(r) = slot.as_ref() {
                return Err(RegistryError::Conflict(format!(
                    "backup {} of cluster {} is still running (one backup at a time per cluster); wait for it or follow it with `klio list backups`",
                    r.id, cb.handle.spec.name
                )));
            }
            if *cb.retaining.lock().unwrap_or_else(|e| e.into_inner()) {
                return Err(RegistryError::Conflict(format!(
                    "retention is removing old backups of cluster {} right now; start the backup again in a moment",
                    cb.handle.spec.name
                )));
            }
            let running = Running {
                id: fresh_id(&store, &cb.failures)?,
                label: label.to_string(),
                kind,
                started_at: unix_now(),
                progress: Arc::new(JobProgress::default()),
            };
            *slot = Some(running.clone());
            running
        };
        let view = running_view(&cb.handle.spec.name, &running);
        let ctx_store = store.clone();
        let ctx = JobContext {
            store,
            id: running.id.clone(),
            progress: running.progress.clone(),
            wal: self.wal_waiter(&cb),
        };
        let fut = self.runner.run(job, ctx);
        let retainer = self.retainer.get().cloned();
        let after = {
            let (cb, store) = (cb.clone(), ctx_store.clone());
            move || {
                if let Some(r) = retainer.filter(|r| r.active()) {
                    // A backup started meanwhile: the timer's run will do it.
                    if let Ok(_guard) = RetentionGuard::claim(&cb) {
                        retain_logged(&cb, &store, &r, "after a backup");
                    }
                }
            }
        };
        let running_id = running.id.clone();
        let span =
            tracing::info_span!("backup", cluster = %cb.handle.spec.name, backup = %running.id);
        self.runtime.spawn(
            async move {
                info!("base backup started");
                match fut.await {
                    Ok(rec) => {
                        info!(
                            logical_bytes = rec.logical_bytes,
                            stored_bytes = rec.stored_bytes,
                            new_bytes = rec.new_bytes,
                            "base backup complete"
                        );
                    }
                    Err(error) => {
                        error!("base backup failed: {error}");
                        cb.failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(
                                running.id.clone(),
                                Failure {
                                    job: running,
                                    error,
                                },
                            );
                    }
                }
                let complete = cb
                    .failures
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&running_id)
                    .is_none();
                *cb.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
                cb.ended.notify_one();
                if complete {
                    let _ = tokio::task::spawn_blocking(after).await;
                }
            }
            .instrument(span),
        );
        Ok(view)
    }

    /// Waits for the WAL from a backup's start to its end to be durable and complete.
    fn wal_waiter(&self, cb: &Arc<ClusterBackups>) -> WalWaiter {
        let cb = cb.clone();
        let catalog = self.ctx.catalog.clone();
        Box::new(move |start_tli, start, end_tli, end| {
            let cb = cb.clone();
            let catalog = catalog.clone();
            Box::pin(async move {
                let deadline = tokio::time::Instant::now() + WAL_WAIT;
                loop {
                    let s = cb.handle.status.snapshot();
                    let reached = s.timeline.is_some_and(|t| t >= end_tli)
                        && s.flushed.is_some_and(|f| f >= end);
                    if reached {
                        break;
                    }
                    if tokio::time::Instant::now() > deadline {
                        return Err(format!(
                            "the WAL up to {end} (timeline {end_tli}) did not reach Tier 1 within {} s (streaming state: {}, durable up to {}); the backup is not restorable without it",
                            WAL_WAIT.as_secs(),
                            s.state.as_str(),
                            s.flushed.map(|l| l.to_string()).unwrap_or_else(|| "nothing".into())
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let name = cb.handle.spec.name.clone();
                let report = tokio::task::spawn_blocking(move || {
                    chain_report(&catalog, &name, start_tli, start, end_tli, Some(end))
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| SourceChain(&e).to_string())?;
                if report.is_complete() {
                    return Ok(());
                }
                // The very start missing: the checkpoint the backup starts from is older
                // than the first WAL Klio streamed (usual on a standby right after Klio
                // was set up: it starts from the last checkpoint it replayed).
                let hint = if report.gaps.first().is_some_and(|g| g.from <= start) {
                    format!(
                        "; the backup starts at checkpoint redo {start}, which is older than the WAL Klio has: run CHECKPOINT on the primary (so a standby replays a newer one) and back up again"
                    )
                } else {
                    String::new()
                };
                Err(format!(
                    "the WAL the backup needs is not all in Tier 1: {}{hint}",
                    report.describe()
                ))
            })
        })
    }

    /// The cluster's backups, oldest first, with the running one's live figures.
    pub fn list(&self, cluster: &ClusterName) -> Result<Vec<BackupView>, RegistryError> {
        let cb = self.cluster(cluster)?;
        let store = match self.store(cb) {
            Ok(s) => s,
            Err(RegistryError::NotReady) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut views: Vec<BackupView> = store
            .backups()?
            .iter()
            .map(|r| record_view(cluster, r))
            .collect();
        let running = cb.running.lock().unwrap_or_else(|e| e.into_inner());
        let failures = cb.failures.lock().unwrap_or_else(|e| e.into_inner());
        // A record still `running` whose job is over ended without its outcome recorded.
        for v in views.iter_mut().filter(|v| {
            v.state == BackupStateView::Running && running.as_ref().is_none_or(|r| r.id != v.id)
        }) {
            v.state = BackupStateView::Failed;
            v.error = Some(match failures.get(&v.id) {
                Some(f) => format!("{} (not yet recorded in the catalog; the next start does)", f.error),
                None => "the backup ended without recording its outcome; it is not usable, and the next start removes its data".into(),
            });
        }
        // A job that failed before it stored anything has no record: shown from memory
        // (until the server restarts) so its caller learns why.
        for f in failures.values() {
            if !views.iter().any(|v| v.id == f.job.id) {
                views.push(failed_view(cluster, &f.job, &f.error));
            }
        }
        drop(failures);
        if let Some(r) = running.as_ref() {
            match views.iter_mut().find(|v| v.id == r.id) {
                Some(v) => {
                    v.state = BackupStateView::Running;
                    v.progress = Some(progress_view(&r.progress));
                }
                None => views.push(running_view(cluster, r)),
            }
        }
        views.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(views)
    }

    pub fn backup(
        &self,
        cluster: &ClusterName,
        id: &BackupId,
    ) -> Result<Option<BackupView>, RegistryError> {
        Ok(self.list(cluster)?.into_iter().find(|b| &b.id == id))
    }

    /// The cluster's chunk store and backup records (`None` before first contact).
    fn complete_backup(
        &self,
        cluster: &ClusterName,
    ) -> Result<Option<(ChunkStore, Vec<BackupRecord>)>, RegistryError> {
        let cb = self.cluster(cluster)?;
        let store = match self.store(cb) {
            Ok(s) => s,
            Err(RegistryError::NotReady) => return Ok(None),
            Err(e) => return Err(e),
        };
        let backups = store.backups()?;
        Ok(Some((store, backups)))
    }

    /// Klio's manifest of a complete backup, as JSON.
    pub fn manifest_json(
        &self,
        cluster: &ClusterName,
        id: &BackupId,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let Some((store, backups)) = self.complete_backup(cluster)? else {
            return Ok(None);
        };
        if !backups
            .iter()
            .any(|b| &b.id == id && b.state == BackupState::Complete)
        {
            return Ok(None);
        }
        let m = store.read_manifest(id)?;
        let json = serde_json::to_vec(&m)
            .map_err(|e| RegistryError::internal("encoding the manifest as JSON", e))?;
        Ok(Some(json))
    }

    /// PostgreSQL's `backup_manifest` of a complete backup.
    pub fn pg_manifest(
        &self,
        cluster: &ClusterName,
        id: &BackupId,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let Some((store, backups)) = self.complete_backup(cluster)? else {
            return Ok(None);
        };
        if !backups
            .iter()
            .any(|b| &b.id == id && b.state == BackupState::Complete)
        {
            return Ok(None);
        }
        Ok(store.read_pg_manifest(id)?)
    }

    /// One chunk of the cluster, decrypted and verified.
    pub fn read_chunk(
        &self,
        cluster: &ClusterName,
        id: &ChunkId,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let Some((store, _)) = self.complete_backup(cluster)? else {
            return Ok(None);
        };
        match store.read_chunk(id) {
            Ok(d) => Ok(Some(d)),
            Err(klio_basebackup::store::BackupStoreError::UnknownChunk { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Figures for `klio status` and the metrics.
    pub fn status(&self, cluster: &ClusterName) -> BackupStatus {
        let Ok(cb) = self.cluster(cluster) else {
            return BackupStatus::default();
        };
        let v = *cb.verify.lock().unwrap_or_else(|e| e.into_inner());
        let running = cb
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        let complete: Vec<BackupRecord> = cb
            .store
            .get()
            .and_then(|s| s.backups().ok())
            .unwrap_or_default()
            .into_iter()
            .filter(|b| b.state == BackupState::Complete)
            .collect();
        BackupStatus {
            running,
            complete: complete.len() as u64,
            last_complete_at: complete.iter().filter_map(|b| b.finished_unix).max(),
            last_verify_ok: v.ok,
            last_verify_at: v.at,
        }
    }

    /// Reads back every chunk of the chosen backups and checks their WAL chains.
    pub fn verify(
        &self,
        cluster: &ClusterName,
        req: VerifyRequest,
    ) -> Result<VerifyReport, RegistryError> {
        let cb = self.cluster(cluster)?;
        let store = self.store(cb)?;
        let all = store.backups()?;
        let chosen: Vec<&BackupRecord> = match &req.backup {
            Some(id) => {
                let b = all.iter().find(|b| &b.id == id).ok_or_else(|| {
                    RegistryError::NotFound(format!("cluster {cluster} has no backup {id}"))
                })?;
                if b.state != BackupState::Complete {
                    return Err(RegistryError::BadRequest(format!(
                        "backup {id} is {}, not complete: there is nothing to verify",
                        state_view(b.state).as_str()
                    )));
                }
                vec![b]
            }
            None => all
                .iter()
                .filter(|b| b.state == BackupState::Complete)
                .collect(),
        };
        let current = cb
            .handle
            .status
            .snapshot()
            .timeline
            .unwrap_or(TimelineId::FIRST);
        let mut backups = Vec::new();
        for b in chosen {
            let r = store
                .verify_backup(&b.id)
                .map_err(|e| RegistryError::internal("verifying a backup", e))?;
            let chain = chain_report(
                &self.ctx.catalog,
                cluster,
                b.start_tli,
                b.start_lsn,
                current,
                None,
            )?;
            let mut problems = r.problems.clone();
            if !chain.is_complete() {
                problems.push(chain.describe());
            }
            backups.push(BackupVerification {
                id: b.id.clone(),
                ok: problems.is_empty(),
                files_checked: r.files_checked,
                chunks_checked: r.chunks_checked,
                bytes_checked: r.bytes_checked,
                problems,
                wal: WalChainView {
                    from: chain.from,
                    to: chain.to,
                    segments_checked: chain.segments_checked,
                    gaps: chain
                        .gaps
                        .iter()
                        .map(|g| WalGapView {
                            from: g.from,
                            to: g.to,
                        })
                        .collect(),
                    summary: chain.describe(),
                },
            });
        }
        let ok = backups.iter().all(|b| b.ok);
        *cb.verify.lock().unwrap_or_else(|e| e.into_inner()) = VerifyState {
            ok: Some(ok),
            at: Some(unix_now()),
        };
        Ok(VerifyReport {
            cluster: cluster.clone(),
            ok,
            backups,
        })
    }

    /// What a cluster's schedule does when it fires for `at` (Unix seconds): starts a
    /// backup as a request would, refused while one runs.
    fn start_scheduled(&self, cluster: &ClusterName, at: i64) -> Result<BackupView, RegistryError> {
        let at = u64::try_from(at).unwrap_or_default();
        // A retention run in progress finishes first (up to half an hour), rather than
        // the scheduled backup being skipped. Blocks (the caller runs it off the runtime).
        let cb = self.cluster(cluster)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(1800);
        while *cb.retaining.lock().unwrap_or_else(|e| e.into_inner())
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(200));
        }
        self.start_backup(
            cluster,
            BackupRequest {
                label: Some(format!("scheduled {}", klio_core::clock::utc_time(at))),
                fast_checkpoint: None,
                max_rate_kbps: None,
            },
        )
    }

    /// Runs retention with these rules from now on (set once at start-up).
    pub fn set_retainer(&self, retainer: Arc<Retainer>) {
        let _ = self.retainer.set(retainer);
    }

    /// Applies retention to `cluster` now (or, with `dry_run`, says what it would do).
    /// A conflict while a backup runs. Blocks.
    pub fn retention(
        &self,
        cluster: &ClusterName,
        req: RetentionRequest,
    ) -> Result<RetentionReport, RegistryError> {
        let cb = self.cluster(cluster)?.clone();
        let retainer = self.retainer.get().cloned().ok_or_else(|| {
            RegistryError::Conflict("retention is not available on this server".into())
        })?;
        let store = self.store(&cb)?;
        if req.dry_run {
            return retainer.run(cluster, &store, &req);
        }
        let _guard = RetentionGuard::claim(&cb)?;
        retainer.run(cluster, &store, &req)
    }

    /// Whether retention could free space in Tier 1 for `cluster` now (for the error a
    /// full Tier 1 reports).
    pub fn disk_full_advice(&self, cluster: &ClusterName) -> String {
        let active = self.retainer.get().is_some_and(|r| r.rules.tier1.any());
        if !active {
            return "retention could free nothing: no [retention] rules are configured (e.g. [retention] latest = 2 removes older backups and the WAL before them)".into();
        }
        let req = RetentionRequest {
            dry_run: true,
            tier: Some(1),
        };
        match self.retention(cluster, req) {
            Ok(r) => match r.tiers.first() {
                Some(t) if t.removed_bytes > 0 => format!(
                    "retention could free {:.1} MiB of Tier 1 now: `klio retention apply --tier 1 --cluster {cluster}`",
                    t.removed_bytes as f64 / 1_048_576.0
                ),
                Some(t) if !t.held_back.is_empty() => format!(
                    "retention could free nothing now: {}",
                    t.held_back.join("; ")
                ),
                Some(t) => format!(
                    "retention could free nothing: its rules ({}) keep everything Tier 1 holds; enlarge the volume or keep fewer backups",
                    t.rules
                ),
                None => "retention could free nothing".into(),
            },
            Err(e) => format!(
                "whether retention could free space is unknown: {}",
                SourceChain(&e)
            ),
        }
    }

    /// Runs retention for every cluster every [`RETENTION_INTERVAL`] (when it has rules).
    pub fn spawn_retention(
        self: &Arc<Self>,
        stop: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let retainer = self.retainer.get().cloned().filter(|r| r.active())?;
        let (me, mut stop) = (self.clone(), stop);
        Some(self.runtime.spawn(async move {
            info!(rules = ?retainer.rules, every_secs = RETENTION_INTERVAL.as_secs(), "retention active");
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(RETENTION_INTERVAL) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                for cb in me.clusters.values() {
                    let Ok(store) = me.store(cb) else { continue };
                    let cb = Arc::clone(cb);
                    let r = retainer.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        if let Ok(_guard) = RetentionGuard::claim(&cb) {
                            retain_logged(&cb, &store, &r, "on its timer");
                        }
                    })
                    .await;
                }
            }
        }))
    }

    /// Runs each cluster's backup schedule until `stop` turns true.
    pub fn spawn_schedules(
        self: &Arc<Self>,
        stop: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for (name, cb) in &self.clusters {
            let Some(schedule) = cb.settings.schedule.clone() else {
                continue;
            };
            let (me, name, mut stop) = (self.clone(), name.clone(), stop.clone());
            tasks.push(self.runtime.spawn(async move {
                info!(cluster = %name, %schedule, "backup schedule active (UTC)");
                loop {
                    let now = unix_now() as i64;
                    let Some(next) = schedule.next_after(now) else {
                        warn!(cluster = %name, %schedule, "the backup schedule never fires");
                        return;
                    };
                    let wait = Duration::from_secs((next - now).max(0) as u64);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    let (m, n) = (me.clone(), name.clone());
                    let started =
                        tokio::task::spawn_blocking(move || m.start_scheduled(&n, next)).await;
                    match started {
                        Ok(Ok(v)) => {
                            info!(cluster = %name, backup = %v.id, "scheduled backup started")
                        }
                        Ok(Err(e)) => warn!(cluster = %name, "scheduled backup not started: {}", SourceChain(&e)),
                        Err(e) => warn!(cluster = %name, "scheduled backup not started: {e}"),
                    }
                }
            }));
        }
        tasks
    }
}

/// A backup id that is neither in the catalog nor a failed job's of this run (a job
/// that failed before it stored a record leaves its id only in `failures`).
fn fresh_id(
    store: &ChunkStore,
    failures: &Mutex<HashMap<BackupId, Failure>>,
) -> Result<BackupId, RegistryError> {
    let base = store.new_backup_id()?;
    let failures = failures.lock().unwrap_or_else(|e| e.into_inner());
    let mut id = base.clone();
    let mut n = 1;
    while failures.contains_key(&id) {
        n += 1;
        id = format!("{base}-{n}")
            .parse()
            .map_err(|e| RegistryError::internal("a fresh backup id", e))?;
    }
    Ok(id)
}

/// The WAL position an offload's copy is taken to be consistent at: `end_lsn` as given,
/// or the server's durable position now (the copy was made before, so it is a safe
/// upper bound).
fn offload_end(
    cb: &ClusterBackups,
    end_lsn: Option<Lsn>,
) -> Result<(TimelineId, Lsn), RegistryError> {
    let s = cb.handle.status.snapshot();
    match end_lsn {
        Some(l) => Ok((s.timeline.unwrap_or(TimelineId::FIRST), l)),
        None => match (s.timeline, s.flushed) {
            (Some(t), Some(l)) => Ok((t, l)),
            _ => Err(RegistryError::NotReady),
        },
    }
}

fn validate_label(label: &str) -> Result<(), RegistryError> {
    if label.is_empty() || label.len() > 1023 || label.contains('\0') || label.contains('\n') {
        return Err(RegistryError::BadRequest(
            "invalid label: use 1 to 1023 bytes without NUL or newlines".into(),
        ));
    }
    Ok(())
}

fn chain_report(
    catalog: &klio_catalog::Catalog,
    cluster: &ClusterName,
    start_tli: TimelineId,
    start: Lsn,
    to_tli: TimelineId,
    to: Option<Lsn>,
) -> Result<walchain::WalChainReport, RegistryError> {
    let rec = catalog.cluster(cluster)?.ok_or(RegistryError::NotReady)?;
    let timelines = catalog.timelines(cluster)?;
    let segments = catalog.segments(cluster)?;
    Ok(walchain::check_chain(
        &timelines,
        &segments,
        rec.seg_size,
        start_tli,
        start,
        to_tli,
        to,
    ))
}

/// Marks a cluster's retention as running until dropped; refused while a backup runs.
struct RetentionGuard<'a> {
    cb: &'a ClusterBackups,
}

impl<'a> RetentionGuard<'a> {
    fn claim(cb: &'a ClusterBackups) -> Result<RetentionGuard<'a>, RegistryError> {
        let slot = cb.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = slot.as_ref() {
            return Err(RegistryError::Conflict(format!(
                "backup {} of cluster {} is running; retention runs by itself once it completes",
                r.id, cb.handle.spec.name
            )));
        }
        let mut retaining = cb.retaining.lock().unwrap_or_else(|e| e.into_inner());
        if *retaining {
            return Err(RegistryError::Conflict(format!(
                "retention of cluster {} is already running",
                cb.handle.spec.name
            )));
        }
        *retaining = true;
        Ok(RetentionGuard { cb })
    }
}

impl Drop for RetentionGuard<'_> {
    fn drop(&mut self) {
        *self.cb.retaining.lock().unwrap_or_else(|e| e.into_inner()) = false;
    }
}

/// One automatic retention run, its outcome logged.
fn retain_logged(cb: &ClusterBackups, store: &ChunkStore, r: &Retainer, when: &str) {
    let name = &cb.handle.spec.name;
    match r.run(name, store, &RetentionRequest::default()) {
        Ok(report) => {
            for t in &report.tiers {
                if !t.removed.is_empty() || t.error.is_some() {
                    info!(cluster = %name, tier = t.tier, removed = t.removed.len(), bytes = t.removed_bytes,
                        held_back = t.held_back.len(), error = t.error.as_deref().unwrap_or(""), "retention applied {when}");
                }
            }
        }
        Err(e) => warn!(cluster = %name, "retention failed {when}: {}", SourceChain(&e)),
    }
}
