//! `klio status`, `klio list wal` and `klio list backups`: what the server has, as a
//! table or JSON.

use clap::{Args, Subcommand};
use klio_api::client::ClientError;

use crate::connection::{cluster_arg, ConnectionArgs};
use crate::output::{self, OutputFormat};
use crate::{print, print_json};

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
pub struct ListWalArgs {
    #[arg(long, env = "KLIO_CLUSTER", value_name = "NAME")]
    pub cluster: Option<String>,
    #[arg(long, short, value_enum, default_value_t)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

pub(crate) async fn status(args: StatusArgs) -> Result<(), ClientError> {
    let list = args.connection.client()?.status().await?;
    match args.output {
        OutputFormat::Table => print(&output::status_table(&list)),
        OutputFormat::Json => print_json(&list),
    }
}

pub(crate) async fn list_wal(args: ListWalArgs) -> Result<(), ClientError> {
    let cluster = cluster_arg(args.cluster.as_deref())?;
    let list = args.connection.client()?.list_wal(&cluster).await?;
    match args.output {
        OutputFormat::Table => print(&output::wal_table(&list)),
        OutputFormat::Json => print_json(&list),
    }
}

pub(crate) async fn list_backups(args: ListWalArgs) -> Result<(), ClientError> {
    let cluster = cluster_arg(args.cluster.as_deref())?;
    let list = args.connection.client()?.list_backups(&cluster).await?;
    match args.output {
        OutputFormat::Table => print(&output::backup_table(&list)),
        OutputFormat::Json => print_json(&list),
    }
}
