//! Writing below a restore root (PGDATA or a tablespace's directory) without ever
//! following a symbolic link: the root is opened once as a directory, and every
//! directory, file and link of a restore is created relative to it with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, `O_NOFOLLOW` and, for the backup's
//! files, `O_EXCL`. A link or `..` in the way fails the call instead of leading out.
//! Directories are created mode 0700 and files mode 0600, PostgreSQL's own.
//!
//! Writes: the directories, files and links of the restore plan; Klio's own files
//! (`backup_manifest`, `recovery.signal`, `postgresql.auto.conf`) at the top of PGDATA.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::plan::SafeRelPath;

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// No link, magic link or `..` may lead out of the root.
fn resolve() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// An open restore root.
#[derive(Debug)]
pub(crate) struct RootDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// An error on `rel` below `root`, saying so plainly when a link stood in the way.
fn error(root: &Path, rel: &str, e: io::Error) -> io::Error {
    let shown = root.join(rel);
    let why = match rustix::io::Errno::from_io_error(&e) {
        Some(rustix::io::Errno::LOOP) | Some(rustix::io::Errno::XDEV) => {
            "a symbolic link is in the way (a restore never follows links below its target directories)".to_string()
        }
        _ => e.to_string(),
    };
    io::Error::new(e.kind(), format!("{}: {why}", shown.display()))
}

impl RootDir {
    /// Creates `path` if missing (mode 0700, with missing parents) and opens it. The
    /// root itself was named by the user or checked by the plan; below it nothing is
    /// followed.
    pub(crate) fn create_and_open(path: &Path) -> io::Result<RootDir> {
        let ctx = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(path)
            .map_err(ctx)?;
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ctx(e.into()))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(DIR_MODE)).map_err(|e| ctx(e.into()))?;
        Ok(RootDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The directory holding `rel` (opened beneath the root) and `rel`'s last name.
    fn parent_of<'a>(&self, rel: &'a SafeRelPath) -> io::Result<(Option<OwnedFd>, &'a str)> {
        let (parent, name) = rel.split_last();
        let fd = match parent {
            None => None,
            Some(p) => Some(
                rustix::fs::openat2(
                    &self.fd,
                    p,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                    resolve(),
                )
                .map_err(|e| error(&self.path, p, e.into()))?,
            ),
        };
        Ok((fd, name))
    }

    /// Creates the directory `rel` (its parent exists), mode 0700.
    pub(crate) fn mkdir(&self, rel: &SafeRelPath) -> io::Result<()> {
        let (parent, name) = self.parent_of(rel)?;
        let at = parent.as_ref().unwrap_or(&self.fd);
        let err = |e: rustix::io::Errno| error(&self.path, rel.as_str(), e.into());
        rustix::fs::mkdirat(at, name, Mode::from_raw_mode(DIR_MODE)).map_err(err)?;
        // The umask may have taken bits the owner needs: set the mode through an fd.
        let dir = rustix::fs::openat2(
            at,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            resolve(),
        )
        .map_err(err)?;
        rustix::fs::fchmod(&dir, Mode::from_raw_mode(DIR_MODE)).map_err(err)
    }

    /// Creates the regular file `rel`, which must not exist, mode 0600.
    pub(crate) fn create_file(&self, rel: &SafeRelPath) -> io::Result<File> {
        self.open_file(rel.as_str(), OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL)
    }

    /// Opens Klio's own file `name` at the top of the root for writing, never through a
    /// link: replaced (`append` false) or appended to. Created mode 0600 if missing.
    pub(crate) fn open_klio_file(&self, name: &'static str, append: bool) -> io::Result<File> {
        let how = if append {
            OFlags::APPEND
        } else {
            OFlags::TRUNC
        };
        self.open_file(name, OFlags::WRONLY | OFlags::CREATE | how)
    }

    fn open_file(&self, rel: &str, flags: OFlags) -> io::Result<File> {
        let fd = rustix::fs::openat2(
            &self.fd,
            rel,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(FILE_MODE),
            resolve(),
        )
        .map_err(|e| error(&self.path, rel, e.into()))?;
        let f = File::from(fd);
        f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
            .map_err(|e| error(&self.path, rel, e))?;
        Ok(f)
    }

    /// Creates the symbolic link `rel` → `target` (its parent exists).
    pub(crate) fn symlink(&self, rel: &SafeRelPath, target: &Path) -> io::Result<()> {
        let (parent, name) = self.parent_of(rel)?;
        rustix::fs::symlinkat(target, parent.as_ref().unwrap_or(&self.fd), name)
            .map_err(|e| error(&self.path, rel.as_str(), e.into()))
    }

    /// Flushes the root's whole file system to disk.
    pub(crate) fn sync(&self) -> io::Result<()> {
        rustix::fs::syncfs(&self.fd).map_err(|e| error(&self.path, "", e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn rel(s: &str) -> SafeRelPath {
        SafeRelPath::parse(s).unwrap()
    }

    #[test]
    fn creates_dirs_files_and_links_with_postgres_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = RootDir::create_and_open(&tmp.path().join("a/pgdata")).unwrap();
        root.mkdir(&rel("base")).unwrap();
        root.mkdir(&rel("base/1")).unwrap();
        root.create_file(&rel("base/1/1259"))
            .unwrap()
            .write_all(b"x")
            .unwrap();
        root.symlink(&rel("base/ts"), Path::new("/somewhere"))
            .unwrap();
        let p = root.path().to_path_buf();
        let mode = |q: &str| {
            std::fs::symlink_metadata(p.join(q))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode(""), 0o700);
        assert_eq!(mode("base/1"), 0o700);
        assert_eq!(mode("base/1/1259"), 0o600);
        assert_eq!(
            std::fs::read_link(p.join("base/ts")).unwrap(),
            Path::new("/somewhere")
        );
        // O_EXCL: an existing file is never overwritten.
        assert!(root.create_file(&rel("base/1/1259")).is_err());
    }

    #[test]
    fn links_below_the_root_are_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"keep").unwrap();
        let root = RootDir::create_and_open(&tmp.path().join("pgdata")).unwrap();
        std::os::unix::fs::symlink(&outside, root.path().join("dir")).unwrap();
        std::os::unix::fs::symlink(outside.join("victim"), root.path().join("recovery.signal"))
            .unwrap();
        let e = root.create_file(&rel("dir/new")).unwrap_err();
        assert!(e.to_string().contains("symbolic link is in the way"), "{e}");
        assert!(root.mkdir(&rel("dir/sub")).is_err());
        assert!(root.symlink(&rel("dir/l"), Path::new("/x")).is_err());
        let e = root.open_klio_file("recovery.signal", false).unwrap_err();
        assert!(e.to_string().contains("symbolic link is in the way"), "{e}");
        assert!(root.open_klio_file("recovery.signal", true).is_err());
        let names: Vec<_> = std::fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["victim"]);
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep");
    }
}
