//! Tier 2 benchmarks (issue 14), each side by side in rotated rounds against a local S3
//! server (moto, started by `klio_harness::s3`):
//!
//! 1. Upload throughput: the same Tier 1 objects (incompressible WAL-segment-sized files
//!    and packs large enough to go multipart) uploaded by Klio's relay (catalog queue,
//!    create-only PUTs, multipart with abort, bounded concurrency, catalog records) and by
//!    a plain parallel upload with the same library (`object_store` `put` and
//!    `put_multipart`, the same concurrency and part size), each round to a fresh prefix.
//!    Every object of both arms is read back and its SHA-256 compared with the source's.
//! 2. WAL intake: a Klio server catching up the same backlog of WAL with `[tier2]`
//!    configured (relaying as it goes) and without; intake time = server start until the
//!    primary sees Klio's flush at the end (`pg_stat_replication`, asked every 5 ms over
//!    one connection), then checked in Klio's status. The relaying arm also prints how
//!    long the backlog took to drain.
//!
//! Run: `cargo build --release -p klio -p klio-bench && KLIO_BIN=$CARGO_TARGET_DIR/release/klio \
//!       $CARGO_TARGET_DIR/release/klio-bench-tier2 [UPLOAD_MB] [WAL_SCALE] [ROUNDS]`
//! (defaults 512 MB of objects, pgbench scale 40 ≈ 520 MB of WAL, 3 rounds; 0 skips a
//! part). Everything is written in temp dirs removed after each phase; each round's
//! objects are deleted from the S3 server after they were checked.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use klio_bench::replication::{copy_slot, drop_slot, kept_backlog, KeptBacklog};
use klio_bench::rounds::{self, Arm, Sample};
use klio_catalog::{Catalog, ClusterRecord, RelayItem, RelayKind};
use klio_core::layout::DataDir;
use klio_core::{ClusterName, SystemId, TimelineId, WalFileName, WalSegSize};
use klio_harness::s3::{S3Server, DEFAULT_BUCKET};
use klio_tests::{parse_lsn, write_secret, ClusterConf, KlioServer, PgInstance};
use klio_tiering::{Relay, RelaySettings, Tier2, Tier2Config};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};

/// Objects uploaded at once by both arms (the relay's default).
const CONCURRENCY: usize = 4;
/// Part size of both arms' multipart uploads (the relay's default).
const PART: usize = 8 << 20;
/// Objects from this size on go multipart (the relay's threshold).
const MULTIPART_FROM: usize = 16 << 20;

/// The Tier 1 objects of the upload benchmark: files in a template data directory.
struct Objects {
    dir: tempfile::TempDir,
    /// (kind, name, path, size, sha256)
    files: Vec<(RelayKind, String, PathBuf, u64, [u8; 32])>,
    mb: f64,
}

fn cluster() -> ClusterName {
    "bench".parse().expect("a valid cluster name")
}

/// Incompressible bytes (a xorshift stream), `len` of them.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `mb` MB of objects: 3/4 as 4 MiB segments, 1/4 as 24 MiB packs (multipart).
fn make_objects(mb: u64) -> Result<Objects> {
    let dir = tempfile::tempdir()?;
    let data = DataDir::new(dir.path());
    let c = cluster();
    let mut files = Vec::new();
    let total = mb << 20;
    let seg_bytes = 4u64 << 20;
    let segments = (total * 3 / 4) / seg_bytes;
    let pack_bytes = 24u64 << 20;
    let packs = (total / 4).div_ceil(pack_bytes);
    let wal = data.wal(&c);
    std::fs::create_dir_all(wal.path())?;
    for n in 0..segments {
        let name = WalFileName::segment(
            TimelineId::FIRST,
            klio_core::SegNo(n + 1),
            WalSegSize::DEFAULT,
        );
        let path = wal.file(&name);
        let body = noise(seg_bytes as usize, n + 1);
        std::fs::write(&path, &body)?;
        files.push((
            RelayKind::WalSegment,
            name.to_string(),
            path,
            seg_bytes,
            Sha256::digest(&body).into(),
        ));
    }
    let backups = data.backups(&c);
    std::fs::create_dir_all(backups.packs_dir())?;
    for n in 0..packs {
        let name = format!("20261126T000000Z-{:04}", n + 1);
        let path = backups.pack(&name.parse()?);
        let body = noise(pack_bytes as usize, 1000 + n);
        std::fs::write(&path, &body)?;
        files.push((
            RelayKind::Pack,
            name,
            path,
            pack_bytes,
            Sha256::digest(&body).into(),
        ));
    }
    let bytes: u64 = files.iter().map(|f| f.3).sum();
    Ok(Objects {
        dir,
        files,
        mb: bytes as f64 / 1e6,
    })
}

