//! When a Klio server's background recompressor was rewriting a WAL segment, seen from
//! outside: it writes the compressed copy to `<24 hex>.tmp` in the cluster's WAL
//! directory and renames it over the sealed file (or deletes it). An inotify watch on
//! that directory gives each rewrite's window in wall-clock time, which pgbench's
//! per-transaction logs can be cut by: the latency of commits made while a segment was
//! being rewritten against that of the others. Reads `/proc/<pid>/fd` to find the
//! directory; writes nothing.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// The WAL directory of the Klio server `pid`: the directory of a file it holds open
/// under `…/clusters/<cluster>/wal/`. `None` for a process that holds none (another
/// standby, or a Klio server between segments).
pub fn wal_dir_of(pid: u32) -> Option<PathBuf> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .find_map(|p| {
            let dir = p.parent()?;
            (dir.file_name()? == "wal" && dir.parent()?.parent()?.file_name()? == "clusters")
                .then(|| dir.to_path_buf())
        })
}

/// A recompressor's temporary file: a sealed segment's 24 hex digits and `.tmp`.
fn is_rewrite_tmp(name: &OsString) -> bool {
    let n = name.to_string_lossy();
    n.strip_suffix(".tmp")
        .is_some_and(|s| s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn now_us() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

/// Watches a WAL directory until [`Watcher::finish`].
pub struct Watcher {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<Vec<(f64, f64)>>>,
}

impl Watcher {
    pub fn start(dir: &Path) -> Result<Watcher> {
        let ino = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .context("inotify_init")?;
        ino.add_watch(
            dir,
            AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_FROM | AddWatchFlags::IN_DELETE,
        )
        .with_context(|| format!("watching {}", dir.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut open: HashMap<OsString, f64> = HashMap::new();
            let mut windows = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let mut fds = [PollFd::new(ino.as_fd(), PollFlags::POLLIN)];
                if poll(&mut fds, PollTimeout::from(100u16))? == 0 {
                    continue;
                }
                let at = now_us();
                for ev in ino.read_events()? {
                    let Some(name) = ev.name.filter(is_rewrite_tmp) else {
                        continue;
                    };
                    if ev.mask.contains(AddWatchFlags::IN_CREATE) {
                        open.insert(name, at);
                    } else if let Some(start) = open.remove(&name) {
                        windows.push((start, at));
                    }
                }
            }
            Ok(windows)
        });
        Ok(Watcher { stop, thread })
    }

    /// The rewrites seen: (start, end) in µs since the epoch.
    pub fn finish(self) -> Result<Vec<(f64, f64)>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the inotify thread panicked"))?
    }
}

/// Splits transactions (end time µs since the epoch, latency µs) into those that ended
/// within `slack_us` of a rewrite window (during it, or just after: the rename and the
/// catalog write) and the others.
pub fn split(tx: &[(f64, f64)], windows: &[(f64, f64)], slack_us: f64) -> (Vec<f64>, Vec<f64>) {
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for &(end, lat) in tx {
        let started = end - lat;
        // A commit overlapping a window at all counts as inside.
        if windows
            .iter()
            .any(|&(a, b)| started <= b + slack_us && end >= a)
        {
            inside.push(lat);
        } else {
            outside.push(lat);
        }
    }
    (inside, outside)
}

/// Where the slow commits (over `limit_us`) that overlapped a rewrite window fell in it:
/// for each, when it started and ended relative to the window's start, in ms, and the
/// window's length: slow commits at its start wait for the segment's seal (the writer's
/// own), at its end for the rewrite's fsync, rename and catalog write.
pub fn slow_in_windows(
    tx: &[(f64, f64)],
    windows: &[(f64, f64)],
    slack_us: f64,
    limit_us: f64,
) -> Vec<(f64, f64, f64)> {
    let mut out = Vec::new();
    for &(end, lat) in tx.iter().filter(|t| t.1 > limit_us) {
        let started = end - lat;
        if let Some(&(a, b)) = windows
            .iter()
            .find(|&&(a, b)| started <= b + slack_us && end >= a)
        {
            out.push(((started - a) / 1000.0, (end - a) / 1000.0, (b - a) / 1000.0));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_tmp_names() {
        assert!(is_rewrite_tmp(&"000000010000000000000003.tmp".into()));
        assert!(!is_rewrite_tmp(
            &"000000010000000000000003.partial.tmp".into()
        ));
        assert!(!is_rewrite_tmp(&"000000010000000000000003".into()));
        assert!(!is_rewrite_tmp(&"spare.tmp".into()));
    }

    #[test]
    fn split_by_overlap() {
        let tx = [(100.0, 10.0), (205.0, 10.0), (400.0, 10.0), (512.0, 10.0)];
        let (i, o) = split(&tx, &[(200.0, 300.0)], 5.0);
        assert_eq!(i, vec![10.0]);
        assert_eq!(o, vec![10.0, 10.0, 10.0]);
        let (i, _) = split(&tx, &[(200.0, 300.0), (505.0, 506.0)], 5.0);
        assert_eq!(i.len(), 2);
    }
}
