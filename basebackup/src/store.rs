//! The per-cluster deduplicated chunk store and the backup commit protocol.
//!
//! Files are cut into chunks of [`CHUNK_SIZE`] at fixed offsets (PostgreSQL rewrites
//! pages in place, so fixed alignment finds the unchanged parts as well as
//! content-defined chunking would, for less work). A chunk's id is a BLAKE3 hash keyed
//! with a key derived from the cluster's data key, so ids reveal nothing about content.
//! A chunk not stored yet is sealed as one Klio object (`ObjectKind::Chunk`, named by
//! its id: zstd + AES-256-GCM, see `klio_core::frame`) and appended to a pack file of
//! about [`PACK_TARGET`] bytes.
//!
//! Crash safety: a backup is recorded `running` before its first pack exists; its
//! packs are named `<backup id>-<n>.pack`; chunk records become visible only in the
//! single catalog batch that makes the backup `complete`. Abort and [`ChunkStore::recover`]
//! delete a running backup's packs and mark it `failed`: nothing leaks.
//!
//! Throughput: hashing, compression and encryption run on worker threads (one per
//! core, at most 4) with a bounded number of chunks in flight; the caller's thread
//! parses, computes file CRCs and appends sealed chunks to the pack.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use klio_catalog::{BackupCommit, Catalog, CatalogError, ChunkRecord, PackRecord};
use klio_core::clock::{civil_from_days, unix_now};
use klio_core::crashsafe::{create_dir_all_durably, fsync_dir, write_file_durably};
use klio_core::frame::{decode_object, FrameError, FrameSealer, ObjectId, ObjectKind};
use klio_core::{ClusterName, DataKey, Lsn, TimelineId};

pub use klio_catalog::{BackupKind, BackupRecord, BackupState};
use klio_core::manifest::{BackupManifest, ManifestTablespace, MANIFEST_VERSION};
use klio_core::manifest::{ChunkId, FileKind, FileMeta, ManifestFile};

/// Plaintext bytes per chunk (the last chunk of a file may be shorter).
pub const CHUNK_SIZE: usize = 1 << 20;
/// A pack is closed once it reaches this size.
pub const PACK_TARGET: u64 = 64 << 20;
/// Chunks handed to workers and not yet appended (bounds memory: ~2 MiB each).
const MAX_IN_FLIGHT: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum BackupStoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error("chunk {id} is not in the catalog: the backup references data that was never stored or was deleted")]
    UnknownChunk { id: ChunkId },
    #[error("chunk {id} in pack {pack} at offset {offset} failed verification ({source}): the pack is corrupt or was tampered with")]
    CorruptChunk {
        id: ChunkId,
        pack: String,
        offset: u64,
        source: FrameError,
    },
    #[error("chunk {id} in pack {pack} at offset {offset} decrypts but its content does not match its id: the pack was tampered with")]
    ChunkMismatch {
        id: ChunkId,
        pack: String,
        offset: u64,
    },
    #[error("{path}: {why}")]
    BadObject { path: PathBuf, why: String },
    #[error("backup {0} does not exist")]
    NoSuchBackup(String),
    #[error("{0}")]
    Usage(String),
}

impl BackupStoreError {
    /// The volume is out of space (ENOSPC / EDQUOT), for a pack or the catalog.
    pub fn is_disk_full(&self) -> bool {
        match self {
            BackupStoreError::Io { source, .. } => klio_core::disk::is_disk_full(source),
            BackupStoreError::Catalog(e) => e.is_disk_full(),
            _ => false,
        }
    }
}

type Result<T> = std::result::Result<T, BackupStoreError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupStoreError + '_ {
    move |source| BackupStoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Backup ids: `[0-9A-Za-z-]`, 1 to 64 characters.
pub fn valid_backup_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

struct Inner {
    cluster: ClusterName,
    dir: PathBuf,
    key: DataKey,
    id_key: [u8; 32],
    catalog: Arc<Catalog>,
}

/// One cluster's chunk store (cheap to clone).
#[derive(Clone)]
pub struct ChunkStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ChunkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkStore")
            .field("cluster", &self.inner.cluster)
            .field("dir", &self.inner.dir)
            .finish()
    }
}

/// What [`ChunkStore::recover`] cleaned up.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoverReport {
    pub failed_backups: usize,
    pub deleted_packs: usize,
}

/// What [`ChunkStore::verify_backup`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VerifyResult {
    pub files_checked: u64,
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    /// Each names the file and, where it applies, the chunk.
    pub problems: Vec<String>,
}

fn seal_chunk(key: &DataKey, cluster: &ClusterName, id: &ChunkId, data: &[u8]) -> Vec<u8> {
    let oid = ObjectId {
        cluster: cluster.clone(),
        kind: ObjectKind::Chunk,
        name: id.to_string(),
    };
    let (mut sealer, header) = FrameSealer::create(key, &oid);
    let mut out = Vec::with_capacity(header.len() + data.len() / 2 + 128);
    out.extend_from_slice(&header);
    sealer.seal(data, &mut out);
    sealer.seal_final(&mut out);
    out
}

