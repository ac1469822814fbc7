//! WAL streaming end to end: what Klio stores and serves back is byte-identical to
//! the primary's own `pg_wal`, and PostgreSQL's `pg_waldump` reads it.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use klio_tests::{parse_lsn, ClusterConf, KlioServer, PgInstance, PgOptions};

#[test]
fn sealed_segments_read_back_identical_and_pg_waldump_reads_them() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new().conf("wal_keep_size", "4GB"))?;
    let klio = KlioServer::start(vec![ClusterConf::new("pg", pg.replication_conninfo())])?;
    klio.wait_status("pg", Duration::from_secs(60), "streaming", |v| {
        v["state"] == "streaming"
    })?;

    pg.pgbench(&["-i", "-s", "10"])?;
    pg.pgbench(&["-T", "5", "-c", "2"])?;
    let switch = pg.psql("SELECT pg_switch_wal()")?;
    let flush = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed("pg", &flush, Duration::from_secs(120))?;

    let names = klio.sealed_segments("pg")?;
    ensure!(
        names.len() >= 5,
        "expected several sealed segments, got {names:?}"
    );
    let out = tempfile::tempdir()?;
    let compared = klio.compare_with_pg_wal("pg", &pg.wal_dir(), out.path(), &names)?;
    ensure!(
        compared == names.len(),
        "compared {compared} of {} segments",
        names.len()
    );
    println!("compared {compared} sealed segments byte for byte with pg_wal");

    // pg_waldump decodes every record from the first restored segment to the switch.
    let first = &names[0];
    let start = format!(
        "{:X}/{:X}",
        u64::from_str_radix(&first[8..16], 16)?,
        u64::from_str_radix(&first[16..24], 16)? << 24
    );
    let o = std::process::Command::new(pg.tool("pg_waldump"))
        .arg("--path")
        .arg(out.path())
        .args(["--start", &start, "--end", &switch, "--quiet"])
        .output()?;
    ensure!(
        o.status.success(),
        "pg_waldump failed on read-back WAL: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    ensure!(parse_lsn(&switch)? > parse_lsn(&start)?);
    Ok(())
}

/// Waits until Klio streams `cluster` and the primary counts it as its sync standby.
fn await_sync_standby(klio: &KlioServer, pg: &PgInstance, cluster: &str) -> Result<()> {
    klio.wait_status(cluster, Duration::from_secs(60), "streaming", |v| {
        v["state"] == "streaming"
    })?;
    klio_tests::wait_until(
        Duration::from_secs(30),
        "klio to be the sync standby",
        || {
            Ok(pg.psql(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'klio'",
            )? == "sync")
        },
    )
}

#[test]
fn synchronous_standby_acknowledges_commits() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new().synchronous_standby_names("klio"))?;
    let klio = KlioServer::start(vec![ClusterConf::new("sync", pg.replication_conninfo())])?;
    await_sync_standby(&klio, &pg, "sync")?;
    pg.pgbench(&["-i", "-s", "1"])?;
    let out = pg.pgbench(&["-N", "-c", "4", "-T", "5"])?;
    let processed: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|s| s.split('/').next())
        .context("pgbench output without a transaction count")?
        .trim()
        .parse()?;
    ensure!(processed > 0, "no transaction committed: {out}");
    // Every acknowledged commit is at or below what Klio reported flushed.
    let commit_lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    let flush =
        pg.psql("SELECT flush_lsn FROM pg_stat_replication WHERE application_name = 'klio'")?;
    ensure!(parse_lsn(&flush)? > 0, "klio reported no flush position");
    println!("{processed} synchronous transactions committed; primary at {commit_lsn}, klio flushed {flush}");
    // The flushes those commits waited for are counted and timed, in the status and
    // as metrics: a DBA's view of the disk's share of each commit.
    let st = klio.status("sync")?;
    let fsyncs = st["wal_fsyncs"].as_u64().context("wal_fsyncs")?;
    let micros = st["wal_fsync_micros"]
        .as_u64()
        .context("wal_fsync_micros")?;
    ensure!(fsyncs > 0 && micros > 0, "{st}");
    let metrics = klio.metrics()?;
    let seconds: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("klio_wal_fsync_seconds_total{cluster=\"sync\"} "))
        .context("no klio_wal_fsync_seconds_total")?
        .parse()?;
    ensure!(seconds > 0.0, "{metrics}");
    ensure!(
        metrics.contains("klio_wal_fsyncs_total{cluster=\"sync\"} "),
        "{metrics}"
    );
    println!(
        "{fsyncs} WAL fdatasyncs, {:.0} us each on average",
        micros as f64 / fsyncs as f64
    );
    Ok(())
}

