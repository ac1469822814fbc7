//! Catch-up ingest benchmark: a backlog of WAL retained by a keeper slot is consumed, in
//! rotated rounds, by `pg_receivewal` (plain, and with `--compress=lz4`, the best its
//! PostgreSQL 15 version offers) and by a fresh Klio server (zstd + AES-256-GCM), each from
//! a copy of the keeper slot, so every phase streams the same bytes from the same start.
//! Klio's time includes its server start; its peak RSS (VmHWM) during the catch-up is
//! printed with it.
//!
//! Run: `cargo build --release -p klio -p klio-bench && KLIO_BIN=$CARGO_TARGET_DIR/release/klio \
//!       $CARGO_TARGET_DIR/release/klio-bench-ingest [SCALE] [ROUNDS]`
//! (pgbench scale, default 70 ≈ 1.1 GB of WAL; 3 rounds). Writes each phase's copy into
//! a temp dir, removed after the phase.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use klio_bench::host::peak_rss_mb;
use klio_bench::replication::{copy_slot, drop_slot, kept_backlog, KeptBacklog};
use klio_bench::rounds::{self, Arm, Sample};
use klio_tests::{parse_lsn, ClusterConf, KlioServer, PgInstance};

/// The WAL every phase consumes.
struct Backlog {
    end: String,
    mb: f64,
    /// Segments from the keeper slot's segment to the end's (inclusive).
    segments: u64,
}

/// `pg_receivewal --endpos` from a copy of the keeper slot; checks it wrote every segment.
fn pg_receivewal(pg: &PgInstance, wal: &Backlog, extra: &[&str]) -> Result<Sample> {
    copy_slot(pg, "keeper", "rw")?;
    let out = tempfile::tempdir()?;
    let t = Instant::now();
    let st = Command::new(pg.tool("pg_receivewal"))
        .arg("--dbname")
        .arg(pg.replication_conninfo())
        .arg("--directory")
        .arg(out.path())
        .args([
            "--slot",
            "rw",
            "--endpos",
            &wal.end,
            "--no-loop",
            "--no-password",
        ])
        .args(extra)
        .status()
        .context("running pg_receivewal")?;
    let secs = t.elapsed().as_secs_f64();
    drop_slot(pg, "rw")?;
    ensure!(st.success(), "pg_receivewal failed: {st}");
    let files = std::fs::read_dir(out.path())?.count() as u64;
    ensure!(
        files >= wal.segments,
        "pg_receivewal wrote {files} files for {} segments",
        wal.segments
    );
    let mb_on_disk = klio_tests::dir_size(out.path()) as f64 / 1e6;
    Ok(Sample::new()
        .with("secs", secs)
        .with("MB_per_s", wal.mb / secs)
        .with("MB_on_disk", mb_on_disk))
}

/// A fresh Klio server from a copy of the keeper slot, until it has flushed the end.
fn klio(pg: &PgInstance, wal: &Backlog) -> Result<Sample> {
    copy_slot(pg, "keeper", "klio")?;
    let t = Instant::now();
    let mut conf = ClusterConf::new("bench", pg.replication_conninfo());
    conf.slot = "klio".into();
    let klio = KlioServer::start(vec![conf])?;
    klio.wait_flushed("bench", &wal.end, Duration::from_secs(3600))?;
    let secs = t.elapsed().as_secs_f64();
    let pid = klio.pid().context("the Klio server is not running")?;
    let rss = peak_rss_mb(pid)?;
    let sealed = klio.sealed_segments("bench")?.len() as u64;
    ensure!(
        sealed + 1 >= wal.segments,
        "Klio sealed {sealed} segments of {}",
        wal.segments
    );
    let mb_on_disk = klio_tests::dir_size(&klio.data_dir()) as f64 / 1e6;
    drop(klio);
    drop_slot(pg, "klio")?;
    Ok(Sample::new()
        .with("secs", secs)
        .with("MB_per_s", wal.mb / secs)
        .with("MB_on_disk", mb_on_disk)
        .with("peak_RSS_MB", rss))
}

fn main() -> Result<()> {
    let scale: u32 = klio_bench::arg(1, 70)?;
    let rounds: usize = klio_bench::arg(2, 3)?;
    let KeptBacklog { pg, start, end } = kept_backlog(scale)?;
    let seg: u64 = pg
        .psql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")?
        .parse()?;
    let (s, e) = (parse_lsn(&start)?.0, parse_lsn(&end)?.0);
    ensure!(e > s, "no WAL generated");
    let wal = Backlog {
        mb: (e - s) as f64 / 1e6,
        // The end is just past a switch: its own segment holds nothing to wait for.
        segments: (e - 1) / seg - s / seg + 1,
        end,
    };
    eprintln!(
        "{:.0} MB of WAL retained from {start} to {}",
        wal.mb, wal.end
    );

    let mut arms = [
        Arm::new("pg_receivewal", |_| pg_receivewal(&pg, &wal, &[])),
        Arm::new("pg_receivewal --compress=lz4", |_| {
            pg_receivewal(&pg, &wal, &["--compress=lz4"])
        }),
        Arm::new("klio (zstd + AES-256-GCM)", |_| klio(&pg, &wal)),
    ];
    let title = format!(
        "catch-up ingest of {:.0} MB of WAL (pgbench -i -s {scale}); klio's time includes its server start",
        wal.mb
    );
    let res = rounds::run(&title, &mut arms, rounds)?;
    res.print();
    let k = res.median("klio (zstd + AES-256-GCM)", "MB_per_s")?;
    for peer in ["pg_receivewal", "pg_receivewal --compress=lz4"] {
        println!(
            "  ratio klio/{peer} throughput (medians): {:.2}x",
            k / res.median(peer, "MB_per_s")?
        );
    }
    Ok(())
}