/// A Tier 2 on the moto server at `prefix`, as Klio opens it.
fn tier2(s3: &S3Server, keys: &Path, prefix: &str) -> Result<Tier2> {
    let cfg = Tier2Config {
        url: format!("s3://{DEFAULT_BUCKET}/{prefix}"),
        endpoint: Some(s3.endpoint()),
        region: Some("us-east-1".into()),
        access_key_id_file: Some(keys.join("id")),
        secret_access_key_file: Some(keys.join("secret")),
        ca_file: None,
        allow_http: true,
    };
    Ok(Tier2::open(&cfg.validate()?)?)
}

/// The same bucket through `object_store` directly, with its own retries off as Klio's.
fn plain_store(s3: &S3Server) -> Result<Arc<dyn ObjectStore>> {
    Ok(Arc::new(
        AmazonS3Builder::new()
            .with_bucket_name(DEFAULT_BUCKET)
            .with_region("us-east-1")
            .with_endpoint(s3.endpoint())
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_access_key_id("bench")
            .with_secret_access_key("bench")
            .build()?,
    ))
}

/// The object's key below the prefix, as the relay names it.
fn bucket_key(kind: RelayKind, name: &str) -> Result<ObjPath> {
    let data = DataDir::new("/unused");
    Ok(klio_tiering::objects::place(&data, &cluster(), kind, name)?.key)
}

/// Reads every object of the round back, compares it with the source, then deletes it.
async fn check_and_clear(store: &Arc<dyn ObjectStore>, prefix: &str, objs: &Objects) -> Result<()> {
    let listed: Vec<_> = store
        .list(Some(&ObjPath::from(prefix)))
        .try_collect()
        .await?;
    ensure!(
        listed.len() >= objs.files.len(),
        "{} objects under {prefix}, {} uploaded",
        listed.len(),
        objs.files.len()
    );
    for (kind, name, _, size, sha) in &objs.files {
        let key = ObjPath::from(format!("{prefix}/{}", bucket_key(*kind, name)?));
        let body = store.get(&key).await?.bytes().await?;
        ensure!(
            body.len() as u64 == *size,
            "{key}: {} bytes, {size} sent",
            body.len()
        );
        ensure!(
            <[u8; 32]>::from(Sha256::digest(&body)) == *sha,
            "{key}: content differs"
        );
    }
    for m in listed {
        store.delete(&m.location).await?;
    }
    Ok(())
}

