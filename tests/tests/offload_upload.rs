//! `klio offload --upload` end to end against real PostgreSQL, the way the Kubernetes
//! operator's Tier 0 Job uses it: a file-level copy of a *live* data directory and its
//! tablespace, made between `pg_backup_start` and `pg_backup_stop` in one session while
//! pgbench writes (torn pages and all, like a volume snapshot), without a
//! `backup_label` file (the label goes in `KLIO_BACKUP_LABEL`, as CloudNativePG keeps it
//! on the VolumeSnapshot). The client reads the copy and streams it; the restored
//! backup recovers through Klio's WAL to table checksums equal to the source's.
//!
//! Refusals change nothing: a server without `offload_uploads` answers 403; a copy of
//! another cluster, and a body cut off mid-file, leave a failed record and no chunk.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use klio_tests::{table_checksums, wait_until, ClusterConf, KlioServer, PgInstance, PgOptions};
use serde_json::Value;

const CLUSTER: &str = "up";
const TABLES: &[&str] = &[
    "pgbench_accounts",
    "pgbench_branches",
    "pgbench_tellers",
    "pgbench_history",
    "in_ts",
];

fn start_klio(pg: &PgInstance, uploads: bool) -> Result<KlioServer> {
    let mut conf = ClusterConf::new(CLUSTER, pg.replication_conninfo());
    if uploads {
        conf.extra.push("offload_uploads = true".into());
    }
    let klio = KlioServer::start(vec![conf])?;
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed(CLUSTER, &lsn, Duration::from_secs(60))?;
    Ok(klio)
}

/// Copies `from` to `to` file by file (as root), skipping files that vanish meanwhile
/// (a live data directory); symbolic links are copied as links.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = match e {
            Ok(e) => e,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err.into()),
        };
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ft = match e.file_type() {
            Ok(ft) => ft,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err.into()),
        };
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if ft.is_dir() {
            copy_tree(&src, &dst)?;
        } else if ft.is_file() {
            match std::fs::copy(&src, &dst) {
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err).with_context(|| src.display().to_string()),
            }
        }
    }
    Ok(())
}

