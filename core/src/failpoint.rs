//! Crash failpoints for tests (cargo feature `testing`; compiled to nothing without it).
//!
//! `KLIO_FAILPOINT=<name>[@<n>]` makes the process abort (like a crash: no flush, no
//! cleanup) the `n`-th time (default 1st) execution reaches failpoint `<name>`.
//! Names: `wal-after-write` (frames written, before fdatasync), `wal-after-fsync`
//! (fdatasync'ed, before the position is acknowledged), `wal-seal-rename` (final frame
//! durable, before the rename to the sealed name), `wal-before-catalog` (file durable,
//! before the catalog records it), `wal-recompress-rename` (a segment's compressed form
//! durable under its temporary name, before the rename over the sealed segment),
//! `wal-recompress-catalog` (renamed, before the catalog records the new size),
//! `backup-data` (each piece of base-backup data
//! received, before it is stored), `backup-before-commit` (backup data and WAL complete,
//! before the commit), `keys-rotate-after-catalog` (a master-key rotation has updated the
//! catalog and the key check file, before Tier 2), `retention-after-forget` (retention has
//! made the catalog forget a backup, before deleting its manifest).
//!
//! `KLIO_TEST_FSYNC_DELAY_MS=<ms>` makes every fdatasync of streamed WAL take that much
//! longer: a slow disk, for tests.
//!
//! `KLIO_TEST_RECOMPRESS_PAUSED=1` keeps the background WAL recompressor from starting,
//! so segments stored plain stay marked (what a busy machine's backlog looks like).

#[cfg(feature = "testing")]
pub fn hit(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static CONF: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let conf = CONF.get_or_init(|| {
        let v = std::env::var("KLIO_FAILPOINT").ok()?;
        match v.split_once('@') {
            Some((n, c)) => Some((n.to_string(), c.parse().unwrap_or(1))),
            None => Some((v, 1)),
        }
    });
    if let Some((wanted, at)) = conf {
        if wanted == name && COUNT.fetch_add(1, Ordering::SeqCst) + 1 >= *at {
            eprintln!("klio: failpoint {name} reached: aborting");
            std::process::abort();
        }
    }
}

#[cfg(not(feature = "testing"))]
#[inline(always)]
pub fn hit(_name: &str) {}

/// Sleeps as long as `KLIO_TEST_FSYNC_DELAY_MS` says (a slow disk), before a WAL fdatasync.
#[cfg(feature = "testing")]
pub fn slow_fsync() {
    use std::sync::OnceLock;
    static DELAY: OnceLock<Option<std::time::Duration>> = OnceLock::new();
    let delay = DELAY.get_or_init(|| {
        let ms = std::env::var("KLIO_TEST_FSYNC_DELAY_MS")
            .ok()?
            .parse()
            .ok()?;
        Some(std::time::Duration::from_millis(ms))
    });
    if let Some(d) = delay {
        std::thread::sleep(*d);
    }
}

#[cfg(not(feature = "testing"))]
#[inline(always)]
pub fn slow_fsync() {}

/// Whether `KLIO_TEST_RECOMPRESS_PAUSED` is set: the WAL recompressor does not start.
#[cfg(feature = "testing")]
pub fn recompress_paused() -> bool {
    std::env::var_os("KLIO_TEST_RECOMPRESS_PAUSED").is_some()
}

#[cfg(not(feature = "testing"))]
#[inline(always)]
pub fn recompress_paused() -> bool {
    false
}
