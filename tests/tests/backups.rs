//! Base backups end to end against real PostgreSQL: a backup with an extra
//! tablespace completes (PostgreSQL's backup_manifest is checked against what was
//! stored before it may complete) and verifies; a second backup after a 1% update
//! stores little new data; a crash mid-backup leaves no complete backup and no
//! chunks; a corrupted chunk makes `klio verify` fail naming the backup and file;
//! a second request while one runs gets 409; PGDATA copies offload. Offloads and
//! backups of PostgreSQL 13 and 17 are restored, checked with pg_verifybackup, started,
//! and recover to the source's exact contents.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use klio_tests::{table_checksums, wait_until, ClusterConf, KlioServer, PgInstance, PgOptions};
use serde_json::Value;

const CLUSTER: &str = "bk";

/// A directory the `postgres` account owns (for a tablespace).
fn postgres_dir(parent: &Path, name: &str) -> Result<PathBuf> {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir)?;
    if nix::unistd::geteuid().is_root() {
        let st = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status()?;
        ensure!(st.success(), "chown {} failed", dir.display());
    }
    Ok(dir)
}

fn start(pg: &PgInstance) -> Result<KlioServer> {
    let klio = KlioServer::start(vec![ClusterConf::new(CLUSTER, pg.replication_conninfo())])?;
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed(CLUSTER, &lsn, Duration::from_secs(60))?;
    Ok(klio)
}

fn backup(klio: &KlioServer) -> Result<Value> {
    let out = klio.client_ok(CLUSTER, &["backup", "--wait", "--output", "json"])?;
    Ok(serde_json::from_str(&out)?)
}

fn list(klio: &KlioServer) -> Result<Vec<Value>> {
    let out = klio.client_ok(CLUSTER, &["list", "backups", "--output", "json"])?;
    let v: Value = serde_json::from_str(&out)?;
    Ok(v["backups"].as_array().cloned().unwrap_or_default())
}

fn packs_dir(klio: &KlioServer) -> PathBuf {
    let cluster = CLUSTER.parse().expect("a valid cluster name");
    klio.layout().backups(&cluster).packs_dir()
}

fn pack_files(klio: &KlioServer) -> Result<Vec<PathBuf>> {
    let dir = packs_dir(klio);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    v.sort();
    Ok(v)
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

#[test]
fn backup_with_a_tablespace_completes_and_verifies() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new())?;
    let ts = postgres_dir(pg.data_dir().parent().context("data dir parent")?, "ts1")?;
    pg.psql(&format!(
        "CREATE TABLESPACE extra LOCATION '{}'",
        ts.display()
    ))?;
    pg.psql("CREATE TABLE in_ts TABLESPACE extra AS SELECT generate_series(1, 50000) AS i")?;
    pg.pgbench(&["-i", "-s", "3"])?;
    let klio = start(&pg)?;

    let b = backup(&klio)?;
    ensure!(b["state"] == "complete", "backup not complete: {b}");
    ensure!(n(&b, "files") > 500, "too few files: {b}");
    ensure!(n(&b, "logical_bytes") > 40 << 20, "too small: {b}");
    ensure!(
        n(&b, "stored_bytes") < n(&b, "logical_bytes"),
        "nothing compressed: {b}"
    );
    let start = b["start_lsn"].as_str().context("start_lsn")?;
    let end = b["end_lsn"].as_str().context("end_lsn")?;
    ensure!(
        klio_tests::parse_lsn(end)? >= klio_tests::parse_lsn(start)?,
        "end before start: {b}"
    );
    let backups = list(&klio)?;
    ensure!(
        backups.len() == 1 && backups[0]["state"] == "complete",
        "{backups:?}"
    );

    let report = klio.client_ok(CLUSTER, &["verify"])?;
    ensure!(report.contains("verify passed"), "{report}");
    ensure!(report.contains(b["id"].as_str().unwrap_or("?")), "{report}");
    println!("{report}");

    // The status and the metrics show it.
    let st = klio.status(CLUSTER)?;
    ensure!(st["backups"]["complete"] == 1, "{st}");
    ensure!(st["backups"]["last_verify_ok"] == true, "{st}");
    let metrics = klio.metrics()?;
    ensure!(
        metrics.contains(&format!("klio_backups_complete{{cluster=\"{CLUSTER}\"}} 1")),
        "{metrics}"
    );
    ensure!(
        metrics.contains(&format!("klio_backup_verify_ok{{cluster=\"{CLUSTER}\"}} 1")),
        "{metrics}"
    );
    Ok(())
}

