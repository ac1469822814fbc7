//! Synchronous-commit benchmark: `pgbench -N` against one PostgreSQL with no synchronous
//! standby, with `pg_receivewal --synchronous`, with a PostgreSQL physical streaming
//! standby (`pg_basebackup` of the primary, walreceiver, same disk) and with a Klio
//! server as the only synchronous standby, in rotated rounds. Each phase runs pgbench at
//! 1, 4, 8, 16 and 64 clients and reads TPS and the per-transaction latencies (p50, p99)
//! from pgbench's `-l` logs; Klio is compared at each point with the better of
//! pg_receivewal and the physical standby.
//!
//! Run: `cargo build --release -p klio -p klio-bench && KLIO_BIN=$CARGO_TARGET_DIR/release/klio \
//!       $CARGO_TARGET_DIR/release/klio-bench-sync [SECONDS] [ROUNDS]`
//! (default 10 s per client count, 5 rounds after a warm-up of 3 s per client count).
//! Writes pgbench's logs into the primary's instance directory (removed after reading).
//!
//! `klio-bench-sync strace DIR [SECONDS]` instead runs `pgbench -N -c 1` once per standby
//! with `strace -f -tt -T` on the process that receives, flushes and acknowledges WAL
//! (pg_receivewal, the walreceiver, the Klio server), keeps the logs in DIR and prints
//! each one's round trip (socket read → flush → status update);
//! `klio-bench-sync strace-summary LOG...` prints that summary of logs kept earlier, and
//! `klio-bench-sync round-trips TRACE...` the round trips of walsender traces kept earlier
//! (see `KLIO_BENCH_WALSENDER_TRACE` below).
//! `klio-bench-sync probe CLIENTS [SECONDS] [ROUNDS]` runs one client count under the
//! standbys (and `pg_receivewal --compress=lz4`) in rotated rounds and prints the latency
//! tail with what the standby's process used (CPU and run-queue wait per transaction, per
//! thread) and how many commits each of its flushes covered (`tx_per_flush`, from a
//! `perf stat` count of its `fsync`/`fdatasync` calls; the curve prints it per client
//! count too), the standby's peak RSS (`peak_rss_mb`, VmHWM of a process started for the
//! phase), with the primary's WAL per commit and the mean time of the primary's own
//! WAL fsync (`wal_kb_per_tx`, `primary_sync_us`, from `pg_stat_wal`: the standby shares
//! the disk, so its I/O can slow the primary's flush, which every commit waits for);
//! what reached the shared disk per commit (`disk_kb_per_tx`, `disk_writes_per_tx`,
//! `disk_flushes_per_tx` and the device's mean flush time `disk_flush_us`, from
//! `/proc/diskstats`: the primary's and the standby's I/O together);
//! for a Klio server, the commits made while its recompressor rewrote a segment against
//! the others (`tx_in_rewrite_pct`, `p50/p99_in_rewrite_ms`, `p50/p99_outside_rewrite_ms`,
//! from an inotify watch on its WAL directory; `rewrites_fed` and `rewrites_from_file`,
//! from its status at the end of the phase, say how many segments were rewritten from
//! what the writer fed the idle thread and how many read back from their files, in the
//! curve too); `KLIO_BENCH_REWRITE_DETAIL=1` also prints
//! where in each rewrite the commits over 3 ms fell, and `KLIO_BENCH_RECOMPRESS_STRACE=DIR`
//! keeps an `strace -ttt -T` of its idle recompressor thread with those commits' times);
//! like the curve, each probe run starts after a checkpoint with the tables prewarmed.
//! With `KLIO_BENCH_PERF_RECORD=DIR` it also keeps a `perf record -g` profile of the
//! standby, with `KLIO_BENCH_PERF_TRACE=DIR` a `perf trace` of every flush and
//! write on the host with pgbench's logs; `KLIO_BENCH_RATE=TPS` runs every arm at that
//! offered load (`pgbench -R`) instead of as fast as it can; with
//! `KLIO_BENCH_WALSENDER_TRACE=DIR` it also prints the standby's round trip as the
//! primary's walsender sees it (`rt_p50_us`, `rt_p99_us`: WAL sent → reply read, from a
//! `perf trace` of the walsender alone, kept in DIR; see `klio_bench::walsender`);
//! `klio-bench-sync fill [WRITES] [ROUNDS]` compares zero-fill write sizes by the CPU
//! of the commit-sized writes that follow (`klio_bench::fill`).
//! `KLIO_BENCH_BLOCK_TRACE=DIR` keeps a `perf record` of every block request on the host
//! (DIR/block-<standby pid>.data), which `klio-bench-sync block-summary FILE...` cuts into
//! each commit's steps as the device sees them (at 1 client; see
//! `klio_bench::blocktrace`); `KLIO_BENCH_PERF_CALL_GRAPH=dwarf` makes
//! `KLIO_BENCH_PERF_RECORD` unwind with DWARF (release builds keep no frame pointers);
//! Each latency verdict also splits the rounds in halves by how busy the host was (the
//! no-standby arm's figure in the same round) and prints the ratio in each half.
//! `KLIO_BENCH_CLIENTS=1,64` runs the curve at those of its client counts only (TPS is
//! judged only when 8 is among them), so a long run can settle a few points;
//! `KLIO_BIN_B=PATH` (probe and curve) adds a second Klio build as an arm of its own: an
//! A/B of a change in the same rounds, or, with the same build as both, the noise floor
//! of a ratio on this host.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};
use klio_bench::host::DiskCounters;
use klio_bench::perf::{self, interrupt};
use klio_bench::recompress_windows;
use klio_bench::replication::{drop_slot, set_sync_names, wait_sync};
use klio_bench::rounds::{self, Arm, Pass, Sample};
use klio_bench::walsender;
use klio_tests::{ClusterConf, KlioServer, PgInstance, PgOptions};

