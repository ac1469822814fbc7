//! The HTTP API's wire types, shared by the server (`klio-server`'s router) and the
//! client ([`crate::client`]). JSON bodies; LSNs as `X/Y` strings, WAL names as
//! PostgreSQL spells them.

use klio_core::{BackupId, ClusterName, Lsn, TimelineId, WalFileName};
use serde::{Deserialize, Serialize};

/// The start of a 403 answer's message when the credentials are another cluster's (the
/// client tells this apart from a 403 the server's configuration causes).
pub const CREDENTIALS_FORBIDDEN: &str = "these credentials are not valid for cluster";

/// Body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    /// True when retrying the same request cannot succeed (bad request, credentials,
    /// nothing there, a clash, corrupt data); false when it may (not ready yet, an
    /// internal failure). Absent from servers before it was added: clients then go by
    /// the status code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permanent: Option<bool>,
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
    pub id: BackupId,
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
    /// Which tiers hold the backup (complete backups of a server with Tier 2).
    #[serde(default)]
    pub tiers: Option<BackupTiers>,
}

/// Where a complete backup is: each flag set when that tier holds its manifest (and
/// with it, by the relay's ordering, its packs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupTiers {
    pub tier1: bool,
    pub tier2: bool,
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

/// Query of `POST /v1/clusters/{cluster}/offloads/upload` (the body is the copy, in
/// `klio_core::upload` frames).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadRequest {
    pub label: Option<String>,
    /// As in [`OffloadRequest`].
    pub end_lsn: Option<Lsn>,
    /// The copy's size, for progress.
    pub total_bytes: Option<u64>,
}

/// Body of `POST /v1/clusters/{cluster}/verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// Only this backup; absent: every complete backup.
    pub backup: Option<BackupId>,
}

/// One backup's verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupVerification {
    pub id: BackupId,
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

/// One stored WAL file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalEntryView {
    pub name: WalFileName,
    /// Size of the plaintext file PostgreSQL wrote.
    pub plain_size: u64,
    /// Bytes it takes on Tier 1 (compressed and encrypted).
    pub stored_size: u64,
}

/// The replication connection's state (defined in `klio_core`, where the receiver sets
/// it).
pub use klio_core::cluster::ConnectionState;

/// A cluster's replication status as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatusView {
    pub cluster: ClusterName,
    /// PostgreSQL's system identifier, once known (a decimal string: it exceeds 2^53).
    pub system_id: Option<String>,
    pub timeline: Option<TimelineId>,
    pub state: ConnectionState,
    pub last_error: Option<String>,
    /// End of the WAL received from the primary.
    pub received_lsn: Option<Lsn>,
    /// End of the WAL durable on Tier 1 (what was reported as flushed).
    pub flushed_lsn: Option<Lsn>,
    /// The primary's current WAL end, as last reported by it.
    pub primary_lsn: Option<Lsn>,
    /// `primary_lsn - flushed_lsn`.
    pub lag_bytes: Option<u64>,
    /// Segments sealed since the cluster was first streamed.
    pub sealed_segments: u64,
    /// Tier 1 is out of space: streaming is paused.
    pub disk_full: bool,
    /// fdatasyncs of streamed WAL since the server started, and the microseconds they
    /// took in total: their ratio is the disk's share of each synchronous commit's wait.
    #[serde(default)]
    pub wal_fsyncs: u64,
    #[serde(default)]
    pub wal_fsync_micros: u64,
    /// WAL segments written on the synchronous commit path and rewritten compressed since
    /// the server started: from what the writer fed the recompressor while writing them
    /// (no read-back), and from their files (after a restart, a backlog, or a segment
    /// partly compressed as it was written).
    #[serde(default)]
    pub wal_recompressed_from_memory: u64,
    #[serde(default)]
    pub wal_recompressed_from_file: u64,
    /// Base backups of this cluster.
    #[serde(default)]
    pub backups: BackupStatus,
    /// What each tier stores of this cluster.
    #[serde(default)]
    pub storage: StorageStatus,
    /// The relay to Tier 2; absent when `[tier2]` is not configured.
    #[serde(default)]
    pub tier2: Option<Tier2Status>,
}

/// Objects (WAL segments, history files, packs, manifests) and their stored bytes, per
/// tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageStatus {
    pub tier1_objects: u64,
    pub tier1_bytes: u64,
    pub tier2_objects: u64,
    pub tier2_bytes: u64,
    /// WAL segments in Tier 1 still stored uncompressed, as the synchronous commit path
    /// wrote them, waiting for the background recompressor (which queues each for Tier 2
    /// once rewritten). Growing without end means recompression is not keeping up.
    #[serde(default)]
    pub tier1_recompress_backlog: u64,
}

/// The Tier 2 relay of one cluster: what waits, what failed for good, what went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier2Status {
    /// Where Tier 2 is (`s3://bucket/prefix`...).
    pub location: String,
    /// Objects waiting for Tier 2 (dead letters included, and WAL segments still to be
    /// recompressed in Tier 1, which are queued after that) and their bytes.
    pub backlog_objects: u64,
    pub backlog_bytes: u64,
    /// Age of the oldest waiting object, in seconds.
    pub oldest_age_seconds: Option<u64>,
    /// Objects that failed permanently: they wait for `klio tier2 retry`.
    pub dead_letters: u64,
    /// The first dead letters, with their causes.
    #[serde(default)]
    pub dead: Vec<Tier2DeadLetter>,
    /// When Tier 2 last confirmed an upload (seconds since the epoch).
    pub last_upload_at: Option<u64>,
    /// Since the server started.
    pub uploaded_objects: u64,
    pub uploaded_bytes: u64,
    pub upload_failures: u64,
    /// A read-only server: its last rescan of Tier 2 (absent on a writing server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescan: Option<Tier2RescanReport>,
}

