//! How Tier 1 objects are named in Tier 2, and where the relay finds them in Tier 1.
//! Touches no storage.
//!
//! The bucket mirrors Tier 1's `clusters/` directory below the configured prefix, so the
//! bucket alone describes itself (every object is the Tier 1 file, byte for byte):
//!
//! ```text
//! <cluster>/cluster.json                          the cluster's key object (first)
//! <cluster>/wal/000000010000000000000003          sealed WAL segment
//! <cluster>/wal/00000002.history                  timeline history file
//! <cluster>/backups/packs/<backup id>-<n>.pack    pack of chunks
//! <cluster>/backups/packs/<id>-r<n>.pack          pack written by repacking
//! <cluster>/backups/packs/<id>-r<n>.index         where that pack's chunks are
//! <cluster>/backups/<backup id>/backup_manifest.klio   PostgreSQL's manifest
//! <cluster>/backups/<backup id>/chunks.klio       where the backup's new chunks are
//! <cluster>/backups/<backup id>/manifest.klio     Klio's manifest (uploaded last)
//! ```
//!
//! `cluster.json` ([`ClusterObject`]) is the one object that is not a Tier 1 file: it is
//! made from the catalog's cluster record and holds what a reader of the bucket needs to
//! open the rest with the master key (the wrapped data key), and what tells two clusters
//! apart (the system identifier).
//!
//! Every name is parsed into its type ([`WalFileName`], [`PackName`], [`BackupId`])
//! before it becomes a key or a path, so a queue entry can name nothing else.

use std::path::PathBuf;

use klio_catalog::{ClusterRecord, RelayKind};
use klio_core::layout::{DataDir, PackName};
use klio_core::{BackupId, ClusterName, WalFileKind, WalFileName};
use object_store::path::Path;
use serde::{Deserialize, Serialize};

/// `cluster.json`: the cluster as a reader of the bucket needs it. Serialised in this
/// field order, so the same record always gives the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterObject {
    /// `klio-cluster-v1`.
    pub format: String,
    pub cluster: ClusterName,
    /// PostgreSQL's system identifier, in decimal.
    pub system_id: String,
    pub seg_size: u64,
    /// The data key wrapped by the master key (hex; `docs/FORMATS.md`, Keys).
    pub wrapped_key: String,
    pub created_unix: u64,
}

pub const CLUSTER_OBJECT_FORMAT: &str = "klio-cluster-v1";

impl ClusterObject {
    pub fn from_record(rec: &ClusterRecord) -> ClusterObject {
        ClusterObject {
            format: CLUSTER_OBJECT_FORMAT.into(),
            cluster: rec.name.clone(),
            system_id: rec.system_id.to_string(),
            seg_size: rec.seg_size.bytes(),
            wrapped_key: hex::encode(&rec.wrapped_key),
            created_unix: rec.created_unix,
        }
    }

    /// The object's bytes (JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("cluster objects serialise")
    }
}

/// The key of `cluster`'s [`ClusterObject`].
pub fn cluster_key(cluster: &ClusterName) -> Path {
    Path::from_iter([cluster.as_str(), "cluster.json"])
}

/// An object to relay: its Tier 1 file and its key in Tier 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectPlace {
    pub tier1: PathBuf,
    pub key: Path,
}

/// Why a queue entry names no object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("queue entry {kind} {name:?} names no Tier 1 object: {why}")]
pub struct BadName {
    pub kind: RelayKind,
    pub name: String,
    pub why: String,
}