impl ChunkStore {
    /// The backups directory of a cluster.
    pub fn dir(data_dir: &Path, cluster: &ClusterName) -> PathBuf {
        data_dir
            .join("clusters")
            .join(cluster.as_str())
            .join("backups")
    }

    pub fn open(
        data_dir: &Path,
        cluster: ClusterName,
        key: DataKey,
        catalog: Arc<Catalog>,
    ) -> Result<ChunkStore> {
        let dir = ChunkStore::dir(data_dir, &cluster);
        create_dir_all_durably(&dir.join("packs")).map_err(io(&dir))?;
        let id_key = *key.derive_subkey(cluster.as_str().as_bytes(), b"klio chunk id v1");
        Ok(ChunkStore {
            inner: Arc::new(Inner {
                cluster,
                dir,
                key,
                id_key,
                catalog,
            }),
        })
    }

    pub fn cluster(&self) -> &ClusterName {
        &self.inner.cluster
    }

    fn packs_dir(&self) -> PathBuf {
        self.inner.dir.join("packs")
    }

    fn pack_path(&self, name: &str) -> PathBuf {
        self.packs_dir().join(format!("{name}.pack"))
    }

    fn backup_dir(&self, id: &str) -> PathBuf {
        self.inner.dir.join(id)
    }

    /// The chunk id of `data`.
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.inner.id_key, data).as_bytes())
    }

    /// A fresh backup id (UTC time, `-2`, `-3`… if taken).
    pub fn new_backup_id(&self) -> Result<String> {
        let now = unix_now();
        let days = (now / 86_400) as i64;
        let (y, m, d) = civil_from_days(days);
        let s = now % 86_400;
        let base = format!(
            "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
            s / 3600,
            s / 60 % 60,
            s % 60
        );
        let mut id = base.clone();
        let mut n = 1;
        while self
            .inner
            .catalog
            .backup(&self.inner.cluster, &id)?
            .is_some()
        {
            n += 1;
            id = format!("{base}-{n}");
        }
        Ok(id)
    }

    pub fn backups(&self) -> Result<Vec<BackupRecord>> {
        Ok(self.inner.catalog.backups(&self.inner.cluster)?)
    }

    pub fn backup(&self, id: &str) -> Result<Option<BackupRecord>> {
        Ok(self.inner.catalog.backup(&self.inner.cluster, id)?)
    }

    /// Starts a backup: recorded `running` before anything else is written.
    pub fn begin(
        &self,
        id: &str,
        label: &str,
        kind: BackupKind,
        start_lsn: Lsn,
        start_tli: TimelineId,
        pg_version: Option<u32>,
    ) -> Result<BackupWriter> {
        if !valid_backup_id(id) {
            return Err(BackupStoreError::Usage(format!("invalid backup id {id:?}")));
        }
        if self.backup(id)?.is_some() {
            return Err(BackupStoreError::Usage(format!(
                "backup {id} already exists"
            )));
        }
        let record = BackupRecord {
            id: id.to_string(),
            label: label.to_string(),
            kind,
            state: BackupState::Running,
            error: None,
            start_lsn,
            start_tli,
            end_lsn: None,
            end_tli: None,
            started_unix: unix_now(),
            finished_unix: None,
            pg_version,
            logical_bytes: 0,
            stored_bytes: 0,
            new_bytes: 0,
            files: 0,
            chunks: 0,
            new_chunks: 0,
            packs: Vec::new(),
        };
        self.inner
            .catalog
            .put_backup(&self.inner.cluster, &record)?;
        Ok(BackupWriter::new(self.clone(), record))
    }

    /// At startup: every backup left `running` by a crash becomes `failed` and its
    /// packs and manifests are deleted; packs no record knows are deleted too.
    pub fn recover(&self) -> Result<RecoverReport> {
        let mut report = RecoverReport::default();
        for mut b in self.backups()? {
            if b.state != BackupState::Running {
                continue;
            }
            report.deleted_packs += self.remove_backup_files(&b)?;
            b.state = BackupState::Failed;
            b.error = Some(
                "the server stopped during the backup (crash or shutdown); its data was removed"
                    .into(),
            );
            b.finished_unix = Some(unix_now());
            b.packs.clear();
            self.inner.catalog.put_backup(&self.inner.cluster, &b)?;
            report.failed_backups += 1;
        }
        let dir = self.packs_dir();
        for e in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let e = e.map_err(io(&dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let known = match name.strip_suffix(".pack") {
                Some(n) => self.inner.catalog.pack(&self.inner.cluster, n)?.is_some(),
                None => false,
            };
            if !known {
                std::fs::remove_file(e.path()).map_err(io(&e.path()))?;
                report.deleted_packs += 1;
            }
        }
        fsync_dir(&dir).map_err(io(&dir))?;
        Ok(report)
    }

    /// Deletes a backup's packs (by record and by name prefix) and manifest directory.
    fn remove_backup_files(&self, b: &BackupRecord) -> Result<usize> {
        let dir = self.packs_dir();
        let prefix = format!("{}-", b.id);
        let mut n = 0;
        for e in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let e = e.map_err(io(&dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name
                .strip_suffix(".pack")
                .unwrap_or(&name)
                .trim_end_matches(".tmp");
            if name.starts_with(&prefix) || b.packs.iter().any(|p| p == stem) {
                std::fs::remove_file(e.path()).map_err(io(&e.path()))?;
                n += 1;
            }
        }
        fsync_dir(&dir).map_err(io(&dir))?;
        let bdir = self.backup_dir(&b.id);
        if bdir.exists() {
            std::fs::remove_dir_all(&bdir).map_err(io(&bdir))?;
            fsync_dir(&self.inner.dir).map_err(io(&self.inner.dir))?;
        }
        Ok(n)
    }

    /// Reads and verifies one chunk.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let rec = self
            .inner
            .catalog
            .chunk(&self.inner.cluster, &id.0)?
            .ok_or(BackupStoreError::UnknownChunk { id: *id })?;
        let path = self.pack_path(&rec.pack);
        let f = File::open(&path).map_err(io(&path))?;
        // AES-GCM with the chunk id as associated data already proves this is what was
        // stored under `id`; re-hashing 1 MiB per chunk served is `verify`'s job.
        self.read_chunk_at(&f, id, &rec, false)
    }

    /// Reads, authenticates and decompresses a chunk; with `rehash`, also checks that its
    /// keyed BLAKE3 hash is `id` (what `klio verify` proves).
    fn read_chunk_at(
        &self,
        f: &File,
        id: &ChunkId,
        rec: &ChunkRecord,
        rehash: bool,
    ) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; rec.stored_len as usize];
        let path = self.pack_path(&rec.pack);
        f.read_exact_at(&mut buf, rec.offset).map_err(io(&path))?;
        let oid = ObjectId {
            cluster: self.inner.cluster.clone(),
            kind: ObjectKind::Chunk,
            name: id.to_string(),
        };
        let corrupt = |source| BackupStoreError::CorruptChunk {
            id: *id,
            pack: rec.pack.clone(),
            offset: rec.offset,
            source,
        };
        let obj = decode_object(&self.inner.key, &oid, &buf, false).map_err(corrupt)?;
        if !obj.finished {
            return Err(corrupt(FrameError::Truncated {
                plain_len: obj.data.len() as u64,
            }));
        }
        if obj.data.len() != rec.plain_len as usize || (rehash && self.chunk_id(&obj.data) != *id) {
            return Err(BackupStoreError::ChunkMismatch {
                id: *id,
                pack: rec.pack.clone(),
                offset: rec.offset,
            });
        }
        Ok(obj.data)
    }

    fn read_object(&self, path: &Path, kind: ObjectKind, name: &str) -> Result<Vec<u8>> {
        let bytes = std::fs::read(path).map_err(io(path))?;
        let oid = ObjectId {
            cluster: self.inner.cluster.clone(),
            kind,
            name: name.to_string(),
        };
        let obj = decode_object(&self.inner.key, &oid, &bytes, false).map_err(|e| {
            BackupStoreError::BadObject {
                path: path.to_path_buf(),
                why: e.to_string(),
            }
        })?;
        if !obj.finished {
            return Err(BackupStoreError::BadObject {
                path: path.to_path_buf(),
                why: "truncated (no final frame)".into(),
            });
        }
        Ok(obj.data)
    }

    fn write_object(&self, path: &Path, kind: ObjectKind, name: &str, data: &[u8]) -> Result<()> {
        let oid = ObjectId {
            cluster: self.inner.cluster.clone(),
            kind,
            name: name.to_string(),
        };
        let (mut sealer, header) = FrameSealer::create(&self.inner.key, &oid);
        let mut out = header.to_vec();
        sealer.seal(data, &mut out);
        sealer.seal_final(&mut out);
        write_file_durably(path, &out).map_err(io(path))
    }

    /// Klio's manifest of a backup.
    pub fn read_manifest(&self, id: &str) -> Result<BackupManifest> {
        if !valid_backup_id(id) {
            return Err(BackupStoreError::NoSuchBackup(id.to_string()));
        }
        let path = self.backup_dir(id).join("manifest.klio");
        let data = self.read_object(&path, ObjectKind::BackupManifest, id)?;
        serde_json::from_slice(&data).map_err(|e| BackupStoreError::BadObject {
            path,
            why: format!("manifest is not valid: {e}"),
        })
    }

    /// PostgreSQL's `backup_manifest` of a backup (`None` for offloads).
    pub fn read_pg_manifest(&self, id: &str) -> Result<Option<Vec<u8>>> {
        if !valid_backup_id(id) {
            return Err(BackupStoreError::NoSuchBackup(id.to_string()));
        }
        let path = self.backup_dir(id).join("backup_manifest.klio");
        if !path.exists() {
            return Ok(None);
        }
        self.read_object(&path, ObjectKind::PgManifest, id)
            .map(Some)
    }

    /// Reads back every chunk of a complete backup, checks each file's size and
    /// CRC-32C, and the files against PostgreSQL's `backup_manifest`.
    pub fn verify_backup(&self, id: &str) -> Result<VerifyResult> {
        let b = self
            .backup(id)?
            .ok_or_else(|| BackupStoreError::NoSuchBackup(id.to_string()))?;
        let mut r = VerifyResult::default();
        let manifest = match self.read_manifest(&b.id) {
            Ok(m) => m,
            Err(e) => {
                r.problems.push(format!("backup {id}: manifest: {e}"));
                return Ok(r);
            }
        };
        let mut packs: HashMap<String, File> = HashMap::new();
        for f in &manifest.files {
            r.files_checked += 1;
            if f.kind != FileKind::File {
                continue;
            }
            let mut crc = 0u32;
            let mut len = 0u64;
            let mut bad = false;
            for c in &f.chunks {
                r.chunks_checked += 1;
                let rec = match self.inner.catalog.chunk(&self.inner.cluster, &c.0)? {
                    Some(rec) => rec,
                    None => {
                        r.problems.push(format!(
                            "backup {id}: file {}: chunk {c} is not in the catalog",
                            f.pg_path()
                        ));
                        bad = true;
                        break;
                    }
                };
                if !packs.contains_key(&rec.pack) {
                    let path = self.pack_path(&rec.pack);
                    match File::open(&path) {
                        Ok(h) => {
                            packs.insert(rec.pack.clone(), h);
                        }
                        Err(e) => {
                            r.problems.push(format!(
                                "backup {id}: file {}: chunk {c}: pack {}: {e}",
                                f.pg_path(),
                                path.display()
                            ));
                            bad = true;
                            break;
                        }
                    }
                }
                match self.read_chunk_at(&packs[&rec.pack], c, &rec, true) {
                    Ok(data) => {
                        crc = crc32c::crc32c_append(crc, &data);
                        len += data.len() as u64;
                        r.bytes_checked += data.len() as u64;
                    }
                    Err(e) => {
                        r.problems
                            .push(format!("backup {id}: file {}: {e}", f.pg_path()));
                        bad = true;
                    }
                }
            }
            if !bad {
                if len != f.size {
                    r.problems.push(format!(
                        "backup {id}: file {}: {len} bytes read back, {} expected",
                        f.pg_path(),
                        f.size
                    ));
                } else if f.crc32c.is_some_and(|c| c != crc) {
                    r.problems.push(format!(
                        "backup {id}: file {}: CRC-32C mismatch",
                        f.pg_path()
                    ));
                }
            }
        }
        match self.read_pg_manifest(&b.id) {
            Ok(Some(pg)) => {
                match crate::manifest::check_against_pg_manifest(&manifest.files, &pg) {
                    Ok(c) => r.problems.extend(
                        c.problems()
                            .into_iter()
                            .map(|p| format!("backup {id}: {p}")),
                    ),
                    Err(e) => r
                        .problems
                        .push(format!("backup {id}: backup_manifest: {e}")),
                }
            }
            Ok(None) => {}
            Err(e) => r
                .problems
                .push(format!("backup {id}: backup_manifest: {e}")),
        }
        Ok(r)
    }
}