/// An object the relay gave up on until `klio tier2 retry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier2DeadLetter {
    /// `wal_segment`, `history`, `pack`, `pg_manifest` or `backup_manifest`.
    pub kind: String,
    pub name: String,
    pub attempts: u32,
    pub error: Option<String>,
}

/// `POST /v1/clusters/{cluster}/tier2/retry`: queue dead letters again; all of them, or
/// the one of `kind` named `name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier2RetryRequest {
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// The answer to [`Tier2RetryRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier2RetryReport {
    /// Dead letters queued again.
    pub revived: u64,
}

/// `POST /v1/clusters/{cluster}/tier2/rescan` (read-only servers): what a scan of the
/// bucket found and added to the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier2RescanReport {
    /// When the scan finished (seconds since the epoch).
    pub at: u64,
    /// Whether the bucket holds the cluster (its `cluster.json`); until it does, the
    /// cluster has nothing to restore.
    pub cluster_found: bool,
    /// Objects of the cluster listed in the bucket.
    pub objects: u64,
    /// What the catalog did not know before this scan.
    pub new_objects: u64,
    pub new_wal_segments: u64,
    pub new_histories: u64,
    pub new_backups: u64,
    /// What earlier scans found and the bucket no longer has (the writing server's
    /// retention removed it), now forgotten.
    #[serde(default)]
    pub removed_objects: u64,
    #[serde(default)]
    pub removed_backups: u64,
    /// Backups in the bucket that cannot be restored from it, and why.
    #[serde(default)]
    pub skipped: Vec<String>,
    /// Why the scan failed (the catalog keeps what earlier scans found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /v1/clusters/{cluster}/retention`: apply retention now (or, with `dry_run`,
/// only say what it would remove); one tier or both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRequest {
    #[serde(default)]
    pub dry_run: bool,
    /// 1 or 2; absent: both.
    #[serde(default)]
    pub tier: Option<u8>,
}

/// What retention keeps and removes (or removed) in each tier of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionReport {
    pub cluster: ClusterName,
    /// False for a dry run: nothing was removed.
    pub applied: bool,
    pub tiers: Vec<TierRetention>,
}

/// One tier's part of a [`RetentionReport`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierRetention {
    /// 1 or 2.
    pub tier: u8,
    /// The rules in force, as configured (`latest = 2, daily = 7`).
    pub rules: String,
    /// The complete backups the rules keep, with why.
    pub kept: Vec<KeptBackup>,
    /// What goes from this tier, with why.
    pub removed: Vec<RemovedObject>,
    pub removed_bytes: u64,
    /// What the rules would remove but stays, and why (e.g. not in Tier 2 yet).
    #[serde(default)]
    pub held_back: Vec<String>,
    /// Why applying stopped early (what was removed before is listed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A backup retention keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptBackup {
    pub id: BackupId,
    pub reasons: Vec<String>,
}

/// An object retention removes from a tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedObject {
    /// `backup` (its manifests and chunk index), `pack` or `wal_segment`.
    pub kind: String,
    /// Backup id, pack name or WAL file name.
    pub name: String,
    pub bytes: u64,
    pub why: String,
}

/// Base-backup figures of one cluster (for `klio status` and the metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupStatus {
    pub running: bool,
    pub complete: u64,
    /// When the newest complete backup finished (seconds since the epoch).
    pub last_complete_at: Option<u64>,
    /// Outcome of the last `verify` (absent until one ran since the server started).
    pub last_verify_ok: Option<bool>,
    pub last_verify_at: Option<u64>,
}

impl ClusterStatusView {
    /// A cluster that is configured but has not connected yet.
    pub fn connecting(cluster: ClusterName) -> ClusterStatusView {
        ClusterStatusView {
            cluster,
            system_id: None,
            timeline: None,
            state: ConnectionState::Connecting,
            last_error: None,
            received_lsn: None,
            flushed_lsn: None,
            primary_lsn: None,
            lag_bytes: None,
            sealed_segments: 0,
            disk_full: false,
            wal_fsyncs: 0,
            wal_fsync_micros: 0,
            wal_recompressed_from_memory: 0,
            wal_recompressed_from_file: 0,
            backups: BackupStatus::default(),
            storage: StorageStatus::default(),
            tier2: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_serialises_lsns_as_text() {
        let mut s = ClusterStatusView::connecting("pg-main".parse().unwrap());
        s.state = ConnectionState::Streaming;
        s.flushed_lsn = Some(Lsn(0x16_B374_D848));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["flushed_lsn"], "16/B374D848");
        assert_eq!(json["state"], "streaming");
        assert_eq!(json["received_lsn"], serde_json::Value::Null);
        let back: ClusterStatusView = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn wal_entry_round_trips_with_postgres_name() {
        let e = WalEntryView {
            name: "000000010000000000000002".parse().unwrap(),
            plain_size: 16 << 20,
            stored_size: 1000,
        };
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains("\"000000010000000000000002\""), "{json}");
        assert_eq!(serde_json::from_str::<WalEntryView>(&json).unwrap(), e);
        let bad = json.replace("000000010000000000000002", "../etc/passwd");
        assert!(serde_json::from_str::<WalEntryView>(&bad).is_err());
    }
}
