//! One base backup from start to commit: `BASE_BACKUP` over a second replication
//! connection → tar parser → chunk store, then PostgreSQL's `backup_manifest` is
//! checked against what was stored, the WAL from start to end is awaited in Tier 1,
//! and only then is the backup committed as complete. Any failure aborts it: its new
//! chunks are deleted and it is recorded as failed.
//!
//! The network side runs on the async runtime; parsing, hashing, compression and
//! encryption run on a blocking thread fed through a bounded channel, so a slow disk
//! slows the stream down instead of buffering it in memory.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use klio_core::{BackupId, Lsn, TimelineId};
use klio_pgwire::conninfo::ConnInfo;
use klio_pgwire::ReplicationConn;

use crate::archive_rule::MemberRule;
use crate::offload::{OffloadSource, SourceKind};
use crate::protocol::{BackupEvent, BaseBackupOptions, BaseBackupStream};
pub use crate::store::BackupRecord;
use crate::store::{BackupKind, BackupStoreError, BackupWriter, ChunkStore};
use crate::tar::{EntryKind, TarEvent, TarParser};
use klio_core::manifest::ManifestTablespace;
use klio_core::manifest::{FileKind, FileMeta};

mod upload;
pub use upload::upload_backup;

/// Live figures of a running job, read by the API.
#[derive(Debug)]
pub struct JobProgress {
    pub started: Instant,
    phase: Mutex<&'static str>,
    done: AtomicU64,
    /// `u64::MAX` while unknown.
    total: AtomicU64,
}

impl Default for JobProgress {
    fn default() -> Self {
        JobProgress {
            started: Instant::now(),
            phase: Mutex::new("connecting"),
            done: AtomicU64::new(0),
            total: AtomicU64::new(u64::MAX),
        }
    }
}

