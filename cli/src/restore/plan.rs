//! The restore plan: the backup manifest a Klio server sends, which `klio restore` does
//! not trust, checked and turned into the directories, files and links to create
//! before anything touches the disk. Pure: it reads and writes nothing (whether the
//! target directories are absent or empty is checked by the executor, [`crate::restore`]).
//!
//! A plan holds only what PostgreSQL's own base backups hold, each below one root
//! (PGDATA or a tablespace's directory):
//! - paths relative and normalised (no empty, `.` or `..` component, no NUL), each
//!   listed once, none below a regular file or a link;
//! - regular files and directories; symbolic links only at `pg_tblspc/<oid>` of PGDATA,
//!   for one of the backup's tablespaces, and then always to that tablespace's restore
//!   directory (its recorded location or its `--tablespace-map` target), never to a
//!   target the server names. A `pg_wal` link becomes a directory, as PostgreSQL's
//!   `BASE_BACKUP` sends it;
//! - no setuid, sticky, or setgid-on-a-file mode (PostgreSQL creates none; the setgid
//!   bit a directory inherits from its parent is dropped);
//! - tablespace directories absolute, without `..`, outside PGDATA and each other;
//! - the files Klio writes itself at the top of PGDATA (`backup_manifest`,
//!   `recovery.signal`, `postgresql.auto.conf`, `standby.signal`) regular files if
//!   listed; `standby.signal` is left out (a restore recovers, it does not follow).
//!
//! Depends only on the manifest types, so it can move with the client commands.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Component, Path, PathBuf};

use klio_core::manifest::{BackupManifest, ChunkId, FileKind};

/// A path below a restore root that cannot leave it: relative, normalised (components
/// separated by single `/`, none empty, `.` or `..`), no NUL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SafeRelPath(String);

impl SafeRelPath {
    /// Accepts only a path already in normal form: a peer's path is never repaired.
    pub fn parse(s: &str) -> Result<SafeRelPath, String> {
        if s.is_empty() {
            return Err("the path is empty".into());
        }
        if s.contains('\0') {
            return Err("the path contains a NUL byte".into());
        }
        if s.starts_with('/') {
            return Err("the path is absolute".into());
        }
        for c in s.split('/') {
            match c {
                "" => return Err("the path has an empty component ('//' or a trailing '/')".into()),
                "." => return Err("the path has a '.' component".into()),
                ".." => return Err("the path climbs out with '..'".into()),
                _ => {}
            }
        }
        Ok(SafeRelPath(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The parent directory (`None` at the top of the root) and the last component.
    pub fn split_last(&self) -> (Option<&str>, &str) {
        match self.0.rsplit_once('/') {
            Some((parent, name)) => (Some(parent), name),
            None => (None, &self.0),
        }
    }

    /// The proper ancestors, nearest the root first (`a`, `a/b` for `a/b/c`).
    fn ancestors(&self) -> impl Iterator<Item = &str> {
        self.0.match_indices('/').map(|(i, _)| &self.0[..i])
    }
}

impl fmt::Display for SafeRelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where an entry goes: the data directory or a tablespace's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Root {
    Pgdata,
    Tablespace(u32),
}

/// One regular file to create, and what it must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFile {
    pub root: Root,
    pub path: SafeRelPath,
    pub size: u64,
    pub crc32c: Option<u32>,
    pub chunks: Vec<ChunkId>,
}

/// A `pg_tblspc/<oid>` link of PGDATA to its tablespace's restore directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedLink {
    pub path: SafeRelPath,
    pub oid: u32,
    /// Absolute: the tablespace's root in [`RestorePlan::roots`].
    pub target: PathBuf,
}

/// Everything a restore creates, checked. Directories are created mode 0700 and files
/// mode 0600 whatever the manifest says (PostgreSQL's own modes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePlan {
    /// PGDATA first, then each tablespace's directory: each must be absent or empty.
    pub roots: Vec<(Root, PathBuf)>,
    /// Directories below the roots, parents before children.
    pub dirs: Vec<(Root, SafeRelPath)>,
    /// Regular files in manifest order (the order their chunks are fetched in).
    pub files: Vec<PlannedFile>,
    /// Created last, once every file is written.
    pub links: Vec<PlannedLink>,
    /// Entries left out, and why.
    pub skipped: Vec<(SafeRelPath, &'static str)>,
}

impl RestorePlan {
    pub fn root_path(&self, root: Root) -> Option<&Path> {
        self.roots
            .iter()
            .find(|(r, _)| *r == root)
            .map(|(_, p)| p.as_path())
    }
}

/// A manifest refused: the entry (or tablespace) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refusing the backup manifest the server sent: {entry}: {reason}; nothing was written")]
pub struct PlanError {
    pub entry: String,
    pub reason: String,
}

