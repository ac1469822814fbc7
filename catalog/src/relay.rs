//! The Tier 2 relay queue: every object that must still be copied to object storage, one
//! record per object, written in the same synced batch as the record that makes the
//! object final in Tier 1 (a sealed segment, a committed backup's packs and manifests),
//! so after a crash nothing is forgotten. The key names the object (kind and name), so
//! queueing it twice is one entry and it is uploaded under one object key.
//!
//! Keys: `r/<cluster>/<kind tag>/<name>` for the queue, `h/<cluster>/<kind tag>/<name>`
//! for what Tier 2 holds ([`Tier2Object`]). An entry leaves the queue only through
//! [`Catalog::relay_done`], in the same batch that records the object as held by Tier 2.
//! A permanently failing object stays, marked dead with its cause (visible in the
//! backlog), until [`Catalog::relay_revive`] queues it again.

use klio_core::ClusterName;
use rocksdb::{WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};

use crate::{
    decode, encode, segment_key, timeline_key, Catalog, Result, SegmentRecord, TimelineRecord,
};

/// What kind of Tier 1 object an entry is; part of its key.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum RelayKind {
    /// The cluster's key object (`cluster.json`: system identifier, segment size, the
    /// wrapped data key), generated from its catalog record; the name is the cluster's.
    /// Nothing else of the cluster is uploaded before it.
    Cluster,
    /// A sealed WAL segment; the name is its 24-digit file name.
    WalSegment,
    /// A timeline history file; the name is `0000000N.history`.
    History,
    /// A backup's pack file; the name is the pack's name.
    Pack,
    /// Klio's manifest of a backup; the name is the backup id.
    BackupManifest,
    /// PostgreSQL's `backup_manifest` of a backup; the name is the backup id.
    PgManifest,
    /// Where a backup's new chunks are stored (`chunks.klio`); the name is the backup id.
    ChunkIndex,
    /// Where a repacked pack's chunks are (`<pack>.index`); the name is the pack's.
    PackIndex,
}

impl RelayKind {
    /// Every kind, in queue order.
    pub const ALL: [RelayKind; 8] = [
        RelayKind::Cluster,
        RelayKind::History,
        RelayKind::WalSegment,
        RelayKind::Pack,
        RelayKind::PackIndex,
        RelayKind::PgManifest,
        RelayKind::ChunkIndex,
        RelayKind::BackupManifest,
    ];

    /// The kind's name in the API, the CLI and the metrics (`wal_segment`, `pack`...).
    pub fn as_str(self) -> &'static str {
        match self {
            RelayKind::Cluster => "cluster",
            RelayKind::History => "history",
            RelayKind::WalSegment => "wal_segment",
            RelayKind::Pack => "pack",
            RelayKind::PgManifest => "pg_manifest",
            RelayKind::ChunkIndex => "chunk_index",
            RelayKind::PackIndex => "pack_index",
            RelayKind::BackupManifest => "backup_manifest",
        }
    }

    /// The key tag, which orders the queue: the cluster's key object, history files,
    /// WAL, packs, then a backup's other objects (Klio's manifest last, as it is what
    /// makes a backup visible to a reader of the bucket), then repacked packs' indexes.
    fn tag(self) -> u8 {
        match self {
            RelayKind::Cluster => b'0',
            RelayKind::History => b'a',
            RelayKind::WalSegment => b'b',
            RelayKind::Pack => b'c',
            RelayKind::PgManifest => b'd',
            RelayKind::ChunkIndex => b'e',
            RelayKind::BackupManifest => b'f',
            RelayKind::PackIndex => b'g',
        }
    }
}

impl std::fmt::Display for RelayKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RelayKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        RelayKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = RelayKind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown object kind {s:?}: use one of {}", names.join(", "))
            })
    }
}

/// One object waiting for Tier 2.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RelayItem {
    pub kind: RelayKind,
    pub name: String,
    /// Bytes to upload (the Tier 1 file's size).
    pub bytes: u64,
    pub enqueued_unix: u64,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Not to be tried again before this time (0: now).
    pub not_before_unix: u64,
    /// The last failure, for the status and the logs.
    pub last_error: Option<String>,
    /// Set when the failure is permanent: the relay skips the entry until it is revived.
    pub dead: bool,
}

