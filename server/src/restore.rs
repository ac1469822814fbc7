//! `klio restore`: rebuilds a data directory (and its tablespaces) from a base backup
//! over the HTTP API, and writes the recovery settings that make PostgreSQL fetch the
//! WAL from Klio (`klio wal-restore`) up to the chosen target.
//!
//! Safe by construction: it refuses a non-empty PGDATA or tablespace directory, checks
//! every chunk's content (the server verifies, and every file's CRC-32C is checked
//! again here against the manifest), and writes nothing before the backup and the
//! credentials have been checked (the manifest is fetched first).

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures_util::stream::{self, StreamExt};
use klio_basebackup::manifest::{BackupManifest, ChunkId, FileKind};
use klio_core::{ClusterName, Lsn};

use crate::api::{BackupStateView, BackupView};
use crate::client::{Client, ClientError, Credentials};
use crate::output::human_bytes;

/// What to recover to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// End of the available WAL.
    Latest,
    Time(String),
    Lsn(Lsn),
    Xid(String),
    Name(String),
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub cluster: ClusterName,
    pub pgdata: PathBuf,
    /// A backup id, or `None`/`latest` for the newest that can reach the target.
    pub backup: Option<String>,
    pub target: Target,
    /// `promote`, `pause` or `shutdown`.
    pub target_action: Option<String>,
    /// Old tablespace location → new location.
    pub tablespace_map: Vec<(String, PathBuf)>,
    pub jobs: usize,
    /// Token and TLS files to write into the restore_command (absolute).
    pub credentials: Credentials,
    /// The `klio` executable to call from restore_command.
    pub klio_exe: PathBuf,
}

/// Parses a PostgreSQL-style timestamp with a zone into Unix seconds (for choosing a
/// backup): `YYYY-MM-DD HH:MM:SS[.frac](Z|UTC|+HH[:MM]|-HH[:MM])`.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, rest) = s.split_at(s.find([' ', 'T'])?);
    let rest = &rest[1..];
    let mut d = date.split('-');
    let (y, mo, da): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let time_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == ':' || c == '.'))
        .unwrap_or(rest.len());
    let (time, zone) = rest.split_at(time_end);
    let mut t = time.split(':');
    let (h, mi): (i64, i64) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    let sec: f64 = t.next().unwrap_or("0").parse().ok()?;
    let zone = zone.trim();
    let offset = match zone {
        "Z" | "UTC" | "GMT" | "+00" | "+00:00" => 0,
        z if z.starts_with('+') || z.starts_with('-') => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let body = &z[1..];
            let (hh, mm) = match body.split_once(':') {
                Some((a, b)) => (a.parse::<i64>().ok()?, b.parse::<i64>().ok()?),
                None if body.len() == 4 => (body[..2].parse().ok()?, body[2..].parse().ok()?),
                None => (body.parse().ok()?, 0),
            };
            sign * (hh * 3600 + mm * 60)
        }
        _ => return None,
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 {
        return None;
    }
    // Days from civil (proleptic Gregorian).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + sec as i64 - offset)
}

/// Picks the backup to restore.
pub fn choose_backup<'a>(
    backups: &'a [BackupView],
    wanted: Option<&str>,
    target: &Target,
) -> Result<&'a BackupView, ClientError> {
    let complete = backups
        .iter()
        .filter(|b| b.state == BackupStateView::Complete);
    match wanted {
        Some(id) if id != "latest" => {
            let b = backups
                .iter()
                .find(|b| b.id == id)
                .ok_or_else(|| ClientError::NotFound(format!("there is no backup {id}")))?;
            if b.state != BackupStateView::Complete {
                return Err(ClientError::Usage(format!(
                    "backup {id} is {}, not complete: it cannot be restored",
                    b.state.as_str()
                )));
            }
            Ok(b)
        }
        _ => {
            let reachable: Vec<&BackupView> = complete
                .filter(|b| match target {
                    Target::Lsn(l) => b.end_lsn.is_some_and(|e| e <= *l),
                    Target::Time(t) => match (parse_timestamp(t), b.finished_at) {
                        (Some(t), Some(f)) => (f as i64) <= t,
                        _ => true,
                    },
                    _ => true,
                })
                .collect();
            reachable.last().copied().ok_or_else(|| {
                ClientError::NotFound(
                    "no complete backup can reach that target (every backup ends after it); take backups more often or pick a later target".into(),
                )
            })
        }
    }
}

