//! Klio's backup manifest, as the server stores it (encrypted, next to the packs) and
//! serves it to `klio restore`: every file of a backup with its metadata, CRC-32C and
//! chunk list, and the chunk identity ([`ChunkId`]). Types only; nothing here touches
//! the disk. The check against PostgreSQL's `backup_manifest` is `klio-basebackup`'s.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{BackupId, ClusterName, Lsn, TimelineId};

pub const MANIFEST_VERSION: u32 = 1;

/// A chunk's identity: keyed BLAKE3 of its plaintext.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &hex::encode(self.0)[..16])
    }
}

impl FromStr for ChunkId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let v = hex::decode(s).map_err(|e| format!("chunk id {s:?}: {e}"))?;
        let a: [u8; 32] = v
            .try_into()
            .map_err(|_| format!("chunk id {s:?} is not 32 bytes"))?;
        Ok(ChunkId(a))
    }
}

impl Serialize for ChunkId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Directory,
    Symlink,
}

/// What is known of a file when it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// `None` for the data directory, else the tablespace's OID.
    pub tablespace: Option<u32>,
    pub path: String,
    pub kind: FileKind,
    pub mode: u32,
    pub mtime: i64,
    pub size: u64,
    pub link_target: Option<String>,
}

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tablespace: Option<u32>,
    pub path: String,
    pub kind: FileKind,
    pub mode: u32,
    pub mtime: i64,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub crc32c: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub link_target: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub chunks: Vec<ChunkId>,
}

impl ManifestFile {
    /// The path PostgreSQL's `backup_manifest` uses for this file.
    pub fn pg_path(&self) -> String {
        match self.tablespace {
            Some(oid) => format!("pg_tblspc/{oid}/{}", self.path),
            None => self.path.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestTablespace {
    pub oid: u32,
    /// Where it was on the source server.
    pub location: Option<String>,
}

/// Klio's manifest of one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    pub version: u32,
    pub backup_id: BackupId,
    pub cluster: ClusterName,
    pub label: String,
    pub start_lsn: Lsn,
    pub start_tli: TimelineId,
    pub end_lsn: Lsn,
    pub end_tli: TimelineId,
    pub pg_version: Option<u32>,
    pub chunk_size: u64,
    pub tablespaces: Vec<ManifestTablespace>,
    pub files: Vec<ManifestFile>,
    /// When the backup started and was committed (Unix seconds), so that a reader of
    /// the bucket alone lists it as the writing server does; absent from manifests
    /// written before they were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_unix: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_unix: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ids_round_trip_as_hex() {
        let id = ChunkId([0xab; 32]);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json.len(), 66);
        assert_eq!(serde_json::from_str::<ChunkId>(&json).unwrap(), id);
        assert!("zz".parse::<ChunkId>().is_err());
    }
}

pub const CHUNK_INDEX_VERSION: u32 = 1;

/// Where one backup's new chunks (those no earlier backup of the cluster had) are
/// stored: the `chunks.klio` object next to its manifest. With the manifests, enough to
/// rebuild the catalog's chunk records from the files (or a Tier 2 bucket) alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkIndex {
    pub version: u32,
    pub backup_id: BackupId,
    /// In pack and offset order.
    pub chunks: Vec<IndexedChunk>,
}

pub const PACK_INDEX_VERSION: u32 = 1;

/// Where the chunks of a pack written by repacking are (the `<pack>.index` object next
/// to it): with the backups' chunk indexes, what places every chunk a reader of the
/// files or the bucket needs, after the packs those indexes name are gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackIndex {
    pub version: u32,
    /// The repacked pack's name (`<id>-r<n>`).
    pub pack: String,
    /// In offset order; every entry's `pack` is this pack.
    pub chunks: Vec<IndexedChunk>,
}

/// One chunk of a [`ChunkIndex`] or a [`PackIndex`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedChunk {
    pub id: ChunkId,
    /// The pack's name (`<backup id>-<n>`).
    pub pack: String,
    pub offset: u64,
    pub stored_len: u32,
    pub plain_len: u32,
}
