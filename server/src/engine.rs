//! The Klio Server proper: checks the master key, reconciles each cluster's Tier 1
//! store, starts one receiver per configured cluster and the HTTP API, and
//! supervises them until SIGTERM/SIGINT.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use klio_core::manifest::ChunkId;
use klio_core::{BackupId, ClusterName, WalFileName};
use klio_pgwire::conninfo::ConnInfo;
use klio_receiver::cluster::{
    prepare_cluster, run_cluster, ClusterHandle, ClusterSpec, ServerContext,
};
use tokio::sync::watch;

use crate::backups::{BackupManager, BackupSettings};
use crate::config::MetricsAccess;
use crate::config::{Config, ServerMode, DEFAULT_APPLICATION_NAME, READ_ONLY_REFUSAL};
use crate::http::{metrics_router, router, AppState};
use crate::registry::{Registry, RegistryError, SourceChain, WalStream};
use crate::serve::{serve, shutdown_signal, ServeLimits};
use crate::tier2::{storage_status, Tier2Relays};
use klio_api::{ClusterStatusView, ConnectionState, WalEntryView};
use klio_core::layout::DataDir;

/// A cluster's relay starts no uploads while its WAL intake is more than this behind the
/// primary (catching up).
const RELAY_YIELD_LAG: u64 = 16 << 20;

/// Longest time between two standby status updates.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// Builds the receiver's spec for a configured cluster (a read-only server's clusters
/// have an empty conninfo, which is never used).
pub fn cluster_spec(c: &crate::config::ClusterConfig) -> anyhow::Result<ClusterSpec> {
    let mut conninfo =
        ConnInfo::parse(&c.conninfo).map_err(|e| anyhow!("cluster {}: conninfo: {e}", c.name))?;
    if c.application_name != DEFAULT_APPLICATION_NAME {
        conninfo.application_name = c.application_name.clone();
    }
    Ok(ClusterSpec {
        name: c.name.clone(),
        conninfo,
        slot: c.slot.clone(),
        status_interval: STATUS_INTERVAL,
    })
}

/// Backup settings of a configured cluster: `BASE_BACKUP` runs on its own replication
/// connection, named `<application_name>-backup` so it is never mistaken for the
/// streaming standby in `synchronous_standby_names`.
fn backup_settings(c: &crate::config::ClusterConfig) -> anyhow::Result<BackupSettings> {
    let mut conninfo =
        ConnInfo::parse(&c.conninfo).map_err(|e| anyhow!("cluster {}: conninfo: {e}", c.name))?;
    conninfo.application_name = format!("{}-backup", c.application_name);
    Ok(BackupSettings {
        conninfo,
        fast_checkpoint: c.backup_fast_checkpoint,
        schedule: c.backup_schedule.clone(),
        offload_roots: c.offload_roots.clone(),
        offload_uploads: c.offload_uploads,
        fallback: None,
    })
}

/// Runs the server described by `config` until SIGTERM/SIGINT.
pub async fn run_server(config: Config) -> anyhow::Result<()> {
    run_server_until(config, shutdown_signal()).await
}

/// Runs a cluster's receiver on its own thread with a single-threaded runtime: the
/// synchronous-standby path (socket read, write, fdatasync, status update out) then never crosses the shared runtime's worker
/// threads, which on a busy host costs wake-ups and CPU in every commit's round trip.
/// Returns a task on the current runtime that completes when the receiver has stopped.
fn spawn_receiver(
    fut: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build a receiver runtime")?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("klio-receiver".into())
        .spawn(move || {
            rt.block_on(fut);
            let _ = done_tx.send(());
        })
        .context("cannot start a receiver thread")?;
    Ok(tokio::spawn(async move {
        let _ = done_rx.await;
    }))
}

/// File descriptors kept out of the API's reach: the WAL writers, the catalog, backup
/// packs and restores being served always have these.
const RESERVED_FDS: u64 = 1024;
const RESERVED_FDS_PER_CLUSTER: u64 = 64;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the limit in force.
fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard {
                if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                    tracing::warn!(soft, hard, error = %e, "cannot raise the open-files limit");
                    return soft;
                }
            }
            hard.max(soft)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-files limit");
            1024
        }
    }
}

