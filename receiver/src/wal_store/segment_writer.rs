//! Appending streamed WAL to Tier 1: [`SegmentWriter`] splits the stream into segments,
//! each an open `.partial` (created under a temporary name, then durably renamed) that
//! is appended to in frames, filled ahead with zeros, fdatasync'ed on flush and sealed
//! (final frame, fdatasync, rename to its sealed name, fsync of the directory, then the
//! catalog, in a write not waited for: reconciliation rebuilds a lost one from the
//! files) once complete. [`FlushStats`] counts the fdatasyncs.
//!
//! Frames of at least [`COMPRESS_INLINE`] bytes (catching up) are compressed as they
//! are written. Smaller ones (a synchronous standby's flush after every commit) are
//! stored plain, as pg_receivewal writes plain WAL: compressing them would put zstd on
//! every commit's round trip. A segment sealed with more than an eighth of its bytes in
//! plain frames is marked `recompress` in the catalog and handed to the background
//! recompressor (`super::recompress`), which rewrites it compressed and only then
//! queues it for Tier 2. While such a segment is written, the writer also hands each
//! byte to the recompressor's idle thread (`super::Feed`, a copy per flush and one
//! hand-over per MiB), so that the rewrite need not read and decrypt the file again.
//!
//! Writes `<24 hex>.partial.tmp`, `<24 hex>.partial` and `<24 hex>` in the WAL directory
//! and the segment records in the catalog.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use klio_catalog::{SegmentRecord, SegmentState};
use klio_core::crashsafe::durable_rename;
use klio_core::failpoint;
use klio_core::frame::{decode_object, FrameSealer, FRAME_HEADER_LEN, HEADER_LEN};
use klio_core::{Lsn, SegNo, TimelineId};

use super::{io_err, tier1_record, StoreError, WalStore};

/// Plaintext buffered before it is framed and written (without fsync).
const FRAME_TARGET: usize = 1 << 20;
/// Frames at least this large are compressed when written; smaller ones are stored
/// plain and compressed later by the recompressor.
pub const COMPRESS_INLINE: usize = 256 << 10;

/// Whether a sealed segment with `plain` of its `total` bytes in uncompressed frames is
/// worth rewriting compressed.
pub(super) fn worth_recompressing(plain: u64, total: u64) -> bool {
    plain > 0 && plain.saturating_mul(8) >= total
}

impl WalStore {
    /// Seals a partial file that is already complete (found so at startup).
    pub(super) fn seal_existing(
        &self,
        tli: TimelineId,
        segno: SegNo,
    ) -> Result<SegmentRecord, StoreError> {
        OpenSegment::resume(self, tli, segno)?.seal(self, &mut FlushStats::default())
    }
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
    /// The file is written up to here: past `stored_len`, zeros (or what a recycled
    /// file held before).
    zeroed_to: u64,
    /// Plaintext bytes written in uncompressed frames.
    stored_plain: u64,
    /// Whether the last frame written was uncompressed (a synchronous standby's flush).
    last_plain: bool,
    /// The file is a recycled spare: past the frames are an old segment's bytes, so
    /// every frame is written followed by [`END_MARK`].
    recycled: bool,
    /// The recompressor's feed: every byte written, while all of them go in plain
    /// frames, so that it can prepare the compressed form as the segment is written
    /// (`super::recompress::feed`). Cut (dropped) at the first frame compressed inline.
    feed: Option<super::Feed>,
}

/// Written after each frame in a recycled file, where the next frame's header goes:
/// zeros, which readers and reconciliation take for "no frame here", as in a file
/// filled with zeros. The next frame overwrites it.
const END_MARK: [u8; FRAME_HEADER_LEN] = [0; FRAME_HEADER_LEN];

/// How far ahead of the frames a partial segment is filled with zeros. Overwriting
/// blocks that are already allocated and written lets fdatasync skip the file-size
/// and extent metadata (an ext4/xfs journal commit), which is what makes the sync
/// path's flush cheap; readers and crash recovery already treat trailing zeros as
/// "no frame here", and sealing truncates them.
const ZERO_AHEAD: u64 = 1 << 20;

