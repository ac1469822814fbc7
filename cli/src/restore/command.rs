//! `klio restore`'s command line: the arguments, turned into [`RestoreOptions`].

use std::path::PathBuf;

use clap::Args;
use klio_api::client::ClientError;
use klio_core::Lsn;

use super::{RestoreOptions, Target};
use crate::connection::{cluster_arg, ConnectionArgs};
use crate::output::{self, OutputFormat};
use crate::{print, print_json};

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

pub(crate) async fn restore(args: RestoreArgs) -> Result<(), ClientError> {
    let cluster = cluster_arg(args.cluster.as_deref())?;
    // The credentials are checked before anything else.
    let c = args.connection.client()?;
    let abs = |p: &std::path::Path, what: &str| {
        std::path::absolute(p)
            .map_err(|e| ClientError::Usage(format!("{what} {}: {e}", p.display())))
    };
    let target = if let Some(t) = args.target_time {
        if super::parse_timestamp(&t).is_none() {
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
    let summary = super::restore(&c, &opts).await?;
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