fn refuse(entry: impl Into<String>, reason: impl Into<String>) -> PlanError {
    PlanError {
        entry: entry.into(),
        reason: reason.into(),
    }
}

/// Files at the top of PGDATA that Klio writes or removes itself.
const KLIO_FILES: &[&str] = &[
    "backup_manifest",
    "recovery.signal",
    "postgresql.auto.conf",
    "standby.signal",
];

/// How an entry is named in errors.
fn entry_name(root: Option<u32>, path: &str) -> String {
    match root {
        None => format!("entry {path:?}"),
        Some(oid) => format!("entry {path:?} of tablespace {oid}"),
    }
}

/// `p` with `.` dropped and `..` applied lexically (only to compare user-given paths).
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// Where each tablespace of the backup is restored (`oid → directory`).
fn plan_tablespaces(
    manifest: &BackupManifest,
    pgdata: &Path,
    tablespace_map: &[(String, PathBuf)],
) -> Result<Vec<(Root, PathBuf)>, PlanError> {
    let mut roots = vec![(Root::Pgdata, pgdata.to_path_buf())];
    for (i, (old, _)) in tablespace_map.iter().enumerate() {
        if tablespace_map[..i].iter().any(|(o, _)| o == old) {
            return Err(refuse(
                format!("--tablespace-map {old}=…"),
                "given twice: map each tablespace once",
            ));
        }
        if !manifest
            .tablespaces
            .iter()
            .any(|t| t.location.as_deref() == Some(old.as_str()))
        {
            return Err(refuse(
                format!("--tablespace-map {old}=…"),
                format!("the backup has no tablespace at {old}"),
            ));
        }
    }
    for t in &manifest.tablespaces {
        let what = format!("tablespace {}", t.oid);
        if roots.iter().any(|(r, _)| *r == Root::Tablespace(t.oid)) {
            return Err(refuse(what, "listed twice"));
        }
        let mapped = t
            .location
            .as_deref()
            .and_then(|l| tablespace_map.iter().find(|(o, _)| o == l));
        let dir = match (mapped, t.location.as_deref()) {
            // The user's choice (already absolute).
            (Some((_, new)), _) => new.clone(),
            (None, Some(loc)) if !loc.is_empty() => {
                let p = PathBuf::from(loc);
                if !p.is_absolute() {
                    return Err(refuse(
                        what,
                        format!(
                            "location {loc:?} is not absolute; pass --tablespace-map {loc}=NEW"
                        ),
                    ));
                }
                if p.components().any(|c| c == Component::ParentDir) || loc.contains('\0') {
                    return Err(refuse(
                        what,
                        format!("location {loc:?} is not a normalised path; pass --tablespace-map {loc}=NEW"),
                    ));
                }
                p
            }
            _ => {
                return Err(refuse(
                    what,
                    "has no recorded location: pass --tablespace-map OLD=NEW",
                ))
            }
        };
        let norm = lexical(&dir);
        if norm.parent().is_none() {
            return Err(refuse(
                what,
                format!("location {} is the file system root", dir.display()),
            ));
        }
        for (other, odir) in &roots {
            let onorm = lexical(odir);
            if norm.starts_with(&onorm) || onorm.starts_with(&norm) {
                let other = match other {
                    Root::Pgdata => "PGDATA".to_string(),
                    Root::Tablespace(o) => format!("tablespace {o}"),
                };
                return Err(refuse(
                    what,
                    format!(
                        "location {} overlaps {other} at {}; pass --tablespace-map to put it elsewhere",
                        dir.display(),
                        odir.display()
                    ),
                ));
            }
        }
        roots.push((Root::Tablespace(t.oid), dir));
    }
    Ok(roots)
}

/// What an accepted entry is, for the checks between entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placed {
    Dir,
    File,
    Link,
}