impl JobProgress {
    pub fn phase(&self) -> &'static str {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the job is doing now (`connecting`, `streaming`, `waiting-for-wal`, ...).
    pub fn set_phase(&self, p: &'static str) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }

    /// Counts `n` more bytes done.
    pub fn add_done(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// The total, once known.
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    pub fn done_bytes(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    pub fn total_bytes(&self) -> Option<u64> {
        match self.total.load(Ordering::Relaxed) {
            u64::MAX => None,
            t => Some(t),
        }
    }
}

/// Why a job failed. Display is one line naming the cause.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("cannot connect to the primary: {0}")]
    Connect(String),
    #[error("BASE_BACKUP: {0}")]
    Protocol(String),
    #[error("tar stream: {0}")]
    Tar(String),
    #[error("storing the backup: {0}")]
    Store(String),
    #[error("PostgreSQL's backup_manifest disagrees with what was received: {0}")]
    Manifest(String),
    #[error("{0}")]
    Wal(String),
    #[error("offload source: {0}")]
    Source(String),
    #[error("the backup was interrupted (server shutting down)")]
    Interrupted,
}

/// A failure while storing the backup; a full volume gets the fix.
fn store_error(e: BackupStoreError) -> JobError {
    if e.is_disk_full() {
        JobError::Store(format!(
            "Klio's volume is out of space ({e}); free space on it or enlarge it, then take the backup again (what this backup had stored is removed)"
        ))
    } else {
        JobError::Store(e.to_string())
    }
}

/// The blocking thread that stores the backup panicked or was cancelled.
fn thread_error(e: tokio::task::JoinError) -> JobError {
    JobError::Store(format!("backup writer thread: {e}"))
}

/// Waits until the WAL up to `(timeline, lsn)` is durable in Tier 1 (and the chain
/// from the backup's start to it is complete); `Err` says what is missing.
pub type WalWaiter = Box<
    dyn Fn(
            TimelineId,
            Lsn,
            TimelineId,
            Lsn,
        ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

enum Feed {
    ArchiveStart(Option<u32>),
    Data(Bytes),
    ArchiveEnd,
}

fn tar_meta(e: &crate::tar::TarEntry, tablespace: Option<u32>) -> FileMeta {
    FileMeta {
        tablespace,
        path: e.path.clone(),
        kind: match e.kind {
            EntryKind::File => FileKind::File,
            EntryKind::Directory => FileKind::Directory,
            EntryKind::Symlink => FileKind::Symlink,
        },
        mode: e.mode,
        mtime: e.mtime,
        size: e.size,
        link_target: e.link_target.clone(),
    }
}

/// Parses tar archives into the writer (runs on a blocking thread).
fn consume(
    writer: &mut BackupWriter,
    rx: &mut tokio::sync::mpsc::Receiver<Feed>,
) -> Result<(), JobError> {
    let mut parser: Option<TarParser> = None;
    let mut rule = MemberRule::default();
    let mut tablespace = None;
    while let Some(feed) = rx.blocking_recv() {
        match feed {
            Feed::ArchiveStart(ts) => {
                parser = Some(TarParser::new());
                rule = MemberRule::default();
                tablespace = ts;
            }
            Feed::Data(bytes) => {
                klio_core::failpoint::hit("backup-data");
                let p = parser
                    .as_mut()
                    .ok_or_else(|| JobError::Protocol("archive data before any archive".into()))?;
                p.feed(&bytes, &mut |ev| -> Result<(), JobError> {
                    match ev {
                        TarEvent::Entry(e) => {
                            rule.check(&e, tablespace).map_err(JobError::Tar)?;
                            writer
                                .begin_file(tar_meta(&e, tablespace))
                                .map_err(store_error)
                        }
                        TarEvent::Data(d) => writer.write(d).map_err(store_error),
                        TarEvent::EntryEnd => writer.end_file().map_err(store_error),
                        TarEvent::End => Ok(()),
                    }
                })
                .map_err(|e| match e {
                    crate::tar::TarError::Sink(inner) => inner,
                    other => JobError::Tar(other.to_string()),
                })?;
            }
            Feed::ArchiveEnd => {
                if let Some(mut p) = parser.take() {
                    p.finish().map_err(|e| JobError::Tar(e.to_string()))?;
                }
            }
        }
    }
    Ok(())
}

/// Takes one base backup of the cluster behind `conninfo` into `store`.
pub async fn stream_backup(
    conninfo: &ConnInfo,
    store: &ChunkStore,
    id: BackupId,
    opts: BaseBackupOptions,
    progress: Arc<JobProgress>,
    wal: &WalWaiter,
) -> Result<BackupRecord, JobError> {
    let mut conn = ReplicationConn::connect(conninfo)
        .await
        .map_err(|e| JobError::Connect(e.to_string()))?;
    let pg_version = conn.server_version_num();
    let mut stream = BaseBackupStream::start(&mut conn, &opts)
        .await
        .map_err(|e| JobError::Protocol(e.to_string()))?;
    let Some(BackupEvent::Started {
        start_lsn,
        timeline,
        tablespaces,
    }) = stream
        .next()
        .await
        .map_err(|e| JobError::Protocol(e.to_string()))?
    else {
        return Err(JobError::Protocol(
            "the server did not start the backup".into(),
        ));
    };
    let total_kb: u64 = tablespaces.iter().filter_map(|t| t.size_kb).sum();
    if total_kb > 0 {
        progress.total.store(total_kb * 1024, Ordering::Relaxed);
    }
    progress.set_phase("streaming");
    let writer = {
        let store = store.clone();
        let label = opts.label.clone();
        tokio::task::spawn_blocking(move || {
            store.begin(
                &id,
                &label,
                BackupKind::Stream,
                start_lsn,
                timeline,
                Some(pg_version),
            )
        })
        .await
        .map_err(thread_error)?
        .map_err(store_error)?
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Feed>(32);
    let consumer = tokio::task::spawn_blocking(move || {
        let mut writer = writer;
        let r = consume(&mut writer, &mut rx);
        (writer, r)
    });
    let mut pg_manifest = Vec::new();
    let mut end = None;
    // Network loop. A send error means the consumer stopped: its error is reported below.
    let net: Result<(), JobError> = async {
        while let Some(ev) = stream
            .next()
            .await
            .map_err(|e| JobError::Protocol(e.to_string()))?
        {
            let feed = match ev {
                BackupEvent::ArchiveStart { tablespace, .. } => Feed::ArchiveStart(tablespace),
                BackupEvent::ArchiveData(b) => {
                    progress.done.fetch_add(b.len() as u64, Ordering::Relaxed);
                    Feed::Data(b)
                }
                BackupEvent::ArchiveEnd => Feed::ArchiveEnd,
                BackupEvent::Progress {
                    done_bytes,
                    total_bytes,
                } => {
                    if let Some(t) = total_bytes {
                        progress.total.store(t, Ordering::Relaxed);
                    }
                    let _ = done_bytes;
                    continue;
                }
                BackupEvent::ManifestData(b) => {
                    pg_manifest.extend_from_slice(&b);
                    continue;
                }
                BackupEvent::Finished { end_lsn, timeline } => {
                    end = Some((end_lsn, timeline));
                    continue;
                }
                BackupEvent::Started { .. } => {
                    return Err(JobError::Protocol("a second start message".into()))
                }
            };
            if tx.send(feed).await.is_err() {
                break;
            }
        }
        Ok(())
    }
    .await;
    drop(tx);
    drop(stream);
    conn.close().await;
    let (writer, consumed) = consumer.await.map_err(thread_error)?;
    let outcome = async {
        // A failure while receiving or storing: what was written is removed and the
        // backup recorded failed now, not left `running` until the next start.
        let ended = consumed.and(net).and_then(|()| {
            end.ok_or_else(|| JobError::Protocol("the stream ended without an end position".into()))
        });
        let (end_lsn, end_tli) = match ended {
            Ok(end) => end,
            Err(e) => {
                let reason = e.to_string();
                let _ = tokio::task::spawn_blocking(move || writer.abort(&reason)).await;
                return Err(e);
            }
        };
        let spaces = tablespaces
            .iter()
            .filter_map(|t| {
                t.oid.map(|oid| ManifestTablespace {
                    oid,
                    location: t.location.clone(),
                })
            })
            .collect();
        finish(
            writer,
            progress,
            wal,
            (timeline, start_lsn),
            (end_tli, end_lsn),
            spaces,
            (!pg_manifest.is_empty()).then_some(pg_manifest),
        )
        .await
    };
    outcome.await
}

/// Checks, waits for WAL and commits (or aborts) a written backup.
async fn finish(
    writer: BackupWriter,
    progress: Arc<JobProgress>,
    wal: &WalWaiter,
    (start_tli, start_lsn): (TimelineId, Lsn),
    (end_tli, end_lsn): (TimelineId, Lsn),
    tablespaces: Vec<ManifestTablespace>,
    pg_manifest: Option<Vec<u8>>,
) -> Result<BackupRecord, JobError> {
    let mut writer = Some(writer);
    let r: Result<BackupRecord, JobError> = async {
        if let Some(m) = &pg_manifest {
            let w = writer.as_ref().expect("writer present");
            let check = crate::manifest::check_against_pg_manifest(w.files(), m)
                .map_err(JobError::Manifest)?;
            if !check.is_ok() {
                return Err(JobError::Manifest(check.describe()));
            }
        }
        progress.set_phase("waiting-for-wal");
        wal(start_tli, start_lsn, end_tli, end_lsn)
            .await
            .map_err(JobError::Wal)?;
        progress.set_phase("committing");
        klio_core::failpoint::hit("backup-before-commit");
        let w = writer.take().expect("writer present");
        tokio::task::spawn_blocking(move || {
            w.commit(end_lsn, end_tli, tablespaces, pg_manifest.as_deref())
        })
        .await
        .map_err(thread_error)?
        .map_err(store_error)
    }
    .await;
    if let Err(e) = &r {
        if let Some(w) = writer.take() {
            let reason = e.to_string();
            let _ = tokio::task::spawn_blocking(move || w.abort(&reason)).await;
        }
    }
    r
}

/// Stores a scanned offload source (see [`crate::offload`]) as a backup.
pub async fn offload_backup(
    source: OffloadSource,
    store: &ChunkStore,
    id: BackupId,
    label: String,
    end: (TimelineId, Lsn),
    progress: Arc<JobProgress>,
    wal: &WalWaiter,
) -> Result<BackupRecord, JobError> {
    progress.total.store(source.total_bytes, Ordering::Relaxed);
    progress.set_phase("reading");
    let start = (source.label.start_timeline, source.label.start_lsn);
    let spaces: Vec<ManifestTablespace> = source
        .tablespaces
        .iter()
        .map(|(oid, dir)| ManifestTablespace {
            oid: *oid,
            location: Some(dir.display().to_string()),
        })
        .collect();
    let store2 = store.clone();
    let prog = progress.clone();
    let written = tokio::task::spawn_blocking(move || -> Result<BackupWriter, JobError> {
        let mut w = store2
            .begin(&id, &label, BackupKind::Offload, start.1, start.0, None)
            .map_err(store_error)?;
        let r = (|| -> Result<(), JobError> {
            let mut buf = vec![0u8; 1 << 20];
            for e in &source.entries {
                let meta = FileMeta {
                    tablespace: e.tablespace,
                    path: e.path.clone(),
                    kind: match e.kind {
                        SourceKind::File => FileKind::File,
                        SourceKind::Directory => FileKind::Directory,
                        SourceKind::Symlink(_) => FileKind::Symlink,
                    },
                    mode: e.mode,
                    mtime: e.mtime,
                    size: e.size,
                    link_target: match &e.kind {
                        SourceKind::Symlink(t) => Some(t.clone()),
                        _ => None,
                    },
                };
                w.begin_file(meta).map_err(store_error)?;
                if e.kind == SourceKind::File {
                    use std::io::Read;
                    let f = source
                        .open(e)
                        .map_err(|err| JobError::Source(err.to_string()))?;
                    // Exactly the size scanned: a file that changed size meanwhile is an error.
                    let mut f = f.take(e.size);
                    let mut left = e.size;
                    while left > 0 {
                        let n = f.read(&mut buf).map_err(|err| {
                            JobError::Source(format!("{}: {err}", e.source.display()))
                        })?;
                        if n == 0 {
                            return Err(JobError::Source(format!(
                                "{} shrank while being read; is the source still changing?",
                                e.source.display()
                            )));
                        }
                        w.write(&buf[..n]).map_err(store_error)?;
                        left -= n as u64;
                        prog.done.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
                w.end_file().map_err(store_error)?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => Ok(w),
            Err(e) => {
                let _ = w.abort(&e.to_string());
                Err(e)
            }
        }
    })
    .await
    .map_err(thread_error)??;
    finish(written, progress, wal, start, end, spaces, None).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tar::TarBuilder;

    fn chunk_store(dir: &std::path::Path) -> ChunkStore {
        let layout = klio_core::layout::DataDir::new(dir);
        let catalog = Arc::new(klio_catalog::Catalog::open(&layout.catalog_dir()).unwrap());
        let key = klio_core::DataKey::generate();
        ChunkStore::open(dir, "pg".parse().unwrap(), key, catalog).unwrap()
    }

    #[test]
    fn a_link_outside_pg_tblspc_fails_the_archive_before_anything_below_it_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = chunk_store(dir.path());
        let id = store.new_backup_id().unwrap();
        let tli = TimelineId::new(1).unwrap();
        let mut w = store
            .begin(
                &id,
                "t",
                BackupKind::Stream,
                Lsn(0x200_0028),
                tli,
                Some(150_000),
            )
            .unwrap();
        let mut t = TarBuilder::default();
        t.file("PG_VERSION", b"15\n")
            .symlink("evil", "/etc")
            .file("evil/passwd", b"SECRET")
            .end();
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        for feed in [
            Feed::ArchiveStart(None),
            Feed::Data(Bytes::from(t.out)),
            Feed::ArchiveEnd,
        ] {
            assert!(tx.try_send(feed).is_ok());
        }
        drop(tx);
        let e = consume(&mut w, &mut rx).unwrap_err();
        assert!(matches!(e, JobError::Tar(_)), "{e}");
        assert!(e.to_string().contains("evil -> /etc"), "{e}");
        let stored: Vec<&str> = w.files().iter().map(|f| f.path.as_str()).collect();
        assert_eq!(stored, ["PG_VERSION"]);
        w.abort("test").unwrap();
    }

    #[test]
    fn an_offload_whose_file_became_a_link_after_the_scan_fails_and_keeps_nothing() {
        // A copy at <t>/snaps/pgdata, offload root <t>/snaps, a secret outside it.
        let t = tempfile::tempdir().unwrap();
        let (snaps, pgdata) = (t.path().join("snaps"), t.path().join("snaps/pgdata"));
        std::fs::create_dir_all(pgdata.join("base/1")).unwrap();
        std::fs::create_dir_all(pgdata.join("global")).unwrap();
        std::fs::write(
            pgdata.join("backup_label"),
            "START WAL LOCATION: 0/9000028 (file 000000010000000000000009)\nSTART TIMELINE: 1\n",
        )
        .unwrap();
        std::fs::write(pgdata.join("PG_VERSION"), "17\n").unwrap();
        std::fs::write(pgdata.join("global/pg_control"), [1u8; 8192]).unwrap();
        std::fs::write(pgdata.join("base/1/1259"), [2u8; 100]).unwrap();
        let roots = [snaps];
        let policy = crate::offload::OffloadPolicy {
            roots: &roots,
            system_id: Some(klio_core::SystemId::new(0x0101_0101_0101_0101)),
            label: None,
        };
        let source = crate::offload::scan(&pgdata, &policy).unwrap();
        // A link to a file outside the root, of the size the scan saw.
        let swapped = pgdata.join("base/1/1259");
        let secret = t.path().join("master.key");
        std::fs::write(&secret, [b'S'; 100]).unwrap();
        std::fs::remove_file(&swapped).unwrap();
        std::os::unix::fs::symlink(&secret, &swapped).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = chunk_store(dir.path());
        let id = store.new_backup_id().unwrap();
        let wal: WalWaiter = Box::new(|_, _, _, _| Box::pin(async { Ok(()) }));
        let end = (TimelineId::new(1).unwrap(), Lsn(0x900_0100));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let job = offload_backup(
            source,
            &store,
            id,
            "t".into(),
            end,
            Arc::new(JobProgress::default()),
            &wal,
        );
        let e = rt.block_on(job).unwrap_err();
        assert!(matches!(e, JobError::Source(_)), "{e}");
        assert!(
            e.to_string()
                .contains("base/1/1259: not a regular file, or replaced"),
            "{e}"
        );
        let records = store.backups().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(
            records[0].state,
            crate::store::BackupState::Failed,
            "{:?}",
            records[0]
        );
    }
}
