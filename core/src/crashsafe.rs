//! Crash-safe file operations: durable create, rename and directory sync.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// fsyncs a directory so that entries created or renamed in it survive a crash.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Renames `from` to `to` (same directory) and makes the rename durable.
pub fn durable_rename(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    fsync_dir(to.parent().unwrap_or(Path::new(".")))
}

/// Writes `bytes` to `path` atomically and durably: temp file, fsync, rename, fsync dir.
pub fn write_file_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_name(path);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    durable_rename(&tmp, path)
}

/// What [`tmp_name`] appends.
pub const TMP_SUFFIX: &str = ".tmp";

/// The temporary name used while `path` is being created.
pub fn tmp_name(path: &Path) -> std::path::PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(TMP_SUFFIX);
    s.into()
}

/// Creates every missing directory of `dir` (mode 0700: Klio's files are for Klio's
/// account only, whatever the umask) and syncs each parent.
pub fn create_dir_all_durably(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_all_durably(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}