fn io_err(path: &Path, e: std::io::Error) -> ClientError {
    ClientError::Io(format!("{}: {e}", path.display()))
}

/// A directory that is missing or empty (created with mode 0700 if missing).
fn prepare_empty_dir(dir: &Path, what: &str) -> Result<(), ClientError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(ClientError::Usage(format!(
                    "{what} {} is not empty: restore only into an empty or new directory (nothing was written)",
                    dir.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(dir, e)),
    }
    Ok(())
}

fn create_dir(dir: &Path, mode: u32) -> Result<(), ClientError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(|e| io_err(dir, e))
}

/// A setting value quoted for postgresql.conf.
fn conf_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// A shell word for restore_command (PostgreSQL runs it with `sh -c`).
fn sh_quote(v: &str) -> String {
    if v.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-:=@".contains(&b))
    {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', "'\\''"))
    }
}

/// The recovery settings appended to `postgresql.auto.conf`.
pub fn recovery_settings(opts: &RestoreOptions, server: &str) -> Result<String, ClientError> {
    let mut cmd = format!(
        "{} wal-restore --server {} --cluster {}",
        sh_quote(&opts.klio_exe.display().to_string()),
        sh_quote(server),
        sh_quote(opts.cluster.as_str()),
    );
    for (flag, path) in opts.credentials.args() {
        cmd.push_str(&format!(
            " {flag} {}",
            sh_quote(&path.display().to_string())
        ));
    }
    cmd.push_str(" %f %p");
    let mut s = String::from("\n# Added by klio restore\n");
    s.push_str(&format!("restore_command = {}\n", conf_quote(&cmd)));
    s.push_str("recovery_target_timeline = 'latest'\n");
    match &opts.target {
        Target::Latest => {}
        Target::Time(t) => s.push_str(&format!("recovery_target_time = {}\n", conf_quote(t))),
        Target::Lsn(l) => s.push_str(&format!("recovery_target_lsn = '{l}'\n")),
        Target::Xid(x) => s.push_str(&format!("recovery_target_xid = {}\n", conf_quote(x))),
        Target::Name(n) => s.push_str(&format!("recovery_target_name = {}\n", conf_quote(n))),
    }
    if let Some(a) = &opts.target_action {
        if !matches!(a.as_str(), "promote" | "pause" | "shutdown") {
            return Err(ClientError::Usage(format!(
                "--target-action {a:?}: use promote, pause or shutdown"
            )));
        }
        if opts.target != Target::Latest {
            s.push_str(&format!("recovery_target_action = '{a}'\n"));
        }
    }
    Ok(s)
}

/// What a restore did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreSummary {
    pub backup: String,
    pub pgdata: PathBuf,
    pub files: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub tablespaces: Vec<(u32, PathBuf)>,
}