/// A slow Tier 1 disk (every WAL fdatasync delayed by 1.5 s, injected with the `testing`
/// feature): a synchronous commit returns only after Klio's slow flush, Klio logs the
/// slow flush with what it means, and the fsync metrics show it.
#[test]
fn slow_tier1_disk_holds_commits_until_flushed_and_is_reported() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new().synchronous_standby_names("klio"))?;
    let mut klio = KlioServer::start(vec![ClusterConf::new("slow", pg.replication_conninfo())])?;
    klio.stop()?;
    klio.set_env("KLIO_TEST_FSYNC_DELAY_MS", Some("1500"));
    klio.restart()?;
    await_sync_standby(&klio, &pg, "slow")?;
    pg.psql("CREATE TABLE t (i int)")?;
    let start = std::time::Instant::now();
    pg.psql("INSERT INTO t VALUES (1)")?;
    let took = start.elapsed();
    ensure!(
        took >= Duration::from_millis(1500),
        "a synchronous commit returned after {took:?}, before Klio's 1.5 s flush could end"
    );
    klio_tests::wait_until(
        Duration::from_secs(30),
        "the slow flush to be logged",
        || Ok(klio.log().contains("a WAL fdatasync on Tier 1 took")),
    )?;
    let st = klio.status("slow")?;
    let fsyncs = st["wal_fsyncs"].as_u64().context("wal_fsyncs")?;
    let micros = st["wal_fsync_micros"]
        .as_u64()
        .context("wal_fsync_micros")?;
    ensure!(
        fsyncs > 0 && micros / fsyncs >= 1_500_000,
        "mean flush {} us over {fsyncs}: {st}",
        micros / fsyncs.max(1)
    );
    println!(
        "commit took {took:?}; {fsyncs} flushes, mean {} ms",
        micros / fsyncs / 1000
    );
    Ok(())
}

#[test]
fn follows_promotion_to_timeline_2() -> Result<()> {
    let primary = PgInstance::start(PgOptions::new().conf("wal_keep_size", "4GB"))?;
    let standby = primary.start_standby(PgOptions::new().conf("wal_keep_size", "4GB"))?;
    let klio = KlioServer::start(vec![ClusterConf::new("tl", standby.replication_conninfo())])?;
    klio.wait_status("tl", Duration::from_secs(60), "streaming", |v| {
        v["state"] == "streaming"
    })?;

    primary.pgbench(&["-i", "-s", "3"])?;
    primary.psql("SELECT pg_switch_wal()")?;
    primary.psql("CHECKPOINT")?;
    let target = primary.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio_tests::wait_until(Duration::from_secs(60), "standby replay", || {
        Ok(parse_lsn(&standby.psql("SELECT pg_last_wal_replay_lsn()")?)? >= parse_lsn(&target)?)
    })?;
    klio.wait_flushed("tl", &target, Duration::from_secs(60))?;

    standby.promote()?;
    standby.pgbench(&["-T", "3", "-c", "2"])?;
    standby.psql("SELECT pg_switch_wal()")?;
    let end = standby.psql("SELECT pg_current_wal_flush_lsn()")?;
    let st = klio.wait_timeline_flushed("tl", 2, &end, Duration::from_secs(120))?;
    println!("after promotion: {st}");

    // The history file is stored and identical to the server's.
    let (code, body) = klio.get("tl", "/v1/clusters/tl/wal/00000002.history")?;
    ensure!(code == 200, "00000002.history: HTTP {code}");
    ensure!(body == std::fs::read(standby.wal_dir().join("00000002.history"))?);

    let names = klio.sealed_segments("tl")?;
    let out = tempfile::tempdir()?;
    klio.compare_with_pg_wal("tl", &standby.wal_dir(), out.path(), &names)?;
    let on_tl1 = names.iter().filter(|n| n.starts_with("00000001")).count();
    let on_tl2 = names.iter().filter(|n| n.starts_with("00000002")).count();
    ensure!(
        on_tl1 >= 1 && on_tl2 >= 1,
        "segments on both timelines expected: {names:?}"
    );
    // Every segment was compared with the promoted server's own copy where it still has one;
    // at least one per timeline must have been.
    let compared_tl2 = names
        .iter()
        .filter(|n| n.starts_with("00000002") && standby.wal_dir().join(n).exists())
        .count();
    ensure!(compared_tl2 >= 1, "no timeline 2 segment to compare");
    Ok(())
}