/// Client counts of the latency curve; TPS is compared at [`TPS_CLIENTS`].
const CLIENTS: [u32; 5] = [1, 4, 8, 16, 64];
const TPS_CLIENTS: u32 = 8;
/// The curve's arm without a synchronous standby: the primary alone, whose figures in a
/// round also tell how busy the host was then.
const NO_STANDBY: &str = "no synchronous standby";

/// The client counts a curve runs: [`CLIENTS`], or those of them named in
/// `KLIO_BENCH_CLIENTS` (comma-separated), so that many rounds can go to the points a
/// shorter run left unsettled.
fn curve_clients() -> Result<Vec<u32>> {
    match std::env::var("KLIO_BENCH_CLIENTS") {
        Err(std::env::VarError::NotPresent) => Ok(CLIENTS.to_vec()),
        Err(e) => anyhow::bail!("KLIO_BENCH_CLIENTS: {e}"),
        Ok(v) => parse_clients(&v),
    }
}

/// A comma-separated subset of [`CLIENTS`], in [`CLIENTS`]' order.
fn parse_clients(v: &str) -> Result<Vec<u32>> {
    let mut named = Vec::new();
    for part in v.split(',').map(str::trim) {
        let c: u32 = part
            .parse()
            .with_context(|| format!("KLIO_BENCH_CLIENTS: {part:?} is not a client count"))?;
        ensure!(
            CLIENTS.contains(&c),
            "KLIO_BENCH_CLIENTS: {c} is not one of the curve's client counts {CLIENTS:?}"
        );
        named.push(c);
    }
    Ok(CLIENTS.into_iter().filter(|c| named.contains(c)).collect())
}
const WARM_UP_SECS: u32 = 3;

/// The `tps = …` figure of pgbench's output.
fn parse_tps(out: &str) -> Result<f64> {
    out.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no tps in pgbench output:\n{out}"))
}

/// The `q` quantile (0..1) of sorted values, nearest rank.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// `pgbench -N` at `clients` for `secs` with per-transaction logs in a fresh directory:
/// pgbench's output and that directory.
/// With `rate`, pgbench runs at that many transactions a second (`-R`) instead of as fast
/// as it can; its logged latency then excludes the schedule lag.
fn logged_pgbench(
    pg: &PgInstance,
    clients: u32,
    secs: u32,
    rate: Option<u32>,
) -> Result<(String, PathBuf)> {
    let dir = pg.owned_dir("pgbench-log")?;
    for e in std::fs::read_dir(&dir)? {
        std::fs::remove_file(e?.path())?;
    }
    let prefix = format!("--log-prefix={}", dir.join("tx").display());
    let (clients, jobs, secs) = (
        clients.to_string(),
        clients.min(2).to_string(),
        secs.to_string(),
    );
    let rate = rate.map(|r| r.to_string());
    let mut args = vec![
        "-N", "-c", &clients, "-j", &jobs, "-T", &secs, "-l", &prefix,
    ];
    if let Some(r) = &rate {
        args.extend(["-R", r.as_str()]);
    }
    let out = pg.pgbench(&args)?;
    Ok((out, dir))
}

/// One pgbench run at `clients`: adds `c{n}_tps`, `c{n}_p50_ms`, `c{n}_p99_ms` to `s`.
fn pgbench_point(
    pg: &PgInstance,
    standby: Option<u32>,
    clients: u32,
    secs: u32,
    s: Sample,
) -> Result<Sample> {
    let counter = match standby {
        Some(pid) => Some(perf::FlushCounter::start(pid, &flush_count_file(pid))?),
        None => None,
    };
    let wal_before = primary_wal(pg)?;
    let (out, dir) = logged_pgbench(pg, clients, secs, None)?;
    let wal_after = primary_wal(pg)?;
    let flushes = counter.map(perf::FlushCounter::finish).transpose()?;
    let tps = parse_tps(&out)?;
    let mut lat: Vec<f64> = read_timed_latencies(&dir)?
        .into_iter()
        .map(|t| t.1)
        .collect();
    ensure!(
        !lat.is_empty(),
        "pgbench at {clients} clients logged no transaction"
    );
    lat.sort_by(f64::total_cmp);
    let mut s = s
        .with(format!("c{clients}_tps"), tps)
        .with(format!("c{clients}_p50_ms"), quantile(&lat, 0.50) / 1000.0)
        .with(format!("c{clients}_p99_ms"), quantile(&lat, 0.99) / 1000.0);
    s = with_primary_wal(s, &format!("c{clients}_"), wal_before, wal_after, lat.len());
    if let Some(n) = flushes {
        s = s.with(
            format!("c{clients}_tx_per_flush"),
            lat.len() as f64 / n.max(1) as f64,
        );
    }
    Ok(s)
}

/// The primary's own WAL so far (`pg_stat_wal`): bytes, fsyncs and their total time
/// in ms (`track_wal_io_timing` is on). The standby shares the primary's disk, so what
/// it writes and flushes can slow the primary's own WAL flush, which every commit also
/// waits for.
fn primary_wal(pg: &PgInstance) -> Result<[f64; 3]> {
    let row = pg.psql("SELECT wal_bytes, wal_sync, wal_sync_time FROM pg_stat_wal")?;
    let v = row
        .split('|')
        .map(|f| f.trim().parse::<f64>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("odd pg_stat_wal row {row:?}"))?;
    ensure!(v.len() == 3, "odd pg_stat_wal row {row:?}");
    Ok([v[0], v[1], v[2]])
}