/// Zeros are written this much per call. The page cache keeps a file's pages in folios
/// as large as the write that created them (ext4 on Linux 6.x), and every later write
/// and writeback into a folio walks all of its blocks: in a file filled 1 MiB at a time,
/// a commit's 6 KB frame write took 5.7–6.1 µs of CPU against 4.0 in one filled 64 KiB
/// at a time (`klio-bench-sync fill`, `docs/BENCHMARKS.md`). pg_receivewal pads with
/// 8 KiB writes.
const ZERO_CHUNK: usize = 64 << 10;
static ZEROS: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];

/// How much of a new segment's file is filled with zeros when it is created while a
/// synchronous standby's commits are being written (uncompressed frames): the whole
/// segment and room for frame headers, so that no flush within it carries zeros.
///
/// On a disk with a volatile write cache every fdatasync flushes the whole cache, so
/// zeros written anywhere land on the commit batch in flight at the next flush. Filled
/// [`ZERO_AHEAD`] at a time, one batch per MiB of WAL took 1.5–2 ms more: several
/// percent of the commits at 4 clients, and Klio's p99 commit latency was 1.43x
/// pg_receivewal's. Filled once per segment, like pg_receivewal's 16 MB padding, the
/// commits in flight wait once per segment (p99 1.01x; `docs/BENCHMARKS.md`, which
/// also has the variants measured no better: the same zeros written by a background
/// thread, all at once or paced).
pub(super) fn sync_fill_len(seg_bytes: u64) -> u64 {
    HEADER_LEN as u64 + seg_bytes + seg_bytes / 8
}

/// Writes zeros into `file` from `from` up to `to` (nothing if `to <= from`).
fn write_zeros(file: &File, mut from: u64, to: u64) -> io::Result<()> {
    while from < to {
        let n = (to - from).min(ZEROS.len() as u64);
        file.write_all_at(&ZEROS[..n as usize], from)?;
        from += n;
    }
    Ok(())
}

/// Writes zeros from `from` up to `to` and says how far the file is now written: `to`,
/// or `from` on a nearly full volume (cut back to it), where there is no room to fill
/// the segment ahead but the WAL itself may still fit and is filled as it comes
/// ([`ZERO_AHEAD`] at a time).
fn fill_if_room(file: &File, from: u64, to: u64) -> io::Result<u64> {
    match write_zeros(file, from, to) {
        Ok(()) => Ok(to.max(from)),
        Err(e) if klio_core::disk::is_disk_full(&e) => {
            file.set_len(from)?;
            Ok(from)
        }
        Err(e) => Err(e),
    }
}