impl RelayItem {
    /// A new entry, due now.
    pub fn new(kind: RelayKind, name: impl Into<String>, bytes: u64, now_unix: u64) -> RelayItem {
        RelayItem {
            kind,
            name: name.into(),
            bytes,
            enqueued_unix: now_unix,
            attempts: 0,
            not_before_unix: 0,
            last_error: None,
            dead: false,
        }
    }
}

/// An object Tier 2 holds, recorded when its upload was confirmed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tier2Object {
    pub kind: RelayKind,
    /// The Tier 1 name (as in [`RelayItem::name`]).
    pub name: String,
    /// The object's key in the bucket, below the configured prefix.
    pub key: String,
    pub bytes: u64,
    /// Hex SHA-256 of the object's bytes (identical to the Tier 1 file's); empty when
    /// the record was made from a listing of the bucket (a read-only server's).
    pub sha256: String,
    pub uploaded_unix: u64,
    /// Set when Tier 2's retention removed the object: the record stays as a tombstone,
    /// so that the object is known to have reached Tier 2 (Tier 1 may then let it go
    /// too, and the relay does not upload it again) while Tier 1 still holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned_unix: Option<u64>,
}

impl Tier2Object {
    /// Tier 2 holds it (it was not pruned by retention).
    pub fn is_live(&self) -> bool {
        self.pruned_unix.is_none()
    }
}

/// What Tier 2 holds of a cluster, for the status and the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tier2Holdings {
    pub objects: u64,
    pub bytes: u64,
    /// The newest confirmed upload.
    pub last_upload_unix: Option<u64>,
}

/// The queue's size, for the status and the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayBacklog {
    /// Entries waiting (dead ones included).
    pub objects: u64,
    pub bytes: u64,
    /// When the oldest entry was queued.
    pub oldest_unix: Option<u64>,
    /// Entries that failed permanently.
    pub dead: u64,
}

fn relay_prefix(c: &ClusterName) -> Vec<u8> {
    format!("r/{c}/").into_bytes()
}

pub(crate) fn relay_key(c: &ClusterName, kind: RelayKind, name: &str) -> Vec<u8> {
    let mut k = relay_prefix(c);
    k.push(kind.tag());
    k.push(b'/');
    k.extend_from_slice(name.as_bytes());
    k
}

fn held_prefix(c: &ClusterName) -> Vec<u8> {
    format!("h/{c}/").into_bytes()
}

pub(crate) fn held_key(c: &ClusterName, kind: RelayKind, name: &str) -> Vec<u8> {
    let mut k = held_prefix(c);
    k.push(kind.tag());
    k.push(b'/');
    k.extend_from_slice(name.as_bytes());
    k
}

pub(crate) fn synced() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    wo
}

/// Adds `items` to a batch being built elsewhere in the catalog.
pub(crate) fn queue_in(batch: &mut WriteBatch, cluster: &ClusterName, items: &[RelayItem]) {
    for i in items {
        batch.put(relay_key(cluster, i.kind, &i.name), encode(i));
    }
}

impl Catalog {
    /// Records `rec` and, when `relay` is given, queues the segment for Tier 2 in the
    /// same synced write.
    pub fn put_segment_queued(
        &self,
        cluster: &ClusterName,
        rec: &SegmentRecord,
        relay: Option<&RelayItem>,
    ) -> Result<()> {
        self.write_segment_queued(cluster, rec, relay, &synced())
    }

    /// [`Catalog::put_segment_queued`] without waiting for the disk: the write reaches
    /// the catalog's log at once and the disk with the next synced write (any caller's)
    /// or the kernel's writeback. A crash may lose it, and every write after it, never
    /// one before it (the log is replayed up to its first incomplete record). For
    /// callers whose lost write start-up reconciliation rebuilds from the files, which
    /// saves a device flush (a journal commit) per call.
    pub fn put_segment_queued_unsynced(
        &self,
        cluster: &ClusterName,
        rec: &SegmentRecord,
        relay: Option<&RelayItem>,
    ) -> Result<()> {
        self.write_segment_queued(cluster, rec, relay, &WriteOptions::default())
    }