/// The API's limits: the configured connection limit, lowered if the open-files limit
/// would not leave the reserve for everything else.
fn api_limits(config: &Config, nofile: u64) -> ServeLimits {
    let reserve = RESERVED_FDS + RESERVED_FDS_PER_CLUSTER * config.clusters.len() as u64;
    let room = usize::try_from(nofile.saturating_sub(reserve))
        .unwrap_or(usize::MAX)
        .max(16);
    let max_connections = if config.api_max_connections > room {
        tracing::warn!(
            configured = config.api_max_connections,
            used = room,
            open_files_limit = nofile,
            "api_max_connections lowered so the WAL writers keep file descriptors; raise the open-files limit (ulimit -n) to allow more"
        );
        room
    } else {
        config.api_max_connections
    };
    ServeLimits {
        max_connections,
        header_timeout: config.api_header_timeout,
        ..ServeLimits::default()
    }
}

/// Runs the server until `shutdown` completes (the demo and tests stop it this way).
pub async fn run_server_until(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let master = config.load_master_key()?;
    let nofile = raise_nofile_limit();
    if config.tls.is_none() && !config.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %config.listen,
            "the API listens on a non-loopback address without [tls]: bearer tokens and backups cross the network in clear text; configure [tls] (cert_file, key_file)"
        );
    }
    let specs = config
        .clusters
        .iter()
        .map(cluster_spec)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let data_dir = config.data_dir.clone();
    let read_only = config.mode == ServerMode::ReadOnly;
    let tier2 = match &config.tier2 {
        Some(settings) => {
            let t2 = klio_tiering::Tier2::open(settings).context("[tier2]")?;
            Some(Arc::new(if read_only { t2.read_only() } else { t2 }))
        }
        None => None,
    };
    let relay_to_tier2 = tier2.is_some() && !read_only;
    crate::keyrotate::finish_pending(&config, &master, tier2.as_deref()).await?;
    let (ctx, handles) = tokio::task::spawn_blocking(move || {
        let mut ctx = ServerContext::open(&data_dir, master)?;
        ctx.relay_to_tier2 = relay_to_tier2;
        let handles = specs
            .into_iter()
            .map(|s| prepare_cluster(&ctx, s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, klio_receiver::cluster::StartupError>((Arc::new(ctx), handles))
    })
    .await?
    .context("startup")?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (the `listen` setting)", config.listen))?;
    let metrics_listener = match &config.metrics {
        MetricsAccess::Listen(addr) => {
            Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} (the `metrics_listen` setting)")
            })?)
        }
        _ => None,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let names = || handles.iter().map(|h| h.spec.name.clone());
    let data = DataDir::new(&ctx.data_dir);
    let tier2 = if read_only {
        for h in &handles {
            h.status.set_state(ConnectionState::ReadOnly, None);
        }
        let t2 = tier2.context("a read-only server needs [tier2]")?;
        tracing::info!(tier2 = %t2, clusters = handles.len(), "read-only server: serving what Tier 2 holds, streaming nothing");
        Some(Tier2Relays::read_only(
            t2,
            ctx.catalog.clone(),
            &data,
            names(),
        ))
    } else {
        for h in &handles {
            tasks.push(spawn_receiver(run_cluster(
                ctx.clone(),
                h.clone(),
                stop_rx.clone(),
            ))?);
        }
        // WAL intake first: while a cluster connects, or streams without knowing yet how
        // far its primary is, or catches up (more than a segment behind), its relay
        // starts no new uploads.
        let busy = |h: &ClusterHandle| -> klio_tiering::relay::YieldTo {
            let status = h.status.clone();
            Arc::new(move || {
                let s = status.snapshot();
                match (s.state, s.primary, s.flushed) {
                    (ConnectionState::Connecting, _, _) => true,
                    (ConnectionState::Streaming, None, _) => true,
                    (_, Some(p), Some(f)) => p.0.saturating_sub(f.0) > RELAY_YIELD_LAG,
                    _ => false,
                }
            })
        };
        let relays = handles.iter().map(|h| (h.spec.name.clone(), busy(h)));
        tier2.map(|t2| {
            let (relays, relay_tasks) =
                Tier2Relays::start(t2, ctx.catalog.clone(), &data, relays, &stop_rx);
            tasks.extend(relay_tasks);
            relays
        })
    };
    let mut backup_settings = config
        .clusters
        .iter()
        .map(backup_settings)
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(t) = &tier2 {
        for (settings, c) in backup_settings.iter_mut().zip(&config.clusters) {
            settings.fallback = t
                .reader(&c.name)
                .map(|r| r as Arc<dyn klio_basebackup::store::ObjectSource>);
        }
    }
    let backups = {
        let (ctx, runtime) = (ctx.clone(), tokio::runtime::Handle::current());
        let clusters: Vec<_> = handles.iter().cloned().zip(backup_settings).collect();
        Arc::new(
            tokio::task::spawn_blocking(move || BackupManager::open(ctx, runtime, clusters))
                .await??,
        )
    };
    if !read_only {
        backups.set_retainer(Arc::new(crate::retention::Retainer::new(
            config.retention,
            tier2.as_ref().map(|t| t.tier2().clone()),
            ctx.catalog.clone(),
            DataDir::new(&ctx.data_dir),
            tokio::runtime::Handle::current(),
        )));
    }
    if !read_only {
        let b = backups.clone();
        let advice: klio_receiver::cluster::DiskFullAdvice =
            Arc::new(move |cluster: &ClusterName| b.disk_full_advice(cluster));
        let _ = ctx.disk_full_advice.set(advice);
    }
    tasks.extend(backups.spawn_schedules(stop_rx.clone()));
    tasks.extend(backups.spawn_retention(stop_rx.clone()));
    let registry = Arc::new(EngineRegistry {
        figures: Default::default(),
        ctx: ctx.clone(),
        read_only,
        tier2,
        clusters: handles
            .into_iter()
            .map(|h| (h.spec.name.clone(), h))
            .collect(),
        backups,
    });
    if read_only {
        // What the bucket holds now; a later `klio tier2 rescan` adds what came since.
        // A bucket that is unreachable leaves the catalog as earlier runs left it.
        for name in registry.clusters.keys() {
            let r = registry.clone();
            let n = name.clone();
            let report = tokio::task::spawn_blocking(move || r.rescan_cluster(&n)).await?;
            if let Err(RegistryError::Conflict(refused)) = report {
                anyhow::bail!("cluster {name}: {refused}");
            }
        }
    }
    if read_only {
        let (r, every, mut stop) = (registry.clone(), config.rescan_interval, stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                let names: Vec<ClusterName> = r.clusters.keys().cloned().collect();
                for name in names {
                    let r = r.clone();
                    // Failures are logged and shown in the status by rescan_cluster.
                    let _ = tokio::task::spawn_blocking(move || r.rescan_cluster(&name)).await;
                }
            }
        }));
    }
    let state = AppState::new(registry, config.tokens()).with_metrics(config.metrics.clone());
    let metrics_server = metrics_listener.map(|l| {
        let mut stopped = stop_rx.clone();
        tokio::spawn(serve(
            l,
            None,
            metrics_router(state.clone()),
            ServeLimits {
                max_connections: 32,
                ..ServeLimits::default()
            },
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ))
    });
    let app = router(state);
    let stop = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let serve = serve(
        listener,
        config.tls.clone(),
        app,
        api_limits(&config, nofile),
        stop,
    )
    .await;
    if let Some(m) = metrics_server {
        let _ = m.await;
    }
    for t in tasks {
        if tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .is_err()
        {
            tracing::warn!("a cluster receiver did not stop within 30 s");
        }
    }
    serve.context("HTTP API")?;
    tracing::info!("server stopped");
    Ok(())
}