impl OpenSegment {
    /// Creates the segment's partial file with its header, and zeros up to `fill`
    /// (synced with the header) if that is further and the volume has room for them.
    /// The file is the spare a recompressed segment left (`super::spare`) when there is
    /// one: already written, it needs zeros only where it is shorter than a segment.
    fn create(
        store: &WalStore,
        tli: TimelineId,
        segno: SegNo,
        fill: u64,
    ) -> Result<OpenSegment, StoreError> {
        let partial = store.segment_names(tli, segno).1;
        let path = store.path(&partial);
        let tmp = store.inner.dir.temp(&partial);
        let (sealer, header) = FrameSealer::create(&store.inner.key, &store.object_id(&partial));
        let (file, zeroed_to, recycled) = match store.take_spare(&tmp) {
            Some(file) => {
                // The old segment's bytes stay past the header until overwritten: an
                // end mark where the first frame goes keeps them out of every reader.
                let mut head = header.to_vec();
                head.extend_from_slice(&END_MARK);
                file.write_all_at(&head, 0).map_err(io_err(&tmp))?;
                let len = file.metadata().map_err(io_err(&tmp))?.len();
                let written = len.max(head.len() as u64);
                let whole = HEADER_LEN as u64 + store.seg_size().bytes();
                let zeroed_to = if written < whole {
                    fill_if_room(&file, written, fill).map_err(io_err(&tmp))?
                } else {
                    written
                };
                (file, zeroed_to, true)
            }
            None => {
                let mut file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&tmp)
                    .map_err(io_err(&tmp))?;
                file.write_all(&header).map_err(io_err(&tmp))?;
                let zeroed_to =
                    fill_if_room(&file, HEADER_LEN as u64, fill).map_err(io_err(&tmp))?;
                (file, zeroed_to, false)
            }
        };
        file.sync_all().map_err(io_err(&tmp))?;
        durable_rename(&tmp, &path).map_err(io_err(&path))?;
        if recycled {
            // Its header is durable under the new name: readers may open it.
            file.unlock().map_err(io_err(&path))?;
        }
        failpoint::hit("wal-before-catalog");
        // Unsynced, on the commit path: if a crash loses it, start-up reconciliation
        // records the partial from its file.
        store.inner.catalog.put_segment_queued_unsynced(
            &store.inner.cluster,
            &tier1_record(
                tli,
                segno,
                SegmentState::Partial,
                0,
                None,
                HEADER_LEN as u64,
            ),
            None,
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
            zeroed_to,
            stored_plain: 0,
            last_plain: false,
            recycled,
            feed: None,
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
            stored_plain: obj.plain_uncompressed,
            last_plain: false,
            recycled: false,
            feed: None,
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
        let inline = self.pending.len() >= COMPRESS_INLINE;
        self.sealer.set_compression(inline);
        self.sealer.seal(&self.pending, &mut self.out);
        if !inline {
            self.stored_plain += self.pending.len() as u64;
        }
        self.last_plain = !inline;
        let frame_len = self.out.len() as u64;
        if self.recycled {
            self.out.extend_from_slice(&END_MARK);
        }
        self.fill_ahead(self.stored_len + self.out.len() as u64)?;
        self.file
            .write_all_at(&self.out, self.stored_len)
            .map_err(io_err(&self.path))?;
        self.stored_len += frame_len;
        if inline {
            self.feed = None;
        } else if let Some(feed) = &mut self.feed {
            feed.push(&self.pending);
        }
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
        write_zeros(&self.file, self.zeroed_to.max(self.stored_len), target)
            .map_err(io_err(&self.path))?;
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
        let mut rec = tier1_record(
            self.tli,
            self.segno,
            SegmentState::Sealed,
            self.written,
            Some(self.crc),
            self.stored_len,
        );
        rec.recompress = worth_recompressing(self.stored_plain, self.written);
        // A segment to recompress is queued for Tier 2 once it is in its final form.
        let relay = store
            .relay_item(
                klio_catalog::RelayKind::WalSegment,
                &store.segment_names(self.tli, self.segno).0,
                self.stored_len,
            )
            .filter(|_| !rec.recompress);
        // What was fed goes to the recompressor before the catalog marks the segment,
        // so that its idle thread has the whole segment by the time it claims it.
        if let Some(feed) = self.feed.take().filter(|_| rec.recompress) {
            feed.sealed(self.written, self.crc);
        }
        // Unsynced, on the commit path (the WAL is already durable under its sealed
        // name): if a crash loses this write, start-up reconciliation verifies the
        // sealed file and records it from its frames, marked for recompression when
        // they are plain, and the relay's start-up scan queues it
        // (`segments_sealed_at_start_up_are_marked_from_their_frames`).
        store.inner.catalog.put_segment_queued_unsynced(
            &store.inner.cluster,
            &rec,
            relay.as_ref(),
        )?;
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
    pub(super) recompressor: Option<super::Recompressor>,
    /// Whether the last flush wrote an uncompressed frame: the next segment is then
    /// created filled whole ([`sync_fill_len`]).
    sync_mode: bool,
}

impl SegmentWriter {
    pub fn new(store: WalStore) -> SegmentWriter {
        SegmentWriter {
            store,
            open: None,
            durable: None,
            sealed_count: 0,
            flush_stats: FlushStats::default(),
            recompressor: None,
            sync_mode: false,
        }
    }

    /// Starts a [`super::Recompressor`] for the store, woken at every seal of a segment
    /// marked `recompress`, and stopped when the writer is dropped.
    pub fn with_recompressor(mut self) -> std::io::Result<SegmentWriter> {
        self.recompressor = Some(super::Recompressor::start(self.store.clone())?);
        Ok(self)
    }

    pub fn store(&self) -> &WalStore {
        &self.store
    }

    /// End of WAL known durable (fdatasync'ed), if any was written by this writer.
    pub fn durable(&self) -> Option<(TimelineId, Lsn)> {
        self.durable
    }

