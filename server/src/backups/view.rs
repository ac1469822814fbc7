//! How the manager's backups look to the API: catalog records, the running job and
//! failed jobs as [`BackupView`]s. Reads nothing from disk.

use klio_api::{BackupKindView, BackupProgress, BackupStateView, BackupView};
use klio_basebackup::job::{JobError, JobProgress};
use klio_basebackup::store::{BackupKind, BackupRecord, BackupState};
use klio_core::ClusterName;

use super::Running;

pub(super) fn state_view(s: BackupState) -> BackupStateView {
    match s {
        BackupState::Running => BackupStateView::Running,
        BackupState::Complete => BackupStateView::Complete,
        BackupState::Failed => BackupStateView::Failed,
    }
}

pub(super) fn progress_view(p: &JobProgress) -> BackupProgress {
    BackupProgress {
        phase: p.phase().to_string(),
        done_bytes: p.done_bytes(),
        total_bytes: p.total_bytes(),
        elapsed_secs: p.started.elapsed().as_secs_f64(),
    }
}

pub(super) fn record_view(cluster: &ClusterName, r: &BackupRecord) -> BackupView {
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
        tiers: None,
    }
}

pub(super) fn running_view(cluster: &ClusterName, r: &Running) -> BackupView {
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
        tiers: None,
    }
}

/// A job of this run that failed before it stored a record.
pub(super) fn failed_view(cluster: &ClusterName, r: &Running, error: &JobError) -> BackupView {
    BackupView {
        state: BackupStateView::Failed,
        error: Some(error.to_string()),
        progress: None,
        tiers: None,
        ..running_view(cluster, r)
    }
}
