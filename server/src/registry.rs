//! The seam between the HTTP API and the streaming engine.
//!
//! [`Registry`] is everything the API needs to know about the clusters this server
//! protects: read a stored WAL file (decrypted), list stored WAL, report a cluster's
//! replication status. The engine implements it over Tier 1 and the catalog;
//! [`MemoryRegistry`] is an in-memory implementation for tests and examples. Failures
//! are a typed [`RegistryError`] (`error`) that keeps its source.
//! Nothing here writes to disk.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use klio_core::manifest::ChunkId;
use klio_core::{BackupId, ClusterName, WalFileName};

mod error;
pub use error::{BoxError, ErrorKind, RegistryError, SourceChain};

use klio_api::{
    BackupKindView, BackupProgress, BackupRequest, BackupStateView, BackupView, ClusterStatusView,
    OffloadRequest, UploadRequest, VerifyReport, VerifyRequest, WalEntryView,
};

/// A stored WAL file's plaintext, piece by piece (one frame at a time from Tier 1), so
/// serving it holds one piece in memory. An error ends the stream: what was already
/// handed out must be discarded.
pub struct WalStream {
    /// Total bytes, when known in advance.
    pub len: Option<u64>,
    pub pieces: Box<dyn Iterator<Item = Result<Vec<u8>, RegistryError>> + Send>,
}

impl WalStream {
    /// A stream of one piece.
    pub fn from_bytes(bytes: Vec<u8>) -> WalStream {
        WalStream {
            len: Some(bytes.len() as u64),
            pieces: Box::new(std::iter::once(Ok(bytes))),
        }
    }
}

impl fmt::Debug for WalStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalStream").field("len", &self.len).finish()
    }
}

/// What the API reads from the engine. Calls may block on disk: the HTTP layer runs
/// `read_wal` and `list_wal` on the blocking thread pool.
pub trait Registry: Send + Sync + 'static {
    /// The plaintext of a stored WAL file; `Ok(None)` when it is not stored.
    fn read_wal(
        &self,
        cluster: &ClusterName,
        name: &WalFileName,
    ) -> Result<Option<Vec<u8>>, RegistryError>;

    /// [`Registry::read_wal`] as a stream of pieces (what the API serves).
    fn open_wal(
        &self,
        cluster: &ClusterName,
        name: &WalFileName,
    ) -> Result<Option<WalStream>, RegistryError> {
        Ok(self.read_wal(cluster, name)?.map(WalStream::from_bytes))
    }

    /// Every stored WAL file of the cluster, in name order.
    fn list_wal(&self, cluster: &ClusterName) -> Result<Vec<WalEntryView>, RegistryError>;

    /// The cluster's replication status; `None` when the cluster is not configured.
    fn status(&self, cluster: &ClusterName) -> Option<ClusterStatusView>;

    /// Starts a base backup in the background and returns it as `running`.
    /// [`RegistryError::Conflict`] while another backup of the cluster runs.
    fn start_backup(
        &self,
        cluster: &ClusterName,
        req: BackupRequest,
    ) -> Result<BackupView, RegistryError>;

    /// Starts an offload (a base backup from a directory on the server) in the background.
    fn start_offload(
        &self,
        cluster: &ClusterName,
        req: OffloadRequest,
    ) -> Result<BackupView, RegistryError>;

    /// Starts storing an offload upload whose body arrives on `body` (in the
    /// background, like [`Registry::start_offload`]).
    fn start_upload(
        &self,
        cluster: &ClusterName,
        req: UploadRequest,
        body: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    ) -> Result<BackupView, RegistryError>;

    /// Waits until backup job `id` has ended; its error if it failed.
    fn job_outcome<'a>(
        &'a self,
        _cluster: &'a ClusterName,
        _id: &'a BackupId,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send + 'a>> {
        Box::pin(async { None })
    }

    /// The cluster's backups, oldest first (running and failed ones included).
    fn list_backups(&self, cluster: &ClusterName) -> Result<Vec<BackupView>, RegistryError>;

    /// One backup; `Ok(None)` when there is no such backup.
    fn backup(
        &self,
        cluster: &ClusterName,
        id: &BackupId,
    ) -> Result<Option<BackupView>, RegistryError>;

    /// Klio's manifest of a complete backup (JSON, decrypted); `Ok(None)` if no such
    /// complete backup.
    fn backup_manifest(
        &self,
        cluster: &ClusterName,
        id: &BackupId,
    ) -> Result<Option<Vec<u8>>, RegistryError>;

    /// PostgreSQL's `backup_manifest` of a complete backup; `Ok(None)` if there is none.
    fn pg_backup_manifest(
        &self,
        cluster: &ClusterName,
        id: &BackupId,
    ) -> Result<Option<Vec<u8>>, RegistryError>;

    /// One chunk's plaintext, verified; `Ok(None)` if the cluster has no such chunk.
    fn read_chunk(
        &self,
        cluster: &ClusterName,
        chunk: &ChunkId,
    ) -> Result<Option<Vec<u8>>, RegistryError>;

    /// Reads back and checks every chunk of the backup(s), their manifests and the WAL
    /// chain to the newest stored WAL. May take long; runs on the blocking pool.
    fn verify(
        &self,
        cluster: &ClusterName,
        req: VerifyRequest,
    ) -> Result<VerifyReport, RegistryError>;

    /// Queues Tier 2 dead letters again (`klio tier2 retry`).
    fn tier2_retry(
        &self,
        cluster: &ClusterName,
        req: klio_api::Tier2RetryRequest,
    ) -> Result<klio_api::Tier2RetryReport, RegistryError> {
        let _ = (cluster, req);
        Err(RegistryError::Conflict(TIER2_NOT_CONFIGURED.into()))
    }

    /// Applies retention now, or with `dry_run` says what it would remove
    /// (`klio retention show|apply`).
    fn retention(
        &self,
        cluster: &ClusterName,
        req: klio_api::RetentionRequest,
    ) -> Result<klio_api::RetentionReport, RegistryError> {
        let _ = (cluster, req);
        Err(RegistryError::Conflict(
            "retention is not available on this server".into(),
        ))
    }

    /// Scans Tier 2 for what the writing server added (`klio tier2 rescan`; read-only
    /// servers only).
    fn tier2_rescan(
        &self,
        cluster: &ClusterName,
    ) -> Result<klio_api::Tier2RescanReport, RegistryError> {
        let _ = cluster;
        Err(RegistryError::Conflict(TIER2_NOT_CONFIGURED.into()))
    }
}

