//! The Tier 1 WAL store of one cluster.
//!
//! Owns `<data_dir>/clusters/<cluster>/wal/`:
//! - `<24 hex>.partial` — the segment being received, appended to in frames;
//! - `<24 hex>` — a sealed segment (renamed from `.partial` once complete);
//! - `<8 hex>.history` — timeline history files;
//! - `<any of these>.tmp` — files being created; removed at startup;
//! - `recycled.spare` — a recompressed segment's old file, kept to become the next
//!   segment's file (`spare`); removed at startup.
//!
//! Every file is a Klio object (`klio_core::frame`): compressed and encrypted with
//! the cluster's data key. Durability rules: a new file's header is fsynced and
//! its directory entry fsynced before any of its data is reported flushed; data is
//! fdatasync'ed before [`SegmentWriter::flush`] reports it; sealing appends the final
//! frame, fdatasyncs, renames and fsyncs the directory, and only then updates the
//! catalog. [`WalStore::reconcile`] repairs whatever a crash left in between.
//!
//! Paths and directory listings are named by `klio_core::layout` ([`WalDir`],
//! [`WalDirEntry`]). Here: object names, reads, history files and listing;
//! `segment_writer`: appending streamed WAL ([`SegmentWriter`]); `reconcile`: repairing
//! files and catalog at start-up ([`WalStore::reconcile`], [`WalStore::resume_point`]);
//! `read`: reading a stored file back piece by piece ([`WalReader`]); `recompress`:
//! rewriting compressed the segments sealed with plain frames ([`Recompressor`]);
//! `spare`: recycling the file a recompressed segment leaves behind.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use klio_catalog::{
    Catalog, CatalogError, RelayItem, RelayKind, SegmentRecord, SegmentState, Tiers, TimelineRecord,
};
use klio_core::frame::{FrameError, FrameSealer, ObjectId, ObjectKind};
use klio_core::{
    ClusterName, DataKey, Lsn, SegNo, TimelineId, WalFileKind, WalFileName, WalSegSize,
};

use klio_core::crashsafe::{create_dir_all_durably, write_file_durably};
use klio_core::layout::{DataDir, WalDir};

mod read;
mod recompress;
mod reconcile;
mod segment_writer;
mod spare;
pub use read::WalReader;
pub use recompress::{Feed, RecompressReport, Recompressor, RewriteCounts};
pub use reconcile::ReconcileReport;
pub use segment_writer::{FlushStats, SegmentWriter, COMPRESS_INLINE};

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

/// Read and maintenance access to one cluster's stored WAL. Cheap to clone.
#[derive(Clone)]
pub struct WalStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: WalDir,
    cluster: ClusterName,
    key: DataKey,
    seg_size: WalSegSize,
    catalog: Arc<Catalog>,
    /// Tier 2 is configured: sealed segments and history files are queued for it in the
    /// catalog write that records them.
    relay: AtomicBool,
    /// This process left a spare segment file (`spare`) that nothing else names.
    spare_ready: AtomicBool,
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
    pub fn open(
        data_dir: &Path,
        cluster: ClusterName,
        key: DataKey,
        seg_size: WalSegSize,
        catalog: Arc<Catalog>,
    ) -> Result<WalStore, StoreError> {
        let dir = DataDir::new(data_dir).wal(&cluster);
        create_dir_all_durably(dir.path()).map_err(io_err(dir.path()))?;
        Ok(WalStore {
            inner: Arc::new(Inner {
                dir,
                cluster,
                key,
                seg_size,
                catalog,
                relay: AtomicBool::new(false),
                spare_ready: AtomicBool::new(false),
            }),
        })
    }

    /// Queue every segment sealed and history file stored from now on for Tier 2 (set
    /// once at start-up when `[tier2]` is configured; the relay's start-up scan queues
    /// what was stored before).
    pub fn set_relay(&self, on: bool) {
        self.inner.relay.store(on, Ordering::Relaxed);
    }

    /// The queue entry for a file just made final, when Tier 2 is configured.
    fn relay_item(&self, kind: RelayKind, name: &WalFileName, bytes: u64) -> Option<RelayItem> {
        self.inner
            .relay
            .load(Ordering::Relaxed)
            .then(|| RelayItem::new(kind, name.to_string(), bytes, klio_core::clock::unix_now()))
    }

    pub fn cluster(&self) -> &ClusterName {
        &self.inner.cluster
    }

    pub fn seg_size(&self) -> WalSegSize {
        self.inner.seg_size
    }

    pub fn dir(&self) -> &Path {
        self.inner.dir.path()
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
        self.inner.dir.file(name)
    }

    fn segment_names(&self, tli: TimelineId, segno: SegNo) -> (WalFileName, WalFileName) {
        let s = self.inner.seg_size;
        (
            WalFileName::segment(tli, segno, s),
            WalFileName::partial(tli, segno, s),
        )
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
        self.record_history(tli, content)?;
        if let Some(item) = self.relay_item(RelayKind::History, &name, out.len() as u64) {
            self.inner
                .catalog
                .relay_enqueue(&self.inner.cluster, std::slice::from_ref(&item))?;
        }
        Ok(())
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
            let name = WalFileName::history(t.tli);
            let stored_size = if t.history_stored {
                std::fs::metadata(self.path(&name))
                    .map(|m| m.len())
                    .unwrap_or(0)
            } else {
                // Only Tier 2 may hold it (a read-only server's, or Tier 1's copy gone).
                match inner.catalog.tier2_object(
                    &inner.cluster,
                    RelayKind::History,
                    &name.to_string(),
                )? {
                    Some(held) => held.bytes,
                    None => continue,
                }
            };
            out.push(WalEntry {
                name,
                plain_size: 0,
                stored_size,
            });
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
        recompress: false,
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