/// Adds `prefix`wal_kb_per_tx (WAL per commit) and `prefix`primary_sync_us (the mean
/// time of the primary's own WAL fsync) from two [`primary_wal`] readings.
fn with_primary_wal(
    s: Sample,
    prefix: &str,
    before: [f64; 3],
    after: [f64; 3],
    tx: usize,
) -> Sample {
    let syncs = (after[1] - before[1]).max(1.0);
    s.with(
        format!("{prefix}wal_kb_per_tx"),
        (after[0] - before[0]) / 1024.0 / tx.max(1) as f64,
    )
    .with(
        format!("{prefix}primary_sync_us"),
        (after[2] - before[2]) * 1000.0 / syncs,
    )
}

/// Where `perf stat` writes the flush count of process `pid` (removed once read).
fn flush_count_file(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("klio-bench-flushes-{pid}.csv"))
}

/// The whole curve, right after a checkpoint and with the pgbench tables and indexes read
/// back into shared buffers (the page cache was dropped before the phase), so every
/// phase starts from the same point.
/// `standby` is the pid of the synchronous standby's process, whose flush calls are
/// counted at each point (`cN_tx_per_flush`: commits per flush).
fn curve(
    pg: &PgInstance,
    standby: Option<u32>,
    pass: Pass,
    secs: u32,
    clients: &[u32],
) -> Result<Sample> {
    let secs = if pass == Pass::WarmUp {
        WARM_UP_SECS
    } else {
        secs
    };
    checkpoint_and_prewarm(pg)?;
    let mut s = Sample::new();
    for &c in clients {
        s = pgbench_point(pg, standby, c, secs, s)?;
    }
    Ok(s)
}

/// A checkpoint, then the pgbench tables and indexes read back into shared buffers (the
/// page cache was dropped before the phase): where every curve and probe run starts.
fn checkpoint_and_prewarm(pg: &PgInstance) -> Result<()> {
    pg.psql("CHECKPOINT")?;
    pg.psql(
        "CREATE EXTENSION IF NOT EXISTS pg_prewarm;\n\
         SELECT sum(pg_prewarm(oid)) FROM pg_class WHERE relname LIKE 'pgbench%' AND relkind IN ('r', 'i')",
    )?;
    Ok(())
}

/// What runs while a standby is the synchronous one; gets the pid of the standby's
/// process that receives, flushes and acknowledges WAL.
type Measure<'a> = &'a dyn Fn(u32) -> Result<Sample>;

/// `pg_receivewal --synchronous` into a fresh directory as the synchronous standby.
fn with_pg_receivewal(pg: &PgInstance, measure: Measure) -> Result<Sample> {
    with_pg_receivewal_args(pg, &[], measure)
}

/// `pg_receivewal --synchronous` with `extra` arguments (e.g. `--compress=lz4`).
fn with_pg_receivewal_args(pg: &PgInstance, extra: &[&str], measure: Measure) -> Result<Sample> {
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
        .args(extra)
        .stderr(Stdio::null())
        .spawn()?;
    set_sync_names(pg, "pg_receivewal")?;
    let result = wait_sync(pg, "pg_receivewal").and_then(|()| measure(rw.id()));
    let _ = rw.kill();
    let _ = rw.wait();
    set_sync_names(pg, "")?;
    drop_slot(pg, "rw")?;
    result
}

/// A fresh physical streaming standby (pg_basebackup of the primary, same disk) as the
/// synchronous standby; its walreceiver is the process measured.
fn with_physical_standby(pg: &PgInstance, measure: Measure) -> Result<Sample> {
    let standby = pg.start_standby(
        PgOptions::new()
            .application_name("standby")
            .conf("max_connections", "100"),
    )?;
    set_sync_names(pg, "standby")?;
    let result = wait_sync(pg, "standby").and_then(|()| {
        let pid = standby
            .psql("SELECT pid FROM pg_stat_wal_receiver")?
            .parse()
            .context("no walreceiver pid")?;
        measure(pid)
    });
    set_sync_names(pg, "")?;
    drop(standby);
    result
}

/// The arm of the second Klio build (`KLIO_BIN_B=PATH`): two builds compared in the
/// same rotated rounds (an A/B of a change), or one build twice (the noise floor of a
/// ratio on this host).
const KLIO_B: &str = "klio (KLIO_BIN_B)";

/// Runs `f` with `KLIO_BIN` (which the harness reads when it starts a server) set to
/// `bin`, then restores it. Nothing else runs meanwhile (edition 2021: set_var is safe).
fn with_klio_bin<T>(bin: &std::ffi::OsStr, f: impl FnOnce() -> T) -> T {
    let a = std::env::var_os("KLIO_BIN");
    std::env::set_var("KLIO_BIN", bin);
    let r = f();
    match &a {
        Some(a) => std::env::set_var("KLIO_BIN", a),
        None => std::env::remove_var("KLIO_BIN"),
    }
    r
}

