//! Reading a directory tree without leaving it: every path below a directory that was
//! opened once is opened one component at a time relative to its parent's descriptor,
//! never following a symbolic link (`O_NOFOLLOW`), so a link placed or swapped into the
//! tree cannot lead a read outside it. What a scan saw is identified by device and inode
//! ([`FileId`]); a file opened later for reading is checked against that identity.
//!
//! Used by [`crate::offload`]. Reads only; writes nothing to disk.

use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags};

/// Which object a scan saw: a later open must find the same one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    pub(crate) fn of(meta: &Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// `path` with symbolic links resolved, and the first of `roots` (each resolved too)
/// that holds it; `None` when it does not resolve (missing, a dangling link, no
/// permission) or lies outside every root. The two cases are deliberately not told apart.
pub(crate) fn resolve_inside(path: &Path, roots: &[PathBuf]) -> Option<(PathBuf, PathBuf)> {
    let real = std::fs::canonicalize(path).ok()?;
    roots
        .iter()
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .find(|r| real.starts_with(r))
        .map(|r| (r, real))
}

/// A handle on the directory `dir` (absolute, already resolved: its last component must
/// not be a symbolic link). It names the directory; [`list`] reads it.
pub(crate) fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The directory `rel` below `base`, opened component by component without following
/// any symbolic link. `rel` must be relative and hold plain names only.
pub(crate) fn open_dir_beneath(base: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    let mut cur: Option<OwnedFd> = None;
    for c in rel.components() {
        let Component::Normal(name) = c else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a plain relative path", rel.display()),
            ));
        };
        let parent = cur.as_ref().map_or(base, |f| f.as_fd());
        cur = Some(rustix::fs::openat(
            parent,
            name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?);
    }
    match cur {
        Some(fd) => Ok(fd),
        // `rel` is empty: the base itself.
        None => Ok(rustix::fs::openat(
            base,
            ".",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?),
    }
}

/// The names in directory `dir` (without `.` and `..`), sorted.
pub(crate) fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let readable = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for ent in rustix::fs::Dir::new(readable)? {
        let name = ent?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name));
        }
    }
    names.sort();
    Ok(names)
}

/// Entry `name` of `dir` itself (a symbolic link is not followed), with its metadata;
/// the handle pins that very object (for a directory: use it as the next `dir`).
pub(crate) fn entry(dir: BorrowedFd<'_>, name: &OsString) -> io::Result<(OwnedFd, Metadata)> {
    let fd = rustix::fs::openat(
        dir,
        name.as_os_str(),
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let meta = File::from(fd.try_clone()?).metadata()?;
    Ok((fd, meta))
}

/// The target of symbolic link `name` in `dir`.
pub(crate) fn read_link(dir: BorrowedFd<'_>, name: &OsString) -> io::Result<OsString> {
    let target = rustix::fs::readlinkat(dir, name.as_os_str(), Vec::new())?;
    Ok(OsString::from_vec(target.into_bytes()))
}

/// Why [`open_file`] refused.
#[derive(Debug)]
pub(crate) enum OpenError {
    Io(io::Error),
    /// Not the regular file the scan saw: replaced, or turned into a link, a FIFO, …
    Changed,
}

/// Opens regular file `rel` (a relative, plain path) below `base` for reading: no
/// component is followed if it is a symbolic link, the open does not block on a FIFO,
/// and the file must be the very one identified by `expected` (when given).
pub(crate) fn open_file(
    base: BorrowedFd<'_>,
    rel: &str,
    expected: Option<FileId>,
) -> Result<File, OpenError> {
    let (parent, name) = match rel.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, rel),
    };
    let parent_fd = match parent {
        Some(p) => Some(open_dir_beneath(base, Path::new(p)).map_err(changed_or_io)?),
        None => None,
    };
    let dir = parent_fd.as_ref().map_or(base, |f| f.as_fd());
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| changed_or_io(e.into()))?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(OpenError::Io)?;
    if !meta.file_type().is_file() || expected.is_some_and(|id| id != FileId::of(&meta)) {
        return Err(OpenError::Changed);
    }
    Ok(file)
}

/// `ELOOP` (a symbolic link where `O_NOFOLLOW` forbids one) and `ENOTDIR` (a directory
/// replaced by something else) mean the tree changed under us.
fn changed_or_io(e: io::Error) -> OpenError {
    match e.raw_os_error() {
        Some(code) if code == rustix::io::Errno::LOOP.raw_os_error() => OpenError::Changed,
        Some(code) if code == rustix::io::Errno::NOTDIR.raw_os_error() => OpenError::Changed,
        _ => OpenError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolve_inside_needs_the_resolved_path_under_a_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let out = t.path().join("outside");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        symlink(&out, root.join("escape")).unwrap();
        symlink(root.join("a"), t.path().join("into")).unwrap();
        let roots = [root.clone()];
        assert!(resolve_inside(&root.join("a"), &roots).is_some());
        // A link from outside into the root resolves inside: allowed.
        assert!(resolve_inside(&t.path().join("into"), &roots).is_some());
        for bad in [
            root.join("escape"),
            root.join("a/../../outside"),
            out.clone(),
            root.join("missing"),
            t.path().join("rootx"),
        ] {
            assert!(resolve_inside(&bad, &roots).is_none(), "{}", bad.display());
        }
        assert!(resolve_inside(&root, &[]).is_none());
    }

    #[test]
    fn nothing_below_a_symbolic_link_is_opened() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let out = t.path().join("outside");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("secret"), b"secret").unwrap();
        std::fs::write(root.join("d/f"), b"data").unwrap();
        symlink(&out, root.join("link")).unwrap();
        let base = open_dir(&root).unwrap();
        // (O_PATH with O_NOFOLLOW opens the link itself, which is no directory.)
        let e = open_dir_beneath(base.as_fd(), Path::new("link")).unwrap_err();
        assert!(matches!(changed_or_io(e), OpenError::Changed));
        assert!(open_dir_beneath(base.as_fd(), Path::new("../outside")).is_err());
        // The scanned file opens; the same name after a swap for a link does not.
        let d = open_dir_beneath(base.as_fd(), Path::new("d")).unwrap();
        let (_, meta) = entry(d.as_fd(), &OsString::from("f")).unwrap();
        let id = FileId::of(&meta);
        let mut s = String::new();
        open_file(base.as_fd(), "d/f", Some(id))
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "data");
        assert!(matches!(
            open_file(base.as_fd(), "link/secret", Some(id)),
            Err(OpenError::Changed)
        ));
        std::fs::remove_file(root.join("d/f")).unwrap();
        symlink(out.join("secret"), root.join("d/f")).unwrap();
        assert!(matches!(
            open_file(base.as_fd(), "d/f", Some(id)),
            Err(OpenError::Changed)
        ));
        // A directory on the way swapped for a link to a copy of the same tree.
        std::fs::remove_file(root.join("d/f")).unwrap();
        std::fs::write(out.join("f"), b"data").unwrap();
        std::fs::rename(root.join("d"), t.path().join("old-d")).unwrap();
        symlink(&out, root.join("d")).unwrap();
        assert!(matches!(
            open_file(base.as_fd(), "d/f", Some(id)),
            Err(OpenError::Changed)
        ));
        assert_eq!(
            list(base.as_fd()).unwrap(),
            [OsString::from("d"), OsString::from("link")]
        );
    }
}