#[test]
fn second_backup_after_one_percent_update_stores_little_new_data() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new())?;
    pg.pgbench(&["-i", "-s", "10"])?;
    let klio = start(&pg)?;
    let first = backup(&klio)?;
    // ~1% of pgbench_accounts (1 000 000 rows at scale 10).
    pg.psql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 10000")?;
    let second = backup(&klio)?;
    ensure!(second["state"] == "complete", "{second}");
    let (stored1, new2) = (n(&first, "stored_bytes"), n(&second, "new_bytes"));
    let share = new2 as f64 / stored1 as f64;
    println!(
        "first backup stored {stored1} bytes; the second added {new2} bytes = {:.1}%",
        share * 100.0
    );
    ensure!(
        share <= 0.10,
        "second backup stored {new2} new bytes, more than 10% of {stored1}"
    );
    ensure!(n(&second, "new_chunks") < n(&second, "chunks"));
    let table = klio.client_ok(CLUSTER, &["list", "backups"])?;
    ensure!(table.contains("NEW%"), "{table}");
    println!("{table}");
    Ok(())
}

#[test]
fn crash_mid_backup_leaves_no_complete_backup_and_no_chunks() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new())?;
    pg.pgbench(&["-i", "-s", "4"])?;
    let mut klio = start(&pg)?;
    for failpoint in ["backup-data@300", "backup-before-commit"] {
        klio.stop()?;
        klio.set_env("KLIO_FAILPOINT", Some(failpoint));
        klio.restart()?;
        let token = klio.token_file(CLUSTER);
        let out = klio.client(&[
            "backup",
            "--cluster",
            CLUSTER,
            "--token-file",
            token.to_str().context("utf-8")?,
        ])?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            klio.wait_exit(Duration::from_secs(120))?,
            "the server did not hit failpoint {failpoint}"
        );
        ensure!(
            !pack_files(&klio)?.is_empty(),
            "{failpoint}: no pack written before the crash; the test proves nothing"
        );
        klio.set_env("KLIO_FAILPOINT", None);
        klio.restart()?;
        let backups = list(&klio)?;
        ensure!(
            backups.iter().all(|b| b["state"] == "failed"),
            "{failpoint}: {backups:?}"
        );
        ensure!(
            pack_files(&klio)?.is_empty(),
            "{failpoint}: packs left behind: {:?}",
            pack_files(&klio)?
        );
        println!("{failpoint}: crashed, recovered, no packs left");
    }
    // And the next backup works.
    let b = backup(&klio)?;
    ensure!(b["state"] == "complete", "{b}");
    Ok(())
}

#[test]
fn corrupted_chunk_fails_verify_naming_backup_and_file() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new())?;
    pg.pgbench(&["-i", "-s", "2"])?;
    let klio = start(&pg)?;
    let b = backup(&klio)?;
    let id = b["id"].as_str().context("id")?.to_string();
    // Flip one byte in the middle of the largest pack.
    let mut packs = pack_files(&klio)?;
    packs.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    let pack = packs.last().context("no pack")?;
    let mut bytes = std::fs::read(pack)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(pack, &bytes)?;

    let token = klio.token_file(CLUSTER);
    let out = klio.client_with_timeout(
        &[
            "verify",
            "--cluster",
            CLUSTER,
            "--token-file",
            token.to_str().context("utf-8")?,
        ],
        Duration::from_secs(600),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1),
        "verify should fail with exit 1: {}\n{stdout}\n{stderr}",
        out.status
    );
    ensure!(stdout.contains(&id), "backup id not named:\n{stdout}");
    ensure!(
        stdout.contains("base/") || stdout.contains("global/") || stdout.contains("pg_"),
        "no file named:\n{stdout}"
    );
    ensure!(stdout.contains("FAILED"), "{stdout}");
    println!("{stdout}");
    let st = klio.status(CLUSTER)?;
    ensure!(st["backups"]["last_verify_ok"] == false, "{st}");
    Ok(())
}

