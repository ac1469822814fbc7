//! WAL prefetch for `klio wal-restore`: replay must not wait on one HTTP round trip
//! per segment.
//!
//! After serving segment `F`, `wal-restore` starts (detached) `klio wal-prefetch`, which
//! downloads the next N segments of the same timeline into a spool directory with
//! bounded concurrency, stopping at the first one the server has not sealed (the newest
//! segment is still growing: a copy of it would end recovery early). Each spool
//! entry is written to a temporary name and renamed (not fsync'ed: see `write_atomically`), with a sidecar
//! `<name>.crc32c` holding its CRC-32C, written the same way; `wal-restore` uses an entry only if the
//! checksum matches (otherwise it is deleted and the segment fetched directly), and
//! removes it once used. One prefetcher runs per spool (an exclusive lock); entries of
//! the same timeline older than the segment being asked for are removed as stale.
//!
//! A spool outlives the restore that filled it, so a name and a checksum do not prove an
//! entry is the WAL this data directory needs: every entry's segment header must also
//! name the data directory's database system (from `global/pg_control`) and the
//! segment's own start LSN, or it is discarded. Prefetch therefore runs only when
//! `wal-restore` is started in a data directory, as PostgreSQL starts restore_command.
//!
//! Nothing in the spool is read or written through a link: the spool itself must be a
//! directory (not a link), entries and sidecars are replaced by rename and opened with
//! `O_NOFOLLOW`, so a link planted there can neither redirect a write nor feed a file
//! from elsewhere to PostgreSQL.

use std::fs;
use std::path::{Path, PathBuf};

use futures_util::stream::{self, StreamExt};
use klio_core::{
    ClusterName, SegNo, SegmentHeader, SystemId, WalFileKind, WalFileName, WalSegSize,
};

use klio_api::client::{Client, ClientError, Credentials};

use crate::wal_restore::write_atomically;

/// Segments fetched ahead by default.
pub const DEFAULT_PREFETCH: u32 = 8;
/// Parallel downloads of the prefetcher.
const CONCURRENCY: usize = 4;

fn crc_path(spool: &Path, name: &str) -> PathBuf {
    spool.join(format!("{name}.crc32c"))
}

/// The database system identifier of the data directory `dir` (the first field of
/// `global/pg_control`), or `None` when `dir` is not a data directory.
pub fn data_dir_system_id(dir: &Path) -> Option<SystemId> {
    use std::io::Read;
    let mut b = [0u8; 8];
    fs::File::open(dir.join("global").join("pg_control"))
        .and_then(|mut f| f.read_exact(&mut b))
        .ok()?;
    Some(u64::from_le_bytes(b))
        .filter(|&id| id != 0)
        .map(SystemId::new)
}

/// The default spool of data directory `pgdata`: `<pgdata>.klio-spool` beside it.
pub fn default_spool(pgdata: &Path) -> PathBuf {
    let mut name = pgdata
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "pgdata".into());
    name.push(".klio-spool");
    pgdata.with_file_name(name)
}

