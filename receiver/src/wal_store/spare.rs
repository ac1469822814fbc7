//! Recycling segment files: the plain file a recompressed segment leaves behind is kept
//! as the WAL directory's one spare ([`WalDir::spare`](klio_core::layout::WalDir::spare))
//! and becomes the next segment's file, already allocated and written, so a synchronous
//! standby's writer does not have to fill a new segment with zeros (PostgreSQL recycles
//! its WAL segments for the same reason). Its old bytes are never read: the new header
//! has a new salt, so an old frame never authenticates, and the writer puts zeros where
//! the next frame header would go after every frame it writes
//! ([`segment_writer`](super::segment_writer)), so readers and start-up reconciliation
//! find the end of the frames just as in a zero-filled file.
//!
//! Lifecycle, each step crash-safe:
//! 1. The recompressor, with the compressed copy fsynced, hard-links the sealed file to
//!    the spare name ([`WalStore::link_spare`]), then renames the copy over the sealed
//!    name (the old inode lives on as the spare) and only after that durable rename
//!    marks the spare ready ([`WalStore::spare_is_ready`]). A crash in between leaves a
//!    spare that may still be a live segment's second name: start-up reconciliation
//!    deletes the spare name, which never touches that segment, and a spare is only
//!    ever taken when this process marked it ready.
//! 2. The writer takes it when it creates a segment ([`WalStore::take_spare`]): an
//!    exclusive `flock` that fails while a reader still has the old file open (then the
//!    spare is deleted instead and the segment is created the usual way), and a rename
//!    to the new segment's temporary name.
//!
//! Readers of stored WAL hold a shared `flock` on the file they read, taken right after
//! opening it and checked against what the name points to ([`open_locked`]), so a file
//! being read is never recycled under a reader.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::Ordering;

use tracing::{debug, warn};

use super::WalStore;

impl WalStore {
    /// Gives the sealed file at `sealed` a second name, the spare, before the
    /// recompressor renames the compressed copy over it. `false` if there is already a
    /// spare (or the link failed): the old file is then freed by the rename as usual.
    pub(super) fn link_spare(&self, sealed: &Path) -> bool {
        match std::fs::hard_link(sealed, self.inner.dir.spare()) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => {
                debug!(error = %e, "could not keep a recompressed segment's file as a spare");
                false
            }
        }
    }

    /// The spare linked by [`WalStore::link_spare`] is now its file's only name (the
    /// rename over the sealed name is durable): the writer may take it.
    pub(super) fn spare_is_ready(&self) {
        self.inner.spare_ready.store(true, Ordering::Release);
    }

    /// Removes the spare name after [`WalStore::link_spare`] when the rename that was
    /// to follow failed (the file is still the sealed segment's: only a name goes).
    pub(super) fn unlink_spare(&self) {
        let spare = self.inner.dir.spare();
        if let Err(e) = std::fs::remove_file(&spare) {
            warn!(path = %spare.display(), error = %e, "could not remove the spare segment file");
        }
    }

    /// Takes the spare, if one is ready and no reader has it open, renamed to `to` and
    /// opened for reading and writing under an exclusive `flock` (released when the
    /// caller has made the new segment's header durable). Its content is the old
    /// segment's, to be overwritten.
    pub(super) fn take_spare(&self, to: &Path) -> Option<File> {
        if !self.inner.spare_ready.swap(false, Ordering::AcqRel) {
            return None;
        }
        let spare = self.inner.dir.spare();
        let taken = (|| {
            let file = OpenOptions::new().read(true).write(true).open(&spare)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => return Ok(None),
                Err(TryLockError::Error(e)) => return Err(e),
            }
            std::fs::rename(&spare, to)?;
            Ok(Some(file))
        })();
        match taken {
            Ok(Some(file)) => Some(file),
            Ok(None) => {
                debug!("a reader still has the spare segment file open; not reusing it");
                let _ = std::fs::remove_file(&spare);
                None
            }
            Err(e) => {
                warn!(path = %spare.display(), error = %e, "could not reuse the spare segment file");
                let _ = std::fs::remove_file(&spare);
                None
            }
        }
    }
}

