//! Restore drills: a base backup plus Klio's WAL, restored with `klio restore` into a new
//! data directory (and a remapped tablespace), recovered by PostgreSQL through
//! `klio wal-restore` to a named restore point, an LSN, a time and an xid; each result's table
//! contents equal the source's at that target. The restored directory passes
//! `pg_verifybackup` before it is started. Wrong and foreign tokens write nothing.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use klio_tests::{
    table_checksums, wait_until, ClientTools, ClusterConf, KlioServer, PgInstance, PgOptions,
};

const TABLES: &[&str] = &[
    "pgbench_accounts",
    "pgbench_branches",
    "pgbench_tellers",
    "pgbench_history",
    "drill",
];

fn checksums(pg: &PgInstance) -> Result<String> {
    table_checksums(pg, TABLES)
}

fn load(pg: &PgInstance, round: u32) -> Result<()> {
    pg.pgbench(&["-t", "200", "-c", "2", "--no-vacuum"])?;
    pg.psql(&format!(
        "INSERT INTO drill SELECT {round}, g FROM generate_series(1, 1000) g"
    ))?;
    Ok(())
}

fn klio_restore(klio: &KlioServer, t: &ClientTools, token: &Path, args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(&t.bin);
    cmd.arg("restore")
        .args(["--cluster", "src", "--server", &klio.url(), "--token-file"])
        .arg(token)
        .args(args);
    Ok(cmd.output()?)
}