/// Where the object `kind`/`name` of `cluster` is in Tier 1 and in Tier 2.
pub fn place(
    data: &DataDir,
    cluster: &ClusterName,
    kind: RelayKind,
    name: &str,
) -> Result<ObjectPlace, BadName> {
    let bad = |why: String| BadName {
        kind,
        name: name.chars().take(80).collect(),
        why,
    };
    let c = cluster.as_str();
    match kind {
        RelayKind::Cluster => Err(bad(
            "the cluster object is made from the catalog, not read from a Tier 1 file".into(),
        )),
        RelayKind::WalSegment | RelayKind::History => {
            let wal: WalFileName = name.parse().map_err(|e| bad(format!("{e}")))?;
            let expected = match kind {
                RelayKind::History => WalFileKind::History,
                _ => WalFileKind::Segment,
            };
            if wal.kind() != expected {
                return Err(bad(format!("not a {expected:?} file name")));
            }
            Ok(ObjectPlace {
                tier1: data.wal(cluster).file(&wal),
                key: Path::from_iter([c, "wal", &wal.to_string()]),
            })
        }
        RelayKind::Pack => {
            let pack: PackName = name.parse().map_err(|e| bad(format!("{e}")))?;
            let file = format!("{pack}.pack");
            Ok(ObjectPlace {
                tier1: data.backups(cluster).pack(&pack),
                key: Path::from_iter([c, "backups", "packs", &file]),
            })
        }
        RelayKind::PackIndex => {
            let pack: PackName = name.parse().map_err(|e| bad(format!("{e}")))?;
            if !pack.is_repack() {
                return Err(bad("only a repacked pack has an index of its own".into()));
            }
            let file = format!("{pack}.index");
            Ok(ObjectPlace {
                tier1: data.backups(cluster).pack_index(&pack),
                key: Path::from_iter([c, "backups", "packs", &file]),
            })
        }
        RelayKind::BackupManifest | RelayKind::PgManifest | RelayKind::ChunkIndex => {
            let id: BackupId = name.parse().map_err(|e| bad(format!("{e}")))?;
            let dir = data
                .backups(cluster)
                .backup(&id)
                .ok_or_else(|| bad("not a backup directory name".into()))?;
            let (tier1, file) = match kind {
                RelayKind::PgManifest => (dir.pg_manifest(), "backup_manifest.klio"),
                RelayKind::ChunkIndex => (dir.chunk_index(), "chunks.klio"),
                _ => (dir.manifest(), "manifest.klio"),
            };
            Ok(ObjectPlace {
                tier1,
                key: Path::from_iter([c, "backups", id.as_str(), file]),
            })
        }
    }
}