/// A fresh Klio server as the synchronous standby.
fn with_klio(pg: &PgInstance, measure: Measure) -> Result<Sample> {
    let klio = KlioServer::start(vec![ClusterConf::new("bench", pg.replication_conninfo())])?;
    set_sync_names(pg, "klio")?;
    let pid = klio.pid().context("the Klio server is not running")?;
    let result = wait_sync(pg, "klio").and_then(|()| measure(pid));
    // How the segments the phase sealed were rewritten compressed so far: from what the
    // writer fed the idle thread, or read back from their files (a feed cut short).
    let result = result.and_then(|sample| {
        let st = klio.status("bench")?;
        let count = |k: &str| st[k].as_u64().map(|n| n as f64);
        Ok(
            match (
                count("wal_recompressed_from_memory"),
                count("wal_recompressed_from_file"),
            ) {
                (Some(fed), Some(file)) => sample
                    .with("rewrites_fed", fed)
                    .with("rewrites_from_file", file),
                _ => sample,
            },
        )
    });
    drop(klio);
    set_sync_names(pg, "")?;
    drop_slot(pg, "klio")?;
    result
}

/// `pgbench -N -c 1` for `secs` with `strace -f -tt -T` attached to `pid`, into `log`;
/// prints the summary of the round trips.
fn traced(pg: &PgInstance, pid: u32, secs: u32, log: &Path) -> Result<Sample> {
    let strace = perf::strace(&["-f", "-tt", "-T"], log, pid)?;
    let out = pg.pgbench(&["-N", "-c", "1", "-T", &secs.to_string()]);
    interrupt(strace)?;
    let out = out?;
    let tps = parse_tps(&out)?;
    println!("  under strace, 1 client: {tps:.0} tps");
    print!("  {}", klio_bench::syscalls::summarize(log)?);
    Ok(Sample::new().with("c1_tps_straced", tps))
}

/// `klio-bench-sync strace DIR [SECONDS]`: each standby's single-client round trip
/// under strace, logs kept in DIR.
fn strace_mode(pg: &PgInstance, dir: &Path, secs: u32) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    println!("single-client commit round trip of each synchronous standby, strace -f -tt -T, pgbench -N -c 1 -T {secs}");
    println!("pg_receivewal --synchronous:");
    with_pg_receivewal(pg, &|pid| {
        traced(pg, pid, secs, &dir.join("pg_receivewal.strace"))
    })?;
    println!("physical standby (walreceiver):");
    with_physical_standby(pg, &|pid| {
        traced(pg, pid, secs, &dir.join("walreceiver.strace"))
    })?;
    println!("klio (all threads of the server):");
    with_klio(pg, &|pid| traced(pg, pid, secs, &dir.join("klio.strace")))?;
    Ok(())
}

/// CPU time and run-queue wait (ns) of every thread of `pid`, by thread name, from
/// `/proc/<pid>/task/*/schedstat` (time on a CPU, time waiting for one, timeslices).
fn thread_times(pid: u32) -> Result<Vec<(String, [u64; 3])>> {
    let mut out: Vec<(String, [u64; 3])> = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("process {pid} is gone"))?
    {
        let dir = e?.path();
        // A thread that ended between the listing and the read is left out.
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("schedstat")),
        ) else {
            continue;
        };
        let mut v = [0u64; 3];
        for (slot, f) in v.iter_mut().zip(stat.split_whitespace()) {
            *slot = f.parse().context("odd schedstat")?;
        }
        let name = comm.trim().to_owned();
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, t)) => (0..3).for_each(|i| t[i] += v[i]),
            None => out.push((name, v)),
        }
    }
    Ok(out)
}

/// What each thread (by name) of `pid` used between `before` and now, in ms, busiest
/// first: `name cpu/runq-wait/slices`.
fn thread_delta(pid: u32, before: &[(String, [u64; 3])]) -> Result<(f64, f64, String)> {
    let after = thread_times(pid)?;
    let mut rows: Vec<(String, f64, f64, u64)> = after
        .into_iter()
        .map(|(n, a)| {
            let b = before
                .iter()
                .find(|(m, _)| *m == n)
                .map_or([0; 3], |(_, t)| *t);
            let d = |i: usize| a[i].saturating_sub(b[i]);
            (n, d(0) as f64 / 1e6, d(1) as f64 / 1e6, d(2))
        })
        .filter(|r| r.3 > 0)
        .collect();
    rows.sort_by(|x, y| y.1.total_cmp(&x.1));
    let cpu = rows.iter().map(|r| r.1).sum();
    let wait = rows.iter().map(|r| r.2).sum();
    let text = rows
        .iter()
        .map(|(n, c, w, k)| format!("{n} {c:.0}/{w:.0}/{k}"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok((cpu, wait, text))
}

/// The id of `pid`'s thread named `name`, if it has one.
fn thread_id(pid: u32, name: &str) -> Option<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(|e| e.ok())
        .find(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .and_then(|e| e.file_name().to_str()?.parse().ok())
}

/// pgbench's per-transaction (end time µs since the epoch, latency µs) from the `-l`
/// logs in `dir` (removed after reading). A line is `client_id transaction_no time
/// script_no time_epoch time_us [schedule_lag]`.
fn read_timed_latencies(dir: &Path) -> Result<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        for line in std::fs::read_to_string(&path)?.lines() {
            let f: Vec<f64> = line
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            ensure!(
                f.len() >= 6,
                "odd pgbench log line in {}: {line}",
                path.display()
            );
            out.push((f[4] * 1e6 + f[5], f[2]));
        }
        std::fs::remove_file(&path)?;
    }
    Ok(out)
}

/// Slow transactions (above `limit_us`) grouped into stalls: slow ones ending within
/// 2 ms of each other waited for the same thing. Returns (slow, stalls).
fn stalls(tx: &[(f64, f64)], limit_us: f64) -> (usize, usize) {
    let mut ends: Vec<f64> = tx.iter().filter(|t| t.1 > limit_us).map(|t| t.0).collect();
    ends.sort_by(f64::total_cmp);
    let groups = ends.windows(2).filter(|w| w[1] - w[0] > 2000.0).count();
    (ends.len(), if ends.is_empty() { 0 } else { groups + 1 })
}

