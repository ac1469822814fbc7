//! The layout of Klio's data directory: every path below the configured `data_dir` is
//! named here, and every directory that is listed is classified here, so the writers
//! (start-up key check, catalog, WAL store, chunk store) and the readers built on them
//! (reconciliation, recovery, and later Tier 2 relay and retention) find files the same
//! way. This module owns the names only: it writes, reads and creates nothing.
//!
//! ```text
//! <data_dir>/
//!   keycheck                                    master-key check value
//!   catalog/                                    RocksDB (klio-catalog)
//!   clusters/<cluster>/wal/
//!     <24 hex>                                  sealed segment
//!     <24 hex>.partial                          segment being received
//!     <8 hex>.history                           timeline history file
//!     <any of the above>.tmp                    being created; removed at start-up
//!   clusters/<cluster>/backups/
//!     packs/<backup id>-<nnnn>.pack             sealed chunks of one backup
//!     <backup id>/manifest.klio                 Klio's manifest
//!     <backup id>/backup_manifest.klio          PostgreSQL's backup_manifest
//!     <backup id>/chunks.klio                   where the backup's new chunks are (chunk index)
//!     <backup id>/<any of these>.tmp            being written
//! ```
//!
//! Every name comes in as a checked type ([`ClusterName`], [`WalFileName`], [`BackupId`],
//! [`PackName`]): each is one path component without `/` or `.`-only names, so no
//! method here can name a path outside `data_dir`. The one clash the types allow (a
//! backup id spelled like the `packs` directory) is refused by [`BackupsDir::backup`].

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::backup_id::BackupId;
use crate::cluster::ClusterName;
use crate::crashsafe::{tmp_name, TMP_SUFFIX};
use crate::wal::{SegNo, TimelineId, WalFileKind, WalFileName, WalSegSize};

const KEY_CHECK: &str = "keycheck";
const KEY_ROTATION: &str = "key-rotation.json";
const CATALOG: &str = "catalog";
const CLUSTERS: &str = "clusters";
const WAL: &str = "wal";
const BACKUPS: &str = "backups";
const PACKS: &str = "packs";
const PACK_SUFFIX: &str = ".pack";
const PACK_INDEX_SUFFIX: &str = ".index";
const MANIFEST: &str = "manifest.klio";
const PG_MANIFEST: &str = "backup_manifest.klio";
const CHUNK_INDEX: &str = "chunks.klio";

/// The configured data directory; the root of every path Klio keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file holding the master key's check value.
    pub fn key_check(&self) -> PathBuf {
        self.root.join(KEY_CHECK)
    }

    /// The journal of a master-key rotation in progress (`klio keys rotate`).
    pub fn key_rotation(&self) -> PathBuf {
        self.root.join(KEY_ROTATION)
    }

    /// The catalog's RocksDB directory.
    pub fn catalog_dir(&self) -> PathBuf {
        self.root.join(CATALOG)
    }

    /// The parent of every cluster's directory.
    pub fn clusters_dir(&self) -> PathBuf {
        self.root.join(CLUSTERS)
    }

    /// One cluster's directory (its WAL and its backups).
    pub fn cluster_dir(&self, cluster: &ClusterName) -> PathBuf {
        self.clusters_dir().join(cluster.as_str())
    }

    /// One cluster's Tier 1 WAL directory.
    pub fn wal(&self, cluster: &ClusterName) -> WalDir {
        WalDir {
            dir: self.cluster_dir(cluster).join(WAL),
        }
    }

    /// One cluster's backups directory (chunk store).
    pub fn backups(&self, cluster: &ClusterName) -> BackupsDir {
        BackupsDir {
            dir: self.cluster_dir(cluster).join(BACKUPS),
        }
    }
}

/// `<data_dir>/clusters/<cluster>/wal/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalDir {
    dir: PathBuf,
}

impl WalDir {
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The file stored under `name` (sealed, partial or history, as the name says).
    pub fn file(&self, name: &WalFileName) -> PathBuf {
        self.dir.join(name.to_string())
    }