/// A chunk on its way through the workers.
struct Job {
    seq: u64,
    data: Vec<u8>,
}

struct Done {
    seq: u64,
    id: ChunkId,
    plain_len: u32,
    /// `Some(stored)` when this worker claimed the chunk as new and sealed it;
    /// `None` with the stored size of a known chunk otherwise.
    sealed: Option<Vec<u8>>,
    known_stored: Option<u32>,
    error: Option<String>,
}

/// Writes one backup. Not `Sync`; drive it from one thread.
pub struct BackupWriter {
    store: ChunkStore,
    record: BackupRecord,
    files: Vec<ManifestFile>,
    /// Index in `files` of the file being written, its CRC and bytes so far.
    current: Option<(usize, u32, u64)>,
    buf: Vec<u8>,
    next_seq: u64,
    /// seq → (file index, chunk index) awaiting its id.
    slots: HashMap<u64, (usize, usize)>,
    jobs: Option<mpsc::SyncSender<Job>>,
    results: mpsc::Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    in_flight: usize,
    new_chunks: HashMap<ChunkId, ChunkRecord>,
    /// Known chunks referenced, with their stored size.
    referenced: HashMap<ChunkId, u32>,
    pack: Option<(String, File, u64, u32)>,
    pack_seq: u32,
    packs: Vec<PackRecord>,
    failed: Option<String>,
}

