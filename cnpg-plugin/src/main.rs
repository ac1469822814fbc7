//! `klio-cnpg-plugin`: the CloudNativePG plugin's processes (`operator`, `instance`,
//! `restore`), and two small clients of the sidecars' socket: `probe` (the startup
//! probe) and `wal-restore` (the instance manager's part, for tests and debugging).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use klio_cnpg_plugin::lifecycle::{SidecarSettings, CREDENTIALS_DIR};
use klio_cnpg_plugin::proto::identity::identity_client::IdentityClient;
use klio_cnpg_plugin::proto::identity::ProbeRequest;
use klio_cnpg_plugin::proto::wal::wal_client::WalClient;
use klio_cnpg_plugin::proto::wal::WalRestoreRequest;
use klio_cnpg_plugin::restore_job::DEFAULT_WAL_RESTORE_COMMAND;
use klio_cnpg_plugin::server::{bind_unix, serve_tls, serve_unix, shutdown_signal};
use klio_cnpg_plugin::tls::TlsFiles;
use klio_cnpg_plugin::{backup, lifecycle, restore_job, wal, PLUGIN_NAME};

#[derive(Debug, Parser)]
#[command(
    name = "klio-cnpg-plugin",
    version,
    about = "Klio's CloudNativePG plugin (CNPG-I)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The operator side: Identity and OperatorLifecycle over TCP with mTLS.
    Operator(OperatorArgs),
    /// The instance sidecar: Identity, Backup and WAL (restore) on a unix socket.
    Instance(SidecarArgs),
    /// The restore-Job sidecar: Identity, RestoreJobHooks and WAL (restore) on a unix socket.
    Restore(RestoreArgs),
    /// Exit 0 when the plugin answers Identity.Probe ready on its socket.
    Probe(ProbeArgs),
    /// Fetch one WAL file through a sidecar's WAL.Restore, as the instance manager does.
    WalRestore(WalRestoreArgs),
}

#[derive(Debug, Args)]
struct OperatorArgs {
    /// Address to listen on.
    #[arg(long, env = "KLIO_CNPG_LISTEN", default_value = "0.0.0.0:9090")]
    listen: String,
    /// This server's certificate (tls.crt of the cnpg.io/pluginServerSecret Secret).
    #[arg(long, env = "KLIO_CNPG_SERVER_CERT", value_name = "FILE")]
    server_cert: PathBuf,
    /// Its key (tls.key).
    #[arg(long, env = "KLIO_CNPG_SERVER_KEY", value_name = "FILE")]
    server_key: PathBuf,
    /// The operator's client certificate to trust (tls.crt of cnpg.io/pluginClientSecret).
    #[arg(long, env = "KLIO_CNPG_CLIENT_CERT", value_name = "FILE")]
    client_cert: PathBuf,
    /// The image of the sidecar injected into instance Pods and restore Jobs.
    #[arg(long, env = "KLIO_CNPG_SIDECAR_IMAGE", value_name = "IMAGE")]
    sidecar_image: String,
}

#[derive(Debug, Args)]
struct SidecarArgs {
    /// The unix socket to serve on (CloudNativePG scans /plugins).
    #[arg(long, env = "KLIO_CNPG_SOCKET", default_value_t = default_socket())]
    socket: String,
    /// The data directory.
    #[arg(
        long,
        env = "PGDATA",
        default_value = "/var/lib/postgresql/data/pgdata"
    )]
    pgdata: PathBuf,
    /// Where the plugin Secrets are mounted (<dir>/<secret>/token).
    #[arg(long, env = "KLIO_CREDENTIALS_DIR", default_value = CREDENTIALS_DIR)]
    credentials_dir: PathBuf,
    /// WAL segments fetched ahead by WAL.Restore (0: off).
    #[arg(long, env = "KLIO_PREFETCH", default_value_t = klio::wal_restore::prefetch::DEFAULT_PREFETCH)]
    prefetch: u32,
    /// The prefetch spool (default: <PGDATA>.klio-spool).
    #[arg(long, env = "KLIO_SPOOL", value_name = "DIR")]
    spool: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RestoreArgs {
    #[command(flatten)]
    sidecar: SidecarArgs,
    /// The restore_command returned to CloudNativePG (%f and %p filled in by PostgreSQL).
    #[arg(long, env = "KLIO_CNPG_WAL_RESTORE_COMMAND", default_value = DEFAULT_WAL_RESTORE_COMMAND)]
    wal_restore_command: String,
    /// Backup chunks fetched in parallel.
    #[arg(long, default_value_t = 8)]
    jobs: usize,
}

