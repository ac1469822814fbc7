//! The writer pool of one backup: [`BackupWriter`] cuts files into chunks, worker
//! threads hash, compress and encrypt them, and the caller's thread appends the new ones
//! to pack files; commit makes the backup complete, abort removes what it wrote.
//!
//! Writes `packs/<backup id>-<n>.pack` (each recorded in the backup's catalog entry
//! before the file is created), then at commit `<backup id>/manifest.klio` and
//! `<backup id>/backup_manifest.klio` under the store's directory, then one catalog batch
//! (paths from `klio_core::layout`).

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use klio_catalog::{BackupCommit, ChunkRecord, PackRecord, RelayItem, RelayKind};
use klio_core::clock::unix_now;
use klio_core::crashsafe::{create_dir_all_durably, fsync_dir};
use klio_core::frame::{FrameSealer, ObjectId, ObjectKind};
use klio_core::layout::{BackupDir, PackName};
use klio_core::manifest::{BackupManifest, ManifestTablespace, MANIFEST_VERSION};
use klio_core::manifest::{ChunkId, FileKind, FileMeta, ManifestFile};
use klio_core::manifest::{ChunkIndex, IndexedChunk, CHUNK_INDEX_VERSION};
use klio_core::{BackupId, ClusterName, DataKey, Lsn, TimelineId};

use super::{io, BackupStoreError, ChunkStore, Result, CHUNK_SIZE, PACK_TARGET};
use super::{BackupKind, BackupRecord, BackupState};

/// Chunks handed to workers and not yet appended (bounds memory: ~2 MiB each).
const MAX_IN_FLIGHT: usize = 8;

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
    /// Starts a backup: recorded `running` before anything else is written.
    pub fn begin(
        &self,
        id: &BackupId,
        label: &str,
        kind: BackupKind,
        start_lsn: Lsn,
        start_tli: TimelineId,
        pg_version: Option<u32>,
    ) -> Result<BackupWriter> {
        let Some(dir) = self.inner.dir.backup(id) else {
            return Err(BackupStoreError::Usage(format!(
                "invalid backup id {id:?}: the name of the packs directory cannot be a backup id"
            )));
        };
        if self.backup(id)?.is_some() {
            return Err(BackupStoreError::Usage(format!(
                "backup {id} already exists"
            )));
        }
        let record = BackupRecord {
            id: id.clone(),
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
        Ok(BackupWriter::new(self.clone(), record, dir))
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
    /// Where the manifests go at commit.
    dir: BackupDir,
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
    pack: Option<(PackName, File, u64, u32)>,
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
    fn new(store: ChunkStore, record: BackupRecord, dir: BackupDir) -> BackupWriter {
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
            dir,
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

    pub fn id(&self) -> &BackupId {
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
        let name = PackName::new(self.record.id.clone(), self.pack_seq);
        // Recorded before the file exists, so a crash cannot leave an unknown pack.
        self.record.packs.push(name.to_string());
        self.store
            .inner
            .catalog
            .put_backup(&self.store.inner.cluster, &self.record)?;
        let path = self.store.inner.dir.pack(&name);
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
            let path = self.store.inner.dir.pack(&name);
            f.sync_all().map_err(io(&path))?;
            self.packs.push(PackRecord {
                name: name.to_string(),
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
        let path = self.store.inner.dir.pack(name);
        f.write_all(bytes).map_err(io(&path))?;
        let rec = ChunkRecord {
            pack: name.to_string(),
            offset: *size,
            stored_len: bytes.len() as u32,
            plain_len,
            refs: 1,
            tier1_freed: false,
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
        let bdir = self.dir.path();
        create_dir_all_durably(bdir).map_err(io(bdir))?;
        let finished = unix_now();
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
            started_unix: Some(self.record.started_unix),
            finished_unix: Some(finished),
        };
        let json = serde_json::to_vec(&manifest).expect("manifests serialise");
        self.store.write_object(
            &self.dir.manifest(),
            ObjectKind::BackupManifest,
            id.as_str(),
            &json,
        )?;
        if let Some(pg) = pg_manifest {
            self.store.write_object(
                &self.dir.pg_manifest(),
                ObjectKind::PgManifest,
                id.as_str(),
                pg,
            )?;
        }
        let mut chunks: Vec<IndexedChunk> = self
            .new_chunks
            .iter()
            .map(|(id, c)| IndexedChunk {
                id: *id,
                pack: c.pack.clone(),
                offset: c.offset,
                stored_len: c.stored_len,
                plain_len: c.plain_len,
            })
            .collect();
        chunks.sort_by(|a, b| (&a.pack, a.offset).cmp(&(&b.pack, b.offset)));
        let index = ChunkIndex {
            version: CHUNK_INDEX_VERSION,
            backup_id: id.clone(),
            chunks,
        };
        let json = serde_json::to_vec(&index).expect("chunk indexes serialise");
        self.store.write_object(
            &self.dir.chunk_index(),
            ObjectKind::ChunkIndex,
            id.as_str(),
            &json,
        )?;
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
        rec.finished_unix = Some(finished);
        rec.new_bytes = new_bytes;
        rec.stored_bytes = new_bytes + old_bytes;
        rec.chunks = (self.new_chunks.len() + self.referenced.len()) as u64;
        rec.new_chunks = self.new_chunks.len() as u64;
        let packs = std::mem::take(&mut self.packs);
        let relay = if self.store.relays() {
            self.relay_items(&packs, pg_manifest.is_some())?
        } else {
            Vec::new()
        };
        let commit = BackupCommit {
            new_chunks: self
                .new_chunks
                .iter()
                .map(|(k, v)| (k.0, v.clone()))
                .collect(),
            referenced: self.referenced.keys().map(|k| k.0).collect(),
            packs,
            relay,
        };
        self.store
            .inner
            .catalog
            .commit_backup(&self.store.inner.cluster, &rec, &commit)?;
        self.record = rec.clone();
        Ok(rec)
    }

    /// The backup's objects to queue for Tier 2 with its commit: its packs, PostgreSQL's
    /// manifest (if any), its chunk index, then Klio's manifest (which the relay uploads
    /// last).
    fn relay_items(&self, packs: &[PackRecord], pg_manifest: bool) -> Result<Vec<RelayItem>> {
        let now = unix_now();
        let id = self.record.id.as_str();
        let mut items: Vec<RelayItem> = packs
            .iter()
            .map(|p| RelayItem::new(RelayKind::Pack, p.name.clone(), p.size, now))
            .collect();
        let size =
            |path: &std::path::Path| std::fs::metadata(path).map(|m| m.len()).map_err(io(path));
        if pg_manifest {
            let path = self.dir.pg_manifest();
            items.push(RelayItem::new(RelayKind::PgManifest, id, size(&path)?, now));
        }
        let path = self.dir.chunk_index();
        items.push(RelayItem::new(RelayKind::ChunkIndex, id, size(&path)?, now));
        let path = self.dir.manifest();
        items.push(RelayItem::new(
            RelayKind::BackupManifest,
            id,
            size(&path)?,
            now,
        ));
        Ok(items)
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
            // A chunk Tier 1 freed is stored again, so that Tier 1 holds all of a new
            // backup.
            Ok(Some(rec)) if !rec.tier1_freed => Done {
                seq,
                id,
                plain_len,
                sealed: None,
                known_stored: Some(rec.stored_len),
                error: None,
            },
            Ok(_) => {
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
