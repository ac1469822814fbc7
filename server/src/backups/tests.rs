//! The backup manager driven by a fake [`JobRunner`], without PostgreSQL: a real
//! catalog and chunk store in a temporary directory, jobs that run until the test
//! tells them how to end (channels, no sleeps).

use super::*;
use crate::registry::ErrorKind;
use klio_basebackup::store::BackupKind;
use klio_catalog::ClusterRecord;
use klio_core::keys::{DataKey, MasterKey};
use klio_core::{BackupId, WalSegSize};
use klio_receiver::cluster::{prepare_cluster, ClusterSpec};
use tokio::sync::{mpsc, oneshot};

const MASTER: [u8; 32] = [7; 32];

/// A job the fake runner was given; it runs until `finish` is sent (or dropped).
struct FakeJob {
    id: BackupId,
    store: ChunkStore,
    progress: Arc<JobProgress>,
    finish: oneshot::Sender<Result<BackupRecord, JobError>>,
}

/// Hands every job to the test and ends it as the test says.
struct FakeRunner {
    started: mpsc::UnboundedSender<FakeJob>,
}

impl JobRunner for FakeRunner {
    fn run(&self, _job: Job, ctx: JobContext) -> runner::JobFuture {
        let (finish, outcome) = oneshot::channel();
        let _ = self.started.send(FakeJob {
            id: ctx.id,
            store: ctx.store,
            progress: ctx.progress,
            finish,
        });
        Box::pin(async move { outcome.await.unwrap_or(Err(JobError::Interrupted)) })
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    manager: Arc<BackupManager>,
    jobs: mpsc::UnboundedReceiver<FakeJob>,
    cluster: ClusterName,
}

impl Fixture {
    /// A server with one cluster that has been registered (as first contact does).
    fn new() -> Fixture {
        Fixture::with_uploads(false)
    }

    /// [`Fixture::new`], with `offload_uploads` as given.
    fn with_uploads(offload_uploads: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let cluster: ClusterName = "pg-a".parse().unwrap();
        let ctx = ServerContext::open(dir.path(), MasterKey::from_bytes(&MASTER).unwrap()).unwrap();
        let master = MasterKey::from_bytes(&MASTER).unwrap();
        ctx.catalog
            .put_cluster(&ClusterRecord {
                name: cluster.clone(),
                system_id: klio_core::SystemId::new(7_390_123_456_789_012_345),
                wrapped_key: master.wrap(&DataKey::generate(), &cluster),
                slot: "klio".into(),
                seg_size: WalSegSize::DEFAULT,
                timeline: TimelineId::new(1).unwrap(),
                created_unix: 0,
            })
            .unwrap();
        // Nothing listens there: the fake runner never connects.
        let conninfo = ConnInfo::parse("host=127.0.0.1 port=1 user=klio").unwrap();
        let spec = ClusterSpec {
            name: cluster.clone(),
            conninfo: conninfo.clone(),
            slot: "klio".into(),
            status_interval: Duration::from_secs(10),
        };
        let handle = prepare_cluster(&ctx, spec).unwrap();
        let settings = BackupSettings {
            conninfo,
            fast_checkpoint: false,
            schedule: None,
            offload_roots: Vec::new(),
            offload_uploads,
            fallback: None,
        };
        let (started, jobs) = mpsc::unbounded_channel();
        let manager = BackupManager::with_runner(
            Arc::new(ctx),
            tokio::runtime::Handle::current(),
            vec![(handle, settings)],
            Arc::new(FakeRunner { started }),
        )
        .unwrap();
        Fixture {
            _dir: dir,
            manager: Arc::new(manager),
            jobs,
            cluster,
        }
    }

    fn start(&self) -> Result<BackupView, RegistryError> {
        self.manager.start_backup(
            &self.cluster,
            BackupRequest {
                label: Some("test".into()),
                ..BackupRequest::default()
            },
        )
    }

    async fn next_job(&mut self) -> FakeJob {
        self.jobs.recv().await.expect("the runner got a job")
    }

    /// Ends `job` with `outcome` and waits until the manager has freed the slot.
    async fn end(&self, job: FakeJob, outcome: Result<BackupRecord, JobError>) {
        let ended = self.manager.clusters[&self.cluster].ended.notified();
        job.finish.send(outcome).unwrap();
        ended.await;
    }

