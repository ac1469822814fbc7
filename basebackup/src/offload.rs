//! Tier 0 offload sources: a PGDATA copy from a volume snapshot, with the
//! `backup_label` PostgreSQL wrote for it (`pg_backup_start`/`pg_backup_stop`),
//! read as a stream of files like a `BASE_BACKUP`.
//!
//! What is taken follows PostgreSQL's own base-backup rules: the contents of
//! `pg_wal`, `pg_replslot`, `pg_dynshmem`, `pg_notify`, `pg_serial`, `pg_snapshots`,
//! `pg_stat_tmp` and `pg_subtrans` are skipped (the directories are kept, empty), as
//! are `postmaster.pid`, `postmaster.opts`, `pg_internal.init`, temporary files
//! (`pgsql_tmp*`) and recovery signal files. Symbolic links are stored as links,
//! except `pg_tblspc/<oid>`: the tablespace directory it points to is read as that
//! tablespace's archive.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use klio_core::{Lsn, TimelineId};

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

#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
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
    #[error("{path}: file name is not valid UTF-8; PostgreSQL never creates such names, so this is not a data directory copy")]
    BadName { path: PathBuf },
    #[error("tablespace {oid}: {link} points to {target}, which is not a directory here; mount the tablespace's snapshot at that path before offloading")]
    MissingTablespace {
        oid: u32,
        link: PathBuf,
        target: PathBuf,
    },
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
    /// Where to read it.
    pub source: PathBuf,
    pub kind: SourceKind,
    pub mode: u32,
    pub mtime: i64,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    File,
    Directory,
    Symlink(String),
}

/// A scanned offload source.
#[derive(Debug)]
pub struct OffloadSource {
    pub label: BackupLabel,
    /// `(oid, directory)` of each tablespace.
    pub tablespaces: Vec<(u32, PathBuf)>,
    pub entries: Vec<SourceEntry>,
    pub total_bytes: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OffloadError + '_ {
    move |source| OffloadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Scans `dir` (never follows symlinks except the tablespace links). Nothing is read
/// beyond metadata and `backup_label`.
pub fn scan(dir: &Path) -> Result<OffloadSource, OffloadError> {
    let label_path = dir.join("backup_label");
    let text = match fs::read(&label_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(OffloadError::NoLabel(dir.to_path_buf()))
        }
        Err(e) => return Err(io(&label_path)(e)),
    };
    let text = String::from_utf8(text).map_err(|_| OffloadError::BadLabel {
        path: label_path.clone(),
        why: "not UTF-8 text".into(),
    })?;
    let label = parse_backup_label(&text).map_err(|why| OffloadError::BadLabel {
        path: label_path.clone(),
        why,
    })?;
    if !dir.join("PG_VERSION").is_file() || !dir.join("global/pg_control").is_file() {
        return Err(OffloadError::NotPgdata(dir.to_path_buf()));
    }
    let mut entries = Vec::new();
    let mut tablespaces = Vec::new();
    walk(dir, "", None, &mut entries, true)?;
    // Tablespace links: pg_tblspc/<oid> → a directory read as that tablespace.
    for e in entries.iter_mut() {
        let Some(oid) = e
            .path
            .strip_prefix("pg_tblspc/")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let SourceKind::Symlink(target) = &e.kind {
            let target = PathBuf::from(target);
            let resolved = if target.is_absolute() {
                target.clone()
            } else {
                dir.join("pg_tblspc").join(&target)
            };
            if !resolved.is_dir() {
                return Err(OffloadError::MissingTablespace {
                    oid,
                    link: e.source.clone(),
                    target,
                });
            }
            tablespaces.push((oid, resolved));
        }
    }
    for (oid, tdir) in &tablespaces {
        walk(tdir, "", Some(*oid), &mut entries, false)?;
    }
    let total_bytes = entries.iter().map(|e| e.size).sum();
    Ok(OffloadSource {
        label,
        tablespaces,
        entries,
        total_bytes,
    })
}

