//! A synchronous standby's commit round trip as its system calls show it: a summary of an
//! `strace -f -tt -T` log of the standby process (all threads) into cycles, each from the
//! first socket read that returns WAL, through the flush (`fsync`/`fdatasync`), to the
//! status update sent after it; with the median of each leg and the calls per cycle.
//! Reads the log file only.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::rounds::median;

/// One system call: name, start and end (µs since midnight), return value as text.
#[derive(Debug)]
struct Call {
    name: String,
    start: f64,
    end: f64,
    ret: String,
}

/// `HH:MM:SS.ffffff` as µs since midnight.
fn micros(ts: &str) -> Option<f64> {
    let mut it = ts.split(':');
    let h: f64 = it.next()?.parse().ok()?;
    let m: f64 = it.next()?.parse().ok()?;
    let s: f64 = it.next()?.parse().ok()?;
    Some(((h * 60.0 + m) * 60.0 + s) * 1e6)
}

/// Parses one line of `strace -f -tt -T` (`PID TIME name(args) = ret <secs>`, or its
/// `<... name resumed>` form); `None` for unfinished calls, signals and exits.
fn parse_line(line: &str) -> Option<Call> {
    // strace pads the pid column with spaces.
    let (_pid, r) = line.trim_start().split_once(' ')?;
    let (ts, rest) = r.trim_start().split_once(' ')?;
    let ts = micros(ts)?;
    if rest.ends_with("<unfinished ...>") {
        return None;
    }
    let dur_s: f64 = rest.rsplit_once('<')?.1.strip_suffix('>')?.parse().ok()?;
    let dur = dur_s * 1e6;
    let ret = rest
        .rsplit_once(" = ")?
        .1
        .split_whitespace()
        .next()?
        .to_owned();
    let (name, start) = match rest.strip_prefix("<... ") {
        Some(r) => (r.split_whitespace().next()?.to_owned(), ts - dur),
        None => (rest.split('(').next()?.to_owned(), ts),
    };
    Some(Call {
        name,
        start,
        end: start + dur,
        ret,
    })
}

fn is_recv(c: &Call) -> bool {
    matches!(c.name.as_str(), "recvfrom" | "recvmsg") && c.ret.parse::<i64>().is_ok_and(|n| n > 0)
}

fn is_flush(c: &Call) -> bool {
    matches!(c.name.as_str(), "fsync" | "fdatasync")
}

fn is_send(c: &Call) -> bool {
    matches!(c.name.as_str(), "sendto" | "sendmsg")
}

/// The legs of the cycles found in the log, with medians (µs) and calls per cycle.
pub fn summarize(log: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let mut calls: Vec<Call> = text.lines().filter_map(parse_line).collect();
    calls.sort_by(|a, b| a.start.total_cmp(&b.start));

    let (mut to_flush, mut flush, mut to_send, mut total) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut per_cycle: BTreeMap<String, usize> = BTreeMap::new();
    let mut cycles = 0usize;
    // (cycle start, flush (start, end)) of the cycle under way.
    let mut open: Option<(f64, Option<(f64, f64)>)> = None;
    let mut in_cycle: Vec<&str> = Vec::new();
    for c in &calls {
        match open {
            None if is_recv(c) => {
                open = Some((c.start, None));
                in_cycle.clear();
                in_cycle.push(&c.name);
            }
            None => {}
            Some((t0, None)) => {
                in_cycle.push(&c.name);
                if is_flush(c) {
                    open = Some((t0, Some((c.start, c.end))));
                }
            }
            Some((t0, Some((fs, fe)))) => {
                in_cycle.push(&c.name);
                if is_send(c) {
                    to_flush.push(fs - t0);
                    flush.push(fe - fs);
                    to_send.push(c.end - fe);
                    total.push(c.end - t0);
                    cycles += 1;
                    for n in &in_cycle {
                        *per_cycle.entry((*n).to_owned()).or_default() += 1;
                    }
                    open = None;
                }
            }
        }
    }
    let mut out = String::new();
    writeln!(
        out,
        "{cycles} cycles (socket read with data -> flush -> status sent), medians: read->flush start {:.0} us, flush {:.0} us, flush end->status sent {:.0} us, whole {:.0} us",
        median(&to_flush),
        median(&flush),
        median(&to_send),
        median(&total)
    )?;
    let mut counts: Vec<(String, usize)> = per_cycle.into_iter().collect();
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    let per: Vec<String> = counts
        .iter()
        .map(|(n, k)| format!("{n} {:.2}", *k as f64 / cycles.max(1) as f64))
        .collect();
    writeln!(out, "  calls per cycle: {}", per.join(", "))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_complete_and_resumed_lines() {
        let c = parse_line(
            "101 10:00:00.000100 recvfrom(5, \"w...\", 16384, 0, NULL, NULL) = 200 <0.000010>",
        )
        .unwrap();
        assert_eq!(c.name, "recvfrom");
        assert_eq!(c.ret, "200");
        assert!((c.end - c.start - 10.0).abs() < 0.01);
        let r = parse_line("102 10:00:01.000000 <... fdatasync resumed>) = 0 <0.000200>").unwrap();
        assert_eq!(r.name, "fdatasync");
        assert!((r.end - micros("10:00:01.000000").unwrap()).abs() < 0.01);
        assert!(parse_line("102 10:00:01.000000 fdatasync(7 <unfinished ...>").is_none());
    }

    #[test]
    fn finds_a_cycle() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("t");
        std::fs::write(
            &log,
            "1  10:00:00.000000 recvfrom(5, \"x\", 10, 0, NULL, NULL) = 100 <0.000010>\n\
             1 10:00:00.000020 pwrite64(7, \"x\", 100, 0) = 100 <0.000005>\n\
             1 10:00:00.000030 fdatasync(7) = 0 <0.000200>\n\
             1 10:00:00.000240 sendto(5, \"r\", 40, 0, NULL, 0) = 40 <0.000010>\n",
        )
        .unwrap();
        let s = summarize(&log).unwrap();
        assert!(s.starts_with("1 cycles"), "{s}");
        assert!(s.contains("flush 200 us"), "{s}");
        assert!(s.contains("whole 250 us"), "{s}");
    }
}
