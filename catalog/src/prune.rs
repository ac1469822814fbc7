//! Retention's catalog writes, gathered into one synced batch per step ([`Prune`]):
//! Tier 2 records becoming tombstones, segment records losing a tier or leaving, and
//! backups and packs leaving the catalog once no tier holds them.
//!
//! Removing a backup's last copy is the one change that needs its manifest (the chunk
//! references it releases) after the fact, so it goes in three steps: the catalog forgets
//! the backup (and records a [`ForgetIntent`]) while the manifest is still readable, the
//! manifest is deleted, then the intent is cleared. A crash in between leaves an intent
//! naming a manifest to delete, never references that cannot be released.
//!
//! Keys: `x/<cluster>/<backup id>` for intents.

use std::collections::HashMap;

use klio_core::{BackupId, ClusterName, SegNo, TimelineId};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use crate::backups::{backup_key, chunk_key, pack_key};
use crate::relay::{held_key, relay_key, synced};
use crate::{
    decode, encode, segment_key, Catalog, CatalogError, ChunkRecord, PackRecord, RelayKind, Result,
    SegmentRecord, Tier2Object,
};

/// A backup the catalog has forgotten whose manifest may still be in a tier.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ForgetIntent {
    pub backup: BackupId,
    /// The tiers whose copy of the manifest is to be deleted (1, 2).
    pub tiers: Vec<u8>,
}

fn intent_prefix(c: &ClusterName) -> Vec<u8> {
    format!("x/{c}/").into_bytes()
}

fn intent_key(c: &ClusterName, id: &BackupId) -> Vec<u8> {
    let mut k = intent_prefix(c);
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

/// One batch of retention's catalog changes for a cluster (see the module documentation).
pub struct Prune<'a> {
    cat: &'a Catalog,
    cluster: ClusterName,
    batch: WriteBatch,
    /// Chunk and pack records as this batch leaves them (`None`: deleted).
    chunks: HashMap<[u8; 32], Option<ChunkRecord>>,
    packs: HashMap<String, Option<PackRecord>>,
    changes: usize,
}

impl Catalog {
    /// Starts a batch of retention changes for `cluster`.
    pub fn prune(&self, cluster: &ClusterName) -> Prune<'_> {
        Prune {
            cat: self,
            cluster: cluster.clone(),
            batch: WriteBatch::default(),
            chunks: HashMap::new(),
            packs: HashMap::new(),
            changes: 0,
        }
    }

    /// Backups forgotten whose manifest deletion may not have happened.
    pub fn forget_intents(&self, cluster: &ClusterName) -> Result<Vec<ForgetIntent>> {
        self.scan(&intent_prefix(cluster))
    }
}