fn walk(
    dir: &Path,
    rel: &str,
    tablespace: Option<u32>,
    out: &mut Vec<SourceEntry>,
    is_pgdata: bool,
) -> Result<(), OffloadError> {
    let mut names = Vec::new();
    for ent in fs::read_dir(dir).map_err(io(dir))? {
        let ent = ent.map_err(io(dir))?;
        let name = ent.file_name();
        let name = name
            .to_str()
            .ok_or_else(|| OffloadError::BadName { path: ent.path() })?;
        names.push(name.to_string());
    }
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let child_rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if EXCLUDED_FILES.contains(&name.as_str()) || name.starts_with("pgsql_tmp") {
            continue;
        }
        let meta = fs::symlink_metadata(&path).map_err(io(&path))?;
        let mode = meta.permissions().mode() & 0o7777;
        let mtime = meta.mtime();
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(io(&path))?;
            let target = target
                .to_str()
                .ok_or_else(|| OffloadError::BadName { path: path.clone() })?
                .to_string();
            // A symlinked pg_wal is kept as an (empty) directory, as pg_basebackup does.
            if is_pgdata && child_rel == "pg_wal" {
                out.push(SourceEntry {
                    tablespace,
                    path: child_rel,
                    source: path,
                    kind: SourceKind::Directory,
                    mode: 0o700,
                    mtime,
                    size: 0,
                });
                continue;
            }
            out.push(SourceEntry {
                tablespace,
                path: child_rel,
                source: path,
                kind: SourceKind::Symlink(target),
                mode,
                mtime,
                size: 0,
            });
        } else if ft.is_dir() {
            out.push(SourceEntry {
                tablespace,
                path: child_rel.clone(),
                source: path.clone(),
                kind: SourceKind::Directory,
                mode,
                mtime,
                size: 0,
            });
            if is_pgdata && EXCLUDED_CONTENTS.contains(&child_rel.as_str()) {
                if child_rel == "pg_wal" {
                    // pg_basebackup keeps pg_wal/archive_status too.
                    out.push(SourceEntry {
                        tablespace,
                        path: "pg_wal/archive_status".into(),
                        source: path.join("archive_status"),
                        kind: SourceKind::Directory,
                        mode,
                        mtime,
                        size: 0,
                    });
                }
                continue;
            }
            walk(&path, &child_rel, tablespace, out, is_pgdata)?;
        } else if ft.is_file() {
            out.push(SourceEntry {
                tablespace,
                path: child_rel,
                source: path,
                kind: SourceKind::File,
                mode,
                mtime,
                size: meta.len(),
            });
        }
        // Sockets, FIFOs and devices are not part of a data directory: skipped.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn scan_follows_postgres_exclusions_and_tablespaces() {
        let root = tempfile::tempdir().unwrap();
        let pgdata = root.path().join("pgdata");
        let ts = root.path().join("ts1");
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
        std::os::unix::fs::symlink(&ts, pgdata.join("pg_tblspc/16399")).unwrap();

        let src = scan(&pgdata).unwrap();
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
        assert!(paths.contains(&(Some(16399), "PG_17_1/5/16400")));
        assert_eq!(src.tablespaces, vec![(16399, ts.clone())]);
        assert_eq!(src.total_bytes, 8192 + 100 + 50 + LABEL.len() as u64 + 3);

        // No label: a clear error; a dangling tablespace link likewise.
        fs::remove_file(pgdata.join("backup_label")).unwrap();
        assert!(matches!(scan(&pgdata), Err(OffloadError::NoLabel(_))));
        fs::write(pgdata.join("backup_label"), LABEL).unwrap();
        fs::remove_dir_all(&ts).unwrap();
        let e = scan(&pgdata).unwrap_err();
        assert!(e.to_string().contains("tablespace 16399"), "{e}");
    }
}