impl std::fmt::Debug for BackupWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupWriter")
            .field("id", &self.record.id)
            .finish()
    }
}

/// Live figures of a writer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterProgress {
    pub logical_bytes: u64,
    pub new_bytes: u64,
    pub files: u64,
}

impl BackupWriter {
    fn new(store: ChunkStore, record: BackupRecord) -> BackupWriter {
        let workers_n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(1, 4);
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(MAX_IN_FLIGHT);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let claimed = Arc::new(Mutex::new(HashSet::new()));
        let mut workers = Vec::new();
        for i in 0..workers_n {
            let (rx, tx, store, claimed) = (
                job_rx.clone(),
                done_tx.clone(),
                store.clone(),
                claimed.clone(),
            );
            let h = std::thread::Builder::new()
                .name(format!("klio-chunk-{i}"))
                .spawn(move || worker(rx, tx, store, claimed))
                .expect("spawning a chunk worker thread");
            workers.push(h);
        }
        BackupWriter {
            store,
            record,
            files: Vec::new(),
            current: None,
            buf: Vec::with_capacity(CHUNK_SIZE),
            next_seq: 0,
            slots: HashMap::new(),
            jobs: Some(job_tx),
            results: done_rx,
            workers,
            in_flight: 0,
            new_chunks: HashMap::new(),
            referenced: HashMap::new(),
            pack: None,
            pack_seq: 0,
            packs: Vec::new(),
            failed: None,
        }
    }

    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// The files written so far (chunk ids complete only after [`BackupWriter::drain`]).
    pub fn files(&self) -> &[ManifestFile] {
        &self.files
    }

