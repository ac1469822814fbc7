//! Restore benchmarks (issue 5), each side by side in rotated rounds:
//!
//! 1. WAL replay: identical base copies (all taken before the load) recover through the
//!    same ≥ 1 GB of WAL, with `restore_command = 'cp ARCHIVE/%f %p'` from a local
//!    directory holding the segments, and with `klio wal-restore %f %p` (prefetch on, its
//!    default). Time = start of the server until recovery has ended; every recovered
//!    server's pgbench tables are compared with the source's.
//! 2. Full restore: `klio restore` of a backup vs extracting `pg_basebackup`'s tar of the
//!    same data (plain tar, and tar + client zstd), each ending with the files on disk
//!    (`sync -f` after tar; `klio restore` syncs the file system before it ends); every
//!    output is checked with `pg_verifybackup` against its manifest, and at the end the
//!    Klio backup is restored, started and its tables compared with the source's.
//!
//! Run: `cargo build --release -p klio -p klio-bench && KLIO_BIN=$CARGO_TARGET_DIR/release/klio \
//!       $CARGO_TARGET_DIR/release/klio-bench-restore [WAL_SCALE] [BACKUP_SCALE] [ROUNDS]`
//! (pgbench scales; defaults 80 ≈ 1.04 GB of WAL and 100 ≈ 1.6 GB of data, 0 skips that
//! part; 3 rounds). Copies, archives and restored directories live in temp dirs.

use std::cell::RefCell;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use klio_bench::checks::{same_tables, table_digest, PGBENCH_TABLES};
use klio_bench::rounds::{self, Arm, Pass, Sample};
use klio_tests::{parse_lsn, wait_until, ClusterConf, KlioServer, PgInstance, PgOptions, StopMode};

/// Recovers the next of `copies` with `restore_command`; checks its tables.
fn recover(
    copies: &RefCell<Vec<PgInstance>>,
    restore_command: &str,
    expected: &str,
) -> Result<Sample> {
    let mut copy = copies.borrow_mut().pop().context("no base copy left")?;
    let t = Instant::now();
    copy.start_recovery(restore_command)?;
    wait_until(Duration::from_secs(1800), "recovery to end", || {
        Ok(copy.psql("SELECT pg_is_in_recovery()")? == "f")
    })?;
    let secs = t.elapsed().as_secs_f64();
    same_tables(&copy, expected, "the recovered copy")?;
    Ok(Sample::new().with("secs", secs))
}

fn replay(scale: u32, rounds: usize) -> Result<()> {
    let mut pg = PgInstance::start(
        PgOptions::new()
            .conf("wal_keep_size", "8GB")
            .conf("max_wal_size", "8GB"),
    )?;
    let klio = KlioServer::start(vec![ClusterConf::new("src", pg.replication_conninfo())])?;
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed("src", &lsn, Duration::from_secs(60))?;
    // One pair of identical base copies per pass (warm-up included), taken before the load.
    let slow = PgOptions::new().timeout(Duration::from_secs(1800));
    let (mut by_cp, mut by_klio) = (Vec::new(), Vec::new());
    for _ in 0..=rounds {
        by_cp.push(pg.base_copy(slow.clone())?);
        by_klio.push(pg.base_copy(slow.clone())?);
    }
    let start = pg.psql("SELECT pg_current_wal_insert_lsn()")?;
    eprintln!("generating WAL: pgbench -i -s {scale} ...");
    pg.pgbench(&["-i", "-s", &scale.to_string()])?;
    pg.psql("SELECT pg_switch_wal()")?;
    let end = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed("src", &end, Duration::from_secs(900))?;
    let wal_mb = parse_lsn(&end)?
        .checked_sub(parse_lsn(&start)?)
        .context("the WAL end is before its start")? as f64
        / 1e6;

    // The local archive for cp: every segment pg_wal holds (synced with everything else
    // before each phase).
    let archive = pg.owned_dir("archive")?;
    for e in std::fs::read_dir(pg.wal_dir())? {
        let e = e?;
        let name = e.file_name();
        if name.len() == 24 {
            let to = archive.join(&name);
            std::fs::copy(e.path(), &to)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644))?;
        }
    }
    let expected = table_digest(&pg, &PGBENCH_TABLES)?;
    pg.stop(StopMode::Fast)?;

    let tools = klio.tools_for_postgres("src")?;
    let by_klio_command = klio.restore_command("src", &tools);
    let by_cp_command = format!("cp {}/%f %p", archive.display());
    let (by_cp, by_klio) = (RefCell::new(by_cp), RefCell::new(by_klio));
    let mut arms = [
        Arm::new("restore_command = 'cp ARCHIVE/%f %p'", |_| {
            recover(&by_cp, &by_cp_command, &expected)
        }),
        Arm::new("restore_command = 'klio wal-restore …'", |_| {
            recover(&by_klio, &by_klio_command, &expected)
        }),
    ];
    let title = format!(
        "WAL replay of {wal_mb:.0} MB (pgbench -i -s {scale}) from identical base copies; klio prefetches 8"
    );
    let res = rounds::run(&title, &mut arms, rounds)?;
    res.print();
    println!(
        "  ratio klio/cp recovery time (medians): {:.2}x (target <= 1.0x)",
        res.median("restore_command = 'klio wal-restore …'", "secs")?
            / res.median("restore_command = 'cp ARCHIVE/%f %p'", "secs")?
    );
    Ok(())
}

