//! The per-cluster deduplicated chunk store and the backup commit protocol.
//!
//! Owns `<data_dir>/clusters/<cluster>/backups/`: `packs/<backup id>-<n>.pack` (sealed
//! chunks, appended by `writer`), and per backup `<backup id>/manifest.klio` (Klio's
//! manifest) and `<backup id>/backup_manifest.klio` (PostgreSQL's), each a sealed Klio
//! object. Every path and every listing of these directories comes from
//! `klio_core::layout` ([`BackupsDir`], [`PackName`], [`PacksDirEntry`]). This module
//! opens the store, names chunks and backups, reads and writes sealed objects, lists
//! backups and recovers after a crash; `writer` is the
//! writer pool ([`BackupWriter`]) with its packs and commit/abort; `verify` reads a
//! backup back ([`ChunkStore::verify_backup`]).
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
//! Throughput (`writer`): hashing, compression and encryption run on worker threads
//! (one per core, at most 4) with a bounded number of chunks in flight; the caller's
//! thread parses, computes file CRCs and appends sealed chunks to the pack.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use klio_catalog::{Catalog, CatalogError, ChunkRecord};
use klio_core::clock::unix_now;
use klio_core::crashsafe::{create_dir_all_durably, fsync_dir, write_file_durably};
use klio_core::frame::{decode_object, FrameError, FrameSealer, ObjectId, ObjectKind};
use klio_core::layout::{BackupDir, BackupsDir, DataDir, PackName, PacksDirEntry};
use klio_core::BackupId;
use klio_core::{ClusterName, DataKey};

pub use klio_catalog::{BackupKind, BackupRecord, BackupState};
use klio_core::manifest::{BackupManifest, ChunkId};

mod repack;
#[cfg(test)]
mod tests;
mod verify;
mod writer;

pub use repack::Repacked;
pub use verify::VerifyResult;
pub use writer::{BackupWriter, WriterProgress};

/// Plaintext bytes per chunk (the last chunk of a file may be shorter).
pub const CHUNK_SIZE: usize = 1 << 20;
/// A pack is closed once it reaches this size.
pub const PACK_TARGET: u64 = 64 << 20;

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