    pub fn progress(&self) -> WriterProgress {
        WriterProgress {
            logical_bytes: self.record.logical_bytes,
            new_bytes: self
                .new_chunks
                .values()
                .map(|c| u64::from(c.stored_len))
                .sum(),
            files: self.files.len() as u64,
        }
    }

    fn check_failed(&self) -> Result<()> {
        match &self.failed {
            Some(e) => Err(BackupStoreError::Usage(format!(
                "the backup already failed: {e}"
            ))),
            None => Ok(()),
        }
    }

    pub fn begin_file(&mut self, meta: FileMeta) -> Result<()> {
        self.check_failed()?;
        if self.current.is_some() {
            return Err(BackupStoreError::Usage(
                "begin_file inside another file".into(),
            ));
        }
        self.files.push(ManifestFile {
            tablespace: meta.tablespace,
            path: meta.path,
            kind: meta.kind,
            mode: meta.mode,
            mtime: meta.mtime,
            size: meta.size,
            crc32c: None,
            link_target: meta.link_target,
            chunks: Vec::new(),
        });
        self.current = Some((self.files.len() - 1, 0, 0));
        Ok(())
    }

    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        self.check_failed()?;
        let Some((_, crc, len)) = self.current.as_mut() else {
            return Err(BackupStoreError::Usage("write outside a file".into()));
        };
        *crc = crc32c::crc32c_append(*crc, data);
        *len += data.len() as u64;
        self.record.logical_bytes += data.len() as u64;
        while !data.is_empty() {
            let take = (CHUNK_SIZE - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == CHUNK_SIZE {
                self.dispatch()?;
            }
        }
        Ok(())
    }

    pub fn end_file(&mut self) -> Result<()> {
        self.check_failed()?;
        let Some((idx, crc, len)) = self.current else {
            return Err(BackupStoreError::Usage("end_file outside a file".into()));
        };
        if !self.buf.is_empty() {
            self.dispatch()?;
        }
        let f = &mut self.files[idx];
        if f.kind == FileKind::File {
            if len != f.size {
                return Err(BackupStoreError::Usage(format!(
                    "file {} announced {} bytes but {len} arrived",
                    f.path, f.size
                )));
            }
            f.crc32c = Some(crc);
        }
        self.current = None;
        self.record.files += 1;
        Ok(())
    }