/// The answer to a Tier 2 request on a server without `[tier2]`.
pub const TIER2_NOT_CONFIGURED: &str =
    "Tier 2 is not configured on this server: add a [tier2] table (url = \"s3://bucket/prefix\"...) to its configuration and restart it";

/// The answer to `tier2 rescan` on a server that writes the bucket.
pub const RESCAN_ON_WRITER: &str =
    "rescan is for read-only servers (mode = \"read-only\"): this server writes the bucket and already knows what it holds";

/// An in-memory [`Registry`] for tests: clusters, WAL files and failure modes set by hand.
#[derive(Default)]
pub struct MemoryRegistry {
    clusters: Mutex<HashMap<ClusterName, MemoryCluster>>,
    calls: AtomicUsize,
}

struct MemoryCluster {
    status: ClusterStatusView,
    backups: Vec<BackupView>,
    wal: BTreeMap<WalFileName, Vec<u8>>,
    ready: bool,
    corrupt: HashSet<WalFileName>,
}

impl MemoryRegistry {
    pub fn new() -> MemoryRegistry {
        MemoryRegistry::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<ClusterName, MemoryCluster>) -> T) -> T {
        let mut guard = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    /// Adds (or replaces) a cluster with this status; it is ready and holds no WAL.
    pub fn add_cluster(&self, status: ClusterStatusView) {
        self.with(|m| {
            m.insert(
                status.cluster.clone(),
                MemoryCluster {
                    status,
                    backups: Vec::new(),
                    wal: BTreeMap::new(),
                    ready: true,
                    corrupt: HashSet::new(),
                },
            )
        });
    }

    /// Stores a WAL file. Panics if the cluster was not added (test misuse).
    pub fn put_wal(&self, cluster: &ClusterName, name: WalFileName, bytes: Vec<u8>) {
        self.with(|m| {
            m.get_mut(cluster)
                .expect("MemoryRegistry::put_wal: add the cluster first")
                .wal
                .insert(name, bytes)
        });
    }

    /// Makes reads of the cluster fail with [`RegistryError::NotReady`] (or succeed again).
    pub fn set_ready(&self, cluster: &ClusterName, ready: bool) {
        self.with(|m| {
            if let Some(c) = m.get_mut(cluster) {
                c.ready = ready;
            }
        });
    }

    /// Makes reads of this file fail verification as a read racing the writer of the
    /// open segment can ([`ErrorKind::Unsettled`]: a 500 that a retry may clear).
    pub fn corrupt_wal(&self, cluster: &ClusterName, name: WalFileName) {
        self.with(|m| {
            if let Some(c) = m.get_mut(cluster) {
                c.corrupt.insert(name);
            }
        });
    }

    /// Marks every running backup of the cluster complete (with made-up sizes).
    pub fn finish_backups(&self, cluster: &ClusterName) {
        self.with(|m| {
            if let Some(c) = m.get_mut(cluster) {
                for b in c
                    .backups
                    .iter_mut()
                    .filter(|b| b.state == BackupStateView::Running)
                {
                    b.state = BackupStateView::Complete;
                    b.progress = None;
                    b.finished_at = Some(b.started_at + 1);
                    b.logical_bytes = 1000;
                    b.stored_bytes = 100;
                    b.new_bytes = 100;
                }
            }
        });
    }

    /// How many `read_wal`/`list_wal` calls were made: lets tests assert the API
    /// rejected a request without touching the registry.
    pub fn data_calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Registry for MemoryRegistry {
    fn read_wal(
        &self,
        cluster: &ClusterName,
        name: &WalFileName,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.with(|m| {
            let Some(c) = m.get(cluster) else {
                return Ok(None);
            };
            if !c.ready {
                return Err(RegistryError::NotReady);
            }
            if c.corrupt.contains(name) {
                return Err(RegistryError::Corrupt {
                    source: format!("{cluster}/{name}: frame 0 failed authentication").into(),
                    settled: false,
                });
            }
            Ok(c.wal.get(name).cloned())
        })
    }

    fn list_wal(&self, cluster: &ClusterName) -> Result<Vec<WalEntryView>, RegistryError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.with(|m| {
            let Some(c) = m.get(cluster) else {
                return Ok(Vec::new());
            };
            if !c.ready {
                return Err(RegistryError::NotReady);
            }
            Ok(c.wal
                .iter()
                .map(|(name, bytes)| WalEntryView {
                    name: *name,
                    plain_size: bytes.len() as u64,
                    stored_size: bytes.len() as u64 / 4,
                })
                .collect())
        })
    }

    fn status(&self, cluster: &ClusterName) -> Option<ClusterStatusView> {
        self.with(|m| m.get(cluster).map(|c| c.status.clone()))
    }

    fn start_backup(
        &self,
        cluster: &ClusterName,
        req: BackupRequest,
    ) -> Result<BackupView, RegistryError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.new_backup(cluster, req.label, BackupKindView::Stream)
    }

    fn start_offload(
        &self,
        cluster: &ClusterName,
        req: OffloadRequest,
    ) -> Result<BackupView, RegistryError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if !req.from.starts_with('/') {
            return Err(RegistryError::BadRequest(format!(
                "offload source {:?} is not an absolute path",
                req.from
            )));
        }
        self.new_backup(cluster, req.label, BackupKindView::Offload)
    }

    fn start_upload(
        &self,
        cluster: &ClusterName,
        req: UploadRequest,
        mut body: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    ) -> Result<BackupView, RegistryError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move { while body.recv().await.is_some() {} });
        self.new_backup(cluster, req.label, BackupKindView::Offload)
    }

    fn list_backups(&self, cluster: &ClusterName) -> Result<Vec<BackupView>, RegistryError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(self.with(|m| {
            m.get(cluster)
                .map(|c| c.backups.clone())
                .unwrap_or_default()
        }))
    }

    fn backup(
        &self,
        cluster: &ClusterName,
        id: &BackupId,
    ) -> Result<Option<BackupView>, RegistryError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(self.with(|m| {
            m.get(cluster)
                .and_then(|c| c.backups.iter().find(|b| &b.id == id).cloned())
        }))
    }

    fn backup_manifest(
        &self,
        _cluster: &ClusterName,
        _id: &BackupId,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(None)
    }

    fn pg_backup_manifest(
        &self,
        _cluster: &ClusterName,
        _id: &BackupId,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(None)
    }

    fn read_chunk(
        &self,
        _cluster: &ClusterName,
        _chunk: &ChunkId,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(None)
    }

    fn verify(
        &self,
        cluster: &ClusterName,
        req: VerifyRequest,
    ) -> Result<VerifyReport, RegistryError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let backups = self.list_backups(cluster)?;
        if let Some(id) = &req.backup {
            if !backups.iter().any(|b| &b.id == id) {
                return Err(RegistryError::NotFound(format!(
                    "cluster {cluster} has no backup {id:?}"
                )));
            }
        }
        Ok(VerifyReport {
            cluster: cluster.clone(),
            ok: true,
            backups: Vec::new(),
        })
    }
}

