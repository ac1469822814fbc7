//! Background recompression of sealed WAL segments whose frames were stored plain.
//!
//! On the synchronous commit path the segment writer stores each flush's frame
//! uncompressed (see `segment_writer`), and a segment sealed that way is marked
//! `recompress` in the catalog. [`WalStore::recompress_pending`] rewrites each such
//! segment: it reads the sealed file back (every frame authenticated, size and CRC-32C
//! against the catalog), writes the same plaintext compressed in 1 MiB frames to
//! `<24 hex>.tmp`, fsyncs it, renames it over the sealed file, fsyncs the directory and
//! then, in one catalog write, records the new size, clears `recompress` and queues the
//! segment for Tier 2. [`Recompressor`] runs that on a low-priority thread of its own,
//! woken whenever a segment is sealed.
//!
//! Crash safety: the sealed file is complete in either form and readers (which open it
//! by name) see one form or the other, never a mix. A crash before the rename leaves a
//! `.tmp` that start-up reconciliation removes; after the rename and before the catalog
//! write, reconciliation finds the size changed, verifies the file and keeps the mark,
//! and the segment is rewritten once more. Until the mark is cleared the segment is not
//! queued for Tier 2 (so Tier 2 only ever holds its final form), backups whose WAL it
//! holds wait to be relayed, and Tier 1 retention keeps it.
//!
//! Writes `<24 hex>.tmp` and renames it to `<24 hex>` in the WAL directory; updates
//! segment records and the relay queue in the catalog.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use klio_catalog::{RelayKind, SegmentRecord, SegmentState};
use klio_core::crashsafe::durable_rename;
use klio_core::failpoint;
use klio_core::frame::FrameSealer;
use klio_core::{SegNo, TimelineId};
use tracing::{debug, error, warn};

use super::{io_err, StoreError, WalStore};