impl EngineRegistry {
    /// Refuses a request that would write, on a read-only server.
    fn writable(&self) -> Result<(), RegistryError> {
        match self.read_only {
            true => Err(RegistryError::Conflict(READ_ONLY_REFUSAL.into())),
            false => Ok(()),
        }
    }

    /// A read-only server's scan of Tier 2 for `cluster`: records what is new, opens the
    /// cluster's store once the bucket holds it, and keeps the report for the status.
    /// A bucket that refuses this server (wrong master key, another cluster) is a
    /// `Conflict` naming the cause.
    fn rescan_cluster(
        &self,
        cluster: &ClusterName,
    ) -> Result<klio_api::Tier2RescanReport, RegistryError> {
        let Some(t2) = self.tier2.as_ref().filter(|t| t.is_read_only()) else {
            return Err(RegistryError::Conflict(match self.tier2 {
                Some(_) => crate::registry::RESCAN_ON_WRITER.into(),
                None => crate::registry::TIER2_NOT_CONFIGURED.into(),
            }));
        };
        let handle = self
            .clusters
            .get(cluster)
            .ok_or_else(|| RegistryError::NotFound(format!("unknown cluster {cluster}")))?;
        let runtime = tokio::runtime::Handle::current();
        let outcome = crate::tier2::block_on(
            &runtime,
            crate::rescan::rescan(t2.tier2(), &self.ctx, cluster),
        );
        let report = match outcome {
            Ok(report) => report,
            Err(e) => {
                let message = SourceChain(&e).to_string();
                tracing::error!(cluster = %cluster, error = %message, "Tier 2 rescan failed");
                t2.set_rescan(
                    cluster,
                    klio_api::Tier2RescanReport {
                        at: klio_core::clock::unix_now(),
                        error: Some(message),
                        ..Default::default()
                    },
                );
                return Err(match e {
                    crate::rescan::RescanError::Refused(m) => RegistryError::Conflict(m),
                    other => RegistryError::internal("rescanning Tier 2", other),
                });
            }
        };
        handle
            .open_known_store(&self.ctx)
            .map_err(|e| RegistryError::internal("opening the cluster's store", e))?;
        t2.set_rescan(cluster, report.clone());
        if !report.cluster_found {
            tracing::warn!(cluster = %cluster, tier2 = %t2.tier2(), "the bucket does not hold this cluster (no cluster.json) yet: nothing to restore until the writing server has relayed it");
        }
        Ok(report)
    }