impl MemoryRegistry {
    fn new_backup(
        &self,
        cluster: &ClusterName,
        label: Option<String>,
        kind: BackupKindView,
    ) -> Result<BackupView, RegistryError> {
        self.with(|m| {
            let c = m.get_mut(cluster).ok_or(RegistryError::NotReady)?;
            if let Some(r) = c
                .backups
                .iter()
                .find(|b| b.state == BackupStateView::Running)
            {
                return Err(RegistryError::Conflict(format!(
                    "backup {} of cluster {cluster} is still running",
                    r.id
                )));
            }
            let n = c.backups.len() + 1;
            let view = BackupView {
                cluster: cluster.clone(),
                id: format!("20260101T00000{n}Z")
                    .parse()
                    .map_err(|e| RegistryError::internal("a test backup id", e))?,
                label: label.unwrap_or_else(|| format!("backup {n}")),
                kind,
                state: BackupStateView::Running,
                error: None,
                start_lsn: None,
                start_timeline: None,
                end_lsn: None,
                end_timeline: None,
                started_at: 1_767_225_600,
                finished_at: None,
                pg_version: None,
                logical_bytes: 0,
                stored_bytes: 0,
                new_bytes: 0,
                files: 0,
                chunks: 0,
                new_chunks: 0,
                progress: Some(BackupProgress {
                    phase: "connecting".into(),
                    done_bytes: 0,
                    total_bytes: None,
                    elapsed_secs: 0.0,
                }),
                tiers: None,
            };
            c.backups.push(view.clone());
            Ok(view)
        })
    }
}