#[test]
fn second_request_while_running_gets_409() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new())?;
    pg.pgbench(&["-i", "-s", "4"])?;
    let mut klio = start(&pg)?;
    // Hold the first backup before its commit (the failpoint aborts the process there;
    // the second request arrives while it streams).
    klio.stop()?;
    klio.set_env("KLIO_FAILPOINT", Some("backup-before-commit"));
    klio.restart()?;
    let token = klio.token_file(CLUSTER);
    let args = [
        "backup",
        "--cluster",
        CLUSTER,
        "--token-file",
        token.to_str().context("utf-8")?,
    ];
    let first = klio.client(&args)?;
    ensure!(first.status.success());
    let second = klio.client(&args)?;
    let stderr = String::from_utf8_lossy(&second.stderr);
    ensure!(
        second.status.code() == Some(2) && stderr.contains("still running"),
        "second request: {} {stderr}",
        second.status
    );
    klio.wait_exit(Duration::from_secs(120))?;
    Ok(())
}

/// The directory copies are made in; the cluster's only `offload_roots` entry.
fn snapshot_root(pg: &PgInstance) -> Result<PathBuf> {
    postgres_dir(pg.data_dir().parent().context("parent")?, "snap")
}

/// Like [`start`], with offloads permitted from [`snapshot_root`] (offloads read only
/// inside the cluster's offload_roots).
fn start_offloadable(pg: &PgInstance) -> Result<KlioServer> {
    let mut conf = ClusterConf::new(CLUSTER, pg.replication_conninfo());
    conf.extra.push(format!(
        "offload_roots = [{:?}]",
        snapshot_root(pg)?.display().to_string()
    ));
    let klio = KlioServer::start(vec![conf])?;
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed(CLUSTER, &lsn, Duration::from_secs(60))?;
    Ok(klio)
}

/// A plain-format copy of `pg`'s data directory made by pg_basebackup: it carries a
/// backup_label, like a snapshot taken between pg_backup_start and pg_backup_stop.
fn pgdata_copy(pg: &PgInstance) -> Result<PathBuf> {
    let snap = snapshot_root(pg)?;
    let copy = snap.join("pgdata");
    let st = Command::new(pg.tool("pg_basebackup"))
        .arg("--dbname")
        .arg(pg.replication_conninfo())
        .arg("--pgdata")
        .arg(&copy)
        .args(["--wal-method=none", "--checkpoint=fast", "--no-password"])
        .status()?;
    ensure!(st.success(), "pg_basebackup: {st}");
    ensure!(copy.join("backup_label").exists());
    Ok(copy)
}

/// Offloads `copy` once Klio has the WAL written so far; returns the complete backup.
fn offload(klio: &KlioServer, pg: &PgInstance, copy: &Path) -> Result<Value> {
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed(CLUSTER, &lsn, Duration::from_secs(60))?;
    let out = klio.client_ok(
        CLUSTER,
        &[
            "offload",
            "--from",
            copy.to_str().context("utf-8")?,
            "--wait",
            "--output",
            "json",
        ],
    )?;
    let b: Value = serde_json::from_str(&out)?;
    ensure!(b["state"] == "complete" && b["kind"] == "offload", "{b}");
    Ok(b)
}

#[test]
fn offload_of_a_pgdata_copy_with_backup_label() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new())?;
    pg.pgbench(&["-i", "-s", "2"])?;
    let klio = start_offloadable(&pg)?;
    let copy = pgdata_copy(&pg)?;
    let b = offload(&klio, &pg, &copy)?;
    ensure!(n(&b, "files") > 500, "{b}");
    // The same data again: nearly everything deduplicates against the offload.
    let again = backup(&klio)?;
    ensure!(
        n(&again, "new_bytes") * 2 < n(&again, "stored_bytes"),
        "a backup of the same data should mostly deduplicate: {again}"
    );
    let report = klio.client_ok(CLUSTER, &["verify"])?;
    ensure!(report.contains("verify passed"), "{report}");

    // A directory without backup_label is refused with the reason, nothing stored.
    std::fs::remove_file(copy.join("backup_label"))?;
    let token = klio.token_file(CLUSTER);
    let out = klio.client(&[
        "offload",
        "--cluster",
        CLUSTER,
        "--token-file",
        token.to_str().context("utf-8")?,
        "--from",
        copy.to_str().context("utf-8")?,
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("backup_label"),
        "{stderr}"
    );
    ensure!(list(&klio)?.len() == 2);
    Ok(())
}

