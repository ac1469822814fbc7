//! Base backups on the server: one job at a time per cluster (requested through the
//! API or by the cluster's cron schedule), their live progress, listing, verification
//! and the crash recovery of backups a previous run left `running`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use klio_basebackup::job::{self, JobError, JobProgress, WalWaiter};
use klio_basebackup::offload::{self, OffloadError, OffloadPolicy};
use klio_basebackup::protocol::BaseBackupOptions;
use klio_basebackup::store::{BackupKind, BackupRecord, BackupState, ChunkStore};
use klio_basebackup::walchain;
use klio_core::clock::unix_now;
use klio_core::{ClusterName, Lsn, TimelineId};
use klio_pgwire::conninfo::ConnInfo;
use klio_receiver::cluster::{ClusterHandle, ServerContext};
use tokio::sync::watch;
use tracing::{error, info, warn, Instrument};

use crate::registry::RegistryError;
use crate::schedule::Schedule;
use klio_api::BackupStatus;
use klio_api::{
    BackupKindView, BackupProgress, BackupRequest, BackupStateView, BackupVerification, BackupView,
    OffloadRequest, VerifyReport, VerifyRequest, WalChainView, WalGapView,
};

/// How long a finished backup waits for its WAL to become durable in Tier 1.
const WAL_WAIT: Duration = Duration::from_secs(600);

/// Backup settings of one cluster (from the configuration).
#[derive(Debug, Clone)]
pub struct BackupSettings {
    /// Replication connection for `BASE_BACKUP` (its own application_name).
    pub conninfo: ConnInfo,
    pub fast_checkpoint: bool,
    pub schedule: Option<Schedule>,
    /// Where offloads may read (resolved directories); empty: offload is disabled.
    pub offload_roots: Vec<std::path::PathBuf>,
}

struct Running {
    id: String,
    label: String,
    kind: BackupKindView,
    started_at: u64,
    progress: Arc<JobProgress>,
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
    /// How jobs of this run failed, by backup id: the record may still say `running`
    /// when the failure itself could not be recorded (a full volume fails that write
    /// too); the next start marks such records failed.
    failures: Mutex<std::collections::HashMap<String, String>>,
    verify: Mutex<VerifyState>,
}

/// Every cluster's backups.
pub struct BackupManager {
    ctx: Arc<ServerContext>,
    runtime: tokio::runtime::Handle,
    clusters: HashMap<ClusterName, Arc<ClusterBackups>>,
}

fn internal(e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Internal(e.to_string())
}

fn corrupt(e: klio_basebackup::store::BackupStoreError) -> RegistryError {
    use klio_basebackup::store::BackupStoreError as E;
    match e {
        E::CorruptChunk { .. } | E::ChunkMismatch { .. } | E::BadObject { .. } => {
            RegistryError::Corrupt(e.to_string())
        }
        other => RegistryError::Internal(other.to_string()),
    }
}

