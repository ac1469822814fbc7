//! One synchronous commit at a time, as the block device sees it: a `perf record` of the
//! block tracepoints (`KLIO_BENCH_BLOCK_TRACE`, probe) read back with `perf script`.
//!
//! With one client, the device sees each commit as a fixed sequence: the primary's WAL
//! write (a backend, `postgres`), a flush request (issued by a kworker), the standby's
//! write, its flush request, then the next commit's WAL write. [`cycles`] cuts the trace
//! into those steps, so the time between them can be compared across standbys on the
//! same host:
//! - `pw_pff`: the primary's write to its flush request (the write's completion);
//! - `pff_sw`: the primary's flush request to the standby's write — the primary's flush,
//!   the walsender's send, and the standby's receive, processing and write call up to
//!   its fdatasync;
//! - `sw_sff`: the standby's write to its flush request;
//! - `sff_pw`: the standby's flush request to the next WAL write — the flush, the
//!   status update, the commit's return to pgbench and the next transaction up to its
//!   commit.
//!
//! Requests that do not fit the sequence (metadata writes, a checkpoint's writeback) are
//! counted but skipped. Meaningful at one client only: with more, commits overlap.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};

/// One `block_rq_issue` event.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    /// Seconds (perf's clock) × 10^6.
    pub at_us: f64,
    /// Process id of the issuing task.
    pub pid: u32,
    /// Task name.
    pub comm: String,
    /// `WS`, `WSM`, `FF`, `R`…
    pub rwbs: String,
    pub bytes: u64,
}

/// Parses a `perf script -F comm,pid,tid,time,event,trace` line of a `block_rq_issue`
/// event: `postgres 13576/13576 51681.167423: block:block_rq_issue: 254,0 WS 16384 () 402631056 + 32 ...`.
pub fn parse_issue(line: &str) -> Option<Issue> {
    let (head, trace) = line.split_once(" block:block_rq_issue: ")?;
    let mut h = head.split_whitespace().rev();
    let time = h.next()?.strip_suffix(':')?;
    let ids = h.next()?;
    let comm = h
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join(" ");
    let pid = ids.split('/').next()?.parse().ok()?;
    let mut t = trace.split_whitespace();
    let _dev = t.next()?;
    let rwbs = t.next()?.to_string();
    let bytes = t.next()?.parse().ok()?;
    Some(Issue {
        at_us: time.parse::<f64>().ok()? * 1e6,
        pid,
        comm,
        rwbs,
        bytes,
    })
}

/// The four steps of each commit, in µs (see the module docs), and how many requests
/// fell outside the sequence.
#[derive(Debug, Default)]
pub struct Cycles {
    pub pw_pff: Vec<f64>,
    pub pff_sw: Vec<f64>,
    pub sw_sff: Vec<f64>,
    pub sff_pw: Vec<f64>,
    pub skipped: usize,
}

/// Cuts `issues` (in time order) into commits. The standby is process `standby`; the
/// primary's writes are any other `postgres` process's.
pub fn cycles(issues: &[Issue], standby: u32) -> Cycles {
    enum Step {
        Start,
        PrimaryWrote(f64),
        PrimaryFlush(f64),
        StandbyWrote(f64),
        StandbyFlush(f64),
    }
    let mut c = Cycles::default();
    let mut step = Step::Start;
    for i in issues {
        let write = i.rwbs.starts_with('W') && !i.rwbs.contains('M') && i.bytes > 0;
        let flush = i.rwbs == "FF";
        let primary = i.comm == "postgres" && i.pid != standby;
        step = match step {
            Step::Start | Step::StandbyFlush(_) if write && primary => {
                if let Step::StandbyFlush(t) = step {
                    c.sff_pw.push(i.at_us - t);
                }
                Step::PrimaryWrote(i.at_us)
            }
            Step::PrimaryWrote(t) if flush => {
                c.pw_pff.push(i.at_us - t);
                Step::PrimaryFlush(i.at_us)
            }
            Step::PrimaryFlush(t) if write && i.pid == standby => {
                c.pff_sw.push(i.at_us - t);
                Step::StandbyWrote(i.at_us)
            }
            Step::StandbyWrote(t) if flush => {
                c.sw_sff.push(i.at_us - t);
                Step::StandbyFlush(i.at_us)
            }
            s => {
                c.skipped += 1;
                s
            }
        };
    }
    c
}

