//! The catalog on a full file system: RocksDB's own write-ahead log and flushes fail with
//! ENOSPC. The error must say so (Klio reports it as "Tier 1 is out of space"), and once
//! space is freed the catalog must accept writes again without a restart, so that
//! streaming resumes by itself.
//!
//! Needs `mount -t tmpfs` (root, as in CI): without it this test fails, unless
//! `KLIO_TEST_ALLOW_UNPRIVILEGED=1` lets it pass without running.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use klio_catalog::{Catalog, SegmentRecord, SegmentState, Tiers};
use klio_core::{ClusterName, SegNo, TimelineId};

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Mounts a `size` tmpfs at `dir`; `None` when that is not possible here and
/// `KLIO_TEST_ALLOW_UNPRIVILEGED=1` (the test then returns without testing). Without
/// that opt-out (CI never sets it) a failed mount fails the test.
fn mount_tmpfs(dir: &Path, size: &str) -> Option<Mount> {
    std::fs::create_dir_all(dir).unwrap();
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output()
        .expect("running mount");
    if out.status.success() {
        return Some(Mount(dir.to_path_buf()));
    }
    let why = format!(
        "cannot mount a {size} tmpfs at {} ({}): {}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    if std::env::var("KLIO_TEST_ALLOW_UNPRIVILEGED").as_deref() == Ok("1") {
        eprintln!("NOT RUN (KLIO_TEST_ALLOW_UNPRIVILEGED=1): {why}");
        return None;
    }
    panic!(
        "{why}; this test needs root, as in CI; run it as root, or set KLIO_TEST_ALLOW_UNPRIVILEGED=1 to let it pass without running"
    );
}

fn record(segno: u64) -> SegmentRecord {
    SegmentRecord {
        tli: TimelineId::new(1).unwrap(),
        segno: SegNo(segno),
        state: SegmentState::Sealed,
        plain_size: 16 << 20,
        crc32c: Some(7),
        stored_size: 1234,
        tiers: Tiers {
            tier1: true,
            tier2: false,
        },
        recompress: false,
    }
}

/// Writes zeros into `path` until the file system refuses.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&block) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            break;
        }
    }
    // Whatever fit is kept: the file system is now full to the byte (or nearly).
    let _ = f.flush();
}

#[test]
fn enospc_is_reported_as_disk_full_and_the_catalog_recovers_once_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = mount_tmpfs(&dir.path().join("m"), "16m") else {
        return;
    };
    let cat = Catalog::open(&mount.0.join("catalog")).unwrap();
    let cluster: ClusterName = "full".parse().unwrap();
    cat.put_segment(&cluster, &record(0)).unwrap();

    let filler = mount.0.join("filler");
    fill(&filler);
    // Keep writing until RocksDB runs into the full file system (its log and memtable
    // flushes need space); bounded so that a catalog that never fails is a failure here.
    let mut segno = 1;
    let err = loop {
        match cat.put_segment(&cluster, &record(segno)) {
            Ok(()) => segno += 1,
            Err(e) => break e,
        }
        assert!(
            segno < 2_000_000,
            "the catalog accepted {segno} writes on a full file system"
        );
    };
    assert!(
        err.is_disk_full(),
        "an ENOSPC from RocksDB is not recognised as disk full: {err}"
    );
    println!("after {segno} records: {err}");
    // Nothing that failed is half there; everything that succeeded is.
    assert!(cat
        .segment(&cluster, TimelineId::new(1).unwrap(), SegNo(segno))
        .unwrap()
        .is_none());
    assert!(cat
        .segment(&cluster, TimelineId::new(1).unwrap(), SegNo(segno - 1))
        .unwrap()
        .is_some());

    std::fs::remove_file(&filler).unwrap();
    let start = Instant::now();
    loop {
        match cat.put_segment(&cluster, &record(segno)) {
            Ok(()) => break,
            Err(e) => assert!(
                start.elapsed() < Duration::from_secs(60),
                "the catalog still refuses writes 60 s after space was freed: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "writes accepted again {:?} after space was freed",
        start.elapsed()
    );
    drop(cat);
    drop(mount);
}