fn run(cmd: &mut Command, what: &str) -> Result<f64> {
    let t = Instant::now();
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    ensure!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(t.elapsed().as_secs_f64())
}

/// Checks a restored data directory against `manifest` with PostgreSQL's `pg_verifybackup`.
fn verify(pg: &PgInstance, dir: &Path, manifest: Option<&Path>) -> Result<()> {
    if let Some(m) = manifest {
        std::fs::copy(m, dir.join("backup_manifest"))?;
    }
    run(
        Command::new(pg.tool("pg_verifybackup"))
            .arg("--no-parse-wal")
            .arg(dir),
        "pg_verifybackup",
    )?;
    Ok(())
}

/// One full-restore phase into a fresh directory under `work`: the timed restore, then
/// (untimed) `pg_verifybackup`, then the directory is removed.
fn restore_phase(
    pg: &PgInstance,
    work: &Path,
    pass: Pass,
    name: &str,
    data_mb: f64,
    manifest: Option<&Path>,
    restore: impl FnOnce(&Path) -> Result<f64>,
) -> Result<Sample> {
    let into = work.join(format!("{name}-{pass}").replace(' ', "-"));
    let secs = restore(&into)?;
    verify(pg, &into, manifest)?;
    std::fs::remove_dir_all(&into)?;
    Ok(Sample::new()
        .with("secs", secs)
        .with("MB_per_s", data_mb / secs))
}

fn extract(tar_args: &[&str], archive: &Path, into: &Path) -> Result<f64> {
    std::fs::create_dir(into)?;
    let t = Instant::now();
    run(
        Command::new("tar")
            .args(tar_args)
            .arg(archive)
            .arg("-C")
            .arg(into),
        "tar",
    )?;
    run(Command::new("sync").arg("-f").arg(into), "sync")?;
    Ok(t.elapsed().as_secs_f64())
}

fn full_restore(scale: u32, rounds: usize) -> Result<()> {
    let pg = klio_tests::pgbench_database(scale)?;
    let klio = KlioServer::start(vec![ClusterConf::new("src", pg.replication_conninfo())])?;
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed("src", &lsn, Duration::from_secs(600))?;
    klio.client_ok("src", &["backup", "--wait"])?;

    let work = tempfile::tempdir()?;
    for (dir, compress) in [("plain", "none"), ("zstd", "client-zstd")] {
        run(
            Command::new(pg.tool("pg_basebackup"))
                .arg("--dbname")
                .arg(pg.replication_conninfo())
                .arg("--pgdata")
                .arg(work.path().join(dir))
                .args([
                    "--format=tar",
                    &format!("--compress={compress}"),
                    "--wal-method=none",
                    "--checkpoint=fast",
                    "--no-password",
                ]),
            "pg_basebackup",
        )?;
    }
    let data_mb = klio_tests::dir_size(&work.path().join("plain")) as f64 / 1e6;
    let tools = klio.tools_for_postgres("src")?;
    let w = work.path();
    let plain_manifest = w.join("plain/backup_manifest");
    let zstd_manifest = w.join("zstd/backup_manifest");
    let mut arms = [
        Arm::new("tar -xf base.tar + sync", |p| {
            restore_phase(&pg, w, p, "plain", data_mb, Some(&plain_manifest), |into| {
                extract(&["-xf"], &w.join("plain/base.tar"), into)
            })
        }),
        Arm::new("tar --zstd -xf base.tar.zst + sync", |p| {
            restore_phase(&pg, w, p, "zstd", data_mb, Some(&zstd_manifest), |into| {
                extract(&["--zstd", "-xf"], &w.join("zstd/base.tar.zst"), into)
            })
        }),
        Arm::new("klio restore", |p| {
            restore_phase(&pg, w, p, "klio", data_mb, None, |into| {
                run(
                    Command::new(&tools.bin)
                        .args(["restore", "--cluster", "src", "--server", &klio.url()])
                        .arg("--token-file")
                        .arg(&tools.token)
                        .arg("--pgdata")
                        .arg(into),
                    "klio restore",
                )
            })
        }),
    ];
    let title = format!(
        "full restore of {data_mb:.0} MB (pgbench -i -s {scale}), files on disk at the end; klio: HTTP, AES-256-GCM, zstd, CRC-32C per file"
    );
    let res = rounds::run(&title, &mut arms, rounds)?;
    drop(arms);
    res.print();
    let k = res.median("klio restore", "MB_per_s")?;
    println!(
        "  ratio klio/tar throughput (medians): {:.2}x (plain tar), {:.2}x (tar.zst) (target >= 1.0x)",
        k / res.median("tar -xf base.tar + sync", "MB_per_s")?,
        k / res.median("tar --zstd -xf base.tar.zst + sync", "MB_per_s")?
    );
    println!("  check: every restored directory passed pg_verifybackup");

    let expected = table_digest(&pg, &PGBENCH_TABLES)?;
    let restored = klio.restore_and_recover("src", None, PgOptions::new())?;
    same_tables(&restored.pg, &expected, "the restored backup")?;
    println!("  check: the Klio backup restored, started, recovered; pgbench tables identical to the source");
    Ok(())
}

fn main() -> Result<()> {
    let wal_scale: u32 = klio_bench::arg(1, 80)?;
    let backup_scale: u32 = klio_bench::arg(2, 100)?;
    let rounds: usize = klio_bench::arg(3, 3)?;
    if wal_scale > 0 {
        replay(wal_scale, rounds)?;
    }
    if backup_scale > 0 {
        full_restore(backup_scale, rounds)?;
    }
    Ok(())
}