#[test]
fn restore_drills_reach_each_target_exactly() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new())?;
    let ts = pg.owned_dir("ts_src")?;
    pg.psql(&format!(
        "CREATE TABLESPACE extra LOCATION '{}'",
        ts.display()
    ))?;
    pg.psql("CREATE TABLE drill (round int, i int) TABLESPACE extra")?;
    pg.pgbench(&["-i", "-s", "2"])?;
    let klio = KlioServer::start(vec![ClusterConf::new("src", pg.replication_conninfo())])?;
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed("src", &lsn, Duration::from_secs(60))?;
    klio.client_ok("src", &["backup", "--wait"])?;

    // Three targets, each after more load, each with the data as it was then.
    load(&pg, 1)?;
    let at_name = checksums(&pg)?;
    pg.psql("SELECT pg_create_restore_point('drill_point')")?;
    load(&pg, 2)?;
    let at_lsn = checksums(&pg)?;
    let lsn = pg.psql("SELECT pg_current_wal_insert_lsn()")?;
    load(&pg, 3)?;
    let at_time = checksums(&pg)?;
    let time = pg.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    )?;
    // The next commit must carry a later timestamp than the target.
    std::thread::sleep(Duration::from_millis(20));
    load(&pg, 4)?;
    let xid = pg.psql("INSERT INTO drill VALUES (5, 0) RETURNING txid_current()")?;
    let at_xid = checksums(&pg)?;
    load(&pg, 6)?;
    let end = checksums(&pg)?;
    ensure!(at_name != at_lsn && at_lsn != at_time && at_time != at_xid && at_xid != end);
    pg.psql("SELECT pg_switch_wal()")?;
    let flushed = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed("src", &flushed, Duration::from_secs(60))?;

    let t = klio.tools_for_postgres("src")?;
    let drills: Vec<(&str, Vec<String>, &String)> = vec![
        (
            "name",
            vec!["--target-name".into(), "drill_point".into()],
            &at_name,
        ),
        ("lsn", vec!["--target-lsn".into(), lsn.clone()], &at_lsn),
        ("time", vec!["--target-time".into(), time.clone()], &at_time),
        ("xid", vec!["--target-xid".into(), xid.clone()], &at_xid),
    ];
    for (what, target, expected) in drills {
        let mut restored = PgInstance::empty(PgOptions::new())?;
        let new_ts = restored
            .data_dir()
            .parent()
            .context("instance dir")?
            .join("ts_restored");
        let map = format!("{}={}", ts.display(), new_ts.display());
        let mut args: Vec<&str> = vec![
            "--pgdata",
            restored.data_dir().to_str().context("utf-8")?,
            "--target-action",
            "promote",
            "--tablespace-map",
            &map,
        ];
        args.extend(target.iter().map(String::as_str));
        let out = klio_restore(&klio, &t, &t.token, &args)?;
        ensure!(
            out.status.success(),
            "klio restore ({what}) failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // PostgreSQL's own check of the restored files against its backup_manifest.
        let v = Command::new(pg.tool("pg_verifybackup"))
            .arg("--no-parse-wal")
            .arg(restored.data_dir())
            .output()?;
        ensure!(
            v.status.success(),
            "pg_verifybackup ({what}): {}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
        restored.start_restored(std::slice::from_ref(&new_ts))?;
        wait_until(
            Duration::from_secs(120),
            "recovery to reach its target",
            || Ok(restored.psql("SELECT pg_is_in_recovery()")? == "f"),
        )?;
        let got = checksums(&restored)?;
        ensure!(
            &got == expected,
            "restore to {what}: contents differ\nexpected:\n{expected}got:\n{got}\nlog:\n{}",
            restored.log_tail(30)
        );
        let link = std::fs::read_link(
            restored.data_dir().join("pg_tblspc").join(
                std::fs::read_dir(restored.data_dir().join("pg_tblspc"))?
                    .next()
                    .context("no tablespace link")??
                    .file_name(),
            ),
        )?;
        ensure!(
            link == new_ts,
            "tablespace link points to {}",
            link.display()
        );
        println!("restore to {what}: contents match the source at the target");
    }
    Ok(())
}

#[test]
fn restore_with_a_wrong_or_foreign_token_writes_nothing() -> Result<()> {
    let a = PgInstance::start(PgOptions::new())?;
    let b = PgInstance::start(PgOptions::new())?;
    let klio = KlioServer::start(vec![
        ClusterConf::new("src", a.replication_conninfo()),
        ClusterConf::new("other", b.replication_conninfo()),
    ])?;
    for (name, pg) in [("src", &a), ("other", &b)] {
        let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
        klio.wait_flushed(name, &lsn, Duration::from_secs(60))?;
    }
    klio.client_ok("src", &["backup", "--wait"])?;
    let t = klio.tools_for_postgres("src")?;
    let wrong = t.bin.with_file_name("wrong-token");
    std::fs::write(&wrong, "not-a-valid-token-0123456789")?;
    let foreign = t.bin.with_file_name("foreign-token");
    std::fs::write(&foreign, klio.token("other"))?;
    let target = tempfile::tempdir()?;
    let pgdata = target.path().join("pgdata");
    for (what, token, code) in [("wrong", &wrong, "401"), ("foreign", &foreign, "403")] {
        let out = klio_restore(
            &klio,
            &t,
            token,
            &["--pgdata", pgdata.to_str().context("utf-8")?],
        )?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{what} token: restore succeeded");
        ensure!(stderr.contains(code), "{what} token: {stderr}");
        ensure!(
            !pgdata.exists(),
            "{what} token: {} was created",
            pgdata.display()
        );
    }
    // A non-empty PGDATA is refused and left alone.
    std::fs::create_dir(&pgdata)?;
    std::fs::write(pgdata.join("keep"), "x")?;
    let out = klio_restore(
        &klio,
        &t,
        &t.token,
        &["--pgdata", pgdata.to_str().context("utf-8")?],
    )?;
    ensure!(!out.status.success());
    ensure!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    ensure!(std::fs::read_dir(&pgdata)?.count() == 1);
    Ok(())
}

#[test]
fn wal_restore_prefetches_sealed_segments_into_the_spool() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new().conf("wal_keep_size", "1GB"))?;
    let mut klio = KlioServer::start(vec![ClusterConf::new("src", pg.replication_conninfo())])?;
    for _ in 0..5 {
        pg.psql("CREATE TABLE IF NOT EXISTS t AS SELECT 1 AS i; SELECT pg_switch_wal()")?;
        pg.psql("INSERT INTO t SELECT generate_series(1, 1000)")?;
    }
    pg.psql("SELECT pg_switch_wal()")?;
    let flushed = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed("src", &flushed, Duration::from_secs(60))?;
    let sealed = klio.sealed_segments("src")?;
    ensure!(sealed.len() >= 4, "{sealed:?}");
    let t = klio.tools_for_postgres("src")?;
    let work = tempfile::tempdir()?;
    let spool = work.path().join("spool");
    let url = klio.url();
    // As PostgreSQL runs restore_command: in a data directory of the same system.
    let pgdata = pg.data_dir();
    let run_in = |cwd: &Path, name: &str, dest: &Path| -> Result<Output> {
        Ok(Command::new(&t.bin)
            .current_dir(cwd)
            .args(["wal-restore", name])
            .arg(dest)
            .args(["--cluster", "src", "--server", &url, "--token-file"])
            .arg(&t.token)
            .arg("--spool")
            .arg(&spool)
            .args(["--prefetch", "2"])
            .output()?)
    };
    let run = |name: &str, dest: &Path| run_in(pgdata, name, dest);
    // From another database system's data directory: refused with an exit status that
    // stops PostgreSQL's recovery (> 125), nothing written, nothing spooled.
    let foreign = work.path().join("foreign");
    std::fs::create_dir_all(foreign.join("global"))?;
    let mut control = std::fs::read(pgdata.join("global/pg_control"))?;
    control[0] ^= 0xff;
    std::fs::write(foreign.join("global/pg_control"), &control)?;
    let wrong = work.path().join("wrong");
    let out = run_in(&foreign, &sealed[0], &wrong)?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(128) && err.contains("database system") && !wrong.exists(),
        "{:?}: {err}",
        out.status
    );
    let first = work.path().join("first");
    let out = run(&sealed[0], &first)?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The next two sealed segments arrive in the spool by themselves.
    wait_until(
        Duration::from_secs(30),
        "the prefetcher to fill the spool",
        || {
            Ok(sealed[1..3]
                .iter()
                .all(|n| spool.join(format!("{n}.crc32c")).exists()))
        },
    )?;
    // With the server gone, the spooled segment is still served, and it is PostgreSQL's.
    klio.kill9();
    let second = work.path().join("second");
    let out = run(&sealed[1], &second)?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(std::fs::read(&second)? == std::fs::read(pg.wal_dir().join(&sealed[1]))?);
    ensure!(
        !spool.join(&sealed[1]).exists(),
        "a used entry stayed in the spool"
    );
    // An entry with a valid checksum but another system's header (as an earlier restore
    // of another cluster could leave) is discarded, not served.
    let entry = spool.join(&sealed[2]);
    let mut bytes = std::fs::read(&entry)?;
    bytes[24] ^= 0xff;
    std::fs::write(&entry, &bytes)?;
    std::fs::write(
        spool.join(format!("{}.crc32c", sealed[2])),
        format!("{:08x}", crc32c::crc32c(&bytes)),
    )?;
    let stale = work.path().join("stale");
    let out = run(&sealed[2], &stale)?;
    ensure!(
        !out.status.success() && !stale.exists() && !entry.exists(),
        "a foreign spool entry was served"
    );
    // Not spooled and no server: a clear failure, nothing written.
    let third = work.path().join("third");
    let out = run(&sealed[3], &third)?;
    ensure!(!out.status.success() && !third.exists());
    // The same failure in archive recovery stops recovery (> 125) instead of reading as
    // "no such file" (which would end it early); a standby keeps the plain status.
    let recovering = work.path().join("recovering");
    std::fs::create_dir_all(recovering.join("global"))?;
    std::fs::copy(
        pgdata.join("global/pg_control"),
        recovering.join("global/pg_control"),
    )?;
    std::fs::write(recovering.join("recovery.signal"), "")?;
    let out = run_in(&recovering, &sealed[3], &third)?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(128) && err.contains("stopping recovery") && !third.exists(),
        "{:?}: {err}",
        out.status
    );
    std::fs::write(recovering.join("standby.signal"), "")?;
    let out = run_in(&recovering, &sealed[3], &third)?;
    ensure!(out.status.code() == Some(2), "standby: {:?}", out.status);
    Ok(())
}

