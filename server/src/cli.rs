//! The `klio` command line: argument parsing (clap), logging set-up, and dispatch to
//! the server, the demo or a client command. Exit codes: 0 success; 1 the thing asked
//! for does not exist (e.g. `wal-restore` of a WAL file the server does not have) or
//! the server/demo failed at run time; 2 bad configuration, usage or any other client
//! failure. Errors are printed as one line on stderr.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use klio_core::{ClusterName, Lsn, MasterKey};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};
use crate::demo::{self, DemoArgs};
use crate::engine;
use crate::output::{self, OutputFormat};
use crate::progress::ProgressDisplay;
use crate::restore::{RestoreOptions, Target};
use klio_api::client::{Client, ClientError, Credentials, DEFAULT_SERVER};
use klio_api::{BackupRequest, BackupStateView, BackupView, OffloadRequest, VerifyRequest};

#[derive(Debug, Parser)]
#[command(
    name = "klio",
    version,
    about = "Klio: a PostgreSQL backup server that streams WAL like a standby"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the Klio Server.
    Server(ServerArgs),
    /// Try Klio end to end on a throwaway PostgreSQL.
    Demo(DemoArgs),
    /// Fetch one WAL file for PostgreSQL: restore_command = 'klio wal-restore %f %p'.
    WalRestore(WalRestoreArgs),
    /// Show the replication status of the clusters your token can see.
    Status(StatusArgs),
    /// Background WAL prefetcher started by wal-restore.
    #[command(hide = true)]
    WalPrefetch(WalPrefetchArgs),
    /// List what the server stores.
    #[command(subcommand)]
    List(ListCommand),
    /// Take a base backup of a cluster now.
    Backup(BackupArgs),
    /// Store a PGDATA copy (e.g. from a volume snapshot, with its backup_label) as a base backup.
    Offload(OffloadArgs),
    /// Check that backups read back intact and their WAL chain has no gap.
    Verify(VerifyArgs),
    /// Rebuild a data directory from a backup and set it up to recover to a target.
    Restore(RestoreArgs),
    /// Manage keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The server's TOML configuration file.
    #[arg(long, short, env = "KLIO_CONFIG", value_name = "PATH")]
    pub config: PathBuf,
}

/// Where the server is and which token to present.
#[derive(Debug, Args)]
pub struct ConnectionArgs {
    /// URL of the Klio server's HTTP API.
    #[arg(long, env = "KLIO_SERVER", default_value = DEFAULT_SERVER, value_name = "URL")]
    pub server: String,
    /// File holding the cluster's bearer token (optional with --cert).
    #[arg(long, env = "KLIO_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for an https:// server instead of the built-in roots.
    #[arg(long, env = "KLIO_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) naming the cluster (CN user@cluster), for mTLS.
    #[arg(long, env = "KLIO_CERT", value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "KLIO_KEY", value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Send the token over plain http:// to a server on another machine (anyone on the
    /// network path can read it: prefer an https:// server).
    #[arg(long, env = "KLIO_INSECURE_HTTP")]
    pub insecure_http: bool,
}

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
    #[arg(long, env = "KLIO_PREFETCH", default_value_t = crate::prefetch::DEFAULT_PREFETCH)]
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
    pub system_id: u64,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long, short, value_enum, default_value_t)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Debug, Subcommand)]
