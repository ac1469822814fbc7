//! The Klio Server proper: starts one receiver per configured cluster, the HTTP API
//! and the background workers, and supervises them until shutdown.

use crate::config::Config;

/// Runs the server described by `config` until SIGTERM/SIGINT.
pub async fn run_server(config: Config) -> anyhow::Result<()> {
    let _ = config;
    anyhow::bail!("not implemented yet")
}