    /// A sealed segment.
    pub fn sealed(&self, tli: TimelineId, segno: SegNo, seg_size: WalSegSize) -> PathBuf {
        self.file(&WalFileName::segment(tli, segno, seg_size))
    }

    /// The `.partial` of a segment being received.
    pub fn partial(&self, tli: TimelineId, segno: SegNo, seg_size: WalSegSize) -> PathBuf {
        self.file(&WalFileName::partial(tli, segno, seg_size))
    }

    /// A timeline history file.
    pub fn history(&self, tli: TimelineId) -> PathBuf {
        self.file(&WalFileName::history(tli))
    }

    /// The temporary name `name` is created under before its durable rename.
    pub fn temp(&self, name: &WalFileName) -> PathBuf {
        tmp_name(&self.file(name))
    }

    /// A segment file freed by recompression, kept to be reused as the next segment's
    /// preallocated file (its old content is overwritten or cut off, never read).
    pub fn spare(&self) -> PathBuf {
        self.dir.join(SPARE_NAME)
    }
}

/// File name of [`WalDir::spare`].
const SPARE_NAME: &str = "recycled.spare";

/// What a file name in a WAL directory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalDirEntry {
    Sealed(WalFileName),
    Partial(WalFileName),
    History(WalFileName),
    /// A file being created under this name's temporary name (left by a crash).
    Temp(WalFileName),
    /// [`WalDir::spare`].
    Spare,
    /// Not a name Klio writes here (or not UTF-8).
    Unknown,
}

impl WalDirEntry {
    pub fn parse(file_name: impl AsRef<OsStr>) -> WalDirEntry {
        let Some(s) = file_name.as_ref().to_str() else {
            return WalDirEntry::Unknown;
        };
        if s == SPARE_NAME {
            return WalDirEntry::Spare;
        }
        if let Some(base) = s.strip_suffix(TMP_SUFFIX) {
            return match base.parse() {
                Ok(name) => WalDirEntry::Temp(name),
                Err(_) => WalDirEntry::Unknown,
            };
        }
        match s.parse::<WalFileName>() {
            Ok(n) => match n.kind() {
                WalFileKind::Segment => WalDirEntry::Sealed(n),
                WalFileKind::Partial => WalDirEntry::Partial(n),
                WalFileKind::History => WalDirEntry::History(n),
            },
            Err(_) => WalDirEntry::Unknown,
        }
    }
}

/// `<data_dir>/clusters/<cluster>/backups/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupsDir {
    dir: PathBuf,
}

impl BackupsDir {
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The directory of every backup's pack files.
    pub fn packs_dir(&self) -> PathBuf {
        self.dir.join(PACKS)
    }

    /// A pack file.
    pub fn pack(&self, name: &PackName) -> PathBuf {
        self.packs_dir().join(format!("{name}{PACK_SUFFIX}"))
    }

    /// Where a repacked pack's chunks are (a Klio object of kind `PackIndex`, written
    /// through a `.tmp`), so that a reader of the files or the bucket can place them.
    pub fn pack_index(&self, name: &PackName) -> PathBuf {
        self.packs_dir().join(format!("{name}{PACK_INDEX_SUFFIX}"))
    }

    /// One backup's directory (its manifests); `None` for the one id that would name
    /// the packs directory instead.
    pub fn backup(&self, id: &BackupId) -> Option<BackupDir> {
        (id.as_str() != PACKS).then(|| BackupDir {
            dir: self.dir.join(id.as_str()),
        })
    }
}

/// What a file name in a backups directory is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupsDirEntry {
    /// The packs directory.
    Packs,
    /// A backup's manifest directory.
    Backup(BackupId),
    Unknown,
}

impl BackupsDirEntry {
    pub fn parse(file_name: impl AsRef<OsStr>) -> BackupsDirEntry {
        match file_name.as_ref().to_str() {
            Some(PACKS) => BackupsDirEntry::Packs,
            Some(s) => s
                .parse()
                .map_or(BackupsDirEntry::Unknown, BackupsDirEntry::Backup),
            None => BackupsDirEntry::Unknown,
        }
    }
}

