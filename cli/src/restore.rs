//! `klio restore`: rebuilds a data directory (and its tablespaces) from a base backup
//! over the HTTP API, and writes the recovery settings that make PostgreSQL fetch the
//! WAL from Klio (`klio wal-restore`) up to the chosen target.
//!
//! The server is not trusted: its manifest becomes a checked plan before anything is
//! written ([`crate::restore_plan`]), and every write goes below PGDATA or a tablespace
//! directory without following a link ([`crate::restore_fs`]). It refuses a non-empty
//! PGDATA or tablespace directory, checks every file's size and CRC-32C against the
//! manifest (never writing more than it lists), and writes nothing before the backup
//! and the credentials have been checked (the manifest is fetched first).
//!
//! Writes: PGDATA and the tablespace directories; removes the `<PGDATA>.klio-spool`
//! prefetch spool an earlier restore left beside PGDATA.

pub mod command;
mod fs;
pub mod plan;

pub use command::RestoreArgs;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{self, StreamExt};
use klio_core::manifest::{BackupManifest, ChunkId};
use klio_core::{ClusterName, Lsn};

use crate::output::human_bytes;
use fs::RootDir;
use klio_api::client::{Client, ClientError, Credentials};
use klio_api::{BackupStateView, BackupView};
use plan::{plan_restore, RestorePlan, Root, SafeRelPath};

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
    let days = klio_core::clock::days_from_civil(y, mo as u32, da as u32);
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
                .find(|b| b.id.as_str() == id)
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

