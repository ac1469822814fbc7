//! Catch-up ingest benchmark: WAL retained by two slots at the same position is
//! consumed once by `pg_receivewal` and once by Klio (compression and encryption on),
//! and the throughputs are printed side by side with Klio's peak RSS.
//!
//! Run: `cargo build --release --workspace --bins && KLIO_BIN=$CARGO_TARGET_DIR/release/klio \
//!       $CARGO_TARGET_DIR/release/klio-bench-ingest [SCALE]` (pgbench scale, default 70 ≈ 1.1 GB of WAL).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use klio_tests::{parse_lsn, ClusterConf, KlioServer, PgInstance, PgOptions};

fn main() -> Result<()> {
    let scale: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(70);
    let pg = PgInstance::start(
        PgOptions::new()
            .conf("max_wal_size", "8GB")
            .conf("checkpoint_timeout", "1h")
            .conf("wal_keep_size", "8GB"),
    )?;
    pg.psql("SELECT pg_create_physical_replication_slot('klio', true)")?;
    pg.psql("SELECT pg_create_physical_replication_slot('rw', true)")?;
    let start = pg.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'klio'")?;
    eprintln!("generating WAL: pgbench -i -s {scale} ...");
    pg.pgbench(&["-i", "-s", &scale.to_string()])?;
    pg.psql("SELECT pg_switch_wal()")?;
    let end = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    // WAL past the end point, so neither client waits for a keepalive to notice it.
    pg.psql("CREATE TABLE bench_tail AS SELECT generate_series(1, 100000) AS i")?;
    let bytes = parse_lsn(&end)? - parse_lsn(&start)?;
    ensure!(bytes > 0, "no WAL generated");
    let mb = bytes as f64 / 1e6;
    eprintln!("{mb:.0} MB of WAL retained from {start} to {end}");

    // pg_receivewal (the reference C client), same slot position.
    let out = tempfile::tempdir()?;
    let conninfo = pg.replication_conninfo();
    let t = Instant::now();
    let st = Command::new(pg.tool("pg_receivewal"))
        .arg("--dbname")
        .arg(&conninfo)
        .arg("--directory")
        .arg(out.path())
        .args([
            "--slot",
            "rw",
            "--endpos",
            &end,
            "--no-loop",
            "--no-password",
        ])
        .status()
        .context("running pg_receivewal")?;
    let rw_secs = t.elapsed().as_secs_f64();
    ensure!(st.success(), "pg_receivewal failed: {st}");

    // Klio, from its own slot at the same position.
    let t = Instant::now();
    let mut conf = ClusterConf::new("bench", conninfo);
    conf.slot = "klio".into();
    let klio = KlioServer::start(vec![conf])?;
    klio.wait_flushed("bench", &end, Duration::from_secs(3600))?;
    let klio_secs = t.elapsed().as_secs_f64();
    let rss = klio.pid().and_then(klio_tests::peak_rss_kib).unwrap_or(0);

    let rw_rate = mb / rw_secs;
    let klio_rate = mb / klio_secs;
    println!("catch-up ingest of {mb:.0} MB of WAL (pgbench -i -s {scale})");
    println!("  pg_receivewal : {rw_secs:7.2} s  {rw_rate:7.1} MB/s");
    println!("  klio          : {klio_secs:7.2} s  {klio_rate:7.1} MB/s  (zstd + AES-256-GCM; includes server start)");
    println!(
        "  ratio klio/pg_receivewal throughput: {:.2}x",
        klio_rate / rw_rate
    );
    println!("  klio peak RSS: {:.1} MB", rss as f64 / 1024.0);
    Ok(())
}
