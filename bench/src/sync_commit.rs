//! Synchronous-commit benchmark: `pgbench -N -c 8` TPS with no synchronous standby,
//! with `pg_receivewal --synchronous` as the synchronous standby, and with Klio as the
//! synchronous standby, in one invocation, printed side by side.
//!
//! Run: `cargo build --release --workspace --bins && KLIO_BIN=$CARGO_TARGET_DIR/release/klio \
//!       $CARGO_TARGET_DIR/release/klio-bench-sync [SECONDS] [ROUNDS]`
//! (default 30 s per phase, 3 rounds; the phases alternate and the means are compared).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use klio_tests::{wait_until, ClusterConf, KlioServer, PgInstance, PgOptions};

/// One pgbench run: (TPS, transactions committed).
fn run_pgbench(pg: &PgInstance, secs: u32) -> Result<(f64, u64)> {
    let out = pg.pgbench(&["-N", "-c", "8", "-j", "2", "-T", &secs.to_string()])?;
    let tps = out
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no tps in pgbench output:\n{out}"))?;
    let n = out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|l| l.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no transaction count in pgbench output:\n{out}"))?;
    Ok((tps, n))
}

fn tps(pg: &PgInstance, secs: u32) -> Result<f64> {
    Ok(run_pgbench(pg, secs)?.0)
}

/// The unit of /proc's CPU times (`getconf CLK_TCK`, 100 on Linux).
fn clock_ticks_per_second() -> Result<f64> {
    let out = Command::new("getconf").arg("CLK_TCK").output()?;
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}

/// CPU time (user + system) a process has used so far, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').context("odd /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    Ok(ticks / clock_ticks_per_second()?)
}

/// A phase's figures: TPS, and the standby's CPU time per committed transaction (µs).
#[derive(Clone, Copy)]
struct Phase {
    tps: f64,
    cpu_us_per_commit: f64,
}