    fn view(&self, id: &BackupId) -> BackupView {
        self.manager
            .backup(&self.cluster, id)
            .unwrap()
            .unwrap_or_else(|| panic!("backup {id} is not listed"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_backup_while_one_runs_is_a_conflict_and_the_first_continues() {
    let mut f = Fixture::new();
    let first = f.start().unwrap();
    assert_eq!(first.state, BackupStateView::Running);
    let job = f.next_job().await;
    assert_eq!(job.id, first.id);

    let e = f.start().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e:?}");
    assert!(e.is_permanent());
    assert!(e.to_string().contains(first.id.as_str()), "{e}");
    assert!(
        f.jobs.try_recv().is_err(),
        "the refused request reached the runner"
    );
    let listed = f.manager.list(&f.cluster).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, first.id);
    assert_eq!(listed[0].state, BackupStateView::Running);
    assert!(f.manager.status(&f.cluster).running);

    f.end(job, Err(JobError::Interrupted)).await;
    assert!(!f.manager.status(&f.cluster).running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_fails_before_storing_anything_is_listed_failed_with_its_cause() {
    let mut f = Fixture::new();
    let first = f.start().unwrap();
    let job = f.next_job().await;
    f.end(
        job,
        Err(JobError::Connect("connection refused (port 1)".into())),
    )
    .await;
    let v = f.view(&first.id);
    assert_eq!(v.state, BackupStateView::Failed);
    assert_eq!(
        v.error.as_deref(),
        Some("cannot connect to the primary: connection refused (port 1)")
    );
    assert!(v.progress.is_none());

    // The slot is free again, and the new backup does not take the failed one's id.
    let second = f.start().unwrap();
    assert_ne!(second.id, first.id);
    let job = f.next_job().await;
    assert_eq!(job.id, second.id);
    assert_eq!(f.view(&second.id).state, BackupStateView::Running);
    assert_eq!(f.view(&first.id).state, BackupStateView::Failed);
    f.end(job, Err(JobError::Interrupted)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_fails_after_storing_is_recorded_failed_and_the_next_may_start() {
    let mut f = Fixture::new();
    let first = f.start().unwrap();
    let job = f.next_job().await;
    // As the real job does: a record once the backup started, aborted on failure.
    let (store, id) = (job.store.clone(), job.id.clone());
    tokio::task::spawn_blocking(move || {
        let w = store
            .begin(
                &id,
                "test",
                BackupKind::Stream,
                Lsn(0x300_0028),
                TimelineId::new(1).unwrap(),
                Some(150_000),
            )
            .unwrap();
        w.abort("tar stream: unexpected end of archive").unwrap();
    })
    .await
    .unwrap();
    f.end(job, Err(JobError::Tar("unexpected end of archive".into())))
        .await;
    let v = f.view(&first.id);
    assert_eq!(v.state, BackupStateView::Failed);
    assert!(
        v.error
            .as_deref()
            .is_some_and(|e| e.contains("unexpected end of archive")),
        "{v:?}"
    );
    let second = f.start().unwrap();
    let job = f.next_job().await;
    assert_eq!(job.id, second.id);
    f.end(job, Err(JobError::Interrupted)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reported_by_the_job_is_in_the_view() {
    let mut f = Fixture::new();
    let first = f.start().unwrap();
    let p = first.progress.as_ref().unwrap();
    assert_eq!(
        (p.phase.as_str(), p.done_bytes, p.total_bytes),
        ("connecting", 0, None)
    );
    let job = f.next_job().await;
    job.progress.set_phase("streaming");
    job.progress.set_total(10 << 20);
    job.progress.add_done(3 << 20);
    let v = f.view(&first.id);
    let p = v.progress.as_ref().expect("a running backup has progress");
    assert_eq!(p.phase, "streaming");
    assert_eq!(p.done_bytes, 3 << 20);
    assert_eq!(p.total_bytes, Some(10 << 20));
    let listed = f.manager.list(&f.cluster).unwrap();
    assert_eq!(listed[0].progress.as_ref().unwrap().done_bytes, 3 << 20);
    f.end(job, Err(JobError::Interrupted)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_firing_while_a_backup_runs_starts_no_second_one() {
    let mut f = Fixture::new();
    let first = f.start().unwrap();
    let job = f.next_job().await;
    let (m, c) = (f.manager.clone(), f.cluster.clone());
    let fired = tokio::task::spawn_blocking(move || m.start_scheduled(&c, 1_795_547_580))
        .await
        .unwrap();
    let e = fired.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e:?}");
    assert!(f.jobs.try_recv().is_err(), "the schedule started a job");
    let listed = f.manager.list(&f.cluster).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, first.id);
    assert_eq!(listed[0].state, BackupStateView::Running);

    // Once it ended, the schedule's next firing starts one, labelled with its time.
    f.end(job, Err(JobError::Interrupted)).await;
    let (m, c) = (f.manager.clone(), f.cluster.clone());
    let v = tokio::task::spawn_blocking(move || m.start_scheduled(&c, 1_795_547_580))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v.label, "scheduled 2026-11-24 19:13:00");
    let job = f.next_job().await;
    assert_eq!(job.id, v.id);
    f.end(job, Err(JobError::Interrupted)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_refused_unless_enabled_and_a_failed_upload_reports_its_cause() {
    let f = Fixture::new();
    let (_tx, rx) = mpsc::channel(1);
    let e = f
        .manager
        .start_upload(&f.cluster, UploadRequest::default(), rx)
        .unwrap_err();
    assert!(matches!(e, RegistryError::Forbidden(_)), "{e}");
    assert!(e.to_string().contains("offload_uploads = true"), "{e}");
    assert!(f.manager.list(&f.cluster).unwrap().is_empty());

    // Enabled (as the configuration would set it): the upload runs as a job, and
    // waiting for its outcome gives the job's error.
    let mut f = Fixture::with_uploads(true);
    let (_tx, rx) = mpsc::channel(1);
    // The fake cluster has no WAL position yet: an end LSN is required.
    let v = f
        .manager
        .start_upload(
            &f.cluster,
            UploadRequest {
                end_lsn: Some(Lsn(0x100_0000)),
                total_bytes: Some(1234),
                ..UploadRequest::default()
            },
            rx,
        )
        .unwrap();
    assert_eq!(v.kind, BackupKindView::Offload);
    let job = f.next_job().await;
    let manager = f.manager.clone();
    let (cluster, id) = (f.cluster.clone(), v.id.clone());
    let outcome = tokio::spawn(async move { manager.job_outcome(&cluster, &id).await });
    job.finish
        .send(Err(JobError::Source(
            "the copy is another cluster's".into(),
        )))
        .unwrap();
    assert_eq!(
        outcome.await.unwrap().as_deref(),
        Some("offload source: the copy is another cluster's")
    );
}
