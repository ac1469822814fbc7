//! Base-backup benchmark: the same database backed up by `pg_basebackup -Ft
//! --compress=client-zstd` and by Klio (`klio backup --wait`: chunking, BLAKE3,
//! zstd, AES-256-GCM, dedup), in one invocation; then a second Klio backup after
//! updating ~1% of pgbench_accounts, to show what deduplication stores.
//!
//! Run: `cargo build --release --workspace --bins && KLIO_BIN=$CARGO_TARGET_DIR/release/klio \
//!       $CARGO_TARGET_DIR/release/klio-bench-backup [SCALE]` (pgbench scale, default 100 ≈ 1.5 GB).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use klio_tests::{ClusterConf, KlioServer};
use serde_json::Value;

fn main() -> Result<()> {
    let scale: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100);
    let pg = klio_tests::pgbench_database(scale)?;
    let db_bytes: u64 = pg
        .psql("SELECT sum(pg_database_size(oid)) FROM pg_database")?
        .parse()?;
    let mb = db_bytes as f64 / 1e6;
    eprintln!("{mb:.0} MB in the cluster's databases");

    let klio = KlioServer::start(vec![ClusterConf::new("bench", pg.replication_conninfo())])?;
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed("bench", &lsn, Duration::from_secs(600))?;

    // pg_basebackup: tar format, client-side zstd, no WAL (Klio streams WAL separately).
    let out = tempfile::tempdir()?;
    let t = Instant::now();
    let st = Command::new(pg.tool("pg_basebackup"))
        .arg("--dbname")
        .arg(pg.replication_conninfo())
        .arg("--pgdata")
        .arg(out.path().join("pgb"))
        .args([
            "--format=tar",
            "--compress=client-zstd",
            "--wal-method=none",
            "--checkpoint=fast",
            "--no-password",
        ])
        .status()
        .context("running pg_basebackup")?;
    let pgb_secs = t.elapsed().as_secs_f64();
    ensure!(st.success(), "pg_basebackup failed: {st}");
    let pgb_bytes = klio_tests::dir_size(&out.path().join("pgb"));
    drop(out);

    let t = Instant::now();
    klio.client_ok("bench", &["backup", "--wait", "--output", "json"])?;
    let klio_secs = t.elapsed().as_secs_f64();

    pg.psql(&format!(
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= {}",
        scale * 1000
    ))?;
    let t = Instant::now();
    let second: Value =
        serde_json::from_str(&klio.client_ok("bench", &["backup", "--wait", "--output", "json"])?)?;
    let second_secs = t.elapsed().as_secs_f64();
    let list: Value =
        serde_json::from_str(&klio.client_ok("bench", &["list", "backups", "--output", "json"])?)?;
    let first = &list["backups"][0];
    let num = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);

    let pgb_rate = mb / pgb_secs;
    let klio_rate = mb / klio_secs;
    println!("base backup of {mb:.0} MB (pgbench -i -s {scale}), no WAL in either");
    println!(
        "  pg_basebackup -Ft --compress=client-zstd : {pgb_secs:7.2} s  {pgb_rate:7.1} MB/s  {:.0} MB written",
        pgb_bytes as f64 / 1e6
    );
    println!(
        "  klio backup --wait                       : {klio_secs:7.2} s  {klio_rate:7.1} MB/s  {:.0} MB stored (zstd + AES-256-GCM + dedup)",
        num(first, "stored_bytes") as f64 / 1e6
    );
    println!(
        "  ratio klio/pg_basebackup throughput: {:.2}x",
        klio_rate / pgb_rate
    );
    println!(
        "  second klio backup after updating 1% of pgbench_accounts: {second_secs:.2} s, {:.1} MB new = {:.1}% of the first backup's stored bytes",
        num(&second, "new_bytes") as f64 / 1e6,
        num(&second, "new_bytes") as f64 * 100.0 / num(first, "stored_bytes").max(1) as f64
    );
    Ok(())
}
