//! The Tier 1 WAL store of one cluster.
//!
//! Owns `<data_dir>/clusters/<cluster>/wal/`:
//! - `<24 hex>.partial` — the segment being received, appended to in frames;
//! - `<24 hex>` — a sealed segment (renamed from `.partial` once complete);
//! - `<8 hex>.history` — timeline history files;
//! - `*.tmp` — files being created; removed at startup.
//!
//! Every file is a Klio object (`klio_core::frame`): compressed and encrypted with
//! the cluster's data key. Durability rules: a new file's header is fsynced and
//! its directory entry fsynced before any of its data is reported flushed; data is
//! fdatasync'ed before [`SegmentWriter::flush`] reports it; sealing appends the final
//! frame, fdatasyncs, renames and fsyncs the directory, and only then updates the
//! catalog. [`WalStore::reconcile`] repairs whatever a crash left in between.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use klio_catalog::{Catalog, CatalogError, SegmentRecord, SegmentState, Tiers, TimelineRecord};
use klio_core::frame::{decode_object, FrameError, FrameSealer, ObjectId, ObjectKind, HEADER_LEN};
use klio_core::{
    ClusterName, DataKey, Lsn, SegNo, TimelineId, WalFileKind, WalFileName, WalSegSize,
};
use tracing::{info, warn};

use klio_core::crashsafe::{
    create_dir_all_durably, durable_rename, fsync_dir, tmp_name, write_file_durably,
};
use klio_core::failpoint;

#[path = "wal_read.rs"]
mod read;
pub use read::WalReader;

/// Plaintext buffered before it is framed and written (without fsync).
const FRAME_TARGET: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("stored file {path} is unreadable: {source}")]
    Frame { path: PathBuf, source: FrameError },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("WAL gap on timeline {tli}: received data at {got} but the store ends at {expected}")]
    Gap {
        tli: TimelineId,
        expected: Lsn,
        got: Lsn,
    },
    #[error("stored file {path} is corrupt: {why}")]
    Corrupt { path: PathBuf, why: String },
}

impl StoreError {
    /// Tier 1 is out of space (ENOSPC / EDQUOT), for a segment file or the catalog.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => klio_core::disk::is_disk_full(source),
            StoreError::Catalog(e) => e.is_disk_full(),
            _ => false,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What reconciliation found and repaired at startup.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    pub sealed: usize,
    pub partial: usize,
    pub torn_bytes_dropped: u64,
    pub sealed_at_startup: usize,
    pub catalog_entries_added: usize,
    pub catalog_entries_removed: usize,
    pub temp_files_removed: usize,
}

/// Read and maintenance access to one cluster's stored WAL. Cheap to clone.
#[derive(Clone)]
pub struct WalStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    cluster: ClusterName,
    key: DataKey,
    seg_size: WalSegSize,
    catalog: Arc<Catalog>,
}

impl std::fmt::Debug for WalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalStore")
            .field("dir", &self.inner.dir)
            .field("cluster", &self.inner.cluster)
            .finish()
    }
}

/// One entry of [`WalStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalEntry {
    pub name: WalFileName,
    pub plain_size: u64,
    pub stored_size: u64,
}

impl WalStore {
    pub fn wal_dir(data_dir: &Path, cluster: &ClusterName) -> PathBuf {
        data_dir.join("clusters").join(cluster.as_str()).join("wal")
    }

    pub fn open(
        data_dir: &Path,
        cluster: ClusterName,
        key: DataKey,
        seg_size: WalSegSize,
        catalog: Arc<Catalog>,
    ) -> Result<WalStore, StoreError> {
        let dir = Self::wal_dir(data_dir, &cluster);
        create_dir_all_durably(&dir).map_err(io_err(&dir))?;
        Ok(WalStore {
            inner: Arc::new(Inner {
                dir,
                cluster,
                key,
                seg_size,
                catalog,
            }),
        })
    }

    pub fn cluster(&self) -> &ClusterName {
        &self.inner.cluster
    }

