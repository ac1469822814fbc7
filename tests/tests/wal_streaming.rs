//! WAL streaming end to end: what Klio stores and serves back is byte-identical to
//! the primary's own `pg_wal`, and PostgreSQL's `pg_waldump` reads it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use klio_core::{Lsn, TimelineId, WalFileName, WalSegSize};
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
    let compared = klio
        .compare_with_pg_wal("pg", &pg.wal_dir(), out.path(), &names)?
        .total();
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

/// One synchronous commit as seen from both sides.
struct SyncCommit {
    /// The WAL insert position just before COMMIT: the commit record ends after it.
    before: Lsn,
    /// The flush position Klio had reported to PostgreSQL when COMMIT returned.
    reported: Lsn,
    /// Klio's own durable position (its status), read after that.
    durable: Lsn,
    took: Duration,
}

/// Runs `n` single-row synchronous commits on `pg` and checks each: when COMMIT returns,
/// the flush position Klio reported (`pg_stat_replication.flush_lsn` of
/// `application_name = 'klio'`) is past the commit's WAL — PostgreSQL waited for Klio's
/// word, not for anyone else's — and Klio's own durable position is at or past what it
/// reported: it never acknowledged what it does not have.
fn synchronous_commits(
    pg: &PgInstance,
    klio: &KlioServer,
    cluster: &str,
    n: usize,
) -> Result<Vec<SyncCommit>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = pg.client().await?;
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS sync_probe (i int)")
            .await?;
        let mut commits = Vec::with_capacity(n);
        for i in 0..n {
            client
                .batch_execute(&format!("BEGIN; INSERT INTO sync_probe VALUES ({i})"))
                .await?;
            let before: String = client
                .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
                .await?
                .get(0);
            let start = std::time::Instant::now();
            client.batch_execute("COMMIT").await?;
            let took = start.elapsed();
            let reported: Option<String> = client
                .query_opt(
                    "SELECT flush_lsn::text FROM pg_stat_replication WHERE application_name = 'klio'",
                    &[],
                )
                .await?
                .and_then(|r| r.get(0));
            let reported = reported.context("klio is not in pg_stat_replication")?;
            let st = klio.status(cluster)?;
            let durable = st["flushed_lsn"].as_str().context("flushed_lsn")?;
            let c = SyncCommit {
                before: parse_lsn(&before)?,
                reported: parse_lsn(&reported)?,
                durable: parse_lsn(durable)?,
                took,
            };
            ensure!(
                c.reported > c.before,
                "commit {i} returned with Klio's reported flush at {reported}, not past the commit's WAL (after {before})"
            );
            ensure!(
                c.durable >= c.reported,
                "Klio reported {reported} flushed but has only {durable} durable"
            );
            commits.push(c);
        }
        Ok(commits)
    })
}

