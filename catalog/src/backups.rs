//! Base-backup records: backups, chunks (with reference counts) and pack files.
//!
//! Keys: `b/<cluster>/<backup id>`, `k/<cluster>/<32-byte chunk id>`,
//! `p/<cluster>/<pack name>`. A backup's chunk records, reference counts, pack
//! records and its `complete` state are written in one synced batch
//! ([`Catalog::commit_backup`]), so a crash never leaves a half-visible backup.

use klio_core::{BackupId, ClusterName, Lsn, TimelineId};
use rocksdb::{WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};

use crate::{decode, encode, Catalog, RelayItem, Result};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    /// `BASE_BACKUP` over a replication connection.
    Stream,
    /// A directory of files (a snapshot's PGDATA with its `backup_label`).
    Offload,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackupState {
    Running,
    Complete,
    Failed,
}

/// One base backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupRecord {
    pub id: BackupId,
    pub label: String,
    pub kind: BackupKind,
    pub state: BackupState,
    pub error: Option<String>,
    pub start_lsn: Lsn,
    pub start_tli: TimelineId,
    pub end_lsn: Option<Lsn>,
    pub end_tli: Option<TimelineId>,
    pub started_unix: u64,
    pub finished_unix: Option<u64>,
    pub pg_version: Option<u32>,
    /// Bytes of the files as received.
    pub logical_bytes: u64,
    /// Stored bytes of every distinct chunk the backup references.
    pub stored_bytes: u64,
    /// Stored bytes of the chunks this backup wrote first.
    pub new_bytes: u64,
    pub files: u64,
    /// Distinct chunks referenced.
    pub chunks: u64,
    pub new_chunks: u64,
    /// Pack files this backup created.
    pub packs: Vec<String>,
}

/// Where one chunk is stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkRecord {
    pub pack: String,
    pub offset: u64,
    pub stored_len: u32,
    pub plain_len: u32,
    /// Complete backups referencing it (each counts once).
    pub refs: u32,
    /// Retention freed its bytes in Tier 1's pack (no backup Tier 1 keeps references
    /// it; Tier 2 still holds it): reads go to Tier 2.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tier1_freed: bool,
}

/// One pack file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackRecord {
    pub name: String,
    pub size: u64,
    pub chunks: u32,
    /// Chunks still referenced (the pack can be deleted at 0).
    pub live_chunks: u32,
}

fn backup_prefix(c: &ClusterName) -> Vec<u8> {
    format!("b/{c}/").into_bytes()
}

