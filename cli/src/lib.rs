//! The `klio` command line: argument parsing (clap), logging set-up, and dispatch to
//! the server, the demo or a client command. Exit codes: 0 success; 1 the thing asked
//! for does not exist (e.g. `wal-restore` of a WAL file the server does not have) or
//! the server/demo failed at run time; 2 bad configuration, usage or any other client
//! failure. Errors are printed as one line on stderr.

//!
//! Built with the default feature `server`, the binary also runs the Klio Server
//! (`klio server`) and `klio demo`; without it (`--no-default-features`) it is the lean
//! client for database hosts and PostgreSQL images: no RocksDB, no PostgreSQL client.
//!
//! One module per command family: [`wal_restore`] (with its prefetcher), [`restore`] (a
//! pure plan from the manifest, then its executor), [`backup`] (and offload), [`list`]
//! (and status), [`verify`], [`keys`], [`tier2`] (`klio tier2 retry|rescan`), [`retention`], `demo`; [`output`] formats what they print.
//!
//! On disk, the client commands write only where the user points them: `restore` into
//! the target data directory (and its tablespace directories), `wal-restore` the
//! requested file and its prefetch spool, `keys` the key file asked for; `klio server`
//! writes through `klio-server`, `klio demo` only in its own temporary directory.

pub mod backup;
mod connection;
#[cfg(feature = "server")]
pub mod demo;
pub mod keys;
pub mod list;
pub mod output;
pub mod restore;
pub mod retention;
pub mod tier2;
pub mod verify;
pub mod wal_restore;

use std::io::Write;
#[cfg(feature = "server")]
use std::path::PathBuf;
use std::process::ExitCode;

#[cfg(feature = "server")]
use clap::Args;
use clap::{Parser, Subcommand};
use klio_api::client::ClientError;
use klio_core::log_format::LogFormat;
use tracing_subscriber::EnvFilter;

#[cfg(feature = "server")]
use demo::DemoArgs;

/// What `klio --version` prints. A build with the `testing` feature (failpoints and
/// test knobs compiled in) says so, so that a benchmark can refuse to measure it: cargo
/// unifies features across the packages of one build command, so `klio` built in the
/// same command as the test harness or `klio-bench` is such a build.
#[cfg(not(feature = "testing"))]
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
#[cfg(feature = "testing")]
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (testing build: failpoints and test knobs compiled in, not for production)"
);

#[derive(Debug, Parser)]
#[command(
    name = "klio",
    version = VERSION,
    about = "Klio: a PostgreSQL backup server that streams WAL like a standby"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the Klio Server.
    #[cfg(feature = "server")]
    Server(ServerArgs),
    /// Try Klio end to end on a throwaway PostgreSQL.
    #[cfg(feature = "server")]
    Demo(DemoArgs),
    /// Fetch one WAL file for PostgreSQL: restore_command = 'klio wal-restore %f %p'.
    WalRestore(wal_restore::WalRestoreArgs),
    /// Show the replication status of the clusters your token can see.
    Status(list::StatusArgs),
    /// Background WAL prefetcher started by wal-restore.
    #[command(hide = true)]
    WalPrefetch(wal_restore::WalPrefetchArgs),
    /// List what the server stores.
    #[command(subcommand)]
    List(list::ListCommand),
    /// Take a base backup of a cluster now.
    Backup(backup::BackupArgs),
    /// Store a PGDATA copy (e.g. from a volume snapshot, with its backup_label) as a base backup.
    Offload(backup::OffloadArgs),
    /// Check that backups read back intact and their WAL chain has no gap.
    Verify(verify::VerifyArgs),
    /// Rebuild a data directory from a backup and set it up to recover to a target.
    Restore(restore::RestoreArgs),
    /// Manage keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Tier 2 (object storage) maintenance.
    #[command(subcommand)]
    Tier2(tier2::Tier2Command),
    /// What each tier keeps and removes under the [retention] rules.
    #[command(subcommand)]
    Retention(retention::RetentionCommand),
}

#[cfg(feature = "server")]
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The server's TOML configuration file.
    #[arg(long, short, env = "KLIO_CONFIG", value_name = "PATH")]
    pub config: PathBuf,
}

/// Entry point of the `klio` binary.
pub fn main() -> ExitCode {
    ExitCode::from(run(Cli::parse()))
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> u8 {
    match cli.command {
        Command::Keys(keys::KeysCommand::Generate { output }) => {
            keys::generate_key(output.as_deref())
        }
        #[cfg(feature = "server")]
        Command::Keys(keys::KeysCommand::Rotate {
            config,
            new_master_key_file,
        }) => {
            init_tracing_with_default(env_log_format(), "warn");
            fatal_on_error(
                "keys rotate",
                runtime(true).map(|rt| rt.block_on(keys::rotate(&config, &new_master_key_file))),
            )
        }
        #[cfg(feature = "server")]
        Command::Server(args) => {
            let config = match klio_server::config::Config::load(&args.config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("klio: {e}");
                    return 2;
                }
            };
            init_tracing(config.log_format);
            fatal_on_error(
                "server",
                runtime(true).map(|rt| rt.block_on(klio_server::engine::run_server(config))),
            )
        }
        #[cfg(feature = "server")]
        Command::Demo(args) => {
            init_tracing_with_default(env_log_format(), "warn");
            fatal_on_error("demo", runtime(true).map(|rt| rt.block_on(demo::run(args))))
        }
        Command::WalRestore(args) => client_command(wal_restore::command(args)),
        Command::WalPrefetch(args) => client_command(wal_restore::prefetch_command(args)),
        Command::Status(args) => client_command(list::status(args)),
        Command::List(list::ListCommand::Wal(args)) => client_command(list::list_wal(args)),
        Command::List(list::ListCommand::Backups(args)) => client_command(list::list_backups(args)),
        Command::Backup(args) => client_command(backup::backup(args)),
        Command::Offload(args) => client_command(backup::offload(args)),
        Command::Verify(args) => client_command(verify::verify(args)),
        Command::Tier2(tier2::Tier2Command::Retry(args)) => client_command(tier2::retry(args)),
        Command::Tier2(tier2::Tier2Command::Rescan(args)) => client_command(tier2::rescan(args)),
        Command::Retention(retention::RetentionCommand::Show(args)) => {
            client_command(retention::show(args))
        }
        Command::Retention(retention::RetentionCommand::Apply(args)) => {
            client_command(retention::apply(args))
        }
        Command::Restore(args) => {
            init_tracing(env_log_format());
            let result = match runtime(true) {
                Ok(rt) => rt.block_on(restore::command::restore(args)),
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

#[cfg(feature = "server")]
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
#[cfg(feature = "server")]
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

pub(crate) fn print(text: &str) -> Result<(), ClientError> {
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(|e| ClientError::Io(format!("cannot write to stdout: {e}")))
}

pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> Result<(), ClientError> {
    let mut s = serde_json::to_string_pretty(v)
        .map_err(|e| ClientError::Io(format!("cannot encode JSON: {e}")))?;
    s.push('\n');
    print(&s)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::connection::{cluster_arg, ConnectionArgs};
    use crate::list::{ListCommand, ListWalArgs, StatusArgs};
    use crate::output::OutputFormat;
    use clap::CommandFactory;
    use klio_api::client::DEFAULT_SERVER;
    use klio_core::Lsn;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[cfg(feature = "server")]
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

    #[cfg(feature = "server")]
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
