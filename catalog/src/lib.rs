//! The catalog: Klio's index of what Tier 1 holds, in an embedded RocksDB.
//!
//! Owns the directory `<data_dir>/catalog`. Records: clusters (system identifier, wrapped data key, slot, current timeline, segment
//! size), timelines, WAL segments (state, sizes, checksum, tiers), base backups,
//! their chunks and pack files ([`backups`]), the Tier 2 relay queue ([`relay`]), and
//! retention's changes ([`prune`]).
//!
//! Keys are `kind/cluster/binary-suffix` so a prefix scan lists one cluster's
//! records in order. Values are versioned: one version byte, then JSON. Every
//! write is synced: the catalog is written after the data it describes is durable,
//! and startup reconciliation (in the receiver's WAL store) repairs the window
//! between the two.

use std::path::Path;

pub mod backups;
pub mod prune;
pub mod relay;
pub use backups::{
    BackupCommit, BackupKind, BackupRecord, BackupState, ChunkRecord, PackRecord, Relocation,
};
pub use prune::{ForgetIntent, Prune};
pub use relay::{RelayBacklog, RelayItem, RelayKind, Tier2Holdings, Tier2Object};

use klio_core::{ClusterName, Lsn, SegNo, SystemId, TimelineId, WalSegSize};
use rocksdb::{Direction, IteratorMode, Options, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

const VALUE_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog database error: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("catalog record {key} is corrupt or from a newer Klio: {why}")]
    Corrupt { key: String, why: String },
}

impl CatalogError {
    /// Whether retrying the same operation may succeed.
    pub fn is_permanent(&self) -> bool {
        match self {
            CatalogError::Db(e) => !matches!(
                e.kind(),
                rocksdb::ErrorKind::Busy
                    | rocksdb::ErrorKind::TimedOut
                    | rocksdb::ErrorKind::TryAgain
                    | rocksdb::ErrorKind::Incomplete
            ),
            CatalogError::Corrupt { .. } => true,
        }
    }

    /// The file system holding the catalog is out of space (or quota). RocksDB passes
    /// ENOSPC on as an I/O error whose message carries the OS's text; it also keeps
    /// returning it for writes until it has recovered by itself once space is free.
    pub fn is_disk_full(&self) -> bool {
        match self {
            CatalogError::Db(e) => {
                e.kind() == rocksdb::ErrorKind::IOError && {
                    let m = e.to_string();
                    m.contains("No space left on device") || m.contains("Disk quota exceeded")
                }
            }
            CatalogError::Corrupt { .. } => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, CatalogError>;

/// One protected PostgreSQL cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterRecord {
    pub name: ClusterName,
    /// `IDENTIFY_SYSTEM`'s systemid, fixed once stored.
    pub system_id: SystemId,
    /// The cluster's data key wrapped by the master key.
    #[serde(with = "hex_bytes")]
    pub wrapped_key: Vec<u8>,
    pub slot: String,
    pub seg_size: WalSegSize,
    /// Timeline being streamed (or last streamed).
    pub timeline: TimelineId,
    pub created_unix: u64,
}

/// A timeline Klio has seen.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TimelineRecord {
    pub tli: TimelineId,
    /// Parent timeline and the LSN where this one branched off (from its history file).
    pub parent: Option<TimelineId>,
    pub switch_lsn: Option<Lsn>,
    /// The `.history` file is stored in Tier 1.
    pub history_stored: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SegmentState {
    /// Being written as `<name>.partial`.
    Partial,
    /// Complete and renamed to its final name.
    Sealed,
}

/// Which tiers hold a copy.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Tiers {
    pub tier1: bool,
    pub tier2: bool,
}

/// One WAL segment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SegmentRecord {
    pub tli: TimelineId,
    pub segno: SegNo,
    pub state: SegmentState,
    /// Plaintext bytes (the segment size once sealed; a partial's size at its last catalog update).
    pub plain_size: u64,
    /// CRC-32C of the plaintext, set when sealed.
    pub crc32c: Option<u32>,
    /// Bytes on disk (header and frames).
    pub stored_size: u64,
    pub tiers: Tiers,
    /// Sealed with most frames stored uncompressed (written on the synchronous commit
    /// path): the WAL store's background recompressor rewrites the Tier 1 file
    /// compressed, then clears this and queues the segment for Tier 2. Until then the
    /// segment is not queued, and Tier 1 retention keeps it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recompress: bool,
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![VALUE_VERSION];
    serde_json::to_writer(&mut out, v).expect("catalog records always serialise");
    out
}

