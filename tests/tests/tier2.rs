//! Tier 2 end to end, against real PostgreSQL and a real S3-compatible server (moto),
//! reached through a proxy that can make it fail:
//! - sealed WAL, history files, packs and manifests reach the bucket byte for byte, under
//!   keys that mirror Tier 1, and the status and metrics count them per tier;
//! - with the bucket answering 503, streaming and synchronous commits go on, a backup
//!   completes, the backlog shows the waiting objects, and it drains once the bucket is
//!   back, leaving the bucket equal to Tier 1;
//! - Klio killed while uploads are in flight: after a restart every object is in the
//!   bucket, once;
//! - an object that conflicts with what the bucket holds becomes a visible dead letter
//!   that blocks nothing else, and `klio tier2 retry` queues it again once fixed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use klio_harness::fault_proxy::FaultProxy;
use klio_harness::s3::{S3Server, DEFAULT_BUCKET};
use klio_tests::{write_secret, ClusterConf, KlioServer, PgInstance, PgOptions};
use serde_json::Value;

const CLUSTER: &str = "t2";
const PREFIX: &str = "site-a";

/// The S3 server, the proxy in front of it, and the credential files Klio reads.
struct Bucket {
    s3: S3Server,
    proxy: FaultProxy,
    secrets: tempfile::TempDir,
}

impl Bucket {
    fn start() -> Result<Bucket> {
        let s3 = S3Server::start()?;
        let proxy = FaultProxy::start(s3.port())?;
        let secrets = tempfile::tempdir()?;
        write_secret(&secrets.path().join("key-id"), "klio-test-key")?;
        write_secret(&secrets.path().join("secret"), "klio-test-secret")?;
        Ok(Bucket { s3, proxy, secrets })
    }

    /// The `[tier2]` table: through the proxy, static keys, plain http allowed.
    fn config(&self) -> Vec<String> {
        let file = |n: &str| self.secrets.path().join(n).display().to_string();
        vec![
            "[tier2]".into(),
            format!("url = \"s3://{DEFAULT_BUCKET}/{PREFIX}\""),
            format!("endpoint = {:?}", self.proxy.endpoint()),
            "region = \"us-east-1\"".into(),
            format!("access_key_id_file = {:?}", file("key-id")),
            format!("secret_access_key_file = {:?}", file("secret")),
            "allow_http = true".into(),
        ]
    }

    /// The bucket's keys below the prefix.
    fn keys(&self) -> Result<Vec<String>> {
        Ok(self
            .s3
            .object_keys(DEFAULT_BUCKET)?
            .into_iter()
            .filter(|k| k.starts_with(&format!("{PREFIX}/")))
            .collect())
    }
}

fn start_klio(pg: &PgInstance, bucket: &Bucket) -> Result<KlioServer> {
    let klio = KlioServer::start_with(
        vec![ClusterConf::new(CLUSTER, pg.replication_conninfo())],
        bucket.config(),
    )?;
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed(CLUSTER, &lsn, Duration::from_secs(60))?;
    Ok(klio)
}

/// Seals `n` more segments (with a little data in each).
fn switch_wal(pg: &PgInstance, n: usize) -> Result<()> {
    pg.psql("CREATE TABLE IF NOT EXISTS t2_fill (i int, pad text)")?;
    for _ in 0..n {
        pg.psql("INSERT INTO t2_fill SELECT g, repeat('x', 100) FROM generate_series(1, 2000) g")?;
        pg.psql("SELECT pg_switch_wal()")?;
    }
    Ok(())
}

/// Tier 1's final objects of the cluster (no `.partial`, no `.tmp`, not the spare file a
/// recompressed segment leaves), keyed by the object key Tier 2 must hold them under:
/// `<prefix>/<cluster>/<path below the cluster dir>`.
fn tier1_objects(klio: &KlioServer) -> Result<BTreeMap<String, PathBuf>> {
    let root = klio.layout().cluster_dir(&CLUSTER.parse()?);
    let spare = klio.layout().wal(&CLUSTER.parse()?).spare();
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir)? {
            let path = e?.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".partial") || name.ends_with(".tmp") || path == spare {
                continue;
            }
            let rel = path.strip_prefix(&root)?.to_str().context("UTF-8 path")?;
            out.insert(format!("{PREFIX}/{CLUSTER}/{rel}"), path.clone());
        }
    }
    Ok(out)
}

/// Waits until nothing waits for Tier 2 and Tier 2 holds (at least: retention keeps
/// the chunk indexes of removed backups there while their packs stay) Tier 1's objects
/// and the cluster's key object.
fn wait_drained(klio: &KlioServer, timeout: Duration) -> Result<Value> {
    klio.wait_status(CLUSTER, timeout, "the Tier 2 backlog to drain", |v| {
        let held = v["storage"]["tier2_objects"].as_u64().unwrap_or(0);
        v["tier2"]["backlog_objects"] == 0
            && tier1_objects(klio).is_ok_and(|t1| held > t1.len() as u64)
    })
}

/// The bucket holds exactly Tier 1's final objects, each byte for byte, and the
/// cluster's key object. Returns how many Tier 1 objects.
fn assert_bucket_mirrors_tier1(bucket: &Bucket, klio: &KlioServer) -> Result<usize> {
    let t1 = tier1_objects(klio)?;
    let keys = bucket.keys()?;
    let cluster_object = format!("{PREFIX}/{CLUSTER}/cluster.json");
    let mut expected: Vec<&String> = t1.keys().collect();
    expected.push(&cluster_object);
    expected.sort();
    ensure!(
        keys.iter().collect::<Vec<_>>() == expected,
        "the bucket's keys differ from Tier 1's objects:\nbucket: {keys:#?}\ntier 1: {expected:#?}"
    );
    let object: Value =
        serde_json::from_slice(&bucket.s3.get_object(DEFAULT_BUCKET, &cluster_object)?)?;
    let st = klio.status(CLUSTER)?;
    ensure!(
        object["format"] == "klio-cluster-v1" && object["system_id"] == st["system_id"],
        "cluster.json does not describe the cluster: {object} (status {st})"
    );
    ensure!(
        object["wrapped_key"]
            .as_str()
            .is_some_and(|k| k.len() == 122),
        "cluster.json holds no wrapped data key: {object}"
    );
    for (key, path) in &t1 {
        let there = bucket.s3.get_object(DEFAULT_BUCKET, key)?;
        let here = std::fs::read(path)?;
        ensure!(
            there == here,
            "{key}: {} bytes in the bucket differ from Tier 1's {} bytes",
            there.len(),
            here.len()
        );
    }
    Ok(t1.len())
}

fn backup(klio: &KlioServer) -> Result<Value> {
    let out = klio.client_ok(CLUSTER, &["backup", "--wait", "--output", "json"])?;
    let b: Value = serde_json::from_str(&out)?;
    ensure!(b["state"] == "complete", "backup not complete: {b}");
    Ok(b)
}