    /// A live handle on its recompressor's counts of segments rewritten (none without a
    /// recompressor).
    pub fn recompress_counts(&self) -> Option<super::RewriteCounts> {
        self.recompressor.as_ref().map(super::Recompressor::counts)
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
                let rec = o.seal(&self.store, &mut self.flush_stats)?;
                if rec.recompress {
                    if let Some(r) = &self.recompressor {
                        r.wake();
                    }
                }
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
            let fill = if self.sync_mode {
                sync_fill_len(self.store.seg_size().bytes())
            } else {
                0
            };
            let mut o = OpenSegment::create(&self.store, tli, segno, fill)?;
            o.feed = self
                .recompressor
                .as_ref()
                .and_then(|r| r.feed(tli, segno, self.store.seg_size().bytes()));
            o
        };
        self.durable = Some((
            tli,
            Lsn(segno.start_lsn(self.store.seg_size()).0 + o.durable),
        ));
        Ok(Some(o))
    }

    /// Stored bytes (header and frames) of the open segment, for tests.
    #[cfg(test)]
    pub(super) fn open_stored_len(&self) -> Option<u64> {
        self.open.as_ref().map(|o| o.stored_len)
    }

    /// Makes everything written so far durable; returns the durable end position.
    pub fn flush(&mut self) -> Result<Option<(TimelineId, Lsn)>, StoreError> {
        if let Some(o) = self.open.as_mut() {
            o.sync(&mut self.flush_stats)?;
            failpoint::hit("wal-after-fsync");
            self.sync_mode = o.last_plain;
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
    use std::path::Path;
    use std::sync::Arc;

    use klio_catalog::Catalog;
    use klio_core::layout::DataDir;
    use klio_core::{DataKey, WalSegSize};

    fn store(dir: &Path) -> WalStore {
        let catalog = Arc::new(Catalog::open(&DataDir::new(dir).catalog_dir()).unwrap());
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

    /// A synchronous standby's writer (uncompressed frames) creates each next segment
    /// filled whole with zeros, so that no commit's flush within it carries zeros; a
    /// writer catching up (compressed frames) fills 1 MiB at a time. The data reads
    /// back the same either way, and sealing drops the zeros.
    #[test]
    fn a_synchronous_writer_creates_each_next_segment_filled_whole() {
        const SEG: u64 = 1 << 20;
        for (piece, whole) in [(9000usize, true), (512 << 10, false)] {
            let dir = tempfile::tempdir().unwrap();
            let catalog = Arc::new(Catalog::open(&DataDir::new(dir.path()).catalog_dir()).unwrap());
            let s = WalStore::open(
                dir.path(),
                "c1".parse().unwrap(),
                DataKey::generate(),
                WalSegSize::new(SEG).unwrap(),
                catalog,
            )
            .unwrap();
            let wal: Vec<u8> = (0..3 * SEG).map(|_| rand::random::<u8>()).collect();
            let mut w = SegmentWriter::new(s.clone());
            let mut at = 0u64;
            let mut created = Vec::new();
            for p in wal.chunks(piece) {
                let before = w.open.as_ref().map(|o| o.segno);
                w.write(tli1(), Lsn(at), p).unwrap();
                if let Some(o) = w.open.as_ref().filter(|o| Some(o.segno) != before) {
                    // Just created: its file as creation left it (plus this write).
                    let len = std::fs::metadata(&o.path).unwrap().len();
                    created.push((o.segno.0, len));
                }
                w.flush().unwrap();
                at += p.len() as u64;
            }
            w.close().unwrap();
            // Segment 0 follows no flush; 1 and 2 follow the first mode's flushes.
            assert_eq!(created.len(), 3, "{created:?}");
            for &(n, len) in &created[1..] {
                if whole {
                    assert_eq!(len, sync_fill_len(SEG), "segment {n}");
                } else {
                    assert!(len < SEG, "segment {n}: {len}");
                }
            }
            for n in 0..3u64 {
                let name = s.segment_names(tli1(), SegNo(n)).0;
                let bytes = std::fs::read(s.path(&name)).unwrap();
                let obj = decode_object(&s.inner.key, &s.object_id(&name), &bytes, false).unwrap();
                assert!(obj.finished);
                assert_eq!(obj.valid_stored_len, bytes.len() as u64);
                assert!(obj.data[..] == wal[(n * SEG) as usize..((n + 1) * SEG) as usize]);
            }
        }
    }
}
