//! `klio backup` and `klio offload`: start a base backup (streamed, or from a PGDATA copy
//! on the server, or with `--upload` from a copy read here and sent: [`upload`]) and,
//! with `--wait`, follow it to the end with a progress line ([`progress`]).

mod progress;
mod upload;

use std::path::PathBuf;

use clap::Args;
use klio_api::client::{Client, ClientError};
use klio_api::{BackupRequest, BackupStateView, BackupView, OffloadRequest};
use klio_core::Lsn;

use crate::connection::{cluster_arg, ConnectionArgs};
use crate::output::{self, OutputFormat};
use crate::{print, print_json};
use progress::ProgressDisplay;

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
    /// With --upload: on this machine's file system.
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// Read the copy here and send it to the server (which must set offload_uploads =
    /// true for the cluster), e.g. from a Job that mounts a volume snapshot.
    #[arg(long)]
    pub upload: bool,
    /// With --upload: the directory the copy and its tablespaces (the pg_tblspc links'
    /// targets) must lie in; nothing outside it is read. Default: --from itself.
    #[arg(long, value_name = "DIR", requires = "upload")]
    pub root: Option<PathBuf>,
    /// With --upload: the backup_label text pg_backup_stop returned, when the copy does
    /// not hold it (CloudNativePG keeps it on the VolumeSnapshot, annotation
    /// cnpg.io/backupLabelFile).
    #[arg(
        long,
        env = "KLIO_BACKUP_LABEL",
        value_name = "TEXT",
        requires = "upload",
        hide_env_values = true
    )]
    pub backup_label: Option<String>,
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

pub(crate) async fn backup(args: BackupArgs) -> Result<(), ClientError> {
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

pub(crate) async fn offload(args: OffloadArgs) -> Result<(), ClientError> {
    let cluster = cluster_arg(args.cluster.as_deref())?;
    let from = std::path::absolute(&args.from)
        .map_err(|e| ClientError::Usage(format!("--from {}: {e}", args.from.display())))?;
    let from = from
        .to_str()
        .ok_or_else(|| ClientError::Usage(format!("--from {}: not valid UTF-8", from.display())))?;
    let c = args.connection.client()?;
    if args.upload {
        let started = upload::upload(&c, &cluster, &args).await?;
        return finish_backup_command(&c, started, args.wait, args.output).await;
    }
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
