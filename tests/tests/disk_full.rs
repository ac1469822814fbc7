//! Tier 1 out of space: a small tmpfs holds the cluster's Tier 1 directory. When it
//! fills, Klio says so (status, metric, a log line with the fix), acknowledges nothing it
//! has not stored, and once space is freed resumes by itself; every sealed segment is
//! then byte-identical to pg_wal (no torn frame survived the failed writes).
//!
//! A synchronous standby's next segment that has no room for its whole zero fill is cut
//! back and filled as the WAL comes, so the WAL still fits.
//!
//! A restart on a volume with no space left at all exits with one line naming the full
//! disk and the fix, and starts normally once space is freed. A base backup that fills
//! the volume fails with the fix named and removes what it had stored.
//!
//! Needs `mount -t tmpfs` (root, as in CI): without it these tests fail, unless
//! `KLIO_TEST_ALLOW_UNPRIVILEGED=1` lets them pass without running.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use klio_catalog::Catalog;
use klio_core::layout::DataDir;
use klio_core::{DataKey, Lsn, SegNo, TimelineId, WalFileName, WalSegSize};
use klio_receiver::wal_store::{SegmentWriter, WalStore};
use klio_tests::{
    parse_lsn, privileged_setup_failed, wait_until, ClusterConf, KlioServer, PgInstance, PgOptions,
};

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &Path, size: &str) -> Result<Mount> {
    std::fs::create_dir_all(dir)?;
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output()
        .context("running mount")?;
    ensure!(
        out.status.success(),
        "cannot mount a {size} tmpfs at {} ({}): {}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(Mount(dir.to_path_buf()))
}

/// A Klio server for `pg` (cluster `full`) with a `size` tmpfs mounted at the directory
/// `sub` picks in its data directory's layout (the data directory itself when `None`). When mounting is not
/// possible here the test fails, unless `KLIO_TEST_ALLOW_UNPRIVILEGED=1` (then `None`:
/// the caller returns without testing).
fn start_on_tmpfs(
    pg: &PgInstance,
    sub: Option<fn(&DataDir) -> PathBuf>,
    size: &str,
) -> Result<Option<(KlioServer, Mount)>> {
    let mut mount = None;
    let mut mount_failed = None;
    let klio = KlioServer::start_prepared(
        vec![ClusterConf::new("full", pg.replication_conninfo())],
        |data| {
            let at = match sub {
                Some(s) => s(&DataDir::new(data)),
                None => data.to_path_buf(),
            };
            match mount_tmpfs(&at, size) {
                Ok(m) => mount = Some(m),
                Err(e) => {
                    mount_failed = Some(e);
                    bail!("no tmpfs: the server is not started");
                }
            }
            Ok(())
        },
    );
    if let Some(e) = mount_failed {
        privileged_setup_failed(e)?;
        return Ok(None);
    }
    let klio = klio?;
    let mount = mount.context("mounted above")?;
    Ok(Some((klio, mount)))
}

/// Ends a test's server: stops it, unmounts its tmpfs, then lets the server's drop
/// remove its temporary directory. (Removed with the tmpfs still mounted in it, the
/// directory stayed behind: the mount point cannot be deleted.)
fn unmount_then_remove(mut klio: KlioServer, mount: Mount) {
    klio.kill9();
    drop(mount);
    drop(klio);
}

/// Free space of the file system holding `dir`, in MiB.
fn free_mib(dir: &Path) -> Result<u64> {
    let out = Command::new("df")
        .args(["--output=avail", "-B1M"])
        .arg(dir)
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    text.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("df printed {text:?}"))
}

#[test]
fn tier1_full_is_reported_acknowledges_nothing_more_and_resumes() -> Result<()> {
    full_disk_scenario(Some(DataDir::clusters_dir))
}

/// The whole data directory on the small file system, as on one Kubernetes volume:
/// the catalog's RocksDB runs out of space too.
#[test]
fn data_volume_full_with_the_catalog_on_it_is_reported_and_resumes() -> Result<()> {
    full_disk_scenario(None)
}