    /// Sets which tiers hold a complete backup (only on a server with Tier 2).
    fn mark_tiers(
        &self,
        cluster: &ClusterName,
        v: &mut klio_api::BackupView,
    ) -> Result<(), RegistryError> {
        if self.tier2.is_none() || v.state != klio_api::BackupStateView::Complete {
            return Ok(());
        }
        let tier1 = DataDir::new(&self.ctx.data_dir)
            .backups(cluster)
            .backup(&v.id)
            .is_some_and(|d| d.manifest().is_file());
        let tier2 = self
            .ctx
            .catalog
            .tier2_object(
                cluster,
                klio_catalog::RelayKind::BackupManifest,
                v.id.as_str(),
            )?
            .is_some();
        v.tiers = Some(klio_api::BackupTiers { tier1, tier2 });
        Ok(())
    }

    /// A final WAL file Tier 1 does not hold, read from Tier 2 when it has it.
    fn tier2_wal(
        &self,
        cluster: &ClusterName,
        store: &klio_receiver::wal_store::WalStore,
        name: &WalFileName,
    ) -> Result<Option<klio_receiver::wal_store::WalReader>, RegistryError> {
        let Some(reader) = self.tier2.as_ref().and_then(|t| t.reader(cluster)) else {
            return Ok(None);
        };
        let Some((object, origin)) = reader
            .wal(name)
            .map_err(|e| RegistryError::internal("reading WAL from Tier 2", e))?
        else {
            return Ok(None);
        };
        store
            .open_read_copy(name, object, origin)
            .map(Some)
            .map_err(RegistryError::Wal)
    }
}

/// [`Registry`] over the real receivers and Tier 1 stores.
pub struct EngineRegistry {
    ctx: Arc<ServerContext>,
    /// Per cluster, the storage and Tier 2 figures of the status (catalog scans), reused
    /// while the catalog has not changed for at most [`FIGURES_MAX_AGE`].
    figures: std::sync::Mutex<HashMap<ClusterName, Figures>>,
    /// `mode = "read-only"`: every write is refused.
    read_only: bool,
    clusters: HashMap<ClusterName, ClusterHandle>,
    backups: Arc<BackupManager>,
    tier2: Option<Tier2Relays>,
}

/// How long the status's catalog-derived figures are reused while the catalog does not
/// change (files Tier 1 retention deletes change no record at once).
const FIGURES_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(1);