/// Plaintext per frame of a recompressed segment.
const FRAME: usize = 1 << 20;
/// How long a failed pass waits before it is tried again (a seal wakes it sooner).
const RETRY: Duration = Duration::from_secs(60);
/// The recompressor's nice value: it gives way to PostgreSQL and to WAL intake.
const NICE: i32 = 10;

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecompressReport {
    /// Segments rewritten compressed.
    pub rewritten: usize,
    /// Segments left as they were (compressing saved less than 1/16, or Tier 1 no
    /// longer holds them); their mark is cleared.
    pub kept: usize,
    /// Stored bytes before and after, over the rewritten segments.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

impl WalStore {
    /// Rewrites every segment the catalog marks `recompress`, oldest first, and queues
    /// each for Tier 2 once it is final. Returns early (without error) once `stop` is
    /// set; segments named in `skip` are left alone.
    pub fn recompress_pending(
        &self,
        stop: &AtomicBool,
        skip: &HashSet<(TimelineId, SegNo)>,
    ) -> Result<RecompressReport, StoreError> {
        let mut report = RecompressReport::default();
        let mut due: Vec<SegmentRecord> = self
            .inner
            .catalog
            .segments(&self.inner.cluster)?
            .into_iter()
            .filter(|r| r.recompress && !skip.contains(&(r.tli, r.segno)))
            .collect();
        due.sort_by_key(|r| (r.tli, r.segno));
        for rec in due {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            self.recompress_segment(rec, &mut report)?;
        }
        Ok(report)
    }

    /// Segments still marked `recompress`.
    pub fn recompress_backlog(&self) -> Result<usize, StoreError> {
        Ok(self
            .inner
            .catalog
            .segments(&self.inner.cluster)?
            .iter()
            .filter(|r| r.recompress)
            .count())
    }

    fn recompress_segment(
        &self,
        mut rec: SegmentRecord,
        report: &mut RecompressReport,
    ) -> Result<(), StoreError> {
        let inner = &self.inner;
        let name = self.segment_names(rec.tli, rec.segno).0;
        let path = self.path(&name);
        if rec.state != SegmentState::Sealed || !rec.tiers.tier1 {
            // Nothing to rewrite (the mark is only ever set on a sealed Tier 1 copy).
            rec.recompress = false;
            inner.catalog.put_segment(&inner.cluster, &rec)?;
            report.kept += 1;
            return Ok(());
        }
        let Some(mut reader) = self.open_read(&name)? else {
            return Err(StoreError::Corrupt {
                path,
                why: "the catalog marks it for recompression, but the file is missing".into(),
            });
        };
        let tmp = inner.dir.temp(&name);
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(io_err(&tmp))?;
            let (mut sealer, header) = FrameSealer::create(&inner.key, &self.object_id(&name));
            let mut out = Vec::with_capacity(FRAME + (FRAME >> 4));
            out.extend_from_slice(&header);
            let mut pending: Vec<u8> = Vec::with_capacity(FRAME);
            let mut stored = 0u64;
            let mut flush = |pending: &mut Vec<u8>,
                             out: &mut Vec<u8>,
                             sealer: &mut FrameSealer,
                             last: bool|
             -> Result<(), StoreError> {
                if !pending.is_empty() {
                    sealer.seal(pending, out);
                    pending.clear();
                }
                if last {
                    sealer.seal_final(out);
                }
                file.write_all(out).map_err(io_err(&tmp))?;
                stored += out.len() as u64;
                out.clear();
                Ok(())
            };
            // The reader checks the catalog's size and CRC-32C after its last piece.
            while let Some(piece) = reader.next_piece()? {
                let mut piece = &piece[..];
                while !piece.is_empty() {
                    let take = (FRAME - pending.len()).min(piece.len());
                    pending.extend_from_slice(&piece[..take]);
                    piece = &piece[take..];
                    if pending.len() == FRAME {
                        flush(&mut pending, &mut out, &mut sealer, false)?;
                    }
                }
            }
            flush(&mut pending, &mut out, &mut sealer, true)?;
            Ok::<_, StoreError>((file, stored))
        })();
        let (file, stored) = match written {
            Ok(w) => w,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        // Worth a rename only if it saves something (not just frame headers).
        let relay_bytes = if stored.saturating_mul(16) < rec.stored_size.saturating_mul(15) {
            if let Err(e) = file.sync_all() {
                let _ = std::fs::remove_file(&tmp);
                return Err(io_err(&tmp)(e));
            }
            drop(file);
            failpoint::hit("wal-recompress-rename");
            durable_rename(&tmp, &path).map_err(io_err(&path))?;
            failpoint::hit("wal-recompress-catalog");
            report.rewritten += 1;
            report.bytes_before += rec.stored_size;
            report.bytes_after += stored;
            debug!(segment = %name, before = rec.stored_size, after = stored, "recompressed a WAL segment");
            stored
        } else {
            drop(file);
            std::fs::remove_file(&tmp).map_err(io_err(&tmp))?;
            report.kept += 1;
            rec.stored_size
        };
        rec.stored_size = relay_bytes;
        rec.recompress = false;
        let relay = self.relay_item(RelayKind::WalSegment, &name, relay_bytes);
        inner
            .catalog
            .put_segment_queued(&inner.cluster, &rec, relay.as_ref())?;
        Ok(())
    }
}

/// Runs [`WalStore::recompress_pending`] on a thread of its own (nice 10), once at
/// start (segments a previous run left marked) and again whenever [`Recompressor::wake`]
/// is called. Dropping it lets the segment being rewritten finish and joins the thread.
pub struct Recompressor {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    stop: AtomicBool,
    woken: Mutex<bool>,
    cond: Condvar,
}

impl Recompressor {
    pub fn start(store: WalStore) -> std::io::Result<Recompressor> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            woken: Mutex::new(true),
            cond: Condvar::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("klio-recompress".into())
            .spawn(move || run(store, &s))?;
        Ok(Recompressor {
            shared,
            thread: Some(thread),
        })
    }

    /// A segment was sealed: look for work.
    pub fn wake(&self) {
        *self.shared.woken.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.shared.cond.notify_one();
    }
}

