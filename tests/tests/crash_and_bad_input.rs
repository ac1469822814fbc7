//! Crashes and hostile input: SIGKILL mid-stream, wrong credentials, wrong master
//! key, a different system identifier, tampered stored data, hostile file names,
//! missing or wrong tokens. Each gives a clear error and loses nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{ensure, Context, Result};
use klio_tests::{parse_lsn, wait_until, ClusterConf, KlioServer, PgInstance, PgOptions};

fn wal_dir(klio: &KlioServer, cluster: &str) -> PathBuf {
    let cluster = cluster.parse().expect("a valid cluster name");
    klio.layout().wal(&cluster).path().to_path_buf()
}

#[test]
fn sigkill_mid_stream_then_restart_leaves_no_gap_and_no_mismatch() -> Result<()> {
    let mut pg = PgInstance::start(PgOptions::new().conf("wal_keep_size", "4GB"))?;
    let mut klio = KlioServer::start(vec![ClusterConf::new("k", pg.replication_conninfo())])?;
    klio.wait_status("k", Duration::from_secs(60), "streaming", |v| {
        v["state"] == "streaming"
    })?;
    pg.pgbench(&["-i", "-s", "4"])?;

    for round in 0..3 {
        std::thread::scope(|s| -> Result<()> {
            let load = s.spawn(|| pg.pgbench(&["-T", "4", "-c", "2"]));
            // Kill once WAL is flowing in this round.
            let before = klio.status("k")?["received_lsn"].as_str().map(String::from);
            wait_until(Duration::from_secs(30), "WAL to flow", || {
                Ok(klio.status("k")?["received_lsn"].as_str().map(String::from) != before)
            })?;
            klio.kill9();
            klio.restart()?;
            load.join().expect("pgbench thread")?;
            Ok(())
        })?;
        println!("round {round}: killed and restarted");
    }
    pg.psql("SELECT pg_switch_wal()")?;
    let flush = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed("k", &flush, Duration::from_secs(120))?;
    // Stop the primary so that no more WAL arrives while files and catalog are compared
    // (pg_wal stays on disk for the byte comparison).
    pg.stop(klio_tests::StopMode::Fast)?;
    klio.wait_status(
        "k",
        Duration::from_secs(30),
        "the primary to be gone",
        |v| v["state"] != "streaming",
    )?;

    // No gap: sealed segments form one contiguous run.
    let names = klio.wal_names("k")?;
    let sealed: Vec<u64> = names
        .iter()
        .filter(|n| n.len() == 24)
        .map(|n| u64::from_str_radix(&n[8..], 16))
        .collect::<Result<_, _>>()?;
    ensure!(sealed.len() >= 3, "too few sealed segments: {names:?}");
    for w in sealed.windows(2) {
        ensure!(w[1] == w[0] + 1, "gap between sealed segments: {names:?}");
    }
    // Every listed file reads back; sealed ones equal pg_wal.
    let out = tempfile::tempdir()?;
    for n in names.iter().filter(|n| n.len() == 24) {
        let dest = out.path().join(n);
        let o = klio.wal_restore("k", n, &dest)?;
        ensure!(
            o.status.success(),
            "{n}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        ensure!(
            std::fs::read(&dest)? == std::fs::read(pg.wal_dir().join(n))?,
            "{n} differs"
        );
    }
    // Catalog and files agree: every file in the WAL dir is listed and vice versa (the
    // writer may still be applying the last queued messages: wait for a stable view).
    // The spare a recompressed segment may leave holds no WAL and is not listed.
    let spare = klio.layout().wal(&"k".parse()?).spare();
    let spare = spare.file_name().context("spare name")?.to_string_lossy();
    let mut last = String::new();
    wait_until(
        Duration::from_secs(15),
        "files and catalog to agree",
        || {
            let mut on_disk: Vec<String> = std::fs::read_dir(wal_dir(&klio, "k"))?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<_, _>>()?;
            on_disk.retain(|n| *n != spare);
            on_disk.sort();
            let mut listed = klio.wal_names("k")?;
            listed.sort();
            last = format!("files {on_disk:?} vs catalog {listed:?}");
            Ok(on_disk == listed)
        },
    )
    .map_err(|e| e.context(last.clone()))?;
    Ok(())
}

