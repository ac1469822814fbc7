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

/// The counters of the block device holding `path` (`/proc/diskstats`): writes, sectors
/// written, flush requests and their total time in ms. Every standby in a benchmark
/// shares that device with the primary, so these count both.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DiskCounters {
    pub writes: f64,
    pub sectors_written: f64,
    pub flushes: f64,
    pub flush_ms: f64,
}

impl DiskCounters {
    /// Reads the counters of the device `path` is on (its whole disk if `path` is on a
    /// partition the kernel lists, else the device itself).
    pub fn read(path: &std::path::Path) -> Result<DiskCounters> {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(path)?.dev();
        // Linux's encoding of a device number.
        let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
        let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
        let text = std::fs::read_to_string("/proc/diskstats")?;
        diskstats_line(&text, major, minor)
            .with_context(|| format!("device {major}:{minor} of {}", path.display()))
    }
}

/// The counters of device `major:minor` in `/proc/diskstats` text (flush counters are
/// fields 16 and 17 after the name, present since Linux 5.5).
fn diskstats_line(text: &str, major: u64, minor: u64) -> Result<DiskCounters> {
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 || f[0] != major.to_string() || f[1] != minor.to_string() {
            continue;
        }
        let n = |i: usize| -> Result<f64> {
            f.get(i + 2)
                .with_context(|| format!("no field {i} in {line:?}"))?
                .parse::<f64>()
                .with_context(|| format!("odd field {i} in {line:?}"))
        };
        return Ok(DiskCounters {
            writes: n(5)?,
            sectors_written: n(7)?,
            flushes: n(16)?,
            flush_ms: n(17)?,
        });
    }
    anyhow::bail!("not in /proc/diskstats")
}

#[cfg(test)]
mod disk_tests {
    use super::*;

    #[test]
    fn diskstats_fields_are_read_by_position() {
        let text = " 253       0 zram0 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n \
                    254       0 vda 3414266 1227658 680941650 12915776 139782403 2235467 4172069800 27374535 0 8453844 43501886 1936228 48 2293174384 432576 59352196 2778998\n";
        let c = diskstats_line(text, 254, 0).unwrap();
        assert_eq!(
            c,
            DiskCounters {
                writes: 139782403.0,
                sectors_written: 4172069800.0,
                flushes: 59352196.0,
                flush_ms: 2778998.0,
            }
        );
        assert!(diskstats_line(text, 8, 0).is_err());
        assert!(diskstats_line(" 254 0 vda 1 2 3\n", 254, 0).is_err());
    }
}