/// Mounts the small file system at the directory `sub` picks in Klio's data directory
/// (the data directory itself when `None`), fills it while WAL streams, then frees space.
fn full_disk_scenario(sub: Option<fn(&DataDir) -> PathBuf>) -> Result<()> {
    let pg = PgInstance::start(PgOptions::new().conf("wal_keep_size", "2GB"))?;
    let Some((klio, mount)) = start_on_tmpfs(&pg, sub, "40m")? else {
        return Ok(());
    };
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed("full", &lsn, Duration::from_secs(60))?;
    // Leave ~4 MB free, then write WAL that compresses poorly.
    let filler = mount.0.join("filler");
    let free_mb = free_mib(&mount.0)?;
    ensure!(
        free_mb > 8,
        "only {free_mb} MiB free on the test file system"
    );
    let st = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", &format!("count={}", free_mb - 4)])
        .arg(format!("of={}", filler.display()))
        .status()?;
    ensure!(st.success());
    pg.psql("CREATE TABLE noise (t text)")?;
    let mut full = false;
    for _ in 0..40 {
        pg.psql(
            "INSERT INTO noise SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 200), generate_series(1, 100) g GROUP BY g",
        )?;
        if klio.status("full")?["disk_full"] == true {
            full = true;
            break;
        }
    }
    if !full {
        wait_until(
            Duration::from_secs(60),
            "Klio to report the full disk",
            || Ok(klio.status("full")?["disk_full"] == true),
        )?;
    }
    let metrics = klio.metrics()?;
    ensure!(
        metrics.contains("klio_tier1_disk_full{cluster=\"full\"} 1"),
        "{metrics}"
    );
    // What the primary believes Klio has durably must be stored: it reads back below.
    // (The slot's restart_lsn follows the flush position Klio reported; Klio may be
    // disconnected now, so pg_stat_replication may have no row.)
    let acked = pg.psql(
        "SELECT coalesce(restart_lsn::text, '0/0') FROM pg_replication_slots WHERE slot_name = 'klio'",
    )?;
    let st = klio.status("full")?;
    let klio_flushed = st["flushed_lsn"].as_str().context("flushed_lsn")?;
    ensure!(
        parse_lsn(&acked)? <= parse_lsn(klio_flushed)?,
        "the primary saw {acked} acknowledged, Klio has {klio_flushed} durable"
    );
    // The error also says whether retention could help (no rules configured here).
    ensure!(
        st["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("out of space")
                && e.contains("free space")
                && e.contains("retention could free nothing: no [retention] rules")),
        "{st}"
    );
    println!(
        "disk full reported ({}); the slot's restart_lsn {acked} <= Klio's durable {klio_flushed}",
        st["last_error"]
    );

    // Free space: streaming resumes by itself and catches up.
    std::fs::remove_file(&filler)?;
    pg.psql("SELECT pg_switch_wal()")?;
    let end = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed("full", &end, Duration::from_secs(90))?;
    wait_until(
        Duration::from_secs(30),
        "the disk-full flag to clear",
        || Ok(klio.status("full")?["disk_full"] == false),
    )?;
    // Nothing torn or lost: every sealed segment equals PostgreSQL's.
    let sealed = klio.sealed_segments("full")?;
    let out = tempfile::tempdir()?;
    let compared = klio
        .compare_with_pg_wal("full", &pg.wal_dir(), out.path(), &sealed)?
        .total();
    ensure!(
        // At least the segment being written when the disk filled, sealed after the
        // switch above.
        compared == sealed.len() && compared >= 1,
        "{compared} of {}",
        sealed.len()
    );
    println!("resumed after space was freed; {compared} sealed segments identical to pg_wal");
    unmount_then_remove(klio, mount);
    Ok(())
}

/// Writes zeros into `path` until the file system refuses: nothing is left free.
fn fill_completely(path: &Path) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let block = vec![0u8; 64 * 1024];
    loop {
        match f.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Klio restarted on a data volume with no space left at all: it does not start half
/// way; it exits with a message that names the full disk and the fix, and starts
/// normally once space is freed, with nothing lost.
#[test]
fn a_full_data_volume_at_startup_is_a_clear_error_and_a_later_start_works() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new().conf("wal_keep_size", "1GB"))?;
    let Some((mut klio, mount)) = start_on_tmpfs(&pg, None, "40m")? else {
        return Ok(());
    };
    pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g")?;
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed("full", &lsn, Duration::from_secs(60))?;
    klio.stop()?;

    let filler = mount.0.join("filler");
    fill_completely(&filler)?;
    let out = klio.start_expecting_failure()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("start on a full volume: {}\n{text}", out.status);
    ensure!(!out.status.success(), "started on a full volume:\n{text}");
    ensure!(
        text.contains("out of space") && text.contains("free space"),
        "the error does not name the full disk and the fix:\n{text}"
    );

    std::fs::remove_file(&filler)?;
    klio.restart()?;
    pg.psql("INSERT INTO t SELECT g FROM generate_series(1, 1000) g")?;
    let end = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed("full", &end, Duration::from_secs(60))?;
    println!("started and caught up to {end} once space was freed");
    unmount_then_remove(klio, mount);
    Ok(())
}

/// Pack files under Klio's data directory (every cluster's base-backup data).
fn pack_files(data: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut dirs = vec![data.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "pack" || x == "tmp") {
                found.push(p);
            }
        }
    }
    Ok(found)
}