    pub fn seg_size(&self) -> WalSegSize {
        self.inner.seg_size
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn object_id(&self, name: &WalFileName) -> ObjectId {
        ObjectId {
            cluster: self.inner.cluster.clone(),
            kind: match name.kind() {
                WalFileKind::History => ObjectKind::TimelineHistory,
                _ => ObjectKind::WalSegment,
            },
            name: name.identity(),
        }
    }

    fn path(&self, name: &WalFileName) -> PathBuf {
        self.inner.dir.join(name.to_string())
    }

    fn segment_names(&self, tli: TimelineId, segno: SegNo) -> (WalFileName, WalFileName) {
        let s = self.inner.seg_size;
        (
            WalFileName::segment(tli, segno, s),
            WalFileName::partial(tli, segno, s),
        )
    }

    /// Brings catalog and files into agreement after a restart or crash.
    pub fn reconcile(&self) -> Result<ReconcileReport, StoreError> {
        let inner = &self.inner;
        let mut report = ReconcileReport::default();
        let mut sealed: BTreeMap<(TimelineId, SegNo), PathBuf> = BTreeMap::new();
        let mut partial: BTreeMap<(TimelineId, SegNo), PathBuf> = BTreeMap::new();
        let mut histories = Vec::new();
        let entries = std::fs::read_dir(&inner.dir).map_err(io_err(&inner.dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err(&inner.dir))?;
            let fname = entry.file_name();
            let path = entry.path();
            let Some(fname) = fname.to_str() else {
                warn!(path = %path.display(), "ignoring a file with a non-UTF-8 name in the WAL directory");
                continue;
            };
            if fname.ends_with(".tmp") {
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                report.temp_files_removed += 1;
                continue;
            }
            let Ok(name) = fname.parse::<WalFileName>() else {
                warn!(path = %path.display(), "ignoring an unexpected file in the WAL directory");
                continue;
            };
            match name.segno(inner.seg_size) {
                Ok(Some(segno)) if name.kind() == WalFileKind::Segment => {
                    sealed.insert((name.timeline(), segno), path);
                }
                Ok(Some(segno)) => {
                    partial.insert((name.timeline(), segno), path);
                }
                Ok(None) => histories.push(name.timeline()),
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "ignoring a WAL file that does not fit the segment size")
                }
            }
        }
        if report.temp_files_removed > 0 {
            fsync_dir(&inner.dir).map_err(io_err(&inner.dir))?;
        }

        for (&(tli, segno), path) in &partial {
            if sealed.contains_key(&(tli, segno)) {
                // The sealed copy is complete and authoritative.
                std::fs::remove_file(path).map_err(io_err(path))?;
                fsync_dir(&inner.dir).map_err(io_err(&inner.dir))?;
                continue;
            }
            let (plain, stored, finished, crc) =
                self.repair_partial(tli, segno, path, &mut report)?;
            if plain == inner.seg_size.bytes() {
                if finished {
                    // Crashed between writing the final frame and the rename.
                    self.finish_seal(tli, segno, path, stored, crc)?;
                } else {
                    self.seal_existing(tli, segno)?;
                }
                report.sealed_at_startup += 1;
                sealed.insert((tli, segno), self.path(&self.segment_names(tli, segno).0));
                continue;
            }
            if finished {
                return Err(StoreError::Corrupt {
                    path: path.clone(),
                    why: format!("a final frame after only {plain} bytes"),
                });
            }
            report.partial += 1;
            let rec = tier1_record(tli, segno, SegmentState::Partial, plain, None, stored);
            let existing = inner.catalog.segment(&inner.cluster, tli, segno)?;
            if existing.is_none() {
                report.catalog_entries_added += 1;
            }
            if existing.as_ref() != Some(&rec) {
                inner.catalog.put_segment(&inner.cluster, &rec)?;
            }
        }