fn decode<T: DeserializeOwned>(key: &[u8], raw: &[u8]) -> Result<T> {
    let corrupt = |why: String| CatalogError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        why,
    };
    match raw.split_first() {
        Some((&VALUE_VERSION, body)) => {
            serde_json::from_slice(body).map_err(|e| corrupt(e.to_string()))
        }
        Some((v, _)) => Err(corrupt(format!("unknown value version {v}"))),
        None => Err(corrupt("empty value".into())),
    }
}

fn cluster_key(name: &ClusterName) -> Vec<u8> {
    format!("c/{name}").into_bytes()
}

fn timeline_prefix(name: &ClusterName) -> Vec<u8> {
    format!("t/{name}/").into_bytes()
}

fn timeline_key(name: &ClusterName, tli: TimelineId) -> Vec<u8> {
    let mut k = timeline_prefix(name);
    k.extend_from_slice(&tli.get().to_be_bytes());
    k
}

fn segment_prefix(name: &ClusterName) -> Vec<u8> {
    format!("s/{name}/").into_bytes()
}

fn segment_key(name: &ClusterName, tli: TimelineId, segno: SegNo) -> Vec<u8> {
    let mut k = segment_prefix(name);
    k.extend_from_slice(&tli.get().to_be_bytes());
    k.extend_from_slice(&segno.0.to_be_bytes());
    k
}

/// The catalog database.
pub struct Catalog {
    db: DB,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("path", &self.db.path())
            .finish()
    }
}

impl Catalog {
    /// A number that changes with every write to the catalog (RocksDB's latest sequence
    /// number): figures derived from the catalog stay valid while it does not.
    pub fn sequence(&self) -> u64 {
        self.db.latest_sequence_number()
    }