#[test]
fn wrong_password_is_reported_and_stores_nothing() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new())?;
    let bad = pg
        .replication_conninfo()
        .replace("password=replpass", "password=wrong");
    let klio = KlioServer::start(vec![ClusterConf::new("pw", bad)])?;
    let st = klio.wait_status("pw", Duration::from_secs(30), "an auth error", |v| {
        v["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("password authentication failed"))
    })?;
    ensure!(st["state"] != "streaming");
    ensure!(!wal_dir(&klio, "pw").exists(), "nothing may be stored");
    let slots = pg.psql("SELECT count(*) FROM pg_replication_slots")?;
    ensure!(
        slots == "0",
        "no slot may be created with wrong credentials"
    );
    Ok(())
}

fn tree_snapshot(dir: &Path) -> Result<BTreeMap<PathBuf, (u64, SystemTime)>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let m = e.metadata()?;
            if m.is_dir() {
                stack.push(e.path());
            }
            out.insert(e.path(), (m.len(), m.modified()?));
        }
    }
    Ok(out)
}

#[test]
fn wrong_master_key_is_a_startup_error_that_touches_nothing() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new())?;
    let mut klio = KlioServer::start(vec![ClusterConf::new("mk", pg.replication_conninfo())])?;
    klio.wait_status("mk", Duration::from_secs(60), "streaming", |v| {
        v["state"] == "streaming"
    })?;
    pg.psql("SELECT pg_switch_wal()")?;
    let flush = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed("mk", &flush, Duration::from_secs(60))?;
    ensure!(klio.stop()?, "clean shutdown");

    let before = tree_snapshot(&klio.data_dir())?;
    std::fs::write(klio.master_key_path(), "11".repeat(32))?;
    let out = klio.start_expecting_failure()?;
    let stderr =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    ensure!(
        !out.status.success(),
        "server started with a wrong master key"
    );
    ensure!(
        stderr.contains("master key"),
        "error does not name the master key: {stderr}"
    );
    ensure!(
        tree_snapshot(&klio.data_dir())? == before,
        "data dir modified by a failed start"
    );
    Ok(())
}

#[test]
fn different_system_identifier_under_an_existing_name_is_refused() -> Result<()> {
    let pg1 = PgInstance::start(PgOptions::new())?;
    let pg2 = PgInstance::start(PgOptions::new())?;
    let mut klio = KlioServer::start(vec![ClusterConf::new("sid", pg1.replication_conninfo())])?;
    klio.wait_status("sid", Duration::from_secs(60), "streaming", |v| {
        v["state"] == "streaming"
    })?;
    pg1.psql("SELECT pg_switch_wal()")?;
    let flush = pg1.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed("sid", &flush, Duration::from_secs(60))?;
    let before = klio.wal_names("sid")?;
    klio.stop()?;

    klio.clusters_mut()[0].conninfo = pg2.replication_conninfo();
    klio.write_config()?;
    klio.restart()?;
    let st = klio.wait_status("sid", Duration::from_secs(30), "refusal", |v| {
        v["state"] == "failed"
    })?;
    let err = st["last_error"].as_str().unwrap_or_default();
    ensure!(err.contains("system identifier"), "unclear error: {err}");
    // What was stored is still there and readable.
    ensure!(klio.wal_names("sid")? == before);
    let sealed = before
        .iter()
        .find(|n| n.len() == 24)
        .context("a sealed segment")?;
    let (code, _) = klio.get("sid", &format!("/v1/clusters/sid/wal/{sealed}"))?;
    ensure!(code == 200);
    ensure!(pg2.psql("SELECT count(*) FROM pg_replication_slots")? == "0");
    Ok(())
}

