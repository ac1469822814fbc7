//! Starting and stopping the tracers the benchmarks attach (`perf trace`, `strace`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// Starts `perf trace ARGS -o out`; returns once perf is tracing (it creates its output
/// file when it has attached), or fails if it exits first or takes over 30 s.
pub fn trace(args: &[&str], out: &Path) -> Result<Child> {
    let mut child = Command::new("perf")
        .arg("trace")
        .args(args)
        .arg("-o")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("running perf trace (package linux-perf)")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !out.exists() {
        if let Some(st) = child.try_wait()? {
            bail!("perf trace {args:?} exited ({st}) before tracing");
        }
        ensure!(
            Instant::now() < deadline,
            "perf trace did not start within 30 s"
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