#[test]
fn synchronous_standby_acknowledges_commits() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new().synchronous_standby_names("klio"))?;
    let klio = KlioServer::start(vec![ClusterConf::new("sync", pg.replication_conninfo())])?;
    klio.wait_sync_standby(&pg, "sync")?;
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
    // Every acknowledged commit is at or below what Klio reported flushed, and that is
    // at or below what Klio has durable.
    let commits = synchronous_commits(&pg, &klio, "sync", 20)?;
    let last = commits.last().context("no probe commit")?;
    println!(
        "{processed} pgbench transactions, then {} probed commits; the last ended after {}, Klio reported {} flushed and had {} durable",
        commits.len(),
        last.before,
        last.reported,
        last.durable
    );
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
/// feature): a synchronous commit returns only after Klio's slow flush (and then Klio's
/// reported and durable positions are past it), Klio logs the slow flush with what it
/// means, and the fsync metrics show it.
#[test]
fn slow_tier1_disk_holds_commits_until_flushed_and_is_reported() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new().synchronous_standby_names("klio"))?;
    let mut klio = KlioServer::start(vec![ClusterConf::new("slow", pg.replication_conninfo())])?;
    klio.stop()?;
    klio.set_env("KLIO_TEST_FSYNC_DELAY_MS", Some("1500"));
    klio.restart()?;
    klio.wait_sync_standby(&pg, "slow")?;
    let commit = synchronous_commits(&pg, &klio, "slow", 1)?;
    let took = commit.first().context("no probe commit")?.took;
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
    // Ends within the segment it completes: the last one Klio must have sealed.
    let switched = standby.psql("SELECT pg_switch_wal()")?;
    let end = standby.psql("SELECT pg_current_wal_flush_lsn()")?;
    let st = klio.wait_timeline_flushed("tl", 2, &end, Duration::from_secs(120))?;
    println!("after promotion: {st}");

    // The history file is stored and identical to the server's.
    let (code, body) = klio.get("tl", "/v1/clusters/tl/wal/00000002.history")?;
    ensure!(code == 200, "00000002.history: HTTP {code}");
    let history = std::fs::read(standby.wal_dir().join("00000002.history"))?;
    ensure!(body == history);

    // What Klio must hold, from PostgreSQL's side: timeline 1 from where Klio started
    // up to the switch point (the switch segment itself as .partial), timeline 2 from the
    // switch segment to the one pg_switch_wal completed, each segment exactly once.
    let seg_size = WalSegSize::new(
        standby
            .psql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")?
            .parse()?,
    )?;
    let switch = String::from_utf8(history)?
        .lines()
        .find_map(|l| l.split_whitespace().nth(1).map(parse_lsn))
        .context("no switch point in 00000002.history")??;
    let first = *klio_tests::stream_starts(&klio.log())
        .first()
        .context("no 'streaming WAL' log line")?;
    let (first_seg, switch_seg) = (first.segno(seg_size).0, switch.segno(seg_size).0);
    let last_seg = parse_lsn(&switched)?.segno(seg_size).0;
    ensure!(
        switch.segment_offset(seg_size) != 0,
        "the switch point {switch} is at a segment boundary; the test expects it inside one"
    );
    let name = |tli: u32, segno: u64| {
        let tli = TimelineId::new(tli).expect("a timeline");
        WalFileName::segment(tli, klio_core::SegNo(segno), seg_size).to_string()
    };
    let expected: Vec<String> = (first_seg..switch_seg)
        .map(|s| name(1, s))
        .chain((switch_seg..=last_seg).map(|s| name(2, s)))
        .collect();
    let (want_tl1, want_tl2) = (switch_seg - first_seg, last_seg - switch_seg + 1);
    ensure!(
        want_tl1 >= 1 && want_tl2 >= 1,
        "segments on both timelines expected: {expected:?}"
    );
    let sealed = klio.sealed_segments("tl")?;
    ensure!(
        sealed == expected,
        "Klio's sealed segments are not the expected run:\n  Klio:     {sealed:?}\n  expected: {expected:?}"
    );
    let partial = format!("{}.partial", name(1, switch_seg));
    ensure!(
        klio.wal_names("tl")?.contains(&partial),
        "timeline 1's last segment {partial} is not stored"
    );

    // Each byte for byte against the promoted server's pg_wal, none skipped.
    let out = tempfile::tempdir()?;
    let mut files = expected.clone();
    files.push(partial.clone());
    let compared = klio.compare_with_pg_wal("tl", &standby.wal_dir(), out.path(), &files)?;
    ensure!(
        compared.on_timeline(1) as u64 == want_tl1 + 1 && compared.on_timeline(2) as u64 == want_tl2,
        "compared {compared}; expected {} on timeline 1 (with {partial}) and {want_tl2} on timeline 2",
        want_tl1 + 1
    );
    // Timeline 1's partial ends exactly at the switch point.
    let (_, body) = klio.get("tl", &format!("/v1/clusters/tl/wal/{partial}"))?;
    ensure!(
        body.len() as u64 == switch.segment_offset(seg_size),
        "{partial} holds {} bytes; the switch point is at byte {}",
        body.len(),
        switch.segment_offset(seg_size)
    );
    println!("identical to pg_wal: {compared}");
    Ok(())
}

/// Inserts ~20 KB rows, each its own synchronous commit (so Klio stores each flush as a
/// small, uncompressed frame), until `stop` is set. Commits wait while Klio is down.
fn sync_load(conninfo: String, stop: Arc<AtomicBool>) -> Result<u64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            // Random hex text: PostgreSQL's pglz leaves it as it is, zstd halves it.
            client
                .execute(
                    "INSERT INTO rows SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 600)",
                    &[],
                )
                .await?;
            n += 1;
        }
        Ok(n)
    })
}

