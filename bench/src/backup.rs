//! Base-backup benchmark: the same database backed up, in rotated rounds, by
//! `pg_basebackup -Ft` (no compression; client-side zstd at its default level; client-side
//! zstd level 1 on 2 workers, its best comparable setting; server-side zstd level 1 on 2
//! workers) and by `klio backup --wait` (chunking, BLAKE3, zstd, AES-256-GCM, dedup)
//! into a fresh Klio server each round (so dedup never meets a previous round's chunks).
//! Then a second Klio backup after updating ~1% of pgbench_accounts shows what dedup
//! stores, and that backup is restored, recovered, `pg_verifybackup`ed and its tables
//! compared with the source's.
//!
//! Run: `cargo build --release -p klio -p klio-bench && KLIO_BIN=$CARGO_TARGET_DIR/release/klio \
//!       $CARGO_TARGET_DIR/release/klio-bench-backup [SCALE] [ROUNDS]`
//! (pgbench scale, default 100 ≈ 1.5 GB; 3 rounds). Each phase writes into a temp dir
//! removed after it.

use std::cell::RefCell;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use klio_bench::checks::{same_tables, table_digest, PGBENCH_TABLES};
use klio_bench::replication::drop_slot;
use klio_bench::rounds::{self, Arm, Sample};
use klio_tests::{ClusterConf, KlioServer, PgInstance, PgOptions};
use serde_json::Value;

fn pg_basebackup(pg: &PgInstance, mb: f64, compress: &str) -> Result<Sample> {
    let out = tempfile::tempdir()?;
    let t = Instant::now();
    let st = Command::new(pg.tool("pg_basebackup"))
        .arg("--dbname")
        .arg(pg.replication_conninfo())
        .arg("--pgdata")
        .arg(out.path().join("pgb"))
        .args([
            "--format=tar",
            &format!("--compress={compress}"),
            "--wal-method=none",
            "--checkpoint=fast",
            "--no-password",
        ])
        .status()
        .context("running pg_basebackup")?;
    let secs = t.elapsed().as_secs_f64();
    ensure!(st.success(), "pg_basebackup failed: {st}");
    let written = klio_tests::dir_size(&out.path().join("pgb")) as f64 / 1e6;
    ensure!(
        out.path().join("pgb/backup_manifest").is_file(),
        "pg_basebackup wrote no backup_manifest"
    );
    Ok(Sample::new()
        .with("secs", secs)
        .with("MB_per_s", mb / secs)
        .with("MB_written", written))
}

/// A fresh Klio server streaming `pg`, replacing (and first removing) the previous one.
fn fresh_klio(pg: &PgInstance, slot: &RefCell<Option<KlioServer>>) -> Result<()> {
    if slot.borrow_mut().take().is_some() {
        drop_slot(pg, "klio")?;
    }
    let klio = KlioServer::start(vec![ClusterConf::new("bench", pg.replication_conninfo())])?;
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed("bench", &lsn, Duration::from_secs(600))?;
    *slot.borrow_mut() = Some(klio);
    Ok(())
}

fn klio_backup(klio: &KlioServer, mb: f64) -> Result<Sample> {
    let t = Instant::now();
    let b: Value =
        serde_json::from_str(&klio.client_ok("bench", &["backup", "--wait", "--output", "json"])?)?;
    let secs = t.elapsed().as_secs_f64();
    let stored = b["stored_bytes"]
        .as_u64()
        .with_context(|| format!("no stored_bytes in the backup's JSON: {b}"))?;
    Ok(Sample::new()
        .with("secs", secs)
        .with("MB_per_s", mb / secs)
        .with("MB_written", stored as f64 / 1e6))
}

fn main() -> Result<()> {
    let scale: u32 = klio_bench::arg(1, 100)?;
    let rounds: usize = klio_bench::arg(2, 3)?;
    let pg = klio_tests::pgbench_database(scale)?;
    let db_bytes: u64 = pg
        .psql("SELECT sum(pg_database_size(oid)) FROM pg_database")?
        .parse()?;
    let mb = db_bytes as f64 / 1e6;
    eprintln!("{mb:.0} MB in the cluster's databases");

    let server: RefCell<Option<KlioServer>> = RefCell::new(None);
    let mut arms = [
        Arm::new("pg_basebackup -Ft (none)", |_| {
            pg_basebackup(&pg, mb, "none")
        }),
        Arm::new("pg_basebackup -Ft client-zstd", |_| {
            pg_basebackup(&pg, mb, "client-zstd")
        }),
        Arm::new("pg_basebackup client-zstd:level=1,workers=2", |_| {
            pg_basebackup(&pg, mb, "client-zstd:level=1,workers=2")
        }),
        Arm::new("pg_basebackup server-zstd:level=1,workers=2", |_| {
            pg_basebackup(&pg, mb, "server-zstd:level=1,workers=2")
        }),
        Arm::new("klio backup --wait", |_| {
            fresh_klio(&pg, &server)?;
            let s = server.borrow();
            klio_backup(s.as_ref().context("no Klio server")?, mb)
        }),
    ];
    let title = format!("base backup of {mb:.0} MB (pgbench -i -s {scale}), no WAL in either");
    let res = rounds::run(&title, &mut arms, rounds)?;
    drop(arms);
    res.print();
    let k = res.median("klio backup --wait", "MB_per_s")?;
    for peer in [
        "pg_basebackup -Ft (none)",
        "pg_basebackup -Ft client-zstd",
        "pg_basebackup client-zstd:level=1,workers=2",
        "pg_basebackup server-zstd:level=1,workers=2",
    ] {
        println!(
            "  ratio klio/{peer} throughput (medians): {:.2}x",
            k / res.median(peer, "MB_per_s")?
        );
    }

    // Dedup: a second backup into the last round's server after a 1% update.
    let server = server.into_inner().context("no Klio round ran")?;
    let first_mb = res.values("klio backup --wait", "MB_written")?;
    pg.psql(&format!(
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= {}",
        scale * 1000
    ))?;
    pg.psql("CHECKPOINT")?;
    let t = Instant::now();
    let second: Value = serde_json::from_str(
        &server.client_ok("bench", &["backup", "--wait", "--output", "json"])?,
    )?;
    let second_secs = t.elapsed().as_secs_f64();
    let new_mb = second["new_bytes"].as_u64().unwrap_or(0) as f64 / 1e6;
    println!(
        "  second klio backup after updating 1% of pgbench_accounts: {second_secs:.2} s, {new_mb:.1} MB new = {:.1}% of the first backup's stored bytes",
        new_mb * 100.0 / first_mb.last().copied().unwrap_or(f64::NAN)
    );

    // The check: that backup restored, verified, recovered, same tables as the source.
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    server.wait_flushed("bench", &lsn, Duration::from_secs(600))?;
    let expected = table_digest(&pg, &PGBENCH_TABLES)?;
    let restored = server.restore_and_recover("bench", None, PgOptions::new())?;
    same_tables(&restored.pg, &expected, "the restored second backup")?;
    println!("  check: the second backup restored, pg_verifybackup clean, recovered, pgbench tables identical to the source");
    Ok(())
}