#[test]
fn restore_follows_a_timeline_switch_to_the_end_of_wal() -> Result<()> {
    // Klio streams from a standby (and backs it up); the standby is promoted (timeline 2)
    // and takes more writes; a restore of the timeline-1 backup must replay into
    // timeline 2 through the history file and reach the new primary's last commit.
    let primary = PgInstance::start(PgOptions::new().conf("wal_keep_size", "1GB"))?;
    primary.pgbench(&["-i", "-s", "2"])?;
    primary.psql("CREATE TABLE drill (round int, i int)")?;
    let standby = primary.start_standby(PgOptions::new().conf("wal_keep_size", "1GB"))?;
    let klio = KlioServer::start(vec![ClusterConf::new(
        "src",
        standby.replication_conninfo(),
    )])?;
    let lsn = primary.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio_tests::wait_replayed(&standby, &lsn)?;
    klio.wait_flushed("src", &lsn, Duration::from_secs(60))?;
    // A standby's backup starts at the last checkpoint it replayed: make that one Klio
    // has streamed (the one pgbench left is older than Klio's first WAL).
    primary.psql("CHECKPOINT")?;
    let lsn = primary.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio_tests::wait_replayed(&standby, &lsn)?;
    klio.client_ok("src", &["backup", "--wait"])?;
    load(&primary, 1)?;
    let lsn = primary.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio_tests::wait_replayed(&standby, &lsn)?;
    standby.promote()?;
    load(&standby, 2)?;
    let expected = checksums(&standby)?;
    standby.psql("SELECT pg_switch_wal()")?;
    let end = standby.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_timeline_flushed("src", 2, &end, Duration::from_secs(120))?;

    let t = klio.tools_for_postgres("src")?;
    let mut restored = PgInstance::empty(PgOptions::new())?;
    let out = klio_restore(
        &klio,
        &t,
        &t.token,
        &["--pgdata", restored.data_dir().to_str().context("utf-8")?],
    )?;
    ensure!(
        out.status.success(),
        "klio restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    restored.start_restored(&[])?;
    wait_until(Duration::from_secs(120), "recovery to finish", || {
        Ok(restored.psql("SELECT pg_is_in_recovery()")? == "f")
    })
    .with_context(|| {
        let log = restored.log_tail(2000);
        let recovery: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("connection") && !l.contains("disconnection"))
            .collect();
        format!("log:\n{}", recovery.join("\n"))
    })?;
    let got = checksums(&restored)?;
    ensure!(
        got == expected,
        "expected:\n{expected}got:\n{got}\nlog:\n{}",
        restored.log_tail(30)
    );
    let tli: u32 = restored
        .psql("SELECT timeline_id FROM pg_control_checkpoint()")?
        .parse()?;
    ensure!(tli >= 2, "restored server is on timeline {tli}");
    Ok(())
}
