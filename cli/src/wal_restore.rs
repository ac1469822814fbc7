//! `klio wal-restore` (PostgreSQL's `restore_command`): one WAL file from the server into
//! the path PostgreSQL names, refused when it is another database system's, written
//! atomically (a temporary file in the same directory, renamed over the destination);
//! and its background prefetcher ([`prefetch`]), which spools the next segments.

pub mod prefetch;

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use klio_api::client::{Client, ClientError};
use klio_core::{ClusterName, SystemId, WalFileKind, WalFileName};

use crate::connection::{cluster_arg, ConnectionArgs};

#[derive(Debug, Args)]
pub struct WalRestoreArgs {
    /// WAL file name as PostgreSQL asks for it (%f).
    pub walfile: String,
    /// Where to write it (%p).
    pub dest: PathBuf,
    /// The cluster whose WAL to fetch.
    #[arg(long, env = "KLIO_CLUSTER", value_name = "NAME")]
    pub cluster: Option<String>,
    /// Segments to fetch ahead in the background (0: off).
    #[arg(long, env = "KLIO_PREFETCH", default_value_t = prefetch::DEFAULT_PREFETCH)]
    pub prefetch: u32,
    /// Where prefetched segments wait (default: <PGDATA>.klio-spool). Prefetch runs only
    /// when started in the data directory, as restore_command is.
    #[arg(long, env = "KLIO_SPOOL", value_name = "DIR")]
    pub spool: Option<PathBuf>,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// The background half of `wal-restore`'s prefetch (started by it; not for direct use).
#[derive(Debug, Args)]
pub struct WalPrefetchArgs {
    #[arg(long, value_name = "NAME")]
    pub cluster: String,
    #[arg(long, value_name = "DIR")]
    pub spool: PathBuf,
    /// The segment just served.
    #[arg(long, value_name = "WALFILE")]
    pub after: String,
    #[arg(long, value_name = "BYTES")]
    pub seg_size: u64,
    #[arg(long)]
    pub count: u32,
    /// The database system whose segments may be spooled.
    #[arg(long)]
    pub system_id: SystemId,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

pub(crate) async fn command(args: WalRestoreArgs) -> Result<(), ClientError> {
    // The name first: a bad %f is reported before anything else is looked at.
    let name = parse_wal_name(&args.walfile)?;
    let cluster = cluster_arg(args.cluster.as_deref())?;
    // PostgreSQL runs restore_command in the data directory: its system identifier is
    // what every segment served must carry.
    let pgdata = std::env::current_dir().ok();
    let system_id = pgdata.as_deref().and_then(prefetch::data_dir_system_id);
    let is_segment = name.kind() == klio_core::WalFileKind::Segment;
    let spool = match (system_id, &args.spool, &pgdata) {
        _ if args.prefetch == 0 || !is_segment => None,
        (Some(id), Some(s), _) => Some((id, s.clone())),
        (Some(id), None, Some(dir)) => Some((id, prefetch::default_spool(dir))),
        (None, Some(_), _) => {
            tracing::warn!("prefetch is off: run wal-restore in the data directory (as restore_command is) so spooled segments can be checked against it");
            None
        }
        _ => None,
    };
    let from_spool = spool
        .as_ref()
        .and_then(|(id, s)| prefetch::take_from_spool(s, &args.walfile, &args.dest, *id));
    let bytes = match from_spool {
        Some(b) => b,
        // The HTTP client (TLS roots, credentials) is built only when the server is asked.
        None => {
            let fetched = match args.connection.client() {
                Ok(c) => fetch(&c, &cluster, &args.walfile, &args.dest, system_id).await,
                Err(e) => Err(e),
            };
            fetched.map_err(|e| stop_archive_recovery(e, pgdata.as_deref(), &args.walfile))?
        }
    };
    tracing::debug!(walfile = %args.walfile, bytes, dest = %args.dest.display(), spooled = from_spool.is_some(), "restored");
    if let Some((id, spool)) = &spool {
        if let Ok(exe) = std::env::current_exe() {
            let spec = prefetch::PrefetchSpec {
                exe: &exe,
                server: &args.connection.server,
                cluster: &cluster,
                credentials: &args.connection.credentials(),
                spool,
                count: args.prefetch,
                system_id: *id,
            };
            prefetch::spawn_prefetcher(&spec, &name, bytes);
        }
    }
    Ok(())
}

/// In archive recovery (`recovery.signal` without `standby.signal`), a failure other than
/// "Klio does not have this file" must not look like one: PostgreSQL would end recovery
/// at that point and promote, short of the target. It exits [`klio_api::client::EXIT_ABORT_RECOVERY`]
/// instead, which stops recovery; started again, PostgreSQL resumes where it stopped. A
/// standby keeps the plain failure status: it retries by itself, and must not shut down
/// because Klio is briefly unreachable.
fn stop_archive_recovery(e: ClientError, pgdata: Option<&Path>, walfile: &str) -> ClientError {
    let in_archive_recovery = pgdata
        .is_some_and(|d| d.join("recovery.signal").exists() && !d.join("standby.signal").exists());
    match e {
        ClientError::NotFound(_) | ClientError::WrongSystem(_) => e,
        e if in_archive_recovery => ClientError::AbortRecovery(format!(
            "{e}; stopping recovery at {walfile} rather than letting it end early: fix this and start PostgreSQL again (recovery resumes)"
        )),
        e => e,
    }
}

pub(crate) async fn prefetch_command(args: WalPrefetchArgs) -> Result<(), ClientError> {
    let cluster = cluster_arg(Some(&args.cluster))?;
    let after = parse_wal_name(&args.after)?;
    let seg_size = klio_core::WalSegSize::new(args.seg_size)
        .map_err(|e| ClientError::Usage(format!("--seg-size: {e}")))?;
    let c = args.connection.client()?;
    prefetch::run_prefetch(
        &c,
        &cluster,
        &args.spool,
        &after,
        seg_size,
        args.count,
        args.system_id,
    )
    .await
}

/// `klio wal-restore`: validates `walfile` before any I/O, fetches it and writes it to
/// `dest` atomically. Returns the number of bytes written.
/// Fetches `walfile` into `dest`. With `system_id` (the data directory's), a segment whose
/// header names another database system is refused and nothing is written.
pub async fn fetch(
    client: &Client,
    cluster: &ClusterName,
    walfile: &str,
    dest: &Path,
    system_id: Option<SystemId>,
) -> Result<u64, ClientError> {
    let name = parse_wal_name(walfile)?;
    let bytes = client
        .fetch_wal(cluster, &name)
        .await
        .map_err(|e| match e {
            ClientError::NotFound(_) => ClientError::NotFound(format!(
                "{name} not found on the server for cluster {cluster}"
            )),
            other => other,
        })?;
    if let (Some(expected), Some(h), WalFileKind::Segment) = (
        system_id,
        klio_core::SegmentHeader::parse(&bytes),
        name.kind(),
    ) {
        if h.system_id != expected {
            return Err(ClientError::WrongSystem(format!(
                "refusing {name}: cluster {cluster} on the server is database system {}, \
                 but this data directory is {expected}; check --cluster / KLIO_CLUSTER \
                 (recovery stops here rather than end early)",
                h.system_id
            )));
        }
    }
    let len = bytes.len() as u64;
    let dest_owned: PathBuf = dest.to_path_buf();
    tokio::task::spawn_blocking(move || write_atomically(&dest_owned, &bytes))
        .await
        .map_err(|e| ClientError::Io(format!("writing {}: {e}", dest.display())))?
        .map_err(|e| ClientError::Io(format!("cannot write {}: {e}", dest.display())))?;
    Ok(len)
}

/// Validates a WAL file name given on the command line.
pub fn parse_wal_name(walfile: &str) -> Result<WalFileName, ClientError> {
    walfile.parse().map_err(|e| {
        ClientError::Usage(format!(
            "{e}; restore_command should be 'klio wal-restore %f %p'"
        ))
    })
}

/// Writes `bytes` to `dest` so that `dest` is either absent/unchanged or complete:
/// temporary file in the same directory, then rename. Not fsync'ed: what a
/// restore_command writes is read once by the startup process and never relied on after
/// a crash (recovery restarts and fetches it again), and spool entries are checked
/// against their CRC before use; two 16 MB fsyncs per segment would halve replay speed.
pub fn write_atomically(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let file_name = dest.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "destination is not a file path",
        )
    })?;
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(file_name);
    prefix.push(".");
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".klio-tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    // On error the temporary file is removed when `tmp` drops.
    tmp.persist(dest).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests;
