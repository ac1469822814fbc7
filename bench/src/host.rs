//! The host's state around a benchmark phase: the load average, `sync` and a dropped page
//! cache before each phase (so every side starts from the same cache state), and a
//! process's peak RSS (read and reset through `/proc`). Writes only to
//! `/proc/sys/vm/drop_caches` and `/proc/<pid>/clear_refs`.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{ensure, Context, Result};

const DROP_CACHES: &str = "/proc/sys/vm/drop_caches";

/// The 1-, 5- and 15-minute load averages, or a note that they could not be read.
pub fn loadavg() -> String {
    match std::fs::read_to_string("/proc/loadavg") {
        Ok(s) => s.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        Err(e) => format!("unknown ({e})"),
    }
}

/// Set once the warning that the page cache cannot be dropped has been printed.
static WARNED: AtomicBool = AtomicBool::new(false);

/// Writes back dirty pages (`sync`) and drops the page cache, dentries and inodes. When
/// the cache cannot be dropped (not root), says so once and only syncs: every phase then
/// starts from the same state, the one the previous phase left.
pub fn settle() -> Result<()> {
    let st = Command::new("sync").status().context("running sync")?;
    ensure!(st.success(), "sync failed: {st}");
    if let Err(e) = std::fs::write(DROP_CACHES, "3\n") {
        if !WARNED.swap(true, Ordering::Relaxed) {
            eprintln!(
                "WARNING: cannot drop the page cache ({DROP_CACHES}: {e}); phases start from whatever the previous one left (run as root to drop it)"
            );
        }
    }
    Ok(())
}

/// What [`settle`] does on this host (for the benchmark's header).
pub fn settle_description() -> String {
    match std::fs::OpenOptions::new().write(true).open(DROP_CACHES) {
        Ok(_) => "sync + page cache dropped".to_owned(),
        Err(e) => format!("sync only (page cache NOT dropped: {e})"),
    }
}

/// Peak resident set size (VmHWM) of `pid` in MB; fails when the process is gone.
pub fn peak_rss_mb(pid: u32) -> Result<f64> {
    let kib = klio_tests::peak_rss_kib(pid)
        .with_context(|| format!("no VmHWM for process {pid}: is it still running?"))?;
    Ok(kib as f64 / 1024.0)
}

/// Resets the peak RSS of `pid` to its current RSS (`clear_refs` 5), so the next
/// [`peak_rss_mb`] measures only what follows.
pub fn reset_peak_rss(pid: u32) -> Result<()> {
    let path = format!("/proc/{pid}/clear_refs");
    std::fs::write(&path, "5").with_context(|| format!("resetting the peak RSS: {path}"))
}