/// Reads a `perf record` of the block tracepoints and prints its commits' steps: p50,
/// p90 and mean of each, in µs. The standby's pid is taken from the file name
/// (`block-<pid>.data`).
pub fn summarize(data: &Path) -> Result<String> {
    let standby: u32 = data
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.strip_prefix("block-"))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{}: expected a file named block-<pid>.data", data.display()))?;
    let out = Command::new("perf")
        .args(["script", "-F", "comm,pid,tid,time,event,trace", "-i"])
        .arg(data)
        .output()
        .context("running perf script (package linux-perf)")?;
    ensure!(
        out.status.success(),
        "perf script -i {} failed",
        data.display()
    );
    let issues: Vec<Issue> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(parse_issue)
        .collect();
    let c = cycles(&issues, standby);
    ensure!(
        !c.sff_pw.is_empty(),
        "{}: no complete commit",
        data.display()
    );
    let mut s = format!(
        "{} commits, {} requests outside the sequence;",
        c.sff_pw.len(),
        c.skipped
    );
    for (name, v) in [
        ("pw_pff", &c.pw_pff),
        ("pff_sw", &c.pff_sw),
        ("sw_sff", &c.sw_sff),
        ("sff_pw", &c.sff_pw),
    ] {
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        s += &format!(
            "  {name} p50 {:.0} p90 {:.0} mean {mean:.0} µs;",
            q(0.5),
            q(0.9)
        );
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_lines_parse_and_other_lines_do_not() {
        let l = "   klio-receiver 13510/13532 51681.167752:    block:block_rq_issue: 254,0 WS 12288 () 351025776 + 24 0x2,0,4 [klio-receiver]";
        let i = parse_issue(l).unwrap();
        assert_eq!(i.pid, 13510);
        assert_eq!(i.comm, "klio-receiver");
        assert_eq!(i.rwbs, "WS");
        assert_eq!(i.bytes, 12288);
        assert!((i.at_us - 51681167752.0).abs() < 1.0);
        let k = " kworker/1:1H-kb  2114/2114  51681.167831:    block:block_rq_issue: 254,0 FF 0 () 0 + 0 0x0,0,0 [kworker/1:1H]";
        assert_eq!(parse_issue(k).unwrap().rwbs, "FF");
        let done = "            perf 13377 [001] 51656.563466: block:block_rq_complete: 254,0 WSM () 320602408 + 8 0x2,0,4 [0]";
        assert_eq!(parse_issue(done), None);
    }

    #[test]
    fn a_commit_is_cut_into_its_four_steps_and_strays_are_skipped() {
        let ev = |at: f64, pid: u32, comm: &str, rwbs: &str, bytes: u64| Issue {
            at_us: at,
            pid,
            comm: comm.into(),
            rwbs: rwbs.into(),
            bytes,
        };
        let trace = [
            ev(0.0, 10, "postgres", "WS", 16384),
            ev(5.0, 10, "postgres", "WSM", 4096), // metadata: skipped
            ev(100.0, 3, "kworker/1:1H", "FF", 0),
            ev(230.0, 77, "klio-receiver", "WS", 12288),
            ev(310.0, 3, "kworker/1:1H", "FF", 0),
            ev(700.0, 10, "postgres", "WS", 16384),
            ev(800.0, 3, "kworker/0:1H", "FF", 0),
        ];
        let c = cycles(&trace, 77);
        assert_eq!(c.pw_pff, [100.0, 100.0]);
        assert_eq!(c.pff_sw, [130.0]);
        assert_eq!(c.sw_sff, [80.0]);
        assert_eq!(c.sff_pw, [390.0]);
        assert_eq!(c.skipped, 1);
    }
}