    fn write_segment_queued(
        &self,
        cluster: &ClusterName,
        rec: &SegmentRecord,
        relay: Option<&RelayItem>,
        wo: &WriteOptions,
    ) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put(segment_key(cluster, rec.tli, rec.segno), encode(rec));
        if let Some(item) = relay {
            queue_in(&mut batch, cluster, std::slice::from_ref(item));
        }
        self.db.write_opt(batch, wo)?;
        Ok(())
    }

    /// Queues objects (e.g. a history file, or what a rescan found missing in Tier 2).
    /// An object already queued is replaced by the new entry.
    pub fn relay_enqueue(&self, cluster: &ClusterName, items: &[RelayItem]) -> Result<()> {
        let mut batch = WriteBatch::default();
        queue_in(&mut batch, cluster, items);
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }

    /// The queue in key order: history files, WAL segments (by timeline and segment),
    /// packs, PostgreSQL's manifests, Klio's manifests. The relay must not upload a
    /// backup's Klio manifest before its packs are in Tier 2.
    pub fn relay_items(&self, cluster: &ClusterName) -> Result<Vec<RelayItem>> {
        self.scan(&relay_prefix(cluster))
    }

    /// The entries due at `now_unix` and not dead, at most `limit`.
    pub fn relay_due(
        &self,
        cluster: &ClusterName,
        now_unix: u64,
        limit: usize,
    ) -> Result<Vec<RelayItem>> {
        Ok(self
            .relay_items(cluster)?
            .into_iter()
            .filter(|i| !i.dead && i.not_before_unix <= now_unix)
            .take(limit)
            .collect())
    }

    pub fn relay_backlog(&self, cluster: &ClusterName) -> Result<RelayBacklog> {
        let mut b = RelayBacklog::default();
        for i in self.relay_items(cluster)? {
            b.objects += 1;
            b.bytes += i.bytes;
            b.dead += u64::from(i.dead);
            b.oldest_unix = Some(
                b.oldest_unix
                    .map_or(i.enqueued_unix, |o| o.min(i.enqueued_unix)),
            );
        }
        Ok(b)
    }

    /// The object is in Tier 2: removes its entry and, in the same synced write, records
    /// `held` and stores `segment` (the segment's record with `tiers.tier2` set) when it
    /// is a WAL segment.
    pub fn relay_done(
        &self,
        cluster: &ClusterName,
        item: &RelayItem,
        held: &Tier2Object,
        segment: Option<&SegmentRecord>,
    ) -> Result<()> {
        self.relay_done_many(cluster, &[(item.clone(), held.clone(), segment.cloned())])
    }

    /// [`Catalog::relay_done`] for several objects, in one synced write.
    pub fn relay_done_many(
        &self,
        cluster: &ClusterName,
        done: &[(RelayItem, Tier2Object, Option<SegmentRecord>)],
    ) -> Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        for (item, held, segment) in done {
            batch.delete(relay_key(cluster, item.kind, &item.name));
            batch.put(held_key(cluster, held.kind, &held.name), encode(held));
            if let Some(rec) = segment {
                batch.put(segment_key(cluster, rec.tli, rec.segno), encode(rec));
            }
        }
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }

    /// Records a failed attempt: `item` as updated by the relay (attempts, when to try
    /// again, the error, dead or not). Does nothing if the entry left the queue meanwhile.
    pub fn relay_failed(&self, cluster: &ClusterName, item: &RelayItem) -> Result<()> {
        let key = relay_key(cluster, item.kind, &item.name);
        if self.db.get_pinned(&key)?.is_none() {
            return Ok(());
        }
        self.db.put_opt(key, encode(item), &synced())?;
        Ok(())
    }

    /// Queues dead entries again (all of them, or those of `kind` named `name`), due now
    /// with their attempts reset. Returns how many were revived.
    pub fn relay_revive(
        &self,
        cluster: &ClusterName,
        only: Option<(RelayKind, &str)>,
    ) -> Result<usize> {
        let mut batch = WriteBatch::default();
        let mut n = 0;
        for mut i in self.relay_items(cluster)? {
            if !i.dead || only.is_some_and(|(k, name)| k != i.kind || name != i.name) {
                continue;
            }
            i.dead = false;
            i.attempts = 0;
            i.not_before_unix = 0;
            batch.put(relay_key(cluster, i.kind, &i.name), encode(&i));
            n += 1;
        }
        if n > 0 {
            self.db.write_opt(batch, &synced())?;
        }
        Ok(n)
    }

    /// Every object Tier 2 is known to hold, in queue order (history files, WAL, packs,
    /// manifests); pruned ones are left out.
    pub fn tier2_objects(&self, cluster: &ClusterName) -> Result<Vec<Tier2Object>> {
        let all: Vec<Tier2Object> = self.scan(&held_prefix(cluster))?;
        Ok(all.into_iter().filter(Tier2Object::is_live).collect())
    }

    /// Whether Tier 2 holds the object (not pruned), and its record.
    pub fn tier2_object(
        &self,
        cluster: &ClusterName,
        kind: RelayKind,
        name: &str,
    ) -> Result<Option<Tier2Object>> {
        Ok(self
            .tier2_record(cluster, kind, name)?
            .filter(Tier2Object::is_live))
    }

    /// The object's record, held or pruned: `Some` once it has reached Tier 2.
    pub fn tier2_record(
        &self,
        cluster: &ClusterName,
        kind: RelayKind,
        name: &str,
    ) -> Result<Option<Tier2Object>> {
        self.get(&held_key(cluster, kind, name))
    }

    /// Counts of [`Catalog::tier2_objects`].
    pub fn tier2_holdings(&self, cluster: &ClusterName) -> Result<Tier2Holdings> {
        let mut h = Tier2Holdings::default();
        for o in self.tier2_objects(cluster)? {
            h.objects += 1;
            h.bytes += o.bytes;
            h.last_upload_unix = Some(h.last_upload_unix.unwrap_or(0).max(o.uploaded_unix));
        }
        Ok(h)
    }

    /// Records what a scan of Tier 2 found (a read-only server rebuilding its catalog
    /// from the bucket): the objects Tier 2 holds, the WAL segments and timelines they
    /// make known, in one synced write.
    pub fn record_tier2_scan(
        &self,
        cluster: &ClusterName,
        held: &[Tier2Object],
        segments: &[SegmentRecord],
        timelines: &[TimelineRecord],
    ) -> Result<()> {
        let mut batch = WriteBatch::default();
        for h in held {
            batch.put(held_key(cluster, h.kind, &h.name), encode(h));
        }
        for s in segments {
            batch.put(segment_key(cluster, s.tli, s.segno), encode(s));
        }
        for t in timelines {
            batch.put(timeline_key(cluster, t.tli), encode(t));
        }
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }

    /// One entry, if queued.
    pub fn relay_item(
        &self,
        cluster: &ClusterName,
        kind: RelayKind,
        name: &str,
    ) -> Result<Option<RelayItem>> {
        let key = relay_key(cluster, kind, name);
        match self.db.get_pinned(&key)? {
            Some(raw) => decode(&key, &raw).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SegmentState, Tiers};
    use klio_core::{SegNo, TimelineId};

    fn segment(n: u64, tier2: bool) -> SegmentRecord {
        SegmentRecord {
            tli: TimelineId::FIRST,
            segno: SegNo(n),
            state: SegmentState::Sealed,
            plain_size: 16 << 20,
            crc32c: Some(1),
            stored_size: 4 << 20,
            tiers: Tiers { tier1: true, tier2 },
            recompress: false,
        }
    }

    fn held(i: &RelayItem) -> Tier2Object {
        Tier2Object {
            kind: i.kind,
            name: i.name.clone(),
            key: format!("pg/{}", i.name),
            bytes: i.bytes,
            sha256: "00".repeat(32),
            uploaded_unix: 200,
            pruned_unix: None,
        }
    }

    fn open() -> (tempfile::TempDir, Catalog, ClusterName) {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        (dir, c, "pg".parse().unwrap())
    }

    /// The unsynced form writes the same records in one batch: readers see them at
    /// once, a clean reopen keeps them, and a synced write after it (any caller's)
    /// makes it durable with it, since the log is replayed in order.
    #[test]
    fn an_unsynced_segment_write_is_the_same_batch_and_survives_a_reopen() {
        let (dir, c, pg) = open();
        let item = RelayItem::new(
            RelayKind::WalSegment,
            "000000010000000000000005",
            1 << 20,
            100,
        );
        c.put_segment_queued_unsynced(&pg, &segment(5, false), Some(&item))
            .unwrap();
        assert_eq!(c.relay_items(&pg).unwrap(), vec![item.clone()]);
        assert_eq!(c.segments(&pg).unwrap(), vec![segment(5, false)]);
        c.put_segment_queued(&pg, &segment(6, false), None).unwrap();
        drop(c);
        let c = Catalog::open(dir.path()).unwrap();
        assert_eq!(c.relay_items(&pg).unwrap(), vec![item]);
        assert_eq!(
            c.segments(&pg).unwrap(),
            vec![segment(5, false), segment(6, false)]
        );
    }

    #[test]
    fn a_sealed_segment_and_its_queue_entry_are_written_together() {
        let (dir, c, pg) = open();
        let item = RelayItem::new(
            RelayKind::WalSegment,
            "000000010000000000000003",
            4 << 20,
            100,
        );
        c.put_segment_queued(&pg, &segment(3, false), Some(&item))
            .unwrap();
        c.put_segment_queued(&pg, &segment(4, false), None).unwrap();
        drop(c);
        // Durable across a reopen: nothing forgotten.
        let c = Catalog::open(dir.path()).unwrap();
        assert_eq!(c.relay_items(&pg).unwrap(), vec![item.clone()]);
        assert_eq!(c.segments(&pg).unwrap().len(), 2);

        // Done: the entry goes and the segment says Tier 2 holds it, in one write.
        c.relay_done(&pg, &item, &held(&item), Some(&segment(3, true)))
            .unwrap();
        assert!(c.relay_items(&pg).unwrap().is_empty());
        assert_eq!(
            c.tier2_object(&pg, RelayKind::WalSegment, &item.name)
                .unwrap(),
            Some(held(&item))
        );
        assert_eq!(
            c.tier2_holdings(&pg).unwrap(),
            Tier2Holdings {
                objects: 1,
                bytes: 4 << 20,
                last_upload_unix: Some(200)
            }
        );
        let s = c
            .segment(&pg, TimelineId::FIRST, SegNo(3))
            .unwrap()
            .unwrap();
        assert!(s.tiers.tier2 && s.tiers.tier1);
    }

    #[test]
    fn queueing_an_object_twice_keeps_one_entry() {
        let (_d, c, pg) = open();
        let a = RelayItem::new(RelayKind::Pack, "20260101T000000Z-0001", 10, 100);
        c.relay_enqueue(&pg, std::slice::from_ref(&a)).unwrap();
        c.relay_enqueue(&pg, std::slice::from_ref(&a)).unwrap();
        // Same name, other kind: another object.
        let m = RelayItem::new(RelayKind::BackupManifest, "20260101T000000Z-0001", 5, 100);
        c.relay_enqueue(&pg, std::slice::from_ref(&m)).unwrap();
        assert_eq!(c.relay_items(&pg).unwrap().len(), 2);
        let other: ClusterName = "pg2".parse().unwrap();
        assert!(c.relay_items(&other).unwrap().is_empty());
    }

    #[test]
    fn the_queue_runs_history_wal_packs_then_manifests() {
        let (_d, c, pg) = open();
        let id = "20260101T000000Z";
        c.relay_enqueue(
            &pg,
            &[
                RelayItem::new(RelayKind::BackupManifest, id, 1, 1),
                RelayItem::new(RelayKind::PgManifest, id, 1, 1),
                RelayItem::new(RelayKind::Pack, format!("{id}-0001"), 1, 1),
                RelayItem::new(RelayKind::WalSegment, "000000020000000000000001", 1, 1),
                RelayItem::new(RelayKind::WalSegment, "000000010000000000000009", 1, 1),
                RelayItem::new(RelayKind::History, "00000002.history", 1, 1),
            ],
        )
        .unwrap();
        let kinds: Vec<RelayKind> = c.relay_items(&pg).unwrap().iter().map(|i| i.kind).collect();
        assert_eq!(
            kinds,
            [
                RelayKind::History,
                RelayKind::WalSegment,
                RelayKind::WalSegment,
                RelayKind::Pack,
                RelayKind::PgManifest,
                RelayKind::BackupManifest
            ]
        );
        let wal: Vec<String> = c
            .relay_items(&pg)
            .unwrap()
            .into_iter()
            .filter(|i| i.kind == RelayKind::WalSegment)
            .map(|i| i.name)
            .collect();
        assert_eq!(
            wal,
            ["000000010000000000000009", "000000020000000000000001"]
        );
    }

    #[test]
    fn failures_back_off_dead_entries_wait_for_a_revival_and_the_backlog_counts_them() {
        let (_d, c, pg) = open();
        let mut a = RelayItem::new(RelayKind::WalSegment, "000000010000000000000001", 100, 50);
        let b = RelayItem::new(RelayKind::WalSegment, "000000010000000000000002", 200, 60);
        let h = RelayItem::new(RelayKind::History, "00000002.history", 42, 70);
        c.relay_enqueue(&pg, &[a.clone(), b.clone(), h.clone()])
            .unwrap();
        assert_eq!(
            c.relay_backlog(&pg).unwrap(),
            RelayBacklog {
                objects: 3,
                bytes: 342,
                oldest_unix: Some(50),
                dead: 0
            }
        );

        // A transient failure: not due before its time.
        a.attempts = 1;
        a.not_before_unix = 1000;
        a.last_error = Some("503".into());
        c.relay_failed(&pg, &a).unwrap();
        let due: Vec<String> = c
            .relay_due(&pg, 999, 10)
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(due, vec![h.name.clone(), b.name.clone()]);
        assert_eq!(c.relay_due(&pg, 1000, 10).unwrap().len(), 3);
        assert_eq!(c.relay_due(&pg, 1000, 1).unwrap().len(), 1);

        // A permanent one: skipped, counted, until revived.
        let mut dead = b.clone();
        dead.dead = true;
        dead.attempts = 3;
        dead.last_error = Some("object exists with other content".into());
        c.relay_failed(&pg, &dead).unwrap();
        assert!(c
            .relay_due(&pg, u64::MAX, 10)
            .unwrap()
            .iter()
            .all(|i| i.name != b.name));
        assert_eq!(c.relay_backlog(&pg).unwrap().dead, 1);
        assert_eq!(
            c.relay_revive(&pg, Some((RelayKind::History, &b.name)))
                .unwrap(),
            0
        );
        assert_eq!(c.relay_revive(&pg, None).unwrap(), 1);
        let revived = c
            .relay_item(&pg, RelayKind::WalSegment, &b.name)
            .unwrap()
            .unwrap();
        assert!(!revived.dead && revived.attempts == 0 && revived.not_before_unix == 0);
        assert_eq!(
            revived.last_error.as_deref(),
            Some("object exists with other content")
        );

        // A failure reported after the entry was done does not bring it back.
        c.relay_done(&pg, &h, &held(&h), None).unwrap();
        c.relay_failed(&pg, &h).unwrap();
        assert!(c
            .relay_item(&pg, RelayKind::History, &h.name)
            .unwrap()
            .is_none());
    }
}