impl Prune<'_> {
    /// Tier 2's retention removed the object: its record becomes a tombstone.
    pub fn tier2_pruned(&mut self, kind: RelayKind, name: &str, now_unix: u64) -> Result<()> {
        let key = held_key(&self.cluster, kind, name);
        if let Some(raw) = self.cat.db.get_pinned(&key)? {
            let mut rec: Tier2Object = decode(&key, &raw)?;
            if rec.pruned_unix.is_none() {
                rec.pruned_unix = Some(now_unix);
                self.batch.put(key, encode(&rec));
                self.changes += 1;
            }
        }
        Ok(())
    }

    /// Forgets the object's Tier 2 record (held or tombstone) and any queue entry.
    pub fn drop_tier2(&mut self, kind: RelayKind, name: &str) {
        self.batch.delete(held_key(&self.cluster, kind, name));
        self.batch.delete(relay_key(&self.cluster, kind, name));
        self.changes += 1;
    }

    pub fn put_segment(&mut self, rec: &SegmentRecord) {
        self.batch
            .put(segment_key(&self.cluster, rec.tli, rec.segno), encode(rec));
        self.changes += 1;
    }

    pub fn delete_segment(&mut self, tli: TimelineId, segno: SegNo) {
        self.batch.delete(segment_key(&self.cluster, tli, segno));
        self.changes += 1;
    }

    fn chunk(&mut self, id: &[u8; 32]) -> Result<Option<ChunkRecord>> {
        if let Some(c) = self.chunks.get(id) {
            return Ok(c.clone());
        }
        let c = self.cat.chunk(&self.cluster, id)?;
        self.chunks.insert(*id, c.clone());
        Ok(c)
    }

    fn pack(&mut self, name: &str) -> Result<Option<PackRecord>> {
        if let Some(p) = self.packs.get(name) {
            return Ok(p.clone());
        }
        let p = self.cat.pack(&self.cluster, name)?;
        self.packs.insert(name.to_string(), p.clone());
        Ok(p)
    }

    /// Forgets a backup no tier will hold: its record, one reference of each of its
    /// distinct `chunks` (a chunk left without references goes, and its pack counts one
    /// live chunk fewer), the Tier 2 records and queue entries of its manifests and chunk
    /// index. Records the manifest's copies in `intent_tiers` as still to be deleted.
    pub fn forget_backup(
        &mut self,
        id: &BackupId,
        chunks: &[[u8; 32]],
        intent_tiers: &[u8],
    ) -> Result<()> {
        for c in chunks {
            let Some(mut rec) = self.chunk(c)? else {
                continue;
            };
            rec.refs = rec.refs.saturating_sub(1);
            if rec.refs == 0 {
                if let Some(mut p) = self.pack(&rec.pack)? {
                    p.live_chunks = p.live_chunks.saturating_sub(1);
                    self.packs.insert(p.name.clone(), Some(p));
                }
                self.chunks.insert(*c, None);
            } else {
                self.chunks.insert(*c, Some(rec));
            }
        }
        self.batch.delete(backup_key(&self.cluster, id));
        for kind in [RelayKind::BackupManifest, RelayKind::PgManifest] {
            self.drop_tier2(kind, id.as_str());
        }
        // A chunk index Tier 2 still holds stays recorded: it places chunks of packs
        // that outlive the backup (see the retention's sweep).
        let index = held_key(&self.cluster, RelayKind::ChunkIndex, id.as_str());
        let live = match self.cat.db.get_pinned(&index)? {
            Some(raw) => decode::<Tier2Object>(&index, &raw)?.pruned_unix.is_none(),
            None => false,
        };
        if !live {
            self.drop_tier2(RelayKind::ChunkIndex, id.as_str());
        }
        if !intent_tiers.is_empty() {
            let i = ForgetIntent {
                backup: id.clone(),
                tiers: intent_tiers.to_vec(),
            };
            self.batch.put(intent_key(&self.cluster, id), encode(&i));
        }
        self.changes += 1;
        Ok(())
    }

    /// Tier 1's bytes of the chunk are freed (reads go to Tier 2).
    pub fn tier1_freed(&mut self, id: &[u8; 32]) -> Result<()> {
        if let Some(mut c) = self.chunk(id)? {
            c.tier1_freed = true;
            self.chunks.insert(*id, Some(c));
        }
        Ok(())
    }

    /// Forgets a pack no tier holds: its record, its Tier 2 record and queue entry.
    pub fn forget_pack(&mut self, name: &str) {
        self.packs.insert(name.to_string(), None);
        self.drop_tier2(RelayKind::Pack, name);
        self.drop_tier2(RelayKind::PackIndex, name);
    }

    /// The intent's manifest is deleted.
    pub fn clear_intent(&mut self, id: &BackupId) {
        self.batch.delete(intent_key(&self.cluster, id));
        self.changes += 1;
    }

    /// Whether the batch changes anything.
    pub fn is_empty(&self) -> bool {
        self.changes == 0 && self.chunks.is_empty() && self.packs.is_empty()
    }

    /// Writes the batch (synced).
    pub fn commit(mut self) -> Result<()> {
        for (id, c) in std::mem::take(&mut self.chunks) {
            let key = chunk_key(&self.cluster, &id);
            match c {
                Some(c) => self.batch.put(key, encode(&c)),
                None => self.batch.delete(key),
            }
        }
        for (name, p) in std::mem::take(&mut self.packs) {
            let key = pack_key(&self.cluster, &name);
            match p {
                Some(p) => self.batch.put(key, encode(&p)),
                None => self.batch.delete(key),
            }
        }
        self.cat
            .db
            .write_opt(self.batch, &synced())
            .map_err(CatalogError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backups::fixtures::{chunk, rec};
    use crate::{BackupCommit, BackupState, RelayItem};

    #[test]
    fn forgetting_backups_releases_shared_chunks_once_per_backup() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        let c: ClusterName = "pg".parse().unwrap();
        let pack = |name: &str, n| PackRecord {
            name: name.into(),
            size: 100,
            chunks: n,
            live_chunks: n,
        };
        // B1 writes chunks 1, 2 in P1; B2 writes 3 in P2 and references 1.
        cat.commit_backup(
            &c,
            &rec("B1", BackupState::Complete),
            &BackupCommit {
                new_chunks: vec![([1; 32], chunk("P1")), ([2; 32], chunk("P1"))],
                referenced: vec![],
                packs: vec![pack("P1", 2)],
                relay: vec![RelayItem::new(RelayKind::BackupManifest, "B1", 1, 1)],
            },
        )
        .unwrap();
        cat.commit_backup(
            &c,
            &rec("B2", BackupState::Complete),
            &BackupCommit {
                new_chunks: vec![([3; 32], chunk("P2"))],
                referenced: vec![[1; 32]],
                packs: vec![pack("P2", 1)],
                relay: vec![],
            },
        )
        .unwrap();
        let b1: BackupId = "B1".parse().unwrap();
        let mut p = cat.prune(&c);
        p.forget_backup(&b1, &[[1; 32], [2; 32]], &[1]).unwrap();
        p.commit().unwrap();
        assert!(cat.backup(&c, &b1).unwrap().is_none());
        assert_eq!(cat.chunk(&c, &[1; 32]).unwrap().unwrap().refs, 1);
        assert!(cat.chunk(&c, &[2; 32]).unwrap().is_none());
        assert_eq!(cat.pack(&c, "P1").unwrap().unwrap().live_chunks, 1);
        assert!(
            cat.relay_items(&c).unwrap().is_empty(),
            "B1's queue entry stays"
        );
        assert_eq!(
            cat.forget_intents(&c).unwrap(),
            vec![ForgetIntent {
                backup: b1.clone(),
                tiers: vec![1]
            }]
        );
        // B2 goes too, in one batch with P1: every chunk and pack record is gone.
        let mut p = cat.prune(&c);
        p.forget_backup(&"B2".parse().unwrap(), &[[3; 32], [1; 32]], &[])
            .unwrap();
        p.forget_pack("P1");
        p.forget_pack("P2");
        p.clear_intent(&b1);
        p.commit().unwrap();
        for id in [[1; 32], [3; 32]] {
            assert!(cat.chunk(&c, &id).unwrap().is_none());
        }
        assert!(cat.packs(&c).unwrap().is_empty());
        assert!(cat.backups(&c).unwrap().is_empty());
        assert!(cat.forget_intents(&c).unwrap().is_empty());
    }
}