/// Klio's relay: a fresh catalog queue over hard links of the objects, drained.
fn relay_arm(
    rt: &tokio::runtime::Runtime,
    s3: &S3Server,
    keys: &Path,
    objs: &Objects,
    prefix: &str,
) -> Result<Sample> {
    let dir = tempfile::tempdir()?;
    let data = DataDir::new(dir.path());
    let c = cluster();
    for (_, _, path, _, _) in &objs.files {
        let rel = path.strip_prefix(objs.dir.path())?;
        let to = dir.path().join(rel);
        std::fs::create_dir_all(to.parent().context("a parent")?)?;
        std::fs::hard_link(path, &to)?;
    }
    let catalog = Arc::new(Catalog::open(&data.catalog_dir())?);
    catalog.put_cluster(&ClusterRecord {
        name: c.clone(),
        system_id: SystemId::from(1),
        wrapped_key: vec![0; 61],
        slot: "klio".into(),
        seg_size: WalSegSize::DEFAULT,
        timeline: TimelineId::FIRST,
        created_unix: 1,
    })?;
    let items: Vec<RelayItem> = objs
        .files
        .iter()
        .map(|(k, n, _, size, _)| RelayItem::new(*k, n.clone(), *size, 1))
        .collect();
    catalog.relay_enqueue(&c, &items)?;
    let relay = Relay::new(
        Arc::new(tier2(s3, keys, prefix)?),
        Arc::clone(&catalog),
        data,
        c.clone(),
        RelaySettings::default(),
    );
    let t = Instant::now();
    rt.block_on(async {
        loop {
            let r = relay.pass().await?;
            if r.attempted == 0 {
                break;
            }
            ensure!(r.failed == 0, "the relay failed uploads: {r:?}");
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let secs = t.elapsed().as_secs_f64();
    ensure!(
        catalog.relay_items(&c)?.is_empty(),
        "the queue did not drain"
    );
    rt.block_on(check_and_clear(&plain_store(s3)?, prefix, objs))?;
    Ok(Sample::new()
        .with("secs", secs)
        .with("MB_per_s", objs.mb / secs))
}

/// The same files with `object_store` alone: `put` below the multipart threshold,
/// `WriteMultipart` (same part size, same parts in flight) above it.
fn plain_arm(
    rt: &tokio::runtime::Runtime,
    s3: &S3Server,
    objs: &Objects,
    prefix: &str,
) -> Result<Sample> {
    let store = plain_store(s3)?;
    let t = Instant::now();
    rt.block_on(async {
        stream::iter(objs.files.iter())
            .map(|(kind, name, path, size, _)| {
                let store = Arc::clone(&store);
                async move {
                    let key = ObjPath::from(format!("{prefix}/{}", bucket_key(*kind, name)?));
                    let body = Bytes::from(tokio::fs::read(path).await?);
                    if (*size as usize) < MULTIPART_FROM {
                        store.put(&key, PutPayload::from_bytes(body)).await?;
                    } else {
                        let upload = store.put_multipart(&key).await?;
                        let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
                        for part in body.chunks(PART) {
                            w.wait_for_capacity(4).await?;
                            w.write(part);
                        }
                        w.finish().await?;
                    }
                    Ok::<_, anyhow::Error>(())
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
    })?;
    let secs = t.elapsed().as_secs_f64();
    rt.block_on(check_and_clear(&store, prefix, objs))?;
    Ok(Sample::new()
        .with("secs", secs)
        .with("MB_per_s", objs.mb / secs))
}

/// How often the intake arms ask how far the server is.
const POLL: Duration = Duration::from_millis(5);

/// Waits until the primary sees Klio's flush reach `end` (`pg_stat_replication`, over one
/// open connection): asking PostgreSQL rather than Klio's status every few milliseconds
/// keeps the measuring out of the measured process (a status computes storage and Tier 2
/// figures; PostgreSQL's view costs both arms the same).
fn wait_reported_flush(
    rt: &tokio::runtime::Runtime,
    pg: &tokio_postgres::Client,
    end: &str,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3600);
    rt.block_on(async {
        loop {
            let row = pg
                .query_one(
                    "SELECT coalesce(bool_or(flush_lsn >= $1::text::pg_lsn), false) \
                     FROM pg_stat_replication WHERE application_name = 'klio'",
                    &[&end],
                )
                .await?;
            if row.get::<_, bool>(0) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "Klio's flush never reached {end}"
            );
            tokio::time::sleep(POLL).await;
        }
    })
}

/// A fresh Klio server catching up the keeper slot's backlog, with or without Tier 2.
fn intake(
    rt: &tokio::runtime::Runtime,
    watch: &tokio_postgres::Client,
    pg: &PgInstance,
    end: &str,
    mb: f64,
    tier2: Option<(&S3Server, &Path, String)>,
) -> Result<Sample> {
    copy_slot(pg, "keeper", "klio")?;
    let mut conf = ClusterConf::new("bench", pg.replication_conninfo());
    conf.slot = "klio".into();
    let top = match &tier2 {
        Some((s3, keys, prefix)) => vec![
            "[tier2]".to_string(),
            format!("url = \"s3://{DEFAULT_BUCKET}/{prefix}\""),
            format!("endpoint = {:?}", s3.endpoint()),
            format!(
                "access_key_id_file = {:?}",
                keys.join("id").display().to_string()
            ),
            format!(
                "secret_access_key_file = {:?}",
                keys.join("secret").display().to_string()
            ),
            "allow_http = true".into(),
        ],
        None => Vec::new(),
    };
    let t = Instant::now();
    let klio = KlioServer::start_with(vec![conf], top)?;
    // Asked every 5 ms: the whole catch-up takes about two seconds.
    wait_reported_flush(rt, watch, end)?;
    let secs = t.elapsed().as_secs_f64();
    // What Klio reported is what it has.
    klio.wait_flushed("bench", end, Duration::from_secs(10))?;
    let mut sample = Sample::new().with("secs", secs).with("MB_per_s", mb / secs);
    if tier2.is_some() {
        let st = klio.wait_status_every(
            "bench",
            Duration::from_secs(3600),
            POLL,
            "the Tier 2 backlog to drain",
            |v| {
                v["tier2"]["backlog_objects"] == 0
                    && v["storage"]["tier2_objects"].as_u64() > Some(1)
            },
        )?;
        ensure!(st["tier2"]["dead_letters"] == 0, "dead letters: {st}");
        sample = sample.with("drained_after_secs", t.elapsed().as_secs_f64());
    }
    drop(klio);
    drop_slot(pg, "klio")?;
    Ok(sample)
}

fn main() -> Result<()> {
    let upload_mb: u64 = klio_bench::arg(1, 512)?;
    let scale: u32 = klio_bench::arg(2, 40)?;
    let rounds: usize = klio_bench::arg(3, 3)?;
    let s3 = S3Server::start()?;
    let keys = tempfile::tempdir()?;
    write_secret(&keys.path().join("id"), "bench")?;
    write_secret(&keys.path().join("secret"), "bench")?;
    let rt = tokio::runtime::Runtime::new()?;

    if upload_mb > 0 {
        let objs = make_objects(upload_mb)?;
        let mut n = 0u32;
        let next = std::cell::RefCell::new(move || {
            n += 1;
            format!("r{n}")
        });
        let mut arms = [
            Arm::new("klio relay", |_| {
                relay_arm(&rt, &s3, keys.path(), &objs, &(next.borrow_mut())())
            }),
            Arm::new("object_store parallel upload", |_| {
                plain_arm(&rt, &s3, &objs, &(next.borrow_mut())())
            }),
        ];
        let title = format!(
            "Tier 2 upload of {:.0} MB ({} objects, {CONCURRENCY} at once, multipart from {} MiB in {} MiB parts) to moto",
            objs.mb,
            objs.files.len(),
            MULTIPART_FROM >> 20,
            PART >> 20
        );
        let res = rounds::run(&title, &mut arms, rounds)?;
        res.print();
        println!(
            "  ratio klio relay / object_store parallel upload throughput (medians): {:.2}x",
            res.median("klio relay", "MB_per_s")?
                / res.median("object_store parallel upload", "MB_per_s")?
        );
    }

    if scale > 0 {
        let KeptBacklog { pg, start, end } = kept_backlog(scale)?;
        let mb = (parse_lsn(&end)?.0 - parse_lsn(&start)?.0) as f64 / 1e6;
        let mut n = 0u32;
        let prefix = std::cell::RefCell::new(move || {
            n += 1;
            format!("intake{n}")
        });
        let watch = rt.block_on(pg.client())?;
        let mut arms = [
            Arm::new("klio without Tier 2", |_| {
                intake(&rt, &watch, &pg, &end, mb, None)
            }),
            Arm::new("klio relaying to Tier 2", |_| {
                let p = (prefix.borrow_mut())();
                intake(&rt, &watch, &pg, &end, mb, Some((&s3, keys.path(), p)))
            }),
        ];
        let title = format!("WAL intake of {mb:.0} MB (pgbench -i -s {scale}) with and without Tier 2; time includes the server start");
        let res = rounds::run(&title, &mut arms, rounds)?;
        res.print();
        println!(
            "  ratio relaying / without intake throughput (medians): {:.2}x",
            res.median("klio relaying to Tier 2", "MB_per_s")?
                / res.median("klio without Tier 2", "MB_per_s")?
        );
    }
    Ok(())
}