pub(crate) fn backup_key(c: &ClusterName, id: &BackupId) -> Vec<u8> {
    let mut k = backup_prefix(c);
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

pub(crate) fn chunk_key(c: &ClusterName, id: &[u8; 32]) -> Vec<u8> {
    let mut k = format!("k/{c}/").into_bytes();
    k.extend_from_slice(id);
    k
}

pub(crate) fn pack_key(c: &ClusterName, name: &str) -> Vec<u8> {
    let mut k = format!("p/{c}/").into_bytes();
    k.extend_from_slice(name.as_bytes());
    k
}

/// What one backup's commit changes, applied atomically.
#[derive(Debug, Default)]
pub struct BackupCommit {
    /// Chunks first written by this backup (refs = 1).
    pub new_chunks: Vec<([u8; 32], ChunkRecord)>,
    /// Already-known chunks this backup references (refs + 1 each).
    pub referenced: Vec<[u8; 32]>,
    pub packs: Vec<PackRecord>,
    /// Objects of the backup to queue for Tier 2 in the same write (empty without Tier 2).
    pub relay: Vec<RelayItem>,
}

/// Chunks moved to another pack (repacking, or a reader following the writer's repacking),
/// applied atomically.
#[derive(Debug, Default)]
pub struct Relocation {
    /// Each chunk's new record (its place changed; its references did not).
    pub moves: Vec<([u8; 32], ChunkRecord)>,
    /// Records of the packs the chunks moved to.
    pub packs: Vec<PackRecord>,
    /// Packs the chunks left, now with no live chunk.
    pub emptied: Vec<String>,
    /// Objects to queue for Tier 2 in the same write (the new pack and its index).
    pub relay: Vec<RelayItem>,
}

impl Catalog {
    /// Applies a [`Relocation`] in one synced write. A chunk that has no record any more
    /// is refused: references are never created here.
    pub fn relocate_chunks(&self, cluster: &ClusterName, r: &Relocation) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (id, c) in &r.moves {
            let key = chunk_key(cluster, id);
            let raw = self
                .db
                .get_pinned(&key)?
                .ok_or_else(|| crate::CatalogError::Corrupt {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    why: "a chunk being moved to another pack disappeared".into(),
                })?;
            let old: ChunkRecord = decode(&key, &raw)?;
            let mut c = c.clone();
            c.refs = old.refs;
            batch.put(key, encode(&c));
        }
        for p in &r.packs {
            batch.put(pack_key(cluster, &p.name), encode(p));
        }
        for name in &r.emptied {
            let key = pack_key(cluster, name);
            if let Some(raw) = self.db.get_pinned(&key)? {
                let mut p: PackRecord = decode(&key, &raw)?;
                p.live_chunks = 0;
                batch.put(key, encode(&p));
            }
        }
        crate::relay::queue_in(&mut batch, cluster, &r.relay);
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }

    pub fn put_backup(&self, cluster: &ClusterName, rec: &BackupRecord) -> Result<()> {
        self.put(&backup_key(cluster, &rec.id), rec)
    }

    pub fn backup(&self, cluster: &ClusterName, id: &BackupId) -> Result<Option<BackupRecord>> {
        self.get(&backup_key(cluster, id))
    }

    /// Every backup of the cluster, in id (= time) order.
    pub fn backups(&self, cluster: &ClusterName) -> Result<Vec<BackupRecord>> {
        self.scan(&backup_prefix(cluster))
    }

    pub fn chunk(&self, cluster: &ClusterName, id: &[u8; 32]) -> Result<Option<ChunkRecord>> {
        self.get(&chunk_key(cluster, id))
    }

    pub fn pack(&self, cluster: &ClusterName, name: &str) -> Result<Option<PackRecord>> {
        self.get(&pack_key(cluster, name))
    }

    /// Every pack of the cluster, in name order.
    pub fn packs(&self, cluster: &ClusterName) -> Result<Vec<PackRecord>> {
        self.scan(format!("p/{cluster}/").as_bytes())
    }

    /// Every chunk record of the cluster with its id.
    pub fn chunks(&self, cluster: &ClusterName) -> Result<Vec<([u8; 32], ChunkRecord)>> {
        let prefix = format!("k/{cluster}/").into_bytes();
        let mut out = Vec::new();
        for item in self.db.iterator(rocksdb::IteratorMode::From(
            &prefix,
            rocksdb::Direction::Forward,
        )) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let Ok(id) = <[u8; 32]>::try_from(&k[prefix.len()..]) else {
                return Err(crate::CatalogError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    why: "a chunk key without a 32-byte id".into(),
                });
            };
            out.push((id, decode(&k, &v)?));
        }
        Ok(out)
    }

    /// Makes a backup complete: its chunk and pack records and reference counts, and
    /// `rec` (state `Complete`), in one synced write. A new chunk the catalog already
    /// has (stored again because Tier 1 had freed it) keeps its references.
    pub fn commit_backup(
        &self,
        cluster: &ClusterName,
        rec: &BackupRecord,
        commit: &BackupCommit,
    ) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (id, c) in &commit.new_chunks {
            let key = chunk_key(cluster, id);
            // Stored again after Tier 1 had freed it: the new copy's place, and the
            // references older backups hold on it stay counted.
            let mut c = c.clone();
            if let Some(raw) = self.db.get_pinned(&key)? {
                let old: ChunkRecord = decode(&key, &raw)?;
                c.refs += old.refs;
            }
            batch.put(key, encode(&c));
        }
        for id in &commit.referenced {
            let key = chunk_key(cluster, id);
            let raw = self
                .db
                .get_pinned(&key)?
                .ok_or_else(|| crate::CatalogError::Corrupt {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    why: "a chunk referenced by a new backup disappeared".into(),
                })?;
            let mut c: ChunkRecord = decode(&key, &raw)?;
            c.refs += 1;
            batch.put(key, encode(&c));
        }
        for p in &commit.packs {
            batch.put(pack_key(cluster, &p.name), encode(p));
        }
        batch.put(backup_key(cluster, &rec.id), encode(rec));
        crate::relay::queue_in(&mut batch, cluster, &commit.relay);
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }
}