/// One probed pgbench run at `clients` while the standby's process `pid` is measured.
fn probe_point(
    pg: &PgInstance,
    pid: u32,
    clients: u32,
    secs: u32,
    rate: Option<u32>,
) -> Result<Sample> {
    checkpoint_and_prewarm(pg)?;
    // KLIO_BENCH_PERF_TRACE=DIR: every flush system call on the host during the run,
    // with its duration (`perf trace`), into DIR/<standby pid>.trace.
    let perf = match std::env::var_os("KLIO_BENCH_PERF_TRACE") {
        Some(d) => {
            let out = Path::new(&d).join(format!("{pid}.trace"));
            let child = perf::trace(&["-a", "-e", "fdatasync,fsync,pwrite64,write"], &out)?;
            std::thread::sleep(std::time::Duration::from_millis(500));
            Some(child)
        }
        None => None,
    };
    // KLIO_BENCH_PERF_RECORD=DIR: CPU profile of the standby's process (`perf record -g`)
    // into DIR/<pid>.data; KLIO_BENCH_PERF_CALL_GRAPH=dwarf unwinds with DWARF instead of
    // frame pointers (which release builds do not keep).
    let record = match std::env::var_os("KLIO_BENCH_PERF_RECORD") {
        Some(d) => Some(
            Command::new("perf")
                .args(["record", "-F", "1999", "-p", &pid.to_string()])
                .arg(format!(
                    "--call-graph={}",
                    std::env::var("KLIO_BENCH_PERF_CALL_GRAPH").unwrap_or_else(|_| "fp".into())
                ))
                .arg("-o")
                .arg(Path::new(&d).join(format!("{pid}.data")))
                .stderr(Stdio::null())
                .spawn()
                .context("running perf record")?,
        ),
        None => None,
    };
    // KLIO_BENCH_BLOCK_TRACE=DIR: every request issued to and completed by a block
    // device on the host during the run (`perf record` of the block tracepoints), into
    // DIR/block-<standby pid>.data; `klio-bench-sync block-summary` reads it.
    let block = match std::env::var_os("KLIO_BENCH_BLOCK_TRACE") {
        Some(d) => Some(perf::record_block(
            &Path::new(&d).join(format!("block-{pid}.data")),
        )?),
        None => None,
    };
    // KLIO_BENCH_WALSENDER_TRACE=DIR: the standby's round trip as the walsender sees
    // it (`perf trace` of the walsender alone), into DIR/walsender-<standby pid>.trace.
    let walsender = match std::env::var_os("KLIO_BENCH_WALSENDER_TRACE") {
        Some(d) => {
            let ws: u32 = pg
                .psql("SELECT pid FROM pg_stat_replication WHERE state = 'streaming'")?
                .trim()
                .parse()
                .context("not exactly one streaming walsender")?;
            let out = Path::new(&d).join(format!("walsender-{pid}.trace"));
            Some(walsender::Tracer::start(ws, &out)?)
        }
        None => None,
    };
    // The standby's flush calls (all its threads; for Klio also the catalog's and the
    // recompressor's few), counted in the kernel: how many commits each flush covers.
    let flushes = perf::FlushCounter::start(pid, &flush_count_file(pid))?;
    // A Klio server's recompression windows (inotify on its WAL directory), to cut
    // the commits by: made while a segment was being rewritten, or not.
    let rewrites = match recompress_windows::wal_dir_of(pid) {
        Some(d) => Some(recompress_windows::Watcher::start(&d)?),
        None => None,
    };
    // KLIO_BENCH_RECOMPRESS_STRACE=DIR: the system calls of a Klio server's idle
    // recompressor thread alone (`strace -ttt -T`, wall-clock times), into
    // DIR/recompress-<pid>.strace, with the slow commits beside them.
    let recompress_strace = match (
        std::env::var_os("KLIO_BENCH_RECOMPRESS_STRACE"),
        thread_id(pid, "klio-recompress"),
    ) {
        (Some(d), Some(tid)) => {
            let log = Path::new(&d).join(format!("recompress-{pid}.strace"));
            Some((perf::strace(&["-ttt", "-T"], &log, tid)?, d))
        }
        _ => None,
    };
    let before = thread_times(pid)?;
    let wal_before = primary_wal(pg)?;
    let disk_before = DiskCounters::read(pg.data_dir())?;
    let (out, dir) = logged_pgbench(pg, clients, secs, rate)?;
    let disk_after = DiskCounters::read(pg.data_dir())?;
    let wal_after = primary_wal(pg)?;
    let (cpu, wait, threads) = thread_delta(pid, &before)?;
    // The standby's peak RSS since it started (it starts afresh for every phase): for a
    // Klio server, this includes what its recompressor holds of the segments fed to it.
    let peak_rss = klio_bench::host::peak_rss_mb(pid)?;
    let flushes = flushes.finish()?;
    let trips = match walsender {
        Some(t) => {
            let mut v = t.finish()?;
            v.sort_by(f64::total_cmp);
            Some(v)
        }
        None => None,
    };
    if let Some(child) = record {
        interrupt(child)?;
    }
    if let Some(child) = block {
        interrupt(child)?;
    }
    if let Some(child) = perf {
        interrupt(child)?;
        // Keep pgbench's log beside the trace.
        if let Some(d) = std::env::var_os("KLIO_BENCH_PERF_TRACE") {
            for e in std::fs::read_dir(&dir)? {
                let e = e?;
                std::fs::copy(
                    e.path(),
                    Path::new(&d).join(format!("{pid}.{}", e.file_name().to_string_lossy())),
                )?;
            }
        }
    }
    let tps = parse_tps(&out)?;
    let tx = read_timed_latencies(&dir)?;
    ensure!(!tx.is_empty(), "pgbench logged no transaction");
    if let Some((child, d)) = recompress_strace {
        interrupt(child)?;
        let slow: String = tx
            .iter()
            .filter(|t| t.1 > 3000.0)
            .map(|(end, lat)| format!("{:.0} {end:.0}\n", end - lat))
            .collect();
        std::fs::write(Path::new(&d).join(format!("slow-{pid}.txt")), slow)?;
    }
    let mut lat: Vec<f64> = tx.iter().map(|t| t.1).collect();
    lat.sort_by(f64::total_cmp);
    let p50 = quantile(&lat, 0.50);
    let (slow, stall_count) = stalls(&tx, 5000.0);
    println!("    pid {pid}, threads (cpu ms/run-queue wait ms/slices): {threads}");
    let mut sample = Sample::new()
        .with("tps", tps)
        .with("p50_ms", p50 / 1000.0)
        .with("p99_ms", quantile(&lat, 0.99) / 1000.0)
        .with("p999_ms", quantile(&lat, 0.999) / 1000.0)
        .with("max_ms", lat[lat.len() - 1] / 1000.0)
        .with("over5ms", slow as f64)
        .with("stalls", stall_count as f64)
        .with("cpu_us_per_tx", cpu * 1000.0 / tx.len() as f64)
        .with("runq_us_per_tx", wait * 1000.0 / tx.len() as f64)
        .with("tx_per_flush", tx.len() as f64 / flushes.max(1) as f64)
        .with("peak_rss_mb", peak_rss);
    sample = with_primary_wal(sample, "", wal_before, wal_after, tx.len());
    // The disk the primary and the standby share: what reached the device per commit.
    let n = tx.len().max(1) as f64;
    let flushes = (disk_after.flushes - disk_before.flushes).max(1.0);
    sample = sample
        .with(
            "disk_kb_per_tx",
            (disk_after.sectors_written - disk_before.sectors_written) / 2.0 / n,
        )
        .with(
            "disk_writes_per_tx",
            (disk_after.writes - disk_before.writes) / n,
        )
        .with(
            "disk_flushes_per_tx",
            (disk_after.flushes - disk_before.flushes) / n,
        )
        .with(
            "disk_flush_us",
            (disk_after.flush_ms - disk_before.flush_ms) * 1000.0 / flushes,
        );
    if let Some(w) = rewrites {
        let windows = w.finish()?;
        let (mut inside, mut outside) = recompress_windows::split(&tx, &windows, 10_000.0);
        inside.sort_by(f64::total_cmp);
        outside.sort_by(f64::total_cmp);
        let busy: f64 = windows.iter().map(|(a, b)| b - a).sum();
        println!(
            "    recompression: {} rewrites, {:.0} ms in all; commits during them: {} (p50 {:.3} ms, p99 {:.3} ms), others: {} (p50 {:.3} ms, p99 {:.3} ms)",
            windows.len(),
            busy / 1000.0,
            inside.len(),
            quantile(&inside, 0.5) / 1000.0,
            quantile(&inside, 0.99) / 1000.0,
            outside.len(),
            quantile(&outside, 0.5) / 1000.0,
            quantile(&outside, 0.99) / 1000.0,
        );
        if std::env::var_os("KLIO_BENCH_REWRITE_DETAIL").is_some() {
            let slow = recompress_windows::slow_in_windows(&tx, &windows, 10_000.0, 3000.0);
            let text: Vec<String> = slow
                .iter()
                .map(|(s, e, w)| format!("{s:.1}..{e:.1}/{w:.0}"))
                .collect();
            println!(
                "    slow commits (>3 ms) in rewrites, ms from its start..end/length: {}",
                text.join(" ")
            );
        }
        sample = sample
            .with("rewrites", windows.len() as f64)
            .with("tx_in_rewrite_pct", inside.len() as f64 * 100.0 / n)
            .with("p50_outside_rewrite_ms", quantile(&outside, 0.5) / 1000.0)
            .with("p99_outside_rewrite_ms", quantile(&outside, 0.99) / 1000.0);
        if !inside.is_empty() {
            sample = sample
                .with("p50_in_rewrite_ms", quantile(&inside, 0.5) / 1000.0)
                .with("p99_in_rewrite_ms", quantile(&inside, 0.99) / 1000.0);
        }
    }
    if let Some(v) = trips {
        sample = sample
            .with("rt_p50_us", quantile(&v, 0.50))
            .with("rt_p99_us", quantile(&v, 0.99));
    }
    Ok(sample)
}

