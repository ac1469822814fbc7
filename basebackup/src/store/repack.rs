//! Repacking: the live chunks of a pack most of whose chunks no backup references any
//! more are copied, byte for byte (each chunk is a self-contained Klio object, bound to
//! its id and not to its place), into a new pack `<id>-r<n>.pack` with an index
//! `<id>-r<n>.index` ([`PackIndex`]) that places them for a reader of the files or the
//! bucket. One synced catalog write then moves the chunk records there, records the new
//! pack with no live chunk left in the old one, and queues the new pack and its index for
//! Tier 2. The old pack is untouched: retention removes it from each tier once nothing
//! places a chunk there (from Tier 2 only once the new pack and its index are there).
//!
//! Crash safety: before the catalog write, the new files are ones no pack record knows,
//! which [`ChunkStore::recover`] deletes at start-up; after it, they are ordinary packs.
//! A chunk is copied only after it was authenticated where it was read from.

use std::fs::File;
use std::io::Write;

use klio_catalog::{ChunkRecord, PackRecord, RelayItem, RelayKind, Relocation};
use klio_core::clock::unix_now;
use klio_core::crashsafe::fsync_dir;
use klio_core::frame::ObjectKind;
use klio_core::layout::PackName;
use klio_core::manifest::{ChunkId, IndexedChunk, PackIndex, PACK_INDEX_VERSION};

use super::{io, BackupStoreError, ChunkStore, Result};

/// Chunks with their catalog records.
type Chunks = Vec<([u8; 32], ChunkRecord)>;

/// What [`ChunkStore::repack`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repacked {
    pub old: String,
    pub new: PackName,
    pub chunks: u32,
    /// The new pack's size.
    pub bytes: u64,
}

impl ChunkStore {
    /// Copies the chunks `live` (the ids the catalog places in pack `old`, each with its
    /// record) into the new pack `new`; see the module documentation. The caller keeps
    /// backups and other repacks away while this runs.
    pub fn repack(
        &self,
        old: &str,
        live: &[([u8; 32], ChunkRecord)],
        new: &PackName,
    ) -> Result<Repacked> {
        if !new.is_repack() {
            return Err(BackupStoreError::Usage(format!(
                "{new} is not a repacked pack's name"
            )));
        }
        let path = self.inner.dir.pack(new);
        let index_path = self.inner.dir.pack_index(new);
        let written = self.write_repacked(old, live, new, &path, &index_path);
        let (moves, size) = match written {
            Ok(w) => w,
            Err(e) => {
                // Nothing refers to them: leave no half-written pack behind.
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_file(&index_path);
                return Err(e);
            }
        };
        let name = new.to_string();
        let index_size = std::fs::metadata(&index_path)
            .map_err(io(&index_path))?
            .len();
        let now = unix_now();
        let relay = if self.relays() {
            vec![
                RelayItem::new(RelayKind::Pack, name.clone(), size, now),
                RelayItem::new(RelayKind::PackIndex, name.clone(), index_size, now),
            ]
        } else {
            Vec::new()
        };
        let chunks = moves.len() as u32;
        self.inner.catalog.relocate_chunks(
            &self.inner.cluster,
            &Relocation {
                moves,
                packs: vec![PackRecord {
                    name,
                    size,
                    chunks,
                    live_chunks: chunks,
                }],
                emptied: vec![old.to_string()],
                relay,
            },
        )?;
        Ok(Repacked {
            old: old.to_string(),
            new: new.clone(),
            chunks,
            bytes: size,
        })
    }

    /// Writes the new pack and its index durably; returns the chunks' new records and
    /// the pack's size.
    fn write_repacked(
        &self,
        old: &str,
        live: &[([u8; 32], ChunkRecord)],
        new: &PackName,
        path: &std::path::Path,
        index_path: &std::path::Path,
    ) -> Result<(Chunks, u64)> {
        let mut sorted: Vec<&([u8; 32], ChunkRecord)> = live.iter().collect();
        sorted.sort_by_key(|(_, c)| c.offset);
        let mut f = File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io(path))?;
        let old_path = self.pack_path(old)?;
        let old_file = File::open(&old_path).ok();
        let mut offset = 0u64;
        let mut moves = Vec::with_capacity(sorted.len());
        let mut placed = Vec::with_capacity(sorted.len());
        for (id, rec) in sorted {
            if rec.pack != old {
                return Err(BackupStoreError::Usage(format!(
                    "chunk {} is in pack {}, not {old}",
                    ChunkId(*id),
                    rec.pack
                )));
            }
            let bytes = self.stored_chunk(old_file.as_ref(), &ChunkId(*id), rec)?;
            f.write_all(&bytes).map_err(io(path))?;
            let moved = ChunkRecord {
                pack: new.to_string(),
                offset,
                stored_len: rec.stored_len,
                plain_len: rec.plain_len,
                refs: rec.refs,
                tier1_freed: false,
            };
            placed.push(IndexedChunk {
                id: ChunkId(*id),
                pack: new.to_string(),
                offset,
                stored_len: rec.stored_len,
                plain_len: rec.plain_len,
            });
            offset += u64::from(rec.stored_len);
            moves.push((*id, moved));
        }
        f.sync_all().map_err(io(path))?;
        drop(f);
        let index = PackIndex {
            version: PACK_INDEX_VERSION,
            pack: new.to_string(),
            chunks: placed,
        };
        let json = serde_json::to_vec(&index).expect("pack indexes serialise");
        self.write_object(index_path, ObjectKind::PackIndex, &new.to_string(), &json)?;
        let dir = self.packs_dir();
        fsync_dir(&dir).map_err(io(&dir))?;
        Ok((moves, offset))
    }

    /// A chunk's stored bytes, authenticated: from Tier 1's pack when it still holds
    /// them, from the fallback source (Tier 2) otherwise.
    fn stored_chunk(
        &self,
        tier1: Option<&File>,
        id: &ChunkId,
        rec: &ChunkRecord,
    ) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let len = rec.stored_len as usize;
        if let (Some(f), false) = (tier1, rec.tier1_freed) {
            let mut buf = vec![0u8; len];
            if f.read_exact_at(&mut buf, rec.offset).is_ok()
                && self.decode_chunk(&buf, id, rec, false).is_ok()
            {
                return Ok(buf);
            }
        }
        let Some(source) = self.inner.fallback.get() else {
            let path = self.pack_path(&rec.pack)?;
            return Err(io(&path)(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the chunk is not readable in Tier 1 and no other tier is configured",
            )));
        };
        let pack: PackName = rec.pack.parse().map_err(|e| BackupStoreError::BadObject {
            path: self.packs_dir(),
            why: format!("the catalog refers to an {e}"),
        })?;
        let shown = std::path::PathBuf::from(format!("{}/{}.pack", source.describe(), rec.pack));
        let buf = source
            .pack_range(&pack, rec.offset, len as u64)
            .map_err(io(&shown))?
            .ok_or_else(|| {
                io(&shown)(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the pack is in neither Tier 1 nor Tier 2",
                ))
            })?;
        if buf.len() != len {
            return Err(BackupStoreError::BadObject {
                path: shown,
                why: format!("{} bytes read, {len} expected", buf.len()),
            });
        }
        self.decode_chunk(&buf, id, rec, false)?;
        Ok(buf)
    }
}
