//! `klio demo`: a throwaway PostgreSQL, a server with embedded defaults, streaming,
//! a base backup and a PITR restore, with a report of what was verified. Everything
//! lives in a temporary directory removed at the end.

/// Options of `klio demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Keep the temporary directory (data, logs) instead of removing it at the end.
    #[arg(long)]
    pub keep: bool,
}

/// Runs the demo end to end.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("not implemented yet")
}