    fn dispatch(&mut self) -> Result<()> {
        let (idx, _, _) = self.current.expect("inside a file");
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_SIZE));
        let seq = self.next_seq;
        self.next_seq += 1;
        let f = &mut self.files[idx];
        f.chunks.push(ChunkId([0; 32]));
        self.slots.insert(seq, (idx, f.chunks.len() - 1));
        while self.in_flight >= MAX_IN_FLIGHT {
            self.collect_one()?;
        }
        self.jobs
            .as_ref()
            .expect("workers running")
            .send(Job { seq, data })
            .map_err(|_| BackupStoreError::Usage("chunk workers stopped".into()))?;
        self.in_flight += 1;
        while let Ok(done) = self.results.try_recv() {
            self.in_flight -= 1;
            self.apply(done)?;
        }
        Ok(())
    }

    fn collect_one(&mut self) -> Result<()> {
        let done = self
            .results
            .recv()
            .map_err(|_| BackupStoreError::Usage("chunk workers stopped".into()))?;
        self.in_flight -= 1;
        self.apply(done)
    }

    fn apply(&mut self, d: Done) -> Result<()> {
        if let Some(e) = d.error {
            self.failed = Some(e.clone());
            return Err(BackupStoreError::Usage(e));
        }
        let (fi, ci) = self.slots.remove(&d.seq).expect("a slot per chunk");
        self.files[fi].chunks[ci] = d.id;
        match d.sealed {
            Some(bytes) => {
                let rec = self.append(&bytes, d.plain_len)?;
                self.new_chunks.insert(d.id, rec);
                // A duplicate of it may have been counted as known before it landed.
                self.referenced.remove(&d.id);
            }
            None => {
                if !self.new_chunks.contains_key(&d.id) {
                    self.referenced
                        .insert(d.id, d.known_stored.unwrap_or_default());
                }
            }
        }
        Ok(())
    }

    fn open_pack(&mut self) -> Result<()> {
        self.pack_seq += 1;
        let name = format!("{}-{:04}", self.record.id, self.pack_seq);
        // Recorded before the file exists, so a crash cannot leave an unknown pack.
        self.record.packs.push(name.clone());
        self.store
            .inner
            .catalog
            .put_backup(&self.store.inner.cluster, &self.record)?;
        let path = self.store.pack_path(&name);
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io(&path))?;
        fsync_dir(&self.store.packs_dir()).map_err(io(&path))?;
        self.pack = Some((name, f, 0, 0));
        Ok(())
    }

    fn close_pack(&mut self) -> Result<()> {
        if let Some((name, f, size, chunks)) = self.pack.take() {
            let path = self.store.pack_path(&name);
            f.sync_all().map_err(io(&path))?;
            self.packs.push(PackRecord {
                name,
                size,
                chunks,
                live_chunks: chunks,
            });
        }
        Ok(())
    }

    fn append(&mut self, bytes: &[u8], plain_len: u32) -> Result<ChunkRecord> {
        if self.pack.as_ref().is_some_and(|p| p.2 >= PACK_TARGET) {
            self.close_pack()?;
        }
        if self.pack.is_none() {
            self.open_pack()?;
        }
        let (name, f, size, chunks) = self.pack.as_mut().expect("pack open");
        let path = self.store.pack_path(name);
        f.write_all(bytes).map_err(io(&path))?;
        let rec = ChunkRecord {
            pack: name.clone(),
            offset: *size,
            stored_len: bytes.len() as u32,
            plain_len,
            refs: 1,
        };
        *size += bytes.len() as u64;
        *chunks += 1;
        Ok(rec)
    }

    /// Waits for every chunk in flight to be stored.
    pub fn drain(&mut self) -> Result<()> {
        while self.in_flight > 0 {
            self.collect_one()?;
        }
        self.check_failed()
    }

    fn stop_workers(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }

    /// Makes the backup complete: packs and manifests durable, then one catalog batch.
    pub fn commit(
        mut self,
        end_lsn: Lsn,
        end_tli: TimelineId,
        tablespaces: Vec<ManifestTablespace>,
        pg_manifest: Option<&[u8]>,
    ) -> Result<BackupRecord> {
        if self.current.is_some() {
            return Err(BackupStoreError::Usage("commit inside a file".into()));
        }
        self.drain()?;
        self.stop_workers();
        self.close_pack()?;
        fsync_dir(&self.store.packs_dir()).map_err(io(&self.store.packs_dir()))?;
        let id = self.record.id.clone();
        let bdir = self.store.backup_dir(&id);
        create_dir_all_durably(&bdir).map_err(io(&bdir))?;
        let manifest = BackupManifest {
            version: MANIFEST_VERSION,
            backup_id: id.clone(),
            cluster: self.store.inner.cluster.clone(),
            label: self.record.label.clone(),
            start_lsn: self.record.start_lsn,
            start_tli: self.record.start_tli,
            end_lsn,
            end_tli,
            pg_version: self.record.pg_version,
            chunk_size: CHUNK_SIZE as u64,
            tablespaces,
            files: std::mem::take(&mut self.files),
        };
        let json = serde_json::to_vec(&manifest).expect("manifests serialise");
        self.store.write_object(
            &bdir.join("manifest.klio"),
            ObjectKind::BackupManifest,
            &id,
            &json,
        )?;
        if let Some(pg) = pg_manifest {
            self.store.write_object(
                &bdir.join("backup_manifest.klio"),
                ObjectKind::PgManifest,
                &id,
                pg,
            )?;
        }
        let new_bytes: u64 = self
            .new_chunks
            .values()
            .map(|c| u64::from(c.stored_len))
            .sum();
        let new_ids = &self.new_chunks;
        self.referenced.retain(|k, _| !new_ids.contains_key(k));
        let old_bytes: u64 = self.referenced.values().map(|&s| u64::from(s)).sum();
        let mut rec = self.record.clone();
        rec.state = BackupState::Complete;
        rec.end_lsn = Some(end_lsn);
        rec.end_tli = Some(end_tli);
        rec.finished_unix = Some(unix_now());
        rec.new_bytes = new_bytes;
        rec.stored_bytes = new_bytes + old_bytes;
        rec.chunks = (self.new_chunks.len() + self.referenced.len()) as u64;
        rec.new_chunks = self.new_chunks.len() as u64;
        let commit = BackupCommit {
            new_chunks: self
                .new_chunks
                .iter()
                .map(|(k, v)| (k.0, v.clone()))
                .collect(),
            referenced: self.referenced.keys().map(|k| k.0).collect(),
            packs: std::mem::take(&mut self.packs),
        };
        self.store
            .inner
            .catalog
            .commit_backup(&self.store.inner.cluster, &rec, &commit)?;
        self.record = rec.clone();
        Ok(rec)
    }

    /// Gives up: deletes what this backup wrote and records it `failed`.
    pub fn abort(mut self, reason: &str) -> Result<()> {
        self.stop_workers();
        self.pack = None;
        self.store.remove_backup_files(&self.record)?;
        let mut rec = self.record.clone();
        rec.state = BackupState::Failed;
        rec.error = Some(reason.to_string());
        rec.finished_unix = Some(unix_now());
        rec.packs.clear();
        self.store
            .inner
            .catalog
            .put_backup(&self.store.inner.cluster, &rec)?;
        Ok(())
    }
}

