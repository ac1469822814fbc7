//! `klio verify`: ask the server to read every backup back and check the WAL chain.

use clap::Args;
use klio_api::client::ClientError;
use klio_api::VerifyRequest;

use crate::connection::{cluster_arg, ConnectionArgs};
use crate::output::{self, OutputFormat};
use crate::{print, print_json};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[arg(long, env = "KLIO_CLUSTER", value_name = "NAME")]
    pub cluster: Option<String>,
    /// Only this backup (default: every complete backup).
    #[arg(long, value_name = "ID")]
    pub backup: Option<klio_core::BackupId>,
    #[arg(long, short, value_enum, default_value_t)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

pub(crate) async fn verify(args: VerifyArgs) -> Result<(), ClientError> {
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