        for (&(tli, segno), path) in &sealed {
            report.sealed += 1;
            let len = std::fs::metadata(path).map_err(io_err(path))?.len();
            let existing = inner.catalog.segment(&inner.cluster, tli, segno)?;
            if let Some(r) = &existing {
                if r.state == SegmentState::Sealed && r.stored_size == len {
                    continue;
                }
            }
            // Unknown to the catalog (crash between rename and catalog update): verify it.
            let bytes = std::fs::read(path).map_err(io_err(path))?;
            let name = self.segment_names(tli, segno).0;
            let obj = decode_object(&inner.key, &self.object_id(&name), &bytes, false).map_err(
                |source| StoreError::Frame {
                    path: path.clone(),
                    source,
                },
            )?;
            if !obj.finished || obj.data.len() as u64 != inner.seg_size.bytes() {
                return Err(StoreError::Corrupt {
                    path: path.clone(),
                    why: format!(
                        "sealed segment holds {} bytes (complete: {})",
                        obj.data.len(),
                        obj.finished
                    ),
                });
            }
            let mut tiers = existing.map(|r| r.tiers).unwrap_or_default();
            tiers.tier1 = true;
            inner.catalog.put_segment(
                &inner.cluster,
                &SegmentRecord {
                    tli,
                    segno,
                    state: SegmentState::Sealed,
                    plain_size: obj.data.len() as u64,
                    crc32c: Some(crc32c::crc32c(&obj.data)),
                    stored_size: len,
                    tiers,
                },
            )?;
            report.catalog_entries_added += 1;
        }

        for rec in inner.catalog.segments(&inner.cluster)? {
            let key = (rec.tli, rec.segno);
            let present = match rec.state {
                SegmentState::Sealed => sealed.contains_key(&key),
                SegmentState::Partial => partial.contains_key(&key) || sealed.contains_key(&key),
            };
            if !present && rec.tiers.tier1 {
                warn!(tli = %rec.tli, segno = rec.segno.0, "catalog listed a segment whose file is missing; removing the entry");
                inner
                    .catalog
                    .delete_segment(&inner.cluster, rec.tli, rec.segno)?;
                report.catalog_entries_removed += 1;
            }
        }