#[derive(Debug, Args)]
struct ProbeArgs {
    #[arg(long, default_value_t = default_socket())]
    socket: String,
}

#[derive(Debug, Args)]
struct WalRestoreArgs {
    /// The sidecar's socket.
    #[arg(long, default_value_t = default_socket())]
    socket: String,
    /// The Cluster definition (JSON) to send, as the instance manager does.
    #[arg(long, value_name = "FILE")]
    cluster_definition: PathBuf,
    /// WAL file name (%f).
    walfile: String,
    /// Destination (%p), relative to the current directory (PGDATA) or absolute.
    dest: PathBuf,
}

fn default_socket() -> String {
    format!("/plugins/{PLUGIN_NAME}")
}

fn absolute(p: &Path, what: &str) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("{what} {}", p.display()))
}

fn wal_service(a: &SidecarArgs) -> anyhow::Result<wal::WalService> {
    Ok(wal::WalService {
        credentials_dir: a.credentials_dir.clone(),
        pgdata: absolute(&a.pgdata, "--pgdata")?,
        prefetch: a.prefetch,
        spool: a.spool.clone(),
    })
}

async fn run(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Operator(a) => {
            let listener = tokio::net::TcpListener::bind(&a.listen)
                .await
                .with_context(|| format!("cannot listen on {}", a.listen))?;
            let routes = klio_cnpg_plugin::operator_routes(lifecycle::LifecycleService::new(
                SidecarSettings {
                    image: a.sidecar_image,
                },
            ));
            let tls = TlsFiles {
                server_cert: a.server_cert,
                server_key: a.server_key,
                client_cert: a.client_cert,
            };
            tracing::info!(listen = %a.listen, "operator side serving");
            serve_tls(routes, listener, tls, shutdown_signal()).await?;
        }
        Command::Instance(a) => {
            let routes = klio_cnpg_plugin::instance_routes(
                backup::BackupService {
                    credentials_dir: a.credentials_dir.clone(),
                    instance: std::env::var("POD_NAME").ok(),
                },
                wal_service(&a)?,
            );
            let listener = bind_unix(Path::new(&a.socket))?;
            tracing::info!(socket = %a.socket, "instance sidecar serving");
            serve_unix(routes, listener, shutdown_signal()).await?;
        }
        Command::Restore(a) => {
            let routes = klio_cnpg_plugin::restore_routes(
                restore_job::RestoreJobService {
                    credentials_dir: a.sidecar.credentials_dir.clone(),
                    pgdata: absolute(&a.sidecar.pgdata, "--pgdata")?,
                    wal_restore_command: a.wal_restore_command,
                    jobs: a.jobs.max(1),
                },
                wal_service(&a.sidecar)?,
            );
            let listener = bind_unix(Path::new(&a.sidecar.socket))?;
            tracing::info!(socket = %a.sidecar.socket, "restore sidecar serving");
            serve_unix(routes, listener, shutdown_signal()).await?;
        }
        Command::Probe(a) => {
            let channel = klio_cnpg_plugin::unix_channel(Path::new(&a.socket))
                .await
                .with_context(|| format!("cannot connect to {}", a.socket))?;
            let ready = IdentityClient::new(channel)
                .probe(ProbeRequest {})
                .await?
                .into_inner()
                .ready;
            return Ok(if ready { 0 } else { 1 });
        }
        Command::WalRestore(a) => {
            let cluster = std::fs::read(&a.cluster_definition)
                .with_context(|| format!("reading {}", a.cluster_definition.display()))?;
            let dest = absolute(&a.dest, "destination")?;
            let channel = klio_cnpg_plugin::unix_channel(Path::new(&a.socket))
                .await
                .with_context(|| format!("cannot connect to {}", a.socket))?;
            let r = WalClient::new(channel)
                .restore(WalRestoreRequest {
                    cluster_definition: cluster,
                    source_wal_name: a.walfile.clone(),
                    destination_file_name: dest.display().to_string(),
                    parameters: Default::default(),
                    mode: 0,
                })
                .await;
            return match r {
                Ok(_) => Ok(0),
                // "Not available": PostgreSQL ends recovery or tries streaming.
                Err(s) if s.code() == tonic::Code::NotFound => Ok(1),
                Err(s) => {
                    eprintln!(
                        "klio-cnpg-plugin wal-restore {}: {}",
                        a.walfile,
                        s.message()
                    );
                    Ok(2)
                }
            };
        }
    }
    Ok(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("KLIO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .json()
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("klio-cnpg-plugin: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli.command)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("klio-cnpg-plugin: {e:#}");
            ExitCode::from(2)
        }
    }
}
