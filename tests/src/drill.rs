//! Restore drills shared by the end-to-end tests: a backup restored with `klio restore`
//! into a new data directory, checked with PostgreSQL's own `pg_verifybackup`, started,
//! and recovered through `klio wal-restore`; table checksums are the oracle. Writes the
//! restored instance's directory (a temp dir, removed on drop).

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::{wait_until, ClientTools, KlioServer, PgInstance, PgOptions};

/// One line per table: its name, row count and an md5 of its rows in a stable order.
pub fn table_checksums(pg: &PgInstance, tables: &[&str]) -> Result<String> {
    let mut out = String::new();
    for t in tables {
        let sum = pg.psql(&format!(
            "SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '') FROM {t} x"
        ))?;
        out.push_str(&format!("{t} {sum}\n"));
    }
    Ok(out)
}

/// A PostgreSQL restored from Klio and recovered (promoted), with the client tools its
/// `restore_command` used.
pub struct Restored {
    pub pg: PgInstance,
    _tools: ClientTools,
}

impl KlioServer {
    /// Restores `backup` (an id; `None`: the newest complete one) of `cluster` with
    /// `klio restore` into a new data directory for `opts` (e.g. another major), checks it
    /// with `pg_verifybackup` against the `backup_manifest` it must carry, starts it and
    /// waits until recovery through `klio wal-restore` has replayed Klio's WAL and ended.
    pub fn restore_and_recover(
        &self,
        cluster: &str,
        backup: Option<&str>,
        opts: PgOptions,
    ) -> Result<Restored> {
        let tools = self.tools_for_postgres(cluster)?;
        let mut pg = PgInstance::empty(opts)?;
        let mut cmd = Command::new(&tools.bin);
        cmd.arg("restore")
            .args([
                "--cluster",
                cluster,
                "--server",
                &self.url(),
                "--token-file",
            ])
            .arg(&tools.token)
            .arg("--pgdata")
            .arg(pg.data_dir());
        if let Some(id) = backup {
            cmd.args(["--backup", id]);
        }
        let out = cmd.output()?;
        ensure!(
            out.status.success(),
            "klio restore of {cluster} ({}) failed: {}\n{}",
            backup.unwrap_or("latest"),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            pg.data_dir().join("backup_manifest").is_file(),
            "the restored data directory has no backup_manifest to verify it against"
        );
        // PostgreSQL's own check of the restored files against the backup's manifest.
        let v = Command::new(pg.tool("pg_verifybackup"))
            .arg("--no-parse-wal")
            .arg(pg.data_dir())
            .output()
            .with_context(|| format!("running {}", pg.tool("pg_verifybackup").display()))?;
        ensure!(
            v.status.success(),
            "pg_verifybackup of the restored {cluster}: {}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
        pg.start_restored(&[])?;
        wait_until(
            Duration::from_secs(120),
            "recovery from Klio's WAL to end",
            || Ok(pg.psql("SELECT pg_is_in_recovery()")? == "f"),
        )
        .with_context(|| format!("log:\n{}", pg.log_tail(40)))?;
        Ok(Restored { pg, _tools: tools })
    }
}