/// A cluster's catalog-derived status figures and when they were computed.
struct Figures {
    sequence: u64,
    at: std::time::Instant,
    storage: klio_api::StorageStatus,
    tier2: Option<klio_api::Tier2Status>,
}

impl EngineRegistry {
    /// What the tiers store and Tier 2's backlog: catalog scans, so computed again only
    /// once the catalog changed or the last figures are [`FIGURES_MAX_AGE`] old (a
    /// status polled every few milliseconds would otherwise take CPU from WAL intake).
    fn figures(
        &self,
        cluster: &ClusterName,
    ) -> (klio_api::StorageStatus, Option<klio_api::Tier2Status>) {
        let sequence = self.ctx.catalog.sequence();
        let mut cache = self.figures.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = cache.get(cluster) {
            if f.sequence == sequence && f.at.elapsed() < FIGURES_MAX_AGE {
                return (f.storage, f.tier2.clone());
            }
        }
        let storage = storage_status(
            &self.ctx.catalog,
            &DataDir::new(&self.ctx.data_dir),
            cluster,
        )
        .unwrap_or_else(|e| {
            tracing::warn!(cluster = %cluster, error = %e, "cannot read what the tiers store");
            Default::default()
        });
        let tier2 = self.tier2.as_ref().and_then(|t| {
            t.status(cluster)
                .map_err(|e| tracing::warn!(cluster = %cluster, error = %e, "cannot read the Tier 2 backlog"))
                .ok()
        });
        cache.insert(
            cluster.clone(),
            Figures {
                sequence,
                at: std::time::Instant::now(),
                storage,
                tier2: tier2.clone(),
            },
        );
        (storage, tier2)
    }
}

impl Registry for EngineRegistry {
    fn read_wal(
        &self,
        cluster: &ClusterName,
        name: &WalFileName,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let Some(h) = self.clusters.get(cluster) else {
            return Ok(None);
        };
        let store = h.store().ok_or(RegistryError::NotReady)?;
        match store.read(name).map_err(RegistryError::Wal)? {
            Some(bytes) => Ok(Some(bytes)),
            None => match self.tier2_wal(cluster, &store, name)? {
                Some(reader) => reader.read_all().map(Some).map_err(RegistryError::Wal),
                None => Ok(None),
            },
        }
    }

    fn open_wal(
        &self,
        cluster: &ClusterName,
        name: &WalFileName,
    ) -> Result<Option<WalStream>, RegistryError> {
        let Some(h) = self.clusters.get(cluster) else {
            return Ok(None);
        };
        let store = h.store().ok_or(RegistryError::NotReady)?;
        let reader = match store.open_read(name).map_err(RegistryError::Wal)? {
            Some(r) => Some(r),
            None => self.tier2_wal(cluster, &store, name)?,
        };
        let Some(mut reader) = reader else {
            return Ok(None);
        };
        Ok(Some(WalStream {
            len: reader.known_len(),
            pieces: Box::new(std::iter::from_fn(move || {
                reader.next_piece().map_err(RegistryError::Wal).transpose()
            })),
        }))
    }

    fn list_wal(&self, cluster: &ClusterName) -> Result<Vec<WalEntryView>, RegistryError> {
        let Some(h) = self.clusters.get(cluster) else {
            return Ok(Vec::new());
        };
        let Some(store) = h.store() else {
            return Ok(Vec::new());
        };
        let mut out: Vec<WalEntryView> = store
            .list()
            .map_err(RegistryError::Wal)?
            .into_iter()
            .map(|e| WalEntryView {
                name: e.name,
                plain_size: e.plain_size,
                stored_size: e.stored_size,
            })
            .collect();
        out.sort_by_key(|e| e.name.to_string());
        Ok(out)
    }