#[test]
fn tampered_frame_fails_loudly_and_hostile_names_and_tokens_are_rejected() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new())?;
    let mut klio = KlioServer::start(vec![
        ClusterConf::new("a", pg.replication_conninfo()),
        ClusterConf::new("b", "host=127.0.0.1 port=1 user=nobody sslmode=disable"),
    ])?;
    klio.wait_status("a", Duration::from_secs(60), "streaming", |v| {
        v["state"] == "streaming"
    })?;
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 100000) AS i")?;
    pg.psql("SELECT pg_switch_wal()")?;
    let flush = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed("a", &flush, Duration::from_secs(60))?;
    let names = klio.wal_names("a")?;
    let seg = names
        .iter()
        .find(|n| n.len() == 24)
        .context("a sealed segment")?
        .clone();

    // Tokens: missing → 401, wrong → 401, other cluster's → 403.
    let url = format!("{}/v1/clusters/a/wal/{seg}", klio.url());
    ensure!(klio_tests::http_get(&url, None)?.0 == 401);
    ensure!(klio_tests::http_get(&url, Some("not-the-token-at-all"))?.0 == 401);
    ensure!(klio_tests::http_get(&url, Some(&klio.token("b")))?.0 == 403);
    ensure!(klio_tests::http_get(&url, Some(&klio.token("a")))?.0 == 200);

    // Hostile names: 400, never a path.
    for bad in [
        "..%2F..%2Fetc%2Fpasswd",
        "garbage",
        "000000010000000000000001.backup",
        "..",
        "00000001000000000000000g",
    ] {
        let (code, _) = klio.get("a", &format!("/v1/clusters/a/wal/{bad}"))?;
        ensure!(code == 400 || code == 404, "{bad}: HTTP {code}");
        if !bad.starts_with("..") {
            ensure!(code == 400, "{bad}: HTTP {code}");
        }
    }
    let dest_dir = tempfile::tempdir()?;
    let o = klio.wal_restore("a", "../../etc/passwd", &dest_dir.path().join("x"))?;
    ensure!(!o.status.success() && !dest_dir.path().join("x").exists());

    // Tamper with one byte of the sealed segment's stored frames.
    klio.stop()?;
    let path = klio.layout().wal(&"a".parse()?).file(&seg.parse()?);
    let mut bytes = std::fs::read(&path)?;
    let pos = bytes.len() / 2;
    bytes[pos] ^= 0x40;
    std::fs::write(&path, &bytes)?;
    klio.restart()?;
    let dest = dest_dir.path().join(&seg);
    let o = klio.wal_restore("a", &seg, &dest)?;
    ensure!(!o.status.success(), "a tampered segment was restored");
    ensure!(!dest.exists(), "wal-restore left a file behind");
    // WAL is streamed frame by frame: a frame that fails authentication before the
    // answer starts is a 500; one further in cuts the answer short (Content-Length is
    // the segment size), so no client can take the bytes for the segment.
    let (code, body) = klio.get("a", &format!("/v1/clusters/a/wal/{seg}"))?;
    ensure!(
        code == 500 || (code == 200 && body.len() < 16 << 20),
        "tampered read: HTTP {code} with {} bytes",
        body.len()
    );
    if code == 200 {
        ensure!(
            klio.log().contains("cut short"),
            "the cut-short answer was not logged"
        );
    }
    ensure!(
        !String::from_utf8_lossy(&body).contains(&*path.to_string_lossy()),
        "leaks a path"
    );
    // The other segments still read fine.
    let (first_ok, _) = klio.get(
        "a",
        &format!(
            "/v1/clusters/a/wal/{}",
            names
                .iter()
                .find(|n| n.len() == 24 && **n != seg)
                .unwrap_or(&seg)
        ),
    )?;
    ensure!(first_ok == 200 || names.iter().filter(|n| n.len() == 24).count() == 1);
    let _ = parse_lsn(&flush)?;
    Ok(())
}

#[test]
fn primary_restart_is_survived_with_no_gap() -> Result<()> {
    let mut pg = PgInstance::start(PgOptions::new().conf("wal_keep_size", "4GB"))?;
    let klio = KlioServer::start(vec![ClusterConf::new("rs", pg.replication_conninfo())])?;
    klio.wait_status("rs", Duration::from_secs(60), "streaming", |v| {
        v["state"] == "streaming"
    })?;
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 100000) AS i")?;

    pg.stop(klio_tests::StopMode::Immediate)?;
    klio.wait_status(
        "rs",
        Duration::from_secs(30),
        "the disconnect to be seen",
        |v| v["state"] != "streaming",
    )?;
    pg.restart()?;
    klio.wait_status("rs", Duration::from_secs(60), "streaming again", |v| {
        v["state"] == "streaming"
    })?;

    pg.psql("INSERT INTO t SELECT generate_series(1, 100000)")?;
    pg.psql("SELECT pg_switch_wal()")?;
    let flush = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed("rs", &flush, Duration::from_secs(60))?;
    let names: Vec<String> = klio
        .wal_names("rs")?
        .into_iter()
        .filter(|n| n.len() == 24)
        .collect();
    ensure!(names.len() >= 2, "{names:?}");
    let out = tempfile::tempdir()?;
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            let prev = u64::from_str_radix(&names[i - 1][8..], 16)?;
            ensure!(
                u64::from_str_radix(&n[8..], 16)? == prev + 1,
                "gap in {names:?}"
            );
        }
        let dest = out.path().join(n);
        ensure!(klio.wal_restore("rs", n, &dest)?.status.success());
        ensure!(
            std::fs::read(&dest)? == std::fs::read(pg.wal_dir().join(n))?,
            "{n} differs"
        );
    }
    Ok(())
}