        for tli in histories {
            let known = inner.catalog.timeline(&inner.cluster, tli)?;
            if !known.as_ref().is_some_and(|t| t.history_stored) {
                let content = self.read(&WalFileName::history(tli))?.unwrap_or_default();
                self.record_history(tli, &content)?;
            }
        }
        if report != ReconcileReport::default() {
            info!(cluster = %inner.cluster, ?report, "Tier 1 WAL store reconciled");
        }
        Ok(report)
    }

    /// Drops a torn tail from a partial file. Returns (plaintext length, stored length).
    fn repair_partial(
        &self,
        tli: TimelineId,
        segno: SegNo,
        path: &Path,
        report: &mut ReconcileReport,
    ) -> Result<(u64, u64, bool, u32), StoreError> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let name = self.segment_names(tli, segno).1;
        let obj = decode_object(&self.inner.key, &self.object_id(&name), &bytes, true).map_err(
            |source| StoreError::Frame {
                path: path.to_path_buf(),
                source,
            },
        )?;
        // What a crashed process wrote may be only in the page cache: once this
        // returns, everything counted is durable (and may be reported flushed).
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        if obj.valid_stored_len < bytes.len() as u64 {
            f.set_len(obj.valid_stored_len).map_err(io_err(path))?;
            // Zeros are the space the writer fills ahead (see `ZERO_AHEAD`), not WAL.
            let tail = &bytes[obj.valid_stored_len as usize..];
            if tail.iter().any(|&b| b != 0) {
                report.torn_bytes_dropped += tail.len() as u64;
                warn!(path = %path.display(), dropped = tail.len(),
                    "dropped an unacknowledged torn tail from a partial segment");
            }
        }
        f.sync_all().map_err(io_err(path))?;
        Ok((
            obj.data.len() as u64,
            obj.valid_stored_len,
            obj.finished,
            crc32c::crc32c(&obj.data),
        ))
    }

    /// Renames a complete partial (final frame durable) to its sealed name and records it.
    fn finish_seal(
        &self,
        tli: TimelineId,
        segno: SegNo,
        path: &Path,
        stored: u64,
        crc: u32,
    ) -> Result<(), StoreError> {
        let sealed = self.path(&self.segment_names(tli, segno).0);
        durable_rename(path, &sealed).map_err(io_err(&sealed))?;
        self.inner.catalog.put_segment(
            &self.inner.cluster,
            &tier1_record(
                tli,
                segno,
                SegmentState::Sealed,
                self.inner.seg_size.bytes(),
                Some(crc),
                stored,
            ),
        )?;
        Ok(())
    }

    /// Seals a partial file that is already complete (found so at startup).
    fn seal_existing(&self, tli: TimelineId, segno: SegNo) -> Result<SegmentRecord, StoreError> {
        OpenSegment::resume(self, tli, segno)?.seal(self, &mut FlushStats::default())
    }

    /// Where streaming should resume: the end of stored WAL on the newest timeline.
    /// Everything before it is durable.
    pub fn resume_point(&self) -> Result<Option<(TimelineId, Lsn)>, StoreError> {
        let segs = self.inner.catalog.segments(&self.inner.cluster)?;
        let Some(last) = segs
            .iter()
            .filter(|s| s.tiers.tier1)
            .max_by_key(|s| (s.tli, s.segno))
        else {
            return Ok(None);
        };
        let start = last.segno.start_lsn(self.inner.seg_size);
        let end = match last.state {
            SegmentState::Sealed => last.segno.next().start_lsn(self.inner.seg_size),
            SegmentState::Partial => {
                // The catalog's partial size lags; the file is the truth.
                let (_, partial) = self.segment_names(last.tli, last.segno);
                let path = self.path(&partial);
                let mut report = ReconcileReport::default();
                let (plain, ..) = self.repair_partial(last.tli, last.segno, &path, &mut report)?;
                Lsn(start.0 + plain)
            }
        };
        Ok(Some((last.tli, end)))
    }

    /// Reads a stored WAL file back as plaintext. `Ok(None)` when it is not stored.
    /// A sealed segment is checked against its catalog checksum. See
    /// [`WalStore::open_read`] for reading it piece by piece.
    pub fn read(&self, name: &WalFileName) -> Result<Option<Vec<u8>>, StoreError> {
        self.open_read(name)?.map(WalReader::read_all).transpose()
    }

    /// Stores a timeline history file (durably) and records the timeline.
    pub fn store_history(&self, tli: TimelineId, content: &[u8]) -> Result<(), StoreError> {
        let name = WalFileName::history(tli);
        let path = self.path(&name);
        let (mut sealer, header) = FrameSealer::create(&self.inner.key, &self.object_id(&name));
        let mut out = header.to_vec();
        sealer.seal(content, &mut out);
        sealer.seal_final(&mut out);
        write_file_durably(&path, &out).map_err(io_err(&path))?;
        self.record_history(tli, content)
    }

    /// Records in the catalog that timeline `tli`'s history file (`content`) is stored.
    fn record_history(&self, tli: TimelineId, content: &[u8]) -> Result<(), StoreError> {
        let (parent, switch_lsn) = parse_history_tail(content);
        self.inner.catalog.put_timeline(
            &self.inner.cluster,
            &TimelineRecord {
                tli,
                parent,
                switch_lsn,
                history_stored: true,
            },
        )?;
        Ok(())
    }

    /// Stored WAL files, in order: history files first, then segments by timeline and number.
    pub fn list(&self) -> Result<Vec<WalEntry>, StoreError> {
        let inner = &self.inner;
        let mut out = Vec::new();
        for t in inner.catalog.timelines(&inner.cluster)? {
            if t.history_stored {
                let name = WalFileName::history(t.tli);
                let stored_size = std::fs::metadata(self.path(&name))
                    .map(|m| m.len())
                    .unwrap_or(0);
                out.push(WalEntry {
                    name,
                    plain_size: 0,
                    stored_size,
                });
            }
        }
        for s in inner.catalog.segments(&inner.cluster)? {
            let name = match s.state {
                SegmentState::Sealed => WalFileName::segment(s.tli, s.segno, inner.seg_size),
                SegmentState::Partial => WalFileName::partial(s.tli, s.segno, inner.seg_size),
            };
            out.push(WalEntry {
                name,
                plain_size: s.plain_size,
                stored_size: s.stored_size,
            });
        }
        Ok(out)
    }
}

