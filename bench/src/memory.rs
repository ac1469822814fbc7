//! Memory benchmark: peak RSS of one Klio server ingesting WAL from 1 cluster and from
//! 4 clusters at once (each cluster its own PostgreSQL generating WAL with
//! `pgbench -i`), printed side by side with the cost per additional cluster.
//!
//! Run: `KLIO_BIN=$CARGO_TARGET_DIR/debug/klio $CARGO_TARGET_DIR/debug/klio-bench-memory [SCALE]`
//! (pgbench scale per cluster, default 20 ≈ 300 MB of WAL each).

use std::time::Duration;

use anyhow::Result;
use klio_tests::{ClusterConf, KlioServer, PgInstance, PgOptions};

/// Peak RSS (MB) of a server streaming `n` clusters while each generates WAL.
fn run(n: usize, scale: u32) -> Result<f64> {
    let pgs: Vec<PgInstance> = (0..n)
        .map(|_| PgInstance::start(PgOptions::new().conf("max_wal_size", "4GB")))
        .collect::<Result<_>>()?;
    let confs = pgs
        .iter()
        .enumerate()
        .map(|(i, pg)| ClusterConf::new(&format!("c{i}"), pg.replication_conninfo()))
        .collect();
    let klio = KlioServer::start(confs)?;
    for (i, pg) in pgs.iter().enumerate() {
        let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
        klio.wait_flushed(&format!("c{i}"), &lsn, Duration::from_secs(120))?;
    }
    std::thread::scope(|s| -> Result<()> {
        let loads: Vec<_> = pgs
            .iter()
            .map(|pg| s.spawn(move || pg.pgbench(&["-i", "-s", &scale.to_string()])))
            .collect();
        for l in loads {
            l.join().expect("pgbench thread")?;
        }
        Ok(())
    })?;
    for (i, pg) in pgs.iter().enumerate() {
        pg.psql("SELECT pg_switch_wal()")?;
        let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
        klio.wait_flushed(&format!("c{i}"), &lsn, Duration::from_secs(600))?;
    }
    let kib = klio.pid().and_then(klio_tests::peak_rss_kib).unwrap_or(0);
    Ok(kib as f64 / 1024.0)
}

fn main() -> Result<()> {
    let scale: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20);
    let one = run(1, scale)?;
    let four = run(4, scale)?;
    println!("peak RSS of the Klio server while ingesting (pgbench -i -s {scale} per cluster)");
    println!("  1 cluster  : {one:6.1} MB   (target <= 64 MB)");
    println!("  4 clusters : {four:6.1} MB");
    println!(
        "  per additional cluster: {:.1} MB   (target <= 8 MB)",
        (four - one) / 3.0
    );
    Ok(())
}