/// `klio status` (the table) with the cluster's token.
fn status_table(klio: &KlioServer) -> Result<String> {
    let token = klio.token_file(CLUSTER);
    let out = klio.client(&["status", "--token-file", token.to_str().context("UTF-8")?])?;
    ensure!(
        out.status.success(),
        "klio status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `klio <args> --cluster <cluster> --token-file <its token>`, whatever its outcome.
fn cluster_client(klio: &KlioServer, args: &[&str]) -> Result<std::process::Output> {
    let token = klio.token_file(CLUSTER);
    let mut all = args.to_vec();
    all.extend([
        "--cluster",
        CLUSTER,
        "--token-file",
        token.to_str().context("UTF-8")?,
    ]);
    klio.client(&all)
}

fn count(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

#[test]
fn wal_and_backups_reach_the_bucket_and_an_outage_loses_nothing() -> Result<()> {
    let bucket = Bucket::start()?;
    // Klio is the only synchronous standby: it streams before anything commits.
    let pg = PgInstance::start(PgOptions::new().synchronous_standby_names("klio"))?;
    let klio = start_klio(&pg, &bucket)?;
    klio.wait_sync_standby(&pg, CLUSTER)?;
    pg.pgbench(&["-i", "-s", "2"])?;
    switch_wal(&pg, 3)?;
    let first = backup(&klio)?;
    eprintln!("backup taken; waiting for the relay");
    let st = wait_drained(&klio, Duration::from_secs(120))?;
    let n = assert_bucket_mirrors_tier1(&bucket, &klio)?;
    let keys = bucket.keys()?;
    let id = first["id"].as_str().context("backup id")?;
    for want in [
        format!("{PREFIX}/{CLUSTER}/backups/{id}/manifest.klio"),
        format!("{PREFIX}/{CLUSTER}/backups/{id}/backup_manifest.klio"),
        format!("{PREFIX}/{CLUSTER}/backups/{id}/chunks.klio"),
    ] {
        ensure!(keys.contains(&want), "{want} missing from {keys:#?}");
    }
    ensure!(
        keys.iter()
            .any(|k| k.starts_with(&format!("{PREFIX}/{CLUSTER}/backups/packs/"))),
        "no pack in {keys:#?}"
    );
    ensure!(
        keys.iter().filter(|k| k.contains("/wal/")).count() >= 3,
        "fewer than 3 WAL objects in {keys:#?}"
    );
    ensure!(count(&st, "/storage/tier2_objects") == n as u64 + 1, "{st}");
    ensure!(count(&st, "/storage/tier2_bytes") > 0, "{st}");
    ensure!(count(&st, "/tier2/uploaded_objects") > n as u64, "{st}");
    ensure!(st["tier2"]["last_upload_at"].is_u64(), "{st}");
    ensure!(
        st["tier2"]["location"] == format!("s3://{DEFAULT_BUCKET}/{PREFIX}"),
        "{st}"
    );
    let out = klio.client_ok(CLUSTER, &["list", "backups", "--output", "json"])?;
    let listed: Value = serde_json::from_str(&out)?;
    ensure!(
        listed["backups"][0]["tiers"] == serde_json::json!({"tier1": true, "tier2": true}),
        "the listing does not show the backup in both tiers: {listed}"
    );
    let metrics = klio.metrics()?;
    for line in [
        format!("klio_tier2_backlog_objects{{cluster=\"{CLUSTER}\"}} 0"),
        format!(
            "klio_stored_objects{{cluster=\"{CLUSTER}\",tier=\"2\"}} {}",
            n + 1
        ),
        format!("klio_tier2_dead_letters{{cluster=\"{CLUSTER}\"}} 0"),
        // Drained: every segment the synchronous path stored plain was rewritten.
        format!("klio_tier1_recompress_backlog_segments{{cluster=\"{CLUSTER}\"}} 0"),
    ] {
        ensure!(
            metrics.lines().any(|l| l == line),
            "{line} missing:\n{metrics}"
        );
    }

    // The bucket answers 503: WAL intake, synchronous commits and backups go on.
    eprintln!("bucket mirrors Tier 1 ({n} objects); taking it down");
    bucket.proxy.set_unavailable(true);
    let out = pg.pgbench(&["-N", "-c", "2", "-T", "3"])?;
    ensure!(
        out.contains("number of transactions actually processed"),
        "pgbench failed while Tier 2 was down: {out}"
    );
    switch_wal(&pg, 2)?;
    backup(&klio)?;
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed(CLUSTER, &lsn, Duration::from_secs(60))?;
    let down = klio.wait_status(
        CLUSTER,
        Duration::from_secs(60),
        "failed uploads while Tier 2 is down",
        |v| count(v, "/tier2/backlog_objects") >= 3 && count(v, "/tier2/upload_failures") > 0,
    )?;
    ensure!(bucket.proxy.refused() > 0, "the proxy refused nothing");
    ensure!(
        count(&down, "/tier2/dead_letters") == 0,
        "a 503 made a dead letter: {down}"
    );
    ensure!(
        down["tier2"]["oldest_age_seconds"].is_u64(),
        "no age for the oldest waiting object: {down}"
    );
    let table = status_table(&klio)?;
    ensure!(table.contains("BACKLOG"), "{table}");

    // Back: the backlog drains and the bucket equals Tier 1 again.
    eprintln!("bucket back up");
    bucket.proxy.set_unavailable(false);
    wait_drained(&klio, Duration::from_secs(180))?;
    let m = assert_bucket_mirrors_tier1(&bucket, &klio)?;
    ensure!(
        m > n,
        "nothing new reached the bucket ({m} objects, {n} before)"
    );
    Ok(())
}

#[test]
fn a_server_killed_during_uploads_puts_every_object_in_the_bucket_once() -> Result<()> {
    let bucket = Bucket::start()?;
    let pg = PgInstance::start(PgOptions::new())?;
    pg.pgbench(&["-i", "-s", "8"])?;
    // Slow uploads (about 4 MB/s) so that the kill lands while they are in flight.
    bucket.proxy.set_delay(Duration::from_millis(4));
    let mut klio = start_klio(&pg, &bucket)?;
    switch_wal(&pg, 2)?;
    backup(&klio)?;
    let st = klio.status(CLUSTER)?;
    ensure!(
        count(&st, "/tier2/backlog_objects") > 0,
        "everything was uploaded before the kill; slow the proxy down further: {st}"
    );
    klio.kill9();
    bucket.proxy.set_delay(Duration::ZERO);
    klio.restart()?;
    wait_drained(&klio, Duration::from_secs(180))?;
    let n = assert_bucket_mirrors_tier1(&bucket, &klio)?;
    // Once: one key per object, and the catalog counts each once.
    let keys = bucket.keys()?;
    let mut unique = keys.clone();
    unique.dedup();
    ensure!(
        unique.len() == keys.len() && keys.len() == n + 1,
        "{keys:#?}"
    );
    let st = klio.status(CLUSTER)?;
    ensure!(count(&st, "/storage/tier2_objects") == n as u64 + 1, "{st}");
    Ok(())
}

#[test]
fn a_conflicting_object_is_a_visible_dead_letter_until_retried() -> Result<()> {
    let bucket = Bucket::start()?;
    let pg = PgInstance::start(PgOptions::new())?;
    // Another writer already put something else where the current segment will go.
    let segment = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")?;
    let key = format!("{PREFIX}/{CLUSTER}/wal/{segment}");
    bucket
        .s3
        .put_object(DEFAULT_BUCKET, &key, b"not this segment")?;
    let klio = start_klio(&pg, &bucket)?;
    switch_wal(&pg, 3)?;

    let dead = klio.wait_status(
        CLUSTER,
        Duration::from_secs(60),
        "the conflicting segment to be a dead letter and the rest to be uploaded",
        |v| count(v, "/tier2/dead_letters") == 1 && count(v, "/tier2/backlog_objects") == 1,
    )?;
    let letter = &dead["tier2"]["dead"][0];
    ensure!(
        letter["kind"] == "wal_segment" && letter["name"] == segment.as_str(),
        "{dead}"
    );
    let error = letter["error"].as_str().unwrap_or("");
    ensure!(
        error.contains("already exists with different content"),
        "the dead letter does not name the conflict: {dead}"
    );
    ensure!(
        bucket.s3.get_object(DEFAULT_BUCKET, &key)? == b"not this segment",
        "the existing object was replaced"
    );
    let table = status_table(&klio)?;
    ensure!(
        table.contains("klio tier2 retry") && table.contains(&segment),
        "`klio status` does not show the dead letter: {table}"
    );
    let metrics = klio.metrics()?;
    let line = format!("klio_tier2_dead_letters{{cluster=\"{CLUSTER}\"}} 1");
    ensure!(
        metrics.lines().any(|l| l == line),
        "{line} missing:\n{metrics}"
    );

    // Retried while the cause is still there: it fails again and is dead again.
    let out = klio.client_ok(CLUSTER, &["tier2", "retry", "--output", "json"])?;
    ensure!(
        serde_json::from_str::<Value>(&out)?["revived"] == 1,
        "{out}"
    );
    klio.wait_status(
        CLUSTER,
        Duration::from_secs(60),
        "the retried segment to fail again",
        |v| {
            count(v, "/tier2/dead_letters") == 1
                && count(v, "/tier2/dead/0/attempts") >= 1
                && count(v, "/tier2/upload_failures") >= 2
        },
    )?;

    // An object that is not waiting is named as such.
    let missing = cluster_client(
        &klio,
        &[
            "tier2",
            "retry",
            "--kind",
            "wal_segment",
            "--name",
            "0000000100000000000000FF",
        ],
    )?;
    ensure!(
        !missing.status.success(),
        "retrying an object that is not queued succeeded"
    );
    let stderr = String::from_utf8_lossy(&missing.stderr);
    ensure!(stderr.contains("is waiting for Tier 2"), "{stderr}");

    // The other writer's object removed: one retry and the bucket equals Tier 1.
    bucket.s3.delete_object(DEFAULT_BUCKET, &key)?;
    klio.client_ok(
        CLUSTER,
        &[
            "tier2",
            "retry",
            "--kind",
            "wal_segment",
            "--name",
            &segment,
        ],
    )?;
    wait_drained(&klio, Duration::from_secs(120))?;
    assert_bucket_mirrors_tier1(&bucket, &klio)?;
    Ok(())
}

/// The tables the restore tests compare.
const TABLES: [&str; 4] = [
    "pgbench_accounts",
    "pgbench_branches",
    "pgbench_tellers",
    "pgbench_history",
];

/// Seals the WAL written so far and waits until Klio holds it and Tier 2 has everything.
fn seal_and_drain(pg: &PgInstance, klio: &KlioServer) -> Result<()> {
    switch_wal(pg, 1)?;
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed(CLUSTER, &lsn, Duration::from_secs(60))?;
    wait_drained(klio, Duration::from_secs(120))?;
    Ok(())
}

/// A pgbench database backed up by Klio, then changed (so that a restore must replay
/// WAL), all of it in Tier 2. Returns the database, Klio, the backup and the tables'
/// checksums after the changes.
fn backed_up_then_changed(bucket: &Bucket) -> Result<(PgInstance, KlioServer, Value, String)> {
    let pg = PgInstance::start(PgOptions::new())?;
    pg.pgbench(&["-i", "-s", "2"])?;
    let klio = start_klio(&pg, bucket)?;
    let b = backup(&klio)?;
    pg.pgbench(&["-N", "-t", "3000"])?;
    let want = klio_tests::table_checksums(&pg, &TABLES)?;
    seal_and_drain(&pg, &klio)?;
    Ok((pg, klio, b, want))
}

#[test]
fn a_restore_reads_what_tier1_lost_from_tier2() -> Result<()> {
    let bucket = Bucket::start()?;
    let (_pg, klio, b, want) = backed_up_then_changed(&bucket)?;
    let tables = TABLES;

    // Tier 1 loses every final object: sealed WAL, packs, manifests.
    let lost = tier1_objects(&klio)?;
    ensure!(
        lost.keys().any(|k| k.contains("/backups/packs/")),
        "no pack to lose: {lost:#?}"
    );
    for path in lost.values() {
        std::fs::remove_file(path)?;
    }
    // The listing says where the backup is now.
    let out = klio.client_ok(CLUSTER, &["list", "backups", "--output", "json"])?;
    let listed: Value = serde_json::from_str(&out)?;
    let tiers = &listed["backups"][0]["tiers"];
    ensure!(
        tiers["tier1"] == false && tiers["tier2"] == true,
        "the listing does not say the backup is in Tier 2 only: {listed}"
    );
    let restored = klio.restore_and_recover(CLUSTER, b["id"].as_str(), PgOptions::new())?;
    let got = klio_tests::table_checksums(&restored.pg, &tables)?;
    ensure!(
        got == want,
        "restored from Tier 2, the tables differ:\nsource:\n{want}\nrestored:\n{got}"
    );
    // `klio verify` reads every chunk back from Tier 2 and finds the backup intact.
    let out = klio.client_ok(CLUSTER, &["verify", "--output", "json"])?;
    let report: Value = serde_json::from_str(&out)?;
    ensure!(
        report["ok"] == true && count(&report, "/backups/0/chunks_checked") > 0,
        "verify of a backup only Tier 2 holds: {report}"
    );
    Ok(())
}

/// The bucket's objects below the prefix, with their ETags and sizes.
fn bucket_state(bucket: &Bucket) -> Result<Vec<(String, String, u64)>> {
    Ok(bucket
        .s3
        .objects(DEFAULT_BUCKET)?
        .into_iter()
        .filter(|o| o.key.starts_with(&format!("{PREFIX}/")))
        .map(|o| (o.key, o.etag, o.size))
        .collect())
}

/// What a listing of backups says of each complete backup, minus what differs by design
/// between a writing server and a reader of its bucket (the tiers).
fn listed_backups(klio: &KlioServer) -> Result<Vec<Value>> {
    let out = klio.client_ok(CLUSTER, &["list", "backups", "--output", "json"])?;
    let v: Value = serde_json::from_str(&out)?;
    let mut list: Vec<Value> = v["backups"]
        .as_array()
        .context("no backups array")?
        .iter()
        .filter(|b| b["state"] == "complete")
        .cloned()
        .collect();
    for b in &mut list {
        if let Some(o) = b.as_object_mut() {
            o.remove("tiers");
        }
    }
    Ok(list)
}

/// The sealed segments and history files a server lists.
fn final_wal(klio: &KlioServer) -> Result<Vec<String>> {
    Ok(klio
        .wal_names(CLUSTER)?
        .into_iter()
        .filter(|n| !n.ends_with(".partial"))
        .collect())
}

/// `klio <args>` with the cluster's token must fail, saying the server is read-only, and
/// so must the request's `POST path` itself, with 409.
fn refused_as_read_only(klio: &KlioServer, args: &[&str], path: &str, body: &str) -> Result<()> {
    let out = cluster_client(klio, args)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("read-only"),
        "klio {} on a read-only server: {} {stderr}",
        args.join(" "),
        out.status
    );
    let url = format!("{}/v1/clusters/{CLUSTER}{path}", klio.url());
    let (code, body) = klio_tests::http_post_json(&url, Some(&klio.token(CLUSTER)), body)?;
    let body = String::from_utf8_lossy(&body);
    ensure!(
        code == 409 && body.contains("read-only"),
        "POST {path} on a read-only server: HTTP {code} {body}"
    );
    Ok(())
}

#[test]
fn a_read_only_server_restores_from_the_bucket_alone_and_writes_nothing() -> Result<()> {
    let bucket = Bucket::start()?;
    let (pg, mut writer, first, want) = backed_up_then_changed(&bucket)?;
    let tables = TABLES;
    let writer_backups = listed_backups(&writer)?;
    let writer_wal = final_wal(&writer)?;
    // The writer stops, so that nothing but the reader could change the bucket.
    writer.stop()?;
    let before = bucket_state(&bucket)?;

    let mut conf = ClusterConf::new(CLUSTER, "");
    conf.slot = String::new();
    let mut top = vec!["mode = \"read-only\"".to_string()];
    top.extend(bucket.config());
    let reader = KlioServer::start_with_key_of(&writer, vec![conf], top)?;
    let st = reader.status(CLUSTER)?;
    ensure!(
        st["state"] == "read_only" && st["tier2"]["rescan"]["cluster_found"] == true,
        "the read-only server's status: {st}"
    );
    ensure!(
        listed_backups(&reader)? == writer_backups,
        "the read-only server lists other backups:\nreader: {:#?}\nwriter: {writer_backups:#?}",
        listed_backups(&reader)?
    );
    ensure!(
        final_wal(&reader)? == writer_wal,
        "the read-only server lists other WAL:\nreader: {:?}\nwriter: {writer_wal:?}",
        final_wal(&reader)?
    );

    let restored = reader.restore_and_recover(CLUSTER, first["id"].as_str(), PgOptions::new())?;
    let got = klio_tests::table_checksums(&restored.pg, &tables)?;
    ensure!(
        got == want,
        "restored by the read-only server, the tables differ:\nsource:\n{want}\nrestored:\n{got}"
    );
    drop(restored);

    refused_as_read_only(&reader, &["backup"], "/backups", "{}")?;
    refused_as_read_only(
        &reader,
        &["offload", "--from", "/nonexistent"],
        "/offloads",
        r#"{"from": "/nonexistent"}"#,
    )?;
    refused_as_read_only(&reader, &["tier2", "retry"], "/tier2/retry", "{}")?;
    ensure!(
        bucket_state(&bucket)? == before,
        "the bucket changed while only the read-only server used it"
    );

    // The writer, now keeping only the latest backup, takes another: its retention
    // removes the first from both tiers. A rescan shows the reader both changes.
    writer
        .top_level_mut()
        .extend(["[retention]".to_string(), "latest = 1".to_string()]);
    writer.write_config()?;
    writer.restart()?;
    let second = backup(&writer)?;
    writer.wait_status(
        CLUSTER,
        Duration::from_secs(60),
        "retention after the backup",
        |_| listed_backups(&writer).is_ok_and(|l| l.len() == 1),
    )?;
    // That run kept Tier 1's WAL from the first segment not yet in Tier 2 (the frontier);
    // once everything is there, a run removes the rest.
    switch_wal(&pg, 1)?;
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    writer.wait_flushed(CLUSTER, &lsn, Duration::from_secs(60))?;
    writer.wait_status(
        CLUSTER,
        Duration::from_secs(120),
        "the backlog to drain",
        |v| v["tier2"]["backlog_objects"] == 0,
    )?;
    retention(&writer, &["apply"])?;
    wait_drained(&writer, Duration::from_secs(120))?;
    let out = reader.client_ok(CLUSTER, &["tier2", "rescan", "--output", "json"])?;
    let report: Value = serde_json::from_str(&out)?;
    ensure!(
        report["new_backups"] == 1
            && report["removed_backups"] == 1
            && count(&report, "/new_wal_segments") >= 1
            && count(&report, "/removed_objects") > 3,
        "the rescan did not find the writer's new backup and WAL, or kept what went: {report}"
    );
    let writer_backups = listed_backups(&writer)?;
    ensure!(
        listed_backups(&reader)? == writer_backups
            && writer_backups.len() == 1
            && writer_backups[0]["id"] == second["id"],
        "after a rescan the read-only server lists other backups:\nreader: {:#?}\nwriter: {writer_backups:#?}",
        listed_backups(&reader)?
    );
    let writer_wal = final_wal(&writer)?;
    ensure!(
        final_wal(&reader)? == writer_wal,
        "after a rescan the read-only server lists other WAL:\nreader: {:?}\nwriter: {writer_wal:?}",
        final_wal(&reader)?
    );
    // The bucket alone still restores the backup left (its chunks may be in packs of the
    // backup retention removed).
    let want = klio_tests::table_checksums(&pg, &TABLES)?;
    let restored = reader.restore_and_recover(CLUSTER, second["id"].as_str(), PgOptions::new())?;
    let got = klio_tests::table_checksums(&restored.pg, &TABLES)?;
    ensure!(
        got == want,
        "restored after retention:\n{got}\nsource:\n{want}"
    );
    drop(restored);
    // On the writing server a rescan is refused: it knows what it uploaded.
    let out = cluster_client(&writer, &["tier2", "rescan"])?;
    ensure!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("rescan is for read-only servers"),
        "a rescan on the writing server: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `klio retention <args> --output json` on the cluster.
fn retention(klio: &KlioServer, args: &[&str]) -> Result<Value> {
    let mut all = vec!["retention"];
    all.extend(args);
    all.extend(["--output", "json"]);
    Ok(serde_json::from_str(&klio.client_ok(CLUSTER, &all)?)?)
}

/// One tier's part of a retention report.
fn tier_report(report: &Value, tier: u64) -> Result<&Value> {
    report["tiers"]
        .as_array()
        .context("no tiers")?
        .iter()
        .find(|t| t["tier"] == tier)
        .with_context(|| format!("no tier {tier} in {report}"))
}

/// One tier's `held_back` notes in a retention report, as one text.
fn held_back(report: &Value, tier: u64) -> Result<String> {
    let t = tier_report(report, tier)?;
    Ok(t["held_back"].to_string())
}

/// How many WAL segments a list from [`removed`] holds.
fn wal_segments(removed: &[(String, String)]) -> usize {
    removed
        .iter()
        .filter(|(kind, _)| kind == "wal_segment")
        .count()
}

/// One tier's `(kind, name)` list of removed objects in a retention report.
fn removed(report: &Value, tier: u64) -> Result<Vec<(String, String)>> {
    let t = tier_report(report, tier)?;
    ensure!(t.get("error").is_none(), "tier {tier} stopped: {t}");
    Ok(t["removed"]
        .as_array()
        .context("no removed list")?
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap_or("").to_string(),
                o["name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect())
}

/// What the catalog of a stopped server says, checked for consistency: the complete
/// backups, and per chunk its pack and reference count, which must equal the number of
/// remaining backups whose manifest lists it; pack records are exactly the packs chunks
/// are in. Returns (backups, packs, segments as (timeline, segno, tier1, tier2)).
type CatalogView = (Vec<String>, Vec<String>, Vec<(u32, u64, bool, bool)>);

fn checked_catalog(klio: &KlioServer) -> Result<CatalogView> {
    use std::collections::{BTreeSet, HashMap};
    let master = klio_core::MasterKey::from_file(&klio.master_key_path())?;
    let ctx = klio_receiver::cluster::ServerContext::open(&klio.data_dir(), master)?;
    let cluster: klio_core::ClusterName = CLUSTER.parse()?;
    let rec = ctx
        .catalog
        .cluster(&cluster)?
        .context("no cluster record")?;
    let store = klio_basebackup::store::ChunkStore::open(
        &klio.data_dir(),
        cluster.clone(),
        ctx.data_key(&rec)?,
        ctx.catalog.clone(),
    )?;
    let backups: Vec<_> = ctx
        .catalog
        .backups(&cluster)?
        .into_iter()
        .filter(|b| b.state == klio_catalog::BackupState::Complete)
        .collect();
    let mut refs: HashMap<[u8; 32], u32> = HashMap::new();
    for b in &backups {
        let m = store.read_manifest(&b.id)?;
        let ids: BTreeSet<[u8; 32]> = m
            .files
            .iter()
            .flat_map(|f| f.chunks.iter().map(|c| c.0))
            .collect();
        for id in ids {
            *refs.entry(id).or_default() += 1;
        }
    }
    let records = ctx.catalog.chunks(&cluster)?;
    ensure!(
        records.len() == refs.len(),
        "{} chunk records, {} chunks referenced by the remaining backups",
        records.len(),
        refs.len()
    );
    let mut packs_of_chunks = BTreeSet::new();
    for (id, n) in &refs {
        let c = ctx
            .catalog
            .chunk(&cluster, id)?
            .context("a remaining backup references a chunk the catalog lost")?;
        ensure!(
            c.refs == *n,
            "chunk refs {} but {n} backups reference it",
            c.refs
        );
        packs_of_chunks.insert(c.pack);
    }
    let packs: Vec<String> = ctx
        .catalog
        .packs(&cluster)?
        .into_iter()
        .map(|p| p.name)
        .collect();
    ensure!(
        packs.iter().cloned().collect::<BTreeSet<_>>() == packs_of_chunks,
        "pack records {packs:?} are not the packs the remaining chunks are in {packs_of_chunks:?}"
    );
    let segments = ctx
        .catalog
        .segments(&cluster)?
        .into_iter()
        .map(|s| (s.tli.get(), s.segno.0, s.tiers.tier1, s.tiers.tier2))
        .collect();
    Ok((
        backups.iter().map(|b| b.id.to_string()).collect(),
        packs,
        segments,
    ))
}

#[test]
fn retention_keeps_the_latest_two_in_each_tier_and_everything_a_restore_needs() -> Result<()> {
    let bucket = Bucket::start()?;
    let pg = PgInstance::start(PgOptions::new())?;
    pg.pgbench(&["-i", "-s", "1"])?;
    let mut klio = start_klio(&pg, &bucket)?;
    let mut ids = Vec::new();
    for _ in 0..4 {
        pg.pgbench(&["-N", "-t", "500"])?;
        ids.push(backup(&klio)?["id"].as_str().context("id")?.to_string());
        switch_wal(&pg, 1)?;
    }
    pg.pgbench(&["-N", "-t", "500"])?;
    let want = klio_tests::table_checksums(&pg, &TABLES)?;
    seal_and_drain(&pg, &klio)?;
    let third: Value =
        serde_json::from_str(&klio.client_ok(CLUSTER, &["list", "backups", "--output", "json"])?)?;
    let third = third["backups"]
        .as_array()
        .context("backups")?
        .iter()
        .find(|b| b["id"] == ids[2].as_str())
        .cloned()
        .context("third backup listed")?;
    let anchor = klio_tests::parse_lsn(third["start_lsn"].as_str().context("start_lsn")?)?;

    // The rules take effect on restart; nothing runs them before we ask.
    klio.top_level_mut()
        .extend(["[retention]".to_string(), "latest = 2".to_string()]);
    klio.write_config()?;
    klio.stop()?;
    klio.restart()?;
    let dry = retention(&klio, &["apply", "--dry-run"])?;
    ensure!(dry["applied"] == false, "{dry}");
    // Packs mix chunks later backups still use with chunks only the old ones did: Tier 1
    // frees the latter in place.
    ensure!(
        removed(&dry, 1)?.iter().any(|(k, _)| k == "chunks"),
        "Tier 1 would free no chunk: {dry}"
    );
    let shown = retention(&klio, &["show"])?;
    ensure!(
        removed(&shown, 1)? == removed(&dry, 1)? && removed(&shown, 2)? == removed(&dry, 2)?,
        "show and apply --dry-run differ:\n{shown}\n{dry}"
    );
    for tier in [1, 2] {
        let gone: Vec<String> = removed(&dry, tier)?
            .into_iter()
            .filter(|(k, _)| k == "backup")
            .map(|(_, n)| n)
            .collect();
        ensure!(
            gone == ids[..2],
            "tier {tier} would remove backups {gone:?}, not {:?}",
            &ids[..2]
        );
        ensure!(
            removed(&dry, tier)?.iter().any(|(k, _)| k == "wal_segment"),
            "tier {tier} would remove no WAL: {dry}"
        );
    }
    let before_t1 = tier1_objects(&klio)?;
    let before_t2 = bucket.keys()?;
    let applied = retention(&klio, &["apply"])?;
    ensure!(applied["applied"] == true, "{applied}");
    for tier in [1, 2] {
        ensure!(
            removed(&applied, tier)? == removed(&dry, tier)?,
            "tier {tier}: apply removed other objects than the dry run listed:\n{applied}\n{dry}"
        );
    }
    // Repacked packs (half-empty ones) are new objects in both tiers once relayed.
    let repacked: Vec<String> = removed(&applied, 2)?
        .into_iter()
        .filter(|(k, _)| k == "repack")
        .map(|(_, n)| n)
        .collect();
    wait_drained(&klio, Duration::from_secs(120))?;

    // What the reports list is what vanished, in each tier, and nothing else did
    // (besides the cluster's catalog-made object, which never goes).
    let after_t2 = bucket.keys()?;
    // Tier 2 keeps a removed backup's chunk index while a pack it wrote is there.
    let pack_stays = |id: &str| {
        after_t2
            .iter()
            .any(|k| k.starts_with(&format!("{PREFIX}/{CLUSTER}/backups/packs/{id}-0")))
    };
    let key_of = |tier: u64, kind: &str, name: &str| -> Vec<String> {
        match kind {
            "backup" => ["manifest.klio", "backup_manifest.klio", "chunks.klio"]
                .iter()
                .filter(|f| tier == 1 || **f != "chunks.klio" || !pack_stays(name))
                .map(|f| format!("{PREFIX}/{CLUSTER}/backups/{name}/{f}"))
                .collect(),
            "pack" => vec![format!("{PREFIX}/{CLUSTER}/backups/packs/{name}.pack")],
            "chunks" | "repack" => vec![],
            _ => vec![format!("{PREFIX}/{CLUSTER}/wal/{name}")],
        }
    };
    let expect_gone = |tier: u64| -> Result<Vec<String>> {
        let mut keys: Vec<String> = removed(&dry, tier)?
            .iter()
            .flat_map(|(k, n)| key_of(tier, k, n))
            .collect();
        keys.sort();
        Ok(keys)
    };
    let after_t1 = tier1_objects(&klio)?;
    let mut gone_t1: Vec<String> = before_t1
        .keys()
        .filter(|k| !after_t1.contains_key(*k))
        .cloned()
        .collect();
    gone_t1.sort();
    ensure!(gone_t1 == expect_gone(1)?, "Tier 1 lost {gone_t1:#?}");
    let mut gone_t2: Vec<String> = before_t2
        .iter()
        .filter(|k| !after_t2.contains(k))
        .cloned()
        .collect();
    gone_t2.sort();
    ensure!(gone_t2 == expect_gone(2)?, "Tier 2 lost {gone_t2:#?}");
    ensure!(
        after_t1.keys().cloned().collect::<Vec<_>>() == {
            let mut k = after_t2.clone();
            k.retain(|k| {
                !k.ends_with("/cluster.json") && !k.ends_with("/chunks.klio")
                    || after_t1.contains_key(k)
            });
            k
        },
        "the tiers hold different objects after retention"
    );
    // No WAL ending at or before the oldest kept backup's start remains in either tier.
    let seg_size = 16u64 << 20;
    for key in after_t2
        .iter()
        .filter(|k| k.contains("/wal/") && !k.ends_with(".history"))
    {
        let name = key.rsplit('/').next().unwrap_or("");
        let segno = u64::from_str_radix(&name[8..16], 16)? * 0x100
            + u64::from_str_radix(&name[16..24], 16)?;
        ensure!(
            (segno + 1) * seg_size > anchor.0,
            "{key} ends before the oldest kept backup starts ({anchor})"
        );
    }
    let listed = listed_backups(&klio)?;
    let listed: Vec<&str> = listed.iter().filter_map(|b| b["id"].as_str()).collect();
    ensure!(listed == ids[2..], "listed after retention: {listed:?}");
    // The packs whose chunks were freed hold less on disk than their size.
    for (_, pack) in removed(&applied, 1)?.iter().filter(|(k, _)| k == "chunks") {
        use std::os::unix::fs::MetadataExt;
        let path = after_t1
            .iter()
            .find(|(k, _)| k.ends_with(&format!("/{pack}.pack")))
            .map(|(_, p)| p.clone())
            .with_context(|| format!("pack {pack} gone from Tier 1"))?;
        let m = std::fs::metadata(&path)?;
        ensure!(
            m.blocks() * 512 < m.len(),
            "{}: {} bytes allocated for {} bytes: nothing freed",
            path.display(),
            m.blocks() * 512,
            m.len()
        );
    }

    // A restore from the oldest kept backup replays every change since.
    let restored = klio.restore_and_recover(CLUSTER, Some(ids[2].as_str()), PgOptions::new())?;
    let got = klio_tests::table_checksums(&restored.pg, &TABLES)?;
    ensure!(
        got == want,
        "restored after retention:\n{got}\nsource:\n{want}"
    );
    drop(restored);

    // Applying again removes the repacked packs (their chunks are in the new ones, which
    // are in Tier 2), and a third run nothing; the catalog is consistent: references,
    // packs.
    let again = retention(&klio, &["apply"])?;
    for tier in [1, 2] {
        let packs: Vec<String> = removed(&again, tier)?
            .into_iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let want: Vec<String> = repacked.iter().map(|n| format!("pack {n}")).collect();
        ensure!(
            packs == want,
            "tier {tier}: the second run removed {packs:?}, not the repacked {want:?}"
        );
    }
    let third = retention(&klio, &["apply"])?;
    ensure!(
        removed(&third, 1)?.is_empty() && removed(&third, 2)?.is_empty(),
        "a third run removed more: {third}"
    );
    let after_t1 = tier1_objects(&klio)?;
    klio.stop()?;
    let (backups, packs, segments) = checked_catalog(&klio)?;
    ensure!(backups == ids[2..], "catalog backups {backups:?}");
    let pack_files: Vec<String> = after_t1
        .keys()
        .filter_map(|k| k.strip_suffix(".pack"))
        .filter_map(|k| k.rsplit('/').next())
        .map(String::from)
        .collect();
    ensure!(
        packs == pack_files,
        "pack records {packs:?}, pack files {pack_files:?}"
    );
    ensure!(
        segments
            .iter()
            .all(|&(_, segno, t1, t2)| (segno + 1) * seg_size > anchor.0 && (t1 || t2)),
        "segment records left behind: {segments:?}"
    );
    Ok(())
}

#[test]
fn with_tier2_down_retention_removes_nothing_tier2_lacks() -> Result<()> {
    let bucket = Bucket::start()?;
    let pg = PgInstance::start(PgOptions::new())?;
    pg.pgbench(&["-i", "-s", "1"])?;
    // The bucket is down from the start: nothing reaches Tier 2.
    bucket.proxy.set_unavailable(true);
    let mut top = bucket.config();
    top.extend(["[retention]".to_string(), "latest = 1".to_string()]);
    let klio = KlioServer::start_with(
        vec![ClusterConf::new(CLUSTER, pg.replication_conninfo())],
        top,
    )?;
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed(CLUSTER, &lsn, Duration::from_secs(60))?;
    let mut ids = Vec::new();
    for _ in 0..3 {
        pg.pgbench(&["-N", "-t", "300"])?;
        // Each backup is followed by an automatic retention run.
        ids.push(backup(&klio)?["id"].as_str().context("id")?.to_string());
        switch_wal(&pg, 1)?;
    }
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed(CLUSTER, &lsn, Duration::from_secs(60))?;
    let before = tier1_objects(&klio)?;
    let applied = retention(&klio, &["apply", "--tier", "1"])?;
    ensure!(
        removed(&applied, 1)?.is_empty(),
        "removed with Tier 2 down: {applied}"
    );
    ensure!(
        held_back(&applied, 1)?.contains("not in Tier 2 yet"),
        "nothing said why: {applied}"
    );
    ensure!(
        tier1_objects(&klio)? == before,
        "Tier 1 changed with Tier 2 down"
    );
    let listed = listed_backups(&klio)?;
    ensure!(
        listed.len() == 3,
        "backups gone with Tier 2 down: {listed:#?}"
    );

    // Once the bucket is back and holds everything, the rules apply in both tiers.
    bucket.proxy.set_unavailable(false);
    wait_drained(&klio, Duration::from_secs(180))?;
    let applied = retention(&klio, &["apply"])?;
    for tier in [1, 2] {
        let gone: Vec<String> = removed(&applied, tier)?
            .into_iter()
            .filter(|(k, _)| k == "backup")
            .map(|(_, n)| n)
            .collect();
        ensure!(
            gone == ids[..2],
            "tier {tier} removed backups {gone:?}: {applied}"
        );
    }
    let listed = listed_backups(&klio)?;
    let listed: Vec<&str> = listed.iter().filter_map(|b| b["id"].as_str()).collect();
    ensure!(listed == ids[2..], "listed: {listed:?}");
    Ok(())
}

/// `klio keys rotate` on a stopped server's config, optionally interrupted at a failpoint.
fn rotate_keys(
    klio: &KlioServer,
    new_key: &std::path::Path,
    failpoint: Option<&str>,
) -> Result<std::process::Output> {
    let mut cmd = std::process::Command::new(klio_tests::klio_bin());
    cmd.args(["keys", "rotate", "--config"])
        .arg(klio.config_path())
        .arg("--new-master-key-file")
        .arg(new_key);
    if let Some(f) = failpoint {
        cmd.env("KLIO_FAILPOINT", f);
    }
    Ok(cmd.output()?)
}

/// The wrapped key in the bucket's `cluster.json`.
fn bucket_wrapped_key(bucket: &Bucket) -> Result<String> {
    let key = format!("{PREFIX}/{CLUSTER}/cluster.json");
    let v: Value = serde_json::from_slice(&bucket.s3.get_object(DEFAULT_BUCKET, &key)?)?;
    Ok(v["wrapped_key"]
        .as_str()
        .context("wrapped_key")?
        .to_string())
}

#[test]
fn key_rotation_rewraps_every_key_and_an_interrupted_one_completes_or_rolls_back() -> Result<()> {
    let bucket = Bucket::start()?;
    let (pg, mut klio, b, want) = backed_up_then_changed(&bucket)?;
    klio.stop()?;
    let old_key = std::fs::read_to_string(klio.master_key_path())?;
    let old_wrapped = bucket_wrapped_key(&bucket)?;
    let new_path = klio.dir().join("new.key");
    let out = std::process::Command::new(klio_tests::klio_bin())
        .args(["keys", "generate", "--output"])
        .arg(&new_path)
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_key = std::fs::read_to_string(&new_path)?;

    // Interrupted after the catalog, before Tier 2; started with the old key: rolled back.
    let out = rotate_keys(&klio, &new_path, Some("keys-rotate-after-catalog"))?;
    ensure!(
        !out.status.success(),
        "the failpoint did not stop the rotation"
    );
    ensure!(
        bucket_wrapped_key(&bucket)? == old_wrapped,
        "Tier 2 changed before the failpoint"
    );
    klio.restart()?;
    ensure!(
        klio.log().contains("rotation was rolled back"),
        "no roll back logged"
    );
    klio.stop()?;
    ensure!(
        bucket_wrapped_key(&bucket)? == old_wrapped,
        "the roll back changed cluster.json"
    );

    // Interrupted again; started with the new key: completed, Tier 2 included.
    let out = rotate_keys(&klio, &new_path, Some("keys-rotate-after-catalog"))?;
    ensure!(
        !out.status.success(),
        "the failpoint did not stop the rotation"
    );
    write_secret(&klio.master_key_path(), &new_key)?;
    klio.restart()?;
    ensure!(
        klio.log().contains("rotation was completed"),
        "no completion logged"
    );
    klio.stop()?;
    let new_wrapped = bucket_wrapped_key(&bucket)?;
    ensure!(
        new_wrapped != old_wrapped,
        "cluster.json still holds the old wrapped key"
    );

    // The old key opens nothing: the server refuses it, naming the key.
    write_secret(&klio.master_key_path(), &old_key)?;
    let out = klio.start_expecting_failure()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("master key"),
        "the old key was not refused: {stderr}"
    );
    // A rotation back to the same key is refused; a complete one leaves no journal.
    write_secret(&klio.master_key_path(), &new_key)?;
    let out = rotate_keys(&klio, &new_path, None)?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("is the key in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !klio.layout().key_rotation().exists(),
        "a journal was left behind"
    );

    // With the new key: a restore from the bucket's and Tier 1's data, unchanged.
    klio.restart()?;
    let restored = klio.restore_and_recover(CLUSTER, b["id"].as_str(), PgOptions::new())?;
    let got = klio_tests::table_checksums(&restored.pg, &TABLES)?;
    ensure!(
        got == want,
        "restored after key rotation:\n{got}\nsource:\n{want}"
    );
    drop(pg);
    Ok(())
}

#[test]
fn retention_without_tier2_keeps_the_latest_and_finishes_after_a_crash() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new())?;
    pg.pgbench(&["-i", "-s", "1"])?;
    let mut klio = KlioServer::start(vec![ClusterConf::new(CLUSTER, pg.replication_conninfo())])?;
    let mut ids = Vec::new();
    for _ in 0..3 {
        pg.pgbench(&["-N", "-t", "300"])?;
        ids.push(backup(&klio)?["id"].as_str().context("id")?.to_string());
        switch_wal(&pg, 1)?;
    }
    pg.pgbench(&["-N", "-t", "300"])?;
    let want = klio_tests::table_checksums(&pg, &TABLES)?;
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed(CLUSTER, &lsn, Duration::from_secs(60))?;

    // Killed right after the catalog forgot the oldest backup, before its manifest went.
    klio.stop()?;
    klio.top_level_mut()
        .extend(["[retention]".to_string(), "latest = 1".to_string()]);
    klio.write_config()?;
    klio.set_env("KLIO_FAILPOINT", Some("retention-after-forget"));
    klio.restart()?;
    let _ = cluster_client(&klio, &["retention", "apply"])?;
    ensure!(
        klio.wait_exit(Duration::from_secs(30))?,
        "the failpoint did not stop the server"
    );
    let layout = klio.layout();
    let manifest = |id: &str| {
        layout
            .backups(&CLUSTER.parse().expect("cluster name"))
            .backup(&id.parse().expect("backup id"))
            .map(|d| d.manifest())
            .context("backup dir")
    };
    ensure!(
        manifest(&ids[0])?.is_file(),
        "the manifest went before the catalog forgot it"
    );

    // The next run finishes it: only the latest backup stays, with a consistent catalog.
    klio.set_env("KLIO_FAILPOINT", None);
    klio.restart()?;
    let applied = retention(&klio, &["apply"])?;
    ensure!(
        applied["tiers"].as_array().map(Vec::len) == Some(1),
        "{applied}"
    );
    ensure!(
        !manifest(&ids[0])?.exists(),
        "the forgotten backup's manifest stayed"
    );
    let listed = listed_backups(&klio)?;
    let listed: Vec<&str> = listed.iter().filter_map(|b| b["id"].as_str()).collect();
    ensure!(listed == ids[2..], "listed: {listed:?}");
    let restored = klio.restore_and_recover(CLUSTER, Some(ids[2].as_str()), PgOptions::new())?;
    let got = klio_tests::table_checksums(&restored.pg, &TABLES)?;
    ensure!(
        got == want,
        "restored after retention:\n{got}\nsource:\n{want}"
    );
    drop(restored);
    klio.stop()?;
    let (backups, packs, _) = checked_catalog(&klio)?;
    ensure!(backups == ids[2..], "catalog backups {backups:?}");
    let pack_files: Vec<String> = tier1_objects(&klio)?
        .keys()
        .filter_map(|k| k.strip_suffix(".pack"))
        .filter_map(|k| k.rsplit('/').next())
        .map(String::from)
        .collect();
    ensure!(
        packs == pack_files,
        "pack records {packs:?}, pack files {pack_files:?}"
    );
    Ok(())
}

/// A read-only server on the bucket (an empty data directory, the writer's master key).
fn start_reader(writer: &KlioServer, bucket: &Bucket) -> Result<KlioServer> {
    let mut conf = ClusterConf::new(CLUSTER, "");
    conf.slot = String::new();
    let mut top = vec!["mode = \"read-only\"".to_string()];
    top.extend(bucket.config());
    KlioServer::start_with_key_of(writer, vec![conf], top)
}

/// `klio tier2 rescan` on a read-only server; fails when it skipped a backup.
fn rescan(reader: &KlioServer) -> Result<Value> {
    let out = reader.client_ok(CLUSTER, &["tier2", "rescan", "--output", "json"])?;
    let report: Value = serde_json::from_str(&out)?;
    ensure!(
        report["skipped"].as_array().is_none_or(|s| s.is_empty()),
        "the rescan skipped something: {report}"
    );
    Ok(report)
}

/// Whether an object key or path belongs to backup `id`: under its directory, or one of
/// its packs (`<id>-NNNN.pack`). Not by prefix alone: a second backup taken in the same
/// second is `<id>-2`.
fn of_backup(key: &str, id: &str) -> bool {
    let file = key.rsplit('/').next().unwrap_or(key);
    let pack = file
        .strip_prefix(&format!("{id}-"))
        .and_then(|rest| rest.split('.').next())
        .is_some_and(|n| n.len() == 4 && n.bytes().all(|b| b.is_ascii_digit()));
    key.contains(&format!("/{id}/")) || pack
}

/// Retention repacks a pack most of whose bytes only a removed backup used: its live
/// chunks move to a new pack (with an index) in both tiers, and the next run removes
/// the old pack and, with it gone, the removed backup's chunk index, which Tier 2 kept
/// until then. Readers of the bucket follow: one that knew the old place, one that
/// starts while the removed backup's chunk index is the only place of the chunks the
/// remaining backup shares with it, and one that starts after the move restore it.
#[test]
fn repacking_moves_live_chunks_out_of_half_empty_packs_and_readers_follow() -> Result<()> {
    let bucket = Bucket::start()?;
    let pg = PgInstance::start(PgOptions::new())?;
    pg.pgbench(&["-i", "-s", "1"])?;
    // Most of the first backup is a table dropped before the second.
    pg.psql(
        "CREATE TABLE junk AS SELECT g, md5(g::text) || md5((g * 7)::text) AS pad \
         FROM generate_series(1, 400000) g",
    )?;
    let mut writer = start_klio(&pg, &bucket)?;
    let first = backup(&writer)?;
    let first_id = first["id"].as_str().context("id")?.to_string();
    pg.psql("DROP TABLE junk")?;
    pg.pgbench(&["-N", "-t", "300"])?;
    let second = backup(&writer)?;
    let second_id = second["id"].as_str().context("id")?.to_string();
    pg.pgbench(&["-N", "-t", "300"])?;
    let want = klio_tests::table_checksums(&pg, &TABLES)?;
    seal_and_drain(&pg, &writer)?;
    let first_packs: Vec<String> = bucket
        .keys()?
        .into_iter()
        .filter(|k| k.contains("/backups/packs/") && of_backup(k, &first_id))
        .collect();
    ensure!(!first_packs.is_empty(), "the first backup wrote no pack");

    // A reader that knows both backups where the first one put its chunks.
    let old_reader = start_reader(&writer, &bucket)?;
    ensure!(
        listed_backups(&old_reader)?.len() == 2,
        "the first reader does not list both backups"
    );

    writer
        .top_level_mut()
        .extend(["[retention]".to_string(), "latest = 1".to_string()]);
    writer.write_config()?;
    writer.stop()?;
    writer.restart()?;
    let dry = retention(&writer, &["apply", "--dry-run"])?;
    let applied = retention(&writer, &["apply"])?;
    ensure!(
        removed(&applied, 2)? == removed(&dry, 2)?,
        "apply differs from its dry run:\n{applied}\n{dry}"
    );
    let repacked: Vec<String> = removed(&applied, 2)?
        .into_iter()
        .filter(|(k, _)| k == "repack")
        .map(|(_, n)| n)
        .collect();
    let first_pack_names: Vec<String> = first_packs
        .iter()
        .filter_map(|k| k.rsplit('/').next()?.strip_suffix(".pack"))
        .map(String::from)
        .collect();
    ensure!(
        !repacked.is_empty() && repacked.iter().all(|p| first_pack_names.contains(p)),
        "retention repacked {repacked:?}, not the first backup's packs {first_pack_names:?}: {applied}"
    );
    wait_drained(&writer, Duration::from_secs(120))?;
    let keys = bucket.keys()?;
    let new_packs: Vec<&String> = keys
        .iter()
        .filter(|k| k.contains("/backups/packs/") && k.contains("-r"))
        .collect();
    ensure!(
        new_packs.iter().any(|k| k.ends_with(".pack"))
            && new_packs.iter().any(|k| k.ends_with(".index")),
        "no repacked pack with its index in the bucket: {keys:#?}"
    );
    let first_index = format!("{PREFIX}/{CLUSTER}/backups/{first_id}/chunks.klio");
    ensure!(
        keys.contains(&first_index) && !keys.iter().any(|k| k.ends_with(&format!("{first_id}/manifest.klio"))),
        "Tier 2 should hold the removed backup's chunk index (its packs stay) and not its manifest: {keys:#?}"
    );

    // A reader starting now places the shared chunks with that chunk index alone.
    let mid_reader = start_reader(&writer, &bucket)?;
    let listed = listed_backups(&mid_reader)?;
    ensure!(
        listed.len() == 1 && listed[0]["id"] == second_id.as_str(),
        "a reader started after the first backup's removal lists {listed:#?}"
    );
    rescan(&mid_reader)?;
    drop(mid_reader);

    // The next run removes the old packs in both tiers, then the chunk index.
    let again = retention(&writer, &["apply"])?;
    for tier in [1, 2] {
        let packs: Vec<String> = removed(&again, tier)?
            .into_iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let want: Vec<String> = repacked.iter().map(|n| format!("pack {n}")).collect();
        ensure!(
            packs == want,
            "tier {tier}: the second run removed {packs:?}, not {want:?}"
        );
    }
    let keys = bucket.keys()?;
    ensure!(
        !keys.iter().any(|k| of_backup(k, &first_id)),
        "the first backup left objects in the bucket: {keys:#?}"
    );
    ensure!(
        !tier1_objects(&writer)?
            .keys()
            .any(|k| of_backup(k, &first_id)),
        "the first backup left objects in Tier 1"
    );
    // The writer restores from Tier 1 (the repacked pack there).
    let restored = writer.restore_and_recover(CLUSTER, Some(&second_id), PgOptions::new())?;
    let got = klio_tests::table_checksums(&restored.pg, &TABLES)?;
    ensure!(got == want, "the writer restored:\n{got}\nsource:\n{want}");
    drop(restored);

    // The reader that knew the old places follows the move and restores.
    let report = rescan(&old_reader)?;
    ensure!(
        report["removed_backups"] == 1,
        "the first reader's rescan: {report}"
    );
    let restored = old_reader.restore_and_recover(CLUSTER, Some(&second_id), PgOptions::new())?;
    let got = klio_tests::table_checksums(&restored.pg, &TABLES)?;
    ensure!(
        got == want,
        "the first reader restored:\n{got}\nsource:\n{want}"
    );
    drop(restored);

    // So does a reader that starts now, from the bucket alone.
    let new_reader = start_reader(&writer, &bucket)?;
    let listed = listed_backups(&new_reader)?;
    ensure!(
        listed.len() == 1 && listed[0]["id"] == second_id.as_str(),
        "a reader started after the repacking lists {listed:#?}"
    );
    let restored = new_reader.restore_and_recover(CLUSTER, Some(&second_id), PgOptions::new())?;
    let got = klio_tests::table_checksums(&restored.pg, &TABLES)?;
    ensure!(
        got == want,
        "the new reader restored:\n{got}\nsource:\n{want}"
    );
    Ok(())
}

/// Segments the cluster's status says wait for the recompressor.
fn recompress_backlog(klio: &KlioServer) -> Result<u64> {
    let st = klio.status(CLUSTER)?;
    st.pointer("/storage/tier1_recompress_backlog")
        .and_then(Value::as_u64)
        .with_context(|| format!("no storage.tier1_recompress_backlog in {st}"))
}

/// The recompress backlog as `/metrics` exports it for [`CLUSTER`].
fn recompress_backlog_metric(klio: &KlioServer) -> Result<u64> {
    let text = klio.metrics()?;
    let prefix = format!("klio_tier1_recompress_backlog_segments{{cluster=\"{CLUSTER}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .with_context(|| format!("no {prefix}line in /metrics:\n{text}"))?
        .trim()
        .parse()
        .context("the backlog metric is not a count")
}

/// Tier 1 retention keeps WAL the recompressor has not rewritten yet, from the first
/// such segment on, and says why (removing it would lose the rewrite that queues it for
/// Tier 2); once it is rewritten, the same rules remove it, and the backup kept still
/// restores to the source's data.
#[test]
fn tier1_retention_keeps_wal_still_waiting_for_recompression() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new().synchronous_standby_names("klio"))?;
    let mut klio = KlioServer::start(vec![ClusterConf::new(CLUSTER, pg.replication_conninfo())])?;
    klio.wait_sync_standby(&pg, CLUSTER)?;
    pg.pgbench(&["-i", "-s", "1"])?;
    let first = backup(&klio)?["id"].as_str().context("id")?.to_string();

    // From here on the recompressor does not run: segments sealed now stay marked.
    klio.stop()?;
    klio.set_env("KLIO_TEST_RECOMPRESS_PAUSED", Some("1"));
    klio.restart()?;
    klio.wait_sync_standby(&pg, CLUSTER)?;
    // Commits of ~20 KB, each acknowledged on its own: stored plain on the commit path.
    pg.psql("CREATE TABLE fill (pad text)")?;
    let script = pg.owned_dir("fill")?.join("fill.sql");
    std::fs::write(
        &script,
        "INSERT INTO fill SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 600);\n",
    )?;
    pg.pgbench(&["-n", "-f", script.to_str().context("UTF-8")?, "-t", "2000"])?;
    switch_wal(&pg, 1)?;
    let second = backup(&klio)?["id"].as_str().context("id")?.to_string();
    switch_wal(&pg, 1)?;
    let want = klio_tests::table_checksums(&pg, &TABLES)?;
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed(CLUSTER, &lsn, Duration::from_secs(60))?;
    let waiting = recompress_backlog(&klio)?;
    ensure!(
        waiting > 0,
        "no segment waits for recompression: nothing to hold back"
    );
    let exported = recompress_backlog_metric(&klio)?;
    ensure!(
        exported == waiting,
        "/metrics exports a backlog of {exported}, the status {waiting}"
    );

    // latest = 1: the first backup goes, and the WAL before the second's start would,
    // but not from the first segment still waiting for its rewrite on.
    klio.stop()?;
    klio.top_level_mut()
        .extend(["[retention]".to_string(), "latest = 1".to_string()]);
    klio.write_config()?;
    klio.restart()?;
    let applied = retention(&klio, &["apply"])?;
    let gone = removed(&applied, 1)?;
    ensure!(
        gone.iter().any(|(_, name)| name == &first),
        "the first backup was not removed: {applied}"
    );
    ensure!(
        held_back(&applied, 1)?.contains("being recompressed"),
        "nothing said why WAL stays: {applied}"
    );
    ensure!(
        recompress_backlog(&klio)? == waiting,
        "retention removed a segment that waits for recompression: {applied}"
    );
    let wal_before = wal_segments(&gone);

    // The recompressor runs again: once it has rewritten everything, the rules apply.
    klio.stop()?;
    klio.set_env("KLIO_TEST_RECOMPRESS_PAUSED", None);
    klio.restart()?;
    klio_tests::wait_until(
        Duration::from_secs(120),
        "the recompressor to drain",
        || Ok(recompress_backlog(&klio)? == 0),
    )?;
    ensure!(
        recompress_backlog_metric(&klio)? == 0,
        "/metrics still exports a backlog once the recompressor has drained"
    );
    let applied = retention(&klio, &["apply"])?;
    let wal_after = wal_segments(&removed(&applied, 1)?);
    ensure!(
        wal_after > 0,
        "the WAL held back was not removed once rewritten ({wal_before} segment(s) went before): {applied}"
    );
    ensure!(
        !held_back(&applied, 1)?.contains("being recompressed"),
        "still held back after the rewrite: {applied}"
    );
    let restored = klio.restore_and_recover(CLUSTER, Some(second.as_str()), PgOptions::new())?;
    let got = klio_tests::table_checksums(&restored.pg, &TABLES)?;
    ensure!(
        got == want,
        "restored after retention:\n{got}\nsource:\n{want}"
    );
    Ok(())
}