impl Drop for BackupWriter {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

fn worker(
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    tx: mpsc::Sender<Done>,
    store: ChunkStore,
    claimed: Arc<Mutex<HashSet<ChunkId>>>,
) {
    loop {
        let job = {
            let guard = rx.lock().unwrap_or_else(|e| e.into_inner());
            guard.recv()
        };
        let Ok(Job { seq, data }) = job else { return };
        let id = store.chunk_id(&data);
        let plain_len = data.len() as u32;
        let done = match store.inner.catalog.chunk(&store.inner.cluster, &id.0) {
            Err(e) => Done {
                seq,
                id,
                plain_len,
                sealed: None,
                known_stored: None,
                error: Some(format!("catalog: {e}")),
            },
            Ok(Some(rec)) => Done {
                seq,
                id,
                plain_len,
                sealed: None,
                known_stored: Some(rec.stored_len),
                error: None,
            },
            Ok(None) => {
                let first = claimed.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
                Done {
                    seq,
                    id,
                    plain_len,
                    sealed: first
                        .then(|| seal_chunk(&store.inner.key, &store.inner.cluster, &id, &data)),
                    known_stored: None,
                    error: None,
                }
            }
        };
        if tx.send(done).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        data_dir: PathBuf,
        catalog: Arc<Catalog>,
        key: DataKey,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let data_dir = dir.path().to_path_buf();
            let catalog = Arc::new(Catalog::open(&data_dir.join("catalog")).unwrap());
            Fixture {
                _dir: dir,
                data_dir,
                catalog,
                key: DataKey::generate(),
            }
        }

        fn store(&self) -> ChunkStore {
            ChunkStore::open(
                &self.data_dir,
                "pg".parse().unwrap(),
                self.key.clone(),
                self.catalog.clone(),
            )
            .unwrap()
        }
    }

    fn meta(path: &str, size: usize) -> FileMeta {
        FileMeta {
            tablespace: None,
            path: path.into(),
            kind: FileKind::File,
            mode: 0o600,
            mtime: 0,
            size: size as u64,
            link_target: None,
        }
    }