/// A segment record for a file held in Tier 1 only.
fn tier1_record(
    tli: TimelineId,
    segno: SegNo,
    state: SegmentState,
    plain_size: u64,
    crc32c: Option<u32>,
    stored_size: u64,
) -> SegmentRecord {
    SegmentRecord {
        tli,
        segno,
        state,
        plain_size,
        crc32c,
        stored_size,
        tiers: Tiers {
            tier1: true,
            tier2: false,
        },
    }
}

/// Reads the last line of a timeline history file: `parent_tli <tab> switch_lsn <tab> reason`.
pub fn parse_history_tail(content: &[u8]) -> (Option<TimelineId>, Option<Lsn>) {
    let text = String::from_utf8_lossy(content);
    let last = text
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with('#'));
    let Some(line) = last else {
        return (None, None);
    };
    let mut fields = line.split_whitespace();
    let parent = fields
        .next()
        .and_then(|f| f.parse::<u32>().ok())
        .and_then(|t| TimelineId::new(t).ok());
    let lsn = fields.next().and_then(|f| f.parse::<Lsn>().ok());
    (parent, lsn)
}

/// The segment currently being appended to.
struct OpenSegment {
    tli: TimelineId,
    segno: SegNo,
    path: PathBuf,
    file: File,
    sealer: FrameSealer,
    /// Stored bytes written (header + frames).
    stored_len: u64,
    /// Plaintext not yet framed.
    pending: Vec<u8>,
    /// Plaintext bytes framed and written (fsynced or not).
    written: u64,
    /// Plaintext bytes known durable.
    durable: u64,
    crc: u32,
    out: Vec<u8>,
    /// The file is written (with zeros past `stored_len`) up to here.
    zeroed_to: u64,
}

/// How far ahead of the frames a partial segment is filled with zeros. Overwriting
/// blocks that are already allocated and written lets fdatasync skip the file-size
/// and extent metadata (an ext4/xfs journal commit), which is what makes the sync
/// path's flush cheap; readers and crash recovery already treat trailing zeros as
/// "no frame here", and sealing truncates them.
const ZERO_AHEAD: u64 = 1 << 20;
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

impl OpenSegment {
    fn create(store: &WalStore, tli: TimelineId, segno: SegNo) -> Result<OpenSegment, StoreError> {
        let partial = store.segment_names(tli, segno).1;
        let path = store.path(&partial);
        let tmp = tmp_name(&path);
        let (sealer, header) = FrameSealer::create(&store.inner.key, &store.object_id(&partial));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        file.write_all(&header).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        durable_rename(&tmp, &path).map_err(io_err(&path))?;
        failpoint::hit("wal-before-catalog");
        store.inner.catalog.put_segment(
            &store.inner.cluster,
            &tier1_record(
                tli,
                segno,
                SegmentState::Partial,
                0,
                None,
                HEADER_LEN as u64,
            ),
        )?;
        Ok(OpenSegment {
            tli,
            segno,
            path,
            file,
            sealer,
            stored_len: HEADER_LEN as u64,
            pending: Vec::with_capacity(FRAME_TARGET),
            written: 0,
            durable: 0,
            crc: 0,
            out: Vec::new(),
            zeroed_to: HEADER_LEN as u64,
        })
    }