impl Drop for Recompressor {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(store: WalStore, shared: &Shared) {
    lower_priority();
    // Segments whose rewrite failed for a reason retrying cannot fix; logged once.
    let mut failed: HashSet<(TimelineId, SegNo)> = HashSet::new();
    let mut retry_in: Option<Duration> = None;
    loop {
        {
            let mut woken = shared.woken.lock().unwrap_or_else(|p| p.into_inner());
            while !*woken && !shared.stop.load(Ordering::Relaxed) {
                woken = match retry_in {
                    Some(d) => {
                        let (w, t) = shared
                            .cond
                            .wait_timeout(woken, d)
                            .unwrap_or_else(|p| p.into_inner());
                        if t.timed_out() {
                            woken = w;
                            break;
                        }
                        w
                    }
                    None => shared.cond.wait(woken).unwrap_or_else(|p| p.into_inner()),
                };
            }
            *woken = false;
        }
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        retry_in = None;
        loop {
            match store.recompress_pending(&shared.stop, &failed) {
                Ok(r) => {
                    if r != RecompressReport::default() {
                        debug!(cluster = %store.cluster(), ?r, "recompression pass");
                    }
                    break;
                }
                Err(e @ (StoreError::Frame { .. } | StoreError::Corrupt { .. })) => {
                    // The segment stays marked (and out of Tier 2) until an operator
                    // looks; the others go on.
                    error!(cluster = %store.cluster(), error = %e, "cannot recompress a stored WAL segment; it stays as it is and is not relayed to Tier 2");
                    match corrupt_segment(&store, &failed) {
                        Some(k) => {
                            failed.insert(k);
                        }
                        None => break,
                    }
                }
                Err(e) => {
                    warn!(cluster = %store.cluster(), error = %e, "recompressing stored WAL failed; retrying in a minute");
                    retry_in = Some(RETRY);
                    break;
                }
            }
        }
    }
}

/// The first marked segment not yet in `failed`: the one the failed pass stopped at.
fn corrupt_segment(
    store: &WalStore,
    failed: &HashSet<(TimelineId, SegNo)>,
) -> Option<(TimelineId, SegNo)> {
    let segs = store.inner.catalog.segments(&store.inner.cluster).ok()?;
    segs.iter()
        .filter(|r| r.recompress && !failed.contains(&(r.tli, r.segno)))
        .map(|r| (r.tli, r.segno))
        .min()
}

/// Lowers this thread's scheduling priority: the recompressor's CPU time should come
/// from what PostgreSQL and WAL intake leave over.
#[allow(unsafe_code)]
fn lower_priority() {
    // SAFETY: setpriority on this thread's own id reads and writes no memory of ours.
    let r = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE)
    };
    if r != 0 {
        debug!(error = %std::io::Error::last_os_error(), "cannot lower the recompressor's priority");
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Instant;

    use klio_catalog::Catalog;
    use klio_core::frame::decode_object;
    use klio_core::layout::DataDir;
    use klio_core::{DataKey, Lsn, WalSegSize};
    use rand::Rng;

    use super::*;
    use crate::wal_store::{SegmentWriter, COMPRESS_INLINE};

    const SEG: u64 = 1 << 20;

    fn store(dir: &Path) -> WalStore {
        let catalog = Arc::new(Catalog::open(&DataDir::new(dir).catalog_dir()).unwrap());
        let s = WalStore::open(
            dir,
            "c1".parse().unwrap(),
            DataKey::generate(),
            WalSegSize::new(SEG).unwrap(),
            catalog,
        )
        .unwrap();
        s.set_relay(true);
        s
    }

    fn tli() -> TimelineId {
        TimelineId::new(1).unwrap()
    }

    /// Hex text: compresses to about half, like WAL full of row data.
    fn wal(bytes: u64) -> Vec<u8> {
        let mut rng = rand::thread_rng();
        let mut v = Vec::with_capacity(bytes as usize + 16);
        while (v.len() as u64) < bytes {
            v.extend_from_slice(format!("{:016x}", rng.gen::<u64>()).as_bytes());
        }
        v.truncate(bytes as usize);
        v
    }

    /// Writes `data` from LSN 0 the way a synchronous standby does: a flush after
    /// every `piece` bytes.
    fn write_synchronously(s: &WalStore, data: &[u8], piece: usize) {
        let mut w = SegmentWriter::new(s.clone());
        let mut at = 0u64;
        for p in data.chunks(piece) {
            w.write(tli(), Lsn(at), p).unwrap();
            w.flush().unwrap();
            at += p.len() as u64;
        }
        w.close().unwrap();
    }

    fn record(s: &WalStore, segno: u64) -> SegmentRecord {
        s.inner
            .catalog
            .segment(&s.inner.cluster, tli(), SegNo(segno))
            .unwrap()
            .unwrap()
    }

    fn queued(s: &WalStore) -> Vec<(String, u64)> {
        s.inner
            .catalog
            .relay_items(&s.inner.cluster)
            .unwrap()
            .into_iter()
            .filter(|i| i.kind == RelayKind::WalSegment)
            .map(|i| (i.name, i.bytes))
            .collect()
    }

    fn sealed_path(s: &WalStore, segno: u64) -> std::path::PathBuf {
        s.path(&s.segment_names(tli(), SegNo(segno)).0)
    }

    /// The segment's plaintext, decoded from its file.
    fn contents(s: &WalStore, segno: u64) -> (Vec<u8>, u64) {
        let name = s.segment_names(tli(), SegNo(segno)).0;
        let bytes = std::fs::read(s.path(&name)).unwrap();
        let obj = decode_object(&s.inner.key, &s.object_id(&name), &bytes, false).unwrap();
        assert!(obj.finished);
        (obj.data, obj.plain_uncompressed)
    }

    fn pass(s: &WalStore) -> RecompressReport {
        s.recompress_pending(&AtomicBool::new(false), &HashSet::new())
            .unwrap()
    }

    #[test]
    fn sync_path_segments_are_sealed_plain_then_rewritten_compressed_and_only_then_queued() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let data = wal(2 * SEG + 5000);
        write_synchronously(&s, &data, 9000);
        for n in 0..2 {
            let rec = record(&s, n);
            assert!(rec.recompress, "segment {n}: {rec:?}");
            assert!(rec.stored_size > SEG, "stored plain: {}", rec.stored_size);
            let (_, plain) = contents(&s, n);
            assert_eq!(plain, SEG, "every frame of segment {n} is stored plain");
        }
        assert!(
            queued(&s).is_empty(),
            "queued before recompression: {:?}",
            queued(&s)
        );
        assert_eq!(s.recompress_backlog().unwrap(), 2);

        let r = pass(&s);
        assert_eq!(r.rewritten, 2, "{r:?}");
        assert!(r.bytes_after * 10 < r.bytes_before * 7, "{r:?}");
        let mut want_queue = Vec::new();
        for n in 0..2 {
            let rec = record(&s, n);
            let len = std::fs::metadata(sealed_path(&s, n)).unwrap().len();
            assert!(!rec.recompress);
            assert_eq!(rec.stored_size, len);
            let (plain, uncompressed) = contents(&s, n);
            assert_eq!(uncompressed, 0, "segment {n} still has plain frames");
            assert!(plain[..] == data[(n * SEG) as usize..((n + 1) * SEG) as usize]);
            want_queue.push((s.segment_names(tli(), SegNo(n)).0.to_string(), len));
        }
        assert_eq!(queued(&s), want_queue);
        assert_eq!(s.recompress_backlog().unwrap(), 0);
        // Nothing left over in the directory, and a second pass has nothing to do.
        assert!(std::fs::read_dir(s.dir()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")));
        assert_eq!(pass(&s), RecompressReport::default());
    }

    #[test]
    fn catch_up_segments_are_compressed_inline_and_queued_at_seal() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let data = wal(2 * SEG);
        write_synchronously(&s, &data, COMPRESS_INLINE);
        for n in 0..2 {
            let rec = record(&s, n);
            assert!(!rec.recompress, "{rec:?}");
            assert!(rec.stored_size * 10 < SEG * 7, "{rec:?}");
        }
        assert_eq!(queued(&s).len(), 2);
        assert_eq!(pass(&s), RecompressReport::default());
    }

    #[test]
    fn incompressible_segments_are_kept_as_they_are_and_queued() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let data: Vec<u8> = (0..SEG).map(|_| rand::random::<u8>()).collect();
        write_synchronously(&s, &data, 9000);
        let before = std::fs::read(sealed_path(&s, 0)).unwrap();
        assert!(record(&s, 0).recompress);
        let r = pass(&s);
        assert_eq!((r.rewritten, r.kept), (0, 1), "{r:?}");
        assert_eq!(std::fs::read(sealed_path(&s, 0)).unwrap(), before);
        assert!(!record(&s, 0).recompress);
        assert_eq!(queued(&s).len(), 1);
    }

    /// A crash after the new form was written and before the rename leaves a `.tmp`;
    /// one after the rename and before the catalog write leaves the catalog's size
    /// stale. Start-up reconciliation sorts both out, and no byte changes.
    #[test]
    fn crashes_while_rewriting_leave_a_complete_segment_that_start_up_sorts_out() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let data = wal(2 * SEG);
        write_synchronously(&s, &data, 9000);

        // Segment 1: rewritten, then the catalog write lost (it would have queued the
        // segment in the same write).
        let stale = record(&s, 1);
        s.set_relay(false);
        s.recompress_segment(stale.clone(), &mut RecompressReport::default())
            .unwrap();
        s.set_relay(true);
        s.inner
            .catalog
            .put_segment(&s.inner.cluster, &stale)
            .unwrap();
        assert!(queued(&s).is_empty());
        // Segment 0: as if the process died before the rename.
        let tmp = s.inner.dir.temp(&s.segment_names(tli(), SegNo(0)).0);
        std::fs::write(&tmp, b"half of a rewritten segment").unwrap();

        let report = s.reconcile().unwrap();
        assert_eq!(report.temp_files_removed, 1, "{report:?}");
        assert!(!tmp.exists());
        // Segment 1's file is already compressed: its record follows the file, and
        // the relay's start-up scan queues it.
        let rec1 = record(&s, 1);
        assert!(!rec1.recompress, "{rec1:?}");
        assert_eq!(
            rec1.stored_size,
            std::fs::metadata(sealed_path(&s, 1)).unwrap().len()
        );
        assert!(record(&s, 0).recompress);
        let r = pass(&s);
        assert_eq!(r.rewritten, 1, "{r:?}");
        for n in 0..2 {
            assert!(contents(&s, n).0[..] == data[(n * SEG) as usize..((n + 1) * SEG) as usize]);
        }
    }

    /// A segment sealed plain and recorded only after a crash (the rename done, the
    /// catalog write lost) is marked at start-up; so is a complete partial sealed then.
    #[test]
    fn segments_sealed_at_start_up_are_marked_from_their_frames() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let data = wal(2 * SEG);
        write_synchronously(&s, &data, 9000);
        // Forget segment 0's record; turn segment 1 back into a complete partial.
        s.inner
            .catalog
            .delete_segment(&s.inner.cluster, tli(), SegNo(0))
            .unwrap();
        let (name1, partial1) = s.segment_names(tli(), SegNo(1));
        let bytes = std::fs::read(s.path(&name1)).unwrap();
        // Drop the final frame (the last 48 bytes: an empty frame and its tag).
        std::fs::write(s.path(&partial1), &bytes[..bytes.len() - 48]).unwrap();
        std::fs::remove_file(s.path(&name1)).unwrap();
        let mut rec1 = record(&s, 1);
        rec1.state = SegmentState::Partial;
        rec1.recompress = false;
        s.inner
            .catalog
            .put_segment(&s.inner.cluster, &rec1)
            .unwrap();

        let report = s.reconcile().unwrap();
        assert_eq!(report.sealed_at_startup, 1, "{report:?}");
        assert!(record(&s, 0).recompress);
        assert!(record(&s, 1).recompress);
        assert_eq!(pass(&s).rewritten, 2);
    }

    /// A tampered segment is not rewritten (its bytes stay as they are, for an operator
    /// to look at), and stays out of Tier 2.
    #[test]
    fn a_tampered_segment_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        write_synchronously(&s, &wal(SEG), 9000);
        let path = sealed_path(&s, 0);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[SEG as usize / 2] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = s
            .recompress_pending(&AtomicBool::new(false), &HashSet::new())
            .unwrap_err();
        assert!(matches!(err, StoreError::Frame { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        assert!(record(&s, 0).recompress);
        assert!(queued(&s).is_empty());
        assert!(!s
            .inner
            .dir
            .temp(&s.segment_names(tli(), SegNo(0)).0)
            .exists());
    }

    /// The background thread: started by the writer, it rewrites what is sealed while
    /// the writer goes on, and what an earlier run left marked.
    #[test]
    fn the_recompressor_thread_rewrites_segments_as_they_are_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let data = wal(3 * SEG);
        // An earlier run's marked segment.
        write_synchronously(&s, &data[..SEG as usize], 9000);
        assert_eq!(s.recompress_backlog().unwrap(), 1);
        let mut w = SegmentWriter::new(s.clone()).with_recompressor().unwrap();
        let mut at = SEG;
        for p in data[SEG as usize..].chunks(9000) {
            w.write(tli(), Lsn(at), p).unwrap();
            w.flush().unwrap();
            at += p.len() as u64;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while s.recompress_backlog().unwrap() > 0 {
            assert!(Instant::now() < deadline, "backlog never drained");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(w);
        for n in 0..3 {
            let (plain, uncompressed) = contents(&s, n);
            assert_eq!(uncompressed, 0);
            assert!(plain[..] == data[(n * SEG) as usize..((n + 1) * SEG) as usize]);
        }
        assert_eq!(queued(&s).len(), 3);
    }
}