/// The object of `cluster` that `key` (relative to Tier 2's prefix) names: the inverse
/// of [`place`]. `None` for a key Klio does not write. Keys come from listing the bucket,
/// which is not trusted: a name is returned only when `place` gives the same key back.
pub fn parse_key(cluster: &ClusterName, key: &Path) -> Option<(RelayKind, String)> {
    let parts: Vec<String> = key.parts().map(|p| p.as_ref().to_string()).collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let (kind, name) = match parts.as_slice() {
        [c, "cluster.json"] if *c == cluster.as_str() => {
            return Some((RelayKind::Cluster, cluster.to_string()))
        }
        [c, "wal", name] if *c == cluster.as_str() => {
            let wal: WalFileName = name.parse().ok()?;
            match wal.kind() {
                WalFileKind::Segment => (RelayKind::WalSegment, name.to_string()),
                WalFileKind::History => (RelayKind::History, name.to_string()),
                WalFileKind::Partial => return None,
            }
        }
        [c, "backups", "packs", file] if *c == cluster.as_str() => {
            match (file.strip_suffix(".pack"), file.strip_suffix(".index")) {
                (Some(pack), _) => (RelayKind::Pack, pack.to_string()),
                (_, Some(pack)) => (RelayKind::PackIndex, pack.to_string()),
                _ => return None,
            }
        }
        [c, "backups", id, file] if *c == cluster.as_str() => match *file {
            "manifest.klio" => (RelayKind::BackupManifest, id.to_string()),
            "backup_manifest.klio" => (RelayKind::PgManifest, id.to_string()),
            "chunks.klio" => (RelayKind::ChunkIndex, id.to_string()),
            _ => return None,
        },
        _ => return None,
    };
    let placed = place(&DataDir::new("/"), cluster, kind, &name).ok()?;
    (placed.key == *key).then_some((kind, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back_into_what_placed_them_and_nothing_else() {
        let data = DataDir::new("/d");
        let c: ClusterName = "pg".parse().unwrap();
        for (kind, name) in [
            (RelayKind::WalSegment, "000000010000000000000003"),
            (RelayKind::History, "00000002.history"),
            (RelayKind::Pack, "20261124T193000Z-0001"),
            (RelayKind::BackupManifest, "20261124T193000Z"),
            (RelayKind::PgManifest, "20261124T193000Z-2"),
            (RelayKind::ChunkIndex, "20261124T193000Z"),
            (RelayKind::Pack, "20261126T101500Z-r0002"),
            (RelayKind::PackIndex, "20261126T101500Z-r0002"),
        ] {
            let key = place(&data, &c, kind, name).unwrap().key;
            assert_eq!(parse_key(&c, &key), Some((kind, name.to_string())), "{key}");
        }
        assert_eq!(
            parse_key(&c, &cluster_key(&c)),
            Some((RelayKind::Cluster, "pg".to_string()))
        );
        for key in [
            "pg/wal/000000010000000000000003.partial",
            "pg/wal/000000010000000000000003.tmp",
            "pg/wal/sub/000000010000000000000003",
            "other/wal/000000010000000000000003",
            "pg/backups/packs/20261124T193000Z.pack",
            "pg/backups/packs/20261124T193000Z-0001",
            "pg/backups/packs/manifest.klio",
            "pg/backups/packs/20261124T193000Z-0001.index",
            "pg/backups/packs/20261126T101500Z-r0002.index.tmp",
            "pg/backups/20261124T193000Z/other.klio",
            "pg/backups/20261124T193000Z/x/manifest.klio",
            "pg/cluster.json.bak",
            "pg",
        ] {
            assert_eq!(parse_key(&c, &Path::from(key)), None, "{key}");
        }
    }

    #[test]
    fn keys_mirror_tier1_below_the_cluster_name() {
        let data = DataDir::new("/d");
        let c: ClusterName = "pg".parse().unwrap();
        let p = |k, n: &str| place(&data, &c, k, n).unwrap();
        let seg = p(RelayKind::WalSegment, "000000010000000000000003");
        assert_eq!(seg.key.as_ref(), "pg/wal/000000010000000000000003");
        assert_eq!(
            seg.tier1,
            PathBuf::from("/d/clusters/pg/wal/000000010000000000000003")
        );
        assert_eq!(
            p(RelayKind::History, "00000002.history").key.as_ref(),
            "pg/wal/00000002.history"
        );
        let pack = p(RelayKind::Pack, "20261124T193000Z-0001");
        assert_eq!(
            pack.key.as_ref(),
            "pg/backups/packs/20261124T193000Z-0001.pack"
        );
        assert_eq!(
            pack.tier1,
            PathBuf::from("/d/clusters/pg/backups/packs/20261124T193000Z-0001.pack")
        );
        assert_eq!(
            p(RelayKind::BackupManifest, "20261124T193000Z")
                .key
                .as_ref(),
            "pg/backups/20261124T193000Z/manifest.klio"
        );
        assert_eq!(
            p(RelayKind::PgManifest, "20261124T193000Z").key.as_ref(),
            "pg/backups/20261124T193000Z/backup_manifest.klio"
        );
        let index = p(RelayKind::ChunkIndex, "20261124T193000Z");
        assert_eq!(
            index.key.as_ref(),
            "pg/backups/20261124T193000Z/chunks.klio"
        );
        assert_eq!(
            index.tier1,
            PathBuf::from("/d/clusters/pg/backups/20261124T193000Z/chunks.klio")
        );
        let repacked = p(RelayKind::PackIndex, "20261126T101500Z-r0002");
        assert_eq!(
            repacked.key.as_ref(),
            "pg/backups/packs/20261126T101500Z-r0002.index"
        );
        assert_eq!(
            repacked.tier1,
            PathBuf::from("/d/clusters/pg/backups/packs/20261126T101500Z-r0002.index")
        );
        assert!(place(&data, &c, RelayKind::PackIndex, "20261124T193000Z-0001").is_err());
        assert_eq!(cluster_key(&c).as_ref(), "pg/cluster.json");
        assert!(place(&data, &c, RelayKind::Cluster, "pg").is_err());
    }

    #[test]
    fn names_that_are_not_their_kind_or_are_paths_are_refused() {
        let data = DataDir::new("/d");
        let c: ClusterName = "pg".parse().unwrap();
        for (kind, name) in [
            (RelayKind::WalSegment, "../../etc/passwd"),
            (RelayKind::WalSegment, "00000002.history"),
            (RelayKind::WalSegment, "000000010000000000000003.partial"),
            (RelayKind::History, "000000010000000000000003"),
            (RelayKind::Pack, "x/../../y-0001"),
            (RelayKind::Pack, "20261124T193000Z"),
            (RelayKind::BackupManifest, ".."),
            (RelayKind::BackupManifest, "packs"),
            (RelayKind::PgManifest, "a/b"),
        ] {
            assert!(place(&data, &c, kind, name).is_err(), "{kind} {name}");
        }
    }
}