    /// Reopens an existing partial (already repaired by reconcile) to append to it.
    fn resume(store: &WalStore, tli: TimelineId, segno: SegNo) -> Result<OpenSegment, StoreError> {
        let partial = store.segment_names(tli, segno).1;
        let path = store.path(&partial);
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        let id = store.object_id(&partial);
        let obj = decode_object(&store.inner.key, &id, &bytes, true).map_err(|source| {
            StoreError::Frame {
                path: path.clone(),
                source,
            }
        })?;
        if obj.finished {
            return Err(StoreError::Corrupt {
                path,
                why: "a partial segment carries a final frame".into(),
            });
        }
        let sealer = FrameSealer::resume(&store.inner.key, &id, &bytes, obj.data.len() as u64)
            .map_err(|source| StoreError::Frame {
                path: path.clone(),
                source,
            })?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if obj.valid_stored_len < bytes.len() as u64 {
            file.set_len(obj.valid_stored_len).map_err(io_err(&path))?;
        }
        // What a crashed process wrote may still be only in the page cache:
        // make it durable before counting it as flushed.
        file.sync_all().map_err(io_err(&path))?;
        Ok(OpenSegment {
            tli,
            segno,
            path,
            file,
            sealer,
            stored_len: obj.valid_stored_len,
            pending: Vec::with_capacity(FRAME_TARGET),
            written: obj.data.len() as u64,
            durable: obj.data.len() as u64,
            crc: crc32c::crc32c(&obj.data),
            out: Vec::new(),
            zeroed_to: obj.valid_stored_len,
        })
    }

    fn end(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    /// Frames and writes pending plaintext (no fsync).
    fn write_pending(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.out.clear();
        self.sealer.seal(&self.pending, &mut self.out);
        self.fill_ahead(self.stored_len + self.out.len() as u64)?;
        self.file
            .write_all_at(&self.out, self.stored_len)
            .map_err(io_err(&self.path))?;
        self.stored_len += self.out.len() as u64;
        failpoint::hit("wal-after-write");
        self.crc = crc32c::crc32c_append(self.crc, &self.pending);
        self.written += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Makes sure the file is written (zeros beyond the frames) at least up to `end`,
    /// extending it `ZERO_AHEAD` at a time.
    fn fill_ahead(&mut self, end: u64) -> Result<(), StoreError> {
        if end <= self.zeroed_to {
            return Ok(());
        }
        let target = (end + ZERO_AHEAD).next_multiple_of(ZERO_AHEAD);
        let mut at = self.zeroed_to.max(self.stored_len);
        while at < target {
            let n = (target - at).min(ZEROS.len() as u64);
            self.file
                .write_all_at(&ZEROS[..n as usize], at)
                .map_err(io_err(&self.path))?;
            at += n;
        }
        self.zeroed_to = target;
        Ok(())
    }

    fn sync(&mut self, stats: &mut FlushStats) -> Result<(), StoreError> {
        self.write_pending()?;
        if self.durable < self.written {
            stats
                .time(|| self.file.sync_data())
                .map_err(io_err(&self.path))?;
            self.durable = self.written;
        }
        Ok(())
    }

    /// Completes the segment: final frame, fdatasync, rename, fsync dir, catalog.
    fn seal(
        mut self,
        store: &WalStore,
        stats: &mut FlushStats,
    ) -> Result<SegmentRecord, StoreError> {
        self.write_pending()?;
        self.out.clear();
        self.sealer.seal_final(&mut self.out);
        self.file
            .write_all_at(&self.out, self.stored_len)
            .map_err(io_err(&self.path))?;
        self.stored_len += self.out.len() as u64;
        if self.zeroed_to > self.stored_len {
            self.file
                .set_len(self.stored_len)
                .map_err(io_err(&self.path))?;
        }
        stats
            .time(|| self.file.sync_data())
            .map_err(io_err(&self.path))?;
        failpoint::hit("wal-seal-rename");
        let sealed = store.path(&store.segment_names(self.tli, self.segno).0);
        durable_rename(&self.path, &sealed).map_err(io_err(&sealed))?;
        failpoint::hit("wal-before-catalog");
        let rec = tier1_record(
            self.tli,
            self.segno,
            SegmentState::Sealed,
            self.written,
            Some(self.crc),
            self.stored_len,
        );
        store
            .inner
            .catalog
            .put_segment(&store.inner.cluster, &rec)?;
        Ok(rec)
    }
}

/// How many fdatasyncs of WAL a writer made and the time they took: the disk's share
/// of a synchronous commit's wait (exported as metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    pub count: u64,
    pub nanos: u64,
}

impl FlushStats {
    fn time<T>(&mut self, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let start = std::time::Instant::now();
        failpoint::slow_fsync();
        let r = f();
        let took = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.count += 1;
        self.nanos = self.nanos.saturating_add(took);
        r
    }
}

/// Appends streamed WAL to Tier 1. Used from one blocking thread per cluster.
pub struct SegmentWriter {
    store: WalStore,
    open: Option<OpenSegment>,
    /// End of durable WAL on the timeline being written.
    durable: Option<(TimelineId, Lsn)>,
    sealed_count: u64,
    flush_stats: FlushStats,
}

impl SegmentWriter {
    pub fn new(store: WalStore) -> SegmentWriter {
        SegmentWriter {
            store,
            open: None,
            durable: None,
            sealed_count: 0,
            flush_stats: FlushStats::default(),
        }
    }

