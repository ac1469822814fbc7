//! Synchronous-commit benchmark: `pgbench -N -c 8` TPS with no synchronous standby,
//! with `pg_receivewal --synchronous` as the synchronous standby, and with Klio as the
//! synchronous standby, in one invocation, printed side by side.
//!
//! Run: `KLIO_BIN=$CARGO_TARGET_DIR/debug/klio $CARGO_TARGET_DIR/debug/klio-bench-sync [SECONDS]`
//! (default 30).

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use klio_tests::{wait_until, ClusterConf, KlioServer, PgInstance, PgOptions};

fn tps(pg: &PgInstance, secs: u32) -> Result<f64> {
    let out = pg.pgbench(&["-N", "-c", "8", "-j", "2", "-T", &secs.to_string()])?;
    out.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no tps in pgbench output:\n{out}"))
}

fn set_sync_names(pg: &PgInstance, names: &str) -> Result<()> {
    pg.psql(&format!(
        "ALTER SYSTEM SET synchronous_standby_names = '{names}'"
    ))?;
    pg.psql("SELECT pg_reload_conf()")?;
    Ok(())
}

fn wait_sync(pg: &PgInstance, app: &str) -> Result<()> {
    wait_until(
        Duration::from_secs(60),
        &format!("{app} as sync standby"),
        || {
            Ok(pg.psql(&format!(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = '{app}'"
            ))? == "sync")
        },
    )
}

fn main() -> Result<()> {
    let secs: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(30);
    let pg = PgInstance::start(PgOptions::new().conf("max_wal_size", "4GB"))?;
    pg.pgbench(&["-i", "-s", "10"])?;

    eprintln!("no synchronous standby: pgbench -N -c 8 -T {secs}");
    let alone = tps(&pg, secs)?;

    eprintln!("pg_receivewal --synchronous as the synchronous standby");
    pg.psql("SELECT pg_create_physical_replication_slot('rw', true)")?;
    let dir = tempfile::tempdir()?;
    let mut rw = Command::new(pg.tool("pg_receivewal"))
        .arg("--dbname")
        .arg(format!(
            "{} application_name=pg_receivewal",
            pg.replication_conninfo()
        ))
        .arg("--directory")
        .arg(dir.path())
        .args(["--slot", "rw", "--synchronous", "--no-password"])
        .stderr(Stdio::null())
        .spawn()?;
    set_sync_names(&pg, "pg_receivewal")?;
    wait_sync(&pg, "pg_receivewal")?;
    let with_rw = tps(&pg, secs);
    let _ = rw.kill();
    let _ = rw.wait();
    let with_rw = with_rw?;
    pg.psql("SELECT pg_drop_replication_slot('rw')")?;

    eprintln!("Klio as the synchronous standby");
    let klio = KlioServer::start(vec![ClusterConf::new("bench", pg.replication_conninfo())])?;
    set_sync_names(&pg, "klio")?;
    wait_sync(&pg, "klio")?;
    let with_klio = tps(&pg, secs)?;
    drop(klio);
    set_sync_names(&pg, "")?;

    println!("synchronous commit, pgbench -N -c 8 -j 2 -T {secs} (scale 10)");
    println!("  no synchronous standby        : {alone:8.0} tps");
    println!("  pg_receivewal --synchronous   : {with_rw:8.0} tps");
    println!("  klio (zstd + AES-256-GCM)     : {with_klio:8.0} tps");
    println!("  ratio klio/pg_receivewal: {:.2}x", with_klio / with_rw);
    println!(
        "  klio reaches {:.0}% of the no-standby TPS",
        100.0 * with_klio / alone
    );
    Ok(())
}