    fn pseudo(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 7) as u8 // compressible but not trivially
            })
            .collect()
    }

    fn write_backup(store: &ChunkStore, id: &str, files: &[(&str, Vec<u8>)]) -> BackupRecord {
        let mut w = store
            .begin(
                id,
                "t",
                BackupKind::Stream,
                Lsn(0x100),
                TimelineId::new(1).unwrap(),
                None,
            )
            .unwrap();
        for (p, d) in files {
            w.begin_file(meta(p, d.len())).unwrap();
            for piece in d.chunks(77_777) {
                w.write(piece).unwrap();
            }
            w.end_file().unwrap();
        }
        w.commit(Lsn(0x200), TimelineId::new(1).unwrap(), vec![], None)
            .unwrap()
    }

    fn pack_count(f: &Fixture) -> usize {
        std::fs::read_dir(ChunkStore::dir(&f.data_dir, &"pg".parse().unwrap()).join("packs"))
            .unwrap()
            .count()
    }

    #[test]
    fn round_trip_and_dedup() {
        let f = Fixture::new();
        let s = f.store();
        let big = pseudo(3 * CHUNK_SIZE + 5, 1);
        let files = vec![
            ("empty", vec![]),
            ("exact", pseudo(CHUNK_SIZE, 2)),
            ("plus1", pseudo(CHUNK_SIZE + 1, 3)),
            ("big", big.clone()),
            ("big-copy", big.clone()),
            ("small", b"hello".to_vec()),
        ];
        let r = write_backup(&s, "B1", &files);
        assert_eq!(r.state, BackupState::Complete);
        assert_eq!(r.files, 6);
        // big-copy shares all 4 chunks with big.
        assert_eq!(r.chunks, 1 + 2 + 4 + 1);
        assert_eq!(r.new_chunks, r.chunks);
        let m = s.read_manifest("B1").unwrap();
        for (p, d) in &files {
            let mf = m.files.iter().find(|x| x.path == *p).unwrap();
            let mut back = Vec::new();
            for c in &mf.chunks {
                back.extend(s.read_chunk(c).unwrap());
            }
            assert_eq!(&back, d, "{p}");
            assert_eq!(mf.crc32c, Some(crc32c::crc32c(d)));
        }
        let v = s.verify_backup("B1").unwrap();
        assert!(v.problems.is_empty(), "{:?}", v.problems);

        // A second backup with ~1% of `big` changed stores about one chunk.
        let mut big2 = big.clone();
        big2[CHUNK_SIZE + 10] ^= 0xff;
        let files2 = vec![("big", big2), ("small", b"hello".to_vec())];
        let r2 = write_backup(&s, "B2", &files2);
        assert_eq!(r2.new_chunks, 1);
        assert!(
            r2.new_bytes < r.new_bytes / 3,
            "{} vs {}",
            r2.new_bytes,
            r.new_bytes
        );
        assert_eq!(
            f.catalog
                .chunk(&"pg".parse().unwrap(), &s.chunk_id(b"hello").0)
                .unwrap()
                .unwrap()
                .refs,
            2
        );
    }

    #[test]
    fn crash_and_abort_leave_nothing() {
        let f = Fixture::new();
        {
            let s = f.store();
            let mut w = s
                .begin(
                    "C1",
                    "t",
                    BackupKind::Stream,
                    Lsn(0),
                    TimelineId::new(1).unwrap(),
                    None,
                )
                .unwrap();
            let d = pseudo(3 * CHUNK_SIZE, 9);
            w.begin_file(meta("f", d.len())).unwrap();
            w.write(&d).unwrap();
            w.end_file().unwrap();
            w.drain().unwrap();
            assert!(pack_count(&f) > 0);
            // Simulated crash: the writer vanishes without commit or abort.
            drop(w);
        }
        let s = f.store();
        let rep = s.recover().unwrap();
        assert_eq!(rep.failed_backups, 1);
        assert_eq!(pack_count(&f), 0);
        let b = s.backup("C1").unwrap().unwrap();
        assert_eq!(b.state, BackupState::Failed);
        assert!(s.chunk_id(b"x") != ChunkId([0; 32]));
        // No chunk record of it exists.
        let id = s.chunk_id(&pseudo(3 * CHUNK_SIZE, 9)[..CHUNK_SIZE]);
        assert!(f
            .catalog
            .chunk(&"pg".parse().unwrap(), &id.0)
            .unwrap()
            .is_none());

        let mut w = s
            .begin(
                "C2",
                "t",
                BackupKind::Stream,
                Lsn(0),
                TimelineId::new(1).unwrap(),
                None,
            )
            .unwrap();
        w.begin_file(meta("f", 10)).unwrap();
        w.write(&[1; 10]).unwrap();
        w.end_file().unwrap();
        w.drain().unwrap();
        w.abort("test").unwrap();
        assert_eq!(pack_count(&f), 0);
        assert_eq!(s.backup("C2").unwrap().unwrap().state, BackupState::Failed);
    }

    #[test]
    fn tampering_and_wrong_keys_are_detected() {
        let f = Fixture::new();
        let s = f.store();
        let files = vec![("a", pseudo(CHUNK_SIZE + 100, 4)), ("b", pseudo(5000, 5))];
        write_backup(&s, "T1", &files);
        let m = s.read_manifest("T1").unwrap();
        let a = &m.files[0];
        let rec = f
            .catalog
            .chunk(&"pg".parse().unwrap(), &a.chunks[0].0)
            .unwrap()
            .unwrap();
        let pack = s.pack_path(&rec.pack);
        let mut bytes = std::fs::read(&pack).unwrap();
        bytes[(rec.offset + 100) as usize] ^= 1;
        std::fs::write(&pack, &bytes).unwrap();
        let e = s.read_chunk(&a.chunks[0]).unwrap_err().to_string();
        assert!(
            e.contains(&a.chunks[0].to_string()) && e.contains("tampered"),
            "{e}"
        );
        let v = s.verify_backup("T1").unwrap();
        assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
        assert!(
            v.problems[0].contains("backup T1: file a:"),
            "{:?}",
            v.problems
        );

        // Another key (another cluster's store over the same files) cannot read it.
        let other = ChunkStore::open(
            &f.data_dir,
            "pg".parse().unwrap(),
            DataKey::generate(),
            f.catalog.clone(),
        )
        .unwrap();
        assert!(other.read_chunk(&m.files[1].chunks[0]).is_err());
        assert!(other.read_manifest("T1").is_err());
    }

    #[test]
    fn wrong_sizes_and_bad_ids_are_refused() {
        let f = Fixture::new();
        let s = f.store();
        let mut w = s
            .begin(
                "S1",
                "t",
                BackupKind::Stream,
                Lsn(0),
                TimelineId::new(1).unwrap(),
                None,
            )
            .unwrap();
        w.begin_file(meta("f", 10)).unwrap();
        w.write(&[1; 5]).unwrap();
        assert!(w
            .end_file()
            .unwrap_err()
            .to_string()
            .contains("announced 10"));
        assert!(s
            .begin(
                "../x",
                "t",
                BackupKind::Stream,
                Lsn(0),
                TimelineId::new(1).unwrap(),
                None
            )
            .is_err());
        assert!(s.read_manifest("../../etc").is_err());
        let id = s.new_backup_id().unwrap();
        assert!(valid_backup_id(&id) && id.ends_with('Z'), "{id}");
    }
}