/// Checks that a directory is missing or empty.
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
    if opts.credentials.insecure_http {
        cmd.push_str(" --insecure-http");
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

/// The open restore roots (PGDATA first).
struct Roots(Vec<(Root, Arc<RootDir>)>);

impl Roots {
    /// Creates and opens every root of `plan`.
    fn create(plan: &RestorePlan) -> Result<Roots, ClientError> {
        plan.roots
            .iter()
            .map(|(r, dir)| Ok((*r, Arc::new(RootDir::create_and_open(dir).map_err(io)?))))
            .collect::<Result<_, ClientError>>()
            .map(Roots)
    }

    fn get(&self, root: Root) -> Result<&Arc<RootDir>, ClientError> {
        self.0
            .iter()
            .find(|(r, _)| *r == root)
            .map(|(_, d)| d)
            .ok_or_else(|| ClientError::Io(format!("the restore plan has no root {root:?}")))
    }
}

fn io(e: std::io::Error) -> ClientError {
    ClientError::Io(e.to_string())
}

/// Runs the restore: the manifest is checked into a plan before anything is written,
/// and everything is written below PGDATA and the tablespace directories only, never
/// through a link (see [`crate::restore_plan`] and [`crate::restore_fs`]).
pub async fn restore(c: &Client, opts: &RestoreOptions) -> Result<RestoreSummary, ClientError> {
    restore_inner(c, opts, true).await
}

/// [`restore`] without the recovery settings: the files only, no `recovery.signal` and
/// nothing appended to `postgresql.auto.conf` (`opts.klio_exe` and `opts.credentials`
/// are unused), for a caller that configures recovery itself (CloudNativePG's restore
/// job, through the `klio-cnpg-plugin` restore sidecar).
pub async fn restore_files(
    c: &Client,
    opts: &RestoreOptions,
) -> Result<RestoreSummary, ClientError> {
    restore_inner(c, opts, false).await
}

async fn restore_inner(
    c: &Client,
    opts: &RestoreOptions,
    recovery_settings_too: bool,
) -> Result<RestoreSummary, ClientError> {
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
    let plan = plan_restore(manifest, &opts.pgdata, &opts.tablespace_map)
        .map_err(|e| ClientError::BadManifest(e.to_string()))?;
    for (root, dir) in &plan.roots {
        if let Root::Tablespace(oid) = root {
            prepare_empty_dir(dir, &format!("tablespace {oid} directory"))?;
        }
    }

    // A prefetch spool left beside this path by an earlier restore holds another
    // history's segments: restore_command must start from an empty one.
    let spool = crate::wal_restore::prefetch::default_spool(&opts.pgdata);
    if spool.is_dir() {
        std::fs::remove_dir_all(&spool).map_err(|e| io_err(&spool, e))?;
    }
    let roots = Roots::create(&plan)?;
    let pgdata = roots.get(Root::Pgdata)?.clone();

    // Directories first, then file contents fetched in parallel, in order; links last.
    for (root, dir) in &plan.dirs {
        roots.get(*root)?.mkdir(dir).map_err(io)?;
    }
    for (path, why) in &plan.skipped {
        tracing::info!("left out {path} of the backup: {why}");
    }
    let total: u64 = plan.files.iter().map(|f| f.size).sum();
    let mut targets = Vec::with_capacity(plan.files.len());
    let mut files = 0u64;
    for f in &plan.files {
        let dir = roots.get(f.root)?.clone();
        // Empty files have no chunks: created here, up front.
        if f.chunks.is_empty() {
            dir.create_file(&f.path).map_err(io)?;
            files += 1;
        }
        targets.push(FileTarget {
            dir,
            path: f.path.clone(),
            size: f.size,
            crc32c: f.crc32c,
        });
    }
    // Chunks are fetched `jobs` at a time and handed, in file order, to a writer
    // thread: the HTTP side never waits on the page cache, and the writer starts the
    // disk's writeback as it goes instead of leaving it all to the final sync.
    let fetches: Vec<(usize, ChunkId)> = plan
        .files
        .iter()
        .enumerate()
        .flat_map(|(i, f)| f.chunks.iter().map(move |c| (i, *c)))
        .collect();
    let (tx, rx) = tokio::sync::mpsc::channel::<(usize, Vec<u8>)>(opts.jobs.max(2));
    let progress = Progress {
        tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        label: b.id.to_string(),
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
    for l in &plan.links {
        pgdata.symlink(&l.path, &l.target).map_err(io)?;
    }
    if let Some(m) = pg_manifest {
        pgdata
            .open_klio_file("backup_manifest", false)
            .and_then(|mut f| f.write_all(&m))
            .map_err(|e| io_err(&opts.pgdata.join("backup_manifest"), e))?;
    }
    // Everything written reaches the disk before recovery.signal says "restore done".
    for (_, root) in &roots.0 {
        root.sync().map_err(io)?;
    }
    if recovery_settings_too {
        pgdata
            .open_klio_file("recovery.signal", false)
            .map_err(io)?;
        let auto = opts.pgdata.join("postgresql.auto.conf");
        let mut f = pgdata
            .open_klio_file("postgresql.auto.conf", true)
            .map_err(io)?;
        f.write_all(recovery_settings(opts, c.base_url())?.as_bytes())
            .map_err(|e| io_err(&auto, e))?;
        f.sync_all().map_err(|e| io_err(&auto, e))?;
    }
    Ok(RestoreSummary {
        backup: b.id.to_string(),
        pgdata: opts.pgdata.clone(),
        files,
        bytes: done_bytes,
        seconds: started.elapsed().as_secs_f64(),
        tablespaces: plan
            .roots
            .iter()
            .filter_map(|(r, d)| match r {
                Root::Tablespace(oid) => Some((*oid, d.clone())),
                Root::Pgdata => None,
            })
            .collect(),
    })
}

/// Where one regular file of the backup goes, and what it must hold.
struct FileTarget {
    dir: Arc<RootDir>,
    path: SafeRelPath,
    size: u64,
    crc32c: Option<u32>,
}

impl FileTarget {
    fn shown(&self) -> PathBuf {
        self.dir.path().join(self.path.as_str())
    }
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
    targets: Vec<FileTarget>,
    mut rx: tokio::sync::mpsc::Receiver<(usize, Vec<u8>)>,
    progress: Progress,
) -> Result<(u64, u64), ClientError> {
    let target = |i: usize| {
        targets
            .get(i)
            .ok_or_else(|| ClientError::Io(format!("a chunk for file {i}, which is not planned")))
    };
    let finish = |o: OpenFile| -> Result<(), ClientError> {
        let t = target(o.index)?;
        if o.len != t.size || t.crc32c.is_some_and(|c| c != o.crc) {
            return Err(ClientError::Io(format!(
                "{}: restored content does not match the backup manifest (size {} of {}, or CRC-32C); the restore is incomplete",
                t.shown().display(),
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
        if let Some(o) = open.take_if(|o| o.index != i) {
            finish(o)?;
            files += 1;
        }
        let t = target(i)?;
        let o = match &mut open {
            Some(o) => o,
            None => open.insert(OpenFile {
                index: i,
                file: t.dir.create_file(&t.path).map_err(io)?,
                crc: 0,
                len: 0,
                kicked: 0,
            }),
        };
        // More than the manifest says is never written (a hostile server could fill the disk).
        if o.len + data.len() as u64 > t.size {
            return Err(ClientError::Io(format!(
                "{}: the server sent more than the {} bytes the backup manifest lists; the restore is incomplete",
                t.shown().display(),
                t.size
            )));
        }
        o.file.write_all(&data).map_err(|e| io_err(&t.shown(), e))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run_writer(
        targets: Vec<FileTarget>,
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
        let root = Arc::new(RootDir::create_and_open(dir.path()).unwrap());
        root.mkdir(&SafeRelPath::parse("sub").unwrap()).unwrap();
        let target = |name: &str, data: &[u8]| FileTarget {
            dir: root.clone(),
            path: SafeRelPath::parse(name).unwrap(),
            size: data.len() as u64,
            crc32c: Some(crc32c::crc32c(data)),
        };
        let ok = run_writer(
            vec![
                target("a", b"hello world"),
                target("unused", b""),
                target("sub/b", b"xyz"),
            ],
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
        // More than the manifest lists is not written at all.
        let err =
            run_writer(vec![target("e", b"0123")], vec![(0, b"012345".to_vec())]).unwrap_err();
        assert!(err.to_string().contains("more than the 4 bytes"), "{err}");
        assert_eq!(std::fs::read(dir.path().join("e")).unwrap(), b"");
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
            insecure_http: false,
        };
        let s = recovery_settings(&mtls, "https://k:7070").unwrap();
        assert!(s.contains(
            "restore_command = '/usr/bin/klio wal-restore --server https://k:7070 --cluster pg-a --cacert /tls/ca.crt --cert /tls/x@pg-a.crt --key ''/tls/my key.pem'' %f %p'"
        ), "{s}");
        // A restore allowed to send its token in clear lets restore_command do the same.
        let mut insecure = opts.clone();
        insecure.credentials.insecure_http = true;
        let s = recovery_settings(&insecure, "http://10.0.0.5:7070").unwrap();
        assert!(
            s.contains("--token-file ''/etc/klio/my token'' --insecure-http %f %p'"),
            "{s}"
        );
        let mut bad = opts.clone();
        bad.target_action = Some("explode".into());
        assert!(recovery_settings(&bad, "x").is_err());
    }
}