/// A base backup that runs out of space fails with the full disk and the fix named,
/// leaves no pack file behind, and once space is freed a new backup succeeds.
#[test]
fn a_backup_that_fills_the_volume_fails_clearly_and_removes_its_data() -> Result<()> {
    let pg = PgInstance::start(PgOptions::new().conf("wal_keep_size", "1GB"))?;
    // ~30 MB of hex text (stored at about half that), written before Klio streams so
    // that its WAL does not take the volume's space.
    pg.psql(
        "CREATE TABLE noise AS SELECT md5(random()::text) || md5(random()::text) AS t FROM generate_series(1, 400000)",
    )?;
    let Some((klio, mount)) = start_on_tmpfs(&pg, None, "48m")? else {
        return Ok(());
    };
    let lsn = pg.psql("SELECT pg_current_wal_flush_lsn()")?;
    klio.wait_flushed("full", &lsn, Duration::from_secs(60))?;
    let free_mb = free_mib(&mount.0)?;
    ensure!(
        free_mb > 12,
        "only {free_mb} MiB free on the test file system"
    );
    let filler = mount.0.join("filler");
    let st = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", &format!("count={}", free_mb - 6)])
        .arg(format!("of={}", filler.display()))
        .status()?;
    ensure!(st.success());
    let before = free_mib(&mount.0)?;
    // WAL keeps streaming during the backup (the primary's checkpoint, autovacuum of the
    // table above) and is not the backup's to remove: written on the commit path it is
    // stored uncompressed until its segment is sealed and recompressed.
    let wal_dir = klio.layout().wal(&"full".parse()?).path().to_path_buf();
    let wal_before = klio_tests::dir_size(&wal_dir);

    let token = klio.token_file("full");
    let token = token.to_str().context("utf-8")?;
    let args = [
        "backup",
        "--wait",
        "--cluster",
        "full",
        "--token-file",
        token,
    ];
    let out = klio.client_with_timeout(&args, Duration::from_secs(600))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("backup on a full volume: {}\n{text}", out.status);
    ensure!(!out.status.success(), "the backup succeeded:\n{text}");
    ensure!(
        text.contains("out of space") && text.contains("free space"),
        "the failure does not name the full disk and the fix:\n{text}"
    );
    let packs = pack_files(&klio.data_dir())?;
    ensure!(packs.is_empty(), "the failed backup left {packs:?}");
    let after = free_mib(&mount.0)?;
    let wal_grew = klio_tests::dir_size(&wal_dir)
        .saturating_sub(wal_before)
        .div_ceil(1 << 20);
    ensure!(
        after + wal_grew + 1 >= before,
        "{before} MiB were free before the backup, {after} MiB after it failed ({wal_grew} MiB of it streamed WAL)"
    );

    std::fs::remove_file(&filler)?;
    klio.client_ok("full", &["backup", "--wait"])?;
    ensure!(!pack_files(&klio.data_dir())?.is_empty());
    println!("failed backup removed its data ({before} -> {after} MiB free); a backup after freeing space succeeded");
    unmount_then_remove(klio, mount);
    Ok(())
}

/// After a synchronous standby's commits (uncompressed frames, a flush each) the writer
/// creates the next segment filled whole with zeros (the segment plus an eighth: 18 MiB).
/// With 8 MiB left, that fill fails; the segment is cut back to its header and filled
/// 1 MiB ahead of the WAL instead, so the next MiB of WAL is stored, flushed and reads
/// back, and nothing is reported full.
#[test]
fn a_segment_without_room_for_its_whole_fill_still_takes_the_wal() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let _mount = match mount_tmpfs(&data, "40m") {
        Ok(m) => m,
        Err(e) => return privileged_setup_failed(e),
    };
    let catalog = Arc::new(Catalog::open(&dir.path().join("catalog"))?);
    let seg = WalSegSize::DEFAULT;
    let cluster: klio_core::ClusterName = "c1".parse()?;
    let store = WalStore::open(&data, cluster.clone(), DataKey::generate(), seg, catalog)?;
    let tli = TimelineId::new(1).context("timeline 1")?;
    let seg_len = seg.bytes() as usize;
    let wal: Vec<u8> = (0..seg_len + (1 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut w = SegmentWriter::new(store.clone());
    let mut at = 0u64;
    let mut write = |w: &mut SegmentWriter, piece: &[u8]| -> Result<()> {
        w.write(tli, Lsn(at), piece)?;
        w.flush()?;
        at += piece.len() as u64;
        Ok(())
    };
    for p in wal[..seg_len].chunks(8192) {
        write(&mut w, p)?;
    }
    let free = free_mib(&data)?;
    ensure!(free > 10, "only {free} MiB free after one segment");
    std::fs::write(data.join("ballast"), vec![1u8; ((free - 8) << 20) as usize])?;

    for p in wal[seg_len..].chunks(8192) {
        write(&mut w, p).context("storing WAL in a segment without room for its fill")?;
    }
    let partial = DataDir::new(&data)
        .wal(&cluster)
        .partial(tli, SegNo(1), seg);
    let len = std::fs::metadata(&partial)?.len();
    ensure!(
        len < 3 << 20,
        "segment 1's file is {len} bytes: not cut back to the WAL and 1 MiB ahead"
    );
    let back = store
        .open_read(&WalFileName::partial(tli, SegNo(1), seg))?
        .context("segment 1 is stored")?
        .read_all()?;
    ensure!(back[..] == wal[seg_len..], "segment 1 reads back different");
    Ok(())
}