/// `klio-bench-sync probe CLIENTS [SECONDS] [ROUNDS]`: pgbench at one client count under
/// each synchronous standby in rotated rounds, with the latency tail (p99.9, max, how
/// many transactions took over 5 ms and in how many separate stalls) and what the
/// standby's process used (CPU and run-queue wait per transaction, per thread).
fn probe_mode(pg: &PgInstance, clients: u32, secs: u32, rounds: usize) -> Result<()> {
    // KLIO_BENCH_RATE=TPS: every arm at the same offered load (pgbench -R), so that
    // latencies compare at equal throughput rather than at equal client count.
    let rate: Option<u32> = match std::env::var("KLIO_BENCH_RATE") {
        Ok(v) => Some(
            v.parse()
                .context("KLIO_BENCH_RATE: transactions a second")?,
        ),
        Err(_) => None,
    };
    let mut arms = vec![
        Arm::new("pg_receivewal --synchronous", |_| {
            with_pg_receivewal(pg, &|pid| probe_point(pg, pid, clients, secs, rate))
        }),
        // The peer compressing too (PostgreSQL 15's pg_receivewal has lz4 and gzip, not
        // zstd): what compressing every write costs it.
        Arm::new("pg_receivewal --synchronous --compress=lz4", |_| {
            with_pg_receivewal_args(pg, &["--compress=lz4"], &|pid| {
                probe_point(pg, pid, clients, secs, rate)
            })
        }),
        Arm::new("physical standby", |_| {
            with_physical_standby(pg, &|pid| probe_point(pg, pid, clients, secs, rate))
        }),
        Arm::new("klio", |_| {
            with_klio(pg, &|pid| probe_point(pg, pid, clients, secs, rate))
        }),
    ];
    if let Some(b) = std::env::var_os("KLIO_BIN_B") {
        arms.push(Arm::new(KLIO_B, move |_| {
            with_klio_bin(&b, || {
                with_klio(pg, &|pid| probe_point(pg, pid, clients, secs, rate))
            })
        }));
    }
    let title = format!(
        "synchronous standbys probed at {clients} clients, pgbench -N -T {secs}{}: latency tail and the standby's CPU",
        rate.map(|r| format!(" -R {r}")).unwrap_or_default()
    );
    let res = rounds::run(&title, &mut arms, rounds)?;
    res.print();
    // Each Klio arm against pg_receivewal round by round (see `print_verdicts`).
    let peer = "pg_receivewal --synchronous";
    for arm in ["klio", KLIO_B] {
        if res.values(arm, "p50_ms").is_err() {
            continue;
        }
        for metric in ["tps", "p50_ms", "p99_ms", "cpu_us_per_tx"] {
            let r = res.paired_ratios(arm, peer, metric)?;
            let interval = match rounds::median_interval(&r) {
                Some(i) => format!(", {}", interval_text(i)),
                None => String::new(),
            };
            println!(
                "  {arm} / {peer}, {metric}, round by round: {:.2}x ({}){interval}",
                rounds::median(&r),
                ratios_text(&r)
            );
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    if std::env::args().nth(1).as_deref() == Some("strace-summary") {
        for log in std::env::args().skip(2) {
            print!(
                "{log}: {}",
                klio_bench::syscalls::summarize(Path::new(&log))?
            );
        }
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("fill") {
        return klio_bench::fill::run(klio_bench::arg(2, 2500)?, klio_bench::arg(3, 7)?);
    }
    if std::env::args().nth(1).as_deref() == Some("block-summary") {
        for data in std::env::args().skip(2) {
            println!(
                "{data}: {}",
                klio_bench::blocktrace::summarize(Path::new(&data))?
            );
        }
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("round-trips") {
        for trace in std::env::args().skip(2) {
            let text = std::fs::read_to_string(&trace).with_context(|| trace.clone())?;
            let mut v = walsender::round_trips(&text);
            v.sort_by(f64::total_cmp);
            println!(
                "{trace}: {} round trips, p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs",
                v.len(),
                quantile(&v, 0.5),
                quantile(&v, 0.9),
                quantile(&v, 0.99)
            );
        }
        return Ok(());
    }
    let pg = PgInstance::start(
        PgOptions::new()
            .conf("max_wal_size", "4GB")
            .conf("max_connections", "100")
            .conf("shared_buffers", "256MB")
            .conf("track_wal_io_timing", "on"),
    )?;
    pg.pgbench(&["-i", "-s", "10"])?;
    if std::env::args().nth(1).as_deref() == Some("strace") {
        let dir = std::env::args()
            .nth(2)
            .context("usage: klio-bench-sync strace DIR [SECONDS]")?;
        return strace_mode(&pg, Path::new(&dir), klio_bench::arg(3, 10)?);
    }
    if std::env::args().nth(1).as_deref() == Some("probe") {
        let clients = klio_bench::arg(2, 4)?;
        return probe_mode(
            &pg,
            clients,
            klio_bench::arg(3, 10)?,
            klio_bench::arg(4, 3)?,
        );
    }
    let secs: u32 = klio_bench::arg(1, 10)?;
    let rounds: usize = klio_bench::arg(2, 5)?;
    let clients = curve_clients()?;
    let cl = clients.as_slice();

    let mut arms = vec![
        Arm::new(NO_STANDBY, |p| curve(&pg, None, p, secs, cl)),
        Arm::new("pg_receivewal --synchronous", |p| {
            with_pg_receivewal(&pg, &|pid| curve(&pg, Some(pid), p, secs, cl))
        }),
        Arm::new("physical standby", |p| {
            with_physical_standby(&pg, &|pid| curve(&pg, Some(pid), p, secs, cl))
        }),
        Arm::new("klio", |p| {
            with_klio(&pg, &|pid| curve(&pg, Some(pid), p, secs, cl))
        }),
    ];
    let klio_b = std::env::var_os("KLIO_BIN_B");
    if let Some(b) = klio_b.clone() {
        let pg = &pg;
        arms.push(Arm::new(KLIO_B, move |p| {
            with_klio_bin(&b, || {
                with_klio(pg, &|pid| curve(pg, Some(pid), p, secs, cl))
            })
        }));
    }
    let title = format!(
        "synchronous commit, pgbench -N (scale 10) at {clients:?} clients, -T {secs} each, latency from -l logs"
    );
    let res = rounds::run(&title, &mut arms, rounds)?;
    res.print();

    let mut kliob = vec!["klio"];
    if klio_b.is_some() {
        kliob.push(KLIO_B);
    }
    for arm in kliob {
        print_verdicts(&res, arm, cl)?;
    }
    if klio_b.is_some() {
        println!("{KLIO_B} against klio (medians; with one build as both arms, the noise floor)");
        let tps = cl
            .contains(&TPS_CLIENTS)
            .then(|| format!("c{TPS_CLIENTS}_tps"));
        for metric in tps.into_iter().chain(
            cl.iter()
                .flat_map(|c| ["p50", "p99"].map(|q| format!("c{c}_{q}_ms"))),
        ) {
            println!(
                "  {metric}: {:.2}x",
                res.median(KLIO_B, &metric)? / res.median("klio", &metric)?
            );
        }
    }
    Ok(())
}

/// Round-by-round ratios as printed: two decimals each, in round order.
fn ratios_text(r: &[f64]) -> String {
    let v: Vec<String> = r.iter().map(|x| format!("{x:.2}")).collect();
    v.join(" ")
}

/// A [`rounds::median_interval`] as printed, its coverage rounded down.
fn interval_text((lo, hi, coverage): (f64, f64, f64)) -> String {
    format!(
        "{:.1} % interval {lo:.2}x..{hi:.2}x",
        (coverage * 1000.0).floor() / 10.0
    )
}

/// The targets of issue 13 point 4 for `arm` against the better of pg_receivewal and the
/// physical standby at each point (the one with the better median): the ratio of the
/// medians, and the ratio taken round by round (each round's `arm` against that round's
/// peer) with a distribution-free interval for its median
/// ([`rounds::median_interval`]). A point is settled when the whole interval is on one
/// side of the target; otherwise this run cannot tell it from the host's noise.
fn print_verdicts(res: &rounds::Results, arm: &str, clients: &[u32]) -> Result<()> {
    println!("{arm} against the better of pg_receivewal and the physical standby (medians; then round by round)");
    let peers = ["pg_receivewal --synchronous", "physical standby"];
    let best = |metric: &str, higher_is_better: bool| -> Result<(f64, &str)> {
        let a = res.median(peers[0], metric)?;
        let b = res.median(peers[1], metric)?;
        let pick_a = if higher_is_better { a >= b } else { a <= b };
        Ok(if pick_a { (a, peers[0]) } else { (b, peers[1]) })
    };
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    // `ok(r)`: ratio r meets the target.
    let paired = |metric: &str, who: &str, ok: &dyn Fn(f64) -> bool| -> Result<String> {
        let r = res.paired_ratios(arm, who, metric)?;
        let met = r.iter().filter(|x| ok(**x)).count();
        let interval = match rounds::median_interval(&r) {
            Some(i @ (lo, hi, _)) => {
                let settled = match (ok(lo), ok(hi)) {
                    (true, true) => "settled: met",
                    (false, false) => "settled: MISSED",
                    _ => "not settled",
                };
                format!("{}, {settled}", interval_text(i))
            }
            None => "too few rounds for an interval".into(),
        };
        Ok(format!(
            "round by round {:.2}x ({}; target met in {met} of {}), {interval}",
            rounds::median(&r),
            ratios_text(&r),
            r.len()
        ))
    };
    if clients.contains(&TPS_CLIENTS) {
        let metric = format!("c{TPS_CLIENTS}_tps");
        let (peer, who) = best(&metric, true)?;
        let k = res.median(arm, &metric)?;
        println!(
            "  TPS at {TPS_CLIENTS} clients: {arm} {k:.0} vs {peer:.0} ({who}): {:.2}x (target >= 0.95x: {})",
            k / peer,
            verdict(k / peer >= 0.95)
        );
        println!("      {}", paired(&metric, who, &|r| r >= 0.95)?);
    }
    for &c in clients {
        for q in ["p50", "p99"] {
            let metric = format!("c{c}_{q}_ms");
            let (peer, who) = best(&metric, false)?;
            let k = res.median(arm, &metric)?;
            println!(
                "  {q} latency at {c:>2} clients: {arm} {k:.3} ms vs {peer:.3} ms ({who}): {:.2}x (target <= 1.05x: {})",
                k / peer,
                verdict(k / peer <= 1.05)
            );
            println!("      {}", paired(&metric, who, &|r| r <= 1.05)?);
            println!("      {}", by_load(res, arm, who, &metric)?);
        }
    }
    Ok(())
}

/// The round-by-round ratio of `arm` over `peer` in the quieter and the busier half of
/// the rounds, by how busy the host was in each: the same figure of the arm without a
/// synchronous standby in that round.
fn by_load(res: &rounds::Results, arm: &str, peer: &str, metric: &str) -> Result<String> {
    let load = res.values(NO_STANDBY, metric)?;
    let (quiet, busy) = rounds::split_by_load(&load, &res.paired_ratios(arm, peer, metric)?);
    Ok(format!(
        "by the host's load (the no-standby {metric} of the round): quieter half {:.2}x ({}), busier half {:.2}x ({})",
        rounds::median(&quiet),
        ratios_text(&quiet),
        rounds::median(&busy),
        ratios_text(&busy)
    ))
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn a_curve_runs_the_named_client_counts_in_order() {
        assert_eq!(super::parse_clients("64, 1").unwrap(), vec![1, 64]);
        assert_eq!(super::parse_clients("8").unwrap(), vec![8]);
        let e = super::parse_clients("1,3").unwrap_err().to_string();
        assert!(e.contains("3 is not one of"), "{e}");
        assert!(super::parse_clients("one").is_err());
    }

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