/// An offloaded copy is a backup like any other: restored into a new data directory it
/// passes pg_verifybackup (against the manifest pg_basebackup wrote into the copy),
/// starts, replays Klio's WAL and holds exactly the source's data.
#[test]
fn an_offloaded_copy_restores_and_recovers() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new())?;
    pg.pgbench(&["-i", "-s", "2"])?;
    let klio = start_offloadable(&pg)?;
    let copy = pgdata_copy(&pg)?;
    ensure!(copy.join("backup_manifest").exists());
    let b = offload(&klio, &pg, &copy)?;
    let expected = load_after_backup(&klio, &pg)?;
    let id = b["id"].as_str().context("id")?;
    let restored = klio.restore_and_recover(CLUSTER, Some(id), PgOptions::new())?;
    let got = table_checksums(&restored.pg, PGBENCH_TABLES)?;
    ensure!(
        got == expected,
        "restored offload differs\nexpected:\n{expected}got:\n{got}"
    );
    println!("offload {id} restored, verified and recovered to the source's contents");
    Ok(())
}

#[test]
fn scheduled_backup_runs_by_itself() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new())?;
    let mut conf = ClusterConf::new(CLUSTER, pg.replication_conninfo());
    // Every minute: the first run comes within 60 s of the start.
    conf.extra.push("backup_schedule = \"* * * * *\"".into());
    let klio = KlioServer::start(vec![conf])?;
    wait_until(
        Duration::from_secs(150),
        "a scheduled backup to complete",
        || {
            Ok(list(&klio)?.iter().any(|b| {
                b["state"] == "complete"
                    && b["label"]
                        .as_str()
                        .is_some_and(|l| l.starts_with("scheduled"))
            }))
        },
    )?;
    Ok(())
}

const PGBENCH_TABLES: &[&str] = &[
    "pgbench_accounts",
    "pgbench_branches",
    "pgbench_tellers",
    "pgbench_history",
];

/// Writes after a backup, makes sure Klio has them, and returns the tables' checksums:
/// what a restore of the backup must recover to.
fn load_after_backup(klio: &KlioServer, pg: &PgInstance) -> Result<String> {
    pg.pgbench(&["-t", "200", "-c", "2", "--no-vacuum"])?;
    pg.psql("SELECT pg_switch_wal()")?;
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed(CLUSTER, &lsn, Duration::from_secs(60))?;
    table_checksums(pg, PGBENCH_TABLES)
}

/// A backup of PostgreSQL `major` completes and verifies, and restored into a new data
/// directory of that major it passes pg_verifybackup, starts, replays Klio's WAL and
/// holds exactly the source's data.
fn backup_and_restore(major: u32) -> Result<()> {
    let pg = PgInstance::start(PgOptions::new().major(major))?;
    pg.pgbench(&["-i", "-s", "1"])?;
    let klio = start(&pg)?;
    let b = backup(&klio)?;
    ensure!(b["state"] == "complete", "PostgreSQL {major}: {b}");
    let report = klio.client_ok(CLUSTER, &["verify"])?;
    ensure!(report.contains("verify passed"), "{report}");
    let expected = load_after_backup(&klio, &pg)?;
    let id = b["id"].as_str().context("id")?;
    let restored = klio.restore_and_recover(CLUSTER, Some(id), PgOptions::new().major(major))?;
    let got = table_checksums(&restored.pg, PGBENCH_TABLES)?;
    ensure!(
        got == expected,
        "PostgreSQL {major}: restored contents differ\nexpected:\n{expected}got:\n{got}"
    );
    let version = restored.pg.psql("SHOW server_version_num")?;
    ensure!(
        version.starts_with(&major.to_string()),
        "restored into PostgreSQL {version}, not {major}"
    );
    println!("PostgreSQL {major}: backup {id} complete, verified, restored and recovered");
    Ok(())
}

#[test]
fn backup_from_postgres_13_restores_and_recovers() -> Result<()> {
    backup_and_restore(13)
}

#[test]
fn backup_from_postgres_17_restores_and_recovers() -> Result<()> {
    backup_and_restore(17)
}
