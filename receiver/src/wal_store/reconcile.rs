//! Start-up reconciliation of one cluster's Tier 1 WAL store: [`WalStore::reconcile`]
//! brings the WAL directory and the catalog into agreement after a restart or crash, and
//! [`WalStore::resume_point`] says where streaming resumes.
//!
//! Writes in the WAL directory (its names classified by `klio_core::layout::WalDirEntry`):
//! removes temporary files (`<WAL file name>.tmp`), the spare segment file (`spare`)
//! and `.partial` files that a sealed copy supersedes, truncates torn tails of
//! `.partial` files (and fsyncs them), seals complete `.partial` files; in the catalog, adds, corrects or removes segment records
//! and records stored timeline history files.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use klio_catalog::{SegmentRecord, SegmentState};
use klio_core::crashsafe::{durable_rename, fsync_dir};
use klio_core::frame::{decode_object, FRAME_HEADER_LEN};
use klio_core::layout::WalDirEntry;
use klio_core::{Lsn, SegNo, TimelineId, WalFileName};
use tracing::{info, warn};

use super::segment_writer::worth_recompressing;
use super::{io_err, tier1_record, StoreError, WalStore};

/// A partial file after [`WalStore::repair_partial`].
struct RepairedPartial {
    /// Plaintext bytes in its valid frames.
    plain: u64,
    /// Stored bytes of its valid frames (and header).
    stored: u64,
    /// It carries the final frame.
    finished: bool,
    crc: u32,
    /// Plaintext bytes in frames stored uncompressed.
    plain_uncompressed: u64,
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

impl WalStore {
    /// Brings catalog and files into agreement after a restart or crash.
    pub fn reconcile(&self) -> Result<ReconcileReport, StoreError> {
        let inner = &self.inner;
        let mut report = ReconcileReport::default();
        let mut sealed: BTreeMap<(TimelineId, SegNo), PathBuf> = BTreeMap::new();
        let mut partial: BTreeMap<(TimelineId, SegNo), PathBuf> = BTreeMap::new();
        let mut histories = Vec::new();
        let dir = inner.dir.path();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let path = entry.path();
            let (files, name) = match WalDirEntry::parse(entry.file_name()) {
                WalDirEntry::Sealed(name) => (&mut sealed, name),
                WalDirEntry::Partial(name) => (&mut partial, name),
                WalDirEntry::History(name) => {
                    histories.push(name.timeline());
                    continue;
                }
                WalDirEntry::Temp(_) | WalDirEntry::Spare => {
                    std::fs::remove_file(&path).map_err(io_err(&path))?;
                    report.temp_files_removed += 1;
                    continue;
                }
                WalDirEntry::Unknown => {
                    warn!(path = %path.display(), "ignoring an unexpected file in the WAL directory");
                    continue;
                }
            };
            match name.segno(inner.seg_size) {
                Ok(segno) => {
                    if let Some(segno) = segno {
                        files.insert((name.timeline(), segno), path);
                    }
                }
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "ignoring a WAL file that does not fit the segment size")
                }
            }
        }
        if report.temp_files_removed > 0 {
            fsync_dir(dir).map_err(io_err(dir))?;
        }

        for (&(tli, segno), path) in &partial {
            if sealed.contains_key(&(tli, segno)) {
                // The sealed copy is complete and authoritative.
                std::fs::remove_file(path).map_err(io_err(path))?;
                fsync_dir(dir).map_err(io_err(dir))?;
                continue;
            }
            let r = self.repair_partial(tli, segno, path, &mut report)?;
            let (plain, stored, finished) = (r.plain, r.stored, r.finished);
            if plain == inner.seg_size.bytes() {
                if finished {
                    // Crashed between writing the final frame and the rename.
                    self.finish_seal(tli, segno, path, &r)?;
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
            // Either form may be here after a crash while recompressing; the frames say
            // which. A segment no longer marked is queued for Tier 2 by the relay's
            // start-up scan.
            let recompress = worth_recompressing(obj.plain_uncompressed, obj.data.len() as u64);
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
                    recompress,
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
                if rec.tiers.tier2 && rec.state == SegmentState::Sealed {
                    // Retention deleted Tier 1's copy (and stopped before recording it):
                    // Tier 2 still holds the segment.
                    let mut rec = rec;
                    rec.tiers.tier1 = false;
                    inner.catalog.put_segment(&inner.cluster, &rec)?;
                    continue;
                }
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

    /// Drops a torn tail from a partial file and says what remains.
    fn repair_partial(
        &self,
        tli: TimelineId,
        segno: SegNo,
        path: &Path,
        report: &mut ReconcileReport,
    ) -> Result<RepairedPartial, StoreError> {
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
            // Zeros where the next frame would start are the end of the frames: the
            // space the writer fills ahead (see `ZERO_AHEAD`), or its end mark in a
            // recycled file, whose older bytes follow. A frame begun there and cut
            // short by the crash is a torn tail.
            let tail = &bytes[obj.valid_stored_len as usize..];
            let next_header = &tail[..tail.len().min(FRAME_HEADER_LEN)];
            if next_header.iter().any(|&b| b != 0) {
                report.torn_bytes_dropped += tail.len() as u64;
                warn!(path = %path.display(), dropped = tail.len(),
                    "dropped an unacknowledged torn tail from a partial segment");
            }
        }
        f.sync_all().map_err(io_err(path))?;
        Ok(RepairedPartial {
            plain: obj.data.len() as u64,
            stored: obj.valid_stored_len,
            finished: obj.finished,
            crc: crc32c::crc32c(&obj.data),
            plain_uncompressed: obj.plain_uncompressed,
        })
    }

    /// Renames a complete partial (final frame durable) to its sealed name and records it.
    fn finish_seal(
        &self,
        tli: TimelineId,
        segno: SegNo,
        path: &Path,
        r: &RepairedPartial,
    ) -> Result<(), StoreError> {
        let sealed = self.path(&self.segment_names(tli, segno).0);
        durable_rename(path, &sealed).map_err(io_err(&sealed))?;
        let mut rec = tier1_record(
            tli,
            segno,
            SegmentState::Sealed,
            self.inner.seg_size.bytes(),
            Some(r.crc),
            r.stored,
        );
        rec.recompress = worth_recompressing(r.plain_uncompressed, r.plain);
        self.inner.catalog.put_segment(&self.inner.cluster, &rec)?;
        Ok(())
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
                let r = self.repair_partial(last.tli, last.segno, &path, &mut report)?;
                Lsn(start.0 + r.plain)
            }
        };
        Ok(Some((last.tli, end)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use klio_catalog::Catalog;
    use klio_core::layout::DataDir;
    use klio_core::{DataKey, WalSegSize};

    use super::*;

    /// Reconciliation lists the WAL directory through `layout::WalDirEntry`: Klio's own
    /// temporary files go, a file Klio does not write stays, a stored history file is
    /// recorded.
    #[test]
    fn start_up_removes_klios_temp_files_and_leaves_foreign_files_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let data = DataDir::new(tmp.path());
        let catalog = Arc::new(Catalog::open(&data.catalog_dir()).unwrap());
        let cluster: klio_core::ClusterName = "c1".parse().unwrap();
        let seg = WalSegSize::DEFAULT;
        let store = WalStore::open(
            tmp.path(),
            cluster.clone(),
            DataKey::generate(),
            seg,
            catalog,
        )
        .unwrap();
        let tli = TimelineId::new(2).unwrap();
        store
            .store_history(tli, b"1\t0/3000000\tno recovery target specified\n")
            .unwrap();
        let wal = data.wal(&cluster);
        let partial = WalFileName::partial(TimelineId::new(1).unwrap(), SegNo(5), seg);
        let ours = [wal.temp(&partial), wal.temp(&WalFileName::history(tli))];
        let foreign = [wal.path().join("notes.tmp"), wal.path().join("README")];
        for p in ours.iter().chain(&foreign) {
            std::fs::write(p, b"x").unwrap();
        }
        let report = store.reconcile().unwrap();
        assert_eq!(report.temp_files_removed, 2);
        for p in &ours {
            assert!(!p.exists(), "{p:?} was left");
        }
        for p in &foreign {
            assert!(p.exists(), "{p:?} was removed");
        }
        assert!(wal.history(tli).exists());
        assert_eq!(report.sealed + report.partial, 0);
    }
}
