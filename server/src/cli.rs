//! The `klio` command line: argument parsing (clap), logging set-up, and dispatch to
//! the server, the demo or a client command. Exit codes: 0 success; 1 the thing asked
//! for does not exist (e.g. `wal-restore` of a WAL file the server does not have) or
//! the server/demo failed at run time; 2 bad configuration, usage or any other client
//! failure. Errors are printed as one line on stderr.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use klio_core::{ClusterName, MasterKey};
use tracing_subscriber::EnvFilter;

use crate::auth::ClusterToken;
use crate::client::{self, Client, ClientError, DEFAULT_SERVER};
use crate::config::{Config, LogFormat};
use crate::demo::{self, DemoArgs};
use crate::engine;
use crate::output::{self, OutputFormat};

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
    /// List what the server stores.
    #[command(subcommand)]
    List(ListCommand),
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
    /// File holding the cluster's bearer token.
    #[arg(long, env = "KLIO_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
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
    /// Print a new random master key (32 bytes as 64 hex characters).
    Generate,
}

/// Entry point of the `klio` binary.
pub fn main() -> ExitCode {
    ExitCode::from(run(Cli::parse()))
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> u8 {
    match cli.command {
        Command::Keys(KeysCommand::Generate) => {
            let key = MasterKey::generate();
            match writeln!(std::io::stdout(), "{}", key.to_hex().as_str()) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("klio: cannot write the key to stdout: {e}");
                    2
                }
            }
        }
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
        Command::Status(args) => client_command(status(args)),
        Command::List(ListCommand::Wal(args)) => client_command(list_wal(args)),
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
            tracing::error!("{what} failed: {e:#}");
            eprintln!("klio {what}: {e:#}");
            1
        }
    }
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
    fn client(&self) -> Result<Client, ClientError> {
        let path = self.token_file.as_ref().ok_or_else(|| {
            ClientError::Usage(
                "no token given: pass --token-file PATH or set KLIO_TOKEN_FILE".into(),
            )
        })?;
        let token = ClusterToken::from_file(path)
            .map_err(|e| ClientError::Usage(format!("--token-file / KLIO_TOKEN_FILE: {e}")))?;
        Client::new(&self.server, token, &path.display().to_string())
    }
}

async fn wal_restore(args: WalRestoreArgs) -> Result<(), ClientError> {
    // The name first: a bad %f is reported before anything else is looked at.
    client::parse_wal_name(&args.walfile)?;
    let cluster = cluster_arg(args.cluster.as_deref())?;
    let c = args.connection.client()?;
    let bytes = client::wal_restore(&c, &cluster, &args.walfile, &args.dest).await?;
    tracing::debug!(walfile = %args.walfile, bytes, dest = %args.dest.display(), "restored");
    Ok(())
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
        };
        let e = conn.client().unwrap_err();
        assert!(e.to_string().contains("--token-file"), "{e}");
    }
}