    /// Opens (creating if needed) the catalog in `dir`.
    pub fn open(dir: &Path) -> Result<Catalog> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        // After a crash the log is replayed up to its first incomplete record: an
        // unsynced write (`put_segment_queued_unsynced`) is lost only with every write
        // after it. (RocksDB's default, stated because callers rely on it.)
        opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
        opts.set_keep_log_file_num(4);
        opts.set_max_log_file_size(4 << 20);
        // Small memory footprint: the catalog holds a few records per segment.
        opts.set_write_buffer_size(4 << 20);
        opts.set_max_write_buffer_number(2);
        opts.set_max_open_files(256);
        Ok(Catalog {
            db: DB::open(&opts, dir)?,
        })
    }

    fn put<T: Serialize>(&self, key: &[u8], v: &T) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.put_opt(key, encode(v), &wo)?;
        Ok(())
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        match self.db.get_pinned(key)? {
            Some(raw) => decode(key, &raw).map(Some),
            None => Ok(None),
        }
    }

    fn scan<T: DeserializeOwned>(&self, prefix: &[u8]) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(prefix, Direction::Forward))
        {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    pub fn cluster(&self, name: &ClusterName) -> Result<Option<ClusterRecord>> {
        self.get(&cluster_key(name))
    }

    pub fn put_cluster(&self, rec: &ClusterRecord) -> Result<()> {
        self.put(&cluster_key(&rec.name), rec)
    }

    pub fn clusters(&self) -> Result<Vec<ClusterRecord>> {
        self.scan(b"c/")
    }

    pub fn put_timeline(&self, cluster: &ClusterName, rec: &TimelineRecord) -> Result<()> {
        self.put(&timeline_key(cluster, rec.tli), rec)
    }

    pub fn timeline(
        &self,
        cluster: &ClusterName,
        tli: TimelineId,
    ) -> Result<Option<TimelineRecord>> {
        self.get(&timeline_key(cluster, tli))
    }

    pub fn timelines(&self, cluster: &ClusterName) -> Result<Vec<TimelineRecord>> {
        self.scan(&timeline_prefix(cluster))
    }

    pub fn put_segment(&self, cluster: &ClusterName, rec: &SegmentRecord) -> Result<()> {
        self.put(&segment_key(cluster, rec.tli, rec.segno), rec)
    }

    pub fn segment(
        &self,
        cluster: &ClusterName,
        tli: TimelineId,
        segno: SegNo,
    ) -> Result<Option<SegmentRecord>> {
        self.get(&segment_key(cluster, tli, segno))
    }

    pub fn delete_segment(
        &self,
        cluster: &ClusterName,
        tli: TimelineId,
        segno: SegNo,
    ) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.delete_opt(segment_key(cluster, tli, segno), &wo)?;
        Ok(())
    }

    /// All segments of a cluster, ordered by timeline then segment number.
    pub fn segments(&self, cluster: &ClusterName) -> Result<Vec<SegmentRecord>> {
        self.scan(&segment_prefix(cluster))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tli(n: u32) -> TimelineId {
        TimelineId::new(n).unwrap()
    }

    fn seg(t: u32, n: u64, state: SegmentState) -> SegmentRecord {
        SegmentRecord {
            tli: tli(t),
            segno: SegNo(n),
            state,
            plain_size: 16 << 20,
            crc32c: Some(7),
            stored_size: 1234,
            tiers: Tiers {
                tier1: true,
                tier2: false,
            },
            recompress: false,
        }
    }

    #[test]
    fn records_round_trip_and_scan_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let name: ClusterName = "pg-main".parse().unwrap();
        let other: ClusterName = "pg-main2".parse().unwrap();
        {
            let c = Catalog::open(dir.path()).unwrap();
            let rec = ClusterRecord {
                name: name.clone(),
                system_id: SystemId::new(7_300_000_000_000_000_001),
                wrapped_key: vec![1, 2, 3],
                slot: "klio".into(),
                seg_size: WalSegSize::DEFAULT,
                timeline: tli(1),
                created_unix: 1,
            };
            c.put_cluster(&rec).unwrap();
            assert_eq!(c.cluster(&name).unwrap(), Some(rec));
            for (t, n) in [(2, 1), (1, 300), (1, 2), (1, 0x1_0000_0000)] {
                c.put_segment(&name, &seg(t, n, SegmentState::Sealed))
                    .unwrap();
            }
            c.put_segment(&other, &seg(1, 5, SegmentState::Partial))
                .unwrap();
        }
        // Survives reopening.
        let c = Catalog::open(dir.path()).unwrap();
        let order: Vec<(u32, u64)> = c
            .segments(&name)
            .unwrap()
            .iter()
            .map(|s| (s.tli.get(), s.segno.0))
            .collect();
        assert_eq!(order, vec![(1, 2), (1, 300), (1, 0x1_0000_0000), (2, 1)]);
        assert_eq!(c.segments(&other).unwrap().len(), 1);
        c.delete_segment(&name, tli(1), SegNo(2)).unwrap();
        assert_eq!(c.segments(&name).unwrap().len(), 3);
        assert_eq!(c.clusters().unwrap().len(), 1);
    }

    #[test]
    fn unknown_value_version_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        let name: ClusterName = "x".parse().unwrap();
        c.db.put(cluster_key(&name), [9u8, b'{', b'}']).unwrap();
        let err = c.cluster(&name).unwrap_err().to_string();
        assert!(err.contains("unknown value version 9"), "{err}");
    }
}
