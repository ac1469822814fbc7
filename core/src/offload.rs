//! Tier 0 offload sources: a PGDATA copy from a volume snapshot, with the
//! `backup_label` PostgreSQL wrote for it (`pg_backup_start`/`pg_backup_stop`),
//! read as a stream of files like a `BASE_BACKUP`.
//!
//! Confinement: the copy must resolve (symbolic links followed) inside one of the
//! cluster's offload roots, and each tablespace link `pg_tblspc/<oid>` must lead inside
//! the same root. A path that does not resolve and a path outside every root get the
//! same error, so a caller learns nothing about the server's other files. Below that,
//! everything is opened through [`crate::confine`]: one component at a time, never
//! following a symbolic link, and each file read is checked to be the one the scan saw.
//! The copy's `global/pg_control` must carry the cluster's database system identifier.
//!
//! What is taken follows PostgreSQL's own base-backup rules: the contents of
//! `pg_wal`, `pg_replslot`, `pg_dynshmem`, `pg_notify`, `pg_serial`, `pg_snapshots`,
//! `pg_stat_tmp` and `pg_subtrans` are skipped (the directories are kept, empty), as
//! are `postmaster.pid`, `postmaster.opts`, `pg_internal.init`, temporary files
//! (`pgsql_tmp*`) and recovery signal files. Symbolic links are taken only where
//! `BASE_BACKUP` takes them: `pg_tblspc/<oid>` is stored as a link and the directory it
//! points to is read as that tablespace's archive; a linked `pg_wal` is stored as an
//! (empty) directory; any other link is skipped with a warning, never followed.
//! Reads only; writes nothing to disk.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::confine::{self, FileId, OpenError};
use crate::{Lsn, SystemId, TimelineId};

/// The OID of a tablespace link's path `pg_tblspc/<oid>` (digits only), if it is one.
pub fn tablespace_link_oid(path: &str) -> Option<u32> {
    let oid = path.strip_prefix("pg_tblspc/")?;
    if oid.is_empty() || !oid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    oid.parse().ok()
}

/// Directories whose contents a base backup leaves out.
const EXCLUDED_CONTENTS: &[&str] = &[
    "pg_wal",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];

/// Files a base backup leaves out, wherever they are.
const EXCLUDED_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "pg_internal.init",
    "recovery.signal",
    "standby.signal",
];

/// Largest `backup_label` read.
const MAX_LABEL: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    /// The same words whether the path exists or not (see the module documentation).
    #[error("`from` is not inside any of the cluster's offload_roots, or does not exist: give an existing directory under one of the offload_roots in the cluster's server configuration")]
    OutsideRoots,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} has no backup_label: offload needs a copy made between pg_backup_start and pg_backup_stop, with the label pg_backup_stop returned written into it as backup_label")]
    NoLabel(PathBuf),
    #[error("{path}: {why}")]
    BadLabel { path: PathBuf, why: String },
    #[error("{0} is not a PostgreSQL data directory (no PG_VERSION or global/pg_control)")]
    NotPgdata(PathBuf),
    #[error("{dir}: global/pg_control has database system identifier {found}, but this cluster's is {expected}: this is a copy of another PostgreSQL cluster; offload it into the cluster it belongs to")]
    OtherSystem {
        dir: PathBuf,
        found: SystemId,
        expected: SystemId,
    },
    #[error("{path}: file name is not valid UTF-8; PostgreSQL never creates such names, so this is not a data directory copy")]
    BadName { path: PathBuf },
    #[error("tablespace {oid}: pg_tblspc/{oid} -> {target} does not lead to a directory inside {root}, the offload root that holds this copy (missing, or outside it); mount the tablespace's snapshot inside that root and point the link there")]
    TablespaceOutsideRoot {
        oid: u32,
        target: String,
        root: PathBuf,
    },
    #[error("{0}: not a regular file, or replaced while the offload read it (symbolic links are never followed); offload from a snapshot that nothing writes to")]
    Changed(PathBuf),
}

