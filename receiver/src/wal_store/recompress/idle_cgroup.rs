//! An idle CPU cgroup for the recompressor's idle thread.
//!
//! `SCHED_IDLE` alone does not keep the thread's CPU bursts off a synchronous commit's
//! round trip when PostgreSQL shares the host: each PostgreSQL process calls `setsid`
//! and so sits in an autogroup of its own, and the kernel decides whether a waking
//! task preempts the running one between the entities where their scheduling groups
//! meet. There, Klio's group is an ordinary one whatever its thread's policy, so a
//! waking walsender or backend waits for the burst (up to a scheduler slice). A cgroup
//! with `cpu.idle` set (Linux 5.15 or later) is an idle entity at that level: anything
//! else waking preempts it at once. Measured here with a burner at 10 % of a CPU
//! beside `pg_receivewal --synchronous` at 4 clients: p99 3.4–3.7 ms at `SCHED_IDLE`
//! in its own session, 2.0–2.6 ms in an idle cgroup, 2.2–2.5 ms with no burner
//! (`docs/BENCHMARKS.md`, session 26).
//!
//! The thread joins `klio-idle`, a child of the process's own CPU cgroup, created if
//! missing and shared by every Klio process in that cgroup (it is left behind, empty,
//! when they exit). This needs write access to that cgroup: root, or a cgroup
//! delegated to Klio's user. Only the cgroup v1 `cpu` controller is handled so far; on
//! the unified (v2) hierarchy, which needs a threaded subtree for one thread of a
//! process, the thread stays at `SCHED_IDLE` where it is.

use std::fmt;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// The cgroup's directory name.
pub(super) const NAME: &str = "klio-idle";

/// Why the thread could not join an idle cgroup.
#[derive(Debug)]
pub(super) struct NoIdleCgroup(String);

impl fmt::Display for NoIdleCgroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn no(why: impl Into<String>) -> NoIdleCgroup {
    NoIdleCgroup(why.into())
}

/// Moves thread `tid` (of this process) into the idle cgroup; returns its directory.
pub(super) fn join(tid: libc::pid_t) -> Result<PathBuf, NoIdleCgroup> {
    let read =
        |p: &str| std::fs::read_to_string(p).map_err(|e| no(format!("cannot read {p}: {e}")));
    let dir = idle_dir(&read("/proc/self/cgroup")?, &read("/proc/self/mountinfo")?)?;
    let created = match std::fs::create_dir(&dir) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(no(format!("cannot create {}: {e}", dir.display()))),
    };
    write(&dir.join("cpu.idle"), "1").map_err(|e| {
        if created {
            // Not left behind as an ordinary cgroup: empty, it can go.
            let _ = std::fs::remove_dir(&dir);
        }
        if e.kind() == std::io::ErrorKind::NotFound {
            no(format!(
                "{} has no cpu.idle (it needs Linux 5.15 or later)",
                dir.display()
            ))
        } else {
            no(format!("cannot set cpu.idle in {}: {e}", dir.display()))
        }
    })?;
    write(&dir.join("tasks"), &tid.to_string()).map_err(|e| {
        no(format!(
            "cannot move the thread into {}: {e}",
            dir.display()
        ))
    })?;
    Ok(dir)
}

