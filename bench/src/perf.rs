//! Starting and stopping the tracers the benchmarks attach (`perf trace`, `strace`).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// Starts `perf trace ARGS -o out`; returns once perf is tracing (it creates its output
/// file when it has attached), or fails if it exits first or takes over 30 s.
pub fn trace(args: &[&str], out: &Path) -> Result<Child> {
    let mut cmd = Command::new("perf");
    cmd.arg("trace").args(args).arg("-o").arg(out);
    spawn_until_output(&mut cmd, out, &format!("perf trace {args:?}"))
}

/// Starts `strace ARGS -o out -p pid` and returns once strace says it is attached to
/// `pid` (every thread, with `-f`).
pub fn strace(args: &[&str], out: &Path, pid: u32) -> Result<Child> {
    let mut child = Command::new("strace")
        .args(args)
        .arg("-o")
        .arg(out)
        .args(["-p", &pid.to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .context("running strace")?;
    // strace says "Process N attached" once it traces every thread.
    let mut first = String::new();
    BufReader::new(child.stderr.take().context("strace stderr")?).read_line(&mut first)?;
    ensure!(first.contains("attached"), "strace did not attach: {first}");
    Ok(child)
}

/// Starts `perf record` of every block request issued and completed on the host into
/// `out`; returns once perf is recording (it has created `out`).
pub fn record_block(out: &Path) -> Result<Child> {
    let mut cmd = Command::new("perf");
    cmd.args([
        "record",
        "-a",
        "-e",
        "block:block_rq_issue",
        "-e",
        "block:block_rq_complete",
        "-o",
    ])
    .arg(out);
    spawn_until_output(&mut cmd, out, "perf record of the block tracepoints")
}

/// Spawns `cmd` (a perf tool, output discarded) and waits until it has created `out`,
/// its sign that it is attached; fails if it exits first or takes over 30 s.
fn spawn_until_output(cmd: &mut Command, out: &Path, what: &str) -> Result<Child> {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("running {what} (package linux-perf)"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !out.exists() {
        if let Some(st) = child.try_wait()? {
            bail!("{what} exited ({st}) before it started");
        }
        ensure!(
            Instant::now() < deadline,
            "{what} did not start within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// Stops `child` (strace, perf) with SIGINT, so that it writes its output, and waits
/// for it.
pub fn interrupt(child: Child) -> Result<()> {
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    ensure!(st.success(), "could not stop process {}", child.id());
    child.wait_with_output()?;
    Ok(())
}

/// Counts the flush system calls (`fsync`, `fdatasync`) of process `pid`, all its
/// threads, with `perf stat` (counted in the kernel: nothing is traced per call).
pub struct FlushCounter {
    child: Child,
    out: std::path::PathBuf,
    _fifos: tempfile::TempDir,
}

impl FlushCounter {
    /// Starts counting; returns once perf has enabled its counters (perf starts them
    /// disabled and acknowledges the `enable` sent on its control FIFO).
    pub fn start(pid: u32, out: &Path) -> Result<FlushCounter> {
        let fifos = tempfile::tempdir()?;
        let (ctl, ack) = (fifos.path().join("ctl"), fifos.path().join("ack"));
        for f in [&ctl, &ack] {
            let st = Command::new("mkfifo").arg(f).status()?;
            ensure!(st.success(), "mkfifo {} failed", f.display());
        }
        let mut child = Command::new("perf")
            .args(["stat", "-x", ",", "-D", "-1", "--control"])
            .arg(format!("fifo:{},{}", ctl.display(), ack.display()))
            .arg("-e")
            .arg("syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync")
            .args(["-p", &pid.to_string(), "-o"])
            .arg(out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("running perf stat (package linux-perf)")?;
        // Opened read-write, a FIFO does not wait for the other side.
        let rw = |p: &Path| std::fs::OpenOptions::new().read(true).write(true).open(p);
        let (mut ctl, mut ack) = (rw(&ctl)?, rw(&ack)?);
        ctl.write_all(b"enable\n")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4];
            let _ = tx.send(ack.read_exact(&mut buf).map(|()| buf));
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(buf)) if &buf == b"ack\n" => {}
            other => {
                let _ = child.kill();
                let st = child.wait()?;
                bail!("perf stat -p {pid} did not enable its counters ({other:?}, {st})");
            }
        }
        Ok(FlushCounter {
            child,
            out: out.to_owned(),
            _fifos: fifos,
        })
    }

    /// Stops perf and returns the number of flush calls counted.
    pub fn finish(self) -> Result<u64> {
        interrupt(self.child)?;
        let text = std::fs::read_to_string(&self.out)
            .with_context(|| format!("reading {}", self.out.display()))?;
        let _ = std::fs::remove_file(&self.out);
        flush_count(&text).with_context(|| format!("perf stat output: {text}"))
    }
}

/// The sum of the two counters in `perf stat -x,` output (`<not counted>` is 0: the
/// process made no such call).
fn flush_count(text: &str) -> Result<u64> {
    let mut total = 0;
    let mut seen = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut f = line.split(',');
        let (Some(value), Some(event)) = (f.next(), f.nth(1)) else {
            continue;
        };
        if !event.starts_with("syscalls:sys_enter_f") {
            continue;
        }
        seen += 1;
        if value != "<not counted>" {
            total += value
                .parse::<u64>()
                .with_context(|| format!("odd count {value:?}"))?;
        }
    }
    ensure!(seen == 2, "expected 2 counters, found {seen}");
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::flush_count;

    #[test]
    fn flush_counts_are_summed_and_not_counted_is_zero() {
        let text = "# started on Fri Nov 27 08:38:57 2026\n\n\
                    1204,,syscalls:sys_enter_fsync,2004586991,100.00,,\n\
                    <not counted>,,syscalls:sys_enter_fdatasync,0,100.00,,\n";
        assert_eq!(flush_count(text).unwrap(), 1204);
        let both = "12,,syscalls:sys_enter_fsync,1,100.00,,\n30,,syscalls:sys_enter_fdatasync,1,100.00,,\n";
        assert_eq!(flush_count(both).unwrap(), 42);
        assert!(
            flush_count("# started\n").is_err(),
            "no counters is an error"
        );
    }
}