/// What an offload may read, and whose copy it must be.
#[derive(Debug, Clone, Copy)]
pub struct OffloadPolicy<'a> {
    /// The directories the copy and its tablespaces must lie in (symbolic links
    /// resolved). None: nothing may be offloaded.
    pub roots: &'a [PathBuf],
    /// The cluster's database system identifier, which the copy's `global/pg_control`
    /// must carry (`None`: not checked here; the uploading client, whose server checks it).
    pub system_id: Option<SystemId>,
    /// The `backup_label` text to use instead of the copy's own file (volume snapshots
    /// taken by CloudNativePG keep it beside the snapshot, not in it). `None`: the copy
    /// must hold `backup_label`.
    pub label: Option<&'a str>,
}

/// What `backup_label` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupLabel {
    pub start_lsn: Lsn,
    pub start_timeline: TimelineId,
    pub checkpoint_lsn: Option<Lsn>,
    pub label: Option<String>,
    /// The file's exact text (stored with the backup, restored verbatim).
    pub text: String,
}

/// Parses a `backup_label` file.
pub fn parse_backup_label(text: &str) -> Result<BackupLabel, String> {
    let mut start = None;
    let mut tli = None;
    let mut checkpoint = None;
    let mut label = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("START WAL LOCATION: ") {
            let lsn = rest.split_whitespace().next().unwrap_or("");
            start = Some(
                lsn.parse::<Lsn>()
                    .map_err(|_| format!("START WAL LOCATION {lsn:?} is not an LSN"))?,
            );
        } else if let Some(rest) = line.strip_prefix("CHECKPOINT LOCATION: ") {
            checkpoint = rest.trim().parse::<Lsn>().ok();
        } else if let Some(rest) = line.strip_prefix("START TIMELINE: ") {
            let n: u32 = rest
                .trim()
                .parse()
                .map_err(|_| format!("START TIMELINE {rest:?} is not a number"))?;
            tli = Some(TimelineId::new(n).map_err(|e| format!("START TIMELINE: {e}"))?);
        } else if let Some(rest) = line.strip_prefix("LABEL: ") {
            label = Some(rest.to_string());
        }
    }
    let start_lsn = start.ok_or("no START WAL LOCATION line")?;
    // Labels from before PostgreSQL 11 have no START TIMELINE; the WAL file name
    // in the START WAL LOCATION line carries it.
    let start_timeline = match tli {
        Some(t) => t,
        None => {
            let file = text
                .lines()
                .find_map(|l| l.strip_prefix("START WAL LOCATION: "))
                .and_then(|r| r.split("(file ").nth(1))
                .and_then(|r| r.get(..8))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .ok_or("no START TIMELINE line")?;
            TimelineId::new(file).map_err(|e| format!("START WAL LOCATION file: {e}"))?
        }
    };
    Ok(BackupLabel {
        start_lsn,
        start_timeline,
        checkpoint_lsn: checkpoint,
        label,
        text: text.to_string(),
    })
}

/// One entry to store, in the order a tar archive would hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceEntry {
    /// `None` for the data directory, else the tablespace's OID.
    pub tablespace: Option<u32>,
    /// Relative, `/`-separated, no `.`/`..` components.
    pub path: String,
    /// Where it was found (for messages; reads go through [`OffloadSource::open`]).
    pub source: PathBuf,
    pub kind: SourceKind,
    pub mode: u32,
    pub mtime: i64,
    pub size: u64,
    /// What the scan saw (files only).
    id: FileId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    File,
    Directory,
    Symlink(String),
}

/// A scanned offload source, holding its directories open.
#[derive(Debug)]
pub struct OffloadSource {
    pub label: BackupLabel,
    /// `(oid, directory)` of each tablespace (the directory as its link names it).
    pub tablespaces: Vec<(u32, PathBuf)>,
    pub entries: Vec<SourceEntry>,
    pub total_bytes: u64,
    /// Symbolic links left out (neither `pg_tblspc/<oid>` nor `pg_wal`).
    pub skipped_links: Vec<PathBuf>,
    /// The data directory.
    dir: OwnedFd,
    /// Each tablespace's directory.
    space_dirs: Vec<(u32, OwnedFd)>,
}

