//! The seam between the backup manager and the job that takes a backup: the manager
//! decides *whether* and *when* a job runs (one per cluster, its id, its progress
//! record); a [`JobRunner`] runs it. [`BaseBackupRunner`] is the real one
//! ([`klio_basebackup::job`], which writes the backup to the chunk store); unit tests
//! drive the manager with a fake. Nothing here writes to disk itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use klio_basebackup::job::{self, JobError, JobProgress, WalWaiter};
use klio_basebackup::offload::OffloadSource;
use klio_basebackup::protocol::BaseBackupOptions;
use klio_basebackup::store::{BackupRecord, ChunkStore};
use klio_core::{BackupId, Lsn, TimelineId};
use klio_pgwire::conninfo::ConnInfo;

/// What every job gets from the manager.
pub(crate) struct JobContext {
    pub store: ChunkStore,
    /// The backup's id, reserved by the manager.
    pub id: BackupId,
    /// Where the job reports its phase and bytes (the API shows them).
    pub progress: Arc<JobProgress>,
    /// Waits for the WAL the backup needs to be in Tier 1.
    pub wal: WalWaiter,
}

/// One backup to take.
pub(crate) enum Job {
    /// `BASE_BACKUP` over its own replication connection.
    Stream {
        conninfo: Box<ConnInfo>,
        opts: BaseBackupOptions,
    },
    /// A scanned directory on this server (see [`klio_basebackup::offload`]).
    Offload {
        source: Box<OffloadSource>,
        label: String,
        end: (TimelineId, Lsn),
    },
    /// A copy a client uploads: the request body's pieces (see
    /// [`klio_basebackup::job::upload_backup`]).
    Upload {
        body: tokio::sync::mpsc::Receiver<bytes::Bytes>,
        label: String,
        end: (TimelineId, Lsn),
        system_id: klio_core::SystemId,
    },
}

/// A running job: completes with the committed record or why it failed.
pub(crate) type JobFuture = Pin<Box<dyn Future<Output = Result<BackupRecord, JobError>> + Send>>;

/// Runs the jobs the manager starts.
pub(crate) trait JobRunner: Send + Sync + 'static {
    fn run(&self, job: Job, ctx: JobContext) -> JobFuture;
}

/// The production runner: [`klio_basebackup::job`].
pub(crate) struct BaseBackupRunner;

impl JobRunner for BaseBackupRunner {
    fn run(&self, job: Job, ctx: JobContext) -> JobFuture {
        let JobContext {
            store,
            id,
            progress,
            wal,
        } = ctx;
        match job {
            Job::Stream { conninfo, opts } => Box::pin(async move {
                job::stream_backup(&conninfo, &store, id, opts, progress, &wal).await
            }),
            Job::Offload { source, label, end } => Box::pin(async move {
                job::offload_backup(*source, &store, id, label, end, progress, &wal).await
            }),
            Job::Upload {
                body,
                label,
                end,
                system_id,
            } => Box::pin(async move {
                job::upload_backup(body, &store, id, label, end, system_id, progress, &wal).await
            }),
        }
    }
}