/// `<data_dir>/clusters/<cluster>/backups/<backup id>/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupDir {
    dir: PathBuf,
}

impl BackupDir {
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Klio's manifest of the backup (written through a `.tmp`, see `crashsafe`).
    pub fn manifest(&self) -> PathBuf {
        self.dir.join(MANIFEST)
    }

    /// PostgreSQL's `backup_manifest` of the backup (written through a `.tmp`).
    pub fn pg_manifest(&self) -> PathBuf {
        self.dir.join(PG_MANIFEST)
    }

    /// Where the chunks this backup stored first are (pack, offset, lengths), so that
    /// the catalog can be rebuilt from the files alone (written through a `.tmp`).
    pub fn chunk_index(&self) -> PathBuf {
        self.dir.join(CHUNK_INDEX)
    }
}

/// A pack's name: `<backup id>-<sequence>`, the sequence at least 4 digits, for a pack a
/// backup wrote (it belongs to the one backup whose id is in its name); or
/// `<repack id>-r<sequence>` for a pack retention's repacking wrote, the repack id being
/// the time of the repack in the form of a backup id (it belongs to no backup).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackName {
    backup: BackupId,
    seq: u32,
    repack: bool,
}

/// Why a text is not a pack name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pack name {0:?}: expected <backup id>-<sequence>, e.g. 20261124T193000Z-0001 (or a repacked pack's <id>-r<sequence>)")]
pub struct PackNameError(String);

impl PackName {
    pub fn new(backup: BackupId, seq: u32) -> PackName {
        PackName {
            backup,
            seq,
            repack: false,
        }
    }

    /// A pack written by repacking at the time `at` (in the form of a backup id).
    pub fn repacked(at: BackupId, seq: u32) -> PackName {
        PackName {
            backup: at,
            seq,
            repack: true,
        }
    }

    /// The backup that wrote this pack; for a repacked pack, the repack's time (a
    /// pack of no backup: see [`PackName::is_repack`]).
    pub fn backup(&self) -> &BackupId {
        &self.backup
    }

    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// Written by repacking (holds the live chunks of older packs), not by a backup.
    pub fn is_repack(&self) -> bool {
        self.repack
    }
}

impl fmt::Display for PackName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = if self.repack { "r" } else { "" };
        write!(f, "{}-{r}{:04}", self.backup, self.seq)
    }
}

impl FromStr for PackName {
    type Err = PackNameError;

    /// Accepts exactly what `Display` writes (so a name parses back to itself).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PackNameError(s.chars().take(80).collect());
        let (id, seq) = s.rsplit_once('-').ok_or_else(bad)?;
        let (repack, seq) = match seq.strip_prefix('r') {
            Some(rest) => (true, rest),
            None => (false, seq),
        };
        if !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u32 = seq.parse().map_err(|_| bad())?;
        if format!("{n:04}") != seq {
            return Err(bad());
        }
        Ok(PackName {
            backup: id.parse().map_err(|_| bad())?,
            seq: n,
            repack,
        })
    }
}

/// What a file name in a packs directory is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PacksDirEntry {
    Pack(PackName),
    /// A repacked pack's index (`<pack>.index`, see [`BackupsDir::pack_index`]).
    Index(PackName),
    /// Not a name Klio writes here (packs are created in place, never under a temp name).
    Unknown,
}