/// Opens a spool file for reading; a link there is not followed (and fails).
fn open_nofollow(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Takes `name` from the spool into `dest` if a verified entry of database system
/// `system_id` is there. Returns the number of bytes, or `None` when it must be fetched.
pub fn take_from_spool(spool: &Path, name: &str, dest: &Path, system_id: SystemId) -> Option<u64> {
    use std::io::Read;
    let path = spool.join(name);
    let crc_file = crc_path(spool, name);
    let mut expected = String::new();
    open_nofollow(&crc_file)
        .and_then(|f| f.take(64).read_to_string(&mut expected))
        .ok()?;
    let _ = fs::remove_file(&crc_file);
    let checked = open_nofollow(&path)
        .map_err(|e| e.to_string())
        .and_then(|mut f| check_entry(&mut f, name, expected.trim(), system_id).map(|l| (f, l)));
    let (mut file, len) = match checked {
        Ok(ok) => ok,
        Err(why) => {
            tracing::warn!(%name, spool = %spool.display(), "discarding a spool entry ({why}); fetching the segment");
            let _ = fs::remove_file(&path);
            return None;
        }
    };
    let placed = match fs::rename(&path, dest) {
        Ok(()) => Ok(()),
        // Another file system: copy what was checked, from the open entry.
        Err(_) => {
            use std::io::Seek;
            let mut bytes = Vec::new();
            file.seek(std::io::SeekFrom::Start(0))
                .and_then(|_| file.read_to_end(&mut bytes))
                .and_then(|_| write_atomically(dest, &bytes))
                .and_then(|()| fs::remove_file(&path))
        }
    };
    match placed {
        Ok(()) => Some(len),
        Err(e) => {
            tracing::warn!(%name, error = %e, "cannot use the spool entry; fetching it");
            None
        }
    }
}

/// Streams an open spool entry through CRC-32C (one 1 MiB buffer, not the whole
/// segment) and checks its header; returns its length.
fn check_entry(
    f: &mut fs::File,
    name: &str,
    expected_crc: &str,
    system_id: SystemId,
) -> Result<u64, String> {
    use std::io::Read;
    let wal_name: WalFileName = name
        .parse()
        .map_err(|e: klio_core::wal::WalNameError| e.to_string())?;
    let expected =
        u32::from_str_radix(expected_crc, 16).map_err(|_| "an unreadable checksum".to_string())?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("it is not a regular file".into());
    }
    let len = meta.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut head = Vec::new();
    let mut crc = 0u32;
    loop {
        let n = f.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        if head.len() < SegmentHeader::LEN {
            let take = (SegmentHeader::LEN - head.len()).min(n);
            head.extend_from_slice(&buf[..take]);
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
    }
    if crc != expected {
        return Err("it failed its checksum".into());
    }
    SegmentHeader::verify_start(&head, len, &wal_name, system_id)?;
    Ok(len)
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

/// What a prefetcher is started with, besides the segment just served.
pub struct PrefetchSpec<'a> {
    pub exe: &'a Path,
    pub server: &'a str,
    pub cluster: &'a ClusterName,
    pub credentials: &'a Credentials,
    pub spool: &'a Path,
    /// Segments to fetch ahead.
    pub count: u32,
    /// The data directory's database system: nothing else is spooled.
    pub system_id: SystemId,
}

/// Starts the detached prefetcher after `name` was served (`seg_size` from its length).
pub fn spawn_prefetcher(spec: &PrefetchSpec<'_>, name: &WalFileName, seg_size: u64) {
    let PrefetchSpec {
        exe,
        server,
        cluster,
        credentials,
        spool,
        count,
        system_id,
    } = *spec;
    if count == 0 || name.kind() != WalFileKind::Segment {
        return;
    }
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("wal-prefetch")
        .args(["--server", server, "--cluster", cluster.as_str()]);
    for (flag, path) in credentials.args() {
        cmd.arg(flag).arg(path);
    }
    if credentials.insecure_http {
        cmd.arg("--insecure-http");
    }
    cmd.arg("--spool")
        .arg(spool)
        .args([
            "--after",
            &name.to_string(),
            "--seg-size",
            &seg_size.to_string(),
            "--count",
            &count.to_string(),
            "--system-id",
            &system_id.to_string(),
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

/// Makes sure `spool` is a directory of its own: created (mode 0700) if missing, and
/// refused if it is a link or not a directory (nothing is written through it).
fn open_spool(spool: &Path) -> Result<(), ClientError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |e: std::io::Error| ClientError::Io(format!("spool {}: {e}", spool.display()));
    match fs::symlink_metadata(spool) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(ClientError::Io(format!(
            "spool {} is a link or a file, not a directory: nothing is written through it; remove it or pass --spool DIR",
            spool.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(spool)
            .map_err(err),
        Err(e) => Err(err(e)),
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
    system_id: SystemId,
) -> Result<(), ClientError> {
    open_spool(spool)?;
    let lock_path = spool.join(".lock");
    let lock = {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(|e| ClientError::Io(format!("{}: {e}", lock_path.display())))?
    };
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
                if let Err(why) = SegmentHeader::verify(&bytes, &name, system_id) {
                    tracing::warn!(%name, "not spooling: {why}");
                    break;
                }
                let s = name.to_string();
                let path = spool.join(&s);
                let crc = crc32c::crc32c(&bytes);
                // Both by rename: a link planted under either name is replaced, not followed.
                let written = write_atomically(&path, &bytes).and_then(|()| {
                    write_atomically(&crc_path(spool, &s), format!("{crc:08x}").as_bytes())
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
        let put = |bytes: &[u8], crc_of: &[u8]| {
            fs::write(spool.join(name), bytes).unwrap();
            fs::write(
                crc_path(&spool, name),
                format!("{:08x}", crc32c::crc32c(crc_of)),
            )
            .unwrap();
        };
        let seg = segment(7, 5);
        put(&seg, &seg);
        let dest = dir.path().join("RECOVERYXLOG");
        assert_eq!(
            take_from_spool(&spool, name, &dest, SystemId::new(7)),
            Some(1 << 20)
        );
        assert_eq!(fs::read(&dest).unwrap(), seg);
        assert!(!spool.join(name).exists() && !crc_path(&spool, name).exists());
        // A corrupted entry is not used, and removed.
        let mut bad = seg.clone();
        bad[100] ^= 1;
        put(&bad, &seg);
        assert_eq!(take_from_spool(&spool, name, &dest, SystemId::new(7)), None);
        assert!(!spool.join(name).exists());
        // Another database system's segment (left by an earlier restore): not used.
        put(&seg, &seg);
        assert_eq!(take_from_spool(&spool, name, &dest, SystemId::new(8)), None);
        assert!(!spool.join(name).exists());
        // The right system but another segment's content under this name: not used.
        let other = segment(7, 6);
        put(&other, &other);
        assert_eq!(take_from_spool(&spool, name, &dest, SystemId::new(7)), None);
        // No checksum: not complete, not used.
        fs::write(spool.join(name), &seg).unwrap();
        assert_eq!(take_from_spool(&spool, name, &dest, SystemId::new(7)), None);
    }

    #[test]
    fn spool_links_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        fs::create_dir(&spool).unwrap();
        let name = "000000010000000000000005";
        let seg = segment(7, 5);
        let dest = dir.path().join("RECOVERYXLOG");
        // A valid segment elsewhere, linked in as the entry: not served.
        let elsewhere = dir.path().join("elsewhere");
        fs::write(&elsewhere, &seg).unwrap();
        std::os::unix::fs::symlink(&elsewhere, spool.join(name)).unwrap();
        fs::write(
            crc_path(&spool, name),
            format!("{:08x}", crc32c::crc32c(&seg)),
        )
        .unwrap();
        assert_eq!(take_from_spool(&spool, name, &dest, SystemId::new(7)), None);
        assert!(!dest.exists());
        assert_eq!(fs::read(&elsewhere).unwrap(), seg);
        // The link was discarded (the link, not its target).
        assert!(fs::symlink_metadata(spool.join(name)).is_err());
        // A linked checksum sidecar is not read either.
        fs::write(spool.join(name), &seg).unwrap();
        let crc_elsewhere = dir.path().join("crc");
        fs::write(&crc_elsewhere, format!("{:08x}", crc32c::crc32c(&seg))).unwrap();
        std::os::unix::fs::symlink(&crc_elsewhere, crc_path(&spool, name)).unwrap();
        assert_eq!(take_from_spool(&spool, name, &dest, SystemId::new(7)), None);
        assert!(!dest.exists());
        // Writing an entry over a planted link replaces the link, not its target.
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let planted = spool.join("000000010000000000000006");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        write_atomically(&planted, b"segment").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert!(!fs::symlink_metadata(&planted).unwrap().is_symlink());
        // A spool that is a link is refused before anything is written.
        let linked = dir.path().join("linked-spool");
        std::os::unix::fs::symlink(&spool, &linked).unwrap();
        let e = open_spool(&linked).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        let fresh = dir.path().join("new/spool");
        open_spool(&fresh).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    /// A 1 MiB WAL segment `segno` of system `sysid` (only its long header filled in).
    fn segment(sysid: u64, segno: u64) -> Vec<u8> {
        let mut b = vec![0u8; 1 << 20];
        b[0..2].copy_from_slice(&0xD113u16.to_le_bytes());
        b[2..4].copy_from_slice(&2u16.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8..16].copy_from_slice(&(segno << 20).to_le_bytes());
        b[24..32].copy_from_slice(&sysid.to_le_bytes());
        b[32..36].copy_from_slice(&(1u32 << 20).to_le_bytes());
        b
    }

    #[test]
    fn the_default_spool_sits_beside_the_data_directory() {
        assert_eq!(
            default_spool(Path::new("/var/lib/postgresql/17/main")),
            Path::new("/var/lib/postgresql/17/main.klio-spool")
        );
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(data_dir_system_id(dir.path()), None);
        fs::create_dir(dir.path().join("global")).unwrap();
        let mut control = 7301234567890123456u64.to_le_bytes().to_vec();
        control.resize(8192, 0);
        fs::write(dir.path().join("global/pg_control"), control).unwrap();
        assert_eq!(
            data_dir_system_id(dir.path()),
            Some(SystemId::new(7301234567890123456))
        );
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