    pub fn store(&self) -> &WalStore {
        &self.store
    }

    /// End of WAL known durable (fdatasync'ed), if any was written by this writer.
    pub fn durable(&self) -> Option<(TimelineId, Lsn)> {
        self.durable
    }

    /// Segments sealed by this writer.
    pub fn sealed_count(&self) -> u64 {
        self.sealed_count
    }

    /// The fdatasyncs of WAL this writer made.
    pub fn flush_stats(&self) -> FlushStats {
        self.flush_stats
    }

    /// Appends `data`, which starts at WAL position `start` on timeline `tli`.
    /// Bytes already stored are skipped; a gap is an error. Nothing is fsynced
    /// except when a segment completes and is sealed.
    pub fn write(
        &mut self,
        tli: TimelineId,
        start: Lsn,
        mut data: &[u8],
    ) -> Result<(), StoreError> {
        let seg_size = self.store.seg_size();
        let mut pos = start;
        while !data.is_empty() {
            let segno = pos.segno(seg_size);
            let offset = pos.segment_offset(seg_size);
            let room = seg_size.bytes() - offset;
            let take = (data.len() as u64).min(room) as usize;
            let (piece, rest) = data.split_at(take);
            data = rest;
            let this = pos;
            pos = Lsn(pos.0 + take as u64);

            if self
                .open
                .as_ref()
                .is_some_and(|o| o.tli != tli || o.segno != segno)
            {
                self.close()?;
            }
            if self.open.is_none() {
                match self.open_segment(tli, segno, this)? {
                    Some(o) => self.open = Some(o),
                    None => continue, // already sealed: nothing to write
                }
            }
            let o = self.open.as_mut().expect("opened above");
            let end = o.end();
            if offset > end {
                return Err(StoreError::Gap {
                    tli,
                    expected: Lsn(segno.start_lsn(seg_size).0 + end),
                    got: this,
                });
            }
            let skip = (end - offset).min(piece.len() as u64) as usize;
            o.pending.extend_from_slice(&piece[skip..]);
            if o.pending.len() >= FRAME_TARGET {
                o.write_pending()?;
            }
            if o.end() == seg_size.bytes() {
                let o = self.open.take().expect("open");
                o.seal(&self.store, &mut self.flush_stats)?;
                self.sealed_count += 1;
                self.durable = Some((tli, segno.next().start_lsn(seg_size)));
            }
        }
        Ok(())
    }