impl BackupManager {
    /// Opens the chunk store of every cluster already in the catalog and recovers
    /// backups a previous run left running (their new chunks are deleted).
    pub fn open(
        ctx: Arc<ServerContext>,
        runtime: tokio::runtime::Handle,
        clusters: Vec<(ClusterHandle, BackupSettings)>,
    ) -> anyhow::Result<BackupManager> {
        let mut map = HashMap::new();
        for (handle, settings) in clusters {
            let cb = Arc::new(ClusterBackups {
                handle,
                settings,
                store: OnceLock::new(),
                running: Mutex::new(None),
                failures: Mutex::new(Default::default()),
                verify: Mutex::new(VerifyState::default()),
            });
            map.insert(cb.handle.spec.name.clone(), cb);
        }
        let m = BackupManager {
            ctx,
            runtime,
            clusters: map,
        };
        for cb in m.clusters.values() {
            match m.store(cb) {
                Ok(_) | Err(RegistryError::NotReady) => {}
                Err(e) => anyhow::bail!("cluster {}: backups: {e}", cb.handle.spec.name),
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
            .cluster(name)
            .map_err(internal)?
            .ok_or(RegistryError::NotReady)?;
        let key = self.ctx.data_key(&rec).map_err(internal)?;
        let store = ChunkStore::open(
            &self.ctx.data_dir,
            name.clone(),
            key,
            self.ctx.catalog.clone(),
        )
        .map_err(internal)?;
        let report = store.recover().map_err(internal)?;
        if report.failed_backups > 0 {
            warn!(cluster = %name, backups = report.failed_backups, packs = report.deleted_packs,
                "backups interrupted by the last shutdown were marked failed and their data removed");
        }
        let _ = cb.store.set(store);
        Ok(cb.store.get().expect("just set").clone())
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
        let (id, progress) = self.reserve(&cb, &store, &label, BackupKindView::Stream)?;
        let waiter = self.wal_waiter(&cb);
        let conninfo = cb.settings.conninfo.clone();
        let job_id = id.clone();
        let fut = async move {
            job::stream_backup(&conninfo, &store, job_id, opts, progress, &waiter).await
        };
        self.spawn(cb, id.clone(), fut);
        self.view_of_running(cluster, &id)
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
        let system_id = self
            .ctx
            .catalog
            .cluster(cluster)
            .map_err(internal)?
            .ok_or(RegistryError::NotReady)?
            .system_id;
        let policy = OffloadPolicy {
            roots: &cb.settings.offload_roots,
            system_id,
        };
        let source = offload::scan(&from, &policy).map_err(|e| match e {
            OffloadError::OutsideRoots => RegistryError::Forbidden(e.to_string()),
            other => RegistryError::BadRequest(other.to_string()),
        })?;
        let label = req
            .label
            .or_else(|| source.label.label.clone())
            .unwrap_or_else(|| format!("offload of {}", from.display()));
        validate_label(&label)?;
        let end = match req.end_lsn {
            Some(l) => (
                cb.handle
                    .status
                    .snapshot()
                    .timeline
                    .unwrap_or(TimelineId::FIRST),
                l,
            ),
            None => {
                let s = cb.handle.status.snapshot();
                match (s.timeline, s.flushed) {
                    (Some(t), Some(l)) => (t, l),
                    _ => return Err(RegistryError::NotReady),
                }
            }
        };
        if end.1 < source.label.start_lsn {
            return Err(RegistryError::BadRequest(format!(
                "end LSN {} is before the backup_label's start {}",
                end.1, source.label.start_lsn
            )));
        }
        let (id, progress) = self.reserve(&cb, &store, &label, BackupKindView::Offload)?;
        let waiter = self.wal_waiter(&cb);
        let job_id = id.clone();
        let fut = async move {
            job::offload_backup(source, &store, job_id, label, end, progress, &waiter).await
        };
        self.spawn(cb, id.clone(), fut);
        self.view_of_running(cluster, &id)
    }

    /// Claims the cluster's one backup slot.
    fn reserve(
        &self,
        cb: &ClusterBackups,
        store: &ChunkStore,
        label: &str,
        kind: BackupKindView,
    ) -> Result<(String, Arc<JobProgress>), RegistryError> {
        let mut running = cb.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = running.as_ref() {
            return Err(RegistryError::Conflict(format!(
                "backup {} of cluster {} is still running (one backup at a time per cluster); wait for it or follow it with `klio list backups`",
                r.id, cb.handle.spec.name
            )));
        }
        let id = store.new_backup_id().map_err(internal)?;
        let progress = Arc::new(JobProgress::default());
        *running = Some(Running {
            id: id.clone(),
            label: label.to_string(),
            kind,
            started_at: unix_now(),
            progress: progress.clone(),
        });
        Ok((id, progress))
    }

    fn spawn(
        &self,
        cb: Arc<ClusterBackups>,
        id: String,
        fut: impl std::future::Future<Output = Result<BackupRecord, JobError>> + Send + 'static,
    ) {
        let span = tracing::info_span!("backup", cluster = %cb.handle.spec.name, backup = %id);
        self.runtime.spawn(
            async move {
                info!("base backup started");
                match fut.await {
                    Ok(rec) => info!(
                        logical_bytes = rec.logical_bytes,
                        stored_bytes = rec.stored_bytes,
                        new_bytes = rec.new_bytes,
                        "base backup complete"
                    ),
                    Err(e) => {
                        error!("base backup failed: {e}");
                        cb.failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(id.clone(), e.to_string());
                    }
                }
                *cb.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            .instrument(span),
        );
    }

    fn view_of_running(
        &self,
        cluster: &ClusterName,
        id: &str,
    ) -> Result<BackupView, RegistryError> {
        self.backup(cluster, id)?
            .ok_or_else(|| RegistryError::Internal(format!("backup {id} vanished")))
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
                .map_err(|e| e.to_string())??;
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
            .backups()
            .map_err(internal)?
            .iter()
            .map(|r| record_view(cluster, r))
            .collect();
        let running = cb.running.lock().unwrap_or_else(|e| e.into_inner());
        // A record still `running` whose job is over ended without its outcome recorded.
        let failures = cb.failures.lock().unwrap_or_else(|e| e.into_inner());
        for v in views.iter_mut().filter(|v| {
            v.state == BackupStateView::Running && running.as_ref().is_none_or(|r| r.id != v.id)
        }) {
            v.state = BackupStateView::Failed;
            v.error = Some(match failures.get(&v.id) {
                Some(e) => format!("{e} (not yet recorded in the catalog; the next start does)"),
                None => "the backup ended without recording its outcome; it is not usable, and the next start removes its data".into(),
            });
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
        id: &str,
    ) -> Result<Option<BackupView>, RegistryError> {
        Ok(self.list(cluster)?.into_iter().find(|b| b.id == id))
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
        let backups = store.backups().map_err(internal)?;
        Ok(Some((store, backups)))
    }

    /// Klio's manifest of a complete backup, as JSON.
    pub fn manifest_json(
        &self,
        cluster: &ClusterName,
        id: &str,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let Some((store, backups)) = self.complete_backup(cluster)? else {
            return Ok(None);
        };
        if !backups
            .iter()
            .any(|b| b.id == id && b.state == BackupState::Complete)
        {
            return Ok(None);
        }
        let m = store.read_manifest(id).map_err(corrupt)?;
        Ok(Some(serde_json::to_vec(&m).map_err(internal)?))
    }

    /// PostgreSQL's `backup_manifest` of a complete backup.
    pub fn pg_manifest(
        &self,
        cluster: &ClusterName,
        id: &str,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let Some((store, backups)) = self.complete_backup(cluster)? else {
            return Ok(None);
        };
        if !backups
            .iter()
            .any(|b| b.id == id && b.state == BackupState::Complete)
        {
            return Ok(None);
        }
        store.read_pg_manifest(id).map_err(corrupt)
    }

    /// One chunk of the cluster, decrypted and verified.
    pub fn read_chunk(
        &self,
        cluster: &ClusterName,
        chunk: &str,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let id: klio_core::manifest::ChunkId = chunk
            .parse()
            .map_err(|e: String| RegistryError::BadRequest(e))?;
        let Some((store, _)) = self.complete_backup(cluster)? else {
            return Ok(None);
        };
        match store.read_chunk(&id) {
            Ok(d) => Ok(Some(d)),
            Err(klio_basebackup::store::BackupStoreError::UnknownChunk { .. }) => Ok(None),
            Err(e) => Err(corrupt(e)),
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
        let all = store.backups().map_err(internal)?;
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
            let r = store.verify_backup(&b.id).map_err(internal)?;
            let chain = chain_report(
                &self.ctx.catalog,
                cluster,
                b.start_tli,
                b.start_lsn,
                current,
                None,
            )
            .map_err(RegistryError::Internal)?;
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
                    let started = tokio::task::spawn_blocking(move || {
                        m.start_backup(
                            &n,
                            BackupRequest {
                                label: Some(format!(
                                    "scheduled {}",
                                    klio_core::clock::utc_time(next as u64)
                                )),
                                fast_checkpoint: None,
                                max_rate_kbps: None,
                            },
                        )
                    })
                    .await;
                    match started {
                        Ok(Ok(v)) => {
                            info!(cluster = %name, backup = %v.id, "scheduled backup started")
                        }
                        Ok(Err(e)) => warn!(cluster = %name, "scheduled backup not started: {e}"),
                        Err(e) => warn!(cluster = %name, "scheduled backup not started: {e}"),
                    }
                }
            }));
        }
        tasks
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
) -> Result<walchain::WalChainReport, String> {
    let rec = catalog
        .cluster(cluster)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("cluster {cluster} is not in the catalog"))?;
    let timelines = catalog.timelines(cluster).map_err(|e| e.to_string())?;
    let segments = catalog.segments(cluster).map_err(|e| e.to_string())?;
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

fn state_view(s: BackupState) -> BackupStateView {
    match s {
        BackupState::Running => BackupStateView::Running,
        BackupState::Complete => BackupStateView::Complete,
        BackupState::Failed => BackupStateView::Failed,
    }
}

fn progress_view(p: &JobProgress) -> BackupProgress {
    BackupProgress {
        phase: p.phase().to_string(),
        done_bytes: p.done_bytes(),
        total_bytes: p.total_bytes(),
        elapsed_secs: p.started.elapsed().as_secs_f64(),
    }
}

fn record_view(cluster: &ClusterName, r: &BackupRecord) -> BackupView {
    BackupView {
        cluster: cluster.clone(),
        id: r.id.clone(),
        label: r.label.clone(),
        kind: match r.kind {
            BackupKind::Stream => BackupKindView::Stream,
            BackupKind::Offload => BackupKindView::Offload,
        },
        state: state_view(r.state),
        error: r.error.clone(),
        start_lsn: Some(r.start_lsn),
        start_timeline: Some(r.start_tli.get()),
        end_lsn: r.end_lsn,
        end_timeline: r.end_tli.map(|t| t.get()),
        started_at: r.started_unix,
        finished_at: r.finished_unix,
        pg_version: r.pg_version,
        logical_bytes: r.logical_bytes,
        stored_bytes: r.stored_bytes,
        new_bytes: r.new_bytes,
        files: r.files,
        chunks: r.chunks,
        new_chunks: r.new_chunks,
        progress: None,
    }
}

fn running_view(cluster: &ClusterName, r: &Running) -> BackupView {
    BackupView {
        cluster: cluster.clone(),
        id: r.id.clone(),
        label: r.label.clone(),
        kind: r.kind,
        state: BackupStateView::Running,
        error: None,
        start_lsn: None,
        start_timeline: None,
        end_lsn: None,
        end_timeline: None,
        started_at: r.started_at,
        finished_at: None,
        pg_version: None,
        logical_bytes: 0,
        stored_bytes: 0,
        new_bytes: 0,
        files: 0,
        chunks: 0,
        new_chunks: 0,
        progress: Some(progress_view(&r.progress)),
    }
}