    fn status(&self, cluster: &ClusterName) -> Option<ClusterStatusView> {
        let h = self.clusters.get(cluster)?;
        let s = h.status.snapshot();
        let (storage, tier2) = self.figures(cluster);
        Some(ClusterStatusView {
            cluster: cluster.clone(),
            system_id: s.system_id.map(|v| v.to_string()),
            timeline: s.timeline,
            state: s.state,
            last_error: s.last_error,
            received_lsn: s.received,
            flushed_lsn: s.flushed,
            primary_lsn: s.primary,
            lag_bytes: match (s.primary, s.flushed) {
                (Some(p), Some(f)) => Some(p.checked_sub(f).unwrap_or(0)),
                _ => None,
            },
            sealed_segments: s.sealed_segments,
            disk_full: s.disk_full,
            wal_fsyncs: s.wal_flushes,
            wal_fsync_micros: s.wal_flush_nanos / 1000,
            wal_recompressed_from_memory: s.recompressed_from_memory,
            wal_recompressed_from_file: s.recompressed_from_file,
            backups: self.backups.status(cluster),
            storage,
            tier2,
        })
    }

    fn start_backup(
        &self,
        cluster: &ClusterName,
        req: klio_api::BackupRequest,
    ) -> Result<klio_api::BackupView, RegistryError> {
        self.writable()?;
        self.backups.start_backup(cluster, req)
    }

    fn start_offload(
        &self,
        cluster: &ClusterName,
        req: klio_api::OffloadRequest,
    ) -> Result<klio_api::BackupView, RegistryError> {
        self.writable()?;
        self.backups.start_offload(cluster, req)
    }

    fn start_upload(
        &self,
        cluster: &ClusterName,
        req: klio_api::UploadRequest,
        body: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    ) -> Result<klio_api::BackupView, RegistryError> {
        self.writable()?;
        self.backups.start_upload(cluster, req, body)
    }

    fn job_outcome<'a>(
        &'a self,
        cluster: &'a ClusterName,
        id: &'a BackupId,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send + 'a>> {
        Box::pin(self.backups.job_outcome(cluster, id))
    }

    fn list_backups(
        &self,
        cluster: &ClusterName,
    ) -> Result<Vec<klio_api::BackupView>, RegistryError> {
        let mut list = self.backups.list(cluster)?;
        for v in &mut list {
            self.mark_tiers(cluster, v)?;
        }
        Ok(list)
    }

    fn backup(
        &self,
        cluster: &ClusterName,
        id: &BackupId,
    ) -> Result<Option<klio_api::BackupView>, RegistryError> {
        let mut view = self.backups.backup(cluster, id)?;
        if let Some(v) = view.as_mut() {
            self.mark_tiers(cluster, v)?;
        }
        Ok(view)
    }

    fn backup_manifest(
        &self,
        cluster: &ClusterName,
        id: &BackupId,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        self.backups.manifest_json(cluster, id)
    }

    fn pg_backup_manifest(
        &self,
        cluster: &ClusterName,
        id: &BackupId,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        self.backups.pg_manifest(cluster, id)
    }

    fn read_chunk(
        &self,
        cluster: &ClusterName,
        chunk: &ChunkId,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        self.backups.read_chunk(cluster, chunk)
    }

    fn verify(
        &self,
        cluster: &ClusterName,
        req: klio_api::VerifyRequest,
    ) -> Result<klio_api::VerifyReport, RegistryError> {
        self.backups.verify(cluster, req)
    }

    fn tier2_retry(
        &self,
        cluster: &ClusterName,
        req: klio_api::Tier2RetryRequest,
    ) -> Result<klio_api::Tier2RetryReport, RegistryError> {
        if !self.clusters.contains_key(cluster) {
            return Err(RegistryError::NotFound(format!(
                "unknown cluster {cluster}"
            )));
        }
        self.writable()?;
        match &self.tier2 {
            Some(t) => t.retry(cluster, &req),
            None => Err(RegistryError::Conflict(
                crate::registry::TIER2_NOT_CONFIGURED.into(),
            )),
        }
    }

    fn tier2_rescan(
        &self,
        cluster: &ClusterName,
    ) -> Result<klio_api::Tier2RescanReport, RegistryError> {
        self.rescan_cluster(cluster)
    }

    fn retention(
        &self,
        cluster: &ClusterName,
        req: klio_api::RetentionRequest,
    ) -> Result<klio_api::RetentionReport, RegistryError> {
        if !req.dry_run {
            self.writable()?;
        }
        if self.read_only {
            return Err(RegistryError::Conflict(READ_ONLY_REFUSAL.into()));
        }
        self.backups.retention(cluster, req)
    }
}