/// Runs pgbench while `pid` is the standby; measures its CPU over the run.
fn measured(pg: &PgInstance, secs: u32, pid: u32) -> Result<Phase> {
    let before = cpu_seconds(pid)?;
    let (tps, n) = run_pgbench(pg, secs)?;
    let cpu = cpu_seconds(pid)? - before;
    Ok(Phase {
        tps,
        cpu_us_per_commit: cpu * 1e6 / n.max(1) as f64,
    })
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

/// One phase with `pg_receivewal --synchronous` as the synchronous standby, writing
/// into a fresh directory under `parent` (the default temp dir when `None`).
fn phase_pg_receivewal(pg: &PgInstance, secs: u32, parent: Option<&Path>) -> Result<Phase> {
    pg.psql("SELECT pg_create_physical_replication_slot('rw', true)")?;
    let dir = match parent {
        Some(p) => tempfile::tempdir_in(p)?,
        None => tempfile::tempdir()?,
    };
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
    set_sync_names(pg, "pg_receivewal")?;
    let result = wait_sync(pg, "pg_receivewal").and_then(|()| measured(pg, secs, rw.id()));
    let _ = rw.kill();
    let _ = rw.wait();
    set_sync_names(pg, "")?;
    drop_slot(pg, "rw")?;
    result
}

/// One phase with a fresh Klio server as the synchronous standby; with `tmpfs`, its data
/// directory is a symlink into a fresh directory there.
fn phase_klio(pg: &PgInstance, secs: u32, tmpfs: Option<&Path>) -> Result<Phase> {
    let target = tmpfs.map(tempfile::tempdir_in).transpose()?;
    let clusters = vec![ClusterConf::new("bench", pg.replication_conninfo())];
    let klio = KlioServer::start_prepared(clusters, |data| {
        if let Some(t) = &target {
            std::fs::remove_dir(data)?;
            std::os::unix::fs::symlink(t.path(), data)?;
        }
        Ok(())
    })?;
    set_sync_names(pg, "klio")?;
    let pid = klio.pid().context("the Klio server is not running")?;
    let result = wait_sync(pg, "klio").and_then(|()| measured(pg, secs, pid));
    drop(klio);
    set_sync_names(pg, "")?;
    drop_slot(pg, "klio")?;
    result
}

fn drop_slot(pg: &PgInstance, slot: &str) -> Result<()> {
    wait_until(Duration::from_secs(30), "the slot to be released", || {
        Ok(pg.psql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active"
        ))? == "0")
    })?;
    pg.psql(&format!(
        "SELECT pg_drop_replication_slot('{slot}') FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ))?;
    Ok(())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let secs: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(30);
    let rounds: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3);
    let pg = PgInstance::start(PgOptions::new().conf("max_wal_size", "4GB"))?;
    pg.pgbench(&["-i", "-s", "10"])?;

    // A short warm-up of each side first (not counted): the first phase after start-up
    // runs against cold caches. Then phases alternate (none, pg_receivewal, Klio, ...)
    // so that drift of the machine (page cache, table bloat, other load) hits every
    // side alike.
    eprintln!("warm-up");
    tps(&pg, 5)?;
    phase_pg_receivewal(&pg, 5, None)?;
    phase_klio(&pg, 5, None)?;
    // The ceiling for any standby that must reach the disk: pg_receivewal into tmpfs,
    // where fsync costs nothing.
    let shm = Path::new("/dev/shm");
    let ceiling_dir = shm.is_dir().then_some(shm);
    let (mut alone, mut rw, mut klio, mut ceiling, mut klio_ceiling) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        eprintln!("round {round}/{rounds}: no synchronous standby");
        alone.push(tps(&pg, secs)?);
        eprintln!("round {round}/{rounds}: pg_receivewal --synchronous");
        rw.push(phase_pg_receivewal(&pg, secs, None)?);
        eprintln!("round {round}/{rounds}: Klio");
        klio.push(phase_klio(&pg, secs, None)?);
        if let Some(dir) = ceiling_dir {
            eprintln!("round {round}/{rounds}: pg_receivewal --synchronous into tmpfs");
            ceiling.push(phase_pg_receivewal(&pg, secs, Some(dir))?);
            eprintln!("round {round}/{rounds}: Klio with its data directory in tmpfs");
            klio_ceiling.push(phase_klio(&pg, secs, Some(dir))?);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let list = |v: &[f64]| {
        v.iter()
            .map(|t| format!("{t:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let tps_of = |v: &[Phase]| v.iter().map(|p| p.tps).collect::<Vec<_>>();
    let cpu_of = |v: &[Phase]| mean(&v.iter().map(|p| p.cpu_us_per_commit).collect::<Vec<_>>());
    let (rw_t, klio_t, ceiling_t, klio_ceiling_t) = (
        tps_of(&rw),
        tps_of(&klio),
        tps_of(&ceiling),
        tps_of(&klio_ceiling),
    );
    let (alone_m, rw_m, klio_m) = (mean(&alone), mean(&rw_t), mean(&klio_t));
    println!(
        "synchronous commit, pgbench -N -c 8 -j 2 -T {secs} (scale 10), {rounds} alternating rounds"
    );
    println!(
        "  no synchronous standby        : {alone_m:8.0} tps  (rounds: {})",
        list(&alone)
    );
    println!(
        "  pg_receivewal --synchronous   : {rw_m:8.0} tps  (rounds: {})",
        list(&rw_t)
    );
    println!(
        "  klio (zstd + AES-256-GCM)     : {klio_m:8.0} tps  (rounds: {})",
        list(&klio_t)
    );
    if !ceiling.is_empty() {
        let c = mean(&ceiling_t);
        println!(
            "  pg_receivewal into tmpfs      : {c:8.0} tps  (rounds: {}; no fsync cost: the ceiling for a standby that writes to disk, {:.2}x pg_receivewal)",
            list(&ceiling_t),
            c / rw_m
        );
        let c = mean(&klio_ceiling_t);
        println!(
            "  klio into tmpfs               : {c:8.0} tps  (rounds: {}; Klio without fsync cost, {:.2}x pg_receivewal)",
            list(&klio_ceiling_t),
            c / rw_m
        );
    }
    println!("  ratio klio/pg_receivewal: {:.2}x", klio_m / rw_m);
    println!(
        "  klio reaches {:.0}% of the no-standby TPS",
        100.0 * klio_m / alone_m
    );
    println!(
        "  standby CPU per commit (user + system): pg_receivewal {:.1} us, klio {:.1} us (whole server process)",
        cpu_of(&rw),
        cpu_of(&klio)
    );
    if !ceiling.is_empty() {
        println!(
            "  standby CPU per commit into tmpfs:      pg_receivewal {:.1} us, klio {:.1} us",
            cpu_of(&ceiling),
            cpu_of(&klio_ceiling)
        );
    }
    Ok(())
}