/// One write of `value` to a cgroup control file (which must exist).
fn write(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

/// Where the idle cgroup is (or goes), from `/proc/self/cgroup` and
/// `/proc/self/mountinfo`: under the mount of the cgroup v1 hierarchy that has the `cpu`
/// controller, in the process's own cgroup of that hierarchy.
pub(super) fn idle_dir(cgroup: &str, mountinfo: &str) -> Result<PathBuf, NoIdleCgroup> {
    // "hierarchy-ID:controller-list:cgroup-path"; the path may contain ':'.
    let own = cgroup.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        controllers.split(',').any(|c| c == "cpu").then_some(path)
    });
    let Some(own) = own else {
        return Err(no(if cgroup.lines().any(|l| l.starts_with("0::")) {
            "the CPU controller is on the unified cgroup (v2) hierarchy, which Klio does not \
             place threads in yet"
        } else {
            "no cgroup hierarchy has the cpu controller"
        }));
    };
    // "ID parent major:minor root mount-point options [optional...] - type source super-options"
    let mount = mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mut post = post.split(' ');
        let (fstype, _, opts) = (post.next()?, post.next()?, post.next()?);
        let has_cpu = opts.split(',').any(|o| o == "cpu");
        let pre: Vec<&str> = pre.split(' ').collect();
        (fstype == "cgroup" && has_cpu && pre.len() >= 5)
            .then(|| (unescape(pre[3]), unescape(pre[4])))
    });
    let Some((root, mount_point)) = mount else {
        return Err(no("the cgroup v1 cpu controller is not mounted"));
    };
    let rel = Path::new(own).strip_prefix(&root).map_err(|_| {
        no(format!(
            "this process's cpu cgroup {own} is outside the mounted {root}"
        ))
    })?;
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(no(format!("unexpected cpu cgroup path {own}")));
    }
    Ok(Path::new(&mount_point).join(rel).join(NAME))
}

/// A mountinfo field with its octal escapes (`\040` for a space, ...) decoded.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = |j: usize| {
            b.get(j)
                .filter(|c| (b'0'..=b'7').contains(c))
                .map(|c| c - b'0')
        };
        if b[i] == b'\\' {
            if let (Some(x), Some(y), Some(z)) = (oct(i + 1), oct(i + 2), oct(i + 3)) {
                out.push(x.wrapping_mul(64).wrapping_add(y * 8).wrapping_add(z));
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
34 33 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 33 0:30 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
";

    #[test]
    fn the_idle_cgroup_is_a_child_of_the_own_cpu_cgroup_under_its_mount() {
        let cgroup = "5:cpuset:/\n4:cpu,cpuacct:/system.slice/klio.service\n0::/x\n";
        assert_eq!(
            idle_dir(cgroup, MOUNTINFO).unwrap(),
            Path::new("/sys/fs/cgroup/cpu,cpuacct/system.slice/klio.service/klio-idle")
        );
        // The root cgroup, and a cpu-only hierarchy mounted at a path with a space.
        let mi = "40 33 0:31 / /sys/fs/cgroup/my\\040cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            idle_dir("1:cpu:/\n", mi).unwrap(),
            Path::new("/sys/fs/cgroup/my cpu/klio-idle")
        );
    }

    #[test]
    fn a_mount_of_part_of_the_hierarchy_is_followed() {
        // A container's view: the hierarchy is mounted from /kubepods/pod1.
        let mi = "50 33 0:29 /kubepods/pod1 /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            idle_dir("3:cpu:/kubepods/pod1/c2\n", mi).unwrap(),
            Path::new("/sys/fs/cgroup/cpu/c2/klio-idle")
        );
        let e = idle_dir("3:cpu:/elsewhere\n", mi).unwrap_err().to_string();
        assert!(e.contains("outside the mounted /kubepods/pod1"), "{e}");
    }

    #[test]
    fn no_cpu_controller_v2_only_or_odd_paths_are_refused_with_the_reason() {
        let e = idle_dir("0::/user.slice\n", MOUNTINFO)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unified cgroup (v2)"), "{e}");
        let e = idle_dir("5:cpuset:/\n", MOUNTINFO).unwrap_err().to_string();
        assert!(
            e.contains("no cgroup hierarchy has the cpu controller"),
            "{e}"
        );
        let e = idle_dir(
            "4:cpu:/\n",
            "35 33 0:30 / /c rw - cgroup cgroup rw,cpuset\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not mounted"), "{e}");
        // "cpu" must be a whole controller name, not a prefix of "cpuset".
        let e = idle_dir("4:cpuset:/\n", MOUNTINFO).unwrap_err().to_string();
        assert!(e.contains("no cgroup hierarchy"), "{e}");
        let e = idle_dir("4:cpu:/a/../b\n", MOUNTINFO)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unexpected cpu cgroup path"), "{e}");
    }
}
