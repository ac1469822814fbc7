//! How the size of the zero-filling writes that prepare a WAL file changes the cost of
//! the small writes that later land in it: the page cache keeps a file's pages in folios
//! as large as the write that created them (ext4, Linux 6.x), and a write or writeback
//! into a folio walks all of its blocks. Klio fills a segment file ahead with zeros and
//! then writes one frame per synchronous commit into it (`segment_writer::ZERO_CHUNK`);
//! pg_receivewal pads its files 8 KiB at a time.
//!
//! For each fill size, rotated over rounds: a fresh file of 18 MiB filled with zeros in
//! writes of that size and fdatasync'ed, then `writes` appends of a commit's frame (6,000
//! bytes), each followed by fdatasync like a synchronous standby's. Prints the CPU time
//! (this thread's, `CLOCK_THREAD_CPUTIME_ID`) of each write and each fdatasync, per round and the
//! median. Works in a temporary directory under `TMPDIR` (the disk under test).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use anyhow::Result;
use nix::time::{clock_gettime, ClockId};

use crate::rounds::median;

/// The fill sizes compared: Klio's before and after session 20, and pg_receivewal's.
const FILLS: [usize; 3] = [1 << 20, 64 << 10, 8 << 10];
const FILE_LEN: u64 = 18 << 20;
const FRAME: usize = 6000;

/// This thread's CPU time (user and system), in µs, to the nanosecond.
fn thread_cpu_us() -> Result<f64> {
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)?;
    Ok(t.tv_sec() as f64 * 1e6 + t.tv_nsec() as f64 / 1e3)
}

/// One fill size's run: (CPU µs per frame write, CPU µs per fdatasync).
fn run_one(dir: &std::path::Path, fill: usize, writes: usize) -> Result<(f64, f64)> {
    let path = dir.join(format!("fill-{fill}"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    let zeros = vec![0u8; fill];
    let mut off = 0;
    while off < FILE_LEN {
        file.write_all_at(&zeros, off)?;
        off += fill as u64;
    }
    file.sync_data()?;
    let frame: Vec<u8> = (0..FRAME).map(|i| (i * 31 % 251) as u8).collect();
    let (mut write_us, mut sync_us) = (0.0, 0.0);
    let mut at = 40u64;
    for _ in 0..writes {
        let a = thread_cpu_us()?;
        file.write_all_at(&frame, at)?;
        let b = thread_cpu_us()?;
        file.sync_data()?;
        let c = thread_cpu_us()?;
        write_us += b - a;
        sync_us += c - b;
        at += FRAME as u64;
        anyhow::ensure!(
            at + FRAME as u64 <= FILE_LEN,
            "too many writes for one file"
        );
    }
    // The frames are what was written: a check that the writes landed.
    let mut back = vec![0u8; FRAME];
    file.read_exact_at(&mut back, at - FRAME as u64)?;
    anyhow::ensure!(back == frame, "the last frame read back differs");
    drop(file);
    std::fs::remove_file(&path)?;
    Ok((write_us / writes as f64, sync_us / writes as f64))
}

/// Runs a warm-up and `rounds` rotated rounds of every fill size; prints each run and the
/// medians.
pub fn run(writes: usize, rounds: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    println!(
        "zero-fill write size against the CPU of later {FRAME}-byte writes + fdatasync: {writes} per run, {rounds} rotated rounds after a warm-up, in {}",
        dir.path().display()
    );
    let mut results = vec![Vec::new(); FILLS.len()];
    for round in 0..=rounds {
        for k in 0..FILLS.len() {
            let i = (k + round) % FILLS.len();
            let (w, s) = run_one(dir.path(), FILLS[i], writes)?;
            let label = if round == 0 {
                "warm-up".to_string()
            } else {
                format!("round {round}/{rounds}")
            };
            println!(
                "  {label} fill {:>7} B: write cpu {w:.2} µs, fdatasync cpu {s:.1} µs",
                FILLS[i]
            );
            if round > 0 {
                results[i].push((w, s));
            }
        }
    }
    println!("medians (rounds in order):");
    let base = median(&results[0].iter().map(|r| r.0).collect::<Vec<_>>());
    for (i, r) in results.iter().enumerate() {
        let w: Vec<f64> = r.iter().map(|x| x.0).collect();
        let s: Vec<f64> = r.iter().map(|x| x.1).collect();
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "  fill {:>7} B: write cpu {:.2} µs ({}) = {:.2}x the 1 MiB fill's; fdatasync cpu {:.1} µs ({})",
            FILLS[i],
            median(&w),
            list(&w),
            median(&w) / base,
            median(&s),
            list(&s)
        );
    }
    Ok(())
}
