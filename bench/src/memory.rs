//! Memory benchmark: peak RSS (VmHWM, reset between activities) of one Klio server
//! protecting 1 and 4 clusters (each its own PostgreSQL), in rotated rounds, during four
//! activities: catching up a backlog (`pgbench -i` run on every cluster before the server
//! starts, retained by its slot), streaming while every cluster runs `pgbench -i` again,
//! a base backup of every cluster at once, and serving the restore of the first cluster
//! (`klio restore`, then recovery through `klio wal-restore`), whose tables are then
//! compared with the source's.
//!
//! Run: `cargo build --release -p klio -p klio-bench && KLIO_BIN=$CARGO_TARGET_DIR/release/klio \
//!       $CARGO_TARGET_DIR/release/klio-bench-memory [SCALE] [ROUNDS]`
//! (pgbench scale per cluster, default 20 ≈ 300 MB of WAL per load; 3 rounds). Everything
//! it writes is in temp dirs removed after each phase.

use std::time::Duration;

use anyhow::{Context, Result};
use klio_bench::checks::{same_tables, table_digest, PGBENCH_TABLES};
use klio_bench::host::{peak_rss_mb, reset_peak_rss};
use klio_bench::rounds::{self, Arm, Sample};
use klio_tests::{ClusterConf, KlioServer, PgInstance, PgOptions};

/// Runs `pgbench -i -s scale` on every instance at once.
fn load_all(pgs: &[PgInstance], scale: u32) -> Result<()> {
    std::thread::scope(|s| {
        let loads: Vec<_> = pgs
            .iter()
            .map(|pg| s.spawn(move || pg.pgbench(&["-i", "-s", &scale.to_string()])))
            .collect();
        for l in loads {
            l.join()
                .map_err(|_| anyhow::anyhow!("a pgbench thread panicked"))??;
        }
        Ok(())
    })
}

/// Waits until Klio has flushed every cluster's current WAL (after a segment switch).
fn caught_up(klio: &KlioServer, pgs: &[PgInstance]) -> Result<()> {
    for (i, pg) in pgs.iter().enumerate() {
        pg.psql("SELECT pg_switch_wal()")?;
        let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
        klio.wait_flushed(&format!("c{i}"), &lsn, Duration::from_secs(1800))?;
    }
    Ok(())
}

/// The four peaks (MB) of a server protecting `n` clusters.
fn run(n: usize, scale: u32) -> Result<Sample> {
    let pgs: Vec<PgInstance> = (0..n)
        .map(|_| {
            let pg = PgInstance::start(PgOptions::new().conf("max_wal_size", "4GB"))?;
            pg.psql("SELECT pg_create_physical_replication_slot('klio', true)")?;
            Ok(pg)
        })
        .collect::<Result<_>>()?;
    load_all(&pgs, scale)?;
    let confs = pgs
        .iter()
        .enumerate()
        .map(|(i, pg)| ClusterConf::new(&format!("c{i}"), pg.replication_conninfo()))
        .collect();

    let klio = KlioServer::start(confs)?;
    let pid = klio.pid().context("the Klio server is not running")?;
    caught_up(&klio, &pgs)?;
    let catchup = peak_rss_mb(pid)?;

    reset_peak_rss(pid)?;
    load_all(&pgs, scale)?;
    caught_up(&klio, &pgs)?;
    let stream = peak_rss_mb(pid)?;

    reset_peak_rss(pid)?;
    std::thread::scope(|s| {
        let jobs: Vec<_> = (0..n)
            .map(|i| {
                let klio = &klio;
                s.spawn(move || klio.client_ok(&format!("c{i}"), &["backup", "--wait"]))
            })
            .collect();
        for j in jobs {
            j.join()
                .map_err(|_| anyhow::anyhow!("a backup thread panicked"))??;
        }
        anyhow::Ok(())
    })?;
    let backup = peak_rss_mb(pid)?;

    let expected = table_digest(&pgs[0], &PGBENCH_TABLES)?;
    caught_up(&klio, &pgs)?;
    reset_peak_rss(pid)?;
    let restored = klio.restore_and_recover("c0", None, PgOptions::new())?;
    let restore = peak_rss_mb(pid)?;
    same_tables(&restored.pg, &expected, "the restored first cluster")?;

    Ok(Sample::new()
        .with("catchup_MB", catchup)
        .with("stream_MB", stream)
        .with("backup_MB", backup)
        .with("restore_MB", restore))
}

fn main() -> Result<()> {
    let scale: u32 = klio_bench::arg(1, 20)?;
    let rounds: usize = klio_bench::arg(2, 3)?;
    let mut arms = [
        Arm::new("1 cluster", |_| run(1, scale)),
        Arm::new("4 clusters", |_| run(4, scale)),
    ];
    let title =
        format!("peak RSS (VmHWM) of the Klio server, pgbench -i -s {scale} per cluster and load");
    let res = rounds::run(&title, &mut arms, rounds)?;
    res.print();
    println!("  targets: 1 cluster <= 64 MB, each additional cluster <= 8 MB (medians)");
    for m in ["catchup_MB", "stream_MB", "backup_MB", "restore_MB"] {
        let one = res.median("1 cluster", m)?;
        let four = res.median("4 clusters", m)?;
        let per = (four - one) / 3.0;
        println!(
            "  {m:<11}: 1 cluster {one:6.1} MB ({}), 4 clusters {four:6.1} MB, per additional cluster {per:5.1} MB ({})",
            if one <= 64.0 { "met" } else { "MISSED" },
            if per <= 8.0 { "met" } else { "MISSED" }
        );
    }
    Ok(())
}
