//! WAL prefetch for `klio wal-restore`: replay must not wait on one HTTP round trip
//! per segment.
//!
//! After serving segment `F`, `wal-restore` starts (detached) `klio wal-prefetch`, which
//! downloads the next N segments of the same timeline into a spool directory with
//! bounded concurrency, stopping at the first one the server has not sealed (the newest
//! segment is still growing: a copy of it would end recovery early). Each spool
//! entry is written to a temporary name, fsync'ed and renamed, with a sidecar
//! `<name>.crc32c` holding its CRC-32C; `wal-restore` uses an entry only if the
//! checksum matches (otherwise it is deleted and the segment fetched directly), and
//! removes it once used. One prefetcher runs per spool (an exclusive lock); entries of
//! the same timeline older than the segment being asked for are removed as stale.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use futures_util::stream::{self, StreamExt};
use klio_core::{ClusterName, SegNo, WalFileKind, WalFileName, WalSegSize};

use crate::client::{write_atomically, Client, ClientError};

/// Segments fetched ahead by default.
pub const DEFAULT_PREFETCH: u32 = 8;
/// Parallel downloads of the prefetcher.
const CONCURRENCY: usize = 4;

fn crc_path(spool: &Path, name: &str) -> PathBuf {
    spool.join(format!("{name}.crc32c"))
}

/// The default spool: `klio-spool-<cluster>` beside the data directory (restore_command
/// runs with the data directory as its working directory).
pub fn default_spool(cluster: &ClusterName) -> Result<PathBuf, ClientError> {
    let cwd = std::env::current_dir()
        .map_err(|e| ClientError::Io(format!("cannot read the working directory: {e}")))?;
    let parent = cwd.parent().unwrap_or(&cwd);
    Ok(parent.join(format!("klio-spool-{cluster}")))
}

/// Takes `name` from the spool into `dest` if a verified entry is there.
/// Returns the number of bytes, or `None` when it must be fetched.
pub fn take_from_spool(spool: &Path, name: &str, dest: &Path) -> Option<u64> {
    let path = spool.join(name);
    let crc_file = crc_path(spool, name);
    let expected = fs::read_to_string(&crc_file).ok()?;
    let bytes = fs::read(&path).ok()?;
    let ok = u32::from_str_radix(expected.trim(), 16).ok() == Some(crc32c::crc32c(&bytes));
    let _ = fs::remove_file(&crc_file);
    if !ok {
        tracing::warn!(%name, "spool entry failed its checksum; fetching it again");
        let _ = fs::remove_file(&path);
        return None;
    }
    let len = bytes.len() as u64;
    let placed = match fs::rename(&path, dest) {
        Ok(()) => fs::File::open(dest).and_then(|f| f.sync_all()),
        Err(_) => write_atomically(dest, &bytes).and_then(|()| fs::remove_file(&path)),
    };
    match placed {
        Ok(()) => Some(len),
        Err(e) => {
            tracing::warn!(%name, error = %e, "cannot use the spool entry; fetching it");
            None
        }
    }
}

/// The `count` segment names after `name` on its timeline.
pub fn next_segments(name: &WalFileName, seg_size: WalSegSize, count: u32) -> Vec<WalFileName> {
    let Ok(Some(segno)) = name.segno(seg_size) else {
        return Vec::new();
    };
    (1..=u64::from(count))
        .map(|i| WalFileName::segment(name.timeline(), SegNo(segno.0 + i), seg_size))
        .collect()
}

