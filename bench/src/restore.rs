//! Restore benchmarks (issue 5), each side by side in one invocation:
//!
//! 1. WAL replay: two identical base copies (taken before the load) recover through the
//!    same ≥ 1 GB of WAL, one with `restore_command = 'cp ARCHIVE/%f %p'` from a local
//!    directory holding the segments, one with `klio wal-restore %f %p` (prefetch on,
//!    its default). Time = start of the server until recovery has ended.
//! 2. Full restore: `klio restore` of a backup vs extracting `pg_basebackup`'s tar of the
//!    same data (plain tar, and tar + client zstd), each ending with the files on disk
//!    (`sync -f` after tar; `klio restore` syncs the file system before it ends).
//!
//! Run: `cargo build --release --workspace --bins && KLIO_BIN=$CARGO_TARGET_DIR/release/klio \
//!       $CARGO_TARGET_DIR/release/klio-bench-restore \
//!       [WAL_SCALE] [BACKUP_SCALE] [ROUNDS]` (pgbench scales; defaults 80 ≈ 1.04 GB of WAL
//!       and 100 ≈ 1.6 GB of data, 0 skips that part; 3 alternating replay rounds).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use klio_tests::{parse_lsn, wait_until, ClusterConf, KlioServer, PgInstance, PgOptions, StopMode};

fn recover(copy: &mut PgInstance, restore_command: &str) -> Result<f64> {
    let t = Instant::now();
    copy.start_recovery(restore_command)?;
    wait_until(Duration::from_secs(1800), "recovery to end", || {
        Ok(copy.psql("SELECT pg_is_in_recovery()")? == "f")
    })?;
    Ok(t.elapsed().as_secs_f64())
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
    // One pair of identical base copies per round, all taken before the load.
    let slow = PgOptions::new().timeout(Duration::from_secs(1800));
    let mut copies = Vec::new();
    for _ in 0..rounds {
        copies.push((pg.base_copy(slow.clone())?, pg.base_copy(slow.clone())?));
    }
    let start = pg.psql("SELECT pg_current_wal_insert_lsn()")?;
    eprintln!("generating WAL: pgbench -i -s {scale} ...");
    pg.pgbench(&["-i", "-s", &scale.to_string()])?;
    pg.psql("SELECT pg_switch_wal()")?;
    let end = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed("src", &end, Duration::from_secs(900))?;
    let wal_mb = (parse_lsn(&end)? - parse_lsn(&start)?) as f64 / 1e6;

    // The local archive for cp: every segment pg_wal holds.
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
    let accounts = pg.psql("SELECT count(*) FROM pgbench_accounts")?;
    pg.stop(StopMode::Fast)?;

    let tools = klio.tools_for_postgres("src")?;
    let by_klio_command = klio.restore_command("src", &tools);
    let by_cp_command = format!("cp {}/%f %p", archive.display());
    // Rounds alternate cp and Klio so that drift of the machine hits both alike.
    let (mut cp, mut kl) = (Vec::new(), Vec::new());
    for (i, (mut by_cp, mut by_klio)) in copies.into_iter().enumerate() {
        eprintln!(
            "round {}/{rounds}: recovering with cp, then with klio wal-restore ...",
            i + 1
        );
        cp.push(recover(&mut by_cp, &by_cp_command)?);
        ensure!(by_cp.psql("SELECT count(*) FROM pgbench_accounts")? == accounts);
        drop(by_cp);
        kl.push(recover(&mut by_klio, &by_klio_command)?);
        ensure!(by_klio.psql("SELECT count(*) FROM pgbench_accounts")? == accounts);
    }
    let sum = |v: &[f64]| v.iter().sum::<f64>();
    let list = |v: &[f64]| {
        v.iter()
            .map(|t| format!("{t:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (cp_secs, klio_secs) = (sum(&cp) / rounds as f64, sum(&kl) / rounds as f64);
    println!(
        "WAL replay of {wal_mb:.0} MB (pgbench -i -s {scale}) from identical base copies, {rounds} alternating rounds"
    );
    println!(
        "  restore_command = 'cp ARCHIVE/%f %p'   : {cp_secs:7.2} s  (rounds: {})",
        list(&cp)
    );
    println!(
        "  restore_command = 'klio wal-restore …' : {klio_secs:7.2} s  (rounds: {}; prefetch 8)",
        list(&kl)
    );
    println!(
        "  ratio klio/cp recovery time: {:.2}x (target <= 1.0x)",
        klio_secs / cp_secs
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
    // Rounds alternate the three so that drift of the machine (page cache, writeback)
    // hits each alike; each round's output is removed before the next.
    let (mut plain, mut zstd, mut kl) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        eprintln!("round {round}/{rounds}: tar, tar --zstd, klio restore ...");
        let out = work.path().join(format!("round-{round}"));
        std::fs::create_dir(&out)?;
        plain.push(extract(
            &["-xf"],
            &work.path().join("plain/base.tar"),
            &out.join("x-plain"),
        )?);
        zstd.push(extract(
            &["--zstd", "-xf"],
            &work.path().join("zstd/base.tar.zst"),
            &out.join("x-zstd"),
        )?);
        kl.push(run(
            Command::new(&tools.bin)
                .args(["restore", "--cluster", "src", "--server", &klio.url()])
                .arg("--token-file")
                .arg(&tools.token)
                .arg("--pgdata")
                .arg(out.join("x-klio")),
            "klio restore",
        )?);
        let restored_mb = klio_tests::dir_size(&out.join("x-klio")) as f64 / 1e6;
        ensure!(
            restored_mb >= data_mb * 0.95,
            "klio restored {restored_mb:.0} MB of {data_mb:.0} MB"
        );
        std::fs::remove_dir_all(&out)?;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let list = |v: &[f64]| {
        v.iter()
            .map(|t| format!("{t:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (plain_secs, zstd_secs, klio_secs) = (mean(&plain), mean(&zstd), mean(&kl));

    println!(
        "full restore of {data_mb:.0} MB (pgbench -i -s {scale}), files on disk at the end, mean of {rounds} alternating rounds"
    );
    println!(
        "  tar -xf base.tar + sync          : {plain_secs:6.2} s  {:7.1} MB/s  (rounds: {})",
        data_mb / plain_secs,
        list(&plain)
    );
    println!(
        "  tar --zstd -xf base.tar.zst + sync: {zstd_secs:6.2} s  {:7.1} MB/s  (rounds: {})",
        data_mb / zstd_secs,
        list(&zstd)
    );
    println!(
        "  klio restore                     : {klio_secs:6.2} s  {:7.1} MB/s  (rounds: {}; HTTP, AES-256-GCM, zstd, CRC-32C per file)",
        data_mb / klio_secs,
        list(&kl)
    );
    println!(
        "  ratio klio/tar throughput: {:.2}x (plain tar), {:.2}x (tar.zst) (target >= 1.0x)",
        plain_secs / klio_secs,
        zstd_secs / klio_secs
    );
    Ok(())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let wal_scale: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(80);
    let backup_scale: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(100);
    let rounds: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3);
    if wal_scale > 0 {
        replay(wal_scale, rounds.max(1))?;
    }
    if backup_scale > 0 {
        full_restore(backup_scale, rounds.max(1))?;
    }
    Ok(())
}