    fn open_segment(
        &mut self,
        tli: TimelineId,
        segno: SegNo,
        at: Lsn,
    ) -> Result<Option<OpenSegment>, StoreError> {
        let (sealed, partial) = self.store.segment_names(tli, segno);
        if self.store.path(&sealed).exists() {
            return Ok(None);
        }
        let o = if self.store.path(&partial).exists() {
            OpenSegment::resume(&self.store, tli, segno)?
        } else {
            let seg_start = segno.start_lsn(self.store.seg_size());
            if at != seg_start {
                return Err(StoreError::Gap {
                    tli,
                    expected: seg_start,
                    got: at,
                });
            }
            OpenSegment::create(&self.store, tli, segno)?
        };
        self.durable = Some((
            tli,
            Lsn(segno.start_lsn(self.store.seg_size()).0 + o.durable),
        ));
        Ok(Some(o))
    }

    /// Makes everything written so far durable; returns the durable end position.
    pub fn flush(&mut self) -> Result<Option<(TimelineId, Lsn)>, StoreError> {
        if let Some(o) = self.open.as_mut() {
            o.sync(&mut self.flush_stats)?;
            failpoint::hit("wal-after-fsync");
            let start = o.segno.start_lsn(self.store.seg_size());
            self.durable = Some((o.tli, Lsn(start.0 + o.durable)));
        }
        Ok(self.durable)
    }

    /// Forgets the open segment after a write error, without flushing it. What was
    /// written but not fsynced stays in the file; it is re-read when appending resumes.
    pub fn abandon(&mut self) {
        self.open = None;
    }

    /// Flushes and closes the open segment, leaving it `.partial` (end of a timeline,
    /// or shutdown). Its catalog entry records the final partial size.
    pub fn close(&mut self) -> Result<(), StoreError> {
        self.flush()?;
        if let Some(o) = self.open.take() {
            self.store.inner.catalog.put_segment(
                &self.store.inner.cluster,
                &tier1_record(
                    o.tli,
                    o.segno,
                    SegmentState::Partial,
                    o.durable,
                    None,
                    o.stored_len,
                ),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> WalStore {
        let catalog = Arc::new(Catalog::open(&dir.join("catalog")).unwrap());
        WalStore::open(
            dir,
            "c1".parse().unwrap(),
            DataKey::generate(),
            WalSegSize::DEFAULT,
            catalog,
        )
        .unwrap()
    }

    fn tli1() -> TimelineId {
        TimelineId::new(1).unwrap()
    }

    #[test]
    fn the_partial_is_filled_ahead_with_zeros_that_recovery_and_sealing_drop() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let wal: Vec<u8> = (0..WalSegSize::DEFAULT.bytes())
            .map(|_| rand::random::<u8>())
            .collect();
        let mut w = SegmentWriter::new(s.clone());
        w.write(tli1(), Lsn(0), &wal[..100_000]).unwrap();
        w.flush().unwrap();
        let partial = s.path(&s.segment_names(tli1(), SegNo(0)).1);
        let stored = w.open.as_ref().unwrap().stored_len;
        let len = std::fs::metadata(&partial).unwrap().len();
        assert!(
            len > stored && len.is_multiple_of(ZERO_AHEAD),
            "{len} vs {stored}"
        );
        // As after a crash: the zeros are not a torn tail, and are dropped.
        w.abandon();
        let report = s.reconcile().unwrap();
        assert_eq!(report.torn_bytes_dropped, 0);
        assert_eq!(std::fs::metadata(&partial).unwrap().len(), stored);
        // Appending resumes after the frames; the sealed segment has no zeros left.
        let mut w = SegmentWriter::new(s.clone());
        w.write(tli1(), Lsn(100_000), &wal[100_000..]).unwrap();
        w.flush().unwrap();
        let sealed = s.path(&s.segment_names(tli1(), SegNo(0)).0);
        let bytes = std::fs::read(&sealed).unwrap();
        let obj = decode_object(
            &s.inner.key,
            &s.object_id(&s.segment_names(tli1(), SegNo(0)).0),
            &bytes,
            false,
        )
        .unwrap();
        assert!(obj.finished);
        assert_eq!(obj.valid_stored_len, bytes.len() as u64);
        assert!(obj.data == wal);
    }
}
