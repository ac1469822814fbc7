//! `klio tier2 retry`: queue the objects the Tier 2 relay gave up on again, once their
//! cause is fixed. `klio tier2 rescan`: have a read-only server pick up what the writing
//! server added to the bucket. Write nothing locally.

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
    /// Have a read-only server scan the bucket for the WAL and backups the writing server
    /// added since its last scan (it scans once at start-up).
    Rescan(RescanArgs),
}

#[derive(Debug, Args)]
pub struct RescanArgs {
    #[arg(long, env = "KLIO_CLUSTER", value_name = "NAME")]
    pub cluster: Option<String>,
    #[arg(long, short, value_enum, default_value_t)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    #[arg(long, env = "KLIO_CLUSTER", value_name = "NAME")]
    pub cluster: Option<String>,
    /// The object's kind: wal_segment, history, pack, pg_manifest, chunk_index,
    /// backup_manifest or cluster.
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

pub(crate) async fn rescan(args: RescanArgs) -> Result<(), ClientError> {
    let cluster = cluster_arg(args.cluster.as_deref())?;
    let report = args.connection.client()?.tier2_rescan(&cluster).await?;
    match args.output {
        OutputFormat::Json => print_json(&report),
        OutputFormat::Table => {
            let mut text = if report.cluster_found {
                format!(
                    "cluster {cluster}: {} object(s) in Tier 2, {} new: {} WAL segment(s), {} history file(s), {} backup(s); {} gone (retention): {} backup(s)\n",
                    report.objects,
                    report.new_objects,
                    report.new_wal_segments,
                    report.new_histories,
                    report.new_backups,
                    report.removed_objects,
                    report.removed_backups
                )
            } else {
                format!("cluster {cluster}: Tier 2 does not hold this cluster yet (no cluster.json); the writing server has not relayed it\n")
            };
            for why in &report.skipped {
                text.push_str(&format!("skipped: {why}\n"));
            }
            print(&text)
        }
    }
}
