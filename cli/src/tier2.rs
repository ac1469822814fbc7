//! `klio tier2 retry`: queue the objects the Tier 2 relay gave up on again, once their
//! cause is fixed. Writes nothing locally.

use clap::{Args, Subcommand};
use klio_api::client::ClientError;
use klio_api::Tier2RetryRequest;

use crate::connection::{cluster_arg, ConnectionArgs};
use crate::output::OutputFormat;
use crate::{print, print_json};

#[derive(Debug, Subcommand)]
pub enum Tier2Command {
    /// Queue objects that failed permanently (dead letters) for Tier 2 again: all of a
    /// cluster's, or one (--kind and --name, as `klio status` lists them).
    Retry(RetryArgs),
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    #[arg(long, env = "KLIO_CLUSTER", value_name = "NAME")]
    pub cluster: Option<String>,
    /// The object's kind: wal_segment, history, pack, pg_manifest or backup_manifest.
    #[arg(long, requires = "name", value_name = "KIND")]
    pub kind: Option<String>,
    /// The object's name (a WAL file name, a pack name or a backup id).
    #[arg(long, requires = "kind", value_name = "NAME")]
    pub name: Option<String>,
    #[arg(long, short, value_enum, default_value_t)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

pub(crate) async fn retry(args: RetryArgs) -> Result<(), ClientError> {
    let cluster = cluster_arg(args.cluster.as_deref())?;
    let report = args
        .connection
        .client()?
        .tier2_retry(
            &cluster,
            &Tier2RetryRequest {
                kind: args.kind,
                name: args.name,
            },
        )
        .await?;
    match args.output {
        OutputFormat::Json => print_json(&report),
        OutputFormat::Table => print(&format!(
            "{} object(s) of cluster {cluster} queued for Tier 2 again\n",
            report.revived
        )),
    }
}