/// Removes spool entries of `name`'s timeline that come before it (replay moved on).
fn remove_stale(spool: &Path, name: &WalFileName) {
    let Ok(rd) = fs::read_dir(spool) else { return };
    let current = name.to_string();
    for e in rd.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let base = file.strip_suffix(".crc32c").unwrap_or(&file);
        if base.len() == 24
            && base[..8] == current[..8]
            && base < current.as_str()
            && base.parse::<WalFileName>().is_ok()
        {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Starts the detached prefetcher after `name` was served (`seg_size` from its length).
pub fn spawn_prefetcher(
    exe: &Path,
    server: &str,
    cluster: &ClusterName,
    token_file: &Path,
    spool: &Path,
    name: &WalFileName,
    seg_size: u64,
    count: u32,
) {
    if count == 0 || name.kind() != WalFileKind::Segment {
        return;
    }
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("wal-prefetch")
        .args(["--server", server, "--cluster", cluster.as_str()])
        .arg("--token-file")
        .arg(token_file)
        .arg("--spool")
        .arg(spool)
        .args([
            "--after",
            &name.to_string(),
            "--seg-size",
            &seg_size.to_string(),
            "--count",
            &count.to_string(),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // Its own session: PostgreSQL does not wait for it, and a signal to the
    // restore_command's process group does not stop it halfway (entries are atomic).
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    if let Err(e) = cmd.spawn() {
        tracing::warn!(error = %e, "cannot start the WAL prefetcher; continuing without");
    }
}

/// The prefetcher (`klio wal-prefetch`): fills the spool with the segments after `after`.
pub async fn run_prefetch(
    c: &Client,
    cluster: &ClusterName,
    spool: &Path,
    after: &WalFileName,
    seg_size: WalSegSize,
    count: u32,
) -> Result<(), ClientError> {
    fs::create_dir_all(spool).map_err(|e| ClientError::Io(format!("{}: {e}", spool.display())))?;
    let lock_path = spool.join(".lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| ClientError::Io(format!("{}: {e}", lock_path.display())))?;
    // Another prefetcher is at work: it will fetch what is needed.
    let Ok(_guard) = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
    else {
        return Ok(());
    };
    remove_stale(spool, after);
    // Only sealed segments: the newest one is still growing, and a copy taken now would
    // end recovery early later.
    let sealed: std::collections::HashSet<WalFileName> = c
        .list_wal(cluster)
        .await?
        .files
        .into_iter()
        .map(|e| e.name)
        .filter(|n| n.kind() == WalFileKind::Segment)
        .collect();
    let wanted: Vec<WalFileName> = next_segments(after, seg_size, count)
        .into_iter()
        .take_while(|n| sealed.contains(n))
        .filter(|n| !crc_path(spool, &n.to_string()).exists())
        .collect();
    let mut results = stream::iter(wanted.into_iter().map(|n| async move {
        let r = c.fetch_wal(cluster, &n).await;
        (n, r)
    }))
    .buffered(CONCURRENCY);
    while let Some((name, r)) = results.next().await {
        match r {
            Ok(bytes) => {
                let s = name.to_string();
                let path = spool.join(&s);
                let crc = crc32c::crc32c(&bytes);
                let written = write_atomically(&path, &bytes).and_then(|()| {
                    let mut f = fs::File::create(crc_path(spool, &s))?;
                    f.write_all(format!("{crc:08x}").as_bytes())?;
                    f.sync_all()
                });
                if let Err(e) = written {
                    return Err(ClientError::Io(format!("{}: {e}", path.display())));
                }
            }
            // The end of the stored WAL (or an error): stop; the next call retries.
            Err(_) => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_names_cross_the_xlogid_boundary() {
        let n: WalFileName = "0000000200000001000000FE".parse().unwrap();
        let next = next_segments(&n, WalSegSize::DEFAULT, 3);
        let s: Vec<String> = next.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            s,
            [
                "0000000200000001000000FF",
                "000000020000000200000000",
                "000000020000000200000001"
            ]
        );
        let h: WalFileName = "00000002.history".parse().unwrap();
        assert!(next_segments(&h, WalSegSize::DEFAULT, 3).is_empty());
    }

    #[test]
    fn spool_entries_are_verified_and_consumed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        fs::create_dir(&spool).unwrap();
        let name = "000000010000000000000005";
        fs::write(spool.join(name), b"segment bytes").unwrap();
        fs::write(
            crc_path(&spool, name),
            format!("{:08x}", crc32c::crc32c(b"segment bytes")),
        )
        .unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        assert_eq!(take_from_spool(&spool, name, &dest), Some(13));
        assert_eq!(fs::read(&dest).unwrap(), b"segment bytes");
        assert!(!spool.join(name).exists() && !crc_path(&spool, name).exists());
        // A corrupted entry is not used, and removed.
        fs::write(spool.join(name), b"segment bytez").unwrap();
        fs::write(
            crc_path(&spool, name),
            format!("{:08x}", crc32c::crc32c(b"segment bytes")),
        )
        .unwrap();
        assert_eq!(take_from_spool(&spool, name, &dest), None);
        assert!(!spool.join(name).exists());
        // No checksum: not complete, not used.
        fs::write(spool.join(name), b"x").unwrap();
        assert_eq!(take_from_spool(&spool, name, &dest), None);
    }

    #[test]
    fn stale_entries_of_the_timeline_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        for n in [
            "000000010000000000000003",
            "000000010000000000000003.crc32c",
            "000000010000000000000009",
            "000000020000000000000001",
        ] {
            fs::write(dir.path().join(n), b"x").unwrap();
        }
        remove_stale(dir.path(), &"000000010000000000000005".parse().unwrap());
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["000000010000000000000009", "000000020000000000000001"]
        );
    }
}