/// Opens `path` for reading under a shared `flock`, so that the file cannot become a
/// spare and be overwritten while it is read. Checks after locking that `path` still
/// names the file opened (a recompressed segment is renamed over its old file, which
/// may then be recycled): otherwise opens it again. `Ok(None)` when it does not exist.
pub(super) fn open_locked(path: &Path) -> io::Result<Option<File>> {
    for _ in 0..16 {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match file.try_lock_shared() {
            Ok(()) => {}
            // The writer is turning this (old) file into a new segment.
            Err(TryLockError::WouldBlock) => continue,
            Err(TryLockError::Error(e)) => return Err(e),
        }
        let opened = file.metadata()?;
        match std::fs::metadata(path) {
            Ok(now) if now.ino() == opened.ino() && now.dev() == opened.dev() => {
                return Ok(Some(file))
            }
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(
        "the file was replaced again and again while being opened",
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use klio_catalog::Catalog;
    use klio_core::frame::{decode_object, FRAME_HEADER_LEN};
    use klio_core::layout::DataDir;
    use klio_core::{DataKey, Lsn, SegNo, TimelineId, WalSegSize};

    use super::*;
    use crate::wal_store::SegmentWriter;

    const SEG: u64 = 1 << 20;

    fn store(dir: &Path, key: &DataKey) -> WalStore {
        let catalog = Arc::new(Catalog::open(&DataDir::new(dir).catalog_dir()).unwrap());
        WalStore::open(
            dir,
            "c1".parse().unwrap(),
            key.clone(),
            WalSegSize::new(SEG).unwrap(),
            catalog,
        )
        .unwrap()
    }

    fn tli() -> TimelineId {
        TimelineId::new(1).unwrap()
    }

    /// Hex text, which the recompressor shrinks to about half.
    fn wal(bytes: u64) -> Vec<u8> {
        (0..bytes)
            .map(|_| b"0123456789abcdef"[rand::random::<u8>() as usize % 16])
            .collect()
    }

    /// Appends `data[from..to]` the way a synchronous standby does (a flush per piece).
    fn write(w: &mut SegmentWriter, data: &[u8], from: u64, to: u64) {
        let mut at = from;
        for p in data[from as usize..to as usize].chunks(9000) {
            w.write(tli(), Lsn(at), p).unwrap();
            w.flush().unwrap();
            at += p.len() as u64;
        }
    }

    fn path(s: &WalStore, segno: u64, partial: bool) -> std::path::PathBuf {
        let (sealed, part) = s.segment_names(tli(), SegNo(segno));
        s.path(if partial { &part } else { &sealed })
    }

    fn ino(p: &Path) -> u64 {
        std::fs::metadata(p).unwrap().ino()
    }

    /// Every sealed segment decodes strictly (final frame, nothing after it) to `data`.
    fn assert_sealed(s: &WalStore, data: &[u8], segs: u64) {
        for n in 0..segs {
            let name = s.segment_names(tli(), SegNo(n)).0;
            let bytes = std::fs::read(s.path(&name)).unwrap();
            let obj = decode_object(&s.inner.key, &s.object_id(&name), &bytes, false).unwrap();
            assert!(obj.finished, "segment {n}");
            assert!(obj.data[..] == data[(n * SEG) as usize..((n + 1) * SEG) as usize]);
        }
    }

    fn recompress(s: &WalStore) {
        let r = s.recompress_pending(&AtomicBool::new(false)).unwrap();
        assert_eq!(r.rewritten, 1, "{r:?}");
    }

    /// The plain file a recompressed segment leaves becomes the next segment's file. Its
    /// old bytes are never read: not by a reader of the open partial, not by start-up
    /// reconciliation (no torn tail), not after appending resumes, not once sealed.
    #[test]
    fn a_recompressed_segments_old_file_becomes_the_next_segments_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), &DataKey::generate());
        let data = wal(3 * SEG);
        let mut w = SegmentWriter::new(s.clone());
        write(&mut w, &data, 0, SEG);
        let old = ino(&path(&s, 0, false));
        recompress(&s);
        assert_ne!(ino(&path(&s, 0, false)), old, "rewritten under a new file");
        assert_eq!(
            ino(&s.inner.dir.spare()),
            old,
            "the old file kept as the spare"
        );

        // Segment 1 is created in it.
        let half = SEG + SEG / 2;
        write(&mut w, &data, SEG, half);
        let partial = path(&s, 1, true);
        assert_eq!(ino(&partial), old, "segment 1 reuses the spare");
        assert!(!s.inner.dir.spare().exists());
        let stored = w.open_stored_len().unwrap();
        let bytes = std::fs::read(&partial).unwrap();
        assert!(
            bytes[stored as usize + FRAME_HEADER_LEN..]
                .iter()
                .any(|&b| b != 0),
            "the old segment's bytes follow the frames (what this test is about)"
        );
        let live = s
            .open_read(&s.segment_names(tli(), SegNo(1)).1)
            .unwrap()
            .unwrap()
            .read_all()
            .unwrap();
        assert!(
            live[..] == data[SEG as usize..half as usize],
            "a reader of the partial"
        );

        // As after a crash: the old bytes are no torn tail, and are cut off.
        w.abandon();
        let report = s.reconcile().unwrap();
        assert_eq!(report.torn_bytes_dropped, 0, "{report:?}");
        assert_eq!(std::fs::metadata(&partial).unwrap().len(), stored);
        let mut w = SegmentWriter::new(s.clone());
        write(&mut w, &data, half, 3 * SEG);
        w.close().unwrap();
        assert_sealed(&s, &data, 3);
    }

    /// A file a reader has open is not recycled: the reader reads the old segment to
    /// its end, intact, and the next segment gets a new file.
    #[test]
    fn a_file_still_being_read_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), &DataKey::generate());
        let data = wal(2 * SEG);
        let mut w = SegmentWriter::new(s.clone());
        write(&mut w, &data, 0, SEG);
        let old = ino(&path(&s, 0, false));
        let mut reader = s
            .open_read(&s.segment_names(tli(), SegNo(0)).0)
            .unwrap()
            .unwrap();
        let mut read = reader.next_piece().unwrap().unwrap();
        recompress(&s);
        assert_eq!(ino(&s.inner.dir.spare()), old);

        write(&mut w, &data, SEG, 2 * SEG);
        assert_ne!(
            ino(&path(&s, 1, false)),
            old,
            "segment 1 has a file of its own"
        );
        assert!(
            !s.inner.dir.spare().exists(),
            "the refused spare is deleted"
        );
        while let Some(piece) = reader.next_piece().unwrap() {
            read.extend_from_slice(&piece);
        }
        assert!(
            read[..] == data[..SEG as usize],
            "the reader's old file was left alone"
        );
        assert_sealed(&s, &data, 2);
    }

    /// A crash between linking the spare and renaming the compressed copy over the
    /// sealed name leaves the spare as a second name of a live segment. A new process
    /// never writes into it, and start-up removes the name, not the segment.
    #[test]
    fn a_spare_left_by_a_crash_is_never_written_and_goes_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let key = DataKey::generate();
        let s = store(dir.path(), &key);
        let data = wal(2 * SEG);
        let mut w = SegmentWriter::new(s.clone());
        write(&mut w, &data, 0, SEG);
        w.close().unwrap();
        assert!(s.link_spare(&path(&s, 0, false)));
        drop((w, s));

        let s = store(dir.path(), &key);
        let mut w = SegmentWriter::new(s.clone());
        write(&mut w, &data, SEG, SEG + 9000);
        assert_ne!(ino(&path(&s, 1, true)), ino(&path(&s, 0, false)));
        w.close().unwrap();
        let report = s.reconcile().unwrap();
        assert_eq!(report.temp_files_removed, 1, "{report:?}");
        assert!(!s.inner.dir.spare().exists());
        assert_sealed(&s, &data, 1);
    }
}