pub enum ListCommand {
    /// List the WAL files stored for a cluster.
    Wal(ListWalArgs),
    /// List the base backups of a cluster (oldest first).
    Backups(ListWalArgs),
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[arg(long, env = "KLIO_CLUSTER", value_name = "NAME")]
    pub cluster: Option<String>,
    /// A label stored with the backup (default: the server picks one).
    #[arg(long)]
    pub label: Option<String>,
    /// Let PostgreSQL spread the start checkpoint instead of taking it at once.
    #[arg(long)]
    pub spread_checkpoint: bool,
    /// Limit the rate PostgreSQL sends at (kB/s, 32 to 1048576).
    #[arg(long, value_name = "KBPS")]
    pub max_rate: Option<u32>,
    /// Wait until the backup is complete (progress on stderr); exit 1 if it fails.
    #[arg(long)]
    pub wait: bool,
    #[arg(long, short, value_enum, default_value_t)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Debug, Args)]
pub struct OffloadArgs {
    #[arg(long, env = "KLIO_CLUSTER", value_name = "NAME")]
    pub cluster: Option<String>,
    /// The PGDATA copy, on the server's file system (made absolute from the current
    /// directory): it must resolve inside one of the cluster's offload_roots (server
    /// configuration; none set: offload is refused) and be a copy of this cluster.
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// WAL position the copy is consistent at (pg_backup_stop's lsn); default: the
    /// server's durable WAL position when the offload starts.
    #[arg(long, value_name = "LSN")]
    pub end_lsn: Option<Lsn>,
    #[arg(long)]
    pub label: Option<String>,
    /// Wait until the offload is complete; exit 1 if it fails.
    #[arg(long)]
    pub wait: bool,
    #[arg(long, short, value_enum, default_value_t)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[arg(long, env = "KLIO_CLUSTER", value_name = "NAME")]
    pub cluster: Option<String>,
    /// The data directory to create (must be missing or empty).
    #[arg(long, value_name = "DIR")]
    pub pgdata: PathBuf,
    /// A backup id, or `latest` (default): the newest complete backup that can reach the target.
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    /// Recover to this time (with a zone, e.g. '2026-11-24 19:13:00+00').
    #[arg(long, value_name = "TIMESTAMP", group = "target")]
    pub target_time: Option<String>,
    #[arg(long, value_name = "LSN", group = "target")]
    pub target_lsn: Option<Lsn>,
    #[arg(long, value_name = "XID", group = "target")]
    pub target_xid: Option<String>,
    /// A restore point created with pg_create_restore_point().
    #[arg(long, value_name = "NAME", group = "target")]
    pub target_name: Option<String>,
    /// What PostgreSQL does at the target: promote, pause or shutdown.
    #[arg(long, value_name = "ACTION")]
    pub target_action: Option<String>,
    /// Put the tablespace that was at OLD at NEW instead (repeatable).
    #[arg(long, value_name = "OLD=NEW")]
    pub tablespace_map: Vec<String>,
    /// Chunks fetched in parallel.
    #[arg(long, default_value_t = 8)]
    pub jobs: usize,
    #[arg(long, short, value_enum, default_value_t)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[arg(long, env = "KLIO_CLUSTER", value_name = "NAME")]
    pub cluster: Option<String>,
    /// Only this backup (default: every complete backup).
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    #[arg(long, short, value_enum, default_value_t)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Debug, Args)]
pub struct ListWalArgs {
    #[arg(long, env = "KLIO_CLUSTER", value_name = "NAME")]
    pub cluster: Option<String>,
    #[arg(long, short, value_enum, default_value_t)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// A new random master key (32 bytes as 64 hex characters), into a new file readable
    /// by its owner only (--output), or to stdout.
    Generate {
        /// Create this file (mode 0600; an existing file is never replaced).
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

/// `klio keys generate [--output FILE]`.
fn generate_key(output: Option<&std::path::Path>) -> u8 {
    let key = MasterKey::generate();
    let Some(path) = output else {
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            eprintln!("klio: note: prefer `klio keys generate --output FILE`, which creates the file with mode 0600");
        }
        return match writeln!(std::io::stdout(), "{}", key.to_hex().as_str()) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("klio: cannot write the key to stdout: {e}");
                2
            }
        };
    };
    let written = klio_core::secret_file::create_private(path).and_then(|mut f| {
        writeln!(f, "{}", key.to_hex().as_str())?;
        f.sync_all()
    });
    match written {
        Ok(()) => {
            eprintln!(
                "klio: wrote a new master key to {} (mode 0600); keep a copy somewhere safe: without it nothing Klio stored can be read",
                path.display()
            );
            0
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            eprintln!(
                "klio: {} already exists: a master key is never overwritten (remove the file first if you really mean to replace it)",
                path.display()
            );
            2
        }
        Err(e) => {
            eprintln!("klio: cannot create {}: {e}", path.display());
            2
        }
    }
}

/// Entry point of the `klio` binary.
pub fn main() -> ExitCode {
    ExitCode::from(run(Cli::parse()))
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> u8 {
    match cli.command {
        Command::Keys(KeysCommand::Generate { output }) => generate_key(output.as_deref()),
        Command::Server(args) => {
            let config = match Config::load(&args.config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("klio: {e}");
                    return 2;
                }
            };
            init_tracing(config.log_format);
            fatal_on_error(
                "server",
                runtime(true).map(|rt| rt.block_on(engine::run_server(config))),
            )
        }
        Command::Demo(args) => {
            init_tracing_with_default(env_log_format(), "warn");
            fatal_on_error("demo", runtime(true).map(|rt| rt.block_on(demo::run(args))))
        }
        Command::WalRestore(args) => client_command(wal_restore(args)),
        Command::WalPrefetch(args) => client_command(wal_prefetch(args)),
        Command::Status(args) => client_command(status(args)),
        Command::List(ListCommand::Wal(args)) => client_command(list_wal(args)),
        Command::List(ListCommand::Backups(args)) => client_command(list_backups(args)),
        Command::Backup(args) => client_command(backup(args)),
        Command::Offload(args) => client_command(offload(args)),
        Command::Verify(args) => client_command(verify(args)),
        Command::Restore(args) => {
            init_tracing(env_log_format());
            let result = match runtime(true) {
                Ok(rt) => rt.block_on(restore(args)),
                Err(e) => Err(ClientError::Io(format!(
                    "cannot start the async runtime: {e}"
                ))),
            };
            match result {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("klio: {e}");
                    e.exit_code()
                }
            }
        }
    }
}