/// The current UTC time as `YYYYMMDDTHHMMSSZ`.
fn utc_now_id() -> String {
    klio_core::clock::utc_compact(unix_now())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupStoreError + '_ {
    move |source| BackupStoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a chunk store reads the objects Tier 1 no longer holds (Tier 2): the bytes of an
/// object exactly as Tier 1 stored it, `Ok(None)` when the source does not have it
/// either. What comes back is authenticated like a Tier 1 file, so the source is not
/// trusted.
pub trait ObjectSource: Send + Sync {
    /// Bytes `offset .. offset + len` of pack `pack`.
    fn pack_range(
        &self,
        pack: &PackName,
        offset: u64,
        len: u64,
    ) -> std::io::Result<Option<Vec<u8>>>;
    /// A backup's manifest object: Klio's, or PostgreSQL's when `pg`.
    fn manifest(&self, id: &BackupId, pg: bool) -> std::io::Result<Option<Vec<u8>>>;
    /// Where the source is, for errors (`s3://bucket/prefix`).
    fn describe(&self) -> String;
}

struct Inner {
    cluster: ClusterName,
    dir: BackupsDir,
    key: DataKey,
    id_key: [u8; 32],
    catalog: Arc<Catalog>,
    /// Tier 2 is configured: a committed backup's packs and manifests are queued for it
    /// in the commit's catalog write.
    relay: std::sync::atomic::AtomicBool,
    /// Read from here what Tier 1 no longer holds.
    fallback: std::sync::OnceLock<Arc<dyn ObjectSource>>,
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

impl ChunkStore {
    pub fn open(
        data_dir: &Path,
        cluster: ClusterName,
        key: DataKey,
        catalog: Arc<Catalog>,
    ) -> Result<ChunkStore> {
        let dir = DataDir::new(data_dir).backups(&cluster);
        create_dir_all_durably(&dir.packs_dir()).map_err(io(dir.path()))?;
        let id_key = *key.derive_subkey(cluster.as_str().as_bytes(), b"klio chunk id v1");
        Ok(ChunkStore {
            inner: Arc::new(Inner {
                cluster,
                dir,
                key,
                id_key,
                catalog,
                relay: std::sync::atomic::AtomicBool::new(false),
                fallback: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Reads packs and manifests missing from Tier 1 from `source` from now on (set once;
    /// a second call is ignored).
    pub fn set_fallback(&self, source: Arc<dyn ObjectSource>) {
        let _ = self.inner.fallback.set(source);
    }

    /// Queue every backup committed from now on for Tier 2 (set once at start-up when
    /// `[tier2]` is configured; the relay's start-up scan queues older backups).
    pub fn set_relay(&self, on: bool) {
        self.inner
            .relay
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    fn relays(&self) -> bool {
        self.inner.relay.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn cluster(&self) -> &ClusterName {
        &self.inner.cluster
    }

    fn packs_dir(&self) -> PathBuf {
        self.inner.dir.packs_dir()
    }

    /// The file of a pack the catalog names; a name that is not a pack name is refused.
    fn pack_path(&self, name: &str) -> Result<PathBuf> {
        let name: PackName = name.parse().map_err(|e| BackupStoreError::BadObject {
            path: self.packs_dir(),
            why: format!("the catalog refers to an {e}"),
        })?;
        Ok(self.inner.dir.pack(&name))
    }

    /// A backup's directory; `None` for the one id that cannot have one (see
    /// [`klio_core::layout::BackupsDir::backup`]).
    fn backup_dir(&self, id: &BackupId) -> Option<BackupDir> {
        self.inner.dir.backup(id)
    }

    /// The chunk id of `data`.
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.inner.id_key, data).as_bytes())
    }

    /// A fresh backup id (UTC time, `-2`, `-3`… if taken).
    pub fn new_backup_id(&self) -> Result<BackupId> {
        let base = utc_now_id();
        let as_id = |text: &str| -> BackupId {
            text.parse()
                .expect("a UTC timestamp with an optional -N is a valid backup id")
        };
        let mut id = as_id(&base);
        let mut n = 1;
        while self
            .inner
            .catalog
            .backup(&self.inner.cluster, &id)?
            .is_some()
        {
            n += 1;
            id = as_id(&format!("{base}-{n}"));
        }
        Ok(id)
    }

    /// A fresh name for a pack written by repacking (`<UTC time>-r<n>`, the first `n`
    /// from 1 that no pack record or file has).
    pub fn new_repack_name(&self) -> Result<PackName> {
        let at: BackupId = utc_now_id()
            .parse()
            .expect("a UTC timestamp is a valid backup id");
        let mut n = 1;
        loop {
            let name = PackName::repacked(at.clone(), n);
            let taken = self
                .inner
                .catalog
                .pack(&self.inner.cluster, &name.to_string())?
                .is_some()
                || self.inner.dir.pack(&name).exists()
                || self.inner.dir.pack_index(&name).exists();
            if !taken {
                return Ok(name);
            }
            n += 1;
        }
    }

    pub fn backups(&self) -> Result<Vec<BackupRecord>> {
        Ok(self.inner.catalog.backups(&self.inner.cluster)?)
    }

    pub fn backup(&self, id: &BackupId) -> Result<Option<BackupRecord>> {
        Ok(self.inner.catalog.backup(&self.inner.cluster, id)?)
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
            let known = match PacksDirEntry::parse(e.file_name()) {
                PacksDirEntry::Pack(p) | PacksDirEntry::Index(p) => self
                    .inner
                    .catalog
                    .pack(&self.inner.cluster, &p.to_string())?
                    .is_some(),
                PacksDirEntry::Unknown => false,
            };
            if !known {
                std::fs::remove_file(e.path()).map_err(io(&e.path()))?;
                report.deleted_packs += 1;
            }
        }
        fsync_dir(&dir).map_err(io(&dir))?;
        Ok(report)
    }

    /// Deletes a backup's packs (those its record lists and those named after it) and
    /// its manifest directory.
    fn remove_backup_files(&self, b: &BackupRecord) -> Result<usize> {
        let dir = self.packs_dir();
        let mut n = 0;
        for e in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let e = e.map_err(io(&dir))?;
            let ours = match PacksDirEntry::parse(e.file_name()) {
                PacksDirEntry::Pack(p) => {
                    (!p.is_repack() && *p.backup() == b.id) || b.packs.contains(&p.to_string())
                }
                PacksDirEntry::Index(_) | PacksDirEntry::Unknown => false,
            };
            if ours {
                std::fs::remove_file(e.path()).map_err(io(&e.path()))?;
                n += 1;
            }
        }
        fsync_dir(&dir).map_err(io(&dir))?;
        // An id that names no backup directory cannot have one to remove.
        if let Some(bdir) = self.backup_dir(&b.id) {
            if bdir.path().exists() {
                std::fs::remove_dir_all(bdir.path()).map_err(io(bdir.path()))?;
                let parent = self.inner.dir.path();
                fsync_dir(parent).map_err(io(parent))?;
            }
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
        let path = self.pack_path(&rec.pack)?;
        let opened = match rec.tier1_freed {
            true => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "retention freed the chunk in Tier 1",
            )),
            false => File::open(&path),
        };
        match opened {
            // AES-GCM with the chunk id as associated data already proves this is what
            // was stored under `id`; re-hashing 1 MiB per chunk served is `verify`'s job.
            Ok(f) => self.read_chunk_at(&f, id, &rec, false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.read_chunk_elsewhere(id, &rec, e, false)
            }
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Reads a chunk Tier 1 does not hold (`missing` says why) from the fallback source;
    /// with `rehash`, also checks its keyed hash.
    fn read_chunk_elsewhere(
        &self,
        id: &ChunkId,
        rec: &ChunkRecord,
        missing: std::io::Error,
        rehash: bool,
    ) -> Result<Vec<u8>> {
        let path = self.pack_path(&rec.pack)?;
        let Some(source) = self.inner.fallback.get() else {
            return Err(io(&path)(missing));
        };
        let pack: PackName = rec.pack.parse().map_err(|e| BackupStoreError::BadObject {
            path: path.clone(),
            why: format!("the catalog refers to an {e}"),
        })?;
        let shown = PathBuf::from(format!("{}/{}.pack", source.describe(), rec.pack));
        let buf = source
            .pack_range(&pack, rec.offset, u64::from(rec.stored_len))
            .map_err(io(&shown))?
            .ok_or_else(|| {
                io(&shown)(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the pack is in neither Tier 1 nor Tier 2",
                ))
            })?;
        if buf.len() != rec.stored_len as usize {
            return Err(BackupStoreError::BadObject {
                path: shown,
                why: format!("{} bytes read, {} expected", buf.len(), rec.stored_len),
            });
        }
        self.decode_chunk(&buf, id, rec, rehash)
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
        let path = self.pack_path(&rec.pack)?;
        f.read_exact_at(&mut buf, rec.offset).map_err(io(&path))?;
        self.decode_chunk(&buf, id, rec, rehash)
    }

    /// Authenticates and decompresses a chunk's stored bytes (see `read_chunk_at`).
    fn decode_chunk(
        &self,
        buf: &[u8],
        id: &ChunkId,
        rec: &ChunkRecord,
        rehash: bool,
    ) -> Result<Vec<u8>> {
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
        let obj = decode_object(&self.inner.key, &oid, buf, false).map_err(corrupt)?;
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

    /// Reads a backup's manifest object (Klio's, or PostgreSQL's when `pg`) from Tier 1
    /// or, missing there, from the fallback source; `None` when neither has it.
    fn read_backup_object(&self, id: &BackupId, pg: bool) -> Result<Option<Vec<u8>>> {
        let dir = self
            .backup_dir(id)
            .ok_or_else(|| BackupStoreError::NoSuchBackup(id.to_string()))?;
        let (path, kind) = match pg {
            true => (dir.pg_manifest(), ObjectKind::PgManifest),
            false => (dir.manifest(), ObjectKind::BackupManifest),
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let Some(source) = self.inner.fallback.get() else {
                    return Ok(None);
                };
                let file = if pg {
                    "backup_manifest.klio"
                } else {
                    "manifest.klio"
                };
                let shown = PathBuf::from(format!("{}/{id}/{file}", source.describe()));
                match source.manifest(id, pg).map_err(io(&shown))? {
                    Some(b) => return self.decode_stored(&shown, kind, id.as_str(), &b).map(Some),
                    None => return Ok(None),
                }
            }
            Err(e) => return Err(io(&path)(e)),
        };
        self.decode_stored(&path, kind, id.as_str(), &bytes)
            .map(Some)
    }

    /// Decrypts a stored object (`path` names it in errors); it must be complete.
    fn decode_stored(
        &self,
        path: &Path,
        kind: ObjectKind,
        name: &str,
        bytes: &[u8],
    ) -> Result<Vec<u8>> {
        let oid = ObjectId {
            cluster: self.inner.cluster.clone(),
            kind,
            name: name.to_string(),
        };
        let obj = decode_object(&self.inner.key, &oid, bytes, false).map_err(|e| {
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
    pub fn read_manifest(&self, id: &BackupId) -> Result<BackupManifest> {
        let path = self
            .backup_dir(id)
            .ok_or_else(|| BackupStoreError::NoSuchBackup(id.to_string()))?
            .manifest();
        let data = self
            .read_backup_object(id, false)?
            .ok_or_else(|| BackupStoreError::Io {
                path: path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the manifest is in neither Tier 1 nor Tier 2",
                ),
            })?;
        serde_json::from_slice(&data).map_err(|e| BackupStoreError::BadObject {
            path,
            why: format!("manifest is not valid: {e}"),
        })
    }

    /// PostgreSQL's `backup_manifest` of a backup (`None` for offloads).
    pub fn read_pg_manifest(&self, id: &BackupId) -> Result<Option<Vec<u8>>> {
        self.read_backup_object(id, true)
    }
}
