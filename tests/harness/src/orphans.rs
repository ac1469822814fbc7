//! Instance directories and the liveness lock that tells a live one from an orphan.
//!
//! Every instance lives in `$TMPDIR/klio-pg-XXXXXX/` and holds an exclusive `flock` on its
//! `harness.lock` for as long as its [`crate::PgInstance`] exists. A test process that is
//! killed (nextest's `terminate-after`, Ctrl-C) never runs `Drop`, leaving a postmaster and
//! its directory behind; the first instance started by a later process finds such
//! directories (lock free), stops their postmaster and removes them. The lock is released
//! by the kernel when its holder dies, whatever PID namespace it ran in.

use std::fs::{self, File};
use std::path::Path;
use std::sync::Once;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub(crate) const DIR_PREFIX: &str = "klio-pg-";
const LOCK_FILE: &str = "harness.lock";
/// The data directory inside an instance directory.
pub(crate) const DATA_DIR: &str = "data";
/// A directory without a lock file younger than this may be one being created right now.
const CREATION_GRACE: Duration = Duration::from_secs(600);

/// Takes the liveness lock of a freshly created instance directory. The lock file is
/// locked under a temporary name and only then renamed into place, so another process's
/// reaper never finds `harness.lock` free while its instance is being set up (it would
/// take the free lock and remove the new directory under its creator).
pub(crate) fn lock(root: &Path) -> Result<Flock<File>> {
    let path = root.join(LOCK_FILE);
    let tmp = root.join(format!("{LOCK_FILE}.new"));
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, errno)| errno)
        .with_context(|| format!("locking {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("renaming {} into place", tmp.display()))?;
    Ok(lock)
}

/// Reaps orphaned instance directories once per process. Best effort: never fails.
pub(crate) fn reap_once(parent: &Path) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = fs::read_dir(parent) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(DIR_PREFIX) {
                reap(&entry.path());
            }
        }
    });
}

fn reap(root: &Path) {
    let lock = match File::open(root.join(LOCK_FILE)) {
        Ok(file) => match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Some(lock),
            Err(_) => return, // held: its process is alive
        },
        Err(_) if older_than(root, CREATION_GRACE) => None,
        Err(_) => return,
    };
    stop_postmaster(&root.join(DATA_DIR), Duration::from_secs(10));
    let _ = fs::remove_dir_all(root);
    drop(lock);
}

fn older_than(path: &Path, age: Duration) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|elapsed| elapsed > age)
}

/// Stops the postmaster whose `postmaster.pid` is in `data_dir`, if that process is alive
/// and really serves `data_dir`: SIGQUIT (immediate shutdown), then SIGKILL after `grace`.
pub(crate) fn stop_postmaster(data_dir: &Path, grace: Duration) {
    let Some(pid) = postmaster_pid(data_dir) else {
        return;
    };
    if kill(pid, Signal::SIGQUIT).is_err() {
        return;
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if kill(pid, None) == Err(Errno::ESRCH) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(pid, Signal::SIGKILL);
}

/// The live postmaster of `data_dir`: the PID in `postmaster.pid`, checked against the
/// process's command line (pg_ctl starts it with `-D <data_dir>`), so a recycled PID is
/// never signalled.
fn postmaster_pid(data_dir: &Path) -> Option<Pid> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    let data_dir = data_dir.to_string_lossy();
    cmdline
        .split('\0')
        .any(|arg| arg == data_dir)
        .then_some(Pid::from_raw(pid))
}