/// Runs the restore.
pub async fn restore(c: &Client, opts: &RestoreOptions) -> Result<RestoreSummary, ClientError> {
    let started = Instant::now();
    if opts.jobs == 0 {
        return Err(ClientError::Usage("--jobs must be at least 1".into()));
    }
    // Checks first, then writes.
    prepare_empty_dir(&opts.pgdata, "PGDATA")?;
    let list = c.list_backups(&opts.cluster).await?;
    let b = choose_backup(&list.backups, opts.backup.as_deref(), &opts.target)?;
    let manifest: BackupManifest = c.backup_manifest(&opts.cluster, &b.id).await?;
    let pg_manifest = match c.pg_backup_manifest(&opts.cluster, &b.id).await {
        Ok(m) => Some(m),
        Err(ClientError::NotFound(_)) => None,
        Err(e) => return Err(e),
    };
    let map: HashMap<&str, &Path> = opts
        .tablespace_map
        .iter()
        .map(|(o, n)| (o.as_str(), n.as_path()))
        .collect();
    let mut spaces: HashMap<u32, PathBuf> = HashMap::new();
    for t in &manifest.tablespaces {
        let old = t.location.clone().unwrap_or_default();
        let new = match map.get(old.as_str()) {
            Some(n) => n.to_path_buf(),
            None if !old.is_empty() => PathBuf::from(&old),
            None => {
                return Err(ClientError::Usage(format!(
                    "tablespace {} has no recorded location: pass --tablespace-map",
                    t.oid
                )))
            }
        };
        if !new.is_absolute() {
            return Err(ClientError::Usage(format!(
                "tablespace {} location {} must be absolute",
                t.oid,
                new.display()
            )));
        }
        prepare_empty_dir(&new, &format!("tablespace {} directory", t.oid))?;
        spaces.insert(t.oid, new);
    }
    for (old, _) in &opts.tablespace_map {
        if !manifest
            .tablespaces
            .iter()
            .any(|t| t.location.as_deref() == Some(old.as_str()))
        {
            return Err(ClientError::Usage(format!(
                "--tablespace-map {old}=…: the backup has no tablespace at {old}"
            )));
        }
    }

    // A prefetch spool left beside this path by an earlier restore holds another
    // history's segments: restore_command must start from an empty one.
    let spool = crate::prefetch::default_spool(&opts.pgdata);
    if spool.is_dir() {
        std::fs::remove_dir_all(&spool).map_err(|e| io_err(&spool, e))?;
    }
    create_dir(&opts.pgdata, 0o700)?;
    for dir in spaces.values() {
        create_dir(dir, 0o700)?;
    }
    let root_of = |ts: Option<u32>| -> &Path {
        match ts {
            Some(oid) => spaces
                .get(&oid)
                .map(PathBuf::as_path)
                .unwrap_or(&opts.pgdata),
            None => &opts.pgdata,
        }
    };

    // Directories and links first, then file contents fetched in parallel, in order.
    let total: u64 = manifest.files.iter().map(|f| f.size).sum();
    for f in &manifest.files {
        let path = root_of(f.tablespace).join(&f.path);
        match f.kind {
            FileKind::Directory => create_dir(&path, f.mode & 0o7777)?,
            FileKind::Symlink => {
                let target = match (f.tablespace, f.path.strip_prefix("pg_tblspc/")) {
                    (None, Some(oid)) => oid
                        .parse::<u32>()
                        .ok()
                        .and_then(|o| spaces.get(&o))
                        .map(|p| p.display().to_string()),
                    _ => None,
                }
                .or_else(|| f.link_target.clone())
                .unwrap_or_default();
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
                }
                std::os::unix::fs::symlink(&target, &path).map_err(|e| io_err(&path, e))?;
            }
            FileKind::File => {}
        }
    }
    // Empty files have no chunks: create them up front.
    let mut files = 0u64;
    for f in &manifest.files {
        if f.kind == FileKind::File && f.chunks.is_empty() {
            let path = root_of(f.tablespace).join(&f.path);
            if f.size != 0 {
                return Err(ClientError::Io(format!(
                    "{}: the backup manifest lists {} bytes but no chunks; the backup is damaged",
                    path.display(),
                    f.size
                )));
            }
            create_file(&path, f.mode)?;
            files += 1;
        }
    }
    // Chunks are fetched `jobs` at a time and handed, in file order, to a writer
    // thread: the HTTP side never waits on the page cache, and the writer starts the
    // disk's writeback as it goes instead of leaving it all to the final sync.
    let targets: Vec<Option<FileTarget>> = manifest
        .files
        .iter()
        .map(|f| {
            (f.kind == FileKind::File).then(|| FileTarget {
                path: root_of(f.tablespace).join(&f.path),
                mode: f.mode,
                size: f.size,
                crc32c: f.crc32c,
            })
        })
        .collect();
    let fetches: Vec<(usize, ChunkId)> = manifest
        .files
        .iter()
        .enumerate()
        .filter(|(_, f)| f.kind == FileKind::File)
        .flat_map(|(i, f)| f.chunks.iter().map(move |c| (i, *c)))
        .collect();
    let (tx, rx) = tokio::sync::mpsc::channel::<(usize, Vec<u8>)>(opts.jobs.max(2));
    let progress = Progress {
        tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        label: b.id.clone(),
        total,
        started,
    };
    let writer = std::thread::Builder::new()
        .name("klio-restore-writer".into())
        .spawn(move || write_files(targets, rx, progress))
        .map_err(|e| ClientError::Io(format!("cannot start the writer thread: {e}")))?;
    let cluster = &opts.cluster;
    let mut results = stream::iter(
        fetches
            .into_iter()
            .map(|(i, id)| async move { c.chunk(cluster, &id).await.map(|d| (i, d)) }),
    )
    .buffered(opts.jobs);
    let mut fetch_error = None;
    while let Some(r) = results.next().await {
        match r {
            // A send fails only when the writer stopped on an error: it is reported below.
            Ok(item) => {
                if tx.send(item).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                fetch_error = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let written = tokio::task::spawn_blocking(move || writer.join())
        .await
        .map_err(|e| ClientError::Io(format!("writer thread: {e}")))?
        .map_err(|_| ClientError::Io("the writer thread panicked".into()));
    if let Some(e) = fetch_error {
        return Err(e);
    }
    let (written_files, done_bytes) = written??;
    files += written_files;
    if let Some(m) = pg_manifest {
        let path = opts.pgdata.join("backup_manifest");
        std::fs::write(&path, m).map_err(|e| io_err(&path, e))?;
    }
    // Everything written reaches the disk before recovery.signal says "restore done".
    for root in std::iter::once(&opts.pgdata).chain(spaces.values()) {
        use std::os::fd::AsRawFd;
        let dir = std::fs::File::open(root).map_err(|e| io_err(root, e))?;
        nix::unistd::syncfs(dir.as_raw_fd()).map_err(|e| io_err(root, std::io::Error::from(e)))?;
    }
    // A backup taken from a standby carries its standby.signal: left there, the
    // restored server would wait for more WAL forever instead of finishing recovery.
    let standby = opts.pgdata.join("standby.signal");
    if standby.exists() {
        std::fs::remove_file(&standby).map_err(|e| io_err(&standby, e))?;
        tracing::info!("removed standby.signal (the backup was taken from a standby)");
    }
    let signal = opts.pgdata.join("recovery.signal");
    std::fs::write(&signal, "").map_err(|e| io_err(&signal, e))?;
    let auto = opts.pgdata.join("postgresql.auto.conf");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&auto)
        .map_err(|e| io_err(&auto, e))?;
    f.write_all(recovery_settings(opts, c.base_url())?.as_bytes())
        .map_err(|e| io_err(&auto, e))?;
    f.sync_all().map_err(|e| io_err(&auto, e))?;
    Ok(RestoreSummary {
        backup: b.id.clone(),
        pgdata: opts.pgdata.clone(),
        files,
        bytes: done_bytes,
        seconds: started.elapsed().as_secs_f64(),
        tablespaces: spaces.iter().map(|(k, v)| (*k, v.clone())).collect(),
    })
}

/// Where one regular file of the backup goes, and what it must hold.
struct FileTarget {
    path: PathBuf,
    mode: u32,
    size: u64,
    crc32c: Option<u32>,
}

/// The one-line progress display (drawn only on a terminal).
struct Progress {
    tty: bool,
    label: String,
    total: u64,
    started: Instant,
}

impl Progress {
    fn draw(&self, done: u64) {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let eta = if rate > 0.0 {
            format!(
                "  ETA {:.0} s",
                self.total.saturating_sub(done) as f64 / rate
            )
        } else {
            String::new()
        };
        eprint!(
            "\r\x1b[2Krestoring {}: {} / {}  {}/s{eta}",
            self.label,
            human_bytes(done),
            human_bytes(self.total),
            human_bytes(rate as u64)
        );
    }
}

/// Bytes written to a file after which its writeback is started (see [`start_writeback`]).
const WRITEBACK_STEP: u64 = 8 << 20;

/// Starts the disk write of `len` bytes at `offset` without waiting for it, so that the
/// final sync finds most of the restore already on disk (the write overlaps the
/// download instead of following it). `POSIX_FADV_DONTNEED` starts writeback of dirty
/// pages and drops those already written: a restore does not need them cached.
/// Advisory only: an error here changes nothing about durability (syncfs follows).
fn start_writeback(f: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return; // a length of 0 would mean "to the end of the file"
    }
    let _ = nix::fcntl::posix_fadvise(
        f.as_raw_fd(),
        offset as i64,
        len as i64,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

/// One file being written by [`write_files`].
struct OpenFile {
    index: usize,
    file: std::fs::File,
    crc: u32,
    len: u64,
    /// Bytes whose writeback was started.
    kicked: u64,
}

/// The writer thread: receives the chunks of every file in manifest order, writes them,
/// checks each file's size and CRC-32C against the manifest. Returns (files, bytes).
fn write_files(
    targets: Vec<Option<FileTarget>>,
    mut rx: tokio::sync::mpsc::Receiver<(usize, Vec<u8>)>,
    progress: Progress,
) -> Result<(u64, u64), ClientError> {
    let target = |i: usize| targets[i].as_ref().expect("chunks belong to regular files");
    let finish = |o: OpenFile| -> Result<(), ClientError> {
        let t = target(o.index);
        if o.len != t.size || t.crc32c.is_some_and(|c| c != o.crc) {
            return Err(ClientError::Io(format!(
                "{}: restored content does not match the backup manifest (size {} of {}, or CRC-32C); the restore is incomplete",
                t.path.display(),
                o.len,
                t.size
            )));
        }
        start_writeback(&o.file, o.kicked, o.len - o.kicked);
        // Made durable all at once by the caller (syncfs): one flush, not one per file.
        Ok(())
    };
    let (mut files, mut done) = (0u64, 0u64);
    let mut open: Option<OpenFile> = None;
    let mut last_draw = Instant::now();
    while let Some((i, data)) = rx.blocking_recv() {
        if open.as_ref().is_some_and(|o| o.index != i) {
            finish(open.take().expect("open"))?;
            files += 1;
        }
        let o = match &mut open {
            Some(o) => o,
            None => open.insert(OpenFile {
                index: i,
                file: create_file(&target(i).path, target(i).mode)?,
                crc: 0,
                len: 0,
                kicked: 0,
            }),
        };
        o.file
            .write_all(&data)
            .map_err(|e| io_err(&target(i).path, e))?;
        o.crc = crc32c::crc32c_append(o.crc, &data);
        o.len += data.len() as u64;
        if o.len - o.kicked >= WRITEBACK_STEP {
            start_writeback(&o.file, o.kicked, o.len - o.kicked);
            o.kicked = o.len;
        }
        done += data.len() as u64;
        if progress.tty && last_draw.elapsed().as_millis() > 200 {
            progress.draw(done);
            last_draw = Instant::now();
        }
    }
    if let Some(o) = open.take() {
        finish(o)?;
        files += 1;
    }
    if progress.tty {
        progress.draw(done);
        eprintln!();
    }
    Ok((files, done))
}

fn create_file(path: &Path, mode: u32) -> Result<std::fs::File, ClientError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(|e| io_err(path, e))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_writer(
        targets: Vec<Option<FileTarget>>,
        chunks: Vec<(usize, Vec<u8>)>,
    ) -> Result<(u64, u64), ClientError> {
        let (tx, rx) = tokio::sync::mpsc::channel(chunks.len().max(1));
        for c in chunks {
            tx.try_send(c).unwrap();
        }
        drop(tx);
        let progress = Progress {
            tty: false,
            label: "b".into(),
            total: 0,
            started: Instant::now(),
        };
        write_files(targets, rx, progress)
    }

    #[test]
    fn writer_checks_each_file_against_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let target = |name: &str, data: &[u8]| {
            Some(FileTarget {
                path: dir.path().join(name),
                mode: 0o600,
                size: data.len() as u64,
                crc32c: Some(crc32c::crc32c(data)),
            })
        };
        let ok = run_writer(
            vec![target("a", b"hello world"), None, target("sub/b", b"xyz")],
            vec![
                (0, b"hello ".to_vec()),
                (0, b"world".to_vec()),
                (2, b"xyz".to_vec()),
            ],
        )
        .unwrap();
        assert_eq!(ok, (2, 14));
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"hello world");
        assert_eq!(std::fs::read(dir.path().join("sub/b")).unwrap(), b"xyz");

        // Same length, other content: the CRC names the file.
        let err = run_writer(
            vec![target("c", b"expected")],
            vec![(0, b"tampered".to_vec())],
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("does not match the backup manifest"),
            "{err}"
        );
        assert!(err.to_string().contains("/c:"), "{err}");
        // A stream that stops early is incomplete, not silently short.
        let err = run_writer(
            vec![target("d", b"0123456789")],
            vec![(0, b"01234".to_vec())],
        )
        .unwrap_err();
        assert!(err.to_string().contains("size 5 of 10"), "{err}");
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00Z"), Some(0));
        assert_eq!(
            parse_timestamp("2026-11-24 19:13:00+00"),
            Some(1_795_547_580)
        );
        assert_eq!(
            parse_timestamp("2026-11-24T20:13:00.5+01:00"),
            Some(1_795_547_580)
        );
        assert_eq!(
            parse_timestamp("2026-11-24 19:13:00 UTC"),
            Some(1_795_547_580)
        );
        assert_eq!(parse_timestamp("2026-11-24 19:13:00"), None);
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[test]
    fn recovery_settings_quote_everything() {
        let opts = RestoreOptions {
            cluster: "pg-a".parse().unwrap(),
            pgdata: "/d".into(),
            backup: None,
            target: Target::Name("before 'drop'".into()),
            target_action: Some("promote".into()),
            tablespace_map: vec![],
            jobs: 4,
            credentials: Credentials {
                token_file: Some("/etc/klio/my token".into()),
                ..Credentials::default()
            },
            klio_exe: "/usr/bin/klio".into(),
        };
        let s = recovery_settings(&opts, "http://k:7070").unwrap();
        assert!(s.contains(
            "restore_command = '/usr/bin/klio wal-restore --server http://k:7070 --cluster pg-a --token-file ''/etc/klio/my token'' %f %p'"
        ), "{s}");
        assert!(
            s.contains("recovery_target_name = 'before ''drop'''"),
            "{s}"
        );
        assert!(s.contains("recovery_target_action = 'promote'"), "{s}");
        let mut mtls = opts.clone();
        mtls.credentials = Credentials {
            token_file: None,
            cacert: Some("/tls/ca.crt".into()),
            cert: Some("/tls/x@pg-a.crt".into()),
            key: Some("/tls/my key.pem".into()),
        };
        let s = recovery_settings(&mtls, "https://k:7070").unwrap();
        assert!(s.contains(
            "restore_command = '/usr/bin/klio wal-restore --server https://k:7070 --cluster pg-a --cacert /tls/ca.crt --cert /tls/x@pg-a.crt --key ''/tls/my key.pem'' %f %p'"
        ), "{s}");
        let mut bad = opts.clone();
        bad.target_action = Some("explode".into());
        assert!(recovery_settings(&bad, "x").is_err());
    }
}