/// Segments a synchronous standby writes commit by commit are stored plain on the
/// commit path and rewritten compressed in the background; a crash before and after
/// that rewrite's rename (failpoints `wal-recompress-rename` and
/// `wal-recompress-catalog`) loses nothing, every segment ends up compressed, and
/// every one reads back byte for byte as the primary's `pg_wal` has it.
#[test]
fn sync_path_segments_are_recompressed_and_survive_crashes_while_rewritten() -> Result<()> {
    let pg = PgInstance::start(
        PgOptions::new()
            .synchronous_standby_names("klio")
            .conf("wal_keep_size", "4GB"),
    )?;
    let mut klio = KlioServer::start(vec![ClusterConf::new("rc", pg.replication_conninfo())])?;
    klio.wait_sync_standby(&pg, "rc")?;
    pg.psql("CREATE TABLE rows (pad text)")?;
    let stop = Arc::new(AtomicBool::new(false));
    let loader = {
        let (c, s) = (pg.superuser_conninfo(), stop.clone());
        std::thread::spawn(move || sync_load(c, s))
    };
    for fp in ["wal-recompress-rename", "wal-recompress-catalog"] {
        klio.kill9();
        klio.set_env("KLIO_FAILPOINT", Some(fp));
        klio.spawn()?;
        let fired = klio.wait_exit(Duration::from_secs(120))?;
        klio.set_env("KLIO_FAILPOINT", None);
        ensure!(
            fired,
            "failpoint {fp} was never reached:\n{}",
            klio.log_tail(30)
        );
        ensure!(
            klio.log().contains(&format!("failpoint {fp} reached")),
            "Klio exited, but not at {fp}:\n{}",
            klio.log_tail(30)
        );
        klio.restart()?;
        klio.wait_sync_standby(&pg, "rc")?;
    }
    // Two more segments sealed and rewritten with nothing going wrong: the second one
    // this process created, so the writer fed it to the recompressor as it wrote it.
    let before = klio.sealed_segments("rc")?.len();
    klio_tests::wait_until(Duration::from_secs(180), "two more sealed segments", || {
        Ok(klio.sealed_segments("rc")?.len() >= (before + 2).max(3))
    })?;
    stop.store(true, Ordering::SeqCst);
    let rows = loader.join().expect("loader thread")?;
    let switch = pg.psql("SELECT pg_switch_wal()")?;
    let flush = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    ensure!(parse_lsn(&flush)? >= parse_lsn(&switch)?);
    klio.wait_flushed("rc", &flush, Duration::from_secs(120))?;

    let names = klio.sealed_segments("rc")?;
    ensure!(
        names.len() >= 3,
        "expected several sealed segments, got {names:?}"
    );
    // Every sealed segment ends up compressed in Tier 1 (plain, each would be larger
    // than the segment itself).
    let wal_dir = klio.layout().wal(&"rc".parse()?).path().to_path_buf();
    let seg = WalSegSize::DEFAULT.bytes();
    klio_tests::wait_until(
        Duration::from_secs(120),
        "every sealed segment to be recompressed",
        || {
            for n in &names {
                let len = std::fs::metadata(wal_dir.join(n))?.len();
                if len * 10 > seg * 8 {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    // The counter moves right after the rewrite's catalog write.
    let fed = klio.wait_status(
        "rc",
        Duration::from_secs(30),
        "a segment rewritten from what the writer fed the recompressor",
        |s| {
            s["wal_recompressed_from_memory"]
                .as_u64()
                .is_some_and(|n| n >= 1)
        },
    );
    ensure!(
        fed.is_ok(),
        "no segment was rewritten from what the writer fed the recompressor: {}",
        klio.status("rc")?
    );
    let out = tempfile::tempdir()?;
    let compared = klio
        .compare_with_pg_wal("rc", &pg.wal_dir(), out.path(), &names)?
        .total();
    ensure!(
        compared == names.len(),
        "compared {compared} of {}",
        names.len()
    );
    let leftovers: Vec<_> = std::fs::read_dir(&wal_dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    ensure!(leftovers.is_empty(), "left over: {leftovers:?}");
    println!(
        "{rows} commits of ~20 KB; {} sealed segments recompressed and identical to pg_wal",
        names.len()
    );
    Ok(())
}