/// A "snapshot" of `pg` under `<root>/pgdata` and `<root>/ts` (the tablespace, its link
/// pointing there, as a snapshot mounted where the original was), taken between
/// pg_backup_start and pg_backup_stop while pgbench runs; returns the backup_label text
/// pg_backup_stop returned and the stop LSN. No backup_label file is left in the copy.
fn live_snapshot(pg: &PgInstance, ts: &Path, root: &Path) -> Result<(String, String)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let conninfo = pg.superuser_conninfo();
    let pgdata = pg.data_dir().to_path_buf();
    let (ts, root) = (ts.to_path_buf(), root.to_path_buf());
    let (label, stop, load) = std::thread::scope(|scope| {
        // pgbench writes while the copy runs.
        let load = scope.spawn(|| pg.pgbench(&["-c", "2", "-T", "4", "--no-vacuum"]));
        let r = rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            client
                .simple_query("SELECT pg_backup_start('klio upload test', true)")
                .await?;
            // The copy starts once pgbench is writing.
            let before: i64 = client
                .query_one("SELECT count(*) FROM pgbench_history", &[])
                .await?
                .get(0);
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let n: i64 = client
                    .query_one("SELECT count(*) FROM pgbench_history", &[])
                    .await?
                    .get(0);
                if n > before {
                    break;
                }
                ensure!(
                    std::time::Instant::now() < deadline,
                    "pgbench wrote nothing in 30 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let (pgdata2, root2, ts2) = (pgdata.clone(), root.clone(), ts.clone());
            tokio::task::spawn_blocking(move || -> Result<()> {
                copy_tree(&pgdata2, &root2.join("pgdata"))?;
                copy_tree(&ts2, &root2.join("ts"))?;
                Ok(())
            })
            .await??;
            let row = client
                .query_one("SELECT labelfile, lsn::text FROM pg_backup_stop(true)", &[])
                .await?;
            anyhow::Ok((row.get::<_, String>(0), row.get::<_, String>(1)))
        });
        let load = load
            .join()
            .map_err(|_| anyhow::anyhow!("pgbench thread panicked"));
        r.map(|(l, s)| (l, s, load))
    })?;
    load?.context("pgbench during the copy")?;
    // The copied link points at the original tablespace: re-point it at the copy, as the
    // snapshot's volume is mounted where the original was.
    let links: Vec<PathBuf> = std::fs::read_dir(root.join("pgdata/pg_tblspc"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    ensure!(links.len() == 1, "one tablespace link expected: {links:?}");
    std::fs::remove_file(&links[0])?;
    std::os::unix::fs::symlink(root.join("ts"), &links[0])?;
    ensure!(!root.join("pgdata/backup_label").exists());
    Ok((label, stop))
}

/// `klio offload --upload` of `<root>/pgdata`, confined to `root`.
fn upload(klio: &KlioServer, copy_root: &Path, label: &str) -> Result<std::process::Output> {
    upload_from(klio, &copy_root.join("pgdata"), copy_root, label)
}

fn upload_from(
    klio: &KlioServer,
    from: &Path,
    copy_root: &Path,
    label: &str,
) -> Result<std::process::Output> {
    let token = klio.token_file(CLUSTER);
    let mut cmd = Command::new(klio_tests::klio_bin());
    cmd.args(["offload", "--upload", "--cluster", CLUSTER, "--token-file"])
        .arg(token)
        .arg("--from")
        .arg(from)
        .arg("--root")
        .arg(copy_root)
        .args(["--wait", "--output", "json"])
        .env("KLIO_SERVER", klio.url())
        .env("KLIO_BACKUP_LABEL", label);
    Ok(cmd.output()?)
}

fn list(klio: &KlioServer) -> Result<Vec<Value>> {
    let out = klio.client_ok(CLUSTER, &["list", "backups", "--output", "json"])?;
    let v: Value = serde_json::from_str(&out)?;
    Ok(v["backups"].as_array().cloned().unwrap_or_default())
}

fn pack_count(klio: &KlioServer) -> Result<usize> {
    let cluster = CLUSTER.parse().expect("a valid cluster name");
    let dir = klio.layout().backups(&cluster).packs_dir();
    if !dir.exists() {
        return Ok(0);
    }
    Ok(std::fs::read_dir(dir)?.count())
}

/// PostgreSQL with the tablespace `extra` (its directory returned) holding the table
/// `in_ts`, and pgbench's tables at `scale`.
fn postgres_with_tablespace(scale: u32) -> Result<(PgInstance, PathBuf)> {
    let pg = PgInstance::start(PgOptions::new())?;
    let ts = pg.owned_dir("ts_live")?;
    pg.psql(&format!(
        "CREATE TABLESPACE extra LOCATION '{}'",
        ts.display()
    ))?;
    pg.psql("CREATE TABLE in_ts TABLESPACE extra AS SELECT generate_series(1, 50000) AS i")?;
    pg.pgbench(&["-i", "-s", &scale.to_string()])?;
    Ok((pg, ts))
}

#[test]
fn an_uploaded_live_snapshot_restores_and_recovers_to_the_sources_checksums() -> Result<()> {
    let (pg, ts) = postgres_with_tablespace(2)?;
    let klio = start_klio(&pg, true)?;

    let snaps = tempfile::tempdir()?;
    let (label, stop) = live_snapshot(&pg, &ts, snaps.path())?;
    klio.wait_flushed(CLUSTER, &stop, Duration::from_secs(60))?;
    let out = upload(&klio, snaps.path(), &label)?;
    ensure!(
        out.status.success(),
        "upload failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let b: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(b["state"] == "complete" && b["kind"] == "offload", "{b}");
    ensure!(
        b["label"] == "klio upload test",
        "the label comes from backup_label: {b}"
    );
    let id = b["id"].as_str().context("id")?.to_string();

    // More load after the backup, then everything through Klio's WAL.
    pg.pgbench(&["-t", "200", "-c", "2", "--no-vacuum"])?;
    pg.psql("INSERT INTO in_ts SELECT generate_series(50001, 60000)")?;
    pg.psql("SELECT pg_switch_wal()")?;
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed(CLUSTER, &lsn, Duration::from_secs(60))?;
    let expected = table_checksums(&pg, TABLES)?;

    let tools = klio.tools_for_postgres(CLUSTER)?;
    let mut restored = PgInstance::empty(PgOptions::new())?;
    let new_ts = restored.owned_dir("ts_restored")?;
    let out = Command::new(&tools.bin)
        .args([
            "restore",
            "--cluster",
            CLUSTER,
            "--server",
            &klio.url(),
            "--token-file",
        ])
        .arg(&tools.token)
        .arg("--pgdata")
        .arg(restored.data_dir())
        .args(["--backup", &id, "--tablespace-map"])
        .arg(format!(
            "{}={}",
            snaps.path().join("ts").display(),
            new_ts.display()
        ))
        .output()?;
    ensure!(
        out.status.success(),
        "klio restore: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        std::fs::read_to_string(restored.data_dir().join("backup_label"))? == label,
        "the restored backup_label is the one pg_backup_stop returned"
    );
    restored.start_restored(std::slice::from_ref(&new_ts))?;
    wait_until(Duration::from_secs(120), "recovery to end", || {
        Ok(restored.psql("SELECT pg_is_in_recovery()")? == "f")
    })
    .with_context(|| restored.log_tail(40))?;
    let got = table_checksums(&restored, TABLES)?;
    ensure!(
        got == expected,
        "restored upload differs\nexpected:\n{expected}got:\n{got}"
    );
    println!("upload {id} of a live snapshot restored and recovered to the source's contents");
    Ok(())
}

#[test]
fn refused_uploads_change_nothing() -> Result<()> {
    let (pg, ts) = postgres_with_tablespace(1)?;

    // Uploads not enabled: 403 naming the setting, nothing recorded.
    let klio = start_klio(&pg, false)?;
    let snaps = tempfile::tempdir()?;
    let (label, stop) = live_snapshot(&pg, &ts, snaps.path())?;
    klio.wait_flushed(CLUSTER, &stop, Duration::from_secs(60))?;
    let out = upload(&klio, snaps.path(), &label)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("offload_uploads = true"),
        "{stderr}"
    );
    ensure!(list(&klio)?.is_empty());
    drop(klio);

    // Klio's WAL starts anew with this server: a snapshot taken before would lack it.
    let klio = start_klio(&pg, true)?;
    let snaps = tempfile::tempdir()?;
    let (label, stop) = live_snapshot(&pg, &ts, snaps.path())?;
    klio.wait_flushed(CLUSTER, &stop, Duration::from_secs(60))?;
    // A tablespace outside --root: refused by the client before anything is sent.
    let out = upload(&klio, &snaps.path().join("pgdata"), &label);
    let out = out?;
    ensure!(
        !out.status.success(),
        "a copy whose pgdata is not below root"
    );

    // Another cluster's copy (a different system identifier in pg_control).
    let control = snaps.path().join("pgdata/global/pg_control");
    let mut bytes = std::fs::read(&control)?;
    let original = bytes.clone();
    bytes[0] ^= 0xff;
    std::fs::write(&control, &bytes)?;
    let out = upload(&klio, snaps.path(), &label)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("another PostgreSQL cluster"),
        "{stderr}"
    );
    std::fs::write(&control, &original)?;
    let backups = list(&klio)?;
    ensure!(
        backups.len() == 1 && backups[0]["state"] == "failed",
        "{backups:?}"
    );
    ensure!(pack_count(&klio)? == 0, "a refused upload left packs");

    // A body cut off mid-file: the server aborts the backup.
    let token = klio.token(CLUSTER);
    let url = klio.url();
    let hostport = url.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(hostport)?;
    let mut body = klio_core::upload::MAGIC.to_vec();
    body.extend(klio_core::upload::frame(
        klio_core::upload::TAG_LABEL,
        label.as_bytes(),
    ));
    body.extend(klio_core::upload::entry_frame(
        &klio_core::upload::UploadEntry {
            tablespace: None,
            path: "base".into(),
            kind: klio_core::upload::UploadKind::File,
            mode: 0o600,
            mtime: 0,
            size: 1 << 20,
            link_target: None,
        },
    ));
    body.extend(klio_core::upload::frame_header(
        klio_core::upload::TAG_DATA,
        1 << 20,
    ));
    body.extend(vec![7u8; 4096]);
    write!(
        s,
        "POST /v1/clusters/{CLUSTER}/offloads/upload HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len() + (1 << 20)
    )?;
    s.write_all(&body)?;
    s.flush()?;
    drop(s);
    wait_until(
        Duration::from_secs(30),
        "the cut-off upload to fail",
        || {
            let b = list(&klio)?;
            Ok(b.len() == 2 && b.iter().all(|b| b["state"] == "failed"))
        },
    )?;
    let backups = list(&klio)?;
    let why = backups[1]["error"].as_str().unwrap_or("");
    if !why.contains("cut off") {
        bail!("the cut-off upload's error should say so: {backups:?}");
    }
    ensure!(pack_count(&klio)? == 0, "a cut-off upload left packs");

    // The same copy, intact, is accepted afterwards.
    let out = upload(&klio, snaps.path(), &label)?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