/// Checks `manifest` and plans its restore into `pgdata` (absolute), with tablespaces
/// moved as `tablespace_map` (recorded location → new absolute directory) says.
pub fn plan_restore(
    manifest: BackupManifest,
    pgdata: &Path,
    tablespace_map: &[(String, PathBuf)],
) -> Result<RestorePlan, PlanError> {
    if !pgdata.is_absolute() {
        return Err(refuse(
            format!("PGDATA {}", pgdata.display()),
            "not an absolute path",
        ));
    }
    let roots = plan_tablespaces(&manifest, pgdata, tablespace_map)?;
    let mut placed: HashMap<(Root, SafeRelPath), Placed> = HashMap::new();
    let mut order: Vec<(Root, SafeRelPath)> = Vec::new();
    let mut files = Vec::new();
    let mut links = Vec::new();
    let mut skipped = Vec::new();
    for f in manifest.files {
        let name = entry_name(f.tablespace, &f.path);
        let root = match f.tablespace {
            None => Root::Pgdata,
            Some(oid) if roots.iter().any(|(r, _)| *r == Root::Tablespace(oid)) => {
                Root::Tablespace(oid)
            }
            Some(oid) => {
                return Err(refuse(
                    name,
                    format!("tablespace {oid} is not one of the backup's tablespaces"),
                ))
            }
        };
        let path = SafeRelPath::parse(&f.path).map_err(|why| refuse(&name, why))?;
        let mode = f.mode & 0o7777;
        if mode & 0o4000 != 0 || mode & 0o1000 != 0 {
            return Err(refuse(
                name,
                format!(
                    "mode {mode:04o} has the setuid or sticky bit; PostgreSQL creates no such file"
                ),
            ));
        }
        if mode & 0o2000 != 0 && f.kind != FileKind::Directory {
            return Err(refuse(
                name,
                format!("mode {mode:04o} has the setgid bit on a non-directory; PostgreSQL creates no such file"),
            ));
        }
        let klio_file = root == Root::Pgdata && KLIO_FILES.contains(&path.as_str());
        if klio_file && f.kind != FileKind::File {
            return Err(refuse(
                name,
                "Klio writes this file itself at restore: the backup may hold it only as a regular file",
            ));
        }
        let kind = match f.kind {
            FileKind::Directory => Placed::Dir,
            // PostgreSQL sends a linked pg_wal as a directory: where the WAL goes is the
            // restoring user's choice, not the server's.
            FileKind::Symlink if root == Root::Pgdata && path.as_str() == "pg_wal" => Placed::Dir,
            FileKind::Symlink => {
                let oid = path
                    .as_str()
                    .strip_prefix("pg_tblspc/")
                    .and_then(|n| n.parse::<u32>().ok().filter(|o| o.to_string() == n))
                    .filter(|_| root == Root::Pgdata);
                let target = oid.and_then(|o| {
                    roots
                        .iter()
                        .find(|(r, _)| *r == Root::Tablespace(o))
                        .map(|(_, d)| d.clone())
                });
                match (oid, target) {
                    (Some(oid), Some(target)) => {
                        links.push(PlannedLink {
                            path: path.clone(),
                            oid,
                            target,
                        });
                    }
                    _ => {
                        return Err(refuse(
                            name,
                            "a symbolic link where PostgreSQL puts none (only pg_tblspc/<oid> of one of the backup's tablespaces, and pg_wal)",
                        ))
                    }
                }
                Placed::Link
            }
            FileKind::File => {
                if f.size == 0 && !f.chunks.is_empty() {
                    return Err(refuse(name, "an empty file with content chunks"));
                }
                if f.size != 0 && f.chunks.is_empty() {
                    return Err(refuse(
                        name,
                        format!("{} bytes but no chunks; the backup is damaged", f.size),
                    ));
                }
                if root == Root::Pgdata && path.as_str() == "standby.signal" {
                    skipped.push((
                        path.clone(),
                        "a restore recovers to a target; it does not follow a primary",
                    ));
                } else {
                    files.push(PlannedFile {
                        root,
                        path: path.clone(),
                        size: f.size,
                        crc32c: f.crc32c,
                        chunks: f.chunks,
                    });
                }
                Placed::File
            }
        };
        if placed.insert((root, path.clone()), kind).is_some() {
            return Err(refuse(name, "listed twice"));
        }
        order.push((root, path));
    }
    // Every entry's ancestors are directories (listed, or created as such).
    let mut dirs: BTreeSet<(Root, SafeRelPath)> = BTreeSet::new();
    for (root, path) in &order {
        if placed.get(&(*root, path.clone())) == Some(&Placed::Dir) {
            dirs.insert((*root, path.clone()));
        }
        for a in path.ancestors() {
            let a = SafeRelPath(a.to_string());
            match placed.get(&(*root, a.clone())) {
                Some(Placed::Dir) => {}
                Some(other) => {
                    let what = if *other == Placed::Link {
                        "symbolic link"
                    } else {
                        "regular file"
                    };
                    let tablespace = match root {
                        Root::Pgdata => None,
                        Root::Tablespace(o) => Some(*o),
                    };
                    return Err(refuse(
                        entry_name(tablespace, path.as_str()),
                        format!("it lies below the {what} {:?}", a.as_str()),
                    ));
                }
                None => {
                    dirs.insert((*root, a));
                }
            }
        }
    }
    Ok(RestorePlan {
        roots,
        dirs: dirs.into_iter().collect(),
        files,
        links,
        skipped,
    })
}

#[cfg(test)]
mod tests;