/// Records for the catalog's unit tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub(crate) fn rec(id: &str, state: BackupState) -> BackupRecord {
        BackupRecord {
            id: id.parse().unwrap(),
            label: "l".into(),
            kind: BackupKind::Stream,
            state,
            error: None,
            start_lsn: Lsn(0x300_0028),
            start_tli: TimelineId::new(1).unwrap(),
            end_lsn: None,
            end_tli: None,
            started_unix: 1,
            finished_unix: None,
            pg_version: Some(170_000),
            logical_bytes: 0,
            stored_bytes: 0,
            new_bytes: 0,
            files: 0,
            chunks: 0,
            new_chunks: 0,
            packs: vec![],
        }
    }

    /// A chunk of 20 bytes stored in 10 at the start of `pack`, referenced once.
    pub(crate) fn chunk(pack: &str) -> ChunkRecord {
        ChunkRecord {
            pack: pack.into(),
            offset: 0,
            stored_len: 10,
            plain_len: 20,
            refs: 1,
            tier1_freed: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{chunk, rec};
    use super::*;

    #[test]
    fn commit_is_atomic_and_counts_references() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        let c: ClusterName = "pg".parse().unwrap();
        cat.put_backup(&c, &rec("B1", BackupState::Running))
            .unwrap();
        cat.commit_backup(
            &c,
            &rec("B1", BackupState::Complete),
            &BackupCommit {
                new_chunks: vec![([1; 32], chunk("p1")), ([2; 32], chunk("p1"))],
                referenced: vec![],
                packs: vec![PackRecord {
                    name: "p1".into(),
                    size: 100,
                    chunks: 2,
                    live_chunks: 2,
                }],
                relay: vec![
                    RelayItem::new(crate::RelayKind::Pack, "p1", 100, 1),
                    RelayItem::new(crate::RelayKind::BackupManifest, "B1", 10, 1),
                ],
            },
        )
        .unwrap();
        assert_eq!(cat.relay_items(&c).unwrap().len(), 2);
        cat.commit_backup(
            &c,
            &rec("B2", BackupState::Complete),
            &BackupCommit {
                new_chunks: vec![([3; 32], chunk("p2"))],
                referenced: vec![[1; 32]],
                packs: vec![],
                relay: vec![],
            },
        )
        .unwrap();
        assert_eq!(cat.chunk(&c, &[1; 32]).unwrap().unwrap().refs, 2);
        assert_eq!(cat.chunk(&c, &[2; 32]).unwrap().unwrap().refs, 1);
        assert_eq!(cat.backups(&c).unwrap().len(), 2);
        assert_eq!(cat.pack(&c, "p1").unwrap().unwrap().chunks, 2);
        // A reference to a chunk that does not exist fails and writes nothing.
        let e = cat.commit_backup(
            &c,
            &rec("B3", BackupState::Complete),
            &BackupCommit {
                new_chunks: vec![([4; 32], chunk("p3"))],
                referenced: vec![[9; 32]],
                packs: vec![],
                relay: vec![RelayItem::new(
                    crate::RelayKind::BackupManifest,
                    "B3",
                    10,
                    1,
                )],
            },
        );
        assert!(e.is_err());
        assert_eq!(
            cat.relay_items(&c).unwrap().len(),
            2,
            "B3's entry was queued"
        );
        assert!(cat.backup(&c, &"B3".parse().unwrap()).unwrap().is_none());
        assert!(cat.chunk(&c, &[4; 32]).unwrap().is_none());
    }
}