impl PacksDirEntry {
    pub fn parse(file_name: impl AsRef<OsStr>) -> PacksDirEntry {
        let Some(s) = file_name.as_ref().to_str() else {
            return PacksDirEntry::Unknown;
        };
        if let Some(name) = s.strip_suffix(PACK_SUFFIX) {
            return name
                .parse()
                .map_or(PacksDirEntry::Unknown, PacksDirEntry::Pack);
        }
        match s
            .strip_suffix(PACK_INDEX_SUFFIX)
            .map(str::parse::<PackName>)
        {
            Some(Ok(p)) if p.is_repack() => PacksDirEntry::Index(p),
            _ => PacksDirEntry::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;
    use std::path::Component;

    use super::*;

    fn tli(n: u32) -> TimelineId {
        TimelineId::new(n).unwrap()
    }

    fn pack(s: &str) -> PackName {
        s.parse().unwrap()
    }

    /// Every kind of path this module names, for a sample cluster and backup, with what
    /// it holds (the "On disk" listing in docs/ARCHITECTURE.md).
    fn every_path(d: &DataDir) -> Vec<(PathBuf, &'static str)> {
        let c: ClusterName = "pg-main".parse().unwrap();
        let id: BackupId = "20261124T193000Z".parse().unwrap();
        let seg = WalSegSize::DEFAULT;
        let (wal, backups) = (d.wal(&c), d.backups(&c));
        let b = backups.backup(&id).unwrap();
        let partial = WalFileName::partial(tli(1), SegNo(4), seg);
        vec![
            (d.key_check(), "master-key check value"),
            (d.catalog_dir(), "RocksDB catalog (klio-catalog)"),
            (d.clusters_dir(), "one directory per cluster"),
            (d.cluster_dir(&c), "one cluster"),
            (wal.path().into(), "Tier 1 WAL (klio-receiver wal_store)"),
            (wal.sealed(tli(1), SegNo(3), seg), "sealed segment"),
            (wal.partial(tli(1), SegNo(4), seg), "segment being received"),
            (wal.history(tli(2)), "timeline history file"),
            (wal.temp(&partial), "being created (removed at start-up)"),
            (backups.path().into(), "chunk store (klio-basebackup store)"),
            (backups.packs_dir(), "pack files of every backup"),
            (
                backups.pack(&PackName::new(id, 1)),
                "a backup's sealed chunks",
            ),
            (b.path().into(), "one backup's manifests"),
            (b.manifest(), "Klio's manifest"),
            (b.pg_manifest(), "PostgreSQL's backup_manifest"),
            (b.chunk_index(), "where its new chunks are (chunk index)"),
            (tmp_name(&b.manifest()), "being written"),
        ]
    }

    fn listing() -> String {
        let d = DataDir::new("/d");
        let rows: Vec<(String, &str)> = every_path(&d)
            .into_iter()
            .map(|(p, what)| {
                (
                    p.strip_prefix(d.root()).unwrap().display().to_string(),
                    what,
                )
            })
            .collect();
        let width = rows.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
        let mut s = String::from("<data_dir>/\n");
        for (rel, what) in rows {
            s.push_str(&format!("  {rel:<width$}  {what}\n"));
        }
        s
    }

    #[test]
    fn every_path_is_below_data_dir() {
        let d = DataDir::new("/srv/klio/data");
        for (p, _) in every_path(&d) {
            let rel = p.strip_prefix(d.root()).unwrap();
            assert!(
                rel.components().all(|c| matches!(c, Component::Normal(_))),
                "{}",
                p.display()
            );
        }
    }

    #[test]
    fn paths_are_the_ones_existing_data_directories_hold() {
        let d = DataDir::new("/d");
        let got: Vec<String> = every_path(&d)
            .into_iter()
            .map(|(p, _)| p.display().to_string())
            .collect();
        assert_eq!(
            got,
            [
                "/d/keycheck",
                "/d/catalog",
                "/d/clusters",
                "/d/clusters/pg-main",
                "/d/clusters/pg-main/wal",
                "/d/clusters/pg-main/wal/000000010000000000000003",
                "/d/clusters/pg-main/wal/000000010000000000000004.partial",
                "/d/clusters/pg-main/wal/00000002.history",
                "/d/clusters/pg-main/wal/000000010000000000000004.partial.tmp",
                "/d/clusters/pg-main/backups",
                "/d/clusters/pg-main/backups/packs",
                "/d/clusters/pg-main/backups/packs/20261124T193000Z-0001.pack",
                "/d/clusters/pg-main/backups/20261124T193000Z",
                "/d/clusters/pg-main/backups/20261124T193000Z/manifest.klio",
                "/d/clusters/pg-main/backups/20261124T193000Z/backup_manifest.klio",
                "/d/clusters/pg-main/backups/20261124T193000Z/chunks.klio",
                "/d/clusters/pg-main/backups/20261124T193000Z/manifest.klio.tmp",
            ]
        );
    }

    fn file_name(p: &Path) -> &OsStr {
        p.file_name().unwrap()
    }

    #[test]
    fn wal_names_parse_back_to_what_was_written() {
        let w = DataDir::new("/d").wal(&"c".parse().unwrap());
        let seg = WalSegSize::new(1 << 20).unwrap();
        for (t, n) in [(1, 0), (1, 3), (7, 0x1234), (u32::MAX, 4095 * 4096)] {
            let (t, n) = (tli(t), SegNo(n));
            let sealed = WalFileName::segment(t, n, seg);
            let partial = WalFileName::partial(t, n, seg);
            let history = WalFileName::history(t);
            let cases = [
                (w.sealed(t, n, seg), WalDirEntry::Sealed(sealed)),
                (w.partial(t, n, seg), WalDirEntry::Partial(partial)),
                (w.history(t), WalDirEntry::History(history)),
                (w.temp(&partial), WalDirEntry::Temp(partial)),
                (w.temp(&history), WalDirEntry::Temp(history)),
            ];
            for (path, entry) in cases {
                assert_eq!(path.parent(), Some(w.path()));
                assert_eq!(WalDirEntry::parse(file_name(&path)), entry, "{path:?}");
            }
        }
        assert_eq!(w.spare().parent(), Some(w.path()));
        assert_eq!(
            WalDirEntry::parse(file_name(&w.spare())),
            WalDirEntry::Spare
        );
    }

    #[test]
    fn backup_names_parse_back_to_what_was_written() {
        let b = DataDir::new("/d").backups(&"c".parse().unwrap());
        for (id, seq) in [
            ("20261124T193000Z", 1),
            ("20261124T193000Z-2", 12),
            ("a", 123_456),
        ] {
            let id: BackupId = id.parse().unwrap();
            let name = PackName::new(id.clone(), seq);
            assert_eq!(name.to_string().parse::<PackName>().unwrap(), name);
            let path = b.pack(&name);
            assert_eq!(path.parent(), Some(b.packs_dir().as_path()));
            assert_eq!(
                PacksDirEntry::parse(file_name(&path)),
                PacksDirEntry::Pack(name.clone())
            );
            assert_eq!(name.backup(), &id);
            let dir = b.backup(&id).unwrap();
            assert_eq!(dir.path().parent(), Some(b.path()));
            assert_eq!(
                BackupsDirEntry::parse(file_name(dir.path())),
                BackupsDirEntry::Backup(id)
            );
        }
        assert_eq!(
            BackupsDirEntry::parse(file_name(&b.packs_dir())),
            BackupsDirEntry::Packs
        );
    }

    /// A repacked pack's name and index parse back; they are told apart from backups'
    /// packs, and an index is only ever a repacked pack's.
    #[test]
    fn repacked_pack_names_parse_back_and_are_not_backup_packs() {
        let b = DataDir::new("/d").backups(&"c".parse().unwrap());
        let at: BackupId = "20261126T101500Z".parse().unwrap();
        let name = PackName::repacked(at.clone(), 3);
        assert_eq!(name.to_string(), "20261126T101500Z-r0003");
        let back: PackName = name.to_string().parse().unwrap();
        assert_eq!(back, name);
        assert!(back.is_repack());
        assert_ne!(back, PackName::new(at, 3));
        assert_eq!(
            PacksDirEntry::parse(file_name(&b.pack(&name))),
            PacksDirEntry::Pack(name.clone())
        );
        assert_eq!(
            PacksDirEntry::parse(file_name(&b.pack_index(&name))),
            PacksDirEntry::Index(name)
        );
        let plain = pack("20261124T193000Z-0001");
        assert!(!plain.is_repack());
        assert_eq!(
            PacksDirEntry::parse(file_name(&b.pack_index(&plain))),
            PacksDirEntry::Unknown
        );
        for bad in ["x-r1", "x-r", "x-rr0001", "x-R0001", "x-r00001"] {
            assert!(bad.parse::<PackName>().is_err(), "{bad}");
        }
    }

    /// A backup id may end in `-<n>` itself: the pack's sequence is always the last part.
    #[test]
    fn a_pack_belongs_to_exactly_one_backup() {
        let p = pack("20261124T193000Z-2-0001");
        assert_eq!(p.backup().as_str(), "20261124T193000Z-2");
        assert_eq!(p.seq(), 1);
        assert_ne!(p.backup().as_str(), "20261124T193000Z");
    }

    #[test]
    fn unknown_and_hostile_names_classify_as_unknown() {
        let non_utf8 = OsStr::from_bytes(b"00000001000000000000000\xff");
        assert_eq!(WalDirEntry::parse(non_utf8), WalDirEntry::Unknown);
        assert_eq!(PacksDirEntry::parse(non_utf8), PacksDirEntry::Unknown);
        assert_eq!(BackupsDirEntry::parse(non_utf8), BackupsDirEntry::Unknown);
        for s in [
            "",
            ".",
            "..",
            ".tmp",
            "foo.tmp",
            "x.partial",
            "../000000010000000000000003",
            "000000010000000000000003/..",
            "000000010000000000000003.tmp.tmp",
            "000000010000000000000003.partial.partial",
            "00000001000000000000000a",
            "000000000000000000000003",
            "00000000.history",
            "000000010000000000000003 ",
            "lost+found",
        ] {
            assert_eq!(WalDirEntry::parse(s), WalDirEntry::Unknown, "{s:?}");
        }
        for s in [
            "",
            ".pack",
            "a.pack",
            "a-1.pack",
            "a-00001.pack",
            "a-+001.pack",
            "-0001.pack",
            "a-0001",
            "a-0001.pack.tmp",
            "a-0001.tmp",
            "../a-0001.pack",
            "a/b-0001.pack",
            "a-99999999999.pack",
        ] {
            assert_eq!(PacksDirEntry::parse(s), PacksDirEntry::Unknown, "{s:?}");
        }
        for s in ["", ".", "..", "a.b", "a/b", "manifest.klio", "x.tmp"] {
            assert_eq!(BackupsDirEntry::parse(s), BackupsDirEntry::Unknown, "{s:?}");
        }
    }

    /// Names come from peers (HTTP paths, a bucket listing, the catalog): none of the
    /// types a path is built from accepts one that leaves its directory, and the one
    /// valid backup id that would name another directory is refused.
    #[test]
    fn a_hostile_name_cannot_build_a_path_outside_its_directory() {
        for s in ["..", "../x", "a/../../b", "/etc", "x/..", "."] {
            assert!(s.parse::<ClusterName>().is_err(), "{s:?}");
            assert!(s.parse::<BackupId>().is_err(), "{s:?}");
            assert!(s.parse::<WalFileName>().is_err(), "{s:?}");
            assert!(format!("{s}-0001").parse::<PackName>().is_err(), "{s:?}");
        }
        let b = DataDir::new("/d").backups(&"c".parse().unwrap());
        assert_eq!(b.backup(&"packs".parse().unwrap()), None);
        assert!(b.backup(&"packs2".parse().unwrap()).is_some());
    }

    /// docs/ARCHITECTURE.md shows the tree this module names; it fails when they drift.
    #[test]
    fn the_architecture_document_shows_this_layout() {
        let doc = include_str!("../../docs/ARCHITECTURE.md");
        let want = listing();
        assert!(
            doc.contains(&want),
            "docs/ARCHITECTURE.md's \"On disk\" block is stale; it should read:\n{want}"
        );
    }
}
