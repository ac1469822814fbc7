//! The HTTP API's wire types, shared by the server ([`crate::http`]) and the client
//! ([`crate::client`]). JSON bodies; LSNs as `X/Y` strings, WAL names as PostgreSQL
//! spells them.

use klio_core::{ClusterName, Lsn};
use serde::{Deserialize, Serialize};

use crate::registry::{ClusterStatusView, WalEntryView};

/// Body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /v1/status`: the clusters the presented token may see, in name order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusList {
    pub clusters: Vec<ClusterStatusView>,
}

/// `GET /v1/clusters/{cluster}/wal`: stored WAL files in name order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalList {
    pub cluster: ClusterName,
    pub files: Vec<WalEntryView>,
}

/// What a base backup is made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKindView {
    /// `BASE_BACKUP` over a replication connection.
    Stream,
    /// A directory of files (a volume snapshot's PGDATA with its `backup_label`).
    Offload,
}

/// Where a base backup is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupStateView {
    /// Receiving data, or waiting for the WAL up to its end position.
    Running,
    /// Restorable: every file and the WAL from its start to its end are in Tier 1.
    Complete,
    /// Failed or interrupted; it holds no data (`error` says why).
    Failed,
}

impl BackupStateView {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupStateView::Running => "running",
            BackupStateView::Complete => "complete",
            BackupStateView::Failed => "failed",
        }
    }
}

/// Live figures of a running backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupProgress {
    /// `connecting`, `streaming`, `waiting-for-wal`, `committing`.
    pub phase: String,
    /// Bytes received so far.
    pub done_bytes: u64,
    /// PostgreSQL's estimate of the total (absent until known).
    pub total_bytes: Option<u64>,
    pub elapsed_secs: f64,
}

/// One base backup (`GET /v1/clusters/{cluster}/backups/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupView {
    pub cluster: ClusterName,
    pub id: String,
    pub label: String,
    pub kind: BackupKindView,
    pub state: BackupStateView,
    pub error: Option<String>,
    pub start_lsn: Option<Lsn>,
    pub start_timeline: Option<u32>,
    pub end_lsn: Option<Lsn>,
    pub end_timeline: Option<u32>,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    pub finished_at: Option<u64>,
    pub pg_version: Option<u32>,
    /// Size of the files as PostgreSQL sent them.
    pub logical_bytes: u64,
    /// Tier 1 bytes of every chunk the backup references (shared ones included).
    pub stored_bytes: u64,
    /// Tier 1 bytes this backup added (chunks no earlier backup had).
    pub new_bytes: u64,
    pub files: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    /// Present while running.
    pub progress: Option<BackupProgress>,
}

/// `GET /v1/clusters/{cluster}/backups`: oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupList {
    pub cluster: ClusterName,
    pub backups: Vec<BackupView>,
}

/// Body of `POST /v1/clusters/{cluster}/backups` (every field optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    pub label: Option<String>,
    /// `true`: immediate checkpoint; `false`: spread; absent: the cluster's setting.
    pub fast_checkpoint: Option<bool>,
    /// Limit PostgreSQL's send rate (kB/s, 32 to 1048576; `MAX_RATE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate_kbps: Option<u32>,
}

/// Body of `POST /v1/clusters/{cluster}/offloads`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffloadRequest {
    /// Absolute path, on the server, of a PGDATA copy holding a `backup_label`.
    pub from: String,
    pub label: Option<String>,
    /// WAL position the copy is consistent at (`pg_backup_stop`'s LSN); absent: the
    /// server's durable WAL position when the offload starts (a safe upper bound).
    pub end_lsn: Option<Lsn>,
}

/// Body of `POST /v1/clusters/{cluster}/verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// Only this backup; absent: every complete backup.
    pub backup: Option<String>,
}

/// One backup's verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupVerification {
    pub id: String,
    pub ok: bool,
    pub files_checked: u64,
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    /// Each problem names the file (and chunk) it was found in.
    pub problems: Vec<String>,
    /// From the backup's start to the newest stored WAL.
    pub wal: WalChainView,
}

/// The WAL chain from a backup's start to the newest stored WAL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalChainView {
    pub from: Lsn,
    pub to: Lsn,
    pub segments_checked: u64,
    /// Missing stretches `[from, to)`.
    pub gaps: Vec<WalGapView>,
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalGapView {
    pub from: Lsn,
    pub to: Lsn,
}

/// `POST /v1/clusters/{cluster}/verify`: 200 whatever the outcome; `ok` says it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub cluster: ClusterName,
    pub ok: bool,
    pub backups: Vec<BackupVerification>,
}
