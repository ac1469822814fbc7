//! `klio demo`, the README's "run it" command, works end to end (stream, back up,
//! restore to a point in time, compare) and says so.

use std::process::Command;

use anyhow::{ensure, Result};

#[test]
fn klio_demo_exits_0_with_a_passing_verdict() -> Result<()> {
    let out = Command::new(klio_tests::klio_bin())
        .args(["demo", "--scale", "2", "--seconds", "3"])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        stdout.contains("VERDICT: PASS"),
        "no passing verdict: {stdout}"
    );
    ensure!(stdout.contains("segments identical"), "{stdout}");
    ensure!(stdout.contains("Taking a base backup"), "{stdout}");
    ensure!(stdout.contains("tables identical"), "{stdout}");
    println!("{stdout}");
    Ok(())
}