fn runtime(multi_thread: bool) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    Ok(b.enable_all().build()?)
}

fn fatal_on_error(what: &str, r: anyhow::Result<anyhow::Result<()>>) -> u8 {
    match r.and_then(|r| r) {
        Ok(()) => 0,
        Err(e) => {
            let e = error_chain(&e);
            tracing::error!("{what} failed: {e}");
            eprintln!("klio {what}: {e}");
            1
        }
    }
}

/// An error and its causes on one line, `: `-separated, leaving out a cause whose text
/// an outer message already quotes (many messages include their cause).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn client_command(fut: impl std::future::Future<Output = Result<(), ClientError>>) -> u8 {
    init_tracing(env_log_format());
    let result = match runtime(false) {
        Ok(rt) => rt.block_on(fut),
        Err(e) => Err(ClientError::Io(format!(
            "cannot start the async runtime: {e}"
        ))),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("klio: {e}");
            e.exit_code()
        }
    }
}

/// Sets up logging to stderr: filter from `KLIO_LOG` (default `info`), text or JSON.
pub fn init_tracing(format: LogFormat) {
    init_tracing_with_default(format, "info")
}

/// Like [`init_tracing`] with another default filter (the demo keeps its own output readable).
pub fn init_tracing_with_default(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_env("KLIO_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn env_log_format() -> LogFormat {
    std::env::var("KLIO_LOG_FORMAT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_default()
}

fn cluster_arg(cluster: Option<&str>) -> Result<ClusterName, ClientError> {
    let raw = cluster.ok_or_else(|| {
        ClientError::Usage("no cluster given: pass --cluster NAME or set KLIO_CLUSTER".into())
    })?;
    raw.parse()
        .map_err(|e| ClientError::Usage(format!("--cluster / KLIO_CLUSTER: {e}")))
}

impl ConnectionArgs {
    fn credentials(&self) -> Credentials {
        Credentials {
            token_file: self.token_file.clone(),
            cacert: self.cacert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            insecure_http: self.insecure_http,
        }
    }

    fn client(&self) -> Result<Client, ClientError> {
        Client::connect(&self.server, &self.credentials())
    }
}

async fn wal_restore(args: WalRestoreArgs) -> Result<(), ClientError> {
    // The name first: a bad %f is reported before anything else is looked at.
    let name = crate::wal_restore::parse_wal_name(&args.walfile)?;
    let cluster = cluster_arg(args.cluster.as_deref())?;
    // PostgreSQL runs restore_command in the data directory: its system identifier is
    // what every segment served must carry.
    let pgdata = std::env::current_dir().ok();
    let system_id = pgdata
        .as_deref()
        .and_then(crate::prefetch::data_dir_system_id);
    let is_segment = name.kind() == klio_core::WalFileKind::Segment;
    let spool = match (system_id, &args.spool, &pgdata) {
        _ if args.prefetch == 0 || !is_segment => None,
        (Some(id), Some(s), _) => Some((id, s.clone())),
        (Some(id), None, Some(dir)) => Some((id, crate::prefetch::default_spool(dir))),
        (None, Some(_), _) => {
            tracing::warn!("prefetch is off: run wal-restore in the data directory (as restore_command is) so spooled segments can be checked against it");
            None
        }
        _ => None,
    };
    let from_spool = spool
        .as_ref()
        .and_then(|(id, s)| crate::prefetch::take_from_spool(s, &args.walfile, &args.dest, *id));
    let bytes = match from_spool {
        Some(b) => b,
        // The HTTP client (TLS roots, credentials) is built only when the server is asked.
        None => {
            let fetched = match args.connection.client() {
                Ok(c) => {
                    crate::wal_restore::wal_restore(
                        &c,
                        &cluster,
                        &args.walfile,
                        &args.dest,
                        system_id,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            fetched.map_err(|e| stop_archive_recovery(e, pgdata.as_deref(), &args.walfile))?
        }
    };
    tracing::debug!(walfile = %args.walfile, bytes, dest = %args.dest.display(), spooled = from_spool.is_some(), "restored");
    if let Some((id, spool)) = &spool {
        if let Ok(exe) = std::env::current_exe() {
            let spec = crate::prefetch::PrefetchSpec {
                exe: &exe,
                server: &args.connection.server,
                cluster: &cluster,
                credentials: &args.connection.credentials(),
                spool,
                count: args.prefetch,
                system_id: *id,
            };
            crate::prefetch::spawn_prefetcher(&spec, &name, bytes);
        }
    }
    Ok(())
}

/// In archive recovery (`recovery.signal` without `standby.signal`), a failure other than
/// "Klio does not have this file" must not look like one: PostgreSQL would end recovery
/// at that point and promote, short of the target. It exits [`client::EXIT_ABORT_RECOVERY`]
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

async fn wal_prefetch(args: WalPrefetchArgs) -> Result<(), ClientError> {
    let cluster = cluster_arg(Some(&args.cluster))?;
    let after = crate::wal_restore::parse_wal_name(&args.after)?;
    let seg_size = klio_core::WalSegSize::new(args.seg_size)
        .map_err(|e| ClientError::Usage(format!("--seg-size: {e}")))?;
    let c = args.connection.client()?;
    crate::prefetch::run_prefetch(
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

async fn status(args: StatusArgs) -> Result<(), ClientError> {
    let list = args.connection.client()?.status().await?;
    match args.output {
        OutputFormat::Table => print(&output::status_table(&list)),
        OutputFormat::Json => print_json(&list),
    }
}

async fn list_wal(args: ListWalArgs) -> Result<(), ClientError> {
    let cluster = cluster_arg(args.cluster.as_deref())?;
    let list = args.connection.client()?.list_wal(&cluster).await?;
    match args.output {
        OutputFormat::Table => print(&output::wal_table(&list)),
        OutputFormat::Json => print_json(&list),
    }
}

async fn list_backups(args: ListWalArgs) -> Result<(), ClientError> {
    let cluster = cluster_arg(args.cluster.as_deref())?;
    let list = args.connection.client()?.list_backups(&cluster).await?;
    match args.output {
        OutputFormat::Table => print(&output::backup_table(&list)),
        OutputFormat::Json => print_json(&list),
    }
}

async fn backup(args: BackupArgs) -> Result<(), ClientError> {
    let cluster = cluster_arg(args.cluster.as_deref())?;
    let c = args.connection.client()?;
    let req = BackupRequest {
        label: args.label,
        fast_checkpoint: args.spread_checkpoint.then_some(false),
        max_rate_kbps: args.max_rate,
    };
    let started = c.start_backup(&cluster, &req).await?;
    finish_backup_command(&c, started, args.wait, args.output).await
}

async fn offload(args: OffloadArgs) -> Result<(), ClientError> {
    let cluster = cluster_arg(args.cluster.as_deref())?;
    let from = std::path::absolute(&args.from)
        .map_err(|e| ClientError::Usage(format!("--from {}: {e}", args.from.display())))?;
    let from = from
        .to_str()
        .ok_or_else(|| ClientError::Usage(format!("--from {}: not valid UTF-8", from.display())))?;
    let c = args.connection.client()?;
    let req = OffloadRequest {
        from: from.to_string(),
        label: args.label,
        end_lsn: args.end_lsn,
    };
    let started = c.start_offload(&cluster, &req).await?;
    finish_backup_command(&c, started, args.wait, args.output).await
}

/// Prints the started backup, or with `wait` follows it to the end.
async fn finish_backup_command(
    c: &Client,
    started: BackupView,
    wait: bool,
    format: OutputFormat,
) -> Result<(), ClientError> {
    if !wait {
        return match format {
            OutputFormat::Json => print_json(&started),
            OutputFormat::Table => print(&format!(
                "backup {} of cluster {} started; follow it with `klio list backups --cluster {}`\n",
                started.id, started.cluster, started.cluster
            )),
        };
    }
    let mut display = ProgressDisplay::new();
    let mut view = started;
    while view.state == BackupStateView::Running {
        display.update(&view);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        view = c.backup(&view.cluster, &view.id).await?;
    }
    display.finish();
    match format {
        OutputFormat::Json => print_json(&view)?,
        OutputFormat::Table => print(&output::backup_summary(&view))?,
    }
    if view.state == BackupStateView::Complete {
        Ok(())
    } else {
        Err(ClientError::Failed(format!(
            "backup {} of cluster {} failed: {}",
            view.id,
            view.cluster,
            view.error.as_deref().unwrap_or("no reason given")
        )))
    }
}

async fn verify(args: VerifyArgs) -> Result<(), ClientError> {
    let cluster = cluster_arg(args.cluster.as_deref())?;
    let c = args.connection.client()?;
    let report = c
        .verify(
            &cluster,
            &VerifyRequest {
                backup: args.backup,
            },
        )
        .await?;
    match args.output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Table => print(&output::verify_report(&report))?,
    }
    if report.ok {
        Ok(())
    } else {
        Err(ClientError::Failed(format!(
            "verification of cluster {cluster} found problems (listed above)"
        )))
    }
}

async fn restore(args: RestoreArgs) -> Result<(), ClientError> {
    let cluster = cluster_arg(args.cluster.as_deref())?;
    // The credentials are checked before anything else.
    let c = args.connection.client()?;
    let abs = |p: &std::path::Path, what: &str| {
        std::path::absolute(p)
            .map_err(|e| ClientError::Usage(format!("{what} {}: {e}", p.display())))
    };
    let target = if let Some(t) = args.target_time {
        if crate::restore::parse_timestamp(&t).is_none() {
            return Err(ClientError::Usage(format!(
                "--target-time {t:?}: use 'YYYY-MM-DD HH:MM:SS' with a zone (+00, Z, UTC)"
            )));
        }
        Target::Time(t)
    } else if let Some(l) = args.target_lsn {
        Target::Lsn(l)
    } else if let Some(x) = args.target_xid {
        Target::Xid(x)
    } else if let Some(n) = args.target_name {
        Target::Name(n)
    } else {
        Target::Latest
    };
    let mut map = Vec::new();
    for m in &args.tablespace_map {
        let (old, new) = m
            .split_once('=')
            .ok_or_else(|| ClientError::Usage(format!("--tablespace-map {m:?}: use OLD=NEW")))?;
        map.push((
            old.to_string(),
            abs(std::path::Path::new(new), "--tablespace-map")?,
        ));
    }
    let opts = RestoreOptions {
        cluster,
        pgdata: abs(&args.pgdata, "--pgdata")?,
        backup: args.backup,
        target,
        target_action: args.target_action,
        tablespace_map: map,
        jobs: args.jobs,
        credentials: args.connection.credentials().absolute()?,
        klio_exe: std::env::current_exe()
            .map_err(|e| ClientError::Io(format!("cannot find the klio executable: {e}")))?,
    };
    let summary = crate::restore::restore(&c, &opts).await?;
    match args.output {
        OutputFormat::Json => print_json(&summary),
        OutputFormat::Table => print(&format!(
            "restored backup {} into {}: {} files, {} in {:.1}s; start PostgreSQL on it to recover\n",
            summary.backup,
            summary.pgdata.display(),
            summary.files,
            output::human_bytes(summary.bytes),
            summary.seconds
        )),
    }
}

fn print(text: &str) -> Result<(), ClientError> {
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(|e| ClientError::Io(format!("cannot write to stdout: {e}")))
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), ClientError> {
    let mut s = serde_json::to_string_pretty(v)
        .map_err(|e| ClientError::Io(format!("cannot encode JSON: {e}")))?;
    s.push('\n');
    print(&s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn error_chain_leaves_out_causes_already_quoted() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot open X: {source}")]
        struct Outer {
            source: std::io::Error,
        }
        let inner = std::io::Error::other("disk on fire");
        let e = anyhow::Error::new(Outer { source: inner }).context("startup");
        assert_eq!(error_chain(&e), "startup: cannot open X: disk on fire");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_chain(&e), "outer: inner");
    }

    #[test]
    fn wal_restore_arguments_parse() {
        let cli = Cli::try_parse_from([
            "klio",
            "wal-restore",
            "000000010000000000000001",
            "pg_wal/RECOVERYXLOG",
            "--server",
            "http://10.0.0.1:7070",
            "--cluster",
            "pg-main",
            "--token-file",
            "/t",
        ])
        .unwrap();
        let Command::WalRestore(a) = cli.command else {
            panic!("wrong subcommand")
        };
        assert_eq!(a.walfile, "000000010000000000000001");
        assert_eq!(a.dest, PathBuf::from("pg_wal/RECOVERYXLOG"));
        assert_eq!(a.cluster.as_deref(), Some("pg-main"));
        assert_eq!(a.connection.server, "http://10.0.0.1:7070");
        assert_eq!(a.connection.token_file, Some(PathBuf::from("/t")));
    }

    #[test]
    fn output_and_subcommands_parse() {
        let cli =
            Cli::try_parse_from(["klio", "list", "wal", "--cluster", "a", "-o", "json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::List(ListCommand::Wal(ListWalArgs {
                output: OutputFormat::Json,
                ..
            }))
        ));
        let cli = Cli::try_parse_from(["klio", "status"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Status(StatusArgs {
                output: OutputFormat::Table,
                ..
            })
        ));
        assert!(Cli::try_parse_from(["klio", "status", "--output", "yaml"]).is_err());
        assert!(Cli::try_parse_from(["klio", "keys", "generate"]).is_ok());
        assert!(Cli::try_parse_from(["klio", "demo", "--keep"]).is_ok());
    }

    #[test]
    fn backup_commands_parse() {
        let cli = Cli::try_parse_from([
            "klio",
            "backup",
            "--cluster",
            "pg-a",
            "--wait",
            "--label",
            "nightly",
        ])
        .unwrap();
        let Command::Backup(a) = cli.command else {
            panic!("wrong subcommand")
        };
        assert!(a.wait && !a.spread_checkpoint);
        assert_eq!(a.label.as_deref(), Some("nightly"));
        let cli = Cli::try_parse_from([
            "klio",
            "offload",
            "--cluster",
            "pg-a",
            "--from",
            "snap",
            "--end-lsn",
            "0/3000000",
        ])
        .unwrap();
        let Command::Offload(a) = cli.command else {
            panic!("wrong subcommand")
        };
        assert_eq!(a.end_lsn, Some(Lsn(0x300_0000)));
        assert!(
            Cli::try_parse_from(["klio", "offload", "--from", "x", "--end-lsn", "zz"]).is_err()
        );
        assert!(Cli::try_parse_from(["klio", "list", "backups", "--cluster", "a"]).is_ok());
        assert!(Cli::try_parse_from(["klio", "verify", "--backup", "20261124T191300Z"]).is_ok());
    }

    #[test]
    fn bad_config_exits_2() {
        let cli =
            Cli::try_parse_from(["klio", "server", "--config", "/nonexistent/klio.toml"]).unwrap();
        assert_eq!(run(cli), 2);
    }

    #[test]
    fn missing_cluster_and_token_are_usage_errors() {
        let e = cluster_arg(None).unwrap_err();
        assert!(e.to_string().contains("KLIO_CLUSTER"), "{e}");
        let e = cluster_arg(Some("Bad/Name")).unwrap_err();
        assert!(e.to_string().contains("invalid cluster name"), "{e}");
        let conn = ConnectionArgs {
            server: DEFAULT_SERVER.into(),
            token_file: None,
            cacert: None,
            cert: None,
            key: None,
            insecure_http: false,
        };
        let e = conn.client().unwrap_err();
        assert!(e.to_string().contains("--token-file"), "{e}");
        assert!(e.to_string().contains("--cert"), "{e}");
        let plain = ConnectionArgs {
            cacert: Some("/ca.crt".into()),
            token_file: Some("/t".into()),
            ..conn
        };
        let e = plain.client().unwrap_err();
        assert!(e.to_string().contains("https://"), "{e}");
    }
}