impl OffloadSource {
    /// Opens a scanned regular file for reading: below the directory it was found in,
    /// following no symbolic link, and only if it is still the file the scan saw.
    pub fn open(&self, e: &SourceEntry) -> Result<File, OffloadError> {
        let base = match e.tablespace {
            None => Some(self.dir.as_fd()),
            Some(oid) => self
                .space_dirs
                .iter()
                .find(|(o, _)| *o == oid)
                .map(|(_, fd)| fd.as_fd()),
        };
        let base = base.ok_or_else(|| OffloadError::Changed(e.source.clone()))?;
        confine::open_file(base, &e.path, Some(e.id)).map_err(|err| opened(&e.source, err))
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OffloadError + '_ {
    move |source| OffloadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn opened(path: &Path, e: OpenError) -> OffloadError {
    match e {
        OpenError::Changed => OffloadError::Changed(path.to_path_buf()),
        OpenError::Io(source) => OffloadError::Io {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// The first `limit` bytes of regular file `rel` below `dir`; `None` if it is missing.
fn read_head(
    dir: BorrowedFd<'_>,
    dir_path: &Path,
    rel: &str,
    limit: u64,
) -> Result<Option<Vec<u8>>, OffloadError> {
    let path = dir_path.join(rel);
    let file = match confine::open_file(dir, rel, None) {
        Ok(f) => f,
        Err(OpenError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(opened(&path, e)),
    };
    let mut buf = Vec::new();
    file.take(limit).read_to_end(&mut buf).map_err(io(&path))?;
    Ok(Some(buf))
}

/// Scans the copy at `from` under `policy`. Nothing is read beyond metadata,
/// `backup_label`, `PG_VERSION` and the start of `global/pg_control`.
pub fn scan(from: &Path, policy: &OffloadPolicy<'_>) -> Result<OffloadSource, OffloadError> {
    if !from.is_absolute() {
        return Err(OffloadError::OutsideRoots);
    }
    let (root, real) =
        confine::resolve_inside(from, policy.roots).ok_or(OffloadError::OutsideRoots)?;
    let root_dir = confine::open_dir(&root).map_err(|_| OffloadError::OutsideRoots)?;
    let rel = real
        .strip_prefix(&root)
        .map_err(|_| OffloadError::OutsideRoots)?;
    let dir = confine::open_dir_beneath(root_dir.as_fd(), rel).map_err(io(&real))?;

    let label_path = real.join("backup_label");
    let text = match policy.label {
        Some(given) => given.to_string(),
        None => {
            let text = read_head(dir.as_fd(), &real, "backup_label", MAX_LABEL)?
                .ok_or_else(|| OffloadError::NoLabel(real.clone()))?;
            String::from_utf8(text).map_err(|_| OffloadError::BadLabel {
                path: label_path.clone(),
                why: "not UTF-8 text".into(),
            })?
        }
    };
    let label = parse_backup_label(&text).map_err(|why| OffloadError::BadLabel {
        path: label_path.clone(),
        why,
    })?;
    let control = read_head(dir.as_fd(), &real, "global/pg_control", 8)?;
    let version = read_head(dir.as_fd(), &real, "PG_VERSION", 64)?;
    let (Some(control), Some(_)) = (control, version) else {
        return Err(OffloadError::NotPgdata(real));
    };
    let found = control
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(|b| SystemId::new(u64::from_le_bytes(b)))
        .ok_or_else(|| OffloadError::NotPgdata(real.clone()))?;
    if let Some(expected) = policy.system_id.filter(|e| *e != found) {
        return Err(OffloadError::OtherSystem {
            dir: real,
            found,
            expected,
        });
    }

    let mut walk = Walk::default();
    walk.dir(dir.as_fd(), &real, "", None)?;
    // Tablespace links: pg_tblspc/<oid> → a directory inside the same root.
    let mut tablespaces = Vec::new();
    let mut space_dirs = Vec::new();
    let links: Vec<(u32, String)> = walk
        .entries
        .iter()
        .filter_map(|e| match &e.kind {
            SourceKind::Symlink(t) => Some((tablespace_link_oid(&e.path)?, t.clone())),
            _ => None,
        })
        .collect();
    for (oid, target) in links {
        let outside = || OffloadError::TablespaceOutsideRoot {
            oid,
            target: target.clone(),
            root: root.clone(),
        };
        let link = PathBuf::from(&target);
        let resolved = if link.is_absolute() {
            link
        } else {
            real.join("pg_tblspc").join(link)
        };
        let (_, treal) =
            confine::resolve_inside(&resolved, std::slice::from_ref(&root)).ok_or_else(outside)?;
        let trel = treal.strip_prefix(&root).map_err(|_| outside())?;
        let tdir = confine::open_dir_beneath(root_dir.as_fd(), trel).map_err(io(&treal))?;
        walk.dir(tdir.as_fd(), &treal, "", Some(oid))?;
        tablespaces.push((oid, resolved));
        space_dirs.push((oid, tdir));
    }
    let total_bytes = walk.entries.iter().map(|e| e.size).sum();
    Ok(OffloadSource {
        label,
        tablespaces,
        entries: walk.entries,
        total_bytes,
        skipped_links: walk.skipped_links,
        dir,
        space_dirs,
    })
}

/// A scan in progress.
#[derive(Default)]
struct Walk {
    entries: Vec<SourceEntry>,
    skipped_links: Vec<PathBuf>,
}

impl Walk {
    /// Adds what is below `dir` (found at `dir_path`, `rel` in its archive).
    fn dir(
        &mut self,
        dir: BorrowedFd<'_>,
        dir_path: &Path,
        rel: &str,
        tablespace: Option<u32>,
    ) -> Result<(), OffloadError> {
        let in_pgdata = tablespace.is_none();
        for name in confine::list(dir).map_err(io(dir_path))? {
            let path = dir_path.join(&name);
            let Some(name_str) = name.to_str() else {
                return Err(OffloadError::BadName { path });
            };
            let child_rel = if rel.is_empty() {
                name_str.to_string()
            } else {
                format!("{rel}/{name_str}")
            };
            if EXCLUDED_FILES.contains(&name_str) || name_str.starts_with("pgsql_tmp") {
                continue;
            }
            let (child, meta) = confine::entry(dir, &name).map_err(io(&path))?;
            let ft = meta.file_type();
            let mut entry = SourceEntry {
                tablespace,
                path: child_rel,
                source: path,
                kind: SourceKind::Directory,
                mode: meta.mode() & 0o7777,
                mtime: meta.mtime(),
                size: 0,
                id: FileId::of(&meta),
            };
            if ft.is_symlink() {
                if in_pgdata && entry.path == "pg_wal" {
                    // A symlinked pg_wal is kept as an (empty) directory, as PostgreSQL does.
                    entry.mode = 0o700;
                    self.entries.push(entry);
                } else if in_pgdata && tablespace_link_oid(&entry.path).is_some() {
                    let target = link_target(dir, &name, &entry.source)?;
                    entry.kind = SourceKind::Symlink(target);
                    self.entries.push(entry);
                } else {
                    tracing::warn!(path = %entry.source.display(),
                        "offload: skipping a symbolic link outside pg_tblspc (base backups never follow or keep these)");
                    self.skipped_links.push(entry.source);
                }
            } else if ft.is_dir() {
                let (child_rel, child_path) = (entry.path.clone(), entry.source.clone());
                self.entries.push(entry);
                if in_pgdata && EXCLUDED_CONTENTS.contains(&child_rel.as_str()) {
                    if child_rel == "pg_wal" {
                        // PostgreSQL keeps pg_wal/archive_status too.
                        self.entries.push(SourceEntry {
                            tablespace,
                            path: "pg_wal/archive_status".into(),
                            source: child_path.join("archive_status"),
                            kind: SourceKind::Directory,
                            mode: meta.mode() & 0o7777,
                            mtime: meta.mtime(),
                            size: 0,
                            id: FileId::default(),
                        });
                    }
                    continue;
                }
                self.dir(child.as_fd(), &child_path, &child_rel, tablespace)?;
            } else if ft.is_file() {
                entry.kind = SourceKind::File;
                entry.size = meta.len();
                self.entries.push(entry);
            }
            // Sockets, FIFOs and devices are not part of a data directory: skipped.
        }
        Ok(())
    }
}

fn link_target(dir: BorrowedFd<'_>, name: &OsString, path: &Path) -> Result<String, OffloadError> {
    confine::read_link(dir, name)
        .map_err(io(path))?
        .into_string()
        .map_err(|_| OffloadError::BadName {
            path: path.to_path_buf(),
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    const LABEL: &str = "START WAL LOCATION: 0/9000028 (file 000000010000000000000009)\n\
CHECKPOINT LOCATION: 0/9000060\n\
BACKUP METHOD: streamed\n\
BACKUP FROM: primary\n\
START TIME: 2026-11-24 19:00:00 UTC\n\
LABEL: snap-1\n\
START TIMELINE: 1\n";

    #[test]
    fn label_parses() {
        let l = parse_backup_label(LABEL).unwrap();
        assert_eq!(l.start_lsn, Lsn(0x900_0028));
        assert_eq!(l.start_timeline.get(), 1);
        assert_eq!(l.checkpoint_lsn, Some(Lsn(0x900_0060)));
        assert_eq!(l.label.as_deref(), Some("snap-1"));
        let old = LABEL
            .replace("START TIMELINE: 1\n", "")
            .replace("file 00000001", "file 00000003");
        assert_eq!(parse_backup_label(&old).unwrap().start_timeline.get(), 3);
        assert!(parse_backup_label("LABEL: x\n")
            .unwrap_err()
            .contains("START WAL LOCATION"));
        assert!(parse_backup_label("START WAL LOCATION: zz (file x)\n").is_err());
    }

    /// A copy at `<root>/snaps/pgdata` (system identifier [`SYSID`]) with a tablespace
    /// at `<root>/snaps/ts1` (linked as 16399); the offload root is `<root>/snaps`.
    pub(crate) struct Copy {
        t: tempfile::TempDir,
        pub(crate) pgdata: PathBuf,
        ts: PathBuf,
        roots: Vec<PathBuf>,
    }

    const SYSID: SystemId = SystemId::new(0x0101_0101_0101_0101);

    impl Copy {
        pub(crate) fn new() -> Copy {
            let t = tempfile::tempdir().unwrap();
            let snaps = t.path().join("snaps");
            let pgdata = snaps.join("pgdata");
            let ts = snaps.join("ts1");
            for d in [
                "base/1",
                "global",
                "pg_wal/archive_status",
                "pg_tblspc",
                "pg_stat_tmp",
            ] {
                fs::create_dir_all(pgdata.join(d)).unwrap();
            }
            fs::create_dir_all(ts.join("PG_17_1/5")).unwrap();
            fs::write(pgdata.join("backup_label"), LABEL).unwrap();
            fs::write(pgdata.join("PG_VERSION"), "17\n").unwrap();
            fs::write(pgdata.join("global/pg_control"), [1u8; 8192]).unwrap();
            fs::write(pgdata.join("base/1/1259"), [2u8; 100]).unwrap();
            fs::write(pgdata.join("pg_wal/000000010000000000000009"), [0u8; 10]).unwrap();
            fs::write(pgdata.join("pg_stat_tmp/x"), b"x").unwrap();
            fs::write(pgdata.join("postmaster.pid"), b"1").unwrap();
            fs::write(ts.join("PG_17_1/5/16400"), [3u8; 50]).unwrap();
            symlink(&ts, pgdata.join("pg_tblspc/16399")).unwrap();
            // Something outside the root that must never be read.
            let secret = t.path().join("secret");
            fs::create_dir_all(&secret).unwrap();
            fs::write(secret.join("master.key"), b"SECRET").unwrap();
            Copy {
                roots: vec![snaps],
                t,
                pgdata,
                ts,
            }
        }

        pub(crate) fn secret(&self) -> PathBuf {
            self.t.path().join("secret")
        }

        pub(crate) fn scan(&self, from: &Path) -> Result<OffloadSource, OffloadError> {
            scan(
                from,
                &OffloadPolicy {
                    roots: &self.roots,
                    system_id: Some(SYSID),
                    label: None,
                },
            )
        }

        fn read_all(&self, src: &OffloadSource) -> Result<Vec<u8>, OffloadError> {
            let mut all = Vec::new();
            for e in src.entries.iter().filter(|e| e.kind == SourceKind::File) {
                src.open(e)?.read_to_end(&mut all).unwrap();
            }
            Ok(all)
        }
    }

    #[test]
    fn scan_follows_postgres_exclusions_and_tablespaces() {
        let c = Copy::new();
        let pgdata = &c.pgdata;
        // A link elsewhere in PGDATA is neither followed nor kept.
        symlink(c.secret(), pgdata.join("evil")).unwrap();
        let src = c.scan(pgdata).unwrap();
        let paths: Vec<(Option<u32>, &str)> = src
            .entries
            .iter()
            .map(|e| (e.tablespace, e.path.as_str()))
            .collect();
        assert!(paths.contains(&(None, "base/1/1259")));
        assert!(paths.contains(&(None, "pg_wal")));
        assert!(paths.contains(&(None, "pg_wal/archive_status")));
        assert!(paths.contains(&(None, "pg_stat_tmp")));
        assert!(!paths.iter().any(|p| p.1.starts_with("pg_wal/0")));
        assert!(!paths.contains(&(None, "pg_stat_tmp/x")));
        assert!(!paths.contains(&(None, "postmaster.pid")));
        assert!(!paths.iter().any(|p| p.1.starts_with("evil")));
        assert_eq!(src.skipped_links, vec![pgdata.join("evil")]);
        assert!(paths.contains(&(Some(16399), "PG_17_1/5/16400")));
        assert_eq!(src.tablespaces, vec![(16399, c.ts.clone())]);
        assert_eq!(src.total_bytes, 8192 + 100 + 50 + LABEL.len() as u64 + 3);
        let all = c.read_all(&src).unwrap();
        assert_eq!(all.len() as u64, src.total_bytes);
        assert!(!all.windows(6).any(|w| w == b"SECRET"));

        // No label: a clear error; a dangling tablespace link likewise.
        fs::remove_file(pgdata.join("backup_label")).unwrap();
        assert!(matches!(c.scan(pgdata), Err(OffloadError::NoLabel(_))));
        fs::write(pgdata.join("backup_label"), LABEL).unwrap();
        fs::remove_dir_all(&c.ts).unwrap();
        let e = c.scan(pgdata).unwrap_err();
        assert!(e.to_string().contains("tablespace 16399"), "{e}");
    }

    #[test]
    fn from_outside_the_roots_is_refused_alike_whether_it_exists_or_not() {
        let c = Copy::new();
        // A real copy outside the root, a link inside the root to it, a climb with
        // `..`, a missing path, a relative path, and no roots at all.
        let outside = c.t.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::rename(&c.pgdata, outside.join("pgdata")).unwrap();
        symlink(outside.join("pgdata"), c.roots[0].join("link")).unwrap();
        let texts: Vec<String> = [
            outside.join("pgdata"),
            c.roots[0].join("link"),
            c.roots[0].join("../outside/pgdata"),
            c.t.path().join("missing"),
            PathBuf::from("snaps/link"),
        ]
        .iter()
        .map(|p| {
            let e = c.scan(p).unwrap_err();
            assert!(
                matches!(e, OffloadError::OutsideRoots),
                "{}: {e}",
                p.display()
            );
            e.to_string()
        })
        .collect();
        assert!(texts.windows(2).all(|w| w[0] == w[1]), "{texts:?}");
        assert!(texts[0].contains("offload_roots"), "{}", texts[0]);
        let none = scan(
            &outside.join("pgdata"),
            &OffloadPolicy {
                roots: &[],
                system_id: Some(SYSID),
                label: None,
            },
        );
        assert!(matches!(none, Err(OffloadError::OutsideRoots)));
        // Moved back inside, the link-free path works.
        fs::rename(outside.join("pgdata"), &c.pgdata).unwrap();
        c.scan(&c.pgdata).unwrap();
        c.scan(&c.roots[0].join("link")).unwrap_err();
    }

    #[test]
    fn tablespace_link_must_stay_in_the_root() {
        let c = Copy::new();
        let link = c.pgdata.join("pg_tblspc/16399");
        fs::remove_file(&link).unwrap();
        symlink(c.secret(), &link).unwrap();
        let existing = c.scan(&c.pgdata).unwrap_err();
        assert!(
            matches!(
                existing,
                OffloadError::TablespaceOutsideRoot { oid: 16399, .. }
            ),
            "{existing}"
        );
        // The same words when the target does not exist.
        fs::remove_dir_all(c.secret()).unwrap();
        let missing = c.scan(&c.pgdata).unwrap_err();
        assert_eq!(existing.to_string(), missing.to_string());
        // A relative link climbing out is refused too.
        fs::remove_file(&link).unwrap();
        symlink("../../../secret", &link).unwrap();
        fs::create_dir_all(c.secret()).unwrap();
        assert!(matches!(
            c.scan(&c.pgdata),
            Err(OffloadError::TablespaceOutsideRoot { .. })
        ));
    }

    #[test]
    fn a_copy_of_another_system_is_refused() {
        let c = Copy::new();
        let mut control = [1u8; 8192];
        control[..8].copy_from_slice(&7u64.to_le_bytes());
        fs::write(c.pgdata.join("global/pg_control"), control).unwrap();
        let e = c.scan(&c.pgdata).unwrap_err();
        assert!(
            matches!(
                e,
                OffloadError::OtherSystem { found, expected, .. }
                    if found == SystemId::new(7) && expected == SYSID
            ),
            "{e}"
        );
        // A linked pg_control is not followed.
        fs::remove_file(c.pgdata.join("global/pg_control")).unwrap();
        symlink(
            c.secret().join("master.key"),
            c.pgdata.join("global/pg_control"),
        )
        .unwrap();
        assert!(matches!(c.scan(&c.pgdata), Err(OffloadError::Changed(_))));
    }

    #[test]
    fn a_file_swapped_for_a_link_after_the_scan_is_not_read() {
        for swap in ["file", "directory", "tablespace file"] {
            let c = Copy::new();
            let src = c.scan(&c.pgdata).unwrap();
            match swap {
                "file" => {
                    fs::remove_file(c.pgdata.join("base/1/1259")).unwrap();
                    symlink(c.secret().join("master.key"), c.pgdata.join("base/1/1259")).unwrap();
                }
                "directory" => {
                    // A directory on the way replaced by a link to an identical-looking one.
                    fs::write(c.secret().join("1259"), [2u8; 100]).unwrap();
                    fs::rename(c.pgdata.join("base/1"), c.t.path().join("moved")).unwrap();
                    symlink(c.secret(), c.pgdata.join("base/1")).unwrap();
                }
                _ => {
                    // Another file (another inode) renamed over the scanned one.
                    let f = c.ts.join("PG_17_1/5/16400");
                    fs::write(c.ts.join("other"), [3u8; 50]).unwrap();
                    fs::rename(c.ts.join("other"), &f).unwrap();
                }
            }
            match c.read_all(&src) {
                Err(OffloadError::Changed(_)) => {}
                Err(e) => panic!("{swap}: {e}"),
                Ok(_) => panic!("{swap}: read after the swap"),
            }
        }
    }
}
